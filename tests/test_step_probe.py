"""The one step probe, and the packer and cost goal reading it (stand-in run, no subprocess)."""
import types

import pytest

from autofreeze_ext.planning.step_probe import StepProbe, StepTiming
from autofreeze_ext.training.config import FinetuneConfig
from autofreeze_ext.training.record import Record
from autofreeze_ext.training.parts import CostGoal, Outcome, Packer, StepTimer
from autofreeze_ext.training.parts.cost_goal import CostPlanner

pytestmark = pytest.mark.reference


def test_probe_leaves_out_the_first_steps_and_reads_once_per_setting():
    p = StepProbe(steps=3, skip=2)
    seq = [(0, 8, 9.0), (0, 8, 5.0), (0, 8, 0.3), (0, 8, 0.1), (0, 8, 0.2), (0, 8, 0.4)]
    got = [p.observe((d, b), s, fixed_s=s / 10, samples=b) for d, b, s in seq]
    assert got[:4] == [None] * 4 and got[5] is None  # skipped, still timing, then done for this setting
    t = got[4]
    assert t.key == (0, 8) and t.steps == 3
    assert t.step_s == pytest.approx(0.2) and t.fixed_s == pytest.approx(0.02)  # medians: 9 and 5 left out
    assert t.samples_per_s == pytest.approx(24 / 0.6)
    # a new setting (a freeze, or a grown batch) starts a new measurement
    assert [p.observe((1, 8), 1.0) for _ in range(4)] == [None] * 4
    assert p.observe((1, 8), 1.0).key == (1, 8)
    with pytest.raises(ValueError):
        StepProbe(steps=0)


def test_probe_state_round_trip_resumes_the_measurement_in_progress():
    a = StepProbe(steps=3)
    for s in (1.0, 1.0, 0.5):
        a.observe((2, 16), s)
    b = StepProbe(steps=3)
    b.load_state_dict(a.state_dict())
    assert b.observe((2, 16), 0.7) is None and b.observe((2, 16), 0.6).step_s == pytest.approx(0.6)


def fake_run(mode_goal, world_size=1):
    ctx = types.SimpleNamespace(world_size=world_size, rank=0, distributed=False, is_main=True)
    return types.SimpleNamespace(
        cfg=FinetuneConfig.from_options(batch_size=8, probe_steps=2, mode_goal=mode_goal), ctx=ctx, world=world_size,
        ctl=types.SimpleNamespace(frozen_depth=0), packing=False, ckpt_path=None, prog=Record())


def step(run, timer, parts, seconds):
    run.prog.step += 1
    r = types.SimpleNamespace(seconds=seconds, t2=0.0, t3=0.01, samples=8, memory=None)
    for p in (*parts, timer):  # the parts ask the timer before its own after_step: one observation all the same
        p.after_step(run, r)
    return timer.reading(run, r)


def test_timer_gives_each_step_one_reading_whoever_asks_first_and_the_packer_meters():
    run, timer = fake_run("time"), StepTimer()
    packer = Packer(timer)
    timer.start(run)
    timer.epoch_start(run, 0, [list(range(8))])
    packer.packer = types.SimpleNamespace(wants_memory=lambda depth: depth == 1)  # memory unknown at depth 1
    packer.meter = "meter"
    readings = [step(run, timer, [], 0.1) for _ in range(4)]
    assert readings[:3] == [None] * 3 and readings[3].key == (0, 8, 1)  # 2 left out, 2 timed
    run.ctl.frozen_depth = 1  # a freeze in the next step
    metered = []
    for _ in range(4):
        metered.append(packer.step_meter(run))
        step(run, timer, [], 0.1)
    assert metered == [None, "meter", None, None]  # the second step at the new depth, left out of timing
    run.ctl.frozen_depth = 0
    assert packer.step_meter(run) is None  # memory known at depth 0


def test_cost_planner_reads_the_probe_it_shares_with_the_packer():
    run = fake_run("cost", world_size=2)
    run.ddp, run.total_steps = types.SimpleNamespace(comm={}), 100
    state = {"planner": []}
    planner = CostPlanner(run.cfg, run.ctx, run.prog, state, run.ddp, run.total_steps)
    assert planner.on_timing(StepTiming((0, 8, 2), 0.5, 0.01, 16.0, 2), step=4) is None
    assert state["full_step_s"] == 0.5 and state["deadline_s"] == 50.0  # full fine-tuning's projection
    # the part passes the timer's reading on, and only a reading
    reading = StepTiming((1, 8, 2), 0.3, 0.01, 26.0, 2)
    timer = types.SimpleNamespace(reading=lambda run, res: res)  # the step's reading is what the timer says
    goal = CostGoal(timer)
    goal.planner = types.SimpleNamespace(on_timing=lambda t, s: seen.append((t, s)))
    seen = []
    assert goal.after_step(run, None) is None
    assert goal.after_step(run, reading) is None
    assert seen == [(reading, 0)]
    # a scale request: the outcome stops the run after this step's checkpoint
    goal.planner = types.SimpleNamespace(on_timing=lambda t, s: {"world_size": 1, "step": s, "from_world_size": 2})
    assert goal.after_step(run, reading) == Outcome(stop="scale", checkpoint=True)
    assert goal.request["world_size"] == 1


def test_a_relaunch_on_fewer_workers_is_measured_again_and_checks_the_prediction():
    """The cost goal decides at a depth, checkpoints and relaunches on fewer workers with the
    same global batch: the probe (restored from the checkpoint) measures the new setting, and
    the planner records the step time at the depth it decided for."""
    run = fake_run("cost", world_size=4)
    run.ctl.frozen_depth = 1
    timer = StepTimer()
    timer.start(run)
    timer.epoch_start(run, 0, [[0, 1]])  # 4 workers x 2
    assert [step(run, timer, [], 0.4) is not None for _ in range(6)] == [False] * 3 + [True] + [False] * 2
    state = {"planner": [{"depth": 1, "chosen": 2, "world_size": 4, "measured_step_s": None}]}
    run2 = fake_run("cost", world_size=2)  # the relaunch, resumed from the checkpoint
    run2.ctl.frozen_depth, run2.ddp, run2.total_steps = 1, types.SimpleNamespace(comm={}), 100
    again = StepTimer()
    again.load_state_dict(timer.state_dict())
    again.start(run2)
    again.epoch_start(run2, 0, [[0, 1, 2, 3]])  # 2 workers x 4: the same global batch
    goal = CostGoal(again)
    goal.load_state_dict(state)
    goal.start(run2)
    readings = [step(run2, again, [goal], 0.3) for _ in range(4)]
    assert readings[3] is not None and readings[3].key == (1, 8, 2)
    assert goal.state["planner"][0]["measured_step_s"] == pytest.approx(0.3)
    assert goal.state["planner"][0]["measured_at_depth"] == 1
