"""Issue 27: the plateau policy, its validation slice (held out of the training rows) and the
built-in early stop, from the policy's rules up to the CLI."""
import json
import math

import pytest
import torch

from autofreeze_ext.policies import Guards, IntervalStats, PlateauFreeze, make_policy, reads_val_slice
from autofreeze_ext.tasks import DataError, LabelSpace, Task
from autofreeze_ext.tasks.split import hold_out, slice_size
from test_cli import run, write_tsv

pytestmark = pytest.mark.reference

N = 6


def check(step, score, loss, frozen=0, probe_loss=0.5):
    return IntervalStats(step=step, epoch=math.nan, frozen_depth=frozen, num_blocks=N, max_depth=N, interval_steps=10,
                         signals={"val_slice": {"score": score, "loss": loss}, "probe_loss": probe_loss})


def drive(policy, values, probe_loss=0.5):
    """Feed ``(score, loss)`` checks 10 steps apart; the depth after each (the controller applies it)."""
    depth, out = 0, []
    for k, (s, l) in enumerate(values):
        depth = max(depth, policy.decide(check(10 * (k + 1), s, l, depth, probe_loss)))
        out.append(depth)
    return out


def test_improving_score_or_loss_never_freezes():
    rising = [(0.5 + 0.01 * k, 1.0) for k in range(12)]
    assert drive(PlateauFreeze(), rising) == [0] * 12
    flat_score_falling_loss = [(0.8, 1.0 - 0.01 * k) for k in range(12)]
    assert drive(PlateauFreeze(), flat_score_falling_loss) == [0] * 12


def test_plateau_freezes_all_but_the_top_block_after_patience_checks():
    vals = [(0.6, 0.9), (0.7, 0.8), (0.75, 0.7), (0.74, 0.72), (0.75, 0.71), (0.73, 0.8)]
    assert drive(PlateauFreeze(patience=2), vals) == [0, 0, 0, 0, N - 1, N - 1]
    assert drive(PlateauFreeze(patience=3), vals) == [0, 0, 0, 0, 0, N - 1]
    keep2 = PlateauFreeze(patience=2, guards=Guards(keep_last=2))
    assert drive(keep2, vals)[-1] == N - 2
    # a gain smaller than min_improvement does not count (the loss does not fall either)
    small = [(0.7, 0.5), (0.701, 0.6), (0.702, 0.6)]
    assert drive(PlateauFreeze(patience=2, min_improvement=0.005), small) == [0, 0, N - 1]
    assert drive(PlateauFreeze(patience=2), small) == [0, 0, 0]


def test_learning_guard_holds_a_plateau_of_a_model_that_has_not_learned():
    flat = [(0.5, 0.69)] * 6
    assert drive(PlateauFreeze(), flat, probe_loss=1.0) == [0] * 6
    assert drive(PlateauFreeze(guards=Guards(learned=None)), flat, probe_loss=1.0)[-1] == N - 1


def test_stop_when_converged_after_a_second_plateau_and_slice_skipped_otherwise():
    vals = [(0.7, 0.5), (0.7, 0.6), (0.7, 0.6)]  # plateau: freeze at the third check
    p = PlateauFreeze(patience=2, stop_when_converged=True)
    assert drive(p, vals) == [0, 0, N - 1] and p.frozen_at == 30 and not p.should_stop()
    assert "val_slice" in p.signals_needed()  # measured on, to stop
    depth = N - 1
    for k, (s, l) in enumerate([(0.72, 0.55), (0.71, 0.6), (0.72, 0.56)]):  # a new baseline, then two without gain
        p.decide(check(40 + 10 * k, s, l, depth))
        assert p.should_stop() == (k == 2)
    q = PlateauFreeze(patience=2)
    drive(q, vals)
    assert "val_slice" not in q.signals_needed() and not q.should_stop()  # no cost after the freeze


def test_freeze_by_freezes_at_the_deadline_while_still_improving():
    p = PlateauFreeze(freeze_by=0.5, total_steps=100)
    assert drive(p, [(0.5 + 0.01 * k, 1.0) for k in range(8)]) == [0, 0, 0, 0, N - 1, N - 1, N - 1, N - 1]
    with pytest.raises(ValueError, match="freeze_by"):
        PlateauFreeze(freeze_by=0.5)
    with pytest.raises(ValueError, match="patience"):
        PlateauFreeze(patience=0)


def test_state_round_trip_gives_the_same_decisions():
    vals = [(0.6, 0.9), (0.7, 0.8), (0.69, 0.85), (0.7, 0.81), (0.65, 0.9), (0.7, 0.9)]
    a = PlateauFreeze(patience=3, stop_when_converged=True)
    whole = drive(a, vals)
    b = PlateauFreeze(patience=3, stop_when_converged=True)
    first = drive(b, vals[:3])
    c = PlateauFreeze(patience=3, stop_when_converged=True)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    depth, rest = first[-1], []
    for k, (s, l) in enumerate(vals[3:]):
        depth = max(depth, c.decide(check(10 * (k + 4), s, l, depth)))
        rest.append(depth)
    assert first + rest == whole


def test_registry_names_and_what_reads_the_slice():
    assert isinstance(make_policy("plateau"), PlateauFreeze)
    assert make_policy("plateau-or-late", total_steps=100).freeze_by_step == 80
    assert reads_val_slice("plateau") and reads_val_slice("plateau-or-late") and not reads_val_slice("late")


def test_a_new_policy_that_reads_the_slice_is_known_by_its_signals(monkeypatch):
    """No list of names: registering a policy whose signals include val_slice is enough for the
    CLI and the Trainer integrations to hold out a slice for it."""
    from autofreeze_ext.policies import POLICIES, FreezePolicy

    class Mine(FreezePolicy):
        signals = ("val_slice",)

        def decide(self, stats):
            return 0

    monkeypatch.setitem(POLICIES, "mine", (lambda o: Mine(), "test policy"))
    assert reads_val_slice("mine")
    monkeypatch.setitem(POLICIES, "mine", (lambda o: make_policy("late", total_steps=10), "test policy"))
    assert not reads_val_slice("mine")


def _task(labels):
    return Task([f"row {i}" for i in range(len(labels))], labels, LabelSpace.infer(labels, lambda i: i, "auto"),
                "t.tsv")


def test_hold_out_is_stratified_disjoint_and_repeatable():
    labels = [0] * 900 + [1] * 100
    train, val = hold_out(_task(labels), 0.05, seed=3)
    assert len(val) == 50 and len(train) == 950
    assert sorted(val.labels) == [0] * 45 + [1] * 5  # each class keeps its share
    assert not set(val.texts) & set(train.texts)
    assert hold_out(_task(labels), 0.05, seed=3)[1].texts == val.texts
    assert hold_out(_task(labels), 0.05, seed=4)[1].texts != val.texts
    assert slice_size(100_000, 0.05) == 2000 and slice_size(10, 0.05) == 1
    reg = _task([0.5 * i for i in range(40)])
    tr, va = hold_out(reg, 0.1)
    assert len(va) == 4 and not set(va.texts) & set(tr.texts)


def test_val_slice_scores_as_the_dev_evaluation_does(tiny_ckpt):
    from autofreeze_ext.signals import ValSlice
    from autofreeze_ext.tasks import encode
    from autofreeze_ext.training.evaluate import evaluate_metrics
    from autofreeze_ext.training.model import load_model_and_tokenizer

    t = _task([i % 2 for i in range(37)])
    t.texts = [" ".join(["good", "bad", "movie", "fine"][: 1 + i % 4]) for i in range(37)]
    model, tok = load_model_and_tokenizer(tiny_ckpt, t.label_space)
    data = encode(t, tok, 16)
    v = ValSlice(data, "accuracy", batch_size=8).measure(model)
    assert v["score"] == pytest.approx(evaluate_metrics(model, data)["accuracy"])
    with torch.no_grad():
        model.eval()
        ref = torch.nn.functional.cross_entropy(model(**{k: x for k, x in data.items() if k != "labels"}).logits,
                                                data["labels"])
    assert v["loss"] == pytest.approx(float(ref), rel=1e-4)


def test_no_check_at_the_runs_last_step():
    """A freeze (or a stop) after the last update saves nothing: the slice is not checked there."""
    ends = lambda p: [s for s in range(1, 25) if p.is_interval_end(s, 6)]  # noqa: E731
    assert ends(PlateauFreeze(total_steps=24)) == [3, 6, 9, 12, 15, 18, 21]
    assert ends(PlateauFreeze()) == [3, 6, 9, 12, 15, 18, 21, 24]  # the run's length unknown: every check
    assert ends(PlateauFreeze(total_steps=24, checks_per_epoch=1)) == [6, 12, 18]


def test_cli_default_plateau_holds_out_the_slice_freezes_and_stops(tiny_ckpt, tmp_path, capsys, caplog):
    """The CLI's default policy (no --policy) is plateau: it holds 5% out, freezes at its plateau
    and, asked to, stops when the top block plateaus too."""
    train = write_tsv(tmp_path / "train.tsv", 200)
    dev = write_tsv(tmp_path / "dev.tsv", 24, seed=1)
    out, saved = tmp_path / "out", tmp_path / "model"
    # lr so small the slice never improves after its first check: a plateau at the third check
    rc, stdout, _ = run(["finetune", "--mode", "autofreeze+cache", "--stop-when-converged",
                         "--learned", "off", "--lr", "1e-12", "--model", tiny_ckpt, "--train", train, "--dev", dev,
                         "--epochs", "4", "--batch-size", "8", "--val-checks-per-epoch", "4", "--max-length", "16",
                         "--out", str(out), "--no-progress", "--no-plot", "--save-model", str(saved)], capsys)
    assert rc == 0
    r = json.load(open(out / "finetune_autofreeze_cache.json"))
    assert r["policy"].startswith("PlateauFreeze(no gain in 2 checks")
    assert r["val_samples"] == 10 and r["train_samples"] == 190 and r["steps_per_epoch"] == 24
    assert "the validation slice has only 10 rows" in caplog.text  # coarse steps: warned
    freeze = next(h for h in r["controller_history"] if h.get("event") == "freeze")
    assert freeze["step"] == 18 and freeze["to"] == 3  # checks at 6, 12, 18: the third one; top block trains
    assert r["stopped"] == "converged" and r["steps"] == 36  # a baseline at 24, no gain at 30 and 36
    assert r["evals"][-1]["step"] == 36  # scored where it stopped
    assert (saved / "config.json").exists()


def test_cli_validation_options_are_checked(tiny_ckpt, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", 40)
    dev = write_tsv(tmp_path / "dev.tsv", 24, seed=1)
    base = ["finetune", "--model", tiny_ckpt, "--train", train, "--dev", dev, "--out", str(tmp_path / "o"),
            "--no-progress", "--no-plot"]
    for extra, msg in ((["--val-fraction", "1.5"], "--val-fraction"),
                       (["--val-fraction", "0.1", "--val", dev], "pass one"),
                       (["--plateau-patience", "0"], "--plateau-patience")):
        rc, _, err = run(base + extra, capsys)
        assert rc == 2 and msg in err, err


@pytest.mark.parametrize("freeze_step,writes", [(8, False), (4, True)])
def test_the_cache_writes_only_rows_a_later_epoch_reads(tiny_ckpt, tmp_path, capsys, freeze_step, writes):
    """Two epochs of 6 steps: a freeze in the last epoch writes nothing (no pass reads it back);
    a freeze in the first writes the rows seen after it, and the last epoch reads them and writes
    none of the rows it recomputes. Losses equal the same freeze without the cache."""
    train = write_tsv(tmp_path / "train.tsv", 48)
    dev = write_tsv(tmp_path / "dev.tsv", 8, seed=1)
    reps = {}
    for cached in ("", "+cache"):
        out = tmp_path / f"o{cached}"
        mode = f"static:2@{freeze_step}{cached}"
        rc, _, _ = run(["finetune", "--mode", mode, "--model", tiny_ckpt, "--train", train, "--dev", dev,
                        "--epochs", "2", "--batch-size", "8", "--max-length", "16", "--no-cost-model",
                        "--out", str(out), "--no-progress", "--no-plot", "--evals-per-epoch", "1"], capsys)
        assert rc == 0
        reps[cached] = json.load(open(next(out.glob("finetune_*.json"))))
    c = reps["+cache"]["cache"]
    puts = c["counters"]["puts_ram"] + c["counters"]["puts_disk"]
    assert c["writes_skipped"] > 0
    if writes:
        assert puts == 8 * (6 - freeze_step) and c["counters"]["hits_ram"] == puts  # every written row read back
    else:
        assert puts == 0 and c["counters"]["hits_ram"] == 0
    assert reps["+cache"]["losses"] == pytest.approx(reps[""]["losses"], abs=1e-5)


def test_val_slice_of_a_regression_task_is_pearson_and_mse(tiny_ckpt):
    from autofreeze_ext.signals import ValSlice
    from autofreeze_ext.tasks import compute, encode
    from autofreeze_ext.training.model import load_model_and_tokenizer

    t = _task([0.25 * (i % 9) for i in range(30)])
    t.texts = [" ".join(["good", "bad", "movie", "fine", "nice"][: 1 + i % 5]) for i in range(30)]
    model, tok = load_model_and_tokenizer(tiny_ckpt, t.label_space)
    data = encode(t, tok, 16)
    sig = ValSlice(data, batch_size=7)
    assert sig.metric == "pearson" and sig.regression
    v = sig.measure(model)
    with torch.no_grad():
        model.eval()
        pred = model(**{k: x for k, x in data.items() if k != "labels"}).logits[:, 0]
    assert v["loss"] == pytest.approx(float(torch.nn.functional.mse_loss(pred, data["labels"].float())), rel=1e-4)
    assert v["score"] == pytest.approx(compute(pred.tolist(), data["labels"].tolist(), True)["pearson"], abs=1e-5)


def test_cli_bad_validation_files_are_refused(tiny_ckpt, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", 40)
    dev = write_tsv(tmp_path / "dev.tsv", 24, seed=1)
    other_labels = write_tsv(tmp_path / "val3.tsv", 12, seed=2, label_fn=lambda y: str(y + 5))
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tlabel\ngood movie\tbad movie\t1\nfine\tnice\t0\n")
    base = ["finetune", "--model", tiny_ckpt, "--train", train, "--dev", dev, "--out", str(tmp_path / "o"),
            "--no-progress", "--no-plot", "--policy", "plateau"]
    for val, msg in ((other_labels, "val3.tsv"), (str(pairs), "pairs")):
        rc, _, err = run(base + ["--val", val], capsys)
        assert rc == 2 and msg in err and "Traceback" not in err, err
    tiny = tmp_path / "two.tsv"
    tiny.write_text("sentence\tlabel\ngood movie\t1\nbad movie\t0\n")
    rc, _, err = run(["finetune", "--model", tiny_ckpt, "--train", str(tiny), "--dev", dev, "--out", str(tmp_path / "o"),
                      "--no-progress", "--no-plot", "--policy", "plateau"], capsys)
    assert rc == 2 and "too few to hold out" in err, err


def test_the_default_on_too_few_rows_for_a_slice_falls_back_to_late(tiny_ckpt, tmp_path, capsys, caplog):
    """Two training rows, one per class: no slice can be held out; the named policy is refused
    (above), the default falls back to late with a warning and trains on both rows."""
    tiny = tmp_path / "two.tsv"
    tiny.write_text("sentence\tlabel\ngood movie\t1\nbad movie\t0\n")
    dev = write_tsv(tmp_path / "dev.tsv", 8, seed=1)
    rc, _, err = run(["finetune", "--model", tiny_ckpt, "--train", str(tiny), "--dev", dev, "--out", str(tmp_path / "o"),
                      "--no-progress", "--no-plot", "--epochs", "1", "--max-length", "16"], capsys)
    assert rc == 0, err
    r = json.load(open(tmp_path / "o" / "finetune_autofreeze.json"))
    assert r["policy"].startswith("LateFreeze") and r["train_samples"] == 2 and r["val_samples"] is None
    assert "too few to hold out the default policy's validation slice" in caplog.text
    assert "using 'late' instead" in caplog.text


def test_callback_policy_reading_a_slice_needs_rows(tmp_path):
    pytest.importorskip("transformers")
    from autofreeze_ext.integrations import AutoFreezeCallback

    cb = AutoFreezeCallback("plateau")
    cb.policy = make_policy("plateau")
    with pytest.raises(ValueError, match="val_data="):
        cb._val(loader=None)


def test_review_findings_on_the_validation_slice(tiny_ckpt, tmp_path, capsys, caplog):
    """A fresh review's findings: --val naming the dev or training file; --keep-top that leaves
    nothing to freeze; a NaN option; plateau options under another policy; an unused slice."""
    train = write_tsv(tmp_path / "train.tsv", 40)
    dev = write_tsv(tmp_path / "dev.tsv", 24, seed=1)
    base = ["finetune", "--model", tiny_ckpt, "--train", train, "--dev", dev, "--out", str(tmp_path / "o"),
            "--no-progress", "--no-plot", "--max-length", "16", "--batch-size", "8", "--epochs", "1"]
    for extra, msg in ((["--policy", "plateau", "--val", dev], "is the --dev file"),
                       (["--policy", "plateau", "--val", train], "is the --train file"),
                       (["--policy", "plateau", "--keep-top", "4"], "--keep-top 4: the model has 4 blocks"),
                       (["--min-improvement", "nan"], "--min-improvement"),
                       (["--min-improvement", "inf"], "--min-improvement must be finite")):
        rc, _, err = run(base + extra, capsys)
        assert rc == 2 and msg in err and "Traceback" not in err, err
    caplog.clear()
    rc, _, err = run(base + ["--mode", "full", "--stop-when-converged", "--val-fraction", "0.2"], capsys)
    assert rc == 0 and "--stop-when-converged only applies to --policy plateau" in err
    assert "held out, but mode full does not read it" in caplog.text
    assert "has only" not in caplog.text  # a slice no policy reads is not warned about as too small
    copy = tmp_path / "dev_copy.tsv"
    copy.write_text(open(dev).read())
    caplog.clear()
    rc, _, err = run(base + ["--policy", "plateau", "--val", str(copy)], capsys)
    assert rc == 0 and f"--val {copy}: 24 of its 24 distinct rows are also in the --dev file" in caplog.text
    caplog.clear()
    rc, _, err = run(base + ["--policy", "plateau", "--val-fraction", "0.9"], capsys)
    assert rc == 0 and "--val-fraction 0.9 holds out more rows (36) than are left to train on (4)" in caplog.text


def test_hold_out_leaves_every_class_a_training_row():
    with pytest.raises(DataError, match="too few"):
        hold_out(_task([0, 1]), 0.5)  # either row held out would leave its class untrained
    train, val = hold_out(_task([0] * 30 + [1]), 0.2)
    assert 1 in train.labels and 1 not in val.labels and len(val) == 6


def test_compare_holds_out_the_same_rows_for_every_mode(tiny_ckpt, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", 40)
    dev = write_tsv(tmp_path / "dev.tsv", 8, seed=1)
    rc, _, err = run(["compare", "--modes", "full,autofreeze", "--model", tiny_ckpt,  # the default policy: plateau
                      "--train", train, "--dev", dev, "--out", str(tmp_path / "o"), "--no-progress", "--no-plot",
                      "--max-length", "16", "--batch-size", "8", "--epochs", "1"], capsys)
    assert rc == 0, err
    runs = json.load(open(tmp_path / "o" / "compare.json"))["runs"]
    assert [r["train_samples"] for r in runs] == [38, 38] and [r["val_samples"] for r in runs] == [2, 2]
    assert "every mode holds out the same 5% of the training rows" in err


def test_resuming_a_run_the_policy_stopped_trains_no_further(tiny_ckpt, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", 200)
    dev = write_tsv(tmp_path / "dev.tsv", 24, seed=1)
    args = ["finetune", "--mode", "autofreeze", "--policy", "plateau", "--stop-when-converged", "--learned", "off",
            "--lr", "1e-12", "--model", tiny_ckpt, "--train", train, "--dev", dev, "--epochs", "4", "--batch-size",
            "8", "--val-checks-per-epoch", "4", "--max-length", "16", "--no-progress", "--no-plot",
            "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "5"]
    rc, _, _ = run(args + ["--out", str(tmp_path / "a")], capsys)
    first = json.load(open(tmp_path / "a" / "finetune_autofreeze.json"))
    assert rc == 0 and first["stopped"] == "converged"
    rc, _, _ = run(args + ["--out", str(tmp_path / "b"), "--resume"], capsys)
    again = json.load(open(tmp_path / "b" / "finetune_autofreeze.json"))
    assert rc == 0 and again["steps"] == first["steps"] and again["stopped"] == "converged"


def test_warnings_for_runs_that_cannot_do_what_they_say(tiny_ckpt, tmp_path, capsys, caplog):
    """A static freeze scheduled past the run's end, and a regression dev set whose targets do not
    vary (Pearson undefined), are said out loud."""
    train = write_tsv(tmp_path / "train.tsv", 16)
    dev = write_tsv(tmp_path / "dev.tsv", 8, seed=1)
    base = ["finetune", "--model", tiny_ckpt, "--dev", dev, "--out", str(tmp_path / "o"), "--no-progress",
            "--no-plot", "--max-length", "16", "--batch-size", "8", "--epochs", "1"]
    rc, _, err = run(base + ["--train", train, "--mode", "static:2@100"], capsys)
    assert rc == 0 and "step 100 is at or past the run's 2 optimizer steps" in caplog.text
    reg_train, reg_dev = tmp_path / "rt.tsv", tmp_path / "rd.tsv"
    reg_train.write_text("sentence\tlabel\n" + "".join(f"good movie {i}\t{0.5 * (i % 4)}\n" for i in range(16)))
    reg_dev.write_text("sentence\tlabel\n" + "".join(f"bad movie {i}\t1.5\n" for i in range(4)))
    caplog.clear()
    rc, _, err = run(["finetune", "--model", tiny_ckpt, "--train", str(reg_train), "--dev", str(reg_dev), "--mode",
                      "full", "--out", str(tmp_path / "o2"), "--no-progress", "--no-plot", "--max-length", "16",
                      "--batch-size", "8", "--epochs", "1"], capsys)
    assert rc == 0 and "Pearson and Spearman are undefined" in caplog.text


def test_make_policy_gives_a_run_without_validation_rows_the_no_val_default(monkeypatch):
    from autofreeze_ext.policies import LateFreeze, PlateauFreeze, make_policy, registry

    assert registry.DEFAULT_POLICY == "plateau"
    assert isinstance(make_policy("autofreeze", 100), PlateauFreeze)  # a run that holds rows out (the CLI)
    assert isinstance(make_policy("autofreeze", 100, has_val_rows=False), LateFreeze)
    assert isinstance(make_policy("plateau", 100, has_val_rows=False), PlateauFreeze)  # named: never replaced
    monkeypatch.setattr(registry, "DEFAULT_POLICY", "late")
    assert registry.default_policy(has_val_rows=False) == "late"


def test_a_checkpoint_of_another_policy_is_refused_not_misread():
    """A controller state written under ``late`` (the default before ``plateau``) loaded into a
    plateau run: a ValueError that says what to pass, also for a state from before the policy's
    class was recorded; a state of the same policy without it still loads."""
    from autofreeze_ext import FreezeController
    from models import tiny_bert

    from autofreeze_ext.signals import make_signals

    rows = {"input_ids": torch.randint(1, 100, (8, 6)), "attention_mask": torch.ones(8, 6, dtype=torch.long),
            "labels": torch.tensor([0, 1] * 4)}

    def ctl(policy):
        model = tiny_bert(num_layers=4)
        return FreezeController(model, torch.optim.SGD(model.parameters(), lr=0.1), policy, steps_per_epoch=10,
                                signals=make_signals(policy.signals, rows, val=rows))

    late = ctl(make_policy("late", total_steps=100)).state_dict()
    for state in (late, {k: v for k, v in late.items() if k != "policy_class"}):
        with pytest.raises(ValueError, match="policy was .*PlateauFreeze: resume under the policy that wrote it"):
            ctl(make_policy("plateau")).load_state_dict(state)
    mine = ctl(make_policy("plateau")).state_dict()
    ctl(make_policy("plateau")).load_state_dict({k: v for k, v in mine.items() if k != "policy_class"})
    ctl(make_policy("plateau")).load_state_dict(mine)


def test_options_the_default_policy_ignores_are_named(capsys):
    """The other policies' options given to a plateau run: a warning names them; none when they
    are left at their defaults, or when the policy named reads them."""
    base = ["finetune", "--train", "/no/such.tsv", "--dev", "/no/such.tsv"]
    _, _, err = run(base + ["--intervals-per-epoch", "3", "--patience", "1"], capsys)
    assert "policy 'plateau' ignores --intervals-per-epoch, --patience" in err
    for quiet in (base, base + ["--policy", "late", "--patience", "1"]):
        _, _, err = run(quiet, capsys)
        assert "ignores" not in err, err


def test_a_plateau_runs_log_and_summary_say_what_the_slice_did():
    """A check's log line gives the slice's score and loss and the checks without a gain; a run
    that froze nothing says the slice was still improving and names its policy."""
    from autofreeze_ext.freezing.history import describe
    from autofreeze_ext.planning.estimate import estimate_lines

    def check(step, score, since):
        return {"event": "interval", "step": step, "decided": 0, "signal": "val_slice", "threshold": 2.0,
                "eta": {b: float(since) for b in range(4)}, "signals": {"val_slice": {"score": score, "loss": 0.5}}}
    history = [check(10, 0.7, 0), check(20, 0.69, 1), check(30, 0.8, 0)]
    assert describe(history[1]) == ("autofreeze: step 20 check: validation slice score 0.69 loss 0.5, 1 of 2 checks "
                                    "without a gain -> depth 0")
    report = {"mode": "autofreeze", "num_blocks": 4, "steps": 30, "steps_per_epoch": 15, "train_time_s": 10.0,
              "frozen_depth": [{"step": 0, "depth": 0}], "depth_seconds": {"0": [10.0, 30]},
              "controller_history": history, "policy": "PlateauFreeze(no gain in 2 checks)",
              "signal_seconds": {"val_slice": 0.5}}
    lines = estimate_lines(report)
    assert lines[0] == ("freezing: 0 of 4 blocks frozen (the validation slice was still improving: 0 check(s) "
                        "without a gain at its last check, a plateau takes 2; a run whose budget outlasts convergence "
                        "freezes); policy PlateauFreeze(no gain in 2 checks)")
    assert "mean over all steps: nothing froze, less the validation checks" in lines[1]
    assert "estimated speedup: 0.95x" in lines[2]
