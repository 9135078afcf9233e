"""The clock decisions read waits for queued CUDA work (tested with synchronize stood in for)."""
import pytest
import torch

from autofreeze_ext import timing

pytestmark = pytest.mark.reference


def test_now_synchronises_a_cuda_device_and_nothing_else(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    timing.now(torch.device("cpu"))
    timing.now(None)
    assert calls == []
    t = timing.now(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)] and isinstance(t, float)


def test_step_and_prefix_timers_read_that_clock():
    import inspect

    from autofreeze_ext.freezing import prefix
    from autofreeze_ext.training import prefix_clock, step

    for mod in (step, prefix, prefix_clock):
        src = inspect.getsource(mod)
        assert "time.perf_counter()" not in src and "now(" in src, mod.__name__


def test_controller_step_times_itself_on_the_synchronised_clock(monkeypatch):
    """The interval step times a speed budget reads, and the statistics time, wait for the
    device's queued work on CUDA: one synchronisation at each end of step()."""
    from autofreeze_ext import FreezeController, GradientNormTest

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = FreezeController(model, opt, GradientNormTest(interval_steps=2), blocks=list(model))
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert calls == []  # a CPU model: no synchronisation
    ctl._clock_device = torch.device("cuda", 0)  # as if the model were on a GPU
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert calls == [torch.device("cuda", 0)] * 2
