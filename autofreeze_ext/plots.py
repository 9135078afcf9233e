"""PNG plots of fine-tuning reports: dev accuracy vs training time, frozen depth vs step, and
training time per phase for each mode."""
from __future__ import annotations

from typing import List


def plot_reports(reports: List[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
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
    phases = [k for k in ("prefix_forward", "suffix_forward", "backward", "optimizer", "statistics", "cache_io")
              if any(k in r.get("phases_s", {}) for r in reports)]
    bottom = [0.0] * len(reports)
    for k in phases:
        vals = [r.get("phases_s", {}).get(k, 0.0) for r in reports]
        ax3.bar(range(len(reports)), vals, bottom=bottom, label=k.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax3.set_xticks(range(len(reports)), [r["mode"] for r in reports], rotation=20, ha="right")
    ax3.set_ylabel("training time (s)")
    ax3.set_title("where the time goes")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
