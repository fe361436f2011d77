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

from federation.plan import FederationSettings, PrivacySettings
from participant.local_release import LocalRelease
from participant.privacy import ENCODER_MECHANISM, PROTOTYPE_MECHANISM
from participant.privacy import SitePrivacy as SitePrivacyState
from pfmh_model.aggregation import UploadLayout
from pfmh_model.server_step import initial_prototypes
from pfmh_model.synthetic import generate
from pfmh_model.trainer_factory import make_trainer
from pfmh_model.training import flatten_state
from security.dp_sensitivity import clipped_class_statistics
from security.signing import SigningKey

TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 2, "shared_epochs": 1, "batch_size": 32}


def make_release(tmp_path, name: str, privacy: PrivacySettings, data):  # noqa: ANN001, ANN201
    settings = FederationSettings(federation_id="f", image_dim=data.image_dim, text_dim=data.text_dim,
                                  num_classes=data.num_classes, train=TRAIN, privacy=privacy)
    trainer = make_trainer(settings.train, image_dim=data.image_dim, text_dim=data.text_dim,
                           num_classes=data.num_classes, batch_seed=1, **LocalRelease.dp_models(settings))
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


def test_a_trainer_not_built_from_the_dp_plan_is_refused(tmp_path, data):
    # Prepare: a DP plan (its "auto" prototype weight is 1) and a trainer from the bare options (weight 3)
    settings = FederationSettings(federation_id="f", image_dim=data.image_dim, text_dim=data.text_dim,
                                  num_classes=data.num_classes, train=TRAIN, privacy=PrivacySettings(mode="local"))
    bare = make_trainer(TRAIN, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes,
                        **LocalRelease.dp_models(settings))
    state = SitePrivacyState(settings.privacy, epsilon_max=1e9, ledger_path=tmp_path / "l.jsonl",
                             signing_key=SigningKey.generate(), site="a")
    # Assert: the release would train what the plan does not say, so it does not start
    assert bare.config.weights.contrastive != settings.train.weights.contrastive
    with pytest.raises(ValueError, match="is not the plan's"):
        LocalRelease(settings, bare, state, UploadLayout(data.num_classes, TRAIN["bits"], 0))


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


def spy_lots(monkeypatch) -> list[np.ndarray]:  # noqa: ANN001
    """Record every Poisson lot the DP-SGD loop draws."""
    import participant.dp_sgd as dp_sgd

    lots: list[np.ndarray] = []
    original = dp_sgd.poisson_sample

    def spy(n: int, rate: float) -> np.ndarray:
        lots.append(original(n, rate))
        return lots[-1]

    monkeypatch.setattr(dp_sgd, "poisson_sample", spy)
    return lots


def test_poisson_batches_do_not_follow_the_public_seed(tmp_path, data, monkeypatch):
    # Prepare: one trainer state and generator, copied: a seeded sampler would draw the same lots twice
    release, trainer = make_release(tmp_path, "a", PrivacySettings(mode="local"), data)
    twin = copy.deepcopy(release)
    twin.trainer = copy.deepcopy(trainer)
    protos = initial_prototypes(data.num_classes, TRAIN["bits"], seed=0, method="pfmh")
    lots = spy_lots(monkeypatch)
    # Execute
    release.compute(data.train, protos)
    first = list(lots)
    lots.clear()
    twin.compute(data.train, protos)
    # Assert: every step drew its lot from the CSPRNG sampler, and the twins' lots differ
    planned = release.planned(len(data.train))[0]
    assert len(first) == len(lots) == planned.steps == TRAIN["personal_epochs"] * -(-len(data.train) // 32)
    assert sum(not np.array_equal(a, b) for a, b in zip(first, lots, strict=True)) >= planned.steps - 1


def test_dp_sgd_adds_noise_of_sigma_times_the_clip_bound(tmp_path, data, monkeypatch):
    # Prepare: spy on the noise Opacus adds to the clipped gradient sum
    from opacus.optimizers import DPOptimizer

    sigma, bound, noise = 1.5, 0.5, []
    original = DPOptimizer.add_noise

    def spy(self) -> None:  # noqa: ANN001
        before = [p.summed_grad.clone() for p in self.params]
        original(self)
        noise.extend((p.grad.reshape(-1) - b.reshape(-1)) for p, b in zip(self.params, before, strict=True))

    monkeypatch.setattr(DPOptimizer, "add_noise", spy)
    # Execute
    personal_change(tmp_path, "a", PrivacySettings(mode="local", dp_sgd_noise_multiplier=sigma,
                                                    dp_sgd_max_grad_norm=bound), data)
    # Assert: the per-coordinate std is sigma * C (a halved or mis-scaled sigma is far outside 5%)
    measured = float(torch.cat(noise).std())
    assert abs(measured / (sigma * bound) - 1) < 0.05


@pytest.mark.parametrize(("method", "share_mode", "model"), [("fedhap", "prototypes", "shared"),
                                                            ("pfmh", "prototypes+model", "shared")])
def test_dp_sgd_runs_on_every_model_that_leaves_the_site(tmp_path, data, method, share_mode, model):
    # Prepare: FedHAP's hashing network, and PFMH's federated shared model, under DP-SGD sigma 1e4
    def change(name: str, privacy: PrivacySettings) -> np.ndarray:
        settings = FederationSettings(federation_id="f", image_dim=data.image_dim, text_dim=data.text_dim,
                                      num_classes=data.num_classes, train=TRAIN, privacy=privacy, method=method,
                                      share_mode=share_mode)
        trainer = make_trainer(settings.train, image_dim=data.image_dim, text_dim=data.text_dim,
                               num_classes=data.num_classes, batch_seed=1, method=method,
                               **LocalRelease.dp_models(settings))
        size = flatten_state(trainer.shared_state()).size if settings.shares_model else 0
        state = SitePrivacyState(privacy, epsilon_max=1e9, ledger_path=tmp_path / f"{name}.jsonl",
                                 signing_key=SigningKey.generate(), site=name)
        release = LocalRelease(settings, trainer, state, UploadLayout(data.num_classes, TRAIN["bits"], size))
        net = getattr(trainer, model)
        before = flatten_state(net.state_dict())
        release.compute(data.train, initial_prototypes(data.num_classes, TRAIN["bits"], seed=0, method=method))
        return flatten_state(net.state_dict()) - before

    noisy = PrivacySettings(mode="local", dp_sgd_noise_multiplier=1e4)
    # Execute
    a, b = change("a", noisy), change("b", noisy)
    # Assert: the uploaded model moved by noise alone
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.2


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


def test_statistics_noise_is_fresh_and_secret_at_every_release(tmp_path, data):
    # Prepare: two sites' privacy states and one input
    a, _ = make_release(tmp_path, "a", PrivacySettings(mode="local"), data)
    b, _ = make_release(tmp_path, "b", PrivacySettings(mode="local"), data)
    codes = np.ones((len(data.train), TRAIN["bits"]))
    # Execute: the same statistics released three times
    first, again = (a.privacy.prototype_vector(codes, data.train.labels) for _ in range(2))
    other = b.privacy.prototype_vector(codes, data.train.labels)
    sums, counts, _ = clipped_class_statistics(codes, data.train.labels)
    exact = np.concatenate([sums.ravel(), counts])
    # Assert: no two releases share their noise (a fixed or public seed would repeat it)
    for x, y in ((first, again), (first, other)):
        assert abs(np.corrcoef(x - exact, y - exact)[0, 1]) < 0.3
