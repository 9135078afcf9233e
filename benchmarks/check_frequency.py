"""How often the plateau policy checks its validation slice: cost against when it would freeze.

The policy's overhead is its slice checks (issue 27's target: < 2% of training time; the default,
2 checks per epoch of a 5% slice, measured 2.5-4%). Fewer checks cost less but see the plateau
later or from fewer points. This replays the plateau rule (no gain in score or loss for
``patience`` checks) at other check frequencies on the full fine-tuning runs of a regime sweep,
which record the slice at 10 checks per epoch, so no training run is spent:

* **freeze epoch**: where the rule first sees a plateau (guards left out; the real runs' freezes
  are in their reports, for checking the replay at the default frequency); "-" never;
* **overhead**: the plateau run's measured share of training time in slice checks (its
  ``statistics`` phase; paid until it freezes, all the way in a run that never does); a variant's
  checks cost ``checks per epoch / 2`` times the default's (the same slice, the same forward).

    python benchmarks/check_frequency.py [--out benchmarks/results/regimes]
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from time_to_accuracy import early_stop, load_regime  # noqa: E402

#: (checks per epoch, patience in checks): the default, then cheaper and finer ones; each spans
#: one epoch without a gain except (1, 2) and (2, 1)
VARIANTS = ((2, 2), (1, 1), (1, 2), (2, 1), (5, 5))


def replay(full: dict, per_epoch: int, patience: int):
    """The epoch at which the rule at this frequency first sees a plateau (None: never)."""
    es = early_stop(full, patience=patience, per_epoch=per_epoch)
    return None if es is None else es["step"] / full["steps_per_epoch"]


def actual_freeze(run: dict):
    """The epoch of the first freeze in a plateau run's report (None: it never froze before the end)."""
    steps = [d["step"] for d in run["frozen_depth"] if d["depth"] > 0]
    return None if not steps or steps[0] >= run["steps"] else steps[0] / run["steps_per_epoch"]


def rows(out: str):
    for regime in sorted(os.listdir(out), reverse=True):
        for task, pols in load_regime(os.path.join(out, regime)).items():
            for seed, full in sorted(pols.get("full", {}).items()):
                real = pols.get("plateau_cache", {}).get(seed)
                overhead = "-" if real is None else f"{100 * real['phases_s']['statistics'] / real['train_time_s']:.1f}%"
                yield [f"{regime} ({task})", seed, "-" if real is None else _epoch(actual_freeze(real)), overhead,
                       *[_epoch(replay(full, pe, pa)) for pe, pa in VARIANTS]]


def _epoch(e) -> str:
    return "-" if e is None else f"{e:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "regimes"))
    args = ap.parse_args(argv)
    head = ["regime (task)", "seed", "plateau run froze at (epoch)", "its overhead"] + \
        [f"{pe}/epoch, patience {pa} (x{pe / 2:g} the checks)" for pe, pa in VARIANTS]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for r in rows(args.out):
        print("| " + " | ".join(map(str, r)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
