"""The one interface every model in pyvlmx speaks.

Images cross this boundary as float pixels in [0, 1] of shape (B, 3, H, W);
normalisation (mean/std, resizing is the caller's job) lives inside the
wrapper, so that every budget, PSNR and SSIM later in pyvlmx is in pixels.
Embeddings come back unit-norm.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyvlmx.errors import UserError


def check_pixels(pixels: torch.Tensor, image_size: int | None = None, name: str = "pixels") -> None:
    """Raise a ValueError unless ``pixels`` is a float (B, 3, H, W) batch in [0, 1]."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"expected {name} as a torch.Tensor, got {type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected {name} of shape (B, 3, H, W) in [0, 1], got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise ValueError(f"expected float {name} in [0, 1], got dtype {pixels.dtype}")
    if image_size is not None and tuple(pixels.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"expected {name} of spatial size {image_size}x{image_size}, got "
            f"{tuple(pixels.shape[-2:])}; resize and centre-crop with pyvlmx.data first")
    if pixels.numel():
        with torch.no_grad():
            lo, hi = float(pixels.min()), float(pixels.max())
        if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # also catches NaN
            raise ValueError(f"expected {name} in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


def save_state_dict(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``module.state_dict()`` to ``path`` (parents created); returns the path.

    The adapters' ``save_checkpoint`` functions call this with the wrapped
    network, so the file loads back through ``load_model(..., pretrained=path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


# --- checkpoint files ---------------------------------------------------------------------

STATE_DICT_EXPECTED = ("a state dict (parameter name -> tensor), as torch.save(model.state_dict(), path) or the "
                       "adapter's save_checkpoint writes")


class CheckpointError(UserError):
    """A checkpoint file that is unreadable, refused as unsafe, or of the wrong structure.

    The message is one line: the model, the file, the reason and what is expected.
    """


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a checkpoint: ``*/data.pkl`` of a torch.save zip, else the file itself."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            return z.read(names[0]) if names else b""
    return path.read_bytes()


def _unsafe_globals(path: Path) -> list[str]:
    """Globals the pickle imports that ``weights_only`` loading does not allow, found without running it.

    ``pickletools.genops`` only parses opcodes; nothing in the file is executed.
    Empty when the stream does not parse as a pickle (then it is no checkpoint at all).
    """
    import pickletools

    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except ImportError:  # older/newer torch: torch's own names and plain containers
        allowed = {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.bytearray"}
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(_pickle_bytes(path)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                           "BINSTRING", "STRING"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "an unnamed global")
    except Exception:  # noqa: BLE001 - any parse failure means: not a pickle, so nothing it could run
        return []
    return [g for g in dict.fromkeys(found) if g not in allowed and not g.startswith("torch.")]


def load_state_dict_file(path: str | os.PathLike, *, model: str, expected: str = STATE_DICT_EXPECTED,
                         unwrap: tuple[str, ...] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``) as a state dict, or raise one clear line.

    Args:
        path: the checkpoint file.
        model: the model it is for (``open_clip:ViT-B-32``), for the message.
        expected: what the file should hold, for the message.
        unwrap: keys under which a dict may nest the state dict (``{"state_dict": {...}}``).

    Returns:
        the state dict (str keys, tensor values) on the CPU.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a checkpoint torch can read; refused because the
            pickle would run code (the globals it imports are named); or a
            file that holds something other than a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{model}: checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's unpickler raises many types; each becomes one line
        err = diagnose_checkpoint(path, exc, model=model, expected=expected)
        if err is None:
            raise
        raise err from exc
    return _as_state_dict(obj, path, model=model, expected=expected, unwrap=unwrap)


def _as_state_dict(obj, path: Path, *, model: str, expected: str, unwrap: tuple[str, ...]):
    for key in unwrap:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        n = f" of {len(obj)} item(s)" if hasattr(obj, "__len__") else ""
        raise CheckpointError(f"{model}: checkpoint {path}: wrong structure: it holds a {type(obj).__name__}{n}; "
                              f"expected {expected}")
    bad = next(((k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None or not obj:
        what = "an empty dict" if not obj else f"a dict whose entry {bad[0]!r} is of type {type(bad[1]).__name__}"
        raise CheckpointError(f"{model}: checkpoint {path}: wrong structure: it holds {what}, not tensors; "
                              f"expected {expected}")
    return obj


def diagnose_checkpoint(path: str | os.PathLike, exc: BaseException | None = None, *, model: str,
                        expected: str = STATE_DICT_EXPECTED) -> CheckpointError | None:
    """The one-line :class:`CheckpointError` for a checkpoint that failed to load.

    For adapters whose library loads the file itself (open_clip): call it
    when that load fails, with the exception.  The file is examined safely
    (``weights_only``, and a parse of the pickle's opcodes that runs nothing).

    Returns:
        the error to raise, or None when the file is a sound state dict and
        ``exc`` is not a key/shape mismatch (the failure lies elsewhere:
        re-raise ``exc``).
    """
    path = Path(path)
    code = _unsafe_globals(path)
    if code:
        names = ", ".join(code[:3]) + (f" and {len(code) - 3} more" if len(code) > 3 else "")
        return CheckpointError(f"{model}: checkpoint {path}: refused: the pickle would run code (it calls {names}); "
                               f"pyvlmx loads with weights_only=True, so only tensors and plain containers load; "
                               f"expected {expected}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as load_exc:  # noqa: BLE001 - summarised below
        detail = str(load_exc)
        if "WeightsUnpickler error:" in detail:  # torch's advice about weights_only=False does not apply
            detail = detail.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        detail = " ".join(detail.split())[:160]
        detail = f"{type(load_exc).__name__}: {detail}" if detail else type(load_exc).__name__
        return CheckpointError(f"{model}: checkpoint {path}: not a checkpoint (torch.load cannot read it: "
                               f"{detail}); expected {expected}")
    try:
        _as_state_dict(obj, path, model=model, expected=expected, unwrap=("state_dict",))
    except CheckpointError as structural:
        return structural
    text = str(exc).strip() if exc is not None else ""
    if isinstance(exc, RuntimeError) and "loading state_dict" in text:
        return CheckpointError(f"{model}: checkpoint {path}: wrong structure: a state dict, but not one for this "
                               f"model ({' '.join(text.split())[:240]}); expected {expected}")
    return None  # a sound state dict: the failure lies elsewhere


class VisionLanguageModel(nn.Module):
    """Base class: an image tower and a text tower that share one embedding space.

    Subclasses implement :meth:`_encode_image` (normalised pixels in, raw
    features out) and :meth:`_encode_text`; this class handles the pixel
    normalisation, unit norms, input checks and the text-embedding cache.

    Attributes:
        name: registry name the model was loaded under.
        image_size: side of the square input the image tower expects.
        embed_dim: dimension of the shared embedding.
        logit_scale: temperature applied to cosine similarities for zero-shot
            logits (CLIP's ``exp(logit_scale)``; 100 for OpenAI CLIP).
        mean, std: per-channel normalisation applied inside ``encode_image``.
    """

    name: str = "model"
    family: str = "base"

    def __init__(self, image_size: int, embed_dim: int, logit_scale: float,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.image_size = int(image_size)
        self.embed_dim = int(embed_dim)
        self.logit_scale = float(logit_scale)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self._text_cache: dict[tuple, torch.Tensor] = {}
        self.check_inputs = True

    # --- to implement -------------------------------------------------------
    def _encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # --- public interface ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = self.pixel_mean.to(device=pixels.device, dtype=pixels.dtype)
        std = self.pixel_std.to(device=pixels.device, dtype=pixels.dtype)
        return (pixels - mean) / std

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed images.

        Args:
            pixels: (B, 3, H, W) float in [0, 1], H = W = ``image_size``.
            normalize: return unit-norm embeddings (default) or raw features.

        Returns:
            (B, embed_dim) embeddings, differentiable with respect to ``pixels``.
        """
        if self.check_inputs:
            check_pixels(pixels, self.image_size)
        feats = self._encode_image(self.normalize_pixels(pixels))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_image(pixels)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Embed strings: (len(texts), embed_dim), unit norm by default."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings, got a single str")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        feats = self._encode_text(texts)
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def class_embeddings(self, classnames: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """Zero-shot classifier weights, cached per (classes, templates).

        Each class embedding is the renormalised mean over templates of the
        unit-norm text embeddings of ``template.format(classname)``, as in
        CLIP's zero-shot ImageNet protocol.

        Returns:
            (C, embed_dim) unit-norm class embeddings.
        """
        key = (tuple(classnames), tuple(templates), str(self.device))
        cached = self._text_cache.get(key)
        if cached is not None:
            return cached
        rows = []
        for name in classnames:
            emb = self.encode_text([t.format(name) for t in templates])
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
        weights = torch.stack(rows) if rows else torch.empty(0, self.embed_dim, device=self.device)
        self._text_cache[key] = weights
        return weights

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def logits(self, pixels: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``logit_scale * cos(image, class)``: (B, C)."""
        return self.logit_scale * self.encode_image(pixels) @ class_weights.t().to(pixels.dtype)

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda() must drop device-bound caches
        self._text_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, image_size={self.image_size}, embed_dim={self.embed_dim}, "
                f"logit_scale={self.logit_scale:g}")
