"""Run suite2p's default pipeline on one TIFF movie and write its ROIs in a neutral format.

Run with the PEER venv's python (suite2p installed there; somascope is never imported)::

    /tmp/peer-venv/bin/python benchmarks/peers/suite2p_runner.py MOVIE.tif OUTDIR --fr 30 --diameter 10 \
        [--tau 0.4] [--rigid | --nonrigid] [--device cpu] [--keep-bin]

suite2p (1.x API: ``suite2p.run_s2p(db=..., settings=...)``) runs with its default settings
except the sampling rate ``fs``, the cell ``diameter`` (px, both axes), the calcium ``tau`` (s),
``torch_device`` (``--device``, default: suite2p's own default, which falls back to the CPU),
and ``registration.nonrigid`` only when ``--rigid`` / ``--nonrigid`` is given (suite2p's
default is non-rigid); one plane, one channel. Registration, detection (sparsery), extraction,
deconvolution and classification (built-in classifier) all run.

Writes
    OUTDIR/suite2p/plane0/...   suite2p's own outputs (its registered binary is deleted after
                                the run unless --keep-bin: it is as large as the movie)
    OUTDIR/masks.npz            A_data, A_indices, A_indptr, A_shape: CSC matrix pixels × K of
                                every ROI's footprint (lam weights at ypix/xpix, pixels in C
                                order of (Ly, Lx), the full registered frame); iscell (K bool),
                                iscell_prob (K), dims, mean_image (registered mean, Ly×Lx),
                                ref_image, yoff, xoff (T, rigid offsets in suite2p's sign), yrange,
                                xrange (suite2p's valid crop)
    OUTDIR/timing.json          seconds (wall time of run_s2p), plane_times (suite2p's steps),
                                versions, settings used, counts
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this folder is sys.path[0]; keep it from shadowing any installed package.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _HERE]

import numpy as np  # noqa: E402


def build_db_and_settings(movie: Path, out_dir: Path, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """suite2p ``db`` (which files, where to write), ``settings`` (defaults + overrides) and
    ``notes`` (settings changed to work around suite2p limitations, with why)."""
    import suite2p

    db = suite2p.default_db()
    db.update(data_path=[str(movie.parent)], file_list=[movie.name], input_format="tif",
              save_path0=str(out_dir), fast_disk=str(out_dir), save_folder="suite2p",
              nplanes=1, nchannels=1)
    settings = suite2p.default_settings()
    settings["fs"] = float(args.fr)
    settings["tau"] = float(args.tau)
    settings["diameter"] = [float(args.diameter), float(args.diameter)]
    if args.device:
        settings["torch_device"] = args.device
    if args.nonrigid is not None:
        settings["registration"]["nonrigid"] = bool(args.nonrigid)
    notes = fit_blocks(settings, frame_shape(movie)) if settings["registration"]["nonrigid"] else {}
    return db, settings, notes


def frame_shape(movie: Path) -> tuple[int, int]:
    """``(Ly, Lx)`` of a TIFF movie's frames (reads only the header)."""
    import tifffile

    with tifffile.TiffFile(movie) as tif:
        shape = tif.series[0].shape
    return int(shape[-2]), int(shape[-1])


def fit_blocks(settings: dict, dims: tuple[int, int]) -> dict:
    """suite2p 1.1 fails in non-rigid registration (``upsample_bilinear2d``: output size 0)
    when a frame side is not larger than the block size (one block on that axis). Halve the
    block side (powers of two) until there are at least two blocks per axis; a no-op for the
    default 128×128 blocks on frames larger than 128 px. Returns what it changed."""
    block = [int(b) for b in settings["registration"]["block_size"]]
    new = list(block)
    for axis, side in enumerate(dims):
        while new[axis] >= side and new[axis] > 8:
            new[axis] //= 2
    if new != block:
        settings["registration"]["block_size"] = tuple(new)
        print(f"note: frame {dims} is not larger than suite2p's block size {tuple(block)}; using {tuple(new)}",
              file=sys.stderr)
        return {"registration.block_size": [block, new],
                "why": "suite2p 1.1 non-rigid registration needs >= 2 blocks per axis"}
    return {}


def footprint_matrix(stat: Any, Ly: int, Lx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSC arrays ``(data, indices, indptr)`` of the ``(Ly·Lx) × K`` footprint matrix: column k
    holds ROI k's ``lam`` at pixels ``ypix·Lx + xpix`` (sorted, duplicates summed)."""
    data, indices, indptr = [], [], [0]
    for roi in stat:
        pix = np.asarray(roi["ypix"], np.int64) * Lx + np.asarray(roi["xpix"], np.int64)
        lam = np.asarray(roi["lam"], np.float32)
        keep = (pix >= 0) & (pix < Ly * Lx)
        pix, lam = pix[keep], lam[keep]
        order = np.argsort(pix, kind="stable")
        pix, lam = pix[order], lam[order]
        uniq, start = np.unique(pix, return_index=True)
        lam = np.add.reduceat(lam, start) if lam.size else lam
        data.append(lam.astype(np.float32))
        indices.append(uniq.astype(np.int32))
        indptr.append(indptr[-1] + uniq.size)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return cat(data, np.float32), cat(indices, np.int32), np.asarray(indptr, np.int64)


def _device_used(settings: dict) -> str:
    """The device suite2p ran on: it falls back to the CPU when the requested one fails."""
    import torch

    wanted = str(settings["torch_device"])
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    if wanted == "mps" and not torch.backends.mps.is_available():
        return "cpu"
    return wanted


def write_outputs(plane: Path, out_dir: Path, seconds: float, db: dict, settings: dict,
                  notes: dict) -> dict[str, Any]:
    """Read suite2p's plane folder and write ``masks.npz`` and ``timing.json`` (atomically)."""
    import suite2p

    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    Ly, Lx = int(ops["Ly"]), int(ops["Lx"])
    stat_path = plane / "stat.npy"
    stat = np.load(stat_path, allow_pickle=True) if stat_path.exists() else np.zeros(0, object)
    iscell_path = plane / "iscell.npy"
    iscell = np.load(iscell_path) if iscell_path.exists() else np.zeros((0, 2))
    data, indices, indptr = footprint_matrix(stat, Ly, Lx)
    arrays = {
        "A_data": data, "A_indices": indices, "A_indptr": indptr,
        "A_shape": np.array([Ly * Lx, len(stat)], np.int64), "dims": np.array([Ly, Lx], np.int64),
        "iscell": iscell[:, 0].astype(bool) if len(iscell) else np.zeros(0, bool),
        "iscell_prob": iscell[:, 1].astype(np.float32) if len(iscell) else np.zeros(0, np.float32),
    }
    for key, name in (("meanImg", "mean_image"), ("refImg", "ref_image"), ("yoff", "yoff"),
                      ("xoff", "xoff"), ("yrange", "yrange"), ("xrange", "xrange")):
        if key in ops and ops[key] is not None:
            arrays[name] = np.asarray(ops[key])
    tmp = out_dir / ".masks.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out_dir / "masks.npz")

    import torch

    timing = {
        "seconds": seconds,
        "plane_times": {k: float(v) for k, v in dict(ops.get("plane_times", {})).items()},
        "suite2p_version": str(suite2p.version), "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "n_rois": int(len(stat)), "n_cells": int(arrays["iscell"].sum()), "dims": [Ly, Lx],
        "n_frames": int(ops.get("nframes", 0)),
        "settings": {"fs": settings["fs"], "tau": settings["tau"], "diameter": list(map(float, np.ravel(settings["diameter"]))),
                     "torch_device": settings["torch_device"], "torch_device_used": _device_used(settings),
                     "nonrigid": bool(settings["registration"]["nonrigid"]),
                     "block_size": list(settings["registration"]["block_size"]),
                     "detection_algorithm": settings["detection"]["algorithm"],
                     "adjusted": notes or None},
        "movie": db["file_list"][0], "data_path": db["data_path"][0],
    }
    tmp = out_dir / ".timing.partial.json"
    tmp.write_text(json.dumps(timing, indent=2) + "\n")
    os.replace(tmp, out_dir / "timing.json")
    return timing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run suite2p's default pipeline on one TIFF movie.")
    p.add_argument("movie", type=Path, help="T×H×W TIFF movie (one plane, one channel)")
    p.add_argument("out_dir", type=Path, help="output folder (created)")
    p.add_argument("--fr", type=float, required=True, help="frame rate, Hz (suite2p fs)")
    p.add_argument("--diameter", type=float, required=True, help="cell diameter, px (≈ 2 × neuron radius)")
    p.add_argument("--tau", type=float, default=0.4, help="calcium decay time, s (default 0.4)")
    reg = p.add_mutually_exclusive_group()
    reg.add_argument("--nonrigid", dest="nonrigid", action="store_const", const=True, default=None,
                     help="non-rigid registration (suite2p's default)")
    reg.add_argument("--rigid", dest="nonrigid", action="store_const", const=False,
                     help="rigid registration only")
    p.add_argument("--device", default=None, help="torch device ('cpu', 'cuda'); default: suite2p's")
    p.add_argument("--keep-bin", action="store_true", help="keep suite2p's registered binary (size of the movie)")
    args = p.parse_args(argv)

    movie = args.movie.resolve()
    if not movie.is_file():
        p.error(f"{movie}: no such movie file")
    out_dir = args.out_dir.resolve()
    save_folder = out_dir / "suite2p"
    if save_folder.exists():  # suite2p would reuse old binaries and settings: start clean
        shutil.rmtree(save_folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("masks.npz", "timing.json"):
        (out_dir / stale).unlink(missing_ok=True)

    import logging

    import suite2p

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    db, settings, notes = build_db_and_settings(movie, out_dir, args)
    t0 = time.perf_counter()
    suite2p.run_s2p(db=db, settings=settings)
    seconds = time.perf_counter() - t0

    plane = save_folder / "plane0"
    timing = write_outputs(plane, out_dir, seconds, db, settings, notes)
    if not args.keep_bin:
        for name in ("data.bin", "data_raw.bin"):
            (plane / name).unlink(missing_ok=True)
    print(f"suite2p {timing['suite2p_version']}: {timing['n_rois']} ROIs, {timing['n_cells']} classified as cells, "
          f"{seconds:.1f} s; wrote {out_dir / 'masks.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
