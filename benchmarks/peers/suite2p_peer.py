"""suite2p as a peer in the benchmarks: run it from its own venv, measure it, score it.

suite2p is never a dependency of somascope. It lives in a throwaway venv (default
``/tmp/peer-venv``, or ``$SOMASCOPE_PEER_VENV``); :func:`run_suite2p` (run with OUR python)
launches ``suite2p_runner.py`` with that venv's python as a subprocess, samples the resident
memory of the subprocess and all its descendants every 0.2 s with psutil, and loads the ROIs
it wrote. :func:`score_suite2p` matches them against the simulated ground truth.

(This module is not called ``suite2p.py``: the runner script in this folder imports the real
``suite2p`` package, which a ``suite2p.py`` next to it would shadow.)

    import sys; sys.path.insert(0, "benchmarks")
    from peers.suite2p_peer import run_suite2p, score_suite2p, unavailable_reason
    res = run_suite2p("/tmp/pipeline-data/512x3000/movie.tif", "/tmp/s2p-out", fr=30, diameter=10)
    if res is None: print(unavailable_reason())
    else: print(score_suite2p(res, "/tmp/pipeline-data/512x3000/ground_truth.h5")["f1"])
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PEER_VENV = Path("/tmp/peer-venv")
PEER_VENV_ENV = "SOMASCOPE_PEER_VENV"
RUNNER = Path(__file__).resolve().with_name("suite2p_runner.py")


def peer_venv(venv: str | os.PathLike[str] | None = None) -> Path:
    """The peer venv: ``venv``, else ``$SOMASCOPE_PEER_VENV``, else ``/tmp/peer-venv``."""
    return Path(venv or os.environ.get(PEER_VENV_ENV) or DEFAULT_PEER_VENV)


def peer_python(venv: str | os.PathLike[str] | None = None) -> Path:
    """The python of the peer venv (may not exist; see :func:`unavailable_reason`)."""
    return peer_venv(venv) / "bin" / "python"


def suite2p_version(venv: str | os.PathLike[str] | None = None) -> str | None:
    """suite2p's installed version in the peer venv (from package metadata: fast, does not
    import torch), or None when the venv or the package is missing."""
    python = peer_python(venv)
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('suite2p'))"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = out.stdout.strip() if out.returncode == 0 else ""
    return version or None


def unavailable_reason(venv: str | os.PathLike[str] | None = None) -> str | None:
    """Why suite2p cannot run (a sentence naming the fix), or None when it can."""
    root = peer_venv(venv)
    if not peer_python(venv).exists():
        return (f"suite2p peer venv {root} not found; create it with `python3 -m venv {root} && "
                f"{root}/bin/pip install suite2p` (or set ${PEER_VENV_ENV})")
    if suite2p_version(venv) is None:
        return f"suite2p is not installed in {root}; run `{root}/bin/pip install suite2p`"
    return None


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def run_suite2p(
    movie_tif: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fr: float,
    diameter: float,
    timeout: float | None = None,
    *,
    tau: float = 0.4,
    nonrigid: bool | None = None,
    device: str | None = None,
    venv: str | os.PathLike[str] | None = None,
    interval: float = 0.2,
    extra_args: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Run suite2p's default pipeline on ``movie_tif`` in the peer venv and load its ROIs.

    Parameters
    ----------
    movie_tif
        ``T×H×W`` TIFF movie (one plane, one channel).
    out_dir
        Folder for suite2p's outputs, ``masks.npz``, ``timing.json`` and ``runner.log``.
    fr, diameter, tau
        Frame rate (Hz), cell diameter (px, ≈ 2 × neuron radius), calcium decay time (s).
    timeout
        Seconds before the run (its whole process group) is killed and TimeoutError raised.
    nonrigid
        Force non-rigid (True) or rigid (False) registration; None keeps suite2p's default
        (non-rigid).
    device
        torch device for suite2p; None keeps suite2p's default ('cuda', falling back to CPU).
    interval
        Seconds between memory samples.

    Returns
    -------
    None when the peer venv or suite2p is missing (the reason is printed to stderr and given
    by :func:`unavailable_reason`); otherwise a dict with
    ``seconds`` (wall time of the whole subprocess, interpreter start and imports included),
    ``s2p_seconds`` (wall time of ``suite2p.run_s2p`` alone), ``peak_rss_bytes`` (peak sampled
    RSS of the subprocess tree), ``A`` (csc ``pixels × K``, all ROIs, lam weights, C order of
    ``dims``), ``iscell`` (``K`` bool), ``iscell_prob`` (``K``), ``dims``, ``mean_image``
    (suite2p's registered mean image, ``dims``), ``yoff``/``xoff`` (``T`` rigid offsets, px:
    frame t's content sits at ``+yoff[t]`` relative to suite2p's reference), ``version``,
    ``device``, ``plane_times`` (suite2p's per-step seconds), ``n_rois``, ``n_cells``,
    ``out_dir``, ``log``.

    Raises
    ------
    TimeoutError
        If the run takes longer than ``timeout`` seconds.
    RuntimeError
        If the runner fails; the message ends with the tail of its log.
    """
    import scipy.sparse as sp

    from somascope.pipeline.resources import tree_rss

    reason = unavailable_reason(venv)
    if reason is not None:
        print(f"suite2p skipped: {reason}", file=sys.stderr)
        return None
    movie_tif, out_dir = Path(movie_tif).resolve(), Path(out_dir).resolve()
    if not movie_tif.is_file():
        raise FileNotFoundError(f"{movie_tif}: movie not found; make it with benchmarks/make_pipeline_data.py.")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "runner.log"
    cmd = [str(peer_python(venv)), str(RUNNER), str(movie_tif), str(out_dir), "--fr", str(fr),
           "--diameter", str(diameter), "--tau", str(tau)]
    if nonrigid is not None:
        cmd.append("--nonrigid" if nonrigid else "--rigid")
    if device:
        cmd += ["--device", device]
    cmd += list(extra_args)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}

    peak = 0
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while proc.poll() is None:
                peak = max(peak, tree_rss(proc.pid))
                if timeout is not None and time.perf_counter() - t0 > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)  # the runner's own session: only what we started
                    proc.wait()
                    raise TimeoutError(f"suite2p on {movie_tif} ran over {timeout:g} s and was stopped; "
                                       f"log: {log}")
                time.sleep(interval)
        except BaseException:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"suite2p runner failed (exit code {proc.returncode}) on {movie_tif}; "
                           f"log {log} ends with:\n{_log_tail(log)}")

    with np.load(out_dir / "masks.npz") as z:
        arrays = {k: z[k] for k in z.files}
    timing = json.loads((out_dir / "timing.json").read_text())
    A = sp.csc_matrix((arrays["A_data"], arrays["A_indices"], arrays["A_indptr"]),
                      shape=tuple(int(s) for s in arrays["A_shape"]))
    return {
        "seconds": seconds, "s2p_seconds": float(timing["seconds"]), "peak_rss_bytes": int(peak),
        "A": A, "iscell": arrays["iscell"].astype(bool), "iscell_prob": arrays["iscell_prob"],
        "dims": tuple(int(d) for d in arrays["dims"]),
        "mean_image": arrays.get("mean_image"), "yoff": arrays.get("yoff"), "xoff": arrays.get("xoff"),
        "version": timing["suite2p_version"], "device": timing["settings"].get("torch_device_used"),
        "plane_times": timing["plane_times"], "n_rois": int(timing["n_rois"]), "n_cells": int(timing["n_cells"]),
        "out_dir": out_dir, "log": log,
    }


# ------------------------------------------------------------------ scoring against the truth
def offset_from_shifts(true_shifts: np.ndarray, yoff: np.ndarray, xoff: np.ndarray) -> np.ndarray:
    """The same offset from the per-frame motion: suite2p rolls frame t by ``-(yoff, xoff)``
    onto its reference, and frame t is the truth displaced by ``true_shifts[t]``, so the
    reference is the truth displaced by ``true_shifts[t] - (yoff[t], xoff[t])`` for every t
    (median over frames; rigid motion only). ``true_shifts``: ``T×2`` px."""
    own = np.stack([np.asarray(yoff, float), np.asarray(xoff, float)], axis=1)
    return np.median(np.asarray(true_shifts, float) - own, axis=0)


def score_suite2p(result: dict[str, Any], truth: Any, *, offset: Sequence[float] | None = None) -> dict[str, Any]:
    """F1 of suite2p's ROIs classified as cells against the active true somata.

    ``truth`` is a ground_truth.h5 path (benchmarks/make_pipeline_data.py) or its
    ``Estimates`` (``extra`` holding ``active``, ``is_soma``, ``still_mean`` and, for the
    cross-check, ``shifts``). The true footprints are shifted into suite2p's frame by the
    offset ``somascope.evaluation.classifier.frame_offset`` finds (or ``offset``) and matched with
    ``somascope.metrics.match_footprints`` (Jaccard, Hungarian).

    Returns ``f1``, ``precision``, ``recall``, ``tp``, ``n_true`` (active somata), ``n_est``
    (ROIs classified as cells), ``f1_all_rois`` (every ROI, before suite2p's classifier),
    ``offset`` (px, used), ``offset_from_shifts`` (px, the independent estimate; None without
    rigid true shifts) and ``match`` (the :class:`somascope.metrics.Match`).
    """
    from somascope.cnmf.estimates import Estimates
    from somascope.evaluation.classifier import frame_offset
    from somascope.metrics import match_footprints, shift_footprints

    est = truth if isinstance(truth, Estimates) else Estimates.load(truth)
    dims = tuple(est.dims)
    if tuple(result["dims"]) != dims:
        raise ValueError(f"suite2p ran on frames of {tuple(result['dims'])} px but the truth has {dims}; "
                         "score it against the ground truth of the same movie.")
    extra = est.extra
    keep = np.asarray(extra["active"], bool) & np.asarray(extra["is_soma"], bool)
    if offset is None:
        if result.get("mean_image") is None:
            raise ValueError("suite2p's mean image is missing from the result; pass offset=(dy, dx) explicitly.")
        offset = frame_offset(result["mean_image"], extra["still_mean"])
    offset = np.asarray(offset, dtype=np.float64)
    check = None
    shifts = extra.get("shifts")
    if shifts is not None and result.get("yoff") is not None and len(result["yoff"]) == len(shifts):
        check = offset_from_shifts(shifts, result["yoff"], result["xoff"])
    A_true = shift_footprints(est.A[:, np.flatnonzero(keep)], dims, offset)
    A_s2p = result["A"]
    cells = np.flatnonzero(result["iscell"])
    match = match_footprints(A_true, A_s2p[:, cells], dims)
    all_rois = match_footprints(A_true, A_s2p, dims)
    return {
        "f1": match.f1, "precision": match.precision, "recall": match.recall, "tp": match.tp,
        "n_true": match.n_ref, "n_est": match.n_est, "f1_all_rois": all_rois.f1,
        "offset": offset.tolist(), "offset_from_shifts": None if check is None else check.tolist(),
        "match": match,
    }


def _main(argv: Sequence[str] | None = None) -> int:
    """Command line: run suite2p on a movie made by make_pipeline_data.py and print the score."""
    import argparse

    p = argparse.ArgumentParser(description="Run suite2p (peer venv) on a benchmark movie and score it.")
    p.add_argument("data_dir", type=Path, help="folder from benchmarks/make_pipeline_data.py")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--diameter", type=float, default=None, help="px (default 2 × the spec's neuron radius)")
    p.add_argument("--timeout", type=float, default=None)
    reg = p.add_mutually_exclusive_group()
    reg.add_argument("--nonrigid", dest="nonrigid", action="store_const", const=True, default=None)
    reg.add_argument("--rigid", dest="nonrigid", action="store_const", const=False)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    spec = json.loads((args.data_dir / "spec.json").read_text())
    req = spec["request"]
    diameter = args.diameter or 2 * req["neuron_radius"]
    res = run_suite2p(args.data_dir / spec["files"]["movie"], args.out_dir, fr=req["frame_rate"], diameter=diameter,
                      timeout=args.timeout, tau=req["decay_time"], nonrigid=args.nonrigid, device=args.device)
    if res is None:
        return 2
    score = score_suite2p(res, args.data_dir / spec["files"]["ground_truth"])
    summary = {k: v for k, v in score.items() if k != "match"}
    summary.update(seconds=round(res["seconds"], 1), s2p_seconds=round(res["s2p_seconds"], 1),
                   peak_rss_gib=round(res["peak_rss_bytes"] / 2**30, 2), version=res["version"],
                   device=res["device"], n_rois=res["n_rois"], plane_times=res["plane_times"])
    text = json.dumps(summary, indent=2, default=float)
    (args.out_dir / "score.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
