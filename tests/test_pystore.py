"""The disk tier's pure-Python twin: same behaviour as the C++ store where the cache relies on it."""
import os
import warnings

import pytest
import torch

from autofreeze_ext.cache import py_store as _pystore
from autofreeze_ext.cache.py_store import PyRecordStore
from autofreeze_ext.cache import ActivationCache

pytestmark = pytest.mark.reference


def put(store, i, t, depth=2):
    return store.put(i, depth, 0, list(t.shape), t.data_ptr(), t.numel() * 4)


def read(store, i, shape):
    t = torch.empty(shape)
    return store.read_into(i, t.data_ptr(), t.numel() * 4), t


def test_round_trip_reuse_and_fingerprint(tmp_path):
    s = PyRecordStore(str(tmp_path), fingerprint="a")
    rows = {i: torch.randn(3, 4) for i in range(5)}
    assert all(put(s, i, t) for i, t in rows.items())
    assert s.depths([0, 4, 9]) == [2, 2, -1] and s.meta(3) == (2, 0, [3, 4], 48) and s.meta(9) is None
    status, t = read(s, 3, (3, 4))
    assert status == _pystore.OK and torch.equal(t, rows[3])
    s.close()
    again = PyRecordStore(str(tmp_path), fingerprint="a")
    assert len(again) == 5 and "reused 5" in again.info()["opened"]
    assert torch.equal(read(again, 4, (3, 4))[1], rows[4])
    again.close()
    other = PyRecordStore(str(tmp_path), fingerprint="b")  # another run's records are not served
    assert len(other) == 0 and other.info()["opened"].startswith("created")


def test_a_record_of_another_run_is_never_served(tmp_path):
    """Run B's index over run A's records (the data file copied over, as two runs writing one
    folder would leave it). Same bytes in both, so the index's CRC passes: the record's run tag
    alone says it is A's: misses. (With other bytes the CRC catches it too.)"""
    for name, fp in (("a", "run-a"), ("b", "run-b")):
        s = PyRecordStore(str(tmp_path / name), fingerprint=fp)
        g = torch.Generator().manual_seed(1)
        assert all(put(s, i, torch.randn(3, 4, generator=g)) for i in range(3))
        s.close()
    (tmp_path / "b" / _pystore.DATA).write_bytes((tmp_path / "a" / _pystore.DATA).read_bytes())
    b = PyRecordStore(str(tmp_path / "b"), fingerprint="run-b")
    assert len(b) == 3 and [read(b, i, (3, 4))[0] for i in range(3)] == [_pystore.CORRUPT] * 3
    assert _pystore.run_tag_of("run-b") == b.run_tag != _pystore.run_tag_of("run-a")


def test_corruption_budget_evict_and_plan(tmp_path):
    s = PyRecordStore(str(tmp_path), disk_budget=3 * 48)
    for i in range(3):
        assert put(s, i, torch.full((3, 4), float(i)), depth=1 + i)
    assert not put(s, 3, torch.zeros(3, 4)) and s.stats()["rejected_budget"] == 1
    s.flush()
    rec = _pystore._HEADER.size + 48  # a record: its header, then 3x4 floats
    with open(tmp_path / _pystore.DATA, "r+b") as f:  # flip a payload byte of record 1
        f.seek(rec + _pystore._HEADER.size + 5)
        b = f.read(1)
        f.seek(rec + _pystore._HEADER.size + 5)
        f.write(bytes([b[0] ^ 0xFF]))
    assert read(s, 1, (3, 4))[0] == _pystore.CORRUPT
    s.plan([[2, 0], [1, 7]])
    v = s.next()
    assert [(r[0], r[1], r[2]) for r in v["records"]] == [(2, 0, 3), (0, 0, 1)]
    buf = torch.frombuffer(v["buffer"], dtype=torch.uint8)
    _, _, _, _, shape, off, n = v["records"][0]
    assert torch.equal(buf[off:off + n].view(torch.float32).view(shape), torch.full((3, 4), 2.0))
    assert [r[1] for r in s.next()["records"]] == [_pystore.CORRUPT] and s.next() is None
    assert s.evict_below(3) == 2 and s.depths([0, 1, 2]) == [-1, -1, 3]


def test_cache_uses_it_without_the_compiled_core(tmp_path, monkeypatch):
    from autofreeze_ext.cache import activation_cache as cache_mod

    monkeypatch.setattr(cache_mod, "_C", None)
    with pytest.warns(RuntimeWarning, match="pure-Python record store"):
        c = ActivationCache(str(tmp_path), memory_budget=0, fingerprint={"x": 1})
    h = torch.randn(4, 6, 8)
    assert c.put([10, 11, 12, 13], depth=2, outputs=h) == 4 and c.counters()["puts_disk"] == 4
    c.plan_epoch([[12, 10], [11, 13]])
    got = c.get([12, 10])
    assert torch.equal(got[12][1], h[2]) and got[10][0] == 2 and c.counters()["prefetched"] == 2
    assert torch.equal(c.get([11, 13])[13][1], h[3])
    c.close()
    assert os.path.exists(tmp_path / _pystore.INDEX)


def test_cache_labels_data_with_the_depth_of_the_record_it_read(tmp_path, monkeypatch):
    """A rewrite between the metadata lookup and the read (the disk writer runs concurrently)
    must not pair one depth's data with the other's label: get() uses the read's own metadata."""
    from autofreeze_ext.cache import activation_cache as cache_mod

    monkeypatch.setattr(cache_mod, "_C", None)
    with pytest.warns(RuntimeWarning):
        c = ActivationCache(str(tmp_path), memory_budget=0, fingerprint={"x": 2})
    old, new = torch.zeros(1, 4, 8), torch.ones(1, 4, 8)
    c.put([5], depth=1, outputs=old)
    store = c._store
    real_meta = store.meta

    def meta_then_rewrite(i):
        m = real_meta(i)  # depth 1 ...
        store.put(i, 3, 0, [4, 8], new[0].data_ptr(), new[0].numel() * 4)  # ... rewritten at depth 3
        return m

    monkeypatch.setattr(store, "meta", meta_then_rewrite)
    depth, t = c.get([5])[5]
    assert depth == 3 and torch.equal(t, new[0])
    c.close()


@pytest.mark.parametrize("engine", ["python", "c++"])
def test_a_record_rewritten_larger_between_lookup_and_read_is_a_miss(tmp_path, monkeypatch, engine):
    """The rewrite no longer fits the buffer sized from the metadata: get() recomputes the
    sample (a miss), it neither fails nor erases the new record."""
    from autofreeze_ext.cache import activation_cache as cache_mod

    if engine == "python":
        monkeypatch.setattr(cache_mod, "_C", None)
    elif cache_mod._C is None:
        pytest.skip("no compiled core")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        c = ActivationCache(str(tmp_path), memory_budget=0, fingerprint={"x": 3})
    small, big = torch.zeros(1, 4, 8), torch.ones(1, 8, 8)
    c.put([5], depth=1, outputs=small)
    c.flush()
    store = c._store

    class RewriteAfterMeta:  # the disk writer rewriting the record between meta() and the read
        def __getattr__(self, name):
            return getattr(store, name)

        def meta(self, i):
            m = store.meta(i)
            store.put(i, 3, 0, [8, 8], big[0].data_ptr(), big[0].numel() * 4)
            store.flush()
            return m

    c._store = RewriteAfterMeta()
    assert c.get([5]) == {} and c.counters()["failed_reads"] == 0
    c._store = store
    depth, t = c.get([5])[5]  # the new record is still there
    assert depth == 3 and torch.equal(t, big[0])
    c.close()
