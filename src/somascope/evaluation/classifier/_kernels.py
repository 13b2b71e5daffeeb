"""Numba kernels of the shape classifier's forward pass (:mod:`.cnn`): one crop per thread,
feature maps channels-last (``h, w, c``) so the innermost loops run over contiguous output
channels and vectorise."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _conv_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = relu(valid cross-correlation of x (h, w, c) with w (k, k, c, o) + b)``, ``out`` ``(h-k+1, w-k+1, o)``."""
    ho, wo, o = out.shape
    k = w.shape[0]
    c = w.shape[2]
    for y in range(ho):
        for xx in range(wo):
            for oo in range(o):
                out[y, xx, oo] = b[oo]
            for ky in range(k):
                for kx in range(k):
                    for cc in range(c):
                        v = x[y + ky, xx + kx, cc]
                        for oo in range(o):
                            out[y, xx, oo] += v * w[ky, kx, cc, oo]
            for oo in range(o):
                if out[y, xx, oo] < 0.0:
                    out[y, xx, oo] = 0.0


@njit(cache=True, inline="always")
def _pool2(x: np.ndarray, out: np.ndarray) -> None:
    """2 × 2 max-pooling (floor) of ``x`` ``(h, w, c)`` into ``out`` ``(h // 2, w // 2, c)``."""
    h, w, c = out.shape
    for y in range(h):
        for xx in range(w):
            for cc in range(c):
                m = x[2 * y, 2 * xx, cc]
                m = max(m, x[2 * y + 1, 2 * xx, cc])
                m = max(m, x[2 * y, 2 * xx + 1, cc])
                out[y, xx, cc] = max(m, x[2 * y + 1, 2 * xx + 1, cc])


@njit(cache=True, parallel=True)
def logits(X: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, w3: np.ndarray,
           b3: np.ndarray, d1: np.ndarray, db1: np.ndarray, d2: np.ndarray, db2: np.ndarray) -> np.ndarray:
    """Network outputs before the sigmoid for crops ``X`` ``(n, S, S)`` float32 → ``(n,)``.

    Convolution weights ``(k, k, c_in, c_out)``; ``d1`` the hidden dense layer as
    ``(h, w, c, units)`` over the last feature maps; ``d2`` ``(units,)``; ``db2`` ``(1,)``.
    """
    n, S, _ = X.shape
    f1, f2, f3 = w1.shape[3], w2.shape[3], w3.shape[3]
    s1 = S - 2
    s2 = s1 - 2
    p2 = s2 // 2
    s3 = p2 - 2
    p3 = s3 // 2
    units = d1.shape[3]
    out = np.empty(n, np.float32)
    for i in prange(n):
        a1 = np.empty((s1, s1, f1), np.float32)
        _conv_relu(X[i].reshape(S, S, 1), w1, b1, a1)
        a2 = np.empty((s2, s2, f2), np.float32)
        _conv_relu(a1, w2, b2, a2)
        q2 = np.empty((p2, p2, f2), np.float32)
        _pool2(a2, q2)
        a3 = np.empty((s3, s3, f3), np.float32)
        _conv_relu(q2, w3, b3, a3)
        q3 = np.empty((p3, p3, f3), np.float32)
        _pool2(a3, q3)
        h = db1.copy()
        for y in range(p3):
            for xx in range(p3):
                for cc in range(f3):
                    v = q3[y, xx, cc]
                    for u in range(units):
                        h[u] += v * d1[y, xx, cc, u]
        z = db2[0]
        for u in range(units):
            if h[u] > 0.0:
                z += h[u] * d2[u]
        out[i] = z
    return out


@njit(cache=True, inline="always")
def _axis_weight(g: float, p: int, kernel: np.ndarray) -> float:
    """Weight of the pixel at integer position ``p`` in the value at position ``g`` (px) of one
    axis: the pre-filter ``kernel`` (length ``2R + 1``) then linear interpolation."""
    R = kernel.size // 2
    q0 = np.floor(g)
    f = g - q0
    d = int(q0) - p
    w = 0.0
    if -R <= d <= R:
        w += (1.0 - f) * kernel[d + R]
    if -R <= d + 1 <= R:
        w += f * kernel[d + 1 + R]
    return w


@njit(cache=True, parallel=True)
def crops(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, width: int, step: np.ndarray,
          reach: np.ndarray, ky: np.ndarray, kx: np.ndarray, out: np.ndarray) -> None:
    """Neuron-scaled crops of CSC footprints (``indptr``, ``indices``, ``data``; pixels in C
    order of rows of ``width``) into ``out`` ``(K, S, S)``, divided by their maxima.

    Each crop samples the footprint, pre-filtered by ``ky``/``kx`` (per axis), linearly
    interpolated, on an ``S × S`` grid of spacing ``step`` (px per axis) centred on its centre
    of mass; pixels farther than ``reach`` (px per axis) from it are left out (they do not reach
    the grid)."""
    K, S, _ = out.shape
    Ry = ky.size // 2
    Rx = kx.size // 2
    half = (S - 1) / 2.0
    for k in prange(K):
        lo, hi = indptr[k], indptr[k + 1]
        total = 0.0
        cy = 0.0
        cx = 0.0
        for n in range(lo, hi):
            v = data[n]
            if v > 0.0:
                total += v
                cy += v * (indices[n] // width)
                cx += v * (indices[n] % width)
        if total <= 0.0:
            continue
        cy /= total
        cx /= total
        crop = out[k]
        wy = np.empty(S)
        wx = np.empty(S)
        for n in range(lo, hi):
            v = data[n]
            if v <= 0.0:
                continue
            y = indices[n] // width
            x = indices[n] % width
            if abs(y - cy) > reach[0] or abs(x - cx) > reach[1]:
                continue
            # the grid rows / columns this pixel reaches
            i0 = max(0, int(np.ceil((y - Ry - 1 - cy) / step[0] + half)))
            i1 = min(S - 1, int(np.floor((y + Ry + 1 - cy) / step[0] + half)))
            j0 = max(0, int(np.ceil((x - Rx - 1 - cx) / step[1] + half)))
            j1 = min(S - 1, int(np.floor((x + Rx + 1 - cx) / step[1] + half)))
            for i in range(i0, i1 + 1):
                wy[i] = _axis_weight(cy + (i - half) * step[0], y, ky)
            for j in range(j0, j1 + 1):
                wx[j] = _axis_weight(cx + (j - half) * step[1], x, kx)
            for i in range(i0, i1 + 1):
                a = v * wy[i]
                if a != 0.0:
                    for j in range(j0, j1 + 1):
                        crop[i, j] += a * wx[j]
        peak = 0.0
        for i in range(S):
            for j in range(S):
                peak = max(peak, crop[i, j])
        if peak > 0.0:
            for i in range(S):
                for j in range(S):
                    crop[i, j] /= peak
