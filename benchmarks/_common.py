"""Shared helpers for the benchmark scripts: timing, machine description, table printing."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch

from autofreeze_ext._table import print_table  # noqa: F401  (re-exported for the scripts)


def machine() -> Dict[str, object]:
    info: Dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: Dict[str, Callable[[], object]], repeat: int, warmup: int, device: str) -> Dict[str, List[float]]:
    """Run each function ``repeat`` times, interleaved round-robin so that machine noise hits
    all of them alike; returns the per-call times in seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}")


# Reports in benchmarks/results written before the reports had a task metric hold accuracy only;
# the package reads only its own format, these read both.
def score(entry: dict) -> float:
    """The metric of one evaluation (older reports: its accuracy)."""
    return entry["score"] if "score" in entry else entry["accuracy"]


def best_score(report: dict) -> float:
    return report["best_score"] if "best_score" in report else report["best_accuracy"]


def final_score(report: dict) -> float:
    return report["final_score"] if "final_score" in report else report["final_accuracy"]
