"""Templates built from the data: per-chunk templates and the meta-template.

NoRMCorre builds its reference from the movie itself: a robust first guess (the median of
short-time averages), then iterations of "register the frames, take the median of the
registered frames". In parallel, each chunk of frames gets its own template; the chunk
templates are aligned to each other and their median is the *meta-template* that every frame
is finally registered to.
"""

from __future__ import annotations

import numpy as np

from .block import correct_block, prepare_reference, register_block
from .settings import Settings

#: Frames averaged before the median of a template (noise reduction of the median).
BIN_FRAMES = 10


def bin_median(frames: np.ndarray, bin_frames: int = BIN_FRAMES) -> np.ndarray:
    """Median over groups of ``bin_frames`` consecutive frames of their means.

    ``frames``: ``(n, *dims)``. Returns ``(*dims)`` float32. With fewer than two full groups
    this is the mean.
    """
    frames = np.asarray(frames, dtype=np.float32)
    n_bins = len(frames) // bin_frames
    if n_bins < 2:
        return frames.mean(axis=0, dtype=np.float64).astype(np.float32)
    binned = frames[: n_bins * bin_frames].reshape(n_bins, bin_frames, *frames.shape[1:]).mean(axis=1)
    return np.median(binned, axis=0).astype(np.float32)


def refine_template(frames: np.ndarray, template: np.ndarray, settings: Settings, *, pw_rigid: bool,
                    workers: int = 1) -> np.ndarray:
    """One iteration: register ``frames`` to ``template`` and return the median of the
    registered frames (binned, see :func:`bin_median`)."""
    ref = prepare_reference(template, settings, pw_rigid=pw_rigid)
    sh = register_block(frames, ref, settings, workers)
    corrected = correct_block(frames, sh.rigid, sh.patch, ref.grid, "copy")
    return bin_median(corrected)


def block_template(frames: np.ndarray, settings: Settings, workers: int = 1) -> np.ndarray:
    """Template of a block of frames (``(n, *dims)`` float32): the binned median, refined
    ``niter_rig`` times by rigid registration, then once piecewise-rigidly when
    ``pw_rigid``."""
    template = bin_median(frames)
    for _ in range(settings.niter_rig):
        template = refine_template(frames, template, settings, pw_rigid=False, workers=workers)
    if settings.pw_rigid:
        template = refine_template(frames, template, settings, pw_rigid=True, workers=workers)
    return template


def meta_template(templates: np.ndarray, settings: Settings, workers: int = 1) -> np.ndarray:
    """Combine chunk templates (``(k, *dims)``): align them rigidly to their median and return
    the median of the aligned templates (float32 ``(*dims)``)."""
    templates = np.asarray(templates, dtype=np.float32)
    if len(templates) == 1:
        return templates[0].copy()
    median = np.median(templates, axis=0).astype(np.float32)
    ref = prepare_reference(median, settings, pw_rigid=False)
    sh = register_block(templates, ref, settings, workers)
    aligned = correct_block(templates, sh.rigid, None, None, "copy")
    return np.median(aligned, axis=0).astype(np.float32)
