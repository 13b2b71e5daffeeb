"""A seeded cell's own activity: the neuropil-subtracted trace and its activity z
(`somascope.evaluation.activity`), which tells silent cells from active ones."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from somascope.evaluation.activity import (MIN_RING_PIXELS, RING_OUTER, activity_threshold, activity_z, neuropil_traces,
                                           neuropil_weights)

FR, DECAY, T = 30.0, 0.4, 2000
ACTIVITY_Z = activity_threshold(T, DECAY, FR)


def _transients(rng: np.random.Generator, n_events: int, amplitude: float) -> np.ndarray:
    spikes = np.zeros(T)
    spikes[rng.choice(np.arange(100, T - 100), n_events, replace=False)] = amplitude
    g = np.exp(-1.0 / (DECAY * FR))
    out = np.zeros(T)
    for t in range(T):
        out[t] = (out[t - 1] * g if t else 0.0) + spikes[t]
    return out


def test_activity_z_sees_transients_above_noise_and_not_slow_drifts() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((40, T))
    quiet = activity_z(noise, DECAY, FR)
    # the largest noise excursion is ~3.3 deviations, above ACTIVITY_Z in a few % of traces
    assert np.mean(quiet < ACTIVITY_Z) >= 0.9 and 2.5 < np.median(quiet) < 4.0
    # the threshold follows the noise maximum of longer recordings, and of a fast indicator at a
    # low frame rate (more independent stretches): noise stays below it there too
    long = activity_z(rng.standard_normal((10, 50 * T)), DECAY, FR)
    assert activity_threshold(50 * T, DECAY, FR) > ACTIVITY_Z + 0.9
    assert np.mean(long < activity_threshold(50 * T, DECAY, FR)) >= 0.9
    assert np.median(long) > ACTIVITY_Z - 0.3  # where the 2,000-frame threshold would call half of them active
    fast = activity_z(rng.standard_normal((40, T)), DECAY, 5.0)  # 2 frames of decay
    assert np.mean(fast < activity_threshold(T, DECAY, 5.0)) >= 0.9
    assert activity_threshold(T, DECAY, 5.0) > ACTIVITY_Z > activity_threshold(T, 2.0, FR)
    # a slow neuropil field (20 s period, 3 noise deviations) is high-passed away
    drift = activity_z(noise + 3.0 * np.sin(2 * np.pi * np.arange(T) / (20 * FR)), DECAY, FR)
    assert np.mean(drift < ACTIVITY_Z) >= 0.9 and abs(np.median(drift) - np.median(quiet)) < 0.3
    # five transients of 3.5 noise deviations at their peak: within the noise frame by frame, plain to
    # a filter with the indicator's decay
    events = np.stack([_transients(rng, 5, 3.5) for _ in range(40)])
    assert np.all(activity_z(noise + events, DECAY, FR) > ACTIVITY_Z)
    # shorter than the high-pass window: no verdict
    assert np.isnan(activity_z(noise[:, :20], DECAY, FR)).all()


def test_the_neuropil_ring_cancels_light_that_is_smooth_around_the_cell() -> None:
    rng = np.random.default_rng(1)
    dims = (48, 48)
    yy, xx = np.mgrid[:dims[0], :dims[1]]

    def disc(cy: float, cx: float, r: float) -> np.ndarray:
        return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).ravel().astype(np.float64)

    silent, active, other = disc(16, 16, 4), disc(32, 30, 4), disc(16, 27, 4)
    blob = np.exp(-((yy - 22) ** 2 + (xx - 22) ** 2) / (2 * 20.0 ** 2)).ravel()  # out-of-focus neuropil
    blob_events = _transients(rng, 30, 8.0)
    own = _transients(rng, 6, 3.0)
    Y = (np.outer(blob_events, blob) + np.outer(own, active) + 10.0
         + rng.standard_normal((T, blob.size)) * 3.0).astype(np.float32)

    regions = sp.csc_matrix(np.stack([silent, active], axis=1))
    occupied = (silent + active + other) > 0
    U = neuropil_weights(regions, dims, radius=4.0, occupied=occupied)
    assert np.allclose(np.asarray(U.sum(axis=0)).ravel(), 0.0)  # cell mean minus ring mean
    ring = np.asarray(U[:, 0].todense()).ravel() < 0
    assert not np.any(ring & occupied) and ring.sum() >= MIN_RING_PIXELS  # other cells left out
    far = np.hypot(yy.ravel() - 16, xx.ravel() - 16)[ring]
    assert far.max() <= 4 + RING_OUTER * 4 + 1.5

    # the model knows nothing but a flat offset: A = the two regions with zero traces
    A = regions
    C = np.zeros((2, T))
    traces = neuropil_traces(U.T @ Y.T.astype(np.float64), U, np.array([0, 1]), A, C,
                             np.full((blob.size, 1), 10.0), np.ones((1, T)))
    z = activity_z(traces, DECAY, FR)
    assert z[0] < ACTIVITY_Z < z[1]
    # read on the cell alone, the neuropil's transients would make the silent cell active
    plain = activity_z((silent / silent.sum()) @ Y.T.astype(np.float64), DECAY, FR)
    assert plain > ACTIVITY_Z


def test_the_other_components_fit_is_taken_out_and_the_cells_own_kept() -> None:
    a = np.zeros(400)
    a[150:160] = 1.0
    b_ = np.zeros(400)
    b_[152:158] = 0.5  # a neighbour overlapping the cell
    A = sp.csc_matrix(np.stack([a, b_], axis=1))
    C = np.vstack([np.linspace(0, 1, 50), np.linspace(1, 0, 50)])
    U = sp.csc_matrix(a[:, None] / a.sum())
    Y = (A @ C).T
    traces = neuropil_traces(U.T @ Y.T, U, np.array([0]), A, C, None, None)
    assert np.allclose(traces[0], C[0])  # the neighbour's share removed, the cell's own left
