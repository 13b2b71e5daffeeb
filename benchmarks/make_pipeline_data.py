"""Make the simulated two-photon movie of the pipeline benchmark, out of core.

One movie that somascope and the peers (suite2p, …) all read from the same file, with its
ground truth::

    DIR/movie.tif          T×H×W BigTIFF, uncompressed and contiguous (memory-maps), uint16
                           (``stored = round(offset + scale · movie_units)``, like a
                           microscope's ADC) or float32 with ``--dtype float32``
    DIR/movie.zarr         instead of movie.tif with ``--format zarr`` (a somascope Store)
    DIR/ground_truth.h5    the truth as somascope Estimates (A, C, S, b, f, g, in movie units),
                           with ``extra``: active, is_soma, kind (0 soma, 1 process), ring,
                           centers (K×2 px), shifts (T×2 rigid displacement, px, in the
                           motion convention of docs/conventions.md), still_mean (H×W)
    DIR/true_shifts.csv    the same shifts as text (dy,dx per frame)
    DIR/spec.json          what was asked, the encoding, counts of cells, time and memory

The simulator writes the movie frame-chunk by frame-chunk into a Zarr Store
(``somascope.simulate.two_photon(..., out=...)``); the TIFF is then written from that Store
one time-chunk at a time, so the movie is never held in memory: 20,000 frames of 512×512
(≈ 10 GB of uint16, plus 21 GB of float32 Store while converting) need ~0.5 GB of RAM.

A folder whose spec.json records the same request is reused as is (pass ``--overwrite``
to make it again).

    python benchmarks/make_pipeline_data.py --out /tmp/pipeline-data/512x3000
    python benchmarks/make_pipeline_data.py --out /tmp/x --dims 64 64 --frames 3000 --chunk-frames 64
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Cells per 512×512 field of view by default: with the simulator's 10 % processes and 10 %
#: silent cells this gives ≈ 535 active somata, the count of the issue's reference movie.
CELLS_PER_512 = 660
#: uint16 encoding: counts per movie unit (one spike ≈ 1 unit at a soma's brightest pixel;
#: the noise std is ≥ 0.45 units, so ≥ 45 counts: quantisation adds < 0.01 % to the noise)
#: and the offset that keeps negative read-noise excursions (≥ 20 std) above 0.
DEFAULT_SCALE = 100.0
DEFAULT_OFFSET = 1000.0
KIND_CODES = {"soma": 0, "process": 1}
FORMAT_VERSION = 1


def default_cells(dims: Sequence[int]) -> int:
    """Number of simulated components for a field of view ``dims`` (H, W) at the benchmark's
    density (:data:`CELLS_PER_512` per 512×512)."""
    return max(1, round(CELLS_PER_512 * float(np.prod(dims)) / 512**2))


def encode_uint16(frames: np.ndarray, offset: float, scale: float) -> tuple[np.ndarray, int]:
    """``round(offset + scale · frames)`` clipped to uint16; returns ``(counts, n_clipped)``.

    frames : ``t × H × W`` float32 movie units. counts : same shape, uint16.
    """
    x = frames.astype(np.float32, copy=True)
    x *= np.float32(scale)
    x += np.float32(offset)
    np.rint(x, out=x)
    n_clipped = int(np.count_nonzero(x < 0) + np.count_nonzero(x > 65535))
    np.clip(x, 0, 65535, out=x)
    return x.astype(np.uint16), n_clipped


def write_tiff_from_store(store: Any, path: Path, *, dtype: str, offset: float, scale: float,
                          frame_rate: float, chunk_frames: int | None = None) -> dict[str, Any]:
    """Write the frames of ``store`` (a ``T×H×W`` frame source) to the BigTIFF ``path``
    (atomically), one chunk of frames at a time; returns ``{"clipped": n, "chunk_frames": c}``.

    Pages are uncompressed and written in order into one contiguous block, so the file
    memory-maps (``tifffile.memmap``); the ImageDescription holds tifffile's shaped metadata
    (axes TYX) plus ``fps``, ``offset`` and ``scale``.
    """
    import tifffile

    from somascope.io.atomic import atomic_path

    n_frames, height, width = (int(s) for s in store.shape)
    step = int(chunk_frames or getattr(store, "time_chunk", 128))
    if hasattr(store, "time_chunk"):  # whole Zarr chunks: each brick is read once
        step = max(1, round(step / store.time_chunk)) * store.time_chunk
    clipped = [0]

    def frames() -> Iterator[np.ndarray]:
        for t0 in range(0, n_frames, step):
            block = np.asarray(store[t0:min(n_frames, t0 + step)], dtype=np.float32)
            if dtype == "uint16":
                block, n = encode_uint16(block, offset, scale)
                clipped[0] += n
            yield from block

    meta = {"axes": "TYX", "fps": float(frame_rate)}
    if dtype == "uint16":
        meta.update(offset=float(offset), scale=float(scale))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, frames(), shape=(n_frames, height, width), dtype=dtype, bigtiff=True,
                         photometric="minisblack", metadata=meta)
    return {"clipped": clipped[0], "chunk_frames": step}


def _truth_estimates(sim: Any, spec: dict[str, Any]) -> Any:
    from somascope.cnmf.estimates import Estimates

    kind = np.array([KIND_CODES[str(k)] for k in sim.kind], dtype=np.int8)
    return Estimates(
        A=sim.A, dims=tuple(sim.dims), C=sim.C, S=sim.S, b=sim.b, f=sim.f, g=sim.g,
        frame_rate=sim.frame_rate, seed=sim.seed,
        params={"simulation": sim.params, "movie_encoding": spec["encoding"]},
        extra={"active": np.asarray(sim.active, dtype=bool), "is_soma": kind == KIND_CODES["soma"],
               "kind": kind, "ring": np.asarray(sim.ring, dtype=bool),
               "centers": np.asarray(sim.centers, dtype=np.float64),
               "shifts": np.asarray(sim.shifts, dtype=np.float32),
               "still_mean": np.asarray(sim.still_mean, dtype=np.float32)},
    )


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that determine the files (compared to reuse a cached folder)."""
    dims = [int(d) for d in args.dims]
    return {
        "format_version": FORMAT_VERSION, "dims": dims, "n_frames": int(args.frames),
        "n_cells": int(args.cells if args.cells is not None else default_cells(dims)),
        "seed": int(args.seed), "frame_rate": float(args.fr), "decay_time": float(args.decay_time),
        "neuron_radius": float(args.radius), "motion": None if args.motion == "none" else args.motion,
        "max_shift": float(args.max_shift), "snr": float(args.snr), "format": args.format,
        "dtype": args.dtype if args.format == "tif" else "float32",
        # only when given, so that folders made before the option existed are still reused
        **({"bleach_time": float(args.bleach_time)} if args.bleach_time is not None else {}),
    }


def _cached(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    spec_path = out / "spec.json"
    if not spec_path.is_file():
        return None
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError):
        return None
    movie = out / spec.get("files", {}).get("movie", "?")
    if spec.get("request") == request and movie.exists() and (out / "ground_truth.h5").is_file():
        return spec
    return None


def make_pipeline_data(args: argparse.Namespace) -> dict[str, Any]:
    """Simulate, write the movie, truth and spec into ``args.out``; return the spec."""
    from somascope import __version__, simulate
    from somascope.io.atomic import atomic_write_text

    out: Path = args.out
    request = _request(args)
    if not args.overwrite:
        spec = _cached(out, request)
        if spec is not None:
            print(f"reusing {out} (same request in spec.json; --overwrite makes it again)")
            return spec
    out.mkdir(parents=True, exist_ok=True)
    encoding = ({"dtype": "uint16", "offset": float(args.offset), "scale": float(args.scale),
                 "formula": "stored = round(offset + scale * movie_units), clipped to 0..65535"}
                if request["dtype"] == "uint16" else
                {"dtype": "float32", "offset": 0.0, "scale": 1.0, "formula": "stored = movie_units"})
    spec: dict[str, Any] = {"request": request, "encoding": encoding}

    t_start = time.perf_counter()
    zarr_path = out / ("movie.zarr" if args.format == "zarr" else ".simulated-movie.zarr")
    sim = simulate.two_photon(
        dims=tuple(request["dims"]), n_frames=request["n_frames"], n_cells=request["n_cells"],
        frame_rate=request["frame_rate"], decay_time=request["decay_time"],
        neuron_radius=request["neuron_radius"], motion=request["motion"], max_shift=request["max_shift"],
        snr=request["snr"], seed=request["seed"], out=zarr_path, overwrite=True,
        **({"bleach_time": request["bleach_time"]} if "bleach_time" in request else {}),
        chunk_frames=args.chunk_frames, progress=not args.quiet,
    )
    t_sim = time.perf_counter() - t_start
    print(simulate.describe(sim))

    t0 = time.perf_counter()
    if args.format == "tif":
        movie_name = "movie.tif"
        info = write_tiff_from_store(sim.movie, out / movie_name, dtype=request["dtype"],
                                     offset=encoding["offset"], scale=encoding["scale"],
                                     frame_rate=request["frame_rate"], chunk_frames=args.chunk_frames)
        if not args.keep_zarr:
            shutil.rmtree(zarr_path)
        if info["clipped"]:
            print(f"warning: {info['clipped']} pixel readings were clipped to the uint16 range; "
                  "lower --scale or raise --offset", file=sys.stderr)
    else:
        movie_name, info = "movie.zarr", {"clipped": 0, "chunk_frames": None}
    t_write = time.perf_counter() - t0

    kind = np.asarray(sim.kind)
    soma, active = kind == "soma", np.asarray(sim.active, dtype=bool)
    spec.update({
        "files": {"movie": movie_name, "ground_truth": "ground_truth.h5", "true_shifts": "true_shifts.csv"},
        "shape": [int(s) for s in sim.shape],
        "n_components": int(sim.n_cells), "n_somata": int(soma.sum()), "n_processes": int((~soma).sum()),
        "n_active": int(active.sum()), "n_active_somata": int((soma & active).sum()),
        "max_abs_shift_px": float(np.abs(sim.shifts).max()) if sim.shifts.size else 0.0,
        "clipped_readings": info["clipped"], "photon_gain": float(sim.photon_gain),
        "read_noise": float(sim.read_noise), "describe": simulate.describe(sim),
        "kind_codes": KIND_CODES, "somascope_version": __version__,
        "seconds": {"simulate": round(t_sim, 2), "write_movie": round(t_write, 2)},
    })
    _truth_estimates(sim, spec).save(out / "ground_truth.h5")
    header = ",".join("dz dy dx".split()[-sim.shifts.shape[1]:])
    atomic_write_text(out / "true_shifts.csv", header + "\n" + "\n".join(
        ",".join(f"{v:.4f}" for v in row) for row in np.asarray(sim.shifts)) + "\n")
    spec["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    spec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    spec["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(out / "spec.json", json.dumps(spec, indent=2) + "\n")  # last: marks completion
    return spec


def ensure_pipeline_data(out: str | Path, **options: Any) -> dict[str, Any]:
    """Make (or reuse) the benchmark data in ``out`` from Python; returns the spec (dict).

    ``options`` are the command-line options with underscores, e.g.
    ``ensure_pipeline_data("/tmp/pipeline-data/512x3000", dims=(512, 512), frames=3000,
    motion="rigid", seed=0)``; flags take True (``overwrite=True``). Quiet by default.
    """
    options.setdefault("quiet", True)
    argv = ["--out", str(out)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        elif value is not None:
            argv += [flag, str(value)]
    return make_pipeline_data(parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--dims", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--cells", type=int, default=None,
                   help=f"components incl. processes and silent cells (default {CELLS_PER_512} per 512², "
                        "≈ 535 active somata on 512×512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("tif", "zarr"), default="tif")
    p.add_argument("--dtype", choices=("uint16", "float32"), default="uint16", help="TIFF sample type")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="uint16 counts per movie unit")
    p.add_argument("--offset", type=float, default=DEFAULT_OFFSET, help="uint16 counts added")
    p.add_argument("--fr", type=float, default=30.0, help="frame rate, Hz")
    p.add_argument("--decay-time", type=float, default=0.4, help="calcium decay time, s")
    p.add_argument("--radius", type=float, default=5.0, help="neuron radius, px")
    p.add_argument("--motion", choices=("rigid", "nonrigid", "none"), default="rigid")
    p.add_argument("--max-shift", type=float, default=5.0, help="largest rigid displacement, px")
    p.add_argument("--snr", type=float, default=1.0, help="one spike's amplitude over the noise std")
    p.add_argument("--bleach-time", type=float, default=None,
                   help="bleaching time constant, s (default: the simulator's 1000 s, which leaves 4 %% "
                        "of the fluorescence after an hour; give a longer one for long recordings)")
    p.add_argument("--chunk-frames", type=int, default=None, help="frames per chunk (simulation and TIFF)")
    p.add_argument("--keep-zarr", action="store_true", help="keep the simulator's float32 Store next to the TIFF")
    p.add_argument("--overwrite", action="store_true", help="make it again even if DIR holds the same request")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = make_pipeline_data(args)
    print(f"{spec['n_active_somata']} active somata ({spec['n_components']} components: "
          f"{spec['n_somata']} somata, {spec['n_processes']} processes, {spec['n_active']} active)")
    secs = spec["seconds"]
    print(f"wrote {args.out}/{spec['files']['movie']}, ground_truth.h5, spec.json in {secs['total']:.1f} s "
          f"(simulate {secs['simulate']:.1f} s, movie {secs['write_movie']:.1f} s), "
          f"peak RSS {spec['peak_rss_bytes'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
