"""CNMF in overlapping patches: the MapReduce step of the batch pipeline (CaImAn paper, Alg. 1).

The field of view is cut into overlapping patches (:func:`patch_grid`: ``2·rf`` px wide,
neighbours overlapping by ``stride`` px; ``patch.border_pix`` px at every edge are left out).

*Map* (:func:`run_patches`): one engine task per patch opens the Store by path, reads its
patch over all frames (no movie data passes through the scheduler), estimates the pixel
noise, and initialises components (``init.method``, ``init.K`` per patch, downsampled by
``patch.p_ssub`` / ``p_tsub``, ``patch.nb_patch`` background components). With
``patch.only_init=False`` it then runs the whole CNMF on the patch (AR order
``patch.p_patch``). Each patch then screens its components: those whose trace SNR or
spatial consistency falls below ``quality.SNR_lowest`` / ``quality.rval_lowest`` are dropped
(clearly not cells), and a patch keeps only the components whose centre lies in the part of
the patch it *owns*: the overlaps are split down the middle, so the owned parts tile the field
of view. A neuron whose centre is owned by a patch lies whole in it whenever ``stride`` is at
least a neuron's diameter, so each neuron is kept once, from the patch that sees all of it.

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

__all__ = ["Patch", "PatchResult", "patch_grid", "run_patches", "combine_patches"]

log = logging.getLogger(__name__)

#: HALS passes of the low-rank compression of the patch backgrounds.
BACKGROUND_ITERATIONS = 30


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


def run_patches(source: Any, params: Any, *, engine: Any = None, progress: bool = False) -> list[PatchResult]:
    """Initialise (and with ``patch.only_init=False`` fit) every patch; the map step.

    ``source`` is a :class:`somascope.store.Store` (tasks run on ``engine``'s workers, each
    reading its own patch) or an in-memory movie ``T × *dims`` (tasks run here, one by one).
    """
    from somascope.store import Store

    dims = tuple(int(d) for d in source.shape[1:])
    patches = patch_grid(dims, params.patch.rf, params.patch.stride, params.patch.border_pix)
    items = [(source, patch, params) for patch in patches]
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
    C = np.vstack(C_rows).astype(np.float32) if C_rows else np.zeros((0, T), np.float32)
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


def _fit_patch(item: tuple[Any, Patch, Any]) -> PatchResult:
    """Read one patch, initialise (or fit) it, screen and keep what it owns."""
    from .fit import _fit, pixel_noise
    from .initialization import initialize

    source, patch, params = item
    Y = np.asarray(source[(slice(None),) + patch.window], dtype=np.float32)
    if not np.isfinite(Y).all():
        t_bad = int(np.argwhere(~np.isfinite(Y))[0][0])
        raise ValueError(f"the movie contains NaN or infinite values (first in frame {t_bad}, patch "
                         f"{_describe(patch)}). Fix: motion-correct with border_mode='copy' or "
                         "'zero', or set patch.border_pix to skip the borders.")
    pp = _patch_params(params)
    sn = pixel_noise(Y, pp)
    if params.patch.only_init:
        init = initialize(Y, pp)
        A, C, b, f = init.A, init.C, init.b, init.f
    else:
        est = _fit(Y, pp, seed_masks=None, engine=None, progress=False, allow_refit=False,
                   evaluate=False, patches=False)
        A, C, b, f = est.A, est.C, est.b, est.f
    n_found = int(A.shape[1])
    keep = _screen(Y, A, C, b, f, pp) if n_found else np.zeros(0, np.int64)
    n_screened = n_found - keep.size
    if keep.size:
        keep = keep[_owned(A[:, keep], patch)]
    return PatchResult(patch=patch, A=sp.csc_matrix(A[:, keep], dtype=np.float32),
                       C=np.asarray(C, np.float32)[keep], b=np.asarray(b, np.float32),
                       f=np.asarray(f, np.float32), sn=sn.astype(np.float32), n_found=n_found,
                       n_screened=n_screened)


def _patch_params(params: Any) -> Any:
    """The parameters inside a patch: the patch group's downsampling, background and AR order."""
    pp = params.patch
    nb = pp.nb_patch if pp.nb_patch > 0 else params.init.nb
    init = dataclasses.replace(params.init, ssub=pp.p_ssub, tsub=pp.p_tsub, nb=max(nb, 1))
    dec = dataclasses.replace(params.deconvolution, p=pp.p_patch)
    return dataclasses.replace(params, init=init, deconvolution=dec,
                               patch=dataclasses.replace(pp, rf=None))


def _screen(Y: np.ndarray, A: Any, C: np.ndarray, b: np.ndarray, f: np.ndarray, params: Any) -> np.ndarray:
    """Indices of the components that pass the patch's screen (``*_lowest`` thresholds)."""
    from somascope.evaluation import evaluate_components

    from .estimates import Estimates

    q = params.quality
    est = Estimates(A=sp.csc_matrix(A), dims=tuple(Y.shape[1:]), C=np.asarray(C, np.float32),
                    b=np.asarray(b, np.float32), f=np.asarray(f, np.float32))
    screen = dataclasses.replace(params, quality=dataclasses.replace(
        q, min_SNR=q.SNR_lowest, rval_thr=q.rval_lowest, use_cnn=False, use_ecc=False, use_area=False))
    ev = evaluate_components(est, Y, screen)
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
