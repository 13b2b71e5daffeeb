"""OASIS for a fixed sparsity penalty: exact L1 non-negative deconvolution of one trace.

``oasis_ar1`` and ``oasis_ar2`` solve

    minimise ½‖y − c‖² + lam·Σ_t s_t   subject to  s_t >= s_min or s_t = 0,

with ``s = Gc`` the spikes of the AR(p) model ``c[t] = Σ g_i c[t-i] + s[t]``. With
``s_min = 0`` this is the convex L1 problem and the AR(1) solution is exact (pool adjacent
violators on the pools between spikes); ``s_min > 0`` gives the greedy hard-threshold
variant with every spike at least ``s_min``. The first ``p`` frames carry the calcium
present when the recording starts: the first pool decays freely from a value ``>= 0`` and
``s`` is reported as 0 there. The baseline is not estimated here (subtract it first, or use
:func:`~somascope.deconvolution.deconvolve`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._checks import as_trace
from .ar import ar_roots


def oasis_ar1(
    y: np.ndarray, g: float, lam: float = 0.0, s_min: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Deconvolve one trace with an AR(1) model ``c[t] = g·c[t-1] + s[t]``.

    Parameters
    ----------
    y
        Fluorescence ``(T,)`` with the baseline removed, any units.
    g
        AR coefficient in ``[0, 1)`` (``exp(-1 / (tau_decay · fr))``).
    lam
        Sparsity penalty ``>= 0`` in units of ``y``.
    s_min
        Smallest allowed non-zero spike ``>= 0`` in units of ``y`` (0: none).

    Returns
    -------
    ``(c, s)``: float64 arrays ``(T,)``, the denoised calcium and the spikes.
    """
    return _oasis(y, [g], lam, s_min)


def oasis_ar2(
    y: np.ndarray,
    g: Sequence[float],
    lam: float = 0.0,
    s_min: float = 0.0,
    exact: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Deconvolve one trace with an AR(2) model ``c[t] = g1·c[t-1] + g2·c[t-2] + s[t]``.

    ``g = (g1, g2)`` must have real roots in ``[0, 1)`` (see ``time_constants_to_ar``);
    the other arguments and the result are as in :func:`oasis_ar1`.

    The AR(2) pool pass of Friedrich et al. (2017) is greedy and can miss the optimum by a
    few percent of the objective. With ``exact=True`` (default, ``s_min = 0``) it only
    warm-starts a block-pivoting solver that returns the exact optimum (the non-negative
    least-squares solution for ``lam = 0``); ``exact=False`` returns the greedy pass alone
    (the same numbers as the ``oasis-deconv`` package). With ``s_min > 0`` the problem is
    not convex and the greedy pass is used.
    """
    coeffs = np.asarray(g, dtype=np.float64).ravel()
    if coeffs.size != 2:
        raise ValueError(f"oasis_ar2 needs g = (g1, g2), got {list(coeffs)}; use oasis_ar1 for AR(1).")
    return _oasis(y, coeffs, lam, s_min, bool(exact))


def _oasis(
    y: np.ndarray, g: Sequence[float], lam: float, s_min: float, exact: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    from . import _kernels

    trace = as_trace(y, "y", min_frames=3)
    ar_roots(g)
    lam = float(lam)
    s_min = float(s_min)
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam={lam} must be a non-negative number (0: no sparsity penalty).")
    if not (np.isfinite(s_min) and s_min >= 0):
        raise ValueError(f"s_min={s_min} must be a non-negative spike size (0: no minimum).")
    coeffs = np.asarray(g, dtype=np.float64).ravel()
    p = coeffs.size
    g1 = float(coeffs[0])
    g2 = float(coeffs[1]) if p == 2 else 0.0
    c = np.empty_like(trace)
    s = np.empty_like(trace)
    _kernels.oasis_fixed(trace, p, exact, g1, g2, lam, s_min, c, s)
    return c, s
