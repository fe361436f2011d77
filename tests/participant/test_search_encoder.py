"""The numpy query encoder makes torch's codes, with gates closed, for BatchNorm and DP (GroupNorm) networks."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from participant.search_encoder import NumpyHashNet, fast_encoder
from participant.site_model import load_site_model
from pfmh_model.network import make_dp_compatible
from tests.participant.search_fixtures import make_site


def _records(data, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    q = data.query
    present = np.ones((len(q), 2), bool)
    present[::3, 0] = False
    present[1::3, 1] = False
    return q.image[:n], q.text[:n], present[:n]


def test_numpy_codes_equal_torch_codes_for_both_norms(tmp_path: Path) -> None:
    # Prepare: the site's model, with trained-like BatchNorm statistics, and its DP (GroupNorm) twin
    _, data = make_site(tmp_path)
    model = load_site_model(tmp_path / "state/site-a")
    net = model.trainer.shared.eval()
    rng = np.random.default_rng(1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.3, module.num_features).astype(np.float32)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 2, module.num_features).astype(np.float32)))
    image, text, present = _records(data)
    for network in (net, make_dp_compatible(net).eval()):
        with torch.inference_mode():
            want = network(torch.from_numpy(image), torch.from_numpy(text),
                           present=torch.from_numpy(present.astype(np.float32))).numpy()
        # Execute
        got = NumpyHashNet(network).pre_codes(image, text, present)
        # Assert: the same continuous codes, hence the same bits
        np.testing.assert_allclose(np.tanh(got), want, atol=1e-5)
        assert np.array_equal(got >= 0, want >= 0)
    # the encoder search uses is checked against torch's codes and agrees with them
    encode = fast_encoder(model)
    assert encode is not None
    np.testing.assert_array_equal(encode(image, text, present), model.encode_packed(image, text, present))


def test_other_networks_and_mismatches_keep_torch(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # Prepare
    make_site(tmp_path)
    model = load_site_model(tmp_path / "state/site-a")
    wrapped = replace(model, trainer=type("T", (), {"shared": torch.nn.Linear(2, 2)})())
    monkeypatch.setattr(NumpyHashNet, "encode_packed", lambda self, i, t, p: np.zeros((len(p), 1), np.uint64))
    # Execute / Assert: an unknown network, and codes that differ from torch's, both fall back
    assert fast_encoder(wrapped) is None
    assert fast_encoder(model) is None
