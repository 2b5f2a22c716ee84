import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Mark CUDA tests with @needs_cuda (or @pytest.mark.needs_cuda): they are
# skipped without a GPU, and `pytest -m needs_cuda` selects exactly them.
needs_cuda = pytest.mark.needs_cuda


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_clip():
    """A seeded, randomly initialised open_clip ViT (32x32 input, 32-d embedding)."""
    from pyvlmx.models import load_model

    return load_model("open_clip:pyvlmx-tiny-vit", seed=0)


@pytest.fixture(scope="session")
def default_model():
    """The real offline default (conse-efficientnet-lite0), loaded once per session (~10 s on CPU).

    Shared: tests that change an attribute (top_t, check_inputs) must restore it.
    """
    from pyvlmx.models import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def samples():
    """The embedded sample photos at 224x224, the default model's size (installed on first use)."""
    from pyvlmx.data import load_dataset

    return load_dataset("samples", 224)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (tiny shapes gain nothing from more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
