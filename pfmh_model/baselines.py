"""Simple hashing baselines in numpy, run on the same partition and scored like the deep methods.

- ``ridge-local``: each site fits a closed-form ridge regression from its own training records'
  concatenated features to their labels, W = argmin ||X W - Y||^2 + lam ||W||^2, and hashes a record
  as sign((x W - m) R): m is the mean of the fitted label scores on the site's training records and R
  a (C, bits) Gaussian projection drawn from the run's seed, the same at every site. Nothing leaves
  a site; the codes of different sites still share one space because they all project label scores.
- ``ridge-central``: one ridge hash fitted on the pooled training records of all sites (the
  centralised reference); every site encodes with it.
- ``lsh``: random hyperplanes on the features, sign((x - mu) G) with G a (D, bits) Gaussian matrix
  drawn from the seed and mu the site's training mean. Data-independent up to that mean.

Features: each modality is scaled to unit L2 norm per record and the two are concatenated, so
neither dominates by its scale (Wiki's image rows are L1-normalised histograms, its text LDA or tf-idf).
The regression has an unpenalised bias (columns centred on the training mean); it is solved in its
primal or dual form, whichever is smaller (n < D on every Wiki site).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfmh_model.data import MultiModalDataset, Split
from pfmh_model.errors import ConfigError

__all__ = ["BASELINES", "RIDGE_LAMBDA", "LinearHash", "baseline_codes", "features", "fit_lsh", "fit_ridge_hash"]

BASELINES = ("ridge-local", "ridge-central", "lsh")
# Ridge penalty on unit-norm features, fixed for every dataset: of {0.1, 1, 10} it was best or within 0.005
# of best on both metrics for both ridge baselines on Wiki and Wiki tf-idf (Dirichlet 0.1, seed 0, 32 bits;
# docs/BENCHMARKS.md, accuracy section).
RIDGE_LAMBDA = 1.0


def features(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Concatenated per-record unit-norm image and text features; shape (n, d_img + d_txt) float64."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.concatenate([unit(image), unit(text)], axis=1)


@dataclass(frozen=True)
class LinearHash:
    """codes = sign((features(x) - mean) @ W - offset) for records x; W is (D, bits)."""

    mean: np.ndarray
    weights: np.ndarray
    offset: np.ndarray

    def encode(self, split: Split) -> np.ndarray:
        """Continuous codes (n, bits) float32; their signs are the hash codes."""
        x = features(split.image, split.text) - self.mean
        return (x @ self.weights - self.offset).astype(np.float32)


def _projection(rows: int, bits: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x5EED]).standard_normal((rows, bits))


def fit_ridge_hash(train: Split, *, bits: int, seed: int, lam: float = RIDGE_LAMBDA) -> LinearHash:
    """The ridge hash of the module docstring fitted on ``train``.

    Raises:
        ConfigError: fewer than 2 records, or lam <= 0.
    """
    if len(train) < 2:
        raise ConfigError(f"a ridge hash needs at least 2 training records, got {len(train)}")
    if not lam > 0:
        raise ConfigError(f"ridge lambda = {lam} must be > 0")
    x = features(train.image, train.text)
    mean = x.mean(axis=0)
    xc = x - mean
    y = np.asarray(train.labels, dtype=np.float64)
    n, d = xc.shape
    if n < d:
        w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(n), y)
    else:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ y)
    scores = xc @ w
    proj = _projection(y.shape[1], bits, seed)
    return LinearHash(mean, w @ proj, scores.mean(axis=0) @ proj)


def fit_lsh(train: Split, *, bits: int, seed: int) -> LinearHash:
    """Random hyperplanes through the training mean of ``train`` (module docstring)."""
    x = features(train.image, train.text)
    return LinearHash(x.mean(axis=0), _projection(x.shape[1], bits, seed), np.zeros(bits))


def baseline_codes(name: str, sites: list[MultiModalDataset], *, bits: int,
                   seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(query codes, database codes) per site for baseline ``name`` (one of ``BASELINES``).

    Raises:
        ConfigError: unknown name.
    """
    if name == "ridge-central":
        pooled = Split(np.concatenate([s.train.image for s in sites]), np.concatenate([s.train.text for s in sites]),
                       np.concatenate([s.train.labels for s in sites]))
        central = fit_ridge_hash(pooled, bits=bits, seed=seed)
        hashes = [central] * len(sites)
    elif name == "ridge-local":
        hashes = [fit_ridge_hash(s.train, bits=bits, seed=seed) for s in sites]
    elif name == "lsh":
        hashes = [fit_lsh(s.train, bits=bits, seed=seed) for s in sites]
    else:
        raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return [(h.encode(s.query), h.encode(s.database)) for h, s in zip(hashes, sites, strict=True)]
