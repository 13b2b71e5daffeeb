"""Footprint crops at the scale of the neuron: what the shape classifier looks at.

Each component's footprint is sampled on a ``CROP_SIZE × CROP_SIZE`` grid centred on its
centre of mass and spanning ``±WINDOW_RADII`` neuron radii along each axis, so a soma of the
expected size fills the same central part of every crop whatever the radius in pixels (5 px
or 12 px) and whatever the pixel aspect. Values are interpolated linearly (zero outside the
frame) after a Gaussian pre-filter that removes detail finer than the grid's spacing when the
grid is coarser than the pixels, and each crop is divided by its maximum, so the classifier
sees shape, not brightness. Both steps are separable and linear, so each footprint pixel adds
its value × the filter-then-interpolate weights of its row and column to the grid points it
reaches (a Numba kernel, one component per thread; nothing of the frame's size is formed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["CROP_SIZE", "WINDOW_RADII", "component_crops"]

#: Side of a crop, in grid points.
CROP_SIZE = 24
#: Half-width of a crop, in neuron radii (the crop spans ``2 · WINDOW_RADII`` radii).
WINDOW_RADII = 3.0


def component_crops(
    A: Any,
    dims: Sequence[int],
    radius: float | Sequence[float],
    *,
    size: int = CROP_SIZE,
    window_radii: float = WINDOW_RADII,
) -> np.ndarray:
    """Neuron-scaled crops of every footprint.

    Parameters
    ----------
    A
        Footprints, ``pixels × K`` (``scipy.sparse`` or dense), pixels in C order of ``dims``.
    dims
        Frame shape ``(H, W)``.
    radius
        Neuron radius in pixels, one number or ``(ry, rx)``.
    size
        Crop side in grid points.
    window_radii
        Half-width of the crop in neuron radii.

    Returns
    -------
    ndarray ``(K, size, size)`` float32 in ``[0, 1]``: each footprint sampled around its centre
    of mass and divided by its maximum; all zeros for an empty or non-positive footprint.
    """
    dims = tuple(int(d) for d in dims)
    if len(dims) != 2:
        raise ValueError(f"the shape classifier reads 2-D footprints; got frames of shape {dims}. "
                         f"Fix: set quality.use_cnn=false for volumes.")
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (2,))
    if not np.all(r > 0):
        raise ValueError(f"radius must be positive pixels; got {tuple(r)}.")
    M = sp.csc_matrix(A, dtype=np.float32)
    if M.shape[0] != dims[0] * dims[1]:
        raise ValueError(f"A has {M.shape[0]} pixel rows but frames of shape {dims} have {dims[0] * dims[1]}.")
    from ._kernels import crops

    step = 2.0 * window_radii * r / size                   # grid spacing along each axis, px
    sigma = np.where(step > 1.0, 0.5 * np.sqrt(np.maximum(step ** 2 - 1.0, 0.0)), 0.0)   # pre-filter, px
    ky, kx = (_gaussian_kernel(sg) for sg in sigma)
    reach = window_radii * r + np.array([ky.size // 2 + 2, kx.size // 2 + 2])   # pixels farther off do not count
    out = np.zeros((M.shape[1], size, size), np.float32)
    crops(M.indptr.astype(np.int64), M.indices.astype(np.int64), M.data.astype(np.float64), int(dims[1]), step,
          reach, ky, kx, out)
    return out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised Gaussian weights at integer offsets ``-R..R``, ``R = round(4 σ)`` (the
    pre-filter, truncated at 4 σ); ``[1]`` for ``σ = 0``."""
    if sigma <= 0:
        return np.ones(1)
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()
