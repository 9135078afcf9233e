"""AutoFreezeTrainer: a Trainer whose training forward reads the frozen prefix from the cache."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from autofreeze_ext.integrations.hf_ddp import RankStableSampler, SamplerEpoch  # noqa: E402
from autofreeze_ext.integrations.hf_trainer import INDEX, AutoFreezeTrainer, IndexedRows  # noqa: E402

from autofreeze_ext.tasks import encode, load_task  # noqa: E402

from models import save_tiny_checkpoint, tiny_bert  # noqa: E402
from test_cli import run, write_tsv  # noqa: E402
from test_hf_callback import DS  # noqa: E402

pytestmark = pytest.mark.reference


def make(out, cache=True, accum=1, epochs=4, cache_dir=None, save_steps=None, cache_memory="2GiB", dataset=None,
         collator=None, **extra):
    torch.manual_seed(0)
    model = tiny_bert(num_layers=4)
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=epochs,
        gradient_accumulation_steps=accum, learning_rate=1e-3, logging_steps=1, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        use_cpu=True, seed=0, disable_tqdm=True, **extra)
    return AutoFreezeTrainer(model=model, args=args, train_dataset=dataset if dataset is not None else DS(),
                             data_collator=collator, cache=cache, cache_dir=cache_dir, cache_memory=cache_memory,
                             cost_model=False, policy="gradient")  # freezes on these 48 rows


def losses_of(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def freezes(trainer):
    return [(h["step"], h["to"]) for h in trainer.autofreeze.controller.history if h["event"] == "freeze"]


def train(tmp_path, cache, accum=1, epochs=4, cache_dir=None):
    trainer = make(tmp_path / f"out{cache}{accum}", cache, accum, epochs, cache_dir)
    trainer.train()
    return trainer, list(losses_of(trainer).values())


def cli_reference_run(tmp_path, capsys, *extra):
    """The CLI's ``autofreeze+cache`` run with the paper's test on 16 rows of a tiny BERT without
    dropout, one batch of the whole set for 9 epochs: (checkpoint folder, training file, report)."""
    (tmp_path / "ckpt").mkdir()
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    train_tsv, dev_tsv = write_tsv(tmp_path / "train.tsv", 16), write_tsv(tmp_path / "dev.tsv", 8, seed=1)
    rc, stdout, _ = run(["finetune", "--mode", "autofreeze+cache", "--policy", "gradient", "--model", ckpt,
                         "--train", train_tsv, "--dev", dev_tsv, "--epochs", "9", "--batch-size", "16",
                         "--max-length", "12", "--lr", "1e-3", "--seed", "0", "--evals-per-epoch", "1",
                         "--out", str(tmp_path / "cli"), "--no-progress", "--no-plot", *extra], capsys)
    assert rc == 0, stdout
    return ckpt, train_tsv, json.loads((tmp_path / "cli" / "finetune_autofreeze_cache.json").read_text())


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
    # the counts span both processes: every lookup of the uninterrupted run is counted once,
    # those before the checkpoint (kept in it) among them
    kept = json.loads((out / f"checkpoint-{step}" / "autofreeze_cache_counts_rank0.json").read_text())
    assert lookups(kept) > 0 and lookups(counters) == lookups(whole.cache_counters), (kept, counters)
    assert counters["hit_rate"] == pytest.approx((counters["hits_ram"] + counters["hits_disk"]) / lookups(counters))
    resumed._close_cache()  # closing again (a later train() that runs no step) counts nothing twice
    assert resumed.cache_counters == counters and resumed.cache is None


def lookups(counters):
    return counters["hits_ram"] + counters["hits_disk"] + counters["misses"]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint-"):
        make(tmp_path / "empty", epochs=1).train(resume_from_checkpoint=True)


def test_losses_match_the_cli_autofreeze_cache_run(tmp_path, capsys):
    """The same data, seed, optimizer and schedule through the CLI's ``autofreeze+cache`` and
    through AutoFreezeTrainer (the paper's test in both): the same decisions, and losses
    equal within 1e-4 (summation order; one batch holds the whole training set, so the two
    samplers' orders do not matter, and dropout is off)."""
    ckpt, train_tsv, rep = cli_reference_run(tmp_path, capsys)

    enc = encode(load_task(train_tsv), transformers.AutoTokenizer.from_pretrained(ckpt), 12)
    rows = [{k: v[i] for k, v in enc.items()} for i in range(16)]
    # the CLI's optimizer and schedule: AdamW, decay 0.01, linear with 10% warm-up (0 of 9 steps; a
    # warm-up step at LR 0 would leave two equal gradients for the test to split by rounding noise)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16, num_train_epochs=9, learning_rate=1e-3,
        weight_decay=0.01, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=0.0, optim="adamw_torch",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(ckpt)
    trainer = AutoFreezeTrainer(model=model, args=args, train_dataset=rows, cache_dir=str(tmp_path / "cache"),
                                policy="gradient")
    trainer.train()
    cli_freezes = [(h["step"], h["to"]) for h in rep["controller_history"] if h["event"] == "freeze"]
    assert cli_freezes and freezes(trainer) == cli_freezes
    norms = [[n for n in h["norms"] if n is not None] for h in trainer.autofreeze.controller.history
             if h["event"] == "interval"]
    cli_norms = [[n for n in h["norms"] if n is not None] for h in rep["controller_history"] if h["event"] == "interval"]
    assert norms == [pytest.approx(n, rel=1e-4) for n in cli_norms]
    assert list(losses_of(trainer).values()) == pytest.approx(rep["losses"], rel=1e-4, abs=1e-4)
    assert trainer.cache_counters["hits_ram"] > 0


@pytest.mark.parametrize("n", [48, 45])
def test_rank_stable_sampler_keeps_each_ranks_samples_through_accelerates_sharding(n):
    from accelerate.data_loader import BatchSamplerShard

    world, batch = 2, 8
    sampler = RankStableSampler(n, world, batch, seed=0)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = []
        for rank in range(world):
            shard = BatchSamplerShard(torch.utils.data.BatchSampler(sampler, batch, False), world, rank)
            got = [i for b in shard for i in b]
            assert all(len(b) == batch for b in shard)
            assert set(got) == set(sampler.shard(rank)), (epoch, rank)  # all of its shard, nothing else
            seen.append(got)
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2]  # reshuffled within the shards every epoch
    assert len(sampler) == world * len(list(BatchSamplerShard(torch.utils.data.BatchSampler(sampler, batch, False),
                                                               world, 0))) * batch


def torchrun(out, *extra):
    """tests/hf_ddp_worker.py on 2 gloo ranks; each rank's record."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "hf_ddp_worker.py"), str(out), *extra]
    p = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_under_torchrun_the_cached_trainer_trains_as_the_trainers_own_ddp(tmp_path):
    """Two ranks (gloo): the cached forward bypasses the DDP wrapper and the trainer averages the
    gradients itself; the result equals the Trainer's own DDP (cache=False, the same batches):
    the same weights on both ranks, the same decisions, and each rank's cache is read."""
    cached, own = torchrun(tmp_path / "cached"), torchrun(tmp_path / "own", "--no-cache")
    assert cached[0]["world"] == 2
    assert cached[0]["freezes"] and cached[0]["freezes"] == cached[1]["freezes"] == own[0]["freezes"]
    for rank in range(2):
        for name, p in cached[rank]["params"].items():
            torch.testing.assert_close(p, own[rank]["params"][name], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(p, cached[0]["params"][name], rtol=0, atol=0)
        assert cached[rank]["cache"]["hits_ram"] > 0, cached[rank]["cache"]
    assert cached[0]["losses"] == pytest.approx(own[0]["losses"], rel=1e-5)
    sent = cached[0]["allreduce"]  # one average per update; frozen blocks send nothing
    assert len(sent) == 12 and sent[-1] < sent[0], sent


def test_under_torchrun_a_mid_epoch_resume_continues_the_uninterrupted_run(tmp_path):
    """2 ranks, 3 updates per epoch, resumed at update 5 (inside epoch 2): each rank's sampler
    gets the resumed epoch's order (the Trainer's own set_epoch stops short after skipping), so
    the weights end as in the uninterrupted run."""
    whole = torchrun(tmp_path / "whole", "--save-steps", "5")
    resumed = torchrun(tmp_path / "resumed", "--resume", str(tmp_path / "whole" / "trainer" / "checkpoint-5"))
    assert resumed[0]["freezes"] == whole[0]["freezes"]
    for rank in range(2):
        for name, p in resumed[rank]["params"].items():
            torch.testing.assert_close(p, whole[rank]["params"][name], rtol=1e-5, atol=1e-7)


def test_sampler_epoch_counts_updates_as_the_trainer_does():
    from types import SimpleNamespace as NS

    cb, sampler = SamplerEpoch(), RankStableSampler(48, 2, 8)
    cb.sampler = sampler
    for accum, loader_len, step, epoch in [(1, 3, 5, 1), (1, 3, 6, 2), (2, 3, 4, 2), (2, 3, 3, 1), (1, 3, 0, 0)]:
        cb.on_epoch_begin(NS(gradient_accumulation_steps=accum), NS(global_step=step), None,
                          train_dataloader=[None] * loader_len)
        assert sampler.epoch == epoch, (accum, loader_len, step)


class Ragged(torch.utils.data.Dataset):
    """48 rows of 3 to 29 tokens, not padded (a collator pads each batch)."""

    def __len__(self):
        return 48

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)  # iteration (the length-grouped sampler's) stops here
        n = 3 + (i * 7) % 27
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(5, 100, (n,), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long), "labels": int(ids[0] > 50)}


def grouping(strategy):
    """TrainingArguments for random or length-grouped sampling, in this transformers' spelling."""
    fields = transformers.TrainingArguments.__dataclass_fields__
    if "group_by_length" in fields:
        return {"group_by_length": strategy == "group_by_length"}
    return {"train_sampling_strategy": strategy}


@pytest.mark.parametrize("strategy", ["random", "group_by_length"])
def test_rows_padded_per_batch_train_as_without_the_cache(tmp_path, strategy):
    """What a Trainer user runs: rows of different lengths, DataCollatorWithPadding, random or
    length-grouped batches. The cache (disk tier) is read, rows land in batches of other lengths
    across epochs, and the losses equal the same Trainer without the cache within 1e-4."""
    (tmp_path / "tok").mkdir()
    tok = transformers.AutoTokenizer.from_pretrained(save_tiny_checkpoint(tmp_path / "tok"))
    collator = transformers.DataCollatorWithPadding(tok)
    widths = {}

    class Seen(transformers.DataCollatorWithPadding):  # records each row's batch lengths
        def __call__(self, rows):
            out = collator(rows)
            for i in out[INDEX].tolist():
                widths.setdefault(i, set()).add(out["input_ids"].shape[1])
            return out

    runs = {}
    for cache in (False, True):
        trainer = make(tmp_path / f"out{cache}", cache=cache, epochs=4, cache_dir=str(tmp_path / "cache"),
                       dataset=Ragged(), collator=Seen(tok) if cache else collator, **grouping(strategy))
        trainer.train()
        runs[cache] = trainer
    assert freezes(runs[True]) and freezes(runs[True]) == freezes(runs[False])
    assert list(losses_of(runs[True]).values()) == pytest.approx(list(losses_of(runs[False]).values()),
                                                                 rel=1e-4, abs=1e-4)
    c = runs[True].cache_counters
    assert c["hits_ram"] + c["hits_disk"] > 0, c
    assert any(len(w) > 1 for w in widths.values()), "no row met batches of two lengths"
    assert c["bytes_per_row"] < 29 * 32 * 4  # rows stored without their padding


def test_an_iterable_dataset_is_a_clear_error(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([])

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2)
    with pytest.raises(TypeError, match="map-style"):
        AutoFreezeTrainer(model=tiny_bert(), args=args, train_dataset=Stream())
    t = AutoFreezeTrainer(model=tiny_bert(), args=args, train_dataset=Stream(), cache=False)  # freezing only: fine
    assert t.autofreeze.val_data is None  # no slice out of a stream: the default falls back to late at train begin
    with pytest.raises(TypeError, match="pass val_data="):  # a policy named to read a slice cannot
        AutoFreezeTrainer(model=tiny_bert(), args=args, train_dataset=Stream(), cache=False, policy="plateau")


def test_rank_stable_sampler_groups_by_length_within_each_rank_shard():
    """Under DDP with group_by_length each rank's batches are grouped within its own shard: the
    same samples per rank as without grouping (its cache still hits), far less padding."""
    from accelerate.data_loader import BatchSamplerShard

    world, batch, n = 2, 8, 200
    lengths = [3 + (i * 37) % 60 for i in range(n)]
    grouped, plain = RankStableSampler(n, world, batch, lengths=lengths), RankStableSampler(n, world, batch)

    def rank_batches(sampler, rank):
        return list(BatchSamplerShard(torch.utils.data.BatchSampler(sampler, batch, False), world, rank))

    def waste(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    for rank in range(world):
        g, p = rank_batches(grouped, rank), rank_batches(plain, rank)
        assert set(i for b in g for i in b) == set(grouped.shard(rank)) == set(i for b in p for i in b)
        assert len(g) == len(p) and waste(g) < 0.6 * waste(p)  # megabatches of 3 batches here (13 per rank)


def test_the_default_holds_out_the_same_slice_and_decides_as_the_cli(tmp_path, capsys):
    """The default policy (plateau) with the built-in stop through the CLI and through
    AutoFreezeTrainer, neither naming a policy, each holding out its own validation slice (25% of 40 rows, stratified, same seed): the same
    slice, the same freeze and stop steps, losses equal within 1e-4 (one batch holds the rest
    of the training set; dropout off)."""
    (tmp_path / "ckpt").mkdir()
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    train_tsv, dev_tsv = write_tsv(tmp_path / "train.tsv", 40), write_tsv(tmp_path / "dev.tsv", 8, seed=1)
    rc, stdout, _ = run(["finetune", "--mode", "autofreeze+cache", "--stop-when-converged",
                         "--learned", "off", "--val-fraction", "0.25", "--model", ckpt, "--train", train_tsv,
                         "--dev", dev_tsv, "--epochs", "20", "--batch-size", "30", "--max-length", "12", "--lr", "3e-3",
                         "--seed", "0", "--evals-per-epoch", "1", "--out", str(tmp_path / "cli"), "--no-progress",
                         "--no-plot"], capsys)
    assert rc == 0, stdout
    rep = json.loads((tmp_path / "cli" / "finetune_autofreeze_cache.json").read_text())
    cli_freezes = [(h["step"], h["to"]) for h in rep["controller_history"] if h["event"] == "freeze"]
    assert cli_freezes and rep["stopped"] == "converged" and rep["steps"] < 20

    from autofreeze_ext.policies import PolicyOptions

    enc = encode(load_task(train_tsv), transformers.AutoTokenizer.from_pretrained(ckpt), 12)
    rows = [{k: v[i] for k, v in enc.items()} for i in range(40)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=30, num_train_epochs=20, learning_rate=3e-3,
        weight_decay=0.01, warmup_steps=2,  # the CLI: 10% of 20 steps
        lr_scheduler_type="linear", max_grad_norm=0.0, optim="adamw_torch",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(ckpt)
    trainer = AutoFreezeTrainer(model=model, args=args, train_dataset=rows, val_fraction=0.25,
                                options=PolicyOptions(learned=None, stop_when_converged=True))
    assert len(trainer.autofreeze.val_data) == 10 and len(trainer.train_dataset) == 30
    trainer.train()
    assert type(trainer.autofreeze.controller.policy).__name__ == "PlateauFreeze"
    assert freezes(trainer) == cli_freezes
    assert trainer.state.global_step == rep["steps"]  # stopped where the CLI stopped
    assert list(losses_of(trainer).values()) == pytest.approx(rep["losses"], rel=1e-4, abs=1e-4)


def test_a_freeze_in_the_last_epoch_writes_nothing_to_the_cache(tmp_path):
    """Two epochs of 6 updates: blocks freeze at update 8 (in the last epoch), whose rows no
    later pass reads: nothing is written, and the losses equal the uncached run's."""
    from autofreeze_ext.policies import ScheduledFreeze

    def trained(cache):
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / f"o{cache}"), per_device_train_batch_size=8, num_train_epochs=2,
            learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
            disable_tqdm=True)
        t = AutoFreezeTrainer(model=tiny_bert(num_layers=4), args=args, train_dataset=DS(), cache=cache,
                              cost_model=False, policy=ScheduledFreeze([(8, 2)]))
        t.train()
        return t

    cached, plain = trained(True), trained(False)
    assert freezes(cached) == [(8, 2)]
    c = cached.cache_counters
    assert c["puts_ram"] + c["puts_disk"] == 0 and c["writes_skipped"] == 8 * 4  # updates 9-12
    assert list(losses_of(cached).values()) == pytest.approx(list(losses_of(plain).values()), abs=1e-5)


def test_hold_out_rows_reads_float_targets_as_regression():
    """Integer-valued float targets (STS-B's 3.0, 4.0) are a regression task, as transformers
    reads them: the slice is drawn across the targets, not stratified by int(target) into
    classes that each keep a training row (which a 2-row-per-class split could not)."""
    from autofreeze_ext.integrations.hf_trainer import hold_out_rows
    from autofreeze_ext.tasks.split import split_rows

    rows = [{"input_ids": [1, 2], "labels": float(i % 6)} for i in range(60)]
    train, val = hold_out_rows(rows, 0.1, seed=3)
    labels = [r["labels"] for r in rows]
    assert (train.indices, val.indices) == tuple(split_rows(labels, 0.1, 3, True, "x"))
    tensors = [{"input_ids": [1, 2], "labels": torch.tensor(float(i % 6))} for i in range(60)]
    assert hold_out_rows(tensors, 0.1, seed=3)[1].indices == val.indices
    classes = [{"input_ids": [1, 2], "labels": i % 6} for i in range(60)]
    assert hold_out_rows(classes, 0.1, seed=3)[1].indices == split_rows([i % 6 for i in range(60)], 0.1, 3,
                                                                       False, "x")[1]
