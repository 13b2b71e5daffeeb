"""One-photon pipeline (``somascope run --1p``): speed beside the two-photon pipeline, memory at a
Miniscope's field of view and as the recording grows, and the real Miniscope crop.

    .venv/bin/python benchmarks/bench_one_photon.py --work /tmp/bench1p [--skip-large] [--skip-growth]

1. **speed** — a simulated 256×256×2000 one-photon movie (``one_photon(preset="hard")``, 8 px
   cells, 20 Hz) through ``somascope run --1p``, and a two-photon movie of the same size
   (``two_photon(preset="hard")``, 6 px cells) through ``somascope run``, in the same
   benchmark run: wall time, peak memory of the process tree, F1; the ratio 1p / 2p.
2. **growth** — the one-photon movie of (1) cut to 1000 and repeated to 4000 frames (so the
   cells are the same): peak memory at 1000, 2000 and 4000 frames, relative to 1000.
3. **Miniscope field** — a simulated 480×752×1000 one-photon movie (6 px cells, 30 Hz): peak
   memory and time.
4. **real data** — ``../shared/data/minian_1p_crop`` (``--fr 15 --radius 6 --1p``): components
   found and accepted, time.

Movies are simulated once into ``--work`` and reused. Every run is a fresh ``somascope run``
process (local Dask cluster, one worker per core); peak memory is sampled over its process tree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import measure, table  # noqa: E402
from score_gt import score_run  # noqa: E402

MINIAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "minian_1p_crop" / "movie.tif"


def simulated(folder: Path, kind: str, dims: tuple[int, int], frames: int, fr: float, radius: float,
              seed: int = 7) -> Path:
    """``folder`` in the dev_sim layout (``movie.tif`` + ``gt.npz``), simulated unless it is there."""
    if (folder / "gt.npz").is_file():
        return folder
    from somascope import simulate

    fn = simulate.one_photon if kind == "1p" else simulate.two_photon
    sim = fn(dims=dims, n_frames=frames, frame_rate=fr, neuron_radius=radius, motion="rigid", seed=seed,
             preset="hard")
    simulate.write_ground_truth_folder(sim, folder)
    return folder


def repeated(src: Path, folder: Path, frames: int) -> Path:
    """``src``'s movie cut or tiled to ``frames`` frames (uint16 TIFF; no ground truth)."""
    out = folder / "movie.tif"
    if out.is_file():
        return out
    import tifffile

    from somascope.io.atomic import atomic_path

    movie = tifffile.imread(src / "movie.tif")
    reps = -(-frames // movie.shape[0])
    data = np.concatenate([movie] * reps)[:frames]
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib")
    return out


def run(movie: Path, out: Path, fr: float, radius: float, one_photon: bool) -> dict[str, float]:
    """A fresh ``somascope run`` (nothing reused): seconds and peak GB of its process tree."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("somascope")), "run", str(movie), "--out", str(out),
           "--fr", str(fr), "--radius", str(radius), "-q"] + (["--1p"] if one_photon else [])
    with measure() as m:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {"seconds": m["seconds"], "peak_gb": m["peak_gb"]}


def stage_seconds(out: Path) -> dict[str, float]:
    """Seconds of each stage of a run (its manifests)."""
    times = {}
    for manifest in sorted((out / "stages").glob("*/manifest.json")):
        info = json.loads(manifest.read_text())
        times[manifest.parent.name] = float(info.get("seconds", float("nan")))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/somascope-bench-1p"))
    ap.add_argument("--skip-large", action="store_true", help="skip the 480×752×1000 field")
    ap.add_argument("--skip-growth", action="store_true", help="skip the 1000/2000/4000-frame runs")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    work = args.work
    rows: list[dict[str, Any]] = []

    one = simulated(work / "1p-256", "1p", (256, 256), 2000, 20.0, 8.0)
    two = simulated(work / "2p-256", "2p", (256, 256), 2000, 20.0, 6.0)
    for name, folder, r, is_1p in (("1p 256²×2000", one, 8.0, True), ("2p 256²×2000", two, 6.0, False)):
        out = work / f"run-{folder.name}"
        row = {"movie": name, **run(folder / "movie.tif", out, 20.0, r, is_1p)}
        s = score_run(out, folder / "gt.npz")
        row.update(f1=s["f1"], precision=s["precision"], recall=s["recall"], trace_r=s["trace_r"])
        row["stages"] = stage_seconds(out)
        rows.append(row)
        print(f"{name}: {row['seconds']:.1f} s, {row['peak_gb']:.2f} GB, F1 {row['f1']:.3f}  stages "
              + ", ".join(f"{k} {v:.1f}" for k, v in row["stages"].items()), flush=True)
    print(f"time 1p / 2p: {rows[0]['seconds'] / rows[1]['seconds']:.2f} (bar ≤ 1.5); peak memory "
          f"{rows[0]['peak_gb']:.2f} / {rows[1]['peak_gb']:.2f} GB", flush=True)

    if not args.skip_growth:
        growth = []
        for frames in (1000, 2000, 4000):
            movie = repeated(one, work / f"1p-256-{frames}", frames)
            row = {"movie": f"1p 256²×{frames}", **run(movie, work / f"run-1p-{frames}", 20.0, 8.0, True)}
            growth.append(row)
            rows.append(row)
            print(f"{row['movie']}: {row['seconds']:.1f} s, {row['peak_gb']:.2f} GB "
                  f"({row['peak_gb'] / growth[0]['peak_gb']:.2f}× the 1000-frame run)", flush=True)

    if not args.skip_large:
        big = simulated(work / "1p-480x752", "1p", (480, 752), 1000, 30.0, 6.0)
        out = work / "run-1p-480x752"
        row = {"movie": "1p 480×752×1000", **run(big / "movie.tif", out, 30.0, 6.0, True)}
        s = score_run(out, big / "gt.npz")
        row.update(f1=s["f1"], precision=s["precision"], recall=s["recall"], trace_r=s["trace_r"])
        rows.append(row)
        print(f"{row['movie']}: {row['seconds']:.1f} s, {row['peak_gb']:.2f} GB (bar ≤ 4 GB), F1 {row['f1']:.3f}",
              flush=True)

    if MINIAN.is_file():
        out = work / "run-minian"
        row = {"movie": "minian_1p_crop 240×376×1000", **run(MINIAN, out, 15.0, 6.0, True)}
        from somascope.cnmf.estimates import Estimates

        est = Estimates.load(out / "results.h5")
        row.update(components=est.K, accepted=int(est.accepted_indices.size))
        rows.append(row)
        print(f"{row['movie']}: {row['seconds']:.1f} s, {row['peak_gb']:.2f} GB, {est.K} components, "
              f"{est.accepted_indices.size} accepted", flush=True)

    print(table(rows, ["movie", "seconds", "peak_gb", "f1", "precision", "recall", "trace_r", "components",
                       "accepted"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
