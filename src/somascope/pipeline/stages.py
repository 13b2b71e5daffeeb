"""The stages of ``somascope run``: plain functions, each reading its inputs from earlier stages'
folders (or this run's memory) and writing its outputs into a folder of its own.

Each stage is a :class:`Stage`: its name, the stages whose outputs it reads (``upstream``),
``depends(ctx)`` → ``(params, settings)`` the dotted parameter values and other choices its
outputs depend on (what its manifest records), and ``run(ctx, folder)`` → :class:`Outcome`.
The runner (:mod:`somascope.pipeline.runner`) decides which stages to reuse, gives each one a
fresh ``<name>.partial`` folder, and renames it when the stage has finished.

==========  ==========================  ==================================================
stage       reads                       writes (in ``stages/<name>/``)
==========  ==========================  ==================================================
motion      the movie                   ``movie.zarr`` (float32 Store), ``result/`` (MotionResult)
summary     motion's Store              ``*.npy``, ``*.png``, ``summary.json``
cnmf        motion's Store              ``estimates.h5`` (not evaluated)
quality     cnmf, the Store             ``estimates.h5`` (SNR, r-values, accepted/rejected)
refit       quality, the Store          ``estimates.h5`` (only with ``quality.refit``)
traces      refit or quality            ``estimates.h5`` (C, S, YrA, bl, g, … and F_dff)
results     traces, summary, motion     ``OUT/results.h5``, ``OUT/report/``, ``OUT/results.nwb``
==========  ==========================  ==================================================
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("somascope.pipeline")

#: Groups of parameters CNMF depends on (the temporal updates deconvolve with ``deconvolution``).
CNMF_GROUPS = ("data", "init", "patch", "merge", "temporal", "spatial", "deconvolution")
#: Quality values CNMF uses too: each patch drops components at or below the lowest thresholds.
CNMF_QUALITY_KEYS = ("quality.SNR_lowest", "quality.rval_lowest", "quality.N_samples_exceptionality")
#: Share of smooth frame-to-frame changes above which a movie run as two-photon gets a warning
#: that it looks one-photon (simulated one-photon movies 0.44–0.69, two-photon 0.02–0.09).
ONE_PHOTON_SHARE = 0.3
#: Motion correction that lowers the mean image's crispness by more than this fraction is not
#: applied: the registration followed noise (the minian Miniscope crop: 39.6 → 35.8, shifts
#: jittering ±0.9 px frame to frame; simulated movies that move gain 4–20 %).
CRISPNESS_LOSS = 0.02
#: Block length (frames) of the max-correlation image.
MAX_CORR_FRAMES = 1000
#: ΔF/F: percentile of the baseline when not chosen automatically, and the running window (s).
DFF_QUANTILE_MIN = 8.0
DFF_WINDOW_SECONDS = 30.0
#: Traces per engine task in the traces stage (fewer run with Numba threads in this process).
TRACES_ENGINE_MIN = 512
#: Components whose raw traces are summed at a time in the traces stage.
RAW_BLOCK_ROWS = 16


@dataclass
class Outcome:
    """What a stage reports: a one-line ``detail``, the files it wrote (relative to its folder
    or, for ``results``, to OUT) and in-memory products for later stages of this run."""

    detail: str
    outputs: list[str]
    products: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A stage: ``depends`` and ``run`` name functions of this module, looked up when called
    (so that a test or a plug-in can wrap ``run_cnmf`` and the runner uses the wrapper)."""

    name: str
    upstream: tuple[str, ...]
    depends_fn: str
    run_fn: str
    description: str

    def depends(self, ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return globals()[self.depends_fn](ctx)

    def run(self, ctx: Any, folder: Path) -> Outcome:
        return globals()[self.run_fn](ctx, folder)


# -- helpers --------------------------------------------------------------------------------
def dotted(params: Any, groups: tuple[str, ...], *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"group.field": value}`` of ``params`` for ``groups`` (lists for tuples), minus ``exclude``."""
    d = params.to_dict()
    out = {f"{g}.{k}": v for g in groups for k, v in d[g].items()}
    for key in exclude:
        out.pop(key, None)
    return out


def _estimates_file(folder: Path, est: Any) -> list[str]:
    est.save(folder / "estimates.h5")
    return ["estimates.h5"]


def _accept_detail(est: Any) -> str:
    return f"{est.K} components, {est.accepted_indices.size} accepted, {est.rejected_indices.size} rejected"


# -- motion -----------------------------------------------------------------------------------
def motion_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not ctx.motion:
        return {}, {"motion_correction": False}
    return dotted(ctx.params, ("motion",)), {"motion_correction": True}


def run_motion(ctx: Any, folder: Path) -> Outcome:
    """Motion-correct the movie into ``folder/movie.zarr`` (or copy it there with motion off)."""
    from ..store import Store

    store_path = folder / "movie.zarr"
    if not ctx.motion:
        Store.from_source(ctx.movie, store_path, engine=ctx.engine.get(), progress=ctx.progress)
        return Outcome("copied into a Store (motion correction off)", ["movie.zarr"], {"motion": None})
    from .. import motion

    mc = motion.correct(ctx.movie, ctx.params, out=store_path, engine=ctx.engine.get(), progress=ctx.progress)
    m = mc.metrics
    raw, corrected = m.get("crispness_raw"), m.get("crispness_corrected")
    if raw and corrected and corrected < (1.0 - CRISPNESS_LOSS) * raw:
        # the registration followed noise (a movie that does not move, or frames too dark to
        # register one by one): the corrected movie is blurrier than the recorded one
        largest = float(np.abs(mc.shifts).max()) if mc.shifts.size else 0.0
        log.warning("motion correction made the mean image less crisp (%.3g → %.3g, shifts up to %.1f px): the "
                    "registration followed noise, so the movie goes on as recorded. If it does move, try "
                    "--set motion.smooth_shifts=5 (registration on smoothed shifts) or a larger --radius.",
                    raw, corrected, largest)
        Store.from_source(ctx.movie, store_path, engine=ctx.engine.get(), progress=ctx.progress, overwrite=True)
        return Outcome(f"not applied: correction lowered the crispness {raw:.3g} → {corrected:.3g} (shifts up to "
                       f"{largest:.1f} px followed noise); the movie as recorded", ["movie.zarr"], {"motion": None})
    # the Store moves with the stage folder (reopened as stages/motion/movie.zarr), so the saved
    # result records no absolute path to it
    mc = dataclasses.replace(mc, store=None)
    mc.save(folder / "result")
    kind = "piecewise-rigid" if mc.pw_rigid else "rigid"
    model = m.get("motion_model") or {}
    if model.get("requested") == "auto":
        if model.get("residual_px") is not None:
            kind += (f" (auto: nonrigid residual {model['residual_px']:.2f} px "
                     f"{'>' if mc.pw_rigid else '≤'} {model['threshold_px']:g} px)")
        else:
            kind += " (auto: " + str(model.get("reason", "")).removeprefix("auto: rigid, because ") + ")"
    largest = float(np.abs(mc.shifts).max()) if mc.shifts.size else 0.0
    detail = (f"{kind}, largest shift {largest:.1f} px, crispness {m.get('crispness_raw', float('nan')):.3g} → "
              f"{m.get('crispness_corrected', float('nan')):.3g}")
    return Outcome(detail, ["movie.zarr", "result/metrics.json"], {"motion": mc})


# -- summary ---------------------------------------------------------------------------------
def summary_settings(ctx: Any) -> dict[str, Any]:
    T = int(ctx.shape[0])
    gsig = list(ctx.params.init.gSig) if ctx.params.data.is_1p else None
    return {"neighbours": None, "max_corr_frames": min(MAX_CORR_FRAMES, T), "gSig": gsig}


def summary_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, summary_settings(ctx)


def run_summary(ctx: Any, folder: Path) -> Outcome:
    """Mean, max, std, correlation and max-correlation images (PNR for one-photon data)."""
    from ..summary import save_summary, summary_images

    s = summary_settings(ctx)
    images = summary_images(ctx.store(), neighbours=s["neighbours"], max_corr_frames=s["max_corr_frames"],
                            gSig=s["gSig"], progress=ctx.progress, engine=ctx.engine.get())
    written = save_summary(images, folder)
    return Outcome(f"{len(images.images())} images", sorted(written), {"summary": images})


# -- seeds -----------------------------------------------------------------------------------
def seeds_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    inp = getattr(ctx, "structural", None)
    if inp is None:
        return {}, {"structural": None}
    from .. import segmentation

    # the segmentation's constants: a change of them segments again
    constants = {k: v for k, v in vars(segmentation).items()
                 if k.lstrip("_").isupper() and isinstance(v, (int, float, tuple))}
    return ({"data.neuron_radius": list(ctx.params.data.neuron_radius)},
            {"structural": inp.fingerprint, "segmentation": constants})


def run_seeds(ctx: Any, folder: Path) -> Outcome:
    """With a structural channel: its motion-corrected average, segmented into cell masks
    (``structural.npy``, ``labels.npy``, ``masks.npz``) that seed CNMF."""
    inp = getattr(ctx, "structural", None)
    if inp is None:
        return Outcome("off (no structural channel)", [], {"seeds": None})
    import scipy.sparse as sp

    from ..io.atomic import atomic_path
    from ..segmentation import seed_masks, segment_cells
    from .structural import structural_image

    image = structural_image(inp, ctx.motion_result(), engine=ctx.engine.get(), progress=ctx.progress)
    radius = tuple(float(r) for r in ctx.params.data.neuron_radius)
    labels = segment_cells(image, radius)
    masks = seed_masks(labels, radius)
    for name, arr in (("structural.npy", image), ("labels.npy", labels.astype(np.int32))):
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
    with atomic_path(folder / "masks.npz") as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, sp.csc_matrix(masks))
    if masks.shape[1] == 0:
        log.warning("no cell was found in %s: CNMF runs unseeded. Check that it is the channel with the "
                    "structural marker and that --radius is the cells' radius.", inp.label)
    return Outcome(f"{masks.shape[1]} cells segmented in {inp.label}", ["structural.npy", "labels.npy", "masks.npz"],
                   {"seeds": masks})


# -- background -----------------------------------------------------------------------------
def background_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    init = ctx.params.init
    if init.nb != 0:
        return {"init.nb": init.nb}, {}
    return {"init.nb": 0, "init.gSiz": list(init.gSiz), "init.ring_size_factor": init.ring_size_factor,
            "init.ssub_B": init.ssub_B, "init.fov_mask": init.fov_mask,
            "data.neuron_radius": list(ctx.params.data.neuron_radius)}, {}


def run_background(ctx: Any, folder: Path) -> Outcome:
    """One-photon data (``init.nb = 0``): fit the CNMF-E ring background and write the movie
    without it to ``folder/movie.zarr`` (what CNMF and the quality tests read) and the model to
    ``folder/ring.npz``. Two-photon data: nothing (their background is low-rank, inside CNMF)."""
    if ctx.params.init.nb != 0:
        detail = f"off (init.nb={ctx.params.init.nb}: low-rank background inside CNMF)"
        if not ctx.params.data.is_1p and ctx.params.ndim == 2:
            from ..summary import smooth_change_share

            share = smooth_change_share(ctx.store(), float(np.mean(ctx.params.data.neuron_radius)))
            if share > ONE_PHOTON_SHARE:
                log.warning("this movie looks one-photon: %.0f %% of its frame-to-frame changes are spatially "
                            "smooth, like a micro-endoscope's background (two-photon movies: under 15 %%). If it is "
                            "a one-photon recording, run again with --1p (data.is_1p=true).", 100 * share)
                detail += f"; looks one-photon ({100 * share:.0f} % smooth changes): consider --1p"
        return Outcome(detail, [], {})
    from ..cnmf.fit import fov_mask_from_params
    from ..cnmf.ring import fit_ring_model, save_ring_model, subtract_ring_background
    from ..io.atomic import atomic_path

    model = fit_ring_model(ctx.store(), ctx.params, progress=ctx.progress)
    save_ring_model(model, folder / "ring.npz")
    mask = fov_mask_from_params(ctx.params, model.dims, model.b0)
    mask = np.ones(model.dims, bool) if mask is None else mask
    with atomic_path(folder / "fov_mask.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, mask)
    subtract_ring_background(ctx.store(), model, folder / "movie.zarr", engine=ctx.engine.get(),
                             progress=ctx.progress)
    per_pixel = model.W.nnz / max(model.W.shape[0], 1)
    where = "whole frame" if mask.all() else f"{100 * mask.mean():.0f} % of the frame"
    return Outcome(f"ring model: radius {model.radius:.1f} px, {per_pixel:.0f} weights per pixel "
                   f"(space ÷{model.ssub_B}); background subtracted; field of view: {where}",
                   ["movie.zarr", "ring.npz", "fov_mask.npy"], {})


# -- cnmf -----------------------------------------------------------------------------------
def cnmf_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    p = dotted(ctx.params, CNMF_GROUPS)
    quality = dotted(ctx.params, ("quality",))
    for key in CNMF_QUALITY_KEYS:  # the patches screen their components with the *_lowest thresholds
        p[key] = quality[key]
    return p, {}


def run_cnmf(ctx: Any, folder: Path) -> Outcome:
    """CNMF on the Store (patches on the engine's workers when ``patch.rf`` is set), not evaluated."""
    from ..cnmf import fit

    mask = None
    if ctx.params.init.nb == 0:  # one-photon: the background stage's field-of-view mask
        mask = np.load(ctx.folder("background") / "fov_mask.npy")
        mask = None if mask.all() else mask
    seeds = ctx.seed_masks()
    if seeds is not None and seeds.shape[1] == 0:
        seeds = None
    est = fit(ctx.analysis_store(), ctx.params, engine=ctx.engine.get(), progress=ctx.progress, evaluate=False,
              fov_mask=mask, seed_masks=seeds, structural=seeds is not None)
    detail = f"{est.K} components"
    if est.seeded is not None:
        detail += f" ({int(est.seeded.sum())} seeded from {seeds.shape[1]} structural masks)"
    return Outcome(detail, _estimates_file(folder, est), {"estimates": est})


# -- quality ----------------------------------------------------------------------------------
def quality_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    p = dotted(ctx.params, ("quality",), exclude=("quality.refit",))
    p["data.dxy"] = list(ctx.params.data.dxy)  # eccentricity
    p["data.neuron_radius"] = list(ctx.params.data.neuron_radius)  # area test
    if ctx.params.quality.use_cnn:  # the classifier's weights: new weights score the components again
        from ..evaluation.classifier.cnn import weights_digest

        p["quality.cnn_weights_sha256"] = weights_digest(ctx.params.quality.cnn_weights,
                                                         modality="1p" if ctx.params.data.is_1p else "2p")
    return p, {}


def run_quality(ctx: Any, folder: Path) -> Outcome:
    """Trace SNR and spatial consistency of every component → accepted / rejected."""
    est = ctx.estimates("cnmf")
    if est.K:
        est = _evaluate(ctx, est)
    else:
        est = dataclasses.replace(est, idx_components=np.zeros(0, np.int64), idx_components_bad=np.zeros(0, np.int64))
    return Outcome(_accept_detail(est), _estimates_file(folder, est), {"estimates": est})


def _evaluate(ctx: Any, est: Any, *, mark: bool = False) -> Any:
    """``est`` evaluated on the analysis movie. In a structural run the silent cells' footprints
    become their masks; with ``mark`` (a refit, whose fit did not know the masks) the components
    are first marked ``seeded`` against the masks again, a lost mask put back."""
    from ..evaluation import evaluate_components

    masks = ctx.seed_masks()
    structural = masks is not None and masks.shape[1] > 0
    if structural and mark:
        from ..cnmf.seeded import mark_seeds

        est = mark_seeds(est, masks)
    est = evaluate_components(est, ctx.analysis_store(), ctx.params, progress=ctx.progress,
                              seed_masks=masks if structural else None)
    if structural:
        from ..cnmf.seeded import silent_footprints

        est = silent_footprints(est, masks, ctx.analysis_store(), progress=ctx.progress)
    return est


# -- refit -----------------------------------------------------------------------------------
def refit_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"quality.refit": bool(ctx.params.quality.refit)}, {}


def run_refit(ctx: Any, folder: Path) -> Outcome:
    """With ``quality.refit``: CNMF again seeded with the accepted footprints, evaluated again
    (a structural run's cells marked ``seeded`` again against its masks, and ``silent`` ones
    flagged, as in the quality stage)."""
    if not ctx.params.quality.refit:
        return Outcome("off (quality.refit is false)", [], {"estimates": None})
    est = ctx.estimates("quality")
    if est.accepted_indices.size == 0:
        log.warning("refit: no component was accepted, so there is nothing to refit; keeping the evaluated "
                    "components")
        return Outcome("nothing to refit (no component accepted)", [], {"estimates": None})
    from ..cnmf import refit

    new = refit(est, ctx.analysis_store(), ctx.params, engine=ctx.engine.get(), progress=ctx.progress,
                evaluate=False)
    new = _evaluate(ctx, new, mark=True) if new.K else new
    return Outcome(f"refit {est.accepted_indices.size} seeds: " + _accept_detail(new),
                   _estimates_file(folder, new), {"estimates": new})


# -- traces ----------------------------------------------------------------------------------
def dff_settings(ctx: Any) -> dict[str, Any]:
    """Settings of the ΔF/F (a running percentile over :data:`DFF_WINDOW_SECONDS`)."""
    T = int(ctx.shape[0])
    window = int(round(DFF_WINDOW_SECONDS * ctx.params.data.fr))
    return {"quantile_min": DFF_QUANTILE_MIN, "frames_window": window if window < T else None,
            "flag_auto": True, "use_residuals": True}


def traces_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    p = dotted(ctx.params, ("deconvolution",))
    return p, {"dff": dff_settings(ctx)}


def run_traces(ctx: Any, folder: Path) -> Outcome:
    """Deconvolve every component's raw trace (C + YrA) again, then ΔF/F."""
    est = ctx.estimates("refit")
    if est is None:  # refit off, or nothing to refit
        est = ctx.estimates("quality")
    baseline = None
    if ctx.params.init.nb == 0:  # one-photon: F0 includes the ring model's mean background image
        from ..cnmf.ring import load_ring_model

        baseline = load_ring_model(ctx.folder("background") / "ring.npz").b0
    est = dataclasses.replace(est, S=None)  # made anew: the earlier spikes are let go first
    est = final_traces(est, ctx.params, dff_settings(ctx), engine=ctx.engine, baseline=baseline)
    return Outcome(f"{est.K} traces deconvolved (AR({ctx.params.deconvolution.p})), ΔF/F",
                   _estimates_file(folder, est), {"estimates": est})


def final_traces(est: Any, params: Any, dff: dict[str, Any], engine: Any = None,
                 baseline: np.ndarray | None = None) -> Any:
    """``est`` with ``C, S, YrA, bl, g, c1, lam, neurons_sn`` from one deconvolution of the raw
    traces ``C + YrA`` (K × T) with ``params.deconvolution``, and ``F_dff`` from them.

    ``baseline`` (``(pixels,)``, movie units): the background image under the components when
    it is not in ``est.b · est.f`` — the ring model's mean image ``b0`` of one-photon data, whose
    CNMF ran on the movie without it; F0 of the ΔF/F then includes it.

    The raw trace is kept: ``C_new + YrA_new == C + YrA`` to float32 rounding (``YrA`` holds the
    baseline ``bl``).
    ``engine`` (an :class:`EngineHandle` or Engine) is used for :data:`TRACES_ENGINE_MIN` traces
    or more on a parallel engine; fewer run with Numba threads here.
    """
    from ..deconvolution import deconvolve_traces
    from ..dff import detrend_df_f

    if est.C is None or est.K == 0:
        T = 0 if est.C is None else est.C.shape[1]
        return dataclasses.replace(est, F_dff=np.zeros((0, T), np.float32)) if est.C is not None else est
    K, T = est.C.shape
    eng = None
    if engine is not None and K >= TRACES_ENGINE_MIN and getattr(engine, "kind", "serial") != "serial":
        eng = engine.get() if hasattr(engine, "get") else engine
    b, f = est.b, est.f
    if baseline is not None:
        b, f = np.asarray(baseline, np.float32)[:, None], np.ones((1, T), np.float32)
    # the raw traces, then (in place) the new residuals: with the outputs, four float32 K × T
    # arrays (a long recording's are hundreds of MB each); the float64 work runs in blocks
    YrA = np.empty((K, T), np.float32)
    for k0 in range(0, K, RAW_BLOCK_ROWS):
        blk = slice(k0, k0 + RAW_BLOCK_ROWS)
        YrA[blk] = est.C[blk] if est.YrA is None else np.add(est.C[blk], est.YrA[blk], dtype=np.float64)
    d = deconvolve_traces(YrA, params=params.deconvolution, engine=eng)
    YrA -= d.C
    F = detrend_df_f(est.A, b, d.C, f, YrA, quantile_min=dff["quantile_min"], frames_window=dff["frames_window"],
                     flag_auto=dff["flag_auto"], use_residuals=dff["use_residuals"])
    return dataclasses.replace(est, C=d.C, S=d.S, YrA=YrA, bl=d.b, g=d.g, c1=d.c1, lam=d.lam,
                               neurons_sn=d.sn, F_dff=F)


# -- results ---------------------------------------------------------------------------------
def results_depends(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    settings: dict[str, Any] = {"nwb": bool(ctx.nwb), "report": True}
    meta = getattr(ctx, "nwb_metadata", None)
    if ctx.nwb and meta is not None:  # the NWB file's metadata: a change rewrites only this stage
        settings.update({f"nwb_metadata.{k}": v for k, v in meta.to_dict().items()})
    return {}, settings


def run_results(ctx: Any, folder: Path) -> Outcome:
    """``OUT/results.h5``, the report and (with ``nwb``) ``OUT/results.nwb``."""
    from .results import write_results

    return write_results(ctx, folder)


STAGES: tuple[Stage, ...] = (
    Stage("motion", (), "motion_depends", "run_motion", "motion correction → float32 Store"),
    Stage("summary", ("motion",), "summary_depends", "run_summary", "summary images"),
    Stage("seeds", ("motion",), "seeds_depends", "run_seeds", "structural channel → cell masks that seed CNMF"),
    Stage("background", ("motion",), "background_depends", "run_background",
          "one-photon: ring background model, subtracted"),
    Stage("cnmf", ("background", "seeds"), "cnmf_depends", "run_cnmf", "CNMF: patches, initialisation, updates, merging"),
    Stage("quality", ("cnmf",), "quality_depends", "run_quality", "quality tests → accepted / rejected"),
    Stage("refit", ("quality",), "refit_depends", "run_refit", "refit seeded with the accepted components"),
    Stage("traces", ("refit",), "traces_depends", "run_traces", "deconvolution and ΔF/F"),
    Stage("results", ("traces", "summary"), "results_depends", "run_results", "results file and report"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)
