"""Numba kernels for applying shifts: cubic convolution (Keys, a = -0.5).

Leaf module: imported only inside the functions of :mod:`somascope.motion.warp`, so that
``import somascope.motion`` does not load Numba. Kernels are compiled on first use and cached
on disk (``cache=True``). They are single-threaded: parallelism comes from the Engine's worker
processes.

Border codes: ``COPY`` clamps the sampling position into the frame (the edge pixel is
repeated); ``FILL`` writes ``fill`` where the sampling position lies outside the frame.
"""

from __future__ import annotations

import numba
import numpy as np

COPY = 0
FILL = 1
#: Floating-point liberties for the interpolation loops (no "no-NaN" assumption: NaN fill).
_FAST = {"contract", "reassoc", "arcp", "afn", "nsz"}
_EPS = 1e-4  # px: sampling positions this close outside the frame count as inside
_A = -0.5  # Keys cubic convolution parameter (third-order accurate)


@numba.njit(cache=True, inline="always")
def _weights(t: float) -> tuple[float, float, float, float]:
    """Keys weights of taps at offsets -1, 0, 1, 2 for a position ``t`` in [0, 1) past tap 0."""
    a = _A
    d0 = 1.0 + t
    d1 = t
    d2 = 1.0 - t
    d3 = 2.0 - t
    w0 = a * d0 * d0 * d0 - 5.0 * a * d0 * d0 + 8.0 * a * d0 - 4.0 * a
    w1 = (a + 2.0) * d1 * d1 * d1 - (a + 3.0) * d1 * d1 + 1.0
    w2 = (a + 2.0) * d2 * d2 * d2 - (a + 3.0) * d2 * d2 + 1.0
    w3 = a * d3 * d3 * d3 - 5.0 * a * d3 * d3 + 8.0 * a * d3 - 4.0 * a
    return w0, w1, w2, w3


@numba.njit(cache=True, inline="always")
def _clamp(i: int, n: int) -> int:
    if i < 0:
        return 0
    if i > n - 1:
        return n - 1
    return i


@numba.njit(cache=True)
def _taps(n: int, shift: float, mode: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows and weights for ``out[i] = Σ_k w[k] src[idx[i, k]]`` with ``i + shift`` the
    sampling position; ``outside[i]`` marks positions beyond the frame (filled in FILL mode)."""
    base = int(np.floor(shift))
    t = shift - base
    w = np.empty(4, dtype=np.float32)
    w0, w1, w2, w3 = _weights(t)
    w[0], w[1], w[2], w[3] = w0, w1, w2, w3
    idx = np.empty((n, 4), dtype=np.int64)
    outside = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        p = i + shift
        if p < -_EPS or p > n - 1 + _EPS:
            outside[i] = True
            if mode == COPY:  # repeat the edge pixel: all taps on it
                j = 0 if p < 0 else n - 1
                for k in range(4):
                    idx[i, k] = j
                continue
        for k in range(4):
            idx[i, k] = _clamp(i + base - 1 + k, n)
    return idx, w, outside


@numba.njit(cache=True)
def shift_axis(src: np.ndarray, out: np.ndarray, shift: float, mode: int, fill: float) -> None:
    """``out[a, i, b] = src[a, i + shift, b]`` by cubic convolution along the middle axis.

    ``src`` and ``out``: float32 C-contiguous ``(A, N, B)`` (a frame reshaped around the axis
    to shift; use :func:`shift_last` when ``B == 1``).
    """
    n_a, n, n_b = src.shape
    idx, w, outside = _taps(n, shift, mode)
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    for a in range(n_a):
        for i in range(n):
            j0, j1, j2, j3 = idx[i, 0], idx[i, 1], idx[i, 2], idx[i, 3]
            for b in range(n_b):
                out[a, i, b] = (w0 * src[a, j0, b] + w1 * src[a, j1, b]
                                + w2 * src[a, j2, b] + w3 * src[a, j3, b])
    if mode == FILL:
        for i in range(n):
            if outside[i]:
                for a in range(n_a):
                    for b in range(n_b):
                        out[a, i, b] = fill


@numba.njit(cache=True)
def shift_last(src: np.ndarray, out: np.ndarray, shift: float, mode: int, fill: float) -> None:
    """``out[a, i] = src[a, i + shift]`` by cubic convolution along the last (contiguous) axis.

    ``src`` and ``out``: float32 C-contiguous ``(A, N)``.
    """
    n_a, n = src.shape
    idx, w, outside = _taps(n, shift, mode)
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    base = int(np.floor(shift))
    lo = min(max(1 - base, 0), n)  # outputs whose four taps are all inside: plain offsets
    hi = max(min(n - 2 - base, n), lo)
    for a in range(n_a):
        row = src[a]
        dst = out[a]
        for i in range(lo, hi):
            j = i + base
            dst[i] = w0 * row[j - 1] + w1 * row[j] + w2 * row[j + 1] + w3 * row[j + 2]
        for i in range(lo):
            dst[i] = w0 * row[idx[i, 0]] + w1 * row[idx[i, 1]] + w2 * row[idx[i, 2]] + w3 * row[idx[i, 3]]
        for i in range(hi, n):
            dst[i] = w0 * row[idx[i, 0]] + w1 * row[idx[i, 1]] + w2 * row[idx[i, 2]] + w3 * row[idx[i, 3]]
        if mode == FILL:
            for i in range(n):
                if outside[i]:
                    dst[i] = fill


@numba.njit(cache=True, fastmath=_FAST)
def remap2d(src: np.ndarray, dy: np.ndarray, dx: np.ndarray, out: np.ndarray, mode: int, fill: float) -> None:
    """``out[y, x] = src[y + dy[y, x], x + dx[y, x]]`` by bicubic convolution.

    All arrays float32 ``(H, W)``.
    """
    h, w = src.shape
    for y in range(h):
        for x in range(w):
            py = y + dy[y, x]
            px = x + dx[y, x]
            if py < -_EPS or py > h - 1 + _EPS or px < -_EPS or px > w - 1 + _EPS:
                if mode == FILL:
                    out[y, x] = fill
                    continue
                py = min(max(py, 0.0), h - 1.0)
                px = min(max(px, 0.0), w - 1.0)
            iy = int(np.floor(py))
            ix = int(np.floor(px))
            wy0, wy1, wy2, wy3 = _weights(py - iy)
            wx0, wx1, wx2, wx3 = _weights(px - ix)
            if iy >= 1 and iy + 2 <= h - 1 and ix >= 1 and ix + 2 <= w - 1:  # interior: no clamping
                acc = 0.0
                r = iy - 1
                acc += wy0 * (wx0 * src[r, ix - 1] + wx1 * src[r, ix] + wx2 * src[r, ix + 1] + wx3 * src[r, ix + 2])
                r = iy
                acc += wy1 * (wx0 * src[r, ix - 1] + wx1 * src[r, ix] + wx2 * src[r, ix + 1] + wx3 * src[r, ix + 2])
                r = iy + 1
                acc += wy2 * (wx0 * src[r, ix - 1] + wx1 * src[r, ix] + wx2 * src[r, ix + 1] + wx3 * src[r, ix + 2])
                r = iy + 2
                acc += wy3 * (wx0 * src[r, ix - 1] + wx1 * src[r, ix] + wx2 * src[r, ix + 1] + wx3 * src[r, ix + 2])
                out[y, x] = acc
                continue
            wy = (wy0, wy1, wy2, wy3)
            wx = (wx0, wx1, wx2, wx3)
            acc = 0.0
            for k in range(4):
                row = _clamp(iy - 1 + k, h)
                r_ = 0.0
                for m in range(4):
                    r_ += wx[m] * src[row, _clamp(ix - 1 + m, w)]
                acc += wy[k] * r_
            out[y, x] = acc


@numba.njit(cache=True, fastmath=_FAST)
def remap3d(src: np.ndarray, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray, out: np.ndarray,
            mode: int, fill: float) -> None:
    """``out[z, y, x] = src[z + dz, y + dy, x + dx]`` by tricubic convolution.

    All arrays float32 ``(Z, H, W)``.
    """
    nz, h, w = src.shape
    for z in range(nz):
        for y in range(h):
            for x in range(w):
                pz = z + dz[z, y, x]
                py = y + dy[z, y, x]
                px = x + dx[z, y, x]
                if (pz < -_EPS or pz > nz - 1 + _EPS or py < -_EPS or py > h - 1 + _EPS
                        or px < -_EPS or px > w - 1 + _EPS):
                    if mode == FILL:
                        out[z, y, x] = fill
                        continue
                    pz = min(max(pz, 0.0), nz - 1.0)
                    py = min(max(py, 0.0), h - 1.0)
                    px = min(max(px, 0.0), w - 1.0)
                iz = int(np.floor(pz))
                iy = int(np.floor(py))
                ix = int(np.floor(px))
                wz = _weights(pz - iz)
                wy = _weights(py - iy)
                wx = _weights(px - ix)
                acc = 0.0
                for l in range(4):  # noqa: E741
                    plane = _clamp(iz - 1 + l, nz)
                    s = 0.0
                    for k in range(4):
                        row = _clamp(iy - 1 + k, h)
                        r = 0.0
                        for m in range(4):
                            r += wx[m] * src[plane, row, _clamp(ix - 1 + m, w)]
                        s += wy[k] * r
                    acc += wz[l] * s
                out[z, y, x] = acc
