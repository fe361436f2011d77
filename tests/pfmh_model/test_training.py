"""Tests of pfmh_model.training: config checks, determinism, snapshots, flat state, learning."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pfmh_model.data import Split
from pfmh_model.errors import DataError, OptionError, StateMismatch
from pfmh_model.prototypes import class_statistics, complete_prototypes, global_prototypes
from pfmh_model.training import SiteTrainer, TrainConfig, flatten_state, unflatten_state

CFG = TrainConfig(bits=16, width=16, hidden=32, batch_size=16, personal_epochs=2, shared_epochs=2, seed=3)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _split(n: int = 50, seed: int = 0) -> Split:
    """Three classes; features are a class mean plus noise; every fifth record has a second label."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, size=n)
    labels = np.eye(3)[cls]
    labels[::5, (cls[::5] + 1) % 3] = 1.0
    image = labels @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(n, 12))
    text = labels @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(n, 6))
    return Split(image, text, labels)


def _trainer(config: TrainConfig = CFG, **kwargs: int) -> SiteTrainer:
    return SiteTrainer(config, image_dim=12, text_dim=6, **kwargs)


def _round(trainer: SiteTrainer, split: Split) -> dict[str, float]:
    trainer.train_personal(split)
    stats = trainer.prototype_statistics(split)
    glob = global_prototypes(stats, None, bits=trainer.config.bits)
    return trainer.train_shared(split, prototypes=complete_prototypes(stats, glob), global_prototypes=glob)


@pytest.mark.parametrize(("field", "value"), [("bits", 4), ("lr", 0.0), ("batch_size", 1), ("dropout", 1.0),
                                              ("temperature", -1.0), ("grad_clip", float("inf")),
                                              ("personal_epochs", -1), ("weights", 1.0), ("seed", -2)])
def test_train_config_rejects_bad_values(field: str, value: object) -> None:
    # Execute / Assert
    with pytest.raises(OptionError, match=field):
        dataclasses.replace(CFG, **{field: value})


def test_same_seed_same_data_gives_identical_codes() -> None:
    # Prepare
    split = _split()
    a, b, c = _trainer(), _trainer(), _trainer(batch_seed=99)
    # Execute
    for t in (a, b, c):
        _round(t, split)
    # Assert
    np.testing.assert_array_equal(a.encode(split), b.encode(split))
    np.testing.assert_array_equal(a.encode(split, model="personal"), b.encode(split, model="personal"))
    assert not np.array_equal(a.encode(split), c.encode(split))


def test_common_init_seed_gives_identical_starting_models_across_sites() -> None:
    # Prepare / Execute
    a, b = _trainer(init_seed=7, batch_seed=1), _trainer(init_seed=7, batch_seed=2)
    # Assert
    for pa, pb in zip(flatten_state(a.shared_state()), flatten_state(b.shared_state()), strict=True):
        assert pa == pb
    assert not np.array_equal(flatten_state(a.shared_state()), flatten_state(a.personal.state_dict()))


def test_training_reduces_the_loss() -> None:
    # Prepare
    split = _split(80)
    trainer = _trainer()
    # Execute
    first = trainer.train_personal(split, epochs=1)
    later = trainer.train_personal(split, epochs=15)
    # Assert
    assert later["loss"] < 0.7 * first["loss"]
    assert set(first) >= {"loss", "similarity", "quantization", "epochs", "seconds"}


def test_train_shared_terms_depend_on_prototypes_and_distill() -> None:
    # Prepare
    split = _split()
    trainer = _trainer()
    # Execute
    with_protos = _round(trainer, split)
    plain = trainer.train_shared(split, prototypes=None, global_prototypes=None, distill=False, epochs=1)
    # Assert
    assert {"distillation", "contrastive_local", "contrastive_global"} <= set(with_protos)
    assert not {"distillation", "contrastive_local", "contrastive_global"} & set(plain)
    assert np.isfinite(with_protos["loss"])
    with pytest.raises(DataError, match="prototypes"):
        trainer.train_shared(split, prototypes=np.zeros((2, 16)), global_prototypes=None)


def test_prototype_statistics_come_from_the_personal_model() -> None:
    # Prepare
    split = _split()
    trainer = _trainer()
    trainer.train_personal(split, epochs=1)
    # Execute
    stats = trainer.prototype_statistics(split)
    # Assert
    sums, counts = class_statistics(trainer.encode(split, model="personal"), split.labels)
    np.testing.assert_allclose(stats.sums, sums)
    np.testing.assert_array_equal(stats.counts, split.labels.sum(axis=0))


def test_encode_and_binary_codes_accept_arrays() -> None:
    # Prepare
    split = _split(10)
    trainer = _trainer()
    # Execute
    codes = trainer.encode((split.image, split.text), batch_size=3)
    bits = trainer.binary_codes(split)
    # Assert
    assert codes.shape == (10, 16) and codes.dtype == np.float32
    np.testing.assert_allclose(codes, trainer.encode(split), atol=1e-6)
    assert bits.dtype == np.int8 and set(np.unique(bits)) <= {-1, 1}
    with pytest.raises(OptionError, match="model"):
        trainer.encode(split, model="teacher")  # type: ignore[arg-type]


def test_snapshot_round_trip_reproduces_codes_and_further_training(tmp_path: Path) -> None:
    # Prepare
    split = _split()
    trainer = _trainer()
    _round(trainer, split)
    trainer.round = 4
    path = tmp_path / "site.pt"
    # Execute
    trainer.save_snapshot(path)
    restored = _trainer(batch_seed=123)
    restored.load_snapshot(path)
    trainer.train_personal(split, epochs=1)
    restored.train_personal(split, epochs=1)
    # Assert
    assert restored.round == 4
    assert [p.name for p in tmp_path.iterdir()] == ["site.pt"]
    for model in ("personal", "shared"):
        np.testing.assert_array_equal(trainer.encode(split, model=model), restored.encode(split, model=model))


def test_snapshot_with_other_config_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "site.pt"
    _trainer().save_snapshot(path)
    other = _trainer(dataclasses.replace(CFG, lr=0.5))
    # Execute / Assert
    with pytest.raises(StateMismatch, match="config"):
        other.load_snapshot(path)


def test_flatten_unflatten_round_trip_keeps_integer_buffers_local() -> None:
    # Prepare
    trainer = _trainer()
    trainer.train_personal(_split(), epochs=1)
    like = trainer.personal.state_dict()
    # Execute
    vec = flatten_state(like)
    back = unflatten_state(vec * 2.0, like)
    # Assert
    floats = [k for k, v in like.items() if v.is_floating_point()]
    assert vec.dtype == np.float64 and vec.size == sum(like[k].numel() for k in floats)
    assert all(torch.equal(back[k], like[k] * 2.0) for k in floats)
    assert all(torch.equal(back[k], like[k]) for k in like if k not in floats)
    with pytest.raises(StateMismatch, match="values"):
        unflatten_state(vec[:-1], like)


def test_load_shared_state_replaces_weights_and_checks_layout() -> None:
    # Prepare
    a, b = _trainer(), _trainer(init_seed=42)
    # Execute
    b.load_shared_state(a.shared_state())
    # Assert
    np.testing.assert_array_equal(flatten_state(a.shared_state()), flatten_state(b.shared_state()))
    with pytest.raises(StateMismatch):
        b.load_shared_state({"head.weight": torch.zeros(1)})


def test_tiny_and_mismatched_splits() -> None:
    # Prepare
    trainer = _trainer(num_classes=3)
    one = _split(1)
    # Execute
    result = trainer.train_personal(one)
    # Assert
    assert np.isnan(result["loss"])
    with pytest.raises(DataError, match="classes"):
        trainer.train_personal(Split(one.image, one.text, np.ones((1, 4))))
    with pytest.raises(DataError, match="features"):
        trainer.train_personal(Split(np.ones((3, 5)), np.ones((3, 6)), np.ones((3, 3))))


def test_last_batch_of_one_record_is_merged() -> None:
    # Prepare: 17 records with batch 16 would leave a batch of one, which BatchNorm rejects.
    trainer = _trainer()
    # Execute
    result = trainer.train_personal(_split(17), epochs=2, progress=True)
    # Assert
    assert np.isfinite(result["loss"])


def test_bad_epochs_and_class_mask_are_rejected() -> None:
    # Prepare
    split = _split(10)
    trainer = _trainer()
    # Execute / Assert
    with pytest.raises(OptionError, match="epochs"):
        trainer.train_personal(split, epochs=-1)
    with pytest.raises(DataError, match="class_mask"):
        trainer.train_shared(split, prototypes=None, global_prototypes=None, class_mask=np.ones(4, bool))


@pytest.mark.shared_data
def test_one_centralised_round_on_wiki_beats_the_linear_hash() -> None:
    # Prepare: the real Wiki benchmark (about 7 s); a centralised linear ridge hash reaches about 0.57 mAP.
    from pfmh_model.data import load_h5
    from pfmh_model.evaluation import mean_average_precision
    from tests.conftest import shared_file

    wiki = load_h5(shared_file("wiki.h5"))
    config = TrainConfig(bits=32, personal_epochs=6, shared_epochs=6, seed=0)
    trainer = SiteTrainer(config, image_dim=wiki.image_dim, text_dim=wiki.text_dim)
    # Execute
    _round(trainer, wiki.train)
    score = mean_average_precision(trainer.binary_codes(wiki.query), trainer.binary_codes(wiki.database),
                                   wiki.query.labels, wiki.database.labels)
    # Assert
    assert score > 0.59, score  # 0.62 on the dev machine (1 thread)


def test_snapshot_carries_the_callers_progress_in_the_same_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "site.pt"
    progress = {"after_round": 7, "prototypes": [[0.5, -0.25], [1.0, 0.0]]}
    # Execute
    _trainer().save_snapshot(path, extra=progress)
    plain = tmp_path / "plain.pt"
    _trainer().save_snapshot(plain)
    # Assert
    assert _trainer().load_snapshot(path) == progress
    assert _trainer().load_snapshot(plain) == {}


def test_modality_dropout_hides_one_modality_of_a_fraction_of_records() -> None:
    # Prepare
    split = _split(60)
    codes = {}
    for p in (0.0, 0.5):
        trainer = _trainer(dataclasses.replace(CFG, modality_dropout=p))
        # Execute
        trainer.train_shared(split, prototypes=None, global_prototypes=None, distill=False)
        codes[p] = trainer.encode(split)
        mask = trainer._modality_mask(20_000)
    # Assert: the training step uses the mask (other weights than without it) ...
    assert not np.allclose(codes[0.0], codes[0.5])
    # ... which hides one modality, never both, of about p of the records, image and text evenly
    assert mask is not None and bool((mask.sum(dim=1) >= 1).all())
    hidden_image, hidden_text = float((mask[:, 0] == 0).float().mean()), float((mask[:, 1] == 0).float().mean())
    assert abs(hidden_image - 0.25) < 0.02 and abs(hidden_text - 0.25) < 0.02
    assert _trainer()._modality_mask(5) is None  # the default draws nothing: training is unchanged
    with pytest.raises(OptionError, match="modality_dropout"):
        TrainConfig(modality_dropout=1.5)


def test_snapshot_from_before_modality_dropout_still_loads(tmp_path: Path) -> None:
    # Prepare: a snapshot whose config lacks the new key, as older versions wrote it
    trainer = _trainer()
    state = trainer.state_dict()
    del state["config"]["modality_dropout"]
    # Execute
    again = _trainer()
    again.load_state_dict(state)
    # Assert: loads under the default; under another value it is refused
    np.testing.assert_array_equal(again.encode(_split()), trainer.encode(_split()))
    with pytest.raises(StateMismatch):
        _trainer(dataclasses.replace(CFG, modality_dropout=0.5)).load_state_dict(state)


def test_snapshot_from_before_personal_anchoring_loads_as_unanchored(tmp_path: Path) -> None:
    # Prepare: a snapshot of an unanchored trainer whose weights table lacks the new key, as older versions wrote it
    plain = dataclasses.replace(CFG, weights=dataclasses.replace(CFG.weights, personal_contrastive=0.0))
    trainer = _trainer(plain)
    state = trainer.state_dict()
    del state["config"]["weights"]["personal_contrastive"]
    # Execute
    again = _trainer(plain)
    again.load_state_dict(state)
    # Assert: it loads as personal_contrastive = 0 (what it trained with); under the default it is refused
    np.testing.assert_array_equal(again.encode(_split()), trainer.encode(_split()))
    with pytest.raises(StateMismatch, match="differs"):
        _trainer(dataclasses.replace(CFG, weights=dataclasses.replace(CFG.weights, personal_contrastive=0.3))
                 ).load_state_dict(state)
