"""One run per output folder: an advisory lock held for the whole run.

``with run_lock(out_dir): ...`` holds an ``flock`` on ``out_dir/.pyvlmx.lock``
while the block runs.  A second process that asks for the same folder gets a
:class:`RunLockBusy` (a :class:`~pyvlmx.errors.UserError`) naming the holder,
read from ``out_dir/.pyvlmx.lock.json``: its pid, host, start time and
command; with ``wait=True`` it blocks until the folder is free instead.

Why ``flock``: the kernel drops the lock when the holder's last file
descriptor closes, so a holder that crashes or is SIGKILLed never blocks
anyone, and there is no stale lock file to clean up (the info file may stay
behind; it only describes whoever holds the lock now).

The ranks of one ``torchrun`` job share the lock.  Each rank takes it itself,
in shared mode, under a short exclusive "gate" (an ``flock`` on the info
file): the first rank of a job to arrive finds the lock free, takes it and
writes the job's key into the info file; a rank whose job key matches the
info joins (shared); any other process finds the lock held by another job
and is refused (or waits).  The job key is ``MASTER_ADDR:MASTER_PORT``, the
run id (``TORCHELASTIC_RUN_ID``) and ``WORLD_SIZE`` when ``WORLD_SIZE > 1``,
else the process itself (host, pid).  Taking it in every rank, rather than in
rank 0 alone, means every rank sees the same answer without a collective, so
a refused job fails on all ranks instead of leaving the others waiting at a
barrier.  (The one gap: the holder finishing exactly between two ranks of a
second job asking, so one rank is refused and the other admitted; the
admitted rank then waits at its first barrier until torch's timeout.)

Within one process the lock is re-entrant per folder: the CLI takes it for
``--out`` and :func:`pyvlmx.systematic.run_sweep` takes it again for the same
folder without conflict.  File descriptors are not inherited across
``exec``; forked workers (DataLoader) share the parent's, and never unlock.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with run_lock(d) as info:
    ...     info["pid"] == os.getpid()
    True
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator

from pyvlmx.errors import UserError

LOCK_NAME = ".pyvlmx.lock"
INFO_NAME = ".pyvlmx.lock.json"

_held: dict[str, list] = {}  # real folder path -> [count, lock fd, info dict]
_held_guard = threading.Lock()


class RunLockBusy(UserError):
    """Another process (another job) holds the run lock of a folder.

    Attributes:
        holder: the holder's info dict (``pid``, ``host``, ``started``,
            ``command``, ``job``, ``world_size``), empty when unreadable.
    """

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def job_key(environ: dict | None = None) -> str:
    """The identity shared by the ranks of one torchrun job (else unique to this process)."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or "1")
    if world > 1:
        return (f"torchrun:{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}:"
                f"{env.get('TORCHELASTIC_RUN_ID', 'none')}:world{world}")
    return f"process:{socket.gethostname()}:{os.getpid()}"


def _my_info(key: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
        "job": key,
        "world_size": int(os.environ.get("WORLD_SIZE", "1") or "1"),
    }


def describe_holder(holder: dict) -> str:
    """``pid 123 on host h since 2026-01-01T10:00:00+00:00 (pyvlmx systematic ...)``."""
    if not holder:
        return "a process whose details are unreadable"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('started', '?')}"
    if int(holder.get("world_size", 1) or 1) > 1:
        text += f" (a torchrun job of {holder['world_size']} ranks)"
    if holder.get("command"):
        text += f", command: {holder['command']}"
    return text


def _read_info(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    try:
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_info(fd: int, info: dict) -> None:
    blob = json.dumps(info, indent=1).encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, blob + b"\n")
    os.fsync(fd)


def _try(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@contextlib.contextmanager
def _gate(info_fd: int) -> Iterator[None]:
    fcntl.flock(info_fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(info_fd, fcntl.LOCK_UN)


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise UserError(f"cannot create the run lock {path} ({exc.strerror or exc}); the folder must be "
                        f"writable") from None


def _acquire(folder: Path, wait: bool) -> tuple[int, dict]:
    lock_fd = _open(folder / LOCK_NAME)
    info_fd = _open(folder / INFO_NAME)
    key = job_key()
    try:
        while True:
            with _gate(info_fd):
                if _try(lock_fd, fcntl.LOCK_EX):  # free: this job takes it
                    info = _my_info(key)
                    _write_info(info_fd, info)
                    # shared from now on, so the other ranks of this job can join; the
                    # conversion is not atomic, but every newcomer passes the gate we hold
                    fcntl.flock(lock_fd, fcntl.LOCK_SH)
                    return lock_fd, info
                holder = _read_info(info_fd)
                if holder.get("job") == key:  # a rank of this job already holds it
                    fcntl.flock(lock_fd, fcntl.LOCK_SH)
                    return lock_fd, holder
            if not wait:
                raise RunLockBusy(f"{folder} is in use by another pyvlmx run: {describe_holder(holder)}; wait "
                                  f"for it to finish (or stop it), pass --wait to queue behind it, or use "
                                  f"another output folder", holder)
            # block until every holder has let go, then try again through the gate
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(lock_fd)
        raise
    finally:
        os.close(info_fd)


def _release(folder: Path, lock_fd: int) -> None:
    try:
        info_fd = os.open(folder / INFO_NAME, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        info_fd = None
    try:
        if info_fd is not None:
            with _gate(info_fd):
                # last holder out (nobody else shares it): clear the description
                if _try(lock_fd, fcntl.LOCK_EX):
                    os.ftruncate(info_fd, 0)
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
    finally:
        os.close(lock_fd)
        if info_fd is not None:
            os.close(info_fd)


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike, *, wait: bool = False) -> Iterator[dict]:
    """Hold the run lock of ``out_dir`` (created if missing) while the block runs.

    Args:
        out_dir: the output folder of the run.
        wait: block until the folder is free instead of raising.

    Yields:
        the holder's info dict (this process's, or its job's first rank's).

    Raises:
        RunLockBusy: another process or job holds the folder (``wait=False``);
            the message names it (pid, host, start time, command).
        UserError: the folder or its lock file cannot be created.
    """
    folder = Path(out_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder} is an existing file, not a folder") from None
    except OSError as exc:
        raise UserError(f"cannot create the folder {folder} ({exc.strerror or exc})") from None
    key = os.path.realpath(folder)
    with _held_guard:  # one acquisition per folder and process, however many threads ask
        entry = _held.get(key)
        if entry is not None:
            entry[0] += 1
        else:
            lock_fd, info = _acquire(folder, wait)
            entry = _held[key] = [1, lock_fd, info]
    try:
        yield entry[2]
    finally:
        with _held_guard:
            entry[0] -= 1
            last = entry[0] == 0
            if last:
                del _held[key]
        if last:
            _release(folder, entry[1])


def holder_of(out_dir: str | os.PathLike) -> dict | None:
    """The info of whoever holds ``out_dir``'s run lock now, or None when it is free."""
    folder = Path(out_dir)
    if not (folder / LOCK_NAME).exists():
        return None
    lock_fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _try(lock_fd, fcntl.LOCK_EX):
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(lock_fd)
    try:
        return json.loads((folder / INFO_NAME).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
