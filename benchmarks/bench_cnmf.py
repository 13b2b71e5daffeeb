"""Benchmark: CNMF on one field of view — time, peak memory and accuracy against ground truth.

Simulated two-photon movies (``somascope.simulate.two_photon``, the default realistic SNR)
are fitted with ``somascope.cnmf.fit`` using the default parameters plus the neuron radius
(5 px) and the frame rate (30 Hz). Three sweeps make the cost structure visible:

- pixels: 64², 128², 256² at 2000 frames, cell density fixed (≈ 50 cells per 128²);
- frames: 128² with 1000, 2000, 4000 frames, 50 cells;
- components: 128² × 2000 frames with 25, 50, 100 cells;

plus the initialisation methods on 128² × 2000 × 50 cells (GreedyROI, RollingGreedyROI,
sparse NMF, seeded with the true footprints).

Each fit runs in a fresh child process (spawn) that loads the movie, resets its peak-RSS
counter (``/proc/self/clear_refs``) and then fits, so ``peak MB`` is the high-water mark of
the fit with the movie already in memory (``base MB``). Step times come from the fit's log.
Accuracy: F1 of the accepted components against the active somata (Jaccard matching,
``somascope.metrics``) — true processes the fit finds count as false positives there, so
``F1 all`` against every active source is shown too — and the median correlation of
matched traces with the true calcium.

    python benchmarks/bench_cnmf.py            # all sweeps (~10 min on 2 busy cores)
    python benchmarks/bench_cnmf.py --quick    # 64² and 128², one method
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import run_in_child, table  # noqa: E402

STEPS = ("noise", "initialisation", "spatial + temporal updates", "merging", "evaluation")


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(path: str, method: str, queue: Any) -> None:
    """Load a simulated movie, fit it, and report time, memory, step times and accuracy."""
    import scipy.sparse as sp

    from somascope import cnmf
    from somascope.metrics import match_footprints, trace_correlation
    from somascope.params import Params

    data = np.load(path)
    movie = np.ascontiguousarray(data["movie"])
    A_true = sp.csc_matrix((data["A_data"], data["A_indices"], data["A_indptr"]),
                           shape=tuple(data["A_shape"]))
    C_true, active, soma = data["C"], data["active"], data["soma"]
    dims = tuple(movie.shape[1:])
    steps: dict[str, float] = {}

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.match(r"cnmf (.+): ([0-9.]+) s$", record.getMessage())
            if m:
                steps[m.group(1)] = float(m.group(2))

    logger = logging.getLogger("somascope.cnmf.fit")
    logger.setLevel(logging.INFO)
    logger.addHandler(Grab())
    params = Params.from_neuron(5, fr=30.0, **({} if method == "seeded" else {"method": method}))
    # warm the Numba caches on a small movie so that compile/load time is not in the timing
    cnmf.fit(movie[:200, :32, :32], params)
    steps.clear()
    base = _rss_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    t0 = time.perf_counter()
    seeds = A_true if method == "seeded" else None
    est = cnmf.fit(movie, params, seed_masks=seeds)
    wall = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    acc = est.accepted_indices
    truth = np.flatnonzero(active & soma)
    match = match_footprints(A_true[:, truth], est.A[:, acc], dims)
    corr = trace_correlation(C_true[truth], est.C[acc], match)
    match_all = match_footprints(A_true[:, np.flatnonzero(active)], est.A[:, acc], dims)
    queue.put({"wall": wall, "peak": peak, "base": base, "K": est.K, "accepted": acc.size,
               "f1": match.f1, "f1_all": match_all.f1,
               "corr": float(np.median(corr)) if corr.size else float("nan"), "steps": steps})


def simulate_to(path: Path, size: int, frames: int, cells: int, seed: int) -> None:
    from somascope import simulate

    sim = simulate.two_photon(dims=(size, size), n_frames=frames, n_cells=cells, seed=seed)
    A = sim.A.tocsc()
    np.savez(path, movie=sim.movie, A_data=A.data, A_indices=A.indices, A_indptr=A.indptr,
             A_shape=np.array(A.shape), C=sim.C, active=sim.active, soma=sim.kind == "soma")


def run(path: Path, method: str) -> dict[str, Any]:
    return run_in_child(_child, str(path), method)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small subset (64², 128²)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    args = parser.parse_args(argv)

    method = "rolling_greedy_roi"
    runs: list[tuple[str, int, int, int, str]] = []  # (sweep, size, frames, cells, method)
    if args.quick:
        runs += [("pixels", 64, 1000, 12, method), ("pixels", 128, 1000, 50, method)]
    else:
        runs += [("pixels", s, 2000, c, method) for s, c in ((64, 12), (128, 50), (256, 200))]
        runs += [("frames", 128, t, 50, method) for t in (1000, 4000)]
        runs += [("components", 128, 2000, c, method) for c in (25, 100)]
        runs += [("init method", 128, 2000, 50, m) for m in ("greedy_roi", "sparse_nmf", "seeded")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sweep, size, frames, cells, meth in runs:
            path = Path(tmp) / f"sim_{size}_{frames}_{cells}.npz"
            if not path.exists():
                simulate_to(path, size, frames, cells, args.seed)
            r = run(path, meth)
            movie_mb = size * size * frames * 4 / 2**20
            row = {"sweep": sweep, "pixels": f"{size}²", "frames": frames, "cells": cells,
                   "method": meth, "K": r["K"], "acc": r["accepted"], "wall s": r["wall"],
                   "movie MB": movie_mb, "base MB": r["base"], "peak MB": r["peak"],
                   "extra MB": r["peak"] - r["base"], "F1": r["f1"], "F1 all": r["f1_all"],
                   "med corr": r["corr"]}
            for step in STEPS:
                row[step.split()[0]] = r["steps"].get(step, float("nan"))
            rows.append(row)
            print(f"done: {sweep} {size}² × {frames}, {cells} cells, {meth}: {r['wall']:.1f} s",
                  flush=True)
    cols = ["sweep", "pixels", "frames", "cells", "method", "K", "acc", "wall s", "noise",
            "initialisation", "spatial", "merging", "evaluation", "movie MB", "base MB", "peak MB",
            "extra MB", "F1", "F1 all", "med corr"]
    print(table(rows, cols))
    import importlib.util

    if importlib.util.find_spec("caiman") is None:
        print("peers: CaImAn is not installed here, so there is no comparison row.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
