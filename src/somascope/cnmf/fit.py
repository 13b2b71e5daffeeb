"""CNMF: ``Y ≈ A·C + b·f + E`` (CaImAn paper, eq. 1), whole or in patches, in memory or out of core.

:func:`fit` runs the batch algorithm:

1. noise level ``sn`` of every pixel (power spectral density, ``deconvolution.noise_range``);
2. initialisation: ``init.method`` (GreedyROI, RollingGreedyROI, sparse NMF, …; see
   :mod:`somascope.cnmf.initialization`) or, with ``seed_masks``, seeded initialisation
   (:mod:`somascope.cnmf.seeded`);
3. spatial update (:mod:`~somascope.cnmf.spatial`), then temporal update with OASIS
   deconvolution, ``temporal.ITER`` block-coordinate passes (:mod:`~somascope.cnmf.temporal`);
4. merging of overlapping, correlated components (:mod:`~somascope.cnmf.merging`), then a
   second spatial and temporal update (as CaImAn does; :data:`MERGE_ROUNDS` such rounds);
5. footprints scaled to unit L2 norm (traces carry the scale, as in CaImAn);
6. quality evaluation (:func:`somascope.evaluation.evaluate_components`: trace SNR,
   spatial consistency, eccentricity → accepted / rejected), unless ``evaluate=False``;
7. with ``quality.refit``, :func:`refit`: the whole fit again, seeded with the accepted
   footprints, and evaluated again.

When ``patch.rf`` cuts the field of view into more than one patch, steps 1–2 run per patch
(:mod:`somascope.cnmf.patches`: the map step, one engine task per patch, each reading its
window from the Store) and are combined into one start on the full field of view; steps 3–4
then read the Store by spatial blocks on the engine (:mod:`somascope.cnmf.blocked`), so the
movie is never held in memory. Seeded fits (and :func:`refit`) of a Store are out of core too.
Other sources (arrays, :class:`~somascope.io.Movie`) are read into memory. With ``patch.rf``
set and a field of view that fits in one patch, ``init.K`` counts components per patch, so the
field of view gets ``init.K`` times the fraction of a patch it covers
(:func:`components_per_fov`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from somascope.deconvolution._checks import MIN_FRAMES  # the pipeline's one minimum-frames rule

from .estimates import Estimates, collect_provenance

__all__ = ["fit", "refit", "pixel_noise", "components_per_fov", "fov_mask_from_params", "load_fov_mask"]

log = logging.getLogger(__name__)

#: Merge → update rounds after the first update (CaImAn's batch order: update, merge,
#: update; a further round would cost two more passes over the movie).
MERGE_ROUNDS = 1
#: Global background components fitted, after the ring background, to what it leaves
#: (one-photon data, ``init.nb = 0``).
RING_RESIDUAL_NB = 1
#: Seed of every randomized start (randomized SVD of background / sparse NMF).
SEED = 0


def fit(
    source: Any,
    params: Any = None,
    *,
    seed_masks: Any = None,
    structural: bool = False,
    engine: Any = None,
    progress: bool = False,
    evaluate: bool = True,
    fov_mask: Any = None,
) -> Estimates:
    """Extract components from a movie with CNMF (see the module docstring).

    Parameters
    ----------
    source
        The movie ``T × H × W`` (or ``T × Z × H × W``): ``numpy.ndarray``,
        :class:`somascope.io.Movie` or :class:`somascope.store.Store`. A Store processed in
        patches (or seeded) stays on disk and is read by the engine's workers; anything else
        is read into memory as float32. The input is never modified.
    params
        :class:`somascope.params.Params` (e.g. ``Params.from_neuron(radius_px, fr=...)``) or
        a dict :meth:`Params.from_dict` accepts; None: the defaults (5 px neurons, 30 Hz).
    seed_masks
        Masks of known cells (``K × *dims`` binary or real images, or ``pixels × K``): seeded
        initialisation instead of ``init.method``. ``init.method="seeded"`` requires them.
    structural
        The ``seed_masks`` are cells (of a structural channel), not just starting shapes: with
        ``init.seed_adds`` the unseeded detection (``init.method``, in patches) also runs and
        the components it finds outside every mask are added, so the cells the masks missed are
        kept. The result marks each component ``seeded`` (most of its footprint's energy lies
        in one mask; two masks' cells are never merged),
        a mask that CNMF left without a component (a silent cell: no activity to fit) is put
        back with its seeded start (:func:`~somascope.cnmf.seeded.mark_seeds`), and the
        evaluation flags the seeded cells without activity ``silent``, their footprint the
        mask (:func:`~somascope.cnmf.seeded.silent_footprints`; ``docs/structural.md``).
    engine
        Optional :class:`somascope.parallel.Engine`: the patches, the blocked passes over a
        Store and the deconvolution of large groups of traces run on it; None runs them
        serially in this process.
    progress
        Show a progress bar over the steps.
    evaluate
        Run the quality tests (and ``quality.refit``); False returns the components
        unevaluated (the pipeline evaluates in a stage of its own).
    fov_mask
        Bool image (frame-shaped): components whose centre lies outside are not kept (a
        micro-endoscope's lens). None: ``init.fov_mask`` decides (``"auto"`` on one-photon
        data: :func:`somascope.summary.lens_mask` of the mean image; a path: that image).

    Returns
    -------
    Estimates
        ``A`` (unit-norm columns), ``C``, ``S``, ``YrA``, ``b``, ``f``, ``sn``, ``neurons_sn``,
        ``g``, ``bl``, ``c1``, ``lam``, the quality metrics and the accepted / rejected split,
        the parameters used, ``seed`` and provenance.

    Raises
    ------
    ParameterError
        Parameters that cannot run here (``init.nb`` -1, ``seeded`` without masks, …).
    ValueError
        A movie of the wrong shape, too short, or with NaN / infinite values.
    """
    params = _as_params(params)
    return _fit(source, params, seed_masks=seed_masks, structural=structural, engine=engine, progress=progress,
                allow_refit=True, evaluate=evaluate, fov_mask=fov_mask)


def refit(
    est: Estimates,
    source: Any,
    params: Any = None,
    *,
    engine: Any = None,
    progress: bool = False,
    evaluate: bool = True,
) -> Estimates:
    """Run CNMF again seeded with the accepted footprints of ``est`` (CaImAn's ``refit``).

    The accepted footprints (``est.accepted_indices``) are the real-valued seed masks of a new
    :func:`fit` on ``source`` (the same movie), whose result is evaluated again.

    Parameters
    ----------
    est
        A fitted (and usually evaluated) :class:`Estimates`; not modified.
    source
        The movie ``est`` was computed from (a Store is read by blocks, out of core).
    params
        Parameters; None: ``est.params`` (else the defaults).
    """
    if not isinstance(est, Estimates):
        raise TypeError(f"est must be an Estimates, got {type(est).__name__}.")
    if params is None and est.params is not None:
        params = est.params
    params = _as_params(params)
    accepted = est.accepted_indices
    if accepted.size == 0:
        raise ValueError("refit needs accepted components, but est accepts none. Fix: relax the "
                         "quality thresholds (quality.min_SNR, quality.rval_thr) or refit "
                         "est.select(indices) with the components you trust.")
    masks = est.A[:, accepted]
    out = _fit(source, params, seed_masks=masks, engine=engine, progress=progress,
               allow_refit=False, evaluate=evaluate)
    return dataclasses.replace(out, provenance={**out.provenance, "refit": True})


def pixel_noise(Y: np.ndarray, params: Any = None) -> np.ndarray:
    """Noise standard deviation of every pixel, ``(pixels,)`` float64 in movie units.

    The average of each pixel's periodogram over ``deconvolution.noise_range`` (method
    ``deconvolution.noise_method``), computed along the time axis of the movie as stored, on
    the frames :func:`somascope.deconvolution.noise.pixel_noise_frames` picks (all of a
    movie up to 4,096 frames, evenly spaced segments of a longer one).
    """
    from somascope.deconvolution.noise import estimate_noise_segments, pixel_noise_frames

    params = _as_params(params)
    dec = params.deconvolution
    n = int(np.prod(np.shape(Y)[1:]))
    segments = [np.asarray(Y[t0:t1]).reshape(t1 - t0, n) for t0, t1 in pixel_noise_frames(len(Y))]
    return estimate_noise_segments(segments, dec.noise_range, dec.noise_method)


def components_per_fov(params: Any, dims: tuple[int, ...]) -> int:
    """Components to initialise on the whole field of view ``dims``.

    ``init.K`` when ``patch.rf`` is None. Otherwise ``init.K`` counts components per patch
    (``2·rf`` wide, overlapping by ``stride``) and the field of view gets ``init.K`` times the
    number of patches of the grid, counting an axis shorter than a patch as the fraction
    ``size / (2·rf)`` of one (rounded up to a whole component).
    """
    params = _as_params(params)
    K = params.init.K
    if K is None:
        raise ValueError("init.K is None; the number of components must be given for this method.")
    rf = params.patch.rf
    if rf is None:
        return int(K)
    n = 1.0
    for d, r, s in zip(dims, rf, params.patch.stride):
        width = 2 * r
        step = max(1, width - s)
        n *= d / width if d <= width else math.ceil((d - width) / step) + 1
    return max(1, math.ceil(K * n - 1e-9))


# ------------------------------------------------------------------------------------------
# the pipeline


def _fit(source: Any, params: Any, *, seed_masks: Any, engine: Any, progress: bool,
         allow_refit: bool, evaluate: bool = True, patches: bool = True, fov_mask: Any = None,
         structural: bool = False) -> Estimates:
    _check_model(params, seeded=seed_masks is not None)
    if params.init.nb == 0:
        # one-photon data: the ring background is subtracted first, CNMF runs on what is left
        return _fit_ring(source, params, seed_masks=seed_masks, engine=engine, progress=progress,
                         allow_refit=allow_refit, evaluate=evaluate, patches=patches, fov_mask=fov_mask,
                         structural=structural)
    shape = _check_shape(source, params)
    if seed_masks is None and patches:
        from .planes import by_plane

        if by_plane(params, shape[1:]):
            return _fit_planes(source, params, engine=engine, progress=progress, evaluate=evaluate,
                               allow_refit=allow_refit)
    structural = bool(structural and seed_masks is not None)
    seed_adds = structural and params.init.seed_adds
    masks = None
    if seed_masks is not None:
        from .seeded import as_masks

        masks = as_masks(seed_masks, shape[1:])
    if fov_mask is None and (seed_masks is None or seed_adds):
        fov_mask = fov_mask_from_params(params, shape[1:])
    in_patches = patches and (seed_masks is None or seed_adds) and _uses_patches(params, shape)
    steps = _Steps(progress, total=5 + int(evaluate) + int(evaluate and allow_refit and params.quality.refit))
    t_start = time.perf_counter()
    if in_patches and seed_adds:  # the patches' components outside the masks join the seeds
        with steps.step("patches: noise + initialisation"):
            Y, movie, input_path, sn, found = _initialise_in_patches(source, params, engine, progress, fov_mask)
        with steps.step("seeded initialisation"):
            start = _initialise(Y, params, masks)
            init = _seeds_and_adds(start, found, masks)
    elif in_patches:
        with steps.step("patches: noise + initialisation"):
            Y, movie, input_path, sn, init = _initialise_in_patches(source, params, engine, progress, fov_mask)
        steps.advance(1)  # the noise and initialisation steps happened in the patches
    elif seed_masks is not None and _is_store(source) and not seed_adds:
        # seeded (refit, or structural cells alone) on a Store: out of core, every pass over the
        # movie by blocks
        from .blocked import BlockedMovie

        movie, input_path = source, source.path
        Y = BlockedMovie(source, engine, progress=progress)
        dec = params.deconvolution
        with steps.step("noise"):
            sn = Y.noise(dec.noise_range, dec.noise_method)
        with steps.step("initialisation"):
            init = start = _initialise(Y, params, masks)
    else:
        Y, input_path = _read_movie(source, params)
        movie = Y
        with steps.step("noise"):
            sn = pixel_noise(Y, params)
        with steps.step("initialisation"):
            init = start = _initialise(Y, params, masks)
            if seed_adds:
                found = _initialise(Y, params, None)
                init = _seeds_and_adds(start, found if fov_mask is None else _keep_inside(found, fov_mask), masks)
            elif fov_mask is not None:
                init = _keep_inside(init, fov_mask)
    dims = tuple(int(d) for d in movie.shape[1:])
    log.info("initialised %d components (%s)", init.K, init.method)

    # components × frames arrays are hundreds of MB each on a long recording: every step below
    # drops its inputs' references before the next one builds its outputs
    if not structural:
        start = None  # (a structural run keeps the seeded start to put lost masks back)
    with steps.step("spatial + temporal updates"):
        state = _State(A=init.A, C=init.C, b=init.b, f=init.f)
        del init
        state = _update(Y, state, sn, params, engine)
    with steps.step("merging"):
        est = _to_estimates(state, dims, sn, params, input_path)
        del state
        from .merging import merge_components

        for round_ in range(MERGE_ROUNDS):
            apart = None
            if structural:  # the cells of two structural masks stay two cells
                from .seeded import seed_labels

                apart = seed_labels(est.A, masks)
            # (merging does not need the spikes, and the update below makes new ones)
            merged = merge_components(dataclasses.replace(est, S=None), params, keep_apart=apart)
            if merged.n_merged == 0 and round_ > 0:
                break
            if merged.n_merged:
                log.info("merged %d groups (%d components)", merged.n_merged,
                         sum(g.size for g in merged.groups))
            m = merged.estimates if merged.n_merged else est
            start_state = _State(A=m.A, C=m.C, b=m.b, f=m.f)
            del merged, m, est
            est = _to_estimates(_update(Y, start_state, sn, params, engine), dims, sn, params, input_path)
            del start_state
    if structural:
        from .seeded import mark_seeds

        est = mark_seeds(est, masks, start)
    with steps.step("normalise"):
        est = _normalised(est)
    if evaluate:
        with steps.step("evaluation"):
            from somascope.evaluation import evaluate_components

            est = evaluate_components(est, movie, params, seed_masks=masks if structural else None) if est.K else est
            if structural and est.K:
                from .seeded import silent_footprints

                est = silent_footprints(est, masks, movie)
    if evaluate and allow_refit and params.quality.refit and est.K:
        with steps.step("refit"):
            if est.accepted_indices.size:
                est = _fit(movie, params, seed_masks=est.A[:, est.accepted_indices], engine=engine,
                           progress=False, allow_refit=False)
                est = dataclasses.replace(est, provenance=_provenance(input_path, params, refit=True))
            else:
                log.warning("quality.refit: no component was accepted, so there is nothing to refit")
    steps.close()
    log.info("CNMF: %d components (%d accepted) in %.1f s", est.K, est.accepted_indices.size,
             time.perf_counter() - t_start)
    return est


def _fit_planes(source: Any, params: Any, *, engine: Any, progress: bool, evaluate: bool,
                allow_refit: bool) -> Estimates:
    """A volume plane by plane (:mod:`~somascope.cnmf.planes`), then evaluated (and refitted in
    3-D, seeded with the accepted components, with ``quality.refit``)."""
    from .planes import fit_by_plane

    t_start = time.perf_counter()
    input_path = _input_path(source)

    def fit_plane(plane: Any, plane_params: Any) -> Estimates:
        return _fit(plane, plane_params, seed_masks=None, engine=engine, progress=progress, allow_refit=False,
                    evaluate=False)

    est = _normalised(fit_by_plane(source, params, engine=engine, progress=progress, fit_plane=fit_plane))
    est = dataclasses.replace(est, params=params.to_dict(), provenance={
        **_provenance(input_path, params), "by_plane": True})
    if evaluate and est.K:
        from somascope.evaluation import evaluate_components

        est = evaluate_components(est, source, params)
        if allow_refit and params.quality.refit and est.accepted_indices.size:
            est = _fit(source, params, seed_masks=est.A[:, est.accepted_indices], engine=engine, progress=False,
                       allow_refit=False)
            est = dataclasses.replace(est, provenance=_provenance(input_path, params, refit=True))
    log.info("CNMF plane by plane: %d components in %.1f s", est.K, time.perf_counter() - t_start)
    return est


def _fit_ring(source: Any, params: Any, *, fov_mask: Any = None, **kwargs: Any) -> Estimates:
    """CNMF with the CNMF-E ring background (``init.nb = 0``): the ring model is fitted and
    subtracted (:mod:`~somascope.cnmf.ring`; a Store gets a background-subtracted Store beside
    it, ``<name>-ring.zarr``, other sources an array), then CNMF runs on the result with
    :data:`RING_RESIDUAL_NB` global components for what the ring leaves. A Store that is
    already background-subtracted (the pipeline's ``background`` stage) is used as it is.
    ``init.fov_mask = "auto"`` takes the lens's field of view from the ring model's mean image."""
    from .ring import fit_ring_model, is_ring_subtracted, ring_output_path, subtract_ring_background

    bs = source
    if not is_ring_subtracted(source):
        model = fit_ring_model(source, params, progress=kwargs["progress"])
        if fov_mask is None:
            fov_mask = fov_mask_from_params(params, model.dims, model.b0)
        bs = subtract_ring_background(source, model, ring_output_path(source), engine=kwargs["engine"],
                                      progress=kwargs["progress"])
    # otherwise (an already subtracted Store) the inner fit reads a mask file itself
    est = _fit(bs, params.replace(nb=RING_RESIDUAL_NB), fov_mask=fov_mask, **kwargs)
    return dataclasses.replace(est, params=params.to_dict())


def fov_mask_from_params(params: Any, dims: tuple[int, ...], mean: Any = None) -> np.ndarray | None:
    """The field-of-view mask ``init.fov_mask`` names: a bool image of ``dims``, or None for
    everywhere. ``"auto"`` needs the mean image ``mean`` (one-photon data; None for two-photon
    data or without a mean image)."""
    how = params.init.fov_mask.strip()
    if how.lower() == "none" or (how.lower() == "auto" and (mean is None or not params.data.is_1p)):
        return None
    if how.lower() == "auto":
        from somascope.summary import lens_mask

        mask = lens_mask(np.asarray(mean).reshape(dims), float(np.mean(params.data.neuron_radius)))
        if not mask.all():
            log.info("field-of-view mask: %.0f %% of the frame (lens)", 100 * mask.mean())
        return None if mask.all() else mask
    return load_fov_mask(how, dims)


def load_fov_mask(path: Any, dims: tuple[int, ...]) -> np.ndarray:
    """A field-of-view mask image (``.npy`` or TIFF; non-zero = inside) checked against ``dims``."""
    from pathlib import Path

    from somascope.params import ParameterError

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"init.fov_mask={str(path)!r}: no such file. Fix: give 'auto', 'none' or the path "
                             "of a mask image (.npy or .tif) of the frame's shape.")
    if path.suffix.lower() == ".npy":
        mask = np.load(path)
    else:
        import tifffile

        mask = tifffile.imread(path)
    mask = np.asarray(mask) != 0
    if mask.shape != tuple(dims):
        raise ParameterError(f"init.fov_mask={str(path)!r} has shape {mask.shape}, the frames {tuple(dims)}. "
                             "Fix: give a mask of the frame's shape.")
    return mask


def _seeds_and_adds(seeded: Any, found: Any, masks: sp.csc_matrix) -> Any:
    """The seeded start plus the components of ``found`` (an unseeded initialisation of the
    same movie) that lie outside the masks (:func:`~somascope.cnmf.seeded.outside_masks`);
    the background of ``found`` (the patches' local one, when it comes from patches)."""
    from .initialization import Initialization
    from .seeded import outside_masks

    keep = np.flatnonzero(outside_masks(found.A, masks))
    log.info("seeded initialisation: %d masks + %d of %d unseeded components outside them",
             seeded.K, keep.size, found.K)
    b, f = (found.b, found.f) if found.nb else (seeded.b, seeded.f)
    return Initialization(A=sp.hstack([seeded.A, found.A[:, keep]], format="csc"),
                          C=np.concatenate([seeded.C, found.C[keep]]), b=b, f=f,
                          center=np.concatenate([seeded.center, found.center[keep]]),
                          method=f"seeded + {found.method}", dims=seeded.dims)


def _keep_inside(init: Any, mask: np.ndarray) -> Any:
    """An initialisation without the components whose centre lies outside ``mask``."""
    from .initialization import inside_mask

    keep = np.flatnonzero(inside_mask(init.A, init.dims, mask))
    if keep.size == init.K:
        return init
    return dataclasses.replace(init, A=sp.csc_matrix(init.A[:, keep]), C=init.C[keep], center=init.center[keep])


def _initialise(Y: np.ndarray, params: Any, seed_masks: Any) -> Any:
    """Initial components on the whole field of view (seeded, or ``init.method``)."""
    from somascope.params import ParameterError

    if seed_masks is not None:
        from .seeded import seeded_initialization

        return seeded_initialization(Y, seed_masks, nb=params.init.nb, seed=SEED)
    if params.init.method == "seeded":
        raise ParameterError("init.method='seeded' starts from given masks. Fix: pass them "
                             "as fit(..., seed_masks=masks), or choose another method.")
    from .initialization import initialize

    dims = tuple(Y.shape[1:])
    if params.init.K is None:  # GreedyCorr: as many as pass its thresholds
        return initialize(Y, params)
    K_fov = components_per_fov(params, dims)
    run_params = params if K_fov == params.init.K else params.replace(K=K_fov)
    if K_fov != params.init.K:
        log.info("patch.rf=%s: initialising %d components on the whole field of view "
                 "(%d per patch)", params.patch.rf, K_fov, params.init.K)
    return initialize(Y, run_params)


def _is_store(source: Any) -> bool:
    from somascope.store import Store

    return isinstance(source, Store)


def _uses_patches(params: Any, shape: tuple[int, ...]) -> bool:
    """True when ``patch.rf`` cuts the field of view into more than one patch."""
    rf = params.patch.rf
    if rf is None:
        return False
    from .patches import patch_grid

    return len(patch_grid(tuple(shape[1:]), rf, params.patch.stride, params.patch.border_pix)) > 1


def _initialise_in_patches(source: Any, params: Any, engine: Any, progress: bool,
                           fov_mask: Any = None) -> tuple[Any, ...]:
    """Map the patches, reduce them; returns ``(Y, movie, input_path, sn, init)``.

    A Store stays on disk: the patches are read by the engine's workers and the updates that
    follow read it by blocks (:class:`~somascope.cnmf.blocked.BlockedMovie`). Any other
    source is read into memory and its patches run here, one after the other.
    """
    from .blocked import BlockedMovie
    from .initialization import Initialization
    from .patches import combine_patches, run_patches

    if _is_store(source):
        movie = source
        Y: Any = BlockedMovie(source, engine, progress=progress)
        input_path = source.path
    else:
        Y, input_path = _read_movie(source, params)
        movie = Y
        if engine is not None and getattr(engine, "kind", "serial") != "serial":
            log.info("the movie is not a Store, so its patches run in this process; write it to "
                     "a Store (somascope.store.Store.from_source) to spread them over workers")
    dims = tuple(int(d) for d in movie.shape[1:])
    results = run_patches(movie, params, engine=engine, progress=progress, fov_mask=fov_mask)
    A, C, b, f, sn = combine_patches(results, dims, params)
    found = sum(r.n_found for r in results)
    screened = sum(r.n_screened for r in results)
    log.info("%d patches: %d components found, %d screened out, %d kept by their owner patch",
             len(results), found, screened, A.shape[1])
    init = Initialization(A=A, C=C, b=b, f=f, center=np.zeros((A.shape[1], len(dims))),
                          method=f"{params.init.method} in {len(results)} patches", dims=dims)
    return Y, movie, input_path, sn, init


@dataclasses.dataclass
class _State:
    """Components between steps (and the deconvolution outputs once there are some)."""

    A: sp.csc_matrix
    C: np.ndarray
    b: np.ndarray
    f: np.ndarray
    temporal: Any = None


def _update(Y: np.ndarray, state: _State, sn: np.ndarray, params: Any, engine: Any) -> _State:
    """One spatial update then one temporal update."""
    from .spatial import update_spatial
    from .temporal import update_temporal

    up = update_spatial(Y, state.A, state.C, state.f, sn, params, b=state.b)
    C = np.asarray(state.C)
    if up.kept.size < state.A.shape[1]:
        C = C[up.kept]
        log.info("spatial update: %d empty components removed", state.A.shape[1] - up.kept.size)
    tu = update_temporal(Y, up.A, up.b, C, state.f, params, engine=engine)
    return _State(A=up.A, C=tu.C, b=up.b, f=tu.f, temporal=tu)


def _to_estimates(state: _State, dims: tuple[int, ...], sn: np.ndarray, params: Any,
                  input_path: Any) -> Estimates:
    tu = state.temporal
    return Estimates(
        A=state.A, dims=dims, C=tu.C, S=tu.S, YrA=tu.YrA, b=state.b.astype(np.float32),
        f=tu.f, sn=sn.astype(np.float32), neurons_sn=tu.neurons_sn, g=tu.g, bl=tu.bl, c1=tu.c1,
        lam=tu.lam, frame_rate=params.data.fr, params=params.to_dict(), seed=SEED,
        provenance=_provenance(input_path, params),
    )


def _normalised(est: Estimates) -> Estimates:
    """Footprints and background footprints scaled to unit L2 norm; traces carry the scale
    (``est``'s trace arrays are scaled in place: only for this module's own estimates)."""
    A = sp.csc_matrix(est.A, dtype=np.float64)
    norms = np.sqrt(np.asarray(A.multiply(A).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    A = sp.csc_matrix(A @ sp.diags(1.0 / norms), dtype=np.float32)
    scaled: dict[str, Any] = {"A": A}
    for name in ("C", "S", "YrA"):
        arr = getattr(est, name)
        if arr is not None:  # in place: the traces are this fit's own (hundreds of MB each)
            arr *= norms[:, None].astype(arr.dtype)
            scaled[name] = arr
    for name in ("bl", "c1", "neurons_sn", "lam"):
        arr = getattr(est, name)
        if arr is not None:
            scaled[name] = arr * norms
    if est.b is not None and est.b.shape[1]:
        bn = np.linalg.norm(est.b, axis=0)
        bn[bn == 0] = 1.0
        scaled["b"] = (est.b / bn).astype(np.float32)
        scaled["f"] = (est.f * bn[:, None]).astype(np.float32)
    return dataclasses.replace(est, **scaled)


# ------------------------------------------------------------------------------------------
# input checks


def _as_params(params: Any) -> Any:
    from somascope.params import Params

    if params is None:
        return Params()
    if isinstance(params, Params):
        return params
    if isinstance(params, dict):
        return Params.from_dict(params)
    raise TypeError(f"params must be a somascope.params.Params or a dict, got "
                    f"{type(params).__name__}. Fix: Params.from_neuron(radius_px, fr=...).")


def _check_model(params: Any, *, seeded: bool) -> None:
    from somascope.params import ParameterError

    nb = params.init.nb
    if nb == -1:
        raise ParameterError("init.nb=-1 (full-rank background) only exists inside patches of the "
                             "patch pipeline. Fix: use init.nb ≥ 1, or -2 for no background.")
    if not seeded and params.init.method not in ("seeded", "greedy_corr") and params.init.K is None:
        raise ParameterError(f"init.K=None: method {params.init.method!r} needs the number of "
                             "components. Fix: set init.K.")


def _read_movie(source: Any, params: Any) -> tuple[np.ndarray, Any]:
    """The movie as a float32 array (a copy only when the dtype or layout needs one)."""
    from somascope.io import iter_chunks

    shape = _check_shape(source, params)
    input_path = _input_path(source)
    if isinstance(source, np.ndarray):
        if source.dtype.kind not in "biuf":
            raise ValueError(f"the movie must hold real numbers, got dtype {source.dtype}.")
        Y = np.ascontiguousarray(source, dtype=np.float32)
    else:
        Y = np.empty(shape, np.float32)
        for t0, chunk in iter_chunks(source, 256):
            Y[t0:t0 + chunk.shape[0]] = chunk
    finite = np.isfinite(Y)
    if not finite.all():
        t_bad = int(np.argwhere(~finite)[0][0])
        raise ValueError(f"the movie contains NaN or infinite values (first in frame {t_bad}). "
                         "Fix: motion-correct with border_mode='copy' or 'zero', or crop the "
                         "borders, so that every pixel holds a number.")
    return Y, input_path


def _input_path(source: Any) -> Any:
    """The file a movie was read from (its first one), or None."""
    for attr in ("path", "paths"):
        value = getattr(source, attr, None)
        if value is not None:
            return value[0] if isinstance(value, (list, tuple)) else value
    return None


def _check_shape(source: Any, params: Any) -> tuple[int, ...]:
    """The movie's shape, checked against the parameters (frames and spatial axes)."""
    shape = tuple(int(s) for s in getattr(source, "shape", np.shape(source)))
    ndim = params.ndim
    if len(shape) != ndim + 1:
        raise ValueError(f"the movie has shape {shape}, but the parameters describe {ndim}-D "
                         f"frames (data.dxy={params.data.dxy}), so a {ndim + 1}-D movie "
                         f"T × {'Z × ' if ndim == 3 else ''}H × W is expected. Fix: build Params "
                         f"with one neuron radius per spatial axis of the frames.")
    T = shape[0]
    if T < MIN_FRAMES:
        from somascope.deconvolution._checks import too_few_frames

        raise ValueError(too_few_frames(T))
    if min(shape[1:]) < 1:
        raise ValueError(f"the movie's frames {shape[1:]} are empty.")
    return shape


def _provenance(input_path: Any, params: Any, *, refit: bool = False) -> dict:
    return collect_provenance(input_path, stage="cnmf", init_method=params.init.method,
                              refit=refit)


class _Steps:
    """A progress bar over named steps (and a log line with the time of each)."""

    def __init__(self, show: bool, total: int) -> None:
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="cnmf", unit="step")

    def step(self, name: str) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def run() -> Any:
            if self.bar is not None:
                self.bar.set_postfix_str(name)
            t0 = time.perf_counter()
            yield
            log.info("cnmf %s: %.2f s", name, time.perf_counter() - t0)
            if self.bar is not None:
                self.bar.update(1)

        return run()

    def advance(self, n: int) -> None:
        """Count ``n`` steps done without running them (they happened elsewhere)."""
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
