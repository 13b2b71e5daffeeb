"""Input checks shared by the deconvolution functions (clear errors, raised early)."""

from __future__ import annotations

import numpy as np

#: Fewest frames a trace may have — the whole pipeline's one minimum-frames rule (re-exported as
#: ``somascope.cnmf.fit.MIN_FRAMES``): the noise estimate needs a few high-frequency bins and
#: the AR estimate needs more frames than lags.
MIN_FRAMES = 16


def too_few_frames(n_frames: int, what: str = "the movie") -> str:
    """The pipeline's one message for a recording shorter than :data:`MIN_FRAMES`."""
    return (f"{what} has {n_frames} frames; the pipeline needs at least {MIN_FRAMES} frames to estimate noise "
            "levels and time constants. Fix: pass a longer recording (or several files, concatenated in time).")


def as_trace(y: object, name: str = "y", min_frames: int = MIN_FRAMES) -> np.ndarray:
    """``y`` as a finite float64 1-D array of at least ``min_frames`` frames (a copy if needed).

    Raises ``ValueError`` naming the problem and the fix.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be one trace of shape (T,), got shape {arr.shape}; "
            "use deconvolve_traces for a K×T array of traces."
        )
    return _finite_float64(arr, name, min_frames)


def as_traces(Y: object, name: str = "Y", min_frames: int = MIN_FRAMES) -> np.ndarray:
    """``Y`` as a finite float64 array ``(T,)`` or ``(K, T)`` (time on the last axis)."""
    arr = np.asarray(Y)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be a trace (T,) or traces (K, T) with time on the last axis, "
            f"got shape {arr.shape}."
        )
    return _finite_float64(arr, name, min_frames)


def _finite_float64(arr: np.ndarray, name: str, min_frames: int) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    T = arr.shape[-1]
    if T < min_frames:
        raise ValueError(
            f"{name} has {T} frames; at least {min_frames} are needed to estimate noise "
            "and time constants. Pass a longer trace."
        )
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        where = f"frame {bad[-1]}" + (f" of trace {bad[0]}" if out.ndim == 2 else "")
        raise ValueError(
            f"{name} contains NaN or infinite values (first at {where}); "
            "interpolate or drop missing frames before deconvolution."
        )
    return out
