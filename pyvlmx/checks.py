"""Checks of a command's inputs, done before a model loads or any work starts.

Each function either returns the checked value (normalised) or raises a
:class:`~pyvlmx.errors.UserError` whose message names the argument, what was
given and what is expected, so the CLI can print it as one line.  They are
plain functions so that the CLI, the Python API and the study all call the
same check.

Example:
    >>> import tempfile, os
    >>> out = check_out_dir(os.path.join(tempfile.mkdtemp(), "run"))
    >>> out.is_dir()
    True
    >>> check_eps(8 / 255)
    0.03137254901960784
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import warnings
from pathlib import Path

from pyvlmx.errors import UserError

# Smallest image side reported by check_image_size: below this an image is
# upscaled so far that it carries almost no detail.
MIN_IMAGE_SIDE = 32
# An L-inf budget above this (in [0, 1] pixels) makes the change visible.
VISIBLE_EPS = 16 / 255


def check_out_dir(path: str | os.PathLike, *, name: str = "--out") -> Path:
    """A folder that results can be written to: created if missing, probed by writing a file.

    Args:
        path: the output folder.
        name: how the message names the argument.

    Returns:
        the folder as a :class:`~pathlib.Path` (it exists afterwards).

    Raises:
        UserError: ``path`` (or a parent) is an existing file, the folder
            cannot be created, or a file cannot be written in it (read-only
            file system, no permission).  The message names the path and
            the reason.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{name} {out} is an existing file, not a folder; choose a folder "
                        f"(it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        parent = next((p for p in out.parents if p.exists() and not p.is_dir()), out)
        raise UserError(f"{name} {out}: {parent} is a file, so the folder cannot be created") from None
    except OSError as exc:
        raise UserError(f"{name} {out}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".pyvlmx-write-probe.")
    except OSError as exc:
        raise UserError(f"{name} {out} is not writable ({exc.strerror or exc}); choose a folder you can "
                        f"write to") from None
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(probe)
    return out


def check_input_file(path: str | os.PathLike, *, name: str, what: str = "file") -> Path:
    """An existing, readable file; else a UserError naming ``name``, the path and the problem."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{name} {p}: no such {what}")
    if p.is_dir():
        raise UserError(f"{name} {p} is a folder; expected a {what}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{name} {p}: {what} is not readable (permission denied)")
    return p


def check_eps(eps: float, *, name: str = "--eps", visible: float = VISIBLE_EPS) -> float:
    """An L-inf budget in [0, 1] pixels: refused outside (0, 1], a warning above ``visible``.

    Args:
        eps: the budget (``8/255`` is 8 grey levels).
        visible: above this a UserWarning says the change will be visible.

    Returns:
        ``eps`` as a float.
    """
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in (0, 1], got {eps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a number in (0, 1] (pixels in [0, 1]; 8/255 is 8 grey levels), "
                        f"got {eps!r}")
    if value > 1:
        raise UserError(f"{name} {value:g} is above 1: budgets are in [0, 1] pixels, so {value:g} allows "
                        f"any image; did you mean {value:g}/255?")
    if value > visible:
        warnings.warn(f"{name} {value:.4g} (= {value * 255:.1f}/255) is above {visible * 255:.0f}/255: the "
                      f"change will be visible in the image", UserWarning, stacklevel=2)
    return value


def check_positive_int(value, *, name: str, minimum: int = 1) -> int:
    """An int >= ``minimum`` (bools refused); else a UserError naming ``name`` and the value."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_targets(targets, n_classes: int, *, name: str = "--targets") -> str | int:
    """``"all"`` or K in [1, n_classes - 1] target classes per image.

    Args:
        targets: ``"all"`` or an int (or its text).
        n_classes: classes in the dataset; each image can be aligned to the
            ``n_classes - 1`` classes other than its own.

    Returns:
        ``"all"`` or the int K.

    Raises:
        UserError: not ``"all"`` nor an int, K < 1, or K above the number of
            other classes (the message says how many there are).
    """
    if targets == "all":
        return "all"
    try:
        k = int(targets)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be 'all' or a positive integer, got {targets!r}") from None
    if isinstance(targets, float) and not targets.is_integer():
        raise UserError(f"{name} must be 'all' or a positive integer, got {targets!r}")
    if k < 1:
        raise UserError(f"{name} must be 'all' or a positive integer, got {targets!r}")
    others = n_classes - 1
    if k > others:
        raise UserError(f"{name} {k} is more than the {others} other class(es) of a {n_classes}-class dataset; "
                        f"use at most {others} or 'all'")
    return k


def check_sample_count(n: int, minimum: int, *, name: str, why: str) -> int:
    """A count of samples that a later stage needs at least ``minimum`` of.

    Args:
        n: the count given.
        minimum: the least the stage can use.
        name: the option (``--n``, ``--noise-n``).
        why: what needs it, for the message (``"the normality test"``).
    """
    n = check_positive_int(n, name=name)
    if n < minimum:
        raise UserError(f"{name} {n} is too small: {why} needs at least {minimum}")
    return n


def check_image_size(size: tuple[int, int], *, path: str | os.PathLike | None = None,
                     minimum: int = MIN_IMAGE_SIDE) -> str | None:
    """Say whether an image is too small to be worth upscaling.

    Args:
        size: (width, height) in pixels, as PIL's ``Image.size``.
        path: the file, for the message.
        minimum: the smallest acceptable side.

    Returns:
        None when both sides are at least ``minimum``; else a one-line note
        naming the file and its size (the caller decides: skip, warn or refuse).
    """
    w, h = (int(s) for s in size)
    if min(w, h) >= minimum:
        return None
    where = f"{path}: " if path is not None else ""
    return f"{where}image is {w}x{h} px, smaller than {minimum} px on a side; it would be upscaled from almost no detail"
