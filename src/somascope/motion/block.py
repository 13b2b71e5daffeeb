"""Registering and correcting a block of frames against a prepared reference.

These are the per-chunk steps of :func:`somascope.motion.correct`: a worker reads a block of
frames, calls :func:`register_block` and :func:`correct_block`, and writes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .piecewise import PatchGrid, PatchPlan, displacement_field, patch_grid, prepare_patches, register_patches
from .registration import TemplatePlan, high_pass, prepare_template, register_filtered
from .settings import Settings
from .warp import _shift_into, shift_frame, warp_frame

#: Frames registered together (one batched FFT); bounds the temporary spectra.
BATCH_FRAMES = 16


@dataclass(frozen=True)
class Reference:
    """A template prepared for rigid (and, with ``patches``, piecewise-rigid) registration."""

    plan: TemplatePlan
    patches: PatchPlan | None

    @property
    def grid(self) -> PatchGrid | None:
        return None if self.patches is None else self.patches.grid


@dataclass(frozen=True)
class BlockShifts:
    """Displacements of a block of ``n`` frames.

    rigid : ``(n, ndim)`` float32 px; corr : ``(n,)`` float32 normalised peak correlation of
    the rigid registration; patch : ``(n, n_patches, ndim)`` float32 px or ``None``;
    patch_corr : ``(n, n_patches)`` float32 normalised peak correlation of each patch (how
    much its displacement can be trusted) or ``None``.
    """

    rigid: np.ndarray
    corr: np.ndarray
    patch: np.ndarray | None
    patch_corr: np.ndarray | None = None


def prepare_reference(template: np.ndarray, settings: Settings, pw_rigid: bool | None = None) -> Reference:
    """Prepare ``template`` for :func:`register_block` (``pw_rigid`` overrides the setting)."""
    pw = settings.pw_rigid if pw_rigid is None else pw_rigid
    plan = prepare_template(template, settings.max_shifts, settings.gSig_filt)
    patches = None
    if pw:
        grid = patch_grid(settings.dims, settings.strides, settings.overlaps)
        filt = high_pass(plan.template, plan.gSig_filt) if plan.gSig_filt else plan.template
        patches = prepare_patches(filt, grid, settings.max_deviation_rigid)
    return Reference(plan, patches)


def register_block(frames: np.ndarray, ref: Reference, settings: Settings, workers: int = 1) -> BlockShifts:
    """Displacements of ``frames`` (``(n, *dims)``) relative to ``ref``.

    Frames are processed in batches of :data:`BATCH_FRAMES`, so the temporary spectra stay
    small whatever ``n``.
    """
    n, ndim = len(frames), settings.ndim
    rigid = np.empty((n, ndim), dtype=np.float32)
    corr = np.empty(n, dtype=np.float32)
    patch = None if ref.patches is None else np.empty((n, ref.patches.grid.n_patches, ndim), dtype=np.float32)
    patch_corr = None if patch is None else np.empty(patch.shape[:2], dtype=np.float32)
    for b0 in range(0, n, BATCH_FRAMES):
        b1 = min(b0 + BATCH_FRAMES, n)
        x = np.asarray(frames[b0:b1], dtype=np.float32)
        if settings.gSig_filt is not None:
            x = high_pass(x, settings.gSig_filt, ndim)
        r, c = register_filtered(x, ref.plan, settings.upsample_factor, workers)
        rigid[b0:b1] = r
        corr[b0:b1] = c
        if patch is not None:
            aligned = np.stack([shift_frame(x[i], r[i], "copy") for i in range(len(x))])
            residual, pc = register_patches(aligned, ref.patches, settings.upsample_factor, workers)
            patch[b0:b1] = r[:, None, :] + residual
            patch_corr[b0:b1] = pc
    return BlockShifts(rigid, corr, patch, patch_corr)


def correct_block(frames: np.ndarray, rigid: np.ndarray, patch: np.ndarray | None, grid: PatchGrid | None,
                  border_mode: str) -> np.ndarray:
    """Apply displacements to ``frames`` (``(n, *dims)``): rigid ``(n, ndim)`` or, when ``patch``
    (``(n, n_patches, ndim)``) is given, the per-pixel field interpolated on ``grid``.
    Returns a new float32 array (temporaries are reused from frame to frame)."""
    out = np.empty(frames.shape, dtype=np.float32)
    tmp = np.empty(frames.shape[1:], dtype=np.float32)
    field = None if patch is None else np.empty((len(frames.shape) - 1, *frames.shape[1:]), dtype=np.float32)
    for i in range(len(frames)):
        src = np.ascontiguousarray(frames[i], dtype=np.float32)
        if patch is None:
            _shift_into(src, out[i], tmp, np.asarray(rigid[i], dtype=np.float64), border_mode)
        else:
            warp_frame(src, displacement_field(patch[i], grid, out=field), border_mode, out=out[i])
    return out
