"""Quality measures of motion correction.

- *Frame–template correlation*: Pearson correlation of each frame with the template, over
  a central region untouched by border effects. Higher after correction.
- *Crispness* of a mean image: the Frobenius norm of its spatial gradient,
  ``sqrt(Σ_p |∇I(p)|²)`` (as in the CaImAn paper). Blur from residual motion lowers it.
- *Residual shifts*: the rigid displacement that remains when corrected frames are
  registered again to the template (ideally ≈ 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def central_region(dims: Sequence[int], margin: Sequence[int]) -> tuple[slice, ...]:
    """Slices leaving ``margin`` px on each side of each axis (the whole axis where the margin
    would leave nothing)."""
    out = []
    for d, m in zip(dims, margin):
        m = int(m)
        out.append(slice(m, d - m) if d - 2 * m >= 2 else slice(0, d))
    return tuple(out)


def frame_correlations(frames: np.ndarray, template: np.ndarray, region: tuple[slice, ...] | None = None
                       ) -> np.ndarray:
    """Pearson correlation of each frame with ``template`` inside ``region``.

    ``frames``: ``(n, *dims)``; ``template``: ``(*dims)``. Returns ``(n,)`` float32 (NaN for a
    frame that is constant or holds NaN inside the region).
    """
    region = region or tuple(slice(None) for _ in template.shape)
    t = np.asarray(template, dtype=np.float64)[region].ravel()
    t = (t - t.mean()).astype(np.float32)
    t_norm = float(np.sqrt(np.dot(t, t)))
    out = np.empty(len(frames), dtype=np.float32)
    for i in range(len(frames)):
        x = np.ascontiguousarray(frames[i][region], dtype=np.float32).ravel()
        mean = float(x.sum(dtype=np.float64)) / x.size
        xc = x - np.float32(mean)
        denom = float(np.sqrt(np.dot(xc, xc))) * t_norm
        out[i] = float(np.dot(xc, t)) / denom if denom > 0 else np.nan
    return out


def crispness(image: np.ndarray, region: tuple[slice, ...] | None = None) -> float:
    """Frobenius norm of the spatial gradient of ``image`` (``(H, W)`` or ``(Z, H, W)``) inside
    ``region``."""
    img = np.asarray(image, dtype=np.float64)
    if region is not None:
        img = img[region]
    grads = np.gradient(img)
    return float(np.sqrt(sum(np.nansum(g**2) for g in grads)))
