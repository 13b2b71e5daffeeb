"""File-format backends behind :class:`somascope.io.Movie`.

Each backend is a *segment*: a picklable description of one file (path plus how to read it)
that exposes ``n_raw`` (number of stored frames, before channel/plane de-interleaving),
``frame_shape`` in canonical order (``(H, W)``; ``(Z, H, W)`` for volumetric layouts),
``dtype`` and ``read(indices) -> ndarray (len(indices), *frame_shape)``. Handles are opened
lazily, dropped when pickled, and closed by ``close()``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MovieError, one_line

TIFF_EXTENSIONS = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".mat")
ZARR_EXTENSIONS = (".zarr",)
NPY_EXTENSIONS = (".npy",)
RAW_EXTENSIONS = (".raw", ".bin", ".dat")
SUPPORTED = TIFF_EXTENSIONS + HDF5_EXTENSIONS + ZARR_EXTENSIONS + NPY_EXTENSIONS + RAW_EXTENSIONS


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
        "Pass axes= naming each axis in stored order with t (time), z (plane), y, x and c (channel), "
        "e.g. axes='tyx' or axes='yxt'."
    )


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
                f"(shape {shape}); give one letter per axis."
            )
        bad = set(axes) - CANONICAL_AXES
        if bad or len(set(axes)) != len(axes) or not {"t", "y", "x"} <= set(axes):
            raise MovieError(
                f"{path}: axes={axes!r} must use each of t, y, x once and optionally z and c "
                "(letters from 'tzyxc')."
            )
        return axes
    if len(shape) == 2:
        raise MovieError(
            f"{path}: is a single 2-D image of shape {shape}, not a movie. Pass several images "
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
        self.stored_shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype).newbyteorder("=")
        self.axes = infer_axes(self.path, self.stored_shape, axes)
        self.attrs = self._attrs()
        if "c" in self.axes:
            n_c = self.stored_shape[self.axes.index("c")]
            if channel is None:
                if n_c != 1:
                    raise MovieError(
                        f"{self.path}: has {n_c} channels (axis 'c'); pass channel= (0..{n_c - 1}) "
                        "to choose one."
                    )
                channel = 0
            if not 0 <= channel < n_c:
                raise MovieError(f"{self.path}: channel={channel} out of range 0..{n_c - 1}.")
        elif channel not in (None, 0):
            raise MovieError(
                f"{self.path}: channel={channel} given but the data has no channel axis; "
                "for interleaved channels pass n_channels= as well."
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
            except OSError as exc:
                raise MovieError(f"{self.path}: not a readable HDF5 file ({exc}).") from exc
            self._array = self._h5_dataset(self._handle)
        elif self.kind == "zarr":
            import zarr

            try:
                node = zarr.open(str(self.path), mode="r")
            except Exception as exc:  # zarr raises several types for a non-zarr path
                raise MovieError(f"{self.path}: not a readable Zarr store ({exc}).") from exc
            if hasattr(node, "shape"):
                self._array = node
            else:
                names = [k for k, v in node.arrays()]
                self._array = node[self._pick_dataset(names, lambda n: node[n].ndim)]
        elif self.kind == "npy":
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise MovieError(f"{self.path}: not a readable .npy array ({exc}).") from exc
        elif self.kind == "raw":
            if self.raw_shape is None or self.raw_dtype is None:
                raise MovieError(
                    f"{self.path}: raw binary files carry no header; pass shape=(T, H, W) and dtype= "
                    "(and axes= if time is not first)."
                )
            dtype = np.dtype(self.raw_dtype)
            expected = int(np.prod(self.raw_shape)) * dtype.itemsize + self.raw_offset
            size = self.path.stat().st_size
            if size < expected:
                raise MovieError(
                    f"{self.path}: holds {size} bytes but shape={self.raw_shape} dtype={dtype} "
                    f"needs {expected}; check shape, dtype and offset."
                )
            self._array = np.memmap(
                self.path, dtype=dtype, mode="r", shape=tuple(self.raw_shape), offset=self.raw_offset
            )
        else:  # pragma: no cover - guarded by the caller
            raise MovieError(f"{self.path}: unknown backend {self.kind!r}")
        return self._array

    def _pick_dataset(self, names: list[str], ndim_of: Any) -> str:
        if self.dataset is not None:
            if self.dataset.strip("/") not in [n.strip("/") for n in names]:
                raise MovieError(
                    f"{self.path}: has no dataset {self.dataset!r}; datasets with 3 or more axes: "
                    f"{[n for n in names if ndim_of(n) >= 3]}."
                )
            return self.dataset
        movies = [n for n in names if ndim_of(n) >= 3]
        if len(movies) == 1:
            return movies[0]
        if not movies:
            raise MovieError(f"{self.path}: contains no dataset with 3 or more axes (found {names}).")
        raise MovieError(
            f"{self.path}: contains several possible movies {movies}; pass dataset= to choose one."
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
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted raw ``indices`` as ``(n, *frame_shape)`` in the stored dtype."""
        arr = self._open()
        indices = np.asarray(indices, dtype=np.int64)
        key: list[Any] = [slice(None)] * len(self.axes)
        key[self.axes.index("t")] = _as_index(indices)
        if "c" in self.axes:
            key[self.axes.index("c")] = self.channel
        data = np.asarray(arr[tuple(key)])
        data = np.transpose(data, self._perm)
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        return data


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
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = Path(path)
        self._tif: Any = None
        self._mm: Any = None
        try:
            tif = tifffile.TiffFile(self.path)
        except Exception as exc:
            raise MovieError(f"{self.path}: not a readable TIFF file ({exc}).") from exc
        try:
            first = tif.pages.first
            self._compressed = int(getattr(first, "compression", 1)) != 1
            # an uncompressed file maps at once (tifffile checks its layout cheaply); a compressed
            # one would have every page header parsed by the series: its description says it
            layout = _described_layout(tif) if self._compressed else None
            if layout is None:
                series = tif.series[0]
                axes, shape = series.axes, tuple(int(s) for s in series.shape)
                self.dtype = np.dtype(series.dtype).newbyteorder("=")
                indices = [getattr(pg, "index", None) for pg in (series.pages[0], series.pages[-1])] \
                    if len(series.pages) else [None, None]
            else:
                axes, shape = layout
                self.dtype = np.dtype(first.dtype).newbyteorder("=")
                indices = [0, None]
            if "S" in axes and shape[axes.index("S")] > 1:
                raise MovieError(
                    f"{self.path}: is an RGB/multi-sample TIFF (axes {axes}); save it as "
                    "one grey channel per page, or split the colour channels before loading."
                )
            self.series_axes = axes
            yx = axes.index("Y")
            self.frame_shape = (shape[yx], shape[yx + 1])
            self.n_raw = int(np.prod(shape[:yx], dtype=np.int64)) if yx > 0 else 1
            self.hyperstack = {a: shape[i] for i, a in enumerate(axes[:yx]) if shape[i] > 1}
            # pages of the frames are pages first_page … first_page + n_raw − 1 of the file
            self._first_page = indices[0] if isinstance(indices[0], int) and (
                layout is not None or indices[1] == indices[0] + self.n_raw - 1) else None
            self.metadata = _tiff_metadata(tif)
        except MovieError:
            raise
        except Exception as exc:
            raise MovieError(f"{self.path}: not a readable TIFF movie ({one_line(exc)}).") from exc
        finally:
            tif.close()

    def _open(self) -> None:
        if self._mm is None and self._tif is None:
            import tifffile

            if not self._compressed:
                try:
                    mm = tifffile.memmap(self.path, mode="r")
                    self._mm = mm.reshape((self.n_raw, *self.frame_shape))
                    return
                except (ValueError, OSError):
                    pass
            self._tif = tifffile.TiffFile(self.path)
            if self._first_page is not None:
                self._tif.pages.useframes = True  # light page objects, shaped like the first
                self._tif.pages.set_keyframe(self._first_page)

    def read(self, indices: np.ndarray) -> np.ndarray:
        self._open()
        indices = np.asarray(indices, dtype=np.int64)
        if self._mm is not None:
            data = np.asarray(self._mm[_as_index(indices)])
        else:
            if self._first_page is not None:
                pages, base = self._tif.pages, self._first_page
            else:
                pages, base = (self._tif.series[0].pages if self.n_raw > 1 else self._tif.pages), 0
            try:
                data = np.stack([pages[base + int(i)].asarray() for i in indices]) if len(indices) else (
                    np.empty((0, *self.frame_shape), self.dtype)
                )
            except (IndexError, ValueError, OSError) as exc:
                raise MovieError(f"{self.path}: cannot read frames {indices[:3].tolist()}… "
                                 f"({one_line(exc)}); the file may be truncated.") from exc
        data = data.reshape((len(indices), *self.frame_shape))
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        return data

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


def _tiff_metadata(tif: Any) -> dict[str, Any]:
    """Frame rate and interleaving hints from ImageJ / ScanImage metadata, when present."""
    meta: dict[str, Any] = {}
    ij = tif.imagej_metadata or {}
    if ij:
        meta["imagej"] = {k: v for k, v in ij.items() if isinstance(v, (int, float, str))}
        if ij.get("finterval"):
            meta["frame_rate"] = 1.0 / float(ij["finterval"])
        elif ij.get("fps"):
            meta["frame_rate"] = float(ij["fps"])
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
    if not path.exists():
        raise MovieError(f"{path}: no such file or folder; check the path (cwd is {os.getcwd()}).")
    if reader is None:
        reader = reader_for(path)
    if reader is not None:
        return reader.segment_class()(path, channel=channel)
    if path.is_dir() and ext not in ZARR_EXTENSIONS:
        if (path / ".zarray").exists() or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            ext = ".zarr"
    if ext in TIFF_EXTENSIONS:
        if axes is not None:
            raise MovieError(
                f"{path}: axes= is for arrays (HDF5, Zarr, NPY, raw); TIFF pages are frames — use "
                "n_channels/channel and n_planes/plane for interleaved ScanImage-style files."
            )
        return TiffSegment(path)
    kinds = {**dict.fromkeys(HDF5_EXTENSIONS, "hdf5"), **dict.fromkeys(ZARR_EXTENSIONS, "zarr"),
             **dict.fromkeys(NPY_EXTENSIONS, "npy"), **dict.fromkeys(RAW_EXTENSIONS, "raw")}
    if ext not in kinds:
        raise MovieError(
            f"{path}: unsupported file type {ext or '(no extension)'!r}; somascope reads "
            f"{', '.join(SUPPORTED + tuple(e for r in READERS for e in r.extensions))} and the "
            "folders of Miniscope, Bruker and suite2p recordings (docs/formats.md; for other formats "
            "convert to TIFF, or pass an array)."
        )
    return ArraySegment(
        path, kinds[ext], dataset=dataset, axes=axes, channel=channel,
        raw_shape=shape, raw_dtype=dtype, raw_offset=offset,
    )
