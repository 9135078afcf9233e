"""FreezeController: decisions, the freeze mechanics, memory, resume, adapters, bad input."""
import copy
import functools
import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import autofreeze_ext as af
from autofreeze_ext import ControllerOptions, FreezeController, GradientNormTest, NeverFreeze, ScheduledFreeze, StaticFreeze

from models import BlockNet, TinyResNet, bert_batch, tiny_bert

pytestmark = pytest.mark.reference  # also run on the pure-PyTorch backend (see conftest.py)


def blocknet_ctl(policy, n_blocks=4, opt_cls=torch.optim.Adam, **kw):
    model = BlockNet(n_blocks=n_blocks)
    opt = opt_cls(model.parameters(), lr=1e-2)
    ctl = FreezeController(model, opt, policy, blocks=model.blocks, embeddings=[model.embed],
                           options=ControllerOptions(**kw))
    return model, opt, ctl


def set_grads(model, scales):
    """Every block parameter's gradient = ones * scale of its block (head and embed get ones)."""
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for blk, s in zip(model.blocks, scales):
        for p in blk.parameters():
            p.grad = torch.full_like(p, s)


def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def test_pipeline_hand_computed_decision():
    """Constructed gradients through stats kernel -> interval means -> eta -> freeze."""
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=2), attach=False)
    for _ in range(2):  # interval 1: every block's gradient = 1 -> baseline
        set_grads(model, [1.0, 1.0, 1.0, 1.0])
        ctl.step()
    assert ctl.frozen_depth == 0
    # interval 2: block grads [0.95, 0.5, 1.0, 0.2] -> eta = [0.05, 0.5, 0, 0.8]; median 0.275
    for _ in range(2):
        set_grads(model, [0.95, 0.5, 1.0, 0.2])
        ctl.step()
    last = [h for h in ctl.history if h["event"] == "interval"][-1]
    assert last["eta"] == pytest.approx({0: 0.05, 1: 0.5, 2: 0.0, 3: 0.8})
    assert last["threshold"] == pytest.approx(0.275)
    assert ctl.frozen_depth == 1
    # interval norms are per-step means: the L2 norm of a block whose 42 params all got 0.95
    n_params = sum(p.numel() for p in model.blocks[0].parameters())
    assert last["norms"][0] == pytest.approx(0.95 * math.sqrt(n_params), rel=1e-6)


def test_l1_norm_option():
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=1, norm="l1"), attach=False)
    set_grads(model, [2.0, 1.0, 1.0, 1.0])
    ctl.step()
    n0 = sum(p.numel() for p in model.blocks[0].parameters())
    assert ctl.history[-1]["norms"][0] == pytest.approx(2.0 * n0)


def test_freeze_keeps_active_optimizer_state_and_stops_frozen():
    torch.manual_seed(0)
    model, opt, ctl = blocknet_ctl(ScheduledFreeze([(3, 2)]), opt_cls=torch.optim.AdamW)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    for _ in range(2):
        train_step(model, opt, x, y)
    active = [p for b in model.blocks[2:] for p in b.parameters()] + list(model.head.parameters())
    before = {id(p): copy.deepcopy(opt.state[p]) for p in active}
    train_step(model, opt, x, y)  # step 3: the schedule freezes 2 blocks in the post-step hook
    assert ctl.frozen_depth == 2
    # the hook ran after this step's update: active state must be what Adam left, untouched by freezing
    after_step = {id(p): opt.state[p] for p in active}
    for p in active:
        assert int(after_step[id(p)]["step"]) == int(before[id(p)]["step"]) + 1
    snapshot = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in active}
    ctl.freeze_to(2)  # idempotent, and nothing changes for active state
    for p in active:
        for k, v in opt.state[p].items():
            assert torch.equal(v, snapshot[id(p)][k])
    frozen = ctl.frozen_parameters()
    assert len(frozen) == sum(1 for m in [model.embed, *model.blocks[:2]] for _ in m.parameters())
    frozen_copy = [p.detach().clone() for p in frozen]
    for p in frozen:
        assert not p.requires_grad and p.grad is None and p not in opt.state
        assert all(p is not q for g in opt.param_groups for q in g["params"])
    for _ in range(5):
        train_step(model, opt, x, y)
    assert all(torch.equal(p, c) for p, c in zip(frozen, frozen_copy))
    assert all(p.grad is None for p in frozen)


def test_freeze_is_byte_identical_to_no_freeze_for_active_state():
    """Freezing must not touch the Adam state of active parameters: compare with a run where
    the same parameters are merely excluded from gradient flow by hand from the same point."""
    torch.manual_seed(1)
    model, opt, ctl = blocknet_ctl(NeverFreeze(), opt_cls=torch.optim.Adam)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    for _ in range(3):
        train_step(model, opt, x, y)
    head_state = {k: v.clone() for k, v in opt.state[model.head.weight].items()}
    ctl.freeze_to(3)
    for k, v in opt.state[model.head.weight].items():
        assert torch.equal(v, head_state[k])
    assert [len(g["params"]) for g in opt.param_groups] == [2 + 2]  # block 3 + head


def test_frozen_memory_is_released():
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=100), attach=False)
    set_grads(model, [1.0] * 4)
    ctl.step()
    assert set(ctl.stats._buffers) == {0, 1, 2, 3}
    ref = weakref.ref(ctl.stats._buffers[0])
    before = ctl.stats.memory_bytes()
    ctl.freeze_to(2)
    gc.collect()
    assert ref() is None
    assert set(ctl.stats._buffers) == {2, 3}
    assert ctl.stats.memory_bytes() < before
    assert all(p.grad is None for p in ctl.frozen_parameters())


def test_frozen_modules_stay_in_eval_mode():
    model = BlockNet(dropout=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    FreezeController(model, opt, StaticFreeze(2), blocks=model.blocks, embeddings=[model.embed])
    model.train()
    x = torch.randn(4, 3)
    model(x)
    assert not model.blocks[0].training and not model.blocks[1][1].training and not model.embed.training
    assert model.blocks[2].training and model.head.training
    # frozen prefix output is deterministic (dropout off) although the model is in train mode
    h = lambda: model.blocks[1](torch.tanh(model.blocks[0](model.embed(x))))  # noqa: E731
    assert torch.equal(h(), h())


def test_gradient_accumulation_counts_optimizer_steps():
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=3))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    for _ in range(4):  # 4 optimizer steps of 2 micro-batches each
        opt.zero_grad()
        for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:])):
            nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    assert ctl.global_step == 4 and ctl.interval_steps == 1


def test_accumulated_statistics_equal_manual_sum():
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=3), attach=False)
    total = [torch.zeros_like(p) for p in model.blocks[1].parameters()]
    for s in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        for t, p in zip(total, model.blocks[1].parameters()):
            t += p.grad
        ctl.step()
    expect = torch.sqrt(sum((t ** 2).sum() for t in total)).item() / 3
    assert ctl.history[-1]["norms"][1] == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_statistics_are_unscaled_and_skipped_steps_ignored(fused):
    # fused Adam skips an overflowing update itself: GradScaler calls its step() with found_inf
    def run(use_scaler):
        torch.manual_seed(0)
        model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=2),
                                       opt_cls=functools.partial(torch.optim.Adam, fused=fused))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=use_scaler)
        x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        for _ in range(2):
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
        # a step with inf gradients: GradScaler skips it, so the controller must not count it
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y) * float("inf")).backward()
        scaler.step(opt)
        scaler.update()
        return ctl
    plain, scaled = run(False), run(True)
    assert scaled.global_step == 2
    n_plain = plain.history[-1]["norms"]
    n_scaled = scaled.history[-1]["norms"]
    assert n_scaled == pytest.approx(n_plain, rel=1e-5)


def test_nan_interval_is_skipped_with_warning():
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=1, percentile=90), attach=False)
    set_grads(model, [1.0] * 4)
    ctl.step()
    set_grads(model, [float("nan"), 0.1, 0.1, 0.1])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        ctl.step()
    assert ctl.frozen_depth == 0 and ctl.history[-1]["event"] == "skipped"
    set_grads(model, [1.0, 1.0, 1.0, 0.1])  # after a skip this interval is only a baseline
    ctl.step()
    assert ctl.frozen_depth == 0


def test_state_dict_round_trip_gives_identical_decisions():
    def make():
        torch.manual_seed(0)
        return blocknet_ctl(GradientNormTest(interval_steps=2, percentile=75), n_blocks=5, attach=False)

    grads = [[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 0.99, 0.5, 0.3, 0.9], [1.0, 1.0, 0.9, 0.2, 0.3],
             [0.5, 0.5, 0.5, 0.5, 0.5], [0.5, 0.49, 0.2, 0.2, 0.1], [0.5, 0.5, 0.5, 0.1, 0.9]] * 2
    m1, o1, c1 = make()
    for g in grads:
        set_grads(m1, g)
        c1.step()
    m2, o2, c2 = make()
    for g in grads[:7]:  # stop mid-interval, save, restore into a fresh run
        set_grads(m2, g)
        c2.step()
    state = copy.deepcopy(c2.state_dict())
    m3, o3, c3 = make()
    c3.load_state_dict(state)
    assert c3.frozen_depth == c2.frozen_depth and c3.global_step == 7
    for g in grads[7:]:
        set_grads(m3, g)
        c3.step()
    assert c3.frozen_depth == c1.frozen_depth
    decisions = lambda c: [(h["step"], h.get("decided")) for h in c.history if h["event"] == "interval"]  # noqa
    assert decisions(c3) == decisions(c1)
    assert c1.frozen_depth >= 1


def test_resume_then_load_optimizer_state():
    model, opt, ctl = blocknet_ctl(StaticFreeze(0))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    train_step(model, opt, x, y)
    ctl.freeze_to(2)
    train_step(model, opt, x, y)
    ck = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
          "ctl": copy.deepcopy(ctl.state_dict())}
    model2 = BlockNet()
    model2.load_state_dict(ck["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    ctl2 = FreezeController(model2, opt2, StaticFreeze(0), blocks=model2.blocks, embeddings=[model2.embed])
    ctl2.load_state_dict(ck["ctl"])  # first the controller (removes frozen params) ...
    opt2.load_state_dict(ck["opt"])  # ... then the optimizer state matches the groups
    assert ctl2.frozen_depth == 2
    train_step(model, opt, x, y)
    train_step(model2, opt2, x, y)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", ["bert", "resnet"])
def test_end_to_end_freezes_and_trains(kind):
    torch.manual_seed(0)
    if kind == "bert":
        model = tiny_bert(num_layers=4)
        batch = bert_batch(16)
        fwd = lambda: model(**batch).loss  # noqa: E731
    else:
        model = TinyResNet()
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
        fwd = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctl = FreezeController(model, opt, GradientNormTest(percentile=50, intervals_per_epoch=4), steps_per_epoch=8)
    assert ctl.num_blocks == 4
    depths, losses = [], []
    model.train()
    for _ in range(40):
        opt.zero_grad()
        loss = fwd()
        loss.backward()
        opt.step()
        depths.append(ctl.frozen_depth)
        losses.append(loss.item())
    assert depths == sorted(depths), "frozen depth must be monotone"
    assert depths[-1] >= 1, ctl.history
    assert depths[-1] < 4  # the last block is never frozen by the test
    assert all(math.isfinite(v) for v in losses)
    frozen = ctl.frozen_parameters()
    snap = [p.clone() for p in frozen]
    for _ in range(3):
        opt.zero_grad()
        fwd().backward()
        opt.step()
    assert all(torch.equal(p, s) for p, s in zip(frozen, snap))


def test_hf_adapter_variants():
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertForSequenceClassification, \
        RobertaConfig, RobertaForSequenceClassification

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=32))
    lay = af.hf_layout(bert)
    assert lay.num_blocks == 3 and lay.embeddings == [bert.embeddings]
    rob = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                         num_attention_heads=2, intermediate_size=32))
    lay = af.hf_layout(rob)
    assert lay.num_blocks == 2 and rob.classifier in lay.head
    dist = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2,
                                                                hidden_dim=32))
    lay = af.hf_layout(dist)
    assert lay.num_blocks == 2 and lay.embeddings == [dist.distilbert.embeddings]
    assert dist.classifier in lay.head


def test_resnet_adapter():
    model = TinyResNet()
    lay = af.resnet_layout(model)
    assert lay.blocks == [model.layer1, model.layer2, model.layer3, model.layer4]
    assert lay.embeddings == [model.conv1, model.bn1] and lay.head == [model.fc]


def test_unsupported_model_error_says_how():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(af.UnsupportedModelError, match="blocks="):
        FreezeController(model, opt)
    ctl = FreezeController(model, opt, StaticFreeze(1), blocks=list(model))
    assert ctl.frozen_depth == 1


def test_optimizer_must_own_parameters():
    model = BlockNet()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not own parameter embeddings\\[0\\].weight"):
        FreezeController(model, opt, blocks=model.blocks, embeddings=[model.embed])
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        FreezeController(model, "adam", blocks=model.blocks)


def test_blocks_out_of_forward_order():
    model = BlockNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = FreezeController(model, opt, NeverFreeze(), blocks=list(reversed(model.blocks)))
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match="forward order"):
        train_step(model, opt, x, y)
    del ctl


def test_shared_parameters_and_bad_arguments():
    model = BlockNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="two blocks"):
        FreezeController(model, opt, blocks=[model.blocks[0], model.blocks[0]])
    with pytest.raises(ValueError, match="max_depth"):
        FreezeController(model, opt, blocks=model.blocks, options=ControllerOptions(max_depth=9))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        FreezeController(model, opt, blocks=model.blocks, steps_per_epoch=0)
    with pytest.raises(ValueError, match="not the model's"):
        FreezeController(model, opt, blocks=[nn.Linear(2, 2)])
    ctl = FreezeController(model, opt, GradientNormTest(), blocks=model.blocks, options=ControllerOptions(attach=False))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ctl.step()


def test_empty_param_groups_still_step():
    model, opt, ctl = blocknet_ctl(NeverFreeze())
    opt.add_param_group({"params": list(model.blocks[0].parameters())[:0] + [nn.Parameter(torch.zeros(1))]})
    ctl.freeze_to(4)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_step(model, opt, x, y)
    assert opt.param_groups[0]["params"] == list(model.head.parameters())


def test_parameter_without_grad_on_last_step_still_counts():
    model, opt, ctl = blocknet_ctl(GradientNormTest(interval_steps=2), attach=False)
    set_grads(model, [1.0] * 4)
    ctl.step()
    set_grads(model, [1.0] * 4)
    model.blocks[2][0].bias.grad = None  # no gradient on the interval's last step
    ctl.step()
    w, b = model.blocks[2][0].weight, model.blocks[2][0].bias
    expect = math.sqrt(w.numel() * 2.0 ** 2 + b.numel() * 1.0 ** 2) / 2  # bias summed 1 step of 2
    assert ctl.history[-1]["norms"][2] == pytest.approx(expect, rel=1e-6)
    assert not any(ctl.stats._buffers[2].tolist())  # zeroed for the next interval, idle one included


def test_manual_mode_with_grad_scaler_skips_overflow_steps():
    model, opt, ctl_unused = blocknet_ctl(NeverFreeze())
    ctl_unused.detach()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    ctl = FreezeController(model, opt, GradientNormTest(interval_steps=5), blocks=model.blocks,
                           embeddings=[model.embed], options=ControllerOptions(attach=False, grad_scaler=scaler))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for bad in (False, True, False):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) * (float("inf") if bad else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctl.step()
    assert ctl.global_step == 2


@pytest.mark.skipif(not af.backend_info()["compiled"], reason="compares the compiled kernel with the reference")
def test_compiled_and_reference_backends_take_the_same_decisions(monkeypatch):
    from autofreeze_ext.freezing import stats as stats_mod
    from autofreeze_ext.ops.grad_stats import reference_grad_stats

    calls = []

    def reference(accs, grads=None, block_ids=None, num_blocks=None, *, norm="l2", compute_norms=True,
                  zero_after=False):
        calls.append(1)
        return reference_grad_stats(list(accs), list(grads or []), list(block_ids), num_blocks, norm, compute_norms,
                                    zero_after)

    def run():
        model = tiny_bert(num_layers=4)
        batch = bert_batch(16)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ctl = FreezeController(model, opt, GradientNormTest(percentile=50, intervals_per_epoch=4), steps_per_epoch=8)
        torch.manual_seed(0)
        for _ in range(32):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        return [e for e in ctl.history if e["event"] == "interval"]

    compiled = run()
    monkeypatch.setattr(stats_mod, "grad_stats", reference)
    ref = run()
    assert len(calls) >= 32  # the reference really ran
    assert [e["decided"] for e in ref] == [e["decided"] for e in compiled] and compiled[-1]["decided"] >= 1
    for a, b in zip(compiled, ref):
        got = [v for v in a["norms"] if v is not None]
        want = [v for v in b["norms"] if v is not None]
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_soft_freeze_fades_the_update_then_freezes():
    """anneal_steps=4: the decision at step 2 scales block 0's updates by 3/4, 1/2, 1/4, 0 on
    steps 3-6, then freezes it; plain SGD makes the scaled update exactly checkable."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    m_soft, opt_soft, ctl = blocknet_ctl(ScheduledFreeze([(2, 1)]), opt_cls=torch.optim.SGD, anneal_steps=4)
    m_hard = copy.deepcopy(m_soft)
    opt_hard = torch.optim.SGD(m_hard.parameters(), lr=1e-2)
    for _ in range(2):
        train_step(m_soft, opt_soft, x, y)
        train_step(m_hard, opt_hard, x, y)
    assert ctl.frozen_depth == 0 and ctl.soft.active
    assert [h["event"] for h in ctl.history if h["event"] != "interval"] == ["anneal"]
    blk_soft, blk_hard = m_soft.blocks[0][0].weight, m_hard.blocks[0][0].weight
    before = blk_soft.detach().clone()
    train_step(m_soft, opt_soft, x, y)
    train_step(m_hard, opt_hard, x, y)  # same weights, same batch: the same raw update
    torch.testing.assert_close(blk_soft - before, 0.75 * (blk_hard - before))
    for _ in range(2):
        train_step(m_soft, opt_soft, x, y)
    assert ctl.frozen_depth == 0
    w5 = blk_soft.detach().clone()
    train_step(m_soft, opt_soft, x, y)  # step 6: scale 0, then frozen
    assert torch.equal(blk_soft, w5) and ctl.frozen_depth == 1
    freeze = [h for h in ctl.history if h["event"] == "freeze"]
    assert freeze[0]["step"] == 6 and freeze[0]["reason"] == "annealed over 4 steps"
    state = ctl.state_dict()
    assert state["soft"] == {"target": None, "done": 4}


def test_soft_freeze_needs_the_optimizer_hook():
    with pytest.raises(ValueError, match="attach=True"):
        blocknet_ctl(ScheduledFreeze([(2, 1)]), attach=False, anneal_steps=3)


def test_default_policy_in_a_plain_loop_freezes_at_the_validation_plateau():
    """README's plain-loop recipe for the default policy: PlateauFreeze with the run's length, a
    probe batch (its learning guard) and held-out rows; once the slice has not improved for two
    checks (one epoch), all blocks but the top one freeze at once, and not before."""
    from autofreeze_ext import make_policy
    from autofreeze_ext.policies import PlateauFreeze
    from autofreeze_ext.signals import make_signals

    torch.manual_seed(0)
    model = tiny_bert(num_layers=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(1, 100, (96, 12))
    rows = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] > 50).long()}
    train = {k: v[:64] for k, v in rows.items()}
    val = {k: v[64:] for k, v in rows.items()}  # held out: never trained on
    loader = [{k: v[i:i + 8] for k, v in train.items()} for i in range(0, 64, 8)]
    policy = make_policy("autofreeze", total_steps=10 * len(loader))
    assert isinstance(policy, PlateauFreeze)
    ctl = FreezeController(model, opt, policy, steps_per_epoch=len(loader),
                           signals=make_signals(policy.signals, {k: v[:32] for k, v in train.items()}, val=val))
    for _ in range(10):
        for batch in loader:
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    checks = [h for h in ctl.history if h["event"] == "interval"]
    freezes = [(h["step"], h["to"]) for h in ctl.history if h["event"] == "freeze"]
    assert len(freezes) == 1 and freezes[0][1] == 3 and ctl.frozen_depth == 3, freezes
    at = next(i for i, h in enumerate(checks) if h["step"] == freezes[0][0])
    assert at >= 3 and [h["decided"] for h in checks[:at]] == [0] * at  # nothing before the plateau
    seen = [h["signals"]["val_slice"] for h in checks[:at + 1]]
    for v in seen[-2:]:  # the freeze's two checks: no better score, no lower loss than before them
        assert v["score"] <= max(s["score"] for s in seen[:-2]) and v["loss"] >= min(s["loss"] for s in seen[:-2])
    assert policy.frozen_at == freezes[0][0] < 80
    assert all(h["signals"]["val_slice"] is None for h in checks[at + 1:])  # no checks after the freeze
