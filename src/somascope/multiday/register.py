"""Registering the components of two (RegisterPair) or many (RegisterMulti) sessions.

Two sessions: the moving session's template is aligned to the reference's
(:func:`somascope.multiday.align.align_images`), its footprints are carried into the reference
frame (:func:`~somascope.multiday.align.warp_footprints`), and the two sets are matched with
:func:`somascope.metrics.match_footprints` (binarised at :data:`~somascope.metrics.MASK_FRAC`
of each peak, largest connected piece, Jaccard distance, pairs at distance ≥ ``thresh_cost``
never matched, optional centroid cap ``max_dist``, Hungarian assignment).

Many sessions: the union of cells is built session by session. It starts as session 0's
cells (session 0 is the reference frame); each later session is aligned to session 0 directly
(no chained errors), matched against the running union, its matched cells join their union
cell and its unmatched cells become new union cells. The result is an assignment table
(sessions × union cells, the session's component index or -1 where absent) and the union
footprints in session 0's frame.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..metrics import MASK_FRAC, Match, match_footprints
from .align import Alignment, align_images, fit_to_shape, warp_footprints

log = logging.getLogger(__name__)

__all__ = ["MultiResult", "PairResult", "Session", "as_session", "linking_scores", "register_multi",
           "register_pair"]


@dataclass
class Session:
    """One session's components as registration sees them.

    Attributes
    ----------
    A : ``pixels × K`` CSC float64 footprints, pixels in C order of ``dims``.
    dims : ``(H, W)``.
    template : ``(H, W)`` float image (mean or correlation image) the alignment uses.
    index : ``(K,)`` int, each column's component index in the source estimates (so an
        accepted-only selection still reports the original indices).
    name : label used in logs, tables and reports.
    dxy : pixel size (µm) when known, else None.
    store : path of the session's motion-corrected movie Store when known (for traces), else None.
    params : the run's parameters (dict) when known.
    """

    A: sp.csc_matrix
    dims: tuple[int, int]
    template: np.ndarray
    index: np.ndarray
    name: str = "session"
    dxy: Any = None
    store: Path | None = None
    params: dict[str, Any] | None = None

    @property
    def K(self) -> int:
        return int(self.A.shape[1])


@dataclass
class PairResult:
    """The registration of session B onto session A (:func:`register_pair`).

    ``matched_a[i]`` and ``matched_b[i]`` are the same cell (indices into the registered
    components of A and B, i.e. columns of ``Session.A``; ``index_a``/``index_b`` map them to
    the source estimates). ``distances`` is the ``K_a × K_b`` Jaccard distance matrix after
    alignment (1 where masks do not overlap). ``A_b_in_a`` are B's footprints in A's frame.
    """

    matched_a: np.ndarray
    matched_b: np.ndarray
    unmatched_a: np.ndarray
    unmatched_b: np.ndarray
    distances: np.ndarray
    alignment: Alignment
    A_b_in_a: sp.csc_matrix
    index_a: np.ndarray
    index_b: np.ndarray
    match: Match = field(repr=False)

    @property
    def n_matched(self) -> int:
        return int(self.matched_a.size)


@dataclass
class MultiResult:
    """The registration of many sessions (:func:`register_multi`).

    Attributes
    ----------
    assignments : ``(n_sessions, n_union)`` int64: the component index (in the session's
        source estimates) of each union cell in each session, -1 where the cell was not found.
    union_A : ``pixels × n_union`` CSC footprints in the reference frame (session 0), each the
        first footprint seen of that cell.
    dims : ``(H, W)`` of the reference frame.
    names : session labels.
    alignments : each session's :class:`Alignment` to session 0 (identity for session 0).
    templates : the sessions' template images as used (fitted to the reference size).
    traces, denoised, spikes : per session, ``(n_union, T)`` raw traces of every union cell
        (:func:`~somascope.multiday.traces.union_traces`), OASIS-denoised traces and spikes
        (:func:`~somascope.multiday.traces.deconvolve_union`); None until computed.
    """

    assignments: np.ndarray
    union_A: sp.csc_matrix
    dims: tuple[int, int]
    names: list[str]
    alignments: list[Alignment]
    templates: list[np.ndarray]
    traces: list[np.ndarray] | None = None
    denoised: list[np.ndarray] | None = None
    spikes: list[np.ndarray] | None = None

    @property
    def n_union(self) -> int:
        return int(self.assignments.shape[1])

    @property
    def n_sessions_per_cell(self) -> np.ndarray:
        """``(n_union,)``: in how many sessions each union cell was found."""
        return (self.assignments >= 0).sum(axis=0)

    def pair_counts(self) -> list[dict[str, Any]]:
        """For every pair of sessions: cells in each, cells found in both."""
        rows = []
        for s, t in itertools.combinations(range(len(self.names)), 2):
            a, b = self.assignments[s] >= 0, self.assignments[t] >= 0
            rows.append({"a": self.names[s], "b": self.names[t], "n_a": int(a.sum()), "n_b": int(b.sum()),
                         "matched": int((a & b).sum())})
        return rows


# -- inputs ------------------------------------------------------------------------------------
def _pick_template(summary: dict[str, np.ndarray], which: str, where: str) -> np.ndarray:
    for name in (which, "mean", "corr", "max"):
        if name in summary:
            if name != which:
                log.info("%s: no %r summary image; using %r as template", where, which, name)
            return np.asarray(summary[name], np.float64)
    raise ValueError(f"{where}: the results file has no summary image to align with (wanted {which!r}); "
                     "pass a template image.")


def _results_path(path: Path) -> tuple[Path, Path | None]:
    """(results file, run folder or None) for a run folder or a results file."""
    from ..pipeline.results import RESULTS_FILE

    if path.is_dir():
        f = path / RESULTS_FILE
        if not f.is_file():
            raise FileNotFoundError(f"{path}: no {RESULTS_FILE} in this folder; give the --out folder of a finished "
                                    "'somascope run' or a results file.")
        return f, path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such run folder or results file.")
    folder = path.parent if (path.parent / "stages").is_dir() else None
    return path, folder


def as_session(obj: Any, template: np.ndarray | None = None, *, accepted_only: bool = True,
               name: str | None = None, which: str = "mean") -> Session:
    """A :class:`Session` from a run folder / results file path, an Estimates-like object
    (``A`` pixels × K, ``dims``; with ``template``), a ``(K, H, W)`` footprint stack or a
    ``pixels × K`` matrix (with ``template``, whose shape gives the field), or a Session
    (returned as is).

    ``accepted_only`` keeps ``est.accepted_indices`` (all components when none were evaluated);
    ``which`` names the summary image used as template for results files ("mean", "corr").
    """
    if isinstance(obj, Session):
        return obj
    dxy, store, params = None, None, None
    if isinstance(obj, (str, os.PathLike)):
        from ..pipeline.results import load_results

        rfile, folder = _results_path(Path(obj))
        res = load_results(rfile)
        est, params = res.estimates, res.params
        name = name or (folder.name if folder is not None else rfile.stem)
        if template is None:
            template = _pick_template(res.summary, which, str(obj))
        dxy = (params.get("data") or {}).get("dxy")
        if folder is not None and (folder / "stages" / "motion" / "movie.zarr").exists():
            store = folder / "stages" / "motion" / "movie.zarr"
        A, dims = est.A, tuple(int(d) for d in est.dims)
        index = est.accepted_indices if accepted_only else np.arange(est.K)
    elif hasattr(obj, "A") and hasattr(obj, "dims"):
        A, dims = obj.A, tuple(int(d) for d in obj.dims)
        K = int(A.shape[1])
        index = np.asarray(obj.accepted_indices) if (accepted_only and hasattr(obj, "accepted_indices")) \
            else np.arange(K)
        if getattr(obj, "params", None) is not None:
            d = getattr(getattr(obj.params, "data", None), "dxy", None)
            dxy = d
    elif (sp.issparse(obj) or np.ndim(obj) == 2) and template is not None:  # pixels × K, dims of the template
        dims = tuple(int(d) for d in np.shape(template))
        A = sp.csc_matrix(obj, dtype=np.float64)
        if A.shape[0] != int(np.prod(dims)):
            raise ValueError(f"{name or 'session'}: a pixels × K footprint matrix has {A.shape[0]} rows but the "
                             f"template {dims} has {int(np.prod(dims))} pixels.")
        index = np.arange(A.shape[1])
    else:
        arr = np.asarray(obj)
        if arr.ndim != 3:
            raise TypeError(f"cannot register {type(obj).__name__}: give a run folder, a results file, an Estimates "
                            "or a (K, H, W) footprint stack with a template.")
        dims = (int(arr.shape[1]), int(arr.shape[2]))
        A = sp.csc_matrix(arr.reshape(arr.shape[0], dims[0] * dims[1]).T.astype(np.float64))
        index = np.arange(arr.shape[0])
    if template is None:
        raise ValueError(f"{name or 'session'}: a template image (mean or correlation image, (H, W)) is needed to "
                         "align this session; pass template=…")
    if len(dims) != 2:
        raise ValueError(f"{name or 'session'}: multi-day registration is for 2-D fields; got dims {dims}.")
    template = np.asarray(template, np.float64)
    if template.shape != dims:
        raise ValueError(f"{name or 'session'}: template shape {template.shape} differs from the footprints' "
                         f"field {dims}.")
    A = sp.csc_matrix(A, dtype=np.float64)[:, np.asarray(index, np.int64)]
    return Session(A, (dims[0], dims[1]), template, np.asarray(index, np.int64), name or "session", dxy, store,
                   params)


def _check_pixel_sizes(sessions: Sequence[Session]) -> None:
    known = [(s.name, s.dxy) for s in sessions if s.dxy is not None]
    for (n0, d0), (n1, d1) in itertools.combinations(known, 2):
        if not np.allclose(np.asarray(d0, float), np.asarray(d1, float), rtol=1e-3):
            raise ValueError(f"sessions {n0!r} and {n1!r} have different pixel sizes (data.dxy {d0} vs {d1}); "
                             "resample one field to the other's pixel size before registering.")


# -- pairs -------------------------------------------------------------------------------------
def _in_frame(session: Session, ref: Session, align: bool) -> tuple[Alignment, sp.csc_matrix]:
    """``session``'s alignment to ``ref`` and its footprints carried into ``ref``'s frame."""
    if align:
        al = align_images(ref.template, session.template)
    else:
        al = Alignment.identity(ref.dims)
        if session.dims != ref.dims:
            log.info("%s: field %s padded/cropped to %s", session.name, session.dims, ref.dims)
    if session.K == 0:
        return al, sp.csc_matrix((ref.dims[0] * ref.dims[1], 0))
    if not align and session.dims == ref.dims:
        return al, session.A
    return al, warp_footprints(session.A, al.flow, ref.dims, src_dims=session.dims)


def _match(A_ref: sp.csc_matrix, A_est: sp.csc_matrix, dims: tuple[int, int], thresh_cost: float,
           max_dist: float | None, keep: bool = False) -> Match:
    return match_footprints(A_ref, A_est, dims, binarise_frac=MASK_FRAC, max_distance=thresh_cost,
                            max_centroid_distance=max_dist, largest_piece=True, keep_distances=keep)


def register_pair(res_a: Any, res_b: Any, *, accepted_only: bool = True, thresh_cost: float = 0.7,
                  max_dist: float | None = None, align: bool = True, template_a: np.ndarray | None = None,
                  template_b: np.ndarray | None = None) -> PairResult:
    """Register session B's components onto session A's (the paper's RegisterPair).

    ``res_a``/``res_b``: run folders, results files, Estimates-like objects (with
    ``template_a``/``template_b``) or :class:`Session`. ``thresh_cost``: largest Jaccard distance
    of a match (exclusive); ``max_dist``: centroid cap in px (None: none); ``align=False``
    assumes the fields are already aligned.
    """
    a = as_session(res_a, template_a, accepted_only=accepted_only, name="A")
    b = as_session(res_b, template_b, accepted_only=accepted_only, name="B")
    _check_pixel_sizes([a, b])
    for s in (a, b):
        if s.K == 0:
            log.warning("%s has no components to register", s.name)
    al, A_b = _in_frame(b, a, align)
    m = _match(a.A, A_b, a.dims, thresh_cost, max_dist, keep=True)
    return PairResult(m.ref_idx, m.est_idx, m.unmatched_ref, m.unmatched_est, m.distance_matrix, al, A_b,
                      a.index, b.index, m)


# -- many sessions -----------------------------------------------------------------------------
def register_multi(results: Sequence[Any], templates: Sequence[np.ndarray | None] | None = None, *,
                   accepted_only: bool = True, thresh_cost: float = 0.7, max_dist: float | None = None,
                   align: bool = True, names: Sequence[str] | None = None) -> MultiResult:
    """Register the components of several sessions (the paper's RegisterMulti).

    Parameters are those of :func:`register_pair`; ``templates`` (one per session, or None)
    are needed for inputs that carry none (Estimates, footprint stacks). Session 0 is the
    reference frame. Empty sessions (no components) are logged and get a row of -1.
    """
    if len(results) < 2:
        raise ValueError(f"register_multi needs at least 2 sessions; got {len(results)}.")
    templates = list(templates) if templates is not None else [None] * len(results)
    if len(templates) != len(results):
        raise ValueError(f"{len(templates)} templates for {len(results)} sessions; give one per session.")
    sessions = [as_session(r, t, accepted_only=accepted_only,
                           name=(names[i] if names is not None else f"s{i}"))
                for i, (r, t) in enumerate(zip(results, templates))]
    _check_pixel_sizes(sessions)
    ref = sessions[0]
    union = ref.A
    table = [list(ref.index)]
    alignments = [Alignment.identity(ref.dims)]
    used_templates = [ref.template]
    if ref.K == 0:
        log.warning("%s has no components: the union starts empty", ref.name)
    for s in sessions[1:]:
        al, A_s = _in_frame(s, ref, align)
        alignments.append(al)
        used_templates.append(fit_to_shape(s.template, ref.dims, f"{s.name} template"))
        log.info("%s → %s: rigid shift (%.2f, %.2f) px, non-rigid ≤ %.2f px, template corr %.2f → %.2f", s.name,
                 ref.name, al.rigid[0], al.rigid[1], al.nonrigid_max, al.corr_before, al.corr_after)
        if s.K == 0:
            log.warning("%s has no components: it gets -1 for every union cell", s.name)
        row = [-1] * union.shape[1]
        m = _match(union, A_s, ref.dims, thresh_cost, max_dist)
        for u, k in zip(m.ref_idx, m.est_idx):
            row[int(u)] = int(s.index[k])
        new = m.unmatched_est
        for row_prev in table:
            row_prev.extend([-1] * new.size)
        row.extend(int(s.index[k]) for k in new)
        table.append(row)
        union = sp.hstack([union, A_s[:, new]], format="csc")
        log.info("%s: %d of %d cells matched the union, %d new (union %d)", s.name, m.tp, s.K, new.size,
                 union.shape[1])
    n_union = union.shape[1]
    assignments = np.array(table, np.int64).reshape(len(sessions), n_union)
    return MultiResult(assignments, sp.csc_matrix(union), ref.dims, [s.name for s in sessions], alignments,
                       used_templates)


# -- scoring -----------------------------------------------------------------------------------
def linking_scores(assignments: np.ndarray, ids: Sequence[np.ndarray]) -> dict[str, float]:
    """Pairwise linking precision / recall / F1 against known identities.

    ``assignments``: ``(n_sessions, n_union)`` table of component indices (-1 absent);
    ``ids[s]``: ``(K_s,)`` the true identity of session s's components (e.g. the simulator's
    ``global_id``; -1 or negative: no identity, never a true link). Over all session pairs, a
    predicted link is two components in one union column; a true link is two components with
    the same identity. Returns ``{"tp", "n_pred", "n_true", "precision", "recall", "f1"}``.
    """
    tab = np.asarray(assignments)
    tp = n_pred = n_true = 0
    for s, t in itertools.combinations(range(tab.shape[0]), 2):
        ids_s, ids_t = np.asarray(ids[s]), np.asarray(ids[t])
        both = (tab[s] >= 0) & (tab[t] >= 0)
        gs, gt = ids_s[tab[s, both]], ids_t[tab[t, both]]
        n_pred += int(both.sum())
        tp += int(((gs == gt) & (gs >= 0)).sum())
        n_true += len(np.intersect1d(ids_s[ids_s >= 0], ids_t[ids_t >= 0]))
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_pred + n_true) if (n_pred + n_true) else 0.0
    return {"tp": tp, "n_pred": n_pred, "n_true": n_true, "precision": prec, "recall": rec, "f1": f1}
