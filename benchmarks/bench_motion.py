"""Motion correction measured: speed against the FFT floor, accuracy, peak memory, peers.

    python benchmarks/bench_motion.py [--frames 3000] [--size 512] [--workers 2]
        [--mem-size 256] [--mem-frames 1000 10000] [--accuracy-size 256] [--accuracy-frames 1000]
        [--peer-python /tmp/peer-venv/bin/python] [--skip SECTION ...] [--dir DIR]

Sections (``--skip speed accuracy memory peers`` leaves some out):

speed
    A ``frames × size × size`` movie with known rigid motion (a simulated two-photon field of
    view at rest, shifted by a drift-plus-jitter path with exact Fourier shifts, plus
    Poisson–Gaussian noise) is written to a Store. On the same local Dask engine, in the same
    run: the *FFT floor* (each worker reads its chunks and does one forward + one inverse real
    FFT per frame, one thread each), then ``motion.correct`` rigid and piecewise-rigid, each
    writing the corrected movie to a Store. Reported: frames/s, ratio to the floor, peak RSS
    of the process tree, and the rigid RMSE against the true shifts.
accuracy
    ``somascope.simulate.two_photon`` movies: rigid motion → RMSE of the rigid shifts; non-rigid
    motion → distance of the corrected mean image to the motion-free mean image for rigid and
    piecewise-rigid correction (both numbers).
memory
    Peak RSS of the whole process tree during rigid correction of ``mem-size²`` movies of each
    length in ``--mem-frames`` (it should not grow with the number of frames).
peers
    With ``--peer-python`` (a separate venv holding ``jnormcorre`` and/or ``suite2p``), their
    rigid registration of the same speed movie, timed in a subprocess, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).parent))
from _util import measure, table  # noqa: E402

from somascope import motion, simulate  # noqa: E402
from somascope.parallel import Engine  # noqa: E402
from somascope.store import Store  # noqa: E402

PAD = 16  # px around the field of view, so Fourier shifts never wrap content into view


# -- a fast movie with known rigid motion -------------------------------------------------
def true_shifts(n_frames: int, max_shift: float, seed: int) -> np.ndarray:
    """Drift (random walk, smoothed) plus jitter, ``(T, 2)`` px, largest |value| ``max_shift``."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.standard_normal((n_frames, 2)), axis=0)
    drift -= drift.mean(axis=0)
    drift *= 0.8 * max_shift / max(np.abs(drift).max(), 1e-9)
    jitter = rng.standard_normal((n_frames, 2)) * 0.15 * max_shift
    return np.clip(drift + jitter, -max_shift, max_shift).astype(np.float32)


def _gen_block(args: tuple[str, str, str, int, int, int]) -> int:
    store_path, still_path, shifts_path, t0, t1, seed = args
    still = np.load(still_path)
    shifts = np.load(shifts_path)[t0:t1]
    spec = scipy.fft.rfft2(still)
    fy = np.fft.fftfreq(still.shape[0])[:, None]
    fx = np.fft.rfftfreq(still.shape[1])[None, :]
    rng = np.random.default_rng([seed, t0])
    n = still.shape[0] - 2 * PAD
    out = np.empty((t1 - t0, n, n), dtype=np.float32)
    for i, (dy, dx) in enumerate(shifts):
        moved = scipy.fft.irfft2(spec * np.exp(-2j * np.pi * (fy * dy + fx * dx)), s=still.shape)
        clean = np.maximum(moved[PAD:-PAD, PAD:-PAD], 0.0)
        out[i] = clean + rng.standard_normal(clean.shape) * np.sqrt(0.05 * clean + 0.02)
    Store.open(store_path, mode="r+").write(t0, out)
    return t1 - t0


def make_movie(folder: Path, name: str, n_frames: int, size: int, engine: Engine, seed: int = 0
               ) -> tuple[Store, np.ndarray]:
    """A Store of ``n_frames × size × size`` with known rigid shifts (returned)."""
    sim = simulate.two_photon((size + 2 * PAD,) * 2, 40, n_cells=max(20, size * size // 900), motion=None,
                              snr=np.inf, seed=seed)
    still = sim.still_mean.astype(np.float64)
    shifts = true_shifts(n_frames, 6.0, seed)
    still_path, shifts_path = folder / f"{name}-still.npy", folder / f"{name}-shifts.npy"
    np.save(still_path, still)
    np.save(shifts_path, shifts)
    store = Store.create(folder / f"{name}.zarr", (n_frames, size, size), overwrite=True)
    step = store.time_chunk
    engine.map(_gen_block, [(str(store.path), str(still_path), str(shifts_path), t0, min(t0 + step, n_frames), seed)
                            for t0 in range(0, n_frames, step)], desc=f"generating {name}", progress=False)
    return store.finalize(), shifts


def _fft_floor_block(args: tuple[Store, int, int]) -> float:
    store, t0, t1 = args
    frames = store[t0:t1]
    t = time.perf_counter()
    for f in frames:
        scipy.fft.irfft2(scipy.fft.rfft2(f), s=f.shape)
    return time.perf_counter() - t


def rmse_up_to_offset(est: np.ndarray, true: np.ndarray) -> float:
    err = est - true
    err -= np.median(err, axis=0)
    return float(np.sqrt(np.mean(err**2)))


# -- sections ---------------------------------------------------------------------------
def speed(args: argparse.Namespace, folder: Path, engine: Engine) -> tuple[list[dict[str, Any]], Store, np.ndarray]:
    store, shifts = make_movie(folder, "speed", args.frames, args.size, engine)
    chunk = 200
    blocks = [(store, t0, min(t0 + chunk, args.frames)) for t0 in range(0, args.frames, chunk)]
    engine.map(_fft_floor_block, blocks[:2], progress=False)  # warm the workers

    def floor() -> tuple[float, float, float]:
        with measure() as m:
            fft_seconds = sum(engine.map(_fft_floor_block, blocks, progress=False))
        return args.frames / m["seconds"], args.frames / fft_seconds * args.workers, m["peak_gb"]

    rows = []
    motion.correct(store[:64], progress=False, chunk_frames=32)  # compile the kernels once
    for pw in (False, True):
        # the machine is shared: measure the floor right before each method and compare with it
        floor_fps, fft_fps, floor_gb = floor()
        rows.append({"method": "FFT floor (read + rfft2 + irfft2)", "frames/s": floor_fps, "x floor": 1.0,
                     "peak_GB": floor_gb, "note": f"FFT alone {fft_fps:.0f} frames/s"})
        out = folder / f"corrected-{'pw' if pw else 'rigid'}.zarr"
        with measure() as m:
            res = motion.correct(store, out=out, engine=engine, pw_rigid=pw, max_shifts=(8, 8), progress=False,
                                 overwrite=True)
        fps = args.frames / m["seconds"]
        note = (f"RMSE {rmse_up_to_offset(res.shifts, shifts):.3f} px" if not pw
                else f"{res.patch_grid.n_patches} patches")
        rows.append({"method": f"somascope {'pw-rigid' if pw else 'rigid'}", "frames/s": fps,
                     "x floor": floor_fps / fps, "peak_GB": m["peak_gb"], "note": note})
        shutil.rmtree(out, ignore_errors=True)
        if not pw:  # the same without writing the corrected movie (shifts, metrics, mean image only)
            with measure() as m:
                motion.correct(store, engine=engine, max_shifts=(8, 8), progress=False)
            rows.append({"method": "somascope rigid, out=None", "frames/s": args.frames / m["seconds"],
                         "x floor": floor_fps * m["seconds"] / args.frames, "peak_GB": m["peak_gb"],
                         "note": "no Store written"})
    return rows, store, shifts


def _crisp(res: motion.MotionResult) -> str:
    return f"{res.metrics['crispness_raw']:.1f}→{res.metrics['crispness_corrected']:.1f}"


def accuracy(args: argparse.Namespace) -> list[dict[str, Any]]:
    size, n = args.accuracy_size, args.accuracy_frames
    rows = []
    sim = simulate.two_photon((size, size), n, n_cells=size * size // 300, motion="rigid", max_shift=6.0, seed=21)
    res = motion.correct(sim.movie, progress=False, max_shifts=(8, 8))
    rows.append({"movie": f"rigid {size}²×{n}, SNR 1", "method": "rigid",
                 "shift RMSE px": rmse_up_to_offset(res.shifts, sim.shifts),
                 "crispness raw→corrected": _crisp(res)})
    sim = simulate.two_photon((size, size), n, n_cells=size * size // 300, motion="nonrigid", max_shift=4.0,
                              nonrigid_amplitude=2.5, seed=22)
    inner = (slice(16, -16), slice(16, -16))
    still = sim.still_mean[inner]
    for pw in (False, True):
        res = motion.correct(sim.movie, progress=False, max_shifts=(8, 8), pw_rigid=pw, strides=(48, 48),
                             overlaps=(24, 24), max_deviation_rigid=3)
        offset, _ = motion.register_frame(sim.still_mean, res.template, (8, 8))
        mean = motion.shift_frame(res.mean_image, -offset)[inner]
        dist = float(np.sqrt(np.mean((mean - mean.mean() - still + still.mean()) ** 2)) / still.std())
        corr = float(np.corrcoef(mean.ravel(), still.ravel())[0, 1])
        rows.append({"movie": f"non-rigid {size}²×{n}, SNR 1", "method": "pw-rigid" if pw else "rigid",
                     "mean-image distance": dist, "mean-image corr": corr,
                     "crispness raw→corrected": _crisp(res)})
    return rows


def memory(args: argparse.Namespace, folder: Path, engine: Engine) -> list[dict[str, Any]]:
    rows = []
    for n in args.mem_frames:
        store, shifts = make_movie(folder, f"mem{n}", n, args.mem_size, engine, seed=1)
        out = folder / f"mem{n}-corrected.zarr"
        with measure() as m:
            res = motion.correct(store, out=out, engine=engine, max_shifts=(8, 8), progress=False, overwrite=True)
        rows.append({"frames": n, "size": f"{args.mem_size}²", "movie_GB": store.nbytes / 2**30,
                     "peak_tree_RSS_GB": m["peak_gb"], "delta_GB": m["delta_gb"], "seconds": m["seconds"],
                     "frames/s": n / m["seconds"], "RMSE px": rmse_up_to_offset(res.shifts, shifts)})
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(store.final_path, ignore_errors=True)
    return rows


PEER_SCRIPT = r'''
import json, sys, time
import numpy as np
path, which, max_shift = sys.argv[1], sys.argv[2], int(sys.argv[3])
movie = np.load(path, mmap_mode="r")
n_frames, ly, lx = movie.shape
out = {"peer": which}
try:
    if which == "jnormcorre":
        from jnormcorre import motion_correction
        from jnormcorre.utils.lazy_array import lazy_data_loader

        class Frames(lazy_data_loader):
            dtype = property(lambda self: "float32")
            shape = property(lambda self: movie.shape)
            def _compute_at_indices(self, indices):
                return np.asarray(movie[indices], dtype=np.float32)

        t = time.perf_counter()
        mc = motion_correction.MotionCorrect(Frames(), max_shifts=(max_shift, max_shift), frames_per_split=200,
                                             niter_rig=1, pw_rigid=False)
        corrector, _ = mc.motion_correct(save_movie=False)  # template + shifts of every frame
        for t0 in range(0, n_frames, 200):  # apply: register and correct every frame
            corrector.register_frames(np.asarray(movie[t0:t0 + 200], dtype=np.float32))
        out["seconds"] = time.perf_counter() - t
        out["shifts"] = np.asarray(mc.shifts_rig, dtype=float).tolist()
    elif which == "suite2p":
        import torch
        from suite2p.parameters import default_settings
        from suite2p.registration import register
        scale = 16000.0 / float(np.percentile(movie[:: max(1, n_frames // 50)], 99.9))
        t = time.perf_counter()
        data = (np.asarray(movie) * scale).astype(np.int16)  # suite2p registers int16 frames
        settings = default_settings()
        reg = dict(settings.get("registration", settings))
        reg.update({"batch_size": 200, "maxregshift": max_shift / min(ly, lx)})
        pick = np.linspace(0, n_frames - 1, min(300, n_frames)).astype(int)
        cpu = torch.device("cpu")
        ref = register.compute_reference(data[pick], settings=reg, device=cpu)
        corrected = np.empty_like(data)
        res = register.register_frames(data, ref, f_align_out=corrected, batch_size=200, nonrigid=False,
                                       maxregshift=reg["maxregshift"], device=cpu)
        out["seconds"] = time.perf_counter() - t
        offsets = res[3]
        out["shifts"] = np.stack([np.asarray(offsets[0], float), np.asarray(offsets[1], float)], axis=1).tolist()
    else:
        raise ValueError(which)
except Exception as exc:  # report and go on
    import traceback
    out["error"] = f"{type(exc).__name__}: {exc} | " + traceback.format_exc()[-400:].replace("\\n", " ")
print("PEER-RESULT " + json.dumps(out))
'''


def peers(args: argparse.Namespace, folder: Path, store: Store, shifts: np.ndarray, rigid_fps: float,
          floor_fps: float) -> list[dict[str, Any]]:
    npy = folder / "speed-movie.npy"
    mm = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=store.shape)
    for t0 in range(0, store.shape[0], 500):
        mm[t0:t0 + 500] = store[t0:t0 + 500]
    mm.flush()
    del mm
    rows = []
    for which in ("jnormcorre", "suite2p"):
        with measure() as m:
            proc = subprocess.run([args.peer_python, "-c", PEER_SCRIPT, str(npy), which, "8"],
                                  capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER-RESULT ")]
        res = json.loads(line[-1][len("PEER-RESULT "):]) if line else {"error": proc.stderr[-300:]}
        if "error" in res:
            rows.append({"peer": which, "note": res["error"][:120]})
            continue
        fps = store.shape[0] / res["seconds"]
        rmse = None
        if res.get("shifts") is not None:
            est = np.asarray(res["shifts"], dtype=np.float64)
            if est.shape == shifts.shape:
                # peers may report the shift that corrects the frame (opposite sign): take the better
                rmse = min(rmse_up_to_offset(est, shifts), rmse_up_to_offset(-est, shifts))
        rows.append({"peer": which, "frames/s": fps, "somascope rigid / peer": rigid_fps / fps,
                     "x floor": floor_fps / fps,
                     "peak_GB": m["peak_gb"], "RMSE px": rmse, "note": "registration timed inside the peer"})
    npy.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mem-size", type=int, default=256)
    parser.add_argument("--mem-frames", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--accuracy-size", type=int, default=256)
    parser.add_argument("--accuracy-frames", type=int, default=1000)
    parser.add_argument("--peer-python", default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "accuracy", "memory", "peers"])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="somascope-bench-motion-", dir=args.dir))
    report = []
    try:
        with Engine("local", n_workers=args.workers) as engine:
            if "speed" not in args.skip:
                rows, store, shifts = speed(args, folder, engine)
                report.append((f"Speed: {args.frames}×{args.size}×{args.size} float32 Store → Store, "
                               f"{args.workers} worker processes (one thread each)",
                               rows, ["method", "frames/s", "x floor", "peak_GB", "note"]))
                print(table(rows, ["method", "frames/s", "x floor", "peak_GB", "note"]), file=sys.stderr)
                if args.peer_python and "peers" not in args.skip:
                    prow = peers(args, folder, store, shifts, rows[1]["frames/s"], rows[0]["frames/s"])
                    report.append(("Peers, same movie (in memory, their own threading)", prow,
                                   ["peer", "frames/s", "somascope rigid / peer", "x floor", "peak_GB", "RMSE px",
                                    "note"]))
            if "memory" not in args.skip:
                rows = memory(args, folder, engine)
                report.append(("Memory: rigid correction, Store → Store", rows,
                               ["frames", "size", "movie_GB", "peak_tree_RSS_GB", "delta_GB", "seconds", "frames/s",
                                "RMSE px"]))
        if "accuracy" not in args.skip:
            rows = accuracy(args)
            report.append(("Accuracy on somascope.simulate movies (in this process)", rows,
                           ["movie", "method", "shift RMSE px", "mean-image distance", "mean-image corr",
                            "crispness raw→corrected"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for title, rows, cols in report:
        print(f"\n{title}\n")
        print(table(rows, cols))


if __name__ == "__main__":
    main()
