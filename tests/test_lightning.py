"""AutoFreezeLightning on an unchanged LightningModule with a tiny BERT (CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("transformers")

from autofreeze_ext import GradientNormTest, PolicyOptions, ScheduledFreeze  # noqa: E402
from autofreeze_ext.integrations.lightning import AutoFreezeLightning, IndexedRows, cached_forward  # noqa: E402

from models import TinyRows, tiny_bert  # noqa: E402

pytestmark = pytest.mark.reference  # also run on the pure-PyTorch backend (see conftest.py)
HERE = os.path.dirname(os.path.abspath(__file__))


def DS(n=48):  # noqa: N802 - rows that carry their index (the cache's key)
    return TinyRows(n, index=True)


class Module(L.LightningModule):
    """A plain module: the model, a loss, AdamW from self.parameters() and a per-step LR schedule."""

    def __init__(self, use_cache=False, dropout=0.1, model=None):
        super().__init__()
        self.model = model if model is not None else tiny_bert(num_layers=4, hidden_dropout_prob=dropout,
                                                                attention_probs_dropout_prob=dropout)
        self.use_cache, self.losses, self.updates = use_cache, [], 0

    def training_step(self, batch, batch_idx):
        idx = batch.pop("index")
        out = cached_forward(self, idx, **batch) if self.use_cache else self.model(**batch)
        self.losses.append(float(out.loss.detach()))
        return out.loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        opt.register_step_post_hook(lambda *a: setattr(self, "updates", self.updates + 1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer(tmp_path, cb, epochs=2, accum=1, **kw):
    torch.manual_seed(0)
    return L.Trainer(max_epochs=epochs, accumulate_grad_batches=accum, accelerator="cpu", devices=1,
                     callbacks=[cb, *kw.pop("callbacks", [])], logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=kw.pop("checkpointing", False),
                     default_root_dir=str(tmp_path), deterministic=True, **kw)


def loader():
    return torch.utils.data.DataLoader(DS(), batch_size=8, shuffle=False)


def test_freezes_inside_an_unchanged_module_one_step_per_update(tmp_path):
    cb = AutoFreezeLightning("static:2@4")
    m = Module()
    t = trainer(tmp_path, cb, epochs=2, accum=2)
    t.fit(m, loader())
    ctl = cb.controller
    assert t.global_step == 6 and m.updates == 6 and ctl.global_step == 6  # 12 batches, 2 per update
    assert ctl.frozen_depth == 2 and [h["step"] for h in ctl.history if h["event"] == "freeze"] == [4]
    opt = t.optimizers[0]
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [p for b in m.model.bert.encoder.layer[:2] for p in b.parameters()]
    assert all(id(p) not in owned and not p.requires_grad for p in frozen)
    top = m.model.bert.encoder.layer[3].attention.self.query.weight
    assert int(opt.state[top]["step"]) == 6  # active Adam state kept through the freeze
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 6  # the scheduler kept stepping


def test_default_policy_and_a_policy_object(tmp_path):
    cb = AutoFreezeLightning()  # no val_data: the default's fallback (late), all blocks but the top one at 80%
    t = trainer(tmp_path, cb, epochs=5)
    t.fit(Module(), loader())
    # 30 steps from the trainer's estimate; the tiny model has not learned yet: the guard holds the freeze
    assert cb.controller.policy.total_steps == 30 and cb.controller.frozen_depth == 0
    assert "not learning yet" in cb.controller.history[-1]["held_by"]
    unguarded = AutoFreezeLightning(options=PolicyOptions(learned=None))  # the default without that guard
    trainer(tmp_path, unguarded, epochs=5).fit(Module(), loader())
    assert [(h["step"], h["to"]) for h in unguarded.controller.history if h["event"] == "freeze"] == [(24, 3)]
    cb2 = AutoFreezeLightning(ScheduledFreeze([(3, 1)]))
    trainer(tmp_path, cb2, epochs=1).fit(Module(), loader())
    assert cb2.controller.frozen_depth == 1
    with pytest.raises(ValueError, match="unknown policy"):
        AutoFreezeLightning("nope")


def test_updates_skipped_by_the_grad_scaler_are_not_counted(tmp_path):
    """16-mixed: an update with an inf gradient is skipped by the precision plugin's GradScaler
    (the optimizer's step() is not called), so the controller does not count it. CPU has no
    16-mixed in Lightning, so the plugin is given torch's CPU GradScaler."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    cb = AutoFreezeLightning(GradientNormTest(interval_steps=2))
    m = Module()
    calls = {"n": 0}

    def poison(grad):  # the 4th backward pass gets an inf gradient: that update is skipped
        calls["n"] += 1
        return torch.full_like(grad, float("inf")) if calls["n"] == 4 else grad

    m.model.classifier.weight.register_hook(poison)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 8))
    t = trainer(tmp_path, cb, epochs=2, plugins=[plugin])
    t.fit(m, loader())
    assert m.updates == 11 and cb.controller.global_step == 11  # 12 batches, one update skipped


def _fit(tmp_path, policy, epochs, ckpt_path=None, max_steps=-1, every=None):
    cb = AutoFreezeLightning(policy)
    m = Module(dropout=0.0)
    extra = {}
    if every:
        extra["callbacks"] = [L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), every_n_train_steps=every,
                                                          save_top_k=-1, filename="{step}")]
    t = trainer(tmp_path, cb, epochs=epochs, max_steps=max_steps, checkpointing=bool(every), **extra)
    t.fit(m, loader(), ckpt_path=ckpt_path)
    return cb, m


def test_fit_resumes_from_a_checkpoint_with_the_same_depth_and_decisions(tmp_path):
    """Interrupted after a freeze and resumed with fit(ckpt_path=...): the same frozen depth, the
    same decisions (the gradient test's statistics were checkpointed) and the same losses as an
    uninterrupted fit; the optimizer's state loads into the fresh optimizer."""
    policy = lambda: GradientNormTest(percentile=50, interval_steps=3)  # noqa: E731
    whole, mw = _fit(tmp_path / "a", policy(), epochs=4)
    freezes = [h for h in whole.controller.history if h["event"] == "freeze"]
    assert freezes and freezes[0]["step"] < 12, "the test needs a freeze before the checkpoint"
    # at an epoch's end: Lightning resumes a plain DataLoader at an epoch's start
    _, m1 = _fit(tmp_path / "b", policy(), epochs=4, max_steps=12, every=12)
    ck = str(tmp_path / "b" / "ck" / "step=12.ckpt")
    resumed, m2 = _fit(tmp_path / "c", policy(), epochs=4, ckpt_path=ck)
    assert resumed.controller.frozen_depth == whole.controller.frozen_depth
    assert json.dumps(resumed.controller.history) == json.dumps(whole.controller.history)  # (NaN == NaN here)
    assert m1.losses + m2.losses == pytest.approx(mw.losses, rel=1e-5)


def test_the_cache_serves_the_frozen_prefix_with_equal_losses(tmp_path):
    """cached_forward in training_step: after the freeze the prefix's output comes from the
    cache in later epochs, and the losses equal those of the plain forward pass."""
    plain_cb, plain = AutoFreezeLightning("static:2@3"), Module(use_cache=False, dropout=0.0)
    trainer(tmp_path / "p", plain_cb, epochs=3).fit(plain, loader())
    cached_cb = AutoFreezeLightning("static:2@3", cache=True, cache_dir=str(tmp_path / "cache"), cache_memory=0)
    cached = Module(use_cache=True, dropout=0.0)
    trainer(tmp_path / "c", cached_cb, epochs=3).fit(cached, loader())
    assert cached_cb.cache.counters()["hits_disk"] > 0  # the disk tier (no RAM budget)
    # a later fit on the same folder never reads what this one left: its first epoch misses every row
    again_cb = AutoFreezeLightning("static:2", cache=True, cache_dir=str(tmp_path / "cache"), cache_memory=0)
    rows = torch.utils.data.DataLoader(IndexedRows(TinyRows(48)), batch_size=8)  # "index" added to each row
    trainer(tmp_path / "d", again_cb, epochs=2).fit(Module(use_cache=True, dropout=0.0), rows)
    c = again_cb.cache.counters()
    assert (c["misses"], c["hits_disk"]) == (48, 48)
    assert cached.losses == pytest.approx(plain.losses, rel=1e-4, abs=1e-6)


def test_a_resumed_fit_counts_the_cache_over_both_fits(tmp_path):
    """The checkpoint keeps the cache's counts: a fit resumed from it reports every lookup of
    the uninterrupted fit (its own cache starts empty), not only its own."""
    def fit(out, **kw):
        cb = AutoFreezeLightning("static:2@3", cache=True)
        ck = [L.callbacks.ModelCheckpoint(dirpath=str(out / "ck"), every_n_train_steps=12, save_top_k=-1,
                                          filename="{step}")]
        trainer(out, cb, epochs=4, checkpointing=True, callbacks=ck,
                max_steps=kw.pop("max_steps", -1)).fit(Module(use_cache=True, dropout=0.0), loader(), **kw)
        return cb.cache_counters

    whole = fit(tmp_path / "a")
    first = fit(tmp_path / "b", max_steps=12)
    resumed = fit(tmp_path / "c", ckpt_path=str(tmp_path / "b" / "ck" / "step=12.ckpt"))
    lookups = lambda c: c["hits_ram"] + c["hits_disk"] + c["misses"]  # noqa: E731
    # every row after the freeze is served once an epoch: looked up, or computed and not written
    # where no later pass reads it (the first fit's epoch 1: its max_steps end there)
    served = lambda c: lookups(c) + c["writes_skipped"]  # noqa: E731
    assert first["writes_skipped"] == 24 and whole["writes_skipped"] == 0
    assert served(resumed) == served(whole) == lookups(whole) == 4 * 48 - 3 * 8, (first, resumed, whole)
    assert resumed["hit_rate"] == pytest.approx((resumed["hits_ram"] + resumed["hits_disk"]) / lookups(resumed))


def test_ddp_ranks_take_the_same_decisions_and_frozen_parameters_leave_the_allreduce(tmp_path):
    """strategy="ddp" on 2 CPU processes (gloo) whose policies disagree (rank 1's never
    freezes): rank 0's decision is broadcast, so both ranks freeze at the same step, and the
    strategy's DDP is rebuilt over the active parameters (DDP would fail at the next step
    otherwise: find_unused_parameters is off). With the cache and a ShardedBatchSampler every row
    a rank cached is read back by that rank."""
    out = tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, os.path.join(HERE, "lightning_ddp_worker.py"), str(out)], env=env,
                       capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    steps = [[(h["step"], h["from"], h["to"]) for h in rk["history"]] for rk in ranks]  # ("reason" names each
    assert steps[0] == steps[1] == [(3, 0, 2)] and ranks[0]["depth"] == ranks[1]["depth"] == 2  # rank's policy)
    for rk in ranks:
        assert rk["ddp_params_end"] < rk["ddp_params_start"]  # the frozen blocks left DDP's buckets
        # with a ShardedBatchSampler each rank's rows stay its own: epoch 2 writes its 24, epoch 3 reads all 24
        assert rk["cache"]["puts_ram"] == rk["cache"]["hits_ram"] == 24


class CliLike(Module):
    """The CLI's optimisation in a LightningModule: AdamW (decay 0.01 but on biases and LayerNorm
    weights), a linear schedule without warm-up steps (10% of 9 steps rounds to 0)."""

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        named = list(self.model.named_parameters())
        no_decay = ("bias", "LayerNorm.weight")
        opt = torch.optim.AdamW([{"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
                                 {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0}],
                                lr=1e-3)
        sched = get_linear_schedule_with_warmup(opt, 0, 9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_decisions_and_losses_match_the_cli_autofreeze_cache_run(tmp_path, capsys):
    """The same data, seed, optimizer and schedule through the CLI's ``autofreeze+cache`` and
    through a LightningModule with AutoFreezeLightning and cached_forward (the paper's test in
    both): the same freezes, gradient norms and losses within 1e-4 (one batch holds the whole
    training set, so the samplers' orders do not matter; dropout is off)."""
    from test_hf_trainer import cli_reference_run
    from autofreeze_ext.tasks import encode, load_task
    from transformers import AutoTokenizer

    ckpt, train_tsv, rep = cli_reference_run(tmp_path, capsys, "--no-cost-model")
    assert rep["cache"]["counters"]["hits_ram"] > 0

    enc = encode(load_task(train_tsv), AutoTokenizer.from_pretrained(ckpt), 12)
    rows = [{"index": i, **{k: v[i] for k, v in enc.items()}} for i in range(16)]
    cb = AutoFreezeLightning("gradient", cache=True, cost_model=False)
    from transformers import AutoModelForSequenceClassification

    m = CliLike(use_cache=True, model=AutoModelForSequenceClassification.from_pretrained(ckpt))
    t = L.Trainer(max_epochs=9, accelerator="cpu", devices=1, callbacks=[cb], logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, gradient_clip_val=None)
    t.fit(m, torch.utils.data.DataLoader(rows, batch_size=16))
    ctl = cb.controller
    cli_freezes = [(h["step"], h["to"]) for h in rep["controller_history"] if h["event"] == "freeze"]
    assert cli_freezes and [(h["step"], h["to"]) for h in ctl.history if h["event"] == "freeze"] == cli_freezes
    norms = [[n for n in h["norms"] if n is not None] for h in ctl.history if h["event"] == "interval"]
    cli_norms = [[n for n in h["norms"] if n is not None] for h in rep["controller_history"] if h["event"] == "interval"]
    assert norms == [pytest.approx(n, rel=1e-4) for n in cli_norms]
    assert m.losses == pytest.approx(rep["losses"], rel=1e-4, abs=1e-4)
    assert cb.cache.counters()["hits_ram"] > 0


class WarmupModule(Module):
    """The usual transformers schedule: linear warm-up over 5 steps, then linear decay."""

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        sched = get_linear_schedule_with_warmup(opt, 5, self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_a_fit_bounded_by_max_steps_alone_freezes_caches_and_guards_the_warm_up(tmp_path):
    """Trainer(max_steps=N) without max_epochs (Lightning then skips loading the data to
    estimate the steps): the default policy gets the probe batch and the run's length, the cache
    is written and read, the epoch in which the steps run out writes nothing (no later pass reads
    it), and the warm-up guard is the schedule's own warm-up."""
    cb = AutoFreezeLightning("gradient+guards", cache=True)
    m = WarmupModule(use_cache=True, dropout=0.0)
    t = L.Trainer(max_steps=18, accelerator="cpu", devices=1, callbacks=[cb], logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False)
    t.fit(m, loader())
    assert cb.controller.policy.guards.warmup_steps == 5 and t.global_step == 18
    default = AutoFreezeLightning()
    L.Trainer(max_steps=18, accelerator="cpu", devices=1, callbacks=[default], logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).fit(Module(), loader())
    assert default.controller.policy.total_steps == 18
    cached = AutoFreezeLightning("static:2@9", cache=True)
    L.Trainer(max_steps=18, accelerator="cpu", devices=1, callbacks=[cached], logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).fit(Module(use_cache=True, dropout=0.0), loader())
    c = cached.cache_counters  # 6 batches of 8 rows an epoch, 3 epochs; the freeze after 9 steps
    assert c["hits_ram"] == 24 and c["misses"] == 24  # epoch 2 reads what epoch 1 wrote after the freeze
    assert c["writes_skipped"] == 24  # and, the last (18 steps), computes its first 3 batches, writing none


def test_a_cache_mode_turns_the_cache_on_and_resuming_under_another_policy_is_refused(tmp_path):
    assert AutoFreezeLightning("autofreeze+cache").use_cache and not AutoFreezeLightning("autofreeze").use_cache
    _, _ = _fit(tmp_path / "b", ScheduledFreeze([(2, 1)]), epochs=2, max_steps=6, every=6)
    with pytest.raises(ValueError, match="written by policy"):
        _fit(tmp_path / "c", "static:2@4", epochs=2, ckpt_path=str(tmp_path / "b" / "ck" / "step=6.ckpt"))


def test_a_policy_that_freezes_from_the_start_resumes(tmp_path):
    """static:2 freezes when fitting starts, before Lightning loads the checkpoint's optimizer
    state (saved with every parameter in its group): the resumed fit loads it, takes the frozen
    blocks out again and continues with the uninterrupted fit's losses and Adam state."""
    whole, mw = _fit(tmp_path / "a", "static:2", epochs=4)
    _, m1 = _fit(tmp_path / "b", "static:2", epochs=4, max_steps=12, every=12)
    resumed, m2 = _fit(tmp_path / "c", "static:2", epochs=4, ckpt_path=str(tmp_path / "b" / "ck" / "step=12.ckpt"))
    assert resumed.controller.frozen_depth == whole.controller.frozen_depth == 2
    assert m1.losses + m2.losses == pytest.approx(mw.losses, rel=1e-5)
    opt = resumed.controller.optimizer
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in owned for p in resumed.controller.frozen_parameters())
    top = m2.model.bert.encoder.layer[3].attention.self.query.weight
    assert int(opt.state[top]["step"]) == 24  # 6 updates an epoch, Adam's count carried through the resume


class StopAfter(ScheduledFreeze):
    """Freezes 2 blocks at step 2 and judges training converged at step 4."""

    def __init__(self):
        super().__init__([(2, 2)])
        self.seen = 0

    def decide(self, stats):
        self.seen = stats.step
        return super().decide(stats)

    def should_stop(self):
        return self.seen >= 4


def test_a_policy_that_judges_training_converged_stops_the_trainer_and_plateau_reads_val_data(tmp_path):
    cb = AutoFreezeLightning(StopAfter())
    t = trainer(tmp_path, cb, epochs=5)
    t.fit(Module(), loader())
    assert t.global_step == 4 and cb.controller.frozen_depth == 2  # 30 steps asked, stopped at 4
    rows = DS(16)
    val = {k: torch.stack([torch.as_tensor(rows[i][k]) for i in range(16)]) for k in ("input_ids", "attention_mask",
                                                                                      "labels")}
    plateau = AutoFreezeLightning("plateau", val_data=val)
    trainer(tmp_path, plateau, epochs=2).fit(Module(), loader())
    ivs = [h for h in plateau.controller.history if h["event"] == "interval"]
    checks = [h["signals"]["val_slice"] for h in ivs]
    assert all(0 <= c["score"] <= 1 and c["loss"] > 0 for c in checks)
    assert [h["step"] for h in ivs] == [3, 6, 9]  # 2 checks an epoch, none at the last step (12)
    with pytest.raises(ValueError, match="val_data"):
        trainer(tmp_path, AutoFreezeLightning("plateau"), epochs=1).fit(Module(), loader())


def test_the_full_layout_maps_the_state_back_and_refuses_a_changed_optimizer():
    from autofreeze_ext.integrations.lightning import LayoutChanged, full_layout

    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    opt = torch.optim.AdamW([{"params": [a, b]}, {"params": [c]}])
    groups = [[a, b], [c]]
    for p in (a, b, c):
        p.grad = torch.ones(2)
    opt.step()
    opt.param_groups[0]["params"] = [b]  # a frozen and taken out
    opt.state.pop(a)
    saved = full_layout(opt.state_dict(), opt, groups)
    assert saved["param_groups"][0]["params"] == [0, 1] and sorted(saved["state"]) == [1, 2]
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})  # e.g. BaseFinetuning's unfreeze
    with pytest.raises(LayoutChanged, match="changed"):
        full_layout(opt.state_dict(), opt, groups)


def test_the_default_reads_a_validation_slice_and_falls_back_without_val_data(tmp_path, caplog):
    """The default (plateau) without val_data: NO_VAL_DEFAULT (late), said in a warning; with it: plateau."""
    from autofreeze_ext.policies import LateFreeze, PlateauFreeze

    cb = AutoFreezeLightning(cache=True)
    with caplog.at_level("WARNING", logger="autofreeze_ext"):
        trainer(tmp_path, cb, epochs=1).fit(Module(use_cache=True), loader())
    assert isinstance(cb.controller.policy, LateFreeze) and cb.cache is not None  # the cache still on
    assert "pass val_data=" in caplog.text and "using 'late' instead" in caplog.text
    rows = DS(16)
    val = {k: torch.stack([torch.as_tensor(rows[i][k]) for i in range(16)]) for k in ("input_ids", "attention_mask",
                                                                                      "labels")}
    with_val = AutoFreezeLightning(val_data=val)
    trainer(tmp_path, with_val, epochs=1).fit(Module(), loader())
    assert isinstance(with_val.controller.policy, PlateauFreeze)


def test_a_resumed_ddp_fit_counts_rank_0s_earlier_fit_once_and_no_other_ranks(tmp_path):
    """Lightning saves rank 0's callback state and loads it on every rank: rank 0's counts after
    a resume add its earlier fit's, rank 1's are its own fit's alone (adding rank 0's there would
    count them twice in a sum over ranks)."""
    out = tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, os.path.join(HERE, "lightning_ddp_worker.py"), str(out), "resume"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"resumed_rank{i}.json").read_text()) for i in range(2)]
    for rk in ranks:  # the first fit: epoch 2 writes the rank's 24 rows, epoch 3 reads them
        assert (rk["first"]["puts_ram"], rk["first"]["hits_ram"], rk["first"]["writes_skipped"]) == (24, 24, 0)
        # the resumed epoch 4 is the last, its RAM cache empty: its 24 rows are not looked up nor written
        assert rk["second_alone"]["hits_ram"] == rk["second_alone"]["puts_ram"] == 0
    r0, r1 = ranks
    assert (r0["second"]["puts_ram"], r0["second"]["hits_ram"], r0["second"]["writes_skipped"]) == (24, 24, 24)
    assert (r1["second"]["puts_ram"], r1["second"]["hits_ram"], r1["second"]["writes_skipped"]) == (0, 0, 24)
