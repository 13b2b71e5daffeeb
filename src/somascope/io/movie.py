"""Lazy movies: :func:`open_movie` and :class:`Movie`.

A :class:`Movie` knows its shape (``T×H×W`` or ``T×Z×H×W``), dtype, frame rate and source
metadata, and reads frames on demand; it never loads the whole file. Several files are
concatenated in time. ScanImage-style interleaving (channels and/or planes alternating frame by
frame) is undone by ``n_channels``/``channel`` and ``n_planes``/``plane``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import (SUPPORTED, TIFF_EXTENSIONS, ArraySegment, TiffSegment, claim, permission_error, reader_for,
                       segment_for)
from .chunks import iter_chunks
from .errors import MovieError

log = logging.getLogger("somascope.io")

#: More channels than this in an ImageJ hyperstack without frames are frames (see open_movie).
MAX_IMAGEJ_CHANNELS = 4


def min_frames() -> int:
    """The pipeline's one minimum number of frames, :data:`somascope.cnmf.fit.MIN_FRAMES`
    (imported only when a message needs it: io sits below cnmf)."""
    from ..cnmf.fit import MIN_FRAMES

    return int(MIN_FRAMES)


def check_dtype(path: Any, dtype: np.dtype) -> None:
    """Refuse data types that are not intensities: complex, text, objects, records, times."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise MovieError(
            f"{path}: holds complex numbers ({dtype}); a fluorescence movie is real. Fix: save the magnitude "
            "(numpy.abs) or the real part (.real) as float32, e.g. numpy.save('movie.npy', numpy.abs(data)).")
    if dtype.kind not in "biuf":
        raise MovieError(
            f"{path}: holds {dtype} values, not numbers. Fix: save the movie as integers or floats "
            "(uint16, int16, float32).")

PathLike = str | Path


class Movie:
    """A lazily read movie, shape ``(T, H, W)`` or ``(T, Z, H, W)``.

    Index it like an array (``movie[10:20]``, ``movie[5]``, ``movie[:, 0:64, 0:64]``); the
    time index is resolved first so only the frames asked for are read. Use as a context
    manager (or call :meth:`close`) to release file handles deterministically. Movies pickle
    cheaply (paths and settings only), so Dask workers reopen the files themselves.
    """

    def __init__(
        self,
        segments: Sequence[TiffSegment | ArraySegment],
        *,
        n_channels: int = 1,
        channel: int | None = None,
        n_planes: int = 1,
        plane: int | None = None,
        frame_rate: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._segments = list(segments)
        first = self._segments[0]
        for seg in self._segments[1:]:
            if seg.frame_shape != first.frame_shape:
                raise MovieError(
                    f"{seg.path}: frame shape {seg.frame_shape} differs from {first.path} "
                    f"{first.frame_shape}; files concatenated in time must have equal frame shapes. Fix: "
                    "move the files of other recordings out of the folder (or list the files to use)."
                )
            if np.dtype(seg.dtype) != np.dtype(first.dtype):
                log.info("%s: dtype %s differs from %s (%s); frames are read as %s", seg.path, seg.dtype,
                         first.path, first.dtype, first.dtype)
        check_dtype(first.path, first.dtype)
        self.dtype = np.dtype(first.dtype)
        self._offsets = np.cumsum([0] + [s.n_raw for s in self._segments])
        n_raw = int(self._offsets[-1])
        self.n_channels, self.n_planes = int(n_channels), int(n_planes)
        if self.n_channels < 1 or self.n_planes < 1:
            raise MovieError("n_channels and n_planes must be >= 1.")
        if self.n_channels > 1 and channel is None:
            raise MovieError(
                f"{first.path}: frames interleave {self.n_channels} channels. Fix: pass channel= (--channel) "
                f"0..{self.n_channels - 1} to choose the functional channel."
            )
        self.channel = 0 if channel is None else int(channel)
        if not 0 <= self.channel < self.n_channels:
            raise MovieError(f"{first.path}: channel={channel} out of range. Fix: pass --channel "
                             f"0..{self.n_channels - 1} (with --n-channels for interleaved channels).")
        if plane is not None and not 0 <= int(plane) < self.n_planes:
            raise MovieError(f"{first.path}: plane={plane} out of range. Fix: pass --plane 0..{self.n_planes - 1}.")
        self.plane = None if plane is None else int(plane)
        if self.n_planes > 1 and len(first.frame_shape) == 3:
            raise MovieError(f"{first.path}: data are already volumetric; n_planes must be 1.")
        self._period = self.n_channels * self.n_planes
        n_frames = n_raw // self._period
        self.dropped_frames = n_raw - n_frames * self._period
        if n_frames == 0:
            raise MovieError(
                f"{first.path}: contains no complete frame (stored frames: {n_raw}, "
                f"interleave period: {self._period}); the file is empty or the interleaving is wrong. Fix: "
                f"pass a movie of at least {min_frames()} frames, or check --n-channels / --n-planes."
            )
        if self.n_planes > 1 and self.plane is None:
            self._planes = list(range(self.n_planes))
            frame_shape: tuple[int, ...] = (self.n_planes, *first.frame_shape)
        else:
            self._planes = [self.plane or 0]
            frame_shape = tuple(first.frame_shape)
        self.shape: tuple[int, ...] = (n_frames, *frame_shape)
        self.frame_rate = None if frame_rate is None else float(frame_rate)
        if self.frame_rate is not None and not (self.frame_rate > 0 and math.isfinite(self.frame_rate)):
            raise MovieError(f"frame_rate must be a positive number of Hz, got {frame_rate!r}.")
        self.metadata = dict(metadata or {})

    # -- array-like ----------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self._segments]

    @property
    def nbytes(self) -> int:
        """Bytes of the movie in its stored dtype."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        tkey, rest = key[0], key[1:]
        scalar = isinstance(tkey, (int, np.integer))
        times = np.arange(self.shape[0])[tkey]
        times = np.atleast_1d(times)
        data = self._read_frames(times)
        if scalar:
            data = data[0]
        return data[(slice(None),) * (0 if scalar else 1) + rest] if rest else data

    def _read_frames(self, times: np.ndarray) -> np.ndarray:
        out = np.empty((len(times), *self.shape[1:]), dtype=self.dtype)
        if len(times) == 0:
            return out
        for zi, z in enumerate(self._planes):
            raw = times * self._period + z * self.n_channels + self.channel
            order = np.argsort(raw, kind="stable")
            raw_sorted = raw[order]
            seg_of = np.searchsorted(self._offsets, raw_sorted, side="right") - 1
            block = np.empty((len(times), *self._segments[0].frame_shape), dtype=self.dtype)
            for s in np.unique(seg_of):
                sel = seg_of == s
                block[order[sel]] = self._segments[s].read(raw_sorted[sel] - self._offsets[s])
            if len(self._planes) > 1:
                out[:, zi] = block
            else:
                out[...] = block
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    # -- checks --------------------------------------------------------------------
    def count_nonfinite(self, chunk_frames: int = 200, progress: bool = False) -> dict[str, Any]:
        """Scan the movie in chunks for NaN/Inf values.

        Returns ``{"nan": int, "inf": int, "frames": [first few bad frame indices]}``.
        Every frame is read, so a file damaged anywhere raises :class:`MovieError`; integer
        movies cannot hold NaN and are only read.
        """
        report: dict[str, Any] = {"nan": 0, "inf": 0, "frames": []}
        for t0, block in iter_chunks(self, chunk_frames, dtype=None, progress=progress, desc="checking"):
            if not np.issubdtype(block.dtype, np.floating):
                continue
            nan = np.isnan(block)
            inf = np.isinf(block)
            report["nan"] += int(nan.sum())
            report["inf"] += int(inf.sum())
            bad = np.flatnonzero((nan | inf).reshape(len(block), -1).any(axis=1))
            report["frames"].extend((t0 + bad[: 10 - len(report["frames"])]).tolist())
        return report

    def check_finite(self, chunk_frames: int = 200, progress: bool = False) -> None:
        """Raise :class:`MovieError` naming the file and the first bad frames if the movie
        holds NaN or Inf."""
        rep = self.count_nonfinite(chunk_frames, progress)
        if rep["nan"] or rep["inf"]:
            raise MovieError(
                f"{self.paths[0]}: contains {rep['nan']} NaN and {rep['inf']} Inf values "
                f"(first bad frames: {rep['frames']}); remove or interpolate those frames "
                "(e.g. replace NaN with the frame's median) before processing."
            )

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        for seg in self._segments:
            seg.close()

    def __enter__(self) -> Movie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        rate = f"{self.frame_rate:g} Hz" if self.frame_rate else "frame rate unknown"
        src = str(self.paths[0]) + (f" (+{len(self.paths) - 1} files)" if len(self.paths) > 1 else "")
        return f"Movie(shape={self.shape}, dtype={self.dtype}, {rate}, source={src})"


def _expand_paths(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        path = Path(path_or_paths).expanduser()
        if path.is_dir() and path.suffix.lower() != ".zarr" and not any(
            (path / m).exists() for m in (".zarray", ".zgroup", "zarr.json")
        ):
            try:
                entries = list(path.iterdir())
            except PermissionError as exc:
                raise permission_error(path) from exc
            files = sorted(p for p in entries if p.suffix.lower() in TIFF_EXTENSIONS and not p.is_dir())
            if not files:
                if path.suffix.lower() in SUPPORTED:
                    what = (f"is a folder, not a {path.suffix} file, and holds no TIFF files"
                            + ("" if entries else " (it is empty)"))
                elif not entries:
                    what = "is an empty folder"
                else:
                    names = sorted(p.name for p in entries)
                    what = (f"is a folder holding no TIFF files ({len(names)} other entries: "
                            f"{', '.join(names[:4])}{', …' if len(names) > 4 else ''})")
                raise MovieError(
                    f"{path}: {what}. Fix: point to a movie file, or a folder of .tif files to concatenate in "
                    f"time (single files: {', '.join(SUPPORTED)}; docs/formats.md)."
                )
            return _natural_sort(files)
        return [path]
    paths = [Path(p).expanduser() for p in path_or_paths]
    if not paths:
        raise MovieError("open_movie got an empty list of paths. Fix: pass at least one file.")
    return paths


def _natural_sort(paths: list[Path]) -> list[Path]:
    """Sort so that ``2.tif`` comes before ``10.tif``."""
    import re

    def key(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]

    return sorted(paths, key=key)


def open_movie(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    dataset: str | None = None,
    axes: str | None = None,
    frame_rate: float | None = None,
    n_channels: int | None = None,
    channel: int | None = None,
    n_planes: int | None = None,
    plane: int | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
    offset: int = 0,
) -> Movie:
    """Open a movie lazily.

    Parameters
    ----------
    path_or_paths
        A file, a folder of TIFF files, or a list of files, concatenated in time (natural
        order for folders). Formats: TIFF/BigTIFF (``.tif``, ``.tiff``, ``.btf``), HDF5
        (``.h5``, ``.hdf5``, ``.mat`` v7.3), Zarr (``.zarr`` folder), NPY (memory-mapped)
        and raw binary (``.raw``, ``.bin``, ``.dat`` with ``shape`` and ``dtype``); and, by
        readers of their own (:data:`somascope.io.backends.READERS`, docs/formats.md): video
        files and Miniscope folders, Scanbox ``.sbx``, suite2p ``data.bin`` / plane folders,
        Nikon ``.nd2``, Inscopix ``.isxd`` and Bruker PrairieView folders — for those,
        ``channel`` picks a channel and the other array options do not apply.
    dataset
        HDF5/Zarr dataset path; optional when the file holds exactly one array with ≥3 axes.
    axes
        Stored axis order of array formats, letters from ``tzyxc`` (e.g. ``'yxt'`` for
        time-last HDF5, ``'tzyxc'`` for a multi-channel volume). Inferred for unambiguous
        3-D/4-D arrays, otherwise required.
    frame_rate
        Frames (volumes) per second, Hz. Taken from file metadata when absent (ImageJ
        ``finterval``, ScanImage ``scanFrameRate``, HDF5 ``fr``/``frame_rate``/``fs`` attribute).
    n_channels, channel
        Channels interleaved frame by frame (ScanImage), and which one to keep. For a channel
        axis (``c`` in ``axes``) pass only ``channel``.
    n_planes, plane
        Planes interleaved frame by frame; ``plane=None`` with ``n_planes > 1`` gives a
        ``T×Z×H×W`` volume movie, an integer keeps one plane.
    shape, dtype, offset
        Layout of raw binary files (``offset`` in bytes).

    Raises
    ------
    MovieError
        Missing file, unsupported extension, a 2-D image, ambiguous axes, zero frames,
        mismatched files, bad channel/plane selection; the message names the file and the fix.
    """
    try:
        return _open_movie(path_or_paths, dataset=dataset, axes=axes, frame_rate=frame_rate, n_channels=n_channels,
                           channel=channel, n_planes=n_planes, plane=plane, shape=shape, dtype=dtype, offset=offset)
    except PermissionError as exc:  # a folder or file this user cannot read, met by a reader
        raise permission_error(exc.filename or path_or_paths) from exc
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise MovieError(f"{exc.filename or path_or_paths}: {exc.strerror or exc}. Fix: pass the movie file "
                         "(or the recording's folder) itself.") from exc


def _open_movie(
    path_or_paths: PathLike | Sequence[PathLike], *, dataset: str | None, axes: str | None,
    frame_rate: float | None, n_channels: int | None, channel: int | None, n_planes: int | None,
    plane: int | None, shape: tuple[int, ...] | None, dtype: Any, offset: int,
) -> Movie:
    claimed = None
    if isinstance(path_or_paths, (str, Path)) and Path(path_or_paths).expanduser().exists():
        claimed = claim(Path(path_or_paths).expanduser())
    reader = None
    if claimed is not None:
        reader, paths = claimed
    else:
        paths = _expand_paths(path_or_paths)
        reader = reader_for(paths[0])
    if reader is not None:  # a format with a module of its own: channels are its business
        segments = [segment_for(p, dataset=None, axes=None, channel=channel, shape=None, dtype=None, offset=0,
                                reader=reader) for p in paths]
        meta = {"paths": [str(p) for p in paths], **segments[0].metadata}
        rate = frame_rate if frame_rate is not None else meta.get("frame_rate")
        n_pl = n_planes if n_planes is not None else int(meta.get("n_planes", 1))
        if rate is not None and n_pl > 1 and frame_rate is None and not meta.get("frame_rate_per_volume"):
            rate = float(rate) / n_pl  # each plane is sampled once per volume
        return Movie(segments, n_channels=int(n_channels or 1), channel=None, n_planes=n_pl, plane=plane,
                     frame_rate=rate, metadata=meta)
    array_channel = channel if (axes is not None and "c" in axes.lower()) else None
    # a TIFF's channel is a colour sample when its pixels hold several (RGB), unless channels interleave
    tiff_sample = channel if n_channels in (None, 1) else None
    segments = [
        segment_for(p, dataset=dataset, axes=axes,
                    channel=tiff_sample if p.suffix.lower() in TIFF_EXTENSIONS else array_channel,
                    shape=shape, dtype=dtype, offset=offset)
        for p in paths
    ]
    first = segments[0]
    if isinstance(first, TiffSegment) and first.sample is not None:
        channel = None  # spent on the colour sample
    name = "TIFF" if isinstance(first, TiffSegment) else {"hdf5": "HDF5", "zarr": "Zarr", "npy": "NPY"}.get(
        first.kind, "raw binary")
    meta: dict[str, Any] = {"paths": [str(p) for p in paths], "format": name}
    if isinstance(first, TiffSegment):
        meta.update(first.metadata)
        if set(first.hyperstack) == {"C"} and first.hyperstack["C"] > MAX_IMAGEJ_CHANNELS and n_channels is None:
            # an ImageJ stack saved without axes (tifffile imagej=True on a T×H×W array) says "channels=T"
            log.info("%s: an ImageJ stack of %d 'channels' and no frames: read as %d frames",
                     first.path, first.hyperstack["C"], first.hyperstack["C"])
        elif first.hyperstack:
            meta["tiff_axes"] = first.series_axes
            meta.setdefault("n_channels", first.hyperstack.get("C", 1))
            meta.setdefault("n_planes", first.hyperstack.get("Z", 1))
        if len(segments) > 1 and all(s.n_raw == 1 for s in segments):
            meta["single_frame_files"] = True
        elif len(segments) == 1 and first.n_raw == 1:
            raise MovieError(
                f"{first.path}: is a single 2-D image of shape {first.frame_shape}, not a movie (1 frame; the "
                f"pipeline needs at least {min_frames()} frames). Fix: pass a file holding frames over time, or "
                "several images (a list or a folder) to build a movie."
            )
    else:
        meta["axes"] = first.axes
        meta["attrs"] = {k: v for k, v in first.attrs.items() if isinstance(v, (int, float, str))}
        for key in ("fr", "frame_rate", "fs", "fps", "frameRate"):
            value = first.attrs.get(key)
            if isinstance(value, (int, float, np.number)) and value > 0:
                meta["frame_rate"] = float(value)
                break
    if array_channel is not None and n_channels not in (None, 1):
        raise MovieError("pass either a channel axis in axes= or n_channels=, not both.")
    n_ch = n_channels if n_channels is not None else int(meta.get("n_channels", 1))
    n_pl = n_planes if n_planes is not None else int(meta.get("n_planes", 1))
    rate = frame_rate if frame_rate is not None else meta.get("frame_rate")
    if rate is not None and n_pl > 1 and frame_rate is None and not meta.get("frame_rate_per_volume"):
        rate = float(rate) / n_pl  # each plane is sampled once per volume
    return Movie(
        segments,
        n_channels=n_ch,
        channel=None if array_channel is not None else channel,
        n_planes=n_pl,
        plane=plane,
        frame_rate=rate,
        metadata=meta,
    )
