"""Spatial update of CNMF: footprints ``A`` and background ``b`` given the traces ``C`` and ``f``.

For each pixel ``p`` the data ``y_p`` (``T`` values) is regressed on the traces of the
components whose *search region* contains ``p`` and on the background traces ``f``:

    minimise over a_p >= 0, b_p >= 0, m_p:   ½‖y_p − a_pᵀC_p − b_pᵀf − m_p‖² + Σ_k λ_pk·a_pk

which is CaImAn's per-pixel basis-pursuit denoising (``method_ls="lasso_lars"``, penalty
``λ_pk = ½·sn_p·‖c_k‖``, the same as normalising every trace to unit energy and penalising
with ``½·sn_p``; with ``normalize_yyt_one=False`` it is ``½·sn_p·max_k ‖c_k‖``), or a
non-negative least squares fit pruned under the noise constraint ``‖y_p − …‖² <= 1.2·sn_p²·T``
(``method_ls="nnls_L0"``). The background is never penalised. Every pixel has a free
constant ``m_p`` (an intercept, as scikit-learn's LassoLars in CaImAn fits one): footprints
and background are fitted to the *fluctuations* of the data, so a constant brightness (the
resting fluorescence of a cell) is not mistaken for background and multiplied by the
background's fluctuations. The constant is not part of the model's output: it ends up in
the baselines of the traces and in the residual.

The problem only needs the sufficient statistics ``U = Y·[C; f]ᵀ`` on the search regions,
``V = [C; f]·[C; f]ᵀ`` and the pixel means: the movie is read once, frame by frame within
blocks of ``spatial.block_size_spat`` pixels, and no ``pixels × T`` product (``A·C``,
``b·f``, residual) is ever formed. Each pixel's small problem is solved exactly by an
active-set (Lawson–Hanson) method on its Gram matrix, in a Numba kernel.

The new footprints are then cleaned up as in CaImAn: optional median filter (``medw``),
thresholding (``thr_method="nrg"``: keep the largest pixels holding ``nrgthr`` of the energy;
``"max"``: drop pixels below ``maxthr`` × maximum), morphological closing of the support and,
with ``extract_cc``, only the connected piece with the most energy is kept. Pixels and
background are then refitted on the cleaned supports, and components left empty are dropped.

Search regions (``method_exp``): ``"dilate"`` grows each footprint's support by a city-block
ball of radius 2 px (CaImAn's ``expandCore``); ``"ellipse"`` takes the ellipsoid of the
footprint's spatial covariance (axes clipped to [0.6, 1.6] × ``init.gSig``) scaled by ``dist``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["SpatialUpdate", "search_regions", "threshold_footprints", "update_spatial"]

#: Radius (px, city-block) by which ``method_exp="dilate"`` grows a footprint's support.
DILATE_RADIUS = 2
#: Bounds of the ellipse axes of ``method_exp="ellipse"`` in units of ``init.gSig``.
ELLIPSE_AXES = (0.6, 1.6)
#: Relative noise budget of ``method_ls="nnls_L0"``: ‖residual‖² <= NNLS_L0_NOISE · sn² · T.
NNLS_L0_NOISE = 1.2
#: Trace values (rows × frames) summed at a time in float64 for the traces' Gram matrix (16 MiB).
_GRAM_ELEMENTS = 2 * 2**20


@dataclass(frozen=True)
class SpatialUpdate:
    """Result of :func:`update_spatial`.

    Attributes
    ----------
    A : csc_matrix, pixels × K_kept, float32
        New footprints of the components that are not empty (same scale as the input traces:
        ``A·C`` is in movie units).
    b : ndarray, pixels × nb, float32
        New (or unchanged, with ``update_background_components=False``) spatial background.
    kept : ndarray of int64, (K_kept,)
        Indices (into the input components) of the columns of ``A``; the others came out empty
        and must be dropped from ``C`` and every other per-component array.
    """

    A: sp.csc_matrix
    b: np.ndarray
    kept: np.ndarray


# ------------------------------------------------------------------------------------------
# public functions


def update_spatial(
    Y: np.ndarray,
    A: Any,
    C: np.ndarray,
    f: np.ndarray,
    sn: np.ndarray,
    params: Any = None,
    *,
    b: np.ndarray | None = None,
    support: Any = None,
) -> SpatialUpdate:
    """Update the footprints (and background) of CNMF given the traces.

    Parameters
    ----------
    Y
        Movie ``T × *dims`` (2-D or 3-D frames), any real dtype; read in blocks of
        ``spatial.block_size_spat`` pixels, never copied whole. Or a
        :class:`somascope.cnmf.blocked.BlockedMovie`: a Store read by spatial blocks in
        parallel on an engine (out of core).
    A
        Current footprints ``pixels × K`` (sparse or dense; pixels in C order of ``dims``);
        they define the search regions.
    C
        Traces ``K × T`` (without baseline).
    f
        Background traces ``nb × T`` (``nb`` may be 0).
    sn
        Noise standard deviation of every pixel, ``(pixels,)``, in movie units.
    params
        :class:`somascope.params.Params` (its ``spatial`` group and ``init.gSig``); None: defaults.
    b
        Current spatial background ``pixels × nb``; required when
        ``spatial.update_background_components`` is False (it is then held fixed), else
        unused (the per-pixel problems are solved exactly and need no starting point).
    support
        Boolean ``pixels × K`` search regions to use instead of growing them from ``A``.

    Returns
    -------
    SpatialUpdate
    """
    from somascope.params import Params

    params = Params() if params is None else params
    sp_par = params.spatial
    Y2, dims = _as_frames(Y)
    T, P = int(Y2.shape[0]), int(np.prod(dims))
    A = _as_csc(A, P, "A")
    K = A.shape[1]
    C = _as_traces(C, K, T, "C")
    f = _as_traces(f, None, T, "f")
    nb = f.shape[0]
    sn = np.asarray(sn, dtype=np.float64).ravel()
    if sn.shape != (P,) or not np.all(np.isfinite(sn)) or np.any(sn < 0):
        raise ValueError(f"sn must hold one finite, non-negative noise level per pixel ({P}), "
                         f"got shape {np.shape(sn)}; estimate it with fit's pixel noise step.")
    b_in = None if b is None else _as_background(b, P, nb)
    update_bg = bool(sp_par.update_background_components)
    if not update_bg and b_in is None and nb > 0:
        raise ValueError("spatial.update_background_components=False holds the background fixed, "
                         "so pass its current value b (pixels × nb).")
    if K == 0:
        return SpatialUpdate(A=sp.csc_matrix((P, 0), dtype=np.float32),
                             b=_empty_background(P, nb) if b_in is None else b_in.astype(np.float32),
                             kept=np.zeros(0, np.int64))

    if support is None:
        region = search_regions(A, dims, method=sp_par.method_exp, dist=sp_par.dist,
                                gSig=params.init.gSig)
    else:
        region = _as_csc(support, P, "support").astype(bool)
        if region.shape[1] != K:
            raise ValueError(f"support has {region.shape[1]} columns but A has K={K} components.")

    # one float32 (K [+ nb]) × T copy of the traces (hundreds of MB for a long recording); the
    # products with the movie are float32 already, the sums below run in float64
    Cf = np.empty((K + (nb if update_bg else 0), T), np.float32)
    Cf[:K] = C
    if update_bg:
        Cf[K:] = f
    # Every pixel also gets a free constant (an intercept): the statistics are centred in time.
    mean_cf, V = _centred_gram(Cf)
    C32 = Cf[:K]  # a view
    energy = np.sqrt([np.dot(row - m, row - m) for row, m in zip(C32, mean_cf[:K])])  # a row at a time
    weight = energy if sp_par.normalize_yyt_one else np.full(K, energy.max(initial=0.0))
    nnls_l0 = sp_par.method_ls == "nnls_L0"

    system = _PixelSystem.build(region, nb if update_bg else 0)
    U, yy, ymean = _sufficient_statistics(Y2, Cf, system,
                                          sp_par.block_size_spat, need_yy=nnls_l0)
    rows = system.rows
    U -= T * ymean[rows] * mean_cf[system.comp]
    if not update_bg and nb:
        # fixed background: remove b·f from the data, i.e. b_p·(f·Cᵀ) from U (centred)
        f64 = np.asarray(f, dtype=np.float64)
        cross = (f64 - f64.mean(axis=1, keepdims=True)) @ C32.T  # (nb, K); centring C adds nothing
        U -= np.einsum("ej,je->e", b_in[rows], cross[:, system.comp])
    if yy is not None:
        yy = yy - T * ymean**2
    pen = system.penalty(sn, weight, nnls_l0)
    x = system.solve(U, V, pen, sn, yy, T, nnls_l0)
    A_new, _ = system.split(x, K, P)

    A_clean = threshold_footprints(A_new, dims, thr_method=sp_par.thr_method, maxthr=sp_par.maxthr,
                                   nrgthr=sp_par.nrgthr, extract_cc=sp_par.extract_cc,
                                   medw=sp_par.medw)
    # Refit on the cleaned supports so that pixels dropped by the clean-up go to the
    # background (and the kept pixels are the exact solution on their support).
    final = _PixelSystem.build(A_clean != 0, nb if update_bg else 0)
    U2 = final.gather_from(system, U)
    x2 = final.solve(U2, V, final.penalty(sn, weight, nnls_l0), sn, yy, T, nnls_l0)
    A_fin, b_fin = final.split(x2, K, P)
    if not update_bg:
        b_fin = _empty_background(P, nb) if b_in is None else b_in.astype(np.float32)
    norms = np.sqrt(np.asarray(A_fin.multiply(A_fin).sum(axis=0)).ravel())
    kept = np.flatnonzero(norms > 0).astype(np.int64)
    A_out = sp.csc_matrix(A_fin[:, kept], dtype=np.float32)
    A_out.eliminate_zeros()
    return SpatialUpdate(A=A_out, b=b_fin, kept=kept)


def search_regions(
    A: Any,
    dims: tuple[int, ...],
    *,
    method: str = "dilate",
    dist: float = 3.0,
    gSig: tuple[float, ...] | None = None,
) -> sp.csc_matrix:
    """Boolean ``pixels × K`` search regions: where each footprint may grow in the update.

    Parameters
    ----------
    A
        Footprints ``pixels × K`` (pixels in C order of ``dims``).
    dims
        Frame shape ``(H, W)`` or ``(Z, H, W)``.
    method
        ``"dilate"``: the support grown by a city-block ball of radius :data:`DILATE_RADIUS`.
        ``"ellipse"``: the pixels within ``dist`` standard deviations of the footprint's
        centre along the axes of its spatial covariance, the axes clipped to
        :data:`ELLIPSE_AXES` × ``gSig`` (plus the support itself).
    dist
        Size of the ellipse in standard deviations (``method="ellipse"``).
    gSig
        Neuron size (px per axis) bounding the ellipse axes; default 5 px per axis.
    """
    from scipy import ndimage

    dims = tuple(int(d) for d in dims)
    P = math.prod(dims)
    A = _as_csc(A, P, "A")
    K = A.shape[1]
    if method not in ("dilate", "ellipse"):
        raise ValueError(f"method={method!r} is not a search-region method; use 'dilate' or 'ellipse'.")
    ndim = len(dims)
    if method == "dilate":
        ball = ndimage.iterate_structure(ndimage.generate_binary_structure(ndim, 1), DILATE_RADIUS)
        pad = DILATE_RADIUS
    else:
        sig = np.broadcast_to(np.asarray(gSig if gSig is not None else 5.0, dtype=float), (ndim,))
        lo, hi = ELLIPSE_AXES
        pad = int(math.ceil(dist * hi * sig.max())) + 1
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for k in range(K):
        start, end = A.indptr[k], A.indptr[k + 1]
        idx = A.indices[start:end][A.data[start:end] != 0]
        if idx.size == 0:
            continue
        coords = np.unravel_index(idx, dims)
        lo_c = [max(0, int(c.min()) - pad) for c in coords]
        hi_c = [min(d, int(c.max()) + pad + 1) for c, d in zip(coords, dims)]
        box = tuple(h - l for l, h in zip(lo_c, hi_c))
        local = tuple(c - l for c, l in zip(coords, lo_c))
        if method == "dilate":
            mask = np.zeros(box, bool)
            mask[local] = True
            mask = ndimage.binary_dilation(mask, structure=ball)
        else:
            w = A.data[start:end][A.data[start:end] != 0].astype(np.float64)
            w = np.abs(w)
            mask = _ellipse(local, w, box, sig, dist)
        pix = np.ravel_multi_index(tuple(g + l for g, l in zip(np.nonzero(mask), lo_c)), dims)
        rows.append(pix)
        cols.append(np.full(pix.size, k))
    if not rows:
        return sp.csc_matrix((P, K), dtype=bool)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    return sp.csc_matrix((np.ones(r.size, bool), (r, c)), shape=(P, K))


def threshold_footprints(
    A: Any,
    dims: tuple[int, ...],
    *,
    thr_method: str = "nrg",
    maxthr: float = 0.1,
    nrgthr: float = 0.9999,
    extract_cc: bool = True,
    medw: tuple[int, ...] | None = None,
) -> sp.csc_matrix:
    """Clean up footprints: median filter, threshold, closing, largest connected piece.

    Parameters
    ----------
    A
        Footprints ``pixels × K`` (non-negative).
    dims
        Frame shape.
    thr_method
        ``"nrg"``: keep the largest pixels that together hold a fraction ``nrgthr`` of the
        footprint's energy (sum of squares); ``"max"``: keep pixels above ``maxthr`` × max.
    extract_cc
        Keep only the connected piece (full connectivity, after a morphological closing of
        the support with a 3-px cube) with the most energy.
    medw
        Median-filter window (px per axis) applied first; None: no filtering.

    Returns
    -------
    csc_matrix, pixels × K, float32 — the same components, empty columns where nothing was left.
    """
    from scipy import ndimage

    dims = tuple(int(d) for d in dims)
    P = math.prod(dims)
    A = _as_csc(A, P, "A")
    K = A.shape[1]
    ndim = len(dims)
    if thr_method not in ("nrg", "max"):
        raise ValueError(f"thr_method={thr_method!r}: use 'nrg' or 'max'.")
    cube = np.ones((3,) * ndim, bool)
    margin = 2 + (0 if medw is None else max(int(m) for m in medw))
    rows, cols, vals = [], [], []
    for k in range(K):
        start, end = A.indptr[k], A.indptr[k + 1]
        idx = A.indices[start:end]
        val = A.data[start:end].astype(np.float64)
        keep = val > 0
        idx, val = idx[keep], val[keep]
        if idx.size == 0:
            continue
        coords = np.unravel_index(idx, dims)
        lo_c = [max(0, int(c.min()) - margin) for c in coords]
        hi_c = [min(d, int(c.max()) + margin + 1) for c, d in zip(coords, dims)]
        img = np.zeros(tuple(h - l for l, h in zip(lo_c, hi_c)))
        img[tuple(c - l for c, l in zip(coords, lo_c))] = val
        if medw is not None:
            img = ndimage.median_filter(img, size=tuple(int(m) for m in medw), mode="constant")
        if thr_method == "max":
            bw = img > maxthr * img.max()
        else:
            flat = np.sort(img[img > 0])[::-1]
            if flat.size == 0:
                continue
            cum = np.cumsum(flat**2)
            below = np.flatnonzero(cum < nrgthr * cum[-1])
            level = flat[below[-1]] if below.size else flat[0]
            bw = img >= level
        img = np.where(bw, img, 0.0)
        if not bw.any():
            continue
        if extract_cc:
            closed = ndimage.binary_closing(bw, structure=cube) | bw
            labels, n = ndimage.label(closed, structure=cube)
            if n > 1:
                piece_energy = ndimage.sum_labels(img**2, labels, index=np.arange(1, n + 1))
                img = np.where(labels == 1 + int(np.argmax(piece_energy)), img, 0.0)
        nz = np.nonzero(img)
        if nz[0].size == 0:
            continue
        pix = np.ravel_multi_index(tuple(g + l for g, l in zip(nz, lo_c)), dims)
        rows.append(pix)
        cols.append(np.full(pix.size, k))
        vals.append(img[nz])
    if not rows:
        return sp.csc_matrix((P, K), dtype=np.float32)
    out = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(P, K), dtype=np.float32)
    out.sort_indices()
    return out


# ------------------------------------------------------------------------------------------
# per-pixel systems


@dataclass
class _PixelSystem:
    """The per-pixel regression problems in CSR form.

    Row ``p`` lists the unknowns of pixel ``p``: the components whose region holds it, then
    (when the background is updated) the ``nb`` background components, numbered ``K..K+nb-1``.
    """

    indptr: np.ndarray  # (P + 1,) int64
    comp: np.ndarray  # (nnz,) int64, unknown index 0..K+nb-1
    n_comp: int  # K
    nb: int

    @classmethod
    def build(cls, region: Any, nb: int) -> _PixelSystem:
        region = sp.csr_matrix(region, dtype=bool)
        region.eliminate_zeros()
        region.sort_indices()
        P, K = region.shape
        counts = np.diff(region.indptr) + nb
        indptr = np.zeros(P + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        comp = np.empty(int(indptr[-1]), np.int64)
        own = np.repeat(np.arange(P), np.diff(region.indptr))
        pos_own = indptr[own] + (np.arange(region.indices.size) - region.indptr[own])
        comp[pos_own] = region.indices
        if nb:
            first_bg = indptr[1:] - nb
            for j in range(nb):
                comp[first_bg + j] = K + j
        return cls(indptr=indptr, comp=comp, n_comp=K, nb=nb)

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.indptr.size - 1), np.diff(self.indptr))

    def penalty(self, sn: np.ndarray, weight: np.ndarray, nnls_l0: bool) -> np.ndarray:
        """L1 weight of every unknown: ``½·sn_p·weight_k`` for components, 0 for background."""
        pen = np.zeros(self.comp.size)
        if nnls_l0:
            return pen
        is_comp = self.comp < self.n_comp
        pen[is_comp] = 0.5 * sn[self.rows[is_comp]] * weight[self.comp[is_comp]]
        return pen

    def gather_from(self, other: _PixelSystem, U_other: np.ndarray) -> np.ndarray:
        """Values of ``U`` on this pattern, taken from a superset pattern ``other``."""
        M = self.n_comp + self.nb
        key_other = other.rows * M + other.comp
        key = self.rows * M + self.comp
        pos = np.searchsorted(key_other, key)
        pos = np.minimum(pos, key_other.size - 1)
        if key.size and not np.array_equal(key_other[pos], key):
            raise AssertionError("cleaned support must lie inside the search regions")
        return U_other[pos]

    def solve(self, U: np.ndarray, V: np.ndarray, pen: np.ndarray,
              sn: np.ndarray, yy: np.ndarray | None, T: int, nnls_l0: bool) -> np.ndarray:
        kernels = _kernels()
        x = np.zeros(self.comp.size)
        kernels["nnls"](self.indptr, self.comp, U, pen, V, x)
        if nnls_l0:
            noise = NNLS_L0_NOISE * sn**2 * T
            kernels["l0"](self.indptr, self.comp, U, V, x, yy, noise, self.n_comp)
        return x

    def split(self, x: np.ndarray, K: int, P: int) -> tuple[sp.csc_matrix, np.ndarray]:
        rows = self.rows
        is_comp = self.comp < K
        keep = is_comp & (x > 0)
        A = sp.csc_matrix((x[keep].astype(np.float32), (rows[keep], self.comp[keep])),
                          shape=(P, K), dtype=np.float32)
        A.sort_indices()
        b = np.zeros((P, self.nb), np.float32)
        if self.nb:
            b[rows[~is_comp], self.comp[~is_comp] - K] = x[~is_comp]
        return A, b


def _centred_gram(Cf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row means ``(M,)`` and centred Gram matrix ``(M, M)`` of traces ``Cf`` (``M × T``), summed
    in float64 over :data:`_GRAM_ELEMENTS` values at a time."""
    M, T = Cf.shape
    total = np.zeros(M)
    gram = np.zeros((M, M))
    step = max(1, _GRAM_ELEMENTS // max(M, 1))
    for t0 in range(0, T, step):
        block = np.asarray(Cf[:, t0:t0 + step], dtype=np.float64)
        total += block.sum(axis=1)
        gram += block @ block.T
    mean = total / max(T, 1)
    return mean, gram - T * np.outer(mean, mean)


def _sufficient_statistics(
    Y2: np.ndarray,
    Cf: np.ndarray,
    system: _PixelSystem,
    block: int,
    *,
    need_yy: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``U[p, j] = Σ_t Y[t, p]·Cf[j, t]`` at the pattern's entries, ``Σ_t Y[t, p]²`` (if
    asked) and the mean of every pixel.

    Reads the movie ``block`` pixels at a time (:func:`slab_statistics`).
    """
    if hasattr(Y2, "pattern_statistics"):  # a BlockedMovie: blocks read in parallel
        return Y2.pattern_statistics(Cf, system.indptr, system.comp, need_yy=need_yy)
    T, P = Y2.shape
    U = np.zeros(system.comp.size)
    yy = np.zeros(P) if need_yy else None
    ymean = np.zeros(P)
    block = max(1, int(block))
    for p0 in range(0, P, block):
        p1 = min(P, p0 + block)
        slab = np.asarray(Y2[:, p0:p1], dtype=np.float32)  # a view of an in-memory float32 movie
        s, e = int(system.indptr[p0]), int(system.indptr[p1])
        u, ysum, q = slab_statistics([(0, T, slab)], system.indptr[p0:p1 + 1] - s, system.comp[s:e], Cf.T,
                                     need_yy=need_yy)
        U[s:e], ymean[p0:p1] = u, ysum / T
        if yy is not None:
            yy[p0:p1] = q
    return U, yy, ymean


def slab_statistics(chunks: Any, indptr: np.ndarray, comp: np.ndarray, CfT: np.ndarray, *,
                    need_yy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A slab of pixels' share of the spatial update's statistics.

    ``chunks`` yields ``(t0, t1, Y)`` with ``Y`` the slab's frames ``t0:t1`` (``frames × n``
    float32); pixel ``p`` of the slab has the entries ``indptr[p]:indptr[p+1]``, entry ``e``
    referring to column ``comp[e]`` of ``CfT`` (``T × M`` traces). Returns ``U[e] = Σ_t
    Y[t, p]·CfT[t, comp[e]]``, the pixel sums and (if ``need_yy``) sums of squares, float64.

    Each chunk is one matrix product (BLAS) of the slab with the traces its entries use, in
    float32 with float64 accumulation across chunks (relative error ~1e-6, three orders below
    the photon noise of the sums).
    """
    n = int(indptr.size - 1)
    used, local = np.unique(comp, return_inverse=True)
    traces = np.asarray(CfT)[:, used].astype(np.float32)
    pixel = np.repeat(np.arange(n), np.diff(indptr))
    U = np.zeros(comp.size)
    ysum = np.zeros(n)
    yy = np.zeros(n) if need_yy else None
    for t0, t1, Y in chunks:
        if comp.size:
            U += (Y.T @ traces[t0:t1])[pixel, local]
        ysum += Y.sum(axis=0, dtype=np.float64)
        if yy is not None:
            yy += np.einsum("tp,tp->p", Y, Y, dtype=np.float64)
    return U, ysum, yy


# ------------------------------------------------------------------------------------------
# helpers


def _ellipse(local: tuple[np.ndarray, ...], w: np.ndarray, box: tuple[int, ...],
             sig: np.ndarray, dist: float) -> np.ndarray:
    """Pixels of ``box`` inside the footprint's covariance ellipsoid (in gSig units)."""
    pts = np.stack(local, axis=1).astype(np.float64) / sig
    centre = (w[:, None] * pts).sum(0) / w.sum()
    d = pts - centre
    cov = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    lo, hi = ELLIPSE_AXES
    axes = np.clip(np.sqrt(np.maximum(evals, 0.0)), lo, hi)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in box], indexing="ij"), axis=-1)
    g = grid.reshape(-1, len(box)) / sig - centre
    proj = g @ evecs / axes
    inside = (proj**2).sum(1) <= dist**2
    mask = inside.reshape(box)
    mask[local] = True
    return mask


def _as_frames(Y: Any) -> tuple[Any, tuple[int, ...]]:
    if hasattr(Y, "pattern_statistics"):  # somascope.cnmf.blocked.BlockedMovie (out of core)
        return Y, tuple(Y.dims)
    arr = np.asarray(Y)
    if arr.ndim not in (3, 4):
        raise ValueError(f"Y must be a movie T × H × W (or T × Z × H × W), got shape {arr.shape}.")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"Y must hold real numbers, got dtype {arr.dtype}.")
    dims = tuple(int(d) for d in arr.shape[1:])
    return arr.reshape(arr.shape[0], -1), dims


def _as_csc(A: Any, P: int, name: str) -> sp.csc_matrix:
    M = sp.csc_matrix(A) if sp.issparse(A) else sp.csc_matrix(np.asarray(A))
    if M.ndim != 2 or M.shape[0] != P:
        raise ValueError(f"{name} must be pixels × K with {P} pixels (C order of dims), "
                         f"got shape {M.shape}.")
    if M.dtype != bool and M.nnz and not np.all(np.isfinite(M.data)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return M


def _as_traces(X: Any, K: int | None, T: int, name: str) -> np.ndarray:
    arr = np.asarray(X)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, T)
    if arr.ndim != 2 or arr.shape[1] != T or (K is not None and arr.shape[0] != K):
        want = f"({K}, {T})" if K is not None else f"(n, {T})"
        raise ValueError(f"{name} must be traces of shape {want}, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def _as_background(b: Any, P: int, nb: int) -> np.ndarray:
    arr = np.asarray(b, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape != (P, nb):
        raise ValueError(f"b must be pixels × nb = ({P}, {nb}) to match f, got shape {np.shape(b)}.")
    return arr


def _empty_background(P: int, nb: int) -> np.ndarray:
    return np.zeros((P, nb), np.float32)


# ------------------------------------------------------------------------------------------
# Numba kernels (compiled on first use; cached on disk)

_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """Compile the kernels below with Numba (imported here, not when the module loads)."""
    if not _KERNELS:
        import numba

        jit = numba.njit(cache=True, nogil=True)
        g = globals()
        g["_cholesky_solve_jit"] = jit(_cholesky_solve)
        g["_nnls_gram_jit"] = jit(_nnls_gram)
        g["_pixel_problem_jit"] = jit(_pixel_problem)
        g["_rss_jit"] = jit(_rss)
        _KERNELS["nnls"] = jit(_solve_pixels)
        _KERNELS["l0"] = jit(_l0_pixels)
    return _KERNELS


def _cholesky_solve(S, r):  # pragma: no cover - compiled
    """Solve ``S z = r`` for a small symmetric positive-definite ``S`` (Cholesky)."""
    m = r.shape[0]
    L = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1):
            acc = S[i, j]
            for k in range(j):
                acc -= L[i, k] * L[j, k]
            if i == j:
                L[i, i] = np.sqrt(acc) if acc > 0.0 else 1e-300
            else:
                L[i, j] = acc / L[j, j]
    z = np.empty(m)
    for i in range(m):
        acc = r[i]
        for k in range(i):
            acc -= L[i, k] * z[k]
        z[i] = acc / L[i, i]
    for i in range(m - 1, -1, -1):
        acc = z[i]
        for k in range(i + 1, m):
            acc -= L[k, i] * z[k]
        z[i] = acc / L[i, i]
    return z


def _nnls_gram(G, q, x):  # pragma: no cover - compiled
    """Exact ``argmin ½xᵀGx − qᵀx, x >= 0`` for a small positive semi-definite ``G``.

    Lawson–Hanson active-set method on the normal equations; writes the solution to ``x``.
    A tiny ridge keeps the passive-set systems solvable when ``G`` is singular.
    """
    n = q.shape[0]
    x[:] = 0.0
    if n == 0:
        return
    diag_max = 0.0
    for i in range(n):
        if G[i, i] > diag_max:
            diag_max = G[i, i]
    if diag_max <= 0.0:
        return
    ridge = 1e-12 * diag_max
    q_scale = 0.0
    for i in range(n):
        if abs(q[i]) > q_scale:
            q_scale = abs(q[i])
    tol = 1e-12 * q_scale
    passive = np.zeros(n, np.bool_)
    w = q.copy()
    for _ in range(3 * n + 3):
        j = -1
        best = tol
        for i in range(n):
            if not passive[i] and G[i, i] > 0.0 and w[i] > best:
                best = w[i]
                j = i
        if j < 0:
            break
        passive[j] = True
        for _inner in range(3 * n + 3):
            idx = np.flatnonzero(passive)
            m = idx.shape[0]
            sub = np.empty((m, m))
            rhs = np.empty(m)
            for a in range(m):
                rhs[a] = q[idx[a]]
                for c in range(m):
                    sub[a, c] = G[idx[a], idx[c]]
                sub[a, a] += ridge
            z = _cholesky_solve_jit(sub, rhs)
            if np.all(z > 0.0):
                x[:] = 0.0
                for a in range(m):
                    x[idx[a]] = z[a]
                break
            alpha = np.inf
            hit = -1
            for a in range(m):
                if z[a] <= 0.0:
                    xa = x[idx[a]]
                    step = xa / (xa - z[a])
                    if step < alpha:
                        alpha = step
                        hit = idx[a]
            for a in range(m):
                i = idx[a]
                x[i] += alpha * (z[a] - x[i])
                if x[i] <= 0.0:
                    x[i] = 0.0
                    passive[i] = False
            x[hit] = 0.0
            passive[hit] = False
        for i in range(n):
            acc = q[i]
            for c in range(n):
                acc -= G[i, c] * x[c]
            w[i] = acc


def _pixel_problem(comp, U, pen, V, keep):  # pragma: no cover - compiled
    """Gram matrix and linear term of one pixel's problem over the unknowns in ``keep``."""
    idx = np.flatnonzero(keep)
    m = idx.shape[0]
    G = np.empty((m, m))
    q = np.empty(m)
    for a in range(m):
        q[a] = U[idx[a]] - pen[idx[a]]
        for c in range(m):
            G[a, c] = V[comp[idx[a]], comp[idx[c]]]
    return idx, G, q


def _solve_pixels(indptr, comp, U, pen, V, x):  # pragma: no cover - compiled
    """Solve every pixel's penalised NNLS exactly; the solution goes to ``x``."""
    P = indptr.shape[0] - 1
    for p in range(P):
        s = indptr[p]
        e = indptr[p + 1]
        if e <= s:
            continue
        idx, G, q = _pixel_problem_jit(comp[s:e], U[s:e], pen[s:e], V, np.ones(e - s, np.bool_))
        sol = np.empty(idx.shape[0])
        _nnls_gram_jit(G, q, sol)
        x[s:e] = sol


def _rss(comp, U, V, x, yy):  # pragma: no cover - compiled
    """``‖y − Σ x_i c_i‖²`` from the statistics: ``yy − 2·Uᵀx + xᵀVx``."""
    n = comp.shape[0]
    quad = 0.0
    lin = 0.0
    for i in range(n):
        if x[i] == 0.0:
            continue
        lin += U[i] * x[i]
        for m in range(n):
            quad += x[i] * V[comp[i], comp[m]] * x[m]
    return yy - 2.0 * lin + quad


def _l0_pixels(indptr, comp, U, V, x, yy, noise, n_comp):  # pragma: no cover - compiled
    """Greedy L0 pruning of each pixel's NNLS solution under ``‖residual‖² <= noise[p]``.

    While possible, the component whose removal (and refit of the others) leaves the
    smallest residual within the noise budget is removed; the background is never removed.
    """
    P = indptr.shape[0] - 1
    for p in range(P):
        s = indptr[p]
        e = indptr[p + 1]
        n = e - s
        if n <= 0:
            continue
        cp = comp[s:e]
        up = U[s:e]
        xp = x[s:e]
        zero = np.zeros(n)
        if _rss_jit(cp, up, V, xp, yy[p]) > noise[p]:
            continue  # the noise constraint cannot be met: keep the NNLS solution
        keep = np.ones(n, np.bool_)
        for i in range(n):
            if cp[i] < n_comp and xp[i] == 0.0:
                keep[i] = False
        while True:
            best_rss = np.inf
            best_x = xp.copy()
            best = -1
            for i in range(n):
                if cp[i] >= n_comp or not keep[i]:
                    continue
                keep[i] = False
                idx, G, q = _pixel_problem_jit(cp, up, zero, V, keep)
                sol = np.empty(idx.shape[0])
                _nnls_gram_jit(G, q, sol)
                keep[i] = True
                work = np.zeros(n)
                for a in range(idx.shape[0]):
                    work[idx[a]] = sol[a]
                r = _rss_jit(cp, up, V, work, yy[p])
                if r < noise[p] and r < best_rss:
                    best_rss = r
                    best_x[:] = work
                    best = i
            if best < 0:
                break
            keep[best] = False
            xp[:] = best_x
