"""Duplicate components: the same cell found twice, detected by the overlap of footprints.

Duplicates arise where patches overlap (each patch finds the cell, whole or cut at its
border) and when initialisation seeds one cell twice. Following the CaImAn paper, footprints
are compared through their binary masks ``m_i`` (pixels at least ``binarise_frac`` of the
footprint's maximum):

- the Jaccard distance ``d_ij = 1 − |m_i ∩ m_j| / |m_i ∪ m_j|`` (two copies of the same cell
  nearly coincide: ``d_ij < max_distance``, by default IoU > 0.9), and
- the containment ``o_ij = |m_i ∩ m_j| / min(|m_i|, |m_j|)`` (a piece of a cell found
  inside the whole cell: ``o_ij ≥ subset_thr``).

A pair satisfying either is a duplicate pair. Which member stays is decided greedily by a
quality score (non-maximum suppression): components are visited from the best score down, and
one is removed when it is a duplicate of a component already kept. So of two copies the
better one stays, and two distinct cells that both overlap a third (a chain) are not lost
together. Overlaps come from one sparse product of the masks; only overlapping pairs are
looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # pragma: no cover - typing only
    from somascope.cnmf.estimates import Estimates

__all__ = ["Duplicates", "binary_masks", "find_duplicates", "remove_duplicates"]


@dataclass(frozen=True)
class Duplicates:
    """Result of :func:`find_duplicates` for ``K`` components.

    Attributes
    ----------
    pairs : ndarray (n, 2) int64
        Duplicate pairs ``(i, j)`` with ``i < j``, sorted.
    distance : ndarray (n,)
        Jaccard distance of each pair's masks.
    containment : ndarray (n,)
        Intersection over the smaller mask, for each pair.
    keep, remove : ndarray int64
        Sorted indices of the components kept and removed; together ``0..K-1``.
    duplicate_of : ndarray (K,) int64
        For a removed component, the kept component it duplicates; -1 for kept ones.
    """

    pairs: np.ndarray
    distance: np.ndarray
    containment: np.ndarray
    keep: np.ndarray
    remove: np.ndarray
    duplicate_of: np.ndarray

    @property
    def n_removed(self) -> int:
        return int(self.remove.size)


def binary_masks(A: Any, binarise_frac: float = 0.2) -> sp.csc_matrix:
    """``pixels × K`` 0/1 masks: entries > 0 and ≥ ``binarise_frac`` × their column's maximum
    (:func:`somascope.metrics.binarise_footprints`)."""
    from somascope.metrics import binarise_footprints

    if not 0.0 <= float(binarise_frac) <= 1.0:
        raise ValueError(f"binarise_frac is a fraction of each footprint's maximum and must lie in [0, 1]; "
                         f"got {binarise_frac!r}.")
    return binarise_footprints(_as_csc(A), frac=binarise_frac)


def find_duplicates(
    A: Any,
    *,
    score: np.ndarray | None = None,
    binarise_frac: float = 0.2,
    max_distance: float = 0.1,
    subset_thr: float | None = 0.8,
) -> Duplicates:
    """Find duplicate components and choose which to keep (see the module docstring).

    Parameters
    ----------
    A
        Footprints ``pixels × K`` (sparse or dense).
    score
        Quality of each component ``(K,)``, higher is better (e.g. CNN probability, r-value
        or SNR); ties and ``None`` fall back to the mask area (larger is kept). NaN scores
        rank last.
    binarise_frac
        Mask threshold as a fraction of each footprint's maximum, in [0, 1].
    max_distance
        Pairs with Jaccard distance below this are duplicates, in [0, 1].
    subset_thr
        Pairs whose intersection covers at least this fraction of the smaller mask are
        duplicates, in (0, 1]; 1 flags only exact subsets, values above 1 are refused; None:
        no containment rule (only the Jaccard distance).

    Returns
    -------
    Duplicates
    """
    if not 0.0 <= float(max_distance) <= 1.0:
        raise ValueError(f"max_distance is a Jaccard distance and must lie in [0, 1]; got {max_distance!r}.")
    if subset_thr is not None and not 0.0 < float(subset_thr) <= 1.0:
        raise ValueError(f"subset_thr is a fraction of the smaller mask and must lie in (0, 1]; got {subset_thr!r}.")
    B = binary_masks(A, binarise_frac)
    K = B.shape[1]
    size = np.asarray(B.sum(axis=0)).ravel()
    if score is None:
        quality = np.zeros(K)
    else:
        quality = np.asarray(score, dtype=np.float64).ravel()
        if quality.size != K:
            raise ValueError(f"score must have one value per component (K={K}); got {quality.size}.")
        quality = np.where(np.isnan(quality), -np.inf, quality)

    inter = sp.triu(B.T @ B, k=1).tocoo()
    i, j, n = inter.row.astype(np.int64), inter.col.astype(np.int64), inter.data
    union = size[i] + size[j] - n
    distance = 1.0 - n / union
    containment = n / np.minimum(size[i], size[j])
    dup = (n > 0) & (distance < max_distance)
    if subset_thr is not None:
        dup |= (n > 0) & (containment >= subset_thr)
    i, j, distance, containment = i[dup], j[dup], distance[dup], containment[dup]
    order = np.lexsort((j, i))
    i, j, distance, containment = i[order], j[order], distance[order], containment[order]

    partners: dict[int, list[int]] = {}
    for a, b in zip(i.tolist(), j.tolist()):
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    rank = np.lexsort((np.arange(K), -size, -quality))  # best score, then largest, then lowest index
    kept = np.zeros(K, dtype=bool)
    duplicate_of = np.full(K, -1, dtype=np.int64)
    for k in rank.tolist():
        winners = [m for m in partners.get(k, ()) if kept[m]]
        if winners:
            duplicate_of[k] = min(winners, key=lambda m: (-quality[m], -size[m], m))
        else:
            kept[k] = True
    return Duplicates(
        pairs=np.stack([i, j], axis=1) if i.size else np.zeros((0, 2), dtype=np.int64),
        distance=distance,
        containment=containment,
        keep=np.flatnonzero(kept).astype(np.int64),
        remove=np.flatnonzero(~kept).astype(np.int64),
        duplicate_of=duplicate_of,
    )


def remove_duplicates(est: Estimates, **kwargs: Any) -> Estimates:
    """A new :class:`Estimates` without duplicate components (``est`` is not modified).

    The score deciding which copy stays is, in this order of preference, ``kwargs["score"]``,
    the CNN probability, the r-value, the trace SNR, or else the mask area. Other keyword
    arguments go to :func:`find_duplicates`.
    """
    from somascope.cnmf.estimates import Estimates

    if not isinstance(est, Estimates):
        raise TypeError(f"est must be an Estimates; got {type(est).__name__}.")
    if "score" not in kwargs:
        kwargs["score"] = next((s for s in (est.cnn_preds, est.r_values, est.SNR_comp) if s is not None), None)
    found = find_duplicates(est.A, **kwargs)
    return est.select(found.keep)


def _as_csc(A: Any) -> sp.csc_matrix:
    if sp.issparse(A):
        M = sp.csc_matrix(A, dtype=np.float64)
    else:
        arr = np.asarray(A)
        if arr.ndim != 2 or arr.dtype.kind not in "biuf":
            raise ValueError(f"A must be a pixels × K numeric matrix (sparse or dense); got {arr.dtype} array of "
                             f"shape {arr.shape}.")
        M = sp.csc_matrix(arr.astype(np.float64))
    if M.nnz and not np.isfinite(M.data).all():
        raise ValueError("A contains NaN or infinite values; footprints must be finite.")
    return M
