"""Cache bandwidth vs layer compute: when does reading a cached activation beat recomputing it?

For records shaped like MiniLM-L6 (seq 64/128 x 384) and BERT-base (seq 128/512 x 768) hidden
states, fp16 and fp32, all in one run on the same disk:

* ours: the C++ record store read in random (shuffled-epoch) order through its prefetcher,
  CRC32C-checked, for each backend (io_uring at several queue depths, the pread thread pool,
  buffered I/O);
* fio: io_uring + O_DIRECT random reads of the same segment file with the same block size
  (the record size) at queue depth 16 -- the device's ceiling for this pattern
  (``apt install fio``; skipped when absent);
* one ``torch.save`` file per sample read with ``torch.load`` (the research code's method) and
  one ``.npy`` per sample read with ``numpy.load``, page cache dropped first (fadvise);
* NVIDIA DALI's CPU numpy reader on the same ``.npy`` files in the same order, at each of its
  settings (reader threads 1/2/4, prefetch queue depth 1/4, mmap / plain reads / O_DIRECT), the
  best one in the table (``pip install nvidia-dali-cuda120``; skipped when absent);

next to the forward time per sample of 1..k blocks of the model (packaged MiniLM when
installed, a randomly initialised BERT-base otherwise), giving the break-even number of
frozen blocks above which caching pays, and the share of read time the prefetcher hides
behind a training step.

    python benchmarks/bench_cache.py [--dir /path/on/ssd] [--mib 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, print_table, write_json  # noqa: E402

from autofreeze_ext import _backend  # noqa: E402

_C = _backend._C
CONFIGS = [("minilm", 64, 384), ("minilm", 128, 384), ("bert-base", 128, 768), ("bert-base", 512, 768)]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fill_store(folder: str, n: int, shape, dtype) -> None:
    st = _C.RecordStore(folder, fingerprint="bench", segment_bytes=1 << 40)
    x = torch.randn(shape).to(dtype)
    code = {torch.float32: 0, torch.float16: 1}[dtype]
    for i in range(n):
        st.put(i, 1, code, list(shape), x.data_ptr(), x.numel() * x.element_size())
    st.flush()
    st.close()


def read_ours(folder: str, n: int, order: List[int], batch: int, backend: str, qd: int, direct: str,
              compute_s: float = 0.0) -> Dict[str, float]:
    st = _C.RecordStore(folder, backend=backend, direct=direct, queue_depth=qd, fingerprint="bench")
    for seg in os.listdir(folder):
        if seg.startswith("seg-"):
            drop_cache(os.path.join(folder, seg))
    batches = [order[s:s + batch] for s in range(0, n, batch)]
    t0 = time.perf_counter()
    st.plan(batches, 4)
    waited, nbytes, bad = 0.0, 0, 0
    while True:
        v = st.next()
        if v is None:
            break
        waited += v["wait_s"]
        nbytes += sum(r[6] for r in v["records"])
        bad += sum(r[1] != 0 for r in v["records"])
        st.release(v["slot"])
        if compute_s:
            busy(compute_s)
    dt = time.perf_counter() - t0
    info = st.info()
    st.close()
    assert bad == 0, f"{bad} records failed their checksum"
    return {"s": dt, "bytes": nbytes, "wait_s": waited, "backend": info["backend"], "direct": info["direct"]}


def busy(seconds: float) -> None:
    """Stand-in for a training step: burns CPU (matmuls) for about this long."""
    a = torch.randn(256, 256)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a = torch.tanh(a @ a)


def fio(file: str, bs: int, qd: int) -> float:
    if not shutil.which("fio"):
        return float("nan")
    size = os.path.getsize(file) // bs * bs
    out = subprocess.run(["fio", "--name=r", f"--filename={file}", "--rw=randread", f"--bs={bs}", "--direct=1",
                          "--ioengine=io_uring", f"--iodepth={qd}", f"--size={size}", f"--io_size={size}",
                          "--output-format=json"], capture_output=True, text=True)
    if out.returncode != 0:
        return float("nan")
    job = json.loads(out.stdout)["jobs"][0]["read"]
    return job["bw_bytes"] / 1e9


def per_sample_files(folder: str, n: int, shape, dtype, order: List[int]) -> Dict[str, float]:
    x = torch.randn(shape).to(dtype)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        torch.save(x.clone(), os.path.join(folder, f"{i}.pt"))
        np.save(os.path.join(folder, f"{i}.npy"), x.float().numpy().astype(np.float16 if dtype == torch.float16
                                                                          else np.float32))
    os.sync()
    res = {}
    for kind, load in (("pt", lambda p: torch.load(p)), ("npy", lambda p: np.load(p))):
        for i in range(n):
            drop_cache(os.path.join(folder, f"{i}.{kind}"))
        t0 = time.perf_counter()
        for i in order:
            load(os.path.join(folder, f"{i}.{kind}"))
        res[kind] = time.perf_counter() - t0
    return res


DALI_SETTINGS = [(threads, depth, io) for threads in (1, 2, 4) for depth in (1, 4)
                 for io in ("mmap", "read", "o_direct")]


def dali_read(folder: str, n: int, batch: int, order: List[int]) -> Dict[str, float]:
    """Seconds to read the ``.npy`` files in ``order`` (our random order) with DALI's CPU numpy
    reader, for each of :data:`DALI_SETTINGS` (reader threads, the reader's prefetch queue depth,
    I/O: mmap (DALI's default), plain reads, O_DIRECT); empty without DALI."""
    try:
        from nvidia.dali import fn, pipeline_def  # type: ignore
    except ImportError:
        return {}
    files = [os.path.join(folder, f"{i}.npy") for i in order]
    out = {}
    for threads, depth, io in DALI_SETTINGS:
        @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)
        def pipe():
            return fn.readers.numpy(files=files, random_shuffle=False, prefetch_queue_depth=depth,
                                    dont_use_mmap=io != "mmap", use_o_direct=io == "o_direct", name="r")

        p = pipe()
        p.build()
        for f in files:
            drop_cache(f)
        t0 = time.perf_counter()
        for _ in range(-(-n // batch)):
            p.run()
        out[f"{threads}t/q{depth}/{io}"] = time.perf_counter() - t0
        del p
    return out


def block_forward_s(kind: str, seq: int, k_max: int, batch: int = 32) -> List[float]:
    """Seconds per sample for the forward pass of the first 1..k_max blocks (eval, no grad)."""
    from transformers import BertConfig, BertModel

    model = None
    if kind == "minilm":
        try:
            from autofreeze_ext.training import default_model_path

            model = BertModel.from_pretrained(default_model_path(), local_files_only=True)
        except Exception:
            model = None
    if model is None:
        h = 384 if kind == "minilm" else 768
        model = BertModel(BertConfig(hidden_size=h, num_hidden_layers=k_max, num_attention_heads=12,
                                     intermediate_size=4 * h))
    model.eval()
    ids = torch.randint(1000, 2000, (batch, seq))
    out = []
    with torch.no_grad():
        x = model.embeddings(input_ids=ids)
        for k in range(1, k_max + 1):
            layers = model.encoder.layer[:k]
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                h = x
                for layer in layers:
                    h = layer(h)
                    h = h[0] if isinstance(h, tuple) else h
                best = min(best, time.perf_counter() - t0)
            out.append(best / batch)
    return out


def measure_config(root: str, model: str, seq: int, hidden: int, dname: str, args) -> Dict[str, object]:
    """Every reader on the same records of one shape and dtype, the blocks' forward time and the
    prefetch overlap."""
    dtype = DTYPES[dname]
    shape = (seq, hidden)
    rec = seq * hidden * dtype.itemsize
    n = max(64, args.mib * 2**20 // rec)
    order = list(range(n))
    random.Random(0).shuffle(order)
    folder = os.path.join(root, f"{model}-{seq}-{dname}")
    files_dir = os.path.join(root, f"files-{model}-{seq}-{dname}")
    fill_store(folder, n, shape, dtype)
    seg = next(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("seg-"))
    record_len = -(-(128 + rec) // 4096) * 4096
    r: Dict[str, object] = {"model": model, "seq": seq, "hidden": hidden, "dtype": dname, "samples": n,
                            "record_bytes": rec}
    gb = n * rec / 1e9
    ours = {}
    for backend, qd, direct in [("uring", 1, "auto"), ("uring", 4, "auto"), ("uring", 16, "auto"),
                                ("uring", 64, "auto"), ("threads", 16, "auto"), ("threads", 16, "off")]:
        m = read_ours(folder, n, order, args.batch, backend, qd, direct)
        ours[f"{m['backend']}/qd{qd}/{'direct' if m['direct'] == '1' else 'buffered'}"] = gb / m["s"]
    r["ours_gbps"] = ours
    r["fio_gbps"] = fio(seg, record_len, 16) * rec / record_len  # payload bytes, like ours
    files = per_sample_files(files_dir, n, shape, dtype, order)
    r["torch_load_gbps"] = gb / files["pt"]
    r["numpy_load_gbps"] = gb / files["npy"]
    dali = dali_read(files_dir, n, args.batch, order)
    r["dali_gbps_by_setting"] = {k: gb / v for k, v in dali.items()}
    r["dali_best"] = min(dali, key=dali.get) if dali else None
    r["dali_gbps"] = gb / dali[r["dali_best"]] if dali else None
    fwd = block_forward_s(model, seq, args.blocks, args.batch)
    r["block_forward_ms_per_sample"] = [1e3 * f for f in fwd]
    r["best"] = max(ours, key=ours.get)
    read_s = rec / (ours[r["best"]] * 1e9)
    r["read_ms_per_sample"] = 1e3 * read_s
    r["break_even_blocks"] = next((k + 1 for k, f in enumerate(fwd) if f > read_s), None)
    # prefetch overlap: a "training step" per batch that takes as long as 1 block's forward
    step = fwd[0] * args.batch
    sync = read_ours(folder, n, order, args.batch, "uring", 16, "auto")
    over = read_ours(folder, n, order, args.batch, "uring", 16, "auto", compute_s=step)
    r["prefetch"] = {"step_s": step, "read_alone_s": sync["s"], "exposed_wait_s": over["wait_s"],
                     "hidden_fraction": 1 - over["wait_s"] / max(sync["s"], 1e-9)}
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(files_dir, ignore_errors=True)
    return r


def table_rows(r: Dict[str, object], blocks: int):
    """The main table's row and the overlap table's row of one configuration."""
    ours, best, fio_g, dali = r["ours_gbps"][r["best"]], r["best"], r["fio_gbps"], r["dali_gbps"]
    name = f"{r['model']} {r['seq']}x{r['hidden']} {r['dtype']}"
    row = [name, f"{r['record_bytes'] / 1024:.0f} KiB", f"{ours:.2f} ({best})",
           f"{fio_g:.2f}" if fio_g == fio_g else "-", f"{100 * ours / fio_g:.0f}%" if fio_g == fio_g else "-",
           f"{r['torch_load_gbps']:.2f}", f"{ours / r['torch_load_gbps']:.1f}x", f"{r['numpy_load_gbps']:.2f}",
           f"{dali:.2f} ({r['dali_best']})" if dali else "-", f"{ours / dali:.2f}x" if dali else "-",
           f"{r['read_ms_per_sample']:.3f}", f"{r['block_forward_ms_per_sample'][0]:.3f}",
           str(r["break_even_blocks"] or f">{blocks}")]
    p = r["prefetch"]
    overlap = [name, f"{1e3 * p['step_s']:.1f}", f"{p['read_alone_s']:.3f}", f"{p['exposed_wait_s']:.3f}",
               f"{100 * p['hidden_fraction']:.0f}%"]
    return row, overlap


def print_results(results: List[Dict[str, object]], blocks: int) -> None:
    rows = [table_rows(r, blocks) for r in results]
    print("\nrandom-order reads, GB/s of payload (page cache dropped before each pass):")
    print_table(["records", "size", "ours (best)", "fio", "ours/fio", "torch.load", "ours/torch.load", "numpy.load",
                 "DALI (best setting)", "ours/DALI", "read ms/sample", "1 block fwd ms/sample", "break-even blocks"],
                [r[0] for r in rows])
    print("\nprefetch overlap (io_uring qd16; a CPU-busy step per batch as long as one block's forward):")
    print_table(["records", "step ms", "read alone s", "exposed wait s", "read time hidden"], [r[1] for r in rows])
    print("\nall backends, GB/s:")
    for r in results:
        print(f"  {r['model']} {r['seq']}x{r['hidden']} {r['dtype']}: " +
              ", ".join(f"{k} {v:.2f}" for k, v in r["ours_gbps"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="scratch folder on the disk to test (default: a temp dir)")
    ap.add_argument("--mib", type=int, default=256, help="data per configuration, MiB")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=3, help="forward time of 1..N blocks")
    ap.add_argument("--quick", action="store_true", help="first MiniLM and BERT-base shapes, fp16 only")
    ap.add_argument("--only", default=None, help="configurations whose name contains this, e.g. 'bert-base-512'")
    ap.add_argument("--json", default="benchmarks/results/bench_cache.json")
    args = ap.parse_args()
    if _C is None:
        sys.exit("the compiled core is not built: pip install .")
    root = tempfile.mkdtemp(prefix="afbench-", dir=args.dir)
    configs = [(m, s, h, d) for m, s, h in CONFIGS for d in DTYPES]
    if args.quick:
        configs = [("minilm", 64, 384, "fp16"), ("bert-base", 512, 768, "fp16")]
    if args.only:
        configs = [c for c in configs if args.only in f"{c[0]}-{c[1]}-{c[3]}"]
    results = []
    try:
        for model, seq, hidden, dname in configs:
            results.append(measure_config(root, model, seq, hidden, dname, args))
            print(f"done {model} {seq} {dname}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_results(results, args.blocks)
    write_json(args.json, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
