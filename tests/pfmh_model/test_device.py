"""The device setting: parsing, 'auto', clear refusals, and the CPU path as the default everywhere.

No CUDA device is available where this suite runs; ``bench/gpu_check.sh`` runs the CUDA path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pfmh_model.device import check_device_spec, resolve_device
from pfmh_model.errors import OptionError
from pfmh_model.federation import FederationConfig
from pfmh_model.simulate_cli import main as simulate
from pfmh_model.synthetic import generate
from pfmh_model.training import SiteTrainer, TrainConfig

CFG = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=1, shared_epochs=1)


def test_specs_resolve_and_malformed_ones_raise() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "CPU", "cuda:x", 0):
        with pytest.raises(OptionError, match="use 'auto', 'cpu'"):
            check_device_spec(bad)
    with pytest.raises(OptionError, match="device='gpu'"):
        FederationConfig(device="gpu")


def test_auto_picks_cuda_only_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(OptionError, match="torch sees 0 CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(OptionError, match="torch sees 2 CUDA device"):
        resolve_device("cuda:2")


def test_trainer_defaults_to_cpu_and_returns_numpy() -> None:
    torch.set_num_threads(1)
    data = generate("tiny", seed=0)
    explicit = SiteTrainer(CFG, image_dim=data.image_dim, text_dim=data.text_dim, device="cpu")
    default = SiteTrainer(CFG, image_dim=data.image_dim, text_dim=data.text_dim)
    assert default.device == explicit.device == torch.device("cpu")
    assert explicit.generator.device == torch.device("cpu")
    for trainer in (explicit, default):
        trainer.train_personal(data.train)
    codes = explicit.encode(data.query)
    assert isinstance(codes, np.ndarray) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes, default.encode(data.query))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the refusal is for machines without")
def test_simulate_refuses_cuda_without_one_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = simulate(["--preset", "tiny", "--sites", "2", "--rounds", "1", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "CUDA device" in err
