"""The CNMF-E ring background of one-photon data (Zhou et al., eLife 2018; CaImAn paper, Methods).

A micro-endoscope's background is large (cells are a few percent of it), bright, spatially
smooth and fluctuating; a low-rank ``b·f`` does not describe it. CNMF-E models the background
at each pixel as its mean plus a weighted sum of the pixels on a ring around it::

    B(p, t) = b0(p) + Σ_q W[p, q] · (Y(q, t) − (A·C)(q, t) − b0(q)),   q on the ring of p

The ring (radius ``init.ring_size_factor × gSiz / 2``, :func:`ring_radius`) lies just outside
a neuron centred on ``p``, so the prediction carries the background that the neuron shares
with its surroundings and none of the neuron's own signal. ``W`` is sparse (one ring of
weights per pixel) and fitted by ridge-regularised least squares on the residual with the
known components removed (:func:`fit_ring_weights`), each pixel on its frames without a
transient, so that the weights learn the background and not a cell that is not yet known. To
scale, the fit runs on a grid downsampled ``init.ssub_B`` times in space (block means) and on
at most :data:`RING_FIT_BINS` time bins; the background is then brought back to full resolution by
linear interpolation (the same interpolation as :func:`~somascope.cnmf.initialization.upsample`).

:func:`fit_ring_model` makes one pass over a movie (array or Store, out of core) and returns a
:class:`RingModel`; :func:`subtract_ring_background` makes a second pass and writes
``Y − B`` — a movie whose background is gone and whose cells sit on zero, as in two-photon
data — to a new Store (or an array). The rest of CNMF (patches, updates, merging, quality
tests) then runs on that movie; the Store is marked (:data:`MARK`) so that it is never
background-subtracted twice.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["RingModel", "MARK", "ring_radius", "ring_offsets", "fit_ring_weights", "fit_ring_model",
           "subtract_ring_background", "ring_output_path", "is_ring_subtracted", "save_ring_model",
           "load_ring_model"]

log = logging.getLogger(__name__)

#: Most time bins the ring weights are fitted on: longer movies are binned (the background
#: changes slowly; the fit's cost and memory stop growing with the recording).
RING_FIT_BINS = 1000
#: Most pixels of one ring (a longer ring is thinned evenly in angle).
MAX_RING_PIXELS = 64
#: Ridge penalty of the weight fit, relative to the mean variance of a ring pixel.
RIDGE = 1e-2
#: A pixel's weights are fitted on the frames where it lies at most this many robust standard
#: deviations above its median (:func:`fit_ring_weights`).
QUIET_MAD = 3.0
#: Pixels whose weights are solved in one batch.
_BATCH = 512
#: Float32 values read from the source at a time (≈ 128 MiB).
_READ_ELEMENTS = 32 * 2**20
#: Store attribute set on a background-subtracted movie.
MARK = "ring_background_subtracted"


@dataclass(frozen=True)
class RingModel:
    """A fitted ring background.

    Attributes
    ----------
    W : scipy.sparse.csr_matrix
        ``pixels_ds × pixels_ds`` ring weights on the grid downsampled ``ssub_B`` times.
    b0 : ndarray
        ``(pixels,)`` float32 mean background image at full resolution (movie units), C order.
    dims : tuple of int
        Full frame shape ``(H, W)``.
    ssub_B : int
        Spatial downsampling of the weights.
    radius : float
        Ring radius at full resolution (px).
    """

    W: sp.csr_matrix
    b0: np.ndarray
    dims: tuple[int, ...]
    ssub_B: int
    radius: float

    @functools.cached_property
    def _upsample(self) -> sp.csr_matrix:
        """``pixels × pixels_ds`` linear interpolation back to full resolution (built once)."""
        from .initialization import _spatial_interpolation

        return _spatial_interpolation(self.dims, (self.ssub_B,) * len(self.dims))

    def background(self, frames: np.ndarray, AC: np.ndarray | None = None) -> np.ndarray:
        """``B`` of ``frames`` (``t × H × W``) given the components' ``A·C`` on them (same
        shape; None: no component known). Float32 ``t × H × W``."""
        from .initialization import _block_mean

        frames = np.asarray(frames, np.float32)
        t = frames.shape[0]
        X = frames - self.b0.reshape(self.dims)
        if AC is not None:
            X = X - AC
        Xd = _block_mean(X, (1,) + (self.ssub_B,) * len(self.dims)).reshape(t, -1)
        Bd = np.asarray(self.W @ Xd.T)  # pixels_ds × t
        if self.ssub_B > 1:
            Bd = np.asarray(self._upsample @ Bd)
        B = Bd.T.reshape((t,) + self.dims).astype(np.float32)
        B += self.b0.reshape(self.dims)
        return B


def ring_radius(params: Any) -> float:
    """Ring radius in px: ``init.ring_size_factor × gSiz / 2`` (mean over the spatial axes)."""
    return float(params.init.ring_size_factor) * float(np.mean(params.init.gSiz)) / 2.0


def ring_offsets(radius: float, max_pixels: int = MAX_RING_PIXELS) -> np.ndarray:
    """``(n, 2)`` integer offsets ``(dy, dx)`` of the pixels within half a pixel of a circle of
    ``radius`` px, ordered by angle and thinned evenly to at most ``max_pixels``."""
    if not radius >= 1:
        raise ValueError(f"the ring radius must be at least 1 px, got {radius!r}. Fix: raise "
                         "init.ring_size_factor or init.gSiz, or lower init.ssub_B.")
    r = int(math.ceil(radius)) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    dist = np.hypot(yy, xx)
    on = (dist >= radius - 0.5) & (dist < radius + 0.5)
    off = np.column_stack([yy[on], xx[on]])
    off = off[np.argsort(np.arctan2(off[:, 0], off[:, 1]), kind="stable")]
    if off.shape[0] > max_pixels:
        off = off[np.round(np.linspace(0, off.shape[0], max_pixels, endpoint=False)).astype(int)]
    return off


def fit_ring_weights(X: np.ndarray, radius: float, *, ridge: float = RIDGE,
                     quiet_mad: float | None = QUIET_MAD) -> sp.csr_matrix:
    """Ring weights ``W`` (``pixels × pixels``, CSR) with ``X[:, p] ≈ Σ_q W[p, q] X[:, q]``.

    ``X`` is ``T × H × W``, zero mean over time at every pixel (the residual background);
    ``radius`` in pixels of ``X``. Each pixel's weights solve a ridge-regularised least
    squares problem over the ring pixels inside the frame (penalty ``ridge`` × their mean
    variance), in batches of pixels (batched normal equations).

    With ``quiet_mad``, pixel ``p``'s fit uses only the frames where ``X[:, p]`` lies at most
    ``quiet_mad`` robust standard deviations (1.4826 × median absolute deviation) above its
    median: the background's own fluctuations, not the transients of a cell at ``p``. Fitted on
    every frame, the weights learn to predict a cell's transients from the light it spreads
    onto the ring (an out-of-focus halo, correlated neighbours) whenever it is not yet among
    the known components removed from ``X``, and subtracting that prediction removes most of
    the cell (docs/one-photon.md). None: every frame.
    """
    X = np.asarray(X, np.float32)
    if X.ndim != 3:
        raise ValueError(f"the ring background needs T × H × W frames, got shape {X.shape}. The ring "
                         "model is two-dimensional: process volumes plane by plane.")
    T, h, w = X.shape
    P = h * w
    off = ring_offsets(radius)
    n = off.shape[0]
    rows_, cols_ = np.divmod(np.arange(P), w)
    ny = rows_[:, None] + off[None, :, 0]
    nx = cols_[:, None] + off[None, :, 1]
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    neighbour = np.where(inside, ny * w + nx, P)  # P: a row of zeros
    Xp = np.zeros((P + 1, T), np.float32)
    Xp[:P] = X.reshape(T, P).T
    weights = np.zeros((P, n))
    eye = np.eye(n)

    def solve(s: int) -> None:
        e = min(s + _BATCH, P)
        Z = Xp[neighbour[s:e]]  # b × n × T (a copy)
        if quiet_mad is not None:  # each pixel's frames without a transient at it (0/1 weights)
            target = Xp[s:e]
            med = np.median(target, axis=1, keepdims=True)
            spread = 1.4826 * np.median(np.abs(target - med), axis=1, keepdims=True)
            Z *= (target <= med + quiet_mad * spread)[:, None, :]
        G = np.matmul(Z, Z.transpose(0, 2, 1)).astype(np.float64)
        rhs = np.matmul(Z, Xp[s:e, :, None])[..., 0].astype(np.float64)
        count = np.maximum(inside[s:e].sum(axis=1), 1)
        scale = ridge * np.trace(G, axis1=1, axis2=2) / count + 1e-12
        G += scale[:, None, None] * eye
        weights[s:e] = np.linalg.solve(G, rhs[..., None])[..., 0]

    # many small products: one BLAS thread each, batches spread over the cores by threads
    # (BLAS threads on matrices this small, on a busy machine, run 400× slower)
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(solve, range(0, P, _BATCH)))
    weights[~inside] = 0.0
    W = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(P), n), np.where(inside, neighbour, 0).ravel())),
                      shape=(P, P))
    W.eliminate_zeros()
    return W


def fit_ring_model(source: Any, params: Any, *, A: Any = None, C: np.ndarray | None = None,
                   progress: bool = False) -> RingModel:
    """Fit the ring background of a movie ``T × H × W`` in one pass over it.

    ``source`` is an array, :class:`~somascope.io.Movie` or :class:`~somascope.store.Store`
    (read in chunks of frames, never whole). ``A`` (``pixels × K``) and ``C`` (``K × T``),
    when given, are removed first. The pass accumulates the mean image ``b0`` and the movie
    block-averaged ``init.ssub_B`` px × ``ceil(T / RING_FIT_BINS)`` frames; the weights are
    fitted on that (:func:`fit_ring_weights`).
    """
    from somascope.io.chunks import frame_ranges, read_ahead

    from .initialization import _block_mean

    shape = tuple(int(s) for s in source.shape)
    if len(shape) != 3:
        raise ValueError(f"the ring background (init.nb=0, one-photon data) needs a T × H × W movie; "
                         f"got shape {shape}. Fix: process the planes of a volume one by one, or "
                         "use init.nb ≥ 1 for a low-rank background.")
    T, dims = shape[0], shape[1:]
    ssub = int(params.init.ssub_B)
    tsub = -(-T // RING_FIT_BINS)
    ds_dims = tuple(-(-d // ssub) for d in dims)
    radius = ring_radius(params)
    A_ds = None
    if A is not None and sp.csc_matrix(A).shape[1]:
        A_ds = _downsample_footprints(sp.csc_matrix(A, dtype=np.float32), dims, ssub)
        C = np.asarray(C, np.float32)
    step = max(tsub, (_READ_ELEMENTS // max(math.prod(dims), 1)) // tsub * tsub)
    total = np.zeros(math.prod(dims), np.float64)
    binned = np.empty((-(-T // tsub), math.prod(ds_dims)), np.float32)
    bar = _bar(progress, T, "ring background: fit")
    for t0, t1, block in read_ahead(lambda a, b: np.asarray(source[a:b], dtype=np.float32),
                                    frame_ranges(T, step)):
        _check_finite(block, t0)
        total += block.reshape(t1 - t0, -1).sum(axis=0, dtype=np.float64)
        ds = _block_mean(block, (tsub, ssub, ssub)).reshape(-1, binned.shape[1])
        if A_ds is not None:
            ds -= np.asarray(A_ds @ _block_mean(C[:, t0:t1], (1, tsub))).T
        binned[t0 // tsub:t0 // tsub + ds.shape[0]] = ds
        if bar is not None:
            bar.update(t1 - t0)
    if bar is not None:
        bar.close()
    b0 = (total / T).astype(np.float32)
    if A_ds is not None:
        b0 -= np.asarray(sp.csc_matrix(A) @ C.mean(axis=1, dtype=np.float64)).ravel().astype(np.float32)
    binned -= binned.mean(axis=0)
    W = fit_ring_weights(binned.reshape((-1,) + ds_dims), radius / ssub)
    log.info("ring background: radius %.1f px, %d weights per pixel on a %s grid, %d time bins",
             radius, round(W.nnz / max(W.shape[0], 1)), "×".join(map(str, ds_dims)), binned.shape[0])
    return RingModel(W=W, b0=b0, dims=tuple(dims), ssub_B=ssub, radius=radius)


def subtract_ring_background(source: Any, model: RingModel, out: str | Path | None = None, *,
                             A: Any = None, C: np.ndarray | None = None, engine: Any = None,
                             progress: bool = False) -> Any:
    """``Y − B`` of a movie: a new float32 array (``out`` None) or a finalised Store at ``out``
    (written in chunks of frames; marked with :data:`MARK`). ``A``/``C`` as in
    :func:`fit_ring_model`. With a parallel ``engine`` and a Store to write, the frames are
    cut into ``time_chunk``-aligned ranges that the workers read, subtract and write (each
    range is one task: the model travels once per task). The source is never modified."""
    from somascope.store import Store

    T, dims = int(source.shape[0]), tuple(int(d) for d in source.shape[1:])
    if dims != model.dims:
        raise ValueError(f"the ring model was fitted on {model.dims} frames, the movie has {dims}.")
    A = sp.csc_matrix(A, dtype=np.float32) if A is not None and sp.csc_matrix(A).shape[1] else None
    C = None if A is None else np.asarray(C, np.float32)
    if out is None:
        result = np.empty((T,) + dims, np.float32)
        step = max(1, _READ_ELEMENTS // 8 // max(math.prod(dims), 1))
        bar = _bar(progress, T, "ring background: subtract")
        try:
            for t0, t1, block in _subtracted_blocks(source, model, A, C, 0, T, step):
                result[t0:t1] = block
                if bar is not None:
                    bar.update(t1 - t0)
        finally:
            if bar is not None:
                bar.close()
        return result
    meta = dict(getattr(source, "metadata", None) or {})
    meta[MARK] = True
    store = Store.create(out, (T,) + dims, frame_rate=getattr(source, "frame_rate", None), metadata=meta,
                         overwrite=True)
    tc = store.time_chunk
    parallel = engine is not None and getattr(engine, "kind", "serial") != "serial"
    # writes in whole time chunks (a worker: one at a time, as several workers hold theirs at
    # once), each assembled from blocks of a few frames
    write_step = tc if parallel else max(tc, (_READ_ELEMENTS // max(math.prod(dims), 1)) // tc * tc)
    step = max(1, _READ_ELEMENTS // 8 // max(math.prod(dims), 1))
    n_chunks = -(-T // tc)
    n_ranges = max(1, min(n_chunks, 2 * int(getattr(engine, "n_workers", 1)))) if parallel else 1
    per = -(-n_chunks // n_ranges) * tc  # whole time chunks per range: no two tasks write one chunk
    items = [(source, str(store.path), model, A, None if C is None else C[:, t0:min(T, t0 + per)],
              t0, min(T, t0 + per), write_step, step) for t0 in range(0, T, per)]
    try:
        if parallel:
            engine.map(_subtract_range, items, desc="ring background: subtract", progress=progress, unit="range")
        else:
            bar = _bar(progress, T, "ring background: subtract")
            try:
                for item in items:
                    _subtract_range(item, store, bar)
            finally:
                if bar is not None:
                    bar.close()
    except BaseException:
        store.discard()
        raise
    return store.finalize()


def _subtract_range(item: tuple[Any, ...], store: Any = None, bar: Any = None) -> int:
    """Write ``Y − B`` of frames ``t0:t1`` into the unfinished Store at ``path`` (a task), in
    writes of ``write_step`` frames computed ``step`` frames at a time."""
    from somascope.io.chunks import frame_ranges
    from somascope.store import Store

    source, path, model, A, C, t0, t1, write_step, step = item
    if store is None:
        store = Store.open(path, mode="r+")
    for w0, w1 in frame_ranges(t1, write_step, t0):
        out = np.empty((w1 - w0,) + tuple(model.dims), np.float32)
        for a, b, block in _subtracted_blocks(source, model, A, C, w0, w1, step, c_offset=t0):
            out[a - w0:b - w0] = block
            if bar is not None:
                bar.update(b - a)
        store.write(w0, out)
    return t1 - t0


def _subtracted_blocks(source: Any, model: RingModel, A: Any, C: Any, t0: int, t1: int, step: int,
                       c_offset: int = 0) -> Any:
    """``(a, b, Y[a:b] − B)`` for consecutive blocks of ``step`` frames of ``t0:t1`` (read ahead;
    ``C``'s column 0 is frame ``c_offset``)."""
    from somascope.io.chunks import frame_ranges, read_ahead

    ranges = frame_ranges(t1, step, t0)
    # np.array copies: the block is changed in place and the source must never be
    for a, b, block in read_ahead(lambda a, b: np.array(source[a:b], dtype=np.float32), ranges):
        AC = None
        if A is not None:
            AC = np.asarray(A @ C[:, a - c_offset:b - c_offset]).T.reshape(block.shape)
        block -= model.background(block, AC)
        yield a, b, block


def ring_output_path(source: Any) -> Path | None:
    """Where the background-subtracted movie of ``source`` goes: beside a Store
    (``<name>-ring.zarr``); None (an array) for anything else."""
    path = getattr(source, "final_path", None)
    return None if path is None else Path(path).with_name(Path(path).stem + "-ring.zarr")


def save_ring_model(model: RingModel, path: str | Path) -> None:
    """Write a :class:`RingModel` to ``path`` (``.npz``; atomically)."""
    from somascope.io.atomic import atomic_path

    W = sp.csr_matrix(model.W)
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, W_data=W.data, W_indices=W.indices, W_indptr=W.indptr, W_shape=np.array(W.shape),
                     b0=model.b0, dims=np.array(model.dims), ssub_B=model.ssub_B, radius=model.radius)


def load_ring_model(path: str | Path) -> RingModel:
    """Read what :func:`save_ring_model` wrote."""
    with np.load(path) as z:
        W = sp.csr_matrix((z["W_data"], z["W_indices"], z["W_indptr"]), shape=tuple(z["W_shape"]))
        return RingModel(W=W, b0=z["b0"].astype(np.float32), dims=tuple(int(d) for d in z["dims"]),
                         ssub_B=int(z["ssub_B"]), radius=float(z["radius"]))


def is_ring_subtracted(source: Any) -> bool:
    """True for a Store written by :func:`subtract_ring_background`."""
    meta = getattr(source, "metadata", None)
    return bool(isinstance(meta, dict) and meta.get(MARK))


def _downsample_footprints(A: sp.csc_matrix, dims: tuple[int, ...], ssub: int) -> sp.csr_matrix:
    """Block means of footprints (``pixels_ds × K``), the same blocks as the movie's."""
    if ssub == 1:
        return sp.csr_matrix(A)
    ds_dims = tuple(-(-d // ssub) for d in dims)
    coords = np.unravel_index(np.arange(math.prod(dims)), dims)
    block = np.ravel_multi_index(tuple(c // ssub for c in coords), ds_dims)
    counts = np.bincount(block, minlength=math.prod(ds_dims)).astype(np.float32)
    D = sp.csr_matrix((1.0 / counts[block], (block, np.arange(block.size))),
                      shape=(math.prod(ds_dims), block.size))
    return sp.csr_matrix(D @ A)


def _check_finite(block: np.ndarray, t0: int) -> None:
    if not np.isfinite(block).all():
        t_bad = t0 + int(np.argwhere(~np.isfinite(block))[0][0])
        raise ValueError(f"the movie contains NaN or infinite values (first in frame {t_bad}). Fix: "
                         "motion-correct with border_mode='copy' or 'zero' so that every pixel holds "
                         "a number.")


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame")
