"""Background: low-rank smooth neuropil / out-of-focus components, bleaching and vignetting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._fields import smooth_field, smooth_series, unit_max


def bleaching(n_frames: int, frame_rate: float, bleach_time: float | None) -> np.ndarray:
    """Fraction of fluorescence left at each frame, ``exp(-t / bleach_time)`` (``(T,)``
    float64, t in s from the first frame); all ones when ``bleach_time`` is None or inf."""
    if bleach_time is None or not np.isfinite(bleach_time):
        return np.ones(n_frames)
    return np.exp(-np.arange(n_frames) / (frame_rate * bleach_time))


def spatial_components(rng: np.random.Generator, dims: Sequence[int], n: int, scale: np.ndarray) -> np.ndarray:
    """``n`` smooth positive spatial components, ``pixels × n`` float32, each with maximum 1.

    The first is a broad, everywhere-positive haze (varying ±35 % over ``scale`` pixels); the
    others are blobs of finer scale (0.6·``scale``) that are bright in parts of the field of
    view and near zero elsewhere, so the components are linearly independent.
    """
    out = np.empty((int(np.prod(dims)), n), dtype=np.float32)
    for j in range(n):
        if j == 0:
            field = 1.0 + 0.35 * smooth_field(rng, dims, scale)
        else:
            field = (0.5 * (1.0 + smooth_field(rng, dims, 0.6 * scale))) ** 2
        out[:, j] = unit_max(field).ravel()
    return out


def temporal_components(
    rng: np.random.Generator,
    levels: np.ndarray,
    n_frames: int,
    frame_rate: float,
    fluctuation: float,
    timescale: float,
) -> np.ndarray:
    """Slowly fluctuating positive time courses, ``n × T`` float64:
    ``levels[j] · max(0.05, 1 + fluctuation · ξ_j(t))`` with ξ_j smooth unit-variance noise
    whose Gaussian correlation time is ``timescale`` s."""
    xi = smooth_series(rng, n_frames, timescale * frame_rate, size=len(levels))
    return np.asarray(levels, dtype=float)[:, None] * np.maximum(0.05, 1.0 + fluctuation * xi)


def vignette(dims: Sequence[int], strength: float) -> np.ndarray:
    """Optical fall-off of brightness towards the corners: ``1 - strength · (r / r_corner)²``
    over the last two axes (same on every plane of a volume); float32, shape ``dims``."""
    dims = tuple(int(d) for d in dims)
    y = np.arange(dims[-2]) - (dims[-2] - 1) / 2.0
    x = np.arange(dims[-1]) - (dims[-1] - 1) / 2.0
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    corner = max(float(r2.max()), 1.0)
    plane = (1.0 - strength * r2 / corner).astype(np.float32)
    return np.broadcast_to(plane, dims).copy()
