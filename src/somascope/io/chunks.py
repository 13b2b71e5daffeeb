"""Chunked reading of frame sources (anything indexable by a time slice)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

_R = TypeVar("_R")


def aligned_chunk_frames(source: Any, frames: int) -> int:
    """``frames`` rounded down to a whole number of ``source.time_chunk`` (at least one), for
    sources that have one (a :class:`~somascope.store.Store`): a chunk read in two requests
    would be read twice. Other sources get ``frames`` (at least 1)."""
    frames = max(1, int(frames))
    time_chunk = getattr(source, "time_chunk", None)
    if isinstance(time_chunk, (int, np.integer)) and time_chunk > 0:
        frames = max(int(time_chunk), (frames // int(time_chunk)) * int(time_chunk))
    return frames


def read_ahead(read: Callable[[int, int], _R], ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int, _R]]:
    """Yield ``(t0, t1, read(t0, t1))`` for each frame range, reading the next range in a
    background thread while the caller works on the current one.

    File reads release the GIL, so a pass over a movie larger than the page cache costs about
    the larger of its reading and its computing instead of their sum. At most two results are
    alive at a time (the one yielded and the one being read). An exception of ``read`` is
    raised at the range it belongs to.
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = [(int(a), int(b)) for a, b in ranges]
    if len(todo) < 2:
        for t0, t1 in todo:
            yield t0, t1, read(t0, t1)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(read, *todo[0])
        for i, (t0, t1) in enumerate(todo):
            result = pending.result()
            if i + 1 < len(todo):
                pending = pool.submit(read, *todo[i + 1])
            yield t0, t1, result
            del result


def frame_ranges(n_frames: int, step: int, start: int = 0) -> list[tuple[int, int]]:
    """``[(t0, t1), …]`` consecutive ranges of ``step`` frames from ``start`` to ``n_frames``."""
    step = max(1, int(step))
    return [(t0, min(t0 + step, int(n_frames))) for t0 in range(int(start), int(n_frames), step)]


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

    def read(t0: int, t1: int) -> np.ndarray:
        block = np.asarray(source[t0:t1], dtype=dtype)
        if isinstance(source, np.ndarray) and np.may_share_memory(block, source):
            block = block.copy()  # a view into the caller's array: never hand it out
        return block

    try:
        for t0, t1, block in read_ahead(read, frame_ranges(stop, chunk_frames, start)):
            yield t0, block
            if bar is not None:
                bar.update(t1 - t0)
    finally:
        if bar is not None:
            bar.close()
