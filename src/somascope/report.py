"""HTML reports: a page of figures and tables a person would rather look at than read.

A report is a list of :class:`Section` objects (a heading, headline numbers, tables, figures,
notes and preformatted text) written to one self-contained folder: ``report.html`` plus the
PNG figures it shows. The page is written atomically, after its figures. Figures are drawn
by :mod:`somascope.report_figures` (matplotlib, Agg backend, imported only when drawing).

:func:`write_run_report` builds the report of one pipeline run from its results; it also
writes ``report.json`` with the headline numbers, the accuracy (when a ground truth is given)
and the stage records, for scripts and benchmarks.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io.atomic import atomic_write_text
from .report_figures import (  # noqa: F401  (re-exported: the report's figure helpers)
    AMBER, BLUE, GREEN, RED, OutlineSet, TraceExample, activity_figure, contour_figure, contour_panel,
    example_traces_figure, format_duration, image_panel, plane_contours_figure, quality_figure, save_figure,
    stages_figure,
    trace_panel,
)

__all__ = ["Section", "write_report", "write_run_report", "save_figure", "image_panel", "contour_panel",
           "trace_panel"]

log = logging.getLogger(__name__)


@dataclass
class Section:
    """One part of a report, shown in this order: ``cards`` (headline numbers: (label, value)
    or (label, value, detail)), ``note`` (a highlighted remark), ``text``, ``table`` (rows
    (label, value)), ``columns`` + ``rows`` (a table with a header), ``figures`` ((file name
    relative to the report folder, caption)) and ``code`` (preformatted text)."""

    title: str
    table: list[tuple[str, Any]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    cards: list[tuple[Any, ...]] = field(default_factory=list)
    note: str = ""
    columns: Sequence[str] = ()
    rows: list[Sequence[Any]] = field(default_factory=list)
    code: str = ""


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1240px;
color:#1d2330;padding:0 1rem} h1{margin-bottom:.2rem} .sub{color:#667;margin-top:0}
nav{font-size:.85rem;margin:.6rem 0 1rem} nav a{margin-right:.9rem;color:#0969da;text-decoration:none}
section{margin:2rem 0;border-top:1px solid #dde;padding-top:1rem}
table{border-collapse:collapse;font-size:.92rem;margin:.4rem 0 1rem} td,th{padding:.2rem .8rem;
border-bottom:1px solid #eef;text-align:left} th{color:#556;font-weight:600} td:first-child{color:#556}
td.num{text-align:right;font-variant-numeric:tabular-nums} .figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;max-width:100%} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#556;max-width:760px}
.cards{display:flex;flex-wrap:wrap;gap:.8rem} .card{border:1px solid #dde;border-radius:8px;
padding:.6rem 1rem;min-width:8.5rem} .card .num{font-size:1.9rem;font-weight:650}
.card .lbl{color:#556;font-size:.85rem} .card .det{color:#889;font-size:.78rem}
#card-accepted .num{color:#1a7f37} #card-rejected .num{color:#cf222e}
.note{background:#fff8c5;border:1px solid #e9d77a;border-radius:6px;padding:.6rem .9rem}
pre{background:#f6f8fa;border:1px solid #e6e8eb;padding:.8rem;font-size:.8rem;overflow:auto;max-height:38rem}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def write_report(folder: str | os.PathLike[str], title: str, sections: list[Section], *, subtitle: str = "") -> Path:
    """Write ``folder/report.html`` showing ``sections``; returns its path.

    Figures must already be saved inside ``folder`` (see :func:`save_figure`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    e = html.escape
    nav = " ".join(f"<a href='#{_slug(s.title)}'>{e(s.title)}</a>" for s in sections)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='sub'>{e(subtitle)}</p>" if subtitle else "",
        f"<nav>{nav}</nav>" if len(sections) > 2 else "",
    ]
    for sec in sections:
        parts.append(f"<section id='{_slug(sec.title)}'><h2>{e(sec.title)}</h2>")
        if sec.cards:
            parts.append("<div class='cards'>")
            for label, value, *detail in sec.cards:
                det = f"<div class='det'>{e(str(detail[0]))}</div>" if detail and detail[0] else ""
                parts.append(f"<div class='card' id='card-{_slug(str(label))}'>"
                             f"<div class='num'>{e(_format(value))}</div>"
                             f"<div class='lbl'>{e(str(label))}</div>{det}</div>")
            parts.append("</div>")
        if sec.note:
            parts.append(f"<p class='note'>{e(sec.note)}</p>")
        if sec.text:
            parts.append(f"<p>{e(sec.text)}</p>")
        if sec.table:
            rows = "".join(f"<tr><td>{e(str(k))}</td><td>{e(_format(v))}</td></tr>" for k, v in sec.table)
            parts.append(f"<table>{rows}</table>")
        if sec.rows:
            head = "".join(f"<th>{e(str(c))}</th>" for c in sec.columns)
            body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in sec.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if sec.figures:
            parts.append("<div class='figs'>")
            for name, caption in sec.figures:
                if not (folder / name).exists():
                    raise FileNotFoundError(f"report figure {folder / name} is missing; "
                                            "save it before writing the report")
                parts.append(f"<figure><img src='{e(name)}' alt='{e(caption)}'>"
                             f"<figcaption>{e(caption)}</figcaption></figure>")
            parts.append("</div>")
        if sec.code:
            parts.append(f"<pre>{e(sec.code)}</pre>")
        parts.append("</section>")
    parts.append("</body></html>")
    return atomic_write_text(folder / "report.html", "\n".join(parts))


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    text = html.escape(_format(value))
    return f"<td class='num'>{text}</td>" if numeric else f"<td>{text}</td>"


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value):
        return " × ".join(f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in value)
    return str(value)


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# =====================================================================================
# The run report
# =====================================================================================


@dataclass
class _Run:
    """The inputs of :func:`write_run_report`, checked, with what the sections share."""

    folder: Path
    est: Any
    params: Any
    summary: Any
    motion: Any
    stages: list[dict[str, Any]]
    movie_info: dict[str, Any]
    truth: dict[str, Any] | None
    n_examples: int
    accepted: np.ndarray
    rejected: np.ndarray
    frame_rate: float | None
    accuracy: dict[str, Any] | None = None
    examples: np.ndarray | None = None
    accuracy_error: str = ""
    structural: dict[str, Any] | None = None


def write_run_report(folder: str | os.PathLike[str], *, estimates: Any, params: Any, summary: Any = None,
                     motion: Any = None, stages: Sequence[Mapping[str, Any]] = (),
                     movie_info: Mapping[str, Any] | None = None, truth: Mapping[str, Any] | None = None,
                     title: str = "somascope run", n_examples: int = 8,
                     structural: Mapping[str, Any] | None = None) -> Path:
    """Write the HTML report of one pipeline run into ``folder``; returns ``folder/report.html``.

    Parameters
    ----------
    folder : created if needed; receives ``report.html``, its PNG figures and ``report.json``.
    estimates : :class:`~somascope.cnmf.estimates.Estimates` (evaluated or not); any of C, S,
        YrA, bl, F_dff, SNR_comp, r_values, cnn_preds may be None and its part is skipped.
    params : :class:`~somascope.params.Params` used (or None).
    summary : :class:`~somascope.summary.SummaryImages` or None.
    motion : :class:`~somascope.motion.result.MotionResult` or None.
    stages : dicts ``{"stage": str, "seconds": float, "peak_rss_bytes": int | None,
        "reused": bool, "detail": str}`` (the last three optional), in run order.
    movie_info : label → value shown in the "Movie" table (path, shape, dtype, rate, size).
    truth : for simulated data, ``{"A": pixels × K_true footprints in the frame of the
        estimates (i.e. of the corrected movie), "somata": indices of the true cells to score
        against (default all), "C": K_true × T traces (optional)}``.
    title : page title.  n_examples : accepted components shown as example traces.
    structural : with a structural channel, ``{"image": its image (dims), "masks": pixels × K
        seed masks}``: shown with the masks outlined, and the seeds' fate counted.

    Sections: headline numbers, movie, accuracy against the ground truth, summary images,
    component contours, example traces and an activity map, motion, quality tests, run
    (time and peak memory per stage) and parameters. K = 0 and absent inputs render with a
    note. A section whose figure fails to draw shows the error instead (and logs it).
    """
    run = _check_inputs(Path(folder), estimates, params, summary, motion, stages, movie_info, truth, n_examples)
    run.structural = dict(structural) if structural is not None else None
    run.folder.mkdir(parents=True, exist_ok=True)
    if run.truth is not None:
        try:
            run.accuracy = _score(run)
        except Exception as err:  # e.g. NaN in the estimates: report it, keep the rest
            log.warning("the estimates could not be scored against the ground truth", exc_info=True)
            run.accuracy_error = f"{type(err).__name__}: {err}"
    builders: list[tuple[str, Callable[[_Run], Section | None]]] = [
        ("At a glance", _headline), ("Movie", _movie), ("Accuracy against the ground truth", _accuracy_section),
        ("Summary images", _summary_section), ("Structural channel", _structural_section),
        ("Components", _components_section),
        ("Example traces", _traces_section), ("Motion correction", _motion_section),
        ("Quality tests", _quality_section), ("Run", _run_section), ("Parameters", _params_section),
    ]
    sections = [s for s in (_guarded(name, fn, run) for name, fn in builders) if s is not None]
    atomic_write_text(run.folder / "report.json", json.dumps(_record(run, sections), indent=2, default=_plain) + "\n")
    source = run.movie_info.get("path") or run.movie_info.get("movie") or (run.est.provenance or {}).get("input_path")
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    subtitle = " · ".join(str(x) for x in (source, f"written {when}", f"somascope {_version()}") if x)
    return write_report(run.folder, title, sections, subtitle=subtitle)


def _version() -> str:
    from . import __version__

    return __version__


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _check_inputs(folder: Path, est: Any, params: Any, summary: Any, motion: Any, stages: Any,
                  movie_info: Any, truth: Any, n_examples: int) -> _Run:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"report folder {folder} is a file; pass a folder path (it is created if missing).")
    if not (hasattr(est, "A") and hasattr(est, "dims") and hasattr(est, "accepted_indices")):
        raise TypeError(f"estimates must be a somascope Estimates; got {type(est).__name__}.")
    rows = []
    for i, st in enumerate(stages):
        if not isinstance(st, Mapping) or "stage" not in st or "seconds" not in st:
            raise ValueError(f"stages[{i}] must be a dict with at least 'stage' and 'seconds'; got {st!r}.")
        rows.append({"stage": str(st["stage"]), "seconds": float(st["seconds"]),
                     "peak_rss_bytes": None if st.get("peak_rss_bytes") is None else int(st["peak_rss_bytes"]),
                     "reused": bool(st.get("reused", False)), "detail": str(st.get("detail") or "")})
    if truth is not None:
        from scipy import sparse

        if "A" not in truth:
            raise ValueError(f"truth must hold 'A' (pixels × K_true footprints); got keys {sorted(truth)}.")
        truth = dict(truth)
        truth["A"] = sparse.csc_matrix(truth["A"])
        if truth["A"].shape[0] != int(np.prod(est.dims)):
            raise ValueError(f"truth['A'] has {truth['A'].shape[0]} pixels but the estimates' field of view "
                             f"{tuple(est.dims)} has {int(np.prod(est.dims))}; give footprints on the same frame.")
        som = truth.get("somata")
        truth["somata"] = (np.arange(truth["A"].shape[1]) if som is None else np.asarray(som).ravel()
                           if np.asarray(som).dtype != bool else np.flatnonzero(som))
    fr = est.frame_rate or (getattr(getattr(params, "data", None), "fr", None) if params is not None else None)
    return _Run(folder, est, params, summary, motion, rows, dict(movie_info or {}), truth, max(0, int(n_examples)),
                est.accepted_indices, est.rejected_indices, float(fr) if fr else None)


def _guarded(title: str, build: Callable[[_Run], Section | None], run: _Run) -> Section | None:
    try:
        return build(run)
    except Exception as err:  # a failed figure must not lose the rest of the report
        log.warning("report section %r could not be drawn", title, exc_info=True)
        return Section(title, note=f"This section could not be drawn: {type(err).__name__}: {err}")


def _score(run: _Run) -> dict[str, Any]:
    from .metrics import match_footprints, trace_correlation

    est, truth = run.est, run.truth
    assert truth is not None
    ref = truth["A"][:, truth["somata"]]
    match = match_footprints(ref, est.A[:, run.accepted], tuple(est.dims))
    match_all = match_footprints(ref, est.A, tuple(est.dims))
    corr = None
    C_true = truth.get("C")
    if C_true is not None and est.C is not None and np.asarray(C_true).shape[1] == est.C.shape[1]:
        corr = trace_correlation(np.asarray(C_true)[truth["somata"]], est.C[run.accepted], match)
    return {"n_true": int(ref.shape[1]), "tp": match.tp, "fp": match.fp, "fn": match.fn,
            "precision": match.precision, "recall": match.recall, "f1": match.f1, "f1_all": match_all.f1,
            "median_trace_corr": None if corr is None or not corr.size else float(np.median(corr)),
            "match": match}


def _headline(run: _Run) -> Section:
    est = run.est
    T = est.T or (run.motion.n_frames if run.motion is not None else None)
    cards: list[tuple[Any, ...]] = [("components found", est.K), ("accepted", int(run.accepted.size)),
                                    ("rejected", int(run.rejected.size))]
    if est.silent is not None:
        n_seeded = int(np.asarray(est.seeded, bool).sum()) if est.seeded is not None else 0
        cards.append(("silent cells", int(np.asarray(est.silent, bool).sum()),
                      f"accepted, no activity; {n_seeded} cells seeded from the structural channel"))
    if T is not None:
        cards.append(("frames", T, f"{T / run.frame_rate:.1f} s at {run.frame_rate:g} Hz" if run.frame_rate else ""))
    if run.stages:
        n_reused = sum(s["reused"] for s in run.stages)
        cards.append(("run time", format_duration(sum(s["seconds"] for s in run.stages)),
                      f"{len(run.stages)} stages, {n_reused} reused" if n_reused else f"{len(run.stages)} stages"))
        peaks = [s["peak_rss_bytes"] for s in run.stages if s["peak_rss_bytes"] is not None]
        if peaks:
            cards.append(("peak memory", _bytes(max(peaks)), "whole process tree"))
    if run.accuracy is not None:
        a = run.accuracy
        cards.append(("F1", f"{a['f1']:.3f}", f"precision {a['precision']:.3f} · recall {a['recall']:.3f}"))
    note = ""
    if est.K == 0:
        note = ("No components were found. Check the neuron radius (init.gSig), the patch size (patch.rf) and "
                "the components per patch (init.K) below, and whether the summary images show cells.")
    elif est.idx_components is None:
        note = "The components were not evaluated: all of them are counted as accepted."
    elif run.accepted.size == 0:
        note = "Every component was rejected by the quality tests: see the thresholds under 'Quality tests'."
    return Section("At a glance", cards=cards, note=note)


def _movie(run: _Run) -> Section:
    table = list(run.movie_info.items())
    labels = {str(k).lower() for k, _ in table}
    if not any("shape" in k or "dims" in k or "field" in k for k in labels):
        table.append(("field of view (px)", tuple(int(d) for d in run.est.dims)))
    if run.frame_rate and not any("rate" in k for k in labels):
        table.append(("frame rate", f"{run.frame_rate:g} Hz"))
    return Section("Movie", table=table)


def _accuracy_section(run: _Run) -> Section | None:
    a = run.accuracy
    if a is None:
        return (Section("Accuracy against the ground truth", note=f"Could not be scored: {run.accuracy_error}")
                if run.accuracy_error else None)
    table = [("true cells scored", a["n_true"]), ("accepted components", int(run.accepted.size)),
             ("matched (true positives)", a["tp"]), ("false positives", a["fp"]),
             ("missed (false negatives)", a["fn"]),
             ("precision", f"{a['precision']:.3f}"), ("recall", f"{a['recall']:.3f}"), ("F1", f"{a['f1']:.3f}"),
             ("F1 of all components, before the quality tests", f"{a['f1_all']:.3f}")]
    if a["median_trace_corr"] is not None:
        table.append(("median trace correlation (matched)", f"{a['median_trace_corr']:.3f}"))
    return Section("Accuracy against the ground truth", table=table,
                   text="Accepted footprints matched one-to-one to the true cells (binary masks at 25% of each "
                        "peak, Jaccard distance < 0.7, centroids within 10 px; somascope.metrics.match_footprints).")


def _summary_section(run: _Run) -> Section | None:
    if run.summary is None:
        return None
    images = run.summary.images()
    order = [k for k in ("mean", "max", "corr", "max_corr", "pnr", "corr_pnr") if k in images]
    if not order:
        return Section("Summary images", note="No summary image was computed.")
    image_panel({k: images[k] for k in order}, run.folder / "summary.png", cols=2 if len(order) == 4 else 3)
    return Section("Summary images", figures=[("summary.png", f"{', '.join(order)} over {run.summary.n_frames} frames "
                                               "(gray: intensity; colour: correlation / peak-to-noise)")])


def _structural_section(run: _Run) -> Section | None:
    if run.structural is None:
        return None
    est = run.est
    image, masks = run.structural["image"], run.structural["masks"]
    n = int(masks.shape[1])
    seeded = np.zeros(est.K, bool) if est.seeded is None else np.asarray(est.seeded, bool)
    silent = np.zeros(est.K, bool) if est.silent is None else np.asarray(est.silent, bool)
    accepted = np.zeros(est.K, bool)
    accepted[run.accepted] = True
    table = [("cells segmented (seed masks)", n),
             ("seeded cells accepted, active", int((seeded & accepted & ~silent).sum())),
             ("seeded cells accepted, silent", int((seeded & accepted & silent).sum())),
             ("cells added outside the masks (accepted)", int((~seeded & accepted).sum()))]
    if n == 0:
        return Section("Structural channel", table=table, note="No cell was found in the structural channel: CNMF "
                       "ran unseeded. Check the channel and the neuron radius.")
    contour_figure(image, [OutlineSet("seed masks", masks, AMBER, "-", 0.8)], est.dims,
                   run.folder / "structural.png", title="structural channel", background_label="structural image",
                   level=0.5)
    return Section("Structural channel", table=table, figures=[(
        "structural.png", "the structural channel's time average (motion-corrected), its segmented cells outlined: "
        "the masks that seeded CNMF" + (" (maximum over planes)" if len(est.dims) == 3 else ""))])


def _components_section(run: _Run) -> Section:
    est = run.est
    background, bg_label = None, ""
    if run.summary is not None and run.summary.corr_pnr is not None:
        # one-photon: the raw correlation image shows the background; the high-passed
        # correlation × peak-to-noise image (GreedyCorr's seed image) shows the cells
        background, bg_label = run.summary.corr_pnr_product, "correlation × peak-to-noise image (high-passed)"
    elif run.summary is not None:
        background, bg_label = run.summary.corr, "correlation image"
    elif run.motion is not None:
        background, bg_label = run.motion.mean_image, "mean of the corrected movie"
    elif est.K:
        background, bg_label = np.asarray(est.A.sum(axis=1)).reshape(est.dims), "sum of the footprints"
    elif run.truth is None:
        return Section("Components", note="No components were found, and there is no image to show.")
    sets = []
    if run.truth is not None:
        sets.append(OutlineSet("true cells", run.truth["A"][:, run.truth["somata"]], BLUE, "--", 0.8))
    sets.append(OutlineSet("rejected", est.A[:, run.rejected], RED, "-", 0.8))
    silent = np.zeros(est.K, bool) if est.silent is None else np.asarray(est.silent, bool)
    active = run.accepted[~silent[run.accepted]]
    labels = active if active.size <= 150 else None
    sets.append(OutlineSet("accepted, active" if silent.any() else "accepted", est.A[:, active], GREEN, "-", 1.0,
                           labels=labels))
    if silent.any():
        sets.append(OutlineSet("silent (structural, no activity)", est.A[:, np.flatnonzero(silent)], AMBER, ":", 1.0))
    contour_figure(background, sets, est.dims, run.folder / "components.png", title="components",
                   background_label=bg_label)
    caption = ("accepted (green, numbered by component index) and rejected (red) components outlined at 30% of "
               "their peak" + ("; silent cells of the structural channel dotted amber" if silent.any() else "")
               + ("; true cells dashed blue" if run.truth is not None else "")
               + f", on the {bg_label or 'frame'}" + (" (maximum over planes)" if len(est.dims) == 3 else ""))
    figures = [("components.png", caption)]
    if len(est.dims) == 3:  # a volume: also each plane with the components that reach it
        plane_contours_figure(background if np.ndim(background) == 3 else None, sets, est.dims,
                              run.folder / "components_planes.png", background_label=bg_label)
        figures.append(("components_planes.png", "each plane with the components that reach it, outlined in "
                        "that plane at 30% of their peak over the volume"))
    note = "No components were found." if est.K == 0 else ""
    return Section("Components", figures=figures, note=note)


def _pick_examples(run: _Run, n: int) -> np.ndarray:
    """Up to ``n`` accepted components spanning the SNR range: highest, median and
    lowest included, ordered by decreasing SNR."""
    acc = run.accepted
    if not acc.size or not n:
        return acc[:0]
    snr = run.est.SNR_comp
    if snr is not None:
        key = np.nan_to_num(np.asarray(snr, dtype=np.float64)[acc], nan=-np.inf)
        acc = acc[np.argsort(-key, kind="stable")]
    m = min(n, acc.size)
    pos = np.unique(np.round(np.linspace(0, acc.size - 1, m)).astype(int))
    if m >= 3:
        pos[np.argmin(np.abs(pos - (acc.size - 1) // 2))] = (acc.size - 1) // 2
    return acc[np.unique(pos)]


def _metric(arr: Any, k: int) -> float | None:
    if arr is None:
        return None
    v = float(np.asarray(arr)[k])
    return v if np.isfinite(v) else None


def _traces_section(run: _Run) -> Section | None:
    est = run.est
    if est.K == 0 or run.accepted.size == 0:
        return None
    if all(getattr(est, f) is None for f in ("C", "F_dff", "S")):
        return Section("Example traces", note="No traces were stored in the estimates.")
    shown = run.examples = _pick_examples(run, run.n_examples)
    examples = []
    for rank, k in enumerate(shown):
        parts = [f"#{k}"] + [f"{name} {v:.{d}f}" for name, arr, d in (("SNR", est.SNR_comp, 1), ("r", est.r_values, 2),
                                                                   ("CNN", est.cnn_preds, 2))
                             if (v := _metric(arr, k)) is not None]
        raw = None
        if est.C is not None and est.YrA is not None:
            raw = est.C[k] + est.YrA[k] - (float(est.bl[k]) if est.bl is not None else 0.0)
        examples.append(TraceExample("  ·  ".join(parts), raw=raw, denoised=None if est.C is None else est.C[k],
                                     dff=None if est.F_dff is None else est.F_dff[k],
                                     spikes=None if est.S is None else est.S[k]))
    figures = []
    if examples:
        example_traces_figure(examples, run.frame_rate, run.folder / "traces.png")
        figures.append(("traces.png", f"{len(examples)} accepted components spanning the SNR range (highest first): "
                        "raw (C + residual − baseline, grey) and denoised C, ΔF/F, deconvolved activity S "
                        "(bar height relative to the trace's largest event)"))
    activity = est.F_dff if est.F_dff is not None else est.C
    if activity is not None:
        order = _pick_examples(run, run.accepted.size)
        what = "ΔF/F" if est.F_dff is not None else "denoised C"
        activity_figure(activity, run.frame_rate, run.folder / "activity.png", order=order,
                        label=f"{what} of the {order.size} accepted components, highest SNR at the top")
        figures.append(("activity.png", f"{what} of every accepted component over time (rows sorted by SNR, "
                                        "each scaled to its own 99.5th percentile)"))
    return Section("Example traces", figures=figures)


def _motion_section(run: _Run) -> Section | None:
    mc = run.motion
    if mc is None:
        return None
    from .motion.plots import plot_quality, plot_shifts

    m = mc.metrics
    axes = ("dz", "dy", "dx")[-mc.shifts.shape[1]:]
    largest = np.abs(mc.shifts).max(axis=0) if mc.n_frames else np.zeros(len(axes))
    table: list[tuple[str, Any]] = [
        ("mode", "piecewise-rigid" + (f" ({mc.patch_grid.n_patches} patches)" if mc.patch_grid is not None else "")
         if mc.pw_rigid else "rigid"),
        *_motion_model_rows(m.get("motion_model")),
        ("largest |displacement| (rigid)", ", ".join(f"{a} {v:.2f} px" for a, v in zip(axes, largest))),
        ("border_pix (ignored downstream)", tuple(int(b) for b in mc.border_pix)),
    ]
    pairs = (("crispness of the mean image", "crispness_raw", "crispness_corrected", ""),
             ("mean frame–template correlation", "frame_corr_raw_mean", "frame_corr_mean", ""),
             ("residual shift after correction, rms / max", "residual_rms_px", "residual_max_px", " px"))
    for label, before, after, unit in pairs:
        a, b = m.get(before), m.get(after)
        if a is not None and b is not None:
            table.append((label if unit else f"{label}, raw → corrected",
                          f"{a:.4g} / {b:.4g}{unit}" if unit else f"{a:.4g} → {b:.4g}"))
    save_figure(plot_shifts(mc, frame_rate=run.frame_rate), run.folder / "shifts.png")
    save_figure(plot_quality(mc, frame_rate=run.frame_rate), run.folder / "motion_quality.png")
    spread = "; the shaded band is the spread over patches" if mc.pw_rigid else ""
    return Section("Motion correction", table=table, figures=[
        ("shifts.png", f"estimated displacement of each frame (rigid){spread}"),
        ("motion_quality.png", "correlation of each corrected frame with the template; mean image before and after")])


def _motion_model_rows(model: Any) -> list[tuple[str, Any]]:
    """How the motion model was chosen (``metrics["motion_model"]``, results older than
    ``pw_rigid="auto"`` have none)."""
    if not isinstance(model, dict):
        return []
    if model.get("requested") != "auto":
        return [("model chosen by", f"the parameters (pw_rigid={model.get('requested')})")]
    if model.get("residual_px") is None:
        return [("model chosen by", str(model.get("reason", "pw_rigid=auto")))]
    sign = ">" if model.get("pw_rigid") else "≤"
    return [("model chosen by", "pw_rigid=auto: piecewise-rigid when patches move more than the threshold "
                                "against the rigid displacement"),
            ("non-rigid residual (auto)", f"{model['residual_px']:.2f} px {sign} threshold {model['threshold_px']:g} px "
                                          f"({model.get('frames_measured', '?')} frames measured)")]


def _quality_section(run: _Run) -> Section | None:
    est = run.est
    metrics = {"snr": est.SNR_comp, "r": est.r_values, "cnn": est.cnn_preds}
    if est.K == 0 or all(v is None for v in metrics.values()):
        return None
    q = getattr(run.params, "quality", None)
    names = ("min_SNR", "SNR_lowest", "rval_thr", "rval_lowest", "min_cnn_thr", "cnn_lowest")
    thresholds = {n: getattr(q, n, None) for n in names}
    if q is not None and not q.use_cnn:
        thresholds["min_cnn_thr"] = thresholds["cnn_lowest"] = None
    accepted = np.zeros(est.K, bool)
    accepted[run.accepted] = True
    quality_figure(metrics, accepted, thresholds, run.folder / "quality.png")
    table = [(n, v) for n, v in thresholds.items() if v is not None]
    if q is not None:
        shape = [f"mask eccentricity ≤ {q.max_ecc:g}"] if q.use_ecc else []
        if q.use_area:
            low = f"{q.min_area_ratio:g}–" if q.min_area_ratio > 0 else "≤ "
            shape += [f"mask area {low}{q.max_area_ratio:g} neuron areas"]
        table.append(("rule", "accepted if any test passes its threshold and none is at or below its lowest value"
                      + (f"; and the shape tests: {', '.join(shape)}" if shape else "")
                      + "; of two accepted components with the same mask, the lower SNR is rejected"))
    return Section("Quality tests", table=table, figures=[(
        "quality.png", "quality metrics of every component, accepted (green) stacked on rejected (red); solid lines: "
                       "thresholds to accept, dashed: lowest values allowed")])


def _run_section(run: _Run) -> Section | None:
    if not run.stages:
        return None
    total = sum(s["seconds"] for s in run.stages)
    rows = [[s["stage"], format_duration(s["seconds"]), f"{100 * s['seconds'] / total:.0f}%" if total > 0 else "–",
             _bytes(s["peak_rss_bytes"]), "reused" if s["reused"] else "ran", s["detail"]] for s in run.stages]
    peaks = [s["peak_rss_bytes"] for s in run.stages if s["peak_rss_bytes"] is not None]
    rows.append(["total", format_duration(total), "100%", _bytes(max(peaks)) if peaks else "n/a", "", ""])
    column = lambda key: [s[key] for s in run.stages]  # noqa: E731
    stages_figure(column("stage"), column("seconds"), column("peak_rss_bytes"), column("reused"),
                  run.folder / "stages.png")
    return Section("Run", columns=("stage", "wall time", "share", "peak memory", "status", "detail"), rows=rows,
                   figures=[("stages.png", "wall time per stage (reused stages hatched grey) and peak memory (RSS) of "
                                           "the whole process tree, driver and workers, during each stage")])


def _params_section(run: _Run) -> Section:
    p = run.params
    if p is None:
        return Section("Parameters", note="No parameters were given to the report.")
    def g(group: str, name: str) -> Any:
        return getattr(getattr(p, group, None), name, None)

    def pair(group: str, a: str, b: str) -> str:
        return f"{_format(g(group, a))} / {_format(g(group, b))}"

    pw = g("motion", "pw_rigid")
    motion = ("auto (rigid or piecewise-rigid, chosen from the data)" if pw == "auto" else
              "piecewise-rigid" if pw else f"rigid, max_shifts {_format(g('motion', 'max_shifts'))}")
    table = [("neuron radius (px)", g("data", "neuron_radius")), ("gSig / gSiz (px)", pair("init", "gSig", "gSiz")),
             ("frame rate fr (Hz)", g("data", "fr")), ("decay_time (s)", g("data", "decay_time")),
             ("patch rf / stride (px)", pair("patch", "rf", "stride")),
             ("components per patch K", g("init", "K")), ("init method", g("init", "method")),
             ("merge_thr", g("merge", "merge_thr")), ("min_SNR / SNR_lowest", pair("quality", "min_SNR", "SNR_lowest")),
             ("rval_thr / rval_lowest", pair("quality", "rval_thr", "rval_lowest")),
             ("CNN", f"min_cnn_thr {g('quality', 'min_cnn_thr')}" if g("quality", "use_cnn") else "off"),
             ("motion", motion), ("AR order p", g("deconvolution", "p"))]
    table = [(k, _format(v)) for k, v in table]
    text = p.to_yaml() if hasattr(p, "to_yaml") else json.dumps(p, indent=2, default=_plain)
    return Section("Parameters", table=table, code=text)


def _record(run: _Run, sections: list[Section]) -> dict[str, Any]:
    head = next((s for s in sections if s.title == "At a glance"), None)
    acc = None if run.accuracy is None else {k: v for k, v in run.accuracy.items() if k != "match"}
    return {"format": "somascope-run-report/1", "components": run.est.K, "accepted": int(run.accepted.size),
            "rejected": int(run.rejected.size), "frames": run.est.T,
            "headline": {str(c[0]): c[1] for c in head.cards} if head else {},
            "accuracy": acc, "stages": run.stages,
            "examples": None if run.examples is None else run.examples.tolist(),
            "figures": [name for s in sections for name, _ in s.figures],
            "failed_sections": [s.title for s in sections if s.note.startswith("This section could not be drawn")]}
