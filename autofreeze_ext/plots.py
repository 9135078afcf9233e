"""PNG plots of fine-tuning reports: dev accuracy vs training time, frozen depth vs step."""
from __future__ import annotations

from typing import List


def plot_reports(reports: List[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in reports:
        ev = r["evals"]
        ax1.plot([e["train_time_s"] for e in ev], [100 * e["accuracy"] for e in ev], marker="o", ms=3, label=r["mode"])
        steps = [d["step"] for d in r["frozen_depth"]]
        ax2.step(steps, [d["depth"] for d in r["frozen_depth"]], where="post", label=r["mode"])
    ax1.set_xlabel("training time (s, evaluation excluded)")
    ax1.set_ylabel("dev accuracy (%)")
    ax1.set_title("accuracy vs time")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("frozen blocks")
    ax2.set_title("frozen depth")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
