"""Model registry: ``list_models()``, ``load_model(name, ...)``.

A name is ``family:arch`` (``open_clip:ViT-B-32``) or a plain name that one
family claims (``conse-efficientnet-lite0``).  Families register a loader with
:func:`register_family`; the CLI and the Python API read the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

DEFAULT_MODEL = "conse-efficientnet-lite0"


@dataclass
class ModelFamily:
    """A family of models one adapter loads.

    Attributes:
        name: prefix before ``:`` in model names (``open_clip``).
        loader: ``loader(arch, pretrained=..., device=..., **kw) -> VisionLanguageModel``.
        list_archs: returns the architectures (names after the prefix) it knows.
        requires: what must be pip-installed, for ``pyvlmx list-models``.
        available: returns None when usable, else why not.
        description: one line for listings.
        plain_names: names accepted without the ``family:`` prefix.
    """

    name: str
    loader: Callable
    list_archs: Callable[[], list[str]]
    requires: str
    available: Callable[[], str | None]
    description: str
    plain_names: tuple[str, ...] = field(default_factory=tuple)


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> None:
    _FAMILIES[family.name] = family


def families() -> dict[str, ModelFamily]:
    _import_adapters()
    return dict(_FAMILIES)


def _import_adapters() -> None:
    # Adapters register themselves on import; each imports its heavy
    # dependency lazily, so listing never needs them installed.
    from pyvlmx.models import adapters  # noqa: F401


def list_models(available_only: bool = False) -> list[str]:
    """All model names ``load_model`` accepts, as ``family:arch``."""
    names = []
    for fam in families().values():
        if available_only and fam.available() is not None:
            continue
        if fam.available() is not None:
            names.append(f"{fam.name}:*")
            continue
        names += [f"{fam.name}:{a}" for a in fam.list_archs()]
    return names


def _resolve(name: str) -> tuple[ModelFamily, str]:
    fams = families()
    if name in ("default", ""):
        name = DEFAULT_MODEL
    if ":" in name:
        prefix, arch = name.split(":", 1)
        fam = fams.get(prefix)
        if fam is None:
            raise ValueError(f"unknown model family {prefix!r} in {name!r}; "
                             f"families: {', '.join(sorted(fams))}")
        return fam, arch
    for fam in fams.values():
        if name in fam.plain_names:
            return fam, name
    plain = sorted(n for f in fams.values() for n in f.plain_names)
    raise ValueError(f"unknown model {name!r}; use 'family:arch' with a family in "
                     f"{sorted(fams)}, or one of {plain} (pyvlmx list-models shows all)")


def load_model(name: str = DEFAULT_MODEL, pretrained: str | None = None,
               device: str | torch.device = "cpu", **kwargs):
    """Load a model by registry name.

    Args:
        name: ``family:arch`` or a plain name (``default`` is the offline model).
        pretrained: family-specific weights: an open_clip pretrained tag, a
            local checkpoint file, a Hugging Face id or folder; None means the
            family's default (random init where the family has no default).
        device: where to put the model.

    Returns:
        a :class:`~pyvlmx.models.base.VisionLanguageModel` in eval mode with
        gradients disabled on its parameters (pixels still get gradients).
    """
    fam, arch = _resolve(name)
    why = fam.available()
    if why is not None:
        raise RuntimeError(f"model family {fam.name!r} is not usable: {why} (needs {fam.requires})")
    model = fam.loader(arch, pretrained=pretrained, device=device, **kwargs)
    model.name = arch if arch in fam.plain_names else f"{fam.name}:{arch}"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)
