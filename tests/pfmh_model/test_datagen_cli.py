"""Tests of the pfmh-datagen command line (main([...]) with capsys)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pfmh_model.data import load_h5
from pfmh_model.datagen_cli import main
from tests.conftest import shared_file


def test_generate_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "sub" / "tiny.h5"
    # Execute
    rc_gen = main(["--preset", "tiny", "--seed", "1", "--out", str(out)])
    gen = capsys.readouterr()
    rc_ins = main(["--inspect", str(out), "--sites", "3", "--alpha", "0.5", "--split", "query"])
    ins = capsys.readouterr()
    # Assert
    assert rc_gen == 0 and rc_ins == 0
    assert f"wrote {out}" in gen.out and "train 300, database 600, query 100" in gen.out
    assert len(load_h5(out).train) == 300
    assert "3 sites, Dirichlet alpha 0.5" in ins.out and "query split" in ins.out
    assert ins.out.count("\n") >= 7 and "class00" in ins.out


def test_unwritable_output_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # Execute
    rc = main(["--preset", "tiny", "--out", str(blocker / "x.h5")])
    err = capsys.readouterr().err
    # Assert
    assert rc == 2
    assert err.startswith("pfmh-datagen: error: cannot create the output directory")
    assert "Traceback" not in err


def test_inspect_bad_files_are_clean_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    rc = main(["--inspect", str(tmp_path / "absent.h5")])
    err = capsys.readouterr().err
    # Assert
    assert rc == 2 and "does not exist" in err and "Traceback" not in err


@pytest.mark.shared_data
def test_inspect_refuses_incomplete_mirflickr(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    path = shared_file("mirflickr25k_text_labels_only.h5")
    # Execute
    rc = main(["--inspect", str(path)])
    # Assert
    assert rc == 2 and "no image (I_*) datasets" in capsys.readouterr().err


def test_bad_option_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute / Assert
    with pytest.raises(SystemExit) as info:
        main(["--preset", "nope"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
