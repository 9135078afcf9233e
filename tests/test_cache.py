"""ActivationCache and the C++ record store: round trips, tiers, backends, faults, persistence."""
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from autofreeze_ext import backend_info
from autofreeze_ext.cache import ActivationCache, CacheError, parse_bytes

pytestmark = pytest.mark.skipif(not backend_info()["compiled"], reason="the disk tier needs the compiled core")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rows(n, dtype=torch.float32, seq=(5, 9), hidden=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(seq[i % len(seq)], hidden, generator=g).to(dtype) for i in range(n)]


def put_rows(cache, ids, depth, tensors):
    for i, t in zip(ids, tensors):
        assert cache.put([i], depth, t.unsqueeze(0)) == 1


def segments(path):
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.startswith("seg-"))


def disk_cache(path, **kw):
    kw.setdefault("memory_budget", 0)
    kw.setdefault("fingerprint", "test")
    return ActivationCache(str(path), **kw)


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512m") == 512 << 20 and parse_bytes(7) == 7
    assert parse_bytes(None) is None
    with pytest.raises(ValueError, match="byte size"):
        parse_bytes("lots")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,direct", [("uring", "auto"), ("threads", "auto"), ("threads", "off")])
def test_disk_round_trip_is_byte_exact(tmp_path, dtype, backend, direct):
    xs = rows(20, dtype, seq=(3, 7, 64))
    with disk_cache(tmp_path, io_backend=backend, direct=direct) as c:
        put_rows(c, range(20), 2, xs)
        c.flush()
        info = c.info()
        if backend == "uring":  # io_uring it is, unless the build or the kernel says why not
            if not backend_info()["cache_io"]["uring_compiled"]:
                pytest.skip("built without liburing: no io_uring round trip to test")
            if info["disk_backend"] != "io_uring":
                assert "refused" in info["disk_backend_note"], info  # a silent fallback is a failure
                pytest.skip(f"the kernel refused io_uring here: {info['disk_backend_note']}")
        if backend == "threads":
            assert info["disk_backend"] == "threads"
        if direct == "off":
            assert info["disk_direct"] == "0"
        assert int(info["disk_alignment"]) % 512 == 0
        got = c.get(range(20))
        assert sorted(got) == list(range(20))
        for i, x in enumerate(xs):
            d, t = got[i]
            assert d == 2 and t.dtype == dtype and t.shape == x.shape and torch.equal(t.view(torch.uint8),
                                                                                      x.view(torch.uint8))


def test_refused_io_uring_falls_back_to_thread_pool(tmp_path):
    script = textwrap.dedent(f"""
        import torch
        from autofreeze_ext.cache import ActivationCache
        c = ActivationCache({str(tmp_path)!r}, memory_budget=0, io_backend="uring")
        x = torch.randn(3, 7, 5)
        c.put([0, 1, 2], 1, x)
        c.flush()
        c.plan_epoch([[0, 1, 2]])
        got = c.get([0, 1, 2])
        assert all(torch.equal(got[i][1], x[i]) for i in range(3))
        info = c.info()
        print(info["disk_backend"], "|", info["disk_backend_note"])
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path.parent, capture_output=True, text=True,
                       env=dict(os.environ, AUTOFREEZE_IO_URING_REFUSE="1"))
    assert p.returncode == 0, p.stderr
    backend, note = p.stdout.strip().split(" | ")
    assert backend == "threads" and ("refused" in note or "without liburing" in note)


def test_tmpfs_falls_back_or_uses_direct(tmp_path):
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        with disk_cache(d) as c:
            info = c.info()
            # Kernels before 6.6 refuse O_DIRECT on tmpfs: then the note says why we went buffered.
            assert info["disk_direct"] == "1" or "buffered" in info["disk_direct_note"]
            xs = rows(4)
            put_rows(c, range(4), 1, xs)
            c.flush()
            assert all(torch.equal(c.get([i])[i][1], xs[i]) for i in range(4))


def test_ram_tier_first_then_disk_and_budgets(tmp_path):
    xs = rows(10, seq=(8,), hidden=16)  # 512 bytes each
    c = ActivationCache(str(tmp_path), memory_budget=4 * 512, disk_budget=3 * 4096 + 100, fingerprint="b")
    stored = sum(c.put([i], 1, xs[i].unsqueeze(0)) for i in range(10))
    c.flush()
    assert stored == 7 and c.stats["puts_ram"] == 4 and c.stats["puts_disk"] == 3 and c.stats["puts_rejected"] == 3
    got = c.get(range(10))
    assert sorted(got) == list(range(7))
    assert c.counters()["hits_ram"] == 4 and c.counters()["hits_disk"] == 3 and c.counters()["misses"] == 3
    # superseding at a deeper depth replaces the entry; evict_below drops the shallow ones
    c.put([0], 3, xs[0].unsqueeze(0))
    assert c.depths([0, 1, 9]) == [3, 1, 0]
    assert c.evict_below(2) == 6
    c.flush()
    assert c.depths(range(10)) == [3] + [0] * 9
    c.close()


def test_shuffled_epochs_with_prefetch_and_partial_cache(tmp_path):
    n, bs = 50, 8
    xs = rows(n)
    c = disk_cache(tmp_path, prefetch_slots=2, queue_depth=4)
    put_rows(c, range(0, n, 2), 1, [xs[i] for i in range(0, n, 2)])  # half the samples
    c.flush()
    g = torch.Generator().manual_seed(1)
    for epoch in range(3):
        order = torch.randperm(n, generator=g).tolist()
        batches = [order[s:s + bs] for s in range(0, n, bs)]
        c.plan_epoch(batches)
        for b in batches:
            got = c.get(b)
            assert sorted(got) == sorted(i for i in b if i % 2 == 0)
            for i, (d, t) in got.items():
                assert torch.equal(t, xs[i])
            # samples seen uncached are cached now, while the prefetcher runs
            miss = [i for i in b if i not in got and i % 2]
            put_rows(c, miss, 1, [xs[i] for i in miss]) if epoch == 2 else None
    assert c.stats["prefetched"] > 0
    c.close()


def test_corrupt_byte_is_a_miss_never_wrong_data(tmp_path):
    xs = rows(6, seq=(64,), hidden=64)
    c = disk_cache(tmp_path)
    put_rows(c, range(6), 1, xs)
    c.flush()
    seg = segments(tmp_path)[0]
    with open(seg, "r+b") as f:  # flip one payload byte of the second record
        rec = os.path.getsize(seg) // 6
        f.seek(rec + 128 + 100)
        b = f.read(1)
        f.seek(rec + 128 + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c.plan_epoch([[0, 1, 2], [3, 4, 5]])
        got = c.get([0, 1, 2])     # through the prefetcher
        got.update(c.get([3, 4, 5]))
    assert sorted(got) == [0, 2, 3, 4, 5] and all(torch.equal(got[i][1], xs[i]) for i in got)
    assert c.counters()["failed_reads"] == 1 and c.counters()["disk"]["reads_corrupt"] == 1
    assert sum("failed to read" in str(x.message) for x in w) == 1
    assert c.depths([1]) == [0]  # the bad record left the index: recomputed and rewritten next time
    c.close()


def test_truncated_and_deleted_segments(tmp_path):
    xs = rows(8, seq=(64,), hidden=64)
    c = disk_cache(tmp_path, segment_bytes=1 << 20)
    put_rows(c, range(8), 1, xs)
    c.flush()
    seg = segments(tmp_path)[0]
    size = os.path.getsize(seg)
    os.truncate(seg, size - 1000)  # while open: a short read -> miss
    got = c.get(range(8))
    assert len(got) == 7 and c.counters()["disk"]["reads_short"] == 1
    c.close()
    rec = 20480  # 128-byte header + 16 KiB payload, 4 KiB aligned
    os.truncate(seg, 6 * rec + 100)  # cuts record 6: the restart drops it from the index
    c = disk_cache(tmp_path)
    assert "1 dropped" in c.info()["disk"] and len(c) == 6
    got = c.get(range(8))
    assert sorted(got) == list(range(6)) and all(torch.equal(t, xs[i]) for i, (d, t) in got.items())
    c.close()
    for s in segments(tmp_path):
        os.unlink(s)
    c = disk_cache(tmp_path)
    assert len(c) == 0 and c.get(range(8)) == {}
    c.close()


def test_enospc_stops_writing_and_training_goes_on(tmp_path):
    xs = rows(10)
    c = disk_cache(tmp_path)
    c._store.inject_enospc(3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i in range(10):
            c.put([i], 1, xs[i].unsqueeze(0))
            c._store.flush() if i == 4 else None
    c.flush()
    assert c.info()["disk_full"] and len(c) == 3
    assert c.counters()["disk"]["write_errors"] >= 1 and c.stats["puts_rejected"] >= 1
    assert any("disk full" in str(x.message) for x in w)
    got = c.get(range(10))
    assert sorted(got) == [0, 1, 2] and all(torch.equal(got[i][1], xs[i]) for i in got)
    c.close()


def test_restart_reuses_index_and_stale_fingerprint_invalidates(tmp_path):
    xs = rows(5)
    with disk_cache(tmp_path, fingerprint={"run": "a"}) as c:
        put_rows(c, range(5), 2, xs)
    with disk_cache(tmp_path, fingerprint={"run": "a"}) as c:
        assert "reused 5" in c.info()["disk"]
        got = c.get(range(5))
        assert all(torch.equal(got[i][1], xs[i]) and got[i][0] == 2 for i in range(5))
    with disk_cache(tmp_path, fingerprint={"run": "b"}) as c:
        assert "stale" in c.info()["disk"] and len(c) == 0
    assert segments(tmp_path) == []


def test_kill_9_keeps_the_last_flushed_index(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch
        from autofreeze_ext.cache import ActivationCache
        c = ActivationCache({str(tmp_path)!r}, memory_budget=0, fingerprint="k")
        g = torch.Generator().manual_seed(0)
        for i in range(40):
            c.put([i], 1, torch.randn(1, 16, 32, generator=g))
            if i == 19:
                c.flush()
        os.kill(os.getpid(), signal.SIGKILL)   # records 20..39 may be half written
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path.parent)
    assert p.returncode == -signal.SIGKILL
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 32, generator=g) for _ in range(40)]
    with disk_cache(tmp_path, fingerprint="k") as c:
        got = c.get(range(40))
        assert set(range(20)) <= set(got)
        assert all(torch.equal(t, xs[i]) for i, (d, t) in got.items())


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot use"):
        ActivationCache(str(blocker / "cache"))


def test_ram_only_cache_needs_no_path():
    c = ActivationCache(None, memory_budget="1MiB")
    x = torch.randn(3, 4, 5)
    assert c.put([7, 8, 9], 1, x) == 3
    got = c.get([9, 7, 1])
    assert torch.equal(got[9][1], x[2]) and torch.equal(got[7][1], x[0]) and 1 not in got
    assert c.info()["disk"] == "no disk tier"


def test_crc32c_check_value():
    from autofreeze_ext import _C

    assert _C.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert _C.crc32c(bytes(range(256)) * 33) == _C.crc32c(bytearray(bytes(range(256)) * 33))


def test_backend_info_reports_cache_io():
    io = backend_info()["cache_io"]
    assert set(io) >= {"uring_compiled", "crc32c"}


def test_record_store_compiles_against_kernel_headers_without_statx_dioalign():
    """Kernel headers older than 6.1 lack STATX_DIOALIGN: the store must still build (it then
    probes O_DIRECT by trying it)."""
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "csrc")
    src = os.path.join(root, "io", "direct_io.cpp")  # the store's direct-I/O probe
    if not os.path.exists(src):
        pytest.skip("sources not in this checkout")
    p = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-DAUTOFREEZE_TEST_OLD_KERNEL_HEADERS", f"-I{root}",
                        f"-I{os.path.join(root, 'io')}", src], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


def test_a_record_of_another_run_is_never_served(tmp_path):
    """Each record carries its producer's run tag (a hash of the fingerprint). Run B's index
    pointing at run A's records (a segment copied over, as two runs writing one folder would
    leave it) passes every other check (each record is self-consistent): the tag alone makes
    them misses, never A's data."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    xs_a, xs_b = rows(4, seq=(16,), seed=1), rows(4, seq=(16,), seed=2)
    for d, fp, xs in ((a_dir, "run-a", xs_a), (b_dir, "run-b", xs_b)):
        with disk_cache(d, fingerprint=fp) as c:
            put_rows(c, range(4), 2, xs)
            c.flush()
    (seg_a,), (seg_b,) = segments(a_dir), segments(b_dir)
    assert os.path.getsize(seg_a) == os.path.getsize(seg_b)
    with open(seg_a, "rb") as src, open(seg_b, "r+b") as dst:
        dst.write(src.read())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with disk_cache(b_dir, fingerprint="run-b") as c:
            assert c.depths(range(4)) == [2] * 4  # B's index still lists them
            got = c.get(range(4))
            c.plan_epoch([[0, 1], [2, 3]])
            got.update(c.get([0, 1]))
            got.update(c.get([2, 3]))
            assert got == {} and c.counters()["disk"]["reads_corrupt"] == 4
