"""Adaptive policies: guards, the absolute stability test, the guarded gradient test, the budget."""
import math

import pytest

from autofreeze_ext.policies import (POLICIES, PlateauFreeze, GradientNormTest, GuardedGradientTest, Guards, IntervalStats,
                                     LateFreeze, PolicyOptions, SpeedBudget, StabilityPolicy, build_policy, make_policy)

pytestmark = pytest.mark.reference

N = 6


def iv(step, drift, frozen=0, loss=0.5, norms=None, sec=None, steps=10):
    return IntervalStats(step=step, epoch=math.nan, frozen_depth=frozen, num_blocks=N, max_depth=N - 1,
                         interval_steps=steps, norms=norms,
                         signals={"probe_drift": [None if b < frozen else v for b, v in enumerate(drift)],
                                  "probe_loss": loss}, step_seconds=sec)


def run(policy, seq):
    """Feed intervals (the frozen depth follows the decisions); the decided depths."""
    depth, out = 0, []
    for k, (drift, loss) in enumerate(seq):
        depth = max(depth, policy.decide(iv(10 * (k + 1), drift, depth, loss)))
        out.append(depth)
    return out


STABLE = [0.001] * N  # every block below the default-like threshold
MOVING = [0.1] * N


def test_absolute_test_freezes_nothing_while_every_block_still_changes():
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=1))
    assert run(p, [(MOVING, 0.3)] * 6) == [0] * 6  # the paper's relative test would freeze half
    g = GradientNormTest()
    g.decide(IntervalStats(10, math.nan, 0, N, N - 1, 10, norms=[1.0] * N))
    assert g.decide(IntervalStats(20, math.nan, 0, N, N - 1, 10, norms=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5])) >= 1


def test_patience_one_block_per_interval_and_prefix_only():
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=2))
    assert run(p, [(STABLE, 0.3)] * 7) == [0, 1, 2, 3, 4, 5, 5]  # 2 passes, then +1 per interval, max N-1
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=1, max_new_blocks=None))
    assert run(p, [([0.001, 0.001, 0.5, 0.001, 0.001, 0.001], 0.3)]) == [2]  # stops at the first failing block
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=2))
    flaky = [(STABLE, 0.3), (MOVING, 0.3), (STABLE, 0.3), (STABLE, 0.3)]
    assert run(p, flaky) == [0, 0, 0, 1]  # a failed interval resets the streak


def test_learning_guard_latches_and_warmup_holds():
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=1, learned=0.75, warmup_steps=25))
    depths = run(p, [(STABLE, 0.99), (STABLE, 0.98), (STABLE, 0.97), (STABLE, 0.70), (STABLE, 0.9)])
    assert depths == [0, 0, 0, 1, 2]  # held while not learning; learning latches (0.9 later is fine)
    assert p.learned_at == 40
    assert p.last.held_by == "at most 1 more block(s) per interval"
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=1, learned=None, warmup_steps=25))
    assert run(p, [(STABLE, 1.0)] * 3) == [0, 0, 1]
    p.decide(iv(5, STABLE, 0, 1.0))
    assert p.last.held_by.startswith("warm-up")


def test_guarded_gradient_test_needs_a_baseline_and_patience():
    p = GuardedGradientTest(guards=Guards(patience=2, learned=None))
    norms = [[1.0] * N, [0.5, 0.6, 2, 2, 2, 2], [0.3, 0.4, 3, 3, 3, 3], [0.2, 0.3, 4, 4, 4, 4]]
    depths = []
    for k, n in enumerate(norms):
        depths.append(p.decide(IntervalStats(10 * (k + 1), math.nan, depths[-1] if depths else 0, N, N - 1, 10,
                                             norms=n, signals={})))
    assert depths == [0, 0, 1, 2]
    assert p.signals == () and p.uses_gradient_stats


def test_speed_budget_freezes_when_the_deadline_needs_it_and_not_before():
    inner = StabilityPolicy(threshold=1e-9, guards=Guards(patience=1, learned=None))  # never passes
    p = SpeedBudget(2.0, total_steps=100, inner=inner, frozen_cost=0.0)
    depth, trace, forced = 0, [], []
    for k in range(10):
        sec = 1.0 - 0.2 * depth  # measured step time falls with depth
        depth = max(depth, p.decide(iv(10 * (k + 1), MOVING, depth, sec=sec)))
        trace.append(depth)
        forced.append(p.last.forced)
    assert trace[0] == 0 and trace[-1] >= 1 and trace == sorted(trace)
    spent = sum(10 * (1.0 - 0.2 * d) for d in [0] + trace[:-1])
    assert spent <= 100 * 1.0 / 2.0 + 1e-9  # the budget held
    assert all(f is None for f in forced[:trace.index(1)]) and forced[trace.index(1)].startswith("budget")
    # a generous budget leaves the decisions to the inner policy
    p = SpeedBudget(1.01, total_steps=100, inner=StabilityPolicy(threshold=1e-9, guards=Guards(learned=None)))
    assert all(p.decide(iv(10 * (k + 1), MOVING, 0, sec=1.0)) == 0 for k in range(3))


def test_state_dict_round_trip_and_guard_mismatch():
    p = StabilityPolicy(threshold=0.01, guards=Guards(patience=3))
    run(p, [(STABLE, 0.3)] * 2)
    q = StabilityPolicy(threshold=0.01, guards=Guards(patience=3))
    q.load_state_dict(p.state_dict())
    assert q._streak == p._streak and q.learned_at == p.learned_at == 10
    with pytest.raises(ValueError, match="guards"):
        StabilityPolicy(guards=Guards(patience=1)).load_state_dict(p.state_dict())


def test_registry_and_bad_options():
    assert set(POLICIES) == {"stability", "gradient", "gradient+guards", "budget", "late", "plateau", "plateau-or-late"}
    assert isinstance(make_policy("stability"), StabilityPolicy)
    assert isinstance(build_policy("gradient+guards"), GuardedGradientTest)
    b = build_policy("budget", PolicyOptions(target_speedup=2.0, total_steps=90, threshold=0.003, cached=False))
    assert isinstance(b, SpeedBudget) and b.inner.threshold == 0.003 and b.frozen_cost == 0.35
    assert b.signals == ("probe_drift", "probe_loss")
    with pytest.raises(ValueError, match="target speedup"):
        build_policy("budget")
    late = build_policy("late", PolicyOptions(total_steps=750, freeze_at=0.5, learned=None))
    assert isinstance(late, LateFreeze) and late.freeze_step == 375 and late.guards.learned is None
    with pytest.raises(ValueError, match="total optimizer steps"):
        build_policy("late")
    auto = make_policy("autofreeze", total_steps=750)  # the default adaptive policy: plateau
    assert isinstance(auto, PlateauFreeze) and (auto.patience, auto.intervals_per_epoch) == (2, 2)
    assert auto.guards.learned == 0.75 and auto.guards.keep_last == 1 and auto.freeze_by is None
    fallback = make_policy("autofreeze", total_steps=750, has_val_rows=False)  # no slice: late
    assert isinstance(fallback, LateFreeze) and fallback.freeze_step == 600 and fallback.guards.learned == 0.75
    with pytest.raises(ValueError, match="total optimizer steps"):
        make_policy("autofreeze", has_val_rows=False)
    for bad in (dict(freeze_at=0), dict(freeze_at=1.2), dict(total_steps=0)):
        with pytest.raises(ValueError, match="freeze_at|total_steps"):
            LateFreeze(**{"total_steps": 100, **bad})
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy("nope")
    for bad in (dict(patience=0), dict(learned=1.5), dict(max_new_blocks=0), dict(warmup_steps=-1)):
        with pytest.raises(ValueError):
            Guards(**bad)
    with pytest.raises(ValueError, match="signal"):
        StabilityPolicy(signal="loss")
    with pytest.raises(ValueError, match="threshold"):
        StabilityPolicy(threshold=0)


def test_the_last_block_keeps_training_unless_asked():
    def stats_full(step, depth):  # the controller's default max_depth: every block
        return IntervalStats(step=step, epoch=math.nan, frozen_depth=depth, num_blocks=N, max_depth=N,
                             interval_steps=10, signals={"probe_drift": [0.0] * N, "probe_loss": 0.1})

    for keep, want in [(1, N - 1), (0, N)]:
        p = StabilityPolicy(threshold=0.01, guards=Guards(patience=1, max_new_blocks=None, keep_last=keep))
        assert p.decide(stats_full(10, 0)) == want
    with pytest.raises(ValueError, match="keep_last"):
        Guards(keep_last=-1)


def test_late_freeze_takes_all_but_the_top_block_at_once_at_its_step():
    p = LateFreeze(freeze_at=0.8, total_steps=100)  # defaults: learning guard 0.75, top block trains
    assert p.freeze_step == 80 and p.signals == ("probe_loss",)
    assert run(p, [(MOVING, 0.3)] * 9) == [0] * 7 + [N - 1] * 2  # steps 10..90: nothing before 80, then 5 at once
    assert p.last.signal == "run_fraction" and p.last.threshold == 0.8 and p.last.eta[N - 1] == 0.9
    assert p.signals_needed() == ()  # learned at step 10: the probe forward stops


def test_late_freeze_waits_for_learning_and_never_freezes_a_model_that_did_not_learn():
    p = LateFreeze(freeze_at=0.3, total_steps=100)
    assert run(p, [(STABLE, 1.0)] * 5 + [(STABLE, 0.6)] * 2) == [0] * 5 + [N - 1] * 2
    assert p.learned_at == 60
    never = LateFreeze(freeze_at=0.3, total_steps=100)
    assert run(never, [(STABLE, 0.99)] * 10) == [0] * 10
    assert never.last.held_by.startswith("not learning yet")
    q = LateFreeze(freeze_at=0.3, total_steps=100)
    q.load_state_dict(p.state_dict())
    assert q.learned_at == 60
