"""Writing and reading results files: one atomic writer, one JSON policy.

Every JSON or text result that pyvlmx writes goes through
:func:`atomic_write_text`: the text is written to a temporary file in the
same folder, flushed and ``fsync``'d, then renamed over the final name with
``os.replace``.  A reader (or a crash, even SIGKILL) therefore sees either the
old file or the new one, never half of one.  The final file's permission bits
follow the umask (``0o666 & ~umask``), like any file opened with ``open(...,
"w")``; the temporary file is private while it is being written.

**Non-finite numbers.**  JSON has no NaN or infinity.  Everywhere (results,
records, summaries, configurations), a float that is NaN, ``inf`` or
``-inf`` is written as ``null``; the field's documentation says what ``null``
means there (e.g. a PSNR of ``null`` is an unchanged image, i.e. infinite
PSNR; a ratio of ``null`` has a zero denominator).  Readers get ``None`` back.
Tensors and numpy arrays or scalars are written as (lists of) numbers, tuples
as lists, paths as strings, and dict keys as strings.

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> _ = write_json(p, {"psnr": float("inf"), "steps": 3})
    >>> read_json(p)
    {'psnr': None, 'steps': 3}
    >>> dumps([float("nan"), 1.5])
    '[null, 1.5]'
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a whole text file atomically (temp file in the same folder, fsync, rename).

    Args:
        path: the final file; its folder is created if missing.
        text: the whole content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    The file's mode is ``0o666 & ~umask``.  If anything fails before the
    rename (a full disk, an interrupt), the previous file at ``path`` is
    left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def to_jsonable(value: Any) -> Any:
    """``value`` with the module's policy applied: non-finite floats -> None, arrays -> lists.

    Dict keys become strings; tuples become lists; tensors, numpy arrays and
    scalars become Python numbers; paths become strings.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # torch tensor, numpy array or scalar
        return to_jsonable(value.tolist())
    if hasattr(value, "item") and hasattr(value, "dtype"):
        return to_jsonable(value.item())
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value)]
    raise TypeError(f"pyvlmx.io: cannot write a {type(value).__name__} as JSON: {value!r:.200}")


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text of ``obj`` under the module's policy (non-finite floats become ``null``)."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`atomic_write_text`, :func:`dumps`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_text(path, dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or damaged file is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
