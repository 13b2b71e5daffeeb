"""File-format backends behind :class:`somascope.io.Movie`.

Each backend is a *segment*: a picklable description of one file (path plus how to read it)
that exposes ``n_raw`` (number of stored frames, before channel/plane de-interleaving),
``frame_shape`` in canonical order (``(H, W)``; ``(Z, H, W)`` for volumetric layouts),
``dtype`` and ``read(indices) -> ndarray (len(indices), *frame_shape)``. Handles are opened
lazily, dropped when pickled, and closed by ``close()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MovieError, one_line

log = logging.getLogger("somascope.io")

#: What a damaged file's message suggests.
FIX_DAMAGED = ("Fix: copy or export the file again from the original (compare its size with the source); "
               "a file still being written must be finished first")

TIFF_EXTENSIONS = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".mat")
ZARR_EXTENSIONS = (".zarr",)
NPY_EXTENSIONS = (".npy",)
RAW_EXTENSIONS = (".raw", ".bin", ".dat")
SUPPORTED = TIFF_EXTENSIONS + HDF5_EXTENSIONS + ZARR_EXTENSIONS + NPY_EXTENSIONS + RAW_EXTENSIONS


# -- tifffile's log ------------------------------------------------------------------------
class _TiffLogCapture(logging.Filter):
    """Holds back tifffile's log records while this thread reads a TIFF (:func:`tiff_log`): a
    damaged file makes tifffile log ERROR lines ("invalid page offset …") before it fails or
    falls back; somascope turns what they say into its own one-line error instead."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        records = getattr(self.local, "records", None)
        if records is None:
            return True
        records.append(record.getMessage())
        return False


_TIFF_LOG = _TiffLogCapture()
logging.getLogger("tifffile").addFilter(_TIFF_LOG)


@contextlib.contextmanager
def tiff_log() -> Iterator[list[str]]:
    """The messages tifffile logs in this thread inside the block (kept off the console)."""
    outer = getattr(_TIFF_LOG.local, "records", None)
    records: list[str] = []
    _TIFF_LOG.local.records = records
    try:
        yield records
    finally:
        _TIFF_LOG.local.records = outer
        if outer is not None:
            outer.extend(records)


def _pages_written_one_by_one(tif: Any) -> bool:
    """Whether a TIFF holds frames written one call at a time by tifffile: its first page
    describes a single 2-D image ("shaped" JSON ``shape`` of two sizes) and a second page
    follows. Read then as pages (one movie when they share a shape). Only the first two page
    headers are read."""
    import json

    if not getattr(tif, "is_shaped", False) or getattr(tif, "is_ome", False):
        return False
    try:
        shape = json.loads(tif.pages.first.description or "{}").get("shape")
        if shape is None or len(shape) != 2:
            return False
        return tif.pages.get(1) is not None
    except Exception:  # noqa: BLE001 - a damaged header: the readers below say what is wrong
        return False


def permission_error(path: Path | str) -> MovieError:
    return MovieError(
        f"{path}: permission denied, this user cannot read it. Fix: give read permission (e.g. chmod u+r "
        f"'{path}', and u+rx on its folders) or copy it somewhere readable.")


def probe_path(path: Path, empty_ok: bool = False) -> None:
    """Refuse early what no reader can use: a path that does not exist, a file this user
    cannot read, an empty (0-byte) file (unless ``empty_ok``), a folder that cannot be listed."""
    if not path.exists():
        if path.is_symlink():
            raise MovieError(f"{path}: is a broken symbolic link (its target {os.readlink(path)!r} does not "
                             "exist). Fix: point the link at the movie, or pass the movie's own path.")
        raise MovieError(f"{path}: no such file or folder. Fix: check the path (cwd is {os.getcwd()}).")
    try:
        if path.is_dir():
            os.listdir(path)
            return
        with open(path, "rb") as fh:
            head = fh.read(1)
    except PermissionError as exc:
        raise permission_error(path) from exc
    except OSError as exc:
        raise MovieError(f"{path}: cannot be read ({one_line(exc)}). {FIX_DAMAGED}.") from exc
    if not head and not empty_ok:
        raise MovieError(f"{path}: is empty (0 bytes). {FIX_DAMAGED}.")


@dataclass(frozen=True)
class Reader:
    """A format read by a module of its own (``somascope.io.<module>``), imported only when a
    file of that format is opened (its library may be an optional extra).

    ``segment`` names the module's segment class, built as ``Segment(path, channel=...)``
    (the backend protocol above, plus ``metadata``: a dict with ``format`` and, where the file
    stores them, ``frame_rate`` (Hz), ``pixel_size_um`` (``(y, x)``), ``n_channels`` /
    ``n_planes`` (interleaved frame by frame, undone by :class:`~somascope.io.Movie`, which
    divides ``frame_rate`` by ``n_planes`` unless ``frame_rate_per_volume`` is True),
    ``data_paths`` (where the data are, when the path opened only names them: shown as the size
    on disk) and ``details`` (anything else worth showing)). ``extensions`` are the file
    suffixes it reads; ``claims`` names an optional module function ``(path) -> list[Path] |
    None`` that recognises a path the extensions do not decide (a folder of a recording, a
    ``.bin`` with its ``ops.npy``, a Scanbox ``.mat``) and returns the paths to open, one
    segment each, in recording order (or raises :class:`MovieError` for a recording it
    recognises but cannot open as it is).
    ``extra`` is the ``pip install somascope[extra]`` that brings its library.
    """

    name: str
    module: str
    segment: str
    extensions: tuple[str, ...] = ()
    claims: str | None = None
    extra: str | None = None

    def segment_class(self) -> Any:
        import importlib

        return getattr(importlib.import_module(f"somascope.io.{self.module}"), self.segment)

    def claimed(self, path: Path) -> list[Path] | None:
        if self.claims is None:
            return None
        import importlib

        return getattr(importlib.import_module(f"somascope.io.{self.module}"), self.claims)(path)


#: The formats with modules of their own, asked in this order (see :class:`Reader`).
READERS: tuple[Reader, ...] = (
    Reader("video", "video", "VideoSegment", (".avi", ".mp4", ".mkv", ".mov", ".m4v"),
           claims="video_files", extra="video"),
    Reader("Scanbox", "sbx", "SbxSegment", (".sbx",), claims="sbx_files"),
    Reader("Nikon ND2", "nd2file", "Nd2Segment", (".nd2",), extra="nd2"),
    Reader("Inscopix", "isxd", "IsxdSegment", (".isxd",), extra="inscopix"),
    Reader("Bruker", "bruker", "BrukerSegment", claims="bruker_files"),
    Reader("suite2p", "suite2p", "Suite2pSegment", claims="suite2p_files"),
)


def reader_for(path: Path) -> Reader | None:
    """The :class:`Reader` whose extensions include ``path``'s suffix, if any."""
    ext = path.suffix.lower()
    return next((r for r in READERS if ext in r.extensions), None)


def claim(path: Path) -> tuple[Reader, list[Path]] | None:
    """The first :class:`Reader` that claims ``path`` (a folder or file its extension does
    not decide), and the paths it opens; None when none does."""
    for reader in READERS:
        paths = reader.claimed(path)
        if paths:
            return reader, paths
    return None

CANONICAL_AXES = set("tzyxc")


def _axes_error(path: Path, shape: tuple[int, ...], why: str) -> MovieError:
    return MovieError(
        f"{path}: cannot tell which axis is time in an array of shape {shape} ({why}). "
        "Fix: pass axes= (--axes) naming each axis in stored order with t (time), z (plane), y, x and c (channel), "
        "e.g. axes='tyx' or axes='yxt'."
    )


def _axes_example(ndim: int) -> str:
    return {2: "yx", 3: "tyx (or yxt)", 4: "tzyx (or tyxc)", 5: "tzyxc"}.get(ndim, "tzyxc")


def infer_axes(path: Path, shape: tuple[int, ...], axes: str | None) -> str:
    """Return the axis string of a stored array, validated or inferred.

    Inference is deliberately conservative: a 3-D array is ``tyx`` unless its last axis is
    the smallest (then time-last is as likely, and the user must say); a 4-D array is
    ``tzyx`` unless its last axis could be channels. Anything else needs ``axes``.
    """
    if axes is not None:
        axes = axes.lower()
        if len(axes) != len(shape):
            raise MovieError(
                f"{path}: axes={axes!r} names {len(axes)} axes but the data has {len(shape)} "
                f"(shape {shape}). Fix: give one letter per stored axis, e.g. --axes "
                f"{_axes_example(len(shape))}."
            )
        bad = set(axes) - CANONICAL_AXES
        if bad or len(set(axes)) != len(axes) or not {"t", "y", "x"} <= set(axes):
            raise MovieError(
                f"{path}: axes={axes!r} is not an axis order. Fix: use each of t (time), y, x once and "
                "optionally z (plane) and c (channel), e.g. --axes tyx or yxt."
            )
        return axes
    if len(shape) == 2:
        raise MovieError(
            f"{path}: is a single 2-D image of shape {shape}, not a movie. Fix: pass several images "
            "(a list or a folder) to build a movie, or a file holding frames over time."
        )
    if len(shape) == 3:
        def aspect(h: int, w: int) -> float:
            return max(h, w) / max(1, min(h, w))

        if aspect(shape[1], shape[2]) > 4 and aspect(shape[0], shape[1]) <= 4:
            raise _axes_error(path, shape, "read as t×y×x its frames would be oddly narrow; time may be last")
        return "tyx"
    if len(shape) == 4:
        if shape[3] <= 4:
            raise _axes_error(path, shape, "the last axis is short enough to be colour channels")
        return "tzyx"
    raise _axes_error(path, shape, f"{len(shape)} axes")


class ArraySegment:
    """A movie stored as one N-D array (HDF5 dataset, Zarr array, NPY or raw binary).

    ``axes`` names the stored axes; reading transposes to ``t[z]yx`` and selects ``channel``.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        *,
        dataset: str | None = None,
        axes: str | None = None,
        channel: int | None = None,
        raw_shape: tuple[int, ...] | None = None,
        raw_dtype: Any = None,
        raw_offset: int = 0,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.dataset = dataset
        self.raw_shape = raw_shape
        self.raw_dtype = raw_dtype
        self.raw_offset = raw_offset
        self._handle: Any = None
        self._array: Any = None
        arr = self._open()
        try:
            self._describe(arr, axes, channel)
        except BaseException:
            self.close()
            raise

    def _describe(self, arr: Any, axes: str | None, channel: int | None) -> None:
        self.stored_shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype).newbyteorder("=")
        self.axes = infer_axes(self.path, self.stored_shape, axes)
        self.attrs = self._attrs()
        if "c" in self.axes:
            n_c = self.stored_shape[self.axes.index("c")]
            if channel is None:
                if n_c != 1:
                    raise MovieError(
                        f"{self.path}: has {n_c} channels (axis 'c'). Fix: pass channel= (--channel) "
                        f"0..{n_c - 1} to choose one."
                    )
                channel = 0
            if not 0 <= channel < n_c:
                raise MovieError(f"{self.path}: channel={channel} out of range. Fix: pass --channel "
                                 f"0..{n_c - 1}.")
        elif channel not in (None, 0):
            raise MovieError(
                f"{self.path}: channel={channel} given but the data has no channel axis. Fix: name it in "
                "--axes (letter c), or for interleaved channels pass n_channels= (--n-channels) as well."
            )
        self.channel = channel
        kept = [a for a in self.axes if a != "c"]
        order = "tzyx" if "z" in kept else "tyx"
        self._perm = [kept.index(a) for a in order]
        self.n_raw = self.stored_shape[self.axes.index("t")]
        self.frame_shape = tuple(self.stored_shape[self.axes.index(a)] for a in order[1:])

    # -- handles -------------------------------------------------------------------
    def _open(self) -> Any:
        if self._array is not None:
            return self._array
        if self.kind == "hdf5":
            import h5py

            try:
                self._handle = h5py.File(self.path, "r")
            except PermissionError as exc:
                raise permission_error(self.path) from exc
            except OSError as exc:
                why = one_line(exc)
                what = ("is truncated" if "truncated file" in why else "is not a readable HDF5 file")
                raise MovieError(f"{self.path}: {what} ({why}). Fix: check that it is an HDF5 (.h5, MATLAB v7.3) "
                                 f"movie; if it is, {_lower(FIX_DAMAGED)}.") from exc
            try:
                self._array = self._h5_dataset(self._handle)
            except MovieError:
                self.close()
                raise
            except Exception as exc:  # a damaged object header or link table
                self.close()
                raise MovieError(f"{self.path}: its HDF5 structure is damaged ({one_line(exc)}). "
                                 f"{FIX_DAMAGED}.") from exc
        elif self.kind == "zarr":
            import zarr

            try:
                node = zarr.open(str(self.path), mode="r")
            except PermissionError as exc:
                raise permission_error(self.path) from exc
            except Exception as exc:  # zarr raises several types for a non-zarr path
                raise MovieError(f"{self.path}: not a readable Zarr store ({one_line(exc)}). Fix: check that it is a "
                                 "Zarr folder whose zarr.json (or .zarray) metadata is intact; if it was copied, "
                                 "copy it again.") from exc
            if hasattr(node, "shape"):
                self._array = node
            else:
                names = [k for k, v in node.arrays()]
                self._array = node[self._pick_dataset(names, lambda n: node[n].ndim)]
            _warn_missing_chunks(self.path, self._array)
        elif self.kind == "npy":
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except PermissionError as exc:
                raise permission_error(self.path) from exc
            except (ValueError, OSError, EOFError) as exc:
                why = one_line(exc)
                what = "is truncated" if "larger than file size" in why or "mmap length" in why else \
                    "is not a readable .npy array"
                raise MovieError(f"{self.path}: {what} ({why}). Fix: save it again with numpy.save; "
                                 f"{_lower(FIX_DAMAGED)}.") from exc
        elif self.kind == "raw":
            if self.raw_shape is None or self.raw_dtype is None:
                raise MovieError(
                    f"{self.path}: raw binary files carry no header. Fix: pass shape=(T, H, W) and dtype= "
                    "(--shape T H W --dtype uint16; and --axes if time is not first)."
                )
            try:
                dtype = np.dtype(self.raw_dtype)
            except TypeError as exc:
                raise MovieError(f"{self.path}: dtype={self.raw_dtype!r} is not a data type. Fix: pass e.g. "
                                 "--dtype uint16, int16, float32 or >u2 (big-endian).") from exc
            shape = tuple(int(n) for n in self.raw_shape)
            if not shape or min(shape) < 1 or self.raw_offset < 0:
                raise MovieError(f"{self.path}: shape={shape} offset={self.raw_offset} cannot describe a movie. "
                                 "Fix: give positive sizes, e.g. --shape 3000 512 512.")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + self.raw_offset
            size = _size(self.path)
            if size != expected:
                frame = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                fits = (size - self.raw_offset) // frame if frame and size >= self.raw_offset else 0
                hint = (f"frames of {shape[1:]} {dtype} would fit exactly {fits} times (--shape {fits} "
                        f"{' '.join(map(str, shape[1:]))})" if frame and fits and (size - self.raw_offset) % frame == 0
                        else "no whole number of such frames fits it")
                raise MovieError(
                    f"{self.path}: holds {size} bytes but shape={shape} dtype={dtype} offset={self.raw_offset} "
                    f"needs {expected}; {hint}. Fix: check --shape, --dtype and offset (time first unless --axes).")
            self._array = np.memmap(self.path, dtype=dtype, mode="r", shape=shape, offset=self.raw_offset)
        else:  # pragma: no cover - guarded by the caller
            raise MovieError(f"{self.path}: unknown backend {self.kind!r}")
        return self._array

    def _pick_dataset(self, names: list[str], ndim_of: Any) -> str:
        if self.dataset is not None:
            if self.dataset.strip("/") not in [n.strip("/") for n in names]:
                raise MovieError(
                    f"{self.path}: has no dataset {self.dataset!r}. Fix: pass one of the datasets with 3 or more "
                    f"axes: {[n for n in names if ndim_of(n) >= 3]}."
                )
            return self.dataset
        movies = [n for n in names if ndim_of(n) >= 3]
        if len(movies) == 1:
            return movies[0]
        if not movies:
            raise MovieError(f"{self.path}: contains no dataset with 3 or more axes (found {names}). Fix: save "
                             "the movie as one T×H×W dataset, or pass --dataset.")
        raise MovieError(
            f"{self.path}: contains several possible movies {movies}. Fix: pass dataset= (--dataset) to "
            "choose one."
        )

    def _h5_dataset(self, f: Any) -> Any:
        import h5py

        names: list[str] = []
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        return f[self._pick_dataset(names, lambda n: f[n].ndim)]

    def _attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        src = getattr(self._array, "attrs", None)
        if src is not None:
            for key in src.keys():
                try:
                    value = src[key]
                except Exception:  # unreadable attribute types are skipped, not fatal
                    continue
                if isinstance(value, bytes):
                    value = value.decode(errors="replace")
                if isinstance(value, np.ndarray) and value.size == 1:
                    value = value.item()
                attrs[str(key)] = value
        return attrs

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._array = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_array"] = None
        return state

    # -- reading -------------------------------------------------------------------
    def _fetch(self, indices: np.ndarray) -> np.ndarray:
        arr = self._open()
        key: list[Any] = [slice(None)] * len(self.axes)
        key[self.axes.index("t")] = _as_index(indices)
        if "c" in self.axes:
            key[self.axes.index("c")] = self.channel
        return np.asarray(arr[tuple(key)])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted raw ``indices`` as ``(n, *frame_shape)`` in the stored dtype."""
        indices = np.asarray(indices, dtype=np.int64)
        try:
            data = self._fetch(indices)
        except MovieError:
            raise
        except PermissionError as exc:
            raise permission_error(self.path) from exc
        except Exception as exc:  # h5py, zarr and their codecs raise many types for damaged data
            bad, why = _first_bad_frame(lambda i: self._fetch(np.array([i])), indices, exc)
            raise MovieError(
                f"{self.path}: cannot read frame {bad} ({why}): the data there are truncated or "
                f"corrupt. {FIX_DAMAGED}.") from exc
        data = np.transpose(data, self._perm)
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        return data


def _first_bad_frame(read_one: Any, indices: np.ndarray, exc: BaseException) -> tuple[int, str]:
    """``(frame, why)``: the first of ``indices`` that fails to read on its own, and its error
    (after a read of several frames failed with ``exc``; costs only on that error path)."""
    if len(indices) > 1:
        for i in indices.tolist():
            try:
                read_one(int(i))
            except Exception as one:
                return int(i), one_line(one)
    return (int(indices[0]) if len(indices) else 0), one_line(exc)


def _size(path: Path) -> int:
    return int(os.stat(path).st_size)


def _lower(text: str) -> str:
    """``FIX_DAMAGED`` without its "Fix: " lead, to go inside another fix."""
    text = text.removeprefix("Fix: ")
    return text[:1].lower() + text[1:]


def _tiff_said(logged: list[str], lead: str = "; tifffile: ") -> str:
    """The first of tifffile's held-back log messages, for an error message ("" when none)."""
    if not logged:
        return ""
    import re

    text = re.sub(r"^<[^>]*>\s*", "", " ".join(logged[0].split()))
    return f"{lead}{text[:160]}"


def _warn_missing_chunks(path: Path, array: Any, limit: int = 200_000) -> None:
    """Log a warning when chunk files of a Zarr array are absent: Zarr reads them as its fill
    value (an absent chunk is how Zarr stores an all-empty one, so this is not an error), but a
    store copied incompletely looks the same. Lists the store's keys; skipped above ``limit``
    chunks."""
    try:
        total = int(array.nchunks)
        if total > limit:
            return
        present = int(array.nchunks_initialized)
    except Exception:  # an older zarr, or a store that cannot be listed: nothing to say
        return
    if present < total:
        fill = getattr(array, "fill_value", None)
        fill = fill.item() if hasattr(fill, "item") else fill
        log.warning("%s: %d of its %d chunk files are absent and read as the fill value %r; if the store was "
                    "copied, check that the copy is complete.", path, total - present, total, fill)


def _as_index(indices: np.ndarray) -> Any:
    """A slice when ``indices`` are evenly spaced (fast for every backend), else the list."""
    if len(indices) == 0:
        return slice(0, 0)
    if len(indices) == 1:
        return slice(int(indices[0]), int(indices[0]) + 1)
    steps = np.diff(indices)
    if np.all(steps == steps[0]) and steps[0] > 0:
        return slice(int(indices[0]), int(indices[-1]) + 1, int(steps[0]))
    return indices.tolist()


class TiffSegment:
    """One TIFF/BigTIFF file: memory-mapped when its data are contiguous and uncompressed,
    read page by page otherwise. Every page (IFD) is one stored frame.

    A compressed file is opened from its first page when that page's description gives the
    layout (ImageJ ``images=`` and hyperstack sizes, or tifffile's JSON ``shape``; a file cut
    short then fails when a missing frame is read, with a one-line error); other files go
    through tifffile's series. Compressed pages are read by index from the page chain (no series
    parse per read), so frame ``k`` costs the chain walk to ``k`` and one page.

    A file cut short is refused at open when tifffile finds its page chain broken or, for
    the others, when its frames' data end past the file's last byte (no frame is read); a
    compressed file described by its first page is found when a missing frame is read
    (``somascope run`` reads the first, middle and last frames before any stage). An RGB
    (multi-sample) file needs ``sample`` (``channel=``/``--channel``): the colour kept.
    """

    def __init__(self, path: Path, sample: int | None = None) -> None:
        import tifffile

        self.path = Path(path)
        self._tif: Any = None
        self._mm: Any = None
        self.sample: int | None = None
        self._tiff_kwargs: dict[str, Any] = {}
        with tiff_log() as logged:
            try:
                tif = tifffile.TiffFile(self.path)
                if _pages_written_one_by_one(tif):
                    # tifffile's own writer called once per frame: a series per page; the pages
                    # are the frames of one movie
                    tif.close()
                    self._tiff_kwargs = {"is_shaped": False}
                    tif = tifffile.TiffFile(self.path, **self._tiff_kwargs)
            except PermissionError as exc:
                raise permission_error(self.path) from exc
            except Exception as exc:
                raise MovieError(f"{self.path}: not a readable TIFF file ({one_line(exc)}). Fix: check that it is "
                                 f"a TIFF movie; if it is, {_lower(FIX_DAMAGED)}.") from exc
            try:
                self._init(tif, sample, logged)
            except MovieError:
                raise
            except Exception as exc:
                raise MovieError(f"{self.path}: not a readable TIFF movie ({one_line(exc)}"
                                 f"{_tiff_said(logged)}). {FIX_DAMAGED}.") from exc
            finally:
                tif.close()

    def _init(self, tif: Any, sample: int | None, logged: list[str]) -> None:
        first = tif.pages.first
        self._compressed = int(getattr(first, "compression", 1)) != 1
        # an uncompressed file maps at once (tifffile checks its layout cheaply); a compressed
        # one would have every page header parsed by the series: its description says it
        layout = _described_layout(tif) if self._compressed else None
        series = None
        if layout is None:
            series = tif.series[0]
            if len(tif.series) > 1 and series.kind in ("generic", "uniform", "shaped"):
                parts = ", ".join(f"{len(x.pages)} of {'×'.join(str(d) for d in x.shape[-2:])}"
                                  for x in tif.series[:4]) + (", …" if len(tif.series) > 4 else "")
                raise MovieError(f"{self.path}: holds pages of different shapes or kinds ({len(tif.series)} groups of "
                                 f"pages: {parts} px), not one movie. Fix: save the frames of one recording, all of "
                                 "one shape, in a file of their own.")
            axes, shape = series.axes, tuple(int(s) for s in series.shape)
            self.dtype = np.dtype(series.dtype).newbyteorder("=")
            indices = [getattr(pg, "index", None) for pg in (series.pages[0], series.pages[-1])] \
                if len(series.pages) else [None, None]
        else:
            axes, shape = layout
            self.dtype = np.dtype(first.dtype).newbyteorder("=")
            indices = [0, None]
        broken = [m for m in logged if "invalid page offset" in m]
        if broken:  # the chain of pages points past the end of the file: cut short
            raise MovieError(f"{self.path}: is truncated or corrupt: its list of pages breaks "
                             f"({_tiff_said(broken, lead='tifffile: ')}; file size {_size(self.path)} bytes). "
                             f"{FIX_DAMAGED}.")
        yx = axes.index("Y")
        lead = yx
        if "S" in axes and shape[axes.index("S")] > 1:
            n_s = shape[axes.index("S")]
            if sample is None:
                raise MovieError(
                    f"{self.path}: is an RGB/multi-sample TIFF ({n_s} samples per pixel, axes {axes}). Fix: pass "
                    f"--channel 0..{n_s - 1} (Python: channel=) to keep one colour channel, or save one grey "
                    "channel per page.")
            if not 0 <= int(sample) < n_s:
                raise MovieError(f"{self.path}: channel={sample} out of range: the file has {n_s} samples per "
                                 f"pixel. Fix: pass --channel 0..{n_s - 1}.")
            self.sample = int(sample)
            lead = min(yx, axes.index("S"))
        self.series_axes = axes
        self.frame_shape = (shape[yx], shape[yx + 1])
        # per stored frame as tifffile gives it: (H, W), or with the samples axis (H, W, S) / (S, H, W)
        self._stored_frame = tuple(shape[lead:])
        self._sample_axis = axes[lead:].index("S") if self.sample is not None else None
        self.n_raw = int(np.prod(shape[:lead], dtype=np.int64)) if lead > 0 else 1
        self.hyperstack = {a: shape[i] for i, a in enumerate(axes[:lead]) if shape[i] > 1}
        # pages of the frames are pages first_page … first_page + n_raw − 1 of the file
        self._first_page = indices[0] if isinstance(indices[0], int) and (
            layout is not None or indices[1] == indices[0] + self.n_raw - 1) else None
        self.metadata = _tiff_metadata(tif)
        if series is not None:
            self._check_size(series)

    def _check_size(self, series: Any) -> None:
        """Refuse a file whose frames end past its last byte (cut short by a copy or a crash):
        from the layout of a contiguous series, else from the last page's data offsets; no
        frame is read."""
        size = _size(self.path)
        frame_bytes = int(np.prod(self._stored_frame, dtype=np.int64)) * self.dtype.itemsize
        offset = getattr(series, "dataoffset", None)
        if offset is not None and not self._compressed:
            need = int(offset) + self.n_raw * frame_bytes
            if need > size:
                whole = max(0, (size - int(offset)) // frame_bytes) if frame_bytes else 0
                raise MovieError(
                    f"{self.path}: is truncated: its {self.n_raw} frames need {need} bytes but the file holds {size} "
                    f"(only the first {whole} frames are complete). {FIX_DAMAGED}.")
            return
        if len(series.pages) != self.n_raw:
            return
        last = series.pages[-1]
        ends = [int(o) + int(n) for o, n in zip(getattr(last, "dataoffsets", ()), getattr(last, "databytecounts", ()))]
        if ends and max(ends) > size:
            raise MovieError(
                f"{self.path}: is truncated: the data of its last frame ({self.n_raw - 1}) end at byte {max(ends)} but "
                f"the file holds {size}. {FIX_DAMAGED}.")

    def _open(self) -> None:
        if self._mm is None and self._tif is None:
            import tifffile

            if not self._compressed:
                try:
                    mm = tifffile.memmap(self.path, mode="r", **self._tiff_kwargs)
                    self._mm = mm.reshape((self.n_raw, *self._stored_frame))
                    return
                except (ValueError, OSError):
                    pass
            self._tif = tifffile.TiffFile(self.path, **self._tiff_kwargs)
            if self._first_page is not None:
                self._tif.pages.useframes = True  # light page objects, shaped like the first
                self._tif.pages.set_keyframe(self._first_page)

    def read(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        with tiff_log() as logged:
            try:
                data = self._read(indices)
            except MovieError:
                raise
            except PermissionError as exc:
                raise permission_error(self.path) from exc
            except Exception as exc:  # tifffile and its codecs raise many types for damaged files
                bad, why = _first_bad_frame(lambda i: self._read(np.array([i])), indices, exc)
                raise MovieError(
                    f"{self.path}: cannot read frame {bad} ({why}{_tiff_said(logged)}): the file is truncated "
                    f"or corrupt. {FIX_DAMAGED}.") from exc
        data = data.reshape((len(indices), *self._stored_frame))
        if self.sample is not None:
            data = np.take(data, self.sample, axis=1 + int(self._sample_axis or 0))
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        return data

    def _read(self, indices: np.ndarray) -> np.ndarray:
        self._open()
        if self._mm is not None:
            return np.asarray(self._mm[_as_index(indices)])
        if self._first_page is not None:
            pages, base = self._tif.pages, self._first_page
        else:
            pages, base = (self._tif.series[0].pages if self.n_raw > 1 else self._tif.pages), 0
        if not len(indices):
            return np.empty((0, *self._stored_frame), self.dtype)
        frames = []
        for i in indices:
            try:
                page = pages[base + int(i)]
            except IndexError:
                raise MovieError(f"{self.path}: frame {int(i)} is missing: the file ends before it (the file is "
                                 f"truncated). {FIX_DAMAGED}.") from None
            if page is None:
                raise MovieError(f"{self.path}: frame {int(i)} is missing (the file is truncated or corrupt). "
                                 f"{FIX_DAMAGED}.")
            frames.append(page.asarray())
        return np.stack(frames)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._tif = None
        self._mm = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tif"] = None
        state["_mm"] = None
        return state


def _described_layout(tif: Any) -> tuple[str, tuple[int, ...]] | None:
    """``(axes, shape)`` of a one-sample-per-pixel movie whose first page's description gives
    its layout (ImageJ: ``images=`` and the hyperstack sizes, axes ``TZCYX``; tifffile: a JSON
    ``shape``), without reading the other pages; None when it does not (tifffile's series
    decides then)."""
    import json

    first = tif.pages.first
    if int(getattr(first, "samplesperpixel", 1)) != 1 or len(first.shape) != 2:
        return None
    H, W = (int(s) for s in first.shape)
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        images = int(ij.get("images", 0) or 0)
        sizes = [(a, int(ij.get(k, 1) or 1)) for a, k in (("T", "frames"), ("Z", "slices"), ("C", "channels"))]
        if images < 1 or math.prod(n for _, n in sizes) not in (1, images):
            return None
        kept = [(a, n) for a, n in sizes if n > 1] or [("T", images)]
        if math.prod(n for _, n in kept) != images:
            return None
        return "".join(a for a, _ in kept) + "YX", tuple(n for _, n in kept) + (H, W)
    if tif.is_shaped and not tif.is_ome:
        try:
            shape = tuple(int(s) for s in json.loads(first.description)["shape"])
        except (ValueError, KeyError, TypeError):
            return None
        if len(shape) < 2 or shape[-2:] != (H, W):
            return None
        lead = shape[:-2] or (1,)
        n = math.prod(lead)
        return "T" + "YX", (n, H, W)
    return None


def _imagej_plane_step(tif: Any, ij: dict[str, Any]) -> float | None:
    """The distance between the planes of an ImageJ hyperstack in pixels (its ``spacing`` over
    the pixel width from the XResolution tag, both in the file's unit), or None when the file
    does not state both."""
    try:
        spacing = float(ij.get("spacing") or 0)
        num, den = tif.pages.first.tags["XResolution"].value
        width = float(den) / float(num)  # units per pixel
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not (spacing > 0 and width > 0) or int(ij.get("slices", 1) or 1) < 2:
        return None
    return spacing / width


def _tiff_metadata(tif: Any) -> dict[str, Any]:
    """Frame rate and interleaving hints from ImageJ / ScanImage metadata, when present."""
    meta: dict[str, Any] = {}
    ij = tif.imagej_metadata or {}
    if ij:
        meta["imagej"] = {k: v for k, v in ij.items() if isinstance(v, (int, float, str))}
        if ij.get("finterval"):
            meta["frame_rate"] = 1.0 / float(ij["finterval"])
            if int(ij.get("slices", 1) or 1) > 1:
                meta["frame_rate_per_volume"] = True  # a hyperstack's finterval: between time points
        elif ij.get("fps"):
            meta["frame_rate"] = float(ij["fps"])
        step = _imagej_plane_step(tif, ij)
        if step is not None:
            meta["plane_step_px"] = step
    si = getattr(tif, "scanimage_metadata", None)
    if si:
        frame_data = si.get("FrameData", {}) if isinstance(si, dict) else {}
        rate = frame_data.get("SI.hRoiManager.scanFrameRate")
        volume_rate = frame_data.get("SI.hRoiManager.scanVolumeRate")
        chans = frame_data.get("SI.hChannels.channelSave")
        planes = frame_data.get("SI.hStackManager.numSlices")
        meta["scanimage"] = {
            "scanFrameRate": rate,
            "scanVolumeRate": volume_rate,
            "channelSave": chans,
            "numSlices": planes,
        }
        if rate:
            meta["frame_rate"] = float(rate)
        if isinstance(chans, list):
            meta["n_channels"] = len(chans)
        elif chans is not None:
            meta["n_channels"] = 1
        if planes:
            meta["n_planes"] = int(planes)
    return meta


def segment_for(
    path: Path,
    *,
    dataset: str | None,
    axes: str | None,
    channel: int | None,
    shape: tuple[int, ...] | None,
    dtype: Any,
    offset: int,
    reader: Reader | None = None,
) -> Any:
    """The backend for ``path``: ``reader``'s segment when given (a path it claimed), else
    chosen by extension (:data:`READERS` first; Zarr also when a folder has ``.zarray`` or
    ``zarr.json``)."""
    ext = path.suffix.lower()
    if reader is None:
        reader = reader_for(path)
    # formats with a reader of their own say themselves what is wrong with an empty file
    probe_path(path, empty_ok=reader is not None)
    if reader is not None:
        return reader.segment_class()(path, channel=channel)
    if path.is_dir() and ext not in ZARR_EXTENSIONS:
        if (path / ".zarray").exists() or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            ext = ".zarr"
    if ext in TIFF_EXTENSIONS:
        if path.is_dir():
            raise MovieError(f"{path}: is a folder, not a TIFF file. Fix: pass the movie file itself, or a "
                             "folder holding .tif files.")
        if axes is not None:
            raise MovieError(
                f"{path}: axes= is for arrays (HDF5, Zarr, NPY, raw); TIFF pages are frames. Fix: drop --axes; "
                "use n_channels/channel and n_planes/plane for interleaved ScanImage-style files."
            )
        if shape is not None or dtype is not None:
            raise MovieError(f"{path}: shape= and dtype= describe raw binary files; a TIFF file stores its own. "
                             "Fix: drop --shape and --dtype.")
        return TiffSegment(path, sample=channel)
    kinds = {**dict.fromkeys(HDF5_EXTENSIONS, "hdf5"), **dict.fromkeys(ZARR_EXTENSIONS, "zarr"),
             **dict.fromkeys(NPY_EXTENSIONS, "npy"), **dict.fromkeys(RAW_EXTENSIONS, "raw")}
    if ext not in kinds:
        raise MovieError(
            f"{path}: unsupported file type {ext or '(no extension)'!r}. Fix: pass one of "
            f"{', '.join(SUPPORTED + tuple(e for r in READERS for e in r.extensions))} or a "
            "folder of a Miniscope, Bruker or suite2p recording (docs/formats.md); convert other formats "
            "to TIFF, or pass an array."
        )
    if kinds[ext] != "raw" and (shape is not None or dtype is not None):
        raise MovieError(f"{path}: shape= and dtype= describe raw binary files (.raw, .bin, .dat); this file "
                         "stores its own. Fix: drop --shape and --dtype.")
    if kinds[ext] in ("hdf5", "npy", "raw") and path.is_dir():
        raise MovieError(f"{path}: is a folder, not a {ext} file. Fix: pass the movie file itself.")
    return ArraySegment(
        path, kinds[ext], dataset=dataset, axes=axes, channel=channel,
        raw_shape=shape, raw_dtype=dtype, raw_offset=offset,
    )
