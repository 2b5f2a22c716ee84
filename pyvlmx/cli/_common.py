"""What the subcommands share: the help format, the generated option groups, and input loading.

Options come from the configuration dataclasses
(:func:`pyvlmx.config.add_dataclass_args`); the few that are inputs rather
than configuration (``--image``, ``--out``...) are declared here or in their
command.  :class:`DefaultsHelp` shows every option's default.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

from pyvlmx.config import add_dataclass_args, config_fields, dataclass_from_args
from pyvlmx.models.config import ModelConfig


class DefaultsHelp(argparse.HelpFormatter):
    """Appends ``(default: ...)`` to every option whose help does not show it yet."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)".strip()
        d = action.default
        shown = "off" if d is False else "on" if d is True else "none" if d is None else str(d)
        return f"{text} (default: {shown})".strip()


def add_command(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help, formatter_class=DefaultsHelp)


def only(cls, *names: str) -> tuple[str, ...]:
    """The ``exclude`` that keeps just ``names`` of ``cls``'s fields."""
    return tuple(n for n in config_fields(cls) if n not in names)


# ---------------------------------------------------------------------------- model

def add_model_args(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p.add_argument_group("model"), ModelConfig)


def model_config(args) -> ModelConfig:
    return dataclass_from_args(ModelConfig, args)


def load_model_from_args(args):
    return model_config(args).load()


# ---------------------------------------------------------------------------- attack

def attack_class(name: str = "embedding-alignment"):
    from pyvlmx.attacks import get_attack_class

    return get_attack_class(name).config_class


def add_attack_args(p: argparse.ArgumentParser, name: str = "embedding-alignment", *, exclude=(),
                    defaults_override: dict | None = None) -> None:
    from pyvlmx.attacks import get_attack_class

    cls = get_attack_class(name)
    g = p.add_argument_group(f"attack: {cls.name} (pyvlmx list-attacks)")
    add_dataclass_args(g, cls.config_class, exclude=exclude, defaults_override=defaults_override)


def attack_config(args, name: str = "embedding-alignment", *, exclude=(), defaults_override=None):
    """The attack's config from the options, validated; an L-inf budget above 16/255 warns."""
    from pyvlmx.checks import check_eps

    cls = attack_class(name)
    base = cls(**(defaults_override or {}))
    cfg = named(lambda: dataclass_from_args(cls, args, exclude=exclude, base=base), cls)
    if getattr(cfg, "norm", None) == "linf" and getattr(cfg, "minimal", "off") == "off" and cfg.eps > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            check_eps(cfg.eps)
    return cfg


def _options(cls, prefix: str = "") -> list[tuple[str, str]]:
    """(field, option) of ``cls`` and its nested configs, nested ones first."""
    import dataclasses

    from pyvlmx.config import _nested_class, _sub_prefix

    nested, own = [], []
    for f in dataclasses.fields(cls):
        sub = _nested_class(cls, f)
        if sub is not None:
            nested += _options(sub, prefix + _sub_prefix(f))
        else:
            flags = f.metadata.get("flags", ())
            own.append((f.name, "--" + prefix + flags[0][2:] if flags else "--" + (prefix + f.name).replace("_", "-")))
    return nested + own


def named(build, cls, prefix: str = ""):
    """Run ``build()``; a ValueError that names a field of ``cls`` (or a nested config) also names its option."""
    try:
        return build()
    except ValueError as exc:
        msg = str(exc)
        for name, opt in _options(cls, prefix):
            if re.search(rf"(^|[\s:(]){name}\b(?![-/])", msg):
                raise ValueError(f"{opt}: {msg}") from None
        raise


# ---------------------------------------------------------------------------- data

def load_data(spec: str, image_size, *, min_classes: int = 2, why: str = "", **kw):
    """``load_dataset`` whose too-few-classes error names the way out on the command line."""
    from pyvlmx.data import load_dataset
    from pyvlmx.errors import UserError

    try:
        return load_dataset(spec, image_size, min_classes=min_classes, **kw)
    except ValueError as exc:
        if "min_classes" not in str(exc):
            raise
        head = str(exc).split("; need at least")[0]
        raise UserError(f"--data {spec}: {head}; {why or 'this command'} needs at least {min_classes} classes: "
                        f"add another class folder (ImageFolder layout: one folder per class), or use a "
                        f"command that takes one class (pyvlmx noise, pyvlmx spectra)") from None


def add_image_args(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", nargs="+", help="image file(s)")
    g.add_argument("--data", help="'samples' (embedded photos) or an ImageFolder directory")
    if sweep:
        g.add_argument("--sweep", help="systematic sweep folder: compare originals vs aligned images")
    p.add_argument("--max-images", type=_positive_int("--max-images"), default=None,
                   help="the first N images of --data; with --sweep, N pairs spread over the images "
                        "(default: all)")


def _positive_int(name: str):
    from pyvlmx.config import parse_int

    def conv(text):
        try:
            return parse_int(text, name=name, minimum=1)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return conv


positive_int = _positive_int


def load_images(args, image_size: int, *, min_classes: int = 1):
    """(N, 3, H, W) images, labels (or None), classnames (or None), names."""
    import torch

    from pyvlmx.data import load_image

    if args.image:
        imgs = torch.stack([load_image(p, image_size) for p in args.image])
        return imgs, None, None, [Path(p).name for p in args.image]
    ds = load_data(args.data, image_size, min_classes=min_classes)
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    xs, ys = zip(*[ds[i] for i in range(n)])
    return torch.stack(xs), list(ys), list(ds.classnames), [Path(p).name for p, _ in ds.samples[:n]]


