"""Chunked reading of frame sources (anything indexable by a time slice)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def aligned_chunk_frames(source: Any, frames: int) -> int:
    """``frames`` rounded down to a whole number of ``source.time_chunk`` (at least one), for
    sources that have one (a :class:`~somascope.store.Store`): a chunk read in two requests
    would be read twice. Other sources get ``frames`` (at least 1)."""
    frames = max(1, int(frames))
    time_chunk = getattr(source, "time_chunk", None)
    if isinstance(time_chunk, (int, np.integer)) and time_chunk > 0:
        frames = max(int(time_chunk), (frames // int(time_chunk)) * int(time_chunk))
    return frames


def n_chunks(n_frames: int, chunk_frames: int) -> int:
    """Number of chunks of ``chunk_frames`` frames needed to cover ``n_frames`` frames."""
    return -(-int(n_frames) // int(chunk_frames))


def iter_chunks(
    source: Any,
    chunk_frames: int = 256,
    *,
    start: int = 0,
    stop: int | None = None,
    dtype: Any = np.float32,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t0, frames)`` for consecutive chunks of a frame source.

    Parameters
    ----------
    source
        ``numpy.ndarray``, :class:`somascope.io.Movie` or :class:`somascope.store.Store`
        of shape ``T×H×W`` or ``T×Z×H×W``; anything with ``shape`` and time slicing.
    chunk_frames
        Frames per chunk (the last chunk may be shorter).
    start, stop
        Frame range to read (``stop=None`` reads to the end).
    dtype
        dtype of the yielded arrays (``None`` keeps the source dtype).
    progress
        Show a tqdm progress bar (in frames).

    Yields
    ------
    t0 : int
        Index of the first frame of the chunk.
    frames : ndarray, shape ``(t, *frame_shape)``
        A fresh array (never a view into the caller's data), ``t <= chunk_frames``.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    n_frames = int(source.shape[0])
    stop = n_frames if stop is None else min(int(stop), n_frames)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, desc=desc or "reading", unit="frame", leave=False)
    try:
        for t0 in range(int(start), stop, int(chunk_frames)):
            t1 = min(t0 + int(chunk_frames), stop)
            block = np.asarray(source[t0:t1], dtype=dtype)
            if isinstance(source, np.ndarray) and np.may_share_memory(block, source):
                block = block.copy()  # a view into the caller's array: never hand it out
            yield t0, block
            if bar is not None:
                bar.update(t1 - t0)
    finally:
        if bar is not None:
            bar.close()
