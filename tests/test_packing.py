"""Performance packing pieces: samplers whose batch grows between epochs, epochs of changing
length in the controller, the sample-based LR schedule, the activation meter, the packer's
decision, and the end-to-end time goal in one process (kill and resume included)."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from autofreeze_ext import FreezeController
from autofreeze_ext.samplers import PlannedBatchSampler, ShardedBatchSampler
from autofreeze_ext.planning.packing import ActivationMeter, BatchPacker, SampleLinearSchedule
from autofreeze_ext.planning.step_probe import StepProbe
from autofreeze_ext.policies import GradientNormTest
from test_cli import write_tsv


# ---------------------------------------------------------------------------- samplers
def test_planned_sampler_batch_grows_from_the_next_epoch_and_resumes():
    s = PlannedBatchSampler(50, 4, seed=2)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    s.set_batch_size(10)  # mid-epoch: the running epoch keeps its batches
    rest = list(it)
    assert all(len(b) == 4 for b in first + rest[:-1]) and len(first + rest) == 13
    assert sorted(i for b in first + rest for i in b) == list(range(50))
    state = s.state_dict()
    nxt = list(s)
    assert [len(b) for b in nxt] == [10] * 5 and sorted(i for b in nxt for i in b) == list(range(50))
    t = PlannedBatchSampler(50, 4, seed=2)
    t.load_state_dict(state)
    assert list(t) == nxt  # the grown batch is part of the state


def test_planned_sampler_rechunks_a_planned_but_unstarted_epoch_in_the_same_order():
    s = PlannedBatchSampler(20, 4, seed=0)
    order = [i for b in s.plan_epoch() for i in b]
    s.set_batch_size(8)
    got = list(s)
    assert [len(b) for b in got] == [8, 8, 4] and [i for b in got for i in b] == order


@pytest.mark.parametrize("world", [1, 2])
def test_sharded_sampler_grown_batch_keeps_samples_on_their_rank(world):
    n = 90
    ranks = [ShardedBatchSampler(n, 6, world_size=world, rank=r, seed=4) for r in range(world)]
    ref = ShardedBatchSampler(n, 6, world_size=world, rank=None, seed=4)
    owned = [{i for b in s for i in b} for s in ranks]  # epoch 0 at batch 6
    list(ref)
    for s in ranks + [ref]:
        s.set_global_batch(18)
    assert all(len(s) == 5 for s in ranks) and len(ref) == 5
    glob = list(ref)
    mine = [list(s) for s in ranks]
    assert all(len(g) == 18 for g in glob)
    for k, g in enumerate(glob):  # the ranks' slices still tile the global batch
        assert g == [i for m in mine for i in m[k]]
    for r in range(world):  # the shards are dealt as before: same samples per rank
        assert {i for b in mine[r] for i in b} == owned[r]
    assert {i for g in glob for i in g} == set(range(n))


def test_sharded_sampler_batch_errors_and_state():
    s = ShardedBatchSampler(40, 4, world_size=2, rank=0)
    with pytest.raises(ValueError, match="not a positive multiple of the number of workers"):
        s.set_global_batch(7)
    it = iter(s)
    next(it)
    s.set_global_batch(8)  # mid-epoch: from the next epoch
    assert len(s) == 10 and s.epoch_global_batch == 4
    st = s.state_dict()
    assert st["epoch_global_batch"] == 4 and st["next_global_batch"] == 8
    t = ShardedBatchSampler(40, 4, world_size=2, rank=0)
    t.load_state_dict(st)
    assert list(t) == list(it)
    assert len(t) == 5 and t.epoch_global_batch == 8
    three = ShardedBatchSampler(40, 4, world_size=1, rank=0)
    st3 = dict(st, epoch_global_batch=6, next_global_batch=6)
    with pytest.raises(ValueError, match="resume on a divisor"):
        ShardedBatchSampler(40, 4, world_size=4, rank=0).load_state_dict(st3)
    three.load_state_dict(st3)


# ---------------------------------------------------------------------------- controller epochs
class _Blocks(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return x.sum()


def _ends(ctl, epochs):
    """Run ``epochs`` = [(steps, ...)] with begin_epoch; the steps at which an interval ended."""
    x = torch.randn(2, 4)
    for e, steps in enumerate(epochs):
        ctl.begin_epoch(e, steps)
        for _ in range(steps):
            ctl.optimizer.zero_grad()
            ctl.model(x).backward()
            ctl.optimizer.step()
    return [h["step"] for h in ctl.history if h["event"] == "interval"]


def test_intervals_tile_epochs_of_changing_length():
    m = _Blocks()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: nothing changes, nothing freezes
    ctl = FreezeController(m, opt, GradientNormTest(percentile=1.0, intervals_per_epoch=2), blocks=list(m.blocks),
                           steps_per_epoch=6)
    ends = _ends(ctl, [6, 6, 3, 3])
    assert ends == [3, 6, 9, 12, 14, 15, 17, 18]  # 2 per epoch: 3,6 of 6 steps; 2,3 of 3 steps
    assert ctl.history[-1]["epoch"] == pytest.approx(4.0)


def test_begin_epoch_with_constant_length_changes_nothing():
    def run(with_epochs):
        torch.manual_seed(0)
        m = _Blocks()
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        ctl = FreezeController(m, opt, GradientNormTest(percentile=90.0, intervals_per_epoch=3),
                               blocks=list(m.blocks), steps_per_epoch=5)
        x = torch.randn(2, 4)
        for e in range(4):
            if with_epochs:
                ctl.begin_epoch(e, 5)
            for _ in range(5):
                opt.zero_grad()
                m(x).backward()
                opt.step()
        return ctl.history

    assert run(True) == run(False)


def test_begin_epoch_errors():
    m = _Blocks()
    ctl = FreezeController(m, torch.optim.SGD(m.parameters(), lr=0.1), blocks=list(m.blocks), steps_per_epoch=4)
    for args in [(0, 0), (-1, 3), (0, 3, 4)]:
        with pytest.raises(ValueError, match="begin_epoch"):
            ctl.begin_epoch(*args)


# ---------------------------------------------------------------------------- schedule, meter
def test_sample_schedule_matches_the_step_schedule_and_scales_with_the_batch():
    from transformers import get_linear_schedule_with_warmup

    p = nn.Parameter(torch.zeros(1))
    a, b = torch.optim.SGD([p], lr=1.0), torch.optim.SGD([p], lr=1.0)
    steps, batch = 40, 8
    hf = get_linear_schedule_with_warmup(a, 4, steps)
    ours = SampleLinearSchedule(b, steps * batch, 0.1, batch, "sqrt")
    for k in range(steps):
        ours.apply(k * batch, batch)
        assert b.param_groups[0]["lr"] == pytest.approx(a.param_groups[0]["lr"])
        a.step()
        hf.step()
    assert ours.factor(100, 32) == pytest.approx(2 * ours.factor(100, 8))  # sqrt(4)
    lin = SampleLinearSchedule(torch.optim.SGD([p], lr=1.0), 320, 0.1, 8, "linear")
    assert lin.factor(100, 32) == pytest.approx(4 * lin.factor(100, 8))
    assert ours.factor(10_000, 8) == 0.0
    with pytest.raises(ValueError, match="LR scaling"):
        SampleLinearSchedule(b, 10, 0.1, 8, "cubic")


def test_activation_meter_counts_saved_activations_not_parameters():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1))
    meter = ActivationMeter(m)

    def measure(n, frozen_first=False):
        x = torch.randn(n, 64)
        with meter:
            if frozen_first:
                with torch.no_grad():
                    x = m[3](m[2](m[1](m[0](x))))
                y = m[4](x)
            else:
                y = m(x)
        y.sum().backward()
        return meter.bytes

    small, big = measure(8), measure(64)
    assert big == pytest.approx(8 * small, rel=0.05)  # activations scale with the batch
    # what linear/relu keep for backward: the input (64 floats per sample) and the two relu
    # outputs (256 + 64), which the next linear saves too (counted once); weights not at all
    assert big == 64 * 4 * (64 + 256 + 64)
    assert measure(64, frozen_first=True) == 64 * 4 * 64  # a frozen prefix saves nothing


def _packer(**kw):
    args = dict(base_batch=8, max_batch=64, granularity=2, world_size=2, grad_accum=1,
                max_activation_bytes=None, state={}, epoch_samples=6400, padded=False,
                allreduce_s=lambda: 0.001, broadcast=lambda e: e)
    args.update(kw)
    return BatchPacker(**args)


def _feed(p, depth, batch, n, step0=0, step_s=0.01, fixed_s=0.002):
    """``n`` steps at (depth, batch) through one step probe of 3 timed steps, as the run feeds them."""
    probe, out = p.__dict__.setdefault("_probe", StepProbe(3)), None
    for k in range(n):
        if probe.key == (depth, batch) and probe.seen == 1 and p.wants_memory(depth):  # the metered step
            p.record_memory(depth, 1000 // (2 ** depth) * (batch // 2), batch // 2)
        timing = probe.observe((depth, batch), step_s, fixed_s, batch)
        got = p.on_timing(timing, step=step0 + k + 1) if timing is not None else None
        out = got if got is not None else out
    return out


def test_packer_fills_the_memory_freezing_frees_within_max_batch():
    p = _packer()
    assert _feed(p, 0, 8, 6) is None  # depth 0: the start's memory is the budget, batch stays
    assert p.mem["budget"] == 1000 * 4 and p.entries[0]["batch_to"] == 8
    assert _feed(p, 1, 8, 6, step0=6) == 16  # half the bytes per sample: twice the batch
    e = p.entries[1]
    assert e["batch_memory_fits"] == 16 and e["measured_step_s"] is None
    # prediction: fixed (0.002 + all-reduce 0.001) + 8 samples per worker x c
    c = (0.01 - 0.003) / 4
    assert e["predicted_step_s"] == pytest.approx(0.003 + 8 * c)
    _feed(p, 1, 16, 6, step0=12, step_s=0.015)  # the new batch runs: its measurement is recorded
    assert e["measured_step_s"] == pytest.approx(0.015) and e["measured_samples_per_s"] == pytest.approx(16 / 0.015)
    assert _feed(p, 3, 16, 6, step0=18) == 64  # 8x less memory per sample, capped by max_batch


def test_packer_weighs_padding_against_fewer_steps():
    # 100 samples, room for 48: 48 pads 3 steps to 144 samples; 34 (3 steps, 102) wastes less,
    # and 50 would fit exactly but is above the bound
    p = _packer(epoch_samples=100, padded=True, max_batch=48, max_activation_bytes=10**9)
    _feed(p, 0, 8, 6)
    assert p.entries[0]["batch_to"] == 34 and p.entries[0]["predicted_epoch_s"] < p.entries[0]["epoch_s_now"]
    # with no fixed cost but the all-reduce, a batch without padding (20: 5 steps) wins
    q = _packer(epoch_samples=100, padded=True, max_batch=48, max_activation_bytes=10**9)
    _feed(q, 0, 8, 6, fixed_s=0.0)
    assert q.entries[0]["batch_to"] == 20


def test_packer_keeps_the_batch_when_the_predicted_gain_is_small():
    # per-step costs are 1% of a step: growing 8 -> 16 saves ~1% of the epoch, below 5%
    p = _packer(min_gain=0.05)
    _feed(p, 0, 8, 6)
    _feed(p, 1, 8, 6, step0=6, step_s=0.1, fixed_s=0.0)
    e = p.entries[1]
    assert e["best_batch"] == 16 and e["batch_to"] == 8 and 0.95 * e["epoch_s_now"] < e["best_epoch_s"]
    with pytest.raises(ValueError, match="minimum packing gain"):
        _packer(min_gain=1.0)


def test_packer_respects_granularity_and_explicit_budget():
    p = _packer(granularity=6, max_activation_bytes=3000, max_batch=100)
    _feed(p, 0, 6, 6)
    # 3000 bytes / 1000 per sample = 3 per worker -> 6 global: cannot shrink below the current 6
    assert p.entries[0]["batch_to"] == 6
    assert _feed(p, 2, 6, 6, step0=6) == 24  # 12 per worker fit -> 24, a multiple of 6


# ---------------------------------------------------------------------------- end to end, one process
@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from test_distributed import make_tiny_bert

    d = tmp_path_factory.mktemp("pack")
    model = make_tiny_bert(d / "model")
    return {"dir": d, "args": [sys.executable, "-m", "autofreeze_ext.cli", "finetune", "--model", model,
                               "--train", write_tsv(d / "train.tsv", 96), "--dev", write_tsv(d / "dev.tsv", 24, seed=1),
                               "--epochs", "4", "--batch-size", "8", "--max-length", "12",
                               "--intervals-per-epoch", "3", "--evals-per-epoch", "2", "--no-progress", "--no-plot",
                               "--threads", "1", "--mode", "autofreeze", "--policy", "gradient", "--mode-goal", "time",
                               "--max-batch", "32", "--min-packing-gain", "0"]}


def _go(job, name, extra=(), kill_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = job["args"]
    if kill_at:  # the CLI with a fault-injection part
        crash = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_cli.py")
        args = [sys.executable, crash, "--kill-at", str(kill_at), "--", *args[3:]]
    p = subprocess.run(args + ["--out", str(job["dir"] / name), *extra], cwd=job["dir"], env=env,
                       capture_output=True, text=True, timeout=300)
    return p, job["dir"] / name / "finetune_autofreeze.json"


def test_time_goal_grows_the_batch_after_a_freeze_and_resumes_identically(job):
    ref, path = _go(job, "ref")
    assert ref.returncode == 0, ref.stderr
    r = json.loads(path.read_text())
    trace = r["batch_trace"]
    assert trace[0]["global_batch"] == 8 and len(trace) >= 2, trace
    grown = trace[1]
    first_freeze = r["frozen_depth"][1]["step"]
    assert grown["step"] > first_freeze and grown["global_batch"] > 8
    assert grown["step"] % 12 == 0  # at an epoch start (12 steps of 8 per epoch before)
    assert all(t["global_batch"] <= 32 for t in trace)
    per = {int(k): v for k, v in r["packer_memory"]["per_sample"].items()}
    assert per[0] > max(v for d, v in per.items() if d > 0)  # frozen blocks save nothing
    for e in r["packer"]:  # a grown batch's activations fit the budget the start needed
        assert e["batch_to"] * e["bytes_per_sample"] <= r["packer_memory"]["budget"] + 1e-6
    grew = [e for e in r["packer"] if e["batch_to"] > e["batch_from"]]
    assert grew and grew[0]["measured_step_s"] is not None  # the prediction's check at the new batch
    assert r["samples"] == 4 * 96 and r["steps"] < 48  # every epoch sees every sample, in fewer steps
    assert all(math.isfinite(x) for x in r["losses"])
    assert "time goal: global batch per frozen depth" in ref.stdout
    # a kill after the batch grew, then --resume: the same run
    ck = ["--checkpoint-dir", str(job["dir"] / "ck"), "--checkpoint-every", "2"]
    kill_at = grown["step"] + 3
    crashed, _ = _go(job, "run", ck, kill_at=kill_at)
    assert crashed.returncode == -signal.SIGKILL
    resumed, path2 = _go(job, "run", ck + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    b = json.loads(path2.read_text())
    assert b["resumed_at_steps"] == [kill_at - 1]
    assert b["batch_trace"] == trace and b["frozen_depth"] == r["frozen_depth"]
    assert b["losses"] == r["losses"]
    assert [e["batch_to"] for e in b["packer"]] == [e["batch_to"] for e in r["packer"]]
    # a checkpoint on the very step the packer decided, then a kill: the decision is in it
    # (the checkpointer runs after the packer; it used to run before and lose the decision)
    decided = grew[0]["step"]
    ck2 = ["--checkpoint-dir", str(job["dir"] / "ck2"), "--checkpoint-every", str(decided)]
    crashed, _ = _go(job, "run2", ck2, kill_at=decided + 1)
    assert crashed.returncode == -signal.SIGKILL
    resumed, path3 = _go(job, "run2", ck2 + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    c = json.loads(path3.read_text())
    assert c["resumed_at_steps"] == [decided]
    assert c["batch_trace"] == trace and c["losses"] == r["losses"]
    decisions = lambda rep: [(e["step"], e["depth"], e["batch_from"], e["batch_to"]) for e in rep["packer"]]  # noqa
    assert decisions(c) == decisions(r)  # taken once, at the same step (not re-measured after the resume)
    # a kill in the middle of the packer's measurement at a new depth: it goes on measuring
    mid = first_freeze + 2
    ck3 = ["--checkpoint-dir", str(job["dir"] / "ck3"), "--checkpoint-every", "1"]
    crashed, _ = _go(job, "run3", ck3, kill_at=mid)  # after the checkpoint at step mid
    assert crashed.returncode == -signal.SIGKILL
    resumed, path4 = _go(job, "run3", ck3 + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    d = json.loads(path4.read_text())
    assert d["resumed_at_steps"] == [mid] and decisions(d) == decisions(r) and d["losses"] == r["losses"]


@pytest.mark.parametrize("extra,match", [
    (["--mode-goal", "time", "--max-batch", "4"], "smaller than --batch-size"),
    (["--mode-goal", "cost", "--max-batch", "16"], "belong to --mode-goal time"),
])
def test_time_goal_errors(job, extra, match):
    args = [a for a in job["args"] if a not in ("--max-batch", "32", "--mode-goal", "time")]
    p = subprocess.run(args + extra + ["--out", str(job["dir"] / "err")], cwd=job["dir"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and match in p.stderr


def test_packer_measures_memory_per_token_and_sizes_for_the_longest_row():
    """Batches differ in length: a reading on a short batch must not make a batch of the longest
    rows look cheap. Memory is per token, scaled to the longest row the run can see."""
    p = _packer(row_tokens=64)
    p.record_memory(0, nbytes=8 * 16 * 100, samples=8, tokens=8 * 16)  # a batch of 16-token rows
    assert p.per_sample_bytes(0) == 100 * 64  # a 64-token row needs 4x what a 16-token row did
    p.record_memory(1, nbytes=8 * 64 * 50, samples=8, tokens=8 * 64)  # a batch of the longest rows
    assert p.per_sample_bytes(1) == 50 * 64
    assert p.mem["budget"] == 100 * 64 * 8 / 2  # the start's: its batch of the longest rows per worker
