"""The ``somascope`` command line.

Each subcommand is a thin layer over the library: parse arguments, call the stage, write
files. The error policy (:func:`main`), the same for every command:

- bad input or usage: one line ``somascope: error: <what is wrong>. Fix: <what to change>`` on
  stderr, exit status 2;
- a fault at run time that is not the input's (the output disk full or read-only, a lost Dask
  cluster): one line saying what was kept, exit status 1;
- anything else is a bug: one line ``somascope: internal error (<Type>: <message>); rerun with
  --debug for the traceback and report it``, exit status 1;
- Ctrl-C: one line saying what was kept, exit status 130.

``--debug`` shows the full traceback instead, and the log lines of tifffile and Dask's
distributed, which are kept off the console otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__

log = logging.getLogger("somascope")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: a usage error is one line on stderr,
    ``somascope: error: <command>: <what>. Fix: see 'somascope <command> --help'.``, exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("somascope").strip()
        where = f"{command}: " if command else ""
        helper = f"somascope {command} --help" if command else "somascope --help"
        self.exit(2, f"somascope: error: {where}{message.rstrip('.')}. Fix: see '{helper}'.\n")


# -- shared argument groups -----------------------------------------------------------
def _add_movie_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("movie", nargs="+", help="movie file(s) or a folder of TIFFs (concatenated in time)")
    p.add_argument("--dataset", help="HDF5/Zarr dataset path inside the file")
    p.add_argument("--axes", help="stored axis order of array files, e.g. yxt (time last) or tzyxc")
    p.add_argument("--fr", "--frame-rate", dest="frame_rate", type=float, help="frame rate in Hz")
    p.add_argument("--n-channels", type=int, help="channels interleaved frame by frame (ScanImage)")
    p.add_argument("--channel", type=int, help="channel to keep (interleaved, or a 'c' axis)")
    p.add_argument("--n-planes", type=int, help="planes interleaved frame by frame")
    p.add_argument("--plane", type=int, help="plane to keep (default: all planes as a volume)")
    p.add_argument("--shape", type=int, nargs="+", help="raw binary files: shape, e.g. 3000 512 512")
    p.add_argument("--dtype", help="raw binary files: dtype, e.g. uint16 or >u2")


def _open(args: argparse.Namespace) -> Any:
    from .io import open_movie

    paths = args.movie[0] if len(args.movie) == 1 else args.movie
    _refuse_results_file(args.movie)
    return open_movie(
        paths, dataset=args.dataset, axes=args.axes, frame_rate=args.frame_rate,
        n_channels=args.n_channels, channel=args.channel, n_planes=args.n_planes, plane=args.plane,
        shape=tuple(args.shape) if args.shape else None, dtype=args.dtype,
    )


def _refuse_results_file(paths: Sequence[str]) -> None:
    """A somascope results file given where a movie is expected: say what it is (and refuse
    one written by a newer somascope as every reader of results does)."""
    if len(paths) != 1 or Path(paths[0]).suffix.lower() not in (".h5", ".hdf5") or not Path(paths[0]).is_file():
        return
    import h5py

    from .io import MovieError

    path = Path(paths[0])
    try:
        with h5py.File(path, "r") as fh:
            group = fh if fh.attrs.get("format") is not None else fh.get("estimates")
            is_estimates = group is not None and group.attrs.get("format") == "somascope-estimates"
            if fh.attrs.get("pipeline_format") is None and not is_estimates:
                return
            from .pipeline.results import check_schema

            check_schema(fh, path)
    except OSError:
        return  # not HDF5 at all: the movie readers say what is wrong
    raise MovieError(f"{path}: is a somascope results file, not a movie. Fix: look at it with "
                     f"'somascope view {path}', or give the movie it was made from.")


@contextlib.contextmanager
def _new_output_folder(out: Path) -> Iterator[None]:
    """Create ``out``; when the command then fails (bad input, a fault, Ctrl-C) and the folder
    did not exist before, remove it, so that no half-written output looks like a result."""
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BrokenPipeError:
        raise  # only the reader of the command's messages went away: the output is complete
    except BaseException:
        if not existed:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


# -- commands ---------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    movie = _open(args)
    with movie:
        n_float = 4 * int(__import__("numpy").prod(movie.shape, dtype="int64"))
        meta = movie.metadata
        # a reader whose path names its recording but is not its data (a Bruker XML) says where the data are
        on_disk = sum(_disk_size(Path(p)) for p in meta.get("data_paths") or movie.paths)
        info: dict[str, Any] = {
            "source": [str(p) for p in movie.paths],
            "format": meta.get("format"),
            "shape": list(movie.shape),
            "axes": "t z y x" if movie.ndim == 4 else "t y x",
            "dtype": str(movie.dtype),
            "frame_rate_hz": movie.frame_rate,
            "pixel_size_um": meta.get("pixel_size_um"),
            "duration_s": round(movie.shape[0] / movie.frame_rate, 3) if movie.frame_rate else None,
            "size_on_disk": _gb(on_disk),
            "size_as_float32": _gb(n_float),
            "store_disk_needed": _gb(n_float),
            "memory_estimate": (
                f"{_gb(n_float)} to hold it as float32; processing streams it in chunks "
                f"(about {_gb(4 * 256 * int(__import__('numpy').prod(movie.shape[1:])))} per chunk of 256 frames per worker)"
            ),
        }
        info = {k: v for k, v in info.items() if v is not None or k == "frame_rate_hz"}
        if meta.get("details"):  # what a format's metadata adds (a reader's own keys)
            info["format_details"] = meta["details"]
        from .params import MAX_FRAME_RATE_HZ

        if movie.frame_rate is None:
            info["warning"] = "frame rate unknown: pass --fr HZ to later steps"
        elif movie.frame_rate > MAX_FRAME_RATE_HZ:
            info["warning"] = (f"the frame rate in the metadata, {movie.frame_rate:g} Hz, is above "
                               f"{MAX_FRAME_RATE_HZ:g} Hz, faster than any calcium imaging: pass the real rate with "
                               "--fr HZ to later steps")
        if movie.dropped_frames:
            info["incomplete_trailing_frames"] = movie.dropped_frames
        if args.check:
            info["non_finite"] = movie.count_nonfinite(progress=not args.quiet)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if key == "source":
                value = value[0] if len(value) == 1 else f"{value[0]} … {value[-1]} ({len(value)} files)"
            elif key == "shape":
                value = " × ".join(map(str, value))
            print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


#: The hard volume's size when --dims is not given: 4 planes of 192×192 px.
HARD_VOLUME_DIMS = (4, 192, 192)


def cmd_simulate(args: argparse.Namespace) -> int:
    out: Path = args.out
    # refused before anything is written
    if args.channels != 1 and args.preset != "hard":
        raise SystemExit("--channels 2 (a structural channel) is for the hard families. "
                         "Fix: add --preset hard, or drop --channels.")
    if args.preset != "hard" and (args.plane_spacing is not None or args.axial_radius is not None):
        raise SystemExit("--plane-spacing and --axial-radius are for --preset hard --kind volume. Fix: drop them.")
    if args.dims and len(args.dims) != (3 if args.kind == "volume" else 2):
        raise SystemExit(f"--dims takes {'Z H W' if args.kind == 'volume' else 'H W'} for --kind {args.kind}; "
                         f"got {len(args.dims)} numbers. Fix: e.g. --dims {'4 128 128' if args.kind == 'volume' else '256 256'}.")
    with _new_output_folder(out):
        return _simulate_into(args, out)


def _simulate_into(args: argparse.Namespace, out: Path) -> int:
    import numpy as np

    from . import simulate
    from .cnmf.estimates import Estimates
    from .io.atomic import atomic_path, atomic_write_text

    if args.preset == "hard":
        hard: dict[str, Any] = {"n_frames": args.frames, "frame_rate": args.fr, "seed": args.seed,
                                "motion": "rigid" if args.motion is None else args.motion, "progress": not args.quiet}
        if args.dims:
            hard["dims"] = tuple(args.dims)
        elif args.kind == "volume":
            hard["dims"] = HARD_VOLUME_DIMS
        if args.radius is not None:
            hard["neuron_radius"] = args.radius
        if args.decay_time is not None:
            hard["decay_time"] = args.decay_time
        if args.channels != 1:
            hard["channels"] = args.channels
        if args.kind == "volume":
            for key in ("plane_spacing", "axial_radius"):
                if getattr(args, key) is not None:
                    hard[key] = getattr(args, key)
        simulator = {"2p": simulate.two_photon, "1p": simulate.one_photon, "volume": simulate.volumetric}[args.kind]
        sim = simulator(**hard, preset="hard")
        simulate.write_ground_truth_folder(sim, out)
        print(simulate.describe(sim))
        if args.channels == 2:
            print(f"channel 0: functional, channel 1: structural ({int(sim.extra['labelled'].sum())} of "
                  f"{int((sim.kind == 'soma').sum())} somata labelled); read one with --n-channels 2 --channel 0|1")
        print(f"wrote {out / 'movie.tif'}, {out / 'gt.npz'}")
        return 0
    if args.motion is None:
        args.motion = "none"
    kind = {"2p": simulate.two_photon, "1p": simulate.one_photon, "volume": simulate.volumetric}[args.kind]
    spec: dict[str, Any] = {"n_frames": args.frames, "frame_rate": args.fr, "seed": args.seed,
                            "motion": None if args.motion == "none" else args.motion, "progress": not args.quiet}
    if args.dims:
        spec["dims"] = tuple(args.dims)
    if args.cells is not None:
        spec["n_cells"] = args.cells
    elif args.dims:  # keep the default density of the simulator's default field of view
        import inspect

        defaults = inspect.signature(kind).parameters
        area = float(np.prod(args.dims)) / float(np.prod(defaults["dims"].default))
        spec["n_cells"] = max(1, round(defaults["n_cells"].default * area))
    movie_path = out / f"movie.{args.format}"
    if args.format == "zarr":  # out of core: frames go straight to disk
        sim = kind(**spec, out=movie_path, overwrite=True)
    else:
        sim = kind(**spec)
        movie = np.asarray(sim.movie, dtype=np.float32)
        with atomic_path(movie_path) as tmp:
            if args.format == "tif":
                import tifffile

                # an ImageJ stack (a volume: a TZYX hyperstack), as microscopes' exports are
                tifffile.imwrite(tmp, movie, imagej=True, bigtiff=movie.nbytes > 2**31,
                                 metadata={"axes": "TYX" if movie.ndim == 3 else "TZYX",
                                           "finterval": 1 / sim.frame_rate})
            else:
                import h5py

                with h5py.File(tmp, "w") as f:
                    ds = f.create_dataset("mov", data=movie, chunks=True)
                    ds.attrs["fr"] = sim.frame_rate
    truth = Estimates(A=sim.A, dims=tuple(sim.dims), C=sim.C, S=sim.S, b=sim.b, f=sim.f, g=sim.g,
                      frame_rate=sim.frame_rate, seed=args.seed, params={"simulation": sim.params},
                      extra={"active": np.asarray(sim.active), "is_soma": np.asarray(sim.kind) == "soma",
                             "shifts": np.asarray(sim.shifts), "still_mean": np.asarray(sim.still_mean)})
    truth.save(out / "ground_truth.h5")
    header = ",".join("dz dy dx".split()[-sim.shifts.shape[1]:])
    atomic_write_text(out / "true_shifts.csv", header + "\n" + "\n".join(
        ",".join(f"{v:.4f}" for v in row) for row in np.asarray(sim.shifts)) + "\n")
    print(simulate.describe(sim))
    print(f"wrote {movie_path}, {out / 'ground_truth.h5'}, {out / 'true_shifts.csv'}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .summary import save_summary, summary_images

    movie = _open(args)
    out = Path(args.out) if args.out else Path(movie.paths[0]).with_suffix("").with_name(
        Path(movie.paths[0]).stem + "_summary")
    with movie:
        images = summary_images(
            movie, chunk_frames=args.chunk_frames, neighbours=args.neighbours,
            max_corr_frames=args.max_corr_frames, gSig=args.gsig, progress=not args.quiet,
        )
    written = save_summary(images, out)
    print(f"wrote {len(written)} files to {out}")
    return 0


def cmd_motion_correct(args: argparse.Namespace) -> int:
    import numpy as np

    from . import motion
    from .io import iter_chunks
    from .motion.plots import plot_quality, plot_shifts
    from .io.atomic import atomic_path
    from .params import Params
    from .parallel import Engine
    from .report import save_figure

    movie = _open(args)
    if args.params:
        params = Params.load(args.params)
    else:  # the run's defaults for this movie (a volume's axes, a thin stack's in-plane motion)
        from .pipeline.preflight import build_params

        params = build_params(None, movie, fr=movie.frame_rate or 30.0)[0]
    overrides: dict[str, Any] = {}
    if args.pw_rigid is not None:
        overrides["pw_rigid"] = args.pw_rigid
    if args.max_shifts:
        overrides["max_shifts"] = tuple(args.max_shifts)
    if args.gsig_filt:
        overrides["gSig_filt"] = tuple(args.gsig_filt)
    out: Path = args.out
    with _new_output_folder(out):
        with movie, Engine(args.scheduler) as engine:
            result = motion.correct(movie, params, out=out / "corrected.zarr", engine=engine,
                                    progress=not args.quiet, overwrite=args.overwrite, **overrides)
        result.save(out)
        save_figure(plot_shifts(result, frame_rate=movie.frame_rate), out / "shifts.png")
        save_figure(plot_quality(result, frame_rate=movie.frame_rate), out / "quality.png")
        if args.tiff:
            import tifffile

            store = result.store
            with (atomic_path(out / "corrected.tif") as tmp,
                  tifffile.TiffWriter(tmp, bigtiff=store.nbytes > 2**31) as tif):
                for _, frames in iter_chunks(store, 256, progress=not args.quiet, desc="writing TIFF"):
                    for frame in frames:
                        tif.write(np.ascontiguousarray(frame), contiguous=True)
    m = result.metrics
    print(f"{result}\ncrispness raw {m.get('crispness_raw', float('nan')):.4g} → corrected "
          f"{m.get('crispness_corrected', float('nan')):.4g}; border_pix {tuple(result.border_pix)}; wrote {out}")
    return 0


def _console_warnings_only() -> None:
    """The pipeline logs its details to OUT/run.log; the console keeps headers, bars and warnings."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _console_warnings_only()
    result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet,
                      engine=args.scheduler)
    print(result.summary())
    print(f"report: {result.report}")
    return 0


def _parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``["quality.min_SNR=3", "pw_rigid=true"]`` → ``{"quality.min_SNR": 3, "pw_rigid": True}``
    (values parsed as YAML scalars/lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE. Fix: write the key, '=' and the value, "
                             f"e.g. --set quality.min_SNR=3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            from .params import yaml_problem

            raise ValueError(f"--set {item!r}: cannot read the value ({yaml_problem(exc)}). Fix: quote "
                             f"text, write lists as [1, 2], e.g. --set {key.strip()}=3") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def _add_pw_rigid_arg(p: argparse.ArgumentParser, const: str | None = None) -> None:
    p.add_argument("--pw-rigid", choices=["auto", "true", "false"], type=str.lower, nargs="?" if const else None,
                   const=const, default=None,
                   help="motion model: auto (default: piecewise-rigid when the data show non-rigid motion), true "
                        "(piecewise-rigid) or false (rigid)" + ("; --pw-rigid alone means true" if const else ""))


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _parse_set(args.set)
    if args.pw_rigid is not None:
        overrides["motion.pw_rigid"] = args.pw_rigid
    if getattr(args, "one_photon", False):
        overrides["data.is_1p"] = True
    return overrides


def _add_nwb_args(p: argparse.ArgumentParser) -> None:
    """``--nwb``, ``--dandi``, ``--nwb-metadata FILE`` and one flag per field of
    :class:`~somascope.io.nwb.NWBMetadata` (``subject_id`` → ``--subject-id``)."""
    from .io.nwb import NWBMetadata

    g = p.add_argument_group(
        "NWB and DANDI", "Session and subject metadata of OUT/results.nwb: a YAML file (--nwb-metadata, template "
        "in docs/nwb.md) and/or the flags below, which override the file. Fields marked [DANDI] are required by the "
        "DANDI archive. Giving any implies --nwb.")
    g.add_argument("--nwb", action="store_true", help="also write OUT/results.nwb")
    g.add_argument("--dandi", action="store_true",
                   help="write OUT/results.nwb ready for DANDI (implies --nwb): refuse to start when metadata DANDI "
                        "requires is missing")
    g.add_argument("--nwb-metadata", type=Path, metavar="FILE",
                   help="YAML/JSON file of session, subject and imaging metadata (field: value per line)")
    for f in NWBMetadata.describe():
        example = ", ".join(map(str, f["example"])) if isinstance(f["example"], list) else str(f["example"])
        repeat = "; repeatable" if f["kind"] == "list" else ""
        metavar = {"nm": "NM", "datetime": "ISO_TIME"}.get(f["kind"], f["name"].split("_")[-1].upper())
        g.add_argument(f["flag"], dest=f"nwb_{f['name']}", metavar=metavar,
                       action="append" if f["kind"] == "list" else "store",
                       help=f"{'[DANDI] ' if f['dandi'] else ''}{f['meaning']}; e.g. {example}{repeat}"
                       .replace("%", "%%"))


def _nwb_metadata(args: argparse.Namespace) -> Any:
    """The NWB metadata of ``--nwb-metadata`` and the metadata flags (None when none is given)."""
    from .io.nwb import NWBMetadata

    flags = {name: getattr(args, f"nwb_{name}", None) for name in NWBMetadata.field_names()}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.nwb_metadata is None and not flags:
        return None
    return NWBMetadata.from_sources(args.nwb_metadata, flags, flags=True)


def _cluster_config(args: argparse.Namespace) -> Any:
    """A context in which ``--cluster-config FILE`` (a YAML/JSON mapping of job settings: cores,
    memory, queue, walltime…) is Dask's ``jobqueue.<system>`` config, as if it were in
    ~/.config/dask/jobqueue.yaml; a no-op without the option. With a batch system, checks first
    that dask-jobqueue is installed."""
    import contextlib

    from .parallel import BATCH_SYSTEMS, cluster_config, is_batch_system, jobqueue_class

    if is_batch_system(args.scheduler):
        try:  # before any work: dask-jobqueue is an optional dependency
            jobqueue_class(args.scheduler)
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    path = getattr(args, "cluster_config", None)
    if path is None:
        return contextlib.nullcontext()
    if not is_batch_system(args.scheduler):
        raise ValueError(f"--cluster-config applies to a batch system; give --scheduler one of "
                         f"{', '.join(BATCH_SYSTEMS)} (got {args.scheduler!r}).")
    import yaml

    try:
        settings = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"--cluster-config {path}: not YAML/JSON ({' '.join(str(exc).split())}).") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--cluster-config {path}: expected a mapping of job settings such as "
                         "'cores: 8', 'memory: 32GB', 'queue: normal', 'walltime: \"04:00:00\"'.")
    return cluster_config(args.scheduler, settings)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--scheduler``, ``--workers``, ``--cluster-config``: where the work runs."""
    p.add_argument("--scheduler", default="local",
                   help="'local' (Dask cluster on this machine, default), 'serial', a batch system "
                        "(slurm, pbs, sge, lsf, htcondor, moab, oar: workers as batch jobs, via dask-jobqueue; "
                        "docs/cluster.md), or a scheduler address")
    p.add_argument("--workers", type=int,
                   help="worker processes of the local cluster (default: one per core); with a batch system, "
                        "jobs to submit (default 1)")
    p.add_argument("--cluster-config", type=Path, metavar="FILE",
                   help="batch system: YAML/JSON file of job settings (cores, memory, queue, account, walltime, "
                        "job_extra_directives, …); the rest from ~/.config/dask/jobqueue.yaml")


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run
    from .pipeline.preflight import check_not_into_input

    _console_warnings_only()
    check_not_into_input(Path(args.out).expanduser().absolute(), args.movie)  # the folder given, not its files
    movie = _open(args)
    structural = _structural(args, movie)
    radius: Any = None
    if args.radius:
        radius = args.radius[0] if len(args.radius) == 1 else tuple(args.radius)
    with _cluster_config(args):
        result = run(
            movie, args.out, args.params, engine=args.scheduler, workers=args.workers, fr=args.frame_rate,
            radius=radius, decay_time=args.decay_time, overrides=_run_overrides(args), motion=not args.no_motion,
            force=args.force, from_stage=args.from_stage, nwb=args.nwb, nwb_metadata=_nwb_metadata(args),
            dandi=args.dandi, progress=not args.quiet, debug=args.debug, structural=structural,
        )
    est = result.estimates
    written = [p for p in (result.results_path, result.report_path, result.nwb_path) if p is not None]
    silent = "" if est.silent is None else f" ({int(est.silent.sum())} silent)"
    print(f"{est.K} components, {est.accepted_indices.size} accepted{silent}; wrote " + ", ".join(map(str, written)))
    return 0


def _structural(args: argparse.Namespace, movie: Any) -> Any:
    """The structural channel the run's arguments name: the same recording opened at
    ``--structural-channel``, the ``--structural-image`` path, or None."""
    if args.structural_image is not None:
        return args.structural_image
    c = args.structural_channel
    if c is None:
        return None
    from .io import MovieError

    functional = args.channel if args.channel is not None else getattr(movie, "channel", None)
    if functional == c:
        raise MovieError(f"--structural-channel {c} is also the functional channel (--channel {functional}). "
                         "Fix: pass --channel with the channel of the activity indicator.")
    keep = args.channel
    try:
        args.channel = c
        return _open(args)
    except MovieError as exc:
        raise MovieError(f"--structural-channel {c}: {exc}") from None
    finally:
        args.channel = keep


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer import serve

    server = serve(args.paths, port=args.port, open_browser=not args.no_browser)
    names = ", ".join(f"{s.sid}: {s.where.name} ({s.K} components)" for s in server.sources)
    print(f"somascope view: {names}\nopen {server.url}\n(Ctrl-C stops the viewer)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        print("somascope view: stopped", file=sys.stderr)
    finally:
        server.stop()
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Score RESULT_A against RESULT_B (the reference): matched, precision, recall, F1."""
    from .io.masks import load_masks_pair
    from .metrics import match_footprints

    a, b = load_masks_pair(args.result_a, args.result_b, dims=args.dims, name=args.segmentation,
                           all_components=args.all_components)
    match = match_footprints(b.A, a.A, b.dims, max_distance=args.thresh_cost,
                             max_centroid_distance=args.max_dist or None)
    sides = {key: {"path": str(m.path), "kind": m.kind, "n": m.K} for key, m in (("a", a), ("b", b))}
    summary = {**sides, "dims": list(b.dims), "thresh_cost": args.thresh_cost, "max_dist": args.max_dist,
               "matched": match.tp, "precision": match.precision, "recall": match.recall, "f1": match.f1}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for label, side in (("A", a), ("B (reference)", b)):
        print(f"{label:<14} {side.K:>6} masks  {side.kind:<9} {side.path}")
    print(f"\n{'matched':>8} {'precision':>10} {'recall':>8} {'F1':>6}")
    print(f"{match.tp:>8} {match.precision:>10.3f} {match.recall:>8.3f} {match.f1:>6.3f}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    """Fine-tune (or train) the shape classifier on the accept/reject split of pipeline results."""
    from .evaluation.classifier.train import require_torch, train_from_results

    try:  # before any work: PyTorch is an optional dependency (somascope[train])
        require_torch()
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    result = train_from_results(args.results, args.out, init=args.init, epochs=args.epochs,
                                manual_only=args.manual_only, seed=args.seed)
    card = result.weights.card
    print(f"trained on {card['n_examples']} examples ({card['n_soma']} somata, {card['n_not']} not) from "
          f"{len(args.results)} file(s), {card['epochs']} epochs, best epoch {result.best_epoch + 1}; wrote {args.out}. "
          f"Use it: somascope run … --set quality.cnn_weights={args.out}")
    return 0


# -- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="somascope",
        description="Calcium-imaging analysis: from raw movies to cells and their activity.",
    )
    parser.add_argument("--version", action="version", version=f"somascope {__version__}")
    common = _Parser(add_help=False)
    for target, default in ((parser, False), (common, argparse.SUPPRESS)):
        target.add_argument("-q", "--quiet", action="store_true", default=default,
                            help="no progress bars, warnings only")
        target.add_argument("--debug", action="store_true", default=default, help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("info", help="describe a movie: shape, dtype, frame rate, size, memory needs")
    _add_movie_args(p)
    p.add_argument("--check", action="store_true", help="scan every frame for NaN/Inf (reads the whole movie)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("simulate", help="write a simulated movie with its ground truth")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--kind", choices=["2p", "1p", "volume"], default="2p")
    p.add_argument("--dims", type=int, nargs="+", help="frame size, e.g. 256 256 (volume: 8 64 64)")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--cells", type=int, default=None, help="number of cells (default scales with area)")
    p.add_argument("--fr", type=float, default=30.0, help="frame rate, Hz")
    p.add_argument("--motion", choices=["none", "rigid", "nonrigid"], default=None,
                   help="default: none (hard preset: rigid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["tif", "zarr", "h5"], default="tif",
                   help="movie file format (zarr is written out-of-core, for movies larger than memory)")
    p.add_argument("--preset", choices=["easy", "hard"], default="easy",
                   help="hard: the dense, dim two-photon family (--kind 2p), its volume (--kind volume: an ImageJ "
                        "TZYX hyperstack) or the micro-endoscope-like one-photon family (--kind 1p), written in the "
                        "dev_sim layout (movie.tif + gt.npz)")
    p.add_argument("--radius", type=float, default=None, help="hard preset: neuron radius (in-plane), px")
    p.add_argument("--decay-time", type=float, default=None, help="hard preset: typical decay time, s")
    p.add_argument("--channels", type=int, choices=[1, 2], default=1,
                   help="hard preset: 2 adds a static structural channel (channel 1; frames interleaved "
                        "channel by channel, ImageJ TCYX / TZCYX)")
    p.add_argument("--plane-spacing", type=float, default=None,
                   help="hard volume: distance between planes, px (default: the radius, so a soma spans ~2 planes)")
    p.add_argument("--axial-radius", type=float, default=None,
                   help="hard volume: somata's axial radius, px (default: the radius, round somata)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("summary", help="summary images: mean, max, std, correlation, max-correlation, PNR")
    _add_movie_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: MOVIE_summary next to the movie)")
    p.add_argument("--chunk-frames", type=int, default=None, help="frames read at a time")
    p.add_argument("--neighbours", type=int, choices=[4, 8], default=8)
    p.add_argument("--max-corr-frames", type=int, default=None,
                   help="frames per block of the max-correlation image (default: 1000 when T > 1000)")
    p.add_argument("--gsig", type=float, default=None,
                   help="1-photon: Gaussian sigma (px) for the high-passed PNR and correlation images")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("motion-correct", help="NoRMCorre motion correction (rigid or piecewise-rigid)")
    _add_movie_args(p)
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: corrected.zarr, shifts.csv/.npy, template.npy, metrics.json, figures")
    _add_pw_rigid_arg(p, const="true")
    p.add_argument("--params", type=Path, help="parameter file (.json/.yaml; CaImAn/Mesmerize keys accepted)")
    p.add_argument("--max-shifts", type=int, nargs="+", help="largest shift per axis, px")
    p.add_argument("--gsig-filt", type=float, nargs="+",
                   help="1-photon: estimate shifts on frames high-passed with this sigma (px)")
    p.add_argument("--tiff", action="store_true", help="also write corrected.tif")
    p.add_argument("--scheduler", default="local",
                   help="'local' (Dask cluster on this machine), 'serial', or a scheduler address")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corrected.zarr")
    p.set_defaults(func=cmd_motion_correct)

    p = sub.add_parser("run", help="the whole pipeline: motion → CNMF → quality → ΔF/F → results + report",
                       description="Run the batch pipeline on a movie. Finished stages are kept in OUT/stages "
                                   "and reused by the next run when their inputs and parameters are unchanged.")
    _add_movie_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (results.h5, report/, stages/, run.log)")
    p.add_argument("--params", type=Path, help="parameter file (.yaml/.json; CaImAn/Mesmerize keys accepted)")
    p.add_argument("--radius", type=float, nargs="+", metavar="PX",
                   help="neuron radius in pixels (half a cell body's width); one value or one per axis")
    p.add_argument("--decay-time", type=float, metavar="S", help="indicator decay time, s (GCaMP6f ≈ 0.4)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set quality.min_SNR=3 (repeatable)")
    p.add_argument("--1p", dest="one_photon", action="store_true",
                   help="one-photon data (micro-endoscope, widefield): CNMF-E ring background, GreedyCorr "
                        "seeds, high-pass motion estimation (data.is_1p)")
    structural = p.add_mutually_exclusive_group()
    structural.add_argument("--structural-channel", type=int, metavar="C",
                            help="the channel with a static structural marker (e.g. nuclear or red label; with "
                                 "--n-channels or a 'c' axis): its cells seed CNMF, silent ones kept and flagged")
    structural.add_argument("--structural-image", type=Path, metavar="PATH",
                            help="a structural image (.tif/.npy, the frame's shape, registered to the corrected "
                                 "movie) whose cells seed CNMF")
    p.add_argument("--no-motion", action="store_true", help="skip motion correction (the movie is already registered)")
    _add_pw_rigid_arg(p)
    add_engine_args(p)
    p.add_argument("--force", action="store_true", help="run every stage again")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="run again from this stage on: motion, summary, seeds, background, cnmf, quality, refit, "
                        "traces, results")
    _add_nwb_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the pipeline on a simulated movie, scored against the ground truth")
    p.add_argument("--out", type=Path, default=Path("somascope-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="a smaller movie (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default=None,
                   help="'serial', 'local' or a scheduler address (default: serial with --quick, else local)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("view", help="look at results in the browser: contours, traces, movie; accept / reject",
                       description="A local web viewer (127.0.0.1, a random token in the URL) of one or more "
                                   "results: a somascope run folder, a results .h5 file, or BATCH_FOLDER::ITEM. "
                                   "Manual accept/reject decisions are saved into the results file and "
                                   "OUT/curation.json. Two results give the compare view.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="run folder, results .h5 file, or BATCH_FOLDER::ITEM")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL; do not open a browser")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("compare", help="precision / recall / F1 of one result or mask set against another",
                       description="Score RESULT_A against RESULT_B, the reference (a consensus, manual ROIs, "
                                   "another tool): footprints binarised, matched one to one by Jaccard distance "
                                   "(Hungarian). Each side: a somascope run folder or results .h5, an ImageJ "
                                   "RoiSet.zip/.roi, an NWB PlaneSegmentation, a label image or a K×H×W mask "
                                   "stack (.tif/.npy/.png), or a suite2p plane folder. Guide: docs/compare.md.")
    p.add_argument("result_a", type=Path, metavar="RESULT_A", help="the result scored")
    p.add_argument("result_b", type=Path, metavar="RESULT_B", help="the reference")
    p.add_argument("--dims", type=int, nargs=2, metavar=("H", "W"),
                   help="field of view for ImageJ ROIs and NWB pixel masks (default: the other side's)")
    p.add_argument("--thresh-cost", type=float, default=0.7,
                   help="pairs with a Jaccard distance at or above this never match (default 0.7)")
    p.add_argument("--max-dist", type=float, default=10.0,
                   help="pairs whose centroids are farther apart (px) never match; 0: no limit (default 10)")
    p.add_argument("--all-components", action="store_true",
                   help="somascope, NWB and suite2p inputs: all components, not only the accepted ones")
    p.add_argument("--segmentation", metavar="NAME", help="NWB inputs: the PlaneSegmentation (default: the first)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("train-classifier", help="fine-tune the shape classifier on your runs' accepted / rejected "
                                                "components (needs PyTorch: somascope[train])",
                       description="Train the shape classifier (quality.use_cnn) on the components of one or more "
                                   "runs: accepted components are the somata, rejected ones the rest (with "
                                   "--manual-only, only the components decided by hand in somascope view). Starts "
                                   "from --init, else from the weights shipped for the runs' modality (else from "
                                   "scratch), and writes a weights file to give as --set quality.cnn_weights=PATH. "
                                   "Needs PyTorch: pip install 'somascope[train]'.")
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                   help="results .h5 files or run folders of 'somascope run', all one- or all two-photon")
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.npz)")
    p.add_argument("--init", type=Path, metavar="WEIGHTS",
                   help="weights .npz to start from (default: the shipped weights for the modality)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the examples (default 10)")
    p.add_argument("--manual-only", action="store_true",
                   help="learn only from the components accepted or rejected by hand (somascope view)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and the training (default 0)")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("batch", help="the batch manager: movies × parameter variants, run, compared, kept",
                       description="Manage a batch of items (movie × algorithm × parameters) in one folder: add "
                                   "items and parameter grids, run them on one engine, compare and keep results. "
                                   "Items of one movie share the stages they have in common. Guide: docs/batch.md.")
    from .cli_batch import add_batch_commands

    add_batch_commands(p, common)
    from .cli_multiday import add_register_command

    add_register_command(sub)
    return parser


# -- the error policy --------------------------------------------------------------------
# exit codes: 0 done; 1 a fault at run time (disk full, read-only output, lost cluster) or a bug;
# 2 bad input or usage; 130 interrupted (Ctrl-C)
EXIT_FAULT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer whose reader closed the pipe (128 + SIGPIPE)

# errno values of a write that failed through no fault of the input: the output disk is full or
# read-only, or the storage failed
_FAULT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, *((errno.EDQUOT,) if hasattr(errno, "EDQUOT") else ())}

# third-party loggers whose lines are noise on the console of a failing run (tifffile's ERROR
# lines about a damaged file; distributed's "Compute Failed" tracebacks of a failed task): the
# one-line error says what happened. They are shown with --debug.
_NOISY_LOGGERS = ("tifffile", "distributed")
# the worker processes of a local Dask cluster configure their logging from this variable when
# they start (dask's "logging" config): their "Compute Failed" lines are logged at ERROR
_WORKER_LOGGING = {"distributed.worker": "critical", "distributed.worker.state_machine": "critical"}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input (a bad movie, bad parameters, a missing or
    unreadable input file, a wrong scheduler address), reported in one line with exit code 2.
    Every somascope error class is a ValueError (ParameterError, MovieError, StoreError, …)."""
    from .io import MovieError
    from .store import StoreError

    return (MovieError, StoreError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, ConnectionError, ValueError)


def _run_fault() -> type[BaseException] | None:
    """:class:`somascope.pipeline.RunFault`, or None in a version without it."""
    try:
        from .pipeline import RunFault  # type: ignore[attr-defined]
    except ImportError:
        try:
            from .pipeline.errors import RunFault
        except ImportError:
            return None
    return RunFault  # type: ignore[no-any-return]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _os_message(exc: OSError) -> str:
    """``[Errno 2] No such file or directory: 'x.tif'`` → ``x.tif: no such file or directory``."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    return _first_line(exc)


def _output_folder(args: argparse.Namespace) -> Path | None:
    """The folder the command writes into (``--out``), when it has one."""
    out = getattr(args, "out", None)
    return Path(out).expanduser() if isinstance(out, (str, Path)) else None


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed command leaves that a rerun uses, when it is known."""
    out = _output_folder(args)
    if out is not None and (out / "stages").is_dir() and any((out / "stages").iterdir()):
        return f"finished stages are kept in {out / 'stages'}; rerun the same command to resume"
    return ""


def _report(exc: BaseException, args: argparse.Namespace) -> int:
    """Print the one line of ``exc`` on stderr; the exit code."""
    fault = _run_fault()
    if fault is not None and isinstance(exc, fault):
        print(f"somascope: error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAULT
    if isinstance(exc, OSError) and exc.errno in _FAULT_ERRNOS:
        kept = _kept(args)
        where = _output_folder(args)
        fix = {errno.ENOSPC: "free some space on that disk (or choose an --out on another disk) and rerun",
               errno.EROFS: "choose a writable --out and rerun"}.get(
            exc.errno or 0, "check the disk, free space or choose another --out, then rerun")
        if hasattr(errno, "EDQUOT") and exc.errno == errno.EDQUOT:
            fix = "free some of your quota (or choose an --out on another disk) and rerun"
        what = (exc.strerror or _first_line(exc)).rstrip(".")
        what = what[:1].lower() + what[1:]
        target = Path(os.fsdecode(exc.filename)) if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
        if where is not None and (target is None or target.absolute().is_relative_to(where.absolute())):
            target = where  # a temporary file of the output folder means nothing to the user
        written = f"cannot write {target}: " if target is not None else ""
        print(f"somascope: error: {written}{what}{'. Kept: ' + kept if kept else ''}. Fix: {fix}.", file=sys.stderr)
        return EXIT_FAULT
    if isinstance(exc, _user_errors()):
        message = _os_message(exc) if isinstance(exc, OSError) else _first_line(exc)
        fix = {FileNotFoundError: "check the path", PermissionError: "check its permissions, or choose another path",
               IsADirectoryError: "give a file, not a folder", NotADirectoryError: "give a folder, not a file"}
        if isinstance(exc, OSError) and "Fix:" not in message and type(exc) in fix:
            message = f"{message.rstrip('. ')}. Fix: {fix[type(exc)]}."
        print(f"somascope: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, OSError):  # a read or write the system refused: a fault, not a bug
        kept = _kept(args)
        print(f"somascope: error: {_os_message(exc).rstrip('. ')}{'. Kept: ' + kept if kept else ''}. Fix: check the "
              "input files and the disk, then rerun.", file=sys.stderr)
        return EXIT_FAULT
    detail = f"{type(exc).__name__}: {_first_line(exc)}" if str(exc).strip() else type(exc).__name__
    print(f"somascope: internal error ({detail}); rerun with --debug for the traceback and report it", file=sys.stderr)
    return EXIT_FAULT


class _DropThirdParty(logging.Filter):
    """Drops the records of :data:`_NOISY_LOGGERS` meant for the console (tifffile: all of them;
    distributed: errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "tifffile" or name.startswith("tifffile."):
            return False
        if name == "distributed" or name.startswith("distributed."):
            return record.levelno < logging.ERROR
        return True


# distributed's loggers that log errors in this process (the scheduler of a local cluster runs
# here); a filter on a logger sees only the records logged on it, so each is named
_DISTRIBUTED_LOGGERS = ("distributed", "distributed.scheduler", "distributed.client", "distributed.nanny",
                        "distributed.core", "distributed.worker", "distributed.worker.state_machine",
                        "distributed.batched", "distributed.comm", "distributed.comm.tcp", "distributed.comm.core",
                        "distributed.deploy.spec", "distributed.deploy.local", "distributed.utils",
                        "distributed.utils_perf", "distributed.process", "distributed.shuffle")


@contextlib.contextmanager
def _quiet_third_party(enabled: bool) -> Iterator[None]:
    """Without --debug: no tifffile lines and no distributed error lines on the console, in this
    process (a filter on those loggers and on the console handlers) and in the worker processes a
    local cluster starts (dask's logging config in the environment they inherit). Undone on exit."""
    if not enabled:
        yield
        return
    drop = _DropThirdParty()
    names = {"tifffile", *_DISTRIBUTED_LOGGERS,
             *(n for n in logging.root.manager.loggerDict if n.startswith(("distributed.", "tifffile.")))}
    targets: list[logging.Filterer] = [logging.getLogger(n) for n in sorted(names)]
    targets += [h for n in (None, *_NOISY_LOGGERS) for h in logging.getLogger(n).handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for target in targets:
        target.addFilter(drop)
    old_env = os.environ.get("DASK_LOGGING")
    if old_env is None:
        os.environ["DASK_LOGGING"] = repr(_WORKER_LOGGING)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(drop)
        if old_env is None:
            os.environ.pop("DASK_LOGGING", None)


@contextlib.contextmanager
def _warnings_as_log_lines(enabled: bool) -> Iterator[None]:
    """Without --debug a Python warning (e.g. ΔF/F undefined for a trace without a positive
    baseline) is one ``somascope WARNING`` log line, not a file:line header plus source line."""
    if not enabled:
        yield
        return
    import warnings

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        log.warning("%s", str(message).strip().splitlines()[0] if str(message).strip() else category.__name__)

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def _check_options(args: argparse.Namespace) -> None:
    """Refuse impossible values of the options (frame rate, neuron radius, decay time, workers,
    scheduler) before anything is read or written, naming the option."""
    from .params import MAX_FRAME_RATE_HZ

    fr = getattr(args, "frame_rate", None)
    if fr is None:
        fr = getattr(args, "fr", None)
    if fr is not None:
        if not (math.isfinite(fr) and fr > 0):
            raise ValueError(f"--fr {fr:g}: a frame rate must be a positive number of Hz. Fix: pass your imaging "
                             "rate in frames (volumes) per second, e.g. --fr 30.")
        if fr > MAX_FRAME_RATE_HZ:
            raise ValueError(f"--fr {fr:g}: above {MAX_FRAME_RATE_HZ:g} Hz, faster than any calcium imaging (a line "
                             "rate, a pixel clock or an interval in µs is not a frame rate). Fix: pass the frames "
                             "(volumes) per second, e.g. --fr 30.")
    radius = getattr(args, "radius", None)
    for r in radius if isinstance(radius, list) else [] if radius is None else [radius]:
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"--radius {r:g}: a neuron radius must be a positive number of pixels. Fix: pass half "
                             "a cell body's width in pixels, e.g. --radius 5.")
    decay = getattr(args, "decay_time", None)
    if decay is not None and not (math.isfinite(decay) and decay > 0):
        raise ValueError(f"--decay-time {decay:g}: must be a positive number of seconds. Fix: pass the indicator's "
                         "decay time, e.g. --decay-time 0.4 (GCaMP6f) or 1.2 (GCaMP6s).")
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: needs at least one worker. Fix: pass --workers 1 or more, or leave "
                         "it out (one per core).")
    scheduler = getattr(args, "scheduler", None)
    if isinstance(scheduler, str):
        from .parallel import BATCH_SYSTEMS, is_batch_system

        spec = scheduler.strip()
        if spec not in ("serial", "local") and not is_batch_system(spec) and ":" not in spec and "/" not in spec:
            raise ValueError(f"--scheduler {scheduler!r}: not an engine. Fix: use serial, local, a batch system "
                             f"({', '.join(BATCH_SYSTEMS)}) or a scheduler address such as tcp://10.0.0.5:8786.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``somascope`` command; the exit code (module docstring: the error policy).

    Bad input or usage: one line ``somascope: error: … Fix: …`` on stderr, exit 2 (argparse's
    usage errors raise SystemExit(2) after their one line). A fault at run time (output disk full
    or read-only, a lost cluster): one line saying what was kept, exit 1. Anything else is a bug:
    one line asking to rerun with --debug and report it, exit 1. Ctrl-C: one line, exit 130.
    ``--debug`` shows the full traceback instead, and third-party log lines.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    started = time.perf_counter()
    try:
        with _quiet_third_party(not args.debug), _warnings_as_log_lines(not args.debug):
            _check_options(args)
            code = int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        said = _first_line(exc) if str(exc).strip() else _kept(args)
        print(f"somascope: interrupted{'; ' + said if said else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        if isinstance(exc.code, str) and not args.debug:  # a command refused its arguments, in words
            print(f"somascope: error: {exc.code.strip().splitlines()[0]}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        raise
    except BrokenPipeError:
        # the reader of the output went away (e.g. `somascope info movie.tif | head`): not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            raise
        return _report(exc, args)
    log.debug("%s finished in %.1f s", args.command, time.perf_counter() - started)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
