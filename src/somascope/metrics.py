"""Matching estimated components to a reference set: precision, recall, F1.

This is the comparison used in the CaImAn paper (Giovannucci et al., eLife 2019) to score
CNMF against manual annotations, and across sessions by ``register_ROIs``:

1. Binarise each footprint: keep the pixels whose value is positive and at least
   ``binarise_frac`` times the footprint's maximum. The default 0.25 is the fraction CaImAn
   thresholds footprints at before comparing two CNMF results (``maxthr`` of
   ``threshold_spatial_components``; CaImAn also applies a median filter and keeps the
   largest connected piece, not done here). ``binarise_frac=0`` keeps every positive pixel,
   as CaImAn's ``register_ROIs`` does by default.
2. For every pair of footprints that overlap, the Jaccard distance
   ``1 - |A ∩ B| / |A ∪ B|`` of the binary masks. Pairs whose centroids are more than
   ``max_centroid_distance`` pixels apart (CaImAn's ``max_dist``/``min_dist``, 10), or whose
   distance is not below ``max_distance`` (CaImAn's ``thresh_cost``, 0.7), cannot be matched.
3. An optimal one-to-one assignment (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``)
   minimising the total distance, where a non-matchable pair costs 1; the assigned
   matchable pairs are the true positives.

Overlaps come from one sparse product ``B_ref.T @ B_est`` of the binary masks, so only
overlapping pairs are ever looked at, and the assignment is solved separately on each
connected group of matchable pairs: thousands of cells match in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["MASK_FRAC", "Match", "binarise_footprints", "match_footprints", "peak_snr", "shift_footprints",
           "trace_correlation"]


@dataclass(frozen=True)
class Match:
    """The result of :func:`match_footprints`.

    Attributes
    ----------
    ref_idx, est_idx : ndarray of int, shape ``(tp,)``
        Matched pairs: reference component ``ref_idx[i]`` is estimated component
        ``est_idx[i]``; sorted by ``ref_idx``.
    distances : ndarray of float, shape ``(tp,)``
        Jaccard distance of each matched pair's binary masks, in ``[0, max_distance)``.
    n_ref, n_est : int
        Number of reference and estimated components.
    distance_matrix : ndarray of float, shape ``(n_ref, n_est)``, or None
        With ``match_footprints(..., keep_distances=True)``: the Jaccard distance of every pair
        of binary masks (1 where they do not overlap), before the ``max_distance`` and centroid
        caps; None otherwise.
    """

    ref_idx: np.ndarray
    est_idx: np.ndarray
    distances: np.ndarray
    n_ref: int
    n_est: int
    distance_matrix: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def tp(self) -> int:
        """True positives: matched pairs."""
        return int(self.ref_idx.size)

    @property
    def fp(self) -> int:
        """False positives: estimated components without a reference match."""
        return self.n_est - self.tp

    @property
    def fn(self) -> int:
        """False negatives: reference components without an estimated match."""
        return self.n_ref - self.tp

    @property
    def precision(self) -> float:
        """``tp / n_est`` (0 when there are no estimated components)."""
        return self.tp / self.n_est if self.n_est else 0.0

    @property
    def recall(self) -> float:
        """``tp / n_ref`` (0 when there are no reference components)."""
        return self.tp / self.n_ref if self.n_ref else 0.0

    @property
    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)`` (0 when both sets are empty)."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0

    @property
    def unmatched_ref(self) -> np.ndarray:
        """Indices of the reference components that were not matched (false negatives)."""
        return np.setdiff1d(np.arange(self.n_ref), self.ref_idx)

    @property
    def unmatched_est(self) -> np.ndarray:
        """Indices of the estimated components that were not matched (false positives)."""
        return np.setdiff1d(np.arange(self.n_est), self.est_idx)


def match_footprints(
    A_ref: Any,
    A_est: Any,
    dims: Sequence[int] | None = None,
    *,
    binarise_frac: float = 0.25,
    max_distance: float = 0.7,
    max_centroid_distance: float | None = 10.0,
    largest_piece: bool = False,
    keep_distances: bool = False,
) -> Match:
    """Match estimated footprints to reference footprints (see the module docstring).

    Parameters
    ----------
    A_ref, A_est
        Footprints as ``pixels × K`` matrices (``scipy.sparse`` or dense, pixels in C order
        of ``dims``), or as masks / images stacked ``K × H × W`` (``K × Z × H × W``).
    dims
        Frame shape ``(H, W)`` or ``(Z, H, W)``; needed for ``pixels × K`` input, checked
        against the masks' shape otherwise.
    binarise_frac
        A footprint's mask is its pixels ``>= binarise_frac * max`` (and > 0); in ``[0, 1]``.
    max_distance
        Pairs with Jaccard distance ``>= max_distance`` never match; in ``(0, 1]``.
    max_centroid_distance
        Pairs whose mask centroids are farther apart (pixels) never match; None: no limit.
    largest_piece
        Keep only the largest connected piece of each binary mask (as CaImAn does, and as the
        ``dev_sim`` ground truth is scored: ``binarise_frac=0.2, largest_piece=True``).
    keep_distances
        Also return the dense ``n_ref × n_est`` Jaccard distance matrix (``Match.distance_matrix``).

    Returns
    -------
    Match
    """
    if not 0.0 <= float(binarise_frac) <= 1.0:
        raise ValueError(f"binarise_frac must be in [0, 1] (a fraction of each footprint's max); got {binarise_frac!r}.")
    if not 0.0 < float(max_distance) <= 1.0:
        raise ValueError(f"max_distance is a Jaccard distance and must be in (0, 1]; got {max_distance!r}.")
    if max_centroid_distance is not None and not float(max_centroid_distance) > 0:
        raise ValueError(f"max_centroid_distance must be > 0 pixels or None; got {max_centroid_distance!r}.")

    ref, dims_ref = _as_footprint_matrix(A_ref, dims, "A_ref")
    est, dims_est = _as_footprint_matrix(A_est, dims, "A_est")
    if dims_ref != dims_est:
        raise ValueError(
            f"A_ref has frames of shape {dims_ref} but A_est {dims_est}; footprints must share one field of view."
        )
    n_ref, n_est = ref.shape[1], est.shape[1]
    empty = np.zeros(0, np.int64)
    if n_ref == 0 or n_est == 0:
        full = np.ones((n_ref, n_est)) if keep_distances else None
        return Match(empty, empty.copy(), np.zeros(0), n_ref, n_est, full)

    bin_ref = _binarise(ref, binarise_frac, dims_ref if largest_piece else None)
    bin_est = _binarise(est, binarise_frac, dims_est if largest_piece else None)
    size_ref = np.asarray(bin_ref.sum(axis=0)).ravel()
    size_est = np.asarray(bin_est.sum(axis=0)).ravel()

    overlap = (bin_ref.T @ bin_est).tocoo()
    rows, cols, inter = overlap.row, overlap.col, overlap.data
    distance = 1.0 - inter / (size_ref[rows] + size_est[cols] - inter)
    full = None
    if keep_distances:
        full = np.ones((n_ref, n_est))
        full[rows, cols] = np.where(inter > 0, distance, 1.0)
    ok = (inter > 0) & (distance < max_distance)
    if max_centroid_distance is not None:
        c_ref, c_est = _centroids(bin_ref, dims_ref), _centroids(bin_est, dims_est)
        gap = np.linalg.norm(c_ref[rows] - c_est[cols], axis=1)
        ok &= gap <= max_centroid_distance
    rows, cols, distance = rows[ok], cols[ok], distance[ok]

    ref_idx, est_idx, dist = _assign(rows, cols, distance, n_ref, n_est)
    order = np.argsort(ref_idx, kind="stable")
    return Match(ref_idx[order], est_idx[order], dist[order], n_ref, n_est, full)


def trace_correlation(C_ref: np.ndarray, C_est: np.ndarray, match: Match) -> np.ndarray:
    """Pearson correlation over time of each matched pair of traces.

    Parameters
    ----------
    C_ref, C_est
        Traces ``K_ref × T`` and ``K_est × T`` (the rows are the components of the sets
        given to :func:`match_footprints`).
    match
        The matching of those sets.

    Returns
    -------
    ndarray, shape ``(match.tp,)``
        ``corr(C_ref[match.ref_idx[i]], C_est[match.est_idx[i]])``; 0 for a constant trace.
    """
    C_ref = np.asarray(C_ref, dtype=np.float64)
    C_est = np.asarray(C_est, dtype=np.float64)
    for name, C, n in (("C_ref", C_ref, match.n_ref), ("C_est", C_est, match.n_est)):
        if C.ndim != 2 or C.shape[0] != n:
            raise ValueError(
                f"{name} must be K × T with one row per component of the matched set (K = {n}); got shape {C.shape}."
            )
    if C_ref.shape[1] != C_est.shape[1]:
        raise ValueError(
            f"C_ref has {C_ref.shape[1]} frames and C_est {C_est.shape[1]}; compare traces of the same recording."
        )
    if not (np.isfinite(C_ref).all() and np.isfinite(C_est).all()):
        raise ValueError("traces contain NaN or infinite values; clean them (e.g. np.nan_to_num) first.")
    x = C_ref[match.ref_idx]
    y = C_est[match.est_idx]
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    cov = (x * y).sum(axis=1)
    corr = np.divide(cov, norm, out=np.zeros_like(cov), where=norm > 0)
    return np.clip(corr, -1.0, 1.0)


#: Fraction of its peak above which a footprint's pixels make its mask: the binarisation the
#: ``dev_sim`` ground truth is scored with, and the one the shape tests, duplicates and merging
#: of :mod:`somascope.evaluation` and :mod:`somascope.cnmf` see.
MASK_FRAC = 0.2


def binarise_footprints(A: Any, dims: Sequence[int] | None = None, frac: float = MASK_FRAC, *,
                        largest_piece: bool = False) -> sp.csc_matrix:
    """Binary masks of footprints, as the matching sees them.

    ``A`` is ``pixels × K`` (pixels in C order of ``dims``; ``dims`` is needed only with
    ``largest_piece``); a mask keeps the pixels ``> 0`` and ``>= frac`` × the footprint's
    maximum, and with ``largest_piece`` only their largest connected piece (full
    connectivity). Returns a ``pixels × K`` CSC float64 matrix of ones.
    """
    if not 0.0 <= float(frac) <= 1.0:
        raise ValueError(f"frac is a fraction of each footprint's maximum and must lie in [0, 1]; got {frac!r}.")
    if largest_piece and dims is None:
        raise ValueError("largest_piece=True needs dims=(H, W) (or (Z, H, W)) to find connected pieces.")
    M = sp.csc_matrix(A, dtype=np.float64)
    shape = None if dims is None else tuple(int(d) for d in dims)
    if shape is not None and M.shape[0] != int(np.prod(shape)):
        raise ValueError(f"A has {M.shape[0]} rows but dims={shape} has {int(np.prod(shape))} pixels.")
    return _binarise(M, frac, shape if largest_piece else None)


def shift_footprints(A: Any, dims: Sequence[int], shift: Sequence[float]) -> sp.csc_matrix:
    """Footprints displaced by ``shift`` (``(dy, dx)`` px): column k of the result is
    ``A_k(p - shift)`` (linear interpolation, zero outside the frame); CSC ``pixels × K``
    float32. Each footprint is shifted inside its own padded bounding box, so the cost follows
    the footprints' sizes, not the frame's. Used to bring a ground truth drawn motion-free into
    the frame of a motion-corrected movie before matching."""
    from scipy import ndimage

    A = sp.csc_matrix(A)
    A.sort_indices()
    H, W = (int(d) for d in dims)
    dy, dx = (float(s) for s in shift)
    pad = int(np.ceil(max(abs(dy), abs(dx)))) + 1
    data, indices, indptr = [], [], [0]
    for k in range(A.shape[1]):
        lo, hi = A.indptr[k], A.indptr[k + 1]
        rows, cols = np.divmod(A.indices[lo:hi], W)
        if rows.size == 0:
            indptr.append(indptr[-1])
            continue
        y0, x0 = max(rows.min() - pad, 0), max(cols.min() - pad, 0)
        y1, x1 = min(rows.max() + pad + 1, H), min(cols.max() + pad + 1, W)
        box = np.zeros((y1 - y0, x1 - x0), np.float32)
        box[rows - y0, cols - x0] = A.data[lo:hi]
        moved = ndimage.shift(box, (dy, dx), order=1, mode="constant", cval=0.0)
        yy, xx = np.nonzero(moved > 0)
        data.append(moved[yy, xx])
        indices.append(((yy + y0) * W + xx + x0).astype(np.int64))
        indptr.append(indptr[-1] + yy.size)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return sp.csc_matrix((cat(data, np.float32), cat(indices, np.int64), np.asarray(indptr)), shape=A.shape)


def peak_snr(
    A: Any,
    C: np.ndarray,
    mean_photons: np.ndarray,
    read_noise: float,
    bleach: np.ndarray | None = None,
) -> np.ndarray:
    """Peak SNR of each true component (the ``snr`` of the ``dev_sim`` ground truth), ``(K,)``
    float64.

    The component's footprint-weighted trace rises at most by
    ``ΔF = max_t C[k, t]·bleach[t] · Σa³ / Σa²``; the standard deviation of that trace's shot
    and read noise is ``√(Σ a²·(mean_photons + read_noise²)) / Σa²``; the SNR is their ratio.
    ``a`` is column k of ``A`` as it scales ``C`` (by convention peak 1, so ``C`` is ΔF at the
    brightest pixel; it is not rescaled here, so a cell cut by the border keeps its true
    signal ``a·C``). Components with no footprint or no activity get 0.

    A : footprints, ``pixels × K`` (sparse or dense, C-order pixels) or ``(K, H, W)`` images.
    C : ``K × T`` calcium, ΔF in photons at the footprint's peak (before ``bleach``).
    mean_photons : mean image in photons (``(H, W)`` or ``(pixels,)``), noise- and motion-free.
    read_noise : standard deviation of the Gaussian read noise, photons.
    bleach : ``(T,)`` fraction of fluorescence left at each frame, or None (no bleaching).
    """
    A_arr = A
    if not sp.issparse(A_arr) and np.ndim(A_arr) == 3:
        A_arr = np.asarray(A_arr).reshape(np.shape(A_arr)[0], -1).T
    A_csc = sp.csc_matrix(A_arr, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if C.shape[0] != A_csc.shape[1]:
        raise ValueError(f"C has {C.shape[0]} rows but A has {A_csc.shape[1]} components; pass C as K × T.")
    variance = np.asarray(mean_photons, dtype=np.float64).ravel() + float(read_noise) ** 2
    if variance.size != A_csc.shape[0]:
        raise ValueError(f"mean_photons has {variance.size} pixels but A has {A_csc.shape[0]} rows.")
    if bleach is not None:
        C = C * np.asarray(bleach, dtype=np.float64)[None, :]
    sq = A_csc.multiply(A_csc).tocsc()
    sum2 = np.asarray(sq.sum(axis=0)).ravel()
    sum3 = np.asarray(sq.multiply(A_csc).sum(axis=0)).ravel()
    noise_var = np.asarray(sq.T @ np.maximum(variance, 0.0)).ravel()
    peak = C.max(axis=1, initial=0.0) if C.size else np.zeros(C.shape[0])
    ok = (sum2 > 0) & (noise_var > 0)
    out = np.zeros(A_csc.shape[1])
    # (peak · Σa³/Σa²) / (√(Σa²v) / Σa²) = peak · Σa³ / √(Σa²v)
    out[ok] = np.maximum(peak[ok], 0.0) * sum3[ok] / np.sqrt(noise_var[ok])
    return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _as_footprint_matrix(A: Any, dims: Sequence[int] | None, name: str) -> tuple[sp.csc_matrix, tuple[int, ...]]:
    """``pixels × K`` CSC float64 matrix and the frame shape, from any accepted form."""
    given = None if dims is None else tuple(int(d) for d in dims)
    if given is not None and len(given) not in (2, 3):
        raise ValueError(f"dims must be (H, W) or (Z, H, W); got {dims!r}.")
    if sp.issparse(A):
        if A.ndim != 2:
            raise ValueError(f"{name}: a sparse footprint matrix must be pixels × K; got shape {A.shape}.")
        matrix = sp.csc_matrix(A, dtype=np.float64)
        layout = "pixels × K"
    else:
        arr = np.asarray(A)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name}: footprints must be a numeric array or scipy.sparse matrix; got {type(A).__name__}.")
        if arr.ndim == 2:
            matrix = sp.csc_matrix(arr.astype(np.float64))
            layout = "pixels × K"
        elif arr.ndim in (3, 4):
            frame = tuple(int(s) for s in arr.shape[1:])
            if given is not None and given != frame:
                raise ValueError(f"{name}: masks have frames of shape {frame} but dims={given}.")
            given = frame
            matrix = sp.csc_matrix(arr.reshape(arr.shape[0], int(np.prod(frame))).T.astype(np.float64))
            layout = "masks"
        else:
            raise ValueError(
                f"{name}: footprints must be pixels × K (with dims) or masks K × H × W / K × Z × H × W; "
                f"got an array of shape {arr.shape}."
            )
    if layout == "pixels × K":
        if given is None:
            raise ValueError(
                f"{name} is a pixels × K matrix: pass dims=(H, W) (or (Z, H, W)) so centroids can be computed."
            )
        if matrix.shape[0] != int(np.prod(given)):
            raise ValueError(
                f"{name} has {matrix.shape[0]} rows but dims={given} has {int(np.prod(given))} pixels; "
                "footprints must be pixels × K in C order of dims."
            )
    if not np.isfinite(matrix.data).all():
        raise ValueError(f"{name} contains NaN or infinite values; footprints must be finite.")
    return matrix, given  # type: ignore[return-value]


def _binarise(A: sp.csc_matrix, frac: float, dims: tuple[int, ...] | None = None) -> sp.csc_matrix:
    """Binary ``pixels × K`` masks: entries > 0 and >= ``frac`` × their column's maximum;
    with ``dims``, only the largest connected piece (full connectivity) of each mask."""
    coo = A.tocoo()
    col_max = np.zeros(A.shape[1])
    np.maximum.at(col_max, coo.col, coo.data)
    keep = (coo.data > 0) & (coo.data >= frac * col_max[coo.col])
    B = sp.csc_matrix(
        (np.ones(int(keep.sum())), (coo.row[keep], coo.col[keep])), shape=A.shape, dtype=np.float64
    )
    return B if dims is None else _largest_pieces(B, dims)


def _largest_pieces(B: sp.csc_matrix, dims: tuple[int, ...]) -> sp.csc_matrix:
    """Each binary column of ``B`` reduced to its largest connected piece (labelled inside the
    mask's bounding box, so the cost follows the masks' sizes, not the frame's)."""
    from scipy import ndimage

    B = sp.csc_matrix(B)
    B.sort_indices()
    structure = np.ones((3,) * len(dims), bool)
    rows, cols = [], []
    for k in range(B.shape[1]):
        idx = B.indices[B.indptr[k]:B.indptr[k + 1]]
        if idx.size == 0:
            continue
        coords = np.stack(np.unravel_index(idx, dims))
        lo = coords.min(axis=1)
        box = np.zeros(tuple(coords.max(axis=1) - lo + 1), bool)
        box[tuple(coords - lo[:, None])] = True
        labels, n = ndimage.label(box, structure)
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            idx = idx[labels[tuple(coords - lo[:, None])] == 1 + int(np.argmax(sizes))]
        rows.append(idx)
        cols.append(np.full(idx.size, k))
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    r = cat(rows)
    return sp.csc_matrix((np.ones(r.size), (r, cat(cols))), shape=B.shape, dtype=np.float64)


def _centroids(B: sp.csc_matrix, dims: tuple[int, ...]) -> np.ndarray:
    """Centroid (pixels, one column per axis) of each binary mask; NaN for empty masks."""
    coords = np.stack(np.unravel_index(np.arange(B.shape[0]), dims), axis=1).astype(np.float64)
    size = np.asarray(B.sum(axis=0)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(B.T @ coords) / size[:, None]


def _assign(
    rows: np.ndarray, cols: np.ndarray, distance: np.ndarray, n_ref: int, n_est: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one assignment over the matchable pairs ``(rows[i], cols[i])``.

    Equivalent to one Hungarian assignment on the full ``n_ref × n_est`` cost matrix with
    cost 1 for non-matchable pairs, but solved per connected group of matchable pairs.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse.csgraph import connected_components

    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0)
    n = n_ref + n_est
    graph = sp.coo_matrix((np.ones(rows.size), (rows, n_ref + cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    edge_group = label[rows]
    order = np.argsort(edge_group, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(edge_group[order]) != 0])
    ends = np.r_[starts[1:], order.size]
    out_r, out_c, out_d = [], [], []
    for s, e in zip(starts, ends):
        edges = order[s:e]
        r, c, d = rows[edges], cols[edges], distance[edges]
        if edges.size == 1:
            out_r.append(r)
            out_c.append(c)
            out_d.append(d)
            continue
        ur, ri = np.unique(r, return_inverse=True)
        uc, ci = np.unique(c, return_inverse=True)
        cost = np.ones((ur.size, uc.size))
        cost[ri, ci] = d
        matchable = np.zeros(cost.shape, bool)
        matchable[ri, ci] = True
        a, b = linear_sum_assignment(cost)
        good = matchable[a, b]
        out_r.append(ur[a[good]])
        out_c.append(uc[b[good]])
        out_d.append(cost[a[good], b[good]])
    return (
        np.concatenate(out_r).astype(np.int64),
        np.concatenate(out_c).astype(np.int64),
        np.concatenate(out_d).astype(np.float64),
    )
