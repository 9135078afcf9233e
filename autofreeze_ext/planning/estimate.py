"""What freezing bought a single run, estimated without running full fine-tuning."""
from __future__ import annotations

from typing import List, Optional

from ..freezing.history import checks_without_gain
from ..training.parts.converged import CONVERGED


def estimate_full_time(report: dict) -> Optional[dict]:
    """Full fine-tuning's training time estimated from this run's own steps before the first
    freeze: mean step time at frozen depth 0 (the controller's statistics included, less the
    validation slice's checks: full fine-tuning makes none) times the run's number of steps, or
    its planned budget (``total_steps``) where the policy ended it early (``--stop-when-converged``:
    the steps it saved are part of what it bought; a run stopped for any other reason, e.g.
    ``--stop-after-steps``, is compared over the steps it ran). ``None`` when fewer than 3 steps
    ran unfrozen (e.g. a static mode).

    Returns ``{"full_s", "step_s", "steps_measured", "steps", "speedup", "checks_s", "stopped_at"}``
    (``stopped_at``: the step a converged run ended at, else None), speedup against the run's
    measured training time (evaluation excluded in both).
    """
    seconds, steps = (report.get("depth_seconds") or {}).get("0", [0.0, 0])
    if steps < 3 or not report.get("train_time_s"):
        return None
    checks = min(seconds, (report.get("signal_seconds") or {}).get("val_slice", 0.0))  # (all before the freeze,
    step_s = (seconds - checks) / steps  # but with --stop-when-converged: then the estimate errs low)
    early = report.get("stopped") == CONVERGED and (report.get("total_steps") or 0) > report["steps"]
    budget = report["total_steps"] if early else report["steps"]
    full = step_s * budget
    return {"full_s": full, "step_s": step_s, "steps_measured": steps, "steps": budget,
            "speedup": full / report["train_time_s"], "checks_s": checks,
            "stopped_at": report["steps"] if early else None}


def freezing_summary(report: dict) -> str:
    """``"5 of 6 blocks frozen (first at step 107, epoch 0.43; the last at step 350)"``."""
    trace = report.get("frozen_depth") or []
    n = report.get("num_blocks")
    final = trace[-1]["depth"] if trace else 0
    if not final:
        why = _why_nothing_froze(report)
        return f"0 of {n} blocks frozen" + (f" ({why})" if why else "")
    spe = report.get("steps_per_epoch") or 0
    first = next(e for e in trace if e["depth"] > 0)
    last = next(e for e in trace if e["depth"] == final)
    when = f"step {first['step']}" + (f", epoch {first['step'] / spe:.2f}" if spe else "")
    tail = f"; the last at step {last['step']}" if last["step"] != first["step"] else ""
    return f"{final} of {n} blocks frozen (first at {when}{tail})"


def _why_nothing_froze(report: dict) -> Optional[str]:
    """What the last decision of a run that froze nothing said: the guard that held it, or how
    far the validation slice was from a plateau."""
    tested = [h for h in report.get("controller_history") or [] if h.get("event") == "interval" and h.get("eta")]
    if not tested:
        return None
    last = tested[-1]
    if last.get("held_by"):
        return f"held at the last check: {last['held_by']}"
    if last.get("signal") == "val_slice":
        since = checks_without_gain(last)
        return (f"the validation slice was still improving: {since:g} check(s) without a gain at its last check, "
                f"a plateau takes {last['threshold']:g}; a run whose budget outlasts convergence freezes")
    return None


def estimate_lines(report: dict) -> List[str]:
    """What ``autofreeze finetune`` prints after its table: blocks frozen, the estimated full
    fine-tuning time and speedup (said to be an estimate, and how it was made), and how to
    measure it instead."""
    lines = [f"freezing: {freezing_summary(report)}" + (f"; policy {report['policy']}" if report.get("policy") else "")]
    if report.get("mode") == "full":
        return lines
    measure = (f"for a measured speedup: autofreeze compare --modes full,{report.get('mode')} "
               "(same data, seed and settings)")
    est = estimate_full_time(report)
    if est is None:
        froze = any(e["depth"] > 0 for e in report.get("frozen_depth") or [])
        lines.append("no estimate of full fine-tuning's time: fewer than 3 steps ran "
                     + ("before the first freeze; " if froze else "; ") + measure)
        return lines
    nothing_froze = est["steps_measured"] >= est["steps"]
    over = "all steps: nothing froze" if nothing_froze else f"the {est['steps_measured']} steps before the first freeze"
    lines.append(f"full fine-tuning, estimated: {est['full_s']:.0f} s = {est['step_s']:.3f} s/step (mean over {over}"
                 f"{', less the validation checks' if est.get('checks_s') else ''}) x {est['steps']} steps"
                 + (f" (the planned budget: the run stopped converged at step {est['stopped_at']})"
                    if est.get("stopped_at") else ""))
    why = (f"; below 1: nothing froze, and the policy's checks cost {est['checks_s']:.1f} s"
           if est["speedup"] < 1 and nothing_froze and est.get("checks_s") else "")
    lines.append(f"estimated speedup: {est['speedup']:.2f}x (training time {report['train_time_s']:.0f} s; an "
                 f"estimate, evaluation excluded{why}); {measure}")
    return lines
