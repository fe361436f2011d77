"""The search-blend benchmark on the tiny preset: its own rerun of the validated rule reproduces what the
federation searched with, and its rows are mAPs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_search_blend import main
from pfmh_model.search_choice import LOCAL_BLEND


def test_the_benchmarks_validated_row_is_what_the_federation_searched_with(tmp_path: Path) -> None:
    # Execute: three rounds of a three-site tiny federation, scored after each
    out = tmp_path / "scores.json"
    assert main(["--data", "synthetic:tiny", "--sites", "3", "--alpha", "0.5", "--rounds", "3", "--at", "1", "2", "3",
                 "--bits", "16", "--epochs", "1", "--json", str(out)]) == 0
    # Assert: what the federation searched with (the validated choice, blend LOCAL_BLEND, averaged over the
    # rounds) equals the benchmark's replay of it; after round 1 there is nothing to average yet, and by round 3
    # a site has averaged two blends, so the averaged rows differ from this round's pick alone
    scores = json.loads(out.read_text())["scores"]
    assert sorted(scores) == ["1", "2", "3"]
    for r, row in scores.items():
        run = row[f"run (validated, blend {LOCAL_BLEND:g}, averaged)"]
        assert run == pytest.approx(row[f"validated: blend {LOCAL_BLEND:g}, averaged over rounds"], abs=1e-12)
        if r == "1":
            assert run == pytest.approx(row[f"validated: aggregate or blend {LOCAL_BLEND:g}"], abs=1e-12)
        if r == "3":
            assert run != pytest.approx(row[f"validated: aggregate or blend {LOCAL_BLEND:g}"], abs=1e-6)
        assert {f"every site: blend {w:g}" for w in (0.0, 0.25, 0.5, LOCAL_BLEND, 1.0)} <= set(row)
        assert all(0.0 <= v <= 1.0 for pair in row.values() for v in pair)


def test_weights_outside_zero_to_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--data", "synthetic:tiny", "--weights", "1.5"])
    assert "--weights must lie in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", "synthetic:tiny", "--search-average", "1.5"])
    assert "--search-average must lie in [0, 1]" in capsys.readouterr().err
