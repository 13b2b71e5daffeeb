"""GreedyCorr: the CNMF-E initialisation of one-photon data (Zhou et al., eLife 2018).

Seeds are pixels where a neuron's signal stands out of a spatially high-passed movie; each
seed gives one footprint and trace, whose contribution is then removed before the next seed
is chosen:

1. ``F`` = every frame filtered with a zero-sum kernel (a Gaussian of ``gSig`` minus its box
   mean, :func:`somascope.summary.highpass`, CaImAn's ``center_psf``), minus each pixel's
   temporal median (over at most :data:`MEDIAN_FRAMES` frames). The smooth background (and most of what a ring model leaves) is gone.
2. ``sigma`` = each pixel's white-noise level in ``F`` (median absolute successive difference
   / (0.6745·√2): robust to transients and to slow drift); the peak-to-noise image
   ``pnr = max_t F / sigma``; the correlation image ``corr`` of ``F`` with values below
   :data:`NOISE_THR` ``· sigma`` set to zero (8 neighbours).
3. Repeatedly, the pixel with the largest ``corr · pnr`` among those with ``corr ≥ min_corr``
   and ``pnr ≥ min_pnr`` (not yet used) is a seed. Its trace starts as ``F`` at the seed; the
   footprint is the least-squares regression (negative weights set to 0) of the movie in a box of
   ``2·gSiz + 1`` px around the seed on that trace, with a local background trace (the median
   of the box pixels that do not correlate with the seed) and a constant as nuisance
   regressors, cut to the connected piece around the seed above :data:`FOOTPRINT_FRAC` of its
   peak; the trace is then the footprint's projection of the movie (less noisy than one
   pixel). The filtered contribution ``highpass(a) ⊗ c`` is subtracted from ``F``, ``pnr`` and
   ``corr`` are recomputed around it, and the footprint's core (pixels above
   :data:`CORE_FRAC` of its peak) seeds nothing more: a large, bright one-photon soma that is
   not removed perfectly would otherwise come back as fragments.
4. It stops at ``init.K`` components (None: no limit) or when no pixel passes both thresholds.

The movie is normally the ring-background-subtracted one (:mod:`somascope.cnmf.ring`), but
the filter makes the seeds insensitive to a smooth background either way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

__all__ = ["greedy_corr", "seed_images"]

log = logging.getLogger(__name__)

#: Filtered values below ``NOISE_THR · sigma`` do not count in the correlation image.
NOISE_THR = 2.0
#: A footprint keeps the pixels above this fraction of its peak (connected to the seed).
FOOTPRINT_FRAC = 0.1
#: Pixels of a found footprint above this fraction of its peak (its core) seed nothing more.
CORE_FRAC = 0.5
#: Box pixels whose correlation with the seed's trace is below this give the local background.
BACKGROUND_CORR = 0.3
#: Frames the temporal medians (baseline, noise) are taken over, at most.
MEDIAN_FRAMES = 500
#: Frames of the filtered movie thresholded at a time for the correlation image.
CORR_CHUNK_FRAMES = 256
#: Fewest background pixels for the local background trace (else none is used), and most used.
MIN_BACKGROUND_PIXELS = 5
BACKGROUND_PIXELS = 256


def seed_images(Y: np.ndarray, gSig: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The filtered movie and the seed images of :func:`greedy_corr` (steps 1–2).

    Returns ``(F, sigma, pnr, corr)``: ``F`` float32 ``T × H × W``; ``sigma``, ``pnr``,
    ``corr`` float32 ``H × W`` (``pnr`` is 0 where ``sigma`` is 0).
    """
    from somascope.summary import highpass

    F = highpass(np.asarray(Y, np.float32), gSig)
    F -= _temporal_median(F)
    sigma = _white_noise(F)
    pnr = _pnr(F, sigma)
    corr = _thresholded_corr(F, sigma)
    return F, sigma, pnr, corr


def greedy_corr(Y: np.ndarray, gSig: float | Sequence[float], gSiz: int | Sequence[int], *,
                min_corr: float, min_pnr: float, K: int | None = None, nb: int = 1) -> Any:
    """GreedyCorr on a movie ``T × H × W`` (see the module docstring).

    Args:
        Y: movie (or patch) ``T × H × W``; not modified.
        gSig: neuron half-size (px) of the high-pass filter, scalar or per axis.
        gSiz: neuron box size (px), scalar or per axis; footprints are sought within ``gSiz``
            px of their seed.
        min_corr, min_pnr: thresholds a seed pixel must pass.
        K: most components (None: until no seed passes).
        nb: global background components fitted to what the components leave (≥ 0).

    Returns:
        :class:`~somascope.cnmf.initialization.Initialization`: unit-norm footprints, traces in
        movie units × footprint norm.
    """
    from somascope.summary import highpass

    from .initialization import (Initialization, _background_or_empty, _centers_of_mass, _columns_to_csc,
                                 _normalize_columns)

    Y = np.asarray(Y, np.float32)
    if Y.ndim != 3:
        raise ValueError(f"GreedyCorr needs a T × H × W movie, got shape {Y.shape}. Fix: process a "
                         "volume plane by plane, or use init.method='greedy_roi'.")
    T, H, W = Y.shape
    sig = _pair(gSig, float)
    half = tuple(max(1, int(s)) for s in _pair(gSiz, int))  # box half-width: one neuron box
    filt = tuple(max(1, int(2 * s)) for s in sig)  # the high-pass kernel's radius
    F, sigma, pnr, corr = seed_images(Y, sig)
    safe_sigma = np.where(sigma > 0, sigma, np.inf).astype(np.float32)
    base = _temporal_median(Y)
    used = np.zeros((H, W), bool)
    mark = tuple(max(1, int(round(s / 2))) for s in sig)
    limit = K if K is not None else H * W
    cols: list[tuple[np.ndarray, np.ndarray]] = []
    traces: list[np.ndarray] = []
    while len(cols) < limit:
        ok = (corr >= min_corr) & (pnr >= min_pnr) & ~used
        if not ok.any():
            break
        y, x = np.unravel_index(int(np.argmax(np.where(ok, corr * pnr, -np.inf))), (H, W))
        used[max(0, y - mark[0]):y + mark[0] + 1, max(0, x - mark[1]):x + mark[1] + 1] = True
        box = (slice(max(0, y - half[0]), min(H, y + half[0] + 1)),
               slice(max(0, x - half[1]), min(W, x + half[1] + 1)))
        found = _extract(Y[(slice(None),) + box] - base[box], F[(slice(None),) + box], F[:, y, x],
                         (y - box[0].start, x - box[1].start))
        if found is None:
            continue
        a_box, c = found
        a = np.zeros((H, W), np.float32)
        a[box] = a_box
        used |= a >= CORE_FRAC * a.max()  # no second seed inside a neuron already found
        pixels = np.flatnonzero(a)
        cols.append((pixels, a.ravel()[pixels]))
        traces.append(c)
        # remove its filtered contribution and refresh the seed images around it
        near = (slice(max(0, box[0].start - filt[0]), min(H, box[0].stop + filt[0])),
                slice(max(0, box[1].start - filt[1]), min(W, box[1].stop + filt[1])))
        ha = highpass(a[near][None], sig)[0]
        cc = (c - np.median(c)).astype(np.float32)
        F[(slice(None),) + near] -= cc[:, None, None] * ha[None]
        pnr[near] = _pnr(F[(slice(None),) + near], safe_sigma[near])
        wide = (slice(max(0, near[0].start - 1), min(H, near[0].stop + 1)),
                slice(max(0, near[1].start - 1), min(W, near[1].stop + 1)))
        inner = tuple(slice(n.start - w.start, n.stop - w.start) for n, w in zip(near, wide))
        corr[near] = _thresholded_corr(F[(slice(None),) + wide], sigma[wide])[inner]
    del F
    P = H * W
    A = _columns_to_csc(cols, P)
    C = np.vstack(traces).astype(np.float32) if traces else np.zeros((0, T), np.float32)
    A, C = _normalize_columns(A, C)
    A = sp.csc_matrix(A, dtype=np.float32)
    # the background of what the components leave (Y − A·C is never formed)
    b, f = _background_or_empty(Y.reshape(T, P).T, nb, **({"A": A, "C": C} if A.shape[1] else {}))
    log.info("GreedyCorr: %d components (min_corr %.2f, min_pnr %.1f)", A.shape[1], min_corr, min_pnr)
    return Initialization(A=A, C=np.ascontiguousarray(C, np.float32), b=np.asarray(b, np.float32),
                          f=np.asarray(f, np.float32), center=_centers_of_mass(A, (H, W)),
                          method="greedy_corr", dims=(H, W))


def _extract(Yb: np.ndarray, Fb: np.ndarray, seed_trace: np.ndarray, seed: tuple[int, int]
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Footprint (box-shaped float32) and trace (float32, T) of the neuron at ``seed`` of a
    box: ``Yb`` the movie minus its median, ``Fb`` the filtered movie. None: nothing there."""
    T = Yb.shape[0]
    shape = Yb.shape[1:]
    Yr = np.asarray(Yb, np.float32).reshape(T, -1)
    c = seed_trace.astype(np.float32) - seed_trace.mean()
    norm_c = np.linalg.norm(c)
    if not norm_c > 0:
        return None
    Fr = Fb.reshape(T, -1)
    Fr = Fr - Fr.mean(axis=0)
    r = (Fr.T @ c) / (np.linalg.norm(Fr, axis=0) * norm_c + 1e-12)
    regressors = [c]
    quiet = np.flatnonzero(r < BACKGROUND_CORR)
    if quiet.size >= MIN_BACKGROUND_PIXELS:
        # the median of (at most BACKGROUND_PIXELS of) them, evenly spread over the box
        pick = quiet[np.linspace(0, quiet.size - 1, min(quiet.size, BACKGROUND_PIXELS)).astype(int)]
        bg = np.median(Yr[:, pick], axis=1)
        regressors.append(bg - bg.mean())
    X = np.column_stack(regressors + [np.ones(T, np.float32)]).astype(np.float32)
    gram = (X.T @ X).astype(np.float64)  # a few regressors: normal equations (lstsq's SVD costs 10× more here)
    gram[np.diag_indices_from(gram)] += 1e-9 * np.trace(gram)
    coef = np.linalg.solve(gram, (X.T @ Yr).astype(np.float64)).astype(np.float32)
    a = np.maximum(coef[0], 0.0).reshape(shape)
    if not a.max() > 0:
        return None
    keep = a >= FOOTPRINT_FRAC * a.max()
    labels, _ = ndimage.label(keep)
    lab = labels[seed]
    if lab == 0:
        return None
    a = np.where(labels == lab, a, 0.0)
    # the trace: the footprint's projection of the movie, nuisance regressors removed
    clean = Yr - X[:, 1:] @ coef[1:]
    av = a.ravel()
    trace = clean @ av / float(av @ av)
    return a.astype(np.float32), trace


def _temporal_median(X: np.ndarray) -> np.ndarray:
    """Median over time of ``X`` (``T × …``) from at most :data:`MEDIAN_FRAMES` frames evenly
    spread over it (a baseline; the full median costs a sort of the whole movie)."""
    step = max(1, -(-X.shape[0] // MEDIAN_FRAMES))
    return np.median(X[::step], axis=0)


def _white_noise(F: np.ndarray) -> np.ndarray:
    """Noise std of each pixel of ``F`` (``T × …``) from its successive differences (MAD;
    at most :data:`MEDIAN_FRAMES` of them, from the start of the movie)."""
    d = np.diff(F[:MEDIAN_FRAMES + 1], axis=0)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    return (mad / (0.6745 * math.sqrt(2.0))).astype(np.float32)


def _pnr(F: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sigma > 0, F.max(axis=0) / sigma, 0.0)
    return np.maximum(np.nan_to_num(out, posinf=0.0), 0.0).astype(np.float32)


def _thresholded_corr(F: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """8-neighbour correlation image (as :func:`somascope.summary.correlation_image`) of ``F``
    (``T × h × w``) with values below ``NOISE_THR · sigma`` set to 0, accumulated over chunks
    of :data:`CORR_CHUNK_FRAMES` frames (no thresholded copy of the movie)."""
    from somascope.summary import neighbour_offsets, thresholded_moments

    floor = (NOISE_THR * sigma).astype(np.float32)
    chunks = (F[t0:t0 + CORR_CHUNK_FRAMES] for t0 in range(0, F.shape[0], CORR_CHUNK_FRAMES))
    _, moments = thresholded_moments(chunks, floor, F.shape[1:], neighbour_offsets(2, 8))
    return moments.correlation()


def _pair(value: float | Sequence[float], kind: type) -> tuple[Any, Any]:
    vals = tuple(kind(v) for v in np.atleast_1d(value))
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise ValueError(f"GreedyCorr works on H × W frames: give one size or two, got {value!r}.")
    return vals  # type: ignore[return-value]
