"""The in-process federation (every method) and the ``pfmh-simulate`` command."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pfmh_model.aggregation import sum_vectors
from pfmh_model.errors import ConfigError
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
from pfmh_model.partition import hold_out, partition_dataset
from pfmh_model.simulate_cli import main as simulate
from pfmh_model.synthetic import generate
from pfmh_model.training import SiteTrainer, TrainConfig, flatten_state

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


def test_validation_map_is_reported_every_evaluated_round(sites) -> None:
    # Prepare
    kept, slices = hold_out(sites, 0.2, seed=0)
    # Execute
    result = Federation(kept, FederationConfig(rounds=2, train=TRAIN), validation=slices).run()
    # Assert: one value per site per round, their mean, no selection without asking for it
    for rec in result.rounds:
        assert rec.val_site_map is not None and len(rec.val_site_map) == len(sites)
        assert all(0.0 < v <= 1.0 for v in rec.val_site_map)
        assert rec.mean_val_map == pytest.approx(float(np.mean(rec.val_site_map)))
        assert rec.selected_round is None


def test_selection_searches_with_each_sites_best_validation_round(sites) -> None:
    # Prepare: the same run with and without selection (selection must not change training)
    kept, slices = hold_out(sites, 0.2, seed=0)
    plain = Federation(kept, FederationConfig(rounds=4, train=TRAIN), validation=slices).run()
    chosen = Federation(kept, FederationConfig(rounds=4, train=TRAIN, select_on_validation=True),
                        validation=slices).run()
    # Assert: each site's chosen round is its latest best validation round, and its final per-site mAP is
    # the plain run's mAP at that round
    last = chosen.rounds[-1]
    for k in range(len(sites)):
        history = [r.val_site_map[k] for r in plain.rounds]
        best = max(history)
        assert last.selected_round[k] == max(i + 1 for i, v in enumerate(history) if v == best)
        assert last.site_map[k] == pytest.approx(plain.rounds[last.selected_round[k] - 1].site_map[k], abs=1e-12)
    assert [r.val_site_map for r in chosen.rounds] == [r.val_site_map for r in plain.rounds]


def test_selection_needs_validation_slices(sites) -> None:
    with pytest.raises(ConfigError, match="needs validation slices"):
        Federation(sites, FederationConfig(rounds=1, train=TRAIN, select_on_validation=True))


def test_simulate_runs_a_saved_partition_and_the_baselines(tmp_path: Path) -> None:
    # Prepare: a Dirichlet run that saves its partition
    common = ["--preset", "tiny", "--methods", "pfmh,ridge-local,ridge-central,lsh", "--rounds", "2", "--bits", "16",
              "--personal-epochs", "1", "--shared-epochs", "1"]
    assert simulate([*common, "--sites", "3", "--alpha", "0.5", "--save-partition", str(tmp_path / "p.json"),
                     "--out", str(tmp_path / "drawn")]) == 0
    # Execute: the same run from the file (other --sites and --alpha, which the file overrides)
    assert simulate([*common, "--sites", "7", "--alpha", "9", "--partition", str(tmp_path / "p.json"),
                     "--out", str(tmp_path / "file")]) == 0
    # Assert: identical figures, baselines included, and per-round validation mAP in result.json
    drawn, again = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("drawn", "file"))
    assert again["sites"] == 3 and set(again["methods"]) == {"pfmh", "ridge-local", "ridge-central", "lsh"}
    for name in again["methods"]:
        for a, b in zip(again["methods"][name]["rounds"], drawn["methods"][name]["rounds"], strict=True):
            assert (a["site_map"], a["global_map"]) == (b["site_map"], b["global_map"])
    for rec in again["methods"]["pfmh"]["rounds"]:
        assert len(rec["val_site_map"]) == 3 and rec["mean_val_map"] > 0
    final = [d["methods"]["pfmh"]["rounds"][-1]["val_site_map"] for d in (again, drawn)]
    assert final[0] == final[1]


@pytest.mark.parametrize("together", [False, True])
@pytest.mark.parametrize("method", [Method.PFMH, Method.FEDAVG])
def test_shared_lr_decays_once_per_round_on_both_training_paths(sites, method: Method, together: bool) -> None:
    # Prepare
    cfg = FederationConfig(method=method, rounds=3, sites_together=together, share_mode=ShareMode.PROTOTYPES,
                           train=dataclasses.replace(TRAIN, shared_lr_decay=0.5))
    federation = Federation(sites, cfg)
    # Execute
    federation.run()
    # Assert: the third round trained at lr * 0.5 ** 2, at every site
    for trainer in federation.trainers:
        group = trainer.shared_opt.param_groups[0]
        assert group["shared_rounds"] == 3 and group["lr"] == pytest.approx(TRAIN.lr * 0.25)


@pytest.mark.parametrize("together", [False, True])
def test_a_federated_pfmh_shared_model_trains_at_a_constant_rate(sites, together: bool) -> None:
    # Prepare: decay asked for, but the shared model is federated (methods.shared_lr_is_constant)
    cfg = FederationConfig(method=Method.PFMH, share_mode=ShareMode.PROTOTYPES_AND_MODEL, rounds=3,
                           sites_together=together, train=dataclasses.replace(TRAIN, shared_lr_decay=0.5))
    federation = Federation(sites, cfg)
    # Execute
    federation.run()
    # Assert: three rounds counted, each at the full rate
    for trainer in federation.trainers:
        group = trainer.shared_opt.param_groups[0]
        assert trainer.constant_shared_lr
        assert group["shared_rounds"] == 3 and group["lr"] == pytest.approx(TRAIN.lr)


def test_shared_lr_round_count_survives_a_snapshot(tmp_path: Path, sites) -> None:
    # Prepare: a trainer that trained its shared model twice
    cfg = dataclasses.replace(TRAIN, shared_lr_decay=0.5)
    first = SiteTrainer(cfg, image_dim=sites[0].image_dim, text_dim=sites[0].text_dim)
    for _ in range(2):
        first.train_shared(sites[0].train, prototypes=None, global_prototypes=None, distill=False)
    first.save_snapshot(tmp_path / "t.pt")
    # Execute
    again = SiteTrainer(cfg, image_dim=sites[0].image_dim, text_dim=sites[0].text_dim)
    again.load_snapshot(tmp_path / "t.pt")
    # Assert: its next round is the third
    assert again.start_shared_round() == pytest.approx(TRAIN.lr * 0.25)
    with pytest.raises(ConfigError, match="shared_lr_decay"):
        dataclasses.replace(TRAIN, shared_lr_decay=0.0)
