"""Dev-set metrics (scikit-learn / scipy), chosen per task; every one is higher-is-better."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

CLASSIFICATION = ("accuracy", "f1", "macro_f1", "mcc")
REGRESSION = ("pearson", "spearman")
METRICS = CLASSIFICATION + REGRESSION


def _accuracy(pred, gold) -> float:
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(gold, pred))


def _f1(pred, gold) -> float:
    """F1 of class 1 for two classes (GLUE's MRPC/QQP figure), macro F1 for more."""
    from sklearn.metrics import f1_score
    binary = set(gold) | set(pred) <= {0, 1}
    return float(f1_score(gold, pred, average="binary" if binary else "macro", zero_division=0))


def _macro_f1(pred, gold) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(gold, pred, average="macro", zero_division=0))


def _mcc(pred, gold) -> float:
    from sklearn.metrics import matthews_corrcoef
    return float(matthews_corrcoef(gold, pred))


def _corr(fn) -> Callable:
    def score(pred, gold) -> float:
        import numpy as np
        if np.std(pred) == 0 or np.std(gold) == 0:  # a constant prediction: no correlation
            return 0.0
        return float(fn(pred, gold)[0])
    return score


def _pearson(pred, gold) -> float:
    from scipy.stats import pearsonr
    return _corr(pearsonr)(pred, gold)


def _spearman(pred, gold) -> float:
    from scipy.stats import spearmanr
    return _corr(spearmanr)(pred, gold)


_FNS: Dict[str, Callable] = {"accuracy": _accuracy, "f1": _f1, "macro_f1": _macro_f1, "mcc": _mcc,
                             "pearson": _pearson, "spearman": _spearman}


def default_metric(regression: bool) -> str:
    """Accuracy for classification, Pearson correlation for regression."""
    return "pearson" if regression else "accuracy"


def reported_metrics(regression: bool) -> Sequence[str]:
    """Every metric a run reports for its kind of task."""
    return REGRESSION if regression else CLASSIFICATION


def check_metric(name: Optional[str], regression: bool) -> str:
    """``name`` (or the default) when it suits the task, else a ``ValueError``."""
    name = name or default_metric(regression)
    allowed = reported_metrics(regression)
    if name not in allowed:
        kind = "a regression" if regression else "a classification"
        raise ValueError(f"metric {name!r} does not apply to {kind} task; choose one of {', '.join(allowed)}")
    return name


def compute(pred: List[float], gold: List[float], regression: bool) -> Dict[str, float]:
    """Every reported metric of predictions ``pred`` (class ids, or floats) against ``gold``."""
    if not regression:
        pred, gold = [int(p) for p in pred], [int(g) for g in gold]
    return {m: _FNS[m](pred, gold) for m in reported_metrics(regression)}
