"""Detection accuracy of ``somascope run`` at default parameters, across movies with ground truth.

Each movie is a folder in the ``dev_sim`` layout (``movie.tif`` + ``gt.npz``): the independent
simulator's ``../shared/data/dev_sim/dev_2p`` and members of the hard family
(``benchmarks/make_hard_family.py``, which writes ``family.json``). Every movie is run as a user
would: ``somascope run movie.tif --fr F --radius R`` and ``--decay-time D`` only for slow
indicators (D ≥ :data:`SLOW_DECAY` s), nothing else; then scored by the dev_sim rule
(``benchmarks/score_gt.py``). Prints one row per movie and the medians.

    .venv/bin/python benchmarks/make_hard_family.py /tmp/family --n 8
    .venv/bin/python benchmarks/bench_accuracy.py --family /tmp/family --dev --work /tmp/acc

Options: ``--set KEY=VALUE`` (repeatable) passes parameters to every run, to compare a variant
with the defaults; ``--keep`` reuses finished run folders in ``--work``; ``--json`` writes the rows;
``--suite2p`` runs suite2p beside (its defaults + ``fs``, ``diameter`` and ``tau`` as a user gives
them; from its own venv, see ``benchmarks/peers/README.md``) and scores it the same way; both
tools then read the same uncompressed copy of the movie, so that the wall times compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import measure  # noqa: E402
from score_gt import format_scores, score_footprints, score_run  # noqa: E402

#: Decay time (s) from which a user names the indicator's decay (GCaMP6s-like) on the command line.
SLOW_DECAY = 1.0
DEV_2P = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_sim" / "dev_2p"
DEV_1P = DEV_2P.with_name("dev_1p")


def movies(family: Path | None, dev: bool, dev_1p: bool = False) -> list[dict[str, Any]]:
    """The movies to run: ``name``, ``folder``, ``fr``, ``radius``, ``decay`` (s; None: not known
    to the user, the run gets no ``--decay-time``), ``kind`` (``2p``/``1p``: one-photon movies are
    run with ``--1p``)."""
    out = []
    for wanted, folder, kind in ((dev, DEV_2P, "2p"), (dev_1p, DEV_1P, "1p")):
        if wanted:
            gt = np.load(folder / "gt.npz", allow_pickle=True)
            p = json.loads(str(gt["params"]))
            # run as the user does: --fr and --radius only (decay 0.4–1.5 s, GCaMP6f-like)
            out.append({"name": folder.name, "folder": folder, "fr": p["fs"], "radius": p["radius"], "decay": None,
                        "kind": kind})
    if family is not None:
        info = json.loads((family / "family.json").read_text())
        for m in info["members"]:
            out.append({"name": m["name"], "folder": family / m["name"], "fr": m["fr"], "radius": m["radius"],
                        "decay": m["decay"], "motion": m.get("motion"), "kind": info.get("kind", "2p")})
    return out


def run_one(movie: dict[str, Any], work: Path, sets: list[str], keep: bool, src: Path | None = None,
            tif: Path | None = None) -> dict[str, Any]:
    """``somascope run`` on one movie (fresh process) and its scores; ``seconds`` and ``peak_gb``
    (process tree, sampled) of the run.
    ``src``: run the somascope package found there instead (e.g. an older commit's ``src``).
    ``tif``: the file to read instead of the movie's ``movie.tif`` (e.g. an uncompressed copy)."""
    out = work / movie["name"]
    tif = movie["folder"] / "movie.tif" if tif is None else tif
    cmd = [str(Path(sys.executable).with_name("somascope")), "run", str(tif),
           "--out", str(out), "--fr", str(movie["fr"]), "--radius", str(movie["radius"]), "-q"]
    if movie["decay"] is not None and movie["decay"] >= SLOW_DECAY:
        cmd += ["--decay-time", str(movie["decay"])]
    if movie.get("kind") == "1p":
        cmd += ["--1p"]
    for s in sets:
        cmd += ["--set", s]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    with measure() as m:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return {"name": movie["name"], "seconds": m["seconds"], "peak_gb": m["peak_gb"],
            **score_run(out, movie["folder"] / "gt.npz")}


def _peer_tiff(movie: dict[str, Any], work: Path) -> Path:
    """The TIFF both tools read when suite2p runs beside: an uncompressed one."""
    return uncompressed_tiff(movie["folder"] / "movie.tif", work / f"{movie['name']}-uncompressed")


def uncompressed_tiff(movie_tif: Path, folder: Path, chunk: int = 500) -> Path:
    """``movie_tif`` itself when its pages are uncompressed, else an uncompressed copy in
    ``folder`` (written frame-chunk by frame-chunk). suite2p 1.1.0 misreads zlib-compressed
    TIFFs (dev_sim's format): it finds 0–2 ROIs on them and 37 on the same movie uncompressed."""
    import tifffile

    from somascope.io.atomic import atomic_path

    with tifffile.TiffFile(movie_tif) as tif:
        if tif.pages[0].compression == 1:
            return movie_tif
        n = len(tif.pages)
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "movie.tif"
        if out.is_file():
            return out
        page = tif.pages[0]

        def pages() -> Any:
            for a in range(0, n, chunk):
                yield from tif.asarray(key=range(a, min(a + chunk, n)))

        with atomic_path(out) as tmp:
            tifffile.imwrite(tmp, pages(), shape=(n, *page.shape), dtype=page.dtype, bigtiff=True)
    return out


def run_suite2p_on(movie: dict[str, Any], work: Path) -> dict[str, Any] | None:
    """suite2p (peer venv, defaults + ``fs``, ``diameter`` = 2·radius, ``tau``) on one movie
    (an uncompressed copy, :func:`uncompressed_tiff`), scored the same way (its classifier's
    cells are its accepted components); None when the peer is not installed. A finished run in
    ``work/<name>-suite2p`` is reused."""
    from peers.suite2p_peer import run_suite2p

    out = work / f"{movie['name']}-suite2p"
    tau = movie["decay"] if movie["decay"] is not None and movie["decay"] >= SLOW_DECAY else 0.4
    try:
        tif = _peer_tiff(movie, work)
        res = run_suite2p(tif, out, fr=movie["fr"], diameter=2 * movie["radius"], tau=tau,
                          timeout=3600)
    except RuntimeError as err:  # e.g. "no ROIs were found": suite2p finds nothing on this movie
        reason = str(err).strip().splitlines()[-1]
        print(f"  suite2p failed on {movie['name']}: {reason}", flush=True)
        return {"name": movie["name"] + " s2p", "failed": reason, "f1": 0.0, "precision": 0.0, "recall": 0.0,
                "seconds": float("nan")}
    if res is None:
        return None
    gt = np.load(movie["folder"] / "gt.npz", allow_pickle=True)
    row = score_footprints(res["A"], np.flatnonzero(res["iscell"]), res["mean_image"], gt)
    return {"name": movie["name"] + " s2p", "seconds": res["seconds"], "peak_gb": res["peak_rss_bytes"] / 2**30, **row}


def medians(rows: list[dict[str, Any]]) -> str:
    """``median F1 … (min …), median P …, median R …`` of scored rows."""
    f1 = [r["f1"] for r in rows]
    return (f"median F1 {np.median(f1):.3f} (min {np.min(f1):.3f}), median P "
            f"{np.median([r['precision'] for r in rows]):.3f}, median R {np.median([r['recall'] for r in rows]):.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, help="folder written by make_hard_family.py")
    ap.add_argument("--dev", action="store_true", help="also run ../shared/data/dev_sim/dev_2p")
    ap.add_argument("--dev-1p", action="store_true", help="also run ../shared/data/dev_sim/dev_1p (with --1p)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/somascope-accuracy"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--keep", action="store_true", help="reuse finished stages in --work")
    ap.add_argument("--only", nargs="*", help="names of the movies to run")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--somascope-src", type=Path, help="run the somascope package in this src folder "
                    "(e.g. `git worktree add /tmp/base COMMIT` → /tmp/base/src) to measure a baseline")
    ap.add_argument("--suite2p", action="store_true", help="also run suite2p (benchmarks/peers) on every movie")
    args = ap.parse_args(argv)
    todo = movies(args.family, args.dev, args.dev_1p)
    if args.only:
        todo = [m for m in todo if m["name"] in args.only]
    if not todo:
        ap.error("nothing to run: give --family and/or --dev")
    rows = []
    for m in todo:
        # beside suite2p, both tools read the same (uncompressed) file: the times compare like with like
        row = run_one(m, args.work, args.set, args.keep, args.somascope_src,
                      tif=_peer_tiff(m, args.work) if args.suite2p else None)
        row.update(fr=m["fr"], radius=m["radius"], decay=m["decay"])
        rows.append(row)
        decay = "-" if m["decay"] is None else f"{m['decay']:.2f}"
        print(f"{m['name']:8s} r {m['radius']:4.1f} fr {m['fr']:4.1f} decay {decay:4s} "
              f"{row['seconds']:5.0f} s  {format_scores(row)}", flush=True)
        if args.suite2p:
            peer = run_suite2p_on(m, args.work)
            if peer is not None:
                row["suite2p"] = peer
                if "failed" not in peer:
                    print(f"{'  suite2p':35s} {peer['seconds']:5.0f} s  {format_scores(peer)}", flush=True)
                    print(f"  time somascope / suite2p {row['seconds'] / peer['seconds']:.2f}, peak memory "
                          f"{row['peak_gb']:.2f} GB / {peer['peak_gb']:.2f} GB", flush=True)
    bins = np.array([r["recall_by_snr"] for r in rows], float)
    with np.errstate(all="ignore"):
        pooled = np.nanmean(bins, axis=0)
    print(f"somascope: {medians(rows)}, median trace r {np.nanmedian([r['trace_r'] for r in rows]):.3f}; "
          "mean recall by SNR bin " + " ".join(f"{v:.2f}" for v in pooled))
    peers = [r["suite2p"] for r in rows if "suite2p" in r]
    if peers:
        ours = np.nansum([r["seconds"] for r in rows if "suite2p" in r])
        print(f"suite2p: {medians(peers)}; somascope / suite2p wall time "
              f"{ours / np.nansum([r['seconds'] for r in peers]):.2f} "
              f"({sum('failed' in r for r in peers)} suite2p failures count as F1 0)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
