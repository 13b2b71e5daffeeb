"""Deconvolution: noise and AR estimation, OASIS (exact and greedy), noise-constrained solves."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.optimize import nnls
from scipy.signal import lfilter

from somascope.deconvolution import (
    ar_to_time_constants,
    deconvolve,
    deconvolve_traces,
    estimate_ar,
    estimate_noise,
    oasis_ar1,
    oasis_ar2,
    time_constants_to_ar,
)

FR = 30.0
G1 = np.array([0.92])
G2 = time_constants_to_ar(1.0, 0.1, FR)  # decay 1 s, rise 0.1 s at 30 Hz


def ar_filter(g: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Calcium ``c[t] = Σ g_i c[t-1-i] + s[t]`` driven by ``s`` (starting from rest)."""
    return lfilter([1.0], np.concatenate([[1.0], -np.asarray(g, dtype=float)]), s)


def ar_kernel(g: np.ndarray, T: int) -> np.ndarray:
    """Response ``h`` to a unit spike (h[0] = 1) of the AR model ``g``."""
    return ar_filter(g, np.eye(1, T)[0])


def decay_root(g: np.ndarray) -> float:
    return float(g[0]) if len(g) == 1 else float((g[0] + np.sqrt(max(g[0] ** 2 + 4 * g[1], 0.0))) / 2)


def simulate(g: np.ndarray, T: int, rate: float, sn: float, b: float, seed: int):
    """Calcium from sparse spikes (none in the first frames), plus noise and baseline."""
    rng = np.random.default_rng(seed)
    s = (rng.random(T) < rate) * rng.uniform(0.5, 2.0, T)
    s[:3] = 0.0
    c = ar_filter(g, s)
    return b + c + sn * rng.standard_normal(T), c, s


def nnls_reference(y: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    """Exact solution of ½‖y − c‖² + lam·Σs, s = Gc >= 0, through scipy's NNLS.

    ``c = x0·d**t + Σ_{j>=1} s_j h[t − j]``: free initial calcium decaying with the decay root
    ``d`` plus non-negative spikes; the penalty folds into the data as ``y − lam·q`` with
    OASIS's weights ``q = 1 − Σg`` (last frames: ``1 − g1``, ``1``).
    """
    T = y.size
    h = ar_kernel(g, T)
    K = np.zeros((T, T))
    K[:, 0] = decay_root(g) ** np.arange(T)
    for j in range(1, T):
        K[j:, j] = h[: T - j]
    q = np.full(T, 1.0 - np.sum(g))
    q[-len(g):] = [1.0 - g[0], 1.0][-len(g):]
    x, _ = nnls(K, y - lam * q, maxiter=50 * T)
    return K @ x


def objective(y, c, g, lam):
    """½‖y − c‖² + lam·q·c with OASIS's penalty weights ``q`` (see ``nnls_reference``)."""
    q = np.full(y.size, 1.0 - np.sum(g))
    q[-len(g):] = [1.0 - g[0], 1.0][-len(g):]
    return 0.5 * np.sum((y - c) ** 2) + lam * q @ c


# ------------------------------------------------------------------------------------------
# OASIS for a fixed penalty


@pytest.mark.parametrize("g", [G1, G2], ids=["AR1", "AR2"])
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "greedy"])
def test_noiseless_traces_give_back_their_spikes(g, exact):
    T = 300
    s = np.zeros(T)
    s[[20, 60, 61, 150, 151, 152, 240]] = [1.0, 0.5, 2.0, 0.7, 0.7, 1.5, 1.2]
    c_true = ar_filter(g, s)
    c, s_hat = oasis_ar1(c_true, float(g[0])) if len(g) == 1 else oasis_ar2(c_true, g, exact=exact)
    np.testing.assert_allclose(s_hat, s, atol=1e-9)
    np.testing.assert_allclose(c, c_true, atol=1e-9)


@pytest.mark.parametrize("g", [G1, G2], ids=["AR1", "AR2"])
@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_oasis_equals_nnls_solution(g, lam):
    y, _, _ = simulate(g, 160, 0.05, 0.3, 0.0, seed=1)
    ref = nnls_reference(y, g, lam)
    c, s = oasis_ar1(y, float(g[0]), lam) if len(g) == 1 else oasis_ar2(y, g, lam)
    np.testing.assert_allclose(c, ref, atol=1e-7 * np.abs(ref).max())
    assert s.min() > -1e-9 * np.abs(ref).max()


def test_greedy_ar2_is_never_better_than_exact():
    y, _, _ = simulate(G2, 400, 0.05, 0.3, 0.0, seed=2)
    for lam in (0.0, 0.5):
        exact, _ = oasis_ar2(y, G2, lam)
        greedy, _ = oasis_ar2(y, G2, lam, exact=False)
        assert objective(y, exact, G2, lam) <= objective(y, greedy, G2, lam) + 1e-9


@pytest.mark.parametrize("g", [G1, G2], ids=["AR1", "AR2"])
def test_minimum_spike_size_is_respected(g):
    y, _, _ = simulate(g, 800, 0.03, 0.2, 0.0, seed=3)
    s_min = 0.4
    _, s = oasis_ar1(y, float(g[0]), 0.0, s_min) if len(g) == 1 else oasis_ar2(y, g, 0.0, s_min)
    spikes = s[len(g):][np.abs(s[len(g):]) > 1e-9]
    assert spikes.size > 5
    assert spikes.min() >= s_min - 1e-9


# ------------------------------------------------------------------------------------------
# noise and AR estimation


@pytest.mark.parametrize("method", ["mean", "median", "logmexp"])
def test_noise_of_white_noise(method):
    rng = np.random.default_rng(4)
    Y = 0.7 * rng.standard_normal((6, 6000)) + 3.0
    sn = estimate_noise(Y, method=method)
    assert sn.shape == (6,)
    np.testing.assert_allclose(sn, 0.7, rtol=0.06)
    assert estimate_noise(Y[2], method=method) == pytest.approx(sn[2], rel=1e-12)


def test_noise_ignores_slow_calcium_signal():
    # a calcium response with a rise time has almost no power in the top half of the band
    y, _, _ = simulate(G2, 8000, 0.02, 0.25, 1.0, seed=5)
    assert y.std() > 3 * 0.25
    for method in ("mean", "median", "logmexp"):
        assert estimate_noise(y, method=method) == pytest.approx(0.25, rel=0.06)


def test_noise_of_a_resampled_trace():
    """Fourier-interpolated data have an empty top band; the band moves below the edge."""
    from scipy.signal import resample

    x = 0.5 * np.random.default_rng(17).standard_normal(3000)
    y = resample(x, 12000)  # ×4: nothing above 0.125 cycles per frame
    assert estimate_noise(y, adapt_band=False) < 1e-6
    for method in ("mean", "median", "logmexp"):
        assert estimate_noise(y, method=method) == pytest.approx(y.std(), rel=0.06)


def test_pixel_noise_reads_a_bounded_number_of_frames():
    from somascope.deconvolution.noise import NOISE_MAX_FRAMES, NOISE_SEGMENT_FRAMES, pixel_noise_frames

    # a short movie: every frame, in consecutive pieces of at most NOISE_SEGMENT_FRAMES
    assert pixel_noise_frames(300) == [(0, 300)]
    assert pixel_noise_frames(1000) == [(0, 500), (500, 1000)]
    for T in (3000, NOISE_MAX_FRAMES):
        ranges = pixel_noise_frames(T)
        assert ranges[0][0] == 0 and ranges[-1][1] == T
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) <= NOISE_SEGMENT_FRAMES
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    for T in (NOISE_MAX_FRAMES + 1, 21_000, 108_000):
        ranges = pixel_noise_frames(T)
        assert sum(b - a for a, b in ranges) <= NOISE_MAX_FRAMES  # does not grow with T
        assert all(b - a == NOISE_SEGMENT_FRAMES for a, b in ranges)
        assert ranges[0][0] == 0 and ranges[-1][1] == T  # first and last frames are looked at
        assert all(a1 >= b0 for (_, b0), (a1, _) in zip(ranges, ranges[1:]))  # no frame twice


def test_noise_from_segments_equals_the_whole_recording():
    """Segments of a long movie (pixels of different noise, slow drift) give the noise of all
    frames; one segment that is the whole movie gives exactly the whole-movie estimate."""
    from somascope.deconvolution.noise import (estimate_noise_columns, estimate_noise_segments,
                                               pixel_noise_frames)

    rng = np.random.default_rng(3)
    T, sigma = 30_000, np.linspace(0.5, 2.0, 12)
    drift = 5.0 * np.sin(np.linspace(0, 3 * np.pi, T))[:, None]  # slow: outside the noise band
    Y = (drift + sigma * rng.standard_normal((T, sigma.size))).astype(np.float32)
    ranges = pixel_noise_frames(T)
    assert len(ranges) > 1
    sn = estimate_noise_segments([Y[a:b] for a, b in ranges])
    np.testing.assert_allclose(sn, sigma, rtol=0.06)
    np.testing.assert_allclose(sn, estimate_noise_columns(Y), rtol=0.06)
    np.testing.assert_allclose(estimate_noise_segments([Y[:2000]]), estimate_noise_columns(Y[:2000]),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="at least one segment"):
        estimate_noise_segments([])


def test_ar1_coefficient_recovered():
    g = np.array([0.95])
    Y = np.stack([simulate(g, 20000, 0.05, 0.2, 0.5, seed=10 + k)[0] for k in range(3)])
    est = estimate_ar(Y, 1, sn=0.2, lags=5, fudge_factor=1.0)
    assert est.shape == (3, 1)
    np.testing.assert_allclose(est[:, 0], 0.95, atol=0.01)
    np.testing.assert_allclose(estimate_ar(Y[1], 1, sn=0.2, lags=5, fudge_factor=1.0), est[1], rtol=1e-12)


def test_ar2_time_constants_recovered():
    y = simulate(G2, 30000, 0.05, 0.1, 0.0, seed=6)[0]
    g = estimate_ar(y, 2, sn=0.1, lags=10, fudge_factor=1.0)
    tau_d, tau_r = ar_to_time_constants(g, FR)
    assert tau_d == pytest.approx(1.0, rel=0.15)
    assert tau_r == pytest.approx(0.1, rel=0.3)


def test_fudge_factor_scales_the_roots():
    y = simulate(G1, 5000, 0.05, 0.2, 0.0, seed=7)[0]
    raw = estimate_ar(y, 1, sn=0.2, fudge_factor=1.0)
    assert estimate_ar(y, 1, sn=0.2, fudge_factor=0.96)[0] == pytest.approx(0.96 * raw[0])


def test_time_constants_round_trip():
    g = time_constants_to_ar(0.8, 0.05, FR)
    assert ar_to_time_constants(g, FR) == pytest.approx((0.8, 0.05))
    assert ar_to_time_constants(time_constants_to_ar(0.5, 0.0, 10.0), 10.0) == pytest.approx((0.5, 0.0))
    assert time_constants_to_ar(0.5, 0.0, 10.0)[0] == pytest.approx(np.exp(-1 / 5))


# ------------------------------------------------------------------------------------------
# the noise-constrained problem


@pytest.mark.parametrize("g", [G1, G2], ids=["AR1", "AR2"])
def test_constrained_solution_meets_noise_and_finds_spikes(g):
    sn, b_true = 0.2, 1.0
    y, c_true, s_true = simulate(g, 3000, 0.03, sn, b_true, seed=8)
    res = deconvolve(y, g=g, sn=sn)
    rss = np.sum((y - res.b - res.c) ** 2)
    assert rss == pytest.approx(sn**2 * y.size, rel=2e-3)
    assert res.b == pytest.approx(b_true, abs=0.75 * sn)  # the L1 shrinkage biases b upwards
    assert np.corrcoef(res.s, s_true)[0, 1] > 0.85
    assert res.s.min() >= 0 and res.c1 == res.c[0]
    # it is the penalised OASIS solution at the multiplier found
    if len(g) == 1:
        c_ref, _ = oasis_ar1(y - res.b, float(g[0]), res.lam)
    else:
        c_ref, _ = oasis_ar2(y - res.b, g, res.lam)
    np.testing.assert_allclose(res.c, c_ref, atol=1e-3 * np.abs(c_ref).max())


def test_fixed_baseline_and_fixed_penalty():
    y, _, _ = simulate(G1, 1500, 0.03, 0.2, 0.5, seed=9)
    res = deconvolve(y, g=G1, sn=0.2, b=0.5)
    assert res.b == 0.5
    assert np.sum((y - 0.5 - res.c) ** 2) == pytest.approx(0.04 * y.size, rel=1e-3)
    fixed = deconvolve(y, g=G1, sn=0.2, b=0.5, lam=0.3)
    assert fixed.lam == 0.3
    np.testing.assert_allclose(fixed.c, oasis_ar1(y - 0.5, 0.92, 0.3)[0], atol=1e-12)


def test_negative_baseline_needs_bas_nonneg_false():
    y, _, _ = simulate(G1, 2000, 0.03, 0.2, -0.8, seed=11)
    assert deconvolve(y, g=G1, sn=0.2, bas_nonneg=True).b == 0.0
    assert deconvolve(y, g=G1, sn=0.2, bas_nonneg=False).b == pytest.approx(-0.8, abs=0.1)
    assert deconvolve(y, g=G1, sn=0.2).b == pytest.approx(-0.8, abs=0.1)  # the default is free


def test_everything_estimated_from_the_trace():
    y, _, s_true = simulate(G1, 6000, 0.03, 0.2, 1.0, seed=12)
    res = deconvolve(y)
    assert res.g.shape == (1,) and 0.8 < res.g[0] < 0.95
    # instantaneous AR(1) jumps leak some power into the noise band
    assert res.sn == pytest.approx(0.2, rel=0.25)
    assert np.corrcoef(res.s, s_true)[0, 1] > 0.8


def test_minimum_spike_size_modes():
    sn = 0.2
    y, _, _ = simulate(G1, 3000, 0.03, sn, 1.0, seed=13)
    l1 = deconvolve(y, g=G1, sn=sn)
    absolute = deconvolve(y, g=G1, sn=sn, s_min=0.3)
    assert absolute.s[absolute.s > 0].min() >= 0.3 - 1e-9
    relative = deconvolve(y, g=G1, sn=sn, s_min=-2.0)
    thr = 2.0 * sn * np.sqrt(1 - G1[0])
    assert relative.s[relative.s > 0].min() >= thr - 1e-9
    auto = deconvolve(y, g=G1, sn=sn, s_min=0)
    assert np.count_nonzero(auto.s) < np.count_nonzero(l1.s)
    assert np.sum((y - auto.b - auto.c) ** 2) <= sn**2 * y.size * (1 + 1e-9)


def test_optimize_g_corrects_a_wrong_decay():
    g_true = np.array([0.95])
    y, _, _ = simulate(g_true, 6000, 0.02, 0.15, 0.5, seed=14)
    start = deconvolve(y, g=[0.85], sn=0.15)
    refined = deconvolve(y, g=[0.85], sn=0.15, optimize_g=10)
    assert abs(refined.g[0] - 0.95) < 0.3 * abs(start.g[0] - 0.95)


def test_no_dynamics():
    y = np.linspace(-1, 1, 50)
    res = deconvolve(y, p=0, b=0.0)
    np.testing.assert_array_equal(res.c, np.maximum(y, 0))
    assert res.g.size == 0


# ------------------------------------------------------------------------------------------
# many traces, parameters, errors


def test_many_traces_match_single_trace_calls():
    Y = np.stack([simulate(G1 if k % 2 else np.array([0.9]), 700, 0.04, 0.2, 1.0, seed=20 + k)[0] for k in range(5)])
    many = deconvolve_traces(Y.astype(np.float32), p=1, block_rows=2)
    assert many.C.shape == Y.shape and many.C.dtype == np.float32 and many.g.shape == (5, 1)
    # by default a block holds at most _BLOCK_ELEMENTS values (a long recording: a few traces)
    import somascope.deconvolution.constrained as constrained

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constrained, "_BLOCK_ELEMENTS", 2 * Y.shape[1])
        np.testing.assert_array_equal(deconvolve_traces(Y.astype(np.float32), p=1).C, many.C)
    for k in (0, 3):
        one = deconvolve(Y[k].astype(np.float32))
        np.testing.assert_allclose(many.C[k], one.c, atol=1e-4 * np.abs(one.c).max())
        assert many.b[k] == pytest.approx(one.b, rel=1e-6)
        assert many.sn[k] == pytest.approx(one.sn, rel=1e-6)


def test_many_traces_with_given_parameters_and_engine():
    from somascope.parallel import Engine

    Y = np.stack([simulate(G2, 600, 0.04, 0.2, 0.0, seed=30 + k)[0] for k in range(3)])
    with Engine("serial") as engine:
        res = deconvolve_traces(Y, g=G2, sn=[0.2, 0.2, 0.2], b=0.0, engine=engine, block_rows=2)
    threads = deconvolve_traces(Y, g=G2, sn=0.2, b=0.0)
    np.testing.assert_array_equal(res.C, threads.C)
    np.testing.assert_allclose(res.g, np.tile(G2, (3, 1)))
    for k in range(3):
        rss = np.sum((Y[k] - res.C[k].astype(np.float64)) ** 2)
        assert rss == pytest.approx(0.04 * Y.shape[1], rel=1e-3)


def test_parameter_group_object_or_mapping():
    y, _, _ = simulate(G2, 1500, 0.03, 0.2, 1.0, seed=15)
    group = SimpleNamespace(p=2, s_min=None, bas_nonneg=True, noise_range=(0.25, 0.5),
                            noise_method="median", lags=8, fudge_factor=0.98, optimize_g=0,
                            method_deconvolution="oasis")
    from_group = deconvolve(y, params=SimpleNamespace(deconvolution=group))
    from_kwargs = deconvolve(y, p=2, noise_method="median", lags=8, fudge_factor=0.98)
    np.testing.assert_array_equal(from_group.c, from_kwargs.c)
    assert from_group.g.shape == (2,)
    assert deconvolve(y, params={"p": 2}, p=1).g.shape == (1,)
    with pytest.raises(ValueError, match="did you mean 'fudge_factor'"):
        deconvolve(y, params={"fudge_facter": 0.9})
    with pytest.raises(ValueError, match="method_deconvolution"):
        deconvolve(y, params={"method_deconvolution": "cvxpy"})


def test_inputs_are_not_modified():
    y, _, _ = simulate(G1, 500, 0.03, 0.2, 1.0, seed=16)
    Y = np.stack([y, y[::-1]])
    y0, Y0 = y.copy(), Y.copy()
    deconvolve(y)
    oasis_ar1(y, 0.9, 0.1)
    deconvolve_traces(Y)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(Y, Y0)


def test_clear_errors_for_bad_input():
    y = np.ones(100)
    y[40] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        deconvolve(y)
    with pytest.raises(ValueError, match="NaN"):
        deconvolve_traces(np.stack([y, y]))
    with pytest.raises(ValueError, match="frames"):
        deconvolve(np.ones(8))
    with pytest.raises(ValueError, match="frames"):
        estimate_noise(np.ones(5))
    with pytest.raises(ValueError, match="not a stable"):
        oasis_ar1(np.ones(50), 1.02)
    with pytest.raises(ValueError, match="not a stable"):
        deconvolve(np.ones(50), g=[1.9, 0.2])
    with pytest.raises(ValueError, match="noise_method"):
        estimate_noise(np.ones(50), method="max")
    with pytest.raises(ValueError, match="noise_range"):
        estimate_noise(np.ones(50), noise_range=(0.4, 0.7))
    with pytest.raises(ValueError, match="AR order"):
        deconvolve(np.random.default_rng(0).standard_normal(50), p=3)
    with pytest.raises(ValueError, match="one trace"):
        deconvolve(np.ones((2, 50)))
    with pytest.raises(ValueError, match="does not match"):
        deconvolve(np.ones(50), p=2, g=[0.9])
    with pytest.raises(ValueError, match="lam"):
        oasis_ar1(np.ones(50), 0.9, lam=-1)
