"""Unsupervised quality tests of CNMF components and the accept/reject rule.

These are the tests of the CaImAn paper (Giovannucci et al., eLife 2019, "Details of quality
assessment tests"). For a movie ``Y`` (``T × *dims``) and components ``A`` (``pixels × K``),
``C`` (``K × T``) with background ``b``/``f``:

**Trace SNR** (paper eqs. 5–9).

1. The raw trace of component *i* adds its residual to its denoised trace::

       y_i = c_i + r_i,   r_i = a_iᵀ (Y − A·C − b·f) / ‖a_i‖²

   (:func:`residual_traces` computes ``r`` = ``YrA`` without forming ``A·C`` or ``b·f``).
2. The baseline ``β_i`` is the mode of ``y_i`` (kernel density estimate, :func:`trace_mode`).
   Below the baseline there is only noise, whose values are half-normal, so the noise level is
   ``σ_i = sqrt(mean((y_i(t) − β_i)²  over t with y_i(t) < β_i))``.
3. Each frame gets the probability, under that noise, of a value at least as high::

       u_i(t) = Φ(−(y_i(t) − β_i) / σ_i).

4. The most unlikely excursion over a window of ``N`` frames (``N = ceil(decay_time · fr)``,
   ``quality.N_samples_exceptionality``) is ``P_i = min_t Π_{j<N} u_i(t + j)``; its log is the
   *fitness* (:func:`event_exceptionality`).
5. ``SNR_i = Φ⁻¹(1 − P_i^{1/N}) = −Φ⁻¹(P_i^{1/N})``: the z-score that, held for ``N``
   consecutive frames, is as unlikely as the trace's best event.

Logs of tail probabilities are computed with ``scipy.special.log_ndtr`` and inverted with
``ndtri_exp``, so huge events give large finite SNRs instead of overflowing.

*The scale of the z-scores.* CaImAn's implementation measures the excursions of step 3 in
units of ``3·σ_i`` (its ``sigma_factor=3``), and the thresholds users know (``min_SNR`` 2 to
2.5, ``SNR_lowest`` 0.5: CaImAn's and Mesmerize's defaults and tutorials) are calibrated on
that scale. Here too the default is :data:`SIGMA_FACTOR` = 3, so a CaImAn parameter set means
the same thing; ``sigma_factor=1`` gives the z-scores of the equations as printed (about 3
times larger SNRs). The scale matters beyond compatibility: the shorter the window, the
larger the SNR pure noise reaches by chance. On white noise (1000 traces of 300 to 20 000
frames) the largest unscaled SNR is 1.9 for ``N = 12`` but 4.0 for ``N = 2`` (a 0.4 s decay
at 5 Hz), above any usual ``min_SNR``; scaled, it stays below 0.6 and 1.4.

**Spatial consistency** (r-value). For each component, its ``n_peaks`` highest peaks of
``c_i`` are found and the frames from ``frames_before`` before to ``frames_after`` after each
peak are taken (:func:`activity_frames`); frames in which an overlapping component is also
active are dropped when some remain. Over those frames the data on the footprint's support
is averaged, the data's temporal mean is subtracted (what changes when the cell fires, not
whatever static structure the background model leaves on the footprint) and *all other
activity is removed*: the change over the same frames of the background ``b·f`` and of every
other component's ``a_j c_j`` (exact because the model is linear). The r-value is the Pearson
correlation of that image with the footprint. A footprint that is really a cell correlates
with what the movie shows when the cell fires; a footprint fitted to noise does not.

**The rule** (:func:`select_components`): a component is accepted when at least one test
passes its threshold — ``SNR ≥ min_SNR``, ``r ≥ rval_thr`` or (with the shape classifier,
:mod:`somascope.evaluation.classifier`) ``cnn ≥
min_cnn_thr`` — and none falls to or below its lowest value — ``SNR ≤ SNR_lowest``, ``r ≤
rval_lowest``, ``cnn ≤ cnn_lowest`` — and, when ``use_ecc``, its eccentricity is at most
``max_ecc`` and, when ``use_area``, its area at most ``max_area_ratio`` neuron areas
(:func:`area_ratio`: out-of-focus neuropil and background pieces are several times larger than
a soma, and often pass the SNR test) and at least ``min_area_ratio`` (one-photon: pieces of a
bright soma found again in what removing it left behind). Of two accepted components whose masks nearly coincide
(one cell split in two), the one with the lower SNR is rejected. Components with an empty
footprint are rejected outright. A component whose denoised trace ``c_i`` is flat has no
r-value (NaN) and is judged on its SNR alone, which comes from the raw trace (as in CaImAn,
where its r-value is 0).

Memory: one streaming pass over the movie (chunks of frames) computes ``Aᵀ·Y`` (for
``YrA``, only when the estimates lack it), the mean image and the sums of the data over each
component's selected frames and support pixels. Nothing of size ``pixels × T`` or ``pixels × K`` is ever
formed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .activity import activity_threshold, activity_z, neuropil_traces, neuropil_weights

if TYPE_CHECKING:  # pragma: no cover - typing only
    from somascope.cnmf.estimates import Estimates
    from somascope.params import Params, QualityParams

__all__ = [
    "SIGMA_FACTOR",
    "Exceptionality",
    "activity_frames",
    "area_ratio",
    "classify_components",
    "eccentricity",
    "footprint_masks",
    "evaluate_components",
    "event_exceptionality",
    "residual_traces",
    "select_components",
    "spatial_consistency",
    "trace_mode",
    "trace_snr",
]

log = logging.getLogger(__name__)

#: Default scale of the z-scores in the SNR, in noise standard deviations (CaImAn's value; see
#: the module docstring). 1 reproduces the paper's equations as printed.
SIGMA_FACTOR = 3.0
#: Elements (frames × pixels) read per chunk when the caller does not choose (64 MiB float32).
_CHUNK_ELEMENTS = 1 << 24
#: Trace values (rows × frames) processed at a time in the SNR computation (32 MiB float64).
_TRACE_BLOCK_ELEMENTS = 1 << 22
#: Kernel bandwidth of the baseline density in units of ``min(sd, IQR / 1.349) · T^(-1/5)``:
#: twice Silverman's 0.9, since locating a mode needs more smoothing than drawing a density.
_BANDWIDTH = 1.8
#: Histogram bins per kernel bandwidth in the density estimate of a trace's baseline.
_BINS_PER_BANDWIDTH = 4
#: Normalised footprint overlap ``⟨a_i, a_j⟩ / (‖a_i‖ ‖a_j‖)`` above which two components
#: count as overlapping when choosing the frames of the r-value (CaImAn's ``Athresh``).
OVERLAP_THR = 0.1
#: Spatial consistency from which a seeded cell counts as active whatever its activity z
#: (:func:`_keep_seeded`): a cell that fires often, with a slow indicator, is never back at rest
#: long enough for its transients to stand out of the high-passed trace, but the frames of its
#: peaks show its footprint. Silent cells pick up their neighbours' and the neuropil's
#: transients in the shape of their footprint too, and reached r-values up to 0.91 on the
#: simulated two-channel hard family (``docs/structural.md``).
ACTIVE_RVAL = 0.9
#: Trace SNR (below ``quality.min_SNR``) and spatial consistency (below this) of a seeded cell
#: whose fitted trace is quiet: the fit gave it nothing of its own. Inside another accepted
#: cell, it is a part of it (:func:`_drop_parts`).
QUIET_RVAL = 0.6
#: Share of a quiet seeded cell's mask inside another accepted component's mask, and share of
#: that component's mask it makes, from which the quiet cell is a part of the other and not
#: reported (:func:`_drop_parts`).
PART_COVER = 0.8
#: See :data:`PART_COVER`.
PART_SHARE = 0.2
#: Jaccard distance of two accepted components' masks below which they are one cell twice
#: (the matching to a ground truth counts pairs up to 0.7 as the same cell).
DUPLICATE_DISTANCE = 0.5


# --------------------------------------------------------------------------------------
# Trace SNR
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exceptionality:
    """How exceptional the largest event of each trace is (steps 2–5 of the trace SNR above).

    Attributes
    ----------
    fitness : ndarray (K,)
        ``log P_i``: the smallest sum over ``window`` consecutive frames of
        ``log Φ(−(y_i(t) − β_i) / (sigma_factor · σ_i))``; ≤ 0, more negative = more exceptional.
    snr : ndarray (K,)
        ``−Φ⁻¹(exp(fitness / window))``. 0 for a flat trace.
    baseline : ndarray (K,)
        ``β_i``, the mode of each trace (:func:`trace_mode`; units of the traces).
    noise : ndarray (K,)
        ``σ_i`` from the values below the baseline (units of the traces; 0 for a flat trace).
    onset : ndarray (K,) of int
        First frame of the most exceptional window.
    window : int
        ``N``, the window length in frames that was used.
    """

    fitness: np.ndarray
    snr: np.ndarray
    baseline: np.ndarray
    noise: np.ndarray
    onset: np.ndarray
    window: int


def trace_mode(traces: np.ndarray) -> np.ndarray:
    """Baseline of each trace: the mode of its values, from a Gaussian kernel density estimate.

    Calcium traces sit at their baseline most of the time with positive excursions, so the
    densest value is the baseline (the mean and median are pulled up by the transients). The
    density is a histogram in bins of ``h / 4`` smoothed by a Gaussian of width
    ``h = 1.8 · min(sd, IQR / 1.349) · T^(-1/5)`` (twice Silverman's bandwidth: a mode needs
    more smoothing than a density), over the values within about 8 standard deviations of the
    median; the mode is the centre of the densest bin. On white noise it scatters about
    0.06 σ at T = 3000 and 0.08 σ at T = 800, less than half the scatter of the half-sample
    mode (CaImAn's choice); the noise level below the baseline, and hence the SNR, depend
    on it directly.

    Parameters
    ----------
    traces
        ``(K, T)`` or ``(T,)`` finite values.

    Returns
    -------
    ndarray (K,) float64, or a float for one trace.
    """
    arr = _as_traces(traces, "traces")
    one = np.ndim(traces) == 1
    out = np.empty(arr.shape[0])
    rows = max(1, _TRACE_BLOCK_ELEMENTS // arr.shape[1])
    for k0 in range(0, arr.shape[0], rows):
        out[k0:k0 + rows] = _kde_mode(arr[k0:k0 + rows].astype(np.float64))
    return float(out[0]) if one else out


def _kde_mode(Y: np.ndarray) -> np.ndarray:
    """:func:`trace_mode` of the rows of a float64 block."""
    from scipy.ndimage import gaussian_filter1d

    T = Y.shape[1]
    q25, q50, q75 = np.percentile(Y, [25, 50, 75], axis=1)
    sd = Y.std(axis=1)
    iqr = q75 - q25
    spread = np.where(iqr > 0, np.minimum(sd, iqr / 1.349), sd)
    mode = q50.copy()
    ok = spread > 0
    if not ok.any():
        return mode
    Y, q50, spread = Y[ok], q50[ok], spread[ok]
    width = _BANDWIDTH * spread * T ** -0.2 / _BINS_PER_BANDWIDTH
    lo = np.maximum(Y.min(axis=1), q50 - 8 * 1.349 * spread)
    hi = np.minimum(Y.max(axis=1), q50 + 8 * 1.349 * spread)
    n_bins = int(np.ceil(np.max((hi - lo) / width))) + 1
    idx = np.floor((Y - lo[:, None]) / width[:, None])
    inside = (idx >= 0) & (idx < n_bins)
    flat = (idx + n_bins * np.arange(Y.shape[0])[:, None])[inside].astype(np.int64)
    hist = np.bincount(flat, minlength=n_bins * Y.shape[0]).reshape(Y.shape[0], n_bins).astype(np.float64)
    density = gaussian_filter1d(hist, _BINS_PER_BANDWIDTH, axis=1, mode="constant")
    mode[ok] = lo + (np.argmax(density, axis=1) + 0.5) * width
    return mode


def event_exceptionality(traces: np.ndarray, window: int, *, sigma_factor: float = SIGMA_FACTOR) -> Exceptionality:
    """Fitness and SNR of the most exceptional ``window``-frame event of each trace.

    Parameters
    ----------
    traces
        Raw traces ``(K, T)`` (or one ``(T,)``), e.g. ``C + YrA``; finite.
    window
        ``N``, frames in the event window (``quality.N_samples_exceptionality``, about
        ``decay_time · fr``). A trace shorter than ``N`` frames uses a window of ``T``.
    sigma_factor
        The z-scores are ``(y − β) / (sigma_factor · σ)``: 3 (default) is CaImAn's scale, on
        which the usual thresholds are calibrated; 1 gives the equations as printed.

    Returns
    -------
    Exceptionality
    """
    from scipy.special import log_ndtr, ndtri_exp

    Y = _as_traces(traces, "traces")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a whole number of frames >= 1 (about decay_time * fr); got {window!r}.")
    if not (math.isfinite(sigma_factor) and sigma_factor > 0):
        raise ValueError(f"sigma_factor must be a positive number (3 as in CaImAn, 1 for unscaled z-scores); "
                         f"got {sigma_factor!r}.")
    K, T = Y.shape
    N = int(min(window, T))
    fitness, snr = np.zeros(K), np.zeros(K)
    baseline, noise = np.zeros(K), np.zeros(K)
    onset = np.zeros(K, dtype=np.int64)
    rows = max(1, _TRACE_BLOCK_ELEMENTS // T)
    for k0 in range(0, K, rows):
        k1 = min(k0 + rows, K)
        block = Y[k0:k1].astype(np.float64)
        base = _kde_mode(block)
        dev = block - base[:, None]
        below = dev < 0
        sd = np.sqrt(np.einsum("kt,kt->k", dev * below, dev) / np.maximum(below.sum(axis=1), 1))
        flat = sd <= 0
        logp = log_ndtr(-dev / (sigma_factor * np.where(flat, 1.0, sd))[:, None])
        cums = np.zeros((k1 - k0, T + 1))
        np.cumsum(logp, axis=1, out=cums[:, 1:])
        sums = cums[:, N:] - cums[:, :-N]
        start = np.argmin(sums, axis=1)
        fit = np.minimum(sums[np.arange(k1 - k0), start], 0.0)
        fit[flat] = 0.0
        fitness[k0:k1] = fit
        snr[k0:k1] = np.where(flat, 0.0, -ndtri_exp(fit / N))
        baseline[k0:k1], noise[k0:k1], onset[k0:k1] = base, np.where(flat, 0.0, sd), start
    return Exceptionality(fitness=fitness, snr=snr, baseline=baseline, noise=noise, onset=onset, window=N)


def trace_snr(traces: np.ndarray, window: int, *, sigma_factor: float = SIGMA_FACTOR) -> np.ndarray:
    """Trace SNR of each row of ``traces``; see :func:`event_exceptionality`."""
    return event_exceptionality(traces, window, sigma_factor=sigma_factor).snr


# --------------------------------------------------------------------------------------
# Spatial consistency
# --------------------------------------------------------------------------------------


def activity_frames(
    C: np.ndarray,
    *,
    n_peaks: int = 5,
    frames_before: int = 3,
    frames_after: int = 10,
    peak_threshold: float = 0.3,
) -> list[np.ndarray]:
    """Frames around the largest transients of each trace.

    The peaks of ``c_i`` (local maxima at least ``min + peak_threshold · (max − min)``;
    the global maximum when there is no local one) are ranked by height; around the
    ``n_peaks`` highest, frames ``peak − frames_before … peak + frames_after`` are taken.

    Parameters
    ----------
    C
        Denoised traces ``(K, T)``.
    n_peaks, frames_before, frames_after, peak_threshold
        As above (CaImAn: 5, 3, 9, 0.3).

    Returns
    -------
    list of K sorted int64 arrays of frame indices; an empty array for a flat trace.
    """
    from scipy.signal import find_peaks

    X = _as_traces(C, "C")
    for name, value, lo in (("n_peaks", n_peaks, 1), ("frames_before", frames_before, 0),
                            ("frames_after", frames_after, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be a whole number >= {lo}; got {value!r}.")
    if not 0.0 <= peak_threshold <= 1.0:
        raise ValueError(f"peak_threshold is a fraction of each trace's range and must lie in [0, 1]; "
                         f"got {peak_threshold!r}.")
    T = X.shape[1]
    offsets = np.arange(-int(frames_before), int(frames_after) + 1)
    out = []
    for c in X:
        lo, hi = float(c.min()), float(c.max())
        if hi <= lo:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        peaks, props = find_peaks(c, height=lo + peak_threshold * (hi - lo))
        if peaks.size == 0:
            peaks, heights = np.array([int(np.argmax(c))]), np.array([hi])
        else:
            heights = props["peak_heights"]
        top = peaks[np.argsort(-heights, kind="stable")[: int(n_peaks)]]
        frames = (top[:, None] + offsets[None, :]).ravel()
        out.append(np.unique(np.clip(frames, 0, T - 1)).astype(np.int64))
    return out


def spatial_consistency(
    source: Any,
    A: Any,
    C: np.ndarray,
    b: np.ndarray | None = None,
    f: np.ndarray | None = None,
    *,
    n_peaks: int = 5,
    frames_before: int = 3,
    frames_after: int = 10,
    peak_threshold: float = 0.3,
    chunk_frames: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Spatial consistency r-value of each component (see the module docstring).

    Parameters
    ----------
    source
        The movie, ``T × *dims`` (ndarray or any frame source); read once, in chunks.
    A
        Footprints ``pixels × K`` (sparse or dense), pixels in C order of ``dims``.
    C
        Denoised traces ``K × T`` (they choose the frames).
    b, f
        Background ``pixels × nb`` and ``nb × T``, subtracted; None for no background.
    n_peaks, frames_before, frames_after, peak_threshold
        Frame selection, see :func:`activity_frames`.
    chunk_frames
        Frames read at a time (default: about 64 MiB of float32 per chunk).

    Returns
    -------
    ndarray (K,) float64 in [-1, 1]; NaN where undefined: fewer than 3 support pixels, a
    flat trace, or a footprint (e.g. a binary mask) or data constant over the support.
    """
    model = _Model.build(A, C, b, f, None)
    T, _ = _check_source(source, model.n_pixels, None)
    if model.T != T:
        raise ValueError(f"C has {model.T} frames but the movie has {T}; pass the traces of this movie.")
    frames = _frames_for_rvalues(model, n_peaks, frames_before, frames_after, peak_threshold)
    _, mean, sums, _ = _scan(source, model, frames, need_AtY=False, chunk_frames=chunk_frames, progress=progress)
    return _rvalues(model, frames, sums, mean)


# --------------------------------------------------------------------------------------
# Residual traces
# --------------------------------------------------------------------------------------


def residual_traces(
    source: Any,
    A: Any,
    C: np.ndarray,
    b: np.ndarray | None = None,
    f: np.ndarray | None = None,
    *,
    chunk_frames: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``YrA = (Aᵀ Y − AᵀA C − Aᵀb f) / ‖a_i‖²``, the residual of each trace.

    ``C + YrA`` is the raw trace of each component: its footprint-weighted average of the
    data with the background and the other components removed. Computed from one pass of
    ``Aᵀ·Y`` over chunks of frames; ``A·C`` and ``b·f`` are never formed.

    Parameters
    ----------
    source
        The movie ``T × *dims`` (ndarray or frame source).
    A, C, b, f
        Footprints ``pixels × K``, traces ``K × T``, background ``pixels × nb`` / ``nb × T``
        (None: no background).

    Returns
    -------
    ndarray ``K × T`` float32 (rows of empty footprints are 0).
    """
    model = _Model.build(A, C, b, f, None)
    T, _ = _check_source(source, model.n_pixels, None)
    if model.T != T:
        raise ValueError(f"C has {model.T} frames but the movie has {T}; pass the traces of this movie.")
    AtY, _, _, _ = _scan(source, model, [np.zeros(0, np.int64)] * model.K, need_AtY=True,
                         chunk_frames=chunk_frames, progress=progress)
    return model.residuals(AtY)


# --------------------------------------------------------------------------------------
# Shape
# --------------------------------------------------------------------------------------


def eccentricity(A: Any, dims: Sequence[int], spacing: Sequence[float] | None = None) -> np.ndarray:
    """Elongation of each footprint: sqrt(largest / smallest eigenvalue) of its second moments.

    The footprint's values weight the pixel coordinates (scaled by ``spacing``, e.g. µm per
    pixel, so anisotropic volumes are measured in physical units); each pixel adds its own
    extent (variance 1/12 per axis). A disc or a ring gives 1, an ellipse the ratio of its
    axes, a thin process a large value.

    Returns
    -------
    ndarray (K,) float64 ≥ 1; NaN for an empty footprint.
    """
    dims = tuple(int(d) for d in dims)
    M = _as_csc(A, "A")
    if M.shape[0] != math.prod(dims):
        raise ValueError(f"A has {M.shape[0]} rows but dims={dims} has {math.prod(dims)} pixels.")
    scale = np.ones(len(dims)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (len(dims),) or not np.all(scale > 0):
        raise ValueError(f"spacing must give one positive size per axis of dims={dims}; got {spacing!r}.")
    out = np.full(M.shape[1], np.nan)
    for k in range(M.shape[1]):
        lo, hi = M.indptr[k], M.indptr[k + 1]
        w = np.abs(M.data[lo:hi])
        if w.sum() <= 0:
            continue
        coords = np.stack(np.unravel_index(M.indices[lo:hi], dims), axis=1) * scale
        w = w / w.sum()
        centred = coords - w @ coords
        cov = (centred * w[:, None]).T @ centred + np.diag(scale**2 / 12.0)
        eig = np.linalg.eigvalsh(cov)
        out[k] = math.sqrt(eig[-1] / eig[0])
    return out


def footprint_masks(A: Any, dims: Sequence[int]) -> sp.csc_matrix:
    """Binary masks of the footprints ``A`` (``pixels × K``) as the shape tests and the matching
    to a ground truth see them (:func:`somascope.metrics.binarise_footprints`): the pixels at
    least :data:`somascope.metrics.MASK_FRAC` × the footprint's peak, largest connected piece.
    A footprint's faint tails (neighbours' leakage, background) make its weighted moments
    rounder and larger than the cell it is; the mask is the cell."""
    from somascope.metrics import binarise_footprints

    return binarise_footprints(_as_csc(A, "A"), tuple(int(d) for d in dims), largest_piece=True)


def widest_planes(masks: Any, dims: Sequence[int], *, by_energy: bool = False) -> sp.csc_matrix:
    """Each 3-D mask (``Z·H·W × K``) reduced to its plane with the most pixels (``H·W × K``);
    with ``by_energy``, each footprint to its plane of largest sum of squares.

    The shape tests of a volume look there: how many planes a cell's mask reaches, and so its
    3-D elongation and volume, depend on the optics and the plane spacing more than on the
    cell; its outline in the plane does not (a soma is round and one neuron wide, a dendrite
    long, neuropil wide). The shape classifier reads a volume's footprints there too."""
    dims = tuple(int(d) for d in dims)
    M = _as_csc(masks, "masks")
    plane = dims[-2] * dims[-1]
    cols = []
    for k in range(M.shape[1]):
        lo, hi = M.indptr[k], M.indptr[k + 1]
        rows, vals = M.indices[lo:hi], M.data[lo:hi]
        if rows.size:
            weights = np.square(vals, dtype=np.float64) if by_energy else None
            z = int(np.argmax(np.bincount(rows // plane, weights=weights)))
            here = rows // plane == z
            rows, vals = rows[here] - z * plane, vals[here]
        cols.append((rows, vals))
    indptr = np.r_[0, np.cumsum([r.size for r, _ in cols])]
    return sp.csc_matrix((np.concatenate([v for _, v in cols]) if cols else np.zeros(0),
                          np.concatenate([r for r, _ in cols]) if cols else np.zeros(0, int), indptr),
                         shape=(plane, M.shape[1]))


def area_ratio(masks: Any, dims: Sequence[int], radius: Sequence[float]) -> np.ndarray:
    """Area of each binary mask (:func:`footprint_masks`, ``pixels × K``) over the area of a
    neuron of ``radius`` px (one per axis): π·r_y·r_x in 2-D, 4/3·π·r_z·r_y·r_x in 3-D. A soma
    gives about 1; out-of-focus neuropil, background and merged neighbours give several.

    Returns
    -------
    ndarray (K,) float64 ≥ 0 (0 for an empty mask).
    """
    dims = tuple(int(d) for d in dims)
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(dims),))
    ball = math.pi if len(dims) == 2 else 4.0 / 3.0 * math.pi
    M = _as_csc(masks, "masks")
    return np.asarray((M != 0).sum(axis=0), dtype=np.float64).ravel() / (ball * float(np.prod(r)))


# --------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------


def select_components(
    snr: np.ndarray,
    r_values: np.ndarray,
    cnn_preds: np.ndarray | None = None,
    *,
    quality: QualityParams | None = None,
    ecc: np.ndarray | None = None,
    area: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Accepted and rejected component indices (the rule in the module docstring).

    Parameters
    ----------
    snr, r_values
        Trace SNR and spatial consistency, ``(K,)``; NaN counts as "no evidence" (passes no
        threshold and falls below no lowest value).
    cnn_preds
        Classifier probabilities ``(K,)``; used only when given and ``quality.use_cnn``.
    quality
        Thresholds (default ``QualityParams()``).
    ecc
        Eccentricities ``(K,)``; required when ``quality.use_ecc``.
    area
        Footprint areas over a neuron's (:func:`area_ratio`), ``(K,)``; required when
        ``quality.use_area``.
    valid
        ``(K,)`` bool, False for components that cannot be a cell (e.g. an empty footprint);
        those are rejected.

    Returns
    -------
    (idx_components, idx_components_bad) : sorted int64 arrays partitioning ``0..K-1``.
    """
    from somascope.params import QualityParams

    q = QualityParams() if quality is None else quality
    if not isinstance(q, QualityParams):
        raise TypeError(f"quality must be a QualityParams (Params.quality); got {type(q).__name__}.")
    snr = np.asarray(snr, dtype=np.float64).ravel()
    K = snr.size
    r = _vector(r_values, K, "r_values")
    with np.errstate(invalid="ignore"):
        accept = (snr >= q.min_SNR) | (r >= q.rval_thr)
        reject = (snr <= q.SNR_lowest) | (r <= q.rval_lowest)
        if cnn_preds is not None and q.use_cnn:
            cnn = _vector(cnn_preds, K, "cnn_preds")
            accept |= cnn >= q.min_cnn_thr
            reject |= cnn <= q.cnn_lowest
        if q.use_ecc:
            if ecc is None:
                raise ValueError("quality.use_ecc is on but no eccentricities were given; "
                                 "pass ecc=eccentricity(footprint_masks(A, dims), dims).")
            e = _vector(ecc, K, "ecc")
            reject |= ~(e <= q.max_ecc)
        if q.use_area:
            if area is None:
                raise ValueError("quality.use_area is on but no areas were given; "
                                 "pass area=area_ratio(footprint_masks(A, dims), dims, radius).")
            a = _vector(area, K, "area")
            reject |= ~((a <= q.max_area_ratio) & (a >= q.min_area_ratio))
    if valid is not None:
        reject |= ~_vector(valid, K, "valid").astype(bool)
    good = accept & ~reject
    return np.flatnonzero(good).astype(np.int64), np.flatnonzero(~good).astype(np.int64)


def evaluate_components(
    est: Estimates,
    source: Any,
    params: Params | None = None,
    *,
    sigma_factor: float = SIGMA_FACTOR,
    n_peaks: int = 5,
    frames_before: int | None = None,
    frames_after: int | None = None,
    peak_threshold: float = 0.3,
    chunk_frames: int | None = None,
    progress: bool = False,
    seed_masks: Any = None,
) -> Estimates:
    """Score every component and split them into accepted and rejected.

    Parameters
    ----------
    est
        Estimates with ``A``, ``C`` (and ``b``/``f`` when there is a background; ``YrA`` is
        computed when missing). Not modified.
    source
        The movie the estimates were computed from, ``T × *dims`` (ndarray, Movie, Store).
    params
        :class:`~somascope.params.Params`; ``params.quality`` holds the thresholds and
        ``N_samples_exceptionality`` (the SNR window), ``params.data.dxy`` the pixel size
        for the eccentricity. None: ``est.params`` if present, else the defaults.
    sigma_factor
        Scale of the SNR's z-scores, see the module docstring (3: CaImAn's scale, on which
        ``quality.min_SNR`` and ``SNR_lowest`` are calibrated; 1: unscaled).
    n_peaks, peak_threshold
        Frame selection of the r-value (:func:`activity_frames`).
    frames_before, frames_after
        Frames taken before / after each peak for the r-value; default
        ``ceil(N / 4)`` and ``N`` with ``N = quality.N_samples_exceptionality`` (3 and 12
        at 30 Hz with a 0.4 s decay).
    chunk_frames
        Frames read at a time (default: about 64 MiB of float32 per chunk).
    seed_masks
        With ``est.seeded`` (a structural run): the structural masks (``pixels × n_masks``, as
        :func:`somascope.cnmf.seeded.as_masks` takes them) on which each seeded cell's own
        activity is read (None: its footprint's binary mask).

    Returns
    -------
    Estimates
        A new object equal to ``est`` with ``SNR_comp``, ``r_values``, ``idx_components``,
        ``idx_components_bad`` set, ``cnn_preds`` (with ``quality.use_cnn``: the shape
        classifier's scores, :func:`classify_components`, unless ``est`` has them) and ``YrA``
        if it was missing; with ``est.seeded``, also ``activity`` (each seeded cell's own
        activity z, :mod:`~somascope.evaluation.activity`; NaN for the others) and ``silent``
        (the seeded cells whose activity z stays below
        :func:`~somascope.evaluation.activity.activity_threshold`: accepted, flagged).
    """
    from somascope.cnmf.estimates import Estimates

    if not isinstance(est, Estimates):
        raise TypeError(f"est must be an Estimates (somascope.cnmf.estimates); got {type(est).__name__}.")
    p = _resolve_params(params, est)
    q = p.quality
    if est.C is None:
        raise ValueError("the estimates have no traces C: evaluation needs them. Fix: run the temporal "
                         "update (cnmf.fit) first, or build Estimates with C.")
    model = _Model.build(est.A, est.C, est.b, est.f, est.YrA)
    T, dims = _check_source(source, model.n_pixels, est.dims)
    if model.T != T:
        raise ValueError(f"the estimates cover {model.T} frames but the movie has {T}; pass the movie "
                         f"the estimates were computed from.")
    if len(p.data.dxy) != len(dims):
        raise ValueError(f"the parameters describe {len(p.data.dxy)}-D frames (data.dxy={p.data.dxy}) but the "
                         f"movie's frames are {dims}. Fix: build Params for this data, e.g. "
                         f"Params.from_neuron(radius_px=(rz, ry, rx), ...) for volumes.")
    N = int(q.N_samples_exceptionality)
    before = math.ceil(N / 4) if frames_before is None else frames_before
    after = N if frames_after is None else frames_after
    frames = _frames_for_rvalues(model, n_peaks, before, after, peak_threshold)
    valid = model.norms > 0
    masks = footprint_masks(model.A, dims)
    seeded_cells, U = None, None
    if est.seeded is not None:  # a structural run: the seeded cells' neuropil-subtracted traces
        seeded_cells = np.flatnonzero(np.asarray(est.seeded, bool) & valid)
        occupied = np.asarray(masks[:, valid].sum(axis=1)).ravel() > 0
        U = neuropil_weights(_seeded_regions(model.A, masks, seeded_cells, seed_masks, dims), dims,
                             float(p.data.neuron_radius[-1]), occupied)
    AtY, mean, sums, UtY = _scan(source, model, frames, need_AtY=model.YrA is None, chunk_frames=chunk_frames,
                                 progress=progress, weights=U)
    YrA = model.YrA if AtY is None else model.residuals(AtY)
    r_values = _rvalues(model, frames, sums, mean)
    snr = trace_snr(model.C + YrA, N, sigma_factor=sigma_factor) if model.K else np.zeros(0)
    shape_masks, shape_dims, dxy, radius = masks, dims, p.data.dxy, p.data.neuron_radius
    if len(dims) == 3:  # a volume: each cell's shape in its widest plane (see widest_planes)
        shape_masks, shape_dims = widest_planes(masks, dims), dims[1:]
        dxy, radius = tuple(dxy)[1:], tuple(radius)[1:]
    ecc = eccentricity(shape_masks, shape_dims, dxy) if q.use_ecc else None
    area = area_ratio(shape_masks, shape_dims, radius) if q.use_area else None
    cnn = est.cnn_preds
    if q.use_cnn and cnn is None:
        cnn = classify_components(model.A, dims, p)
    good, bad = select_components(snr, r_values, cnn, quality=q, ecc=ecc, area=area, valid=valid)
    silent, activity = None, None
    if seeded_cells is not None:  # cells of a structural channel: kept, silent when inactive
        activity = np.full(model.K, np.nan)
        traces = neuropil_traces(UtY, U, seeded_cells, model.A, model.C, model.b, model.f)
        activity[seeded_cells] = activity_z(traces, p.data.decay_time, p.data.fr)
        threshold = activity_threshold(T, p.data.decay_time, p.data.fr)
        good, bad, silent = _keep_seeded(est.seeded, activity, threshold, r_values, valid, good)
    good, bad, n_dup = _drop_duplicates(masks, snr, good, bad)
    if silent is not None:  # a seeded cell dropped as another's duplicate is not reported silent
        with np.errstate(invalid="ignore"):  # the fit gave it nothing of its own
            quiet = np.asarray(est.seeded, bool) & ~(snr >= q.min_SNR) & ~(r_values >= QUIET_RVAL)
        good, bad, n_part = _drop_parts(masks, silent | quiet, good, bad)
        n_dup += n_part
        silent[bad] = False
    log.info("evaluated %d components: %d accepted, %d rejected (%d of them duplicates of an accepted one)%s",
             model.K, good.size, bad.size, n_dup,
             "" if silent is None else f"; {int(silent.sum())} seeded cells silent")
    changes: dict[str, Any] = dict(SNR_comp=snr, r_values=r_values, idx_components=good, idx_components_bad=bad,
                                   cnn_preds=cnn, silent=silent, activity=activity)
    if est.YrA is None:
        changes["YrA"] = YrA
    return dataclasses.replace(est, **changes)


# --------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------


def _seeded_regions(A: sp.csc_matrix, masks: sp.csc_matrix, cells: np.ndarray, seed_masks: Any,
                    dims: tuple[int, ...]) -> sp.csc_matrix:
    """``pixels × n``: where each seeded cell's own activity is read — the structural mask
    that holds its footprint (:func:`somascope.cnmf.seeded.seed_labels`), uniformly weighted;
    without ``seed_masks``, or for a footprint no mask holds, the footprint on its binary mask.
    A silent cell's fitted footprint is noise and leakage around its seed; the mask is where
    the cell is."""
    regions = sp.csc_matrix(A[:, cells].multiply(masks[:, cells] > 0))
    if seed_masks is None or cells.size == 0:
        return regions
    from somascope.cnmf.seeded import as_masks, seed_labels

    M = as_masks(seed_masks, dims)
    label = seed_labels(A[:, cells], M)
    held = label >= 0
    support = sp.csc_matrix((M[:, label[held]] > 0).astype(np.float64))
    pick = np.zeros(cells.size, np.int64)
    pick[held] = np.arange(int(held.sum())) + cells.size
    pick[~held] = np.flatnonzero(~held)
    return sp.csc_matrix(sp.hstack([regions, support], format="csc")[:, pick])


def _keep_seeded(seeded: np.ndarray, activity: np.ndarray, threshold: float, r_values: np.ndarray,
                 valid: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accept every seeded cell (a structural channel shows it is a cell) and flag as silent
    those that show no activity of their own: an activity z (:mod:`somascope.evaluation.activity`)
    below ``threshold`` (:func:`~somascope.evaluation.activity.activity_threshold`; or none: a
    movie too short to tell), unless the frames of its transients show its footprint (r-value
    at least :data:`ACTIVE_RVAL`). Returns ``(good, bad, silent)``."""
    seeded = np.asarray(seeded, bool) & np.asarray(valid, bool)
    with np.errstate(invalid="ignore"):
        silent = seeded & ~(np.asarray(activity) >= threshold) & ~(np.asarray(r_values) >= ACTIVE_RVAL)
    keep = np.zeros(seeded.size, bool)
    keep[good] = True
    keep |= seeded
    return np.flatnonzero(keep).astype(np.int64), np.flatnonzero(~keep).astype(np.int64), silent


def classify_components(A: Any, dims: Sequence[int], params: Params) -> np.ndarray | None:
    """The shape classifier's probability ``(K,)`` that each footprint of ``A`` (``pixels × K``)
    is a soma, with the weights ``params`` chooses (``quality.cnn_weights``, else those shipped
    for the modality); None, with a log line, where it does not apply (no weights for
    one-photon data). A volume's footprints are read in their plane of most energy."""
    from .classifier.cnn import load_weights, predict, shipped_weights

    q = params.quality
    radius = tuple(float(r) for r in params.data.neuron_radius)
    if len(dims) == 3:  # a volume: each footprint in its plane of most energy, a 2-D cell there
        A, dims, radius = widest_planes(A, dims, by_energy=True), tuple(dims)[1:], radius[1:]
    elif len(dims) != 2:
        log.info("the shape classifier reads 2-D footprints; it is skipped for %d-D data.", len(dims))
        return None
    modality = "1p" if params.data.is_1p else "2p"
    if q.cnn_weights is None and shipped_weights(modality) is None:
        log.info("no classifier weights ship for %s data; the CNN test is skipped (docs/classifier.md).", modality)
        return None
    weights = load_weights(q.cnn_weights, modality=modality)
    radii = None
    if q.gSig_range:
        scale = radius[-1] / float(params.init.gSig[-1])
        radii = [float(g) * scale for g in q.gSig_range]
    return predict(A, dims, radius, weights, radii=radii)


def _drop_duplicates(masks: sp.csc_matrix, snr: np.ndarray, good: np.ndarray,
                     bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Reject the accepted components that are the same cell as a better accepted one.

    The fit sometimes splits one cell into two components with nearly the same footprint and
    each a part of its events (their traces do not correlate, so merging leaves them): both
    pass the tests, but only one is a cell. Pairs whose masks overlap with a Jaccard distance
    below :data:`DUPLICATE_DISTANCE` (:func:`somascope.evaluation.find_duplicates`; no
    containment rule: a cell inside a larger accepted component is still a cell), the higher
    trace SNR kept. Returns ``(good, bad, number moved)``.
    """
    from .duplicates import find_duplicates

    if good.size < 2:
        return good, bad, 0
    dup = find_duplicates(masks[:, good], score=snr[good], max_distance=DUPLICATE_DISTANCE, subset_thr=None)
    if dup.n_removed == 0:
        return good, bad, 0
    return good[dup.keep], np.union1d(bad, good[dup.remove]).astype(np.int64), dup.n_removed


def _drop_parts(masks: sp.csc_matrix, quiet: np.ndarray, good: np.ndarray,
                bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Reject the accepted seeded cells that are a part of another accepted cell.

    A structural mask can be a part of its cell: in a volume a nucleus seen in one plane of a
    soma that spans two or three. When the unseeded detection finds that soma whole, the
    mask's own component is left without a trace of its own (the soma's component explains
    the activity): one cell reported twice. Its mask still shows the soma's activity, so its
    activity z may call it active. A ``quiet`` cell (bool, K: silent, or whose fitted trace is
    quiet) whose mask lies at least :data:`PART_COVER` inside the mask of an accepted cell that
    is not quiet, and makes at least :data:`PART_SHARE` of that mask, is that cell. Returns
    ``(good, bad, number moved)``."""
    loud, candidates = good[~quiet[good]], good[quiet[good]]
    if candidates.size == 0 or loud.size == 0:
        return good, bad, 0
    Q, L = masks[:, candidates].astype(np.float64), masks[:, loud].astype(np.float64)
    inter = np.asarray((Q.T @ L).todense())
    size_q = np.maximum(np.asarray(Q.sum(axis=0)).ravel(), 1.0)
    size_l = np.maximum(np.asarray(L.sum(axis=0)).ravel(), 1.0)
    part = ((inter / size_q[:, None] >= PART_COVER) & (inter / size_l[None, :] >= PART_SHARE)).any(axis=1)
    if not part.any():
        return good, bad, 0
    drop = candidates[part]
    return np.setdiff1d(good, drop), np.union1d(bad, drop).astype(np.int64), int(drop.size)


@dataclass
class _Model:
    """The pieces of ``Y ≈ A·C + b·f`` the tests need, in the types they need."""

    A: sp.csc_matrix      # pixels × K float64
    A_rows: sp.csr_matrix  # same, by rows
    C: np.ndarray          # K × T, float32 or float64 as given
    b: np.ndarray          # pixels × nb float64 (nb may be 0)
    f: np.ndarray          # nb × T float64
    YrA: np.ndarray | None
    norms: np.ndarray      # ‖a_i‖², K

    @property
    def K(self) -> int:
        return int(self.A.shape[1])

    @property
    def T(self) -> int:
        return int(self.C.shape[1])

    @property
    def n_pixels(self) -> int:
        return int(self.A.shape[0])

    @classmethod
    def build(cls, A: Any, C: Any, b: Any, f: Any, YrA: Any) -> _Model:
        M = _as_csc(A, "A").astype(np.float64)
        M.sort_indices()
        if M.nnz and not np.isfinite(M.data).all():
            raise ValueError("A contains NaN or infinite values; footprints must be finite.")
        Cm = np.asarray(C)
        if Cm.dtype.kind not in "biuf":
            raise TypeError(f"C must be a real numeric array; got dtype {Cm.dtype}.")
        if Cm.dtype.kind != "f":
            Cm = Cm.astype(np.float64)
        if Cm.ndim != 2 or Cm.shape[0] != M.shape[1]:
            raise ValueError(f"C must be K × T with one row per column of A (K={M.shape[1]}); got shape {Cm.shape}.")
        if not np.isfinite(Cm).all():
            raise ValueError("C contains NaN or infinite values; traces must be finite.")
        T = Cm.shape[1]
        if (b is None) != (f is None):
            raise ValueError("give both the background footprints b and its traces f, or neither.")
        if b is None:
            bm, fm = np.zeros((M.shape[0], 0)), np.zeros((0, T))
        else:
            bm = np.asarray(b, dtype=np.float64)
            fm = np.asarray(f, dtype=np.float64)
            if bm.ndim == 1:
                bm = bm[:, None]
            if fm.ndim == 1:
                fm = fm[None, :]
            if bm.shape[0] != M.shape[0] or fm.shape != (bm.shape[1], T):
                raise ValueError(f"background shapes do not fit: b is {bm.shape}, f is {fm.shape}; expected "
                                 f"b pixels × nb ({M.shape[0]} × nb) and f nb × T (nb × {T}).")
        Rm = None
        if YrA is not None:
            Rm = np.asarray(YrA)
            if Rm.shape != Cm.shape:
                raise ValueError(f"YrA must have the shape of C {Cm.shape}; got {Rm.shape}.")
            if not np.isfinite(Rm).all():
                raise ValueError("YrA contains NaN or infinite values.")
        norms = np.asarray(M.multiply(M).sum(axis=0)).ravel()
        return cls(M, M.tocsr(), Cm, bm, fm, Rm, norms)

    def residuals(self, AtY: np.ndarray) -> np.ndarray:
        """``YrA`` (K × T float32) from ``Aᵀ·Y``, in blocks of rows."""
        AtA = (self.A.T @ self.A).toarray().astype(self.C.dtype)  # products in the traces' precision
        Atb = (self.A.T @ self.b).astype(self.C.dtype)
        scale = np.divide(1.0, self.norms, out=np.zeros_like(self.norms), where=self.norms > 0)
        out = np.empty((self.K, self.T), dtype=np.float32)
        rows = max(1, _TRACE_BLOCK_ELEMENTS // max(self.T, 1))
        for k0 in range(0, self.K, rows):
            k1 = min(k0 + rows, self.K)
            R = AtY[k0:k1].astype(np.float64) - AtA[k0:k1] @ self.C
            if self.b.shape[1]:
                R -= Atb[k0:k1] @ self.f.astype(self.C.dtype, copy=False)
            out[k0:k1] = R * scale[k0:k1, None]
        return out


def _frames_for_rvalues(model: _Model, n_peaks: int, before: int, after: int, threshold: float) -> list[np.ndarray]:
    """Each component's peak frames, without those where an overlapping component is active."""
    frames = activity_frames(model.C, n_peaks=n_peaks, frames_before=before, frames_after=after,
                             peak_threshold=threshold) if model.K else []
    if model.K < 2:
        return frames
    inv = np.divide(1.0, np.sqrt(model.norms), out=np.zeros_like(model.norms), where=model.norms > 0)
    overlap = (model.A.T @ model.A).tocoo()
    normed = overlap.data * inv[overlap.row] * inv[overlap.col]
    keep = (normed > OVERLAP_THR) & (overlap.row != overlap.col)
    neighbours: dict[int, list[int]] = {}
    for i, j in zip(overlap.row[keep], overlap.col[keep]):
        neighbours.setdefault(int(i), []).append(int(j))
    out = []
    for i, own in enumerate(frames):
        others = neighbours.get(i)
        if others and own.size:
            busy = np.concatenate([frames[j] for j in others])
            alone = np.setdiff1d(own, busy, assume_unique=False)
            if alone.size:
                own = alone
            else:
                log.debug("component %d is active only together with overlapping components; its "
                          "r-value uses those frames", i)
        out.append(own)
    return out


def _rvalues(model: _Model, frames: list[np.ndarray], sums: list[np.ndarray], mean: np.ndarray) -> np.ndarray:
    """Correlation of each footprint with its activity image, other activity removed.

    The activity image is the data averaged over the component's frames *minus the data
    averaged over all frames* (``mean``, pixels), less the same change of every other
    component and of the background: what the movie shows change when the cell fires. Without
    the temporal mean, whatever static structure the background model leaves on the footprint
    (resting fluorescence of neighbours, vessels, neuropil texture) stays in the image and
    drowns a dim cell's activity.
    """
    K = model.K
    r = np.full(K, np.nan)
    A, rows = model.A, model.A_rows
    c_all = model.C.mean(axis=1, dtype=np.float64)
    f_all = model.f.mean(axis=1) if model.b.shape[1] else None
    for i in range(K):
        lo, hi = A.indptr[i], A.indptr[i + 1]
        px, a = A.indices[lo:hi], A.data[lo:hi]
        sel = a > 0
        px, a = px[sel], a[sel]
        if px.size < 3 or frames[i].size == 0:
            continue
        fr = frames[i]
        image = sums[i][sel] / fr.size - mean[px]
        c_change = model.C[:, fr].mean(axis=1, dtype=np.float64) - c_all
        c_change[i] = 0.0  # keep this component's own activity
        image = image - rows[px] @ c_change
        if f_all is not None:
            image = image - model.b[px] @ (model.f[:, fr].mean(axis=1) - f_all)
        r[i] = _pearson(image, a)
    return r


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(np.clip((x @ y) / denominator, -1.0, 1.0)) if denominator > 0 else math.nan


def _scan(
    source: Any,
    model: _Model,
    frames: list[np.ndarray],
    *,
    need_AtY: bool,
    chunk_frames: int | None,
    progress: bool,
    weights: sp.spmatrix | None = None,
) -> tuple[np.ndarray | None, np.ndarray, list[np.ndarray], np.ndarray | None]:
    """One pass over the movie: ``Aᵀ·Y`` (if asked), the mean image (``pixels``, float64),
    for each component the sum over its ``frames`` of the data at its footprint's pixels (in
    the order of ``A``'s indices), and ``weightsᵀ·Y`` (``n × T``; None without ``weights``,
    ``pixels × n``)."""
    T = int(source.shape[0])
    P = model.n_pixels
    if chunk_frames is None:
        from somascope.io.chunks import aligned_chunk_frames

        step = aligned_chunk_frames(source, _CHUNK_ELEMENTS // max(P, 1))
    else:
        step = int(chunk_frames)
    if step < 1:
        raise ValueError(f"chunk_frames must be >= 1; got {chunk_frames!r}.")
    from ._kernels import project_frames

    A = model.A
    A32 = sp.csc_matrix(A, dtype=np.float32) if need_AtY else None
    AtY = np.zeros((model.K, T), dtype=np.float32) if need_AtY else None
    W32 = None if weights is None else sp.csc_matrix(weights, dtype=np.float32)
    WtY = None if weights is None else np.zeros((weights.shape[1], T), dtype=np.float32)
    sums = [np.zeros(A.indptr[i + 1] - A.indptr[i]) for i in range(model.K)]
    total = np.zeros(P)
    active = [i for i in range(model.K) if frames[i].size and sums[i].size]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc="evaluating components", unit="frame", leave=False)
    try:
        from somascope.io.chunks import frame_ranges, read_ahead

        for t0, t1, block in read_ahead(lambda a, b: np.asarray(source[a:b], dtype=np.float32),
                                        frame_ranges(T, step)):
            Yc = np.ascontiguousarray(block.reshape(t1 - t0, P), dtype=np.float32)
            total += Yc.sum(axis=0, dtype=np.float64)
            for M32, MtY in ((A32, AtY), (W32, WtY)):
                if M32 is None:
                    continue
                part = np.empty((M32.shape[1], t1 - t0), np.float32)
                project_frames(Yc, M32.indptr, M32.indices, M32.data, part)
                if not np.isfinite(part).all():
                    where = "the footprints" if M32 is A32 else "the seeded cells' neuropil rings"
                    raise ValueError(f"the movie has NaN or infinite values on {where} in frames "
                                     f"{t0}..{t1 - 1}; clean it (e.g. motion-correction borders) first.")
                MtY[:, t0:t1] = part
            for i in active:
                fr = frames[i]
                a, z = np.searchsorted(fr, (t0, t1))
                if a == z:
                    continue
                px = A.indices[A.indptr[i]:A.indptr[i + 1]]
                part = Yc[np.ix_(fr[a:z] - t0, px)].sum(axis=0, dtype=np.float64)
                if not np.isfinite(part).all():
                    raise ValueError(f"the movie has NaN or infinite values on component {i}'s footprint "
                                     f"in frames {t0}..{t1 - 1}; clean it first.")
                sums[i] += part
            if bar is not None:
                bar.update(t1 - t0)
    finally:
        if bar is not None:
            bar.close()
    return AtY, total / T, sums, WtY


def _check_source(source: Any, n_pixels: int, dims: tuple[int, ...] | None) -> tuple[int, tuple[int, ...]]:
    """Number of frames and frame shape of a movie, checked against the footprints."""
    shape = getattr(source, "shape", None)
    if shape is None or not hasattr(source, "__getitem__"):
        raise TypeError(f"the movie must be an array T × H × W (or T × Z × H × W) or a frame source "
                        f"(Movie, Store); got {type(source).__name__}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"the movie must be T × H × W or T × Z × H × W; got shape {shape}. A pixels × T "
                         f"matrix Yr can be passed as Yr.T.reshape(T, *dims).")
    frame = shape[1:]
    if dims is not None and frame != tuple(dims):
        raise ValueError(f"the movie's frames are {frame} but the estimates' dims are {tuple(dims)}; pass the "
                         f"movie the estimates were computed from.")
    if math.prod(frame) != n_pixels:
        raise ValueError(f"the movie's frames have {math.prod(frame)} pixels but A has {n_pixels} rows.")
    if shape[0] < 1:
        raise ValueError("the movie has no frames.")
    return shape[0], frame


def _resolve_params(params: Any, est: Estimates) -> Params:
    from somascope.params import Params

    if params is None:
        return Params.from_dict(est.params) if est.params else Params()
    if isinstance(params, Params):
        return params
    raise TypeError(f"params must be a somascope Params (e.g. Params.from_neuron(5, fr=30)); got "
                    f"{type(params).__name__}. Fix: wrap a dict with Params.from_dict(...).")


def _as_csc(A: Any, name: str) -> sp.csc_matrix:
    if sp.issparse(A):
        return sp.csc_matrix(A)
    arr = np.asarray(A)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a pixels × K numeric matrix (sparse or dense); got "
                         f"{arr.dtype} array of shape {arr.shape}.")
    return sp.csc_matrix(arr)


def _as_traces(x: Any, name: str) -> np.ndarray:
    """``(K, T)`` floating view of ``x`` (float32 stays float32; other types become float64)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}.")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be K × T (or one trace of T frames) with T >= 1; got shape {np.shape(x)}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; traces must be finite.")
    return arr


def _vector(x: Any, K: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size != K:
        raise ValueError(f"{name} must have one value per component (K={K}); got {arr.size}.")
    return arr
