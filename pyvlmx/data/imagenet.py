"""The 1000 ImageNet-1k classes: index, WordNet id, readable name.

Read from ``imagenet_classes.json`` next to this file.  The readable names are
the cleaned list used for CLIP's zero-shot ImageNet evaluation (Radford et al.,
"Learning Transferable Visual Models From Natural Language Supervision",
2021; copied from open_clip 3.3.0 ``zero_shot_metadata.IMAGENET_CLASSNAMES``),
the WordNet ids and lemmas from timm 1.0.31 (``timm/data/_info``).  Two pairs
of classes share a readable name in that list (``missile``: 657 and 744;
``sunglasses``: 836 and 837), as in CLIP.

Example:
    >>> from pyvlmx.data.imagenet import IMAGENET_CLASSNAMES, wnid_to_name
    >>> IMAGENET_CLASSNAMES[281], wnid_to_name("n01440764")
    ('tabby cat', 'tench')
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

_JSON = Path(__file__).resolve().parent / "imagenet_classes.json"
WNID_RE = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def _table() -> list[dict]:
    with open(_JSON, encoding="utf-8") as f:
        classes = json.load(f)["classes"]
    if len(classes) != 1000 or [c["index"] for c in classes] != list(range(1000)):
        raise RuntimeError(f"{_JSON} is damaged: expected 1000 classes indexed 0..999")
    return classes


IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(c["name"] for c in _table())
IMAGENET_WNIDS: tuple[str, ...] = tuple(c["wnid"] for c in _table())
IMAGENET_LEMMAS: tuple[str, ...] = tuple(c["lemmas"] for c in _table())
_WNID_INDEX = {w: i for i, w in enumerate(IMAGENET_WNIDS)}


def wnid_to_index(wnid: str) -> int:
    """ImageNet-1k index of a WordNet id (``n01440764`` -> 0)."""
    try:
        return _WNID_INDEX[wnid]
    except KeyError:
        raise ValueError(f"{wnid!r} is not one of the 1000 ImageNet-1k WordNet ids") from None


def wnid_to_name(wnid: str) -> str:
    """Readable class name of an ImageNet-1k WordNet id (``n01440764`` -> ``tench``)."""
    return IMAGENET_CLASSNAMES[wnid_to_index(wnid)]


def is_imagenet_wnid(name: str) -> bool:
    """True for the WordNet id of one of the 1000 ImageNet-1k classes."""
    return bool(WNID_RE.match(name)) and name in _WNID_INDEX
