"""ImageBind adapter (vision and text modalities) through Meta's own model code.

Install the optional extra: ``pip install --no-deps -r requirements-imagebind.txt``
(``imagebind-unofficial`` 0.1.1 on PyPI is a verbatim copy of
facebookresearch/ImageBind's ``imagebind`` package, CC BY-NC-SA 4.0 like the
original; ``--no-deps`` because its metadata pulls torchaudio, pytorchvideo
and decord, which the vision and text modalities do not use).

Names:
    ``imagebind:huge``        the released ImageBind (ViT-H/14 image tower,
                              1024-d embedding, 224x224 input).
    ``imagebind:pyvlmx-tiny`` the same model class with tiny sizes, for
                              offline tests (random weights unless given).
Size overrides (``vision_embed_dim``, ``vision_num_blocks``, ``vision_num_heads``,
``text_embed_dim``, ``text_num_blocks``, ``text_num_heads``, ``out_embed_dim``,
``kernel_size``) may be passed as keyword arguments to build any other size.

Weights: ``pretrained`` is a path to a checkpoint file (the released one is
``imagebind_huge.pth``, which the package's ``imagebind_huge(pretrained=True)``
downloads from https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth on a
machine with a network); only the vision and text entries are read, so a full
six-modality checkpoint and one written by :func:`save_checkpoint` both load.
``pretrained=None`` gives a seeded random initialisation.  Nothing is downloaded.

Preprocessing (ImageBind's ``data.load_and_transform_vision_data``): bicubic
resize to 224, centre crop, OpenAI CLIP mean/std; the mean/std step lives in
the wrapper so pixels stay in [0, 1].  Text uses the package's BPE tokenizer
(``bpe/bpe_simple_vocab_16e6.txt.gz``, shipped in the wheel) with 77 tokens.
ImageBind's text head multiplies the unit text embedding by a learnt scale
(``exp(log_logit_scale)`` clipped at 100); that scale is this wrapper's
``logit_scale`` and the embedding is returned unit-norm.

Only ``imagebind.models`` is imported: the package's top-level ``__init__``
imports its audio/video data loaders (torchaudio, pytorchvideo,
``pkg_resources``), which fail on current torchvision/setuptools and are not
needed here, so :func:`_imagebind_model` registers the package without running
that ``__init__``.

Example:
    >>> from pyvlmx.models import load_model
    >>> m = load_model("imagebind:pyvlmx-tiny", seed=0)
    >>> m.encode_image(torch.rand(2, 3, 224, 224)).shape
    torch.Size([2, 24])
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from pyvlmx.models.base import VisionLanguageModel, load_state_dict_file, save_state_dict
from pyvlmx.models.registry import ModelFamily, register_family

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
MODALITIES = ("vision", "text")
_DEPENDENCIES = ("einops", "iopath", "ftfy", "regex", "timm")

# Sizes of the vision/text towers.  "huge" is imagebind_huge() in the package.
CONFIGS: dict[str, dict] = {
    "huge": dict(vision_embed_dim=1280, vision_num_blocks=32, vision_num_heads=16,
                 text_embed_dim=1024, text_num_blocks=24, text_num_heads=16,
                 out_embed_dim=1024, kernel_size=(2, 14, 14)),
    "pyvlmx-tiny": dict(vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=2,
                        text_embed_dim=32, text_num_blocks=2, text_num_heads=2,
                        out_embed_dim=24, kernel_size=(2, 32, 32)),
}
# The modalities this adapter drops are built at these sizes and then deleted,
# so building "huge" does not allocate the audio/depth/thermal/IMU towers.
_UNUSED_TOWERS = dict(audio_embed_dim=8, audio_num_blocks=1, audio_num_heads=1,
                      depth_embed_dim=8, depth_num_blocks=1, depth_num_heads=1,
                      thermal_embed_dim=8, thermal_num_blocks=1, thermal_num_heads=1,
                      imu_embed_dim=8, imu_num_blocks=1, imu_num_heads=1)


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _available() -> str | None:
    pkg = _package_dir()
    if pkg is None:
        return "the imagebind package is not installed"
    if not (pkg / "models" / "imagebind_model.py").is_file():
        return (f"{pkg} has no models/imagebind_model.py (the PyPI 'imagebind' 0.0.1.dev0 "
                f"is an empty placeholder; install imagebind-unofficial)")
    missing = [d for d in _DEPENDENCIES if importlib.util.find_spec(d) is None]
    if missing:
        return f"imagebind needs {missing} installed"
    return None


def _imagebind_model():
    """Import ``imagebind.models.imagebind_model`` without the package's top-level ``__init__``."""
    name = "imagebind.models.imagebind_model"
    if name in sys.modules:
        return sys.modules[name]
    if "imagebind" not in sys.modules:
        spec = importlib.util.find_spec("imagebind")
        if spec is None:
            raise ImportError("the imagebind package is not installed (pip install --no-deps "
                              "-r requirements-imagebind.txt)")
        pkg = importlib.util.module_from_spec(spec)  # a package object; __init__ is not executed
        sys.modules["imagebind"] = pkg
    return importlib.import_module(name)


def bpe_path() -> Path:
    """The BPE vocabulary shipped inside the imagebind package."""
    pkg = _package_dir()
    path = None if pkg is None else pkg / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    if path is None or not path.is_file():
        raise FileNotFoundError(f"imagebind's BPE vocabulary is missing (looked for {path}); "
                                f"reinstall imagebind-unofficial")
    return path


class ImageBindVisionText(VisionLanguageModel):
    """ImageBind's vision and text towers behind the pyvlmx interface.

    Args:
        model: an ``imagebind.models.imagebind_model.ImageBindModel`` (other
            modalities may be absent).
        tokenizer: the package's ``SimpleTokenizer``.
        arch: config name, for reports.
        pretrained: checkpoint path or None.
    """

    family = "imagebind"

    def __init__(self, model: torch.nn.Module, tokenizer, arch: str, pretrained: str | None):
        out_dim = model.modality_heads["vision"][-1].out_features
        scaler = model.modality_postprocessors["text"][1]
        scale = float(torch.clip(scaler.log_logit_scale.detach().exp(), max=scaler.max_logit_scale))
        super().__init__(image_size=IMAGE_SIZE, embed_dim=out_dim, logit_scale=scale,
                         mean=CLIP_MEAN, std=CLIP_STD)
        self.imagebind = model
        self.tokenizer = tokenizer
        self.arch = arch
        self.pretrained = pretrained

    def _tower(self, modality: str, value: torch.Tensor) -> torch.Tensor:
        # ImageBindModel.forward for one modality, minus the postprocessor
        # (the base class normalises; the text scale is our logit_scale).
        m = self.imagebind
        pre = m.modality_preprocessors[modality](**{modality: value})
        feats = m.modality_trunks[modality](**pre["trunk"])
        return m.modality_heads[modality](feats, **pre["head"]).float()

    def _encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        return self._tower("vision", normalized.to(self.dtype))

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        if tokens.dim() == 1:  # SimpleTokenizer returns a 1-D row for a single string
            tokens = tokens.unsqueeze(0)
        return self._tower("text", tokens.to(self.device))


def load_imagebind(arch: str, pretrained: str | None = None, device="cpu", seed: int | None = 0,
                   **overrides) -> ImageBindVisionText:
    """Build ``imagebind:<arch>`` (vision and text towers).

    Args:
        arch: ``huge`` or ``pyvlmx-tiny`` (see ``CONFIGS``).
        pretrained: path to a checkpoint state-dict file, or None for random weights.
        seed: seed for the random initialisation (ignored when loading weights).
        **overrides: tower sizes replacing those of ``arch``.
    """
    if arch not in CONFIGS:
        raise ValueError(f"unknown imagebind architecture {arch!r}; known: {sorted(CONFIGS)}")
    unknown = sorted(set(overrides) - set(CONFIGS[arch]))
    if unknown:
        raise ValueError(f"imagebind:{arch}: unknown size overrides {unknown}; "
                         f"valid: {sorted(CONFIGS[arch])}")
    if pretrained is not None and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"imagebind:{arch}: pretrained={pretrained!r} is not a file; pass the path "
                                f"of a checkpoint such as imagebind_huge.pth")
    sizes = {**CONFIGS[arch], **overrides}
    if isinstance(sizes["kernel_size"], list):
        sizes["kernel_size"] = tuple(sizes["kernel_size"])
    patch = sizes["kernel_size"][1:]
    if any(IMAGE_SIZE % k for k in patch):
        raise ValueError(f"imagebind:{arch}: kernel_size {sizes['kernel_size']} must tile {IMAGE_SIZE}x{IMAGE_SIZE}")
    ib = _imagebind_model()
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    with torch.random.fork_rng(devices=[]):
        if pretrained is None and seed is not None:
            torch.manual_seed(seed)
        model = ib.ImageBindModel(**sizes, **_UNUSED_TOWERS)
    for group in (model.modality_preprocessors, model.modality_trunks, model.modality_heads,
                  model.modality_postprocessors):
        for key in [k for k in group.keys() if k not in MODALITIES]:
            del group[key]
    if pretrained is not None:
        state = load_state_dict_file(pretrained, model=f"imagebind:{arch}")
        state = {k: v for k, v in state.items() if k.split(".")[1:2] and k.split(".")[1] in MODALITIES}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(f"imagebind:{arch}: checkpoint {pretrained} does not match the "
                               f"{arch} sizes {sizes}: {exc}") from exc
    model.eval()
    tokenizer = SimpleTokenizer(bpe_path=str(bpe_path()))
    return ImageBindVisionText(model, tokenizer, arch, pretrained)


def save_checkpoint(model: ImageBindVisionText, path: str | os.PathLike) -> Path:
    """Save the vision/text weights as a state-dict file that ``pretrained=path`` loads."""
    return save_state_dict(model.imagebind, path)


register_family(ModelFamily(
    name="imagebind",
    loader=load_imagebind,
    list_archs=lambda: sorted(CONFIGS),
    requires="imagebind-unofficial (pip install --no-deps -r requirements-imagebind.txt) + einops, iopath, ftfy, regex, timm",
    available=_available,
    description="Meta ImageBind, vision and text modalities; pretrained = checkpoint file "
                "(imagebind_huge.pth), None = seeded random weights",
))
