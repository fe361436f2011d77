"""PNG figures of a run: mAP over rounds and the final precision-recall curve."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pfmh_model.atomic_file import atomic_path


def plot_run(path: Path, curves: Mapping[str, Sequence[tuple[int, float, float | None]]],
             pr_curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str) -> Path:
    """Write a two-panel PNG.

    Args:
        path: output file (.png).
        curves: per method, a list of (round, mean per-site mAP, global mAP or None).
        pr_curves: per method, (precision, recall) of the final global evaluation.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_map, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in curves.items():
        rounds = [p[0] for p in points]
        line = ax_map.plot(rounds, [p[1] for p in points], marker="o", ms=3, label=f"{name} per-site mean")[0]
        glob = [(p[0], p[2]) for p in points if p[2] is not None]
        if glob:
            ax_map.plot([g[0] for g in glob], [g[1] for g in glob], ls="--", color=line.get_color(),
                        label=f"{name} global")
    ax_map.set_xlabel("round")
    ax_map.set_ylabel("mAP")
    ax_map.set_title("retrieval mAP over rounds")
    ax_map.grid(alpha=0.3)
    ax_map.legend(fontsize=7)
    for name, (precision, recall) in pr_curves.items():
        ax_pr.plot(recall, precision, marker=".", ms=3, label=name)
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_title("final precision-recall (global, Hamming radius)")
    ax_pr.grid(alpha=0.3)
    ax_pr.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
