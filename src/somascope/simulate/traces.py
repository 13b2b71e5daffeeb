"""Spike trains and calcium dynamics: Poisson spikes with bursts through AR(1)/AR(2) filters."""

from __future__ import annotations

import numpy as np
from scipy import signal


def ar_coefficients(decay_time: float, frame_rate: float, rise_time: float | None = None) -> np.ndarray:
    """AR coefficients ``g`` (``(1,)`` or ``(2,)``) of a calcium transient sampled at
    ``frame_rate`` Hz: ``c[t] = g[0] c[t-1] (+ g[1] c[t-2]) + s[t]``.

    AR(1): ``g = exp(-1/(decay_time·frame_rate))``. With ``rise_time`` (s) the transient is
    the difference of two exponentials (AR(2)) with roots ``d = exp(-1/(τ_decay·fr))`` and
    ``r = exp(-1/(τ_rise·fr))``: ``g = (d + r, -d·r)``.
    """
    d = np.exp(-1.0 / (decay_time * frame_rate))
    if not rise_time:
        return np.array([d])
    r = np.exp(-1.0 / (rise_time * frame_rate))
    return np.array([d + r, -d * r])


def impulse_peak(g: np.ndarray) -> float:
    """Peak of the response of the AR filter ``g`` to a unit input (1 for AR(1))."""
    if len(g) == 1:
        return 1.0
    slowest = np.max(np.abs(np.roots([1.0, *(-np.asarray(g))])))
    length = int(min(100_000, np.ceil(5.0 / max(1e-6, 1.0 - slowest)) + 10))
    impulse = np.zeros(length)
    impulse[0] = 1.0
    return float(signal.lfilter([1.0], [1.0, *(-np.asarray(g))], impulse).max())


def spike_counts(
    rng: np.random.Generator,
    rates: np.ndarray,
    n_frames: int,
    frame_rate: float,
    burst_rate: float | np.ndarray,
    burst_size: float = 4.0,
    burst_duration: float = 0.15,
) -> np.ndarray:
    """Spike counts per frame, ``K × T`` int16.

    Each cell with ``rates[k] > 0`` fires as a Poisson process of ``rates[k]`` Hz plus bursts:
    burst onsets are a Poisson process of ``burst_rate`` Hz (one for all cells, or ``(K,)``
    per cell, 0 for cells that never burst), each burst adding
    ``2 + Poisson(burst_size - 2)`` spikes spread uniformly over ``burst_duration`` s.
    Cells with rate 0 are silent (no bursts either).
    """
    rates = np.asarray(rates, dtype=float)
    counts = np.zeros((len(rates), n_frames), dtype=np.int16)
    for k, rate in enumerate(rates):
        if rate > 0:
            counts[k] = rng.poisson(rate / frame_rate, n_frames)
    firing = np.flatnonzero(rates > 0)
    per_cell = np.ndim(burst_rate) > 0
    if (np.any(np.asarray(burst_rate) > 0) if per_cell else burst_rate > 0) and firing.size:
        lam = (np.asarray(burst_rate, dtype=float)[firing] if per_cell else burst_rate) * n_frames / frame_rate
        n_bursts = rng.poisson(lam, firing.size)
        cells = np.repeat(firing, n_bursts)
        onsets = rng.integers(0, n_frames, cells.size)
        sizes = 2 + rng.poisson(max(burst_size - 2.0, 0.0), cells.size)
        span = max(1, int(round(burst_duration * frame_rate)))
        cells = np.repeat(cells, sizes)
        frames = np.repeat(onsets, sizes) + rng.integers(0, span, cells.size)
        inside = frames < n_frames
        np.add.at(counts, (cells[inside], frames[inside]), 1)
    return counts


def calcium(S: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Calcium ``C`` (``K × T`` float64) from innovations ``S`` (``K × T``) through each row's
    AR filter ``g[k]`` (``K × p``), starting from rest: ``C[:, t] - Σ_i g[:, i] C[:, t-1-i] = S[:, t]``."""
    S = np.asarray(S, dtype=np.float64)
    C = np.empty_like(S)
    for k in range(S.shape[0]):
        C[k] = signal.lfilter([1.0], [1.0, *(-g[k])], S[k])
    return C
