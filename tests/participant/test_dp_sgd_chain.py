"""The DP-SGD half of the chain, on the function the site daemon calls (``LocalRelease.compute``).

- DP-SGD really runs when the ledger says it does: with a huge DP-SGD noise multiplier, two sites with the
  same records and the same initial weights move their encoders in unrelated directions (the update is noise);
  trained without DP they move alike.
- The Poisson batches are secret: the same trainer state, seeds and records give different batches.
- Per-record clipping holds at the configured bound inside Opacus' optimizer.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from participant.local_release import LocalRelease
from participant.privacy import ENCODER_MECHANISM, PROTOTYPE_MECHANISM
from participant.privacy import SitePrivacy as SitePrivacyState
from pfmh_model.aggregation import UploadLayout
from pfmh_model.server_step import initial_prototypes
from pfmh_model.synthetic import generate
from pfmh_model.trainer_factory import make_trainer
from pfmh_model.training import flatten_state
from proto.settings import FederationSettings, PrivacySettings
from security.signing import SigningKey

TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 2, "shared_epochs": 1, "batch_size": 32}


def make_release(tmp_path, name: str, privacy: PrivacySettings, data):  # noqa: ANN001, ANN201
    settings = FederationSettings(federation_id="f", image_dim=data.image_dim, text_dim=data.text_dim,
                                  num_classes=data.num_classes, train=TRAIN, privacy=privacy)
    trainer = make_trainer(TRAIN, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes,
                           batch_seed=1, **LocalRelease.dp_models(settings))
    key = SigningKey.generate()
    state = SitePrivacyState(privacy, epsilon_max=1e9, ledger_path=tmp_path / f"{name}.jsonl", signing_key=key,
                             site=name)
    layout = UploadLayout(data.num_classes, TRAIN["bits"], 0)
    return LocalRelease(settings, trainer, state, layout), trainer


def personal_change(tmp_path, name: str, privacy: PrivacySettings, data) -> np.ndarray:  # noqa: ANN001
    release, trainer = make_release(tmp_path, name, privacy, data)
    before = flatten_state(trainer.personal.state_dict())
    protos = initial_prototypes(data.num_classes, TRAIN["bits"], seed=0, method="pfmh")
    release.compute(data.train, protos)
    return flatten_state(trainer.personal.state_dict()) - before


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    torch.set_num_threads(1)
    return generate("tiny", seed=5)


def test_ledger_plans_the_encoder_release_first(tmp_path, data):
    release, _ = make_release(tmp_path, "a", PrivacySettings(mode="local"), data)
    planned = release.planned(len(data.train))
    assert [r.mechanism for r in planned] == [ENCODER_MECHANISM, PROTOTYPE_MECHANISM]
    assert planned[0].sample_rate == pytest.approx(32 / len(data.train))


def test_dp_sgd_with_huge_noise_moves_the_encoder_by_noise_alone(tmp_path, data):
    # Prepare: two sites with the same records and the same initial weights, DP-SGD sigma 1e4
    noisy = PrivacySettings(mode="local", dp_sgd_noise_multiplier=1e4)
    # Execute
    a, b = (personal_change(tmp_path, n, noisy, data) for n in ("a", "b"))
    # Assert: unrelated moves (the gradient signal is drowned); without DP-SGD they would be near-parallel
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.2
    plain = PrivacySettings(mode="off")
    c, d = (personal_change(tmp_path, n, plain, data) for n in ("c", "d"))
    assert np.corrcoef(c, d)[0, 1] > 0.5  # the test has power: without DP the moves agree


def test_poisson_batches_do_not_follow_the_public_seed(tmp_path, data):
    # Prepare: one trainer state, copied; DP-SGD noise negligible, so only the batches can differ
    release, trainer = make_release(tmp_path, "a", PrivacySettings(mode="local", dp_sgd_noise_multiplier=1e-6), data)
    twin = copy.deepcopy(release)
    twin.trainer = copy.deepcopy(trainer)
    protos = initial_prototypes(data.num_classes, TRAIN["bits"], seed=0, method="pfmh")
    # Execute
    release.compute(data.train, protos)
    twin.compute(data.train, protos)
    # Assert: same seed, same generator state, different Poisson draws (from os.urandom)
    diff = flatten_state(release.trainer.personal.state_dict()) - flatten_state(twin.trainer.personal.state_dict())
    assert np.abs(diff).max() > 1e-3


def test_per_record_clipping_holds_inside_the_optimizer(tmp_path, data, monkeypatch):
    # Prepare: spy on Opacus' clip-and-accumulate, the step that bounds each record's gradient
    from opacus.optimizers import DPOptimizer

    bound, seen = 0.05, []
    original = DPOptimizer.clip_and_accumulate

    def spy(self) -> None:  # noqa: ANN001
        batch = next(p.grad_sample.shape[0] for p in self.params if p.grad_sample is not None)
        original(self)
        total = torch.sqrt(sum((p.summed_grad.double() ** 2).sum() for p in self.params))
        seen.append((self.max_grad_norm, batch, float(total)))

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    privacy = PrivacySettings(mode="local", dp_sgd_max_grad_norm=bound)
    # Execute
    personal_change(tmp_path, "a", privacy, data)
    # Assert: every step clipped at the configured bound: the summed gradient of B records is at most B * C
    assert seen
    assert all(c == bound for c, _, _ in seen)
    assert all(total <= batch * bound * (1 + 1e-6) for _, batch, total in seen)
