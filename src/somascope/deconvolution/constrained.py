"""Noise-constrained deconvolution of calcium traces (CaImAn's ``constrained_foopsi`` with OASIS).

For a trace ``y = b + c + ε`` with noise level σ the problem is

    minimise Σ_t s_t   subject to  ‖y − b − c‖² <= σ²·T,  s = Gc >= 0,  (b >= 0),

whose Lagrangian is the OASIS problem ``½‖y − b − c‖² + lam·Σ s``: the multiplier ``lam``
is found automatically so that the residual equals the noise (see ``_kernels.solve_trace``),
the baseline ``b`` jointly with it. The noise σ and the AR coefficients ``g`` are estimated
from the trace when not given; ``optimize_g`` refines ``g`` on the largest isolated events.
An optional minimum spike size ``s_min`` then refits ``c`` without the L1 shrinkage, keeping
only spikes of at least ``s_min``.

``deconvolve`` handles one trace (the call the CNMF temporal update makes per component);
``deconvolve_traces`` handles K×T arrays, in parallel over traces with Numba threads or on
an :class:`~somascope.parallel.Engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import MIN_FRAMES, as_trace, as_traces
from .ar import ar_roots, estimate_ar
from .noise import estimate_noise
from .options import DeconvolutionOptions, resolve_options

#: Relative tolerance on the noise constraint ``‖y − b − c‖² = σ²T``.
RSS_TOLERANCE = 1e-4
#: Most outer iterations (one OASIS pass each) when searching lam and b.
MAX_ITER = 30
_G_ITERATIONS = 5
_MIN_EVENT_FRAMES = 10
_BLOCK_ROWS = 256
#: Trace values (traces × frames) in one block of :func:`deconvolve_traces` (32 MiB of float64).
_BLOCK_ELEMENTS = 4 * 2**20


@dataclass(frozen=True)
class Deconvolution:
    """Result of deconvolving one trace (``y ≈ b + c``).

    Attributes
    ----------
    c
        Denoised calcium ``(T,)`` float64 without the baseline, in the units of ``y``. It
        includes the decay of calcium present at the start (``c1·d**t``); do not add it again.
    s
        Spikes ``(T,)`` float64, ``s = Gc`` (0 in the first ``p`` frames).
    b
        Baseline.
    g
        AR coefficients ``(p,)`` used (estimated, given, or refined by ``optimize_g``).
    lam
        Sparsity penalty of the L1 problem (``½‖y − b − c‖² + lam·Σ s``) that was solved.
    sn
        Noise standard deviation used.
    c1
        Calcium at the first frame, ``c[0]``.
    """

    c: np.ndarray
    s: np.ndarray
    b: float
    g: np.ndarray
    lam: float
    sn: float
    c1: float


@dataclass(frozen=True)
class DeconvolvedTraces:
    """Result of deconvolving K traces: ``Y ≈ b[:, None] + C``.

    ``C`` and ``S`` are float32 ``(K, T)``; ``b``, ``lam``, ``sn`` and ``c1`` are float64
    ``(K,)``; ``g`` is float64 ``(K, p)``. Fields mean the same as in :class:`Deconvolution`.
    """

    C: np.ndarray
    S: np.ndarray
    b: np.ndarray
    g: np.ndarray
    lam: np.ndarray
    sn: np.ndarray
    c1: np.ndarray


def deconvolve(
    y: np.ndarray,
    p: int | None = None,
    g: Sequence[float] | None = None,
    sn: float | None = None,
    lam: float | str | None = None,
    s_min: float | str | None = None,
    b: float | str | None = None,
    bas_nonneg: bool | None = None,
    optimize_g: int | None = None,
    noise_range: Sequence[float] | None = None,
    noise_method: str | None = None,
    lags: int | None = None,
    fudge_factor: float | None = None,
    *,
    params: Any = None,
    max_iter: int = MAX_ITER,
    exact: bool = True,
) -> Deconvolution:
    """Infer the calcium and spikes underlying one fluorescence trace.

    Parameters
    ----------
    y
        Fluorescence ``(T,)`` in any units (``T >= 16``; no NaN).
    p
        AR order: 1 (decay only), 2 (rise and decay) or 0 (no dynamics:
        ``c = s = max(y − b, 0)``). Taken from ``g`` when ``g`` is given. Default 1.
    g
        AR coefficients ``(p,)``; estimated with :func:`estimate_ar` when ``None``.
    sn
        Noise standard deviation; estimated with :func:`estimate_noise` when ``None``.
    lam
        ``None`` or ``"auto"``: chosen so that ``‖y − b − c‖² = sn²·T``; a number ``>= 0``:
        this fixed penalty.
    s_min
        Minimum spike size. ``None``: none (plain L1 solution). A positive number: spikes of
        at least this size (units of ``y``). A negative number: ``|s_min|·sn·sqrt(1 − d)``
        (``d``: decay factor per frame). ``0`` or ``"auto"``: the largest threshold that
        keeps ``‖y − b − c‖² <= sn²·T`` (CaImAn's convention for 0).
    b
        ``None`` or ``"estimate"``: estimate the baseline; a number: this fixed baseline.
    bas_nonneg
        Keep an estimated baseline ``>= 0``. Default True.
    optimize_g
        Refine ``g`` on this many of the largest isolated events (0: off, the default).
    noise_range, noise_method, lags, fudge_factor
        Passed to :func:`estimate_noise` / :func:`estimate_ar` (defaults (0.25, 0.5),
        ``"mean"``, 10, 0.98).
    params
        A ``deconvolution`` parameter group (object or mapping, see ``options``);
        keyword arguments that are not ``None`` override it.
    max_iter
        Most OASIS passes in the search for ``lam`` and ``b``.
    exact
        AR(2) only: polish every greedy OASIS pass to the exact optimum (see
        :func:`~somascope.deconvolution.oasis_ar2`); ``False`` is faster and approximate.

    Returns
    -------
    :class:`Deconvolution`
    """
    opts = resolve_options(
        params,
        p=p,
        s_min=s_min,
        bas_nonneg=bas_nonneg,
        optimize_g=optimize_g,
        noise_range=noise_range,
        noise_method=noise_method,
        lags=lags,
        fudge_factor=fudge_factor,
    )
    trace = as_trace(y, "y", min_frames=MIN_FRAMES)
    coeffs, p_used = _coefficients(g, opts, p)
    if sn is None:
        sn_val = float(estimate_noise(trace, opts.noise_range, opts.noise_method))
    else:
        sn_val = _nonneg_scalar(sn, "sn")
    if p_used == 0:
        return _no_dynamics(trace, b, sn_val)
    if coeffs is None:
        coeffs = estimate_ar(trace, p_used, sn_val, opts.lags, opts.fudge_factor)
    ar_roots(coeffs)
    lam_val, auto_lam = _lam_spec(lam)
    b_val, optimize_b = _b_spec(b)
    smin_mode, smin_val = _smin_spec(opts.s_min)
    max_iter = _positive_int(max_iter, "max_iter")

    result = _solve(trace, coeffs, sn_val, lam_val, auto_lam, b_val, optimize_b, opts,
                    smin_mode, smin_val, max_iter, exact)
    if opts.optimize_g > 0:
        for _ in range(_G_ITERATIONS):
            refined, _ = _refine_g(trace, result, opts.optimize_g, optimize_b, opts.bas_nonneg)
            if np.max(np.abs(refined - result.g)) < 1e-4:
                break
            result = _solve(trace, refined, sn_val, lam_val, auto_lam, b_val, optimize_b, opts,
                            smin_mode, smin_val, max_iter, exact)
    return result


def deconvolve_traces(
    Y: np.ndarray,
    p: int | None = None,
    g: np.ndarray | Sequence[float] | None = None,
    sn: float | np.ndarray | None = None,
    lam: float | np.ndarray | str | None = None,
    s_min: float | str | None = None,
    b: float | np.ndarray | str | None = None,
    bas_nonneg: bool | None = None,
    optimize_g: int | None = None,
    noise_range: Sequence[float] | None = None,
    noise_method: str | None = None,
    lags: int | None = None,
    fudge_factor: float | None = None,
    *,
    params: Any = None,
    engine: Any = None,
    max_iter: int = MAX_ITER,
    exact: bool = True,
    block_rows: int | None = None,
) -> DeconvolvedTraces:
    """Deconvolve every row of ``Y`` (K×T), in parallel over traces.

    Arguments are those of :func:`deconvolve`, per trace: ``g`` may be ``(p,)`` (shared)
    or ``(K, p)``; ``sn``, ``lam`` and ``b`` may be scalars or ``(K,)``. Noise levels and AR
    coefficients that are not given are estimated for all traces at once (batched FFTs).
    The traces are solved in blocks of ``block_rows`` traces (default: at most 256 and
    :data:`_BLOCK_ELEMENTS` values), with Numba threads (``engine=None``) or on a
    :class:`~somascope.parallel.Engine`. With ``optimize_g > 0`` each trace goes through
    :func:`deconvolve`.

    Memory: a few float64 blocks of ``block_rows × T`` besides the float32 outputs (``Y`` may
    be float32: it is converted a block at a time).
    """
    opts = resolve_options(
        params,
        p=p,
        s_min=s_min,
        bas_nonneg=bas_nonneg,
        optimize_g=optimize_g,
        noise_range=noise_range,
        noise_method=noise_method,
        lags=lags,
        fudge_factor=fudge_factor,
    )
    arr = np.asarray(Y)
    if arr.ndim != 2:
        raise ValueError(f"Y must be traces of shape (K, T), got shape {arr.shape}.")
    K, T = arr.shape
    block_rows = (min(_BLOCK_ROWS, max(1, _BLOCK_ELEMENTS // max(T, 1))) if block_rows is None
                  else _positive_int(block_rows, "block_rows"))
    for k0 in range(0, K, block_rows):  # bad input fails here, before any work
        as_traces(arr[k0 : k0 + block_rows], "Y", min_frames=MIN_FRAMES)
    max_iter = _positive_int(max_iter, "max_iter")
    G = _per_trace_g(g, opts, p, K)
    p_used = opts.p if G is None else G.shape[1]
    SN = _per_trace(sn, K, "sn")
    LAM, auto_lam = _per_trace_lam(lam, K)
    B0, optimize_b = _per_trace_b(b, K)
    smin_mode, smin_val = _smin_spec(opts.s_min)

    C = np.empty((K, T), dtype=np.float32)
    S = np.empty((K, T), dtype=np.float32)
    out_b = np.zeros(K)
    out_lam = np.zeros(K)
    out_sn = np.zeros(K)
    out_g = np.zeros((K, p_used))
    task = _BlockTask(opts, p_used, auto_lam, optimize_b, smin_mode, smin_val, max_iter, bool(exact))
    starts = range(0, K, block_rows)

    def items() -> Any:  # each block's traces taken when its task is submitted
        for k0 in starts:
            rows = slice(k0, min(K, k0 + block_rows))
            yield (np.asarray(arr[rows]), None if G is None else G[rows], None if SN is None else SN[rows],
                   LAM[rows], B0[rows])

    if engine is None:
        results = enumerate(task(item) for item in items())
    else:
        results = engine.imap(task, items(), desc="deconvolve", unit="block", progress=False,
                              total=len(starts))
    for i, (Cb, Sb, bb, gb, lb, sb) in results:  # each block's outputs stored as it comes
        rows = slice(starts[i], starts[i] + Cb.shape[0])
        C[rows], S[rows], out_b[rows], out_g[rows], out_lam[rows], out_sn[rows] = (
            Cb, Sb, bb, gb, lb, sb,
        )
    return DeconvolvedTraces(C=C, S=S, b=out_b, g=out_g, lam=out_lam, sn=out_sn,
                             c1=C[:, 0].astype(np.float64))


# ------------------------------------------------------------------------------------------
# one block of traces (a picklable callable, so that an Engine can run it)


@dataclass(frozen=True)
class _BlockTask:
    opts: DeconvolutionOptions
    p: int
    auto_lam: bool
    optimize_b: bool
    smin_mode: int
    smin_val: float
    max_iter: int
    exact: bool

    def __call__(self, item: tuple) -> tuple:
        Yb, Gb, SNb, LAMb, B0b = item
        Y64 = as_traces(Yb, "Y", min_frames=MIN_FRAMES)
        if Y64.ndim == 1:
            Y64 = Y64[None, :]
        n, T = Y64.shape
        opts = self.opts
        sn = estimate_noise(Y64, opts.noise_range, opts.noise_method) if SNb is None else SNb
        sn = np.atleast_1d(np.asarray(sn, dtype=np.float64))
        if self.p == 0:
            base = np.zeros(n) if self.optimize_b else B0b
            C = np.maximum(Y64 - base[:, None], 0.0).astype(np.float32)
            return C, C.copy(), base, np.zeros((n, 0)), np.zeros(n), sn
        if Gb is None:
            Gb = estimate_ar(Y64, self.p, sn, opts.lags, opts.fudge_factor)
        Gb = np.atleast_2d(np.asarray(Gb, dtype=np.float64))
        for row in Gb:
            ar_roots(row)
        if opts.optimize_g > 0:
            return self._one_by_one(Y64, Gb, sn, LAMb, B0b)
        from . import _kernels

        G2 = np.zeros((n, 2))
        G2[:, : self.p] = Gb
        C = np.empty((n, T), dtype=np.float32)
        S = np.empty((n, T), dtype=np.float32)
        out_b = np.empty(n)
        out_lam = np.empty(n)
        lam = np.ascontiguousarray(LAMb, dtype=np.float64)
        base = np.ascontiguousarray(B0b, dtype=np.float64)
        _kernels.solve_many(
            Y64, self.p, self.exact, G2, sn, lam, self.auto_lam, base, self.optimize_b,
            opts.bas_nonneg, self.smin_mode, self.smin_val, self.max_iter, RSS_TOLERANCE,
            C, S, out_b, out_lam,
        )
        _clean_spikes(S, C)
        return C, S, out_b, Gb, out_lam, sn

    def _one_by_one(self, Y64, Gb, sn, LAMb, B0b) -> tuple:
        n, T = Y64.shape
        C = np.empty((n, T), dtype=np.float32)
        S = np.empty((n, T), dtype=np.float32)
        out = np.empty((4, n))
        G = np.empty_like(Gb)
        for k in range(n):
            res = deconvolve(
                Y64[k], g=Gb[k], sn=float(sn[k]),
                lam="auto" if self.auto_lam else float(LAMb[k]),
                b="estimate" if self.optimize_b else float(B0b[k]),
                params=dict(self.opts.__dict__), max_iter=self.max_iter, exact=self.exact,
            )
            C[k], S[k], G[k] = res.c, res.s, res.g
            out[:, k] = res.b, res.lam, res.sn, res.c1
        return C, S, out[0], G, out[1], out[2]


# ------------------------------------------------------------------------------------------
# helpers


def _solve(
    trace: np.ndarray,
    g: np.ndarray,
    sn: float,
    lam: float,
    auto_lam: bool,
    b: float,
    optimize_b: bool,
    opts: DeconvolutionOptions,
    smin_mode: int,
    smin_val: float,
    max_iter: int,
    exact: bool,
) -> Deconvolution:
    from . import _kernels

    g = np.asarray(g, dtype=np.float64).ravel()
    p = g.size
    c = np.empty_like(trace)
    s = np.empty_like(trace)
    b_out, lam_out, _ = _kernels.solve_trace(
        trace, p, bool(exact), float(g[0]), float(g[1]) if p == 2 else 0.0, sn, lam, auto_lam, b,
        optimize_b, opts.bas_nonneg, smin_mode, smin_val, max_iter, RSS_TOLERANCE, c, s,
    )
    _clean_spikes(s, c)
    return Deconvolution(c=c, s=s, b=float(b_out), g=g.copy(), lam=float(lam_out), sn=sn,
                         c1=float(c[0]))


def _clean_spikes(s: np.ndarray, c: np.ndarray) -> None:
    """Zero the rounding residue ``|s| < 1e-9·max|c|`` of ``s = Gc`` (in place, per row)."""
    scale = np.abs(c).max(axis=-1, keepdims=True) if c.size else 0.0
    s[np.abs(s) < 1e-9 * scale] = 0.0


def _no_dynamics(trace: np.ndarray, b: float | str | None, sn: float) -> Deconvolution:
    b_val, optimize_b = _b_spec(b)
    base = 0.0 if optimize_b else b_val
    c = np.maximum(trace - base, 0.0)
    return Deconvolution(c=c, s=c.copy(), b=base, g=np.zeros(0), lam=0.0, sn=sn, c1=float(c[0]))


def _coefficients(
    g: Sequence[float] | None, opts: DeconvolutionOptions, p_arg: int | None
) -> tuple[np.ndarray | None, int]:
    if g is None:
        return None, opts.p
    coeffs = np.asarray(g, dtype=np.float64).ravel()
    if p_arg is not None and p_arg != coeffs.size:
        raise ValueError(f"p={p_arg} does not match g with {coeffs.size} coefficient(s); pass one of them.")
    ar_roots(coeffs)
    return coeffs, coeffs.size


def _per_trace_g(g: Any, opts: DeconvolutionOptions, p_arg: int | None, K: int) -> np.ndarray | None:
    if g is None:
        return None
    G = np.asarray(g, dtype=np.float64)
    if G.ndim == 1:
        G = np.broadcast_to(G, (K, G.size))
    if G.ndim != 2 or G.shape[0] != K or G.shape[1] not in (1, 2):
        raise ValueError(f"g must have shape (p,) or (K, p) with K={K} and p in (1, 2), got {np.shape(g)}.")
    if p_arg is not None and p_arg != G.shape[1]:
        raise ValueError(f"p={p_arg} does not match g with {G.shape[1]} coefficient(s); pass one of them.")
    for row in G:
        ar_roots(row)
    return np.ascontiguousarray(G)


def _per_trace(x: Any, K: int, name: str) -> np.ndarray | None:
    if x is None:
        return None
    flat = np.asarray(x, dtype=np.float64).ravel()
    if flat.size not in (1, K):
        raise ValueError(f"{name} must be a scalar or have one value per trace ({K}), got shape {np.shape(x)}.")
    arr = np.broadcast_to(flat, (K,))
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and non-negative.")
    return np.ascontiguousarray(arr)


def _per_trace_lam(lam: Any, K: int) -> tuple[np.ndarray, bool]:
    if lam is None or (isinstance(lam, str) and lam == "auto"):
        return np.zeros(K), True
    if isinstance(lam, str):
        raise ValueError(f"lam={lam!r}: use None or 'auto' (noise-constrained) or a number >= 0.")
    return _per_trace(lam, K, "lam"), False


def _per_trace_b(b: Any, K: int) -> tuple[np.ndarray, bool]:
    if b is None or (isinstance(b, str) and b == "estimate"):
        return np.zeros(K), True
    if isinstance(b, str):
        raise ValueError(f"b={b!r}: use None or 'estimate' (estimate the baseline) or a number.")
    arr = np.asarray(b, dtype=np.float64).ravel()
    if arr.size not in (1, K) or not np.all(np.isfinite(arr)):
        raise ValueError(f"b must be a finite scalar or one value per trace ({K}).")
    return np.ascontiguousarray(np.broadcast_to(arr, (K,))), False


def _lam_spec(lam: Any) -> tuple[float, bool]:
    if lam is None or (isinstance(lam, str) and lam == "auto"):
        return 0.0, True
    if isinstance(lam, str):
        raise ValueError(f"lam={lam!r}: use None or 'auto' (noise-constrained) or a number >= 0.")
    return _nonneg_scalar(lam, "lam"), False


def _b_spec(b: Any) -> tuple[float, bool]:
    if b is None or (isinstance(b, str) and b == "estimate"):
        return 0.0, True
    if isinstance(b, str):
        raise ValueError(f"b={b!r}: use None or 'estimate' (estimate the baseline) or a number.")
    val = float(b)
    if not np.isfinite(val):
        raise ValueError(f"b={b} must be a finite baseline value.")
    return val, False


def _smin_spec(s_min: float | str | None) -> tuple[int, float]:
    """Kernel encoding of ``s_min``: (mode, value) with 0 none, 1 absolute, 2 auto, 3 relative."""
    if s_min is None:
        return 0, 0.0
    if isinstance(s_min, str) or s_min == 0:
        return 2, 0.0
    if s_min > 0:
        return 1, float(s_min)
    return 3, float(-s_min)


def _nonneg_scalar(x: Any, name: str) -> float:
    try:
        val = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {x!r}.") from None
    if not (np.isfinite(val) and val >= 0):
        raise ValueError(f"{name}={x} must be finite and non-negative.")
    return val


def _positive_int(x: Any, name: str) -> int:
    val = int(x)
    if val < 1:
        raise ValueError(f"{name}={x} must be a positive integer.")
    return val


# ------------------------------------------------------------------------------------------
# refining g on large isolated events


def _refine_g(
    trace: np.ndarray, res: Deconvolution, n_events: int, fit_b: bool, b_nonneg: bool
) -> tuple[np.ndarray, float]:
    """AR coefficients (and baseline) that best fit the ``n_events`` largest isolated events.

    Events are the pools between spikes of the current solution that last at least
    ``_MIN_EVENT_FRAMES`` frames, ranked by their summed calcium. With the partition and
    the penalty ``lam`` fixed, each event's calcium is refitted for trial parameters (its
    amplitude by least squares with the L1 shrinkage, the calcium just before it held at
    the current value) and the summed squared residual is minimised over the decay root
    (the rise root of AR(2) is kept: short rises are poorly determined by a few events),
    jointly with the baseline when it is estimated (a wrong baseline would otherwise bend
    the decays). Returns ``(g, b)``.
    """
    from scipy.optimize import minimize

    T = trace.size
    p = res.g.size
    starts = np.flatnonzero(res.s > 0)
    starts = np.unique(np.concatenate([[0], starts]))
    lengths = np.append(starts[1:], T) - starts
    long_enough = lengths >= min(_MIN_EVENT_FRAMES, int(lengths.max()))
    starts, lengths = starts[long_enough], lengths[long_enough]
    if starts.size == 0 or lengths.max() < 3:
        return res.g, res.b
    area = np.array([res.c[t0 : t0 + L].sum() for t0, L in zip(starts, lengths)])
    order = np.argsort(area)[::-1][:n_events]
    events = [(int(starts[i]), int(lengths[i])) for i in order]
    prev = [float(res.c[t0 - 1]) if t0 > 0 else 0.0 for t0, _ in events]
    lam = res.lam
    max_len = max(L for _, L in events)

    d0, r0 = ar_roots(res.g)

    def cost(theta: np.ndarray) -> float:
        d = max(float(theta[0]), r0)
        base = float(theta[-1]) if fit_b else res.b
        g1, g2 = d + r0, -d * r0
        h = np.empty(max_len)
        h[0] = 1.0
        if max_len > 1:
            h[1] = g1
        for k in range(2, max_len):
            h[k] = g1 * h[k - 1] + g2 * h[k - 2]
        h2 = np.zeros(max_len)
        h2[1:] = g2 * h[:-1]
        dpow = d ** np.arange(max_len)
        total = 0.0
        for (t0, L), wprev in zip(events, prev):
            seg = trace[t0 : t0 + L] - base
            q = np.full(L, 1.0 - g1 - g2)
            if t0 + L == T:  # the last frames carry a different penalty weight
                q[-1] = 1.0
                if p == 2 and L >= 2:
                    q[-2] = 1.0 - g1
            target = seg - lam * q
            if t0 == 0:
                basis = dpow[:L]
                fitted = max(0.0, basis @ target / (basis @ basis)) * basis
            else:
                hv, h2v = h[:L], h2[:L]
                amp = (hv @ target - wprev * (hv @ h2v)) / (hv @ hv)
                fitted = amp * hv + wprev * h2v
            total += float(np.sum((seg - fitted) ** 2))
        return total

    x0 = [d0] + ([res.b] if fit_b else [])
    bounds = [(max(1e-3, r0), 0.9999)]
    if fit_b:
        bounds.append((0.0 if b_nonneg else None, None))
    out = minimize(cost, x0=np.array(x0), bounds=bounds, method="L-BFGS-B")
    d = max(float(out.x[0]), r0)
    g = np.array([d]) if p == 1 else np.array([d + r0, -d * r0])
    return g, float(out.x[-1]) if fit_b else res.b
