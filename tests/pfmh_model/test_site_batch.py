"""Sites trained together (``site_batch``) equal the one-site-at-a-time path within float tolerance.

Tolerance: codes within 1e-4 and weights within 2e-3 after a few epochs. Batched matmuls sum in
another order (about 1e-7 relative per step); the bias of the Linear layer just before a
BatchNorm has a true gradient of 0, so its gradient is rounding noise that Adam scales to
lr-sized (1e-3) steps, which is why weights get a looser bound than codes.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from pfmh_model.data import Split
from pfmh_model.errors import OptionError
from pfmh_model.federation import Federation, FederationConfig, Method, ShareMode
from pfmh_model.local_round import personal_anchors, train_pfmh_site, train_pfmh_sites
from pfmh_model.partition import partition_dataset
from pfmh_model.prototypes import complete_prototypes
from pfmh_model.server_step import initial_prototypes
from pfmh_model.site_batch import train_personal_together, train_shared_together
from pfmh_model.synthetic import generate
from pfmh_model.trainer_factory import make_trainer
from pfmh_model.training import SiteTrainer, TrainConfig

CFG = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=2, shared_epochs=2, batch_size=16, seed=1)
# Site sizes: several batches, a last batch of one (merged), one batch, a single record (not trained).
SIZES = (53, 33, 12, 1)


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    torch.set_num_threads(1)
    return generate("tiny", seed=3)


def _splits(data) -> list[Split]:  # noqa: ANN001
    train, out, start = data.train, [], 0
    for n in SIZES:
        out.append(Split(train.image[start:start + n], train.text[start:start + n], train.labels[start:start + n]))
        start += n
    return out


def _trainers(data, k: int) -> list[SiteTrainer]:  # noqa: ANN001
    return [SiteTrainer(CFG, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes,
                        init_seed=CFG.seed, batch_seed=100 + i) for i in range(k)]


def _assert_same(alone: list[SiteTrainer], together: list[SiteTrainer], splits: list[Split]) -> None:
    for a, b, split in zip(alone, together, splits, strict=True):
        for model in ("personal", "shared"):
            np.testing.assert_allclose(a.encode(split, model=model), b.encode(split, model=model), atol=1e-4)
            for (name, x), y in zip(getattr(a, model).state_dict().items(),
                                    getattr(b, model).state_dict().values(), strict=True):
                np.testing.assert_allclose(x.double().numpy(), y.double().numpy(), atol=2e-3, err_msg=name)
            sa, sb = getattr(a, f"{model}_opt").state, getattr(b, f"{model}_opt").state
            assert [float(s["step"]) for s in sa.values()] == [float(s["step"]) for s in sb.values()]
            for s, t in zip(sa.values(), sb.values(), strict=True):
                np.testing.assert_allclose(s["exp_avg"].numpy(), t["exp_avg"].numpy(), atol=1e-4)
        assert torch.equal(a.generator.get_state(), b.generator.get_state())


def _assert_same_losses(alone: list[dict], together: list[dict]) -> None:
    for a, b in zip(alone, together, strict=True):
        assert set(a) == set(b)
        for key in a:
            if key != "seconds":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, equal_nan=True, err_msg=key)


def test_pfmh_steps_together_equal_one_site_at_a_time(data) -> None:  # noqa: ANN001
    # Prepare: four sites of different sizes, two identical copies of their trainers
    splits = _splits(data)
    alone = _trainers(data, len(splits))
    together = copy.deepcopy(alone)
    globals_ = initial_prototypes(data.num_classes, CFG.bits, seed=0)
    masks = [np.arange(data.num_classes) % (i + 2) != 0 for i in range(len(splits))]
    # Execute: personal model, prototypes, shared model with every term, both ways; then a second
    # personal phase, so Adam resumes from the state the batched path wrote back
    one = [t.train_personal(s) for t, s in zip(alone, splits, strict=True)]
    many = train_personal_together(together, splits)
    _assert_same_losses(one, many)
    protos = [complete_prototypes(t.prototype_statistics(s), globals_) for t, s in zip(alone, splits, strict=True)]
    one = [t.train_shared(s, prototypes=p, global_prototypes=globals_, class_mask=m)
           for t, s, p, m in zip(alone, splits, protos, masks, strict=True)]
    many = train_shared_together(together, splits, prototypes=protos, global_prototypes=globals_, class_masks=masks)
    _assert_same_losses(one, many)
    one = [t.train_personal(s, epochs=1) for t, s in zip(alone, splits, strict=True)]
    many = train_personal_together(together, splits, epochs=1)
    # Assert: the same losses, weights, BatchNorm buffers, Adam state and generator state
    _assert_same_losses(one, many)
    _assert_same(alone, together, splits)
    assert np.isnan(many[-1]["loss"]) and many[-1]["epochs"] == 0.0  # the one-record site is not trained


def test_fedavg_step_together_equals_one_site_at_a_time(data) -> None:  # noqa: ANN001
    splits = _splits(data)[:3]
    alone = _trainers(data, 3)
    together = copy.deepcopy(alone)
    one = [t.train_shared(s, prototypes=None, global_prototypes=None, distill=False, epochs=3)
           for t, s in zip(alone, splits, strict=True)]
    many = train_shared_together(together, splits, prototypes=None, global_prototypes=None, distill=False, epochs=3)
    _assert_same_losses(one, many)
    _assert_same(alone, together, splits)


@pytest.mark.parametrize("method", [Method.PFMH, Method.FEDAVG])
def test_federation_round_together_equals_sequential(data, method: Method) -> None:  # noqa: ANN001
    sites = partition_dataset(data, num_sites=3, alpha=0.5, seed=2)
    cfg = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=1, shared_epochs=1, seed=2)
    runs = [Federation(sites, FederationConfig(method=method, rounds=2, train=cfg, sites_together=together,
                                               share_mode=ShareMode.PROTOTYPES_AND_MODEL)).run()
            for together in (False, True)]
    for a, b in zip(runs[0].rounds, runs[1].rounds, strict=True):
        np.testing.assert_allclose(a.mean_site_map, b.mean_site_map, atol=1e-3)
        np.testing.assert_allclose(a.global_map, b.global_map, atol=1e-3)


def test_refuses_a_dp_compatible_model_and_mixed_configs(data) -> None:  # noqa: ANN001
    splits = _splits(data)[:2]
    dp = [make_trainer({"bits": 16, "hidden": 32, "width": 16}, image_dim=data.image_dim, text_dim=data.text_dim,
                       num_classes=data.num_classes, dp_compatible=True) for _ in splits]
    with pytest.raises(OptionError, match="BatchNorm1d"):
        train_shared_together(dp, splits, prototypes=None, global_prototypes=None, distill=False)
    mixed = _trainers(data, 1) + [SiteTrainer(TrainConfig(bits=16, hidden=32, width=16, lr=1e-2),
                                              image_dim=data.image_dim, text_dim=data.text_dim)]
    with pytest.raises(OptionError, match="one TrainConfig"):
        train_personal_together(mixed, splits)


def test_sites_in_two_worker_processes_equal_one_process(data) -> None:  # noqa: ANN001
    # Prepare: three sites; the run in this process is the reference
    sites = partition_dataset(data, num_sites=3, alpha=0.5, seed=2)
    cfg = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=1, shared_epochs=1, seed=2)
    runs = [Federation(sites, FederationConfig(method=Method.PFMH, rounds=2, train=cfg, workers=w,
                                               share_mode=ShareMode.PROTOTYPES_AND_MODEL)).run()
            for w in (1, 2)]
    # Assert: the same per-site and global mAP in every round, and the same final report
    for a, b in zip(runs[0].rounds, runs[1].rounds, strict=True):
        np.testing.assert_allclose(a.site_map, b.site_map, atol=1e-3)
        np.testing.assert_allclose(a.global_map, b.global_map, atol=1e-3)
    np.testing.assert_allclose(runs[0].final_report["map"], runs[1].final_report["map"], atol=1e-3)


def test_worker_groups_balance_records_and_cover_every_site_once() -> None:
    from pfmh_model.site_workers import balanced_groups

    assert balanced_groups([5, 1, 4, 3], 2) == [[0, 1], [2, 3]]
    assert balanced_groups([2, 7], 5) == [[1], [0]]
    groups = balanced_groups([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2)
    assert sorted(k for g in groups for k in g) == list(range(10)) and groups[0] == [0]


def test_modality_dropout_together_equals_one_site_at_a_time(data) -> None:  # noqa: ANN001
    # Prepare: sites of different sizes whose training hides one modality of 40% of the records
    cfg = dataclasses.replace(CFG, modality_dropout=0.4)
    splits = _splits(data)
    alone = [SiteTrainer(cfg, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes,
                         init_seed=cfg.seed, batch_seed=100 + i) for i in range(len(splits))]
    together = copy.deepcopy(alone)
    globals_ = initial_prototypes(data.num_classes, cfg.bits, seed=0)
    # Execute: both PFMH steps, both ways
    one = [t.train_personal(s) for t, s in zip(alone, splits, strict=True)]
    many = train_personal_together(together, splits)
    _assert_same_losses(one, many)
    protos = [complete_prototypes(t.prototype_statistics(s), globals_) for t, s in zip(alone, splits, strict=True)]
    one = [t.train_shared(s, prototypes=p, global_prototypes=globals_) for t, s, p in zip(alone, splits, protos,
                                                                                          strict=True)]
    many = train_shared_together(together, splits, prototypes=protos, global_prototypes=globals_)
    # Assert: the same masks were drawn (generator states), and the same losses and models
    _assert_same_losses(one, many)
    _assert_same(alone, together, splits)


def test_federation_with_modality_dropout_trains_sites_together(data, monkeypatch) -> None:  # noqa: ANN001
    sites = partition_dataset(data, num_sites=3, alpha=0.5, seed=2)
    cfg = TrainConfig(bits=16, hidden=32, width=16, personal_epochs=1, shared_epochs=1, seed=2, modality_dropout=0.3)
    calls = []
    monkeypatch.setattr(Federation, "_local_updates_together",
                        lambda self, original=Federation._local_updates_together: calls.append(1) or original(self))
    Federation(sites, FederationConfig(method=Method.PFMH, rounds=1, train=cfg)).run_round()
    assert calls == [1]


def test_personal_anchoring_together_equals_one_site_at_a_time(data) -> None:  # noqa: ANN001
    # Prepare: the personal model pulled towards fixed class centres (weights.personal_contrastive)
    cfg = dataclasses.replace(CFG, weights=dataclasses.replace(CFG.weights, personal_contrastive=0.5))
    splits = _splits(data)
    alone = [SiteTrainer(cfg, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes,
                         init_seed=cfg.seed, batch_seed=100 + i) for i in range(len(splits))]
    together, unanchored = copy.deepcopy(alone), copy.deepcopy(alone)
    centres = personal_anchors(alone[0], data.num_classes)
    # Execute: the personal phase both ways with the anchors, and once without them
    one = [t.train_personal(s, anchors=centres) for t, s in zip(alone, splits, strict=True)]
    many = train_personal_together(together, splits, anchors=centres)
    plain = train_personal_together(unanchored, splits)
    # Assert: the anchors are the round-0 centres; the term is trained and reported, both paths agree,
    # and it changes the model
    np.testing.assert_array_equal(centres, initial_prototypes(data.num_classes, cfg.bits, seed=cfg.seed))
    assert "anchor" in many[0] and "anchor" not in plain[0]
    _assert_same_losses(one, many)
    _assert_same(alone, together, splits)
    assert not np.allclose(together[0].encode(splits[0], model="personal"),
                           unanchored[0].encode(splits[0], model="personal"), atol=1e-3)


def test_pfmh_step_anchors_the_personal_model_only_with_a_positive_weight(data) -> None:  # noqa: ANN001
    splits = _splits(data)[:2]
    globals_ = initial_prototypes(data.num_classes, CFG.bits, seed=0)
    for weight, anchored in ((0.0, False), (0.3, True)):
        cfg = dataclasses.replace(CFG, weights=dataclasses.replace(CFG.weights, personal_contrastive=weight))
        trainers = [SiteTrainer(cfg, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes,
                                batch_seed=i) for i in range(2)]
        assert (personal_anchors(trainers[0], data.num_classes) is not None) == anchored
        results = train_pfmh_sites(trainers, splits, globals_)
        assert all(("anchor" in losses) == anchored for _, losses in results)
        _, alone = train_pfmh_site(trainers[0], splits[0], globals_)
        assert ("anchor" in alone) == anchored


def test_personal_anchoring_refuses_anchors_of_the_wrong_shape(data) -> None:  # noqa: ANN001
    from pfmh_model.errors import DataError

    cfg = dataclasses.replace(CFG, weights=dataclasses.replace(CFG.weights, personal_contrastive=1.0))
    trainer = SiteTrainer(cfg, image_dim=data.image_dim, text_dim=data.text_dim, num_classes=data.num_classes)
    wrong = np.zeros((data.num_classes, cfg.bits + 1), np.float32)
    with pytest.raises(DataError, match="personal anchors"):
        trainer.train_personal(_splits(data)[0], anchors=wrong)
    with pytest.raises(DataError, match="personal anchors"):
        train_personal_together([trainer], _splits(data)[:1], anchors=wrong)
