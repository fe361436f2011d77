"""The living archive through the real CLI: add, search with new records, erase, restart, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from participant.archive import Archive
from participant.cli import main as participant_main
from participant.site_model import load_site_model
from pfmh_model.record_file import save_records
from tests.participant.search_fixtures import make_site, write_model


def _search(capsys: pytest.CaptureFixture[str], toml: Path, query: Path, k: int = 5) -> dict:
    code = participant_main(["search", "--config", str(toml), "--query-file", str(query), "-k", str(k), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _new_record(tmp: Path, data, name: str = "new-1") -> tuple[Path, np.ndarray, np.ndarray]:  # noqa: ANN001
    """A record file with one fresh record whose code no archived record shares (ties go to older rows)."""
    state = tmp / "state" / "site-a"
    model, taken = load_site_model(state), np.asarray(Archive(state / "archive").open().codes_t)[0]
    rng = np.random.default_rng(7)
    for _ in range(200):
        image = rng.normal(0.0, 3.0, (1, data.image_dim)).astype(np.float32)
        text = rng.normal(0.0, 3.0, (1, data.text_dim)).astype(np.float32)
        if model.encode_packed(image, text, np.ones((1, 2), bool))[0, 0] not in taken:
            break
    else:
        raise AssertionError("no record with a code of its own in 200 draws")
    path = tmp / f"{name}.h5"
    save_records(path, image=image, text=text, ids=[name], labels=np.eye(1, data.num_classes, dtype=np.uint8))
    return path, image, text


def test_add_then_search_finds_it_first_and_remove_erases_it_from_disk(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    toml, data = make_site(tmp_path)
    state = tmp_path / "state" / "site-a"
    record, image, text = _new_record(tmp_path, data)
    # Execute: add, then search with the same record
    assert participant_main(["archive", "add", "--config", str(toml), "--data", str(record)]) == 0
    capsys.readouterr()
    found = _search(capsys, toml, record)
    # Assert: the record is its own nearest neighbour, named by its id, with its label
    first = found["results"][0]["hits"][0]
    assert first["id"] == "new-1" and first["distance"] == 0
    assert first["labels"] == [data.class_names[0]]
    assert found["archive_size"] == len(data.database) + 1
    model = load_site_model(state)
    code = model.encode_packed(image, text, np.ones((1, 2), bool))[0]
    # Execute: erase it
    assert participant_main(["archive", "remove", "--config", str(toml), "--ids", "new-1"]) == 0
    capsys.readouterr()
    # Assert: gone from search, also after a restart (a fresh process state: reopen from disk) ...
    again = _search(capsys, toml, record)
    assert "new-1" not in [h["id"] for h in again["results"][0]["hits"]]
    assert again["archive_size"] == len(data.database)
    # ... and no file of the archive holds its id, its code row or its features any more
    snap = Archive(state / "archive").open()
    others = np.asarray(snap.codes_t).T
    assert not (others == code).all(axis=1).any(), "test record must have a code of its own"
    blobs = b"".join(p.read_bytes() for p in (state / "archive").rglob("*") if p.is_file())
    assert b"new-1" not in blobs
    assert image.tobytes()[:64] not in blobs
    assert [p.name for p in (state / "archive").glob("gen-*")] == [snap.generation]


def test_search_refuses_another_model_version_until_reencoded(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a later round changed the model; the archive still holds the old codes
    toml, data = make_site(tmp_path)
    state = tmp_path / "state" / "site-a"
    record, _, _ = _new_record(tmp_path, data)
    old_version = Archive(state / "archive").open().model_version
    write_model(state, data, seed=5, after_round=2)
    # Execute
    code = participant_main(["search", "--config", str(toml), "--query-file", str(record)])
    err = capsys.readouterr().err
    # Assert: one clear line, no traceback
    assert code == 2
    assert f"holds codes of model {old_version}" in err and "Traceback" not in err and err.count("\n") == 1
    # Execute: re-encode, then search works under the new version
    assert participant_main(["archive", "reencode", "--config", str(toml)]) == 0
    capsys.readouterr()
    assert _search(capsys, toml, record)["model_version"] == load_site_model(state).version != old_version


def test_search_refuses_untrained_model_and_wrong_dimension(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    toml, data = make_site(tmp_path)
    state = tmp_path / "state" / "site-a"
    bad = tmp_path / "bad.h5"
    save_records(bad, image=np.zeros((1, data.image_dim + 1), np.float32), text=None)
    # Execute / Assert: wrong feature dimension
    assert participant_main(["search", "--config", str(toml), "--query-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"the model expects {data.image_dim}-d" in err and err.count("\n") == 1
    # Execute / Assert: a snapshot without a completed round (every round skipped)
    record, _, _ = _new_record(tmp_path, data)
    write_model(state, data, completed_rounds=0)
    assert participant_main(["search", "--config", str(toml), "--query-file", str(record)]) == 2
    err = capsys.readouterr().err
    assert "no completed federation round" in err and err.count("\n") == 1


def test_archive_without_ids_says_rows_are_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    toml, data = make_site(tmp_path, with_ids=False)
    query = tmp_path / "q.h5"
    save_records(query, image=data.database.image[3:4], text=data.database.text[3:4])
    # Execute
    code = participant_main(["search", "--config", str(toml), "--query-file", str(query), "-k", "1"])
    out = capsys.readouterr().out
    # Assert: record 3 is its own nearest neighbour and the output says these are numbers, not ids
    assert code == 0
    assert "no record ids in this archive" in out
    assert out.splitlines()[1].startswith("query 0: 3(d=0")


def test_stats_and_image_only_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: two records without a text
    toml, data = make_site(tmp_path)
    path = tmp_path / "img.h5"
    save_records(path, image=data.query.image[:2], text=None, ids=["img-a", "img-b"],
                 labels=data.query.labels[:2])
    # Execute
    assert participant_main(["archive", "add", "--config", str(toml), "--data", str(path)]) == 0
    capsys.readouterr()
    assert participant_main(["archive", "stats", "--config", str(toml), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # Assert
    assert figures["records"] == len(data.database) + 2 and figures["image_only"] == 2
    assert figures["code_bytes"] == 8 * figures["records"]
    found = _search(capsys, toml, path, k=1000)
    for result, name in zip(found["results"], ["img-a", "img-b"], strict=True):
        assert {h["id"]: h["distance"] for h in result["hits"]}[name] == 0


def test_a_reencode_racing_an_erasure_cannot_bring_the_record_back(tmp_path: Path) -> None:
    # Prepare: a re-encode read the archive, then an erasure happened before it published
    _, data = make_site(tmp_path)
    state = tmp_path / "state" / "site-a"
    archive = Archive(state / "archive")
    before = archive.open()
    write_model(state, data, seed=4, after_round=2)
    model = load_site_model(state)
    codes = model.encode_packed(before.image, before.text, before.present)
    archive.remove(["rec-00007"])
    # Execute
    published = archive.replace_codes(before, codes, model_version=model.version)
    # Assert: refused, and the live generation still lacks the record
    assert published is None
    assert b"rec-00007" not in set(archive.open().ids.tolist())
    # A crashed writer's unpublished generation is ignored and cleaned by the next write
    (state / "archive" / "gen-000099").mkdir()
    assert archive.open().generation != "gen-000099"
    archive.remove(["rec-00008"])
    assert [p.name for p in (state / "archive").glob("gen-*")] == [archive.open().generation]


def test_search_with_rows_of_the_own_query_split_reports_map(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    toml, data = make_site(tmp_path)
    # Execute
    some = participant_main(["search", "--config", str(toml), "--query", "0", "1", "-k", "3"])
    some_out = capsys.readouterr().out
    every = participant_main(["search", "--config", str(toml), "-k", "3"])
    every_out = capsys.readouterr().out
    # Assert: rows 0 and 1 answered with record ids; all rows also give the mAP line
    assert some == every == 0
    assert some_out.count("\nquery ") == 2 and "rec-" in some_out and "mAP" not in some_out
    assert f"mAP of {len(data.query)} own queries against the archive ({len(data.database)} records)" in every_out
