"""AutoFreezeTrainer: a Trainer whose training forward reads the frozen prefix from the cache."""
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from autofreeze_ext.hf_trainer import INDEX, AutoFreezeTrainer, IndexedRows  # noqa: E402

from models import tiny_bert  # noqa: E402
from test_hf_callback import DS  # noqa: E402

pytestmark = pytest.mark.reference


def make(out, cache=True, accum=1, epochs=4, cache_dir=None, save_steps=None, cache_memory="2GiB"):
    torch.manual_seed(0)
    model = tiny_bert(num_layers=4)
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=epochs,
        gradient_accumulation_steps=accum, learning_rate=1e-3, logging_steps=1, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        use_cpu=True, seed=0, disable_tqdm=True)
    return AutoFreezeTrainer(model=model, args=args, train_dataset=DS(), cache=cache, cache_dir=cache_dir,
                             cache_memory=cache_memory, cost_model=False)  # the default policy: the paper's gradient test


def losses_of(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def freezes(trainer):
    return [(h["step"], h["to"]) for h in trainer.autofreeze.controller.history if h["event"] == "freeze"]


def train(tmp_path, cache, accum=1, epochs=4, cache_dir=None):
    trainer = make(tmp_path / f"out{cache}{accum}", cache, accum, epochs, cache_dir)
    trainer.train()
    return trainer, list(losses_of(trainer).values())


@pytest.mark.parametrize("accum", [1, 2])
def test_cached_training_matches_uncached_and_reads_the_cache(tmp_path, accum):
    epochs = 4 * accum  # the same number of updates: freezing comes early enough for later epochs to hit
    plain, plain_losses = train(tmp_path, cache=False, accum=accum, epochs=epochs)
    cached, cached_losses = train(tmp_path, cache=True, accum=accum, epochs=epochs, cache_dir=str(tmp_path / "cache"))
    ctl = cached.autofreeze.controller
    assert ctl.frozen_depth >= 1
    freezes = [(h["step"], h["to"]) for h in ctl.history if h["event"] == "freeze"]
    assert freezes and freezes == [(h["step"], h["to"]) for h in plain.autofreeze.controller.history
                                   if h["event"] == "freeze"]
    # frozen blocks run in eval mode, so their cached outputs equal recomputed ones: same losses
    assert cached_losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-5)
    counters = cached.cache_counters
    assert counters["hits_ram"] + counters["hits_disk"] > 0, counters
    assert counters["puts_ram"] + counters["puts_disk"] > 0, counters


def test_rows_keep_their_index_and_eval_runs_the_whole_model(tmp_path):
    rows = IndexedRows(DS(8))
    assert rows[5][INDEX] == 5 and set(rows[5]) == {"input_ids", "attention_mask", "labels", INDEX}
    trainer, _ = train(tmp_path, cache=True, epochs=1)
    metrics = trainer.evaluate(DS(16))  # no index column: the plain forward, nothing cached
    assert "eval_loss" in metrics


def test_resume_from_checkpoint_continues_the_uninterrupted_run(tmp_path):
    """A fresh trainer resumed from a checkpoint taken after the first freeze (``True``: the
    newest in output_dir) re-freezes the prefix by itself and continues with the same losses,
    the same decisions and the same final weights; its cache refills on disk."""
    whole = make(tmp_path / "whole", epochs=6, cache_dir=str(tmp_path / "c1"), save_steps=3)
    whole.train()
    first = freezes(whole)[0][0]
    step = 3 * (first // 3 + 1)  # the first checkpoint with a frozen block
    assert step < whole.state.global_step, (freezes(whole), whole.state.global_step)
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(tmp_path / "whole" / f"checkpoint-{step}", out / f"checkpoint-{step}")
    resumed = make(out, epochs=6, cache_dir=str(tmp_path / "c2"), save_steps=3, cache_memory=0)  # disk tier only
    resumed.train(resume_from_checkpoint=True)
    assert freezes(resumed) == freezes(whole)
    want = losses_of(whole)
    got = {s: v for s, v in losses_of(resumed).items() if s > step}  # the history before is the checkpoint's
    assert sorted(got) == [s for s in sorted(want) if s > step]
    assert [got[s] for s in sorted(got)] == pytest.approx([want[s] for s in sorted(got)], rel=1e-4, abs=1e-5)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    counters = resumed.cache_counters
    assert counters["puts_disk"] > 0 and counters["hits_disk"] > 0, counters


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint-"):
        make(tmp_path / "empty", epochs=1).train(resume_from_checkpoint=True)
