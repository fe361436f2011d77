"""DP on the real site code path: networked rounds with DP on, the noise measured in the unmasked sum.

The coordinator keeps each decoded sum (``PFMH_TEST_RECORD_AGGREGATES``). The test recomputes every site's
exact, clipped statistics itself, independently of ``security.dp_sensitivity``, from the encoder the site
really used in that round (read in the daemon's ``on_round`` callback, before the next round trains it).
The difference is the noise the sum carries; its per-coordinate std must be what the ledger charges:
``sigma * S * sqrt(n)`` in local mode, ``sigma * S * sqrt(n / m)`` with m = t - c in distributed mode. Removing
the noise, halving sigma, adding it after encoding, skipping the clipping, or sizing the distributed share
from ``min_sites`` moves the measured std outside the tolerance.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.rounds import RECORD_AGGREGATES_ENV
from federation.plan import PrivacySettings, SecAggSettings
from participant.privacy import ENCODER_MECHANISM, PROTOTYPE_MECHANISM
from security.accountant import epsilon_for
from security.ledger import Ledger
from security.signing import SigningKey
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, write_site_files

SITES = ["site-a", "site-b", "site-c"]
SIGMA = 2.0
SENSITIVITY = math.sqrt(2.0)
TRAIN = {"bits": 32, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 1, "batch_size": 32}
ROUNDS = 3
TOLERANCE = 0.12  # 3 rounds x 8 classes x 33 values = 792 draws: the std estimate's own spread is about 2.5%


def exact_statistics(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[sums, counts] with unit codes and weights 1/sqrt(#labels): written here, not imported."""
    h = np.asarray(codes, dtype=np.float64)
    norms = np.linalg.norm(h, axis=1, keepdims=True)
    unit = np.where(norms > 0, h / np.where(norms > 0, norms, 1.0), 0.0)
    y = np.asarray(labels, dtype=np.float64)
    m = y.sum(axis=1)
    weighted = y * np.where(m > 0, 1.0 / np.sqrt(np.maximum(m, 1.0)), 0.0)[:, None]
    return np.concatenate([(weighted.T @ unit).ravel(), weighted.sum(axis=0)])


def encoder_codes(daemon, method: str) -> np.ndarray:  # noqa: ANN001
    """Codes of the model whose outputs make this site's upload (PFMH: personal; FedHAP: sign of shared)."""
    train = daemon.data.train
    if method == "fedhap":
        return np.where(daemon.trainer.encode(train, model="shared") >= 0, 1.0, -1.0)
    return daemon.trainer.encode(train, model="personal")


def run_dp_federation(tmp: Path, monkeypatch, *, method: str = "pfmh", share_mode: str = "prototypes",  # noqa: ANN001
                      privacy: PrivacySettings, min_sites: int = 3,
                      secagg: SecAggSettings | None = None) -> tuple[np.ndarray, list]:
    """Run ROUNDS networked rounds; returns (noise in every decoded sum, stacked; the daemons)."""
    monkeypatch.setenv(RECORD_AGGREGATES_ENV, "1")
    torch.set_num_threads(1)
    parts = write_site_files(tmp, SITES, seed=3)
    dims = (parts[0].image_dim, parts[0].text_dim, parts[0].num_classes)
    cfg = coordinator_config(tmp, SITES, rounds=ROUNDS, min_sites=min_sites, train=TRAIN, method=method,
                             share_mode=share_mode, privacy_settings=privacy, secagg=secagg, dims=dims,
                             train_timeout_s=90,
                             phase_timeout_s=30)
    length = dims[2] * TRAIN["bits"] + dims[2]
    exact: dict[int, np.ndarray] = {}
    with coordinator(tmp, cfg) as (port, engine):
        daemons = [site_daemon(tmp, name, port, epsilon_max=1e6) for name in SITES]
        for daemon in daemons:
            def on_round(report, daemon=daemon) -> None:  # noqa: ANN001 - the encoder as used in that round
                if report.completed:
                    add = exact_statistics(encoder_codes(daemon, method), daemon.data.train.labels)
                    exact[report.round] = exact.get(report.round, 0.0) + add
            daemon.on_round = on_round
        assert run_daemons(daemons, 300) == [0, 0, 0]
        assert engine.state.completed_rounds == ROUNDS
    noise = [np.load(tmp / "state/coordinator/aggregates" / f"round-{r}.npy")[:length] - exact[r]
             for r in sorted(exact)]
    assert len(noise) == ROUNDS
    return np.concatenate(noise), daemons


def assert_noise_std(noise: np.ndarray, expected: float) -> None:
    measured = float(np.sqrt(np.mean(noise**2)))
    assert abs(measured / expected - 1.0) < TOLERANCE, (
        f"noise std in the decoded sums {measured:.3f}, the ledgers charge {expected:.3f}")


def ledger_records(tmp: Path, daemon) -> list[dict]:  # noqa: ANN001
    ledger = Ledger.open(tmp / daemon.cfg.state_dir / "ledger.jsonl",
                         signing_key=SigningKey.load(tmp / daemon.cfg.tls.signing_key, passphrase=None),
                         site_id=daemon.cfg.site)
    records = [e.record for e in ledger.entries()]
    ledger.close()
    return records


def assert_ledgers_match(tmp: Path, daemons: list, *, mechanisms: set[str]) -> None:
    """Each ledger names the mechanisms of the chain, and rebuilding the accountant gives the reported epsilon."""
    for daemon in daemons:
        releases = [r for r in ledger_records(tmp, daemon) if r.get("kind") == "dp_release"]
        assert {r["mechanism"] for r in releases} == mechanisms
        assert {r["round"] for r in releases} == set(range(1, ROUNDS + 1))
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
        assert daemon.privacy.spent == pytest.approx(epsilon_for(history, daemon.privacy.policy.delta), rel=1e-9)


@pytest.mark.parametrize(("method", "share_mode"), [("pfmh", "prototypes"), ("pfmh", "prototypes+model"),
                                                   ("fedhap", "prototypes")])
def test_local_noise_in_the_decoded_sum_is_what_the_ledger_charges(tmp_path, monkeypatch, method, share_mode):
    # Prepare / Execute: 3 sites, local DP with the DP-SGD chain (the default)
    privacy = PrivacySettings(mode="local", noise_multiplier=SIGMA, dp_sgd_noise_multiplier=1.0)
    noise, daemons = run_dp_federation(tmp_path, monkeypatch, method=method, share_mode=share_mode,
                                       privacy=privacy)
    # Assert: each site added its full noise, so the sum of 3 carries sqrt(3) times one release's std
    assert_noise_std(noise, SIGMA * SENSITIVITY * math.sqrt(len(SITES)))
    mechanisms = {ENCODER_MECHANISM, PROTOTYPE_MECHANISM}
    if share_mode == "prototypes+model":
        mechanisms.add("dp_sgd_shared_model")
    assert_ledgers_match(tmp_path, daemons, mechanisms=mechanisms)


@pytest.mark.parametrize("colluders", [0, 1])
def test_distributed_noise_is_sized_for_threshold_less_colluders_not_min_sites(tmp_path, monkeypatch, colluders):
    # Prepare: 3 sites, min_sites 3. Each site adds 1/m of the variance, m = t - c. With c = 0 the default
    # threshold is t = 2; tolerating c = 1 (in secure aggregation too) raises it to t = 3. So m = 2 either way,
    # and sizing the share from min_sites (1/3), or ignoring c (1/3 with c = 1), is caught.
    privacy = PrivacySettings(mode="distributed", noise_multiplier=SIGMA, colluding_sites=colluders)
    noise, daemons = run_dp_federation(tmp_path, monkeypatch, privacy=privacy, min_sites=3,
                                       secagg=SecAggSettings(colluders=colluders))
    m = 2
    # Assert
    assert_noise_std(noise, SIGMA * SENSITIVITY * math.sqrt(len(SITES) / m))
    # and the ledger records what the sum carried for the 3 survivors: sigma * sqrt((3 - c) / m)
    sums = [r for r in ledger_records(tmp_path, daemons[0]) if r.get("kind") == "dp_sum"]
    assert [s["round"] for s in sums] == [1, 2, 3]
    assert all(s["noise_cohort"] == m and s["contributors"] == 3 for s in sums)
    assert sums[0]["sum_noise_multiplier"] == pytest.approx(SIGMA * math.sqrt((3 - colluders) / m))


def test_frozen_encoder_chain_releases_statistics_of_the_untrained_network(tmp_path, monkeypatch):
    # Prepare: the frozen chain: statistics from the seed-initialised network, no DP-SGD at all
    privacy = PrivacySettings(mode="local", noise_multiplier=SIGMA, statistics_encoder="frozen")
    def frozen_codes(daemon, method: str) -> np.ndarray:  # noqa: ANN001
        train = daemon.data.train
        with torch.no_grad():
            return daemon.frozen_encoder(torch.from_numpy(train.image.astype(np.float32)),
                                         torch.from_numpy(train.text.astype(np.float32))).numpy()

    monkeypatch.setattr("tests.participant.test_dp_end_to_end.encoder_codes", frozen_codes)
    noise, daemons = run_dp_federation(tmp_path, monkeypatch, privacy=privacy)
    # Assert: the same noise, and the ledgers account the Gaussian release alone, naming the chain
    assert_noise_std(noise, SIGMA * SENSITIVITY * math.sqrt(len(SITES)))
    assert_ledgers_match(tmp_path, daemons, mechanisms={PROTOTYPE_MECHANISM})
    entry = next(r for r in ledger_records(tmp_path, daemons[0]) if r.get("kind") == "dp_release")
    assert entry["encoder_chain"].startswith("frozen")


def test_restarted_site_rebuilds_its_accountant_from_the_ledger(tmp_path, monkeypatch):
    # Prepare: a DP federation of 3 rounds
    privacy = PrivacySettings(mode="local", noise_multiplier=SIGMA)
    _, daemons = run_dp_federation(tmp_path, monkeypatch, privacy=privacy)
    site = daemons[0]
    spent = site.privacy.spent
    assert spent > 0
    # Execute: a new daemon for the same site sets up from its state folder, as a restarted one does
    restarted = site_daemon(tmp_path, site.cfg.site, 1, epsilon_max=1e6)
    restarted.site_index = site.site_index
    restarted._setup(site.settings)
    # Assert: its budget is what was spent, not zero
    assert restarted.privacy.spent == pytest.approx(spent, rel=1e-9)
    restarted.privacy.close()
    restarted.client.close()
