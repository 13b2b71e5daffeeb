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

from .report import Section, contour_panel, image_panel, trace_panel, write_report


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

    ``quick`` uses a 64×64×400 movie (seconds); the default is 192×192×2000 frames at 30 Hz
    with 60 cells and rigid motion (about a minute on two cores).
    """
    from . import simulate
    from .cnmf.estimates import Estimates
    from .store import Store
    from .summary import save_summary, summary_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages()
    if quick:
        spec: dict[str, Any] = dict(dims=(64, 64), n_frames=400, n_cells=12)
    else:
        spec = dict(dims=(192, 192), n_frames=2000, n_cells=60)
    spec.update(frame_rate=30.0, motion="rigid", seed=seed)

    store_path = out / "movie.zarr"
    sim = stages.run("simulate → store", lambda: simulate.two_photon(**spec, out=store_path, overwrite=True))
    store = Store.open(store_path)
    images = stages.run(
        "summary images",
        lambda: summary_images(store, max_corr_frames=min(1000, store.shape[0]), progress=progress),
    )
    save_summary(images, out / "summary")
    truth = Estimates(A=sim.A, dims=tuple(sim.dims), C=sim.C, S=sim.S, b=sim.b, f=sim.f,
                      frame_rate=sim.frame_rate, seed=seed, params={"simulation": sim.params})
    truth.save(out / "ground_truth.h5")

    image_panel({k: v for k, v in images.images().items() if v is not None}, out / "summary.png")
    active = np.flatnonzero(np.asarray(sim.active))
    contour_panel(images.corr, {"true cells": (sim.A, "#39d353")}, tuple(sim.dims), out / "cells.png",
                  title="ground-truth footprints on the correlation image")
    trace_panel({"true calcium": np.asarray(sim.C)[active]}, sim.frame_rate, out / "traces.png",
                spikes=np.asarray(sim.S)[active])
    sections = [
        Section("Movie", table=[
            ("frames × height × width", list(store.shape)),
            ("frame rate", f"{sim.frame_rate:g} Hz"),
            ("cells (active)", f"{sim.A.shape[1]} ({active.size})"),
            ("motion", spec["motion"]),
            ("store", f"{store_path.name}, chunks {store.chunks}"),
        ]),
        Section("Summary images", figures=[("summary.png", "mean, max, std, correlation (8 neighbours), "
                                            "max-correlation over blocks of frames")]),
        Section("Cells", figures=[("cells.png", "true footprints outlined at 30% of their peak"),
                                  ("traces.png", "true calcium of active cells, with spike times")]),
        Section("Run", table=stages.rows),
    ]
    return write_report(out, "somascope demo", sections,
                        subtitle="simulated two-photon movie → store → summary images")
