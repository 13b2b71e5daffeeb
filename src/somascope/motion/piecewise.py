"""Piecewise-rigid registration: a shift per overlapping patch, turned into a smooth field.

The field of view is covered by overlapping patches of ``strides + overlaps`` px, starting
every ``strides`` px (the last patch along each axis is moved back to end at the frame's
edge). For each frame:

1. the rigid displacement ``r`` is estimated on the whole frame;
2. the frame is rigidly aligned (shifted by ``-r``), and each patch's *residual* displacement
   is found by cross-correlation with the template's patch inside ``±max_deviation_rigid``;
   the patch displacement is ``r + residual``, so it never strays further than
   ``max_deviation_rigid`` from the rigid one;
3. the patch displacements, located at the patch centres, are interpolated to every pixel by
   a natural cubic spline along each axis (constant beyond the outermost centres), giving a
   smooth displacement field that :func:`~somascope.motion.warp_frame` applies.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.interpolate import CubicSpline

from .registration import (check_max_shifts, high_pass, interior, peak_shifts, prepare_template,
                           register_filtered)
from .warp import shift_frame


@dataclass(frozen=True)
class PatchGrid:
    """Geometry of the pw-rigid patches.

    Attributes
    ----------
    dims : frame shape ``(H, W)`` or ``(Z, H, W)``.
    patch_shape : patch size per axis, px (``strides + overlaps``).
    starts : per axis, the first pixel of each patch along that axis.

    Patches are numbered in C order of the grid (``grid_shape``): patch ``k`` spans
    ``slices()[k]`` and is centred at ``centers()[k]``.
    """

    dims: tuple[int, ...]
    patch_shape: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    @property
    def n_patches(self) -> int:
        return int(np.prod(self.grid_shape))

    def axis_centers(self, axis: int) -> np.ndarray:
        """Patch centres along ``axis``, px (float)."""
        return np.asarray(self.starts[axis], dtype=np.float64) + (self.patch_shape[axis] - 1) / 2.0

    def centers(self) -> np.ndarray:
        """``(n_patches, ndim)`` patch centres, px."""
        mesh = np.meshgrid(*[self.axis_centers(a) for a in range(len(self.dims))], indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)

    def slices(self) -> list[tuple[slice, ...]]:
        """The region of each patch, in patch order."""
        idx = np.indices(self.grid_shape).reshape(len(self.dims), -1).T
        return [tuple(slice(self.starts[a][i], self.starts[a][i] + self.patch_shape[a]) for a, i in enumerate(k))
                for k in idx]

    def to_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "patch_shape": list(self.patch_shape),
                "starts": [list(s) for s in self.starts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchGrid:
        return cls(tuple(int(x) for x in d["dims"]), tuple(int(x) for x in d["patch_shape"]),
                   tuple(tuple(int(x) for x in s) for s in d["starts"]))


def patch_grid(dims: Sequence[int], strides: Sequence[int], overlaps: Sequence[int]) -> PatchGrid:
    """Patches of ``strides + overlaps`` px every ``strides`` px covering a frame of ``dims``.

    Raises
    ------
    ValueError
        when a patch is larger than the frame along some axis.
    """
    dims = tuple(int(d) for d in dims)
    patch = tuple(int(s) + int(o) for s, o in zip(strides, overlaps))
    if len(patch) != len(dims):
        raise ValueError(f"strides/overlaps need one entry per frame axis {dims}.")
    if any(p > d for p, d in zip(patch, dims)) or min(strides) < 1:
        raise ValueError(f"the frame {dims} is smaller than one patch (strides + overlaps = {patch}); lower "
                         "strides / overlaps, or use rigid correction.")
    starts = []
    for d, p, s in zip(dims, patch, strides):
        st = list(range(0, d - p + 1, int(s)))
        if st[-1] != d - p:
            st.append(d - p)
        starts.append(tuple(st))
    return PatchGrid(dims, patch, tuple(starts))


@functools.lru_cache(maxsize=32)
def _interp_matrix(centers: tuple[float, ...], n: int) -> np.ndarray:
    """``(n, len(centers))`` weights interpolating values at ``centers`` to pixels ``0..n-1``
    (natural cubic spline; constant beyond the outer centres)."""
    k = len(centers)
    if k == 1:
        return np.ones((n, 1), dtype=np.float32)
    c = np.asarray(centers)
    spline = CubicSpline(c, np.eye(k), axis=0, bc_type="natural")
    x = np.clip(np.arange(n, dtype=np.float64), c[0], c[-1])
    return spline(x).astype(np.float32)


def displacement_field(patch_shifts: np.ndarray, grid: PatchGrid, *, out: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel displacement field from the displacements of the patches.

    Parameters
    ----------
    patch_shifts
        ``(n_patches, ndim)`` displacement of each patch, px (patch order of ``grid``).
    grid
        The patches.
    out
        Optional float32 ``(ndim, *dims)`` array to write into.

    Returns
    -------
    ``(ndim, *dims)`` float32 field, px; ``field[:, p]`` is the displacement at pixel ``p``.
    """
    ndim = len(grid.dims)
    s = np.asarray(patch_shifts, dtype=np.float32).reshape(*grid.grid_shape, ndim)
    mats = [_interp_matrix(tuple(grid.axis_centers(a).tolist()), grid.dims[a]) for a in range(ndim)]
    if out is None:
        out = np.empty((ndim, *grid.dims), dtype=np.float32)
    for c in range(ndim):
        f = s[..., c]
        for a in range(ndim):
            f = np.moveaxis(np.tensordot(mats[a], f, axes=([1], [a])), 0, a)
        out[c] = f
    return out


@dataclass(frozen=True)
class PatchPlan:
    """Template patches prepared for registration (FFTs computed once).

    conj_fft : ``(n_patches, *half_patch)`` complex64, masked like :class:`TemplatePlan`
    (margin ``max_deviation_rigid + 1``); norms : ``(n_patches,)``.
    """

    grid: PatchGrid
    max_deviation: tuple[int, ...]
    conj_fft: np.ndarray
    norms: np.ndarray

    @property
    def interior(self) -> tuple[slice, ...]:
        return interior(self.grid.patch_shape, self.max_deviation)


def prepare_patches(filtered_template: np.ndarray, grid: PatchGrid, max_deviation: Sequence[int]) -> PatchPlan:
    """Prepare the patches of a (band-passed, in 1p mode) template for :func:`register_patches`."""
    dev = check_max_shifts(grid.patch_shape, max_deviation, "patch")
    t = np.asarray(filtered_template, dtype=np.float32)
    patches = _extract(t, grid)
    inner = interior(grid.patch_shape, dev)
    core = patches[(slice(None), *inner)].astype(np.float64)
    axes = tuple(range(1, core.ndim))
    core = core - core.mean(axis=axes, keepdims=True)
    masked = np.zeros_like(patches)
    masked[(slice(None), *inner)] = core
    spec = scipy.fft.rfftn(masked, axes=axes)
    norms = np.sqrt(np.sum(core**2, axis=axes))
    return PatchPlan(grid, dev, np.conj(spec).astype(np.complex64), norms)


def _extract(frame: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``(n_patches, *patch_shape)`` copy of the patches of one frame."""
    view = sliding_window_view(frame, grid.patch_shape)
    sel = view[np.ix_(*[np.asarray(s) for s in grid.starts])]
    return sel.reshape(grid.n_patches, *grid.patch_shape)


def register_patches(aligned: np.ndarray, plan: PatchPlan, upsample_factor: int, workers: int = 1
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Residual displacement of each patch of rigidly aligned (and band-passed) frames.

    Parameters
    ----------
    aligned
        ``(n, *dims)`` float32 frames already corrected for their rigid displacement.

    Returns
    -------
    residual : ``(n, n_patches, ndim)`` float32, px, within ``±max_deviation``.
    corr : ``(n, n_patches)`` float32 normalised correlation of each patch at its peak.
    """
    grid = plan.grid
    n, ndim, n_p = aligned.shape[0], len(grid.dims), grid.n_patches
    axes = tuple(range(1, ndim + 1))
    dev = np.asarray(plan.max_deviation)
    patches = np.concatenate([_extract(aligned[i], grid) for i in range(n)])  # (n * P, *patch)
    core = patches[(slice(None), *plan.interior)]
    centred = core - core.mean(axis=axes, dtype=np.float64, keepdims=True).astype(np.float32)
    flat = centred.reshape(len(centred), -1)
    norms = np.sqrt(np.einsum("ij,ij->i", flat, flat).astype(np.float64))
    spec = scipy.fft.rfftn(patches, axes=axes, workers=workers)
    spec = (spec.reshape(n, n_p, *spec.shape[1:]) * plan.conj_fft).reshape(spec.shape)
    shifts, peak = peak_shifts(spec, grid.patch_shape, -dev, dev, upsample_factor, workers)
    denom = norms * np.tile(plan.norms, n)
    corr = np.divide(peak, denom, out=np.zeros_like(peak), where=denom > 0)
    return shifts.reshape(n, n_p, ndim).astype(np.float32), corr.reshape(n, n_p).astype(np.float32)


def register_frame_pw(frame: np.ndarray, template: np.ndarray, max_shifts: Sequence[int] | int,
                      strides: Sequence[int], overlaps: Sequence[int], max_deviation_rigid: int,
                      upsample_factor: int = 10, *, gSig_filt: Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, PatchGrid]:
    """Piecewise-rigid displacements of one frame relative to a template (frame-by-frame use).

    Parameters
    ----------
    frame, template
        ``(H, W)`` or ``(Z, H, W)``.
    max_shifts
        Largest rigid |displacement| per axis, px.
    strides, overlaps
        Patch layout per axis, px (patches of ``strides + overlaps``).
    max_deviation_rigid
        Largest difference between a patch's and the rigid displacement, px.
    upsample_factor
        Sub-pixel precision ``1/upsample_factor`` px.
    gSig_filt
        One-photon band-pass σ per axis, px.

    Returns
    -------
    rigid : ``(ndim,)`` rigid displacement, px.
    patch_shifts : ``(n_patches, ndim)`` displacement of each patch, px.
    grid : the patch geometry; ``displacement_field(patch_shifts, grid)`` gives the per-pixel
        field to pass to :func:`~somascope.motion.warp_frame`.
    """
    frame = np.asarray(frame, dtype=np.float32)
    plan = prepare_template(template, max_shifts, gSig_filt)
    grid = patch_grid(plan.dims, strides, overlaps)
    ndim = len(plan.dims)
    filt_t = high_pass(plan.template, plan.gSig_filt) if plan.gSig_filt else plan.template
    pplan = prepare_patches(filt_t, grid, (int(max_deviation_rigid),) * ndim)
    x = high_pass(frame[None], plan.gSig_filt, ndim) if plan.gSig_filt else frame[None]
    rigid, _ = register_filtered(x, plan, upsample_factor)
    aligned = shift_frame(x[0], rigid[0], "copy")[None]
    residual, _ = register_patches(aligned, pplan, upsample_factor)
    return rigid[0], (rigid[0][None, :] + residual[0]).astype(np.float64), grid
