"""The benchmarks' cost model credits only the cache hits that happen (issue 27, item 5)."""
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from replay_policies import FORWARD_COST, miss_share, modelled_cost  # noqa: E402


def simulated_misses(froze: int, steps: int, spe: int, seed: int = 0) -> list:
    """Per step, the share of its rows that miss a cache filled from step ``froze`` on: one row
    per step, rows reshuffled every epoch, a row written on its first visit after the freeze."""
    rng, cached, out = random.Random(seed), set(), []
    for epoch in range(steps // spe):
        order = list(range(spe))
        rng.shuffle(order)
        for i, row in enumerate(order):
            t = epoch * spe + i
            if t >= froze:
                out.append(0.0 if row in cached else 1.0)
                cached.add(row)
    return out


@pytest.mark.parametrize("froze", [40, 100, 150, 199])
def test_miss_share_matches_a_simulated_cache(froze):
    spe, steps, trials = 50, 250, 400
    sims = [simulated_misses(froze, steps, spe, seed) for seed in range(trials)]
    for k, t in enumerate(range(froze, steps)):
        mean = sum(s[k] for s in sims) / trials
        assert abs(mean - miss_share(froze, t, spe)) < 0.1, (t, mean, miss_share(froze, t, spe))
    # every row misses exactly once after the freeze, mid-epoch or not
    assert sum(miss_share(froze, t, spe) for t in range(froze, steps)) == pytest.approx(
        spe if froze < steps - spe else steps - froze)


def test_mid_epoch_freeze_gets_no_credit_for_rows_never_cached():
    spe, steps, n = 100, 500, 6
    mid = modelled_cost([(150, 5)], steps, spe, n, True)
    # one epoch of misses for each of the 5 frozen blocks, then hits
    assert mid == pytest.approx(150 * n + 350 * 1 + 5 * FORWARD_COST * spe)


def test_last_epoch_freeze_gets_no_cache_credit():
    spe, steps, n = 100, 300, 6
    trace = [(250, 5)]
    assert modelled_cost(trace, steps, spe, n, True) == modelled_cost(trace, steps, spe, n, False)
