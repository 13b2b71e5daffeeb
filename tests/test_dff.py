"""ΔF/F: background under the footprint in F0, percentile baselines, chunking, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from somascope.dff import detrend_df_f, df_over_f, mode_percentile, running_percentile

T = 600


def footprints(n_pix: int = 40, K: int = 3, seed: int = 0) -> sp.csc_matrix:
    rng = np.random.default_rng(seed)
    A = np.zeros((n_pix, K))
    for k in range(K):
        A[10 * k : 10 * k + 12, k] = rng.uniform(0.2, 1.0, 12)
    return sp.csc_matrix(A)


def sparse_transients(K: int, seed: int) -> np.ndarray:
    """Non-negative traces at 0 with a few exponential transients (resting most of the time)."""
    rng = np.random.default_rng(seed)
    s = (rng.random((K, T)) < 0.01) * rng.uniform(1.0, 3.0, (K, T))
    C = np.zeros((K, T))
    for t in range(T):
        C[:, t] = (0.9 * C[:, t - 1] if t else 0.0) + s[:, t]
    return C


def test_constant_trace_has_zero_dff():
    A = footprints()
    b = np.full((A.shape[0], 1), 2.0)
    f = np.ones((1, T))
    C = np.full((3, T), 1.5)
    for use_residuals, window in [(True, None), (False, None), (True, 100)]:
        out = detrend_df_f(A, b, C, f, YrA=np.zeros_like(C), use_residuals=use_residuals,
                           frames_window=window)
        assert out.dtype == np.float32 and out.shape == (3, T)
        np.testing.assert_allclose(out, 0.0, atol=1e-7)


def test_background_under_the_footprint_sets_f0():
    """F0 = baseline of C + (a_kᵀ b / ‖a_k‖²)·f; with C resting at 0, ΔF/F = C / that share."""
    A = footprints()
    rng = np.random.default_rng(1)
    b = rng.uniform(1.0, 3.0, (A.shape[0], 1))
    f = np.full((1, T), 2.0)
    C = sparse_transients(3, seed=2)
    out = detrend_df_f(A, b, C, f, flag_auto=False, quantile_min=8)
    Ad = A.toarray()
    share = (Ad.T @ b)[:, 0] / (Ad**2).sum(axis=0) * 2.0
    np.testing.assert_allclose(out, C / share[:, None], rtol=1e-5, atol=1e-6)
    # scaling a footprint (and its trace inversely) leaves ΔF/F unchanged
    scale = np.array([2.0, 0.5, 3.0])
    out2 = detrend_df_f(A @ sp.diags(scale), b, C / scale[:, None], f, flag_auto=False)
    np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-6)


def test_raw_and_denoised_variants():
    A = footprints()
    b = np.ones((A.shape[0], 1))
    f = np.ones((1, T))
    C = sparse_transients(3, seed=3)
    R = 0.05 * np.random.default_rng(4).standard_normal(C.shape)
    raw = detrend_df_f(A, b, C, f, YrA=R, flag_auto=False, quantile_min=50)
    den = detrend_df_f(A, b, C, f, YrA=R, use_residuals=False, flag_auto=False, quantile_min=50)
    # the residual changes only the numerator's noise: difference = R / F0 up to the baseline shift
    assert np.abs(raw - den).std() > 0.01
    assert np.corrcoef((raw - den).ravel(), R.ravel())[0, 1] > 0.95


def test_running_percentile_removes_slow_drift():
    A = footprints()
    b = np.ones((A.shape[0], 1))
    f = np.ones((1, T))
    drift = np.linspace(0.0, 2.0, T)
    C = sparse_transients(3, seed=5) + drift
    quiet = sparse_transients(3, seed=5) < 1e-3
    flat = detrend_df_f(A, b, C, f, flag_auto=False, quantile_min=10)  # one baseline per trace
    assert np.abs(flat[quiet]).mean() > 0.2
    for fast in (True, False):
        out = detrend_df_f(A, b, C, f, frames_window=100, use_fast=fast, flag_auto=False,
                           quantile_min=10)
        # a low percentile of a ramp lags it by a fraction of the window: small, not zero
        assert np.abs(out[quiet]).mean() < 0.3 * np.abs(flat[quiet]).mean()


def test_fast_running_percentile_close_to_exact():
    rng = np.random.default_rng(6)
    X = np.cumsum(rng.standard_normal((4, 2000)), axis=1) * 0.05 + rng.standard_normal((4, 2000))
    q = np.array([8.0, 20.0, 50.0, 80.0])
    exact = running_percentile(X, q, 300, use_fast=False)
    fast = running_percentile(X, q, 300, use_fast=True, stride=30)
    assert np.abs(fast - exact)[:, 200:-200].mean() < 0.1
    np.testing.assert_allclose(running_percentile(X, q, None)[:, 0], np.diag(np.percentile(X, q, axis=1)))


def test_automatic_percentile_is_the_resting_level():
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(20000)
    active = np.zeros(20000)
    active[:4000] = rng.uniform(3.0, 8.0, 4000)  # 20 % of frames in transients
    q = mode_percentile(noise + active)
    # the mode is the centre of the resting noise: half of the resting 80 % lies below it
    assert 35.0 < q < 45.0
    assert mode_percentile(np.full(100, 3.0)) == 50.0
    assert mode_percentile(np.stack([noise, noise + active])).shape == (2,)


def test_chunking_gives_identical_results():
    A = footprints(K=3)
    b = np.random.default_rng(8).uniform(1, 2, (A.shape[0], 2))
    f = np.abs(np.random.default_rng(9).standard_normal((2, T))) + 1
    C = sparse_transients(3, seed=10)
    one = detrend_df_f(A, b, C, f, frames_window=150, chunk_components=1)
    allc = detrend_df_f(A, b, C, f, frames_window=150, chunk_components=100)
    np.testing.assert_array_equal(one, allc)


def test_default_chunks_are_bounded_by_values_not_components(monkeypatch):
    """A long recording's traces go through in blocks of a bounded number of values, in their
    own dtype (no whole float64 copy); the result is the same."""
    import somascope.dff as dff

    A = footprints(K=3)
    b = np.random.default_rng(8).uniform(1, 2, (A.shape[0], 2))
    f = np.abs(np.random.default_rng(9).standard_normal((2, T))) + 1
    C = sparse_transients(3, seed=10).astype(np.float32)
    YrA = (0.01 * np.random.default_rng(11).standard_normal(C.shape)).astype(np.float32)
    want = detrend_df_f(A, b, C.astype(np.float64), f, YrA.astype(np.float64), frames_window=150,
                        chunk_components=3)
    monkeypatch.setattr(dff, "CHUNK_ELEMENTS", T + 1)  # one component at a time
    np.testing.assert_array_equal(detrend_df_f(A, b, C, f, YrA, frames_window=150), want)
    bad = YrA.copy()
    bad[2, 7] = np.inf
    with pytest.raises(ValueError, match="YrA contains NaN or infinite values \\(first at component 2, frame 7\\)"):
        detrend_df_f(A, b, C, f, bad)


def test_df_over_f_of_raw_traces_and_detrend_only():
    F = 10.0 + sparse_transients(2, seed=11)
    out = df_over_f(F, flag_auto=False, quantile_min=5)
    np.testing.assert_allclose(out, (F - 10.0) / 10.0, atol=1e-6)
    np.testing.assert_allclose(df_over_f(F, flag_auto=False, quantile_min=5, detrend_only=True), F - 10.0, atol=1e-5)
    assert df_over_f(F[0], flag_auto=False).shape == (T,)


def test_no_background_means_detrend_only_with_warning():
    A = footprints()
    C = 1.0 + sparse_transients(3, seed=12)
    with pytest.warns(UserWarning, match="no background"):
        out = detrend_df_f(A, None, C, None, flag_auto=False, quantile_min=5)
    np.testing.assert_allclose(out, C - 1.0, atol=1e-6)


def test_non_positive_baseline_gives_nan_and_warning():
    F = sparse_transients(2, seed=13) - 1.0
    with pytest.warns(UserWarning, match="F0 <= 0"):
        out = df_over_f(F, flag_auto=False)
    assert np.isnan(out).all()


def test_inputs_not_modified_and_clear_errors():
    A = footprints()
    b = np.ones((A.shape[0], 1))
    f = np.ones((1, T))
    C = sparse_transients(3, seed=14)
    C0 = C.copy()
    detrend_df_f(A, b, C, f, YrA=np.zeros_like(C), frames_window=100)
    np.testing.assert_array_equal(C, C0)
    bad = C.copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detrend_df_f(A, b, bad, f)
    with pytest.raises(ValueError, match="pixels × K"):
        detrend_df_f(A[:, :2], b, C, f)
    with pytest.raises(ValueError, match="f has shape"):
        detrend_df_f(A, b, C, np.ones((1, T - 1)))
    with pytest.raises(ValueError, match="YrA"):
        detrend_df_f(A, b, C, f, YrA=np.zeros((3, T - 1)))
    empty = A.toarray()
    empty[:, 2] = 0
    with pytest.raises(ValueError, match="all zero"):
        detrend_df_f(sp.csc_matrix(empty), b, C, f)
    with pytest.raises(ValueError, match="quantile_min"):
        detrend_df_f(A, b, C, f, flag_auto=False, quantile_min=120)
    with pytest.raises(ValueError, match="frames_window"):
        detrend_df_f(A, b, C, f, frames_window=0)
