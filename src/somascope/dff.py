"""ΔF/F of extracted components (Giovannucci et al., eLife 2019, "Computing ΔF/F").

With the data modelled as ``Y ≈ A·C + b·f`` (footprints ``A``: pixels × K, traces ``C``:
K × T, background ``b``: pixels × nb, ``f``: nb × T), the fluorescence of component k in
the units of ``C`` is

    F_k(t) = C_k(t) + R_k(t)                                (raw; R = YrA, the residual)
    F_k(t) = C_k(t)                                         (denoised)

and the background under its footprint, in the same units, is the least-squares projection
of ``b·f`` onto ``a_k``:

    B_k(t) = (a_kᵀ b / ‖a_k‖²) · f(t).

With ``P_q[x](t)`` a percentile of ``x`` (over the whole trace, or a running percentile over
``frames_window`` frames), the baseline is ``F0_k = P_q[F_k] + P_q[B_k]`` and

    ΔF/F_k(t) = (F_k(t) − P_q[F_k](t)) / (P_q[F_k](t) + P_q[B_k](t)).

The percentile ``q`` is either fixed (``quantile_min``) or, by default, chosen per component
as the percentile at which the trace's density (a Gaussian kernel density estimate) peaks:
activity only adds positive transients, so the mode of the distribution is the resting
level. ``detrend_only`` returns ``F − P_q[F]`` (for one-photon data, where the background
does not give a meaningful F0).

Everything is computed in blocks of components: memory is O(block × T), never pixels × T.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.ndimage import gaussian_filter1d, percentile_filter

#: Trace values (components × frames) processed at a time by :func:`detrend_df_f` (16 MiB of
#: float64 per working array).
CHUNK_ELEMENTS = 2 * 2**20
_KDE_MIN_BINS = 64
_KDE_MAX_BINS = 1 << 14


def detrend_df_f(
    A: sp.spmatrix | np.ndarray,
    b: np.ndarray | None,
    C: np.ndarray,
    f: np.ndarray | None,
    YrA: np.ndarray | None = None,
    quantile_min: float = 8.0,
    frames_window: int | None = None,
    use_fast: bool = True,
    flag_auto: bool = True,
    use_residuals: bool = True,
    detrend_only: bool = False,
    stride: int | None = None,
    chunk_components: int | None = None,
) -> np.ndarray:
    """ΔF/F of every component, background under its footprint included in F0.

    Parameters
    ----------
    A
        Footprints, ``pixels × K`` (``scipy.sparse``, CSC preferred, or dense).
    b, f
        Background footprints ``pixels × nb`` (or ``(pixels,)``) and traces ``nb × T`` (or
        ``(T,)``). ``None`` for either means no background: the result is then only detrended
        (with a warning), as a baseline from the traces alone is not a fluorescence level.
    C
        Component traces, ``K × T``.
    YrA
        Residual traces ``K × T`` (``Estimates.YrA``), added to ``C`` when ``use_residuals``.
    quantile_min
        Percentile (0–100) of the baseline when ``flag_auto`` is False.
    frames_window
        Running-percentile window in frames; ``None`` (or ``>= T``): one baseline per trace.
    use_fast
        Running percentile evaluated every ``stride`` frames and linearly interpolated
        (default). False: exact running percentile at every frame (slower).
    flag_auto
        Choose the percentile per component from the mode of its density (see module doc).
    use_residuals
        Raw ΔF/F from ``C + YrA`` (True) or denoised ΔF/F from ``C`` alone (False).
    detrend_only
        Return ``F − baseline`` without dividing by F0.
    stride
        Frames between percentile evaluations with ``use_fast`` (default ``frames_window // 5``).
    chunk_components
        Components processed together (memory: a few ``chunk × T`` float64 arrays); None:
        as many as make :data:`CHUNK_ELEMENTS` values (16 MiB of float64 per array, however
        long the recording).

    Returns
    -------
    float32 array ``K × T``. Entries whose baseline ``F0 <= 0`` are NaN (with a warning).
    """
    C = _traces_2d(C, "C")
    K, T = C.shape
    A = _footprints(A, K)
    if YrA is not None and use_residuals:
        YrA = _traces_2d(YrA, "YrA")
        if YrA.shape != C.shape:
            raise ValueError(f"YrA has shape {YrA.shape} but C has {C.shape}; they must match.")
    else:
        YrA = None
    coef = None
    if b is None or f is None:
        if not detrend_only:
            warnings.warn(
                "no background (b, f) given: returning detrended traces (F − baseline), "
                "not ΔF/F; pass b and f from the CNMF estimates for ΔF/F.",
                stacklevel=2,
            )
        detrend_only = True
    else:
        b_arr = np.asarray(b, dtype=np.float64)
        f_arr = np.asarray(f, dtype=np.float64)
        if b_arr.ndim == 1:
            b_arr = b_arr[:, None]
        if f_arr.ndim == 1:
            f_arr = f_arr[None, :]
        if b_arr.shape[0] != A.shape[0]:
            raise ValueError(
                f"b has {b_arr.shape[0]} pixels but A has {A.shape[0]}; both must be pixels × …"
            )
        if f_arr.shape != (b_arr.shape[1], T):
            raise ValueError(
                f"f has shape {f_arr.shape}; expected (nb, T) = ({b_arr.shape[1]}, {T}) to match b and C."
            )
        if not (np.isfinite(b_arr).all() and np.isfinite(f_arr).all()):
            raise ValueError("b or f contains NaN or infinite values; fix the background estimate.")
        norms2 = np.asarray(A.multiply(A).sum(axis=0)).ravel()
        empty = np.flatnonzero(norms2 <= 0)
        if empty.size:
            raise ValueError(
                f"footprint(s) {empty[:10].tolist()} are all zero, so their background share is "
                "undefined; remove empty components before computing ΔF/F."
            )
        coef = np.asarray(A.T @ b_arr) / norms2[:, None]  # K × nb
    chunk = (max(1, CHUNK_ELEMENTS // T) if chunk_components is None
             else _positive_int(chunk_components, "chunk_components"))
    out = np.empty((K, T), dtype=np.float32)
    for k0 in range(0, K, chunk):
        rows = slice(k0, min(K, k0 + chunk))
        F = _finite_rows(C, rows, k0, "C")
        if YrA is not None:
            F += _finite_rows(YrA, rows, k0, "YrA")
        B = None if coef is None else coef[rows] @ f_arr
        out[rows] = df_over_f(
            F, B, quantile_min=quantile_min, frames_window=frames_window, flag_auto=flag_auto,
            use_fast=use_fast, stride=stride, detrend_only=detrend_only, _warn_level=3,
        )
    return out


def df_over_f(
    F: np.ndarray,
    B: np.ndarray | None = None,
    quantile_min: float = 8.0,
    frames_window: int | None = None,
    flag_auto: bool = True,
    use_fast: bool = True,
    stride: int | None = None,
    detrend_only: bool = False,
    _warn_level: int = 2,
) -> np.ndarray:
    """ΔF/F of traces ``F`` (``K × T`` or ``(T,)``) with an optional background ``B`` (same shape).

    ``(F − P_q[F]) / (P_q[F] + P_q[B])`` with ``P_q`` the (running) percentile; without ``B``
    the baseline of ``F`` alone is F0 (raw fluorescence traces that carry their own
    baseline). Arguments as in :func:`detrend_df_f`. Returns float32 of ``F``'s shape.
    """
    F2 = _finite_2d(F, "F", allow_1d=True)
    one = np.ndim(F) == 1
    B2 = None
    if B is not None:
        B2 = _finite_2d(B, "B", allow_1d=True)
        if B2.shape != F2.shape:
            raise ValueError(f"B has shape {np.shape(B)} but F has {np.shape(F)}; they must match.")
    T = F2.shape[1]
    window = _check_window(frames_window, T)
    if flag_auto:
        q = mode_percentile(F2, frames_window=window)
    else:
        qv = float(quantile_min)
        if not 0.0 <= qv <= 100.0:
            raise ValueError(f"quantile_min={quantile_min} must be a percentile in [0, 100].")
        q = np.full(F2.shape[0], qv)
    Fd = running_percentile(F2, q, window, use_fast=use_fast, stride=stride)
    if detrend_only:
        out = F2 - Fd
    else:
        F0 = Fd if B2 is None else Fd + running_percentile(B2, q, window, use_fast=use_fast, stride=stride)
        bad = F0 <= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (F2 - Fd) / F0
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            warnings.warn(
                f"baseline F0 <= 0 in trace(s) {rows[:10].tolist()}"
                f"{' …' if rows.size > 10 else ''}: ΔF/F set to NaN there. Traces without a "
                "positive resting level need detrend_only=True (or a background).",
                stacklevel=_warn_level,
            )
            out[bad] = np.nan
    out = out.astype(np.float32)
    return out[0] if one else out


def running_percentile(
    X: np.ndarray,
    q: np.ndarray | float,
    frames_window: int | None,
    use_fast: bool = True,
    stride: int | None = None,
) -> np.ndarray:
    """Per-row percentile ``q`` (0–100, scalar or one per row) of ``X`` (``K × T``) over time.

    ``frames_window=None`` (or ``>= T``): one value per row, broadcast over time. Otherwise the
    percentile over a window of ``frames_window`` frames centred on each frame (windows are
    shifted inwards at the ends so they stay full): exactly at every frame
    (``use_fast=False``), or every ``stride`` frames with linear interpolation between.
    Returns float64 ``K × T``.
    """
    X = np.asarray(X, dtype=np.float64)
    K, T = X.shape
    qs = np.broadcast_to(np.asarray(q, dtype=np.float64), (K,))
    window = _check_window(frames_window, T)
    if window is None:
        return np.repeat(_row_percentiles(X, qs)[:, None], T, axis=1)
    if not use_fast:
        out = np.empty_like(X)
        for k in range(K):
            out[k] = percentile_filter(X[k], float(qs[k]), size=window, mode="reflect")
        return out
    step = max(1, window // 5) if stride is None else _positive_int(stride, "stride")
    centres = np.arange(0, T, step)
    if centres[-1] != T - 1:
        centres = np.append(centres, T - 1)
    starts = np.clip(centres - window // 2, 0, T - window)
    values = np.empty((K, centres.size))
    for j, s0 in enumerate(starts):
        values[:, j] = _row_percentiles(X[:, s0 : s0 + window], qs)
    t = np.arange(T)
    right = np.clip(np.searchsorted(centres, t, side="right"), 1, centres.size - 1)
    left = right - 1
    span = (centres[right] - centres[left]).astype(np.float64)
    frac = np.where(span > 0, (t - centres[left]) / np.where(span > 0, span, 1.0), 0.0)
    return values[:, left] * (1.0 - frac) + values[:, right] * frac


def mode_percentile(F: np.ndarray, frames_window: int | None = None) -> np.ndarray:
    """Percentile (0–100) at the mode of each row's density; ``F`` is ``K × T`` or ``(T,)``.

    The density is a Gaussian kernel estimate (Silverman's bandwidth with a robust spread,
    evaluated on a fine histogram); the result is the fraction of frames at or below the
    mode. With ``frames_window`` the value is the median over consecutive windows of that
    length (robust to slow drifts). A constant trace gives 50.
    """
    F2 = _finite_2d(F, "F", allow_1d=True)
    K, T = F2.shape
    window = _check_window(frames_window, T)
    out = np.empty(K)
    for k in range(K):
        row = F2[k]
        if window is None or T < 2 * window:
            out[k] = _kde_mode_percentile(row)
        else:
            n = T // window
            out[k] = np.median([_kde_mode_percentile(row[i * window : (i + 1) * window]) for i in range(n)])
    return out[0] if np.ndim(F) == 1 else out


def _kde_mode_percentile(x: np.ndarray) -> float:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return 50.0
    q75, q25 = np.percentile(x, [75.0, 25.0])
    spread = min(float(x.std()), (q75 - q25) / 1.349) if q75 > q25 else float(x.std())
    bandwidth = 0.9 * spread * x.size ** (-0.2)
    if bandwidth <= 0:
        bandwidth = (hi - lo) / 100.0
    pad = 3.0 * bandwidth
    n_bins = int(np.clip(np.ceil((hi - lo + 2 * pad) / (bandwidth / 4.0)), _KDE_MIN_BINS, _KDE_MAX_BINS))
    counts, edges = np.histogram(x, bins=n_bins, range=(lo - pad, hi + pad))
    width = edges[1] - edges[0]
    density = gaussian_filter1d(counts.astype(np.float64), bandwidth / width, mode="constant")
    peak = int(np.argmax(density))
    mode = 0.5 * (edges[peak] + edges[peak + 1])
    return float(100.0 * np.count_nonzero(x <= mode) / x.size)


def _row_percentiles(X: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Percentile ``q[k]`` of row k of ``X`` (linear interpolation, like ``np.percentile``)."""
    n = X.shape[1]
    ordered = np.sort(X, axis=1)
    pos = np.clip(q, 0.0, 100.0) / 100.0 * (n - 1)
    below = np.floor(pos).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    frac = pos - below
    rows = np.arange(X.shape[0])
    return ordered[rows, below] * (1.0 - frac) + ordered[rows, above] * frac


def _traces_2d(x: object, name: str) -> np.ndarray:
    """``x`` as a ``K × T`` array in its own dtype (no copy: checked for finite values a block of
    rows at a time by :func:`_finite_rows`)."""
    return _checked_shape(np.asarray(x), x, name)


def _finite_rows(x: np.ndarray, rows: slice, k0: int, name: str) -> np.ndarray:
    """Rows ``rows`` of ``x`` as a new float64 array; an error names the first non-finite value
    (``k0``: the component index of the first row)."""
    return _checked_finite(np.array(x[rows], dtype=np.float64), name, k0)


def _finite_2d(x: object, name: str, allow_1d: bool = False) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if allow_1d and arr.ndim == 1:
        arr = arr[None, :]
    return _checked_finite(_checked_shape(arr, x, name), name)


def _checked_shape(arr: np.ndarray, x: object, name: str) -> np.ndarray:
    """``arr`` (``x`` as an array), refused unless it is ``K × T`` traces with ``T >= 2``."""
    if arr.ndim != 2:
        raise ValueError(f"{name} must be K × T traces, got shape {np.shape(x)}.")
    if arr.shape[1] < 2:
        raise ValueError(f"{name} has {arr.shape[1]} frames; ΔF/F needs at least 2.")
    return arr


def _checked_finite(arr: np.ndarray, name: str, k0: int = 0) -> np.ndarray:
    """``arr``, refused with the first non-finite value's component (row + ``k0``) and frame."""
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN or infinite values (first at component {k0 + bad[0]}, frame {bad[1]}); "
            "fix or drop those frames first."
        )
    return arr


def _footprints(A: object, K: int) -> sp.csc_matrix:
    mat = sp.csc_matrix(A) if not sp.issparse(A) else A.tocsc()
    if mat.ndim != 2 or mat.shape[1] != K:
        raise ValueError(
            f"A has shape {mat.shape}; expected pixels × K with K = {K} components (the rows of C)."
        )
    if not np.isfinite(mat.data).all():
        raise ValueError("A contains NaN or infinite values.")
    return mat.astype(np.float64)


def _check_window(frames_window: int | None, T: int) -> int | None:
    if frames_window is None:
        return None
    window = int(frames_window)
    if window < 1:
        raise ValueError(f"frames_window={frames_window} must be a positive number of frames (or None).")
    return None if window >= T else window


def _positive_int(x: object, name: str) -> int:
    val = int(x)  # type: ignore[call-overload]
    if val < 1:
        raise ValueError(f"{name}={x} must be a positive integer.")
    return val
