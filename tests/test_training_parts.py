"""The training loop's parts, one by one, on a stand-in run (no subprocess, no model)."""
import os
import types

import pytest
import torch

from autofreeze_ext.training import checkpoint as ckpt_mod
from autofreeze_ext.training.checks import validate
from autofreeze_ext.training.config import FinetuneConfig
from autofreeze_ext.training.parts import (CHECKPOINT, CONTINUE, Checkpointer, CostGoal, EpochEnd, KillAt, ModelSaver,
                                           Outcome, Packer, Progress, ProgressBar, StepTimer, stop)
from autofreeze_ext.training.record import Record
from autofreeze_ext.training.step import StepResult, micro_batches

pytestmark = pytest.mark.reference


def fake_run(**kw):
    ctl = types.SimpleNamespace(frozen_depth=0, num_blocks=4)
    run = types.SimpleNamespace(
        cfg=FinetuneConfig.from_options(batch_size=8, checkpoint_every=3),
        ctx=types.SimpleNamespace(world_size=1, rank=0, distributed=False, is_main=True),
        ctl=ctl, t_start=0.0, world=1, cache=None, sampler=types.SimpleNamespace(position=0), steps_per_epoch=4,
        prog=Record.new(0, 8), stopped=None, ckpt_path=None, num_blocks=4)
    run.__dict__.update(kw)
    return run


def res(t0=1.0, depth=0, loss=0.5):
    return StepResult(indices=list(range(8)), loss=loss, t0=t0, t1=t0 + 0.2, t2=t0 + 0.5, t3=t0 + 0.6,
                      prefix_s=0.05, io_s=0.01, stats_s=0.02, samples=8, micro_batches=1, depth_at_start=depth)


def test_progress_accounts_every_phase_and_the_depth_trace():
    run, p = fake_run(), Progress()
    p.start(run)
    p.after_step(run, res())
    run.ctl.frozen_depth = 2
    p.after_step(run, res(t0=2.0))
    prog = run.prog
    assert prog.step == 2 and prog.samples == 16 and prog.losses == [0.5, 0.5]
    assert sum(prog.phases.values()) == pytest.approx(prog.train_time) == pytest.approx(1.2)
    assert prog.phases["backward"] == pytest.approx(0.6) and prog.phases["statistics"] == pytest.approx(0.04)
    assert prog.depth_trace == [{"step": 0, "depth": 0}, {"step": 2, "depth": 2}]
    assert prog.depth_seconds == {"0": [pytest.approx(1.2), 2]}
    assert prog.startups == [{"step": 0, "world_size": 1, "startup_s": 1.0}]
    # resumed: the record comes back from the checkpoint and the restart is noted
    q = Progress()
    q.load_state_dict(p.state_dict())  # what the checkpoint keeps: a plain dict
    run2 = fake_run()
    q.start(run2)
    assert run2.prog.resumed_at == [2] and len(run2.prog.world_sizes) == 2


def test_epoch_end_closes_the_epoch_only_at_its_last_step():
    run, p = fake_run(), Progress()
    p.start(run)
    end = EpochEnd(p)
    run.sampler.position = 3
    end.after_step(run, res())
    assert run.prog.epoch == 0
    run.prog.epoch_time = 5.0
    run.sampler.position = 4
    end.after_step(run, res())
    assert run.prog.epoch == 1 and run.prog.epoch_times == [5.0] and run.prog.epoch_time == 0.0


def test_checkpointer_is_due_by_steps_epoch_end_or_request(tmp_path):
    saved = []
    run, p = fake_run(), Progress()
    p.start(run)
    c = Checkpointer([p, Packer(StepTimer())])
    c.save = lambda run: saved.append(run.prog.step)
    for step, pos, outcome in [(1, 1, CONTINUE), (2, 2, CHECKPOINT), (3, 3, CONTINUE), (4, 4, CONTINUE),
                               (5, 1, stop("scale", checkpoint=True)), (7, 3, stop("converged"))]:
        run.prog.step, run.sampler.position = step, pos
        c.after_step(run, outcome)
    assert saved == [2, 3, 4, 5]  # requested, every 3, epoch end, a stop that asks for one


def test_outcomes_merge_first_stop_wins_any_checkpoint_counts():
    assert CONTINUE | None == CONTINUE and CONTINUE | CHECKPOINT == CHECKPOINT
    merged = CONTINUE | stop("scale", checkpoint=True) | stop("converged")
    assert merged == Outcome(stop="scale", checkpoint=True)
    assert (CHECKPOINT | stop("converged")) == Outcome(stop="converged", checkpoint=True)


def test_checkpoint_file_round_trip_and_one_version(tmp_path):
    path = str(tmp_path / "c.pt")
    ckpt_mod.save_checkpoint(path, {"mode": "autofreeze", "parts": {"progress": {"step": 3}}})
    st = ckpt_mod.load_checkpoint(path)
    assert st["version"] == ckpt_mod.VERSION and st["parts"]["progress"]["step"] == 3
    for other in ({"version": 2, "mode": "autofreeze"}, {"mode": "autofreeze"}, {"version": 99}):
        torch.save(other, path)
        with pytest.raises(ValueError, match=f"reads version {ckpt_mod.VERSION} only"):
            ckpt_mod.load_checkpoint(path)


def test_kill_at_only_on_its_step_rank_and_first_launch(monkeypatch):
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(pid))
    run = fake_run()
    run.prog = Record(step=5)
    KillAt(4).step_done(run, CONTINUE)
    KillAt(5, rank=1).step_done(run, CONTINUE)
    assert killed == []
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    KillAt(5).step_done(run, CONTINUE)
    assert killed == []
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    KillAt(5).step_done(run, CONTINUE)
    assert len(killed) == 1


def test_cost_goal_needs_a_checkpoint_dir_under_torchrun_and_packer_idles_without_packing():
    run = fake_run(cfg=FinetuneConfig.from_options(mode_goal="cost"), packing=False, total_steps=10, ddp=None)
    run.ctx.distributed, run.ctx.world_size = True, 2
    with pytest.raises(ValueError, match="checkpoint-dir"):
        CostGoal(StepTimer()).start(run)
    pk = Packer(StepTimer())
    pk.start(fake_run(packing=False))
    assert pk.packer is None and pk.step_meter(fake_run()) is None


def test_config_sections_take_and_give_back_the_flat_options():
    cfg = FinetuneConfig.from_options(batch_size=8, cache_dir="/ssd/c", mode_goal="time", max_batch=16, policy="x")
    assert (cfg.optim.batch_size, cfg.cache.dir, cfg.goal.kind, cfg.goal.max_batch) == (8, "/ssd/c", "time", 16)
    assert cfg.freeze.policy == "x" and cfg.data.max_length == 64  # the rest keep their defaults
    opts = cfg.options()
    assert opts["cache_dir"] == "/ssd/c" and opts["batch_size"] == 8 and opts["freeze_at"] == 0.8
    assert len(opts) == 69  # one per CLI option; a new option must be added to a section
    assert opts["val_fraction"] is None and opts["plateau_patience"] == 2 and opts["stop_when_converged"] is False
    assert opts["batching"] == "grouped" and opts["pad_to_multiple_of"] is None and opts["overwrite"] is False
    assert FinetuneConfig.from_options(**opts) == cfg
    with pytest.raises(TypeError, match="batchsize"):
        FinetuneConfig.from_options(batchsize=8)


def test_config_checks_and_micro_batches():
    for bad, match in [(dict(mode_goal="speed"), "--mode-goal: unknown value"), (dict(max_batch=64), "belong to"),
                       (dict(mode_goal="time", max_batch=8, batch_size=32), "smaller"), (dict(amp="fp8"), "amp"),
                       (dict(epochs=0), "--epochs"), (dict(grad_accum=0), "--grad-accum"),
                       (dict(train_samples=0), "--train-samples"), (dict(resume=True), "--checkpoint-dir"),
                       (dict(probe_steps=0), "--probe-steps"), (dict(min_packing_gain=1.5), "packing-gain"),
                       (dict(batch_lr_scaling="cubic"), "lr-scaling"), (dict(signal="probe_loss"), "--signal"),
                       (dict(device="tpu"), "--device"), (dict(percentile=150), "--percentile"),
                       (dict(intervals_per_epoch=0), "intervals"), (dict(checkpoint_every=0), "checkpoint-every"),
                       (dict(data_shards=0), "data-shards"), (dict(min_workers=0), "min-workers"),
                       (dict(anneal_steps=-1), "anneal"), (dict(policy="nope"), "--policy: unknown value .nope."),
                       (dict(mode="bogus"), "unknown mode"), (dict(mode="static:3@x"), "unknown mode"),
                       (dict(probe_samples=0), "probe-samples"), (dict(patience=0), "--patience"),
                       (dict(cache_memory="lots"), "--cache-memory"), (dict(learned=1.5), "--learned"),
                       (dict(lr=0.0), "--lr must be > 0"), (dict(warmup_ratio=1.0), "--warmup-ratio"), (dict(weight_decay=-1.0), "--weight-decay"), (dict(target_speedup=0.5), "target-speedup"),
                       (dict(batching="sorted"), "--batching"), (dict(pad_to_multiple_of=0), "--pad-to-multiple-of")]:
        with pytest.raises(ValueError, match=match):
            validate(FinetuneConfig.from_options(**bad))
    parts = micro_batches(list(range(5)), {"x": torch.arange(5)}, 2)
    assert [p[0] for p in parts] == [[0, 1], [2, 3, 4]] and parts[1][1]["x"].tolist() == [2, 3, 4]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    parts = micro_batches(list(range(4)), {"attention_mask": mask, "input_ids": mask * 5}, 2, multiple=1)
    assert [p[1]["input_ids"].shape[1] for p in parts] == [4, 2]  # each micro-batch cut to its longest row


def test_checkpoint_keeps_and_restores_the_cuda_rng_stream(tmp_path, monkeypatch):
    """GPU runs: the device's RNG state (dropout on the GPU) goes into the checkpoint and comes
    back on resume (checked here with torch.cuda's RNG calls stood in for)."""
    from autofreeze_ext.training.checkpoint import rng_states

    fake = torch.tensor([7, 7, 7], dtype=torch.uint8)
    got = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: fake.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: got.setdefault("state", state))
    run = fake_run()
    run.ctx.device = torch.device("cuda", 0)
    states = rng_states(run)
    assert torch.equal(states["cuda"], fake)
    st = {"mode": "autofreeze", "packing": False, "model": {}, "controller": {}, "optimizer": {}, "scheduler": {},
          "sampler": {}, "step": 3, "rng_per_rank": [torch.get_rng_state()], "cuda_rng_per_rank": [fake]}
    ok = types.SimpleNamespace(load_state_dict=lambda *a: None)
    run2 = fake_run(model=ok, ctl=types.SimpleNamespace(load_state_dict=lambda s: None, frozen_depth=0), opt=ok,
                    sched=ok, sampler=ok, scaler=None, packing=False, model_path="m")
    run2.ctx.device = torch.device("cuda", 0)
    st["options"] = ckpt_mod.resume_options(run2)  # as every checkpoint holds them
    ckpt_mod.restore(run2, st)
    assert torch.equal(got["state"], fake)


def test_checkpointer_writes_every_parts_state_into_the_file(tmp_path):
    """A real save (stand-in model and optimizer): the file holds each named part's state."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run, prog = fake_run(), Progress()
    prog.start(run)
    run.prog.step = 5
    timer = StepTimer()
    timer.start(run)
    timer.epoch_start(run, 0, [list(range(8))])
    timer.after_step(run, res())
    run.__dict__.update(model=model, opt=opt, sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                        ctl=types.SimpleNamespace(frozen_depth=1, num_blocks=4, state_dict=lambda: {"depth": 1}),
                        sampler=types.SimpleNamespace(position=3, state_dict=lambda: {"position": 3}),
                        ckpt_path=str(tmp_path / "ck" / "checkpoint.pt"), run_id="r", packing=False, scaler=None,
                        model_path="m",
                        cfg=FinetuneConfig.from_options(checkpoint_dir=str(tmp_path / "ck")))
    run.ctx.device = torch.device("cpu")
    Checkpointer([prog, timer, Packer(timer)]).save(run)
    st = ckpt_mod.load_checkpoint(run.ckpt_path)
    assert st["step"] == 5 and st["controller"] == {"depth": 1} and st["sampler"] == {"position": 3}
    assert st["parts"]["progress"]["step"] == 5
    assert st["parts"]["step_timer"]["key"] == (0, 8, 1) and st["parts"]["step_timer"]["seen"] == 1
    assert st["parts"]["packer"] == {}


def test_evaluator_records_every_metric_at_the_tiled_points(monkeypatch):
    from autofreeze_ext.training.parts import evaluator as ev_mod

    calls = []
    monkeypatch.setattr(ev_mod, "evaluate_metrics",
                        lambda model, data, ctx: calls.append(1) or {"accuracy": 0.5 + 0.1 * len(calls), "f1": 0.4})
    run = fake_run(metric="accuracy", model=None, dev={}, steps_per_epoch=10)
    run.cfg = FinetuneConfig.from_options(evals_per_epoch=2)
    run.prog = Record(train_time=1.0)
    ev = ev_mod.Evaluator()
    ev.epoch_start(run, 1, [[0]] * 10)
    for pos in range(1, 11):
        run.sampler.position, run.prog.step = pos, 10 + pos
        ev.after_step(run, res())
    assert [(e["step"], e["epoch"]) for e in run.prog.evals] == [(15, 1.5), (20, 2.0)]
    last = run.prog.evals[-1]
    assert last["score"] == last["accuracy"] == pytest.approx(0.7) and last["metrics"]["f1"] == 0.4
    assert last["frozen_depth"] == 0 and len(calls) == 2


def test_progress_bar_counts_steps_and_follows_a_growing_batch():
    pytest.importorskip("tqdm")
    run = fake_run(total_steps=30)
    run.prog = Record(step=4)
    bar = ProgressBar()
    bar.start(run)
    assert bar.bar.total == 30 and bar.bar.n == 4
    run.sampler.position = 0
    bar.epoch_start(run, 1, [[0]] * 5)  # epoch 1 of 3 at a batch twice as large: 5 steps per epoch
    assert bar.bar.total == 4 + 5 + 5
    bar.after_step(run, res(loss=0.25))
    assert bar.bar.n == 5 and set(bar.bar.postfix.split(", ")) == {"loss=0.250", "frozen=0/4"}
    bar.end(run)


def test_model_saver_writes_only_a_finished_run_on_the_main_rank(tmp_path):
    saved = []
    model = types.SimpleNamespace(save_pretrained=lambda d: saved.append(("model", d)))
    tok = types.SimpleNamespace(save_pretrained=lambda d: saved.append(("tokenizer", d)))
    out = str(tmp_path / "model")
    for epoch, stopped, main, wrote in [(1, "scale", True, False), (3, None, False, False),
                                        (1, "stop_after_steps", True, True), (1, "converged", True, True),
                                        (3, None, True, True)]:
        saved.clear()
        run = fake_run(model=model, tokenizer=tok, stopped=stopped)
        run.prog, run.ctx.is_main = Record(epoch=epoch), main
        saver = ModelSaver(out)
        saver.end(run)
        assert (saved == [("model", out), ("tokenizer", out)]) is wrote
        assert (saver.saved == os.path.abspath(out)) is wrote


