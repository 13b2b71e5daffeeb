"""Seeded random streams and smooth random fields shared by the simulators."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
from scipy import ndimage

# Independent random streams, keyed ``(seed, STREAM, ...)``: each ingredient of a simulation
# draws from its own stream, so changing one ingredient (say, the motion) leaves all the others
# (cells, spikes, noise) as they were. Per-session streams add the session index after the
# stream id; the noise stream also adds the frame index.
FOOTPRINTS = 1  # (seed, FOOTPRINTS): cell shapes and positions
PROPERTIES = 2  # (seed, PROPERTIES): brightness, firing rate, decay time of each cell
BACKGROUND = 3  # (seed, BACKGROUND): spatial background components
TRACES = 4  # (seed, TRACES, session): spikes
DYNAMICS = 5  # (seed, DYNAMICS, session): background time courses
MOTION = 6  # (seed, MOTION, session): within-session motion
NOISE = 7  # (seed, NOISE, session, t): detector noise of frame t
SESSIONS = 8  # (seed, SESSIONS, session): deformation and active subset of a session
NEUROPIL = 9  # (seed, NEUROPIL, 0): vessels, neuropil fields and blobs; (seed, NEUROPIL, 1): their activity
STRUCTURAL = 10  # (seed, STRUCTURAL, 0): which somata carry a structural marker; (seed, STRUCTURAL, 1, t): its noise; (seed, STRUCTURAL, 2): its one-photon haze


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """Generator for the stream ``(seed, *keys)``; the same keys always give the same numbers."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *map(int, keys)])))


def smooth_field(rng: np.random.Generator, dims: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """Smooth stationary random field: white noise low-passed by a Gaussian of ``sigma``
    pixels (per axis allowed), periodic at the borders. Zero mean, max |value| = 1, float64,
    shape ``dims``."""
    dims = tuple(int(d) for d in dims)
    noise = rng.standard_normal(dims)
    spectrum = scipy.fft.rfftn(noise)
    spectrum = ndimage.fourier_gaussian(spectrum, sigma, n=dims[-1])
    field = scipy.fft.irfftn(spectrum, s=dims)
    field -= field.mean()
    peak = np.abs(field).max()
    return field / peak if peak > 0 else field


def smooth_series(rng: np.random.Generator, n: int, sigma: float, size: int | None = None) -> np.ndarray:
    """Slowly varying random time series: white noise smoothed by a Gaussian of ``sigma``
    samples (reflecting ends). Zero mean, unit standard deviation (along the last axis),
    float64, shape ``(n,)`` or ``(size, n)``."""
    shape = (n,) if size is None else (size, n)
    noise = rng.standard_normal(shape)
    series = ndimage.gaussian_filter1d(noise, max(float(sigma), 1e-3), axis=-1, mode="reflect") if n > 1 else noise
    series = series - series.mean(axis=-1, keepdims=True)
    std = series.std(axis=-1, keepdims=True)
    return np.divide(series, std, out=np.zeros_like(series), where=std > 0)


def unit_max(x: np.ndarray) -> np.ndarray:
    """``x`` divided by its maximum (unchanged when the maximum is not positive)."""
    peak = float(np.max(x)) if x.size else 0.0
    return x / peak if peak > 0 else x
