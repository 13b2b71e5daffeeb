"""suite2p binary movies (``suite2p/plane<k>/data.bin`` and friends), memory-mapped.

suite2p converts its input to flat binaries, one folder per plane: ``data.bin`` (the registered
movie), ``data_raw.bin`` (the input, kept with ``keep_movie_raw``) and, for two channels,
``data_chan2.bin`` / ``data_chan2_raw.bin``. Each is int16 frames of ``Ly × Lx`` pixels in C
order with no header. The metadata sits beside them in ``ops.npy`` (suite2p < 1.0) or ``db.npy``
(+ ``settings.npy``, suite2p ≥ 1.0): a pickled dict. What is read from it:

``Ly``, ``Lx``
    the frame shape ``(H, W)``; the number of frames is the file size over ``2·Ly·Lx`` bytes.
``nframes``
    cross-checked against the file size: a file that is not a whole number of frames, or holds
    another number of frames than ``nframes``, is refused (a registration that did not finish,
    or an ``ops.npy`` of another run) — a silently shorter movie would be worse.
``fs``
    the frame rate, Hz. suite2p documents it as the rate *per plane*, which is the rate of one
    plane's binary; note that suite2p defaults it to 10 Hz when it was not set.
``nplanes``, ``nchannels``, ``functional_chan``, ``align_by_chan``, ``xrange``/``yrange``,
``suite2p_version``
    shown in ``details``. No pixel size is stored by suite2p.

Paths claimed by :func:`suite2p_files`: one of the binaries with its ``ops.npy``/``db.npy``
beside it (or that ``ops.npy``/``db.npy`` itself); a plane folder holding them (``data.bin``,
else ``data_raw.bin``); a suite2p output folder with ``plane0`` (with one plane, its movie;
with several, a MovieError asking for one plane folder: planes are registered separately, and
multi-ROI mesoscope "planes" differ in size, so they are not stacked into a volume here).
A ``.bin`` without ``ops.npy``/``db.npy`` is not claimed and stays with the raw-binary reader
(``shape=``, ``dtype=``).

Channels: ``channel=0`` (or None) reads the file named (for a folder: the functional channel,
``data.bin``); ``channel=1`` reads its second-channel twin (``data_chan2.bin`` /
``data_chan2_raw.bin``) beside it.

The metadata files are pickles; they are unpickled with an allow-list (numpy arrays and scalars,
datetime, paths, plain containers), and any other object in them becomes an inert placeholder,
so opening a folder never runs code from it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from .backends import _as_index
from .errors import MovieError

#: the binaries suite2p writes into a plane folder, and the second-channel twin of each
BINARIES = ("data.bin", "data_raw.bin", "data_chan2.bin", "data_chan2_raw.bin")
CHAN2 = {"data.bin": "data_chan2.bin", "data_raw.bin": "data_chan2_raw.bin"}
METADATA = ("ops.npy", "db.npy")
_PLANE = re.compile(r"plane(\d+)$")


# -- claiming ------------------------------------------------------------------------------
def suite2p_files(path: Path) -> list[Path] | None:
    """The binary to open for ``path`` (a suite2p binary with its metadata beside it, a plane
    folder, or a suite2p output folder with one plane), or None when ``path`` is none of these.
    Cheap: a name check and a few ``stat`` calls; MovieError for a suite2p folder that cannot be
    opened as one movie (several planes, binaries deleted)."""
    path = Path(path)
    if path.is_file():
        if path.name in METADATA and any((path.parent / b).is_file() for b in BINARIES):
            return [_plane_movie(path.parent)]  # ops.npy / db.npy named: its plane's movie
        return [path] if path.name in BINARIES and _metadata_file(path.parent) else None
    if not path.is_dir():
        return None
    if _metadata_file(path) and (_PLANE.match(path.name) or any((path / b).is_file() for b in BINARIES)):
        return [_plane_movie(path)]
    if not (path / "plane0").is_dir() or not _metadata_file(path / "plane0"):
        return None
    planes = sorted((p for p in path.iterdir() if p.is_dir() and _PLANE.match(p.name) and _metadata_file(p)),
                    key=lambda p: int(_PLANE.match(p.name).group(1)))  # type: ignore[union-attr]
    if len(planes) > 1:
        raise MovieError(
            f"{path}: is a suite2p output with {len(planes)} planes ({', '.join(p.name for p in planes)}); "
            f"open one plane folder, e.g. {planes[0]} (suite2p registers each plane on its own)."
        )
    return [_plane_movie(planes[0])]


def _metadata_file(folder: Path) -> Path | None:
    return next((folder / m for m in METADATA if (folder / m).is_file()), None)


def _plane_movie(folder: Path) -> Path:
    """The registered binary of a plane folder, else the raw one; MovieError when neither is there."""
    for name in ("data.bin", "data_raw.bin"):
        if (folder / name).is_file():
            return folder / name
    where = ""
    try:
        reg = load_metadata(folder).get("reg_file")
        if reg and Path(str(reg)).parent != folder:
            where = f" (its metadata puts data.bin at {reg}, a separate fast_disk)"
    except MovieError:
        pass
    raise MovieError(
        f"{folder}: is a suite2p plane folder without data.bin or data_raw.bin{where}; the binaries were "
        "deleted (delete_bin) or written elsewhere — rerun suite2p with keep_movie_raw=True / delete_bin=False, "
        "or open the original recording."
    )


# -- metadata --------------------------------------------------------------------------------
class _Opaque:
    """Stands in for any object whose class is not on the allow-list; holds nothing, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _allowed() -> dict[tuple[str, str], Any]:
    import collections
    import datetime
    import pathlib

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{mod}.numeric", "_frombuffer")] = getattr(numeric, "_frombuffer", _Opaque)
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    for name in ("set", "frozenset", "complex", "slice", "range", "bytearray", "bytes", "object"):
        table[("builtins", name)] = getattr(__import__("builtins"), name)
    table[("collections", "OrderedDict")] = collections.OrderedDict
    for name in ("datetime", "date", "time", "timedelta", "timezone"):
        table[("datetime", name)] = getattr(datetime, name)
    for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        table[("pathlib", name)] = getattr(pathlib, name)
    import copyreg
    import _codecs

    table[("copyreg", "_reconstructor")] = copyreg._reconstructor
    table[("_codecs", "encode")] = _codecs.encode
    return table


class _AllowListUnpickler(pickle.Unpickler):
    _table: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _AllowListUnpickler._table is None:
            _AllowListUnpickler._table = _allowed()
        found = self._table.get((module, name))  # type: ignore[union-attr]
        return _Opaque if found is None else found


def load_npy_dict(path: Path) -> dict[str, Any]:
    """The dict pickled in a suite2p ``.npy`` file (a 0-d object array), unpickled with an
    allow-list (see the module docstring); MovieError for anything else."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                _, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                _, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if not dtype.hasobject:
                raise ValueError(f"holds a {dtype} array, not suite2p's pickled dict")
            obj = _AllowListUnpickler(f).load()
    except MovieError:
        raise
    except Exception as exc:  # damaged or foreign files raise many types
        raise MovieError(f"{path}: not a readable suite2p metadata file ({exc}); copy it again from the "
                         "suite2p output.") from exc
    if isinstance(obj, np.ndarray) and obj.size == 1:
        obj = obj.reshape(()).item()
    if not isinstance(obj, dict):
        raise MovieError(f"{path}: holds a {type(obj).__name__}, not suite2p's dict of settings; "
                         "use the ops.npy suite2p wrote in this plane folder.")
    return obj


def load_metadata(folder: Path) -> dict[str, Any]:
    """``ops.npy`` of a plane folder, else ``db.npy`` merged over ``settings.npy`` (suite2p ≥ 1.0)."""
    if (folder / "ops.npy").is_file():
        return load_npy_dict(folder / "ops.npy")
    if not (folder / "db.npy").is_file():
        raise MovieError(f"{folder}: holds neither ops.npy nor db.npy; the suite2p metadata of this plane "
                         "is missing — copy it from the suite2p output folder.")
    meta: dict[str, Any] = {}
    if (folder / "settings.npy").is_file():
        settings = load_npy_dict(folder / "settings.npy")
        meta.update({k: v for k, v in settings.items() if not isinstance(v, dict)})
        for group in settings.values():  # suite2p ≥ 1.0 groups its settings; fs may sit in one
            if isinstance(group, dict) and "fs" in group:
                meta.setdefault("fs", group["fs"])
    meta.update(load_npy_dict(folder / "db.npy"))
    return meta


def _number(value: Any) -> float | None:
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return float(arr[0]) if arr.size == 1 and np.isfinite(arr[0]) else None


# -- the segment -----------------------------------------------------------------------------
class Suite2pSegment:
    """One suite2p binary (int16 frames ``(Ly, Lx)``), memory-mapped; metadata from the
    ``ops.npy``/``db.npy`` beside it. ``path`` may also be a plane or suite2p folder."""

    def __init__(self, path: Path, *, channel: int | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            found = suite2p_files(path)
            if not found:
                raise MovieError(f"{path}: is not a suite2p plane or output folder (no ops.npy/db.npy with "
                                 "data.bin); point to suite2p/plane<k> or its data.bin.")
            path = found[0]
        folder = path.parent
        meta_file = _metadata_file(folder)
        if meta_file is None:
            raise MovieError(f"{path}: has no ops.npy or db.npy beside it; suite2p binaries carry no header — "
                             "copy the plane's ops.npy next to it, or open it as raw binary with shape= and dtype=.")
        ops = load_metadata(folder)
        self.path = self._channel_file(path, channel, ops)
        self.dtype = np.dtype(np.int16)
        self.frame_shape = self._frame_shape(ops, meta_file)
        self.n_raw = self._count_frames(ops, meta_file)
        self._mm: Any = None
        self.metadata = self._metadata(ops, meta_file)

    def _channel_file(self, path: Path, channel: int | None, ops: dict[str, Any]) -> Path:
        if channel in (None, 0):
            return path
        twin = CHAN2.get(path.name)
        if channel == 1 and twin is not None and (path.parent / twin).is_file():
            return path.parent / twin
        n = _number(ops.get("nchannels")) or 1
        raise MovieError(
            f"{path}: channel={channel} not available: suite2p recorded {int(n)} channel(s); channel=1 reads the "
            f"second-channel binary beside data.bin/data_raw.bin ({', '.join(CHAN2.values())}), which is "
            f"{'missing' if twin else 'not the twin of ' + path.name}."
        )

    def _frame_shape(self, ops: dict[str, Any], meta_file: Path) -> tuple[int, int]:
        ly, lx = _number(ops.get("Ly")), _number(ops.get("Lx"))
        if not ly or not lx or ly < 1 or lx < 1:
            raise MovieError(f"{meta_file}: has no frame size (Ly={ops.get('Ly')!r}, Lx={ops.get('Lx')!r}); "
                             "suite2p writes these on conversion — use the metadata file of the run that wrote "
                             f"{self.path.name}.")
        return int(ly), int(lx)

    def _count_frames(self, ops: dict[str, Any], meta_file: Path) -> int:
        frame_bytes = 2 * self.frame_shape[0] * self.frame_shape[1]
        size = self.path.stat().st_size
        n, tail = divmod(size, frame_bytes)
        expected = _number(ops.get("nframes"))
        if tail:
            raise MovieError(
                f"{self.path}: holds {size} bytes, not a whole number of {self.frame_shape[0]}×{self.frame_shape[1]} "
                f"int16 frames ({n} frames + {tail} bytes); it is truncated or {meta_file.name} belongs to another "
                "run — copy the file again, or rerun suite2p."
            )
        if expected is not None and int(expected) != n:
            raise MovieError(
                f"{self.path}: holds {n} frames but {meta_file.name} says nframes={int(expected)}; the file is "
                "incomplete (registration stopped early?) or the metadata belongs to another run — rerun "
                "suite2p's registration, or open data_raw.bin."
            )
        if n == 0:
            raise MovieError(f"{self.path}: is empty (0 frames); rerun suite2p or open the original recording.")
        return int(n)

    def _metadata(self, ops: dict[str, Any], meta_file: Path) -> dict[str, Any]:
        details: dict[str, Any] = {
            "file": self.path.name,
            "registered": "_raw" not in self.path.name,
            "metadata_file": meta_file.name,
            "suite2p_version": ops.get("suite2p_version"),
            "nplanes": _number(ops.get("nplanes")),
            "nchannels": _number(ops.get("nchannels")),
            "functional_chan": _number(ops.get("functional_chan")),
            "align_by_chan": _number(ops.get("align_by_chan")),
            "nframes": _number(ops.get("nframes")),
            "pixel_size": "not stored by suite2p",
        }
        for key in ("yrange", "xrange"):
            rng = np.asarray(ops.get(key, []), dtype=float).ravel() if key in ops else np.empty(0)
            if rng.size == 2 and np.all(np.isfinite(rng)):
                details[f"valid_{key}"] = [int(rng[0]), int(rng[1])]
        meta: dict[str, Any] = {"format": "suite2p binary",
                                "details": {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
                                            for k, v in details.items() if v is not None}}
        fs = _number(ops.get("fs"))
        if fs and fs > 0:
            meta["frame_rate"] = fs
            meta["details"]["frame_rate_note"] = "ops['fs'] (per plane; suite2p's default is 10 Hz if never set)"
        return meta

    # -- handles -------------------------------------------------------------------
    def _open(self) -> Any:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype="<i2", mode="r", shape=(self.n_raw, *self.frame_shape))
        return self._mm

    def close(self) -> None:
        self._mm = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    # -- reading -------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted raw ``indices`` as ``(n, Ly, Lx)`` int16."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return np.empty((0, *self.frame_shape), self.dtype)
        return np.array(self._open()[_as_index(indices)], dtype=self.dtype)
