"""AutoFreezeCallback on an unchanged Hugging Face Trainer with a tiny BERT."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from autofreeze_ext import GradientNormTest, ScheduledFreeze, StabilityPolicy  # noqa: E402
from autofreeze_ext.policies import LateFreeze  # noqa: E402
from autofreeze_ext.policies import PolicyOptions  # noqa: E402
from autofreeze_ext.integrations.hf_callback import STATE_FILE, AutoFreezeCallback  # noqa: E402

from models import TinyRows, tiny_bert  # noqa: E402

pytestmark = pytest.mark.reference  # also run on the pure-PyTorch backend (see conftest.py)


DS = TinyRows  # 48 rows of 12 ids (other test modules import it from here)


def make_trainer(tmp_path, model, cb, epochs=2, accum=2):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=epochs,
        gradient_accumulation_steps=accum, learning_rate=1e-3, save_strategy="steps", save_steps=3,
        logging_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb])


def test_callback_freezes_inside_trainer_and_resumes(tmp_path):
    model = tiny_bert(num_layers=4)
    cb = AutoFreezeCallback(ScheduledFreeze([(2, 1), (4, 2)]))
    trainer = make_trainer(tmp_path, model, cb)
    before = [p.detach().clone() for p in model.bert.encoder.layer[0].parameters()]
    trainer.train()
    ctl = cb.controller
    # 48 samples / (8 x 2 accumulation) = 3 updates per epoch, 6 in all: one controller step each
    assert ctl.global_step == 6 and ctl.frozen_depth == 2
    assert not any(p.requires_grad for p in model.bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in model.bert.encoder.layer[2].parameters())
    frozen = {id(p) for p in model.bert.encoder.layer[0].parameters()}
    owned = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not frozen & owned  # left the optimizer
    # block 0 froze after 2 updates: it changed during those, then never again
    after = list(model.bert.encoder.layer[0].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    ckpt = tmp_path / "out" / "checkpoint-3"
    assert (ckpt / STATE_FILE).exists()

    # resume from step 3 (1 frozen block then) in a fresh Trainer: depth and steps continue
    model2 = tiny_bert(num_layers=4)
    cb2 = AutoFreezeCallback(ScheduledFreeze([(2, 1), (4, 2)]))
    assert cb2.prepare_resume(model2, str(ckpt)) == 1
    trainer2 = make_trainer(tmp_path, model2, cb2)
    trainer2.train(resume_from_checkpoint=str(ckpt))
    assert cb2.controller.global_step == 6 and cb2.controller.frozen_depth == 2
    assert [h for h in cb2.controller.history if h["event"] == "freeze"] == \
        [h for h in ctl.history if h["event"] == "freeze"]


def _intervals(ctl):
    return [h for h in ctl.history if h["event"] == "interval"]


@pytest.mark.parametrize("accum", [1, 2])
def test_gradient_test_sees_gradients_and_freezes(tmp_path, accum):
    """The paper's gradient test inside Trainer: it reads the update's gradients (Trainer zeroes
    them before on_step_end), so the norms are real and blocks freeze."""
    model = tiny_bert(num_layers=4)
    cb = AutoFreezeCallback("gradient")  # GradientNormTest, 5 intervals per epoch
    trainer = make_trainer(tmp_path, model, cb, epochs=4, accum=accum)
    trainer.train()
    ctl = cb.controller
    assert isinstance(ctl.policy, GradientNormTest)
    updates = 4 * 48 // (8 * accum)
    assert ctl.global_step == updates == trainer.state.global_step
    ivs = _intervals(ctl)
    assert ivs, "no interval ended"
    for h in ivs:  # every active block's gradient norm is a real, non-zero number
        active = [v for v in h["norms"] if v is not None]
        assert active and all(v > 0 for v in active), h
    assert ctl.frozen_depth >= 1
    frozen = {id(p) for p in model.bert.encoder.layer[0].parameters()}
    assert not frozen & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


def test_without_val_data_the_default_falls_back_to_late_in_the_run(tmp_path):
    """No policy and no val_data: the default (``plateau``) has no slice, so the fallback
    (``late``) is built with the Trainer's total steps, waits for the model to learn (probe loss
    guard) and freezes 3 of 4 blocks at 80% of the run at once."""
    model = tiny_bert(num_layers=4)
    cb = AutoFreezeCallback()
    trainer = make_trainer(tmp_path, model, cb, epochs=10, accum=1)
    trainer.train()
    ctl = cb.controller
    assert isinstance(ctl.policy, LateFreeze) and ctl.policy.freeze_step == round(0.8 * 60)
    freezes = [h for h in ctl.history if h["event"] == "freeze"]
    assert ctl.policy.learned_at is not None and ctl.frozen_depth == 3, ctl.history[-3:]
    assert len(freezes) == 1 and freezes[0]["step"] >= 48


def test_val_data_reaches_the_collator_with_the_training_rows_columns_only(tmp_path):
    """val_data rows that still hold a text column (the Trainer drops it from a datasets.Dataset's
    training rows, not from val_data) are cut to the training rows' columns before the
    Trainer's collator, which, as DataCollatorWithPadding does, refuses text."""
    from autofreeze_ext.policies import PlateauFreeze

    class WithText(DS):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "sentence": f"row {i}"}

    def strict(rows):
        assert not any(isinstance(v, str) for r in rows for v in r.values()), "a text column reached the collator"
        return transformers.default_data_collator(rows)

    cb = AutoFreezeCallback(val_data=WithText(16))
    args = transformers.TrainingArguments(  # a datasets.Dataset's columns are cut in the dataset, not by a
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=1,  # collator wrapper
        remove_unused_columns=False, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=tiny_bert(num_layers=4), args=args, train_dataset=DS(), callbacks=[cb],
                                   data_collator=strict)
    trainer.train()
    assert isinstance(cb.controller.policy, PlateauFreeze)
    assert cb.controller.signals[0].data["input_ids"].shape == (16, 12)


def test_updates_skipped_by_grad_scaler_are_not_counted(tmp_path):
    """fp16 with a GradScaler: an update with an inf gradient is skipped by the scaler (the inner
    optimizer's step() is not called), so the controller does not count it. Accelerate has no
    CPU GradScaler, so the test gives the Trainer's accelerator torch's CPU one."""
    model = tiny_bert(num_layers=4)
    cb = AutoFreezeCallback(GradientNormTest(interval_steps=2))
    trainer = make_trainer(tmp_path, model, cb, epochs=2, accum=1)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    calls = {"n": 0}

    def poison(grad):  # the 4th backward pass gets an inf gradient: that update is skipped
        calls["n"] += 1
        return torch.full_like(grad, float("inf")) if calls["n"] == 4 else grad

    model.classifier.weight.register_hook(poison)
    trainer.train()
    assert trainer.state.global_step == 12  # Trainer counts the skipped update too
    assert cb.controller.global_step == 11
    assert all(all(v is None or v == v and v < float("inf") for v in h["norms"]) for h in _intervals(cb.controller))


def test_policy_by_name_reads_probe_signals_and_tells_its_story(tmp_path):
    """A policy named as a string is built at train begin with the Trainer's warm-up as its
    warm-up guard; its probe signals come from the first training samples through the Trainer's
    collator; each interval's history says the signal, the threshold and what held a freeze."""
    def run(learned):
        model = tiny_bert(num_layers=4)
        cb = AutoFreezeCallback("stability", options=PolicyOptions(threshold=0.5, patience=1, learned=learned),
                                probe_samples=16)
        trainer = make_trainer(tmp_path / str(learned), model, cb, epochs=4, accum=1)
        trainer.args.warmup_steps = 6
        trainer.train()
        return cb.controller

    ctl = run(learned=0.75)  # this tiny model does not beat the constant guess in 24 steps
    assert isinstance(ctl.policy, StabilityPolicy) and ctl.policy.guards.warmup_steps == 6
    ivs = _intervals(ctl)
    assert all(isinstance(h["signals"]["probe_loss"], float) for h in ivs)
    assert all(h["signals"]["probe_drift"][3] is not None for h in ivs[1:])
    tested = [h for h in ivs if h.get("signal") == "probe_drift"]
    assert len(tested) == len(ivs) - 1 and all(h["threshold"] == 0.5 for h in tested)
    assert all(h["held_by"].startswith("warm-up") for h in tested if h["step"] < 6)
    assert all(h["held_by"].startswith("not learning yet") for h in tested if h["step"] >= 6)
    assert ctl.frozen_depth == 0 and min(h["signals"]["probe_loss"] for h in ivs) > 0.75
    ctl = run(learned=None)  # without the learning guard it freezes right after the warm-up
    freezes = [h for h in ctl.history if h["event"] == "freeze"]
    assert freezes and freezes[0]["step"] == 6 and ctl.frozen_depth >= 2
    steps = [h["step"] for h in freezes]
    assert steps == sorted(set(steps))  # one block per interval


def test_unknown_policy_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        AutoFreezeCallback("nope")


def test_the_default_reads_a_validation_slice_and_falls_back_without_val_data(tmp_path, caplog):
    """The default (plateau) reads a validation slice; a callback given no val_data cannot hold
    rows out of the Trainer's dataloader: it gets NO_VAL_DEFAULT (late) and says so; given
    val_data it gets the default. A policy named explicitly is never replaced."""
    from autofreeze_ext.policies import PlateauFreeze

    cb = AutoFreezeCallback()
    with caplog.at_level("WARNING", logger="autofreeze_ext"):
        make_trainer(tmp_path / "a", tiny_bert(num_layers=4), cb, epochs=1, accum=1).train()
    assert isinstance(cb.controller.policy, LateFreeze) and "using 'late' instead" in caplog.text
    with_val = AutoFreezeCallback(val_data=DS(16))
    make_trainer(tmp_path / "b", tiny_bert(num_layers=4), with_val, epochs=1, accum=1).train()
    assert isinstance(with_val.controller.policy, PlateauFreeze)
    with pytest.raises(ValueError, match="val_data"):
        make_trainer(tmp_path / "c", tiny_bert(num_layers=4), AutoFreezeCallback("plateau"), epochs=1,
                     accum=1).train()


def test_steps_per_epoch_count_a_last_short_accumulation_as_the_trainer_does(tmp_path):
    """48 rows in batches of 8 are 6 batches; accumulating 4 the Trainer runs 2 updates an epoch
    (the last over 2 batches): the controller's epochs must tile the same updates."""
    model = tiny_bert(num_layers=4)
    cb = AutoFreezeCallback(LateFreeze(freeze_at=0.5, total_steps=4))
    trainer = make_trainer(tmp_path, model, cb, epochs=2, accum=4)
    trainer.train()
    assert trainer.state.global_step == cb.controller.global_step == 4
    assert cb.controller.steps_per_epoch == 2
