import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def tiny_clip():
    """A seeded, randomly initialised open_clip ViT (32x32 input, 32-d embedding)."""
    from pyvlmx.models import load_model

    return load_model("open_clip:pyvlmx-tiny-vit", seed=0)
