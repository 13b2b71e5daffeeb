"""Writing a multi-day registration: ``assignments.csv``, ``register.h5``, ``report.html``."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .register import MultiResult

log = logging.getLogger(__name__)

__all__ = ["contour_figure", "write_all", "write_csv", "write_h5", "write_report"]

CSV_FILE = "assignments.csv"
H5_FILE = "register.h5"
REPORT_FILE = "report.html"
FIGURE_FILE = "union_contours.png"


def write_csv(multi: MultiResult, path: Path) -> Path:
    """One row per union cell: ``cell``, ``n_sessions``, then each session's component index
    (-1 where absent), with the session names as column headers."""
    header = ["cell", "n_sessions", *multi.names]
    rows = [",".join(header)]
    counts = multi.n_sessions_per_cell
    for u in range(multi.n_union):
        rows.append(",".join(str(v) for v in (u, int(counts[u]), *multi.assignments[:, u])))
    path.write_text("\n".join(rows) + "\n")
    return path


def write_h5(multi: MultiResult, path: Path, sources: Sequence[str] = ()) -> Path:
    """``/assignments`` (sessions × union, int64), ``/union_A`` (CSC parts ``data``, ``indices``,
    ``indptr``, attrs ``shape``, ``dims``), ``/alignment/<name>`` (rigid shift, flow),
    ``/traces/<name>`` (union × T raw traces, where computed), ``/denoised/<name>`` and
    ``/spikes/<name>`` (OASIS); attrs ``sessions`` and ``sources`` (JSON)."""
    import h5py

    A = multi.union_A.tocsc()
    with h5py.File(path, "w") as fh:
        fh.attrs["format"] = "somascope-multiday"
        fh.attrs["sessions"] = json.dumps(list(multi.names))
        fh.attrs["sources"] = json.dumps([str(s) for s in sources])
        fh.create_dataset("assignments", data=multi.assignments)
        g = fh.create_group("union_A")
        for name in ("data", "indices", "indptr"):
            g.create_dataset(name, data=getattr(A, name))
        g.attrs["shape"] = np.asarray(A.shape, np.int64)
        g.attrs["dims"] = np.asarray(multi.dims, np.int64)
        ga = fh.create_group("alignment")
        for name, al in zip(multi.names, multi.alignments):
            s = ga.create_group(name)
            s.create_dataset("rigid", data=al.rigid)
            s.create_dataset("flow", data=al.flow, compression="gzip")
            s.attrs["corr_before"], s.attrs["corr_after"] = al.corr_before, al.corr_after
        for group, series in (("traces", multi.traces), ("denoised", multi.denoised), ("spikes", multi.spikes)):
            if series is None or all(C is None for C in series):
                continue
            gt = fh.create_group(group)
            for name, C in zip(multi.names, series):
                if C is not None:
                    gt.create_dataset(name, data=np.asarray(C, np.float32))
    return path


def contour_figure(multi: MultiResult, path: Path) -> Path:
    """PNG of the union cells' contours on session 0's template, coloured by the number of
    sessions each cell was found in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import MASK_FRAC, binarise_footprints

    n = len(multi.names)
    counts = multi.n_sessions_per_cell
    masks = binarise_footprints(multi.union_A, multi.dims, MASK_FRAC, largest_piece=True).tocsc()
    cmap = plt.get_cmap("cool", n)
    fig, ax = plt.subplots(figsize=(7, 7 * multi.dims[0] / max(multi.dims[1], 1) + 0.6))
    ax.imshow(multi.templates[0], cmap="gray")
    for u in range(multi.n_union):
        img = np.zeros(multi.dims[0] * multi.dims[1])
        img[masks.indices[masks.indptr[u]:masks.indptr[u + 1]]] = 1.0
        if img.any():
            ax.contour(img.reshape(multi.dims), levels=[0.5], colors=[cmap(int(counts[u]) - 1)], linewidths=1.0)
    handles = [plt.Line2D([], [], color=cmap(k), label=f"{k + 1} session{'s' if k else ''}") for k in range(n)]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
    ax.set_axis_off()
    ax.set_title(f"{multi.n_union} cells over {n} sessions (reference: {multi.names[0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(multi: MultiResult, path: Path, figure: str | None) -> Path:
    """A small HTML page: the contour figure, cells per session, per-pair counts, alignments."""
    e = html.escape
    counts = np.bincount(multi.n_sessions_per_cell, minlength=len(multi.names) + 1)[1:]
    rows_s = "".join(
        f"<tr><td>{e(n)}</td><td>{int((multi.assignments[i] >= 0).sum())}</td>"
        f"<td>{al.rigid[0]:.2f}, {al.rigid[1]:.2f}</td><td>{al.nonrigid_max:.2f}</td>"
        f"<td>{al.corr_before:.2f} → {al.corr_after:.2f}</td></tr>"
        for i, (n, al) in enumerate(zip(multi.names, multi.alignments)))
    rows_p = "".join(f"<tr><td>{e(r['a'])}</td><td>{e(r['b'])}</td><td>{r['n_a']}</td><td>{r['n_b']}</td>"
                     f"<td>{r['matched']}</td></tr>" for r in multi.pair_counts())
    rows_c = "".join(f"<tr><td>{k + 1}</td><td>{int(c)}</td></tr>" for k, c in enumerate(counts))
    img = f'<img src="{e(figure)}" alt="union contours" style="max-width:100%">' if figure else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>somascope register</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Multi-day registration</h1><p>{multi.n_union} union cells over {len(multi.names)} sessions;
reference frame: {e(multi.names[0])}.</p>{img}
<h2>Sessions</h2><table><tr><th>session</th><th>cells</th><th>rigid shift (dy, dx) px</th>
<th>non-rigid max px</th><th>template corr</th></tr>{rows_s}</table>
<h2>Pairs</h2><table><tr><th>A</th><th>B</th><th>cells A</th><th>cells B</th><th>in both</th></tr>{rows_p}</table>
<h2>Cells by number of sessions</h2><table><tr><th>sessions</th><th>cells</th></tr>{rows_c}</table>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_all(multi: MultiResult, out: Path, sources: Sequence[str] = ()) -> dict[str, Path]:
    """Every output file in ``out`` (created if needed); returns name → path."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": write_csv(multi, out / CSV_FILE), "h5": write_h5(multi, out / H5_FILE, sources)}
    figure = None
    try:
        files["figure"] = contour_figure(multi, out / FIGURE_FILE)
        figure = FIGURE_FILE
    except ImportError as exc:  # matplotlib is optional
        log.warning("no contour figure (%s); the report has tables only", exc)
    files["report"] = write_report(multi, out / REPORT_FILE, figure)
    return files
