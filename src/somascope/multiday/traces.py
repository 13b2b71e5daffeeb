"""Traces of every union cell in every session, from the session's own movie.

The union footprints (reference frame, session 0) are carried into each session's frame with
the inverse of that session's alignment, then used as the masks of the seeded CNMF
initialisation (:func:`somascope.cnmf.seeded.seeded_initialization`: background from the
uncovered pixels, traces by non-negative least squares of the masks against the movie minus
background), read block by block from the session's motion-corrected Store. A cell that is
silent on a day still gets a trace (flat, near zero). :func:`deconvolve_union` then denoises
each trace and infers its spikes with OASIS and the session's ``deconvolution`` parameters
(the temporal update of CNMF with the footprints held fixed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .align import fit_to_shape, invert_flow, warp_footprints
from .register import MultiResult, Session

log = logging.getLogger(__name__)

__all__ = ["deconvolve_union", "session_footprints", "union_traces"]


def session_footprints(multi: MultiResult, s: int, dims: Sequence[int]) -> sp.csc_matrix:
    """The union footprints (``pixels × n_union``, reference frame) carried into session ``s``'s
    field of shape ``dims`` (``(H, W)``)."""
    dims = (int(dims[0]), int(dims[1]))
    flow = multi.alignments[s].flow
    if s == 0 or not np.abs(flow).any():
        inv = np.zeros((2, *dims), np.float32)
    else:
        inv = invert_flow(flow)  # on the reference grid: session(p) ≈ reference(p + inv(p))
        if inv.shape[1:] != dims:
            inv = np.stack([fit_to_shape(c, dims, "inverse flow") for c in inv])
    return warp_footprints(multi.union_A, inv, dims, src_dims=multi.dims)


def union_traces(multi: MultiResult, sessions: Sequence[Session], *, nb: int | None = None,
                 engine: object = None) -> list[np.ndarray | None]:
    """``(n_union, T_s)`` float32 traces per session (None for a session without a Store).

    ``sessions`` are the :class:`Session` objects in the order registered; each needs
    ``store`` (the ``stages/motion/movie.zarr`` of its ``somascope run`` folder). ``nb``:
    background rank (default the run's ``init.nb``, at least 1).
    """
    from ..cnmf.blocked import BlockedMovie
    from ..cnmf.seeded import seeded_initialization
    from ..store import Store

    out: list[np.ndarray | None] = []
    for s, ses in enumerate(sessions):
        if ses.store is None:
            log.warning("%s: traces need the session's run folder (its stages/motion/movie.zarr); this input is a "
                        "bare results file or in-memory object, so it gets footprints and the table only",
                        ses.name)
            out.append(None)
            continue
        store = Store.open(ses.store)
        dims = tuple(int(d) for d in store.shape[1:])
        masks = session_footprints(multi, s, dims)
        rank = nb if nb is not None else int(((ses.params or {}).get("init") or {}).get("nb", 1) or 1)
        empty = np.asarray(masks.sum(axis=0)).ravel() <= 0
        if empty.any():
            log.warning("%s: %d union cells fall outside this field; their traces are zero", ses.name, int(empty.sum()))
        keep = np.flatnonzero(~empty)
        C = np.zeros((multi.n_union, int(store.shape[0])), np.float32)
        if keep.size:
            init = seeded_initialization(BlockedMovie(store, engine), masks[:, keep], nb=max(1, rank))
            C[keep] = init.C
        log.info("%s: %d union traces × %d frames extracted", ses.name, multi.n_union, C.shape[1])
        out.append(C)
    return out


def deconvolve_union(traces: Sequence[np.ndarray | None], sessions: Sequence[Session]
                     ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """``(denoised, spikes)``: per session, ``(n_union, T_s)`` float32 arrays from OASIS on the
    raw union traces of :func:`union_traces` (None where there are none), with each session's
    ``deconvolution`` parameters (its run's, else the defaults)."""
    from ..deconvolution import deconvolve_traces
    from ..params import Params

    denoised: list[np.ndarray | None] = []
    spikes: list[np.ndarray | None] = []
    for C, ses in zip(traces, sessions):
        if C is None or not len(C):
            denoised.append(None if C is None else np.zeros_like(C))
            spikes.append(None if C is None else np.zeros_like(C))
            continue
        params = Params.from_dict(ses.params) if ses.params else Params.from_dict({})
        d = deconvolve_traces(np.asarray(C, np.float64), params=params.deconvolution)
        denoised.append(np.asarray(d.C, np.float32))
        spikes.append(np.asarray(d.S, np.float32))
    return denoised, spikes
