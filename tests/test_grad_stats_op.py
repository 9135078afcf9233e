"""The fused gradient-statistics op: compiled kernels against the pure-PyTorch reference."""
import subprocess
import sys

import pytest
import torch

import autofreeze_ext as af
from autofreeze_ext import _backend
from autofreeze_ext.ops.grad_stats import reference_grad_stats

from conftest import requires_gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [0, 1, 3, 17, 1000, 65535, 65536, 65537, 200_003]


def _case(sizes, dtype, device="cpu", nblocks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(n, generator=g).to(dtype=dtype, device=device) for n in sizes]
    accs = [torch.randn(n, generator=g).to(device) for n in sizes]
    ids = [i % nblocks for i in range(len(sizes))]
    return accs, grads, ids


def _both(accs, grads, ids, nb, **kw):
    a_ref = [a.clone() for a in accs]
    ours = af.grad_stats(accs, grads, ids, nb, **kw)
    ref = reference_grad_stats(a_ref, list(grads), ids, nb, kw.get("norm", "l2"), kw.get("compute_norms", True),
                               kw.get("zero_after", False))
    return ours, ref, accs, a_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("zero_after", [False, True])
def test_matches_reference(dtype, norm, zero_after):
    accs, grads, ids = _case(SIZES, dtype)
    ours, ref, a1, a2 = _both(accs, grads, ids, 3, norm=norm, zero_after=zero_after)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for x, y in zip(a1, a2):  # accumulators bit-identical: one fp32 add per element either way
        assert torch.equal(x, y)
    if zero_after:
        assert all(not a.any() for a in a1)


def test_accumulate_only_returns_zeros_and_adds():
    accs, grads, ids = _case([10, 70000], torch.bfloat16)
    expect = [a + g.float() for a, g in zip(accs, grads)]
    out = af.grad_stats(accs, grads, ids, 3, compute_norms=False)
    assert torch.equal(out, torch.zeros(3))
    for a, e in zip(accs, expect):
        assert torch.equal(a, e)


def test_norm_only_without_grads():
    accs, _, ids = _case([5, 100_000, 7], torch.float32)
    ours = af.grad_stats([a.clone() for a in accs], None, ids, 3)
    ref = reference_grad_stats([a.clone() for a in accs], [], ids, 3, "l2", True, False)
    torch.testing.assert_close(ours, ref)


def test_many_tensors():
    sizes = [int(s) for s in torch.randint(0, 3000, (2500,))]
    accs, grads, ids = _case(sizes, torch.float32, nblocks=37)
    ours, ref, a1, a2 = _both(accs, grads, ids, 37)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(a1, a2))


def test_known_values():
    accs = [torch.zeros(4), torch.zeros(3)]
    grads = [torch.tensor([3.0, 4.0, 0.0, 0.0]), torch.tensor([-1.0, 2.0, -2.0])]
    l2 = af.grad_stats([a.clone() for a in accs], grads, [0, 1], 2, norm="l2")
    l1 = af.grad_stats([a.clone() for a in accs], grads, [0, 1], 2, norm="l1")
    assert l2.tolist() == [5.0, 3.0]
    assert l1.tolist() == [7.0, 5.0]
    both = af.grad_stats([a.clone() for a in accs], grads, [0, 0], 1, norm="l2")
    assert both.item() == pytest.approx(34 ** 0.5)


def test_empty_lists_and_unused_blocks():
    assert af.grad_stats([], [], [], 4).tolist() == [0.0] * 4
    out = af.grad_stats([torch.zeros(3)], [torch.ones(3)], [2], 4)
    assert out.tolist() == pytest.approx([0.0, 0.0, 3 ** 0.5, 0.0])


def test_nonfinite_propagates():
    out = af.grad_stats([torch.zeros(3), torch.zeros(2)], [torch.tensor([1.0, float("nan"), 1.0]), torch.ones(2)],
                        [0, 1], 2)
    assert torch.isnan(out[0]) and out[1].item() == pytest.approx(2 ** 0.5)


def test_deterministic_across_thread_counts():
    accs, grads, ids = _case([300_000, 123_457, 65536 * 3 + 1], torch.float32)
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(af.grad_stats([a.clone() for a in accs], grads, ids, 3))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("bad, match", [
    (lambda a, g: ([a[0].double()], [g[0]], [0], 1), "float32"),
    (lambda a, g: ([a[0]], [g[0].to(torch.int32)], [0], 1), "supported"),
    (lambda a, g: ([a[0]], [g[0][:5]], [0], 1), "elements"),
    (lambda a, g: ([a[0]], [g[0]], [1], 1), "block id"),
    (lambda a, g: ([a[0]], [g[0]], [0, 0], 1), "block ids"),
    (lambda a, g: ([a[0], a[1]], [g[0]], [0, 0], 1), "gradients"),
    (lambda a, g: ([a[2].view(8, 8).t()], [g[2]], [0], 1), "not contiguous"),
    (lambda a, g: ([a[2]], [g[2].view(8, 8).t()], [0], 1), "not contiguous"),
])
def test_bad_input_errors(bad, match):
    a = [torch.zeros(10), torch.zeros(10), torch.zeros(64)]
    g = [torch.ones(10), torch.ones(10), torch.ones(64)]
    args = bad(a, g)
    with pytest.raises((ValueError, RuntimeError), match=match):
        af.grad_stats(*args)
    with pytest.raises((ValueError, RuntimeError), match=match):
        reference_grad_stats(*args, "l2", True, False)


def test_every_call_checks_its_accumulators_even_when_changed_in_place():
    """No check is skipped for a list seen before: a view that now points at the same address
    with another dtype, or a tensor made non-contiguous in place, is refused (the kernel would
    write past it otherwise)."""
    buf = torch.zeros(64)
    accs, grads = [buf.view(64)], [torch.ones(64)]
    af.grad_stats(accs, grads, [0], 1)
    accs[0].data = buf.view(torch.float16)[:64]  # same object, address and size; float16 now
    assert accs[0].data_ptr() == buf.data_ptr() and accs[0].numel() == 64
    with pytest.raises((ValueError, RuntimeError), match="float16"):
        af.grad_stats(accs, grads, [0], 1)
    other = torch.zeros(64)
    af.grad_stats([other], grads, [0], 1)
    other.as_strided_((64,), (0,))  # same object, address and size, no longer contiguous
    with pytest.raises((ValueError, RuntimeError), match="not contiguous"):
        af.grad_stats([other], grads, [0], 1)


def test_bad_norm():
    with pytest.raises((ValueError, RuntimeError), match="norm"):
        af.grad_stats([torch.zeros(2)], [torch.ones(2)], [0], 1, norm="linf")


def test_opcheck():
    accs, grads, ids = _case([3, 70_000, 0], torch.bfloat16)
    for compute, zero in ((True, False), (False, False), (True, True)):
        torch.library.opcheck(torch.ops.autofreeze.grad_stats.default,
                              ([a.clone() for a in accs], grads, ids, 3, "l2", compute, zero))


def test_torch_compile_fullgraph():
    accs, grads, ids = _case([10, 1000], torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def interval_step(accs, grads):
        norms = torch.ops.autofreeze.grad_stats(accs, grads, ids, 3, "l2", True, True)
        return norms * 2

    a_ref = [a.clone() for a in accs]
    out = interval_step(accs, grads)
    ref = reference_grad_stats(a_ref, grads, ids, 3, "l2", True, True)
    torch.testing.assert_close(out, ref * 2)
    assert all(not a.any() for a in accs)


def test_backend_info_reports_compiled_core():
    info = af.backend_info()
    assert info["compiled"] is True, info["compiled_error"]
    assert info["grad_stats"]["cpu"] == "cpp"
    assert info["cpu_threads"].startswith(("openmp-team:", "own-pool"))


def _run_python(code, tmp_path, **env_extra):
    """Run ``code`` in a fresh interpreter outside the source tree (so the installed package is
    the one imported) and return its stdout."""
    env = {**__import__("os").environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_own_thread_pool_matches(tmp_path):
    """The fallback pool (no OpenMP runtime) gives the same results."""
    code = ("import torch, autofreeze_ext as af\n"
            "from autofreeze_ext.ops.grad_stats import reference_grad_stats as r\n"
            "assert af.backend_info()['cpu_threads'] == 'own-pool'\n"
            "torch.manual_seed(0)\n"
            "a=[torch.randn(n) for n in (5,200000,70000)]; g=[torch.randn(n) for n in (5,200000,70000)]\n"
            "b=[x.clone() for x in a]\n"
            "o=af.grad_stats(a,g,[0,1,1],2); e=r(b,g,[0,1,1],2,'l2',True,False)\n"
            "torch.testing.assert_close(o,e); assert all(torch.equal(x,y) for x,y in zip(a,b))\n"
            "print('ok')\n")
    assert "ok" in _run_python(code, tmp_path, AUTOFREEZE_CPU_THREADS="own")


def test_import_without_compiled_core(tmp_path):
    code = ("import autofreeze_ext as af, torch\n"
            "i = af.backend_info(); assert i['compiled'] is False and i['grad_stats']['cpu'] == 'reference', i\n"
            "out = af.grad_stats([torch.zeros(2)], [torch.ones(2)], [0], 1); assert abs(out.item() - 2**0.5) < 1e-6\n"
            "print('ok')\n")
    assert "ok" in _run_python(code, tmp_path, AUTOFREEZE_FORCE_REFERENCE="1")


def test_compiled_core_does_not_link_torch():
    path = _backend._C.__file__
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    assert out.returncode == 0
    for lib in ("libtorch", "libc10", "libcudart.so"):
        assert lib not in out.stdout, f"{path} links {lib}:\n{out.stdout}"


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_cuda_matches_reference(dtype, norm):
    assert af.backend_info()["grad_stats"]["cuda"] == "cuda"
    sizes = SIZES + [int(s) for s in torch.randint(0, 5000, (2100,))] + [3_000_001]
    accs, grads, ids = _case(sizes, dtype, device="cuda", nblocks=13)
    for zero in (False, True):
        a1 = [a.clone() for a in accs]
        a2 = [a.clone() for a in accs]
        ours = af.grad_stats(a1, grads, ids, 13, norm=norm, zero_after=zero)
        ref = reference_grad_stats(a2, grads, ids, 13, norm, True, zero)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        assert all(torch.equal(x, y) for x, y in zip(a1, a2))


@requires_gpu
@pytest.mark.gpu
def test_cuda_runs_on_current_stream():
    """Captured into a CUDA graph on a side stream: only work queued on the capturing (current)
    stream is recorded, so the replay updates the accumulators only if the kernel was launched
    on torch's current stream (a launch on another stream errors or is left out)."""
    accs, grads, ids = _case([1 << 20] * 4, torch.float32, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        af.grad_stats(accs, grads, ids, 3, compute_norms=False)
    before = [a.clone() for a in accs]
    g.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b + gr) for a, b, gr in zip(accs, before, grads))
