"""Figures for HTML reports (matplotlib with the Agg backend, imported only when drawing).

Every function here draws one PNG, saves it atomically with :func:`save_figure` (which also
closes the figure) and returns its path. Images are ``(H, W)`` arrays (volumes ``(Z, H, W)``
are shown as their maximum over planes); footprints are ``pixels × K`` matrices (sparse or
dense), pixels in C order of ``dims``; traces are ``K × T``; times are in seconds when a frame
rate (Hz) is known, else in frames.

Footprint outlines are traced on each footprint's bounding box only (``contourpy``, the
contouring library matplotlib itself uses) and drawn as one line collection per set, so
hundreds of components on a 512×512 field of view take well under a second.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io.atomic import atomic_path

#: Colours of the report: accepted, rejected, ground truth, neutral.
GREEN, RED, BLUE, GREY, AMBER = "#2fbf4a", "#f04a3e", "#4aa3ff", "#9aa3ad", "#ffb000"

_TITLES = {"mean": "mean", "max": "max", "std": "standard deviation", "corr": "correlation",
           "max_corr": "max-correlation", "pnr": "peak-to-noise ratio", "corr_pnr": "correlation (high-passed)"}
_GREY_IMAGES = ("mean", "max", "std")
#: Trace values binned at a time by :func:`activity_figure` (16 MiB of float32).
_BIN_ELEMENTS = 4 * 2**20


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def _time_axis(n_frames: int, frame_rate: float | None) -> tuple[np.ndarray, str]:
    t = np.arange(n_frames) / frame_rate if frame_rate else np.arange(n_frames, dtype=float)
    return t, ("time (s)" if frame_rate else "frame")


def _flat_image(img: np.ndarray) -> np.ndarray:
    """A 2-D view of an image: volumes ``(Z, H, W)`` become their max over planes."""
    img = np.asarray(img, dtype=np.float32)
    return img if img.ndim == 2 else np.nanmax(img, axis=0)


def _limits(img: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if not finite.size:
        return 0.0, 1.0
    a, b = np.percentile(finite, [lo, hi])
    return float(a), float(b if b > a else a + 1e-9)


# ------------------------------------------------------------------------- images
def image_panel(images: dict[str, np.ndarray], path: str | os.PathLike[str], *, cols: int = 3) -> Path:
    """A grid of named 2-D images (volumes shown as their max over planes), each with a colour
    bar; the names of :meth:`somascope.summary.SummaryImages.images` get readable titles."""
    plt = _pyplot()
    items = [(k, _flat_image(v)) for k, v in images.items() if v is not None]
    if not items:
        raise ValueError("image_panel needs at least one image; got none (all None or an empty dict).")
    cols = max(1, min(cols, len(items)))
    rows = -(-len(items) // cols)
    h, w = items[0][1].shape
    panel_w = 4.6 if max(h, w) >= 256 else 4.0
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, panel_w * h / w * rows + 0.4 * rows),
                             squeeze=False)
    for ax, (name, img) in zip(axes.ravel(), items):
        lo, hi = _limits(img)
        im = ax.imshow(img, cmap="gray" if name in _GREY_IMAGES else "magma", vmin=lo, vmax=hi,
                       interpolation="nearest")
        ax.set_title(_TITLES.get(name, name), fontsize=11)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    return save_figure(fig, path)


# ---------------------------------------------------------------------- contours
def project_footprints(A: Any, dims: Sequence[int]) -> tuple[Any, tuple[int, int]]:
    """Footprints of a volume ``(Z, H, W)`` as their maximum over planes: ``(H·W) × K`` CSC
    and ``(H, W)``. 2-D footprints come back unchanged (as CSC)."""
    from scipy import sparse

    A = sparse.csc_matrix(A)
    dims = tuple(int(d) for d in dims)
    if len(dims) == 2:
        return A, (dims[0], dims[1])
    plane = dims[1] * dims[2]
    coo = A.tocoo()
    pix = coo.row % plane
    order = np.lexsort((pix, coo.col))
    col, pix, val = coo.col[order], pix[order], coo.data[order]
    if not val.size:
        return sparse.csc_matrix((plane, A.shape[1]), dtype=A.dtype), (dims[1], dims[2])
    starts = np.flatnonzero(np.r_[True, (np.diff(col) != 0) | (np.diff(pix) != 0)])
    out = sparse.csc_matrix((np.maximum.reduceat(val, starts), (pix[starts], col[starts])),
                            shape=(plane, A.shape[1]))
    return out, (dims[1], dims[2])


def footprint_outlines(A: Any, dims: Sequence[int], level: float = 0.3,
                       peaks: np.ndarray | None = None) -> list[list[np.ndarray]]:
    """Outline of each footprint at ``level`` × its maximum (or × ``peaks[k]``, e.g. a volume's
    component peak when ``A`` is one plane of it): per component, a list of ``(n, 2)`` arrays
    of ``(x, y)`` = (column, row) pixel coordinates (empty for an empty footprint, or one that
    stays below the level). Volumes are outlined on their max over planes."""
    import contourpy

    A, (h, w) = project_footprints(A, dims)
    outlines: list[list[np.ndarray]] = []
    for k in range(A.shape[1]):
        rows = A.indices[A.indptr[k]:A.indptr[k + 1]]
        vals = np.asarray(A.data[A.indptr[k]:A.indptr[k + 1]], dtype=np.float64)
        top = (vals.max() if vals.size else 0.0) if peaks is None else float(peaks[k])
        if top <= 0 or not vals.size or vals.max() < level * top:
            outlines.append([])
            continue
        y, x = np.divmod(rows, w)
        y0, x0 = max(int(y.min()) - 1, 0), max(int(x.min()) - 1, 0)
        y1, x1 = min(int(y.max()) + 2, h), min(int(x.max()) + 2, w)
        crop = np.zeros((y1 - y0, x1 - x0))
        crop[y - y0, x - x0] = vals
        if min(crop.shape) < 2:  # a line of pixels: contour needs a 2-D grid
            crop = np.pad(crop, ((0, crop.shape[0] < 2), (0, crop.shape[1] < 2)))
        lines = contourpy.contour_generator(z=crop, line_type="Separate").lines(level * top)
        outlines.append([np.asarray(seg) + (x0, y0) for seg in lines if len(seg) > 1])
    return outlines


@dataclass
class OutlineSet:
    """One set of footprints for :func:`contour_figure`: ``A`` pixels × K, ``labels`` the
    numbers to print at each footprint's centre (None: none)."""

    label: str
    A: Any
    colour: str
    linestyle: str = "-"
    linewidth: float = 0.9
    labels: Sequence[int] | None = None


def _centres(A: Any, dims: Sequence[int]) -> np.ndarray:
    """Weighted centre ``(x, y)`` of each (projected) footprint, ``K × 2`` px."""
    A, (h, w) = project_footprints(A, dims)
    A = abs(A)
    total = np.asarray(A.sum(axis=0)).ravel()
    y, x = np.divmod(np.arange(h * w), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([np.asarray(A.T @ x).ravel() / total, np.asarray(A.T @ y).ravel() / total], axis=1)


def _draw_outlines(ax: Any, s: OutlineSet, outlines: list[list[np.ndarray]]) -> None:
    """Add one set's outlines (:func:`footprint_outlines`) to ``ax`` in its colour and style."""
    from matplotlib.collections import LineCollection

    segments = [seg for comp in outlines for seg in comp]
    ax.add_collection(LineCollection(segments, colors=s.colour, linewidths=s.linewidth, linestyles=s.linestyle))


def contour_figure(
    background: np.ndarray | None,
    sets: Sequence[OutlineSet],
    dims: Sequence[int],
    path: str | os.PathLike[str],
    *,
    level: float = 0.3,
    title: str = "",
    background_label: str = "",
) -> Path:
    """Outlines of footprint sets over an image, on a figure sized to the field of view
    (about 8 px of figure per 7 px of a 512-wide frame at 110 dpi), so that large fields of
    view stay readable."""

    plt = _pyplot()
    h, w = (int(dims[-2]), int(dims[-1]))
    width = float(np.clip(w / 45.0, 7.0, 12.5))
    fig, ax = plt.subplots(figsize=(width, width * h / w + 0.5))
    if background is not None:
        bg = _flat_image(background)
        lo, hi = _limits(bg)
        ax.imshow(bg, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    else:
        ax.imshow(np.zeros((h, w)), cmap="gray", vmin=0, vmax=1)
    handles = []
    for s in sets:
        outlines = footprint_outlines(s.A, dims, level)
        _draw_outlines(ax, s, outlines)
        (handle,) = ax.plot([], [], color=s.colour, ls=s.linestyle, lw=1.5, label=f"{s.label} ({len(outlines)})")
        handles.append(handle)
        if s.labels is not None and len(outlines):
            size = 7 if max(h, w) >= 256 else 6
            for (x, y), number in zip(_centres(s.A, dims), s.labels):
                if np.isfinite(x):
                    ax.text(x, y, str(number), color=s.colour, fontsize=size, ha="center", va="center",
                            fontweight="bold")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncols=len(handles),
                  fontsize=9, frameon=False)
    ax.set_title(title + (f" ({background_label})" if background_label else ""), fontsize=11)
    ax.axis("off")
    return save_figure(fig, path)


def plane_contours_figure(
    background: np.ndarray | None,
    sets: Sequence[OutlineSet],
    dims: Sequence[int],
    path: str | os.PathLike[str],
    *,
    level: float = 0.3,
    max_planes: int = 12,
    background_label: str = "",
) -> Path:
    """A volume plane by plane: each plane's image (``background`` ``Z × H × W``) with the
    outlines, in that plane, of the footprints that reach it at ``level`` × their peak over
    the whole volume (so a cell is outlined in the planes it occupies, not its faint edges).
    At most ``max_planes`` planes (evenly spaced) are drawn."""
    from scipy import sparse

    plt = _pyplot()
    dims = tuple(int(d) for d in dims)
    n_z, h, w = dims
    planes = np.unique(np.linspace(0, n_z - 1, min(n_z, max_planes)).round().astype(int))
    cols = min(4, planes.size)
    rows = -(-planes.size // cols)
    size = float(np.clip(12.0 / cols, 2.5, 5.0))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows * h / w + 0.6), squeeze=False)
    plane_px = h * w
    prepared = []
    for s in sets:
        A = sparse.csc_matrix(s.A)
        peaks = np.asarray(abs(A).max(axis=0).todense()).ravel() if A.shape[1] else np.zeros(0)
        prepared.append((s, A.tocsr(), peaks))
    for ax, z in zip(axes.ravel(), planes):
        if background is not None:
            img = np.asarray(background)[z] if np.ndim(background) == 3 else _flat_image(background)
            lo, hi = _limits(img)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        else:
            ax.imshow(np.zeros((h, w)), cmap="gray", vmin=0, vmax=1)
        for s, A, peaks in prepared:
            part = sparse.csc_matrix(A[z * plane_px:(z + 1) * plane_px])
            _draw_outlines(ax, s, footprint_outlines(part, (h, w), level, peaks=peaks))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"plane {z}", fontsize=10)
        ax.axis("off")
    for ax in axes.ravel()[planes.size:]:
        ax.axis("off")
    handles = [ax.plot([], [], color=s.colour, ls=s.linestyle, lw=1.5, label=s.label)[0] for s, _, _ in prepared]
    fig.legend(handles=handles, loc="lower center", ncols=max(1, len(handles)), fontsize=9, frameon=False)
    fig.suptitle("components plane by plane" + (f" ({background_label})" if background_label else ""), fontsize=11)
    return save_figure(fig, path)


def contour_panel(
    background: np.ndarray,
    footprint_sets: dict[str, tuple[Any, str]],
    dims: tuple[int, ...],
    path: str | os.PathLike[str],
    *,
    level: float = 0.3,
    title: str = "",
) -> Path:
    """Contours of footprints over an image.

    ``footprint_sets`` maps a legend label to ``(A, colour)`` with ``A`` pixels×K (sparse or
    dense, C-order pixels of ``dims``); each footprint is outlined at ``level`` × its max.
    """
    sets = [OutlineSet(label, A, colour) for label, (A, colour) in footprint_sets.items()]
    return contour_figure(background, sets, dims, path, level=level, title=title)


# ------------------------------------------------------------------------ traces
def trace_panel(
    traces: dict[str, np.ndarray], frame_rate: float | None, path: str | os.PathLike[str], *, n: int = 8,
    spikes: np.ndarray | None = None,
) -> Path:
    """Stacked example traces (first ``n`` rows of each K×T array), time in seconds when the
    frame rate is known; optional spike raster ticks (K×T counts)."""
    plt = _pyplot()
    first = next(iter(traces.values()))
    n = min(n, first.shape[0])
    t, xlabel = _time_axis(first.shape[1], frame_rate)
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.1 * n + 0.6), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        for label, arr in traces.items():
            ax.plot(t, arr[i], lw=0.8, label=label)
        if spikes is not None:
            hits = np.flatnonzero(spikes[i] > 0)
            top = max(float(np.max(first[i])), 1e-9)
            ax.plot(t[hits], np.full(hits.size, top * 1.05), "|", color="k", ms=4)
        ax.set_ylabel(f"#{i}", rotation=0, ha="right", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncols=len(traces))
    axes[-1, 0].set_xlabel(xlabel)
    return save_figure(fig, path)


@dataclass
class TraceExample:
    """One component of :func:`example_traces_figure`; each trace is ``(T,)`` or None."""

    title: str
    raw: np.ndarray | None = None
    denoised: np.ndarray | None = None
    dff: np.ndarray | None = None
    spikes: np.ndarray | None = None


def example_traces_figure(examples: Sequence[TraceExample], frame_rate: float | None,
                          path: str | os.PathLike[str]) -> Path:
    """A grid of small multi-row panels, one per component: fluorescence (raw in grey, denoised
    in colour), ΔF/F, and the deconvolved activity as a stem strip (height ∝ amplitude)."""
    plt = _pyplot()
    if not examples:
        raise ValueError("example_traces_figure needs at least one example.")
    ncols = 1 if len(examples) <= 2 else 2
    nrows = math.ceil(len(examples) / ncols)
    strips = [name for name in ("fluorescence", "dff", "spikes")
              if any(_strip(e, name) is not None for e in examples)]
    ratios = {"fluorescence": 3.0, "dff": 2.0, "spikes": 0.8}
    block_h = sum(ratios[s] for s in strips) * 0.42 + 0.7
    fig = plt.figure(figsize=(7.2 * ncols, block_h * nrows))
    outer = fig.add_gridspec(nrows, ncols, hspace=0.42, wspace=0.12)
    for i, ex in enumerate(examples):
        inner = outer[i // ncols, i % ncols].subgridspec(len(strips), 1, hspace=0.1,
                                                           height_ratios=[ratios[s] for s in strips])
        axes = [fig.add_subplot(inner[j]) for j in range(len(strips))]
        for ax in axes[1:]:
            ax.sharex(axes[0])
        n_frames = next(len(a) for a in (ex.raw, ex.denoised, ex.dff, ex.spikes) if a is not None)
        t, xlabel = _time_axis(n_frames, frame_rate)
        for ax, strip in zip(axes, strips):
            _draw_strip(ax, strip, ex, t)
            ax.tick_params(labelsize=7)
            if ax is not axes[-1]:
                ax.tick_params(labelbottom=False)
        axes[0].set_title(ex.title, fontsize=9, loc="left")
        axes[-1].set_xlabel(xlabel, fontsize=8)
        axes[0].set_xlim(t[0], t[-1] if len(t) > 1 else 1)
    return save_figure(fig, path)


def _strip(ex: TraceExample, name: str) -> np.ndarray | None:
    if name == "fluorescence":
        return ex.raw if ex.raw is not None else ex.denoised
    return ex.dff if name == "dff" else ex.spikes


def _draw_strip(ax: Any, strip: str, ex: TraceExample, t: np.ndarray) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if strip == "fluorescence":
        if ex.raw is not None:
            ax.plot(t, ex.raw, lw=0.6, color=GREY, label="raw")
        if ex.denoised is not None:
            ax.plot(t, ex.denoised, lw=0.9, color="#1f6feb", label="denoised C")
        ax.set_ylabel("F (a.u.)", fontsize=8)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.98), fontsize=7, frameon=False, ncols=2,
                  borderaxespad=0.0)
    elif strip == "dff" and ex.dff is not None:
        ax.plot(t, ex.dff, lw=0.8, color="#8250df")
        ax.set_ylabel("ΔF/F", fontsize=8)
    elif strip == "spikes" and ex.spikes is not None:
        s = np.asarray(ex.spikes, dtype=np.float64)
        top = float(np.nanmax(s)) if s.size and np.nanmax(s) > 0 else 1.0
        hits = np.flatnonzero(s > 0)
        ax.vlines(t[hits], 0, s[hits] / top, color="k", lw=0.7)
        ax.set_ylim(0, 1.08)
        ax.set_yticks([])
        ax.set_ylabel("S", fontsize=8)
    if strip != "fluorescence" and _strip(ex, strip) is None:
        ax.text(0.5, 0.5, "not computed", transform=ax.transAxes, ha="center", va="center", fontsize=7, color=GREY)


def activity_figure(traces: np.ndarray, frame_rate: float | None, path: str | os.PathLike[str], *,
                    label: str, max_columns: int = 2000, order: np.ndarray | None = None) -> Path:
    """Heat map of ``traces`` (``K × T``, one row per component, in the given order, or the rows
    ``order``); frames are averaged in bins when ``T > max_columns``. Each row is scaled to its
    own 99.5th percentile so that weak and strong cells are both visible."""
    plt = _pyplot()
    order = np.arange(np.shape(traces)[0]) if order is None else np.asarray(order, np.int64)
    k, n_frames = order.size, np.shape(traces)[1]
    step = max(1, math.ceil(n_frames / max_columns))
    usable = (n_frames // step) * step
    X = np.empty((k, usable // step), np.float32)
    rows = max(1, _BIN_ELEMENTS // max(n_frames, 1))
    for r0 in range(0, k, rows):  # binned a few rows at a time (a long recording's K × T is large)
        block = np.nan_to_num(np.asarray(traces[order[r0:r0 + rows], :usable], dtype=np.float32))
        X[r0:r0 + rows] = block.reshape(block.shape[0], -1, step).mean(axis=2) if step > 1 else block
    scale = np.percentile(X, 99.5, axis=1, keepdims=True) if X.size else np.ones((k, 1))
    X = np.clip(X / np.where(scale > 0, scale, 1.0), -0.2, 1.0)
    duration = n_frames / frame_rate if frame_rate else n_frames
    fig, ax = plt.subplots(figsize=(12, float(np.clip(1.8 + k / 60.0, 2.5, 8.0))))
    im = ax.imshow(X, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                   extent=(0, duration, k - 0.5, -0.5))
    ax.set_xlabel("time (s)" if frame_rate else "frame")
    ax.set_ylabel("component (rank)")
    ax.set_title(label, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="fraction of the row's 99.5th pct.")
    return save_figure(fig, path)


# ----------------------------------------------------------------------- quality
def _log_scale(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return bool(v.size and v.min() > 0 and v.max() / v.min() > 20)


def _hist(ax: Any, values: np.ndarray, accepted: np.ndarray, lines: Mapping[str, float | None],
          xlabel: str, *, log: bool = False) -> None:
    ok = np.isfinite(values)
    acc, rej = values[ok & accepted], values[ok & ~accepted]
    v = values[ok]
    if not v.size:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        return
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.geomspace(lo, hi, 41) if log else np.linspace(lo, hi, 41)
    ax.hist([acc, rej], bins=bins, stacked=True, color=[GREEN, RED], label=[f"accepted ({acc.size})",
                                                                            f"rejected ({rej.size})"])
    if log:
        ax.set_xscale("log")
    _threshold_lines(ax, lines, vertical=True)
    missing = int((~ok).sum())
    ax.set_xlabel(xlabel + (f"  ({missing} without a value)" if missing else ""), fontsize=9)
    ax.set_ylabel("components", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, frameon=False)


def _threshold_lines(ax: Any, lines: Mapping[str, float | None], *, vertical: bool) -> None:
    for i, (name, value) in enumerate(lines.items()):
        if value is None or not np.isfinite(value):
            continue
        style = dict(color="k", lw=1.0, ls="-" if i == 0 else "--")
        (ax.axvline if vertical else ax.axhline)(value, **style)
        if vertical:
            ax.text(value, 1.0, f" {name}={value:g}", transform=ax.get_xaxis_transform(), fontsize=7,
                    rotation=90, va="top", ha="right")
        else:
            ax.text(1.0, value, f"{name}={value:g} ", transform=ax.get_yaxis_transform(), fontsize=7,
                    va="bottom", ha="right")


def quality_figure(metrics: Mapping[str, np.ndarray | None], accepted: np.ndarray,
                   thresholds: Mapping[str, float | None], path: str | os.PathLike[str]) -> Path:
    """Histograms of the quality metrics (``"snr"``, ``"r"``, ``"cnn"`` → ``(K,)`` or None),
    accepted (green) stacked on rejected (red), with the acceptance thresholds (solid) and the
    lowest allowed values (dashed); then SNR against r-value. ``accepted``: ``(K,)`` bool.
    ``thresholds`` keys: min_SNR, SNR_lowest, rval_thr, rval_lowest, min_cnn_thr, cnn_lowest."""
    plt = _pyplot()
    snr, r, cnn = (None if metrics.get(k) is None else np.asarray(metrics[k], dtype=np.float64)
                   for k in ("snr", "r", "cnn"))
    panels = [p for p, v in (("snr", snr), ("r", r), ("cnn", cnn)) if v is not None]
    if snr is not None and r is not None:
        panels.append("scatter")
    if not panels:
        raise ValueError("quality_figure needs at least one of the SNR, r-value or CNN metrics.")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.5), squeeze=False,
                             constrained_layout=True)
    th = thresholds
    for ax, panel in zip(axes[0], panels):
        if panel == "snr":
            _hist(ax, snr, accepted, {"min_SNR": th.get("min_SNR"), "SNR_lowest": th.get("SNR_lowest")}, "trace SNR",
                  log=_log_scale(snr))
        elif panel == "r":
            _hist(ax, r, accepted, {"rval_thr": th.get("rval_thr"), "rval_lowest": th.get("rval_lowest")},
                  "spatial consistency (r-value)")
        elif panel == "cnn":
            _hist(ax, cnn, accepted, {"min_cnn_thr": th.get("min_cnn_thr"), "cnn_lowest": th.get("cnn_lowest")},
                  "CNN probability")
        else:
            ok = np.isfinite(snr) & np.isfinite(r)
            for mask, colour, name in ((accepted, GREEN, "accepted"), (~accepted, RED, "rejected")):
                ax.scatter(snr[ok & mask], r[ok & mask], s=9, color=colour, alpha=0.7, lw=0, label=name)
            if _log_scale(snr):
                ax.set_xscale("log")
            _threshold_lines(ax, {"min_SNR": th.get("min_SNR")}, vertical=True)
            _threshold_lines(ax, {"rval_thr": th.get("rval_thr")}, vertical=False)
            ax.set_xlabel("trace SNR", fontsize=9)
            ax.set_ylabel("r-value", fontsize=9)
            ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.tick_params(labelsize=8)
    return save_figure(fig, path)


# ------------------------------------------------------------------------- stages
def stages_figure(names: Sequence[str], seconds: Sequence[float], peak_bytes: Sequence[int | None],
                  reused: Sequence[bool], path: str | os.PathLike[str]) -> Path:
    """Horizontal bars: wall time per stage (reused stages hatched grey) and, when known, the
    peak memory of the whole process tree during each stage (GiB)."""
    plt = _pyplot()
    n = len(names)
    has_mem = any(p is not None for p in peak_bytes)
    fig, axes = plt.subplots(1, 2 if has_mem else 1, figsize=(11 if has_mem else 8, 0.42 * n + 1.3),
                             squeeze=False, sharey=True, gridspec_kw={"width_ratios": [3, 2] if has_mem else [1]},
                             constrained_layout=True)
    y = np.arange(n)
    secs = np.asarray(seconds, dtype=np.float64)
    ax = axes[0, 0]
    colours = [GREY if r else "#1f6feb" for r in reused]
    bars = ax.barh(y, secs, color=colours, hatch=None)
    for bar, r in zip(bars, reused):
        if r:
            bar.set_hatch("//")
    right = float(secs.max()) if n and secs.max() > 0 else 1.0
    for yi, s, r in zip(y, secs, reused):
        ax.text(s + 0.01 * right, yi, f"{format_duration(s)}" + ("  (reused)" if r else ""), va="center", fontsize=8)
    ax.set_xlim(0, right * 1.3)
    ax.set_yticks(y, list(names), fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("wall time (s)")
    ax.set_title(f"time per stage (total {format_duration(float(secs.sum()))})", fontsize=10)
    if has_mem:
        ax2 = axes[0, 1]
        gib = np.array([np.nan if p is None else p / 2**30 for p in peak_bytes])
        ax2.barh(y, np.nan_to_num(gib), color="#bf8700")
        top = float(np.nanmax(gib)) if np.isfinite(gib).any() else 1.0
        for yi, g in zip(y, gib):
            ax2.text((0 if np.isnan(g) else g) + 0.01 * top, yi, "n/a" if np.isnan(g) else f"{g:.2f} GiB",
                     va="center", fontsize=8)
        ax2.set_xlim(0, top * 1.35 if top > 0 else 1)
        ax2.set_xlabel("peak memory, whole process tree (GiB)")
        ax2.set_title("peak memory per stage", fontsize=10)
    return save_figure(fig, path)


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``; ``n/a`` when not finite."""
    if not np.isfinite(seconds):
        return "n/a"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
