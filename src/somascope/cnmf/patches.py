"""CNMF in overlapping patches: the MapReduce step of the batch pipeline (CaImAn paper, Alg. 1).

The field of view is cut into overlapping patches (:func:`patch_grid`: ``2·rf`` px wide,
neighbours overlapping by ``stride`` px; ``patch.border_pix`` px at every edge are left out).

*Map* (:func:`run_patches`): one engine task per patch opens the Store by path and reads its
patch window once, in whole Store chunks of frames (no movie data passes through the
scheduler). It keeps only the patch binned in time (:func:`patch_tsub` frames per bin:
``patch.p_tsub``, more for a recording longer than ``MAX_INIT_FRAMES · p_tsub`` frames, so that
there are never more than :data:`MAX_INIT_FRAMES` bins), and estimates each pixel's noise as
it reads, one piece of frames at a time
(:func:`somascope.deconvolution.noise.pixel_noise_frames`: pieces of at most 512 frames
covering a movie of up to 4,096 frames, evenly spaced segments of a longer one), so a task's
time and memory stop growing with the recording. It initialises components on the binned
patch (``init.method``, ``init.K`` per patch, space downsampled by ``patch.p_ssub``,
``patch.nb_patch`` background components), their traces brought back to every frame. With
``patch.only_init=False`` it instead runs the whole CNMF on the full-rate patch (AR order
``patch.p_patch``; the patch is held in memory). Each patch then screens its components on
the full-rate frames, read again a chunk at a time (:func:`screen_ranges`: the whole movie, or
each noise segment of a long one taken as a recording of its own): those whose trace SNR or
spatial consistency falls to ``quality.SNR_lowest`` / ``quality.rval_lowest`` in every range
are dropped (clearly not cells; a component's SNR grows with the frames it is measured over,
so a long recording is screened like a short one).
A patch keeps only the components whose centre lies in the part of the patch it *owns*: the
overlaps are split down the middle, so the owned parts tile the field of view. A neuron whose
centre is owned by a patch lies whole in it whenever ``stride`` is at least a neuron's
diameter, so each neuron is kept once, from the patch that sees all of it.

*Reduce* (:func:`combine_patches`): footprints are embedded in the full field of view; the
pixel noise is taken from the patch that owns each pixel; every patch's background
footprint is embedded and divided by the number of patches covering each pixel (so
overlapping patches do not count the background twice) and, with
``patch.low_rank_background``, the stack of patch backgrounds is compressed into ``init.nb``
global components by non-negative matrix factorisation of its (factored) product; otherwise
every patch keeps its own background component (local structure kept). Components found
twice across a border (centres that fell on both sides of an ownership line) are merged by
the merge → update rounds that follow in :func:`somascope.cnmf.fit`, whose spatial and
temporal updates then refine everything on the full field of view, out of core
(:mod:`somascope.cnmf.blocked`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["Patch", "PatchResult", "patch_grid", "patch_tsub", "screen_ranges", "run_patches", "combine_patches"]

log = logging.getLogger(__name__)

#: HALS passes of the low-rank compression of the patch backgrounds.
BACKGROUND_ITERATIONS = 30
#: Most time bins a patch is initialised on (:func:`patch_tsub`): beyond
#: ``MAX_INIT_FRAMES · patch.p_tsub`` frames the bins grow with the recording, so that the
#: initialisation's time and memory stop growing (CaImAn's ``tsub``, chosen from the length).
MAX_INIT_FRAMES = 3000
#: Float32 values a patch task reads from the Store at a time (≈ 16 MiB; whole Store chunks
#: of frames, at least one): two reads are alive at once (one read ahead).
_READ_ELEMENTS = 4 * 2**20


@dataclass(frozen=True)
class Patch:
    """One patch of the grid.

    Attributes
    ----------
    index : int
        Position in the grid (C order).
    window : tuple of slice
        The patch's pixels in the field of view, one slice per spatial axis.
    own : tuple of slice
        The part of ``window`` this patch owns; the owned parts of all patches tile the
        (border-cropped) field of view.
    """

    index: int
    window: tuple[slice, ...]
    own: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.window)


@dataclass
class PatchResult:
    """What a patch task returns (small: footprints on the patch, traces, its noise levels).

    ``A`` is ``patch pixels × K`` (C order of the patch window), ``C`` is ``K × T``, ``b`` is
    ``patch pixels × nb_patch``, ``f`` is ``nb_patch × T``, ``sn`` is the noise of every pixel
    of the window, ``n_found`` the components before screening and ownership.
    """

    patch: Patch
    A: sp.csc_matrix
    C: np.ndarray
    b: np.ndarray
    f: np.ndarray
    sn: np.ndarray
    n_found: int
    n_screened: int


def patch_grid(dims: tuple[int, ...], rf: tuple[int, ...], stride: tuple[int, ...],
               border_pix: int = 0) -> list[Patch]:
    """The overlapping patches of a field of view ``dims``.

    Along every axis, patches are ``2·rf`` px wide and start evenly spaced so that
    neighbours overlap by at least ``stride`` px, the first starting at ``border_pix`` and the
    last ending at ``size − border_pix``. An axis no longer than one patch gets one patch.
    Ownership lines lie in the middle of each overlap.
    """
    rf = tuple(int(r) for r in rf)
    stride = tuple(int(s) for s in stride)
    if not (len(rf) == len(stride) == len(dims)):
        raise ValueError(f"patch.rf {rf} and patch.stride {stride} need one value per axis of {dims}.")
    axes = []
    for d, r, s in zip(dims, rf, stride):
        lo, hi = int(border_pix), int(d) - int(border_pix)
        if hi - lo < 1:
            raise ValueError(f"patch.border_pix={border_pix} leaves no pixels of an axis of {d} px. "
                             "Fix: lower patch.border_pix.")
        width = min(2 * r, hi - lo)
        step = max(1, width - s)
        n = 1 if width >= hi - lo else math.ceil((hi - lo - width) / step) + 1
        starts = np.round(np.linspace(lo, hi - width, n)).astype(int)
        windows = [(int(a), int(a) + width) for a in starts]
        cuts = [lo] + [(windows[i][0] + windows[i - 1][1]) // 2 for i in range(1, n)] + [hi]
        axes.append([(w, (cuts[i], cuts[i + 1])) for i, w in enumerate(windows)])
    patches = []
    for index, combo in enumerate(np.ndindex(*[len(a) for a in axes])):
        picked = [axes[k][i] for k, i in enumerate(combo)]
        patches.append(Patch(index=index, window=tuple(slice(*w) for w, _ in picked),
                             own=tuple(slice(*o) for _, o in picked)))
    return patches


def run_patches(source: Any, params: Any, *, engine: Any = None, progress: bool = False,
                fov_mask: np.ndarray | None = None) -> list[PatchResult]:
    """Initialise (and with ``patch.only_init=False`` fit) every patch; the map step.

    ``source`` is a :class:`somascope.store.Store` (tasks run on ``engine``'s workers, each
    reading its own patch) or an in-memory movie ``T × *dims`` (tasks run here, one by one).
    ``fov_mask`` (bool, frame-shaped): components whose centre lies outside are not kept.
    """
    from somascope.store import Store

    dims = tuple(int(d) for d in source.shape[1:])
    patches = patch_grid(dims, params.patch.rf, params.patch.stride, params.patch.border_pix)
    items = [(source, patch, params, None if fov_mask is None else np.asarray(fov_mask, bool)[patch.window])
             for patch in patches]
    if isinstance(source, Store) and engine is not None:
        return engine.map(_fit_patch, items, desc="cnmf patches", progress=progress, unit="patch")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="cnmf patches", unit="patch")
    out = []
    for item in items:
        out.append(_fit_patch(item))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def combine_patches(results: list[PatchResult], dims: tuple[int, ...], params: Any
                    ) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reduce step: ``(A, C, b, f, sn)`` on the full field of view.

    ``A`` is ``pixels × K`` (CSC, float32, movie units × trace scale as the patches gave
    them), ``C`` ``K × T``, ``b`` ``pixels × nb`` and ``f`` ``nb × T`` (see the module
    docstring for how the backgrounds combine), ``sn`` ``(pixels,)`` (pixels outside every
    patch — ``border_pix`` — get the median noise).
    """
    P = int(np.prod(dims))
    T = _n_frames(results)
    sn = np.full(P, np.nan)
    cover = np.zeros(dims, np.float64)
    A_cols, C_rows, B_cols, F_rows = [], [], [], []
    for res in results:
        win = res.patch.window
        px = _window_pixels(win, dims)
        cover[win] += 1
        own_local = _own_mask(res.patch)
        sn[px[own_local.ravel()]] = res.sn[own_local.ravel()]
        if res.A.shape[1]:
            A_cols.append(_embed(res.A, px, P))
            C_rows.append(res.C)
        if res.b.shape[1]:
            B_cols.append(_embed(sp.csc_matrix(res.b), px, P))
            F_rows.append(res.f)
    missing = ~np.isfinite(sn)
    if missing.any():
        sn[missing] = np.median(sn[~missing]) if (~missing).any() else 1.0
    A = sp.hstack(A_cols, format="csc").astype(np.float32) if A_cols else sp.csc_matrix((P, 0), dtype=np.float32)
    C = np.concatenate(C_rows, axis=0, dtype=np.float32) if C_rows else np.zeros((0, T), np.float32)
    if not B_cols:
        return A, C, np.zeros((P, 0), np.float32), np.zeros((0, T), np.float32), sn
    inv_cover = np.divide(1.0, cover.ravel(), out=np.zeros(P), where=cover.ravel() > 0)
    B = sp.diags(inv_cover) @ sp.hstack(B_cols, format="csc")
    F = np.vstack(F_rows).astype(np.float64)
    nb = params.init.nb
    if params.patch.low_rank_background and 0 < nb < B.shape[1]:
        b, f = _low_rank(sp.csc_matrix(B), F, nb)
    else:
        b, f = B.toarray(), F
    return A, C, b.astype(np.float32), f.astype(np.float32), sn


# ------------------------------------------------------------------------------------------
# the map task


def patch_tsub(n_frames: int, p_tsub: int) -> int:
    """Frames per time bin of a patch's initialisation: ``patch.p_tsub``, raised so that the
    binned movie has at most :data:`MAX_INIT_FRAMES` frames (never more than half the frames)."""
    n_frames = int(n_frames)
    tsub = max(int(p_tsub), -(-n_frames // MAX_INIT_FRAMES))
    return max(1, min(tsub, n_frames // 2))


def _fit_patch(item: tuple[Any, Patch, Any, Any]) -> PatchResult:
    """Read one patch, initialise (or fit) it, screen and keep what it owns (and what lies in
    its part of the field-of-view mask, when one is given)."""
    from somascope.deconvolution.noise import pixel_noise_frames

    from .fit import _fit
    from .initialization import initialize

    source, patch, params, mask = item
    T = int(source.shape[0])
    dec = params.deconvolution
    if params.init.K is not None:  # a patch cut short by the field of view (e.g. a thin stack's depth)
        from .fit import components_per_fov  # holds that share of init.K, as a small field of view does

        params = params.replace(K=components_per_fov(params, patch.shape))
    if not params.patch.only_init:
        pp = _patch_params(params, params.patch.p_tsub)
        Y, sn = _read_binned(source, patch, 1, pixel_noise_frames(T), dec.noise_range, dec.noise_method)
        est = _fit(Y, pp, seed_masks=None, engine=None, progress=False, allow_refit=False,
                   evaluate=False, patches=False)
        A, C, b, f = est.A, est.C, est.b, est.f
        keep = _screen(Y, A, C, b, f, pp) if A.shape[1] else np.zeros(0, np.int64)
    else:
        # one pass over the patch in whole Store chunks, keeping the time-binned movie (at most
        # MAX_INIT_FRAMES bins) and estimating each pixel's noise piece by piece as it is read
        tsub = patch_tsub(T, params.patch.p_tsub)
        pp = _patch_params(params, tsub)
        binned, sn = _read_binned(source, patch, tsub, pixel_noise_frames(T), dec.noise_range,
                                  dec.noise_method)
        init = initialize(binned, pp, n_frames=T)
        A, C, b, f = init.A, init.C, init.b, init.f
        del binned, init
        # the screen reads the full-rate frames again, a chunk at a time: each screened range
        # as a recording of its own (a component passes when it passes in one of them), so
        # that a long recording's components are judged as a short one's are — the trace SNR
        # of the same component grows with the number of frames it is measured over
        keep = np.zeros(0, np.int64)
        for t0, t1 in screen_ranges(T) if A.shape[1] else []:
            keep = np.union1d(keep, _screen(_Window(source, patch, t0, t1), A, C[:, t0:t1], b,
                                            f[:, t0:t1], pp))
    n_found = int(A.shape[1])
    n_screened = n_found - keep.size
    if keep.size:
        keep = keep[_owned(A[:, keep], patch)]
    if keep.size and mask is not None:
        from .initialization import inside_mask

        keep = keep[inside_mask(A[:, keep], patch.shape, mask)]
    return PatchResult(patch=patch, A=sp.csc_matrix(A[:, keep], dtype=np.float32),
                       C=np.asarray(C, np.float32)[keep], b=np.asarray(b, np.float32),
                       f=np.asarray(f, np.float32), sn=sn.astype(np.float32), n_found=n_found,
                       n_screened=n_screened)


def _read_binned(source: Any, patch: Patch, tsub: int, noise_frames: list[tuple[int, int]],
                 noise_range: Any, noise_method: str) -> tuple[np.ndarray, np.ndarray]:
    """The patch's movie binned over ``tsub`` frames, and the noise of each of its pixels.

    Returns ``ceil(T / tsub) × *patch.shape`` float32 (block means; ``tsub=1``: the patch
    itself) and the noise standard deviation of every pixel (float64, C order of the patch),
    estimated over the pieces ``noise_frames`` (:func:`estimate_noise_segments`). The source
    is read once, in whole Store chunks of about :data:`_READ_ELEMENTS` values; a piece of
    noise frames is held only until it is complete, so the memory held is the binned movie,
    whatever the length of the recording.
    """
    from somascope.deconvolution.noise import estimate_noise_segments
    from somascope.io.chunks import aligned_chunk_frames, frame_ranges, read_ahead

    from .initialization import downsample

    T, shape = int(source.shape[0]), patch.shape
    n_px = int(np.prod(shape))
    unit = math.lcm(int(getattr(source, "time_chunk", 1) or 1), tsub)
    step = aligned_chunk_frames(source, _READ_ELEMENTS // max(n_px, 1))
    step = max(unit, (step // unit) * unit)
    binned = np.empty((-(-T // tsub),) + shape, np.float32)

    def pieces() -> Any:  # reads the whole patch, fills `binned`, yields each noise piece once complete
        todo = list(noise_frames)
        piece = None
        for t0, t1, block in read_ahead(lambda a, b: np.asarray(source[(slice(a, b),) + patch.window],
                                                                dtype=np.float32), frame_ranges(T, step)):
            if not np.isfinite(block).all():
                t_bad = t0 + int(np.argwhere(~np.isfinite(block))[0][0])
                raise ValueError(f"the movie contains NaN or infinite values (first in frame {t_bad}, "
                                 f"patch {_describe(patch)}). Fix: motion-correct with border_mode="
                                 "'copy' or 'zero', or set patch.border_pix to skip the borders.")
            binned[t0 // tsub:-(-t1 // tsub)] = block if tsub == 1 else downsample(block, 1, tsub)
            while todo and todo[0][0] < t1:
                s0, s1 = todo[0]
                if piece is None:
                    piece = np.empty((s1 - s0, n_px), np.float32)
                lo, hi = max(s0, t0), min(s1, t1)
                piece[lo - s0:hi - s0] = block[lo - t0:hi - t0].reshape(hi - lo, n_px)
                if s1 > t1:
                    break
                todo.pop(0)
                yield piece
                piece = None

    sn = estimate_noise_segments(pieces(), noise_range, noise_method)
    return binned, sn


class _Window:
    """Frames ``start:stop`` of a patch's window of a ``T × *dims`` source, as a movie
    ``(stop − start) × *patch.shape`` read a range of frames at a time (float32)."""

    def __init__(self, source: Any, patch: Patch, start: int, stop: int) -> None:
        self.source, self.patch, self.start, self.stop = source, patch, int(start), int(stop)
        self.shape = (self.stop - self.start,) + patch.shape
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)
        self.time_chunk = getattr(source, "time_chunk", None)  # reads aligned to the Store's chunks

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a patch window is read by ranges of frames (window[a:b]).")
        a, b, _ = key.indices(self.shape[0])
        return np.asarray(self.source[(slice(self.start + a, self.start + b),) + self.patch.window],
                          dtype=np.float32)


def screen_ranges(n_frames: int) -> list[tuple[int, int]]:
    """The frame ranges a patch's screen judges its components on, each as a recording of its
    own: the whole movie up to ``NOISE_MAX_FRAMES`` frames, else the evenly spaced segments of
    :func:`somascope.deconvolution.noise.pixel_noise_frames`."""
    from somascope.deconvolution import noise

    n_frames = int(n_frames)
    return [(0, n_frames)] if n_frames <= noise.NOISE_MAX_FRAMES else noise.pixel_noise_frames(n_frames)


def _patch_params(params: Any, tsub: int) -> Any:
    """The parameters inside a patch: the patch group's downsampling (``tsub`` frames per time
    bin, :func:`patch_tsub`), background and AR order."""
    pp = params.patch
    nb = pp.nb_patch if pp.nb_patch > 0 else params.init.nb
    init = dataclasses.replace(params.init, ssub=pp.p_ssub, tsub=tsub, nb=max(nb, 1))
    dec = dataclasses.replace(params.deconvolution, p=pp.p_patch)
    return dataclasses.replace(params, init=init, deconvolution=dec,
                               patch=dataclasses.replace(pp, rf=None))


def _screen(Y: Any, A: Any, C: np.ndarray, b: np.ndarray, f: np.ndarray, params: Any) -> np.ndarray:
    """Indices of the components that pass the patch's screen (``*_lowest`` thresholds).

    ``Y`` is the patch's movie ``T × *patch.shape`` (an array or a :class:`_Window`), read in
    chunks of about :data:`_READ_ELEMENTS` values."""
    from somascope.evaluation import evaluate_components
    from somascope.io.chunks import aligned_chunk_frames

    from .estimates import Estimates

    q = params.quality
    est = Estimates(A=sp.csc_matrix(A), dims=tuple(Y.shape[1:]), C=np.asarray(C, np.float32),
                    b=np.asarray(b, np.float32), f=np.asarray(f, np.float32))
    screen = dataclasses.replace(params, quality=dataclasses.replace(
        q, min_SNR=q.SNR_lowest, rval_thr=q.rval_lowest, use_cnn=False, use_ecc=False, use_area=False))
    chunk = aligned_chunk_frames(Y, _READ_ELEMENTS // max(int(np.prod(Y.shape[1:])), 1))
    ev = evaluate_components(est, Y, screen, chunk_frames=chunk)
    return np.sort(np.asarray(ev.idx_components, dtype=np.int64))


def _owned(A: Any, patch: Patch) -> np.ndarray:
    """Mask of the components whose centre of mass lies in the patch's owned part."""
    A = sp.csc_matrix(A, dtype=np.float64)
    shape = patch.shape
    coords = np.unravel_index(np.arange(A.shape[0]), shape)
    mass = np.asarray(A.sum(axis=0)).ravel()
    keep = mass > 0  # an empty footprint has no centre: no patch keeps it
    mass[mass == 0] = 1.0
    for axis, (win, own) in enumerate(zip(patch.window, patch.own)):
        centre = np.asarray(A.T @ coords[axis].astype(np.float64)).ravel() / mass + win.start
        keep &= (centre >= own.start) & (centre < own.stop)
    return keep


# ------------------------------------------------------------------------------------------
# the reduce helpers


def _low_rank(B: sp.csc_matrix, F: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``nb`` non-negative factorisation ``W·H ≈ B·F`` without forming ``B·F`` (HALS)."""
    G = (B.T @ B).toarray()
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1][:nb]
    # top right singular vectors of B·F = U·S·Vᵀ·F: those of diag(S)·Vᵀ·F
    core = (np.sqrt(np.maximum(evals[order], 0))[:, None] * evecs[:, order].T) @ F
    _, _, Vt = np.linalg.svd(core, full_matrices=False)
    H = np.abs(Vt[:nb]) * np.sqrt(max(float(np.abs(core).max()), 1e-12))
    W = np.zeros((B.shape[0], nb))
    for _ in range(BACKGROUND_ITERATIONS):
        XHt = B @ (F @ H.T)  # (pixels, nb)
        HHt = H @ H.T
        for k in range(nb):
            if HHt[k, k] > 0:
                W[:, k] = np.maximum(W[:, k] + (XHt[:, k] - W @ HHt[:, k]) / HHt[k, k], 0)
        WtX = (B.T @ W).T @ F  # (nb, T)
        WtW = W.T @ W
        for k in range(nb):
            if WtW[k, k] > 0:
                H[k] = np.maximum(H[k] + (WtX[k] - WtW[k] @ H) / WtW[k, k], 0)
    norms = np.linalg.norm(W, axis=0)
    norms[norms == 0] = 1.0
    return W / norms, H * norms[:, None]


def _window_pixels(window: tuple[slice, ...], dims: tuple[int, ...]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in window], indexing="ij")
    return np.ravel_multi_index(tuple(g.ravel() for g in grids), dims).astype(np.int64)


def _own_mask(patch: Patch) -> np.ndarray:
    mask = np.zeros(patch.shape, bool)
    mask[tuple(slice(o.start - w.start, o.stop - w.start) for w, o in zip(patch.window, patch.own))] = True
    return mask


def _embed(M: sp.csc_matrix, px: np.ndarray, P: int) -> sp.csc_matrix:
    """Rows of a patch-local ``M`` (patch pixels × n) moved to their field-of-view pixels."""
    M = sp.csc_matrix(M)
    return sp.csc_matrix((M.data, px[M.indices], M.indptr), shape=(P, M.shape[1]))


def _n_frames(results: list[PatchResult]) -> int:
    for res in results:
        return int(res.f.shape[1] if res.f.size else res.C.shape[1])
    return 0


def _describe(patch: Patch) -> str:
    return " × ".join(f"{s.start}:{s.stop}" for s in patch.window)
