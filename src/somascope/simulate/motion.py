"""True motion: a rigid random drift plus jitter, and a smooth non-rigid field that changes
over time. Sign convention (docs/conventions.md): a displacement ``d`` means
``frame(p) = template(p - d(p))``; a cell at ``p0`` in the template appears at ``p0 + d``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._fields import smooth_field, smooth_series

N_MODES = 3  # spatial modes of the non-rigid field
DRIFT_TIME = 2.0  # s, correlation time of the slow rigid drift
JITTER_TIME = 0.05  # s, correlation time of the fast rigid jitter
JITTER_WEIGHT = 0.3  # jitter amplitude relative to the drift
NONRIGID_TIME = 1.0  # s, correlation time of the non-rigid field


@dataclass(frozen=True)
class MotionModel:
    """Per-frame displacement ``rigid[t] + Σ_j weights[t, j] · modes[j]``.

    dims : frame shape ``(H, W)`` or ``(Z, H, W)``.
    rigid : (T, ndim) float32, px.
    modes : (J, ndim, *dims) float32 smooth spatial fields (px), or None for rigid motion.
    weights : (T, J) float32 time courses of the modes, or None.
    """

    dims: tuple[int, ...]
    rigid: np.ndarray
    modes: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def is_rigid(self) -> bool:
        return self.modes is None

    def displacement(self, t: int) -> np.ndarray:
        """Displacement field of frame ``t``: ``(ndim, *dims)`` float32, px, evaluated on the
        frame's pixel grid."""
        if self.modes is None:
            return np.broadcast_to(self.rigid[t].reshape((-1,) + (1,) * len(self.dims)),
                                   (len(self.dims), *self.dims)).copy()
        field = np.tensordot(self.weights[t], self.modes, axes=1).astype(np.float32)
        field += self.rigid[t].reshape((-1,) + (1,) * (field.ndim - 1))
        return field


def rigid_path(
    rng: np.random.Generator, n_frames: int, frame_rate: float, max_shift: np.ndarray
) -> np.ndarray:
    """Rigid displacements ``(T, ndim)`` float32: slow drift plus fast jitter per axis,
    scaled so that the largest |shift| along axis ``a`` is ``max_shift[a]`` px."""
    ndim = len(max_shift)
    drift = smooth_series(rng, n_frames, DRIFT_TIME * frame_rate, size=ndim)
    jitter = smooth_series(rng, n_frames, max(JITTER_TIME * frame_rate, 0.5), size=ndim)
    path = drift + JITTER_WEIGHT * jitter
    peak = np.abs(path).max(axis=1, keepdims=True)
    path = np.divide(path, peak, out=np.zeros_like(path), where=peak > 0) * np.asarray(max_shift)[:, None]
    return path.T.astype(np.float32)


def jumpy_path(
    rng: np.random.Generator,
    n_frames: int,
    frame_rate: float,
    std: float,
    jump_rate: float,
    jump_amplitude: float,
    relax_time: float = DRIFT_TIME,
) -> np.ndarray:
    """Rigid displacements ``(T, 2)`` float32, px: a slow drift with standard deviation
    ``std`` px per axis (plus 10 % fast jitter) and sudden jumps — onsets a Poisson process
    of ``jump_rate`` Hz, each a step of ``jump_amplitude`` px in a random direction, reached
    within ~2 frames and relaxing back exponentially over ``relax_time`` s."""
    drift = smooth_series(rng, n_frames, DRIFT_TIME * frame_rate, size=2)
    jitter = smooth_series(rng, n_frames, max(JITTER_TIME * frame_rate, 0.5), size=2)
    path = std * (drift + 0.1 * jitter)
    onsets = np.flatnonzero(rng.random(n_frames) < jump_rate / frame_rate)
    angles = rng.uniform(0.0, 2 * np.pi, onsets.size)
    lag = np.arange(n_frames)
    kernel = np.exp(-lag / (relax_time * frame_rate)) * (1.0 - np.exp(-(lag + 1.0)))
    for t0, angle in zip(onsets, angles):
        step = jump_amplitude * np.array([np.sin(angle), np.cos(angle)])[:, None]
        path[:, t0:] += step * kernel[: n_frames - t0]
    return path.T.astype(np.float32)


def make_motion(
    rng: np.random.Generator,
    dims: Sequence[int],
    n_frames: int,
    frame_rate: float,
    kind: str,
    max_shift: np.ndarray,
    nonrigid_amplitude: np.ndarray,
    rigid: np.ndarray | None = None,
) -> MotionModel:
    """Motion model of ``kind`` ``"rigid"`` or ``"nonrigid"``; the rigid part is
    ``rigid`` (``(T, ndim)`` px) when given, else a :func:`rigid_path` up to ``max_shift``.

    The non-rigid part is a sum of :data:`N_MODES` smooth random vector fields (spatial
    scale a third of the field of view) with smooth time courses, scaled so that its largest
    |value| along axis ``a`` (over all frames, checked on a grid of ≤ 16 points per axis) is
    ``nonrigid_amplitude[a]`` px.
    """
    dims = tuple(int(d) for d in dims)
    if rigid is None:
        rigid = rigid_path(rng, n_frames, frame_rate, max_shift)
    if kind == "rigid":
        return MotionModel(dims, rigid)
    ndim = len(dims)
    sigma = np.asarray(dims, dtype=float) / 3.0
    modes = np.stack([np.stack([smooth_field(rng, dims, sigma) for _ in range(ndim)]) for _ in range(N_MODES)])
    weights = smooth_series(rng, n_frames, NONRIGID_TIME * frame_rate, size=N_MODES).T
    weights /= max(float(np.abs(weights).max()), 1e-12)
    grid = tuple(slice(None, None, max(1, d // 16)) for d in dims)
    for a in range(ndim):
        sampled = modes[(slice(None), a, *grid)].reshape(N_MODES, -1)
        peak = float(np.abs(weights @ sampled).max())
        modes[:, a] *= nonrigid_amplitude[a] / peak if peak > 0 else 0.0
    return MotionModel(dims, rigid, modes.astype(np.float32), weights.astype(np.float32))


def warp_frame(
    frame: np.ndarray, model: MotionModel, t: int, order: int, grid: np.ndarray | None = None
) -> np.ndarray:
    """``frame`` (a motion-free image) as seen at time ``t``: ``out(p) = frame(p - d_t(p))``,
    spline interpolation of ``order`` with reflecting borders; float32. ``grid`` is
    ``np.indices(frame.shape)`` (float32), passed in to save recomputing it."""
    if model.modes is None:
        return ndimage.shift(frame, model.rigid[t], order=order, mode="reflect", output=np.float32)
    if grid is None:
        grid = np.indices(frame.shape, dtype=np.float32)
    coords = grid - model.displacement(t)
    return ndimage.map_coordinates(frame, coords, order=order, mode="reflect", output=np.float32)
