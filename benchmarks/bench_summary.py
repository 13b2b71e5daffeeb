"""Benchmark: summary images of a Store versus just reading the Store once.

Writes a synthetic float32 movie (default 3000 × 512 × 512, 3 GB) chunk by chunk into a
:class:`somascope.store.Store` in a temporary folder, then times, each in a fresh child
process (so the peak resident memory belongs to that step alone):

- ``read``: one pass of :func:`somascope.io.iter_chunks` over the store (the floor, also
  for memory: the imports plus one chunk as read);
- ``summary``: mean, max, std and 8-neighbour correlation image;
- ``summary+max_corr``: the same plus the max-correlation image over 1000-frame blocks;
- ``summary+pnr`` (with ``--gsig``): plus the one-photon PNR and filtered correlation
  images (two passes).

Accuracy: the correlation, mean and std images are compared with a plain in-memory NumPy
computation on one 64 × 64 patch (its interior pixels, whose neighbours lie in the patch).

    python benchmarks/bench_summary.py                 # full size
    python benchmarks/bench_summary.py --frames 500 --size 128   # quick
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import run_in_child  # noqa: E402


def make_store(path: Path, n_frames: int, size: int, seed: int = 0) -> Any:
    """Write a movie of ~``size**2 / 400`` Gaussian cells with sparse transients on a
    baseline, with shot-like noise (Gaussian approximation of Poisson counts), chunk by chunk."""
    from somascope.store import Store

    rng = np.random.default_rng(seed)
    n_cells = max(1, size * size // 400)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (n_cells, 2))
    rows, cols, vals = [], [], []
    for k, (cy, cx) in enumerate(centres):
        y0, y1 = int(max(0, cy - 12)), int(min(size, cy + 13))
        x0, x1 = int(max(0, cx - 12)), int(min(size, cx + 13))
        patch = np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (2 * 3.0**2))
        rows.append((yy[y0:y1, x0:x1] * size + xx[y0:y1, x0:x1]).ravel())
        cols.append(np.full(patch.size, k))
        vals.append(patch.ravel())
    # Footprints as a sparse pixels × K matrix (the package's layout): no dense K × H × W.
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(size * size, n_cells), dtype=np.float32)
    store = Store.create(path, (n_frames, size, size), frame_rate=30.0)
    step = store.time_chunk * max(1, 256 // store.time_chunk)
    calcium = np.zeros(n_cells, np.float32)
    decay = np.float32(np.exp(-1 / 15))
    for t0 in range(0, n_frames, step):
        t1 = min(n_frames, t0 + step)
        traces = np.empty((n_cells, t1 - t0), np.float32)
        for i in range(t1 - t0):
            calcium = calcium * decay + (rng.random(n_cells) < 0.01) * 40.0
            traces[:, i] = calcium
        lam = 50.0 + np.asarray(A @ traces).T.reshape(-1, size, size)
        noise = rng.standard_normal(lam.shape, dtype=np.float32)
        store.write(t0, lam + np.sqrt(lam) * noise)
    return store.finalize()


def _step(name: str, path: str, kwargs: dict[str, Any], queue: Any) -> None:
    """Run one timed step in this (child) process and report wall time and peak RSS."""
    from somascope.io import iter_chunks
    from somascope.store import Store
    from somascope.summary import summary_images

    store = Store.open(path)
    t0 = time.perf_counter()
    if name == "read":
        for _, chunk in iter_chunks(store, kwargs["chunk_frames"]):
            pass
        result = None
    else:
        images = summary_images(store, **kwargs)
        result = {k: v for k, v in images.images().items()}
    wall = time.perf_counter() - t0
    queue.put((wall, _peak_rss_mb(), result))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB. On Linux ``VmHWM`` of the process's
    own address space (``ru_maxrss`` would include the parent's RSS at fork time)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_step(name: str, path: Path, kwargs: dict[str, Any]) -> tuple[float, float, dict[str, np.ndarray] | None]:
    return run_in_child(_step, name, str(path), kwargs)


def patch_reference(store: Any, size: int) -> tuple[tuple[slice, slice], dict[str, np.ndarray]]:
    """Mean, std and 8-neighbour correlation of one 64×64 patch, in memory (float64)."""
    p = min(64, size)
    y0 = x0 = (size - p) // 2
    data = store.read_patch(slice(y0, y0 + p), slice(x0, x0 + p)).astype(np.float64)
    mu, sd = data.mean(0), data.std(0)
    z = np.where(sd > 0, (data - mu) / np.where(sd > 0, sd, 1), 0)
    inner = z[:, 1:-1, 1:-1]
    total = np.zeros(inner.shape[1:])
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                total += (inner * z[:, 1 + dy : p - 1 + dy, 1 + dx : p - 1 + dx]).mean(0)
    window = (slice(y0 + 1, y0 + p - 1), slice(x0 + 1, x0 + p - 1))
    return window, {"mean": mu[1:-1, 1:-1], "std": sd[1:-1, 1:-1], "corr": total / 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000, help="number of frames T (default 3000)")
    parser.add_argument("--size", type=int, default=512, help="frame height = width in pixels (default 512)")
    parser.add_argument("--chunk-frames", type=int, default=None, help="frames per chunk (default: automatic)")
    parser.add_argument("--max-corr-frames", type=int, default=1000, help="block length for max_corr (default 1000)")
    parser.add_argument("--gsig", type=float, default=None, help="also time the 1p PNR images with this gSig")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the store (default: a temp folder)")
    args = parser.parse_args(argv)

    from somascope.summary import _resolve_chunk_frames

    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "movie.zarr"
        t0 = time.perf_counter()
        store = make_store(path, args.frames, args.size)
        t_write = time.perf_counter() - t0
        chunk = args.chunk_frames or _resolve_chunk_frames(store, None, args.frames, (args.size, args.size))
        gb = store.nbytes / 1e9
        print(f"movie: {args.frames} × {args.size} × {args.size} float32 ({gb:.2f} GB), written in {t_write:.1f} s; "
              f"chunk_frames={chunk}, store time_chunk={store.time_chunk}")

        steps: list[tuple[str, dict[str, Any]]] = [
            ("read", {"chunk_frames": chunk}),
            ("summary", {"chunk_frames": chunk}),
            ("summary+max_corr", {"chunk_frames": chunk, "max_corr_frames": args.max_corr_frames}),
        ]
        if args.gsig is not None:
            steps.append(("summary+pnr", {"chunk_frames": chunk, "gSig": args.gsig}))
        window, ref = patch_reference(store, args.size)

        rows = []
        base_wall = None
        for name, kwargs in steps:
            wall, peak, images = run_step(name, path, kwargs)
            base_wall = wall if name == "read" else base_wall
            err = ""
            if images is not None:
                errs = [
                    float(np.max(np.abs(images["corr"][window] - ref["corr"]))),
                    float(np.max(np.abs(images["mean"][window] - ref["mean"]) / np.abs(ref["mean"]))),
                    float(np.max(np.abs(images["std"][window] - ref["std"]) / ref["std"])),
                ]
                err = f"{errs[0]:.1e} / {errs[1]:.1e} / {errs[2]:.1e}"
            rows.append((name, wall, peak, store.nbytes / 2**20 / wall, wall / base_wall, err))

    header = f"{'step':<18} {'wall s':>8} {'peak RSS MB':>12} {'MB/s':>8} {'× read':>7}  max err corr(abs) / mean(rel) / std(rel)"
    print(header)
    print("-" * len(header))
    for name, wall, peak, rate, ratio, err in rows:
        print(f"{name:<18} {wall:8.2f} {peak:12.0f} {rate:8.0f} {ratio:7.2f}  {err}")
    import importlib.util

    if importlib.util.find_spec("caiman") is None:
        print("peers: CaImAn is not installed here, so there is no comparison row.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
