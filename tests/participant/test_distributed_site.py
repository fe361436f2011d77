"""A site launched by torchrun on 2 gloo processes takes part in a real networked round, and the
round's global prototypes equal the in-process simulation's (as for one-process sites, within the
fixed-point precision of secure aggregation: 1e-4)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from federation.config_files import site_document, write_toml
from participant.cli import main
from participant.distributed_site import launched_by_torchrun, rank_device
from participant.site import SiteMismatch
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
from pfmh_model.trainer_factory import train_config
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, write_site_files

SITES = ["site-a", "site-b", "site-c"]
TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 1, "seed": 3,
         "batch_size": 16}
BIN = Path(sys.executable).parent


def _site_toml(tmp: Path, name: str, port: int) -> Path:
    return write_toml(tmp / f"{name}.toml", site_document(site=name, federation_id="testfed",
                                                          coordinator=f"127.0.0.1:{port}", data=f"data/{name}.h5",
                                                          privacy={"require_dp": False}))


def test_torchrun_site_in_a_networked_round(tmp_path: Path) -> None:
    # Prepare: three sites' files; site-a is launched by torchrun with two ranks
    torch.set_num_threads(1)
    parts = write_site_files(tmp_path, SITES, seed=5)
    first = parts[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=1, train=TRAIN, train_timeout_s=120.0, phase_timeout_s=30.0,
                             dims=(first.image_dim, first.text_dim, first.num_classes))
    cfg = replace(cfg, server=replace(cfg.server, gather_s=0.5))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # Execute: the network
    with coordinator(tmp_path, cfg) as (port, engine):
        toml = _site_toml(tmp_path, "site-a", port)
        ranks = subprocess.Popen([str(BIN / "torchrun"), "--nproc-per-node=2", "--master-addr=127.0.0.1",
                                  f"--master-port={_free_port()}", "--no-python", str(BIN / "pfmh-participant"),
                                  "join", "--site", "site-a", "--config", str(toml)],
                                 cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        codes = run_daemons([site_daemon(tmp_path, name, port) for name in SITES[1:]], 300)
        out, _ = ranks.communicate(timeout=300)
        networked = engine.state.prototypes
        assert engine.state.completed_rounds == 1, out
    assert codes == [0, 0] and ranks.returncode == 0, out
    assert "site-a: round 1 ok" in out and out.count("round 1 ok") == 1, out  # rank 0 alone reports
    assert "rank 1 of site-a: released by rank 0 after mirroring 2 training call(s)" in out, out  # it trained
    # Execute: the same round in one process
    federation = Federation(parts, FederationConfig(method=Method.PFMH, rounds=1, share_mode=ShareMode.PROTOTYPES,
                                                    train=train_config(TRAIN)))
    federation.run_round()
    # Assert
    assert networked is not None
    np.testing.assert_allclose(networked, federation.state.prototypes, atol=1e-4)


def _free_port() -> int:
    from tests.pfmh_model.test_distributed_training import free_port

    return free_port()


def test_launch_detection_and_device_rule(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by_torchrun()
    assert rank_device("cpu") == ("gloo", "cpu")
    try:
        rank_device("cuda:1")
    except SiteMismatch as exc:
        assert "device = \"cuda\"" in str(exc)
    else:
        raise AssertionError("cuda:N with several ranks must be refused")


def test_cuda_n_under_torchrun_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    write_site_files(tmp_path, ["site-a"], seed=1)
    toml = _site_toml(tmp_path, "site-a", 1)
    toml.write_text(toml.read_text().replace('state_dir = "state/site-a"', 'state_dir = "state/site-a"\n'
                                             'device = "cuda:1"'))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["join", "--site", "site-a", "--config", str(toml)]) == 2
    assert "write device = \"cuda\"" in capsys.readouterr().err
