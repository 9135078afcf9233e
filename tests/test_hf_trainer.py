"""AutoFreezeTrainer: a Trainer whose training forward reads the frozen prefix from the cache."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from autofreeze_ext.hf_trainer import INDEX, AutoFreezeTrainer, IndexedRows  # noqa: E402

from models import tiny_bert  # noqa: E402
from test_hf_callback import DS  # noqa: E402

pytestmark = pytest.mark.reference


def train(tmp_path, cache, accum=1, epochs=4, cache_dir=None):
    torch.manual_seed(0)
    model = tiny_bert(num_layers=4)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"out{cache}{accum}"), per_device_train_batch_size=8, num_train_epochs=epochs,
        gradient_accumulation_steps=accum, learning_rate=1e-3, save_strategy="no", logging_steps=1, report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True)
    trainer = AutoFreezeTrainer(model=model, args=args, train_dataset=DS(), cache=cache, cache_dir=cache_dir,
                                cost_model=False)  # the default policy: the paper's gradient test
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, losses


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
