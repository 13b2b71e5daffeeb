"""The built-in demo: the main job on simulated data, end to end, with a report.

``somascope demo`` simulates a two-photon movie with known cells and motion, writes it to an
out-of-core Store, computes the summary images, saves the ground truth as a results file and
writes an HTML report. Later stages (motion correction, CNMF, evaluation) join this same
command as they land.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .report import Section, contour_panel, image_panel, save_figure, trace_panel, write_report


class _Stages:
    """Wall time and process peak memory per stage, for the report."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        import psutil

        proc = psutil.Process()
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        rss = proc.memory_info().rss / 2**30
        self.rows.append((name, f"{seconds:.1f} s, process memory {rss:.2f} GiB"))
        return result


def run_demo(out: str | os.PathLike[str], *, quick: bool = False, seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into folder ``out``; return the report path.

    ``quick`` uses a 64×64×1000 movie with 12 cells (seconds); the default is 192×192×2000
    frames at 30 Hz with 60 cells (about a minute on two cores). Steps: simulate (with rigid
    motion) → Store → motion correction → summary images → CNMF (RollingGreedyROI init,
    HALS/OASIS updates, merging) → quality tests → ΔF/F → results file, each scored against
    the ground truth.
    """
    from . import motion, simulate
    from .cnmf import fit
    from .motion.plots import plot_quality, plot_shifts
    from .cnmf.estimates import Estimates
    from .dff import detrend_df_f
    from .metrics import match_footprints, trace_correlation
    from .params import Params
    from .store import Store
    from .summary import save_summary, summary_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages()
    if quick:
        spec: dict[str, Any] = dict(dims=(64, 64), n_frames=1000, n_cells=12)
    else:
        spec = dict(dims=(192, 192), n_frames=2000, n_cells=60)
    spec.update(frame_rate=30.0, decay_time=0.4, neuron_radius=5.0, motion="rigid", max_shift=4.0, seed=seed)

    raw_path = out / "movie.zarr"
    sim = stages.run("simulate → store", lambda: simulate.two_photon(**spec, out=raw_path, overwrite=True))
    params = Params.from_neuron(radius_px=spec["neuron_radius"], fr=spec["frame_rate"],
                                decay_time=spec["decay_time"])
    mc = stages.run("motion correction", lambda: motion.correct(
        Store.open(raw_path), params, out=out / "corrected.zarr", overwrite=True, progress=progress))
    mc.save(out / "motion")
    # the corrected movie is aligned to a template made from the data: the truth, drawn
    # motion-free, sits at a constant offset from it (docs/conventions.md)
    offset = np.median(np.asarray(sim.shifts) - mc.shifts, axis=0)
    shift_rmse = float(np.sqrt(np.mean((mc.shifts + offset - np.asarray(sim.shifts)) ** 2)))
    true_A = _shift_footprints(sim.A, tuple(sim.dims), offset)
    store = mc.store
    images = stages.run(
        "summary images",
        lambda: summary_images(store, max_corr_frames=min(1000, store.shape[0]), progress=progress),
    )
    save_summary(images, out / "summary")
    est = stages.run("CNMF + quality tests", lambda: fit(store, params, progress=progress))
    est.F_dff = stages.run("ΔF/F", lambda: detrend_df_f(est.A, est.b, est.C, est.f, est.YrA))
    est.save(out / "results.h5")
    truth = Estimates(A=sim.A, dims=tuple(sim.dims), C=sim.C, S=sim.S, b=sim.b, f=sim.f,
                      frame_rate=sim.frame_rate, seed=seed, params={"simulation": sim.params})
    truth.save(out / "ground_truth.h5")

    # score the accepted components against the active somata of the ground truth
    somata = np.flatnonzero(np.asarray(sim.active) & (np.asarray(sim.kind) == "soma"))
    accepted = est.accepted_indices
    match = match_footprints(true_A[:, somata], est.A[:, accepted], tuple(sim.dims))
    corr = trace_correlation(np.asarray(sim.C)[somata], est.C[accepted], match)

    image_panel({k: v for k, v in images.images().items() if v is not None}, out / "summary.png")
    save_figure(plot_shifts(mc, frame_rate=sim.frame_rate), out / "shifts.png")
    save_figure(plot_quality(mc, frame_rate=sim.frame_rate), out / "motion_quality.png")
    contour_panel(images.corr, {"true somata": (true_A[:, somata], "#58a6ff"),
                                "accepted": (est.A[:, accepted], "#39d353"),
                                "rejected": (est.A[:, est.rejected_indices], "#f85149")},
                  tuple(sim.dims), out / "cells.png", title="components on the correlation image")
    shown = accepted[match.est_idx[:8]] if match.tp else accepted[:8]
    if shown.size:
        raw = est.C[shown] + est.YrA[shown]
        if est.bl is not None:
            raw = raw - est.bl[shown, None]
        spikes = est.S[shown]
        events = spikes > 0.1 * spikes.max(axis=1, keepdims=True)  # ticks for the larger events only
        trace_panel({"raw (C + residual − baseline)": raw, "denoised C": est.C[shown]}, sim.frame_rate,
                    out / "traces.png", spikes=events)
        trace_panel({"ΔF/F": est.F_dff[shown]}, sim.frame_rate, out / "dff.png")
    sections = [
        Section("Movie", table=[
            ("frames × height × width", list(store.shape)),
            ("frame rate", f"{sim.frame_rate:g} Hz"),
            ("cells simulated (active somata)", f"{sim.A.shape[1]} ({somata.size})"),
            ("stores", f"{raw_path.name} (raw), corrected.zarr; chunks {store.chunks}"),
        ]),
        Section("Motion correction", table=[
            ("largest true displacement", f"{np.abs(sim.shifts).max():.2f} px"),
            ("RMSE of estimated shifts (after the template offset)", f"{shift_rmse:.3f} px"),
            ("crispness of the mean image, raw → corrected",
             f"{mc.metrics.get('crispness_raw', float('nan')):.4g} → "
             f"{mc.metrics.get('crispness_corrected', float('nan')):.4g}"),
            ("border_pix", tuple(mc.border_pix)),
        ], figures=[("shifts.png", "estimated displacement over time"),
                    ("motion_quality.png", "correlation of each frame with the template; mean image "
                                           "before and after correction")]),
        Section("Accuracy against the ground truth", table=[
            ("components found / accepted", f"{est.K} / {accepted.size}"),
            ("precision", match.precision), ("recall", match.recall), ("F1", match.f1),
            ("median trace correlation (matched)", float(np.median(corr)) if corr.size else float("nan")),
        ]),
        Section("Summary images", figures=[("summary.png", "mean, max, std, correlation (8 neighbours), "
                                            "max-correlation over blocks of frames")]),
        Section("Components", figures=[("cells.png", "true somata (blue), accepted (green) and rejected "
                                        "(red) components outlined at 30% of their peak")]),
        Section("Traces", figures=[(name, caption) for name, caption in (
            ("traces.png", "accepted components matched to true cells: raw and denoised traces, "
                           "inferred events (> 10% of the largest) as ticks"),
            ("dff.png", "ΔF/F of the same components")) if (out / name).exists()]),
        Section("Run", table=stages.rows + [("results", "results.h5 (schema: docs/results-schema.md)")]),
        Section("Parameters", text=params.to_json()),
    ]
    return write_report(out, "somascope demo", sections,
                        subtitle="simulated two-photon movie → store → motion correction → summary → CNMF → "
                                 "quality → ΔF/F")


def _shift_footprints(A: Any, dims: tuple[int, ...], offset: np.ndarray) -> Any:
    """Footprints (pixels×K) moved by ``offset`` px (linear interpolation), as CSC."""
    from scipy import ndimage, sparse

    A = sparse.csc_matrix(A)
    cols = []
    for k in range(A.shape[1]):
        img = A[:, k].toarray().reshape(dims)
        moved = ndimage.shift(img, offset, order=1, mode="constant")
        cols.append(sparse.csc_matrix(moved.reshape(-1, 1)))
    return sparse.hstack(cols, format="csc") if cols else A
