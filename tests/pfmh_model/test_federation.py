"""The in-process federation (every method) and the ``pfmh-simulate`` command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pfmh_model.aggregation import sum_vectors
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
from pfmh_model.partition import partition_dataset
from pfmh_model.simulate_cli import main as simulate
from pfmh_model.synthetic import generate
from pfmh_model.training import TrainConfig, flatten_state

TRAIN = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=1, shared_epochs=1, seed=2)


@pytest.fixture(scope="module")
def sites():  # noqa: ANN201
    torch.set_num_threads(1)
    return partition_dataset(generate("tiny", seed=4), num_sites=3, alpha=0.5, seed=4)


@pytest.mark.parametrize("method", list(Method))
def test_every_method_runs_and_is_deterministic(sites, method: Method) -> None:
    # Execute: the same run twice
    cfg = FederationConfig(method=method, rounds=2, train=TRAIN)
    first, second = Federation(sites, cfg).run(), Federation(sites, cfg).run()
    # Assert: two rounds with valid mAPs, identical across the runs
    assert [r.round for r in first.rounds] == [1, 2]
    for a, b in zip(first.rounds, second.rounds, strict=True):
        assert 0.0 < a.mean_site_map <= 1.0 and a.global_map is not None and 0.0 < a.global_map <= 1.0
        assert a.mean_site_map == b.mean_site_map and a.global_map == b.global_map
    assert first.train_records_per_second > 0


def test_sum_step_sees_exactly_the_site_uploads(sites) -> None:
    # Prepare: a sum step that records what it is given
    seen: list[list[np.ndarray]] = []

    def recording_sum(vectors):  # noqa: ANN001, ANN202
        seen.append([v.copy() for v in vectors])
        return sum_vectors(vectors)

    fed = Federation(sites, FederationConfig(method=Method.PFMH, rounds=1, train=TRAIN,
                                             share_mode=ShareMode.PROTOTYPES_AND_MODEL), sum_step=recording_sum)
    # Execute
    fed.run_round()
    # Assert: one vector per site, each [prototype sums, counts, n_k * weights, n_k]; every site then
    # holds the FedAvg model (the records-weighted mean of the uploaded weights)
    (vectors,) = seen
    assert len(vectors) == 3 and all(v.shape == (fed.layout.length,) for v in vectors)
    n = np.array([len(s.train) for s in sites], dtype=float)
    np.testing.assert_array_equal([v[-1] for v in vectors], n)
    models = [v[-1 - fed.layout.model_size:-1] for v in vectors]
    expected = np.sum(models, axis=0) / n.sum()
    for trainer in fed.trainers:
        np.testing.assert_allclose(flatten_state(trainer.shared_state()), expected, rtol=1e-5, atol=1e-6)


def test_local_never_aggregates_and_centralized_trains_one_model(sites) -> None:
    local = Federation(sites, FederationConfig(method=Method.LOCAL, rounds=1, train=TRAIN))
    local.run_round()
    assert local.state.prototypes is None and local.state.shared_model is None
    models = [flatten_state(t.shared_state()) for t in local.trainers]
    assert not np.allclose(models[0], models[1])
    central = Federation(sites, FederationConfig(method=Method.CENTRALIZED, rounds=1, train=TRAIN))
    assert len(central.trainers) == 1
    assert len(central.train_sites[0].train) == sum(len(s.train) for s in sites)


def test_prototype_only_mode_uploads_no_model(sites) -> None:
    fed = Federation(sites, FederationConfig(method=Method.PFMH, rounds=1, train=TRAIN,
                                             share_mode=ShareMode.PROTOTYPES))
    assert fed.layout.model_size == 0
    assert fed.layout.length == sites[0].num_classes * (TRAIN.bits + 1)


def test_simulate_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = simulate(["--preset", "tiny", "--methods", "pfmh,fedavg", "--sites", "3", "--rounds", "2", "--bits", "16",
                     "--personal-epochs", "1", "--shared-epochs", "1", "--out", str(tmp_path / "run")])
    # Assert
    assert code == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert set(result["methods"]) == {"pfmh", "fedavg"}
    assert len(result["methods"]["pfmh"]["rounds"]) == 2
    assert (tmp_path / "run" / "result.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "round   2/2" in out and "global mAP" in out


@pytest.mark.parametrize("argv", [["--data", "/nonexistent/file.h5"], ["--preset", "tiny", "--methods", "pfmh,fedsgd"],
                                  ["--preset", "tiny", "--sites", "0"]])
def test_simulate_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str]) -> None:
    # Execute: argparse refusals raise SystemExit(2); later refusals return 2
    try:
        code = simulate([*argv, "--rounds", "1", "--out", str(tmp_path)])
    except SystemExit as exc:
        code = exc.code
    # Assert
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err
