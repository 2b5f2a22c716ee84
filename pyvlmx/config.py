"""Typed configuration: dataclasses whose fields are declared once and become CLI options.

A configuration is a dataclass (``AlignmentConfig``, ``SweepConfig``,
``StudyConfig``...).  Each field carries its documentation in
``metadata``; the command line is generated from the fields (the pattern of
Hugging Face's ``HfArgumentParser``), so an option is written in one place:

``metadata`` keys (all optional):

* ``help``: the option's help text (the CLI appends ``(default: ...)``);
* ``choices``: the allowed values of a ``str`` field;
* ``kind``: how the text is parsed: ``"budget"`` (a pixel amount such as
  ``4/255``: > 0 and finite), ``"budget_list"`` (several), ``"float_list"``
  (several finite numbers), ``"int_list"``;
* ``flags``: the option strings, e.g. ``("--steps", "--max-steps")``
  (default ``--<prefix><name>`` with dashes); flags are taken literally,
  without the prefix;
* ``allow_zero``: a budget that may be 0;
* ``parse``: a callable ``(text, *, name) -> value`` (raising ValueError
  with a message that names ``name``) for a field no rule above covers;
* ``default_text``: how the default is shown (e.g. ``"all images"``);
* ``metavar``;
* for a field that is itself a dataclass (a nested configuration):
  ``prefix`` (prepended to its fields' option names, default ``"<name>-"``),
  ``exclude`` (its fields that are not options here) and ``aliases``
  (field -> extra option strings, taken literally).  Its defaults are those
  of the field's default instance (``default_factory``).

Types come from the annotation: ``bool`` is ``--x/--no-x``, ``int``,
``float`` (through :func:`parse_number`, so ``1/255`` works and NaN/inf are
refused), ``str`` (with ``choices``), tuples (space- or comma-separated
values), ``X | None`` (the default None is shown as "none").

Example:
    >>> import argparse
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Probe:
    ...     sigma: float = field(default=4 / 255, metadata={"help": "noise level", "kind": "budget"})
    ...     copies: int = field(default=8, metadata={"help": "noisy copies"})
    >>> p = argparse.ArgumentParser()
    >>> add_dataclass_args(p, Probe)
    >>> dataclass_from_args(Probe, p.parse_args(["--sigma", "8/255"]))
    Probe(sigma=0.03137254901960784, copies=8)
    >>> make_config(Probe, "probe", copies=4)
    Probe(sigma=0.01568627450980392, copies=4)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import types
import typing
from fractions import Fraction
from typing import Any, Callable, Iterable

# ---------------------------------------------------------------------------- numbers


def parse_number(text: str | float, *, name: str = "value", positive: bool = True,
                 allow_zero: bool = False) -> float:
    """The one number parser for budgets, sigmas and other real options.

    Accepts ``4/255``, ``0.0157``, ``2e-2`` (and numbers).  Refuses NaN and
    infinity always; with ``positive`` (the default) negatives, and zero
    unless ``allow_zero``.

    Args:
        text: the text (or a number).
        name: the option, for the message (``--eps``).
        positive: refuse values below 0.
        allow_zero: with ``positive``, accept 0.

    Raises:
        ValueError: the message names the option and the value given.

    Example:
        >>> parse_number("4/255", name="--eps")
        0.01568627450980392
        >>> parse_number("-1", name="--eps")
        Traceback (most recent call last):
        ...
        ValueError: --eps: expected a number > 0 (such as 4/255 or 0.0157), got '-1'
    """
    want = ("a finite number" if not positive else
            "a number >= 0" if allow_zero else "a number > 0")
    msg = f"{name}: expected {want} (such as 4/255 or 0.0157), got {text!r}"
    try:
        if isinstance(text, str):
            s = text.strip()
            if "/" in s:
                num, den = s.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(Fraction(s)) if s.lower().lstrip("+-") not in ("nan", "inf", "infinity") \
                    else float(s)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        raise ValueError(msg) from None
    if not math.isfinite(value):
        raise ValueError(msg)
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(msg)
    return value


def parse_int(text: str | int, *, name: str = "value", minimum: int | None = None) -> int:
    """An integer option; the message names the option and the value."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {text!r}")
    return value


# ---------------------------------------------------------------------------- making configs


def config_fields(cls) -> list[str]:
    """Field names of a dataclass (class or instance)."""
    return [f.name for f in dataclasses.fields(cls)]


def check_options(owner: str, cls, options: Iterable[str]) -> None:
    """Raise ``ValueError("<owner>: unknown option(s) [...]; options: [...]")`` for names not in ``cls``."""
    known = config_fields(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise ValueError(f"{owner}: unknown option(s) {unknown}; options: {sorted(known)}"
                         + (f" ({hint})" if hint else ""))


def make_config(cls, owner: str, /, **kw: Any):
    """Build ``cls(**kw)``, validated; an unknown key names ``owner`` and lists ``cls``'s fields.

    Args:
        cls: a dataclass.
        owner: how the message names the configuration (``"sweep"``,
            ``"embedding-alignment"``).
        **kw: field values; a dict for a nested dataclass field changes
            that field's default instance (an unknown key there is named
            ``owner.field``).

    Returns:
        the instance, after its ``validate()`` (if it has one) has run.
    """
    check_options(owner, cls, kw)
    kw = dict(kw)
    for f in dataclasses.fields(cls):
        sub = _nested_class(cls, f)
        if sub is not None and isinstance(kw.get(f.name), dict):
            # a dict changes the nested config's default instance (this config's defaults for it)
            base = _default_of(f)
            base = base if base is not dataclasses.MISSING else sub()
            check_options(f"{owner}.{f.name}", sub, kw[f.name])
            kw[f.name] = dataclasses.replace(base, **kw[f.name])
    cfg = cls(**kw)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def coerce_config(value, cls, owner: str):
    """``value`` as a ``cls`` instance: None -> defaults, a dict -> :func:`make_config`, an instance as is."""
    if value is None:
        return make_config(cls, owner)
    if isinstance(value, cls):
        validate = getattr(value, "validate", None)
        if validate is not None:
            validate()
        return value
    if isinstance(value, dict):
        return make_config(cls, owner, **value)
    raise TypeError(f"{owner}: expected a {cls.__name__} or a dict of its options, got {type(value).__name__}")


# ---------------------------------------------------------------------------- argparse generation


def _hints(cls) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


def _strip_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return tp, optional
    return tp, False


def _nested_class(cls, f: dataclasses.Field):
    tp, _ = _strip_optional(_hints(cls)[f.name])
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        # a pixel amount reads best in grey levels (4/255), a short decimal as itself (0.99)
        k = value * 255
        if len(repr(value)) > 8 and abs(k - round(k, 3)) < 1e-9 and abs(value) < 1:
            return f"{round(k, 3):g}/255"
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value) if value else "none"
    return str(value)


def _docstring_help(cls) -> dict[str, str]:
    """Field help from a Google-style ``Attributes:`` section (for configs without metadata)."""
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return out
    cur = None
    for ln in lines[start + 1:]:
        s = ln.strip()
        if not s:
            if cur is not None:
                cur = None
            continue
        head, sep, rest = s.partition(":")
        names = [n.strip() for n in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and len(ln) - len(ln.lstrip()) <= 8:
            cur = names
            for n in names:
                out[n] = rest.strip()
        elif cur is not None:
            for n in cur:
                out[n] = f"{out[n]} {s}".strip()
        else:
            break
    return {k: v.replace("``", "") for k, v in out.items()}


def _element_parser(kind: str | None, elem_type, name: str, allow_zero: bool) -> Callable[[str], Any]:
    if kind in ("budget", "budget_list"):
        return lambda s: parse_number(s, name=name, positive=True, allow_zero=allow_zero)
    if kind == "int_list" or elem_type is int:
        return lambda s: parse_int(s, name=name)
    if kind == "float_list" or elem_type is float:
        return lambda s: parse_number(s, name=name, positive=False)
    return str


class _ListAction(argparse.Action):
    """Values given space- and/or comma-separated (``1/255 2/255`` or ``1/255,2/255``), parsed one by one."""

    def __init__(self, *a, parse_one: Callable[[str], Any], **kw):
        self.parse_one = parse_one
        super().__init__(*a, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v for text in values for v in str(text).split(",") if v.strip()]
        if not items:
            parser.error(f"argument {option_string}: expected at least one value")
        try:
            setattr(namespace, self.dest, tuple(self.parse_one(v) for v in items))
        except ValueError as exc:
            parser.error(str(exc))


def _argparse_type(fn: Callable[[str], Any]):
    """Wrap a parser so that argparse reports its ValueError text as is (naming the option)."""

    def conv(text: str):
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    conv.__name__ = getattr(fn, "__name__", "value")
    return conv


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def add_dataclass_args(parser_or_group, cls, *, prefix: str = "", exclude: Iterable[str] = (),
                       defaults_override: dict | None = None, aliases: dict | None = None,
                       _base=None) -> None:
    """Add one option per field of the dataclass ``cls`` (see the module doc for the rules).

    Args:
        parser_or_group: an ``ArgumentParser`` or an argument group.
        cls: the dataclass (its defaults are the options' defaults).
        prefix: prepended to each option name and ``dest`` (``"noise-"``
            gives ``--noise-n`` and ``args.noise_n``); a field's ``flags``
            get it too.
        exclude: field names that get no option.
        defaults_override: field -> default for this command (shown in the help).
        aliases: field -> extra option strings, taken literally (a nested
            field's metadata may hold them as ``aliases`` too).

    A nested dataclass field gets its own argument group (when given a
    parser), with the field's ``prefix``, ``exclude`` and ``aliases``
    metadata, and the defaults of the field's default instance.
    """
    defaults_override = dict(defaults_override or {})
    aliases = dict(aliases or {})
    exclude = set(exclude)
    check_options(cls.__name__, cls, exclude | set(defaults_override) | set(aliases))
    hints = _hints(cls)
    doc_help = _docstring_help(cls)
    base = _base if _base is not None else cls()
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        md = f.metadata
        sub = _nested_class(cls, f)
        if sub is not None:
            target = parser_or_group
            if isinstance(parser_or_group, argparse.ArgumentParser):
                target = parser_or_group.add_argument_group(md.get("help", f.name))
            add_dataclass_args(target, sub, prefix=prefix + _sub_prefix(f), exclude=md.get("exclude", ()),
                               defaults_override=defaults_override.get(f.name), aliases=md.get("aliases"),
                               _base=getattr(base, f.name))
            continue
        default = defaults_override.get(f.name, getattr(base, f.name))
        tp, optional = _strip_optional(hints[f.name])
        flags = [("--" + prefix + fl[2:]) for fl in md.get("flags", ())]
        names = list(dict.fromkeys((flags or ["--" + (prefix + f.name).replace("_", "-")])
                                   + list(aliases.get(f.name, ()))))
        help_text = (md.get("help") or doc_help.get(f.name, "")).replace("%", "%%")
        shown = md.get("default_text", _show(default))
        kw: dict[str, Any] = {"dest": _dest(prefix, f.name), "default": default,
                              "help": f"{help_text} (default: {shown})".strip()}
        if "metavar" in md:
            kw["metavar"] = md["metavar"]
        kind = md.get("kind")
        allow_zero = bool(md.get("allow_zero", False))
        label = names[0]
        origin = typing.get_origin(tp)
        if "parse" in md:
            kw["type"] = _argparse_type(lambda s, _p=md["parse"], _n=label: _p(s, name=_n))
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind in ("budget_list", "float_list", "int_list") or tp is tuple or origin in (tuple, list):
            elem = (typing.get_args(tp) or (str,))[0]
            kw.update(nargs="+", action=_ListAction,
                      parse_one=_element_parser(kind, elem, label, allow_zero))
            kw.setdefault("metavar", "V")
        elif kind == "budget":
            kw["type"] = _argparse_type(lambda s, _n=label, _z=allow_zero: parse_number(
                s, name=_n, positive=True, allow_zero=_z))
            kw.setdefault("metavar", "X")
        elif tp is float:
            kw["type"] = _argparse_type(lambda s, _n=label: parse_number(s, name=_n, positive=False))
            kw.setdefault("metavar", "X")
        elif tp is int:
            kw["type"] = _argparse_type(lambda s, _n=label: parse_int(s, name=_n))
            kw.setdefault("metavar", "N")
        elif tp is str:
            if md.get("choices"):
                kw["choices"] = list(md["choices"])
        else:
            raise TypeError(f"add_dataclass_args: {cls.__name__}.{f.name} has type {tp!r}; give it a "
                            f"'parse' in its metadata")
        if optional and "type" in kw:
            inner_conv = kw["type"]
            kw["type"] = _argparse_type(lambda s, _c=inner_conv: None if s.strip().lower() == "none" else _c(s))
        parser_or_group.add_argument(*names, **kw)


def _sub_prefix(f: dataclasses.Field) -> str:
    return f.metadata.get("prefix", f.name.replace("_", "-") + "-")


def describe_fields(cls, prefix: str = "") -> list[dict]:
    """Per field of ``cls``: its option strings, shown default and help (what ``--help`` shows)."""
    hints = _hints(cls)
    doc_help = _docstring_help(cls)
    base = cls()
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or _nested_class(cls, f) is not None:
            continue
        flags = [("--" + prefix + fl[2:]) for fl in f.metadata.get("flags", ())]
        tp, _ = _strip_optional(hints[f.name])
        names = flags or ["--" + (prefix + f.name).replace("_", "-")]
        if tp is bool:
            names = [n for fl in names for n in (fl, "--no-" + fl[2:])]
        choices = f.metadata.get("choices")
        text = f.metadata.get("help") or doc_help.get(f.name, "")
        if choices:
            text = f"{text} [{', '.join(choices)}]"
        rows.append({"field": f.name, "flags": ", ".join(names),
                     "default": f.metadata.get("default_text", _show(getattr(base, f.name))), "help": text})
    return rows


def dataclass_from_args(cls, args: argparse.Namespace, prefix: str = "", *, validate: bool = True,
                        exclude: Iterable[str] = (), base=None):
    """The ``cls`` instance the options added by :func:`add_dataclass_args` describe.

    Fields without an option (excluded) keep the default of ``base`` (an
    instance; default ``cls()``), nested dataclasses are rebuilt from their
    prefixed options.  With ``validate``, the instance's ``validate()`` runs.
    """
    exclude = set(exclude)
    base = base if base is not None else cls()
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = _nested_class(cls, f)
        if sub is not None and f.name not in exclude:
            kw[f.name] = dataclass_from_args(
                sub, args, prefix + _sub_prefix(f), validate=False,
                exclude=f.metadata.get("exclude", ()), base=getattr(base, f.name))
            continue
        dest = _dest(prefix, f.name)
        if f.name not in exclude and hasattr(args, dest):
            kw[f.name] = getattr(args, dest)
        else:
            kw[f.name] = getattr(base, f.name)
    cfg = cls(**kw)
    if validate and hasattr(cfg, "validate"):
        cfg.validate()
    return cfg
