"""``pfmh-participant search``: new records (``--query-file``) or rows of the site's own query split."""
from __future__ import annotations

import argparse
import json

import numpy as np

from participant.archive_ops import archive_of
from participant.config import load_config
from participant.search_engine import ArchiveView, SearchAnswer, SearchRefused, open_view
from pfmh_model.record_file import load_records


def _print_answer(answer: SearchAnswer, names: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "model_version": answer.model_version, "generation": answer.generation,
            "archive_size": answer.archive_size, "record_ids": answer.has_ids,
            "results": [{"query": name, "hits": [
                {"id": h.record_id, "row": h.row, "distance": h.distance,
                 **({"labels": list(h.labels)} if h.labels is not None else {})} for h in hits]}
                for name, hits in zip(names, answer.hits, strict=True)]}, indent=1))
        return
    kind = "record ids" if answer.has_ids else "no record ids in this archive: numbers in the order records were added"
    print(f"archive {answer.generation}: {answer.archive_size} records, model {answer.model_version} ({kind})")
    for name, hits in zip(names, answer.hits, strict=True):
        shown = [f"{h.record_id}(d={h.distance}{'; ' + ','.join(h.labels) if h.labels else ''})" for h in hits]
        print(f"query {name}: " + " ".join(shown))


def run_search(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    state = args.config.resolve().parent / cfg.state_dir
    view = open_view(state, archive_of(state))
    if args.query_file is not None:
        if args.query is not None:
            raise SearchRefused("give either --query-file or --query, not both")
        batch = load_records(args.query_file, image_dim=view.model.image_dim, text_dim=view.model.text_dim)
        answer = view.search(batch.image, batch.text, batch.present, args.k)
        names = list(batch.ids) if batch.ids is not None else [str(i) for i in range(len(batch))]
        _print_answer(answer, names, args.json)
        return 0
    return _own_queries(args, cfg, view)


def _own_queries(args: argparse.Namespace, cfg, view: ArchiveView) -> int:  # noqa: ANN001
    """Rows of the site's own query split (the evaluation path), with mAP when all rows are asked."""
    from pfmh_model.data import load_h5
    from pfmh_model.evaluation import mean_average_precision

    data = load_h5(args.config.resolve().parent / cfg.data)
    rows = np.arange(len(data.query)) if not args.query else np.asarray(args.query, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(data.query)):
        raise SearchRefused(f"--query rows must be within 0..{len(data.query) - 1}")
    queries = data.query.subset(rows)
    present = np.ones((len(rows), 2), bool)
    answer = view.search(queries.image, queries.text, present, args.k)
    shown = 20 if not args.json else len(rows)
    names = [str(r) if queries.ids is None else str(queries.ids[i]) for i, r in enumerate(rows)]
    _print_answer(SearchAnswer(answer.hits[:shown], answer.model_version, answer.generation, answer.archive_size,
                               answer.has_ids), names[:shown], args.json)
    if len(rows) > shown:
        print(f"... {len(rows) - shown} more queries")
    if not args.query and len(rows) and not args.json and view.snapshot.labels is not None:
        labels = np.unpackbits(np.asarray(view.snapshot.labels), axis=1,
                               count=int(view.snapshot.meta["num_classes"])).astype(np.float32)
        codes = view.model.trainer.encode(queries, model="shared")
        archive_codes = np.asarray(view.snapshot.codes_t)
        from pfmh_model.packed_codes import unpack_codes

        value = mean_average_precision(codes, unpack_codes(np.ascontiguousarray(archive_codes.T), view.snapshot.bits),
                                       queries.labels, labels)
        print(f"mAP of {len(rows)} own queries against the archive ({len(view.snapshot)} records): {value:.4f}")
    return 0
