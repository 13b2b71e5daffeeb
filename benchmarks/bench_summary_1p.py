"""Benchmark: the pipeline's one-photon ``summary`` stage, before and after its speed-up.

Simulates a one-photon movie (default 2000 × 256 × 256, :func:`somascope.simulate.one_photon`),
writes it to a :class:`somascope.store.Store` in a temporary folder and times
``summary_images(store, max_corr_frames=1000, gSig=4)`` (the stage's call for a neuron radius
of 8 px) three ways, ``--repeat`` rounds of all three interleaved (best and median reported),
after one warm-up run each (page cache, Numba's disk cache, the workers' imports):

- ``old``: this process alone, with SciPy's 1-D filters as the high-pass (the code before:
  ``highpass`` is swapped for its SciPy path for the run);
- ``new serial``: this process alone, with the compiled high-pass kernel;
- ``new engine``: ``engine=Engine("local")`` with ``--workers`` worker processes (default:
  the available cores), as the pipeline passes it; the cluster is started before timing,
  as it is in a run by then.

It also times :func:`somascope.summary.highpass` alone per frame (SciPy vs kernel) on 256² and
512² frames, and prints the largest difference of every image of ``new engine`` from ``old``
(relative to the image's largest absolute value).

    python benchmarks/bench_summary_1p.py                      # 2000 × 256 × 256
    python benchmarks/bench_summary_1p.py --frames 500 --repeat 1   # quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def scipy_highpass(frames: np.ndarray, gSig: Any) -> np.ndarray:
    """The high-pass as it was: SciPy's 1-D filters along each axis, frame by frame."""
    from somascope import summary

    frames = np.ascontiguousarray(frames, dtype=np.float32)
    sig = summary._as_gsig(gSig, frames.ndim - 1)
    radii = [max(1, int(2 * s)) for s in sig]
    return summary._highpass_scipy(frames, sig, radii, np.empty_like(frames))


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Smallest wall time of ``repeat`` calls (seconds) and the last result."""
    times, result = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def time_highpass(repeat: int) -> list[tuple[int, float, float]]:
    """``(size, scipy ms/frame, kernel ms/frame)`` for 256² and 512² frames, gSig 4."""
    from somascope.summary import highpass

    rng = np.random.default_rng(0)
    rows = []
    for size in (256, 512):
        frames = (500 + 10 * rng.random((100, size, size))).astype(np.float32)
        highpass(frames[:1], 4.0)  # compile / load the kernel
        t_old, _ = best_of(lambda: scipy_highpass(frames, 4.0), repeat)
        t_new, _ = best_of(lambda: highpass(frames, 4.0), repeat)
        rows.append((size, 1e3 * t_old / len(frames), 1e3 * t_new / len(frames)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000, help="number of frames T (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="frame height = width in pixels (default 256)")
    parser.add_argument("--gsig", type=float, default=4.0, help="gSig in pixels (default 4)")
    parser.add_argument("--max-corr-frames", type=int, default=1000, help="max_corr block length (default 1000)")
    parser.add_argument("--workers", type=int, default=None, help="engine workers (default: available cores)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the store (default: a temp folder)")
    args = parser.parse_args(argv)

    from somascope import simulate, summary
    from somascope.parallel import Engine, available_cores
    from somascope.store import Store

    print("highpass alone, gSig 4, per frame (best of", args.repeat, "× 100 frames):")
    for size, t_old, t_new in time_highpass(args.repeat):
        print(f"  {size}×{size}: scipy {t_old:.3f} ms, kernel {t_new:.3f} ms ({t_old / t_new:.1f}×)")

    kwargs = {"max_corr_frames": min(args.max_corr_frames, args.frames), "gSig": args.gsig}
    workers = args.workers or available_cores()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        t0 = time.perf_counter()
        sim = simulate.one_photon(dims=(args.size, args.size), n_frames=args.frames, seed=3)
        store = Store.from_source(sim.movie, Path(tmp) / "movie.zarr")
        del sim
        print(f"movie: {args.frames} × {args.size} × {args.size} float32 ({store.nbytes / 1e9:.2f} GB), "
              f"simulated and written in {time.perf_counter() - t0:.1f} s; store chunks {store.chunks}; "
              f"summary_images(store, {', '.join(f'{k}={v}' for k, v in kwargs.items())})")

        def old() -> Any:
            kernel = summary.highpass
            summary.highpass = scipy_highpass  # the module's scan looks it up at call time
            try:
                return summary.summary_images(store, **kwargs)
            finally:
                summary.highpass = kernel

        def new_serial() -> Any:
            return summary.summary_images(store, **kwargs)

        with Engine("local", n_workers=workers) as engine:
            def new_engine() -> Any:
                return summary.summary_images(store, engine=engine, **kwargs)

            variants = [("old (serial, scipy)", old), ("new serial", new_serial),
                        (f"new engine ({workers} workers)", new_engine)]
            results = {name: fn() for name, fn in variants}  # warm-up
            walls: dict[str, list[float]] = {name: [] for name, _ in variants}
            for _ in range(max(1, args.repeat)):  # interleaved, so that a busy spell hits all alike
                for name, fn in variants:
                    wall, results[name] = best_of(fn, 1)
                    walls[name].append(wall)
            rows = [(name, min(walls[name]), float(np.median(walls[name]))) for name, _ in variants]

    base, base_median = rows[0][1], rows[0][2]
    print(f"{'variant':<28} {'best s':>7} {'median s':>9} {'speed-up (best / median)':>26}")
    for name, wall, median in rows:
        print(f"{name:<28} {wall:7.2f} {median:9.2f} {base / wall:12.2f}× / {base_median / median:.2f}×")
    reference, fastest = results[rows[0][0]], results[rows[-1][0]]
    print("largest difference new engine − old, relative to the image's largest |value|:")
    for name, image in reference.images().items():
        other = fastest.images()[name]
        scale = float(np.max(np.abs(image))) or 1.0
        print(f"  {name:<9} {float(np.max(np.abs(other - image))) / scale:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
