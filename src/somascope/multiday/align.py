"""Field alignment between two sessions, and footprints carried from one field to the other.

Convention (the one of :mod:`somascope.motion`'s rigid shifts, extended to a dense field):
the alignment of a *moving* image ``B`` to a *reference* image ``A`` is a displacement field
``flow`` of shape ``(2, H, W)`` (pixels, ``(dy, dx)``) on the reference grid with

    ``A(q) ≈ B(q + flow(q))``.

So a quantity of session B is carried into A's frame by sampling it at ``q + flow(q)``
(:func:`warp_footprints`). The flow is the sum of a rigid sub-pixel shift (phase correlation
with upsampling, :func:`somascope.motion.register_frame`: the same implementation as motion
correction) and a smooth non-rigid residual from TV-L1 optical flow
(:func:`skimage.registration.optical_flow_tvl1`) on high-passed, contrast-normalised images.
Rotations of a degree or two and warps of a few pixels are in the residual.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = ["Alignment", "align_images", "fit_to_shape", "invert_flow", "normalise_image", "warp_footprints",
           "warp_image"]

#: Gaussian σ (px) of the background subtracted from a template before alignment.
HIGH_PASS_SIGMA = 8.0
#: Gaussian σ (px) of the smoothing applied to the non-rigid flow.
FLOW_SMOOTH_SIGMA = 6.0
#: Larger fields get their non-rigid flow solved on a grid coarsened to this many px per side.
FLOW_MAX_SIDE = 256


@dataclass(frozen=True)
class Alignment:
    """How a moving field maps onto a reference field.

    Attributes
    ----------
    dims : ``(H, W)`` of the reference field (and of the flow).
    rigid : ``(2,)`` float64, the rigid part ``(dy, dx)`` px: ``A(q) ≈ B(q + rigid)``.
    flow : ``(2, H, W)`` float32, the whole displacement (rigid + non-rigid), px.
    corr_before, corr_after : Pearson correlation of the normalised images before any alignment
        and after the full warp (a check: after should be clearly above before).
    """

    dims: tuple[int, int]
    rigid: np.ndarray
    flow: np.ndarray
    corr_before: float
    corr_after: float

    @classmethod
    def identity(cls, dims: Sequence[int]) -> Alignment:
        """No displacement on a field of shape ``dims``."""
        d = (int(dims[0]), int(dims[1]))
        return cls(d, np.zeros(2), np.zeros((2, *d), np.float32), 1.0, 1.0)

    @property
    def nonrigid_max(self) -> float:
        """Largest |non-rigid residual| (px) anywhere in the field."""
        res = self.flow - self.rigid.reshape(2, 1, 1)
        return float(np.sqrt((res ** 2).sum(axis=0)).max()) if res.size else 0.0


def fit_to_shape(image: np.ndarray, dims: Sequence[int], what: str = "image") -> np.ndarray:
    """``image`` padded (edge values) or cropped, symmetrically, to ``dims``; logs when changed.

    Fields of view that differ by a few pixels in size are brought to the reference's size
    this way before alignment (the flow absorbs the half-pixel offset of an odd difference).
    """
    image = np.asarray(image)
    target = (int(dims[0]), int(dims[1]))
    if image.shape == target:
        return image
    out = image
    for axis, (have, want) in enumerate(zip(image.shape, target)):
        if have > want:
            lo = (have - want) // 2
            out = np.take(out, np.arange(lo, lo + want), axis=axis)
        elif have < want:
            lo = (want - have) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (lo, want - have - lo)
            out = np.pad(out, pad, mode="edge")
    log.info("%s of shape %s %s to the reference's %s", what, image.shape,
             "padded/cropped" if out.shape == target else "resized", target)
    return out


def normalise_image(image: np.ndarray, sigma: float = HIGH_PASS_SIGMA) -> np.ndarray:
    """High-passed, robustly scaled copy of a template image, ``(H, W)`` float32.

    The smooth background (Gaussian σ ``sigma`` px) is subtracted, the result divided by its
    median absolute deviation and clipped to ±5, so that bright cells active on one day only
    do not dominate the alignment. Raises ``ValueError`` for non-finite values.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"a template image must be 2-D (H, W); got shape {img.shape}.")
    if not np.isfinite(img).all():
        n = int((~np.isfinite(img)).sum())
        raise ValueError(f"the template image has {n} NaN/Inf pixels; fill them (e.g. np.nan_to_num or the "
                         "image's median) before registering sessions.")
    hp = img - ndimage.gaussian_filter(img, sigma, mode="reflect")
    mad = np.median(np.abs(hp - np.median(hp)))
    scale = 1.4826 * mad if mad > 0 else (hp.std() or 1.0)
    return np.clip(hp / scale, -5.0, 5.0).astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray, margin: int) -> float:
    """Pearson correlation of two images inside a border of ``margin`` px."""
    sl = (slice(margin, a.shape[0] - margin or None), slice(margin, a.shape[1] - margin or None))
    x, y = a[sl].ravel().astype(np.float64), b[sl].ravel().astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def warp_image(image: np.ndarray, flow: np.ndarray, order: int = 1) -> np.ndarray:
    """``image`` (moving frame) resampled on the reference grid: ``out(q) = image(q + flow(q))``."""
    grid = np.indices(flow.shape[1:], dtype=np.float32)
    return ndimage.map_coordinates(np.asarray(image, np.float32), grid + flow, order=order, mode="nearest")


def align_images(reference: np.ndarray, moving: np.ndarray, *, max_shift: int | None = None,
                 nonrigid: bool = True, smooth_sigma: float = FLOW_SMOOTH_SIGMA) -> Alignment:
    """Align ``moving`` (session B's mean/correlation image) to ``reference`` (session A's).

    Parameters
    ----------
    reference, moving
        ``(H, W)`` images; ``moving`` of another size is padded/cropped to ``reference``'s.
    max_shift
        Largest rigid shift searched, px (default: a fifth of the smaller side, at most 40).
    nonrigid
        Add the dense TV-L1 optical-flow residual (else rigid only).
    smooth_sigma
        Gaussian σ (px) applied to the residual flow.

    Returns
    -------
    Alignment
        ``reference(q) ≈ moving(q + flow(q))``.
    """
    from skimage.registration import optical_flow_tvl1

    from ..motion import register_frame

    ref = normalise_image(reference)
    mov = normalise_image(fit_to_shape(moving, ref.shape, "moving template"))
    dims = (int(ref.shape[0]), int(ref.shape[1]))
    if max_shift is None:
        max_shift = int(min(40, max(1, min(dims) // 5)))
    # register_frame: frame(p) ≈ template(p - s), so reference(q) ≈ moving(q + s).
    shift, _ = register_frame(mov, ref, max_shifts=max_shift, upsample_factor=20)
    rigid = np.asarray(shift, np.float64)
    grid = np.indices(dims, dtype=np.float32)
    flow = np.broadcast_to(rigid.astype(np.float32).reshape(2, 1, 1), (2, *dims)).copy()
    if nonrigid:
        shifted = warp_image(mov, flow)
        residual = _residual_flow(ref, shifted, smooth_sigma, optical_flow_tvl1)
        # compose: ref(q) ≈ shifted(q + r(q)) = mov(q + r(q) + flow(q + r(q))); flow is constant here.
        flow = flow + residual.astype(np.float32)
    margin = int(np.ceil(np.abs(rigid).max())) + 2
    after = ndimage.map_coordinates(mov, grid + flow, order=1, mode="nearest")
    return Alignment(dims, rigid, flow.astype(np.float32), _corr(ref, mov, margin), _corr(ref, after, margin))


def _residual_flow(ref: np.ndarray, mov: np.ndarray, smooth_sigma: float, solver: Any) -> np.ndarray:
    """Smoothed TV-L1 flow ``(2, H, W)`` with ``ref(q) ≈ mov(q + flow(q))``; fields larger than
    :data:`FLOW_MAX_SIDE` px are solved on a ``f``-times coarser grid (the flow is smooth at the
    scale of cells, and this keeps a 512 × 512 pair well under a second) and interpolated back."""
    dims = ref.shape
    f = max(1, int(np.ceil(max(dims) / FLOW_MAX_SIDE)))
    if f > 1:
        small = [ndimage.zoom(ndimage.gaussian_filter(im, 0.5 * f), 1.0 / f, order=1) for im in (ref, mov)]
    else:
        small = [ref, mov]
    flow = solver(small[0], small[1], attachment=10.0, tightness=0.3, num_warp=5, num_iter=20)
    flow = np.stack([ndimage.gaussian_filter(c, smooth_sigma / f, mode="nearest") for c in flow])
    if f > 1:
        zoom = [d / s for d, s in zip(dims, flow.shape[1:])]
        flow = np.stack([ndimage.zoom(c, zoom, order=1, grid_mode=True, mode="nearest")
                         for c in flow]) * f
        flow = np.stack([fit_to_shape(c, dims, "flow") for c in flow])
    return flow


def invert_flow(flow: np.ndarray, n_iter: int = 10) -> np.ndarray:
    """The inverse displacement: ``u`` on the moving grid with ``p + u(p) = q`` where
    ``p = q + flow(q)`` (fixed-point iteration ``u(p) = -flow(p + u(p))``; smooth flows)."""
    dims = flow.shape[1:]
    grid = np.indices(dims, dtype=np.float32)
    u = -flow.copy()
    for _ in range(n_iter):
        coords = grid + u
        u = -np.stack([ndimage.map_coordinates(f, coords, order=1, mode="nearest") for f in flow])
    return u.astype(np.float32)


def warp_footprints(A: sp.spmatrix | np.ndarray, flow: np.ndarray, dims: Sequence[int],
                    src_dims: Sequence[int] | None = None, order: int = 1) -> sp.csc_matrix:
    """Footprints of the moving session carried into the reference frame.

    Parameters
    ----------
    A
        ``pixels × K`` (C order of ``src_dims``), sparse or dense: the moving session's footprints.
    flow
        ``(2, H, W)`` on the reference grid (``dims``): ``out(q) = A_k(q + flow(q))``.
    dims
        ``(H, W)`` of the reference field.
    src_dims
        ``(H, W)`` of the moving field (default ``dims``); a field of another size is taken
        as centred on the reference one (as :func:`fit_to_shape` pads/crops it).
    order
        Spline order of the interpolation (1: bilinear, keeps values ≥ 0).

    Returns
    -------
    ``pixels × K`` CSC float64 on ``dims``. Each footprint is resampled only over the reference
    pixels whose source point falls inside its bounding box (plus one pixel), so the cost
    follows the footprints' sizes.
    """
    dims = (int(dims[0]), int(dims[1]))
    src = dims if src_dims is None else (int(src_dims[0]), int(src_dims[1]))
    M = sp.csc_matrix(A, dtype=np.float64)
    if M.shape[0] != src[0] * src[1]:
        raise ValueError(f"A has {M.shape[0]} rows but the moving field {src} has {src[0] * src[1]} pixels.")
    if flow.shape != (2, *dims):
        raise ValueError(f"flow must be (2, {dims[0]}, {dims[1]}); got {flow.shape}.")
    offset = np.array([(s - d) // 2 for s, d in zip(src, dims)], np.float64)  # centred sizes
    # source coordinates of every reference pixel
    coords = np.indices(dims, dtype=np.float64) + flow.astype(np.float64) + offset.reshape(2, 1, 1)
    M.sort_indices()
    rows, cols, vals = [], [], []
    for k in range(M.shape[1]):
        idx = M.indices[M.indptr[k]:M.indptr[k + 1]]
        data = M.data[M.indptr[k]:M.indptr[k + 1]]
        if idx.size == 0:
            continue
        r, c = np.unravel_index(idx, src)
        lo = np.array([r.min(), c.min()]) - 1
        hi = np.array([r.max(), c.max()]) + 2
        crop = np.zeros(tuple(hi - lo), np.float64)
        crop[r - lo[0], c - lo[1]] = data
        # reference-frame box: the source box moved by the local inverse displacement, widened
        centre = np.clip(((lo + hi) / 2 - offset).astype(int), 0, np.array(dims) - 1)
        u = -flow[:, centre[0], centre[1]].astype(np.float64)  # the flow is smooth: local inverse ≈ -flow
        pad = 3
        t_lo = np.maximum(np.floor(lo - offset + u).astype(int) - pad, 0)
        t_hi = np.minimum(np.ceil(hi - offset + u).astype(int) + pad, dims)
        if np.any(t_hi <= t_lo):
            continue
        box = (slice(t_lo[0], t_hi[0]), slice(t_lo[1], t_hi[1]))
        local = coords[(slice(None), *box)] - lo.reshape(2, 1, 1)
        out = ndimage.map_coordinates(crop, local, order=order, mode="constant", cval=0.0)
        nz = np.nonzero(out > 1e-12 * data.max())
        if nz[0].size == 0:
            continue
        rows.append(np.ravel_multi_index((nz[0] + t_lo[0], nz[1] + t_lo[1]), dims))
        cols.append(np.full(nz[0].size, k))
        vals.append(out[nz])
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    return sp.csc_matrix((cat(vals, np.float64), (cat(rows, np.int64), cat(cols, np.int64))),
                         shape=(dims[0] * dims[1], M.shape[1]))
