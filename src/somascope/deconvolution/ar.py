"""Autoregressive (AR) models of the calcium response and their time constants.

The calcium trace follows ``c[t] = g1·c[t-1] + … + gp·c[t-p] + s[t]`` with spikes ``s >= 0``.
For ``p = 1`` the response to a spike decays as ``g**t`` (time constant
``tau_decay = -1 / (fr · ln g)``); for ``p = 2`` it is a difference of exponentials whose
factors per frame are the roots ``d >= r`` of ``z² - g1·z - g2`` (``g1 = d + r``,
``g2 = -d·r``), giving a decay and a rise time constant.

The coefficients are estimated from the autocovariance of the fluorescence ``y = b + c + ε``
(Pnevmatikakis et al., Neuron 2016): for lags ``k >= 1`` the autocovariance of ``y`` equals
that of ``c``, and at lag 0 it exceeds it by the noise variance σ², so the Yule–Walker
equations corrected by σ² over ``lags + p`` lags are solved by least squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ._checks import as_traces
from .noise import estimate_noise

#: A root estimated at or above 1 (a non-stationary trace) is replaced by this value.
UNSTABLE_ROOT_REPLACEMENT = 0.95
_BLOCK_ELEMENTS = 1 << 22


def autocovariance(y: np.ndarray, max_lag: int) -> np.ndarray:
    """Biased autocovariance ``(1/T) Σ_t ỹ[t] ỹ[t+k]`` for ``k = 0 … max_lag`` (ỹ: demeaned).

    ``y`` is ``(T,)`` or ``(K, T)``; the result is ``(max_lag + 1,)`` or ``(K, max_lag + 1)``.
    Computed as direct products (the lags used here are few, so this beats an FFT).
    """
    arr = np.asarray(y, dtype=np.float64)
    one = arr.ndim == 1
    Y = arr[None, :] if one else arr
    K, T = Y.shape
    max_lag = min(int(max_lag), T - 1)
    out = np.empty((K, max_lag + 1))
    rows = max(1, _BLOCK_ELEMENTS // T)
    for k0 in range(0, K, rows):
        block = Y[k0 : k0 + rows]
        centred = block - block.mean(axis=1, keepdims=True)
        for lag in range(max_lag + 1):
            out[k0 : k0 + rows, lag] = np.einsum(
                "kt,kt->k", centred[:, : T - lag], centred[:, lag:]
            )
    out /= T
    return out[0] if one else out


def estimate_ar(
    y: np.ndarray,
    p: int,
    sn: float | np.ndarray | None = None,
    lags: int = 10,
    fudge_factor: float = 0.98,
    noise_range: Sequence[float] = (0.25, 0.5),
    noise_method: str = "mean",
) -> np.ndarray:
    """AR(p) coefficients of each trace from its noise-corrected autocovariance.

    Parameters
    ----------
    y
        One trace ``(T,)`` or traces ``(K, T)``, time on the last axis.
    p
        Order of the AR model, 1 or 2.
    sn
        Noise standard deviation (scalar or ``(K,)``); estimated with
        :func:`~somascope.deconvolution.estimate_noise` when ``None``.
    lags
        Number of autocovariance lags beyond ``p`` used in the least-squares fit.
    fudge_factor
        Every root of the AR polynomial is multiplied by this factor (``<= 1``), which
        shortens the estimated time constants to offset the upward bias of the estimator
        on short or noisy traces. The default 0.98 (with 10 lags, as in ``oasis-deconv``)
        infers spikes better than CaImAn's 0.96 with 5 lags on simulated and Spikefinder
        data (``benchmarks/bench_deconvolution.py``).
    noise_range, noise_method
        Used only to estimate ``sn`` (see ``estimate_noise``).

    Returns
    -------
    float64 array ``(p,)`` for one trace or ``(K, p)``: coefficients ``g`` of a stable model
    whose roots lie in ``[0, 1)``. Negative roots are set to 0, roots at or above 1 to
    ``UNSTABLE_ROOT_REPLACEMENT``, and a complex pair to a double real root of the same
    modulus, before ``fudge_factor`` is applied.
    """
    if p not in (1, 2):
        raise ValueError(f"p={p!r}: AR coefficients can be estimated for p = 1 or 2 only.")
    lags = int(lags)
    if lags < 0:
        raise ValueError(f"lags={lags} must be >= 0 (the default is 10).")
    if not 0.0 < float(fudge_factor) <= 1.0:
        raise ValueError(f"fudge_factor={fudge_factor} must lie in (0, 1]; the default is 0.98.")
    n_lags = lags + p
    arr = as_traces(y, "y", min_frames=max(16, 2 * n_lags + 2))
    one = arr.ndim == 1
    Y = arr[None, :] if one else arr
    K = Y.shape[0]
    if sn is None:
        sn_arr = np.atleast_1d(estimate_noise(Y, noise_range, noise_method))
    else:
        sn_arr = np.broadcast_to(np.asarray(sn, dtype=np.float64).ravel(), (K,))
        if not np.all(np.isfinite(sn_arr)) or np.any(sn_arr < 0):
            raise ValueError("sn must be finite and non-negative.")

    acov = autocovariance(Y, n_lags)  # (K, n_lags + 1)
    rows = np.arange(n_lags)[:, None]
    cols = np.arange(p)[None, :]
    design = acov[:, np.abs(rows - cols)]  # (K, n_lags, p)
    design[:, np.arange(p), np.arange(p)] -= (sn_arr**2)[:, None]
    target = acov[:, 1 : n_lags + 1]  # (K, n_lags)
    normal = np.einsum("kij,kil->kjl", design, design)
    rhs = np.einsum("kij,ki->kj", design, target)
    ridge = 1e-12 * (np.trace(normal, axis1=1, axis2=2) + np.finfo(np.float64).tiny)
    normal[:, np.arange(p), np.arange(p)] += ridge[:, None]
    g = np.linalg.solve(normal, rhs[..., None])[..., 0]
    g = _stabilise(g, float(fudge_factor))
    return g[0] if one else g


def _stabilise(g: np.ndarray, fudge_factor: float) -> np.ndarray:
    """Clip the roots of ``z^p - g1 z^(p-1) - …`` into [0, 1) and scale them by the fudge factor."""
    if g.shape[1] == 1:
        root = g[:, 0]
        root = np.where(root >= 1.0, UNSTABLE_ROOT_REPLACEMENT, np.maximum(root, 0.0))
        return (fudge_factor * root)[:, None]
    d, r = _roots2(g[:, 0], g[:, 1])
    d = np.where(d >= 1.0, UNSTABLE_ROOT_REPLACEMENT, np.maximum(d, 0.0)) * fudge_factor
    r = np.where(r >= 1.0, UNSTABLE_ROOT_REPLACEMENT, np.maximum(r, 0.0)) * fudge_factor
    d, r = np.maximum(d, r), np.minimum(d, r)
    return np.stack([d + r, -d * r], axis=1)


def _roots2(g1: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roots ``(d, r)`` of ``z² - g1 z - g2``; a complex pair becomes a double root of its modulus."""
    disc = g1 * g1 + 4.0 * g2
    sq = np.sqrt(np.maximum(disc, 0.0))
    modulus = np.sqrt(np.maximum(-g2, 0.0))
    d = np.where(disc >= 0, (g1 + sq) / 2.0, modulus)
    r = np.where(disc >= 0, (g1 - sq) / 2.0, modulus)
    return d, r


def ar_roots(g: Sequence[float]) -> tuple[float, float]:
    """Decay and rise factors per frame ``(d, r)`` of a stable AR(1)/AR(2) model.

    ``d`` is the largest root (the decay) and ``r`` the smaller one (0 for AR(1)).
    Raises ``ValueError`` when the model is not a non-negative, non-oscillating, stable
    calcium response (roots real and in ``[0, 1)``).
    """
    coeffs = np.asarray(g, dtype=np.float64).ravel()
    if coeffs.size not in (1, 2) or not np.all(np.isfinite(coeffs)):
        raise ValueError(f"g={list(coeffs)} must hold 1 (AR(1)) or 2 (AR(2)) finite coefficients.")
    if coeffs.size == 1:
        d, r = float(coeffs[0]), 0.0
        disc = 0.0
    else:
        g1, g2 = float(coeffs[0]), float(coeffs[1])
        disc = g1 * g1 + 4.0 * g2
        sq = np.sqrt(max(disc, 0.0))
        d, r = (g1 + sq) / 2.0, (g1 - sq) / 2.0
    if disc < -1e-12 or not (0.0 <= r <= d < 1.0):
        raise ValueError(
            f"g={list(coeffs)} is not a stable calcium model: the roots of the AR polynomial must be "
            "real and lie in [0, 1). Estimate g with estimate_ar (which clips the roots) or build "
            "it from time constants with time_constants_to_ar."
        )
    return d, r


def ar_to_time_constants(g: Sequence[float], fr: float) -> tuple[float, float]:
    """Decay and rise time constants in seconds of an AR(1)/AR(2) model at frame rate ``fr`` (Hz).

    Returns ``(tau_decay, tau_rise)``; ``tau_rise`` is 0 for AR(1) (or a zero root), and a
    zero decay root gives ``tau_decay = 0`` (no memory).
    """
    fr = _check_rate(fr)
    d, r = ar_roots(g)

    def tau(root: float) -> float:
        return 0.0 if root <= 0.0 else float(-1.0 / (fr * np.log(root)))

    return tau(d), tau(r)


def time_constants_to_ar(tau_decay: float, tau_rise: float = 0.0, fr: float = 30.0) -> np.ndarray:
    """AR coefficients for a response with the given time constants (seconds) at ``fr`` Hz.

    ``tau_rise = 0`` gives an AR(1) model ``[g]``; otherwise an AR(2) model ``[g1, g2]`` with
    roots ``exp(-1 / (tau · fr))``.
    """
    fr = _check_rate(fr)
    if not (np.isfinite(tau_decay) and tau_decay > 0):
        raise ValueError(f"tau_decay={tau_decay} must be a positive time in seconds.")
    if not (np.isfinite(tau_rise) and 0 <= tau_rise):
        raise ValueError(f"tau_rise={tau_rise} must be a non-negative time in seconds (0: AR(1)).")
    if tau_rise > tau_decay:
        raise ValueError(
            f"tau_rise={tau_rise} s is longer than tau_decay={tau_decay} s; swap them."
        )
    d = float(np.exp(-1.0 / (tau_decay * fr)))
    if tau_rise == 0:
        return np.array([d])
    r = float(np.exp(-1.0 / (tau_rise * fr)))
    return np.array([d + r, -d * r])


def _check_rate(fr: float) -> float:
    fr = float(fr)
    if not (np.isfinite(fr) and fr > 0):
        raise ValueError(f"fr={fr} must be the frame rate in Hz (a positive number).")
    return fr
