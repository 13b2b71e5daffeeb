"""The pipeline's results file ``OUT/results.h5`` (writer and reader), and the report / NWB
written beside it by the ``results`` stage.

Layout (``docs/results-schema.md``, "Pipeline results file"):

- root attributes: ``pipeline_format = "somascope-pipeline"``, ``pipeline_schema_version``,
  ``software_version``,
  ``written_at``, ``frame_rate``, ``movie`` (JSON: path, shape, dtype, …);
- ``/estimates``: the final :class:`~somascope.cnmf.estimates.Estimates`
  (:func:`~somascope.cnmf.estimates.write_estimates`);
- ``/motion`` (absent with motion correction off): ``shifts`` (T × ndim, px), ``template``,
  ``mean_image``, ``frame_corr`` (T), ``patch_shifts`` (pw-rigid only); attributes
  ``border_pix``, ``pw_rigid``, ``metrics`` and ``params`` (JSON);
- ``/summary``: one float32 dataset per summary image (``mean``, ``max``, ``std``, ``corr``,
  ``max_corr``, …); attribute ``n_frames``;
- ``/params``: attribute ``json``, the full parameters (``Params.to_dict``);
- ``/stages/<name>``: attributes ``seconds``, ``peak_rss_bytes`` (-1: unknown), ``reused``,
  ``detail``, ``digest`` of each stage before ``results``;
- ``/curation`` (only with a manual curation, ``OUT/curation.json``, re-applied here):
  datasets ``json`` and ``auto_idx_components`` (:mod:`somascope.curation`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "somascope-pipeline"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.h5"
NWB_FILE = "results.nwb"
REPORT_DIR = "report"

__all__ = ["FORMAT", "SCHEMA_VERSION", "PipelineResults", "check_schema", "load_results", "write_results"]


@dataclass
class PipelineResults:
    """Contents of ``results.h5`` read back by :func:`load_results`.

    ``motion`` holds the ``/motion`` arrays (``shifts``, ``template``, …) plus
    ``border_pix``/``metrics``/``params``, or is None; ``summary`` maps image name → array;
    ``params`` is the nested parameter dict; ``stages`` maps stage name → its record.
    """

    estimates: Any
    motion: dict[str, Any] | None
    summary: dict[str, np.ndarray]
    params: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    attrs: dict[str, Any]


def _json(obj: Any) -> str:
    from ..io.jsonable import jsonable

    return json.dumps(jsonable(obj), allow_nan=True)


def write_results_file(path: Path, est: Any, *, motion: Any, summary: Any, params: Any,
                       stages: list[dict[str, Any]], movie_info: dict[str, Any], curation: Any = None) -> Path:
    """Write the pipeline results file at ``path`` atomically (layout in the module docstring).

    ``curation``: ``(state, auto_idx)`` of a manual curation already applied to ``est``, written
    as the ``/curation`` group (:func:`somascope.curation.write_curation_group`)."""
    import h5py

    from ..cnmf.estimates import write_estimates
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        # not ``format``: a root ``format`` attribute would make Estimates.load read the root
        fh.attrs["pipeline_format"] = FORMAT
        fh.attrs["pipeline_schema_version"] = np.int64(SCHEMA_VERSION)
        fh.attrs["software_version"] = est.software_version or ""
        fh.attrs["written_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        fh.attrs["frame_rate"] = np.float64(params.data.fr)
        fh.attrs["movie"] = _json(movie_info)
        write_estimates(fh.create_group("estimates"), est)
        if motion is not None:
            g = fh.create_group("motion")
            for name in ("shifts", "template", "mean_image", "mean_raw", "frame_corr", "patch_shifts"):
                value = getattr(motion, name, None)
                if value is not None:
                    g.create_dataset(name, data=np.asarray(value, np.float32))
            g["shifts"].attrs["units"] = "pixels"
            g["shifts"].attrs["description"] = (
                "rigid displacement of each frame, (dy, dx) or (dz, dy, dx): frame(p) ≈ template(p - shift)")
            g.attrs["border_pix"] = np.asarray(motion.border_pix, np.int64)
            g.attrs["pw_rigid"] = bool(motion.pw_rigid)
            g.attrs["metrics"] = _json(motion.metrics)
            g.attrs["params"] = _json(motion.params)
        if summary is not None:
            g = fh.create_group("summary")
            g.attrs["n_frames"] = np.int64(summary.n_frames)
            for name, image in summary.images().items():
                g.create_dataset(name, data=np.asarray(image, np.float32))
        fh.create_group("params").attrs["json"] = json.dumps(params.to_dict())
        sg = fh.create_group("stages")
        for i, rec in enumerate(stages):
            g = sg.create_group(rec["stage"])
            g.attrs["order"] = np.int64(i)
            g.attrs["seconds"] = np.float64(rec.get("seconds") or 0.0)
            peak = rec.get("peak_rss_bytes")
            g.attrs["peak_rss_bytes"] = np.int64(-1 if peak is None else peak)
            g.attrs["reused"] = bool(rec.get("reused"))
            g.attrs["detail"] = str(rec.get("detail", ""))
            g.attrs["digest"] = str(rec.get("digest", ""))
        if curation is not None:
            from ..curation import write_curation_group

            write_curation_group(fh, curation[0], curation[1], est.K)
    return path


def check_schema(fh: Any, path: str | os.PathLike[str]) -> None:
    """Refuse an open results file (``h5py.File``) written by a newer somascope: a pipeline
    schema or an estimates schema newer than this version reads. For every reader of
    ``results.h5`` (:func:`load_results`, the viewer) before it reads anything else."""
    from ..cnmf.estimates import SCHEMA_VERSION as ESTIMATES_SCHEMA
    from ..cnmf.estimates import ResultsFileError

    version = int(fh.attrs.get("pipeline_schema_version", 0))
    if version > SCHEMA_VERSION:
        raise ResultsFileError(f"{path}: written by a newer somascope (pipeline schema {version} > "
                               f"{SCHEMA_VERSION}). Fix: upgrade somascope to read it (pip install -U somascope).")
    group = fh if fh.attrs.get("format") is not None else fh.get("estimates")
    if group is not None:
        est_version = int(group.attrs.get("schema_version", 0))
        if est_version > ESTIMATES_SCHEMA:
            raise ResultsFileError(f"{path}: written by a newer somascope (results schema version {est_version} > "
                                   f"{ESTIMATES_SCHEMA}). Fix: upgrade somascope to read it (pip install -U "
                                   "somascope).")


def load_results(path: str | os.PathLike[str]) -> PipelineResults:
    """Read a pipeline results file written by ``somascope run``."""
    import h5py

    from ..cnmf.estimates import ResultsFileError, read_estimates

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file {str(p)!r} does not exist (the run did not finish, or the path "
                                "is wrong).")
    with h5py.File(p, "r") as fh:
        if fh.attrs.get("pipeline_format") != FORMAT:
            raise ResultsFileError(f"{p}: not a somascope pipeline results file (no pipeline_format="
                                   f"{FORMAT!r} attribute); read plain estimates with Estimates.load.")
        check_schema(fh, p)
        est = read_estimates(fh["estimates"])
        motion = None
        if "motion" in fh:
            g = fh["motion"]
            motion = {name: g[name][()] for name in g}
            motion["border_pix"] = tuple(int(v) for v in g.attrs["border_pix"])
            motion["pw_rigid"] = bool(g.attrs["pw_rigid"])
            motion["metrics"] = json.loads(g.attrs["metrics"])
            motion["params"] = json.loads(g.attrs["params"])
        summary = {name: fh["summary"][name][()] for name in fh["summary"]} if "summary" in fh else {}
        params = json.loads(fh["params"].attrs["json"])
        stages = {}
        for name, g in fh["stages"].items():
            peak = int(g.attrs["peak_rss_bytes"])
            stages[name] = {"stage": name, "seconds": float(g.attrs["seconds"]),
                            "peak_rss_bytes": None if peak < 0 else peak, "reused": bool(g.attrs["reused"]),
                            "detail": str(g.attrs["detail"]), "digest": str(g.attrs["digest"]),
                            "order": int(g.attrs["order"])}
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}
    stages = dict(sorted(stages.items(), key=lambda kv: kv[1]["order"]))
    return PipelineResults(estimates=est, motion=motion, summary=summary, params=params, stages=stages,
                           attrs=attrs)


def write_results(ctx: Any, folder: Path) -> Any:
    """The ``results`` stage: report, optional NWB, then the results file (paths relative to OUT)."""
    from .stages import Outcome

    est = ctx.estimates("traces")
    meta = getattr(ctx, "nwb_metadata", None)
    pipeline = {"out": str(ctx.out), "stages": ctx.digests()}
    if ctx.nwb and meta is not None:
        pipeline["nwb_metadata"] = meta.to_dict()
    est = dataclasses.replace(est, params=ctx.params.to_dict(),
                              provenance={**(est.provenance or {}), "pipeline": pipeline})
    # a person's decisions (OUT/curation.json, somascope view) hold over a new automatic split
    from ..curation import reapply_for_results

    est, curation = reapply_for_results(ctx.out, est)
    motion = ctx.motion_result()
    summary = ctx.summary()
    records = ctx.records_for_report()
    movie_info = ctx.movie_info
    outputs = []
    report = _write_report(ctx, est, motion, summary, records, movie_info)
    outputs.append(str(report.relative_to(ctx.out)))
    if ctx.nwb:
        from ..io.nwb import export_nwb

        movie_paths = [str(p) for p in getattr(ctx.movie, "paths", [])]
        export_nwb(ctx.out / NWB_FILE, est, motion=motion, summary=summary,
                   movie_path=movie_paths[0] if movie_paths else None, imaging_rate=ctx.params.data.fr,
                   metadata=meta, overwrite=True)
        outputs.append(NWB_FILE)
    # last: a results file exists only when everything before it (report, NWB) was written
    write_results_file(ctx.out / RESULTS_FILE, est, motion=motion, summary=summary, params=ctx.params,
                       stages=records, movie_info=movie_info, curation=curation)
    outputs.insert(0, RESULTS_FILE)
    accepted = est.accepted_indices.size
    manual = f", {len(curation[0]['decisions'])} by hand" if curation is not None else ""
    detail = (f"{est.K} components ({accepted} accepted{manual}) → {RESULTS_FILE}"
              + (", " + NWB_FILE if ctx.nwb else ""))
    return Outcome(detail, outputs, {"estimates": est})


def _write_report(ctx: Any, est: Any, motion: Any, summary: Any, records: list[dict[str, Any]],
                  movie_info: dict[str, Any]) -> Path:
    from .. import report

    truth = ctx.truth(motion) if callable(ctx.truth) else ctx.truth
    structural = None
    masks = ctx.seed_masks()
    if masks is not None:
        structural = {"image": np.load(ctx.folder("seeds") / "structural.npy"), "masks": masks}
    return Path(report.write_run_report(ctx.out / REPORT_DIR, estimates=est, params=ctx.params, summary=summary,
                                        motion=motion, stages=records, movie_info=movie_info, truth=truth,
                                        structural=structural))
