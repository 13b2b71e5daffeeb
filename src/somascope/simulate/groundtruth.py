"""Writing a simulation in the ``dev_sim`` layout: ``movie.tif`` (uint16 ADU, zlib TIFF; a volume
or a two-channel movie as an ImageJ hyperstack) and ``gt.npz`` with the same keys as
``shared/data/dev_sim``, so one scorer serves both."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .result import Simulation

DEFAULT_ADU_GAIN = 20.0  # ADU per photon when the simulation does not say
DEFAULT_ADU_OFFSET = 50.0


def _kinds(sim: Simulation) -> np.ndarray:
    """``dev_sim`` component kinds: ``"donut"`` (ring soma), ``"gauss"`` (filled soma), ``"dendrite"``."""
    return np.where(sim.kind == "soma", np.where(sim.ring, "donut", "gauss"), "dendrite").astype("<U8")


def _photon_scale(sim: Simulation) -> float:
    """Photons per movie unit (the hard preset renders in photons: 1)."""
    if not sim.photon_gain > 0:
        raise ValueError("the simulation has no photon noise (snr=inf); it cannot be written in photon counts.")
    return 1.0 / float(sim.photon_gain)


def n_channels(sim: Simulation) -> int:
    """Channels of a simulation: 2 when it has a structural channel (``extra["structural"]``), else 1."""
    return 2 if "structural" in sim.extra else 1


def ground_truth_arrays(sim: Simulation) -> dict[str, Any]:
    """The ``gt.npz`` contents of a simulation (see ``dev_sim`` README), in photons:
    ``A`` (N, *dims) peak 1, ``C`` (N, T) ΔF photons at the peak before bleaching, ``S`` (N, T)
    spike counts, ``is_soma``, ``is_active``, ``kind``, ``snr``, ``centers`` (N, ndim),
    ``radius``, ``tau`` (N, 2) rise/decay s, ``g`` (N, 2), ``shifts`` (T, ndim), ``mean_clean``
    (``dims``) ADU, ``b0`` (``dims``) photons, ``bleach``, ``params`` (JSON), ``fs``, plus
    ``F0``, ``amp``, ``rates``, ``snr_spike``, ``gain``, ``offset``, ``read_noise`` where known.

    ``dims`` is ``(H, W)`` as in ``dev_sim`` or ``(Z, H, W)`` for a volume. A volume, or a movie
    with a structural channel, also gets ``dims``; a volume ``plane_spacing`` (px),
    ``axial_radius`` (planes) and ``plane_gain`` (Z,) where known; a structural channel
    ``n_channels`` (2), ``labelled`` (N,) bool (the component carries the structural marker),
    ``structural_brightness`` (N,) photons at its marker's peak and ``structural_mean``
    (``dims``) the channel's expected image in ADU. A plain 2-D movie's file is as before."""
    from ..metrics import peak_snr

    if len(sim.dims) not in (2, 3):
        raise ValueError(f"only 2-D and 3-D simulations can be written in the dev_sim layout; dims are {sim.dims}.")
    scale = _photon_scale(sim)
    extra = sim.extra
    gain = float(extra.get("adu_gain", DEFAULT_ADU_GAIN))
    offset = float(extra.get("adu_offset", DEFAULT_ADU_OFFSET))
    N, dims = sim.n_cells, tuple(int(d) for d in sim.dims)
    C = sim.C * scale / sim.bleach[None, :]
    read = float(sim.read_noise) * scale
    mean_ph = sim.still_mean * scale
    g = np.zeros((N, 2), np.float32)
    g[:, : sim.g.shape[1]] = sim.g
    decay = -1.0 / (sim.frame_rate * np.log(np.clip(sim.g.sum(axis=1), 1e-9, 1 - 1e-9)))  # fallback only
    tau = extra.get("tau", np.column_stack([np.zeros(N), np.full(N, sim.decay_time) if sim.g.shape[1] else decay]))
    params = {**sim.params, "gain": gain, "offset": offset, "read_noise": read,
              "units": "A peak 1; C = dF in photons at the peak pixel (unbleached); ADU = gain*photons+offset"}
    out: dict[str, Any] = {
        "A": sim.A.toarray().T.reshape(N, *dims).astype(np.float32),
        "C": C.astype(np.float32),
        "S": sim.spike_counts.astype(np.float32),
        "is_soma": sim.kind == "soma",
        "is_active": np.asarray(sim.active, bool),
        "kind": _kinds(sim),
        "snr": np.asarray(extra["snr"] if "snr" in extra else peak_snr(sim.A, C, mean_ph, read, sim.bleach), np.float32),
        "centers": sim.centers.astype(np.float32),
        "radius": np.asarray(extra.get("radius", np.full(N, np.mean(sim.params.get("neuron_radius", 0.0)))), np.float32),
        "tau": np.asarray(tau, np.float32),
        "g": g,
        "shifts": np.asarray(sim.shifts, np.float32),
        "mean_clean": (gain * mean_ph + offset).astype(np.float32),
        "b0": np.asarray(extra.get("b0", (sim.b[:, 0] * sim.f[0, 0] * scale / sim.bleach[0]).reshape(dims)), np.float32),
        "bleach": sim.bleach.astype(np.float32),
        "params": json.dumps(params, default=str),
        "fs": np.float32(sim.frame_rate),
        "amp": (sim.amplitude * scale).astype(np.float32),
        "rates": sim.rate.astype(np.float32),
        "gain": np.float32(gain), "offset": np.float32(offset), "read_noise": np.float32(read),
    }
    for key in ("F0", "snr_spike"):
        if key in extra:
            out[key] = np.asarray(extra[key], np.float32)
    if len(dims) == 3 or n_channels(sim) == 2:
        out["dims"] = np.asarray(dims, np.int64)
    if len(dims) == 3:
        for key in ("plane_spacing", "axial_radius", "plane_gain"):
            if key in extra:
                out[key] = np.asarray(extra[key], np.float32)
    if n_channels(sim) == 2:
        out["n_channels"] = np.int64(2)
        out["labelled"] = np.asarray(extra["labelled"], bool)
        out["structural_brightness"] = np.asarray(extra["structural_brightness"], np.float32)
        out["structural_mean"] = (gain * np.asarray(extra["structural_mean"]) * scale + offset).astype(np.float32)
    return out


def to_adu(frames: np.ndarray, photons_per_unit: float, gain: float, offset: float) -> np.ndarray:
    """Movie frames (movie units) as uint16 ADU: ``round(gain · photons + offset)`` clipped to 0..65535."""
    adu = np.rint(np.asarray(frames, np.float32) * np.float32(photons_per_unit * gain) + np.float32(offset))
    return np.clip(adu, 0, 65535).astype(np.uint16)


def write_hyperstack(sim: Simulation, path: str | os.PathLike[str], photons_per_unit: float, gain: float,
                     offset: float, chunk_frames: int = 100, total: np.ndarray | None = None) -> None:
    """Write ``sim``'s movie as a uint16 ADU ImageJ hyperstack (zlib) at ``path``: axes ``TZYX``
    for a volume, ``TCYX`` / ``TZCYX`` with a structural channel (channel 0 functional, 1
    structural, frames interleaved channel by channel), ``finterval`` = 1 / frame rate (between
    volumes), and for a volume its plane spacing (ImageJ ``spacing`` in px, 1 px per unit), so
    :func:`somascope.io.open_movie` reads ``T × [Z ×] H × W`` at the volume rate (``channel=``
    picks the channel). ``total`` (``dims``), when given, gets the functional channel's sum over
    frames added (ADU)."""
    import tifffile

    T, dims = sim.n_frames, tuple(int(d) for d in sim.dims)
    movies = [sim.movie] + ([sim.extra["structural"]] if n_channels(sim) == 2 else [])
    volume = len(dims) == 3
    Z = dims[0] if volume else 1
    H, W = dims[-2:]
    C = len(movies)
    axes = "T" + ("Z" if volume else "") + ("C" if C > 1 else "") + "YX"
    shape = (T,) + ((Z,) if volume else ()) + ((C,) if C > 1 else ()) + (H, W)
    metadata: dict[str, Any] = {"axes": axes, "finterval": 1.0 / float(sim.frame_rate)}
    options: dict[str, Any] = {}
    if volume and sim.extra.get("plane_spacing"):
        metadata["spacing"] = float(sim.extra["plane_spacing"])
        options["resolution"] = (1.0, 1.0)

    def pages() -> Any:
        for t0 in range(0, T, chunk_frames):
            t1 = min(T, t0 + chunk_frames)
            chunks = [to_adu(m[t0:t1], photons_per_unit, gain, offset).reshape(t1 - t0, Z, H, W) for m in movies]
            if total is not None:
                total[...] += chunks[0].sum(axis=0, dtype=np.float64).reshape(total.shape)
            yield from np.stack(chunks, axis=2).reshape(-1, H, W)  # t, z, c order

    tifffile.imwrite(path, pages(), shape=shape, dtype=np.uint16, imagej=True, compression="zlib",
                     bigtiff=2 * int(np.prod(shape)) > 2**31, metadata=metadata, **options)


def write_ground_truth_folder(sim: Simulation, folder: str | os.PathLike[str], chunk_frames: int = 100) -> Path:
    """Write ``sim`` into ``folder`` in the ``dev_sim`` layout: ``movie.tif`` (T, H, W) uint16 ADU,
    zlib-compressed, written ``chunk_frames`` frames at a time from ``sim.movie`` (array or
    Store), and ``gt.npz`` (:func:`ground_truth_arrays`, plus ``mean_raw``, the movie's mean
    in ADU, shaped ``dims``). A volume or a two-channel movie is written as an ImageJ hyperstack
    instead (:func:`write_hyperstack`: ``TZYX``, ``TCYX`` or ``TZCYX``). Both files are written
    under temporary names and renamed when complete. Returns the folder."""
    import tifffile

    from ..io.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gt = ground_truth_arrays(sim)
    scale, gain, offset = _photon_scale(sim), float(gt["gain"]), float(gt["offset"])
    T, dims = sim.n_frames, tuple(int(d) for d in sim.dims)
    total = np.zeros(dims, np.float64)
    if len(dims) == 2 and n_channels(sim) == 1:
        H, W = dims

        def pages() -> Any:
            for t0 in range(0, T, chunk_frames):
                chunk = to_adu(sim.movie[t0:min(T, t0 + chunk_frames)], scale, gain, offset)
                total[...] += chunk.sum(axis=0, dtype=np.float64)
                yield from chunk

        with atomic_path(folder / "movie.tif") as tmp:
            tifffile.imwrite(tmp, pages(), shape=(T, H, W), dtype=np.uint16, compression="zlib",
                             bigtiff=2 * T * H * W > 2**31, metadata={"shape": [T, H, W]})
    else:
        with atomic_path(folder / "movie.tif") as tmp:
            write_hyperstack(sim, tmp, scale, gain, offset, chunk_frames, total)
    gt["mean_raw"] = (total / T).astype(np.float32)
    with atomic_path(folder / "gt.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **gt)
    return folder
