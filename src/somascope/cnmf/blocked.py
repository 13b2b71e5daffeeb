"""CNMF's passes over the movie, out of core: a Store read in spatial blocks by the workers.

The spatial and temporal updates of CNMF touch the movie only through two products:

* ``U[p, j] = Σ_t Y[t, p]·Cf[j, t]`` at the pixels ``p`` of each component's search region
  (plus each pixel's mean and, for ``nnls_L0``, sum of squares) — the spatial update's
  sufficient statistics (:func:`somascope.cnmf.spatial.update_spatial`);
* ``AᵀY`` (components × frames) — the temporal update's projection
  (:func:`somascope.cnmf.temporal.update_temporal`).

Both are sums over pixels, so a :class:`BlockedMovie` splits the field of view into blocks of
whole Store bricks (``block``, default the Store's spatial chunk, 64 × 64 px) and lets each
engine task open the Store by path, read *its* block over all frames, ``chunk_frames`` at a
time, and return a small partial result (the entries of its own pixels, or ``m × T`` traces of
the ``m`` components that touch the block). Nothing of size pixels × frames is ever held by
one process, and no movie data travels through the scheduler: only block coordinates, the
traces of the components that touch a block, and the partial results.

This is the paper's parallel refinement on the full field of view (CaImAn, Algorithm 2):
footprint statistics by pixel blocks in parallel; traces by the groups of non-overlapping
components of :func:`~somascope.cnmf.temporal.update_order`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["BlockedMovie"]

#: Float32 elements read at a time inside one block task (≈ 64 MiB).
_CHUNK_ELEMENTS = 16 * 2**20


@dataclass
class BlockedMovie:
    """A movie ``T × *dims`` in a Store, read block by block on an engine.

    Parameters
    ----------
    store
        A complete :class:`somascope.store.Store` (pickled to workers as its path).
    engine
        :class:`somascope.parallel.Engine`; None runs the blocks in this process.
    block
        Spatial block shape (px per axis); default the Store's spatial chunk shape, so a task
        reads whole bricks.
    progress
        Show a progress bar over the blocks of each pass.
    """

    store: Any
    engine: Any = None
    block: tuple[int, ...] | None = None
    progress: bool = False
    _blocks: list[tuple[slice, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        dims = self.dims
        block = tuple(self.store.chunks[1:]) if self.block is None else tuple(self.block)
        if len(block) != len(dims) or min(block) < 1:
            raise ValueError(f"block {block} must give one positive size per spatial axis of {dims}.")
        self.block = block
        corners = itertools.product(*[range(0, d, b) for d, b in zip(dims, block)])
        self._blocks = [tuple(slice(s, min(s + b, d)) for s, b, d in zip(c, block, dims))
                        for c in corners]

    # -- shape -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.store.shape)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.dims))

    @property
    def blocks(self) -> list[tuple[slice, ...]]:
        """Spatial blocks in C order, each a tuple of slices of the frame axes."""
        return list(self._blocks)

    def block_pixels(self, blk: tuple[slice, ...]) -> np.ndarray:
        """Flat (C-order) indices of the pixels of block ``blk``, in the block's C order."""
        grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in blk], indexing="ij")
        return np.ravel_multi_index(tuple(g.ravel() for g in grids), self.dims).astype(np.int64)

    # -- passes ------------------------------------------------------------------------
    def project(self, Ab: Any, *, dtype: Any = np.float64) -> np.ndarray:
        """``Abᵀ·Y`` as ``M × T`` (``dtype``) for footprints ``Ab`` (pixels × M); each block's
        part is summed in float64 and comes back in ``dtype``."""
        Ab = sp.csr_matrix(Ab, dtype=np.float64)
        if Ab.shape[0] != self.n_pixels:
            raise ValueError(f"the footprints have {Ab.shape[0]} pixels; the movie has {self.n_pixels}.")
        M, T = Ab.shape[1], self.n_frames
        touched = []
        for blk in self._blocks:
            sub = Ab[self.block_pixels(blk)].tocsc()
            cols = np.flatnonzero(np.diff(sub.indptr) > 0)
            if cols.size:
                touched.append((blk, sp.csr_matrix(sub[:, cols]), cols))
        out = np.zeros((M, T), dtype)
        items = ((self.store, blk, sub, cols, np.dtype(dtype)) for blk, sub, cols in touched)
        for _, (cols, part) in self._run(_project_block, items, "AᵀY", len(touched)):
            out[cols] += part
        return out

    def pattern_statistics(self, Cf: np.ndarray, indptr: np.ndarray, comp: np.ndarray, *,
                           need_yy: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The spatial update's statistics over a sparsity pattern.

        ``indptr`` (``pixels + 1``) and ``comp`` give, for every pixel ``p``, the rows of
        ``Cf`` (``M × T``) its entries ``e`` refer to. Returns ``U[e] = Σ_t Y[t, p]·Cf[comp[e], t]``,
        the per-pixel sums of squares (if ``need_yy``, else None) and the per-pixel means.
        """
        P, T = self.n_pixels, self.n_frames
        Cf = np.asarray(Cf)  # float32 or float64 as given: each block's traces are sent as float32
        indptr = np.asarray(indptr, dtype=np.int64)
        comp = np.asarray(comp, dtype=np.int64)
        U = np.zeros(comp.size)
        yy = np.zeros(P) if need_yy else None
        ymean = np.zeros(P)
        where = []
        for blk in self._blocks:
            px = self.block_pixels(blk)
            starts, stops = indptr[px], indptr[px + 1]
            counts = stops - starts
            local_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            entries = np.repeat(starts - local_indptr[:-1], counts) + np.arange(local_indptr[-1])
            where.append((blk, px, local_indptr, entries))

        def items() -> Any:  # each block's traces (frames × its components) built when submitted
            for blk, _, local_indptr, entries in where:
                used, local = np.unique(comp[entries], return_inverse=True)
                CfT = np.ascontiguousarray(Cf[used].T, dtype=np.float32)
                yield self.store, blk, local_indptr, local.astype(np.int64), CfT, need_yy

        for i, (u, s, q) in self._run(_statistics_block, items(), "Y·Cᵀ", len(where)):
            _, px, _, entries = where[i]
            U[entries] = u
            ymean[px] = s / T
            if yy is not None:
                yy[px] = q
        return U, yy, ymean

    def noise(self, noise_range: Any = (0.25, 0.5), method: str = "mean") -> np.ndarray:
        """Noise standard deviation of every pixel, ``(pixels,)`` float64 (each block's pixels
        over the frames :func:`somascope.deconvolution.noise.pixel_noise_frames` picks, as
        :func:`somascope.cnmf.fit.pixel_noise` does in memory)."""
        items = ((self.store, blk, tuple(noise_range), method) for blk in self._blocks)
        sn = np.empty(self.n_pixels)
        for i, part in self._run(_noise_block, items, "pixel noise", len(self._blocks)):
            sn[self.block_pixels(self._blocks[i])] = part
        return sn

    def _run(self, fn: Any, items: Any, desc: str, total: int) -> Any:
        """``(i, fn(item_i))`` as the blocks finish; items are built lazily, a few in flight."""
        if self.engine is None:
            return ((i, fn(item)) for i, item in enumerate(items))
        return self.engine.imap(fn, items, desc=desc, progress=self.progress, unit="block", total=total)


# ------------------------------------------------------------------------------------------
# tasks (module level: they run on workers)


def _frames_at_a_time(store: Any, blk: tuple[slice, ...]) -> int:
    from somascope.io.chunks import aligned_chunk_frames

    n = int(np.prod([s.stop - s.start for s in blk]))
    return aligned_chunk_frames(store, _CHUNK_ELEMENTS // max(n, 1))


def _chunks(store: Any, blk: tuple[slice, ...]) -> Any:
    """``(t0, t1, frames × block pixels)`` over all frames, whole Store chunks, read ahead."""
    from somascope.io.chunks import frame_ranges, read_ahead

    ranges = frame_ranges(int(store.shape[0]), _frames_at_a_time(store, blk))
    return read_ahead(lambda t0, t1: _read_block(store, blk, t0, t1), ranges)


def _read_block(store: Any, blk: tuple[slice, ...], t0: int, t1: int) -> np.ndarray:
    data = np.asarray(store[(slice(t0, t1),) + tuple(blk)], dtype=np.float32)
    return data.reshape(t1 - t0, -1)


def _project_block(item: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``A_blockᵀ·Y_block`` for the components ``cols`` that touch the block: ``(cols, m × T)``,
    summed in float64 and sent back in the dtype asked for."""
    from .temporal import project_slab

    store, blk, A_sub, cols, dtype = item
    found, part = project_slab(_chunks(store, blk), A_sub, int(store.shape[0]))
    return cols[found], part.astype(dtype, copy=False)


def _statistics_block(item: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pattern products, pixel sums and sums of squares of one block."""
    from .spatial import slab_statistics

    store, blk, indptr, comp, CfT, need_yy = item
    return slab_statistics(_chunks(store, blk), indptr, comp, CfT, need_yy=need_yy)


def _noise_block(item: tuple[Any, ...]) -> np.ndarray:
    """Noise of every pixel of one block (each segment of frames read at once)."""
    from somascope.deconvolution.noise import estimate_noise_segments, pixel_noise_frames

    store, blk, noise_range, method = item
    segments = [_read_block(store, blk, t0, t1) for t0, t1 in pixel_noise_frames(int(store.shape[0]))]
    return estimate_noise_segments(segments, noise_range, method)
