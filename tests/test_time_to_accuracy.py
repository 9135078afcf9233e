"""benchmarks/time_to_accuracy.py: the early-stopping baseline read off a full run."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import time_to_accuracy as tta  # noqa: E402


def full_run(slice_scores, dev_scores, spe=10):
    """A synthetic full-mode report: the slice recorded at 2 checks an epoch, dev scored at each
    epoch's end, 1 s a step."""
    epochs = len(dev_scores)
    history = [{"event": "interval", "step": (i + 1) * spe // 2, "epoch": (i + 1) / 2,
                "signals": {"val_slice": {"score": sc, "loss": 1.0 - sc}}} for i, sc in enumerate(slice_scores)]
    evals = [{"step": (e + 1) * spe, "epoch": e + 1, "score": sc, "train_time_s": float((e + 1) * spe)}
             for e, sc in enumerate(dev_scores)]
    return {"mode": "full", "steps": epochs * spe, "steps_per_epoch": spe, "train_time_s": float(epochs * spe),
            "phases_s": {}, "evals": evals, "controller_history": history}


def test_early_stop_at_the_plateau_rule():
    full = full_run([0.70, 0.80, 0.85, 0.84, 0.83, 0.82, 0.81, 0.80], [0.80, 0.86, 0.85, 0.84])
    es = tta.early_stop(full)
    assert es["step"] == 25  # two checks without a gain after the best at step 15
    assert es["score"] == 0.86  # the last dev evaluation before the stop (step 20)
    assert es["restore_best_score"] == 0.80  # the slice's best (step 15) falls after the dev eval of step 10
    row = tta.es_run(full)
    assert row["end_time_x_full_budget"] == pytest.approx(25 / 40)
    assert row["d_final"] == pytest.approx(100 * (0.86 - 0.84))


def test_a_stop_before_the_first_dev_evaluation_is_unscored_not_a_crash():
    # the slice's best is its first check (step 5), before any dev evaluation (step 10)
    full = full_run([0.90, 0.80, 0.70, 0.60], [0.80, 0.82])
    es = tta.early_stop(full)
    assert es["step"] == 15 and es["restore_best_score"] is None
    row = tta.es_run(full)
    assert row["d_restore_best"] is None and row["d_final"] == pytest.approx(100 * (0.80 - 0.82))
