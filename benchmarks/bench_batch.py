"""The batch manager's bar: a 12-variant grid on a 256×256×2000 movie costs one motion correction.

What it measures, in one run on one machine (one local Dask cluster shared by everything, so
no figure pays a cluster start the others do not):

1. **Baseline**: one full ``somascope.pipeline.run`` of the base parameters (motion → … →
   results), then each of the 11 other variants run *alone from CNMF on* (a copy of the full
   run's folder, so motion correction, Store and summary images are reused and CNMF, quality,
   refit, traces and results run): ``T_full + Σ T_cnmf`` is what a user would pay running the
   variants by hand without recomputing motion correction.
2. **Batch**: a new batch, one ``cnmf`` item with the base parameters and
   ``add_variants(grid)`` — 3 ``min_SNR`` × 2 ``rval_thr`` × 2 ``gSig`` = 12 items — then
   ``Batch.run``: wall time, peak memory of the process tree, how many motion corrections and
   CNMF fits ran (stage folders), how many float32 copies of the movie its folder holds, its
   size on disk beside the movie's float32 size, and ``params_diff``'s columns.
3. **Loading**: ``Estimates.load`` of a 2,000-component, 3,000-frame results file (what
   ``Batch.load(item).estimates`` does), median of 5.

Bar (issue 14): batch time ≤ 1.5 × (T_full + Σ T_cnmf); one motion correction; one float32
copy; loading ≤ 1 s.

Run: ``python benchmarks/bench_batch.py [--work DIR] [--movie movie.tif --fr HZ --radius PX]``
(default: a hard-family two-photon movie, 256×256×2000 at 15 Hz, radius 6 px, written to DIR).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import measure, table  # noqa: E402

#: the quality thresholds of the grid; gSig gets two values around the radius (``variants``)
GRID = {"quality.min_SNR": [2.0, 2.5, 3.0], "quality.rval_thr": [0.8, 0.85]}


def make_movie(work: Path, seed: int) -> tuple[Path, float, float]:
    from somascope import simulate

    folder = work / "movie"
    if not (folder / "movie.tif").is_file():
        sim = simulate.two_photon(dims=(256, 256), n_frames=2000, frame_rate=15.0, neuron_radius=6.0, seed=seed,
                                  motion="rigid", preset="hard", progress=False)
        simulate.write_ground_truth_folder(sim, folder)
    return folder / "movie.tif", 15.0, 6.0


def variants(radius: float) -> list[dict[str, Any]]:
    """The 12 grid points as dotted parameter dicts; the first is the base."""
    import itertools

    grid = {**GRID, "init.gSig": [radius, radius + 1]}
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_batch"))
    ap.add_argument("--movie", type=Path)
    ap.add_argument("--fr", type=float)
    ap.add_argument("--radius", type=float)
    ap.add_argument("--seed", type=int, default=140)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    from somascope.batch import Batch
    from somascope.pipeline import run
    from somascope.pipeline.resources import EngineHandle

    args.work.mkdir(parents=True, exist_ok=True)
    if args.movie:
        movie, fr, radius = args.movie, args.fr, args.radius
    else:
        movie, fr, radius = make_movie(args.work, args.seed)
    base_params = {"data.fr": fr, "data.neuron_radius": radius}
    points = variants(radius)
    for d in ("baseline", "batch"):
        shutil.rmtree(args.work / d, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    handle = EngineHandle("local", args.workers)
    try:
        handle.get()  # started once, before any clock
        # 1. baseline
        full_out = args.work / "baseline" / "full"
        with measure() as m:
            res = run(movie, full_out, overrides=[base_params, points[0]], engine=handle, progress=False)
        t_full = m["seconds"]
        rows.append({"what": "full run (base)", "seconds": t_full, "peak_gb": m["peak_gb"],
                     "detail": f"{res.estimates.accepted_indices.size} accepted"})
        t_cnmf = []
        # the motion parameters derive from the neuron size (gSig): keep the base's, as the batch does
        pinned = {f"motion.{k}": v for k, v in res.params.to_dict()["motion"].items()}
        for i, point in enumerate(points[1:], start=1):
            out = args.work / "baseline" / f"v{i:02d}"
            shutil.copytree(full_out, out)
            with measure() as m:
                r = run(movie, out, overrides=[base_params, point, pinned], engine=handle, progress=False,
                        from_stage="cnmf")
            t_cnmf.append(m["seconds"])
            assert "motion" in r.reused and "cnmf" in r.computed, (r.reused, r.computed)
            shutil.rmtree(out)  # keep one Store on disk at a time
        rows.append({"what": "11 variants from CNMF on", "seconds": sum(t_cnmf), "peak_gb": "",
                     "detail": f"{np.mean(t_cnmf):.1f} s each"})
        baseline = t_full + sum(t_cnmf)
        rows.append({"what": "baseline total", "seconds": baseline, "peak_gb": "", "detail": ""})
        shutil.rmtree(args.work / "baseline")

        # 2. the batch
        with measure() as m:
            batch = Batch.create(args.work / "batch")
            base = batch.add(movie, "cnmf", {**base_params, **points[0]}, name="base")
            added = batch.add_variants(base, {k: sorted({p[k] for p in points}) for k in points[0]})
            t_add = time.perf_counter()
            batch.run(engine=handle, progress=False)
            t_run = time.perf_counter() - t_add
        df = batch.items()
        failed = df[df["status"] != "done"]
        if len(failed):
            raise SystemExit(f"items failed: {failed[['name', 'status', 'error']].to_string()}")
        stages = batch.path / "stages"
        n_motion = sum(1 for p in (stages / "motion").iterdir() if p.is_dir())
        n_cnmf = sum(1 for p in (stages / "cnmf").iterdir() if p.is_dir())
        n_stores = len(list(batch.path.rglob("movie.zarr")))
        movie_f32 = int(np.prod(_shape(movie))) * 4
        size = dir_bytes(batch.path)
        rows.append({"what": f"batch: {1 + len(added)} items", "seconds": m["seconds"], "peak_gb": m["peak_gb"],
                     "detail": f"run {t_run:.1f} s; {n_motion} motion, {n_cnmf} CNMF fits"})
        ratio = m["seconds"] / baseline
        diff_cols = [c for c in batch.params_diff().columns if c != "uuid"]

        # 3. loading 2,000 components
        t_load = load_time(args.work)
    finally:
        handle.close()
    print(table(rows, ["what", "seconds", "peak_gb", "detail"]))
    summary = {
        "batch_over_baseline": round(ratio, 3), "bar_batch_over_baseline": 1.5,
        "motion_corrections": n_motion, "cnmf_fits": n_cnmf, "float32_stores": n_stores,
        "batch_folder_gb": round(size / 2**30, 3), "movie_float32_gb": round(movie_f32 / 2**30, 3),
        "params_diff_columns": diff_cols, "load_2000_components_s": round(t_load, 3),
    }
    print(json.dumps(summary, indent=2))
    (args.work / "bench_batch.json").write_text(json.dumps({"rows": rows, **summary}, indent=2, default=str))


def _shape(movie: Path) -> tuple[int, ...]:
    from somascope.io import open_movie

    with open_movie(movie) as mov:
        return tuple(int(s) for s in mov.shape)


def load_time(work: Path, K: int = 2000, T: int = 3000, dims: tuple[int, int] = (512, 512)) -> float:
    """Median seconds of ``Estimates.load`` for a K-component, T-frame results file."""
    import scipy.sparse as sp

    from somascope.cnmf.estimates import Estimates

    rng = np.random.default_rng(0)
    n = dims[0] * dims[1]
    rows, cols = [], []
    for k in range(K):  # ~120-pixel blobs
        y, x = rng.integers(8, dims[0] - 8), rng.integers(8, dims[1] - 8)
        yy, xx = np.mgrid[-6:7, -6:7]
        keep = yy**2 + xx**2 <= 36
        rows.append(((y + yy[keep]) * dims[1] + x + xx[keep]).ravel())
        cols.append(np.full(keep.sum(), k))
    r, c = np.concatenate(rows), np.concatenate(cols)
    A = sp.csc_matrix((rng.random(r.size).astype(np.float32), (r, c)), shape=(n, K))
    C = rng.random((K, T), dtype=np.float32)
    est = Estimates(A=A, C=C, S=C.copy(), YrA=C.copy(), F_dff=C.copy(), dims=dims,
                    b=np.zeros((n, 1), np.float32), f=np.zeros((1, T), np.float32),
                    idx_components=np.arange(K), idx_components_bad=np.zeros(0, np.int64))
    path = work / "load2000.h5"
    est.save(path)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        got = Estimates.load(path)
        assert got.K == K
        times.append(time.perf_counter() - t0)
    path.unlink()
    return float(np.median(times))


if __name__ == "__main__":
    main()
