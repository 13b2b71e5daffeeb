"""Faults of a run that are not the input's fault, and the interruption of a run.

- :class:`RunFault`: the run could not go on for a reason outside the movie and the
  parameters: the output disk is full (``ENOSPC``, ``EDQUOT``), the output folder is read-only
  (``EROFS``, ``EACCES``/``EPERM`` on a file of the output folder), the Dask cluster lost its
  workers. The message is one line saying what happened and what was kept (the finished
  stages, which a rerun of the same command reuses). ``somascope run`` prints it and exits 1.
- :class:`RunInterrupted`: Ctrl-C (SIGINT) during a run; a :class:`KeyboardInterrupt`, so
  code that catches those still does, whose message says what was kept. ``somascope run``
  prints it and exits 130.

:func:`as_fault` turns an exception raised while a run wrote its outputs into a RunFault
(or says it is none).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RunFault", "RunInterrupted", "as_fault", "kept_text"]

#: errno values that mean the output disk is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT) if hasattr(errno, "EDQUOT") else (errno.ENOSPC,)
#: errno values that mean the output cannot be written at all.
READ_ONLY = (errno.EROFS,)
#: errno values that mean "not allowed": a fault when the file is in the output folder (or not
#: named); on an input file it is the user's to fix.
NOT_ALLOWED = (errno.EACCES, errno.EPERM)


class RunFault(Exception):
    """A run stopped by a fault that is not the input's: the output disk is full or read-only,
    the cluster lost its workers. The message (one line) says what was kept; exit code 1."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message (one line) says what was kept; exit code 130."""


def kept_text(out: Path, kept: Sequence[str], *, removed: bool, where: Path | None = None) -> str:
    """``"the finished stages motion, summary are kept in OUT/stages; rerun the same command to
    resume"``, or what it is when nothing was kept."""
    if kept:
        folder = where if where is not None else out / "stages"
        return (f"the finished stage{'s' if len(kept) > 1 else ''} {', '.join(kept)} "
                f"{'are' if len(kept) > 1 else 'is'} kept in {folder}; rerun the same command to resume")
    if removed:
        return f"nothing was finished, so the new folder {out} was removed"
    if not Path(out).exists():
        return "nothing was written"
    return f"no stage was finished, so nothing new was kept in {out}"


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return int(exc.errno)
        # h5py reports ENOSPC as OSError without errno: "... (errno = 28, error message = ...)"
        found = re.search(r"errno\s*=\s*(\d+)", str(exc))
        if found:
            return int(found.group(1))
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts (a writer may wrap the OSError in its own error)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _inside(path: str | os.PathLike[str] | None, folders: Sequence[Path]) -> bool | None:
    """Whether ``path`` lies in one of ``folders`` (None: no path known)."""
    if path is None or isinstance(path, int):
        return None
    try:
        p = Path(os.fsdecode(path)).absolute()
    except (TypeError, ValueError):
        return None
    return any(p == f or p.is_relative_to(f) for f in folders)


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (the disk the user must free)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _free(path: Path) -> str:
    import shutil

    from .resources import human_bytes

    try:
        return human_bytes(shutil.disk_usage(mount_point(path)).free)
    except OSError:
        return "unknown"


def _lost_cluster(exc: BaseException) -> str | None:
    """A description when ``exc`` says the Dask cluster lost its workers or the scheduler."""
    for e in _chain(exc):
        name = type(e).__name__
        if name == "KilledWorker":
            return f"the Dask workers running a task died too often ({' '.join(str(e).split())[:160]})"
        if name in ("CommClosedError", "FutureCancelledError") or (
                name == "CancelledError" and "scheduler" in str(e).lower()):
            return f"the connection to the Dask cluster was lost ({name})"
    return None


def as_fault(exc: BaseException, *, out: Path, stage: str | None, kept: Sequence[str], removed: bool,
             output_folders: Sequence[Path] = (), kept_in: Path | None = None) -> RunFault | None:
    """A :class:`RunFault` for ``exc`` raised during a run into ``out`` (in ``stage``), or None
    when ``exc`` is no such fault (an input error, a bug).

    ``output_folders``: the folders the run writes to besides ``out`` (the stage cache); a
    permission error on a file elsewhere (an input) is not a fault of the run."""
    where = f" in stage {stage}" if stage else ""
    folders = [Path(out).absolute(), *(Path(f).absolute() for f in output_folders)]
    kept_msg = kept_text(out, kept, removed=removed, where=kept_in)
    for e in _chain(exc):
        code = _errno_of(e)
        if code is None:
            continue
        filename = getattr(e, "filename", None)
        if code in DISK_FULL:
            disk = mount_point(out)
            return RunFault(f"the output disk is full{where}: no space left on the disk mounted at {disk} "
                            f"(holding {out}, {_free(out)} free). Kept: {kept_msg}. Fix: free some space on "
                            f"{disk} (or choose an --out on another disk) and rerun.")
        if code in READ_ONLY or (code in NOT_ALLOWED and _inside(filename, folders) is not False):
            what = "read-only" if code in READ_ONLY else "not writable (permission denied)"
            shown = f" ({os.fsdecode(filename)})" if isinstance(filename, (str, bytes, os.PathLike)) else ""
            return RunFault(f"the output folder {out} is {what}{where}{shown}. Kept: {kept_msg}. Fix: make it "
                            "writable or choose another --out.")
    lost = _lost_cluster(exc)
    if lost is not None:
        return RunFault(f"{lost}{where}. Kept: {kept_msg}. Fix: check the workers' memory and logs, then rerun.")
    return None
