"""Out-of-core movie storage: one on-disk layout for frame-wise and patch-wise access.

A :class:`Store` is a float32 Zarr array of shape ``T×H×W`` (or ``T×Z×H×W``), uncompressed,
chunked in *bricks* of ``time_chunk`` frames × a spatial tile (64×64 pixels by default).

- Reading a block of frames touches every tile of ``ceil(t/time_chunk)`` time slabs: a full
  sequential read, as fast as a flat file.
- Reading all frames of one spatial patch (what patch-wise CNMF needs) touches only the
  bricks under the patch: for a 64×64 patch of a 512×512 movie, 1/64 of the bytes.

So the movie is written once and never copied into a second (pixel-major) order. Several
processes may write disjoint, ``time_chunk``-aligned blocks of frames at the same time, each
having opened the store by path. The store is built under ``<path>.partial`` and renamed onto
``<path>`` by :meth:`Store.finalize`, so an interrupted write never looks complete.
See ``docs/store.md`` for the measurements behind these choices.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io.jsonable import jsonable

PARTIAL_SUFFIX = ".partial"
DEFAULT_TILE = 64
DEFAULT_BRICK_BYTES = 2 * 2**20


class StoreError(ValueError):
    """A store cannot be created or opened as asked; the message says why and what to do."""


def default_chunks(shape: Sequence[int], tile: int = DEFAULT_TILE, brick_bytes: int = DEFAULT_BRICK_BYTES) -> tuple[int, ...]:
    """Chunk shape for a movie of ``shape`` (``T×H×W`` or ``T×Z×H×W``).

    Spatial tiles of ``tile`` pixels (the whole axis when smaller; all planes of a volume in
    one chunk), and as many frames per chunk as fit in ``brick_bytes`` of float32 (at least 8,
    at most T).
    """
    shape = tuple(int(s) for s in shape)
    spatial = tuple(min(s, tile) for s in shape[-2:])
    if len(shape) == 4:
        spatial = (shape[1], *spatial)
    frame_bytes = 4 * int(np.prod(spatial))
    tc = max(8, brick_bytes // frame_bytes)
    return (int(min(tc, shape[0])), *spatial)


def _zarr_major() -> int:
    import zarr

    return int(zarr.__version__.split(".")[0])


class Store:
    """A float32 movie on disk; see the module docstring for the layout.

    Create with :meth:`create` (then :meth:`write` blocks and :meth:`finalize`), or
    :meth:`from_source`; open an existing one with :meth:`open`. Index like an array:
    ``store[t0:t1]`` gives frames, :meth:`read_patch` gives all frames of a spatial window.
    Pickles as its path, so Dask workers reopen it themselves.
    """

    def __init__(self, path: Path, array: Any, final_path: Path) -> None:
        self.path = Path(path)
        self.final_path = Path(final_path)
        self._array = array
        self._direct = _plain_layout(array)

    # -- construction --------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        *,
        chunks: Sequence[int] | None = None,
        frame_rate: float | None = None,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Store:
        """Start a new store at ``path`` (written under ``path + '.partial'`` until finalised).

        Parameters
        ----------
        shape
            ``(T, H, W)`` or ``(T, Z, H, W)``; T ≥ 1.
        chunks
            Chunk shape; default :func:`default_chunks`.
        frame_rate
            Hz, recorded in the attributes.
        overwrite
            Replace an existing finished store at ``path`` when this one is finalised.
        """
        import zarr

        final = Path(path)
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4) or min(shape) < 1:
            raise StoreError(f"{final}: a store holds T×H×W or T×Z×H×W frames with T ≥ 1; got shape {shape}.")
        if final.exists() and not overwrite:
            raise StoreError(f"{final}: already exists; pass overwrite=True or choose another path.")
        chunks = tuple(int(c) for c in (chunks or default_chunks(shape)))
        if len(chunks) != len(shape):
            raise StoreError(f"{final}: chunks {chunks} must have one entry per axis of shape {shape}.")
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if partial.exists():
            shutil.rmtree(partial)  # left over from an interrupted run: never trusted
        partial.parent.mkdir(parents=True, exist_ok=True)
        if _zarr_major() >= 3:
            array = zarr.create_array(
                store=str(partial), shape=shape, chunks=chunks, dtype="float32",
                compressors=None, fill_value=0.0, zarr_format=3,
            )
        else:  # pragma: no cover - zarr 2 on Python 3.10
            array = zarr.open_array(
                str(partial), mode="w", shape=shape, chunks=chunks, dtype="float32",
                compressor=None, fill_value=0.0,
            )
        array.attrs.update(
            {
                "format": "somascope-store",
                "complete": False,
                "frame_rate": None if frame_rate is None else float(frame_rate),
                "metadata": jsonable(metadata or {}),
            }
        )
        return cls(partial, array, final)

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> Store:
        """Open a store. ``mode='r'`` needs a finalised store; ``'r+'`` also opens one still
        being written (``<path>.partial``, or that path itself) for a worker to write into."""
        import zarr

        path = Path(path)
        if path.name.endswith(PARTIAL_SUFFIX):
            final = path.with_name(path.name[: -len(PARTIAL_SUFFIX)])
            target = path if path.exists() and mode == "r+" else None
        else:
            final = path
            target = path if path.exists() else None
        if target is None:
            partial = final.with_name(final.name + PARTIAL_SUFFIX)
            hint = (" (an unfinished write exists: the run that made it was interrupted; run it again)"
                    if partial.exists() else "")
            raise StoreError(f"{path}: no finished somascope store here{hint}.")
        try:
            array = zarr.open_array(str(target), mode=mode)
        except Exception as exc:
            raise StoreError(f"{target}: not a readable Zarr array ({exc}).") from exc
        if array.attrs.get("format") != "somascope-store":
            raise StoreError(f"{target}: is a Zarr array but not a somascope store; open it with somascope.io.open_movie.")
        if mode == "r" and not array.attrs.get("complete", False):
            raise StoreError(f"{target}: store was not finalised (interrupted write); run the step again.")
        return cls(target, array, final)

    @classmethod
    def from_source(
        cls,
        source: Any,
        path: str | os.PathLike[str],
        *,
        engine: Any = None,
        chunks: Sequence[int] | None = None,
        frame_rate: float | None = None,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
        progress: bool = False,
    ) -> Store:
        """Copy a frame source (array, :class:`~somascope.io.Movie`, store) into a new store,
        converting to float32, in parallel over ``time_chunk``-aligned blocks when an
        :class:`~somascope.parallel.Engine` is given. Returns the finalised store."""
        rate = frame_rate if frame_rate is not None else getattr(source, "frame_rate", None)
        store = cls.create(path, source.shape, chunks=chunks, frame_rate=rate, metadata=metadata, overwrite=overwrite)
        tc = store.time_chunk
        per_task = tc * max(1, 64 // tc) if tc < 64 else tc
        blocks = [(t0, min(t0 + per_task, source.shape[0])) for t0 in range(0, source.shape[0], per_task)]
        if engine is None:
            from .parallel import Engine

            engine = Engine("serial")
        try:
            engine.map(_copy_block, [(source, str(store.path), t0, t1) for t0, t1 in blocks],
                       desc="writing store", progress=progress)
        except BaseException:
            store.discard()
            raise
        return store.finalize()

    # -- array access ----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self._array.chunks)

    @property
    def time_chunk(self) -> int:
        """Frames per chunk: parallel writers must start blocks at multiples of this."""
        return self.chunks[0]

    @property
    def frame_rate(self) -> float | None:
        return self._array.attrs.get("frame_rate")

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._array.attrs.get("metadata", {}))

    @property
    def complete(self) -> bool:
        return bool(self._array.attrs.get("complete", False))

    @property
    def nbytes(self) -> int:
        return 4 * int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._direct:
            boxes = _boxes(key, self.shape)
            if boxes is not None:
                return _read_bricks(self.path, self.chunks, *boxes)
        return np.asarray(self._array[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def read_patch(self, rows: slice, cols: slice, frames: slice = slice(None)) -> np.ndarray:
        """All ``frames`` of the spatial window ``rows × cols``: ``(t, h, w)`` (or
        ``(t, Z, h, w)`` for volumes), float32."""
        if self.ndim == 4:
            return self[frames, :, rows, cols]
        return self[frames, rows, cols]

    def write(self, t0: int, frames: np.ndarray) -> None:
        """Write ``frames`` (``(t, *frame_shape)``) at frame ``t0``.

        Writers running in parallel must use ``t0`` that are multiples of
        :attr:`time_chunk` and blocks that end on a chunk boundary or at T, so that no two
        processes touch the same chunk.
        """
        frames = np.asarray(frames)
        if frames.shape[1:] != self.shape[1:]:
            raise StoreError(f"{self.path}: frames of shape {frames.shape[1:]} do not fit store frames {self.shape[1:]}.")
        t1 = int(t0) + frames.shape[0]
        if t0 < 0 or t1 > self.shape[0]:
            raise StoreError(f"{self.path}: frames {t0}..{t1} fall outside 0..{self.shape[0]}.")
        self._array[int(t0):t1] = frames.astype(np.float32, copy=False)

    # -- lifecycle -----------------------------------------------------------------
    def finalize(self) -> Store:
        """Mark the store complete and move it onto its final path atomically. Returns the
        store opened read-only at the final path."""
        if self.path == self.final_path:
            return self
        self._array.attrs["complete"] = True
        old = None
        if self.final_path.exists():
            old = self.final_path.with_name(f".{self.final_path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.final_path, old)
        os.replace(self.path, self.final_path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return Store.open(self.final_path, mode="r")

    def discard(self) -> None:
        """Delete an unfinished store."""
        if self.path != self.final_path and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Store.open, (str(self.path), "r" if self.path == self.final_path else "r+"))

    def __repr__(self) -> str:
        state = "" if self.path == self.final_path else ", unfinished"
        return f"Store(shape={self.shape}, chunks={self.chunks}, path={str(self.final_path)!r}{state})"


def _copy_block(args: tuple[Any, str, int, int]) -> int:
    source, path, t0, t1 = args
    store = Store.open(path, mode="r+")
    store.write(t0, np.asarray(source[t0:t1], dtype=np.float32))
    return t1 - t0


# ------------------------------------------------------------------------------------------
# reading whole bricks straight from their files
#
# A store is uncompressed little-endian float32 with Zarr v3's default chunk keys
# ("c/<i>/<j>/<k>"), so a brick file is the brick's values in C order: reading it with NumPy
# (only the frames asked for: frames are the outer axis, so they are one contiguous range of
# the file) skips Zarr's per-chunk asynchronous machinery, which costs 2–3× the read itself
# on this layout. Anything else (zarr 2, other keys or codecs, fancy indexing) goes to Zarr.

#: Threads reading brick files of one request (file reads release the GIL).
_READ_THREADS = 4


def _plain_layout(array: Any) -> bool:
    """Whether ``array`` is stored the way :meth:`Store.create` writes it (zarr v3, raw bytes)."""
    try:
        meta = array.metadata
        codecs = list(meta.codecs)
        key = meta.chunk_key_encoding
        return (getattr(meta, "zarr_format", None) == 3 and len(codecs) == 1
                and type(codecs[0]).__name__ == "BytesCodec"
                and str(getattr(codecs[0].endian, "value", codecs[0].endian)) == "little"
                and type(key).__name__ == "DefaultChunkKeyEncoding" and key.separator == "/"
                and np.dtype(array.dtype) == np.float32 and float(array.fill_value) == 0.0)
    except Exception:  # noqa: BLE001 - any surprise: let zarr read it
        return False


def _boxes(key: Any, shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], list[int]] | None:
    """``key`` as one ``(start, stop)`` per axis and the axes indexed by an integer (to drop);
    None for anything but integers and unit-step slices."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    box, drop = [], []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                return None
            box.append((i, i + 1))
            drop.append(axis)
        elif isinstance(k, slice) and k.step in (None, 1):
            start, stop, _ = k.indices(n)
            box.append((start, max(start, stop)))
        else:
            return None
    return box, drop


def _read_bricks(root: Path, chunks: tuple[int, ...], box: list[tuple[int, int]], drop: list[int]) -> np.ndarray:
    """The values of ``box`` read from the brick files under ``root`` (missing bricks are 0)."""
    import itertools

    out = np.zeros([b - a for a, b in box], np.float32)
    if out.size == 0:
        return out.squeeze(axis=tuple(drop)) if drop else out
    ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(box, chunks)]
    inner = int(np.prod(chunks[1:]))
    jobs = []
    for idx in itertools.product(*ranges):
        origin = [i * c for i, c in zip(idx, chunks)]
        lo = [max(a, o) for (a, _), o in zip(box, origin)]
        hi = [min(b, o + c) for (_, b), o, c in zip(box, origin, chunks)]
        jobs.append((root.joinpath("c", *map(str, idx)), origin, lo, hi))

    def read(job: tuple[Path, list[int], list[int], list[int]]) -> None:
        path, origin, lo, hi = job
        t0, t1 = lo[0] - origin[0], hi[0] - origin[0]
        try:
            data = np.fromfile(path, dtype="<f4", count=(t1 - t0) * inner, offset=4 * t0 * inner)
        except FileNotFoundError:
            return  # never written: the fill value
        brick = data.reshape((t1 - t0,) + tuple(chunks[1:]))
        src = (slice(None),) + tuple(slice(l - o, h - o) for l, h, o in zip(lo[1:], hi[1:], origin[1:]))
        dst = tuple(slice(l - a, h - a) for l, h, (a, _) in zip(lo, hi, box))
        out[dst] = brick[src]

    if len(jobs) > 2 * _READ_THREADS:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(_READ_THREADS) as pool:
            list(pool.map(read, jobs))
    else:
        for job in jobs:
            read(job)
    return out.squeeze(axis=tuple(drop)) if drop else out
