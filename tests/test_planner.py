"""The planner's throughput model, fit, schedules and the time / cost goals."""
import pytest

from autofreeze_ext.planning.planner import (ThroughputModel, compute_from_report, evaluate_plan, fit_allreduce, plan,
                                    schedule_from_report)


def model(restart=0.0):
    # per-sample compute falls as blocks freeze; gradient bytes too
    return ThroughputModel({0: 0.04, 2: 0.02, 4: 0.01}, {0: 4e8, 2: 2e8, 4: 5e7}, alpha=1e-4, beta=1e-9,
                           restart_s=restart)


def test_ring_allreduce_model_and_fit():
    m = model()
    assert m.allreduce_s(1, 1e9) == 0.0
    assert m.allreduce_s(4, 4e8) == pytest.approx(1e-4 * 6 + 1e-9 * 4e8 * 1.5)
    samples = [(w, b, m.allreduce_s(w, b)) for w in (2, 4, 8) for b in (1e4, 1e6, 1e8)]
    alpha, beta = fit_allreduce(samples)
    assert alpha == pytest.approx(1e-4, rel=1e-6) and beta == pytest.approx(1e-9, rel=1e-6)
    assert m.step_s(0, 8, 256) == pytest.approx(256 / 8 * 0.04 + m.allreduce_s(8, 4e8))


def test_time_goal_uses_all_workers_and_cost_goal_sheds_them_within_the_deadline():
    m = model(restart=5.0)
    phases = [(0, 0.2), (2, 0.3), (4, 0.5)]
    t = plan(m, phases, 1000, 256, 64, "time")
    assert t.workers == [64, 64, 64]
    assert (t.time_s, t.worker_s) == pytest.approx(evaluate_plan(m, phases, [64] * 3, 1000, 256))
    deadline = 1000 * m.step_s(0, 64, 256)  # full fine-tuning on 64 workers
    c = plan(m, phases, 1000, 256, 64, "cost", deadline_s=deadline)
    assert c.time_s <= deadline and c.worker_s < t.worker_s
    assert c.workers == sorted(c.workers, reverse=True) and c.workers[-1] < 64
    assert c.workers[0] == 64  # the first phase runs on the whole allocation
    # brute force over all plans that start on 64 and only shrink: nothing cheaper meets the deadline
    import itertools
    opts = [64, 32, 16, 8, 4, 2, 1]
    for rest in itertools.product(opts, repeat=2):
        if list(rest) != sorted(rest, reverse=True):
            continue
        tt, cc = evaluate_plan(m, phases, [64, *rest], 1000, 256)
        assert not (tt <= deadline and cc < c.worker_s - 1e-9)
    with pytest.raises(ValueError, match="goal"):
        plan(m, phases, 1000, 256, 64, "fast")


def test_unreachable_deadline_falls_back_to_the_fastest_plan():
    c = plan(model(), [(0, 1.0)], 100, 256, 8, "cost", deadline_s=1e-3)
    assert c.workers == [8] and "unreachable" in c.goal


def test_schedule_and_per_depth_compute_from_a_report():
    evals = [{"step": s, "train_time_s": t} for s, t in [(10, 10.0), (20, 20.0), (30, 26.0), (40, 30.0), (50, 33.0),
                                                          (60, 36.0)]]
    rep = {"steps": 60, "config": {"batch_size": 2}, "evals": evals,
           "frozen_depth": [{"step": 0, "depth": 0}, {"step": 20, "depth": 2}, {"step": 30, "depth": 3},
                            {"step": 60, "depth": 3}]}
    assert schedule_from_report(rep) == [(0, pytest.approx(1 / 3)), (2, pytest.approx(1 / 6)),
                                         (3, pytest.approx(1 / 2))]
    comp = compute_from_report(rep, skip=1)
    assert comp[0] == pytest.approx(20 / 40)  # 20 s for 20 steps of 2 samples
    assert comp[2] == pytest.approx(6 / 20)  # held for one window only: that window
    assert comp[3] == pytest.approx(6 / 40)  # first window after the freeze (4 s) skipped


def test_live_and_offline_cost_goals_share_the_worker_chooser():
    from autofreeze_ext.planning.planner import choose_workers, worker_choices

    assert worker_choices(8, 96) == [8, 6, 4, 3, 2, 1] and worker_choices(8, 96, min_workers=3) == [8, 6, 4, 3]
    m = model()
    m.restart_s = 5.0
    steps, batch = 1000, 256
    deadline = steps * m.step_s(0, 64, batch)
    # a freeze halfway: the live choice for the second half ...
    best, options = choose_workers(m, 2, steps // 2, 64, batch, elapsed_s=steps // 2 * m.step_s(0, 64, batch),
                                   deadline_s=deadline)
    assert [o["workers"] for o in options] == worker_choices(64, batch)
    # ... is the offline plan's second phase for the same two-phase schedule
    p = plan(m, [(0, 0.5), (2, 0.5)], steps, batch, 64, "cost", deadline_s=deadline)
    assert p.workers == [64, best["workers"]]


def test_plan_live_replays_the_live_chooser_phase_by_phase_and_never_beats_hindsight():
    from autofreeze_ext.planning.planner import choose_workers, evaluate_plan, plan_live

    m = model()
    m.restart_s = 5.0
    steps, batch = 1000, 256
    phases = [(0, 0.3), (2, 0.2), (4, 0.5)]
    deadline = steps * m.step_s(0, 64, batch)
    live = plan_live(m, phases, steps, batch, 64, deadline_s=deadline, min_workers=4)
    # each phase's count is what choose_workers answers at that freeze, given the time spent so far
    w = 64
    for k in (1, 2):
        elapsed = evaluate_plan(m, phases[:k], live.workers[:k], steps, batch)[0]
        left = round(steps * sum(f for _, f in phases[k:]))
        w = choose_workers(m, phases[k][0], left, w, batch, elapsed, deadline, 4)[0]["workers"]
        assert live.workers[k] == w
    assert live.workers[0] == 64 and min(live.workers) >= 4 and live.workers == sorted(live.workers, reverse=True)
    best = plan(m, phases, steps, batch, 64, "cost", deadline_s=deadline)
    assert best.worker_s <= live.worker_s + 1e-9  # hindsight is a lower bound on cost
