"""``pfmh-demo --workdir`` replaces only a folder it made, and a bad ``--preset`` is one line, not a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.local_demo import main


def test_a_folder_it_did_not_make_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit) as stop:
        main(["--workdir", str(tmp_path), "--preset", "tiny"])
    assert f"--workdir {tmp_path} is not empty and was not made by pfmh-demo" in str(stop.value)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_a_file_as_workdir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        main(["--workdir", str(tmp_path / "f"), "--preset", "tiny"])


def test_its_own_workdir_is_replaced_and_a_bad_preset_is_one_line(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    work.mkdir()
    (work / ".pfmh-demo").write_text("")
    (work / "stale.log").write_text("from the last run")
    with pytest.raises(SystemExit) as stop:
        main(["--workdir", str(work), "--preset", "huge", "--sites", "2"])
    assert str(stop.value).startswith("pfmh-demo: error: --preset: unknown synthetic preset 'huge'")
    assert not (work / "stale.log").exists() and (work / ".pfmh-demo").is_file()
    with pytest.raises(SystemExit, match="--preset"):  # what it left is its own: a rerun may replace it
        main(["--workdir", str(work), "--preset", "huge", "--sites", "2"])
