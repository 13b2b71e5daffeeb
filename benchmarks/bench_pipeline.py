"""The batch pipeline end to end on a simulated 512×512 two-photon movie, beside suite2p.

What it measures (issue 6's bar), all on one machine in one run:

1. ``somascope run MOVIE`` (a fresh process: motion correction → Store → summary → CNMF in
   patches on a local Dask cluster → quality → deconvolution/ΔF/F → results + report): wall
   time, peak resident memory of the whole process tree (driver + Dask workers, sampled every
   50 ms), time per stage, and F1 of the accepted components against the active true somata;
2. suite2p 1.1 (default pipeline, from its own venv, see ``benchmarks/peers``) on the same
   TIFF: the same three figures (a cached run in ``--suite2p-out`` is reused when it exists);
3. patches vs no patches on the central 256×256 crop of the corrected movie (same
   parameters; without patches the whole crop is initialised at once with the same total
   number of candidates): F1 of both;
4. the serial engine vs the local Dask cluster on that crop: the same components?
5. with ``--long DIR``: the pipeline on a long movie (e.g. 512×512×20,000 made by
   ``make_pipeline_data.py --frames 20000``), peak memory against the movie's size.

Scoring: the true footprints are drawn motion-free; each tool registers to a template of its
own, so the truth is moved by the constant offset between the tool's mean image and the true
motion-free mean image (phase correlation; ``somascope.evaluation.classifier.frame_offset``), the same
way for both tools, and matched by Jaccard + Hungarian (``somascope.metrics``).

Run: ``python benchmarks/bench_pipeline.py [--data DIR] [--out DIR] [--long DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import measure, table  # noqa: E402


def run_somascope(movie: Path, out: Path, *, fr: float, radius: float) -> dict[str, Any]:
    """``somascope run`` in a fresh process; wall time and peak memory of its process tree."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("somascope")
    cmd = [str(exe), "run", str(movie), "--out", str(out), "--fr", str(fr), "--radius", str(radius), "-q"]
    with measure() as m:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    from somascope.pipeline import load_results

    res = load_results(out / "results.h5")
    return {"seconds": m["seconds"], "peak_gb": m["peak_gb"], "results": res}


def score(A_est: Any, truth: Any, mean_image: np.ndarray) -> dict[str, Any]:
    """F1 of footprints ``A_est`` against the active true somata, after the frame offset."""
    from somascope.evaluation.classifier import frame_offset
    from somascope.metrics import match_footprints, shift_footprints

    extra = truth.extra
    keep = np.flatnonzero(np.asarray(extra["active"], bool) & np.asarray(extra["is_soma"], bool))
    offset = frame_offset(mean_image, extra["still_mean"])
    A_true = shift_footprints(truth.A[:, keep], truth.dims, offset)
    m = match_footprints(A_true, A_est, tuple(truth.dims))
    return {"f1": m.f1, "precision": m.precision, "recall": m.recall, "n_true": m.n_ref,
            "n_est": m.n_est, "offset": offset, "A_true": A_true}


def suite2p_figures(movie: Path, out: Path, truth: Any, *, fr: float, radius: float) -> dict[str, Any] | None:
    """suite2p's F1, time and peak memory (a finished run in ``out`` is reused)."""
    from peers.suite2p_peer import run_suite2p, score_suite2p

    cached = out / "score.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        return {"f1": data["f1"], "precision": data["precision"], "recall": data["recall"],
                "seconds": data["seconds"], "peak_gb": data["peak_rss_gib"],
                "version": data["version"], "cached": True}
    result = run_suite2p(movie, out, fr, 2 * radius)
    if result is None:
        return None
    s = score_suite2p(result, truth)
    record = {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"],
              "seconds": result["seconds"], "peak_rss_gib": result["peak_rss_bytes"] / 2**30,
              "version": result["version"]}
    cached.write_text(json.dumps(record))
    return {**record, "peak_gb": record["peak_rss_gib"], "cached": False}


def crop_comparison(store_path: Path, truth_A: Any, dims: tuple[int, int], work: Path) -> dict[str, Any]:
    """Patches vs no patches, and serial vs local engine, on the central 256×256 crop."""
    import scipy.sparse as sp

    from somascope.cnmf import fit
    from somascope.cnmf.fit import components_per_fov
    from somascope.metrics import match_footprints
    from somascope.parallel import Engine
    from somascope.params import Params
    from somascope.store import Store

    src = Store.open(store_path)
    H, W = dims
    rows, cols = slice(H // 2 - 128, H // 2 + 128), slice(W // 2 - 128, W // 2 + 128)
    crop = Store.create(work / "crop.zarr", (src.shape[0], 256, 256), frame_rate=src.frame_rate,
                        overwrite=True)
    step = crop.time_chunk * 4
    for t0 in range(0, src.shape[0], step):
        crop.write(t0, src[t0:t0 + step, rows, cols])
    crop = crop.finalize()
    # the true footprints that lie in the crop (mostly: ≥ 50 % of their mass)
    idx = np.ravel_multi_index(np.meshgrid(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop),
                                           indexing="ij"), dims).ravel()
    A_crop = sp.csc_matrix(truth_A)[idx]
    inside = np.asarray(A_crop.sum(0)).ravel() >= 0.5 * np.asarray(truth_A.sum(0)).ravel()
    A_ref = A_crop[:, np.flatnonzero(inside)]

    params = Params.from_neuron(radius_px=5, fr=src.frame_rate, decay_time=0.4)
    whole = params.replace(rf=None, K=components_per_fov(params, (256, 256)))
    out: dict[str, Any] = {"n_true": int(A_ref.shape[1])}
    with Engine("local") as eng:
        t = time.perf_counter()
        local = fit(crop, params, engine=eng)
        out["patches_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    serial = fit(crop, params, engine=Engine("serial"))
    out["serial_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    nopatch = fit(crop, whole)
    out["nopatch_seconds"] = time.perf_counter() - t
    for name, est in (("patches", local), ("nopatch", nopatch)):
        m = match_footprints(A_ref, est.A[:, est.accepted_indices], (256, 256))
        out[f"{name}_f1"], out[f"{name}_K"] = m.f1, est.K
    same_K = serial.K == local.K
    out["serial_vs_local_same_K"] = same_K
    if same_K:
        dA = abs(serial.A - local.A).max() / max(abs(local.A).max(), 1e-12)
        dC = float(np.abs(serial.C - local.C).max() / max(np.abs(local.C).max(), 1e-12))
        out["serial_vs_local_max_rel_diff"] = max(float(dA), dC)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/pipeline-data/512x3000"),
                    help="folder of make_pipeline_data.py (made when missing)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-pipeline"))
    ap.add_argument("--suite2p-out", type=Path, default=Path("/tmp/peers-s2p512"))
    ap.add_argument("--long", type=Path, default=None, help="folder of a long movie to run as well")
    ap.add_argument("--skip-crop", action="store_true")
    args = ap.parse_args(argv)

    from make_pipeline_data import ensure_pipeline_data

    from somascope.cnmf.estimates import Estimates

    spec = ensure_pipeline_data(args.data)
    fr, radius = float(spec["request"]["frame_rate"]), float(spec["request"]["neuron_radius"])
    movie = args.data / "movie.tif"
    truth = Estimates.load(args.data / "ground_truth.h5")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"movie {movie}: {tuple(spec['shape'])}, {spec['n_active_somata']} active somata", flush=True)

    ours = run_somascope(movie, args.out / "run", fr=fr, radius=radius)
    res = ours["results"]
    est = res.estimates
    s = score(est.A[:, est.accepted_indices], truth, res.summary["mean"])
    rows = [{"tool": "somascope", "F1": s["f1"], "precision": s["precision"], "recall": s["recall"],
             "seconds": ours["seconds"], "peak GB": ours["peak_gb"]}]
    s2p = suite2p_figures(movie, args.suite2p_out, truth, fr=fr, radius=radius)
    if s2p is not None:
        rows.append({"tool": f"suite2p {s2p['version']}" + (" (cached run)" if s2p["cached"] else ""),
                     "F1": s2p["f1"], "precision": s2p["precision"], "recall": s2p["recall"],
                     "seconds": s2p["seconds"], "peak GB": s2p["peak_gb"]})
        rows.append({"tool": "ratio suite2p / somascope", "seconds": s2p["seconds"] / ours["seconds"],
                     "peak GB": s2p["peak_gb"] / ours["peak_gb"]})
    else:
        print("suite2p: not installed in the peer venv (see benchmarks/peers/README.md)")
    print(table(rows, ["tool", "F1", "precision", "recall", "seconds", "peak GB"]))
    stage_rows = [{"stage": name, "seconds": rec.get("seconds"), "peak GB": (rec.get("peak_rss_bytes") or 0) / 2**30}
                  for name, rec in res.stages.items()]
    print(table(stage_rows, ["stage", "seconds", "peak GB"]), flush=True)
    report = {"somascope": {k: v for k, v in rows[0].items()}, "suite2p": s2p, "stages": stage_rows}

    if not args.skip_crop:
        crop = crop_comparison(args.out / "run" / "stages" / "motion" / "movie.zarr", s["A_true"],
                               tuple(truth.dims), args.out)
        print(table([crop], list(crop)), flush=True)
        report["crop_256"] = crop

    if args.long is not None:
        spec_long = json.loads((args.long / "spec.json").read_text())
        size_gb = float(np.prod(spec_long["shape"])) * 4 / 2**30
        long = run_somascope(args.long / "movie.tif", args.out / "run-long", fr=fr, radius=radius)
        truth_long = Estimates.load(args.long / "ground_truth.h5")
        el = long["results"].estimates
        sl = score(el.A[:, el.accepted_indices], truth_long, long["results"].summary["mean"])
        row = {"movie": "x".join(map(str, spec_long["shape"])), "float32 GB": size_gb,
               "seconds": long["seconds"], "peak GB": long["peak_gb"],
               "peak / movie": long["peak_gb"] / size_gb, "F1": sl["f1"]}
        print(table([row], list(row)), flush=True)
        report["long"] = row
    (args.out / "bench_pipeline.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
