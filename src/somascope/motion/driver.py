"""Motion correction of a whole movie, in parallel over chunks of frames, out of core.

:func:`correct` runs NoRMCorre as three maps over chunks of ``chunk_frames`` frames on an
:class:`~somascope.parallel.Engine`:

1. **Templates.** Up to :data:`TEMPLATE_CHUNKS` chunks spread over the movie each build their
   own template from :data:`TEMPLATE_FRAMES` of their frames (binned median, refined
   ``niter_rig`` times; once more piecewise-rigidly in pw-rigid mode). The chunk templates are
   aligned to each other and their median is the meta-template. With ``pw_rigid="auto"``
   the templates are rigid; a sample of the template windows' frames is then registered
   piecewise-rigidly to the meta-template and piecewise-rigid mode is chosen when the patches
   move more than :data:`PW_RIGID_AUTO_THRESHOLD_PX` against the rigid displacement
   (:func:`nonrigid_residual`); the block templates then get their piecewise-rigid step.
   ``MotionResult.metrics["motion_model"]`` records the decision.
2. **Estimation.** Every chunk is registered to the meta-template (rigid or piecewise-rigid);
   workers return only displacements. The driver then smooths them in time
   (``smooth_shifts``) and, in pw-rigid mode, refers them to the movie's average geometry:
   the time-average of the patch displacements relative to the rigid one is the deformation
   of the template itself (it was built from a few windows of frames); it is subtracted from
   every frame's patch displacements and the template is warped to match.
3. **Correction.** Every chunk is corrected with its displacements and the worker writes the
   frames straight into the output :class:`~somascope.store.Store`, returning per-frame
   correlations, residual shifts of a sample of frames, and per-chunk sums for the mean images.

Rigid correction without ``smooth_shifts`` needs nothing from the other chunks, so phases 2 and
3 are one: each chunk is read once, registered and corrected (reading a frame from a Store costs
about as much as its FFT).

Memory: a worker holds one chunk (read + corrected copy); the driver holds the displacements
and a few frame-sized accumulators. The results of one *wave* of chunks
(:data:`WAVE_TASKS_PER_WORKER` per worker) are reduced before the next wave starts.

:func:`apply_shifts` applies a result's displacements to another movie of the same shape
(a second channel, or the raw data when shifts were estimated on a filtered copy).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..parallel import Engine, as_engine, available_cores
from .block import Reference, correct_block, prepare_reference, register_block
from .metrics import central_region, crispness, frame_correlations
from .piecewise import PatchGrid, displacement_field, patch_grid
from .result import MotionResult
from .settings import Settings, resolve
from .templates import block_template, meta_template, refine_template
from .warp import warp_frame

log = logging.getLogger(__name__)

#: Most chunks that contribute a template (bounds the driver's memory and the template cost).
TEMPLATE_CHUNKS = 8
#: Frames of each such chunk used for its template (taken around the chunk's middle).
TEMPLATE_FRAMES = 80
#: Every RESIDUAL_EVERY-th frame is registered again after correction (residual shifts).
RESIDUAL_EVERY = 10
#: Chunks per worker in flight before the driver reduces their results.
WAVE_TASKS_PER_WORKER = 4
#: ``pw_rigid="auto"`` runs piecewise-rigid correction when :func:`nonrigid_residual` of the
#: sampled frames exceeds this, px: patches that move by more than half a pixel against the
#: rigid displacement blur cells enough to cost detection; below it the rigid model is as good
#: (and the patch estimates are mostly noise). Measured values: ``docs/motion.md``.
PW_RIGID_AUTO_THRESHOLD_PX = 0.5
#: Percentile over the sampled frames used by :func:`nonrigid_residual`.
PW_RIGID_AUTO_PERCENTILE = 95.0
#: Most frames registered piecewise-rigidly to decide ``pw_rigid="auto"``: groups of
#: :data:`PW_RIGID_AUTO_BIN` consecutive frames spread over the template windows (spread over
#: the movie; read again cheaply).
PW_RIGID_AUTO_FRAMES = 256
#: Consecutive frames whose patch displacements are averaged before :func:`nonrigid_residual`
#: (estimation noise is independent from frame to frame, deformations last longer).
PW_RIGID_AUTO_BIN = 4
#: Samples whose patches match the template this much worse than the best-matching samples
#: (median patch correlation below this fraction of its 90th percentile over samples) are left
#: out of :func:`nonrigid_residual`: their patch displacements are noise (the dim end of a
#: bleached recording), not deformation. Warped frames match as well as still ones once each
#: patch is shifted (0.91–1.07 of the median on the hard family's non-rigid members).
PW_RIGID_AUTO_RELIABLE = 0.5


@dataclass(frozen=True)
class _Piece:
    """Frames ``[t0, t0 + len(data))`` of an in-memory array source (pickles only these)."""

    data: np.ndarray
    t0: int


def _piece(source: Any, t0: int, t1: int) -> Any:
    if isinstance(source, np.ndarray):
        return _Piece(source[t0:t1], t0)
    return source


def _read(src: Any, t0: int, t1: int) -> np.ndarray:
    block = src.data[t0 - src.t0:t1 - src.t0] if isinstance(src, _Piece) else src[t0:t1]
    frames = np.asarray(block, dtype=np.float32)  # never modified: no copy needed
    totals = frames.reshape(len(frames), -1).sum(axis=1, dtype=np.float64)  # NaN/Inf anywhere → not finite
    if not np.all(np.isfinite(totals)):
        bad = np.flatnonzero(~np.isfinite(totals))[:5] + t0
        name = getattr(src, "path", None) or (getattr(src, "paths", None) or ["the movie"])[0]
        raise ValueError(f"{name}: frames {bad.tolist()} contain NaN or Inf. Fix: fill them (e.g. with the "
                         "frame's median) or cut them out before motion correction.")
    return frames


def _as_source(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        from ..io import open_movie

        source = open_movie(source)
    shape = getattr(source, "shape", None)
    if shape is None or not hasattr(source, "__getitem__"):
        raise TypeError("source must be a movie (path, somascope.io.Movie, Store or array), "
                        f"got {type(source).__name__}.")
    if len(shape) not in (3, 4):
        raise ValueError(f"motion correction needs a movie of shape T×H×W or T×Z×H×W; got shape {tuple(shape)}. "
                         "Open multi-channel files with open_movie(..., channel=k).")
    if shape[0] < 1:
        raise ValueError("the movie has no frames.")
    return source


def _check_not_source(source: Any, out: str | os.PathLike[str]) -> None:
    """Refuse to write the corrected movie over the movie being read."""
    target = os.path.abspath(out)
    paths = [getattr(source, "final_path", None), *getattr(source, "paths", [])]
    if any(p is not None and os.path.abspath(p) == target for p in paths):
        raise ValueError(f"out={str(out)!r} is the input movie itself; write the corrected movie to another path "
                         "(inputs are never modified).")


def _chunks(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    return [(t0, min(t0 + chunk_frames, n_frames)) for t0 in range(0, n_frames, chunk_frames)]


def _store_chunks(shape: Sequence[int], chunk_frames: int) -> tuple[int, ...]:
    """Store chunking whose time chunk divides ``chunk_frames`` (so that each motion chunk is
    written by one worker without touching its neighbours' bricks)."""
    from ..store import default_chunks

    default = default_chunks(shape)
    tc0 = default[0]
    divisors = [d for d in range(1, chunk_frames + 1) if chunk_frames % d == 0 and d <= 2 * tc0]
    tc = max(divisors)
    if tc < tc0 // 4:
        tc = chunk_frames
    return (min(tc, int(shape[0])), *default[1:])


# -- worker tasks --------------------------------------------------------------------
def _template_task(item: tuple[Any, int, int, Settings, int]) -> np.ndarray:
    src, t0, t1, settings, workers = item
    return block_template(_read(src, t0, t1), settings, workers)


def _estimate_task(item: tuple[Any, ...]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
    src, t0, t1, template, settings, workers = item
    ref = prepare_reference(template, settings)
    sh = register_block(_read(src, t0, t1), ref, settings, workers)
    return t0, sh.rigid, sh.corr, sh.patch


def _correct_task(item: tuple[Any, ...]) -> dict[str, Any]:
    src, store_path, t0, t1, rigid, patch, template, settings, workers = item
    frames = _read(src, t0, t1)
    ref = prepare_reference(template, settings, pw_rigid=False)  # rigid plan (and for the residual shifts)
    peak = None
    if rigid is None:  # rigid without smoothing: estimate here, no second read of the frames
        sh = register_block(frames, ref, settings, workers)
        rigid, peak = sh.rigid, sh.corr
    grid = patch_grid(settings.dims, settings.strides, settings.overlaps) if patch is not None else None
    corrected = correct_block(frames, rigid, patch, grid, settings.border_mode)
    if store_path is not None:
        from ..store import Store

        Store.open(store_path, mode="r+").write(t0, corrected)
    region = central_region(settings.dims, _metric_margin(settings))
    sampled = np.arange(-(-t0 // RESIDUAL_EVERY) * RESIDUAL_EVERY, t1, RESIDUAL_EVERY)
    if settings.border_mode == "nan":
        finite = np.isfinite(corrected)
        sum_cor = np.nansum(corrected, axis=0).astype(np.float64)
        count = finite.sum(axis=0, dtype=np.int64)
    else:
        sum_cor = corrected.sum(axis=0).astype(np.float64)  # float32 within a chunk is plenty
        count = np.full(settings.dims, len(corrected), dtype=np.int64)
    return {
        "t0": t0, "t1": t1, "rigid": rigid, "peak_corr": peak,
        "frame_corr": frame_correlations(corrected, template, region),
        "frame_corr_raw": frame_correlations(frames[sampled - t0], template, region),
        "sum_raw": frames.sum(axis=0).astype(np.float64),
        "sum_corrected": sum_cor,
        "count_corrected": count,
        "residual_frames": sampled,
        "residual_shifts": _residual_shifts(corrected[sampled - t0], ref, settings, workers),
    }


def _metric_margin(settings: Settings) -> tuple[int, ...]:
    dev = settings.max_deviation_rigid if settings.pw_rigid else (0,) * settings.ndim
    return tuple(m + d + 1 for m, d in zip(settings.max_shifts, dev))


def _residual_shifts(corrected: np.ndarray, ref: Reference, settings: Settings, workers: int) -> np.ndarray:
    """Rigid displacement left in corrected frames (NaN borders filled with the frame mean)."""
    if len(corrected) == 0:
        return np.zeros((0, settings.ndim), dtype=np.float32)
    x = corrected.copy()
    for i in range(len(x)):
        bad = ~np.isfinite(x[i])
        if bad.any():
            x[i][bad] = np.nanmean(x[i]) if (~bad).any() else 0.0
    return register_block(x, Reference(ref.plan, None), settings, workers).rigid


def _apply_task(item: tuple[Any, ...]) -> int:
    src, store_path, t0, t1, rigid, patch, grid, border_mode = item
    from ..store import Store

    corrected = correct_block(_read(src, t0, t1), rigid, patch, grid, border_mode)
    Store.open(store_path, mode="r+").write(t0, corrected)
    return t1 - t0


def _mean_task(item: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    src, t0, t1, rigid, patch, grid, border_mode = item
    corrected = correct_block(_read(src, t0, t1), rigid, patch, grid, border_mode)
    finite = np.isfinite(corrected)
    return np.where(finite, corrected, 0).sum(axis=0, dtype=np.float64), finite.sum(axis=0)


# -- driver --------------------------------------------------------------------------
def correct(
    source: Any,
    params: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    engine: Engine | str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **overrides: Any,
) -> MotionResult:
    """Motion-correct a movie (NoRMCorre, rigid or piecewise-rigid, 2-D or 3-D).

    Parameters
    ----------
    source
        The movie: a path (opened with :func:`somascope.io.open_movie`), a
        :class:`~somascope.io.Movie`, a :class:`~somascope.store.Store` or an array, of shape
        ``T×H×W`` or ``T×Z×H×W``. Never modified.
    params
        A :class:`~somascope.params.Params`, its ``.motion`` group, a dict of parameters
        (CaImAn keys accepted) or ``None`` (defaults).
    out
        Path of the corrected :class:`~somascope.store.Store` to write (a folder, e.g.
        ``"run/corrected.zarr"``); ``None`` estimates displacements and metrics only (apply
        them later with :func:`apply_shifts`).
    engine
        :class:`~somascope.parallel.Engine` (or a scheduler spec it accepts); ``None`` runs in
        this process.
    progress
        Show progress bars.
    overwrite
        Replace an existing store at ``out``.
    **overrides
        Motion parameters overriding ``params`` (``pw_rigid=True``, ``max_shifts=(10, 10)``, …).

    Returns
    -------
    MotionResult
        Displacements (``docs/conventions.md`` sign convention), template, metrics,
        ``border_pix`` and the corrected store (``None`` without ``out``).

    Raises
    ------
    ParameterError
        Unknown or impossible parameters (``max_shifts`` too large for the frame, frames smaller
        than a patch, …), raised before any frame is read.
    ValueError
        Movie of the wrong shape, or frames holding NaN/Inf.
    """
    source = _as_source(source)
    shape = tuple(int(s) for s in source.shape)
    n_frames, dims = shape[0], shape[1:]
    settings = resolve(params, overrides, dims)
    chunks = _chunks(n_frames, settings.chunk_frames)
    own_engine = not isinstance(engine, Engine)
    eng = as_engine(engine)
    workers = available_cores() if eng.kind == "serial" else 1
    store = None
    if out is not None:
        from ..store import Store

        _check_not_source(source, out)
        store = Store.create(out, shape, chunks=_store_chunks(shape, settings.chunk_frames),
                             frame_rate=getattr(source, "frame_rate", None),
                             metadata={"motion": settings.params}, overwrite=overwrite)
    try:
        auto = settings.pw_rigid_requested == "auto"
        kind = "rigid or piecewise-rigid, chosen from the data" if auto else (
            "piecewise-rigid" if settings.pw_rigid else "rigid")
        log.info("motion correction (%s) of %d frames of %s in %d chunks on %r", kind, n_frames, dims, len(chunks), eng)
        windows = _template_windows(source, chunks)
        template, block_templates = _build_template(source, windows, settings, eng, workers, progress)
        if auto:
            model = _choose_model(source, windows, template, settings, eng, workers, progress)
            log.info("motion model %s", model["reason"])
            if model["pw_rigid"]:
                settings = dataclasses.replace(settings, pw_rigid=True)
                template = _pw_templates(source, windows, block_templates, settings, eng, workers, progress)
        else:
            model = {"requested": bool(settings.pw_rigid), "pw_rigid": bool(settings.pw_rigid),
                     "reason": f"pw_rigid={settings.pw_rigid} given", "residual_px": None,
                     "threshold_px": PW_RIGID_AUTO_THRESHOLD_PX, "frames_measured": 0, "seconds": 0.0}
        settings = dataclasses.replace(settings, params={**settings.params, "pw_rigid": bool(settings.pw_rigid)})
        if settings.pw_rigid or settings.smooth_shifts:
            est = _estimate(source, chunks, template, settings, eng, workers, progress)
        else:  # rigid, unsmoothed: each chunk is registered and corrected in one read
            est = _Estimate(template, None, None, None, None, None)
        result = _correct_all(source, chunks, est, settings, eng, workers, progress, store)
        result.metrics["motion_model"] = model
    except BaseException:
        if store is not None:
            store.discard()
        raise
    finally:
        if own_engine:
            eng.close()
    return result


def _template_windows(source: Any, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The windows of frames ``[a, b)`` that build templates: up to :data:`TEMPLATE_CHUNKS`
    chunks spread over the movie, :data:`TEMPLATE_FRAMES` frames around each one's middle."""
    picks = np.unique(np.round(np.linspace(0, len(chunks) - 1, min(len(chunks), TEMPLATE_CHUNKS))).astype(int))
    # Stores are read in whole bricks of ``time_chunk`` frames: start each window on a brick
    brick = int(getattr(source, "time_chunk", 1))
    windows = []
    for k in picks:
        a, b = chunks[k]
        n = min(b - a, TEMPLATE_FRAMES)
        a = a + (b - a - n) // 2
        if 1 < brick and n <= brick and (a % brick) + n > brick:
            a -= a % brick  # one brick read instead of two
        windows.append((a, a + n))
    return windows


def _build_template(source: Any, windows: list[tuple[int, int]], settings: Settings, eng: Engine, workers: int,
                    progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The meta-template and the block templates it was made of (``(k, *dims)``)."""
    items = [(_piece(source, a, b), a, b, settings, workers) for a, b in windows]
    templates = np.stack(eng.map(_template_task, items, desc="motion: templates", progress=progress, unit="chunk"))
    return meta_template(templates, settings, workers), templates


# -- pw_rigid="auto" ------------------------------------------------------------------
def _auto_sample(a: int, b: int, budget: int) -> np.ndarray:
    """Frame offsets in ``[0, b - a)`` sampled by ``_auto_task``: groups of
    :data:`PW_RIGID_AUTO_BIN` consecutive frames spread over the window, ≤ ``budget`` frames."""
    n, k = b - a, min(PW_RIGID_AUTO_BIN, b - a)
    groups = max(1, min(budget // k, n // k))
    starts = np.round(np.linspace(0, n - k, groups)).astype(int)
    return (starts[:, None] + np.arange(k)[None]).ravel()


def _auto_task(item: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Patch displacements relative to the rigid one of the frames ``_auto_sample`` picks in a
    window, registered to the (rigid) meta-template, and the patches' peak correlations, both
    averaged over each group of consecutive frames: ``(groups, n_patches, ndim)`` and
    ``(groups, n_patches)``."""
    src, a, b, budget, template, settings, workers = item
    offsets = _auto_sample(a, b, budget)
    frames = _read(src, a, b)[offsets]
    sh = register_block(frames, prepare_reference(template, settings, pw_rigid=True), settings, workers)
    residual = sh.patch - sh.rigid[:, None, :]
    k = min(PW_RIGID_AUTO_BIN, b - a)
    groups = len(offsets) // k
    return (residual.reshape(groups, k, *residual.shape[1:]).mean(axis=1),
            sh.patch_corr.reshape(groups, k, -1).mean(axis=1))


def nonrigid_residual(residual: np.ndarray, corr: np.ndarray | None = None) -> float:
    """The statistic that decides ``pw_rigid="auto"``, px.

    ``residual``: ``(n, n_patches, ndim)`` displacement of each patch relative to the rigid
    displacement, for ``n`` samples (in :func:`correct`: means over groups of
    :data:`PW_RIGID_AUTO_BIN` consecutive frames, which halves the estimation noise while
    keeping deformations that last longer than a few frames). Each patch's median over the
    samples is taken away first (the template's own deformation, which piecewise-rigid
    correction removes as a whole, see the module docstring); the result is the
    :data:`PW_RIGID_AUTO_PERCENTILE`-th percentile over samples of the *median* |deviation| over
    patches. A warp moves most patches; noise moves single patches (textureless ones, or a
    bright cell firing where little else is) by up to pixels, and the more patches a frame has
    the more such outliers it shows, so a statistic of the largest patches grows with the frame
    (a rigid 512×512 movie read 2.3 px with the second largest of 441 patches, 0.08 px with
    the median).

    ``corr`` (``(n, n_patches)``, the patches' normalised peak correlations) leaves out the
    samples that match the template much worse than the best ones
    (:data:`PW_RIGID_AUTO_RELIABLE`): a rigid movie bleached to 4 % of its light read 0.91 px
    from its dim last frames with them, 0.25 px without them.
    """
    residual = np.asarray(residual, dtype=np.float64)
    if residual.size == 0:
        return 0.0
    if corr is not None:
        residual = residual[_reliable(corr)]
    dev = residual - np.median(residual, axis=0, keepdims=True)
    per_sample = np.median(np.sqrt((dev**2).sum(axis=2)), axis=1)
    return float(np.percentile(per_sample, PW_RIGID_AUTO_PERCENTILE))


def _reliable(corr: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the samples whose median patch correlation (``corr`` ``(n, n_patches)``)
    reaches :data:`PW_RIGID_AUTO_RELIABLE` of its 90th percentile over the samples."""
    match = np.median(np.asarray(corr, dtype=np.float64), axis=1)
    return match >= PW_RIGID_AUTO_RELIABLE * np.percentile(match, 90)


def _choose_model(source: Any, windows: list[tuple[int, int]], template: np.ndarray, settings: Settings,
                  eng: Engine, workers: int, progress: bool) -> dict[str, Any]:
    """Decide rigid / piecewise-rigid for ``pw_rigid="auto"`` (see :data:`PW_RIGID_AUTO_THRESHOLD_PX`)."""
    started = time.perf_counter()
    info: dict[str, Any] = {"requested": "auto", "threshold_px": PW_RIGID_AUTO_THRESHOLD_PX,
                            "residual_px": None, "frames_measured": 0}
    if settings.auto_unavailable is not None:
        info.update(pw_rigid=False, reason=f"auto: rigid, because {settings.auto_unavailable}")
    else:
        budget = max(1, PW_RIGID_AUTO_FRAMES // len(windows))
        items = [(_piece(source, a, b), a, b, budget, template, settings, workers) for a, b in windows]
        parts = eng.map(_auto_task, items, desc="motion: rigid or pw-rigid?", progress=progress, unit="chunk")
        residual = np.concatenate([r for r, _ in parts])
        corr = np.concatenate([c for _, c in parts])
        n_frames = sum(len(_auto_sample(a, b, budget)) for a, b in windows)
        value = nonrigid_residual(residual, corr)
        pw = value > PW_RIGID_AUTO_THRESHOLD_PX
        info.update(pw_rigid=bool(pw), residual_px=round(value, 4), frames_measured=int(n_frames),
                    reason=(f"auto: {'piecewise-rigid' if pw else 'rigid'}, patch displacements differ from the rigid "
                            f"one by {value:.2f} px ({PW_RIGID_AUTO_PERCENTILE:g}th percentile over {n_frames} frames, "
                            f"averaged in {len(residual)} groups, {int(_reliable(corr).sum())} of them matching the "
                            f"template well enough, of the median over {residual.shape[1]} patches) "
                            f"{'>' if pw else '≤'} threshold {PW_RIGID_AUTO_THRESHOLD_PX:g} px"))
    info["seconds"] = round(time.perf_counter() - started, 3)
    return info


def _pw_template_task(item: tuple[Any, ...]) -> np.ndarray:
    src, a, b, template, settings, workers = item
    return refine_template(_read(src, a, b), template, settings, pw_rigid=True, workers=workers)


def _pw_templates(source: Any, windows: list[tuple[int, int]], templates: np.ndarray, settings: Settings,
                  eng: Engine, workers: int, progress: bool) -> np.ndarray:
    """The meta-template of pw-rigid mode from the rigid block templates: the last step of
    :func:`~somascope.motion.templates.block_template` (the same template as ``pw_rigid=True``)."""
    items = [(_piece(source, a, b), a, b, t, settings, workers) for (a, b), t in zip(windows, templates)]
    refined = eng.map(_pw_template_task, items, desc="motion: pw-rigid templates", progress=progress, unit="chunk")
    return meta_template(np.stack(refined), settings, workers)


@dataclass
class _Estimate:
    """Displacements from the estimation pass (``rigid is None``: estimate while correcting)."""

    template: np.ndarray
    rigid: np.ndarray | None
    peak_corr: np.ndarray | None
    patch: np.ndarray | None
    grid: PatchGrid | None
    recentring: np.ndarray | None


def _estimate(source: Any, chunks: list[tuple[int, int]], template: np.ndarray, settings: Settings, eng: Engine,
              workers: int, progress: bool) -> _Estimate:
    n_frames, ndim = chunks[-1][1], settings.ndim
    items = [(_piece(source, t0, t1), t0, t1, template, settings, workers) for t0, t1 in chunks]
    rigid = np.empty((n_frames, ndim), dtype=np.float32)
    peak = np.empty(n_frames, dtype=np.float32)
    patch = None
    for t0, r, c, p in eng.map(_estimate_task, items, desc="motion: estimating", progress=progress, unit="chunk"):
        rigid[t0:t0 + len(r)] = r
        peak[t0:t0 + len(r)] = c
        if p is not None:
            if patch is None:
                patch = np.empty((n_frames, *p.shape[1:]), dtype=np.float32)
            patch[t0:t0 + len(r)] = p
    if settings.smooth_shifts:
        rigid = gaussian_filter1d(rigid, settings.smooth_shifts, axis=0, mode="nearest")
        if patch is not None:
            patch = gaussian_filter1d(patch, settings.smooth_shifts, axis=0, mode="nearest")
    grid, recentring = None, None
    if patch is not None:
        grid = patch_grid(settings.dims, settings.strides, settings.overlaps)
        recentring = (patch - rigid[:, None, :]).mean(axis=0, dtype=np.float64).astype(np.float32)
        patch = patch - recentring[None]
        rigid = rigid - recentring.mean(axis=0)[None]  # the constant part moves the template as a whole
        template = warp_frame(template, displacement_field(-recentring, grid), "copy")
    return _Estimate(template, rigid, peak, patch, grid, recentring)


def _correct_all(source: Any, chunks: list[tuple[int, int]], est: _Estimate, settings: Settings,
                 eng: Engine, workers: int, progress: bool, store: Any) -> MotionResult:
    n_frames, dims, ndim = chunks[-1][1], settings.dims, settings.ndim
    estimated = est.rigid is not None
    rigid = est.rigid if estimated else np.empty((n_frames, ndim), dtype=np.float32)
    peak = est.peak_corr if estimated else np.empty(n_frames, dtype=np.float32)
    frame_corr = np.empty(n_frames, dtype=np.float32)
    corr_raw: list[np.ndarray] = []
    sum_raw = np.zeros(dims, dtype=np.float64)
    sum_cor = np.zeros(dims, dtype=np.float64)
    count = np.zeros(dims, dtype=np.int64)
    res_frames: list[np.ndarray] = []
    res_shifts: list[np.ndarray] = []
    store_path = None if store is None else str(store.path)
    items = [(_piece(source, t0, t1), store_path, t0, t1, est.rigid[t0:t1] if estimated else None,
              None if est.patch is None else est.patch[t0:t1], est.template, settings, workers)
             for t0, t1 in chunks]
    wave = WAVE_TASKS_PER_WORKER * max(1, eng.n_workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_frames, desc="motion: correcting", unit="frame")
    try:
        for w0 in range(0, len(items), wave):
            for r in eng.map(_correct_task, items[w0:w0 + wave], progress=False):
                t0, t1 = r["t0"], r["t1"]
                if not estimated:
                    rigid[t0:t1] = r["rigid"]
                    peak[t0:t1] = r["peak_corr"]
                frame_corr[t0:t1] = r["frame_corr"]
                corr_raw.append(r["frame_corr_raw"])
                sum_raw += r["sum_raw"]
                sum_cor += r["sum_corrected"]
                count += r["count_corrected"]
                res_frames.append(r["residual_frames"])
                res_shifts.append(r["residual_shifts"])
                if bar is not None:
                    bar.update(t1 - t0)
    finally:
        if bar is not None:
            bar.close()
    if store is not None:
        store = store.finalize()
    mean_raw = (sum_raw / n_frames).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_image = np.where(count > 0, sum_cor / np.maximum(count, 1), np.nan).astype(np.float32)
    res = np.concatenate(res_shifts) if res_shifts else np.zeros((0, ndim), np.float32)
    region = central_region(dims, _metric_margin(settings))
    res_norm = np.linalg.norm(res, axis=1) if len(res) else np.zeros(0)
    metrics = {
        "crispness_raw": crispness(mean_raw, region),
        "crispness_corrected": crispness(mean_image, region),
        "frame_corr_raw_mean": float(np.nanmean(np.concatenate(corr_raw))),
        "frame_corr_mean": float(np.nanmean(frame_corr)),
        "peak_corr_mean": float(np.mean(peak)),
        "residual_rms_px": float(np.sqrt(np.mean(res_norm**2))) if len(res_norm) else 0.0,
        "residual_max_px": float(res_norm.max()) if len(res_norm) else 0.0,
        "residual_frames": np.concatenate(res_frames).tolist() if res_frames else [],
        "residual_shifts": res.tolist(),
        "max_shift_px": np.abs(rigid).max(axis=0).tolist(),
        "template_recentring_rms_px": (None if est.recentring is None
                                       else float(np.sqrt(np.mean(np.sum(est.recentring**2, axis=1))))),
    }
    return MotionResult(
        shifts=rigid, template=est.template, mean_image=mean_image, mean_raw=mean_raw, frame_corr=frame_corr,
        metrics=metrics, border_pix=border_pix(rigid, est.patch), params=settings.params,
        patch_shifts=est.patch, patch_grid=est.grid, store=store,
    )


def border_pix(shifts: np.ndarray, patch_shifts: np.ndarray | None = None) -> tuple[int, ...]:
    """Pixels at each edge, per spatial axis, that may hold values shifted in from outside the
    frame: ``ceil`` of the largest |displacement| (rigid and, when given, patch)."""
    largest = np.abs(np.asarray(shifts, dtype=np.float64)).max(axis=0)
    if patch_shifts is not None:
        largest = np.maximum(largest, np.abs(np.asarray(patch_shifts, np.float64)).max(axis=(0, 1)))
    return tuple(int(math.ceil(v - 1e-3)) for v in largest)


def _same_frames(source: Any, result: MotionResult) -> tuple[Any, int, list[tuple[int, int]]]:
    """``(source, chunk_frames, chunks)``: another movie checked to hold the frames ``result``
    was estimated on (e.g. the other channel), and the chunks the correction used."""
    source = _as_source(source)
    shape = tuple(int(s) for s in source.shape)
    if shape != (result.n_frames, *result.dims):
        raise ValueError(f"the movie has shape {shape} but the shifts are for {result.n_frames} frames of "
                         f"{result.dims}; apply shifts only to a movie recorded with the same frames "
                         "(e.g. the other channel of the same acquisition).")
    chunk = int(result.params.get("chunk_frames", 200))
    return source, chunk, _chunks(shape[0], chunk)


def _shifts_of(result: MotionResult, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rigid and (piecewise-rigid) patch shifts of frames ``t0 … t1 - 1``."""
    patch = result.patch_shifts
    return result.shifts[t0:t1], None if patch is None else patch[t0:t1]


def apply_shifts(
    source: Any,
    result: MotionResult,
    *,
    out: str | os.PathLike[str] | None = None,
    engine: Engine | str | None = None,
    border_mode: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Any:
    """Apply the displacements of ``result`` to another movie of the same shape.

    Use it for a second channel, or for raw frames when the shifts were estimated on another
    version of the movie.

    Parameters
    ----------
    source
        Path, :class:`~somascope.io.Movie`, :class:`~somascope.store.Store` or array with the
        shape ``(T, *dims)`` of the movie ``result`` was estimated on.
    result
        From :func:`correct` (or :meth:`MotionResult.load`).
    out
        Path of a :class:`~somascope.store.Store` to write (in parallel on ``engine``);
        ``None`` returns an in-memory float32 array computed in this process.
    border_mode
        ``"copy"``, ``"zero"`` or ``"nan"``; default: the one used for ``result``.

    Returns
    -------
    The finalised :class:`~somascope.store.Store`, or a ``(T, *dims)`` float32 array.
    """
    source, chunk, chunks = _same_frames(source, result)
    shape = tuple(int(s) for s in source.shape)
    mode = border_mode or result.params.get("border_mode", "copy")
    grid: PatchGrid | None = result.patch_grid
    if out is None:
        corrected = np.empty(shape, dtype=np.float32)
        for t0, t1 in chunks:
            r, p = _shifts_of(result, t0, t1)
            corrected[t0:t1] = correct_block(_read(source, t0, t1), r, p, grid, mode)
        return corrected
    from ..store import Store

    _check_not_source(source, out)
    store = Store.create(out, shape, chunks=_store_chunks(shape, chunk), frame_rate=getattr(source, "frame_rate", None),
                         metadata={"motion": result.params, "applied_shifts": True}, overwrite=overwrite)
    own_engine = not isinstance(engine, Engine)
    eng = as_engine(engine)
    try:
        items = [(_piece(source, t0, t1), str(store.path), t0, t1, *_shifts_of(result, t0, t1), grid, mode)
                 for t0, t1 in chunks]
        eng.map(_apply_task, items, desc="motion: applying shifts", progress=progress, unit="chunk")
        return store.finalize()
    except BaseException:
        store.discard()
        raise
    finally:
        if own_engine:
            eng.close()


def mean_after_shifts(
    source: Any,
    result: MotionResult,
    *,
    engine: Engine | str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The time average of another movie of the same frames once the displacements of
    ``result`` are applied, ``dims`` float32 (e.g. a static structural channel, moved by the
    functional channel's motion). Chunks of frames are corrected on ``engine`` and only their
    sums come back, so the corrected movie is never held or written. A pixel that is NaN in
    every corrected frame (``border_mode="nan"``) is NaN.
    """
    source, _, chunks = _same_frames(source, result)
    mode = result.params.get("border_mode", "copy")
    items = [(_piece(source, t0, t1), t0, t1, *_shifts_of(result, t0, t1), result.patch_grid, mode)
             for t0, t1 in chunks]
    own_engine = not isinstance(engine, Engine)
    eng = as_engine(engine)
    try:
        parts = eng.map(_mean_task, items, desc="motion: averaging a channel", progress=progress, unit="chunk")
    finally:
        if own_engine:
            eng.close()
    total = np.sum([p[0] for p in parts], axis=0)
    count = np.sum([p[1] for p in parts], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
