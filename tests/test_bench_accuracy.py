"""The accuracy sweep script on the tiny synthetic preset: rows land in the JSON-lines file, seeds are
summarised as mean ± std, and ``--resume`` runs nothing twice (the docs' tables come from this script)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_accuracy import _pivot, _spread, main

TINY = ["--data", "tiny=synthetic:tiny", "--methods", "pfmh,local", "--bits", "16", "--sites", "2",
        "--rounds", "1", "--epochs", "1", "--workers", "1"]


def test_spread_is_mean_alone_for_one_seed_and_mean_plus_std_for_more() -> None:
    assert _spread([0.5]) == "0.500"
    assert _spread([0.4, 0.6]) == "0.500 ± 0.100"
    assert _spread([]) == ""


def test_pivot_puts_methods_in_rows_and_bits_in_columns_one_table_per_metric() -> None:
    rows = [{"dataset": "d", "alpha": 0.1, "method": m, "bits": b, "mean_site_map": s, "global_map": g}
            for m, b, s, g in [("pfmh", 16, 0.8, 0.6), ("pfmh", 16, 0.6, 0.4), ("pfmh", 32, 0.7, 0.5),
                               ("local", 16, 0.5, 0.3)]]
    table = _pivot(rows).splitlines()
    assert table[1] == "d, alpha 0.1: global mAP (1-2 seeds per cell, mean ± std)"
    assert table[2] == "| method | 16 bits | 32 bits |"
    assert table[4:6] == ["| local | 0.300 | - |", "| pfmh | 0.500 ± 0.100 | 0.500 |"]
    assert table[7] == "d, alpha 0.1: per-site mean mAP (1-2 seeds per cell, mean ± std)"
    assert table[10:12] == ["| local | 0.500 | - |", "| pfmh | 0.700 ± 0.100 | 0.700 |"]


def test_sweep_writes_one_row_per_cell_and_resume_skips_finished_cells(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "acc.jsonl"
    # Execute: two seeds, then the same sweep again with --resume
    assert main([*TINY, "--seeds", "0", "1", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert main([*TINY, "--seeds", "0", "1", "--out", str(out), "--resume"]) == 0
    again = capsys.readouterr().out
    # Assert
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in rows) == [("local", 0), ("local", 1), ("pfmh", 0), ("pfmh", 1)]
    assert all(0.0 <= r["mean_site_map"] <= 1.0 and 0.0 <= r["global_map"] <= 1.0 for r in rows)
    assert "4 cells, 4 to run" in first and "4 cells, 0 to run" in again
    assert "global mAP (2 seeds per cell, mean ± std)" in again and " ± " in again.split("| pfmh |")[-1]


def test_sweep_takes_a_partition_file_and_scores_the_baselines_on_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a two-site partition of the tiny preset, saved as a file
    from pfmh_model.partition import partition_indices, save_partition
    from pfmh_model.synthetic import generate

    index = partition_indices(generate("tiny", seed=0), num_sites=2, alpha=1.0, seed=3)
    save_partition(tmp_path / "p.json", index, source="test")
    out = tmp_path / "acc.jsonl"
    argv = [*TINY, "--methods", "pfmh:prototypes@select,ridge-local,ridge-central,lsh", "--alphas", "0.1", "0.5",
            "--partition", f"tiny={tmp_path / 'p.json'}", "--train", "dropout=0.2", "--out", str(out)]
    # Execute
    assert main(argv) == 0
    # Assert: one cell per method (the file replaces the alphas), the baselines scored, the overrides applied
    rows = {r["method"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"pfmh:prototypes@select", "ridge-local", "ridge-central", "lsh"}
    assert all(r["alpha"] == "file" and 0.0 < r["global_map"] <= 1.0 for r in rows.values())
    assert rows["pfmh:prototypes@select"]["selected_round"] == [1, 1]
    assert rows["pfmh:prototypes@select"]["train"] == {"dropout": 0.2}
    assert "| pfmh:prototypes@select dropout=0.2 |" in capsys.readouterr().out
