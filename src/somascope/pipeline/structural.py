"""The structural channel of a run: a static marker (a nuclear or red label) → masks that seed CNMF.

A run given a structural channel (``run(..., structural=...)``; ``somascope run --structural-channel
C`` or ``--structural-image PATH``) gets a ``seeds`` stage between motion correction and CNMF:

1. the structural image: the time average of the structural movie once the functional
   channel's motion is applied to it (:func:`somascope.motion.mean_after_shifts`; the plain
   average when motion correction is off), or the image given, already in the frame of the
   corrected movie;
2. its cells: :func:`somascope.segmentation.segment_cells` at the run's neuron radius, each
   grown to a cell-body mask (:func:`somascope.segmentation.seed_masks`);
3. CNMF starts from those masks and adds the cells the unseeded detection finds outside them
   (``init.seed_adds``); the quality stage keeps every seeded cell and flags those without
   activity as ``silent`` (``docs/structural.md``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .preflight import PipelineError

__all__ = ["StructuralInput", "resolve_structural", "structural_image"]

#: Suffixes read as a single image when the file holds one frame of the movie's shape.
_IMAGE_SUFFIXES = (".npy", ".tif", ".tiff")


@dataclass(frozen=True)
class StructuralInput:
    """A run's structural channel: ``kind`` ``"movie"`` (the same frames as the functional
    movie, e.g. its other channel) or ``"image"`` (``dims``, already registered to the
    corrected movie); ``source`` the Movie / array; ``fingerprint`` what identifies it (the
    ``seeds`` stage reruns when it changes); ``label`` how to name it in messages."""

    kind: str
    source: Any
    fingerprint: dict[str, Any]
    label: str


def resolve_structural(structural: Any, movie: Any) -> StructuralInput | None:
    """Check a run's ``structural`` argument against the functional ``movie`` (``T × *dims``).

    ``structural``: None; an array of the frame's shape (an image) or of the movie's shape; a
    :class:`~somascope.io.Movie` (e.g. ``open_movie(path, n_channels=2, channel=1)``); or a
    path — an ``.npy``/TIFF image of the frame's shape, else a movie file of the same frames.

    Raises
    ------
    PipelineError
        A shape that fits neither the frames nor the movie (naming both and the fix).
    """
    if structural is None:
        return None
    shape = tuple(int(s) for s in movie.shape)
    dims = shape[1:]
    if isinstance(structural, (str, os.PathLike)):
        return _from_path(Path(structural).expanduser(), shape)
    if isinstance(structural, np.ndarray):
        arr = structural
        digest = hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).ravel()[: 1 << 26]).hexdigest()
        fp = {"array": digest, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        if arr.shape == dims:
            return StructuralInput("image", _checked_image(arr, "the structural image"), fp, "the structural image")
        _check_movie_shape(arr.shape, shape, "the structural array")
        return StructuralInput("movie", arr, fp, "the structural array")
    if hasattr(structural, "shape") and hasattr(structural, "__getitem__"):
        from .manifest import movie_fingerprint

        _check_movie_shape(tuple(int(s) for s in structural.shape), shape, "the structural channel")
        channel = getattr(structural, "channel", None)
        label = "the structural channel" + ("" if channel is None else f" (channel {channel})")
        return StructuralInput("movie", structural, movie_fingerprint(structural), label)
    raise PipelineError(f"structural={type(structural).__name__} is not a structural channel. Fix: give a "
                        "movie of the same frames (a Movie or a path), or an image (array or .npy/.tif path) "
                        "of the frame's shape.")


def _from_path(path: Path, shape: tuple[int, ...]) -> StructuralInput:
    from ..io.backends import probe_path

    probe_path(path)
    stat = path.stat()
    fp = {"path": str(path.absolute()), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}
    dims = shape[1:]
    suffix = path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        image = _read_image(path, dims)
        if image is not None:
            return StructuralInput("image", _checked_image(image, str(path)), fp, str(path))
    from ..io import open_movie

    structural = open_movie(path)
    _check_movie_shape(tuple(int(s) for s in structural.shape), shape, str(path))
    return StructuralInput("movie", structural, fp, str(path))


def _read_image(path: Path, dims: tuple[int, ...]) -> np.ndarray | None:
    """The file's array if it is one image of the frame's shape (else None: read as a movie)."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, mmap_mode="r")
        if arr.shape == dims:
            return np.array(arr)
        if arr.ndim == len(dims):
            raise PipelineError(f"{str(path)!r} is an image of shape {arr.shape}, but the movie's frames are "
                                f"{dims}. Fix: give the structural image in the frame of the movie (same shape).")
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if tuple(series.shape) == dims:
            return series.asarray()
        if series.ndim == len(dims) == 2:
            raise PipelineError(f"{str(path)!r} is an image of shape {tuple(series.shape)}, but the movie's frames "
                                f"are {dims}. Fix: give the structural image in the frame of the movie (same shape).")
    return None


def _checked_image(image: np.ndarray, label: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise PipelineError(f"{label} holds {image.dtype} values, not numbers. Fix: give a grey-level image.")
    image = image.astype(np.float32)
    finite = np.isfinite(image)
    if not finite.any() or np.ptp(image[finite]) == 0:
        raise PipelineError(f"{label} is blank (constant or without a finite value): it shows no cells. Fix: "
                            "give the channel that carries the structural marker.")
    return image


def _check_movie_shape(got: tuple[int, ...], want: tuple[int, ...], label: str) -> None:
    if got != want:
        raise PipelineError(f"{label} has shape {got}, but the functional movie has {want}: the structural "
                            "channel must hold the same frames (or be one image of the frame's shape, "
                            f"{want[1:]}). Fix: pass the other channel of the same recording "
                            "(--structural-channel), or a registered image (--structural-image).")


def structural_image(inp: StructuralInput, motion_result: Any, *, engine: Any = None,
                     progress: bool = True) -> np.ndarray:
    """The structural image, ``dims`` float32: the given image, or the structural movie's time
    average with ``motion_result``'s displacements applied (None: the average as recorded)."""
    if inp.kind == "image":
        return np.asarray(inp.source, dtype=np.float32)
    if motion_result is not None:
        from ..motion import mean_after_shifts

        return mean_after_shifts(inp.source, motion_result, engine=engine, progress=progress)
    from ..io import iter_chunks

    total = None
    for _, frames in iter_chunks(inp.source, 256, progress=progress, desc="averaging the structural channel"):
        part = frames.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
    assert total is not None
    return (total / int(inp.source.shape[0])).astype(np.float32)
