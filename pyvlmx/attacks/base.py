"""One base class for attacks, and the registry the CLI and the Python API share.

``list_attacks()`` names every registered attack; ``create_attack(name, model,
**cfg)`` builds one.  An attack registers itself with the
:func:`register_attack` class decorator under its ``name``.

Example:
    >>> from pyvlmx.attacks import create_attack, list_attacks
    >>> "embedding-alignment" in list_attacks()
    True
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Callable

import torch

_ATTACKS: dict[str, type["Attack"]] = {}
_ALIASES: dict[str, str] = {}


class Attack:
    """Base class: an attack owns a model and a configuration, and maps images to images.

    Subclasses set ``name`` (the registry name), ``config_class`` (a dataclass
    holding every option, so that configurations are validated in one place
    and can be written to JSON), and implement :meth:`run`.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        **cfg: fields of ``config_class``; unknown names are a ValueError that
            lists the names that exist.
    """

    name: str = "attack"
    config_class: type | None = None

    def __init__(self, model: torch.nn.Module, **cfg: Any):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "encode_image"):
            raise TypeError(f"{self.name}: expected a VisionLanguageModel (with encode_image), "
                            f"got {type(model).__name__}")
        self.model = model
        self.config = self.make_config(**cfg)

    @classmethod
    def make_config(cls, **cfg: Any):
        if cls.config_class is None:
            if cfg:
                raise ValueError(f"{cls.name}: takes no options, got {sorted(cfg)}")
            return None
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{cls.name}: unknown option(s) {unknown}; options: {sorted(known)}")
        config = cls.config_class(**cfg)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
        return config

    def config_dict(self) -> dict:
        """The configuration as a JSON-able dict (with the attack's name)."""
        out = {"attack": self.name}
        if self.config is not None and is_dataclass(self.config):
            out.update(asdict(self.config))
        return out

    def run(self, images: torch.Tensor, **kwargs):
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, **kwargs):
        return self.run(images, **kwargs)

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config_dict().items() if k != "attack")
        return f"{type(self).__name__}({cfg})"


def register_attack(*aliases: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: register an :class:`Attack` subclass under its ``name`` (and aliases)."""

    def deco(cls: type[Attack]) -> type[Attack]:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise TypeError(f"register_attack: expected an Attack subclass, got {cls!r}")
        _ATTACKS[cls.name] = cls
        for alias in aliases:
            _ALIASES[alias] = cls.name
        return cls

    return deco


def list_attacks() -> list[str]:
    """Names ``create_attack`` accepts (aliases not included)."""
    return sorted(_ATTACKS)


def attack_options(name: str) -> list[dict]:
    """The options of attack ``name``: one dict per field (``name``, ``default``, ``help``, ``choices``).

    Example:
        >>> opts = {o["name"]: o for o in attack_options("embedding-alignment")}
        >>> opts["optimizer"]["default"], opts["optimizer"]["choices"]
        ('sign', ('sign', 'gd', 'adam'))
    """
    cls = get_attack_class(name)
    if cls.config_class is None:
        return []
    base = cls.config_class()  # every option has a default: the instance holds them all
    return [{"name": f.name, "default": getattr(base, f.name), "help": f.metadata.get("help", ""),
             "choices": f.metadata.get("choices")} for f in fields(cls.config_class)]


def get_attack_class(name: str) -> type[Attack]:
    key = _ALIASES.get(name, name)
    cls = _ATTACKS.get(key)
    if cls is None:
        names = sorted(set(_ATTACKS) | set(_ALIASES))
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {close}?)" if close else ""
        raise ValueError(f"unknown attack {name!r}{hint}; attacks: {names}")
    return cls


def create_attack(name: str, model: torch.nn.Module, **cfg: Any) -> Attack:
    """Build a registered attack by name.

    Args:
        name: a name from :func:`list_attacks` (or an alias such as ``align``).
        model: the model to attack.
        **cfg: options of that attack's configuration.

    Returns:
        the attack instance.

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> atk = create_attack("embedding-alignment", m, optimizer="sign", eps=4 / 255)
    """
    return get_attack_class(name)(model, **cfg)
