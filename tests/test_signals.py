"""Per-block signals: displacement over path, probe drift (CKA), probe loss; the controller's record."""
import math

import pytest
import torch

from autofreeze_ext import FreezeController
from autofreeze_ext.policies import ObserveOnly
from autofreeze_ext.signals import ParameterDisplacement, ProbeDrift, ProbeLoss, linear_cka, prior_loss

from models import bert_batch, tiny_bert

pytestmark = pytest.mark.reference  # also run on the pure-PyTorch backend (see conftest.py)


class _Ctl:  # the two attributes ParameterDisplacement reads
    def __init__(self, params):
        self._block_params = [[p] for p in params]
        self.frozen_depth = 0


def test_displacement_is_one_on_a_straight_path_and_small_when_updates_cancel():
    w = [torch.zeros(10), torch.zeros(10)]
    sig = ParameterDisplacement(every=1)
    sig.bind(_Ctl(w))
    for step in range(1, 21):
        w[0] += 0.1                                 # steady drift
        w[1] += 0.1 if step % 2 else -0.1           # oscillation around a point
        sig.after_step(step)
    straight, cancel = sig.interval_end([0, 1])
    assert straight == pytest.approx(1.0, abs=1e-5)
    assert cancel < 0.01
    sig.release(1)
    w[0] += 1.0
    sig.after_step(1)
    assert sig.interval_end([0]) == [pytest.approx(1.0, abs=1e-5), None]


def test_linear_cka_is_invariant_to_rotation_and_scale_and_drops_for_unrelated_outputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.3


def test_prior_loss_is_the_best_constant_guess():
    assert prior_loss(torch.tensor([0, 1, 0, 1])) == pytest.approx(math.log(2))
    assert prior_loss(torch.tensor([2, 2, 2, 2])) == pytest.approx(0.0)
    assert prior_loss(torch.tensor([1.0, 3.0])) == pytest.approx(1.0)  # variance, regression


def _train(model, opt, batch, steps):
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


def test_controller_records_every_signal_and_probe_loss_falls_as_the_model_learns():
    model = tiny_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = bert_batch(n=16)
    drift, loss = ProbeDrift(batch), ProbeLoss(batch)
    ctl = FreezeController(model, opt, ObserveOnly(interval_steps=5),
                           signals=[ParameterDisplacement(every=2), drift, loss])
    start = loss.loss() / loss.prior
    _train(model, opt, batch, 40)
    rec = [e for e in ctl.history if e["event"] == "interval"]
    assert len(rec) == 8 and ctl.frozen_depth == 0
    first, last = rec[0]["signals"], rec[-1]["signals"]
    assert set(first) == {"displacement", "probe_drift", "probe_loss"}
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in first["displacement"])
    assert first["probe_drift"] == [None] * 4 and all(v > 0 for v in rec[1]["signals"]["probe_drift"])
    assert 0.8 < start < 1.3                        # near the constant guess before training ...
    assert last["probe_loss"] < 0.5 * start < first["probe_loss"]  # ... well below it once it fits
    assert model.training                           # the probe's eval mode is undone
    assert all(sig.seconds > 0 for sig in ctl.signals)


def test_probe_forward_leaves_training_unchanged():
    def run(signals):
        model = tiny_bert()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = bert_batch(n=8)
        FreezeController(model, opt, ObserveOnly(interval_steps=3), signals=signals)
        torch.manual_seed(1)
        _train(model, opt, batch, 9)
        return [p.detach().clone() for p in model.parameters()]

    batch = bert_batch(n=8, seed=3)
    for a, b in zip(run([]), run([ProbeDrift(batch), ProbeLoss(batch)])):
        assert torch.equal(a, b)


def test_policy_reading_a_missing_signal_is_a_clear_error():
    class NeedsDrift(ObserveOnly):
        signals = ("probe_drift",)

    model = tiny_bert()
    with pytest.raises(ValueError, match="probe_drift"):
        FreezeController(model, torch.optim.SGD(model.parameters(), lr=0.1), NeedsDrift(interval_steps=2))


def test_probe_loss_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        ProbeLoss({"input_ids": torch.zeros(2, 3, dtype=torch.long)})


def test_probe_signals_from_make_signals_share_one_forward_per_interval():
    from autofreeze_ext.signals import make_signals

    def run(signals):
        model = tiny_bert()
        calls = []
        model.register_forward_hook(lambda *a: calls.append(1))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        batch = bert_batch(n=16)
        ctl = FreezeController(model, opt, ObserveOnly(interval_steps=5), signals=signals(batch))
        torch.manual_seed(1)
        _train(model, opt, batch, 20)
        return [e["signals"] for e in ctl.history if e["event"] == "interval"], len(calls) - 20

    shared, n_shared = run(lambda b: make_signals(["probe_drift", "probe_loss"], b))
    apart, n_apart = run(lambda b: [ProbeDrift(b), ProbeLoss(b)])
    assert n_shared == 4 and n_apart == 8  # 4 intervals: one probe forward each instead of two
    assert shared == apart  # the same values either way
    with pytest.raises(ValueError, match="needs a probe batch"):
        make_signals(["probe_drift"])
    with pytest.raises(ValueError, match="unknown signal"):
        make_signals(["nope"], bert_batch(n=2))


def test_block_drift_measures_a_blocks_own_change_not_its_inputs():
    """Only block 0's weights change: its output and every later block's output move
    (probe_drift sees all of them), but blocks 1-3 compute the same function of their input,
    so block_drift is 0 for them: freezing the blocks below cannot make a block look stable."""
    from autofreeze_ext.signals import BlockDrift, ProbeForward

    model = tiny_bert()
    ctl = FreezeController(model, torch.optim.SGD(model.parameters(), lr=0.1), ObserveOnly(interval_steps=1000))
    fwd = ProbeForward(bert_batch(n=16))
    own, drift = BlockDrift(fwd), ProbeDrift(fwd)
    own.bind(ctl)
    drift.bind(ctl)
    active = [0, 1, 2, 3]
    assert own.interval_end(active) == [None] * 4 and drift.interval_end(active) == [None] * 4
    with torch.no_grad():
        for p in model.bert.encoder.layer[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctl.global_step += 1  # the next interval end (the shared forward is cached per step)
    o, d = own.interval_end(active), drift.interval_end(active)
    assert o[0] > 1e-4 and all(abs(v) < 1e-9 for v in o[1:]), o
    assert all(v > 1e-4 for v in d), d  # the cascade probe_drift cannot tell from a change
    own.release(0)
    assert 0 not in own._then


def test_block_drift_lookahead_measures_only_the_lowest_active_blocks():
    from autofreeze_ext.signals import BlockDrift

    model = tiny_bert()
    ctl = FreezeController(model, torch.optim.SGD(model.parameters(), lr=0.1), ObserveOnly(interval_steps=1000))
    sig = BlockDrift(bert_batch(n=8), lookahead=2)
    sig.bind(ctl)
    sig.interval_end([1, 2, 3])
    assert sorted(sig._then) == [1, 2]  # copies only of what a decision can reach
    ctl.global_step += 1
    v = sig.interval_end([1, 2, 3])
    assert v[0] is None and v[3] is None and v[1] is not None and v[2] is not None
    with pytest.raises(ValueError, match="lookahead"):
        BlockDrift(bert_batch(n=2), lookahead=0)


def test_probe_loss_stops_once_the_learning_guard_passed_and_decisions_stay_the_same():
    """The learning guard latches: after it passed, the probe forward is skipped (its cost too),
    and every decision is the one taken when the probe keeps running."""
    from autofreeze_ext.policies import GuardedGradientTest, Guards

    def run(skip):
        model = tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        batch = bert_batch(n=16)
        policy = GuardedGradientTest(guards=Guards(patience=1, learned=0.3, max_new_blocks=1), interval_steps=5)
        if not skip:
            policy.signals_needed = lambda: policy.signals
        probe = ProbeLoss(batch)
        calls = []
        measure = probe.loss
        probe.loss = lambda: calls.append(1) or measure()
        ctl = FreezeController(model, opt, policy, signals=[probe])
        _train(model, opt, batch, 60)
        rec = [e for e in ctl.history if e["event"] == "interval"]
        return policy.learned_at, [(e["step"], e["decided"]) for e in rec], [e["signals"]["probe_loss"] for e in rec], \
            len(calls), ctl.frozen_depth

    learned, decisions, losses, calls, depth = run(skip=True)
    learned_b, decisions_b, losses_b, calls_b, depth_b = run(skip=False)
    assert learned is not None and learned == learned_b and 5 < learned < 60  # passed mid-run
    assert decisions == decisions_b and depth == depth_b and depth > 0
    k = learned // 5  # intervals up to and including the one that passed
    assert all(isinstance(v, float) for v in losses[:k]) and losses[k:] == [None] * (len(losses) - k)
    assert calls == k < calls_b == len(losses_b)


def test_probe_signals_see_the_same_tokens_whatever_the_padding():
    """The probe batch padded to 64 or cut to its longest row: the same real tokens reach the
    drift signals and the same loss the learning guard (padding is masked and dropped)."""
    from autofreeze_ext.batching import trim_batch
    from autofreeze_ext.signals.probe import ProbeForward

    from models import tiny_bert

    model = tiny_bert(num_layers=2)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 20, (6,), generator=g)
    mask = (torch.arange(30)[None] < lengths[:, None]).long()
    probe = {"input_ids": torch.randint(1, 100, (6, 30), generator=g) * mask, "attention_mask": mask,
             "labels": torch.tensor([0, 1, 0, 1, 1, 0])}
    ctl = type("C", (), {"model": model, "global_step": 0,
                         "layout": __import__("autofreeze_ext").freezing.adapters.resolve_layout(model)})()
    wide, wide_loss = ProbeForward(probe).run(ctl, [0, 1])
    cut, cut_loss = ProbeForward(trim_batch(probe)).run(ctl, [0, 1])
    assert trim_batch(probe)["input_ids"].shape[1] == int(lengths.max()) < 30
    for b in (0, 1):
        assert wide[b].shape == cut[b].shape == (int(lengths.sum()), 32)
        torch.testing.assert_close(wide[b], cut[b], rtol=1e-5, atol=1e-6)
    assert wide_loss == pytest.approx(cut_loss, rel=1e-6)


def test_the_signals_time_is_kept_across_a_resume():
    """A resumed run reports its signals' time over the whole run: the seconds travel in the
    controller's state (a resumed sweep run reported only its last segment's)."""
    def make():
        model = tiny_bert()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        probe = ProbeLoss(bert_batch(n=8))
        return model, opt, FreezeController(model, opt, ObserveOnly(interval_steps=2), signals=[probe])

    model, opt, ctl = make()
    _train(model, opt, bert_batch(n=8), 4)
    spent = ctl.signals[0].seconds
    assert spent > 0
    _, _, resumed = make()
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.signals[0].seconds == spent
