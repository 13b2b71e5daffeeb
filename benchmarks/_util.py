"""Shared helpers for benchmark scripts: timing, peak memory, cache eviction, tables."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from somascope.pipeline.resources import tree_rss  # noqa: F401 - re-exported for the benchmarks


@contextmanager
def measure(interval: float = 0.05) -> Iterator[dict[str, float]]:
    """Measure wall time and the peak RSS of the process tree (sampled) inside the block.

    Yields a dict filled on exit with ``seconds``, ``peak_gb`` (peak tree RSS) and
    ``delta_gb`` (peak minus RSS at entry).
    """
    out: dict[str, float] = {}
    start_rss = tree_rss()
    peak = [start_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        stop.set()
        thread.join()
        peak[0] = max(peak[0], tree_rss())
        out["peak_gb"] = peak[0] / 2**30
        out["delta_gb"] = (peak[0] - start_rss) / 2**30


def max_rss_gb() -> float:
    """Peak RSS of this process over its lifetime (getrusage), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def evict(path: str | os.PathLike[str]) -> None:
    """Drop a file's (or every file of a folder's) pages from the OS page cache, so that the
    next read comes from disk (posix_fadvise DONTNEED; no root needed)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given column order."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def run_in_child(target: Callable[..., None], *args: Any) -> Any:
    """Run ``target(*args, queue)`` in a fresh spawned process (so its peak RSS is its own)
    and return what it put on ``queue``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{getattr(target, '__name__', 'child')}{args!r} failed (exit code {proc.exitcode})")
    return out
