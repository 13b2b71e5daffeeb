"""Structural-channel seeding on the two-channel hard family: each member run twice with
``somascope run`` — unseeded (the functional channel alone) and seeded (``--structural-channel
1``) — and scored against the ground truth (``score_gt.score_structural``): F1 of the active
somata, recall of the labelled active somata (by components not flagged silent; "found": by any
accepted component, the flag aside), and precision / recall of the silent flags against the
labelled silent somata.

    .venv/bin/python benchmarks/make_hard_family.py FAMILY --channels 2 --dims 256 256 --frames 2000 --n 4
                                                    [--kind 1p|volume]
    .venv/bin/python benchmarks/bench_structural.py --family FAMILY --work WORK [--json OUT.json]

Bar (issue 18): recall of labelled active cells ≥ 0.95; silent flags with precision and recall
≥ 0.9; F1 of active cells ≥ the unseeded run's.
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

from _util import measure  # noqa: E402
from bench_accuracy import SLOW_DECAY, movies  # noqa: E402
from score_gt import score_structural  # noqa: E402


def run_member(movie: dict[str, Any], out: Path, seeded: bool, keep: bool) -> dict[str, Any]:
    """One ``somascope run`` (fresh process) of a two-channel member and its scores."""
    cmd = [str(Path(sys.executable).with_name("somascope")), "run", str(movie["folder"] / "movie.tif"),
           "--n-channels", "2", "--channel", "0", "--out", str(out), "--fr", str(movie["fr"]),
           "--radius", str(movie["radius"]), "-q"]
    if movie["decay"] is not None and movie["decay"] >= SLOW_DECAY:
        cmd += ["--decay-time", str(movie["decay"])]
    if movie.get("kind") == "1p":
        cmd += ["--1p"]
    if seeded:
        cmd += ["--structural-channel", "1"]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    with measure() as m:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    from somascope.pipeline import load_results

    res = load_results(out / "results.h5")
    mean = res.summary.get("mean")
    scores = score_structural(res.estimates, res.motion["mean_image"] if mean is None else mean,
                              np.load(movie["folder"] / "gt.npz", allow_pickle=True))
    return {"seconds": m["seconds"], "peak_gb": m["peak_gb"], **scores}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, required=True, help="a family made with --channels 2")
    ap.add_argument("--work", type=Path, required=True, help="folder for the runs")
    ap.add_argument("--keep", action="store_true", help="reuse the runs' finished stages")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'member':<6} {'F1 unseeded':>11} {'F1 seeded':>9} {'R labelled':>10} {'found':>5} {'silent P':>8} "
          f"{'silent R':>8} {'n silent':>8} {'s unseeded':>10} {'s seeded':>8}")
    for movie in movies(args.family, dev=False):
        plain = run_member(movie, args.work / f"{movie['name']}-unseeded", False, args.keep)
        seeded = run_member(movie, args.work / f"{movie['name']}-seeded", True, args.keep)
        row = {"name": movie["name"], "unseeded": plain, "seeded": seeded}
        rows.append(row)
        print(f"{movie['name']:<6} {plain['active']['f1']:>11.3f} {seeded['active']['f1']:>9.3f} "
              f"{seeded['recall_labelled']:>10.3f} {seeded['found_labelled']:>5.3f} {seeded['silent_precision']:>8.3f} "
              f"{seeded['silent_recall']:>8.3f} "
              f"{seeded['n_silent_flagged']:>3}/{seeded['n_silent_true']:<4} {plain['seconds']:>10.1f} "
              f"{seeded['seconds']:>8.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
