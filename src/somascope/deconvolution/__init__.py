"""Deconvolution of calcium traces: noise and AR estimation, OASIS, noise-constrained solves.

Numba kernels live in ``_kernels`` and are compiled on first use (cached on disk).
"""

from __future__ import annotations

from .ar import ar_to_time_constants, estimate_ar, time_constants_to_ar
from .constrained import Deconvolution, DeconvolvedTraces, deconvolve, deconvolve_traces
from .noise import estimate_noise
from .oasis import oasis_ar1, oasis_ar2

__all__ = [
    "Deconvolution",
    "DeconvolvedTraces",
    "ar_to_time_constants",
    "deconvolve",
    "deconvolve_traces",
    "estimate_ar",
    "estimate_noise",
    "oasis_ar1",
    "oasis_ar2",
    "time_constants_to_ar",
]
