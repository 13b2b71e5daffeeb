"""Seeded initialisation of CNMF from given masks (CaImAn paper, Algorithm 3).

Masks (binary, or real-valued weights) say where the cells are, e.g. drawn by hand, taken
from a structural channel, or the accepted footprints of an earlier run (refit). From them:

1. the temporal background ``f`` is a rank-``nb`` NMF of the pixels that no mask covers, and
   the spatial background ``b`` is fitted on every pixel with ``f`` held fixed
   (:func:`somascope.cnmf.initialization.initial_background`);
2. the traces are the non-negative least-squares fit of the masks to the data without the
   background: ``C = max(0, (MᵀM)⁻¹·Mᵀ(Y − b·f))``;
3. the footprints are the non-negative least-squares fit of those traces, restricted to the
   masks: ``A = max(0, (Y − b·f)·Cᵀ(CCᵀ)⁻¹) ⊙ [M > 0]``.

The products with the movie are computed blockwise (``MᵀY``, ``Y·Cᵀ`` on the masked pixels);
``b·f`` and ``A·C`` are never formed over the movie. A mask whose fitted footprint comes out
empty (a cell that never fires) keeps its mask, normalised, as footprint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from .initialization import Initialization, initial_background

__all__ = ["as_masks", "seeded_initialization"]

#: Relative ridge added to the normal equations (masks or traces may be collinear).
RIDGE = 1e-9
#: Pixels per block when forming ``Y·Cᵀ`` on the masked pixels.
BLOCK_PIXELS = 5000
#: Tile size (px per axis) of the uncovered-pixel means that give the background traces when
#: the movie is read by blocks (out of core).
TILE = 8


def seeded_initialization(Y: np.ndarray, masks: Any, *, nb: int = 1, seed: int = 0) -> Initialization:
    """Initial ``A, C, b, f`` from masks (see the module docstring).

    Parameters
    ----------
    Y
        Movie ``T × *dims`` (2-D or 3-D frames); not modified.
    masks
        ``K × *dims`` images (boolean or non-negative weights) or a ``pixels × K`` matrix
        (dense or ``scipy.sparse``, pixels in C order of ``dims``).
    nb
        Background components (≥ 1), or ≤ 0 for none.
    seed
        Seed of the randomized SVD that starts a background of rank > 1.

    Returns
    -------
    Initialization
        ``A`` (unit-norm columns, one per mask, in mask order), ``C``, ``b``, ``f``, centres;
        ``method="seeded"``.
    """
    from .temporal import project_movie

    if hasattr(Y, "pattern_statistics"):  # a BlockedMovie: the Store is read by blocks
        return _seeded_blocked(Y, masks, nb=nb, seed=seed)
    Y = np.asarray(Y)
    if Y.ndim not in (3, 4) or Y.dtype.kind not in "biuf":
        raise ValueError(f"Y must be a real movie T × H × W (or T × Z × H × W), got shape "
                         f"{Y.shape} and dtype {Y.dtype}.")
    T, dims = Y.shape[0], tuple(int(d) for d in Y.shape[1:])
    P = math.prod(dims)
    M = as_masks(masks, dims)
    K = M.shape[1]
    Y2 = Y.reshape(T, P)

    covered = np.zeros(P, bool)
    covered[M.indices] = True
    if nb >= 1:
        if (~covered).sum() < nb:
            raise ValueError(f"the masks cover {covered.sum()} of {P} pixels, leaving fewer than "
                             f"nb={nb} uncovered pixels to estimate the background from. Fix: use "
                             "smaller masks or fewer background components.")
        # f from the uncovered pixels (one contiguous copy of them), b on all pixels
        free = np.flatnonzero(~covered)
        _, f = initial_background(np.ascontiguousarray(Y2[:, free].T), nb, seed=seed)
        f64 = f.astype(np.float64)
        b64 = _background_footprints(Y2, f64)
    else:
        b64, f64 = np.zeros((P, 0)), np.zeros((0, T))

    # traces: least squares of the masks on Y − b·f
    MtY = project_movie(Y2, M, BLOCK_PIXELS) - (M.T @ b64) @ f64
    MtM = (M.T @ M).toarray()
    C = np.maximum(_solve_spd(MtM, MtY), 0.0)

    # footprints: least squares of the traces on Y − b·f, on the masked pixels only
    rows = np.flatnonzero(covered)
    CCt = C @ C.T
    YCt = np.empty((rows.size, K))
    Cf32 = C.astype(np.float32)
    for s in range(0, rows.size, BLOCK_PIXELS):
        r = rows[s:s + BLOCK_PIXELS]
        YCt[s:s + r.size] = (Cf32 @ np.asarray(Y2[:, r], dtype=np.float32)).T
    YCt -= b64[rows] @ (f64 @ C.T)
    A_rows = np.maximum(_solve_spd(CCt, YCt.T).T, 0.0)  # (rows, K)
    support = M[rows].toarray() > 0
    A_rows *= support
    empty = ~np.any(A_rows > 0, axis=0)
    if empty.any():  # silent cells: keep the mask itself
        A_rows[:, empty] = M[rows][:, np.flatnonzero(empty)].toarray()
    coo = sp.coo_matrix(A_rows)
    A = sp.csc_matrix((coo.data, (rows[coo.row], coo.col)), shape=(P, K))
    return _normalised_init(A, C, b64, f64, dims)


def _seeded_blocked(Y: Any, masks: Any, *, nb: int, seed: int) -> Initialization:
    """:func:`seeded_initialization` on a :class:`~somascope.cnmf.blocked.BlockedMovie`.

    The same three steps with every product over the movie done by blocks, out of core:
    ``f`` is the NMF of the uncovered pixels' means over tiles of :data:`TILE` px (not of
    every uncovered pixel), and each footprint pixel is the least-squares fit of only the
    traces of the masks covering it (the in-memory path fits all traces, then masks).
    """
    T, dims = Y.n_frames, tuple(Y.dims)
    P = math.prod(dims)
    M = as_masks(masks, dims)
    K = M.shape[1]
    covered = np.zeros(P, bool)
    covered[M.indices] = True
    if nb >= 1:
        free = np.flatnonzero(~covered)
        if free.size < nb:
            raise ValueError(f"the masks cover {covered.sum()} of {P} pixels, leaving fewer than "
                             f"nb={nb} uncovered pixels to estimate the background from. Fix: use "
                             "smaller masks or fewer background components.")
        coords = np.unravel_index(free, dims)
        tiles_per_axis = [-(-d // TILE) for d in dims]
        tile = np.ravel_multi_index(tuple(c // TILE for c in coords), tiles_per_axis)
        used, tile = np.unique(tile, return_inverse=True)
        counts = np.bincount(tile).astype(np.float64)
        G = sp.csc_matrix((1.0 / counts[tile], (free, tile)), shape=(P, used.size))
        _, f = initial_background(np.ascontiguousarray(Y.project(G), dtype=np.float32), nb, seed=seed)
        f64 = f.astype(np.float64)
        every = np.arange(0, (P + 1) * nb, nb, dtype=np.int64)
        W, _, _ = Y.pattern_statistics(f64, every, np.tile(np.arange(nb), P), need_yy=False)
        W = W.reshape(P, nb)
        F = f64 @ f64.T
        b64 = np.maximum(_solve_spd(F, W.T).T, 0.0)
    else:
        b64, f64 = np.zeros((P, 0)), np.zeros((0, T))

    MtY = Y.project(M) - (M.T @ b64) @ f64
    C = np.maximum(_solve_spd((M.T @ M).toarray(), MtY), 0.0)

    R = sp.csr_matrix(M)  # pixel-major: the masks covering each pixel
    U, _, _ = Y.pattern_statistics(C, R.indptr, R.indices, need_yy=False)
    pix = np.repeat(np.arange(P), np.diff(R.indptr))
    U -= np.einsum("ej,je->e", b64[pix], (f64 @ C.T)[:, R.indices]) if nb >= 1 else 0.0
    CCt = C @ C.T
    x = np.zeros(R.indices.size)
    single = np.diff(R.indptr) == 1
    e1 = R.indptr[:-1][single]
    diag = np.maximum(np.diag(CCt)[R.indices[e1]], 1e-300)
    x[e1] = U[e1] / diag
    for p in np.flatnonzero(np.diff(R.indptr) > 1):  # overlaps: a small system per pixel
        lo, hi = R.indptr[p], R.indptr[p + 1]
        comps = R.indices[lo:hi]
        x[lo:hi] = _solve_spd(CCt[np.ix_(comps, comps)], U[lo:hi])
    A = sp.csr_matrix((np.maximum(x, 0.0), R.indices, R.indptr), shape=(P, K)).tocsc()
    A.eliminate_zeros()
    empty = np.flatnonzero(np.diff(A.indptr) == 0)
    if empty.size:  # silent cells: keep the mask itself
        A = sp.csc_matrix(A.tolil())
        A[:, empty] = M[:, empty]
        A = sp.csc_matrix(A)
    return _normalised_init(A, C, b64, f64, dims)


def _normalised_init(A: sp.csc_matrix, C: np.ndarray, b: np.ndarray, f: np.ndarray,
                     dims: tuple[int, ...]) -> Initialization:
    """The seeded start with unit-norm footprints (the traces carry the scale)."""
    norms = np.sqrt(np.asarray(A.multiply(A).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    A = sp.csc_matrix(A @ sp.diags(1.0 / norms))
    C = C * norms[:, None]
    A.sort_indices()
    return Initialization(
        A=sp.csc_matrix(A, dtype=np.float32), C=C.astype(np.float32),
        b=np.ascontiguousarray(b, dtype=np.float32), f=np.ascontiguousarray(f, dtype=np.float32),
        center=_centers(A, dims), method="seeded", dims=dims,
    )


def as_masks(masks: Any, dims: tuple[int, ...]) -> sp.csc_matrix:
    """Masks as a non-negative float64 ``pixels × K`` CSC matrix (see :func:`seeded_initialization`).

    Raises ``ValueError`` for a shape that fits neither layout, negative or non-finite
    values, no masks, or an empty mask (naming it).
    """
    dims = tuple(int(d) for d in dims)
    P = math.prod(dims)
    if sp.issparse(masks):
        M = sp.csc_matrix(masks, dtype=np.float64)
        if M.shape[0] != P:
            raise ValueError(f"sparse masks must be pixels × K with {P} pixels (frames {dims}), "
                             f"got shape {M.shape}.")
    else:
        arr = np.asarray(masks)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"masks must be boolean or numeric, got dtype {arr.dtype}.")
        if arr.ndim == len(dims) + 1 and tuple(arr.shape[1:]) == dims:
            M = sp.csc_matrix(arr.reshape(arr.shape[0], P).T.astype(np.float64))
        elif arr.ndim == 2 and arr.shape[0] == P:
            M = sp.csc_matrix(arr.astype(np.float64))
        elif arr.ndim == len(dims) and tuple(arr.shape) == dims:
            M = sp.csc_matrix(arr.reshape(P, 1).astype(np.float64))
        else:
            raise ValueError(f"masks of shape {arr.shape} fit neither K × {dims} images nor a "
                             f"pixels × K matrix with {P} pixels. Fix: stack one mask image "
                             "per cell along the first axis.")
    if M.shape[1] == 0:
        raise ValueError("no masks were given (K = 0). Fix: pass at least one mask.")
    if M.nnz and not np.all(np.isfinite(M.data)):
        raise ValueError("masks contain NaN or infinite values.")
    if M.nnz and M.data.min() < 0:
        raise ValueError("masks must be non-negative (binary masks or footprint weights).")
    M.eliminate_zeros()
    empty = np.flatnonzero(np.diff(M.indptr) == 0)
    if empty.size:
        raise ValueError(f"mask(s) {empty[:10].tolist()} are empty (no pixel > 0). Fix: drop them.")
    M.sort_indices()
    return M


def _background_footprints(Y2: np.ndarray, f: np.ndarray, n_iter: int = 30) -> np.ndarray:
    """Non-negative ``b`` (pixels × nb) minimising ``‖Y − b·f‖`` with ``f`` fixed.

    The least-squares solution clipped at 0, refined by ``n_iter`` HALS passes over the
    background components (exact for nb = 1).
    """
    W = (f.astype(np.float32) @ Y2).T.astype(np.float64)  # (P, nb) = Y·fᵀ
    F = f @ f.T
    b = np.maximum(_solve_spd(F, W.T).T, 0.0)
    if f.shape[0] > 1:
        for _ in range(n_iter):
            for j in range(f.shape[0]):
                if F[j, j] > 0:
                    b[:, j] = np.maximum(b[:, j] + (W[:, j] - b @ F[:, j]) / F[j, j], 0.0)
    return b


def _solve_spd(G: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``G⁻¹R`` for a symmetric positive semi-definite ``G`` with a small relative ridge."""
    from scipy.linalg import cho_factor, cho_solve

    G = np.asarray(G, dtype=np.float64)
    if G.size == 0:
        return np.zeros_like(R)
    ridge = RIDGE * max(float(np.max(np.diag(G))), 1e-300)
    factor = cho_factor(G + ridge * np.eye(G.shape[0]), lower=True, check_finite=False)
    return cho_solve(factor, R, check_finite=False)


def _centers(A: sp.csc_matrix, dims: tuple[int, ...]) -> np.ndarray:
    coords = np.stack(np.unravel_index(np.arange(A.shape[0]), dims), axis=1).astype(np.float64)
    w = np.asarray(A.sum(axis=0)).ravel()
    w[w == 0] = 1.0
    return np.asarray(A.T @ coords) / w[:, None]


#: Share of a footprint's energy (sum of squares) inside one mask above which the component is
#: that mask's cell: an unseeded component is not added (:func:`outside_masks`) and a fitted
#: component counts as seeded (:func:`mark_seeds`).
MASK_SHARE = 0.5


def _energy_in_masks(A: Any, masks: sp.csc_matrix) -> np.ndarray:
    """``(n_masks, K)``: the share of each footprint's energy that lies in each mask's support."""
    A = sp.csc_matrix(A, dtype=np.float64)
    support = sp.csc_matrix((np.ones(masks.nnz), masks.indices, masks.indptr), shape=masks.shape)
    energy = A.multiply(A)
    total = np.asarray(energy.sum(axis=0)).ravel()
    total[total == 0] = np.inf
    return np.asarray((support.T @ energy).todense()) / total[None, :]


def seed_labels(A: Any, masks: sp.csc_matrix) -> np.ndarray:
    """``(K,)`` int: the mask that holds each footprint of ``A`` (at least :data:`MASK_SHARE`
    of its energy), -1 for none."""
    if A.shape[1] == 0:
        return np.zeros(0, np.int64)
    share = _energy_in_masks(A, masks)
    return np.where(share.max(axis=0) >= MASK_SHARE, share.argmax(axis=0), -1).astype(np.int64)


#: A footprint that a mask holds (:func:`seed_labels`) but whose binary mask (pixels at or above
#: :data:`somascope.metrics.MASK_FRAC` of its peak) has fewer pixels than this share of the
#: mask's is not the mask's cell (:func:`mark_seeds`): an active dendrite or a neighbour that
#: crosses a silent (or dimmer) cell's mask takes over its component during the updates, and the
#: footprint shrinks to the crossing. On the two-channel hard family the fitted cells' footprints
#: keep at least 0.39 of their mask's pixels (median 1.3), the taken ones 0.14–0.37.
MASK_FILL = 0.35


def held_masks(A: Any, masks: sp.csc_matrix) -> np.ndarray:
    """``(K,)`` int: the mask whose cell each footprint of ``A`` is, -1 for none: the mask
    that holds it (:func:`seed_labels`), when the footprint's binary mask is at least
    :data:`MASK_FILL` of the mask's size."""
    from somascope.metrics import binarise_footprints

    label = seed_labels(A, masks)
    held = np.flatnonzero(label >= 0)
    if held.size:
        size = np.diff(binarise_footprints(sp.csc_matrix(A)[:, held]).indptr)
        mask_size = np.asarray((sp.csc_matrix(masks) > 0).sum(axis=0)).ravel()[label[held]]
        label[held[size < MASK_FILL * mask_size]] = -1
    return label


def outside_masks(A: Any, masks: sp.spmatrix) -> np.ndarray:
    """``(K,)`` bool: the footprints of ``A`` (``pixels × K``) that no mask (``pixels ×
    n_masks``, sparse) holds — less than :data:`MASK_SHARE` of their energy in any one mask
    and in all of them together."""
    M = sp.csc_matrix(masks)
    if A.shape[1] == 0:
        return np.zeros(0, bool)
    share = _energy_in_masks(A, M)
    covered = sp.csc_matrix((np.ones(M.nnz), M.indices, M.indptr), shape=M.shape).max(axis=1)
    union = _energy_in_masks(A, sp.csc_matrix(covered))[0]
    return (share.max(axis=0) < MASK_SHARE) & (union < MASK_SHARE)


def mark_seeds(est: Any, masks: Any, start: Any = None) -> Any:
    """``est`` with ``seeded`` set, and every mask without a component put back.

    A component is seeded when it is one mask's cell (:func:`held_masks`: at least
    :data:`MASK_SHARE` of its footprint's energy in the mask, and a footprint not shrunk below
    :data:`MASK_FILL` of it); a component that only crosses a mask stays unseeded and meets the
    usual quality tests. A mask whose cell no component is (CNMF drops a footprint whose trace
    stayed at zero: a cell that never fired; or another source took its component over)
    becomes a component again with its seeded start (footprint
    and trace of ``start``, the :class:`~somascope.cnmf.initialization.Initialization` whose
    first columns are the masks' in mask order) when that start is still the mask's cell, else
    (no ``start``, or a start fitted onto what crosses the mask) the mask normalised and ``C = 0``,
    ``S = 0``, and ``YrA = None`` for all components so that the evaluation recomputes the
    residual traces (the put-back cell's raw trace included).

    Parameters
    ----------
    est
        :class:`~somascope.cnmf.estimates.Estimates` of a seeded fit; not modified.
    masks
        The seed masks (``pixels × n_masks``, as :func:`as_masks` takes them).
    start
        The seeded initialisation (or None).
    """
    import dataclasses

    from .estimates import Estimates

    M = as_masks(masks, est.dims)
    label = held_masks(est.A, M)
    seeded = label >= 0
    held = np.zeros(M.shape[1], bool)
    held[label[seeded]] = True
    lost = np.flatnonzero(~held)
    if lost.size == 0:
        return dataclasses.replace(est, seeded=seeded)
    T = est.C.shape[1]
    zeros = np.zeros((lost.size, T), np.float32)
    norms = np.sqrt(np.asarray(M[:, lost].multiply(M[:, lost]).sum(axis=0)).ravel())
    new_A, new_C = sp.csc_matrix(M[:, lost] @ sp.diags(1.0 / norms)), zeros
    if start is not None:  # the seeded start where it is still the mask's cell
        A0 = sp.csc_matrix(start.A[:, lost])
        whole = held_masks(A0, M) == lost
        new_A = sp.csc_matrix(A0 @ sp.diags(whole.astype(np.float64)) + new_A @ sp.diags((~whole).astype(np.float64)))
        new_A.eliminate_zeros()
        new_C = np.where(whole[:, None], np.asarray(start.C[lost], np.float32), zeros)

    def stacked(name: str, fill: np.ndarray) -> np.ndarray | None:
        value = getattr(est, name)
        return None if value is None else np.concatenate([value, fill.astype(value.dtype)])

    per_trace = {name: stacked(name, np.zeros(lost.size)) for name in ("neurons_sn", "bl", "c1", "lam")}
    g = None if est.g is None else np.concatenate([est.g, np.zeros((lost.size, est.g.shape[1]), est.g.dtype)])
    return Estimates(
        A=sp.hstack([est.A, new_A.astype(est.A.dtype)], format="csc"), dims=est.dims,
        C=stacked("C", new_C), S=stacked("S", zeros), YrA=None, b=est.b, f=est.f, sn=est.sn, g=g,
        seeded=np.concatenate([seeded, np.ones(lost.size, bool)]), frame_rate=est.frame_rate, params=est.params,
        software_version=est.software_version, seed=est.seed, provenance=est.provenance, extra=est.extra,
        **per_trace)


def silent_footprints(est: Any, masks: Any, source: Any, *, progress: bool = False) -> Any:
    """``est`` with each silent cell's footprint replaced by its mask (normalised), its trace
    ``C`` and ``S`` set to 0, and the residual traces ``YrA`` of all components recomputed from
    ``source`` (one pass over the movie): the raw trace of a silent cell is then its mask's.

    A cell that never fires gives CNMF nothing to shape a footprint from, so the fitted one is
    noise around the seed; the structural channel's mask is where the cell is. The quality
    metrics (``SNR_comp``, ``r_values``) stay those the silent flag was decided on.
    """
    import dataclasses

    from somascope.evaluation.quality import residual_traces

    if est.silent is None or not np.any(est.silent):
        return est
    M = as_masks(masks, est.dims)
    silent = np.flatnonzero(est.silent)
    label = seed_labels(est.A[:, silent], M)
    keep = label >= 0
    silent, label = silent[keep], label[keep]
    if silent.size == 0:
        return est
    A = sp.lil_matrix(est.A)
    cols = M[:, label]
    norms = np.sqrt(np.asarray(cols.multiply(cols).sum(axis=0)).ravel())
    cols = sp.csc_matrix(cols @ sp.diags(1.0 / norms))
    for i, k in enumerate(silent):
        A[:, k] = cols[:, i]
    A = sp.csc_matrix(A, dtype=est.A.dtype)
    A.sort_indices()
    C = np.array(est.C, copy=True)
    C[silent] = 0
    S = None if est.S is None else np.array(est.S, copy=True)
    if S is not None:
        S[silent] = 0
    YrA = residual_traces(source, A, C, est.b, est.f, progress=progress)
    return dataclasses.replace(est, A=A, C=C, S=S, YrA=YrA.astype(np.float32))
