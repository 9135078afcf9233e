"""The controller's history: one record per interval decision (the freezing story) and its log line."""
from __future__ import annotations

from typing import Dict, Optional

from ..policies import Decision


def interval_entry(info, decided: int, signals: Optional[Dict[str, object]],
                   decision: Optional[Decision]) -> dict:
    """The history record of one interval end: what the policy saw (``info``, an
    :class:`~autofreeze_ext.policies.IntervalStats`), the depth decided and, from the policy's
    :class:`~autofreeze_ext.policies.Decision` of this step, the values tested, the threshold
    and the guard that held a freeze back or the budget that forced one."""
    entry = {"event": "interval", "step": info.step, "epoch": info.epoch, "frozen_before": info.frozen_depth,
             "decided": max(decided, info.frozen_depth), "norms": info.norms}
    if signals:
        entry["signals"] = signals
    if decision is not None and decision.step == info.step:
        entry["eta"] = {int(b): v for b, v in decision.eta.items()}
        entry["threshold"] = decision.threshold
        for key, value in (("signal", decision.signal), ("held_by", decision.held_by), ("forced", decision.forced)):
            if value is not None:
                entry[key] = value
    return entry


def describe(entry: dict) -> Optional[str]:
    """One log line for an interval record that tested values (None when it tested none)."""
    if not entry.get("eta"):
        return None
    if entry.get("signal") == "val_slice":
        return _describe_check(entry)
    etas = " ".join(f"{b}:{v:.3g}" for b, v in sorted(entry["eta"].items()))
    why = entry.get("held_by") or entry.get("forced")
    return (f"autofreeze: step {entry['step']} interval: {entry.get('signal', 'eta')} {{{etas}}} threshold "
            f"{entry['threshold']:.3g} -> depth {entry['decided']}" + (f" ({why})" if why else ""))


def _describe_check(entry: dict) -> str:
    """A validation-slice check: the slice's score and loss, and the checks without a gain
    against the patience (one value for every block: the decision is the model's)."""
    value = (entry.get("signals") or {}).get("val_slice") or {}
    since, why = checks_without_gain(entry), entry.get("held_by") or entry.get("forced")
    score = f"score {value['score']:.4g} loss {value['loss']:.4g}, " if "score" in value else ""
    return (f"autofreeze: step {entry['step']} check: validation slice {score}{since:g} of {entry['threshold']:g} "
            f"checks without a gain -> depth {entry['decided']}" + (f" ({why})" if why else ""))


def checks_without_gain(entry: dict) -> float:
    """A validation-slice check's checks in a row without a gain (the policy records it as the
    tested value of every active block: the decision is the model's)."""
    return max(entry["eta"].values())
