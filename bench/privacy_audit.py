"""Empirical privacy audit: a canary membership test on the real site code path, beside the accountant's epsilon.

The game (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021, "Adversary instantiation"): one site's training
records D, and a canary record z. Each trial runs one round of the site's real local work
(``participant.local_release.LocalRelease.compute``: the DP chain in force, the clipped statistics, the
Gaussian noise) on D ("out") or on D + {z} ("in"), with fresh secret randomness, and keeps the released
vector. z is an outlier (features far from the data) with one label, the site's rarest class. The attacker
sees only released vectors: on the first half of the trials it fits a diagonal linear discriminant (each
coordinate's in-minus-out mean shift over its variance) and a threshold on its score; on the second half it
applies them. With one-sided 97.5% Clopper-Pearson upper bounds on the false-positive and
false-negative rates (95% jointly), every (epsilon, delta)-DP mechanism must satisfy FPR + e^eps FNR >= 1 - delta
(and the mirror), so

    eps_lower = max(log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub))

is a 95% lower bound on the true epsilon. With DP on it must stay at or below the accountant's epsilon for the
same round (``security.accountant.epsilon_for`` of the planned releases); with DP off the same test must
show a clear leak. The ``non_dp_encoder`` row is a negative control: the bug this chain fixes (statistics
from an encoder trained without DP, with the Gaussian noise alone accounted); its bound is compared with the
epsilon that chain would have claimed.

    python bench/privacy_audit.py --trials 200 --sigma 2.0     # every chain, DP on and off, and the control
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DELTA = 1e-5
TRAIN = {"bits": 16, "hidden": 32, "width": 16, "personal_epochs": 1, "shared_epochs": 1, "batch_size": 32}


def clopper_pearson_upper(failures: int, trials: int, alpha: float = 0.025) -> float:
    """One-sided upper confidence bound on a binomial rate (exact, via the beta quantile)."""
    from scipy.stats import beta

    return 1.0 if failures >= trials else float(beta.ppf(1 - alpha, failures + 1, trials - failures))


def _bound(out: np.ndarray, inn: np.ndarray, tau: float, delta: float) -> float:
    fpr = clopper_pearson_upper(int((out > tau).sum()), len(out))
    fnr = clopper_pearson_upper(int((inn <= tau).sum()), len(inn))
    values = [math.log((1 - delta - fnr) / fpr) if 1 - delta - fnr > 0 else 0.0,
              math.log((1 - delta - fpr) / fnr) if 1 - delta - fpr > 0 else 0.0]
    return max(0.0, *values)


def epsilon_lower_bound(scores_out: np.ndarray, scores_in: np.ndarray, *, delta: float = DELTA) -> float:
    """95% lower bound on epsilon from membership scores (threshold picked on the first half, bounded on the second)."""
    half_out, half_in = len(scores_out) // 2, len(scores_in) // 2
    pick_out, pick_in = scores_out[:half_out], scores_in[:half_in]
    candidates = np.unique(np.concatenate([pick_out, pick_in]))
    best = max(candidates, key=lambda tau: _bound(pick_out, pick_in, tau, delta))
    return _bound(scores_out[half_out:], scores_in[half_in:], best, delta)


def project(releases_out: np.ndarray, releases_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores: a diagonal linear discriminant fitted on the first half of the trials (the attacker's fit).

    Each coordinate is weighted by its in-minus-out mean shift over its pooled variance, so a coordinate that
    moves by a fixed amount with no noise (DP off) dominates, and noisy ones count little.
    """
    half = len(releases_out) // 2
    shift = releases_in[:half].mean(axis=0) - releases_out[:half].mean(axis=0)
    pooled = (releases_in[:half].var(axis=0) + releases_out[:half].var(axis=0)) / 2
    weights = shift / (pooled + 1e-9 * max(float(pooled.max()), 1e-12))
    return releases_out @ weights, releases_in @ weights


def _site(chain: str, dp: bool, sigma: float, tmp: Path, data, trial: int):  # noqa: ANN001, ANN202
    from federation.plan import FederationSettings, PrivacySettings
    from participant.local_release import LocalRelease, load_frozen_encoder
    from participant.privacy import SitePrivacy
    from pfmh_model.aggregation import UploadLayout
    from pfmh_model.trainer_factory import make_trainer
    from security.signing import SigningKey

    privacy = PrivacySettings(mode="local" if dp else "off", noise_multiplier=sigma, dp_sgd_noise_multiplier=sigma,
                              statistics_encoder="frozen" if chain == "frozen" else "dp_sgd")
    settings = FederationSettings(federation_id="audit", image_dim=data.image_dim, text_dim=data.text_dim,
                                  num_classes=data.num_classes, train=TRAIN, privacy=privacy)
    trainer = make_trainer(settings.train, image_dim=data.image_dim, text_dim=data.text_dim,  # the plan's weights
                           num_classes=data.num_classes, batch_seed=trial, **LocalRelease.dp_models(settings))
    frozen = load_frozen_encoder(trainer.personal, None, "") if dp and chain == "frozen" else None
    state = SitePrivacy(privacy, epsilon_max=1e9, ledger_path=tmp / f"ledger-{trial}.jsonl",
                        signing_key=SigningKey.generate(), site="audit")
    cls = _non_dp_encoder_release() if chain == "non_dp_encoder" else LocalRelease
    release = cls(settings, trainer, state, UploadLayout(data.num_classes, TRAIN["bits"], 0), frozen_encoder=frozen)
    return release, state


def _non_dp_encoder_release():  # noqa: ANN202
    from participant.local_release import LocalRelease
    from participant.privacy import PROTOTYPE_MECHANISM

    class NonDpEncoderRelease(LocalRelease):
        """The negative control: today's bug, an encoder trained without DP, Gaussian noise alone accounted."""

        def _train_dp(self, trainer, train, targets, epochs) -> None:  # noqa: ANN001
            trainer.train_personal(train, epochs=epochs)

        def planned(self, n_records: int):  # noqa: ANN201
            return [r for r in super().planned(n_records) if r.mechanism == PROTOTYPE_MECHANISM]

    return NonDpEncoderRelease


def run_audit(*, chain: str, dp: bool, sigma: float, trials: int, seed: int = 0, progress: bool = True) -> dict:
    """One row of the table: ``trials`` runs per world; returns the bound and the accountant's epsilon."""
    import torch

    from pfmh_model.data import Split
    from pfmh_model.server_step import initial_prototypes
    from pfmh_model.synthetic import generate
    from security.accountant import epsilon_for

    torch.set_num_threads(1)
    data = generate("tiny", seed=seed)
    d = data.train
    c = int(np.argmin(d.labels.sum(axis=0)))  # the canary's one label: the site's rarest class
    canary_label = np.zeros((1, data.num_classes), dtype=d.labels.dtype)
    canary_label[0, c] = 1
    rng = np.random.default_rng(1234)  # the canary is fixed in advance (part of the game, not of the mechanism)
    outlier = [(x.mean(axis=0) + 6.0 * x.std(axis=0) * rng.standard_normal(x.shape[1]))[None, :].astype(np.float32)
               for x in (d.image, d.text)]
    with_canary = Split(np.concatenate([d.image, outlier[0]]), np.concatenate([d.text, outlier[1]]),
                        np.concatenate([d.labels, canary_label]))
    protos = initial_prototypes(data.num_classes, TRAIN["bits"], seed=0, method="pfmh")
    scores = {"out": [], "in": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(trials):
            for world, split in (("out", d), ("in", with_canary)):
                release, state = _site(chain, dp, sigma, Path(tmp), data, k)
                scores[world].append(release.compute(split, protos))
                state.close()
            if progress and (k + 1) % max(1, trials // 10) == 0:
                print(f"  {chain:6s} dp={'on ' if dp else 'off'} {k + 1}/{trials} trials, "
                      f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        release, state = _site(chain, dp, sigma, Path(tmp), data, 0)
        planned = release.planned(len(d))  # n records: the larger sample rate of the two worlds
        state.close()
    accountant = epsilon_for([(r.noise_multiplier, r.sample_rate, r.steps) for r in planned], DELTA) if dp else math.inf
    lower = epsilon_lower_bound(*project(np.asarray(scores["out"]), np.asarray(scores["in"])))
    return {"chain": chain, "dp": dp, "sigma": sigma if dp else None, "trials": trials, "epsilon_lower_95": lower,
            "epsilon_accountant": accountant, "seconds": time.perf_counter() - started,
            "mechanisms": [dataclasses.asdict(r) for r in planned]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", nargs="+", default=["dp_sgd", "frozen", "non_dp_encoder"],
                   choices=["dp_sgd", "frozen", "non_dp_encoder"],
                   help="non_dp_encoder is the negative control (DP on only, the pre-fix chain)")
    p.add_argument("--trials", type=int, default=200, help="runs per world (in / out) for each row")
    p.add_argument("--sigma", type=float, default=2.0, help="noise multiplier of both mechanisms")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (not of any DP draw)")
    args = p.parse_args(argv)
    rows = [run_audit(chain=chain, dp=dp, sigma=args.sigma, trials=args.trials, seed=args.seed)
            for chain in args.chains for dp in ((True,) if chain == "non_dp_encoder" else (True, False))]
    print("\n| chain | DP | sigma | trials per world | epsilon lower bound (95%) | accountant epsilon | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        acc = "-" if math.isinf(r["epsilon_accountant"]) else f"{r['epsilon_accountant']:.2f}"
        print(f"| {r['chain']} | {'on' if r['dp'] else 'off'} | {r['sigma'] or '-'} | {r['trials']} | "
              f"{r['epsilon_lower_95']:.2f} | {acc} | {r['seconds']:.0f} |")
    bad = [r for r in rows if r["dp"] and r["chain"] != "non_dp_encoder"
           and r["epsilon_lower_95"] > r["epsilon_accountant"]]
    if bad:
        print("AUDIT FAILED: a lower bound exceeds the accountant's epsilon", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
