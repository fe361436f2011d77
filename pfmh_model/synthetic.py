"""Synthetic multi-label image/text datasets shaped like MIRFlickr-25K: the embedded default data.

Generation (all draws from one ``np.random.default_rng(seed)``, vectorised, float32 for big arrays):

1. **Labels.** A record draws a latent topic z from imbalanced topic weights (Dirichlet(1)). Label c
   is on with probability sigmoid(logit f_c + A[z, c] + s), where f_c are Zipf-like base rates
   (a few labels much more frequent than the rest), A ~ N(0, ``topic_spread``) ties labels to
   topics (hence co-occurrence), and the shift s is set by bisection so the expected number of
   labels per record is ``mean_labels``. A record left with no label gets one drawn from its topic.
2. **Feature labels.** With probability ``label_noise`` one of a record's labels is swapped for a
   random other label *in the features only*: the stored labels stay, so some records look like
   another class. Classes also come in confusable pairs (below).
3. **Image** (non-negative, dense-ish, like CNN fc7): latent u = mean of the class directions of
   the record's feature labels + ``topic_weight`` * topic direction + ``image_noise`` * N(0, I_r)
   in r = ``latent_dim`` dims; class directions of a confusable pair have cosine ``confusion``.
   Then image = ReLU(u P + 0.1 * ``image_noise`` * eps) with a fixed Gaussian projection
   P (r, d_img) and per-dimension noise eps.
4. **Text** (sparse non-negative counts, like a tag bag of words): 3 + Poisson(``words_per_record``)
   tokens; each token comes from a Zipf background over the vocabulary with probability
   ``text_background``, else from the word distribution of a uniformly chosen feature label. A
   class's distribution covers ``vocab_per_class`` words with Gamma(0.5) weights; a confusable
   pair shares a ``confusion`` fraction of them. Text = token counts per word.

Hashing is learnable (both modalities carry the labels) but not trivial (noise, confusable pairs,
label noise, imbalance); the two modalities carry partly independent evidence, so fusing helps.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfmh_model.data import MultiModalDataset, Split, save_h5
from pfmh_model.errors import ConfigError

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 2048


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and difficulty knobs of one synthetic dataset (the steps are in the module docstring).

    Sizes: ``image_dim``/``text_dim`` feature widths, ``num_classes`` labels, ``n_*`` records per
    split. Label model: ``num_topics`` latent topics, ``mean_labels`` expected labels per record,
    ``max_label_rate`` base rate of the most frequent label before the shift, ``topic_spread`` how
    strongly topics drive labels (co-occurrence). Difficulty: ``label_noise`` fraction of records
    whose features follow a perturbed label set, ``confusion`` cosine/overlap of confusable class
    pairs, ``image_noise`` latent noise std, ``topic_weight`` topic share of the image latent,
    ``text_background`` fraction of background tokens, ``words_per_record`` Poisson mean of extra
    tokens, ``vocab_per_class`` words each class emits.
    """

    name: str
    image_dim: int
    text_dim: int
    num_classes: int
    n_train: int
    n_database: int
    n_query: int
    train_from_database: bool = True  # train = the first n_train database records (MIRFlickr protocol)
    latent_dim: int = 48
    num_topics: int = 8
    mean_labels: float = 3.0
    max_label_rate: float = 0.42
    topic_spread: float = 2.5
    topic_weight: float = 0.5
    label_noise: float = 0.2
    confusion: float = 0.6
    image_noise: float = 1.5
    words_per_record: float = 6.0
    text_background: float = 0.55
    vocab_per_class: int = 40


PRESETS: dict[str, SyntheticSpec] = {
    "mirflickr": SyntheticSpec("synthetic_mirflickr", 4096, 1386, 24, 5000, 17772, 2243, mean_labels=3.5),
    "small": SyntheticSpec("synthetic_small", 512, 256, 24, 2000, 4000, 500, vocab_per_class=20),
    "tiny": SyntheticSpec("synthetic_tiny", 64, 48, 8, 300, 600, 100, latent_dim=16, num_topics=4,
                          mean_labels=2.0, vocab_per_class=8),
}


def _check(spec: SyntheticSpec) -> None:
    sizes = {"image_dim": spec.image_dim, "text_dim": spec.text_dim, "num_classes": spec.num_classes,
             "n_database": spec.n_database, "n_query": spec.n_query, "latent_dim": spec.latent_dim,
             "num_topics": spec.num_topics}
    for key, value in sizes.items():
        if value < 1:
            raise ConfigError(f"SyntheticSpec.{key} = {value} must be >= 1")
    if spec.num_classes < 2 or not 1.0 <= spec.mean_labels < spec.num_classes:
        raise ConfigError(f"SyntheticSpec needs num_classes >= 2 and 1 <= mean_labels < num_classes, got "
                          f"{spec.num_classes} and {spec.mean_labels}")
    if spec.train_from_database and not 0 <= spec.n_train <= spec.n_database:
        raise ConfigError(f"n_train {spec.n_train} must lie in [0, n_database {spec.n_database}] when "
                          "train_from_database; lower n_train or set train_from_database=False")
    if spec.vocab_per_class > spec.text_dim:
        raise ConfigError(f"vocab_per_class {spec.vocab_per_class} > text_dim {spec.text_dim}; lower it")
    for key in ("label_noise", "confusion", "text_background", "max_label_rate"):
        if not 0.0 <= getattr(spec, key) < 1.0:
            raise ConfigError(f"SyntheticSpec.{key} = {getattr(spec, key)} must lie in [0, 1)")


def _label_model(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Topic weights (T,) and per-topic label probabilities (T, C) with the target mean."""
    c = spec.num_classes
    rates = spec.max_label_rate * (1.0 + rng.permutation(c)) ** -1.0
    base = np.log(rates / (1.0 - rates)) + rng.normal(0.0, spec.topic_spread, (spec.num_topics, c))
    weights = rng.dirichlet(np.ones(spec.num_topics))
    lo, hi = -20.0, 20.0
    for _ in range(60):  # bisection on the shift: expected labels per record is increasing in it
        mid = 0.5 * (lo + hi)
        mean = float(weights @ (1.0 / (1.0 + np.exp(-(base + mid)))).sum(axis=1))
        lo, hi = (mid, hi) if mean < spec.mean_labels else (lo, mid)
    return weights, 1.0 / (1.0 + np.exp(-(base + lo)))


def _pick(cdf: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per entry of ``rows`` from the categorical with cumulative row ``cdf[rows]``."""
    width = cdf.shape[1]
    flat = (cdf / cdf[:, -1:] + np.arange(len(cdf))[:, None]).ravel()
    idx = np.searchsorted(flat, rows + rng.random(len(rows)), side="right") - rows * width
    return np.minimum(idx, width - 1)


def _paired(vectors: np.ndarray, partner: np.ndarray, cosine: float) -> np.ndarray:
    """Mix each row with its partner's: for independent Gaussian rows, partners get cosine ~ ``cosine``.

    With weights (a, s), a^2 + s^2 = 1, the cosine of a*v_p + s*v and a*v + s*v_p is 2as; solve for a.
    """
    a = np.sqrt((1.0 - np.sqrt(1.0 - cosine**2)) / 2.0)
    return a * vectors[partner] + np.sqrt(1.0 - a**2) * vectors


def _records(spec: SyntheticSpec, n: int, rng: np.random.Generator, model: dict[str, np.ndarray]) -> Split:
    c = spec.num_classes
    topic = _pick(np.cumsum(model["weights"])[None, :], np.zeros(n, dtype=np.int64), rng)
    labels = rng.random((n, c)) < model["probs"][topic]
    empty = ~labels.any(axis=1)
    labels[np.flatnonzero(empty), _pick(np.cumsum(model["probs"], axis=1), topic[empty], rng)] = True
    feat = labels.copy()  # label noise: swap one label of some records, in the features only
    noisy = np.flatnonzero(rng.random(n) < spec.label_noise)
    drop = _pick(np.cumsum(feat[noisy], axis=1, dtype=np.float64), np.arange(len(noisy)), rng)
    feat[noisy, drop] = False
    feat[noisy, (drop + rng.integers(1, c, len(noisy))) % c] = True
    featf = feat.astype(np.float32)
    k = featf.sum(axis=1, keepdims=True)
    latent = (featf @ model["img_dirs"]) / k + spec.topic_weight * model["topic_dirs"][topic]
    latent += spec.image_noise * rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
    image = np.empty((n, spec.image_dim), dtype=np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        block = latent[start:start + _CHUNK_ROWS] @ model["proj"]
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(0.1 * spec.image_noise)
        image[start:start + _CHUNK_ROWS] = np.maximum(block, 0.0)
    tokens = 3 + rng.poisson(spec.words_per_record, n)
    owner = np.repeat(np.arange(n), tokens)
    source = _pick(np.cumsum(feat[owner], axis=1, dtype=np.float64), np.arange(len(owner)), rng)
    source[rng.random(len(owner)) < spec.text_background] = c  # row c of the word cdf = background
    words = _pick(model["word_cdf"], source, rng)
    text = np.zeros((n, spec.text_dim), dtype=np.float32)
    np.add.at(text, (owner, words), 1.0)
    return Split(image=image, text=text, labels=labels)


def generate(spec_or_preset: str | SyntheticSpec = "mirflickr", *, seed: int = 0) -> MultiModalDataset:
    """Generate a synthetic dataset, deterministic in ``seed``.

    Args:
        spec_or_preset: a key of ``PRESETS`` or a ``SyntheticSpec``.
        seed: seed of the one ``np.random.default_rng`` used for everything.

    Returns:
        The dataset; class names are ``class00``, ``class01``, ...

    Shape:
        image (n, image_dim) float32 >= 0; text (n, text_dim) float32 word counts; labels
        (n, num_classes) float32 in {0, 1}, >= 1 label per record.

    Raises:
        ConfigError: unknown preset or an invalid spec.
    """
    if isinstance(spec_or_preset, str):
        if spec_or_preset not in PRESETS:
            raise ConfigError(f"unknown synthetic preset {spec_or_preset!r}; choose one of {sorted(PRESETS)}")
        spec = PRESETS[spec_or_preset]
    else:
        spec = spec_or_preset
    _check(spec)
    rng = np.random.default_rng(seed)
    c, r, v = spec.num_classes, spec.latent_dim, spec.text_dim
    weights, probs = _label_model(spec, rng)
    perm = rng.permutation(c)
    first, second = perm[0:c - 1:2], perm[1:c:2]  # confusable pairs; an odd class out is its own partner
    partner = np.arange(c)
    partner[first], partner[second] = second, first
    img_dirs = _paired(rng.standard_normal((c, r)), partner, spec.confusion)
    vocab = np.argsort(rng.random((c, v)), axis=1)[:, :spec.vocab_per_class]
    shared = int(round(spec.confusion * spec.vocab_per_class / 2))
    vocab[second, :shared] = vocab[first, :shared]  # confusable pairs share some words
    word_probs = np.zeros((c + 1, v))
    np.put_along_axis(word_probs[:c], vocab, rng.gamma(0.5, size=vocab.shape) + 1e-3, axis=1)
    word_probs[c] = (1.0 + rng.permutation(v)) ** -1.0
    model = {"weights": weights, "probs": probs, "img_dirs": img_dirs.astype(np.float32),
             "topic_dirs": rng.standard_normal((spec.num_topics, r)).astype(np.float32),
             "proj": (rng.standard_normal((r, spec.image_dim)) / np.sqrt(r)).astype(np.float32),
             "word_cdf": np.cumsum(word_probs, axis=1)}
    database = _records(spec, spec.n_database, rng, model)
    query = _records(spec, spec.n_query, rng, model)
    if spec.train_from_database:
        train = database.subset(np.arange(spec.n_train))
    else:
        train = _records(spec, spec.n_train, rng, model)
    dataset = MultiModalDataset(spec.name, train, database, query,
                                class_names=tuple(f"class{i:02d}" for i in range(c)))
    logger.info("generated %s (seed %d)", dataset.describe(), seed)
    return dataset


def write_synthetic(path: str | os.PathLike[str], preset: str | SyntheticSpec = "mirflickr", *,
                    seed: int = 0) -> Path:
    """Generate ``preset`` with ``seed`` and save it to ``path`` (see ``save_h5``); returns the path."""
    out = Path(path)
    save_h5(generate(preset, seed=seed), out)
    return out
