"""How the pipeline's cost grows with the length of the recording (issue 19's bar).

The same simulated field at several lengths (``make_pipeline_data.py --frames N``, same seed:
the same cells, a longer recording), each run as a user would: ``somascope run movie.tif --fr F
--radius R`` in a fresh process. For every stage (and the CNMF steps inside its stage) it
reports:

- wall time, and its ratio to *linear* scaling from the first (reference) movie:
  ``time / (time_ref · T / T_ref)`` — 1.0 is linear, the bar is ≤ 1.2;
- bytes read by the process tree (``read_chars`` of its live processes: page-cache hits count,
  since they are reads the pipeline asked for) and the same as *passes* over the float32 Store
  (``bytes / (T · H · W · 4)``). Reads through a memory map are not system calls and are not
  counted: the motion stage reads an uncompressed TIFF that way (half a pass of uint16);
- peak resident memory of the process tree;
- for the whole run: the Store's measured read floor (cold read of every brick file after
  evicting it from the page cache, two threads like the two workers) × the passes made, and the
  run's time over that;
- F1 of the accepted components against the movie's ground truth (``bench_pipeline.score``).

Run::

    python benchmarks/make_pipeline_data.py --out /tmp/pipeline-data/512x3000
    python benchmarks/make_pipeline_data.py --out /tmp/pipeline-data/512x10000 --frames 10000
    python benchmarks/make_pipeline_data.py --out /tmp/pipeline-data/512x21000 --frames 21000
    python benchmarks/bench_scaling.py /tmp/pipeline-data/512x3000 /tmp/pipeline-data/512x10000 \\
        /tmp/pipeline-data/512x21000 --work /tmp/scaling --json /tmp/scaling.json
    # a long recording of a smaller field (movie.zarr: a Store, no 13 GB TIFF next to it), with
    # slower bleaching than the simulator's 1000 s (which leaves 4 % of the light after an hour)
    for T in 10000 100000; do python benchmarks/make_pipeline_data.py --out /tmp/pipeline-data/256x$T \\
        --dims 256 256 --frames $T --format zarr --bleach-time 20000; done
    python benchmarks/bench_scaling.py /tmp/pipeline-data/256x10000 /tmp/pipeline-data/256x100000

Each run folder is deleted after it is measured (``--keep`` keeps them), since a 21,000-frame
512×512 Store is 22 GB.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import evict, table  # noqa: E402

#: Seconds between samples of the process tree's reads and memory.
SAMPLE_SECONDS = 0.2
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_START = re.compile(r"\[\d+/\d+\] (\w+) … ")
_END = re.compile(r"somascope\.pipeline: (\w+) finished in ([\d.]+) s")
_STEP = re.compile(r"somascope\.cnmf\.fit: cnmf (.+): ([\d.]+) s$")


class TreeSampler:
    """Samples, for a process and its descendants, the summed ``read_chars`` and RSS.

    Only live processes are summed: Linux adds a child's counters to its parent's when the
    parent reaps it, so a finished worker's reads reappear in its parent's. The running
    maximum is kept, so that the cumulative reads never go down between a child's end and its
    reaping. ``timeline`` holds ``(unix time, bytes read, rss bytes)`` rows.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.timeline: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = read = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    read += proc.io_counters().read_chars
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        if self.timeline:
            read = max(read, self.timeline[-1][1])
        self.timeline.append((time.time(), read, rss))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_SECONDS)

    def window(self, t0: float, t1: float) -> tuple[float, float]:
        """Bytes read and peak RSS between unix times ``t0`` and ``t1``."""
        tl = np.asarray(self.timeline, dtype=np.float64)
        if tl.size == 0:
            return 0.0, 0.0
        read = np.interp([t0, t1], tl[:, 0], tl[:, 1])
        inside = (tl[:, 0] >= t0) & (tl[:, 0] <= t1)
        peak = tl[inside, 2].max() if inside.any() else np.interp(t1, tl[:, 0], tl[:, 2])
        return float(read[1] - read[0]), float(peak)


def stage_windows(log_text: str) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` unix times of each stage, and of the CNMF steps (``cnmf: …``)."""
    out, open_at = [], {}
    for line in log_text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if (s := _START.search(line)):
            open_at[s.group(1)] = when
        elif (e := _END.search(line)) and e.group(1) in open_at:
            out.append((e.group(1), open_at.pop(e.group(1)), when))
        elif (c := _STEP.search(line)):
            out.append((f"cnmf: {c.group(1)}", when - float(c.group(2)), when))
    return out


def read_floor(store: Path) -> float:
    """Seconds to read every brick file of a Store cold (two threads), after evicting it."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in (store / "c").rglob("*") if p.is_file()]
    evict(store)

    def read(path: Path) -> int:
        with open(path, "rb") as fh:
            return len(fh.read())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(read, files))
    return time.perf_counter() - t0


def run_movie(folder: Path, work: Path, *, fr: float, radius: float, keep: bool) -> dict[str, Any]:
    """Run, sample, score one movie folder of ``make_pipeline_data.py``."""
    from bench_pipeline import score

    from somascope.cnmf.estimates import Estimates
    from somascope.pipeline import load_results

    spec = json.loads((folder / "spec.json").read_text())
    shape = tuple(int(s) for s in spec["shape"])
    out = work / folder.name
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("somascope")
    movie = folder / spec.get("files", {}).get("movie", "movie.tif")
    cmd = [str(exe), "run", str(movie), "--out", str(out), "--fr", str(fr),
           "--radius", str(radius), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    with TreeSampler(proc.pid) as sampler:
        code = proc.wait()
    seconds = time.perf_counter() - t0
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {code}; see {out / 'run.log'}")
    store_bytes = float(np.prod(shape)) * 4
    rows = []
    for name, a, b in stage_windows((out / "run.log").read_text()):
        read, peak = sampler.window(a, b)
        rows.append({"stage": name, "seconds": b - a, "read GB": read / 1e9,
                     "passes": read / store_bytes, "peak GB": peak / 2**30})
    total_read = sampler.timeline[-1][1] if sampler.timeline else 0
    peak = max((r[2] for r in sampler.timeline), default=0)

    res = load_results(out / "results.h5")
    est = res.estimates
    truth = Estimates.load(folder / "ground_truth.h5")
    s = score(est.A[:, est.accepted_indices], truth, res.summary["mean"])
    floor = read_floor(out / "stages" / "motion" / "movie.zarr")
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    passes = total_read / store_bytes
    rows.append({"stage": "whole run", "seconds": seconds, "read GB": total_read / 1e9,
                 "passes": passes, "peak GB": peak / 2**30})
    return {"movie": str(folder), "shape": shape, "frames": shape[0], "f1": s["f1"],
            "precision": s["precision"], "recall": s["recall"], "stages": rows,
            "store_gb": store_bytes / 1e9, "floor_seconds": floor,
            "floor_gb_per_s": store_bytes / 1e9 / floor,
            "run_over_floor": seconds / (floor * passes) if passes else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("movies", type=Path, nargs="+", help="folders of make_pipeline_data.py, the "
                    "first is the reference of the linear scaling")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scaling"))
    ap.add_argument("--radius", type=float, default=None, help="default: the movie's neuron radius")
    ap.add_argument("--fr", type=float, default=None, help="default: the movie's frame rate")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    results = []
    for folder in args.movies:
        req = json.loads((folder / "spec.json").read_text())["request"]
        fr = args.fr or float(req["frame_rate"])
        radius = args.radius or float(req["neuron_radius"])
        print(f"running {folder} ({req['n_frames']} frames) …", flush=True)
        results.append(run_movie(folder, args.work, fr=fr, radius=radius, keep=args.keep))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))

    ref = results[0]
    ref_time = {r["stage"]: r["seconds"] for r in ref["stages"]}
    for res in results:
        scale = res["frames"] / ref["frames"]
        for row in res["stages"]:
            base = ref_time.get(row["stage"])
            row["× linear"] = row["seconds"] / (base * scale) if base else float("nan")
        print(f"\n{res['movie']}: {res['frames']} frames, Store {res['store_gb']:.1f} GB read cold "
              f"in {res['floor_seconds']:.1f} s ({res['floor_gb_per_s']:.2f} GB/s); F1 {res['f1']:.3f} "
              f"(P {res['precision']:.3f}, R {res['recall']:.3f}); run / (floor × passes) "
              f"{res['run_over_floor']:.2f}")
        print(table(res["stages"], ["stage", "seconds", "× linear", "read GB", "passes", "peak GB"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
