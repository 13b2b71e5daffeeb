"""The built-in demo: the batch pipeline on a simulated movie, scored against its ground truth.

``somascope demo --out DIR`` simulates a two-photon movie with known cells and rigid motion
into ``DIR/movie.zarr`` (written out of core), saves the truth to ``DIR/ground_truth.h5``,
then runs :func:`somascope.pipeline.run` on the movie with ``DIR`` as the output folder
(motion → summary → CNMF → quality → traces → ``DIR/results.h5`` and
``DIR/report/report.html``). The report shows the accuracy against the truth; the demo also
returns and prints it (F1 of the accepted components against the active somata, median
correlation of the matched traces).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The quick demo (tests, a first try): seconds.
QUICK_SPEC: dict[str, Any] = {"dims": (64, 64), "n_frames": 1000, "n_cells": 12}
#: The default demo: about a minute on two cores.
FULL_SPEC: dict[str, Any] = {"dims": (192, 192), "n_frames": 2000, "n_cells": 60}
#: Settings shared by both.
COMMON_SPEC: dict[str, Any] = {"frame_rate": 30.0, "decay_time": 0.4, "neuron_radius": 5.0, "motion": "rigid",
                               "max_shift": 4.0}


@dataclass
class DemoResult:
    """Where the demo wrote its files and how well the pipeline did against the truth."""

    out: Path
    report: Path | None
    results: Path
    f1: float
    precision: float
    recall: float
    trace_corr: float
    n_true: int
    n_found: int
    n_accepted: int
    run: Any

    def summary(self) -> str:
        return (f"{self.n_accepted} of {self.n_found} components accepted; against the {self.n_true} active "
                f"somata: F1 {self.f1:.3f} (precision {self.precision:.3f}, recall {self.recall:.3f}), "
                f"median trace correlation {self.trace_corr:.3f}")


def run_demo(out: str | os.PathLike[str], *, quick: bool = False, seed: int = 0, progress: bool = True,
             engine: Any = None, force: bool = False) -> DemoResult:
    """Simulate, run the pipeline into ``out`` and score it; returns a :class:`DemoResult`.

    ``quick`` uses a 64×64×1000 movie with 12 cells (seconds); the default is 192×192×2000
    frames at 30 Hz with 60 cells. ``engine``: as :func:`somascope.pipeline.run` (default:
    this process for the quick demo, a local Dask cluster otherwise). The movie is simulated
    afresh on every call, so a second demo into the same folder computes every stage again.
    """
    from . import simulate
    from .pipeline import run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {**(QUICK_SPEC if quick else FULL_SPEC), **COMMON_SPEC, "seed": seed}
    movie_path = out / "movie.zarr"
    sim = simulate.two_photon(**spec, out=movie_path, overwrite=True, progress=progress)
    _save_truth(sim, out / "ground_truth.h5", seed)
    somata = np.flatnonzero(np.asarray(sim.active) & (np.asarray(sim.kind) == "soma"))

    def truth(motion: Any) -> dict[str, Any]:
        return {"A": true_footprints(sim, motion), "somata": somata, "C": np.asarray(sim.C)}

    if engine is None:
        engine = "serial" if quick else "local"
    result = run(movie_path, out, radius=spec["neuron_radius"], decay_time=spec["decay_time"], engine=engine,
                 progress=progress, truth=truth, force=force)
    return _score(out, sim, somata, result, truth)


def _save_truth(sim: Any, path: Path, seed: int) -> None:
    from .cnmf.estimates import Estimates

    Estimates(A=sim.A, dims=tuple(sim.dims), C=sim.C, S=sim.S, b=sim.b, f=sim.f, frame_rate=sim.frame_rate,
              seed=seed, params={"simulation": sim.params},
              extra={"active": np.asarray(sim.active), "is_soma": np.asarray(sim.kind) == "soma",
                     "shifts": np.asarray(sim.shifts, np.float32)}).save(path)


def true_footprints(sim: Any, motion: Any) -> Any:
    """The true footprints (pixels × K, CSC) in the frame of the motion-corrected movie.

    The corrected movie is aligned to a template made from the data, so the truth (drawn
    motion-free) sits at a constant offset from it: the median of the true minus the estimated
    displacements (``docs/conventions.md``). Without motion correction the truth is returned
    as is.
    """
    if motion is None:
        from scipy import sparse

        return sparse.csc_matrix(sim.A)
    offset = np.median(np.asarray(sim.shifts) - np.asarray(motion.shifts), axis=0)
    from .metrics import shift_footprints

    return shift_footprints(sim.A, tuple(sim.dims), offset)


def _score(out: Path, sim: Any, somata: np.ndarray, result: Any, truth: Any) -> DemoResult:
    from .metrics import match_footprints, trace_correlation
    from .motion.result import MotionResult

    est = result.estimates
    motion_dir = out / "stages" / "motion" / "result"
    motion = MotionResult.load(motion_dir, open_store=False) if (motion_dir / "metrics.json").is_file() else None
    true_A = truth(motion)["A"]
    accepted = est.accepted_indices
    match = match_footprints(true_A[:, somata], est.A[:, accepted], tuple(sim.dims))
    corr = trace_correlation(np.asarray(sim.C)[somata], est.C[accepted], match) if est.C is not None else np.zeros(0)
    return DemoResult(out=out, report=result.report_path, results=result.results_path, f1=float(match.f1),
                      precision=float(match.precision), recall=float(match.recall),
                      trace_corr=float(np.median(corr)) if corr.size else float("nan"), n_true=int(somata.size),
                      n_found=int(est.K), n_accepted=int(accepted.size), run=result)
