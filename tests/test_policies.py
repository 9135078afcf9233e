"""Freezing policies, Algorithm 1 included, against hand-computed values."""
import math

import numpy as np
import pytest

from autofreeze_ext.policies import (GradientNormTest, IntervalStats, NeverFreeze, ScheduledFreeze, StaticFreeze,
                                     make_policy, percentile)

pytestmark = pytest.mark.reference  # also run on the pure-PyTorch backend (see conftest.py)


def stats(norms, frozen=0, step=10, max_depth=None):
    n = len(norms)
    return IntervalStats(step=step, epoch=math.nan, frozen_depth=frozen, num_blocks=n,
                         max_depth=n if max_depth is None else max_depth, interval_steps=5,
                         norms=[None if i < frozen else v for i, v in enumerate(norms)])


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0], [0.3, 0.1, 0.9, 0.5], [5, 1, 4, 2, 3, 9, 0.5]])
@pytest.mark.parametrize("q", [10, 25, 50, 75, 90])
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_with_inf():
    assert percentile([0.1, math.inf], 50) == math.inf
    assert percentile([0.1, 0.2, math.inf], 50) == 0.2


def test_algorithm1_hand_computed():
    p = GradientNormTest(percentile=50)
    assert p.decide(stats([4.0, 2.0, 1.0, 3.0])) == 0  # first interval: baseline only
    # eta = |prev - cur| / prev = [0.05, 0.25, 0.8, 0.0]; median of sorted [0, .05, .25, .8] = 0.15
    depth = p.decide(stats([3.8, 1.5, 0.2, 3.0]))
    assert p.last.eta == pytest.approx({0: 0.05, 1: 0.25, 2: 0.8, 3: 0.0})
    assert p.last.threshold == pytest.approx(0.15)
    assert depth == 1  # block 0 (0.05 < 0.15) freezes; block 1 (0.25) stops the walk; block 3 is not a prefix


def test_algorithm1_only_prefix_and_stops_at_first_failure():
    p = GradientNormTest(percentile=50)
    p.decide(stats([1.0, 1.0, 1.0, 1.0, 1.0]))
    # eta = [0.01, 0.02, 0.5, 0.01, 0.01]: median 0.01 -> nothing is strictly below it
    assert p.decide(stats([0.99, 0.98, 0.5, 0.99, 0.99])) == 0
    # new baseline is the last interval; eta = [0, 0.1, 0, 0.3, 0.2] vs prev [0.99, 0.98, 0.5, 0.99, 0.99]
    p2 = GradientNormTest(percentile=75)
    p2.decide(stats([1.0, 1.0, 1.0, 1.0, 1.0]))
    # eta = [0.01, 0.02, 0.03, 0.5, 0.01] -> 75th pct = 0.03; blocks 0,1 freeze, block 2 (0.03) not < 0.03
    assert p2.decide(stats([0.99, 0.98, 0.97, 0.5, 0.99])) == 2


def test_algorithm1_with_frozen_prefix_uses_active_blocks_only():
    p = GradientNormTest(percentile=50)
    p.decide(stats([9.0, 1.0, 1.0, 1.0], frozen=1))
    # active etas (blocks 1..3) = [0.1, 0.5, 0.3] -> median 0.3; block 1 freezes, block 2 stops
    assert p.decide(stats([9.0, 0.9, 0.5, 0.7], frozen=1)) == 2
    assert set(p.last.eta) == {1, 2, 3}


def test_last_active_block_never_frozen_by_the_test():
    p = GradientNormTest(percentile=99)
    p.decide(stats([1.0, 1.0]))
    assert p.decide(stats([1.0, 0.5])) == 1  # eta [0, 0.5]
    p.decide(stats([1.0, 1.0], frozen=1))
    assert p.decide(stats([1.0, 0.0], frozen=1)) == 1  # a lone block is never below its own percentile


def test_zero_previous_norm():
    assert GradientNormTest.eta(0.0, 0.0) == 0.0
    assert GradientNormTest.eta(0.0, 1.0) == math.inf
    p = GradientNormTest()
    p.decide(stats([0.0, 0.0, 1.0]))
    # eta = [0, inf, 0.5]: median 0.5 -> block 0 freezes, block 1 (inf) stops
    assert p.decide(stats([0.0, 2.0, 0.5])) == 1


def test_max_depth_respected():
    p = GradientNormTest(percentile=90)
    p.decide(stats([1.0, 1.0, 1.0, 1.0]))
    assert p.decide(stats([1.0, 1.0, 1.0, 0.1], max_depth=1)) == 1


def test_invalid_interval_resets_baseline():
    p = GradientNormTest()
    p.decide(stats([1.0, 1.0, 1.0]))
    p.on_invalid_interval(stats([1.0, 1.0, 1.0]))
    assert p.decide(stats([1.0, 0.1, 0.1])) == 0  # baseline again, no decision


def test_state_round_trip():
    p = GradientNormTest(percentile=40)
    p.decide(stats([1.0, 2.0, 3.0]))
    q = GradientNormTest(percentile=40)
    q.load_state_dict(p.state_dict())
    s = stats([0.9, 1.0, 3.0])
    assert q.decide(s) == p.decide(s)
    with pytest.raises(ValueError, match="percentile"):
        GradientNormTest(percentile=50).load_state_dict(p.state_dict())


@pytest.mark.parametrize("kw, match", [
    ({"percentile": 0}, "percentile"), ({"percentile": 100}, "percentile"), ({"percentile": -5}, "percentile"),
    ({"intervals_per_epoch": 0}, "intervals_per_epoch"), ({"intervals_per_epoch": 2.5}, "intervals_per_epoch"),
    ({"norm": "linf"}, "norm"), ({"interval_steps": 0}, "interval_steps"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        GradientNormTest(**kw)


def test_interval_ends_tile_each_epoch():
    p = GradientNormTest(intervals_per_epoch=5)
    ends = [s for s in range(1, 2 * 23 + 1) if p.is_interval_end(s, 23)]
    assert ends == [5, 9, 14, 18, 23, 28, 32, 37, 41, 46]
    assert [s for s in range(1, 4) if p.is_interval_end(s, 3)] == [1, 2, 3]  # fewer steps than intervals
    with pytest.raises(ValueError, match="steps_per_epoch"):
        p.is_interval_end(1, None)
    assert [s for s in range(1, 10) if GradientNormTest(interval_steps=4).is_interval_end(s, None)] == [4, 8]


def test_static_scheduled_never():
    assert StaticFreeze(3).initial_depth(6) == 3
    with pytest.raises(ValueError, match="only 2 blocks"):
        StaticFreeze(3).initial_depth(2)
    with pytest.raises(ValueError):
        StaticFreeze(-1)
    sched = ScheduledFreeze([(10, 2), (0, 1), (30, 4)])
    assert sched.initial_depth(6) == 1
    assert [sched.decide(stats([1.0] * 6, step=s)) for s in (5, 10, 29, 30)] == [1, 2, 2, 4]
    assert NeverFreeze().decide(stats([1.0] * 3, frozen=0)) == 0
    assert isinstance(make_policy("static:2"), StaticFreeze) and isinstance(make_policy("full"), NeverFreeze)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("sometimes")
