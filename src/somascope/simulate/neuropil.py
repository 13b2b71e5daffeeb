"""Two-photon background beyond the smooth low-rank haze: blood vessels (dark stripes),
slow neuropil fields and out-of-focus neuropil blobs with their own activity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ._fields import smooth_field, smooth_series, unit_max
from .traces import calcium, spike_counts

BLOB_DECAY = 1.0  # s, decay time of a neuropil blob's transients
VESSEL_DEPTH = (0.5, 0.75)  # fraction of the light a vessel blocks at its centre line
VESSEL_WIDTH = (1.5, 3.0)  # px, Gaussian sigma of a vessel's cross-section


def vessel_mask(rng: np.random.Generator, dims: Sequence[int], n: int) -> np.ndarray:
    """Transmission of ``n`` blood vessels crossing the field of view: gently curved dark
    stripes, each blocking ``VESSEL_DEPTH`` of the light at its centre line with a Gaussian
    cross-section of ``VESSEL_WIDTH`` px. Shape ``dims`` (H, W), float32 in (0, 1]."""
    H, W = (int(d) for d in dims)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    out = np.ones((H, W))
    for _ in range(n):
        angle = rng.uniform(0.0, np.pi)
        normal = np.array([np.cos(angle), np.sin(angle)])
        centre = rng.uniform(0.2, 0.8, 2) * (H, W)
        # signed distance to a line, bent by a smooth offset along the line
        along = (y - centre[0]) * -normal[1] + (x - centre[1]) * normal[0]
        bend = rng.uniform(-1.0, 1.0) * 0.15 * max(H, W) * np.sin(along / max(H, W) * np.pi * rng.uniform(0.5, 1.5))
        dist = (y - centre[0]) * normal[0] + (x - centre[1]) * normal[1] + bend
        sigma = rng.uniform(*VESSEL_WIDTH)
        out *= 1.0 - rng.uniform(*VESSEL_DEPTH) * np.exp(-0.5 * (dist / sigma) ** 2)
    return out.astype(np.float32)


def neuropil_fields(rng: np.random.Generator, dims: Sequence[int], n: int) -> np.ndarray:
    """``n`` smooth spatial patterns of neuropil fluctuation (scale a quarter of the field of
    view), ``pixels × n`` float32 in [0, 1] with maximum 1."""
    scale = np.asarray(dims, dtype=float) / 4.0
    out = np.empty((int(np.prod(dims)), n), dtype=np.float32)
    for j in range(n):
        out[:, j] = unit_max(0.5 * (1.0 + smooth_field(rng, dims, scale))).ravel()
    return out


def field_activity(
    rng: np.random.Generator, n: int, n_frames: int, frame_rate: float, amplitude: float,
    timescale: tuple[float, float],
) -> np.ndarray:
    """Slow fluctuations of ``n`` neuropil fields, ``n × T`` float64 ≥ 0, as a fraction of the
    background: ``amplitude · max(0, 1 + 0.5 ξ(t))`` with ξ smooth unit-variance noise whose
    correlation time is drawn from ``timescale`` (s) per field."""
    out = np.empty((n, n_frames))
    for j in range(n):
        tau = rng.uniform(*timescale)
        out[j] = amplitude * np.maximum(0.0, 1.0 + 0.5 * smooth_series(rng, n_frames, tau * frame_rate))
    return out


def neuropil_blobs(
    rng: np.random.Generator, dims: Sequence[int], density: float, sigma: tuple[float, float]
) -> np.ndarray:
    """Out-of-focus neuropil blobs: ``round(density · H · W)`` isotropic Gaussians of sigma
    uniform in ``sigma`` (px) at random places, ``pixels × n`` float32, each with maximum 1
    inside the field of view."""
    H, W = (int(d) for d in dims)
    n = int(round(density * H * W))
    out = np.empty((H * W, n), dtype=np.float32)
    for j in range(n):
        image = np.zeros((H, W))
        cy, cx = rng.uniform(0, H - 1), rng.uniform(0, W - 1)
        image[int(round(cy)), int(round(cx))] = 1.0
        image = ndimage.gaussian_filter(image, rng.uniform(*sigma), mode="constant")
        out[:, j] = unit_max(image).ravel()
    return out


def blob_activity(
    rng: np.random.Generator, n: int, n_frames: int, frame_rate: float, rates: tuple[float, float],
    amplitude: float,
) -> np.ndarray:
    """Activity of ``n`` neuropil blobs, ``n × T`` float64 ≥ 0: Poisson events at a rate
    uniform in ``rates`` (Hz) per blob, each adding ``amplitude`` (a fraction of the
    background at the blob's centre) that decays over :data:`BLOB_DECAY` s."""
    blob_rates = rng.uniform(*rates, n)
    counts = spike_counts(rng, blob_rates, n_frames, frame_rate, 0.0)
    g = np.full((n, 1), np.exp(-1.0 / (BLOB_DECAY * frame_rate)))
    return amplitude * calcium(counts, g)
