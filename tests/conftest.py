import pytest
import torch

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_sessionstart(session):
    """The reference pass (``AUTOFREEZE_FORCE_REFERENCE=1 pytest -m reference tests``, run by CI)
    must really run the pure-PyTorch backend: fail at once if the compiled core still loaded."""
    import os

    from autofreeze_ext import backend_info

    if os.environ.get("AUTOFREEZE_FORCE_REFERENCE") == "1":
        info = backend_info()
        assert not info["compiled"] and info["grad_stats"]["cpu"] == "reference", info


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny randomly initialised BERT checkpoint folder (4 blocks) shared by the CLI tests."""
    from models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
