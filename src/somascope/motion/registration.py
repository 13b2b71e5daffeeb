"""Rigid registration of frames to a template: FFT cross-correlation with sub-pixel refinement.

The cross-correlation ``c(s) = Σ_p frame(p + s) · template(p)`` (both mean-subtracted) peaks at
the displacement ``s = d`` of the frame relative to the template (``frame(p) ≈ template(p - d)``,
the convention of ``docs/conventions.md``). It is computed from the cross-power spectrum
``F · conj(T)`` (one forward real FFT of the frame; the template's FFT is computed once).

1. Integer peak inside the search window ``|s| ≤ max_shifts``: either by one inverse FFT, or,
   when the window is small, by evaluating the inverse DFT only at the window's points (two
   small matrix products) -- whichever costs fewer operations.
2. Sub-pixel refinement by local DFT upsampling (Guizar-Sicairos, Thurman & Fienup 2008): the
   inverse DFT evaluated on a grid of step ``1/upsample_factor`` over ±0.75 px around the
   integer peak, again by matrix products. Precision is ``1/upsample_factor`` px.

One-photon data: with ``gSig_filt`` the frames and the template are spatially band-passed
(difference of Gaussians, reflecting borders) before the correlation; the shifts are then
applied to the raw frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from scipy import ndimage

#: The 1p band-pass is ``G(FINE_SIGMA_RATIO·σ) - G(BACKGROUND_SIGMA_RATIO·σ)``, ``σ = gSig_filt``.
#: Chosen on simulated one-photon movies (``docs/motion.md``): a wider background Gaussian
#: keeps slowly varying background, a wider fine one removes the detail that localises cells.
FINE_SIGMA_RATIO = 0.5
BACKGROUND_SIGMA_RATIO = 1.5


def high_pass(frames: np.ndarray, gSig_filt: Sequence[float], n_spatial: int | None = None) -> np.ndarray:
    """Spatial band-pass for one-photon registration: ``G(σ/2) * x - G(1.5σ) * x``.

    Keeps structure of the size of a cell (``σ = gSig_filt`` px per spatial axis, typically
    half the neuron radius) and removes the smooth, bright background of one-photon movies that
    would otherwise dominate the correlation. Gaussians with reflecting borders (SciPy's
    ``gaussian_filter`` taps and ``mode="reflect"``, truncated at 4 σ).

    Frames ``(n, H, W)`` (or one ``H × W`` frame) run a compiled kernel (Numba,
    single-threaded: both Gaussians of both separable passes in float64, rounded once; about
    3× faster than SciPy's four 1-D filters, the equal of them to float32 rounding); volumes
    use SciPy's filters.

    Parameters
    ----------
    frames
        A frame ``(*dims)`` or a stack ``(n, *dims)``; not modified.
    gSig_filt
        Gaussian σ per spatial axis, px.
    n_spatial
        Number of trailing spatial axes (default: ``len(gSig_filt)``).

    Returns
    -------
    float32 array of the same shape.
    """
    sig = np.asarray(gSig_filt, dtype=np.float64).reshape(-1)
    n_spatial = len(sig) if n_spatial is None else int(n_spatial)
    if len(sig) != n_spatial:
        raise ValueError(f"gSig_filt={tuple(sig)} must have one σ per spatial axis ({n_spatial}).")
    x = np.asarray(frames, dtype=np.float32)
    if n_spatial == 2 and x.ndim in (2, 3) and (sig > 0).all():
        from somascope.summary import _gaussian_weights, _reflect_index

        stack = np.ascontiguousarray(x.reshape((-1,) + x.shape[-2:]))
        taps = []
        for ratio in (FINE_SIGMA_RATIO, BACKGROUND_SIGMA_RATIO):
            for s in sig:
                taps.append(_gaussian_weights(s * ratio, int(4.0 * s * ratio + 0.5)))
        wy1, wx1, wy2, wx2 = taps
        H, W = stack.shape[1:]
        ry, rx = (len(wy2) - 1) // 2, (len(wx2) - 1) // 2  # the wide Gaussian's radii: the padding
        out = np.empty_like(stack)
        _band_pass_kernel()(stack, wy1, wx1, wy2, wx2, _reflect_index(H, ry), _reflect_index(W, rx), out)
        return out.reshape(x.shape)
    lead = (0.0,) * (x.ndim - n_spatial)
    fine = ndimage.gaussian_filter(x, lead + tuple(sig * FINE_SIGMA_RATIO), mode="reflect")
    coarse = ndimage.gaussian_filter(x, lead + tuple(sig * BACKGROUND_SIGMA_RATIO), mode="reflect")
    return fine - coarse


_KERNEL: list[Any] = []


def _band_pass_kernel() -> Any:
    """The compiled :func:`_band_pass_frames` (Numba, cached on disk; compiled on first use)."""
    if not _KERNEL:
        import numba

        _KERNEL.append(numba.njit(cache=True, nogil=True)(_band_pass_frames))
    return _KERNEL[0]


def _band_pass_frames(frames, wy1, wx1, wy2, wx2, iy, ix, out):  # pragma: no cover - compiled
    """``out[t] = (g1y ⊗ g1x − g2y ⊗ g2x) ⋆ frames[t]`` for float32 ``frames`` ``(T, H, W)``.

    ``w*``: symmetric Gaussian taps (float64, odd lengths; the second pair at least as long as
    the first); ``iy``, ``ix``: reflected source indices of the axes extended by the second
    pair's radii (``somascope.summary._reflect_index``). Per frame, a row pass forms both
    Gaussians along x (pairs of taps ``k`` and ``-k`` together, float64); a column pass
    combines them along y.
    """
    T, H, W = frames.shape
    Ry = (wy2.shape[0] - 1) // 2
    Rx = (wx2.shape[0] - 1) // 2
    ry1 = (wy1.shape[0] - 1) // 2
    rx1 = (wx1.shape[0] - 1) // 2
    pad = np.empty(W + 2 * Rx, np.float64)
    rows1 = np.empty((H, W), np.float64)
    rows2 = np.empty((H, W), np.float64)
    acc = np.empty(W, np.float64)
    for t in range(T):
        frame = frames[t]
        for y in range(H):
            src = frame[y]
            for x in range(W):
                pad[Rx + x] = src[x]
            for i in range(Rx):
                pad[i] = src[ix[i]]
                pad[W + Rx + i] = src[ix[W + Rx + i]]
            mid = pad[Rx:Rx + W]
            g1 = rows1[y]
            g2 = rows2[y]
            a0 = wx1[rx1]
            b0 = wx2[Rx]
            for x in range(W):
                g1[x] = a0 * mid[x]
                g2[x] = b0 * mid[x]
            for k in range(1, Rx + 1):
                left = pad[Rx - k:Rx - k + W]
                right = pad[Rx + k:Rx + k + W]
                wk = wx2[Rx + k]
                if k <= rx1:
                    vk = wx1[rx1 + k]
                    for x in range(W):
                        pair = left[x] + right[x]
                        g1[x] += vk * pair
                        g2[x] += wk * pair
                else:
                    for x in range(W):
                        g2[x] += wk * (left[x] + right[x])
        dst = out[t]
        for y in range(H):
            a0 = wy1[ry1]
            b0 = wy2[Ry]
            r1 = rows1[y]
            r2 = rows2[y]
            for x in range(W):
                acc[x] = a0 * r1[x] - b0 * r2[x]
            for k in range(1, Ry + 1):
                up = iy[y + Ry - k]
                down = iy[y + Ry + k]
                wk = wy2[Ry + k]
                u2 = rows2[up]
                d2 = rows2[down]
                if k <= ry1:
                    vk = wy1[ry1 + k]
                    u1 = rows1[up]
                    d1 = rows1[down]
                    for x in range(W):
                        acc[x] += vk * (u1[x] + d1[x]) - wk * (u2[x] + d2[x])
                else:
                    for x in range(W):
                        acc[x] -= wk * (u2[x] + d2[x])
            o = dst[y]
            for x in range(W):
                o[x] = acc[x]
    return out


@dataclass(frozen=True)
class TemplatePlan:
    """A template prepared for registration (its FFT is computed once).

    The correlation uses only the template's interior: a margin of ``max_shifts + 1`` px along
    each axis is set to zero. Every searched shift then pairs the interior with frame pixels
    that exist, so the frame's edges (which do not wrap around) cannot pull the peak towards
    zero shift.

    Attributes
    ----------
    template : ``(*dims)`` float32, the template as given (raw, not band-passed).
    max_shifts : largest |shift| searched per axis, px.
    conj_fft : ``(*dims[:-1], dims[-1] // 2 + 1)`` complex64, ``conj(rfftn(·))`` of the
        (band-passed, when ``gSig_filt``) template, mean-subtracted inside the interior and zero
        in the margin.
    norm : norm of that masked template.
    gSig_filt : band-pass σ per axis (one-photon mode) or ``None``.
    """

    template: np.ndarray
    max_shifts: tuple[int, ...]
    conj_fft: np.ndarray
    norm: float
    gSig_filt: tuple[float, ...] | None

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.template.shape)

    @property
    def interior(self) -> tuple[slice, ...]:
        """The template region used for the correlation (outside it the template is zero)."""
        return interior(self.dims, self.max_shifts)


def interior(dims: Sequence[int], max_shifts: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the template interior for a search of ``|shift| ≤ max_shifts``: a margin of
    ``max_shifts + 1`` px on each side (:func:`check_max_shifts` guarantees it is not empty)."""
    return tuple(slice(int(m) + 1, int(d) - int(m) - 1) for d, m in zip(dims, max_shifts))


def prepare_template(template: np.ndarray, max_shifts: Sequence[int] | int,
                     gSig_filt: Sequence[float] | None = None, *, what: str = "frame") -> TemplatePlan:
    """Prepare ``template`` (``(H, W)`` or ``(Z, H, W)``) for :func:`register_frames`.

    Parameters
    ----------
    max_shifts
        Largest |shift| to search per axis, px (int or one per axis).
    gSig_filt
        One-photon band-pass σ per axis, px, or ``None``.
    what
        Name of the signal in error messages (``"frame"``, ``"patch"``).
    """
    template = np.asarray(template, dtype=np.float32)
    if template.ndim not in (2, 3):
        raise ValueError(f"template must be a 2-D frame or a 3-D volume, got shape {template.shape}.")
    if not np.all(np.isfinite(template)):
        raise ValueError("template contains NaN or Inf; build it from finite frames (border_mode='nan' output "
                         "cannot be used as a template without filling the NaNs).")
    m = check_max_shifts(template.shape, max_shifts, what)
    sig = None if gSig_filt is None else tuple(float(s) for s in np.broadcast_to(gSig_filt, (template.ndim,)))
    t = high_pass(template, sig) if sig is not None else template
    inner = interior(template.shape, m)
    core = t[inner].astype(np.float64)
    masked = np.zeros(template.shape, dtype=np.float32)
    masked[inner] = core - core.mean()
    spec = scipy.fft.rfftn(masked, axes=range(t.ndim))
    return TemplatePlan(template.copy(), m, np.conj(spec).astype(np.complex64), float(np.linalg.norm(masked)), sig)


def _freqs(n: int, half: bool) -> np.ndarray:
    return (np.arange(n // 2 + 1) if half else np.fft.fftfreq(n, 1.0 / n)).astype(np.float64)


def _dft_region(cp: np.ndarray, dims: tuple[int, ...], start: np.ndarray, step: float,
                size: tuple[int, ...]) -> np.ndarray:
    """Inverse DFT of half-spectra evaluated on a small grid of points.

    ``cp``: ``(n, *half_dims)`` complex (last axis halved, as from ``rfftn``), the spectra of
    real signals of shape ``dims``. Returns ``(n, *size)`` float64 with
    ``out[i, k] = irfftn(cp[i])`` evaluated (by trigonometric interpolation) at
    ``start[i] + k * step``.

    Each axis is contracted with one matrix product for all signals: the grid offsets
    ``k * step`` are shared, and each signal's ``start`` is a phase ramp applied beforehand.
    The last (contiguous, largest) axis goes first, so later products work on small arrays.
    A few large products instead of many small ones keep BLAS efficient whatever its thread
    count.
    """
    n, ndim = cp.shape[0], len(dims)
    ctype = np.complex64 if cp.dtype == np.complex64 else np.complex128
    start = np.asarray(start, dtype=np.float64)
    x = cp
    for a in reversed(range(ndim)):
        last = a == ndim - 1
        f = _freqs(dims[a], half=last)
        kern = np.exp((2j * np.pi * step / dims[a]) * np.arange(size[a])[:, None] * f[None, :])  # (L, N_a)
        if last:  # the missing half of the spectrum is the conjugate: weight 2, except DC and Nyquist
            w = np.full(f.size, 2.0)
            w[0] = 1.0
            if dims[a] % 2 == 0:
                w[-1] = 1.0
            kern = kern * w
        shape = [1] * x.ndim
        if np.all(start[:, a] == start[0, a]):
            kern = kern * np.exp((2j * np.pi / dims[a]) * start[0, a] * f)[None, :]
        else:
            shape[0], shape[a + 1] = n, f.size
            ramp = np.exp((2j * np.pi / dims[a]) * start[:, a, None] * f[None, :]).astype(ctype)
            x = x * ramp.reshape(shape)
        kern = kern.astype(ctype)
        if last:
            x = (x.reshape(-1, f.size) @ kern.T).reshape(*x.shape[:-1], size[a])
        else:
            moved = np.moveaxis(x, a + 1, 0)  # (N_a, n, ...)
            y = kern @ moved.reshape(f.size, -1)
            x = np.moveaxis(y.reshape(size[a], *moved.shape[1:]), 0, a + 1)
    return np.real(x).astype(np.float64) / float(np.prod(dims))


def _use_matrix_dft(dims: tuple[int, ...], window: tuple[int, ...]) -> bool:
    """Whether evaluating the window by matrix DFT is cheaper than a full inverse FFT.

    Operation counts, with the FFT's counted 3× as costly (it is bound by memory traffic, and a
    few large matrix products run near peak speed); calibrated on 2-D frames from 64² to 512²,
    batches of 72² patches and 10×128² volumes (``docs/motion.md``).
    """
    total = float(np.prod(dims))
    fft_cost = 3.0 * 2.5 * total * math.log2(max(total, 2.0))
    half = list(dims)
    half[-1] = dims[-1] // 2 + 1
    cost, rest = 0.0, float(np.prod(half))
    for a, L in enumerate(window):
        cost += 8.0 * L * rest  # complex multiply-add = 8 real flops
        rest = rest / half[a] * L
    return cost < fft_cost


def peak_shifts(cp: np.ndarray, dims: tuple[int, ...], lo: Sequence[int], hi: Sequence[int],
                upsample_factor: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak of cross-correlations given as half-spectra, inside a search window.

    Parameters
    ----------
    cp
        ``(n, *half_dims)`` cross-power spectra ``F · conj(T)`` of signals of shape ``dims``.
    lo, hi
        Inclusive integer bounds of the search window per axis (``-max_shifts``,
        ``max_shifts``); ``hi - lo + 1`` must not exceed ``dims``.
    upsample_factor
        Sub-pixel precision ``1/upsample_factor`` px (1: integer shifts).

    Returns
    -------
    shifts : ``(n, ndim)`` float64, px, clipped to ``[lo, hi]``.
    peak : ``(n,)`` float64, the cross-correlation ``Σ frame(p + s) template(p)`` at the shift.
    """
    n, ndim = cp.shape[0], len(dims)
    lo_a = np.asarray(lo, dtype=np.int64)
    hi_a = np.asarray(hi, dtype=np.int64)
    window = tuple(int(h - l_ + 1) for l_, h in zip(lo_a, hi_a))
    if any(w < 1 or w > d for w, d in zip(window, dims)):
        bounds = list(zip(lo_a.tolist(), hi_a.tolist()))
        raise ValueError(f"search window {bounds} does not fit signals of shape {dims}.")
    if _use_matrix_dft(dims, window):
        region = _dft_region(cp, dims, np.broadcast_to(lo_a.astype(np.float64), (n, ndim)), 1.0, window)
    else:
        corr = scipy.fft.irfftn(cp, s=dims, axes=range(1, ndim + 1), workers=workers)
        idx = [np.arange(l_, h + 1) % d for l_, h, d in zip(lo_a, hi_a, dims)]
        region = corr[np.ix_(np.arange(n), *idx)].astype(np.float64)
    flat = region.reshape(n, -1)
    best = np.argmax(flat, axis=1)
    shifts = np.stack(np.unravel_index(best, window), axis=1).astype(np.float64) + lo_a
    peak = flat[np.arange(n), best]
    if upsample_factor > 1:
        u = float(upsample_factor)
        size = int(math.ceil(1.5 * u))
        center = size // 2
        up = _dft_region(cp, dims, shifts - center / u, 1.0 / u, (size,) * ndim)
        flat = up.reshape(n, -1)
        best = np.argmax(flat, axis=1)
        offs = np.stack(np.unravel_index(best, (size,) * ndim), axis=1).astype(np.float64)
        shifts = shifts + (offs - center) / u
        peak = flat[np.arange(n), best]
        shifts = np.clip(shifts, lo_a, hi_a)
    return shifts, peak


def register_frames(frames: np.ndarray, plan: TemplatePlan, upsample_factor: int = 10, *,
                    workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rigid displacements of a stack of frames relative to a prepared template.

    Parameters
    ----------
    frames
        ``(n, *dims)``, any real dtype; not modified.
    plan
        From :func:`prepare_template` (carries ``max_shifts`` and the 1p band-pass setting).
    upsample_factor
        Sub-pixel precision ``1/upsample_factor`` px.
    workers
        Threads for the FFTs.

    Returns
    -------
    shifts : ``(n, ndim)`` float64 displacements, px (``frame(p) ≈ template(p - shift)``).
    corr : ``(n,)`` float64 normalised cross-correlation at the peak (about 1 when the frame is
        the template shifted; the frame's energy in the template interior is approximated from
        its whole spectrum; computed on the band-passed frames in 1p mode).
    """
    dims = plan.dims
    ndim = len(dims)
    frames = np.asarray(frames)
    if frames.ndim != ndim + 1 or frames.shape[1:] != dims:
        raise ValueError(f"frames of shape {frames.shape} do not match the template {dims}; "
                         "pass a stack (n, *template.shape).")
    x = high_pass(frames, plan.gSig_filt, ndim) if plan.gSig_filt is not None else np.asarray(frames, np.float32)
    return register_filtered(x, plan, upsample_factor, workers)


def register_filtered(x: np.ndarray, plan: TemplatePlan, upsample_factor: int = 10, workers: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`register_frames` for frames already band-passed like the plan's template
    (``x``: ``(n, *dims)`` float32)."""
    dims = plan.dims
    ndim = len(dims)
    m = np.asarray(plan.max_shifts, dtype=np.int64)
    axes = tuple(range(1, ndim + 1))
    spec = scipy.fft.rfftn(x, axes=axes, workers=workers)
    norms = _interior_norms(spec, dims, plan.interior)
    spec *= plan.conj_fft
    shifts, peak = peak_shifts(spec, dims, -m, m, int(upsample_factor), workers)
    denom = norms * plan.norm
    corr = np.divide(peak, denom, out=np.zeros_like(peak), where=denom > 0)
    return shifts, corr


def _interior_norms(spec: np.ndarray, dims: tuple[int, ...], region: tuple[slice, ...]) -> np.ndarray:
    """Approximate ``‖x_i - mean(x_i)‖`` over ``region`` from the half-spectra ``spec`` of the
    signals: the whole signal's centred norm (Parseval, DC left out) scaled by the square root
    of the region's share of the pixels. Used only to normalise the reported correlation."""
    power = spec.real**2 + spec.imag**2
    weights = np.full(spec.shape[-1], 2.0)
    weights[0] = 1.0
    if dims[-1] % 2 == 0:
        weights[-1] = 1.0
    total = np.tensordot(power.reshape(len(spec), -1, spec.shape[-1]).sum(axis=1, dtype=np.float64), weights, axes=1)
    total -= power[(slice(None),) + (0,) * len(dims)]  # the mean (DC) term
    n_full = float(np.prod(dims))
    n_region = float(np.prod([len(range(*s.indices(d))) for s, d in zip(region, dims)]))
    return np.sqrt(np.maximum(total, 0.0) / n_full * (n_region / n_full))


def register_frame(frame: np.ndarray, template: np.ndarray | TemplatePlan,
                   max_shifts: Sequence[int] | int | None = None, upsample_factor: int = 10, *, gSig_filt: Sequence[float] | None = None
                   ) -> tuple[np.ndarray, float]:
    """Rigid displacement of one frame relative to a template (for frame-by-frame use).

    Parameters
    ----------
    frame
        ``(H, W)`` or ``(Z, H, W)``.
    template
        Same shape, or a :class:`TemplatePlan` from :func:`prepare_template` (reuse it when
        registering many frames to the same template).
    max_shifts
        Largest |displacement| per axis, px (ignored when ``template`` is a plan, which
        carries its own).
    upsample_factor
        Sub-pixel precision ``1/upsample_factor`` px.
    gSig_filt
        One-photon band-pass σ (ignored when ``template`` is a plan).

    Returns
    -------
    shift : ``(ndim,)`` float64 ``(dy, dx)`` / ``(dz, dy, dx)``: ``frame(p) ≈ template(p - shift)``;
        correct the frame with :func:`~somascope.motion.shift_frame`.
    corr : normalised cross-correlation at the peak.
    """
    if isinstance(template, TemplatePlan):
        plan = template
    elif max_shifts is None:
        raise ValueError("register_frame needs max_shifts (px per axis) when given a template array.")
    else:
        plan = prepare_template(template, max_shifts, gSig_filt)
    frame = np.asarray(frame)
    shifts, corr = register_frames(frame[None], plan, upsample_factor)
    return shifts[0], float(corr[0])


def check_max_shifts(dims: Sequence[int], max_shifts: Sequence[int] | int, what: str = "frame") -> tuple[int, ...]:
    """``max_shifts`` as one int per axis; a clear error when it cannot be searched in signals of
    shape ``dims`` (the template interior, ``dims - 2·(max_shifts + 1)``, must not be empty)."""
    dims = tuple(int(d) for d in dims)
    try:
        m = np.broadcast_to(np.asarray(max_shifts), (len(dims),))
    except ValueError:
        raise ValueError(f"max_shifts={max_shifts!r} must be one int or one per spatial axis of a {what} "
                         f"of shape {dims}.") from None
    if not np.all(np.isfinite(m.astype(float))) or np.any(m < 0) or np.any(m != np.round(m)):
        raise ValueError(f"max_shifts={max_shifts!r} must be whole numbers of pixels ≥ 0.")
    m = tuple(int(v) for v in m)
    bad = [a for a in range(len(dims)) if 2 * (m[a] + 1) >= dims[a]]
    if bad:
        limit = tuple((d - 3) // 2 for d in dims)
        raise ValueError(
            f"max_shifts={m} px is too large for a {what} of shape {dims}: a shift must leave part of the {what} "
            f"overlapping the template (at most {limit} px here). Fix: lower max_shifts"
            + (" or max_deviation_rigid, or use larger patches (strides + overlaps)." if what == "patch" else "."))
    return m
