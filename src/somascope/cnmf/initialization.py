"""Initialisation of CNMF: first footprints ``A``, traces ``C`` and background ``b``, ``f``.

CNMF fits ``Y ≈ A·C + b·f`` by alternating updates that need a starting point. This module
finds one from the movie alone:

* :func:`greedy_roi` — GreedyROI (CaImAn paper, "Initialization"): blur the movie with a
  Gaussian of the neuron's size, repeatedly take the pixel whose blurred trace holds the most
  energy, fit a rank-1 non-negative footprint × trace in a ``gSiz`` box around it by a few
  alternating steps, subtract it and continue. With ``rolling_length`` the energy of a pixel
  is the largest mean energy over any window of that many frames (RollingGreedyROI), which
  favours cells that fire rarely but strongly — the usual case in two-photon data.
* :func:`sparse_nmf` — smoothed, baseline-removed movie factorised by non-negative matrix
  factorisation with an L1 penalty on the footprints: no blob prior, for dendrites and axons.
* :func:`initial_background` — rank-``nb`` non-negative background ``b·f`` (HALS NMF), on
  all pixels or, for seeded initialisation, from the pixels that no mask covers.
* :func:`hals` — a few HALS passes over ``A, C, b, f`` with each footprint held inside a
  slightly dilated copy of its support (CaImAn runs these after GreedyROI).
* :func:`downsample` / :func:`upsample` — block means in space (``ssub``) and time
  (``tsub``) for speed, and linear interpolation of the result back to the movie's grid.
* :func:`initialize` — what ``cnmf.fit`` calls: normalise, downsample, run the method that
  ``params.init.method`` names from a registry (:func:`register_method`; GreedyCorr of
  CNMF-E registers itself there), refine with HALS, upsample, undo the normalisation.

Shapes: a movie ``Y`` is ``T × *dims`` (``dims`` = ``(H, W)`` or ``(Z, H, W)``), pixels in C
order; ``Yr`` is the ``pixels × T`` view. Footprints ``A`` are ``scipy.sparse.csc_matrix``
``pixels × K`` with unit L2-norm columns, traces ``C`` are ``K × T``, ``b`` is ``pixels × nb``
with unit L2-norm columns and ``f`` is ``nb × T``; all float32, in the units of the movie.
The input movie is never modified.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from somascope.params import ParameterError

if TYPE_CHECKING:
    from somascope.params import Params

__all__ = [
    "Initialization",
    "InitMethod",
    "available_methods",
    "downsample",
    "greedy_roi",
    "hals",
    "initial_background",
    "initialize",
    "register_method",
    "sparse_nmf",
    "upsample",
]

log = logging.getLogger(__name__)

_EPS = np.finfo(np.float32).eps
_BLOCK_ELEMENTS = 1 << 22  # elements per block when a pass over the movie is done in pieces

#: Width of the surround, in units of ``gSig``: GreedyROI and sparse NMF subtract from every
#: pixel the local mean of the data under a Gaussian of standard deviation ``SURROUND · gSig``
#: before looking for components, so smooth background fluctuations (neuropil, uneven
#: illumination) do not outrank cells. On simulated 128×128×2000 two-photon movies with 50
#: cells (whole field of view, K = number of active somata) it raises the F1 of GreedyROI's
#: components from 0.59–0.75 to 0.90–1.0 (values from 3 to 12 do about as well); after the
#: full CNMF fit, F1 goes from 0.91–0.94 to 0.93–0.97 (RollingGreedyROI) and from 0.64–0.84
#: to 0.91–0.92 (sparse NMF). None or 0 turns it off (CaImAn's behaviour).
SURROUND = 5.0


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class Initialization:
    """Starting point of CNMF: ``Y ≈ A·C + b·f`` on a movie with frame shape ``dims``.

    Attributes:
        A: ``scipy.sparse.csc_matrix`` ``pixels × K`` float32, pixels in C order of ``dims``;
            columns have unit L2 norm (the trace carries the scale).
        C: ``K × T`` float32 traces in movie units × footprint norm.
        b: ``pixels × nb`` float32 background footprints, unit L2-norm columns; ``nb`` may be
            0 (no global background: ring model, full-rank or none).
        f: ``nb × T`` float32 background traces.
        center: ``K × ndim`` float64 centre of mass of each footprint, px (row, col order of
            ``dims``).
        method: name of the initialisation method that made it.
        dims: frame shape ``(H, W)`` or ``(Z, H, W)`` (every function here fills it).
    """

    A: sp.csc_matrix
    C: np.ndarray
    b: np.ndarray
    f: np.ndarray
    center: np.ndarray
    method: str
    dims: tuple[int, ...] = field(default=())

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.A.shape[1])

    @property
    def nb(self) -> int:
        """Number of background components."""
        return int(self.b.shape[1])

    @property
    def T(self) -> int:
        """Number of frames."""
        return int(self.C.shape[1])


# ----------------------------------------------------------------------------- input checks


def _check_movie(Y: object, name: str = "Y", *, ndim: int | None = None) -> np.ndarray:
    """``Y`` as a real ``T × *dims`` array with 2 or 3 spatial axes, finite; not copied."""
    if not isinstance(Y, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array T × H × W (or T × Z × H × W), got "
                        f"{type(Y).__name__}. Fix: read the movie into memory first, e.g. "
                        f"np.asarray(movie[:]).")
    if Y.ndim not in (3, 4):
        raise ValueError(f"{name} has shape {Y.shape}; a movie is T × H × W or T × Z × H × W. "
                         f"Fix: reshape it (frames first).")
    if ndim is not None and Y.ndim - 1 != ndim:
        raise ParameterError(f"{name} has {Y.ndim - 1} spatial axes (shape {Y.shape}) but the "
                             f"parameters describe {ndim} (data.dxy). Fix: give per-axis "
                             f"parameters with {Y.ndim - 1} entries, e.g. Params.from_neuron("
                             f"radius_px={(5.0,) * (Y.ndim - 1)}).")
    if not (np.issubdtype(Y.dtype, np.floating) or np.issubdtype(Y.dtype, np.integer)):
        raise TypeError(f"{name} has dtype {Y.dtype}; a movie must hold real numbers. "
                        f"Fix: convert it with Y.astype(np.float32).")
    if Y.shape[0] < 2 or min(Y.shape[1:]) < 1:
        raise ValueError(f"{name} has shape {Y.shape}: at least 2 frames of at least 1 pixel "
                         f"are needed. Fix: pass the whole movie (frames first).")
    if np.issubdtype(Y.dtype, np.floating) and not _all_finite(Y):
        raise ValueError(f"{name} contains NaN or infinite values. Fix: replace them, e.g. "
                         f"np.nan_to_num(Y) or fill motion-correction borders with "
                         f"border_mode='copy'.")
    return Y


def _all_finite(Y: np.ndarray) -> bool:
    flat = Y.reshape(Y.shape[0], -1)
    step = max(1, _BLOCK_ELEMENTS // max(flat.shape[1], 1))
    return all(np.isfinite(flat[t:t + step]).all() for t in range(0, flat.shape[0], step))


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> tuple[float, ...]:
    vals = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)))
    if len(vals) == 1:
        vals = vals * ndim
    if len(vals) != ndim or not all(v > 0 and math.isfinite(v) for v in vals):
        raise ParameterError(f"{name}={value!r} must be a positive number or one per spatial "
                             f"axis ({ndim}). Fix: give e.g. {name}={(5,) * ndim}.")
    return vals


def _check_count(value: object, name: str, lo: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < lo:
        raise ParameterError(f"{name}={value!r} must be a whole number ≥ {lo}. "
                             f"Fix: give an integer ≥ {lo}.")
    return int(value)


def _pixels_by_time(Y: np.ndarray) -> np.ndarray:
    """``pixels × T`` view of a ``T × *dims`` movie (F-contiguous when Y is C-contiguous)."""
    return Y.reshape(Y.shape[0], -1).T


# ----------------------------------------------------------------------------- small helpers


def _normalize_columns(A: np.ndarray | sp.spmatrix,
                       C: np.ndarray) -> tuple[np.ndarray | sp.csc_matrix, np.ndarray]:
    """Scale columns of A to unit L2 norm and rows of C by the inverse (product unchanged)."""
    norms = np.sqrt(np.asarray((A.multiply(A) if sp.issparse(A) else A * A).sum(axis=0))).ravel()
    ok = norms > 0
    scale = np.where(ok, norms, 1.0)
    if sp.issparse(A):
        A = sp.csc_matrix(A @ sp.diags(1.0 / scale))
    else:
        A = A / scale
    return A, C * scale[:, None]


def _centers_of_mass(A: sp.csc_matrix, dims: tuple[int, ...]) -> np.ndarray:
    """``K × ndim`` centre of mass of each (non-negative) footprint, px."""
    A = sp.csc_matrix(A)
    K = A.shape[1]
    grids = np.unravel_index(np.arange(math.prod(dims)), dims)
    mass = np.asarray(A.sum(axis=0)).ravel()
    mass = np.where(mass > 0, mass, 1.0)
    out = np.empty((K, len(dims)))
    for axis, coords in enumerate(grids):
        out[:, axis] = (A.T @ coords.astype(np.float64)) / mass
    return out


def inside_mask(A: sp.spmatrix, dims: tuple[int, ...], mask: np.ndarray | None,
                offset: tuple[int, ...] | None = None) -> np.ndarray:
    """Bool ``(K,)``: whose footprint's centre of mass (in ``A``'s frame of ``dims``, moved by
    ``offset`` px into ``mask``'s frame) falls on a True pixel of ``mask`` (None: all)."""
    K = int(A.shape[1])
    if mask is None or K == 0:
        return np.ones(K, bool)
    centre = _centers_of_mass(sp.csc_matrix(A), tuple(dims))
    if offset is not None:
        centre = centre + np.asarray(offset, float)
    idx = np.round(centre).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(mask.shape)), axis=1) & np.isfinite(centre).all(axis=1)
    out = np.zeros(K, bool)
    out[ok] = np.asarray(mask, bool)[tuple(idx[ok].T)]
    return out


def _gaussian_kernel(sigma: float, half: int) -> np.ndarray:
    """1-D Gaussian of standard deviation ``sigma`` on ``-half..half`` with unit L2 norm."""
    x = np.arange(-half, half + 1, dtype=np.float64)
    h = np.exp(-x * x / (2.0 * sigma * sigma))
    return (h / np.sqrt(h @ h)).astype(np.float32)


def _blur(X: np.ndarray, kernels: Sequence[np.ndarray]) -> np.ndarray:
    """Separable correlation of the leading ``len(kernels)`` axes, zero outside the array."""
    out = X
    for axis, h in enumerate(kernels):
        out = ndimage.correlate1d(out, h, axis=axis, mode="constant", cval=0.0)
    return out


def _randomized_svd(M: np.ndarray, k: int, *, n_iter: int = 4,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``k`` singular triplets of ``M`` (rows × cols) by a seeded randomized range finder."""
    rng = np.random.default_rng(seed)
    rows, cols = M.shape
    k = min(k, rows, cols)
    q = min(k + 8, rows, cols)
    Q = M @ rng.standard_normal((cols, q)).astype(M.dtype)
    Q, _ = np.linalg.qr(Q)
    for _ in range(n_iter):
        Z, _ = np.linalg.qr(M.T @ Q)
        Q, _ = np.linalg.qr(M @ Z)
    Bsmall = Q.T @ M
    u, s, vt = np.linalg.svd(Bsmall.astype(np.float64), full_matrices=False)
    return (Q @ u[:, :k]).astype(np.float64), s[:k], vt[:k]


def _nndsvd(M: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative double SVD start (Boutsidis & Gallopoulos 2008): ``W`` rows × k, ``H`` k × cols.

    Each singular pair is split into its positive and negative parts and the part with the
    larger product of norms is kept; a zero part is replaced by a small constant so that
    multiplicative-free updates (HALS) can still move it.
    """
    U, s, Vt = _randomized_svd(M, k, seed=seed)
    rows, cols = M.shape
    W = np.zeros((rows, k))
    H = np.zeros((k, cols))
    for j in range(len(s)):
        u, v = U[:, j], Vt[j]
        up, un = np.maximum(u, 0), np.maximum(-u, 0)
        vp, vn = np.maximum(v, 0), np.maximum(-v, 0)
        nup, nvp, nun, nvn = (np.linalg.norm(x) for x in (up, vp, un, vn))
        if nup * nvp >= nun * nvn:
            uu, vv, sigma = up / max(nup, _EPS), vp / max(nvp, _EPS), s[j] * nup * nvp
        else:
            uu, vv, sigma = un / max(nun, _EPS), vn / max(nvn, _EPS), s[j] * nun * nvn
        W[:, j] = np.sqrt(sigma) * uu
        H[j] = np.sqrt(sigma) * vv
    avg = max(float(np.abs(M).mean()), float(_EPS)) / 100.0
    W[W <= 0] = avg
    H[H <= 0] = avg
    return W, H


def _hals_rows(X: np.ndarray, U: np.ndarray, V: np.ndarray, *, penalty: np.ndarray | None = None,
               mask: np.ndarray | None = None) -> np.ndarray:
    """One HALS sweep for ``min ½‖R − Wᵀ X‖² (+ penalty·‖X‖₁)``, ``X ≥ 0``, row by row.

    ``X`` (n × m) holds the factor being updated, ``U = W R`` (n × m) and ``V = W Wᵀ`` (n × n)
    the products with the fixed factor ``W``. ``mask`` (n × m bool) confines row ``i`` to
    ``mask[i]``; ``penalty`` (n,) is an L1 weight per row. Updates ``X`` in place, returns it.
    """
    for i in range(X.shape[0]):
        vii = V[i, i]
        if vii <= 0:
            X[i] = 0
            continue
        grad = U[i] - V[i] @ X
        if penalty is not None:
            grad = grad - penalty[i]
        row = np.maximum(X[i] + grad / vii, 0)
        if mask is not None:
            row[~mask[i]] = 0
        X[i] = row
    return X


# ----------------------------------------------------------------------------- background


def initial_background(Y: np.ndarray, nb: int, *, mask: np.ndarray | None = None,
                       A: sp.spmatrix | np.ndarray | None = None, C: np.ndarray | None = None,
                       n_iter: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``nb`` non-negative background ``b·f`` of a movie (or of its residual ``Y − A·C``).

    A HALS non-negative matrix factorisation of ``Y − A·C``, started from the mean trace
    (``nb = 1``) or the non-negative double SVD (``nb > 1``). ``A·C`` is never formed for the
    iterations: the products ``bᵀ(Y − AC)`` and ``(Y − AC)fᵀ`` are computed as
    ``bᵀY − (bᵀA)C`` and ``Yfᵀ − A(Cfᵀ)`` (the SVD start of ``nb > 1`` forms it once).

    Args:
        Y: the movie ``T × *dims``, or ``Yr``, its ``pixels × T`` view (any 2-D array is
            taken as ``pixels × T``).
        nb: background rank, ≥ 1.
        mask: optional boolean, ``pixels`` or ``dims``: the temporal components ``f`` are
            estimated from these pixels only (e.g. those no footprint covers, CaImAn
            Algorithm 3); ``b`` is then fitted on every pixel with ``f`` held fixed.
        A, C: optional components (``pixels × K``, ``K × T``) whose contribution is removed
            first.
        n_iter: HALS iterations (each reads the data twice).
        seed: seed of the randomized SVD that starts the factorisation.

    Returns:
        ``(b, f)``: ``b`` ``pixels × nb`` float32 with unit L2-norm columns, ``f`` ``nb × T``
        float32, components ordered by decreasing energy ``‖b_i‖·‖f_i‖``.
    """
    nb = _check_count(nb, "nb")
    n_iter = _check_count(n_iter, "n_iter", 0)
    Y = np.asarray(Y)
    if Y.ndim == 2:
        Yr = Y
    elif Y.ndim in (3, 4):
        Yr = _pixels_by_time(Y)
    else:
        raise ValueError(f"Y has shape {Y.shape}; give a movie T × H × W (T × Z × H × W) or its "
                         f"pixels × T view. Fix: reshape it.")
    if not np.issubdtype(Yr.dtype, np.floating):
        Yr = Yr.astype(np.float32)
    n_pix, T = Yr.shape
    if (A is None) != (C is None):
        raise ValueError("give both A (pixels × K) and C (K × T) to remove their contribution, "
                         "or neither. Fix: pass the pair.")
    if A is not None:
        A = sp.csc_matrix(A, dtype=np.float64)
        C = np.asarray(C, dtype=np.float64)
        if A.shape[0] != n_pix or C.shape != (A.shape[1], T):
            raise ValueError(f"A {A.shape} and C {C.shape} do not fit a movie of {n_pix} pixels "
                             f"× {T} frames. Fix: give A as pixels × K and C as K × T.")
    sel = None
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.size != n_pix:
            raise ValueError(f"mask must be a boolean array of {n_pix} pixels (or the frame "
                             f"shape), got dtype {m.dtype} and {m.size} entries. Fix: pass e.g. "
                             f"the pixels that no footprint covers, as booleans.")
        sel = np.flatnonzero(m.ravel())
        if sel.size < nb:
            raise ValueError(f"mask selects {sel.size} pixels, fewer than nb={nb} background "
                             f"components need. Fix: use a larger mask or mask=None.")

    # the selected pixels once (a copy only when a mask selects some)
    R = Yr if sel is None else np.ascontiguousarray(Yr[sel])
    A_R = A if (A is None or sel is None) else sp.csc_matrix(A.tocsr()[sel])

    def prod_bt(b: np.ndarray, data: np.ndarray, Ad: sp.csc_matrix | None) -> np.ndarray:
        """``bᵀ (data − Ad·C)`` (nb × T)."""
        out = (data.T @ b.astype(data.dtype)).T.astype(np.float64)
        if Ad is not None:
            out -= (Ad.T @ b).T @ C
        return out

    def prod_f(f: np.ndarray, data: np.ndarray, Ad: sp.csc_matrix | None) -> np.ndarray:
        """``(data − Ad·C) fᵀ`` (rows × nb)."""
        out = (data @ f.T.astype(data.dtype)).astype(np.float64)
        if Ad is not None:
            out -= Ad @ (C @ f.T)
        return np.asarray(out)

    if nb == 1:
        # start: the mean trace of the selected pixels and the best image for it
        f = np.maximum(prod_bt(np.full((R.shape[0], 1), 1.0 / R.shape[0]), R, A_R), 0)
        if not np.any(f > 0):
            f = np.ones((1, T))
        b = np.maximum(prod_f(f, R, A_R), 0) / float(np.sum(f * f))
    else:
        # start: NNDSVD of the (residual) data on the selected pixels
        start = R if A_R is None else _residual(R, A_R, C)
        b, f = _nndsvd(np.asarray(start, dtype=np.float32), nb, seed=seed)
        del start
    # b: selected pixels × nb, f: nb × T
    for _ in range(n_iter):
        f = _hals_rows(f, prod_bt(b, R, A_R), b.T @ b)
        b = _hals_rows(b.T.copy(), prod_f(f, R, A_R).T, f @ f.T).T
    del R
    if sel is not None:
        # b on every pixel with f fixed: non-negative least squares by HALS from the LS start
        Ff = f @ f.T
        W = prod_f(f, Yr, A)
        b = np.maximum(np.linalg.lstsq(Ff, W.T, rcond=None)[0], 0)
        for _ in range(max(n_iter, 3)):
            b = _hals_rows(b, W.T, Ff)
        b = b.T
    b, f = _normalize_columns(b, f)
    order = np.argsort(-np.linalg.norm(f, axis=1), kind="stable")
    return (np.ascontiguousarray(b[:, order], dtype=np.float32),
            np.ascontiguousarray(f[order], dtype=np.float32))


def _residual(Yr: np.ndarray, A: sp.csc_matrix, C: np.ndarray) -> np.ndarray:
    """``Yr − A·C`` as float32, formed in blocks of pixels (only for the NNDSVD start)."""
    out = np.empty(Yr.shape, dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(Yr.shape[1], 1))
    Acsr = A.tocsr()
    for i in range(0, Yr.shape[0], step):
        out[i:i + step] = Yr[i:i + step] - Acsr[i:i + step] @ C
    return out


# ----------------------------------------------------------------------------- GreedyROI


def greedy_roi(Y: np.ndarray, K: int, gSig: float | Sequence[float], gSiz: int | Sequence[int], *,
               nb: int = 1, nIter: int = 5, rolling_length: int | None = None,
               surround: float | None = SURROUND, background_iter: int = 10) -> Initialization:
    """GreedyROI / RollingGreedyROI on a movie at its own resolution.

    1. Subtract each pixel's temporal median and, with ``surround``, the local mean of the
       movie under a Gaussian of ``surround·gSig`` (a local background estimate; CaImAn has
       no such step and relies on small patches instead). Blur every frame with a Gaussian
       of standard deviation ``gSig`` truncated to ``gSiz`` (per axis unit-norm kernel: a
       matched filter for a neuron), zero outside the frame.
    2. Score each pixel by the energy of its blurred trace: the sum of squares over time, or
       with ``rolling_length`` the largest mean of squares over a window of that many frames.
    3. ``K`` times: take the best-scoring pixel, fit a rank-1 footprint × trace to the data in
       the ``gSiz`` box around it (``nIter`` alternating steps from the blurred trace:
       ``a = max(Y_box c, 0) / ‖·‖``, ``c = Y_boxᵀ a``), subtract it from the data, and update
       the blurred data and the scores within ``2·gSiz`` of it (the blur is linear, so the
       blurred footprint × trace is subtracted there).
    4. The background is the rank-``nb`` NMF (:func:`initial_background`) of ``Y − A·C``.

    Memory: three float32 copies of the movie (data, blurred data, residual).

    Args:
        Y: movie ``T × *dims`` (2 or 3 spatial axes); not modified.
        K: number of components to extract (≤ number of pixels).
        gSig: Gaussian standard deviation of a neuron, px, scalar or one per axis.
        gSiz: size of the neuron's box, px, scalar or one per axis (made odd: ``2·(gSiz//2)+1``).
        nb: background rank; 0 (or less) returns no background (``b`` with no columns).
        nIter: rank-1 refinement steps per component (at least one is done).
        rolling_length: frames of the rolling window (RollingGreedyROI); None: plain GreedyROI.
        surround: standard deviation of the surround in units of ``gSig`` (default
            :data:`SURROUND`); None or 0: no surround subtraction (CaImAn's GreedyROI).
        background_iter: HALS iterations of the background NMF.

    Returns:
        :class:`Initialization` with method ``"greedy_roi"`` or ``"rolling_greedy_roi"``. The
        traces ``C`` are those of the median-subtracted data and may be negative; the
        background absorbs the medians. Components whose footprint came out empty are dropped
        (rare), so ``K`` may be smaller than asked.
    """
    Y = _check_movie(Y)
    T, dims = Y.shape[0], tuple(Y.shape[1:])
    ndim = len(dims)
    n_pix = math.prod(dims)
    K = _check_count(K, "K")
    if K > n_pix:
        raise ParameterError(f"K={K} components cannot be found in {n_pix} pixels. Fix: lower "
                             f"K (init.K) or use less spatial downsampling (init.ssub).")
    sig = _per_axis(gSig, ndim, "gSig")
    siz = _per_axis(gSiz, ndim, "gSiz")
    half = tuple(max(1, int(s) // 2) for s in siz)
    n_iter = max(1, _check_count(nIter, "nIter", 0))
    if rolling_length is not None:
        rolling_length = min(_check_count(rolling_length, "rolling_length"), T)

    # data pixel-major (*dims, T): every box slice is a set of contiguous traces
    X = np.array(np.moveaxis(Y, 0, -1), dtype=np.float32, order="C", copy=True)
    med = np.median(X, axis=-1)
    X -= med[..., None]
    if surround is not None and surround > 0:
        X -= _local_mean(X, tuple(surround * s for s in sig))
    kernels = [_gaussian_kernel(s, h) for s, h in zip(sig, half)]
    rho = _blur(X, kernels)

    def score(block: np.ndarray) -> np.ndarray:
        if rolling_length is None:
            return np.einsum("...t,...t->...", block, block, dtype=np.float64)
        sq = block * block
        return ndimage.uniform_filter1d(sq, rolling_length, axis=-1, mode="constant").max(axis=-1)

    v = np.empty(dims, dtype=np.float64)
    rows_per = max(1, _BLOCK_ELEMENTS // max(T * math.prod(dims[1:]), 1))
    for r0 in range(0, dims[0], rows_per):
        v[r0:r0 + rows_per] = score(rho[r0:r0 + rows_per])

    A_cols: list[tuple[np.ndarray, np.ndarray]] = []
    C_rows: list[np.ndarray] = []
    attempts = 0
    while len(C_rows) < K and attempts < n_pix:
        attempts += 1
        ij = np.unravel_index(int(np.argmax(v)), dims)
        if not v[ij] > 0:
            break  # nothing left to explain
        box = tuple(slice(max(i - h, 0), min(i + h + 1, d)) for i, h, d in zip(ij, half, dims))
        patch = X[box].reshape(-1, T)
        c = rho[ij].astype(np.float32)
        a = np.zeros(patch.shape[0], dtype=np.float32)
        for _ in range(n_iter):
            a = np.maximum(patch @ c, 0)
            norm = float(np.sqrt(a @ a))
            if norm <= 0:
                break
            a /= norm
            c = patch.T @ a
        if not np.any(a > 0):
            v[ij] = 0.0  # the blurred trace is not explained by a positive footprint: skip it
            continue
        box_shape = tuple(s.stop - s.start for s in box)
        X[box] -= (a[:, None] * c[None, :]).reshape(*box_shape, T)
        # update the blurred data and the scores where the blurred footprint reaches
        wide = tuple(slice(max(i - 2 * h, 0), min(i + 2 * h + 1, d))
                     for i, h, d in zip(ij, half, dims))
        img = np.zeros(tuple(s.stop - s.start for s in wide), dtype=np.float32)
        inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))
        img[inner] = a.reshape(box_shape)
        rho[wide] -= _blur(img, kernels)[..., None] * c
        v[wide] = score(rho[wide])
        flat = np.ravel_multi_index(np.meshgrid(*[np.arange(s.start, s.stop) for s in box],
                                                indexing="ij"), dims).ravel()
        A_cols.append((flat, a))
        C_rows.append(c)
    del rho
    if len(C_rows) < K:
        log.info("greedy_roi found %d of the %d components asked for", len(C_rows), K)

    A = _columns_to_csc(A_cols, n_pix)
    C = np.array(C_rows, dtype=np.float32).reshape(len(C_rows), T)
    method = "greedy_roi" if rolling_length is None else "rolling_greedy_roi"
    if nb > 0:  # background: NMF of the residual Y − A·C, formed pixel-major in X's memory
        Xr = X.reshape(n_pix, T)
        Acsr = A.tocsr()
        step = max(1, _BLOCK_ELEMENTS // T)
        Yr = _pixels_by_time(Y)
        for r0 in range(0, n_pix, step):
            Xr[r0:r0 + step] = Yr[r0:r0 + step]
            Xr[r0:r0 + step] -= Acsr[r0:r0 + step] @ C
        b, f = initial_background(Xr, nb, n_iter=background_iter)
    else:
        b, f = _background_or_empty(_pixels_by_time(Y), 0)
    del X
    return Initialization(A=A, C=C, b=b, f=f, center=_centers_of_mass(A, dims), method=method,
                          dims=dims)


def _local_mean(X: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Gaussian-weighted mean over the leading (spatial) axes of ``X`` (``*dims × T``).

    Normalised convolution: pixels outside the frame get no weight (rather than copies of
    the border pixels, which would make the estimate noisy there). Each axis is one matrix
    product (BLAS) with the axis's filter as a ``n × n`` matrix, its rows scaled to sum 1 —
    the same numbers as ``ndimage.gaussian_filter`` (truncated at 3σ, zero outside) divided
    by the filtered ones image, several times faster on a patch's movie.
    """
    out = np.asarray(X, dtype=np.float32)
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        n = out.shape[axis]
        G = ndimage.gaussian_filter1d(np.eye(n), float(s), axis=0, mode="constant", truncate=3.0)
        G = (G / G.sum(axis=1, keepdims=True)).astype(np.float32)
        shape = out.shape
        out = np.matmul(G, out.reshape(math.prod(shape[:axis]), n, -1)).reshape(shape)
    return out if out is not X else out.copy()


def _columns_to_csc(cols: list[tuple[np.ndarray, np.ndarray]], n_pix: int) -> sp.csc_matrix:
    if not cols:
        return sp.csc_matrix((n_pix, 0), dtype=np.float32)
    indices = np.concatenate([c[0] for c in cols])
    data = np.concatenate([c[1] for c in cols]).astype(np.float32)
    indptr = np.r_[0, np.cumsum([c[0].size for c in cols])]
    A = sp.csc_matrix((data, indices, indptr), shape=(n_pix, len(cols)))
    A.sort_indices()
    A.eliminate_zeros()
    return A


def _background_or_empty(Yr: np.ndarray, nb: int,
                         **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    if nb <= 0:
        return (np.zeros((Yr.shape[0], 0), dtype=np.float32),
                np.zeros((0, Yr.shape[1]), dtype=np.float32))
    return initial_background(Yr, nb, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sparse NMF


def sparse_nmf(Y: np.ndarray, K: int, *, nb: int = 1, alpha: float = 0.5, max_iter: int = 500,
               sigma_smooth: float | Sequence[float] = 0.5, perc_baseline: float = 20.0,
               surround: float | Sequence[float] | None = None, tol: float = 1e-4,
               background_iter: int = 10, seed: int = 0) -> Initialization:
    """Sparse non-negative matrix factorisation: components without a shape prior (processes).

    1. Smooth the movie with a Gaussian of standard deviations ``sigma_smooth`` (frames, then
       px per spatial axis); with ``surround``, subtract the local spatial mean of each
       pixel's fluctuations (Gaussian of ``surround`` px: smooth background, as in
       :func:`greedy_roi`); subtract each pixel's ``perc_baseline`` percentile and clip at 0:
       ``M`` (``pixels × T``) holds the positive excursions.
    2. Factorise ``M ≈ A·C``, ``A, C ≥ 0``, by HALS from the non-negative double SVD, minimising
       ``½‖M − AC − a₀c₀ᵀ‖² + Σ_k λ_k ‖a_k‖₁``. The unpenalised rank-1 term ``a₀c₀ᵀ``
       (started as each pixel's mean × a flat trace) takes up the clipped noise floor, which
       is positive on average, and drifts common to all pixels such as bleaching.
       ``λ_k = alpha · σ·√(2 ln P) · ‖c_k‖₂``
       with ``σ`` the noise level of ``M`` (median pixel noise of the movie times the noise
       gain of the smoothing) and ``P`` pixels: with ``alpha = 1`` a pixel joins footprint
       ``k`` only where its projection on ``c_k`` exceeds what the largest of ``P`` pure-noise
       pixels would reach (the universal threshold). Stops when the objective changes by less
       than ``tol`` (relative) or after ``max_iter`` iterations.
    3. The background is the rank-``nb`` NMF of ``Y − A·C`` (:func:`initial_background`).

    Args:
        Y: movie ``T × *dims``; not modified.
        K: number of components.
        nb: background rank (0 or less: none).
        alpha: sparsity of the footprints, as a fraction of the universal threshold (≥ 0;
            0.5 keeps pixels about 2 noise standard deviations above chance for P = 4096).
        max_iter: largest number of HALS iterations.
        sigma_smooth: scalar or ``(σ_t, σ_axis...)``; 0 disables smoothing along an axis.
        perc_baseline: percentile (0–100) taken as each pixel's baseline.
        surround: standard deviation of the local-mean Gaussian, px (scalar or one per axis);
            None: no local-mean subtraction. :func:`initialize` passes
            ``SURROUND · gSig``.
        tol: relative change of the objective at which the iterations stop.
        background_iter: HALS iterations of the background NMF.
        seed: seed of the randomized SVD start.

    Returns:
        :class:`Initialization` with method ``"sparse_nmf"``; components that vanish are
        dropped, so ``K`` may be smaller than asked.
    """
    from somascope.deconvolution import estimate_noise

    Y = _check_movie(Y)
    T, dims = Y.shape[0], tuple(Y.shape[1:])
    n_pix = math.prod(dims)
    K = _check_count(K, "K")
    max_iter = _check_count(max_iter, "max_iter")
    if K > min(n_pix, T):
        raise ParameterError(f"K={K} components cannot be factorised from {n_pix} pixels × {T} "
                             f"frames. Fix: lower K (init.K) to at most {min(n_pix, T)}.")
    if not alpha >= 0:
        raise ParameterError(f"alpha={alpha!r} must be ≥ 0 (a fraction of the universal "
                             f"threshold). "
                             f"Fix: use e.g. 0.5.")
    if not 0 <= perc_baseline <= 100:
        raise ParameterError(f"perc_baseline={perc_baseline!r} must lie in [0, 100]. Fix: use "
                             f"e.g. 20.")
    sig = tuple(float(s) for s in np.atleast_1d(np.asarray(sigma_smooth, dtype=float)))
    if len(sig) == 1:
        sig = sig * (len(dims) + 1)
    if len(sig) != len(dims) + 1 or min(sig) < 0:
        raise ParameterError(f"sigma_smooth={sigma_smooth!r} needs {len(dims) + 1} non-negative "
                             f"entries (frames, then px per spatial axis). Fix: e.g. "
                             f"{(0.5,) * (len(dims) + 1)}.")

    surround_px = None if surround is None else _per_axis(surround, len(dims), "surround")
    Y32 = np.asarray(Y, dtype=np.float32)
    smooth = ndimage.gaussian_filter(Y32, sig, mode="nearest", truncate=2.0) if max(sig) > 0 \
        else Y32.copy()
    M = np.array(np.moveaxis(smooth, 0, -1), dtype=np.float32, order="C")
    del smooth
    if surround is not None:
        # remove the local spatial mean of the fluctuations (smooth background)
        M -= _local_mean(M - np.median(M, axis=-1, keepdims=True), surround_px)
    M = M.reshape(n_pix, T)
    M -= np.percentile(M, perc_baseline, axis=1).astype(np.float32)[:, None]
    np.maximum(M, 0, out=M)

    # noise of M: median pixel noise of the movie × noise gain of the smoothing kernel
    sample = _pixels_by_time(Y32)[:: max(1, n_pix // 2000)]
    sn = float(np.median(estimate_noise(sample))) if T >= 8 else float(np.std(sample))
    gain = math.prod(float(np.sqrt(np.sum(_smoothing_kernel(s) ** 2))) for s in sig)
    # universal threshold: the largest of P noise projections on a unit trace is ≈ σ·√(2 ln P)
    threshold = sn * gain * math.sqrt(2.0 * math.log(max(n_pix, 2)))

    # factors: K sparse components from the NNDSVD, plus one unpenalised component started
    # as each pixel's mean × a flat trace that takes up the clipped noise floor and slow
    # drifts common to all pixels (bleaching)
    A, C = _nndsvd(M, K, seed=seed)  # A: pixels × K, C: K × T (float64)
    A = np.column_stack([A, M.mean(axis=1, dtype=np.float64)])
    C = np.vstack([C, np.ones((1, T))])
    A, C = _normalize_columns(A, C)
    norm_M = float(np.einsum("ij,ij->", M, M, dtype=np.float64))
    previous = np.inf
    for it in range(max_iter):
        # traces, footprints fixed: U = Aᵀ M
        U = (M.T @ A.astype(np.float32)).T.astype(np.float64)
        C = _hals_rows(C, U, A.T @ A)
        # footprints, traces fixed, L1 penalty on the K components: W = C Mᵀ
        W = (M @ C.T.astype(np.float32)).T.astype(np.float64)
        VC = C @ C.T
        penalty = alpha * threshold * np.sqrt(np.diag(VC))
        penalty[K] = 0.0
        At = _hals_rows(A.T.copy(), W, VC, penalty=penalty)
        # objective ½‖M − AC‖² + Σ λ‖a‖₁ from the products at hand (scale-invariant)
        fit = norm_M - 2.0 * np.einsum("kp,kp->", W, At) + np.einsum("ij,ji->", At @ At.T, VC)
        objective = 0.5 * fit + float(penalty @ At.sum(axis=1))
        A, C = _normalize_columns(At.T, C)
        if abs(previous - objective) <= tol * max(abs(objective), _EPS):
            log.debug("sparse_nmf converged after %d iterations", it + 1)
            break
        previous = objective
    A, C = A[:, :K], C[:K]
    keep = (A.max(axis=0) > 0) & (C.max(axis=1) > 0)
    A, C = A[:, keep], C[keep]
    A_sp = sp.csc_matrix(A.astype(np.float32))
    A_sp.eliminate_zeros()
    C = C.astype(np.float32)
    del M
    b, f = (initial_background(Y32, nb, A=A_sp, C=C, n_iter=background_iter, seed=seed)
            if nb > 0 else _background_or_empty(_pixels_by_time(Y32), 0))
    return Initialization(A=A_sp, C=C, b=b, f=f, center=_centers_of_mass(A_sp, dims),
                          method="sparse_nmf", dims=dims)


def _smoothing_kernel(sigma: float, truncate: float = 2.0) -> np.ndarray:
    """The normalised 1-D Gaussian that ``ndimage.gaussian_filter`` applies (sum 1)."""
    if sigma <= 0:
        return np.ones(1)
    half = int(truncate * sigma + 0.5)
    x = np.arange(-half, half + 1)
    h = np.exp(-0.5 * (x / sigma) ** 2)
    return h / h.sum()


# ----------------------------------------------------------------------------- HALS refinement


def hals(Y: np.ndarray, init: Initialization, *, n_iter: int = 5, dilation: int = 1,
         offset: np.ndarray | None = None) -> Initialization:
    """Refine an initialisation by HALS passes over ``C, f`` then ``A, b`` (CaImAn's ``hals``).

    Minimises ``‖Y − offset − A·C − b·f‖²`` with all factors non-negative. Each footprint
    stays inside its support dilated by ``dilation`` px (a box of ``2·dilation + 1``); the
    background footprints are free. Each iteration reads the data twice (``AᵀY``, ``CYᵀ``);
    the footprints are held dense (``pixels × (K + nb)``) during the passes, so use it on
    (downsampled) patches.

    Args:
        Y: movie ``T × *dims``, the one ``init`` was computed on; not modified.
        init: the starting point.
        n_iter: passes (0 returns ``init`` unchanged).
        dilation: growth of each footprint's support, px.
        offset: optional per-pixel constant (``pixels``) removed from the data, e.g. the
            median when there is no global background (``init.nb == 0``).

    Returns:
        A new :class:`Initialization` (same method name); components whose footprint or
        trace vanished are dropped.
    """
    Y = _check_movie(Y)
    n_iter = _check_count(n_iter, "n_iter", 0)
    dilation = _check_count(dilation, "dilation", 0)
    T, dims = Y.shape[0], tuple(Y.shape[1:])
    n_pix = math.prod(dims)
    if init.A.shape[0] != n_pix or init.C.shape[1] != T or init.f.shape[1:] not in ((T,), ()):
        raise ValueError(f"the initialisation (A {init.A.shape}, C {init.C.shape}) does not fit "
                         f"the movie of shape {Y.shape}. Fix: refine on the movie it was "
                         f"computed from.")
    if n_iter == 0 or init.K == 0:
        return init
    Yr = _pixels_by_time(np.asarray(Y, dtype=np.float32))
    off = None if offset is None else np.asarray(offset, dtype=np.float64).ravel()
    if off is not None and off.size != n_pix:
        raise ValueError(f"offset has {off.size} entries for {n_pix} pixels. Fix: give one "
                         f"value per pixel.")
    K, nb = init.K, init.nb
    Ab = np.zeros((n_pix, K + nb))
    Ab[:, :K] = init.A.toarray()
    Ab[:, K:] = init.b
    Cf = np.vstack([init.C, init.f]).astype(np.float64)
    support = np.zeros((K + nb, n_pix), dtype=bool)
    support[:K] = _dilated_support(init.A, dims, dilation).T
    support[K:] = True
    ones_T = np.ones(T)

    def data_times(W: np.ndarray) -> np.ndarray:  # Wᵀ (Y − offset): (K+nb) × T
        out = (Yr.T @ W.astype(np.float32)).T.astype(np.float64)
        if off is not None:
            out -= np.outer(W.T @ off, ones_T)
        return out

    def times_data(H: np.ndarray) -> np.ndarray:  # H (Y − offset)ᵀ: (K+nb) × pixels
        out = (Yr @ H.T.astype(np.float32)).T.astype(np.float64)
        if off is not None:
            out -= np.outer(H.sum(axis=1), off)
        return out

    for _ in range(n_iter):
        for _ in range(2):  # CaImAn does two sweeps of each update per iteration
            Cf = _hals_rows(Cf, data_times(Ab), Ab.T @ Ab)
        U, V = times_data(Cf), Cf @ Cf.T
        At = Ab.T.copy()
        for _ in range(2):
            At = _hals_rows(At, U, V, mask=support)
        Ab = At.T
    A, C = Ab[:, :K], Cf[:K]
    b, f = Ab[:, K:], Cf[K:]
    keep = (A.max(axis=0) > 0) & (C.max(axis=1) > 0)
    A, C = _normalize_columns(A[:, keep], C[keep])
    if nb:
        b, f = _normalize_columns(b, f)
    A_sp = sp.csc_matrix(A.astype(np.float32))
    A_sp.eliminate_zeros()
    return Initialization(A=A_sp, C=C.astype(np.float32), b=b.astype(np.float32),
                          f=f.astype(np.float32), center=_centers_of_mass(A_sp, dims),
                          method=init.method, dims=dims)


def _dilated_support(A: sp.spmatrix, dims: tuple[int, ...], dilation: int) -> np.ndarray:
    """``pixels × K`` bool: each footprint's support grown by a box of ``2·dilation + 1``."""
    dense = np.asarray(sp.csc_matrix(A).toarray() > 0).reshape(*dims, A.shape[1])
    if dilation > 0:
        dense = ndimage.maximum_filter(dense, size=(2 * dilation + 1,) * len(dims) + (1,),
                                       mode="constant")
    return dense.reshape(-1, A.shape[1])


# ----------------------------------------------------------------------------- resampling


def downsample(Y: np.ndarray, ssub: int | Sequence[int] = 1, tsub: int = 1, *,
               divisor: np.ndarray | None = None) -> np.ndarray:
    """Block means of ``ssub`` px along each spatial axis and ``tsub`` frames.

    A last, partial block is the mean of the pixels (frames) it holds, so the result has
    ``ceil(n / factor)`` entries per axis. The movie is read in chunks of frames; only the
    result is held in full.

    Args:
        Y: movie ``T × *dims``; not modified.
        ssub: spatial factor (≥ 1), the same on every spatial axis, or one per spatial axis.
        tsub: temporal factor (≥ 1).
        divisor: optional image (``dims``) every frame is divided by first (normalisation).

    Returns:
        float32 ``ceil(T / tsub) × ceil(d / ssub)…``; always a new array.
    """
    Y = _check_movie(Y)
    return _downsample(Y, _spatial_factors(ssub, Y.ndim - 1), _check_count(tsub, "tsub"), divisor)


def _spatial_factors(ssub: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """``ssub`` as one factor (≥ 1) per spatial axis."""
    if np.ndim(ssub) == 0:
        return (_check_count(ssub, "ssub"),) * ndim
    factors = tuple(_check_count(f, "ssub") for f in ssub)  # type: ignore[union-attr]
    if len(factors) != ndim:
        raise ValueError(f"ssub={tuple(ssub)!r} gives {len(factors)} factors for {ndim} spatial axes. "  # type: ignore[arg-type]
                         "Fix: one per axis, or one for all.")
    return factors


def _init_factors(ssub: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    """The initialisation's spatial factors: ``init.ssub`` in the imaging plane; a volume's
    planes are not merged (a thin stack has few, and its neurons are a few planes deep)."""
    ssub = max(1, min(int(ssub), max(dims)))
    return (1,) * (len(dims) - 2) + (ssub, ssub) if len(dims) == 3 else (ssub,) * len(dims)


def _downsample(Y: np.ndarray, ssub: tuple[int, ...], tsub: int, divisor: np.ndarray | None) -> np.ndarray:
    """:func:`downsample` on a checked movie (``ssub``: one factor per spatial axis)."""
    T, dims = Y.shape[0], tuple(Y.shape[1:])
    if divisor is not None:
        divisor = np.asarray(divisor, dtype=np.float32)
        if divisor.shape != dims:
            raise ValueError(f"divisor has shape {divisor.shape}, frames {dims}. Fix: give one "
                             f"value per pixel of a frame.")
    ds_dims = tuple(-(-d // f) for d, f in zip(dims, ssub))
    out = np.empty((-(-T // tsub),) + ds_dims, dtype=np.float32)
    frames = tsub * max(1, _BLOCK_ELEMENTS // (tsub * math.prod(dims)))
    factors = (tsub,) + tuple(ssub)
    for t0 in range(0, T, frames):
        block = np.asarray(Y[t0:t0 + frames], dtype=np.float32)
        if divisor is not None:
            block = block / divisor
        block = _block_mean(block, factors)
        out[t0 // tsub:t0 // tsub + block.shape[0]] = block
    return out


def _block_mean(x: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Means over blocks of ``factors[i]`` along axis i (last block may be partial), float32."""
    x = np.asarray(x, dtype=np.float32)
    for axis, s in enumerate(factors):
        n = x.shape[axis]
        if s == 1 or n == 1:
            continue
        full = (n // s) * s
        parts = []
        if full:
            head = x[(slice(None),) * axis + (slice(0, full),)]
            blocks = head.reshape(x.shape[:axis] + (full // s, s) + x.shape[axis + 1:])
            # the block's members added one slice at a time: the same sums as a mean over
            # that short strided axis, 2-3× faster
            acc = blocks[(slice(None),) * (axis + 1) + (0,)].copy()
            for j in range(1, s):
                acc += blocks[(slice(None),) * (axis + 1) + (j,)]
            acc /= np.float32(s)
            parts.append(acc)
        if full < n:
            tail = x[(slice(None),) * axis + (slice(full, n),)]
            parts.append(tail.mean(axis=axis, keepdims=True, dtype=np.float32))
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
    return x


def _interpolation_matrix(n_fine: int, factor: int) -> sp.csr_matrix:
    """``n_fine × ceil(n_fine / factor)`` linear interpolation from block centres to pixels."""
    starts = np.arange(0, n_fine, factor)
    centres = (starts + np.minimum(starts + factor, n_fine) - 1) / 2.0
    n_coarse = centres.size
    x = np.arange(n_fine, dtype=np.float64)
    if n_coarse == 1:
        return sp.csr_matrix(np.ones((n_fine, 1)))
    j = np.clip(np.searchsorted(centres, x, side="right") - 1, 0, n_coarse - 2)
    w = np.clip((x - centres[j]) / (centres[j + 1] - centres[j]), 0.0, 1.0)
    rows = np.r_[np.arange(n_fine), np.arange(n_fine)]
    cols = np.r_[j, j + 1]
    vals = np.r_[1.0 - w, w]
    M = sp.csr_matrix((vals, (rows, cols)), shape=(n_fine, n_coarse))
    M.eliminate_zeros()
    return M


def _spatial_interpolation(dims: tuple[int, ...], ssub: tuple[int, ...]) -> sp.csr_matrix:
    """``pixels × pixels_ds`` interpolation matrix, C order, separable (Kronecker product)."""
    M = sp.csr_matrix(np.ones((1, 1)))
    for d, f in zip(dims, ssub):
        M = sp.kron(M, _interpolation_matrix(d, f), format="csr")
    return M


def upsample(init: Initialization, dims: Sequence[int], n_frames: int, ssub: int | Sequence[int] = 1,
             tsub: int = 1) -> Initialization:
    """Bring an initialisation found on a :func:`downsample`-d movie back to full resolution.

    Footprints and background images are linearly interpolated from block centres to every
    pixel (separable; values beyond the outer centres are held), traces from block centres to
    every frame. A block mean of a footprint equals its value at the block centre, so the
    scale of ``A·C`` is kept; columns are then renormalised to unit L2 norm.

    Args:
        init: initialisation on the downsampled grid.
        dims: full frame shape.
        n_frames: full number of frames.
        ssub, tsub: the factors used by :func:`downsample` (``ssub``: one, or one per axis).
    """
    dims = tuple(int(d) for d in dims)
    ssub, tsub = _spatial_factors(ssub, len(dims)), _check_count(tsub, "tsub")
    n_frames = _check_count(n_frames, "n_frames")
    ds_dims = tuple(-(-d // f) for d, f in zip(dims, ssub))
    ds_T = -(-n_frames // tsub)
    if init.A.shape[0] != math.prod(ds_dims) or init.C.shape[1:] not in ((ds_T,), ()) \
            or init.f.shape[1:] not in ((ds_T,), ()):
        raise ValueError(f"the initialisation (A {init.A.shape}, C {init.C.shape}) is not on the "
                         f"grid of {dims} × {n_frames} frames downsampled by ssub={ssub if len(set(ssub)) > 1 else ssub[0]}, "
                         f"tsub={tsub} ({ds_dims} × {ds_T}). Fix: pass the factors used.")
    A, b = init.A, init.b
    if max(ssub) > 1:
        S = _spatial_interpolation(dims, ssub)
        A = sp.csc_matrix(S @ A)
        b = np.asarray(S @ b)
    C, f = init.C, init.f
    if tsub > 1:
        Tm = _interpolation_matrix(n_frames, tsub)
        C = np.asarray(Tm @ C.T).T
        f = np.asarray(Tm @ f.T).T
    A, C = _normalize_columns(sp.csc_matrix(A, dtype=np.float32), C)
    if b.shape[1]:
        b, f = _normalize_columns(b, f)
    A = sp.csc_matrix(A, dtype=np.float32)
    A.eliminate_zeros()
    return Initialization(A=A, C=np.ascontiguousarray(C, dtype=np.float32),
                          b=np.ascontiguousarray(b, dtype=np.float32),
                          f=np.ascontiguousarray(f, dtype=np.float32),
                          center=_centers_of_mass(A, dims), method=init.method, dims=dims)


# ----------------------------------------------------------------------------- registry


InitMethod = Callable[..., Initialization]
"""``fn(Y, params, *, ssub, tsub) -> Initialization``: ``Y`` is the normalised, downsampled
movie ``T × *dims`` and ``ssub`` (one factor per spatial axis) / ``tsub`` the factors used (to
rescale sizes and windows)."""


@dataclass(frozen=True)
class _Registered:
    fn: InitMethod
    refine: bool


_REGISTRY: dict[str, _Registered] = {}

# methods that exist in the parameters but are not run by initialize(): why, and what to do
_NOT_HERE = {
    "seeded": "seeded initialisation starts from given masks. Fix: pass them to "
              "somascope.cnmf.fit(..., seed_masks=masks)",
}


def register_method(name: str, fn: InitMethod, *, refine: bool = True) -> None:
    """Make ``fn`` available to :func:`initialize` as ``params.init.method = name``.

    Args:
        name: method name (one of ``somascope.params.INIT_METHODS``).
        fn: ``fn(Y, params, *, ssub, tsub) -> Initialization`` on the normalised, downsampled
            movie (see :data:`InitMethod`).
        refine: run ``params.init.maxIter`` HALS passes on its result (global background
            models); False for methods with their own background (the CNMF-E ring model).
    """
    if not callable(fn):
        raise TypeError(f"the method registered as {name!r} must be callable, got "
                        f"{type(fn).__name__}.")
    _REGISTRY[str(name)] = _Registered(fn, bool(refine))


def available_methods() -> tuple[str, ...]:
    """Names :func:`initialize` can run now."""
    return tuple(sorted(_REGISTRY))


def _noise_image(Y: np.ndarray) -> np.ndarray | None:
    """Noise standard deviation of each pixel of ``Y`` (``T × *dims``), floored at 1 % of the
    median; None when the median is 0 (no noise to equalise)."""
    from somascope.deconvolution.noise import estimate_noise_columns

    if Y.shape[0] < 8:  # too short for a spectrum: the temporal standard deviation
        sn = Y.std(axis=0, dtype=np.float64).ravel()
    else:
        sn = estimate_noise_columns(Y.reshape(Y.shape[0], -1))
    floor = 0.01 * float(np.median(sn))
    if not floor > 0:
        return None
    return np.maximum(sn, floor).reshape(Y.shape[1:]).astype(np.float32)


def _unnormalize(init: Initialization, scale: np.ndarray) -> Initialization:
    """Footprints and background of a movie divided by ``scale`` (pixels) → of the movie."""
    A, C = _normalize_columns(sp.csc_matrix(sp.diags(scale.astype(np.float64)) @ init.A), init.C)
    b, f = init.b, init.f
    if init.nb:
        b, f = _normalize_columns(b * scale[:, None], f)
    A = sp.csc_matrix(A, dtype=np.float32)
    return Initialization(A=A, C=np.asarray(C, dtype=np.float32), b=np.asarray(b, dtype=np.float32),
                          f=np.asarray(f, dtype=np.float32),
                          center=_centers_of_mass(A, init.dims), method=init.method,
                          dims=init.dims)


def _scaled_sizes(params: Params, ssub: tuple[int, ...]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``gSig``, ``gSiz`` of the neuron on a grid downsampled ``ssub`` times (per axis)."""
    gsig = tuple(g / f for g, f in zip(params.init.gSig, ssub))
    gsiz = tuple(2 * max(1, math.ceil((s // 2) / f)) + 1 for s, f in zip(params.init.gSiz, ssub))
    return gsig, gsiz


def _run_greedy(Y: np.ndarray, params: Params, *, ssub: tuple[int, ...], tsub: int,
                rolling: bool) -> Initialization:
    gsig, gsiz = _scaled_sizes(params, ssub)
    length = max(1, round(params.init.rolling_length / tsub)) if rolling else None
    return greedy_roi(Y, params.init.K, gsig, gsiz, nb=params.init.nb, nIter=params.init.nIter,
                      rolling_length=length, surround=SURROUND)


def _run_greedy_roi(Y: np.ndarray, params: Params, *, ssub: tuple[int, ...], tsub: int) -> Initialization:
    return _run_greedy(Y, params, ssub=ssub, tsub=tsub, rolling=False)


def _run_rolling_greedy_roi(Y: np.ndarray, params: Params, *, ssub: tuple[int, ...],
                            tsub: int) -> Initialization:
    return _run_greedy(Y, params, ssub=ssub, tsub=tsub, rolling=True)


def _run_sparse_nmf(Y: np.ndarray, params: Params, *, ssub: tuple[int, ...], tsub: int) -> Initialization:
    sig = params.init.sigma_smooth_snmf
    sig = (sig[0] / tsub,) + tuple(s / f for s, f in zip(sig[1:], ssub))
    gsig, _ = _scaled_sizes(params, ssub)
    return sparse_nmf(Y, params.init.K, nb=params.init.nb, alpha=params.init.alpha_snmf,
                      max_iter=params.init.max_iter_snmf, sigma_smooth=sig,
                      perc_baseline=params.init.perc_baseline_snmf,
                      surround=None if not SURROUND else tuple(SURROUND * g for g in gsig))


def _run_greedy_corr(Y: np.ndarray, params: Params, *, ssub: tuple[int, ...], tsub: int) -> Initialization:
    from .greedy_corr import greedy_corr

    gsig, gsiz = _scaled_sizes(params, ssub)
    return greedy_corr(Y, gsig, gsiz, min_corr=params.init.min_corr, min_pnr=params.init.min_pnr,
                       K=params.init.K, nb=params.init.nb)


register_method("greedy_roi", _run_greedy_roi)
register_method("greedy_corr", _run_greedy_corr)
register_method("rolling_greedy_roi", _run_rolling_greedy_roi)
register_method("sparse_nmf", _run_sparse_nmf)


# ----------------------------------------------------------------------------- entry point


def initialize(Y: np.ndarray, params: Params, *, method: str | None = None,
               n_frames: int | None = None) -> Initialization:
    """Initial ``A, C, b, f`` of CNMF for a movie (or a patch of one), as the parameters say.

    Steps (``params.init``):

    1. block-mean downsample by ``ssub`` px and ``tsub`` frames (:func:`downsample`; sizes,
       windows and smoothing are rescaled to the coarse grid; factors larger than the data
       are reduced);
    2. with ``normalize_init``, divide each pixel by its noise standard deviation, so that
       every pixel has unit noise (undone at the end). CaImAn divides by the mean image plus
       its median instead; on simulated two-photon movies (shot noise) that lowers the F1 of
       sparse NMF from 0.94 to 0.82 and leaves GreedyROI's unchanged, so the noise level is
       used here, as the parameter's documentation says;
    3. run ``method`` (default ``params.init.method``) from the registry;
    4. refine with ``maxIter`` HALS passes (:func:`hals`), each footprint held within one
       coarse pixel of its support; the background is free; with ``nb ≤ 0`` the pixel medians
       stand in for it;
    5. interpolate back to the full grid (:func:`upsample`).

    Args:
        Y: movie or patch ``T × *dims`` (2 or 3 spatial axes, as ``params.ndim``); not
            modified.
        params: :class:`somascope.params.Params`; uses the ``init`` group.
        method: overrides ``params.init.method``.
        n_frames: when given, ``Y`` is a movie of ``n_frames`` frames already block-averaged
            over ``params.init.tsub`` frames (``ceil(n_frames / tsub)`` rows, e.g. read from
            a Store chunk by chunk without holding the full-rate movie): step 1 only
            downsamples space and the traces come back with ``n_frames`` frames.

    Returns:
        :class:`Initialization` on the full grid (``dims`` of ``Y``, ``T`` frames, or
        ``n_frames`` frames).

    Raises:
        ParameterError: unknown method, ``seeded`` (needs masks), ``K`` missing or larger than the (downsampled) number of pixels, or
            parameters with a different number of spatial axes than ``Y``.
    """
    from somascope.params import Params as _Params

    if not isinstance(params, _Params):
        raise TypeError(f"params must be a somascope.params.Params, got {type(params).__name__}. "
                        f"Fix: build one with Params.from_neuron(radius_px, fr=...) or "
                        f"Params.from_dict(...).")
    name = params.init.method if method is None else method
    if name in _NOT_HERE and name not in _REGISTRY:
        raise ParameterError(f"init.method={name!r}: {_NOT_HERE[name]}.")
    if name not in _REGISTRY:
        raise ParameterError(f"init.method={name!r} is not a known initialisation method. "
                             f"Fix: use one of {', '.join(map(repr, available_methods()))}.")
    if params.init.K is None and name in ("greedy_roi", "rolling_greedy_roi", "sparse_nmf"):
        raise ParameterError(f"init.K=None: method {name!r} needs the number of components. "
                             f"Fix: set init.K.")
    Y = _check_movie(Y, ndim=params.ndim)
    T, dims = Y.shape[0], tuple(Y.shape[1:])
    ssub = _init_factors(params.init.ssub, dims)
    if n_frames is None:
        tsub = max(1, min(params.init.tsub, T // 2))
        binned = tsub
    else:  # Y is already binned over tsub frames
        T, tsub, binned = int(n_frames), _check_count(params.init.tsub, "init.tsub"), 1
        if Y.shape[0] != -(-T // tsub):
            raise ValueError(f"a movie of {n_frames} frames binned over init.tsub={tsub} frames has "
                             f"{-(-T // tsub)} rows, got {Y.shape[0]}. Fix: pass the n_frames and "
                             "tsub the movie was binned with.")

    Yds = _downsample(Y, ssub, binned, None) if (max(ssub) > 1 or binned > 1) \
        else np.asarray(Y, dtype=np.float32)
    scale = None
    if params.init.normalize_init:
        scale = _noise_image(Yds)
        if scale is None:
            log.warning("normalize_init skipped: the movie has no measurable noise")
        else:
            Yds = Yds / scale[None]  # a new array: the input is never modified

    entry = _REGISTRY[name]
    init = entry.fn(Yds, params, ssub=ssub, tsub=tsub)
    if entry.refine and params.init.maxIter > 0 and init.K > 0:
        offset = None
        if init.nb == 0:
            offset = np.median(_pixels_by_time(Yds), axis=1)
        init = hals(Yds, init, n_iter=params.init.maxIter, offset=offset)
    del Yds
    if scale is not None:
        init = _unnormalize(init, scale.ravel())
    if max(ssub) > 1 or tsub > 1:
        init = upsample(init, dims, T, ssub, tsub)
    log.info("initialisation %s: %d components, %d background", name, init.K, init.nb)
    return init
