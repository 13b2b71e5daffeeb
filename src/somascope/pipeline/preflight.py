"""Checks before any heavy work: the movie, the parameters, the frame rate, memory and disk.

:func:`prepare` opens the movie lazily, settles the frame rate and neuron size, builds the
:class:`~somascope.params.Params` and refuses, with a message naming the fix, what cannot
work: an unknown frame rate, a neuron larger than a patch or the frame, a movie too short,
an output path that is a file; and, reading only the first, middle and last frames
(:func:`check_frames`), a file cut short or damaged, NaN/Inf in those frames and a blank
(constant) movie. :func:`check_resources` then compares the predicted disk need with the free
space (refusing when short) and the predicted memory with the available memory (warning only).
Both take well under a second for any movie size: three frames are read, never the whole movie.

Parameters are built in this order, later ones winning:

1. :meth:`Params.from_neuron` with the neuron radius and frame rate known so far
   (the movie's metadata rate; 5 px when no radius is given anywhere);
2. the parameters file (YAML/JSON, any dict :meth:`Params.from_dict` accepts), or a dict or
   a :class:`Params` given to :func:`somascope.pipeline.run`;
3. the explicit arguments: ``fr``, ``radius``, ``decay_time``, then ``overrides``.

Derived parameters follow the values they derive from (``Params.replace``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("somascope.pipeline")

#: Volumes with fewer planes than this are "thin stacks": no motion is searched along z by default.
THIN_STACK_PLANES = 8
#: Default neuron radius (px) when neither ``radius`` nor the parameters give one.
DEFAULT_RADIUS_PX = 5.0
#: Free disk space must exceed the estimated need by this factor.
DISK_MARGIN = 1.1
#: Keys of a parameter set that give the neuron size.
_RADIUS_KEYS = {"data.neuron_radius", "data.neuron_radius_um", "init.gSig", "init.gSiz"}


class PipelineError(ValueError):
    """The run cannot start (or go on) as asked; the message names the problem and the fix."""


@dataclass
class Prepared:
    """What :func:`prepare` settled. ``fr_source`` / ``radius_source`` say where the frame rate
    and the neuron radius came from (``"--fr"``, ``"params"``, ``"movie metadata"``, ``"default"``)."""

    movie: Any
    params: Any
    out: Path
    fr_source: str
    radius_source: str
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.movie.shape)

    def movie_info(self) -> dict[str, Any]:
        """Label → value rows describing the movie (for the log and the report)."""
        paths = [str(p) for p in getattr(self.movie, "paths", [])]
        T = self.shape[0]
        fr = self.params.data.fr
        on_disk = sum(_disk_size(Path(p)) for p in paths)
        return {
            "path": paths[0] if len(paths) == 1 else f"{paths[0]} … ({len(paths)} files)",
            "shape": " × ".join(map(str, self.shape)) + (" (T × Z × H × W)" if len(self.shape) == 4
                                                        else " (T × H × W)"),
            "dtype": str(self.movie.dtype),
            "frame rate": f"{fr:g} Hz (from {self.fr_source})",
            "duration": f"{T / fr:.1f} s",
            "neuron radius": f"{_fmt_axes(self.params.data.neuron_radius)} px (from {self.radius_source})",
            "size on disk": _human(on_disk),
        }


def _fmt_axes(values: tuple[float, ...]) -> str:
    return " × ".join(f"{v:g}" for v in values) if len(set(values)) > 1 else f"{values[0]:g}"


def _human(n: int) -> str:
    from .resources import human_bytes

    return human_bytes(n)


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


# -- the movie -----------------------------------------------------------------------------
def open_input(movie: Any) -> Any:
    """A lazy :class:`~somascope.io.Movie` from a path, a list of paths or a Movie."""
    from ..io import Movie, open_movie

    if isinstance(movie, Movie):
        return movie
    if isinstance(movie, (str, os.PathLike)) or (
            isinstance(movie, (list, tuple)) and movie and all(isinstance(m, (str, os.PathLike)) for m in movie)):
        return open_movie(movie if not isinstance(movie, (list, tuple)) or len(movie) > 1 else movie[0])
    raise PipelineError(
        f"the pipeline reads movies from files, got {type(movie).__name__}. Fix: pass a path (TIFF, HDF5, Zarr, "
        "NPY, …) or a somascope.io.Movie; save an in-memory array first (e.g. numpy.save), or call "
        "somascope.cnmf.fit on it directly.")


# -- parameters ----------------------------------------------------------------------------
def _params_source(params: Any) -> tuple[Any, dict[str, Any] | None, str]:
    """``(Params object or None, dict or None, label)`` for what the user gave as ``params``."""
    from ..params import ParameterError, Params

    if params is None:
        return None, None, ""
    if isinstance(params, Params):
        return params, None, "Params object"
    if isinstance(params, Mapping):
        return None, dict(params), "params dict"
    if isinstance(params, (str, os.PathLike)):
        path = Path(params)
        if path.is_dir():
            raise PipelineError(f"the parameters file {str(path)!r} is a folder. Fix: give the .yaml/.yml "
                                "or .json file inside it.")
        if not path.is_file():
            raise PipelineError(f"the parameters file {str(path)!r} does not exist. Fix: check the path "
                                "(a .yaml/.yml or .json file).")
        Params.load(path)  # validates, with error messages that name the file
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            import json

            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ParameterError(f"{path}: holds no mapping of parameters. Fix: write e.g. 'data: {{fr: 30}}'.")
        return None, dict(data), str(path)
    raise PipelineError(f"params must be a Params, a dict or the path of a .yaml/.json file, got "
                        f"{type(params).__name__}.")


def build_params(params: Any, movie: Any, *, fr: float | None = None, radius: Any = None,
                 decay_time: float | None = None,
                 overrides: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                 ) -> tuple[Any, str, str, list[str]]:
    """``(Params, fr_source, radius_source, warnings)`` for ``movie`` (module docstring).

    Raises
    ------
    PipelineError
        The frame rate is known from nowhere.
    ParameterError
        Bad or inconsistent parameters (a neuron larger than a patch, unknown keys, …).
    """
    from ..params import Params

    obj, d, label = _params_source(params)
    given = set() if d is None else Params.given_keys(d)
    if obj is not None:
        given = {"data.fr", "data.neuron_radius", "data.decay_time"}
    layers = _override_layers(overrides)
    given_over = set().union(*(Params.given_keys(layer) for layer in layers))
    movie_fr = getattr(movie, "frame_rate", None)

    if fr is not None:
        fr_source = "--fr"
    elif "data.fr" in given_over:
        fr_source = "overrides"
    elif "data.fr" in given:
        fr_source = label or "params"
    elif movie_fr:
        fr_source = "movie metadata"
    else:
        paths = getattr(movie, "paths", [])
        name = str(paths[0]) if paths else "the movie"
        raise PipelineError(
            f"the frame rate is unknown: {name} carries none in its metadata and neither --fr nor the "
            f"parameters set data.fr. Fix: pass --fr 30 (your imaging rate in Hz) or set data.fr in the "
            f"params file.")
    warnings: list[str] = []
    if radius is not None:
        radius_source = "--radius"
    elif given_over & _RADIUS_KEYS:
        radius_source = "overrides"
    elif given & _RADIUS_KEYS:
        radius_source = label or "params"
    else:
        radius_source = "default"
        warnings.append(
            f"the neuron size was not given: using the default radius of {DEFAULT_RADIUS_PX:g} px. If your "
            f"cells are larger or smaller, pass --radius PX (half a cell body's width in pixels) or set "
            f"data.neuron_radius in the params file; a wrong size costs cells.")

    ndim = len(movie.shape) - 1
    r0 = _volume_radius(movie, DEFAULT_RADIUS_PX) if ndim == 3 else (DEFAULT_RADIUS_PX,) * ndim
    if radius is not None and ndim == 3 and np.ndim(radius) == 0:  # --radius r of a volume: r in-plane
        radius = _volume_radius(movie, float(radius))
        log.info("neuron radius of the volume: %s px (z, y, x; the axial size from %s)", _fmt_axes(radius),
                 "the file's plane spacing" if _plane_step(movie) else "one plane: the file states no spacing")
    # the rate the defaults derive from: the one that will be used (a movie's metadata only when
    # nothing else names one — an absurd rate in a header must not fail a run given --fr)
    base_fr = float(fr) if fr is not None else (float(movie_fr) if fr_source == "movie metadata" else 30.0)
    if obj is not None:
        p = obj
    else:
        p = Params.from_neuron(r0, fr=base_fr, decay_time=0.4, dxy=(1.0,) * ndim)
        if d:
            p = p.replace(d)
    cli: dict[str, Any] = {}
    if fr is not None:
        cli["fr"] = float(fr)
    if radius is not None:
        cli["neuron_radius"] = radius
    if decay_time is not None:
        cli["decay_time"] = float(decay_time)
    if cli:
        p = p.replace(cli)
    for layer in layers:
        p = p.replace(layer)
    if ndim == 3 and "motion.max_shifts" not in (given | given_over) \
            and int(movie.shape[1]) < THIN_STACK_PLANES and p.motion.max_shifts[0] > 0:
        # a thin stack (few planes): no motion is searched along z (the planes' own spacing is
        # larger than any z drift that could be measured), in-plane motion as derived
        p = p.replace({"motion.max_shifts": (0, *p.motion.max_shifts[1:])})
    if ndim == 3 and not {"motion.strides", "motion.overlaps"} & (given | given_over) \
            and p.motion.strides[0] + p.motion.overlaps[0] > int(movie.shape[1]):
        # piecewise-rigid patches of a stack thinner than a patch: each spans all its planes
        # (a warp of a thin stack is in-plane)
        p = p.replace({"motion.strides": (int(movie.shape[1]), *p.motion.strides[1:]),
                       "motion.overlaps": (0, *p.motion.overlaps[1:])})
    return p, fr_source, radius_source, warnings


def _plane_step(movie: Any) -> float | None:
    step = (getattr(movie, "metadata", None) or {}).get("plane_step_px")
    return float(step) if step else None


def _volume_radius(movie: Any, r: float) -> tuple[float, float, float]:
    """``(rz, r, r)`` for an in-plane radius ``r`` (px) of a volume: the axial radius in planes
    from the file's plane spacing (``r`` px over the spacing in px, at least half a plane),
    else one plane."""
    step = _plane_step(movie)
    rz = max(0.5, r / step) if step else 1.0
    return (rz, r, r)


def _override_layers(overrides: Any) -> list[Mapping[str, Any]]:
    """``overrides`` as a list of dicts applied in order (one dict, a sequence of them, or None)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [overrides] if overrides else []
    return [layer for layer in overrides if layer]


# -- checks --------------------------------------------------------------------------------
def check_not_into_input(out: Path, inputs: Sequence[Any]) -> None:
    """Refuse an output folder that is an input itself (a folder of TIFFs, a Zarr store, a
    recording's folder) or lies inside a Zarr store that is read: the run would write into its
    input. (A folder beside or below a folder of TIFFs is fine: only TIFF files are read there.)"""
    for p in inputs:
        src = Path(p).expanduser().absolute()
        if out == src:
            raise PipelineError(f"the output folder {str(out)!r} is the input itself. Fix: choose another --out, "
                                "e.g. a folder beside the movie.")
        if src.is_dir() and src.suffix.lower() == ".zarr" and out.is_relative_to(src):
            raise PipelineError(f"the output folder {str(out)!r} lies inside the input store {str(src)!r}. "
                                "Fix: choose an --out outside it.")


def check_output(out: Path) -> None:
    """Refuse an output path that is a file, or whose nearest existing parent is not a folder."""
    if out.exists() and not out.is_dir():
        raise PipelineError(f"the output folder {str(out)!r} is a file. Fix: choose another --out (a folder, "
                            "new or from an earlier run).")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PipelineError(f"cannot create the output folder {str(out)!r}: {str(parent)!r} is a file. "
                            "Fix: choose another --out.")


def check_movie(movie: Any, params: Any) -> None:
    """Refuse movies that are empty, too short, or whose frames cannot hold one neuron."""
    from ..cnmf.fit import MIN_FRAMES

    shape = tuple(int(s) for s in movie.shape)
    name = str(movie.paths[0]) if getattr(movie, "paths", None) else "the movie"
    if len(shape) not in (3, 4):
        raise PipelineError(f"{name}: has shape {shape}; the pipeline needs T × H × W (or T × Z × H × W). "
                            "Fix: open it with the right --axes / --channel.")
    if shape[0] < MIN_FRAMES or min(shape[1:]) < 1:
        from ..deconvolution._checks import too_few_frames

        raise PipelineError(too_few_frames(shape[0], f"{name} (frames of {shape[1:]})"))
    dims = shape[1:]
    gsiz = tuple(int(s) for s in params.init.gSiz)
    if any(g > d for g, d in zip(gsiz, dims)):
        raise PipelineError(
            f"{name}: a neuron (bounding box init.gSiz={gsiz} px, radius {_fmt_axes(params.data.neuron_radius)} px) is "
            f"larger than the frame {dims}. Fix: check --radius (half a cell body's width in pixels).")
    rf = params.patch.rf
    if rf is not None and any(g > r for g, r in zip(gsiz, rf)):
        raise PipelineError(
            f"a neuron (init.gSiz={gsiz} px) does not fit in a patch (patch.rf={tuple(rf)}: patches are "
            f"{tuple(2 * r for r in rf)} px wide and must hold two neurons across). Fix: set patch.rf ≥ {gsiz}, "
            "or patch.rf: null to process the whole field of view, or check --radius.")


def check_frames(movie: Any) -> None:
    """Read the first, middle and last frames of ``movie``: a file cut short or damaged fails
    here with one clear :class:`~somascope.io.MovieError` instead of inside a stage, and so do
    NaN/Inf values in those frames; a movie whose three frames each hold one single value, the
    same in all three, is refused as blank. NaN/Inf in other frames are refused by motion
    correction when it reads them (it checks every frame)."""
    import numpy as np

    from ..io import MovieError
    from ..io.errors import one_line

    T = int(movie.shape[0])
    name = str(movie.paths[0]) if getattr(movie, "paths", None) else "the movie"
    if len(getattr(movie, "paths", [])) > 1:
        name += f" (+{len(movie.paths) - 1} files)"
    fix_damaged = ("Fix: copy or export the movie again from the original (compare its size with the source); a "
                   "file still being written must be finished first")
    frames = {}
    for t in sorted({0, T // 2, T - 1}):
        try:
            frame = np.asarray(movie[t])
        except MovieError:
            raise
        except Exception as exc:  # a reader that does not translate its library's errors
            raise MovieError(f"{name}: cannot read frame {t} of {T} ({one_line(exc)}): the file is truncated or "
                             f"corrupt. {fix_damaged}.") from exc
        if frame.dtype.kind == "f":
            nan, inf = int(np.isnan(frame).sum()), int(np.isinf(frame).sum())
            if nan or inf:
                raise MovieError(
                    f"{name}: frame {t} holds {nan} NaN and {inf} Inf values; motion correction and CNMF need "
                    "finite numbers. Fix: replace them (e.g. with the frame's median: numpy.nan_to_num or "
                    "frame[~numpy.isfinite(frame)] = numpy.nanmedian(frame)) or cut those frames out, and save "
                    "the movie again.")
        frames[t] = frame
    values = {(float(f.flat[0]) if f.size else 0.0) for f in frames.values()}
    if len(values) == 1 and all(f.size and f.min() == f.max() for f in frames.values()):
        listed = ", ".join(map(str, frames))
        raise MovieError(
            f"{name}: is blank: frames {listed} each hold the single value {values.pop():g} at every pixel, so "
            "there is no activity to find. Fix: check the recording (a closed shutter or an unplugged detector) "
            "and the choice of --channel / --dataset.")


def check_motion(params: Any, dims: tuple[int, ...]) -> None:
    """Motion parameters that cannot work on frames of ``dims`` (shifts or patches too large)."""
    from ..motion.settings import resolve

    resolve(params, {}, dims)


def prepare(movie: Any, out: str | os.PathLike[str], params: Any = None, *, fr: float | None = None,
            radius: Any = None, decay_time: float | None = None,
            overrides: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
            motion: bool = True) -> Prepared:
    """Open the movie, build the parameters and run every check that needs no estimate."""
    out = Path(out).expanduser().absolute()
    check_output(out)
    mov = open_input(movie)
    try:
        p, fr_source, radius_source, warnings = build_params(params, mov, fr=fr, radius=radius,
                                                             decay_time=decay_time, overrides=overrides)
        if len(mov.shape) - 1 != p.ndim:
            raise PipelineError(f"the movie has {len(mov.shape) - 1} spatial axes but the parameters describe "
                                f"{p.ndim} (data.dxy={p.data.dxy}). Fix: give one value per spatial axis.")
        check_movie(mov, p)
        given = [movie] if isinstance(movie, (str, os.PathLike)) else \
            [m for m in movie if isinstance(m, (str, os.PathLike))] if isinstance(movie, (list, tuple)) else []
        check_not_into_input(out, [*given, *getattr(mov, "paths", [])])
        check_frames(mov)
        if motion:
            check_motion(p, tuple(int(s) for s in mov.shape[1:]))
    except BaseException:
        if mov is not movie:
            mov.close()
        raise
    return Prepared(movie=mov, params=p, out=out, fr_source=fr_source, radius_source=radius_source,
                    warnings=warnings)


def check_nwb_metadata(nwb_metadata: Any, *, nwb: bool, dandi: bool) -> tuple[Any, list[str]]:
    """``(NWBMetadata or None, warnings)`` for the NWB file of this run, checked before any stage.

    ``nwb_metadata`` is an :class:`~somascope.io.nwb.NWBMetadata`, a dict of its fields or the
    path of a YAML/JSON file; bad values raise :class:`~somascope.io.nwb.NWBMetadataError`.
    With ``dandi``, missing fields the DANDI archive requires are refused, all in one message;
    with plain ``nwb`` they give one warning.
    """
    from ..io.nwb import coerce_nwb_metadata

    meta = coerce_nwb_metadata(nwb_metadata)
    if not (nwb or dandi or meta is not None):
        return None, []
    from ..io.nwb import NWBMetadata

    missing = (meta or NWBMetadata()).dandi_missing()
    if not missing:
        return meta, []
    listed = "; ".join(missing)
    how = ("give them as flags or in a YAML file with --nwb-metadata FILE (Python: nwb_metadata=; template in "
           "docs/nwb.md)")
    if dandi:
        raise PipelineError(f"--dandi: the NWB file would lack what DANDI requires: {listed}. Fix: {how}.")
    return meta, [f"results.nwb will lack what DANDI requires: {listed}. To upload it to DANDI, {how}; "
                  "--dandi refuses to start without them."]


def free_disk(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_resources(prepared: Prepared, estimate: Any) -> tuple[str, list[str]]:
    """Refuse when the disk is too small; return ``(summary line, warnings)``.

    ``estimate`` is a :class:`~somascope.pipeline.resources.ResourceEstimate`.
    """
    from .resources import human_bytes

    free = free_disk(prepared.out)
    if free < estimate.disk * DISK_MARGIN:
        raise PipelineError(
            f"not enough disk space at {prepared.out}: the run needs about {human_bytes(estimate.disk)} "
            f"(the float32 copy of the movie and the results) but only {human_bytes(free)} is free. Fix: free "
            f"some space or choose an --out on a larger disk.")
    mem = available_memory()
    workers = (f"driver {human_bytes(estimate.driver)} + {estimate.workers} workers × "
               f"{human_bytes(estimate.per_worker)}" if estimate.workers else "one process")
    line = (f"needs about {human_bytes(estimate.memory)} of memory ({workers}) "
            f"and {human_bytes(estimate.disk)} of disk; {human_bytes(free)} free, "
            f"{human_bytes(mem)} of memory available")
    warnings = []
    if estimate.memory > mem:
        warnings.append(
            f"the run may need about {human_bytes(estimate.memory)} of memory but only {human_bytes(mem)} is "
            f"available: it may swap or be killed. Fix: fewer --workers, a smaller patch.rf, or a machine "
            f"with more memory.")
    return line, warnings
