"""Temporal update of CNMF: traces ``C`` (deconvolved with OASIS) and background ``f``.

Given footprints ``A`` (pixels × K) and background ``b`` (pixels × nb), the traces solve
``Y ≈ A·C + b·f`` by block-coordinate descent (CaImAn's ``update_temporal_components``).
With ``Ab = [A, b]``, ``X = [C; f]`` and ``AA = AbᵀAb``, the *raw trace* of component ``i``
given all the others is

    raw_i = X_i + (AbᵀY − AA·X)_i / AA_ii,

the least-squares amplitude of the data left after removing every other component,
projected on footprint ``i``. Components whose footprints do not overlap are independent,
so they are updated together: the components are split into groups of spatially
non-overlapping footprints (a greedy colouring of the overlap graph), and each pass visits
the background rows (each kept non-negative) and then every group, deconvolving the raw
traces of a group at once with :func:`somascope.deconvolution.deconvolve_traces` (OASIS,
AR order ``deconvolution.p``; noise and time constants estimated per trace on the first
pass and held for the following ones). ``temporal.ITER`` passes are made.

The movie is read once, ``temporal.block_size_temp`` pixels at a time, to form ``AbᵀY``
(``(K + nb) × T``); nothing of size pixels × T is formed. The residual traces
``YrA = raw − C`` (the part of the raw trace the model leaves out, including each trace's
baseline) are returned with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["TemporalUpdate", "project_movie", "update_order", "update_temporal"]

#: Traces per group above which deconvolution goes to the engine (if one is given).
ENGINE_MIN_TRACES = 256
#: Trace values (rows × frames) of the residuals' float64 products formed at a time (16 MiB).
_ROW_ELEMENTS = 2 * 2**20


@dataclass(frozen=True)
class TemporalUpdate:
    """Result of :func:`update_temporal` (``K`` components, ``nb`` background, ``T`` frames).

    Attributes
    ----------
    C, S, YrA : ndarray, K × T, float32
        Denoised calcium (baseline removed), deconvolved activity, residual traces
        (raw trace = ``C + YrA``; the baseline ``bl`` is in ``YrA``).
    f : ndarray, nb × T, float32
        Background traces (non-negative).
    bl, c1, neurons_sn, lam : ndarray, (K,), float64
        Baseline, initial calcium, noise level and sparsity penalty of each trace.
    g : ndarray, K × p, float64
        AR coefficients (``p = deconvolution.p``; ``K × 0`` for p = 0).
    """

    C: np.ndarray
    S: np.ndarray
    YrA: np.ndarray
    f: np.ndarray
    bl: np.ndarray
    c1: np.ndarray
    neurons_sn: np.ndarray
    lam: np.ndarray
    g: np.ndarray


def update_temporal(
    Y: np.ndarray,
    A: Any,
    b: np.ndarray,
    C: np.ndarray,
    f: np.ndarray,
    params: Any = None,
    *,
    g: np.ndarray | None = None,
    engine: Any = None,
) -> TemporalUpdate:
    """Update the traces of CNMF given the footprints.

    Parameters
    ----------
    Y
        Movie ``T × *dims``; read ``temporal.block_size_temp`` pixels at a time. Or a
        :class:`somascope.cnmf.blocked.BlockedMovie` (a Store read by spatial blocks in
        parallel on an engine, out of core).
    A
        Footprints ``pixels × K`` (sparse or dense); every column must be non-zero.
    b
        Background footprints ``pixels × nb`` (``nb`` may be 0).
    C
        Current traces ``K × T`` (starting point of the block-coordinate descent).
    f
        Current background traces ``nb × T``.
    params
        :class:`somascope.params.Params`: ``temporal.ITER`` passes, ``temporal.block_size_temp``,
        and the ``deconvolution`` group (AR order ``p``, noise band, ``s_min``, …).
    g
        AR coefficients ``K × p`` to use instead of estimating them.
    engine
        Optional :class:`somascope.parallel.Engine` for deconvolving large groups.

    Returns
    -------
    TemporalUpdate
    """
    from somascope.deconvolution import deconvolve_traces
    from somascope.params import Params

    params = Params() if params is None else params
    Y2 = _frames(Y)
    T, P = int(Y2.shape[0]), int(np.prod(Y2.shape[1:]))
    A = sp.csc_matrix(A) if sp.issparse(A) else sp.csc_matrix(np.asarray(A))
    if A.shape[0] != P:
        raise ValueError(f"A must be pixels × K with {P} pixels, got shape {A.shape}.")
    K = A.shape[1]
    b = np.asarray(b, dtype=np.float64).reshape(P, -1) if np.size(b) else np.zeros((P, 0))
    nb = b.shape[1]
    C = np.asarray(C)
    f = np.asarray(f).reshape(nb, T) if nb else np.zeros((0, T))
    if C.shape != (K, T):
        raise ValueError(f"C must be K × T = ({K}, {T}), got shape {C.shape}.")
    p = params.deconvolution.p
    if g is not None:
        g = np.asarray(g, dtype=np.float64).reshape(K, -1)
        if g.shape[1] != p:
            raise ValueError(f"g has {g.shape[1]} AR coefficients per trace but deconvolution.p={p}.")

    Ab = sp.hstack([A.astype(np.float64), sp.csc_matrix(b)], format="csc")
    AA = sp.csc_matrix(Ab.T @ Ab)
    diag = AA.diagonal().copy()
    if np.any(diag[:K] <= 0):
        bad = np.flatnonzero(diag[:K] <= 0)
        raise ValueError(f"components {bad.tolist()} have empty footprints; drop them before "
                         "the temporal update.")
    diag[diag <= 0] = 1.0
    # the traces X = [C; f] and residuals R are the update's only (K + nb) × T arrays: float32,
    # built in place (a long recording's traces are hundreds of MB each); the sums that form
    # them run in float64
    X = np.empty((K + nb, T), np.float32)
    X[:K], X[K:] = C, f
    # R = raw − X for every row, kept up to date as rows change.
    R = project_movie(Y2, Ab, params.temporal.block_size_temp, dtype=np.float32)
    AAr = sp.csr_matrix(AA)
    rows = max(1, _ROW_ELEMENTS // max(T, 1))
    for r0 in range(0, K + nb, rows):
        r1 = min(K + nb, r0 + rows)
        part = AAr[r0:r1] @ X
        R[r0:r1] -= part
        R[r0:r1] /= diag[r0:r1, None]
    out = _Outputs.empty(K, T, p)
    groups = update_order(A)
    g_fixed = g
    for it in range(params.temporal.ITER):
        for j in range(nb):  # background rows: non-negative least squares, one at a time
            row = K + j
            new = np.maximum(R[row] + X[row], 0.0)
            _apply(R, X, AA, diag, np.array([row]), new[None, :])
        for group in groups:
            raw = R[group] + X[group]
            dec = deconvolve_traces(
                raw, g=None if g_fixed is None else g_fixed[group], params=params.deconvolution,
                engine=engine if (engine is not None and group.size >= ENGINE_MIN_TRACES) else None,
            )
            out.store(group, dec)
            _apply(R, X, AA, diag, group, dec.C)
        if g_fixed is None and p > 0:
            g_fixed = out.g.copy()  # time constants from the first pass are kept

    return TemporalUpdate(
        C=X[:K], S=out.S, YrA=R[:K], f=X[K:], bl=out.bl, c1=out.c1, neurons_sn=out.sn, lam=out.lam,
        g=out.g,
    )


def project_movie(Y: np.ndarray, A: Any, block: int = 5000, *, dtype: Any = np.float64) -> np.ndarray:
    """``Aᵀ·Y`` as ``K × T`` (``dtype``, float64 by default): every footprint's weighted sum of
    each frame.

    ``Y`` is ``T × *dims`` or ``T × pixels``; it is read ``block`` pixels at a time and each
    slab is multiplied with the footprints that touch it (:func:`project_slab`).
    """
    if hasattr(Y, "project"):  # a BlockedMovie: blocks read in parallel, out of core
        return Y.project(A, dtype=dtype)
    Y2 = _frames(Y) if np.ndim(Y) > 2 else np.asarray(Y)
    T, P = Y2.shape
    A = sp.csr_matrix(A, dtype=np.float64)
    out = np.zeros((A.shape[1], T), dtype)
    block = max(1, int(block))
    for p0 in range(0, P, block):
        p1 = min(P, p0 + block)
        slab = np.asarray(Y2[:, p0:p1], dtype=np.float32)  # a view of an in-memory float32 movie
        cols, part = project_slab([(0, T, slab)], A[p0:p1], T)
        out[cols] += part
    return out


def project_slab(chunks: Any, A_slab: Any, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``A_slabᵀ·Y_slab`` for the footprints that touch a slab of pixels.

    ``chunks`` yields ``(t0, t1, Y)`` with ``Y`` the slab's frames ``t0:t1`` as ``frames ×
    n`` float32; ``A_slab`` is the footprints' rows of those ``n`` pixels (``n × K``).
    Returns ``(cols, m × n_frames float64)`` for the ``m`` footprints with a non-zero in the
    slab. Each chunk is one float32 matrix product (BLAS) with the slab's footprints made
    dense: the sums run over pixels of one frame, so float32 keeps ~1e-6 relative precision,
    far below the movie's own noise.
    """
    A_slab = sp.csc_matrix(A_slab)
    cols = np.flatnonzero(np.diff(A_slab.indptr) > 0)
    out_t = np.zeros((n_frames, cols.size))
    if cols.size:
        dense = A_slab[:, cols].toarray().astype(np.float32)
        rows = np.flatnonzero(dense.any(axis=1))
        every = rows.size == dense.shape[0]
        dense = dense if every else dense[rows]
        for t0, t1, Y in chunks:
            # pixels outside every footprint are left out: a NaN there (a motion border) must
            # not reach the sums, as 0 × NaN would
            out_t[t0:t1] = (Y if every else Y[:, rows]) @ dense
    return cols, np.ascontiguousarray(out_t.T)


def update_order(A: Any) -> list[np.ndarray]:
    """Groups of components whose footprints do not overlap (greedy graph colouring).

    Components are taken in order and each joins the first group holding none of its
    neighbours in the overlap graph ``AᵀA > 0``. Returns a list of int64 index arrays that
    together hold every component once.
    """
    A = sp.csc_matrix(A)
    K = A.shape[1]
    if K == 0:
        return []
    mask = A.copy()
    mask.data = np.ones_like(mask.data, dtype=np.float64)
    overlap = sp.csr_matrix(mask.T @ mask)
    colour = np.full(K, -1, np.int64)
    for k in range(K):
        neigh = overlap.indices[overlap.indptr[k]:overlap.indptr[k + 1]]
        used = set(colour[neigh][colour[neigh] >= 0].tolist())
        c = 0
        while c in used:
            c += 1
        colour[k] = c
    return [np.flatnonzero(colour == c).astype(np.int64) for c in range(colour.max() + 1)]


# ------------------------------------------------------------------------------------------
# helpers


@dataclass
class _Outputs:
    S: np.ndarray
    bl: np.ndarray
    c1: np.ndarray
    sn: np.ndarray
    lam: np.ndarray
    g: np.ndarray

    @classmethod
    def empty(cls, K: int, T: int, p: int) -> _Outputs:
        return cls(S=np.zeros((K, T), np.float32), bl=np.zeros(K), c1=np.zeros(K),
                   sn=np.zeros(K), lam=np.zeros(K), g=np.zeros((K, p)))

    def store(self, group: np.ndarray, dec: Any) -> None:
        self.S[group] = dec.S
        self.bl[group] = dec.b
        self.c1[group] = dec.c1
        self.sn[group] = dec.sn
        self.lam[group] = dec.lam
        if dec.g.shape[1] == self.g.shape[1]:
            self.g[group] = dec.g


def _apply(R: np.ndarray, X: np.ndarray, AA: sp.csc_matrix, diag: np.ndarray, rows: np.ndarray,
           new: np.ndarray) -> None:
    """Set ``X[rows] = new`` and update the residual traces of the rows they overlap (in place;
    the change is formed in float64)."""
    delta = np.asarray(new, dtype=np.float64) - X[rows]
    X[rows] = new
    cols = sp.csr_matrix(AA[:, rows])
    touched = np.flatnonzero(np.diff(cols.indptr) > 0)
    step = max(1, _ROW_ELEMENTS // max(X.shape[1], 1))
    for k0 in range(0, touched.size, step):  # a few rows' float64 products at a time
        part = touched[k0:k0 + step]
        R[part] -= (cols[part] @ delta) / diag[part, None]


def _frames(Y: Any) -> Any:
    if hasattr(Y, "project"):  # somascope.cnmf.blocked.BlockedMovie (out of core)
        return Y
    arr = np.asarray(Y)
    if arr.ndim not in (3, 4):
        raise ValueError(f"Y must be a movie T × H × W (or T × Z × H × W), got shape {arr.shape}.")
    return arr.reshape(arr.shape[0], -1)
