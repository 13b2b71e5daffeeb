"""Figures of a motion-correction result for reports (matplotlib, imported only when called)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .result import MotionResult

_AXES = ("z", "y", "x")


def plot_shifts(result: MotionResult, *, frame_rate: float | None = None, ax: Any = None) -> Any:
    """Displacements over time: one line per axis (rigid), with the range over patches shaded
    in pw-rigid mode. Time in s when ``frame_rate`` (Hz) is given, else in frames.

    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3), constrained_layout=True)
    else:
        fig = ax.figure
    n, ndim = result.shifts.shape
    t = np.arange(n) / frame_rate if frame_rate else np.arange(n)
    names = _AXES[-ndim:]
    for a in range(ndim):
        (line,) = ax.plot(t, result.shifts[:, a], lw=1, label=f"d{names[a]}")
        if result.patch_shifts is not None:
            ax.fill_between(t, result.patch_shifts[:, :, a].min(axis=1), result.patch_shifts[:, :, a].max(axis=1),
                            color=line.get_color(), alpha=0.25, lw=0)
    ax.set_xlabel("time (s)" if frame_rate else "frame")
    ax.set_ylabel("displacement (px)")
    kind = "rigid and patch range" if result.patch_shifts is not None else "rigid"
    ax.set_title(f"Motion ({kind}); border_pix = {tuple(result.border_pix)}")
    ax.legend(loc="upper right", fontsize="small", ncol=ndim)
    return fig


def plot_quality(result: MotionResult, *, frame_rate: float | None = None) -> Any:
    """Frame–template correlation over time and the mean image before / after correction
    (the middle plane of volumes). Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 5.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 2))
    ax = fig.add_subplot(grid[0, :])
    n = len(result.frame_corr)
    t = np.arange(n) / frame_rate if frame_rate else np.arange(n)
    ax.plot(t, result.frame_corr, lw=0.8)
    ax.set_xlabel("time (s)" if frame_rate else "frame")
    ax.set_ylabel("corr. with template")
    m = result.metrics
    for k, (img, title) in enumerate(((result.mean_raw, f"mean, raw (crispness {m.get('crispness_raw', np.nan):.4g})"),
                                      (result.mean_image,
                                       f"mean, corrected (crispness {m.get('crispness_corrected', np.nan):.4g})"))):
        a = fig.add_subplot(grid[1, k])
        shown = img[img.shape[0] // 2] if img.ndim == 3 else img
        finite = shown[np.isfinite(shown)]
        lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
        a.imshow(shown, cmap="gray", vmin=lo, vmax=hi)
        a.set_title(title, fontsize="small")
        a.set_axis_off()
    return fig
