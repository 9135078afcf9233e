"""FrozenPrefixRunner: cached training is identical to recomputation; the cost model decides."""
import pytest
import torch

from autofreeze_ext import FreezeController, ScheduledFreeze, StaticFreeze, backend_info
from autofreeze_ext.cache import ActivationCache
from autofreeze_ext.freezing.prefix import FrozenPrefixRunner

from models import BlockNet, tiny_bert

pytestmark = pytest.mark.reference  # also run on the pure-PyTorch backend (see conftest.py)

N, BS = 32, 8


def bert_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (N, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 9:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask, "labels": (ids[:, 0] > 50).long()}


def train(policy, cache_kind, tmp_path, epochs=3, shuffle=False):
    """Losses per step and final parameters of tiny-BERT training, with or without the cache."""
    model = tiny_bert(num_layers=4, seed=0)
    data = bert_data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctl = FreezeController(model, opt, policy, steps_per_epoch=N // BS)
    runner = None
    if cache_kind is not None:
        path = None if cache_kind == "ram" else str(tmp_path / "cache")
        budget = "1GiB" if cache_kind == "ram" else 0
        cache = ActivationCache(path, memory_budget=budget, fingerprint="t")
        runner = FrozenPrefixRunner(model, ctl, cache, cost_model=False)
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(2)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(N, generator=g) if shuffle else torch.arange(N)
        batches = [order[s:s + BS] for s in range(0, N, BS)]
        if runner is not None:
            runner.cache.plan_epoch([b.tolist() for b in batches])
        for idx in batches:
            batch = {k: v[idx] for k, v in data.items()}
            out = runner(idx, **batch) if runner is not None else model(**batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(out.loss.detach())
        if runner is not None:
            runner.cache.flush()  # as a loop does at each epoch's end: every record written
    return losses, [p.detach().clone() for p in model.parameters()], runner


POLICIES = {"static2": lambda: StaticFreeze(2),
            "growing": lambda: ScheduledFreeze([(2, 1), (6, 2), (9, 3)])}


@pytest.mark.parametrize("kind", ["ram", "disk"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_cached_training_is_bit_identical(tmp_path, kind, policy):
    if kind == "disk" and not backend_info()["compiled"]:
        pytest.skip("disk tier needs the compiled core")
    ref_losses, ref_params, _ = train(POLICIES[policy](), None, tmp_path)
    losses, params, runner = train(POLICIES[policy](), kind, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(ref_losses, losses))
    assert all(torch.equal(a, b) for a, b in zip(ref_params, params))
    c = runner.cache.counters()
    assert c["hits_ram"] + c["hits_disk"] > 0, "the cache was never used"
    if policy == "growing":  # entries cached at a shallower depth were advanced, then rewritten
        # the last steps ran at depth 2 (samples 0-7, step 9) and 3 (the rest, steps 10-12)
        assert runner.cache.depths(range(N)) == [2] * 8 + [3] * 24


def test_shuffled_epochs_match_recomputation(tmp_path):
    ref_losses, ref_params, _ = train(StaticFreeze(3), None, tmp_path, shuffle=True)
    losses, params, runner = train(StaticFreeze(3), "ram", tmp_path, shuffle=True)
    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses), rtol=1e-5, atol=1e-6)
    assert runner.cache.counters()["hit_rate"] > 0.6


def test_logits_with_and_without_cache_equal_in_eval(tmp_path):
    model = tiny_bert(num_layers=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = FreezeController(model, opt, StaticFreeze(3))
    runner = FrozenPrefixRunner(model, ctl, ActivationCache(None, memory_budget="1GiB"), cost_model=False)
    data = bert_data()
    model.eval()
    with torch.no_grad():
        ref = model(**data).logits
        first = runner(torch.arange(N), **data).logits   # miss: computes and caches
        second = runner(torch.arange(N), **data).logits  # hit
    assert torch.equal(ref, first) and torch.equal(ref, second)
    assert runner.cache.counters()["hits_ram"] == N


def test_plain_block_list_model(tmp_path):
    model = BlockNet()
    blocks = list(model.blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = FreezeController(model, opt, StaticFreeze(2), blocks=blocks)
    runner = FrozenPrefixRunner(model, ctl, ActivationCache(None, memory_budget="1GiB"), cost_model=False)
    x = torch.randn(6, 3)
    model.eval()
    ref = model(x)
    model(x)
    assert torch.equal(runner(torch.arange(6), x=x), ref)
    assert torch.equal(runner(torch.arange(6), x=x), ref)
    assert runner.cache.counters()["hits_ram"] == 6


def test_cost_model_declines_when_reading_is_slower(tmp_path, monkeypatch):
    model = tiny_bert(num_layers=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = FreezeController(model, opt, StaticFreeze(2))
    cache = ActivationCache(None, memory_budget="1GiB")
    monkeypatch.setattr(cache, "read_seconds_per_sample", lambda nbytes: (10.0, "disk"))
    runner = FrozenPrefixRunner(model, ctl, cache)
    data = bert_data()
    model(**{k: v[:2] for k, v in data.items()})  # learn the block output format
    for _ in range(3):
        runner(torch.arange(N), **data)
    assert runner.decisions == [pytest.approx(runner.decisions[0])] and runner.decisions[0]["cache"] is False
    assert len(cache) == 0
    cache2 = ActivationCache(None, memory_budget="1GiB")
    monkeypatch.setattr(cache2, "read_seconds_per_sample", lambda nbytes: (0.0, "ram"))
    runner2 = FrozenPrefixRunner(model, ctl, cache2)
    runner2._tuple_out = runner._tuple_out
    runner2(torch.arange(N), **data)
    assert runner2.decisions[0]["cache"] is True and len(cache2) == N


def test_ram_read_estimate_is_measured():
    c = ActivationCache(None, memory_budget="1GiB")
    s, tier = c.read_seconds_per_sample(64 * 384 * 4)
    assert tier == "ram" and 0 < s < 0.1


@pytest.mark.parametrize("family", ["electra", "distilbert", "xlm-roberta"])
def test_other_families_freeze_their_stem_and_cache_like_recomputation(tmp_path, family):
    """ELECTRA's embeddings_project (embedding size 16 -> hidden 32) is part of the frozen stem:
    it stops training with the embeddings, and the cached suffix gives recomputation's logits."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "electra":
        model = tf.ElectraForSequenceClassification(tf.ElectraConfig(
            vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, num_labels=2))
    elif family == "distilbert":
        model = tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=4, n_heads=2, hidden_dim=64, max_position_embeddings=32, num_labels=2))
    else:
        model = tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=40, num_labels=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = FreezeController(model, opt, StaticFreeze(2))
    stem = ctl.layout.embeddings
    if family == "electra":
        assert model.electra.embeddings_project in stem and model.electra.embeddings_project not in ctl.layout.head
    assert not any(p.requires_grad for m in stem for p in m.parameters())
    data = bert_data()
    batch = {k: v[:BS] for k, v in data.items() if k != "labels"}
    cache = ActivationCache(str(tmp_path / "c"), memory_budget=0, fingerprint={"f": family})
    runner = FrozenPrefixRunner(model, ctl, cache, cost_model=False)
    model.eval()
    with torch.no_grad():
        want = model(**batch).logits
        first = runner(list(range(BS)), **batch).logits   # fills the cache
        cache.flush()                                     # (the disk writer is asynchronous)
        again = runner(list(range(BS)), **batch).logits   # reads it
    assert cache.counters()["hits_disk"] == BS
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(again, want)
    cache.close()


# ---------------------------------------------------------------- rows of different lengths
def ragged_data(seed=0):
    """Rows of 3-12 real tokens (growing with the row's index), right-padded with 0 to 12 (as
    ``encode`` stores them)."""
    g = torch.Generator().manual_seed(seed)
    lengths = 3 + 9 * torch.arange(N) // (N - 1)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 100, (N, 12), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": (ids[:, 0] > 50).long()}


def train_grouped(policy, cache_kind, tmp_path, epochs=3, shuffle=True):
    """Tiny-BERT training on length-grouped batches, each cut to its longest row, as the CLI
    batches; returns losses, parameters, the runner and each sample's batch lengths. Without
    ``shuffle`` every epoch has the same batches (their order shuffled)."""
    from torch.utils.data import DataLoader

    from autofreeze_ext.batching import TrimCollate, row_lengths
    from autofreeze_ext.samplers import IndexedDataset, PlannedBatchSampler

    model = tiny_bert(num_layers=4, seed=0)
    data = ragged_data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = PlannedBatchSampler(N, BS, seed=3, lengths=row_lengths(data), shuffle=shuffle)
    loader = DataLoader(IndexedDataset(data), batch_sampler=sampler, collate_fn=TrimCollate(1))
    ctl = FreezeController(model, opt, policy, steps_per_epoch=len(sampler))
    runner = None
    if cache_kind is not None:
        path = None if cache_kind == "ram" else str(tmp_path / f"cache-{cache_kind}")
        cache = ActivationCache(path, memory_budget="1GiB" if cache_kind == "ram" else 0, fingerprint="t")
        runner = FrozenPrefixRunner(model, ctl, cache, cost_model=False)
    torch.manual_seed(1)
    losses, widths = [], {}
    model.train()
    for _ in range(epochs):
        if runner is not None:
            runner.cache.plan_epoch(sampler.plan_epoch())
        for idx, batch in loader:
            for i in idx.tolist():
                widths.setdefault(i, set()).add(batch["input_ids"].shape[1])
            out = runner(idx, **batch) if runner is not None else model(**batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(out.loss.detach())
        if runner is not None:
            runner.cache.flush()
    return losses, [p.detach().clone() for p in model.parameters()], runner, widths


def _records_hold_real_tokens_only(runner):
    c = runner.cache.counters()
    real = ragged_data()["attention_mask"].sum(1)
    hits = runner.cache.get(range(N))
    assert hits, "nothing cached"
    for i, (_, row) in hits.items():
        assert row.shape == (int(real[i]), 32), f"sample {i}: record {tuple(row.shape)}, {int(real[i])} real tokens"
    # the mean stored row (rows rewritten deeper count each time): well under a padded row
    assert c["bytes_per_row"] <= 0.7 * 12 * 32 * 4, c["bytes_per_row"]


@pytest.mark.parametrize("kind", ["ram", "disk"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_rows_cached_without_padding_train_bit_identically(tmp_path, kind, policy):
    """Batches of different lengths (each cut to its longest row): training equals recomputation
    bit for bit, and a record holds only the row's real tokens (fails if padding were stored, or
    if real tokens were dropped or misplaced). The disk tier is the C++ record store, or its
    pure-Python twin on the reference backend (AUTOFREEZE_FORCE_REFERENCE=1)."""
    ref_losses, ref_params, _, widths = train_grouped(POLICIES[policy](), None, tmp_path, shuffle=False)
    losses, params, runner, _ = train_grouped(POLICIES[policy](), kind, tmp_path, shuffle=False)
    assert len({w for ws in widths.values() for w in ws}) > 2, "batches of one length: nothing tested"
    assert all(torch.equal(a, b) for a, b in zip(ref_losses, losses))
    assert all(torch.equal(a, b) for a, b in zip(ref_params, params))
    c = runner.cache.counters()
    assert c["hits_ram" if kind == "ram" else "hits_disk"] > 0, "the cache was never read"
    _records_hold_real_tokens_only(runner)


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_rows_read_into_batches_of_other_lengths(tmp_path, kind):
    """Grouped batches drawn anew each epoch: a row cached in a batch of one length is read into
    batches of other lengths. Recomputation is then no longer a bit-exact reference (the same
    row's prefix output differs in the last bit between batch lengths: matrix products block by
    shape), so the losses agree to float tolerance."""
    ref_losses, ref_params, _, widths = train_grouped(StaticFreeze(2), None, tmp_path)
    losses, params, runner, _ = train_grouped(StaticFreeze(2), kind, tmp_path)
    assert any(len(ws) > 1 for ws in widths.values()), "no row met batches of two lengths"
    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses), rtol=1e-6, atol=1e-6)
    for a, b in zip(ref_params, params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    c = runner.cache.counters()
    assert c["hits_ram" if kind == "ram" else "hits_disk"] >= 2 * N, "the later epochs did not read the cache"
    _records_hold_real_tokens_only(runner)


def test_a_record_of_another_length_is_recomputed(tmp_path):
    """A record whose length is not the row's real tokens (another tokenisation) is a miss."""
    model = tiny_bert(num_layers=4)
    ctl = FreezeController(model, torch.optim.SGD(model.parameters(), lr=0.1), StaticFreeze(2))
    cache = ActivationCache(None, memory_budget="1GiB")
    runner = FrozenPrefixRunner(model, ctl, cache, cost_model=False)
    data = ragged_data()
    model.eval()
    with torch.no_grad():
        ref = model(**data).logits
        runner(torch.arange(N), **data)              # caches the real tokens of every row
        cache.put([0], 2, [torch.full((1, 32), 7.0)])  # a wrong record for sample 0
        again = runner(torch.arange(N), **data).logits
    torch.testing.assert_close(again, ref)
    assert cache.get([0])[0][1].shape[0] == int(data["attention_mask"][0].sum())  # rewritten
