"""HTML reports: a page of figures and tables a person would rather look at than read.

A report is a list of :class:`Section` objects (a heading, optional key/value table, figures
and free text) written to one self-contained folder: ``report.html`` plus the PNG figures it
shows. The page is written atomically. Figures are made with matplotlib (Agg backend, imported
only here and only when a figure is drawn).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io.atomic import atomic_path, atomic_write_text


@dataclass
class Section:
    """One part of a report: ``table`` rows are (label, value); ``figures`` are
    (file name relative to the report folder, caption)."""

    title: str
    table: list[tuple[str, Any]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d2330;padding:0 1rem} h1{margin-bottom:.2rem} .sub{color:#667;margin-top:0}
section{margin:2rem 0;border-top:1px solid #dde;padding-top:1rem}
table{border-collapse:collapse;font-size:.92rem} td{padding:.2rem .8rem;border-bottom:1px solid #eef}
td:first-child{color:#556} .figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;max-width:100%} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#556;max-width:560px}
"""


def write_report(folder: str | os.PathLike[str], title: str, sections: list[Section], *, subtitle: str = "") -> Path:
    """Write ``folder/report.html`` showing ``sections``; returns its path.

    Figures must already be saved inside ``folder`` (see :func:`save_figure`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>{html.escape(subtitle)}</p>" if subtitle else "",
    ]
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        if sec.table:
            rows = "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_format(v))}</td></tr>" for k, v in sec.table
            )
            parts.append(f"<table>{rows}</table>")
        if sec.figures:
            parts.append("<div class='figs'>")
            for name, caption in sec.figures:
                if not (folder / name).exists():
                    raise FileNotFoundError(f"report figure {folder / name} is missing; save it before writing the report")
                parts.append(
                    f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return atomic_write_text(folder / "report.html", "\n".join(parts))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " × ".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def image_panel(images: dict[str, np.ndarray], path: str | os.PathLike[str], *, cols: int = 3) -> Path:
    """A grid of named 2-D images (volumes shown as their max over planes), each with a colour bar."""
    plt = _pyplot()
    items = [(k, v if v.ndim == 2 else v.max(axis=0)) for k, v in images.items() if v is not None]
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, img) in zip(axes.ravel(), items):
        lo, hi = np.percentile(img, [1, 99.5])
        im = ax.imshow(img, cmap="gray" if name in ("mean", "max", "std") else "magma", vmin=lo, vmax=hi)
        ax.set_title(name)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 7 * dims[0] / dims[1]))
    lo, hi = np.percentile(background, [1, 99.5])
    ax.imshow(background, cmap="gray", vmin=lo, vmax=hi)
    for label, (A, colour) in footprint_sets.items():
        A = A.tocsc() if hasattr(A, "tocsc") else np.asarray(A)
        for k in range(A.shape[1]):
            col = A[:, k].toarray().ravel() if hasattr(A, "toarray") else A[:, k]
            img = col.reshape(dims)
            if img.max() > 0:
                ax.contour(img, levels=[level * img.max()], colors=[colour], linewidths=0.8)
        ax.plot([], [], color=colour, label=f"{label} ({A.shape[1]})")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(title)
    ax.axis("off")
    return save_figure(fig, path)


def trace_panel(
    traces: dict[str, np.ndarray], frame_rate: float | None, path: str | os.PathLike[str], *, n: int = 8,
    spikes: np.ndarray | None = None,
) -> Path:
    """Stacked example traces (first ``n`` rows of each K×T array), time in seconds when the
    frame rate is known; optional spike raster ticks (K×T counts)."""
    plt = _pyplot()
    first = next(iter(traces.values()))
    n = min(n, first.shape[0])
    t = np.arange(first.shape[1]) / (frame_rate or 1.0)
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
    axes[-1, 0].set_xlabel("time (s)" if frame_rate else "frame")
    return save_figure(fig, path)
