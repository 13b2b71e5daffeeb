"""Merging components that are one neuron (CaImAn paper, eq. 3).

Two components are *linked* when their footprints overlap — their masks
(:func:`somascope.metrics.binarise_footprints`: pixels at least 0.2 of the peak) share a pixel;
faint tails do not count, since in dense tissue every neighbour shares tail pixels and
neighbours whose traces correlate (shared neuropil, synchronous firing) would merge into
two-cell components — and their denoised traces ``C`` correlate above ``merge.merge_thr``.
Each connected group of linked components becomes one component: the rank-1 non-negative factorisation ``a·c`` of the
group's joint contribution ``Σ_i a_i·(c_i + r_i)`` (footprints times raw traces, ``r`` the
residual traces ``YrA``), computed by alternating non-negative least squares on the factored
form (the group's pixels × T matrix is never formed). The merged trace is then deconvolved
with OASIS like any other trace. Groups whose merged footprint would cover more than
``merge.max_merge_area`` pixels are left alone.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .estimates import Estimates

__all__ = ["MergeResult", "find_merge_groups", "merge_components", "pair_correlations"]

#: Alternating updates of the rank-1 factorisation of a group.
RANK1_ITERATIONS = 30
#: Trace values (rows × frames) standardised or multiplied at a time (16 MiB of float64).
_PAIR_ELEMENTS = 2 * 2**20


@dataclass(frozen=True)
class MergeResult:
    """Result of :func:`merge_components`.

    Attributes
    ----------
    estimates : Estimates
        The components after merging: the unmerged ones in their original order, then one
        component per merged group. Quality fields and accepted/rejected lists are cleared.
    groups : list of int64 arrays
        For each merged component (in output order), the input components it replaces.
    """

    estimates: Estimates
    groups: list[np.ndarray]

    @property
    def n_merged(self) -> int:
        """Number of merged groups."""
        return len(self.groups)


def find_merge_groups(
    A: Any, C: np.ndarray, thr: float, *, max_merge_area: int | None = None,
    keep_apart: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Groups of components to merge: connected sets of overlapping, correlated components.

    Parameters
    ----------
    A
        Footprints ``pixels × K``.
    C
        Denoised traces ``K × T``.
    thr
        Correlation above which two overlapping components are linked, in (0, 1].
    max_merge_area
        Groups whose footprints together cover more pixels are dropped; None: no limit.
    keep_apart
        ``(K,)`` int labels, -1 for none: components with different labels ≥ 0 (cells of
        different structural-channel masks) are never linked, and a group that would join
        two of them is dropped.

    Returns
    -------
    list of int64 arrays, each sorted, of at least two components; ordered by their first
    component.
    """
    from scipy.sparse.csgraph import connected_components

    A = sp.csc_matrix(A)
    K = A.shape[1]
    C = np.asarray(C)
    if C.ndim != 2 or C.shape[0] != K:
        raise ValueError(f"C has {C.shape[0]} traces but A has K={K} components.")
    if not 0 < thr <= 1:
        raise ValueError(f"merge threshold {thr} must lie in (0, 1]; use e.g. 0.8.")
    if K < 2:
        return []
    from somascope.metrics import binarise_footprints

    mask = binarise_footprints(A)
    overlap = sp.triu(mask.T @ mask, k=1).tocoo()
    i, j = overlap.row, overlap.col
    if i.size == 0:
        return []
    corr = pair_correlations(C, i, j)
    linked = corr > thr
    if keep_apart is not None:
        lab = np.asarray(keep_apart, np.int64)
        linked &= ~((lab[i] >= 0) & (lab[j] >= 0) & (lab[i] != lab[j]))
    if not linked.any():
        return []
    graph = sp.coo_matrix((np.ones(int(linked.sum())), (i[linked], j[linked])), shape=(K, K))
    n, label = connected_components(graph, directed=False)
    groups = []
    for lab in range(n):
        members = np.flatnonzero(label == lab)
        if members.size < 2:
            continue
        if keep_apart is not None and np.unique(keep_apart[members][keep_apart[members] >= 0]).size > 1:
            continue  # two masks' cells chained through a third component
        if max_merge_area is not None:
            area = np.unique(A[:, members].indices).size
            if area > max_merge_area:
                continue
        groups.append(members.astype(np.int64))
    groups.sort(key=lambda g: int(g[0]))
    return groups


def pair_correlations(C: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pearson correlation of the traces ``C[i[p]]`` and ``C[j[p]]`` for every pair ``p``.

    ``C`` is ``K × T``. Only the traces that appear in a pair are standardised, a block of
    rows at a time in float64 and kept as float32 (one float32 copy of those rows: a long
    recording's traces are hundreds of MB); the pairs' products are taken
    :data:`_PAIR_ELEMENTS` values at a time. Returns ``(n_pairs,)`` float64; 0 where a trace
    is constant.
    """
    T = int(C.shape[1])
    used, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
    unit = np.empty((used.size, T), np.float32)
    rows = max(1, _PAIR_ELEMENTS // max(T, 1))
    for r0 in range(0, used.size, rows):
        block = np.asarray(C[used[r0:r0 + rows]], dtype=np.float64)
        block -= block.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, norm, out=block, where=norm > 0)
        unit[r0:r0 + rows] = block
    ui, uj = inv[:i.size], inv[i.size:]
    corr = np.empty(i.size)
    for s in range(0, i.size, rows):
        e = min(i.size, s + rows)
        corr[s:e] = np.einsum("pt,pt->p", unit[ui[s:e]], unit[uj[s:e]], dtype=np.float64)
    return corr


def merge_components(est: Estimates, params: Any = None, *, engine: Any = None,
                     keep_apart: np.ndarray | None = None, groups: list[np.ndarray] | None = None) -> MergeResult:
    """Merge overlapping, correlated components of ``est`` (see the module docstring).

    ``est`` needs ``A`` and ``C``; ``YrA`` (residual traces) is used when present. The
    deconvolution fields of the merged components (``S``, ``bl``, ``c1``, ``neurons_sn``,
    ``g``, ``lam``) come from deconvolving their new traces; fields ``est`` does not hold stay
    None. ``est`` is not modified; without a group to merge, the result shares its arrays.

    Parameters
    ----------
    est
        Components to merge.
    params
        :class:`somascope.params.Params`: ``merge.merge_thr``, ``merge.max_merge_area``,
        ``merge.do_merge`` (False: nothing is merged) and the ``deconvolution`` group.
    engine
        Unused for now (merging is cheap); accepted for symmetry with the other steps.
    keep_apart
        ``(K,)`` labels of components that must stay apart (:func:`find_merge_groups`).
    groups
        The groups to merge (disjoint index arrays of ≥ 2 components), found elsewhere (e.g.
        a cell's pieces in adjacent planes of a volume); None: :func:`find_merge_groups`.
    """
    from somascope.deconvolution import deconvolve_traces
    from somascope.params import Params

    params = Params() if params is None else params
    if est.C is None:
        raise ValueError("merging needs traces: est.C is None. Run the temporal update first.")
    if groups is not None:
        groups = [np.asarray(g, np.int64) for g in groups if len(g) >= 2]
    elif params.merge.do_merge:
        groups = find_merge_groups(est.A, est.C, params.merge.merge_thr,
                                   max_merge_area=params.merge.max_merge_area, keep_apart=keep_apart)
    else:
        groups = []
    if not groups:
        return MergeResult(estimates=_clear_quality(est), groups=[])

    A = sp.csc_matrix(est.A, dtype=np.float64)
    merged_a, merged_raw = [], []
    for members in groups:  # raw traces of the groups' members only (float64)
        raw = np.asarray(est.C[members], dtype=np.float64)
        if est.YrA is not None:
            raw += est.YrA[members]
        a, c = _rank1(A[:, members], raw)
        merged_a.append(a)
        merged_raw.append(c)
    raw_new = np.vstack(merged_raw)
    dec = deconvolve_traces(raw_new, params=params.deconvolution)

    keep = np.setdiff1d(np.arange(est.K), np.concatenate(groups))
    A_out = sp.hstack([A[:, keep], sp.hstack(merged_a)], format="csc").astype(np.float32)

    def stack(name: str, new: np.ndarray) -> np.ndarray | None:
        """The kept components' rows of ``est.<name>`` then ``new``: one new array, no copy of
        the kept rows on the way (a long recording's traces are hundreds of MB each)."""
        old = getattr(est, name)
        if old is None:
            return None
        out = np.empty((keep.size + new.shape[0], *old.shape[1:]), old.dtype)
        np.take(old, keep, axis=0, out=out[:keep.size])
        out[keep.size:] = new
        return out

    fields: dict[str, Any] = {
        "C": stack("C", dec.C),
        "S": stack("S", dec.S),
        "YrA": stack("YrA", raw_new - dec.C),
        "bl": stack("bl", dec.b),
        "c1": stack("c1", dec.c1),
        "neurons_sn": stack("neurons_sn", dec.sn),
        "lam": stack("lam", dec.lam),
    }
    if est.g is not None:
        g_new = dec.g if dec.g.shape[1] == est.g.shape[1] else np.zeros((len(groups), est.g.shape[1]))
        fields["g"] = stack("g", g_new)

    def copied(arr: Any) -> Any:
        return None if arr is None else arr.copy()

    merged = Estimates(
        A=A_out, dims=est.dims, b=copied(est.b), f=copied(est.f), sn=copied(est.sn),
        frame_rate=est.frame_rate, params=copy.deepcopy(est.params),
        software_version=est.software_version, seed=est.seed,
        provenance=copy.deepcopy(est.provenance), extra=copy.deepcopy(est.extra), **fields,
    )
    return MergeResult(estimates=merged, groups=groups)


def _rank1(X: sp.csc_matrix, Z: np.ndarray) -> tuple[sp.csc_matrix, np.ndarray]:
    """Rank-1 NMF ``a·c ≈ X·Z`` (``X``: pixels × n footprints, ``Z``: n × T traces).

    Returns the footprint as a unit-norm sparse column and its raw trace ``c = aᵀ·X·Z``
    (T,), float64.
    """
    rows = np.unique(X.indices)
    Xd = X[rows].toarray()  # (m, n)
    weights = np.linalg.norm(Xd, axis=0)
    c = np.maximum(weights @ Z, 0.0)  # start: the traces weighted by footprint size
    a = np.zeros(rows.size)
    for _ in range(RANK1_ITERATIONS):
        cc = c @ c
        if cc <= 0:
            break
        a_new = np.maximum(Xd @ (Z @ c) / cc, 0.0)
        aa = a_new @ a_new
        if aa <= 0:
            break
        c_new = np.maximum((a_new @ Xd) @ Z / aa, 0.0)
        done = np.allclose(a_new, a, rtol=1e-6, atol=0) and np.allclose(c_new, c, rtol=1e-6, atol=0)
        a, c = a_new, c_new
        if done:
            break
    norm = np.linalg.norm(a)
    if norm > 0:
        a = a / norm
    else:  # degenerate group: fall back to the summed footprint
        a = Xd.sum(axis=1)
        a /= max(np.linalg.norm(a), 1e-300)
    c = (a @ Xd) @ Z  # the raw trace of the merged footprint (not clipped: noise stays whole)
    col = sp.csc_matrix((a, (rows, np.zeros(rows.size, np.int64))), shape=(X.shape[0], 1))
    col.eliminate_zeros()
    return col, c


def _clear_quality(est: Estimates) -> Estimates:
    """``est`` without its quality fields (a shallow copy: the arrays are shared)."""
    return dataclasses.replace(est, SNR_comp=None, r_values=None, cnn_preds=None, activity=None, idx_components=None,
                               idx_components_bad=None)
