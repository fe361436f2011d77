"""ReplyWriter's bytes parse as the same SearchReply that search_pb2 builds from the engine's hits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from participant.archive_ops import archive_of
from participant.search_engine import open_view
from participant.search_wire import ReplyWriter, varint
from proto import search_pb2 as spb
from tests.participant.search_fixtures import make_site


def _reference(answer) -> spb.SearchReply:  # noqa: ANN001
    reply = spb.SearchReply(model_version=answer.model_version, generation=answer.generation,
                            archive_size=answer.archive_size, record_ids=answer.has_ids)
    for hits in answer.hits:
        result = reply.results.add()
        for hit in hits:
            result.hits.add(record_id=hit.record_id, row=hit.row, distance=hit.distance, labels=hit.labels or ())
    return reply


@pytest.mark.parametrize("with_ids", [True, False])
def test_reply_bytes_parse_as_the_protobuf_reply(tmp_path: Path, with_ids: bool) -> None:
    # Prepare: a site archive (ids or add-order numbers, labels), queries with both and with one modality
    toml, data = make_site(tmp_path, with_ids=with_ids)
    view = open_view(tmp_path / "state/site-a", archive_of(tmp_path / "state/site-a"))
    q = data.query
    present = np.ones((len(q), 2), bool)
    present[::3, 0] = False
    k = len(view.snapshot)                                    # every row: row 0 and distance 0 included
    # Execute
    result = view.search_rows(q.image, q.text, present, k)
    writer = ReplyWriter(view.snapshot, view.model.version)
    wire = writer.reply([writer.result(rows, dists) for rows, dists in zip(result.indices, result.distances,
                                                                            strict=True)])
    # Assert
    expected = _reference(view.search(q.image, q.text, present, k))
    got = spb.SearchReply.FromString(wire)
    assert got == expected
    assert any(h.labels for r in got.results for h in r.hits) and got.results[0].hits[0].record_id


def test_varint_matches_protobuf_encoding() -> None:
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2**21, 10**7, 2**35 + 5):
        assert b"\x10" + varint(value) == spb.Hit(row=value).SerializeToString() or value == 0
    assert spb.Hit.FromString(b"\x10" + varint(0)).row == 0
