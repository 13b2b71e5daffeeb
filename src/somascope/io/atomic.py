"""Atomic creation of output files and folders.

Every output somascope writes (results files, summary images, movie stores, batch tables) goes
through :func:`atomic_path`: the writer fills a temporary path in the destination folder, and
only when it has finished without error is the temporary renamed onto the final name. A crash
or an exception therefore never leaves a half-written output that looks whole, and an existing
good output stays untouched until its replacement is complete.

The temporary name is ``.{name}.partial-{random}`` in the same folder as the final path (same
file system, so the rename is atomic for files). A process killed outright (SIGKILL, power cut)
can leave such a ``.partial-`` entry behind; it is never mistaken for a finished output.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "PARTIAL_MARKER"]

#: Marker in the names of temporary outputs (``.{name}.partial-{random}``).
PARTIAL_MARKER = ".partial-"


def _sibling(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{secrets.token_hex(6)}")


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entry table (POSIX); silently skipped where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _install(tmp: Path, final: Path) -> None:
    """Move the complete ``tmp`` onto ``final``, replacing whatever is there."""
    final_exists = final.exists() or final.is_symlink()
    if not final_exists or (tmp.is_file() and not final.is_dir()):
        # A file replacing a file (or anything landing on a free name): one atomic rename.
        os.replace(tmp, final)
        return
    # A folder is involved: move the old output aside, put the new one in place, then delete
    # the old one. If the second rename fails, the old output is put back.
    old = _sibling(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write an output to; move it onto ``final_path`` when done.

    The yielded path does not exist yet: create a file *or* a folder there (e.g.
    ``h5py.File(tmp, "w")``, ``np.save``, a Zarr directory store) and close it before the
    ``with`` block ends. On normal exit the temporary is renamed onto ``final_path``,
    replacing an existing file or folder there (an existing folder is removed only after the
    new output is in place). If the block raises, the temporary is deleted, ``final_path`` is
    left exactly as it was, and the exception propagates.

    Parameters
    ----------
    final_path
        Where the finished output should end up. Its parent folder must exist.
    fsync
        Flush a written file and the folder entry to disk before returning (files only;
        folder trees are not flushed file by file).

    Yields
    ------
    Path
        ``{parent}/.{name}.partial-{random}``, on the same file system as ``final_path``.

    Raises
    ------
    FileNotFoundError
        If the parent folder of ``final_path`` does not exist, or if the block finished
        without creating anything at the temporary path.

    Examples
    --------
    >>> with atomic_path("results.h5") as tmp:          # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f:
    ...         f["x"] = data
    """
    final = Path(final_path).expanduser().absolute()
    if final.name in ("", ".", ".."):
        raise ValueError(f"cannot write to {str(final_path)!r}: it does not name a file or folder.")
    parent = final.parent
    if not parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(final)!r}: the folder {str(parent)!r} does not exist; "
            "create it first (e.g. Path(...).parent.mkdir(parents=True))."
        )
    tmp = _sibling(final, "partial")
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(
                f"nothing was written for {str(final)!r}: the block using atomic_path() did "
                f"not create the temporary path {str(tmp)!r}."
            )
        if fsync and tmp.is_file():
            _fsync_file(tmp)
        _install(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    if fsync:
        _fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to the file ``path`` atomically (see :func:`atomic_path`); return the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """Write ``text`` to the file ``path`` atomically (see :func:`atomic_path`); return the path.

    Newlines are written as given (no platform translation), so the file is identical on
    every operating system.
    """
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
    return Path(path)
