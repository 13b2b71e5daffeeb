"""Noise level of fluorescence traces from the high-frequency part of their power spectrum.

Calcium transients are slow, so the top of the spectrum (by default 0.25–0.5 cycles per
frame) holds almost only measurement noise. For white noise of standard deviation σ the
periodogram ``|FFT(y)|² / T`` has mean σ² at every frequency and, away from 0 and the
Nyquist frequency, an exponential distribution. The three usual averages of the
periodogram over the noise band are

- ``"mean"``: the arithmetic mean (unbiased, the default);
- ``"median"``: the median, robust to narrow-band contamination;
- ``"logmexp"``: ``exp(mean(log P))``, the geometric mean, robust to outliers.

The median of an exponential variable is ``ln 2`` times its mean and its geometric mean is
``exp(-γ)`` times its mean (γ: Euler's constant), so CaImAn's median and log-mean-exp
estimates are biased low by factors ``sqrt(ln 2) ≈ 0.83`` and ``exp(-γ/2) ≈ 0.75``.
Here both are corrected, so all three methods estimate the same σ on white noise.

Traces that were resampled to a higher rate by Fourier interpolation (as in the Spikefinder
data) have no power at all above their original Nyquist frequency — only rounding residue,
many decades below the rest of the spectrum — so the noise band would be empty and σ would
come out as 0. When the median-smoothed log-spectrum in the band lies more than
``EMPTY_BAND_DECADES`` below its peak, the trace is treated as band-limited: its effective
band edge ``f_c`` (the highest frequency above that level) takes the place of the Nyquist
frequency, the band becomes ``noise_range · f_c / 0.5``, and σ² is the noise level there times
``f_c / 0.5`` (the noise fills only ``[0, f_c]``). ``adapt_band=False`` uses the band as given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._checks import as_traces

NOISE_METHODS = ("mean", "median", "logmexp")
_EULER_GAMMA = 0.5772156649015329
_BLOCK_ELEMENTS = 1 << 22  # rows per FFT block are chosen so a block holds ~4 M samples
_COLUMNS = 64  # pixels per FFT block of estimate_noise_columns (keeps a block in cache)
#: A band whose smoothed spectrum lies this many decades below the peak is empty.
EMPTY_BAND_DECADES = 12.0
#: Pixel noise (:func:`pixel_noise_frames`) reads all frames of a movie up to this length and
#: evenly spaced segments of :data:`NOISE_SEGMENT_FRAMES` frames beyond it, so its cost stops
#: growing with the recording (CaImAn's ``max_num_samples_fft`` plays the same role).
NOISE_MAX_FRAMES = 4096
#: Longest piece of frames one periodogram of the pixel noise is taken over.
NOISE_SEGMENT_FRAMES = 512


def check_noise_range(noise_range: Sequence[float]) -> tuple[float, float]:
    """``noise_range`` as a validated ``(low, high)`` pair of frequencies in cycles/frame."""
    try:
        lo, hi = (float(x) for x in noise_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"noise_range must be two frequencies (low, high) in cycles per frame, "
            f"got {noise_range!r}; the usual choice is (0.25, 0.5)."
        ) from None
    if not 0.0 <= lo < hi <= 0.5:
        raise ValueError(
            f"noise_range={noise_range!r} must satisfy 0 <= low < high <= 0.5 "
            "(cycles per frame; 0.5 is the Nyquist frequency); the usual choice is (0.25, 0.5)."
        )
    return lo, hi


def check_noise_method(method: str) -> str:
    if method not in NOISE_METHODS:
        raise ValueError(
            f"noise_method={method!r} is not known; choose one of {', '.join(NOISE_METHODS)}."
        )
    return method


def estimate_noise(
    y: np.ndarray,
    noise_range: Sequence[float] = (0.25, 0.5),
    method: str = "mean",
    adapt_band: bool = True,
) -> float | np.ndarray:
    """Standard deviation of the noise in each trace, from its power spectral density.

    Parameters
    ----------
    y
        One trace ``(T,)`` or traces ``(K, T)``, time on the last axis, in any units.
    noise_range
        Band of frequencies ``(low, high)`` in cycles per frame over which the periodogram is
        averaged; ``0.5`` is the Nyquist frequency.
    method
        ``"mean"``, ``"median"`` or ``"logmexp"`` (see the module docstring; all three are
        unbiased for white Gaussian noise).
    adapt_band
        Move the band below the effective band edge of resampled or low-pass filtered
        traces whose band is empty (see the module docstring).

    Returns
    -------
    float for one trace, or float64 array ``(K,)``: σ in the units of ``y``.
    """
    lo, hi = check_noise_range(noise_range)
    check_noise_method(method)
    arr = as_traces(y, "y")
    one = arr.ndim == 1
    Y = arr[None, :] if one else arr
    K, T = Y.shape
    freqs, band = _noise_band(T, lo, hi, noise_range)
    out = np.empty(K)
    rows = max(1, _BLOCK_ELEMENTS // T)
    for k0 in range(0, K, rows):
        block = Y[k0 : k0 + rows]
        spectrum = np.fft.rfft(block - block.mean(axis=1, keepdims=True), axis=1)
        power = (spectrum.real**2 + spectrum.imag**2) / T
        out[k0 : k0 + rows] = _band_average(power[:, band], method)
        if adapt_band:
            # cheap screen: only a band far below the spectrum's peak can be empty
            peak = power[:, 1:].max(axis=1)
            sample = power[:, np.flatnonzero(band)[::8]]  # a subsample keeps the median cheap
            suspicious = np.median(sample, axis=1) < 10.0 ** (2 - EMPTY_BAND_DECADES) * peak
            for i in np.flatnonzero(suspicious):
                out[k0 + i] = _band_limited(power[i], freqs, band, lo, hi, method, out[k0 + i])
    sn = np.sqrt(out)
    return float(sn[0]) if one else sn


def estimate_noise_columns(
    Y: np.ndarray,
    noise_range: Sequence[float] = (0.25, 0.5),
    method: str = "mean",
    adapt_band: bool = True,
) -> np.ndarray:
    """Noise standard deviation of every column of a frames × pixels array ``Y`` (``T × n``).

    The same estimate as :func:`estimate_noise` (same band, averages and band-edge rule),
    computed along the time axis of a movie as it is stored — no transposed or float64 copy
    of the movie is made. Float32 data are transformed in single precision (the estimate is
    an average over hundreds of frequencies; its float32 rounding is far below its
    statistical error). Returns float64 ``(n,)`` in the units of ``Y``.
    """
    import scipy.fft

    lo, hi = check_noise_range(noise_range)
    check_noise_method(method)
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be frames × pixels (T, n), got shape {Y.shape}.")
    if not (np.issubdtype(Y.dtype, np.floating) or np.issubdtype(Y.dtype, np.integer)):
        raise ValueError(f"Y must hold real numbers, got dtype {Y.dtype}.")
    T, n = Y.shape
    freqs, band = _noise_band(T, lo, hi, noise_range)
    first, last = int(np.flatnonzero(band)[0]), int(np.flatnonzero(band)[-1]) + 1  # a range
    work = np.float64 if Y.dtype == np.float64 else np.float32
    out = np.empty(n)
    for c0 in range(0, n, _COLUMNS):
        block = np.asarray(Y[:, c0:c0 + _COLUMNS], dtype=work)
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(f"Y contains NaN or infinite values (first at frame {bad[0]}, pixel "
                             f"{c0 + bad[1]}); clean the movie first.")
        spectrum = scipy.fft.rfft(block, axis=0)  # (frequencies, columns); the DC bin is unused
        power = spectrum.real**2
        power += spectrum.imag**2
        power /= T
        in_band = power[first:last]
        if method == "mean":
            out[c0:c0 + block.shape[1]] = in_band.mean(axis=0, dtype=np.float64)
        else:
            out[c0:c0 + block.shape[1]] = _band_average(in_band.T.astype(np.float64), method)
        if adapt_band:
            peak = power[1:].max(axis=0)
            sample = in_band[::8]
            suspicious = np.median(sample, axis=0) < 10.0 ** (2 - EMPTY_BAND_DECADES) * peak
            for i in np.flatnonzero(suspicious):
                out[c0 + i] = _band_limited(power[:, i].astype(np.float64), freqs, band, lo, hi,
                                            method, out[c0 + i])
    return np.sqrt(out)


def pixel_noise_frames(n_frames: int, max_frames: int | None = None) -> list[tuple[int, int]]:
    """The frame ranges ``[(start, stop), …]`` a pixel-noise estimate of a movie reads.

    A movie of up to ``max_frames`` frames (default :data:`NOISE_MAX_FRAMES`) is cut into
    ``ceil(n_frames / NOISE_SEGMENT_FRAMES)`` consecutive pieces of (almost) equal length that
    cover every frame; a longer one gives ``max_frames // NOISE_SEGMENT_FRAMES`` segments of
    :data:`NOISE_SEGMENT_FRAMES` consecutive frames, evenly spaced from the first frame to the
    last. The noise band lies far above a transient's frequencies, so a piece's periodogram
    estimates the same variance as the whole recording's, and averaging pieces (Welch) is as
    precise as one periodogram of all their frames; spreading the segments over a long
    recording averages slow changes of the noise (e.g. bleaching). No piece is longer than
    :data:`NOISE_SEGMENT_FRAMES`, so an estimate made while a movie is read holds one piece
    at a time, whatever the length of the recording.
    """
    n_frames = int(n_frames)
    max_frames = NOISE_MAX_FRAMES if max_frames is None else int(max_frames)
    if n_frames <= max_frames:
        bounds = np.round(np.linspace(0, n_frames, max(1, -(-n_frames // NOISE_SEGMENT_FRAMES)) + 1)).astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    n_seg = max(1, max_frames // NOISE_SEGMENT_FRAMES)
    starts = np.round(np.linspace(0, n_frames - NOISE_SEGMENT_FRAMES, n_seg)).astype(int)
    return [(int(s), int(s) + NOISE_SEGMENT_FRAMES) for s in starts]


def estimate_noise_segments(
    segments: Iterable[np.ndarray],
    noise_range: Sequence[float] = (0.25, 0.5),
    method: str = "mean",
) -> np.ndarray:
    """Noise standard deviation of every column from several frames × pixels segments.

    Each segment ``T_i × n`` (e.g. the ranges of :func:`pixel_noise_frames`) is estimated
    with :func:`estimate_noise_columns`; the variances are averaged with weights ``T_i``
    (proportional to the frequency bins each contributes). ``segments`` may be a generator:
    one segment is held at a time. Returns float64 ``(n,)``.
    """
    total: np.ndarray | None = None
    weight = 0
    for seg in segments:
        n = int(np.shape(seg)[0])
        var = n * estimate_noise_columns(seg, noise_range, method) ** 2
        total = var if total is None else total + var
        weight += n
    if total is None:
        raise ValueError("estimate_noise_segments needs at least one segment of frames.")
    return np.sqrt(total / weight)


def _noise_band(T: int, lo: float, hi: float, noise_range: Any) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cycles/frame) of a ``T``-frame periodogram and the mask of the noise band."""
    freqs = np.arange(T // 2 + 1) / T
    band = (freqs > lo) & (freqs <= hi)
    if band.sum() < 2:
        raise ValueError(
            f"noise_range={noise_range!r} holds fewer than 2 frequency bins of {T} frames; "
            "widen the range or pass a longer recording."
        )
    return freqs, band


def _band_limited(
    power: np.ndarray, freqs: np.ndarray, band: np.ndarray, lo: float, hi: float, method: str,
    estimate: float,
) -> float:
    """``estimate``, or the noise variance below the effective band edge if the band is empty."""
    from scipy.ndimage import median_filter

    positive = power[1:]
    if not positive.any():
        return 0.0  # a constant trace
    tiny = np.finfo(np.float64).tiny
    log_power = median_filter(np.log10(positive + tiny), size=max(5, positive.size // 100), mode="nearest")
    level = log_power.max() - EMPTY_BAND_DECADES
    if np.median(log_power[band[1:]]) >= level:
        return estimate  # the band holds real power
    edge = freqs[1 + np.flatnonzero(log_power >= level)[-1]]
    scale = edge / 0.5
    shifted = (freqs > lo * scale) & (freqs <= hi * scale)
    if shifted.sum() < 2:
        return estimate
    return float(_band_average(power[None, shifted], method)[0]) * scale


def _band_average(power: np.ndarray, method: str) -> np.ndarray:
    """Unbiased estimate of the white-noise variance from periodogram values (rows)."""
    if method == "mean":
        return power.mean(axis=1)
    if method == "median":
        return np.median(power, axis=1) / np.log(2.0)
    tiny = np.finfo(np.float64).tiny
    return np.exp(np.log(np.maximum(power, tiny)).mean(axis=1) + _EULER_GAMMA)
