"""PNG plots of fine-tuning reports: dev metric vs training time, frozen depth vs step,
training time per phase for each mode, and the freezing story of the first adaptive run (the
value each block was tested on per interval, the threshold, and which guard held a freeze)."""
from __future__ import annotations

import textwrap
from typing import List

from .freezing.history import checks_without_gain
from .training.parts.converged import CONVERGED


def save_figure(fig, axes, path: str, dpi: int = 110, legend_size: int = 8) -> str:
    """Grid and legend on each of ``axes``, then ``fig`` laid out, written to ``path`` and closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_reports(reports: List[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    story = next((r for r in reports if any("eta" in h and h["eta"] for h in r.get("controller_history", []))), None)
    fig, axes = plt.subplots(1, 4 if story else 3, figsize=(21 if story else 16, 4.2))
    ax1, ax2, ax3 = axes[:3]
    from .training.report import metric_of, score

    metric = metric_of(reports)
    for r in reports:
        ev = r["evals"]
        ax1.plot([e["train_time_s"] for e in ev], [100 * score(e) for e in ev], marker="o", ms=3, label=r["mode"])
        steps = [d["step"] for d in r["frozen_depth"]]
        ax2.step(steps, [d["depth"] for d in r["frozen_depth"]], where="post", label=r["mode"])
    ax1.set_xlabel("training time (s, evaluation excluded)")
    ax1.set_ylabel(_x100_label("dev", metric))
    ax1.set_title(f"{metric} vs time")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("frozen blocks")
    ax2.set_title("frozen depth")
    ax2.set_ylim(-0.2, max(r.get("num_blocks") or 1 for r in reports) + 0.2)  # whole blocks, 0 to all
    ax2.yaxis.get_major_locator().set_params(integer=True)
    phases = [k for k in ("prefix_forward", "suffix_forward", "backward", "optimizer", "statistics", "cache_io")
              if any(r.get("phases_s", {}).get(k, 0.0) > 0 for r in reports)]  # (a phase that took no time: left out)
    bottom = [0.0] * len(reports)
    for k in phases:
        vals = [r.get("phases_s", {}).get(k, 0.0) for r in reports]
        ax3.bar(range(len(reports)), vals, bottom=bottom, label=k.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax3.set_xticks(range(len(reports)), [r["mode"] for r in reports], rotation=20, ha="right")
    ax3.set_ylim(0, 1.15 * max(bottom + [1e-9]))  # headroom: the top segment clear of the frame
    ax3.set_ylabel("training time (s)")
    ax3.set_title("where the time goes")
    if story:
        _story(axes[3], story)
    return save_figure(fig, axes, path, dpi=120, legend_size=7)


def _x100_label(what: str, metric: str) -> str:
    """The axis label of a score plotted x100: a percentage for the metrics that are shares."""
    return f"{what} {metric} (%)" if metric in ("accuracy", "f1", "macro_f1") else f"{what} {metric} (x100)"


def _slice_story(ax, report: dict) -> None:
    """A validation-slice policy's checks: the slice's score at each check, the checks that
    gained (filled) and those that did not (open), the freeze (vertical line), and after it the
    checks that decide ``--stop-when-converged`` (crosses) and the stop (dashed line)."""
    checks = [h for h in report["controller_history"] if h.get("event") == "interval"
              and isinstance((h.get("signals") or {}).get("val_slice"), dict)]
    pts = [(h["step"], 100 * h["signals"]["val_slice"]["score"], checks_without_gain(h) == 0 if h.get("eta") else None)
           for h in checks]  # x100, as the dev panel
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="tab:blue", lw=1, label="validation slice score")
        for gained, marker, label in ((True, "o", "gained"), (False, "o", "no gain"), (None, "x", "after the freeze")):
            sel = [p for p in pts if p[2] is gained]
            if sel:
                face = {"facecolors": "none"} if gained is False else {}
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, s=18, color="tab:blue", label=label,
                           **face)
    for step in _freeze_steps(report):
        ax.axvline(step, color="grey", lw=0.8, alpha=0.6)
    if report.get("stopped") == CONVERGED:
        ax.axvline(report["steps"], color="tab:red", lw=0.8, ls="--", label="stopped: converged")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(_x100_label("slice", report.get("metric") or "score"))
    _story_title(ax, report)


def _freeze_steps(report: dict) -> List[int]:
    return [h["step"] for h in report["controller_history"] if h.get("event") == "freeze"]


#: characters of a story panel's title line (fontsize 8 in a quarter of the figure's width)
TITLE_WIDTH = 72


def _story_title(ax, report: dict) -> None:
    """``why it froze: POLICY`` (``why nothing froze`` when nothing did), on at most two lines
    of the panel's width."""
    why = "why it froze" if _freeze_steps(report) else "why nothing froze"
    lines = textwrap.wrap(f"{why}: {report.get('policy', report['mode'])}", width=TITLE_WIDTH, max_lines=2,
                          placeholder=" [...]", break_on_hyphens=False)
    ax.set_title("\n".join(lines), fontsize=8)


GUARD_COLORS = {"warm-up": "tab:orange", "not learning": "tab:red", "at most": "tab:purple", "budget": "tab:green"}


def _story(ax, report: dict) -> None:
    """Per interval: each active block's tested value (log scale), the threshold, freezes
    (vertical lines) and the guard that held a freeze back (coloured marks along the top)."""
    ivs = [h for h in report["controller_history"] if h.get("event") == "interval" and h.get("eta")]
    if ivs and ivs[0].get("signal") == "val_slice":
        return _slice_story(ax, report)
    blocks = sorted({int(b) for h in ivs for b in h["eta"]})
    for b in blocks:
        pts = [(h["step"], h["eta"][b] if b in h["eta"] else h["eta"].get(str(b))) for h in ivs]
        pts = [(x, y) for x, y in pts if y is not None and y > 0]
        if pts:
            ax.plot(*zip(*pts), marker=".", ms=3, lw=1, label=f"block {b}")
    ax.plot([h["step"] for h in ivs], [h["threshold"] for h in ivs], "k--", lw=1, label="threshold")
    for step in _freeze_steps(report):
        ax.axvline(step, color="grey", lw=0.8, alpha=0.6)
    top = ax.get_ylim()[1] if ivs else 1.0
    for name, color in GUARD_COLORS.items():
        held = [h["step"] for h in ivs if name in (h.get("held_by") or h.get("forced") or "")]
        if held:
            ax.scatter(held, [top] * len(held), marker="v", color=color, s=18, label=f"held/forced: {name}")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ivs[0].get("signal") or "eta (gradient-norm change)" if ivs else "value")
    _story_title(ax, report)
