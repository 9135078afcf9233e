"""Per-batch padding and length-grouped batches: the samplers, the collate, evaluation order."""
import pytest
import torch
from torch.utils.data import DataLoader

from autofreeze_ext.batching import TrimCollate, grouped_batches, row_lengths, trim_batch
from autofreeze_ext.samplers import IndexedDataset, PlannedBatchSampler, ShardedBatchSampler

pytestmark = pytest.mark.reference


def ragged(n=400, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 100, (n, width), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.arange(n)}, lengths.tolist()


def test_trim_cuts_to_the_longest_row_rounded_up():
    data, lengths = ragged(8)
    out = trim_batch(data, 1)
    assert out["input_ids"].shape[1] == max(lengths)
    assert all(v.shape[1] == max(lengths) for k, v in out.items() if k != "labels")
    assert torch.equal(out["input_ids"], data["input_ids"][:, :max(lengths)])  # only padding went
    short = trim_batch({k: v[:, :40] if v.dim() == 2 else v for k, v in data.items()}, 16)
    assert short["input_ids"].shape[1] == min(40, -(-max(lengths) // 16) * 16)
    assert trim_batch({"input_ids": data["input_ids"]})["input_ids"].shape[1] == 40  # no mask: as it is


def test_grouped_batches_follow_length_grouped_semantics():
    _, lengths = ragged(4000)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(4000, generator=g).tolist()
    batches = grouped_batches(order, lengths, 16, g)
    assert sorted(i for b in batches for i in b) == list(range(4000))  # every row once
    assert max(lengths[i] for i in batches[0]) == max(lengths)        # the longest batch first
    # padding kept: per-batch padding of grouped batches wastes far less than random batches
    def pad_waste(bs):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)
    random_batches = [order[s:s + 16] for s in range(0, 4000, 16)]
    assert pad_waste(batches) < 0.2 * pad_waste(random_batches)
    # batch order shuffled: not long-to-short within each megabatch
    tops = [max(lengths[i] for i in b) for b in batches[1:51]]
    assert tops != sorted(tops, reverse=True)


def test_planned_sampler_groups_resumes_and_feeds_the_loader():
    data, lengths = ragged(200)
    s = PlannedBatchSampler(200, 16, seed=3, lengths=lengths)
    plan = [list(b) for b in s.plan_epoch()]
    loader = DataLoader(IndexedDataset(data), batch_sampler=s, collate_fn=TrimCollate(8))
    seen = []
    for k, (idx, batch) in enumerate(loader):
        assert idx.tolist() == plan[k]
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 or width == 40
        assert width >= max(lengths[i] for i in idx.tolist()) > width - 8
        seen.append(idx.tolist())
        if k == 4:
            state = s.state_dict()
    resumed = PlannedBatchSampler(200, 16, seed=99, lengths=lengths)
    resumed.load_state_dict(state)
    assert [list(b) for b in resumed] == seen[5:]  # mid-epoch resume: the same batches
    assert list(s.plan_epoch()) != plan           # the next epoch is grouped anew


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_sampler_groups_within_each_rank_shard(world):
    _, lengths = ragged(1000)
    ranks = [ShardedBatchSampler(1000, 32, world_size=world, rank=r, seed=1, lengths=lengths) for r in range(world)]
    full = ShardedBatchSampler(1000, 32, world_size=world, rank=None, seed=1, lengths=lengths)
    plans = [r.plan_epoch() for r in ranks]
    assert len({len(p) for p in plans}) == 1  # every rank takes the same number of steps
    glob = full.plan_epoch()
    for k in range(len(glob)):
        assert sum((p[k] for p in plans), []) == glob[k]  # rank slices of the same global batches
    ungrouped = ShardedBatchSampler(1000, 32, world_size=world, rank=0, seed=1)
    assert sorted(set(sum(plans[0], []))) == sorted(set(sum(ungrouped.plan_epoch(), [])))  # same shard

    def spread(plan):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plan)
    assert spread(plans[0]) < 0.5 * spread(ungrouped.plan_epoch())


def test_row_lengths_and_sampler_checks():
    data, lengths = ragged(10)
    assert row_lengths(data) == lengths
    with pytest.raises(ValueError, match="row lengths"):
        PlannedBatchSampler(10, 4, lengths=lengths[:5])


def test_evaluation_by_length_gives_each_row_its_own_prediction():
    from models import tiny_bert

    from autofreeze_ext.training.evaluate import predict

    model = tiny_bert(num_layers=2)
    data, _ = ragged(50, width=30)
    data["input_ids"] = data["input_ids"] % 100
    data["token_type_ids"] = torch.zeros_like(data["input_ids"])
    model.eval()
    with torch.no_grad():
        ref = model(**{k: v for k, v in data.items() if k != "labels"}).logits.argmax(-1).tolist()
    assert predict(model, data, batch_size=8) == ref


@pytest.mark.parametrize("make", [lambda: PlannedBatchSampler(20, 4, seed=1),
                                  lambda: ShardedBatchSampler(20, 4, world_size=2, rank=1, seed=1)])
def test_a_pass_read_to_its_end_but_not_past_it_starts_a_new_epoch(make):
    """A loop that takes len(sampler) batches and stops (Lightning's) never reaches the end of
    the generator; its next pass must be a whole new epoch, not an empty one."""
    s = make()
    epochs = []
    for _ in range(3):
        it, n = iter(s), len(s)
        epochs.append([next(it) for _ in range(n)])  # exactly n batches, the generator left open
    assert all(len(e) == n and sorted(i for b in e for i in b) == sorted(i for b in epochs[0] for i in b)
               for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled, not the same epoch replayed


def test_a_state_saved_at_an_epochs_end_resumes_with_an_empty_pass():
    """The CLI's loop saves after an epoch's last batch: the resumed pass ends that epoch (no
    batches), and the pass after it is the next epoch, as in the uninterrupted run."""
    whole = PlannedBatchSampler(20, 4, seed=3)
    first = list(whole)
    second = list(whole)
    s = PlannedBatchSampler(20, 4, seed=3)
    it = iter(s)
    assert [next(it) for _ in range(len(s))] == first
    state = s.state_dict()
    r = PlannedBatchSampler(20, 4, seed=0)
    r.load_state_dict(state)
    assert list(r) == [] and list(r) == second
