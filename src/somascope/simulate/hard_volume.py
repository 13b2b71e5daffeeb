"""The "hard" two-photon family in 3-D: ``volumetric(preset="hard")``, a ``T×Z×H×W`` movie of
``Z`` planes in photon counts with the ingredients of :mod:`~somascope.simulate.hard` extended
to depth.

- Somata are 3-D bodies (ellipsoids; half of them shells with a dimmer nucleus, half filled
  generalised-Gaussian balls, grainy) of in-plane radius ``neuron_radius`` px ±15 % and axial
  radius ``axial_radius`` px, imaged on planes ``plane_spacing`` px apart (both default to the
  in-plane radius: round somata whose axial radius is one plane, so a soma spans ~2 planes).
  The axial PSF has a sigma of ``axial_psf_sigma`` px. Centres lie within half a plane of the
  imaged planes; their density is the 2-D preset's per ``2 · axial_radius`` of depth, so each
  plane is about as crowded as a 2-D hard movie. A soma or dendrite is as bright as its place
  allows: a soma between two planes is dimmer on both than one centred on a plane, one cut by
  the field's edge keeps the brightness of its visible part (neither is rescaled to full
  brightness), and one whose visible peak is under ``min_visible`` of its full peak is left out.
- 15 % dendrite segments (3-D random walks, mostly within a plane or two), 20 % silent somata,
  sparse bursty firing (AR(2) transients), resting brightness 0.5–1.5 × the local background.
- Background per plane: each plane has its own level (× uniform ``plane_level``), a grainy
  spatial variation correlated over ``plane_correlation`` planes, the same vessels, 3-D slow
  neuropil fields and out-of-focus neuropil blobs (3-D Gaussians spanning ``blob_sigma_z``
  planes) with their own activity; vignetting (the same on every plane), 15 % bleaching,
  ~8 photons/voxel/volume with Poisson shot noise and Gaussian read noise (per voxel).
- Motion: the 2-D preset's rigid drift with jumps (and optionally its smooth warp), the SAME
  in-plane ``(y, x)`` displacement on every plane of a volume, no z motion: ``shifts`` is
  ``T × 3`` (dz, dy, dx) with ``dz = 0``.
- ``channels=2`` adds the static structural channel of :mod:`~somascope.simulate.structural`.

Ground truth: ``A`` has ``Z·H·W`` rows in C order of ``(Z, H, W)``; ``centers`` are
``(z, y, x)`` with z in planes; ``still_mean`` is the ``(Z, H, W)`` expected motion-free volume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import _fields as streams
from ._fields import smooth_field, unit_max
from .footprints import Footprints, columns_to_csc, crop_to_fov, place_centers, process_patch, soma_patch
from .hard import HardSettings, _textured, assemble_hard, hard_cells, hard_motion, hard_traces
from .motion import MotionModel
from .neuropil import blob_activity, field_activity, neuropil_fields, vessel_mask
from .result import Simulation
from .structural import STRUCTURAL, StructuralSettings, add_structural, check_channels


@dataclass(frozen=True)
class HardVolumeSettings(HardSettings):
    """Constants of the hard volume preset: those of :class:`~.hard.HardSettings` (``density``
    is somata per px² per ``2 · axial_radius`` of depth) plus the ones of depth."""

    axial_psf_sigma: float = 1.5  # px (the units of plane_spacing), Gaussian sigma of the axial PSF
    plane_level: tuple[float, float] = (0.75, 1.25)  # each plane's background level, × uniform in this
    plane_correlation: float = 1.0  # planes, axial correlation of the background's spatial variation
    blob_sigma_z: tuple[float, float] = (0.7, 2.0)  # planes, axial sigma of out-of-focus neuropil blobs
    min_visible: float = 0.1  # somata whose visible peak is under this fraction of their full peak are left out


VOLUME_SETTINGS = HardVolumeSettings()


def _visible_fraction(origin: np.ndarray, image: np.ndarray, dims: Sequence[int], top: float | None = None) -> float:
    """The peak of a patch's part inside ``dims`` over ``top`` (default: the whole patch's
    peak); 0 when nothing is inside."""
    lo = np.maximum(origin, 0)
    hi = np.minimum(origin + np.array(image.shape), np.asarray(dims))
    top = float(image.max()) if top is None else float(top)
    if np.any(hi <= lo) or top <= 0:
        return 0.0
    return min(1.0, float(image[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))].max()) / top)


def hard_volume_footprints(
    rng: np.random.Generator, dims: tuple[int, int, int], radius: float, axial: float, axial_psf: float,
    s: HardVolumeSettings = VOLUME_SETTINGS,
) -> tuple[Footprints, np.ndarray, np.ndarray]:
    """Somata and dendrite segments on ``dims`` (Z, H, W): ``(footprints, radius, semi_axes)``
    with ``radius`` ``(K,)`` the in-plane radius (px) and ``semi_axes`` ``(K, 3)`` each soma's
    radius per axis (planes, px, px). ``axial`` is the axial radius and ``axial_psf`` the axial
    PSF sigma, both in planes. Somata come first, then dendrites (``kind == "process"``); a
    column's maximum is its visible peak (≤ 1; 1 when the centre is in view)."""
    Z, H, W = dims
    n_soma = int(round(s.density * (s.reference_radius / radius) ** 2 * H * W * Z / (2.0 * axial)))
    n_process = int(round(n_soma * s.nonsoma_fraction / (1.0 - s.nonsoma_fraction)))
    r = np.array([axial, radius, radius], dtype=float)
    psf = np.array([axial_psf, s.psf_sigma, s.psf_sigma])
    columns, rings, radii, semis, centers = [], [], [], [], []
    # centres within half a plane of the imaged planes: z uniform in [-0.5, Z - 0.5]
    placed = place_centers(rng, (Z + 1, H, W), n_soma, r, s.min_separation) - np.array([0.5, 0.0, 0.0])
    for center in placed:
        size = float(np.clip(rng.normal(1.0, s.radius_cv), 0.6, 1.5))
        e = rng.uniform(0.0, s.ellipticity)
        semi = r * size * (1.0, 1.0 + e, 1.0 - e)
        ring = bool(rng.random() < s.donut_fraction)
        angle = rng.uniform(0.0, np.pi)
        if ring:
            args = (semi, angle, True, rng.uniform(0.45, 0.65), rng.uniform(0.3, 0.6), psf)
            opts: dict[str, Any] = {"edge": rng.uniform(*s.donut_edge)}
        else:
            args = (semi * s.filled_scale, angle, False, 0.0, 1.0, psf)
            opts = {"shape_power": rng.uniform(*s.shape_power)}
        origin, image = soma_patch(center, *args, **opts)
        # its full peak: the same soma centred on a plane (a soma between planes is dimmer on both)
        top = soma_patch(np.floor(center), *args, **opts)[1].max()
        visible = _visible_fraction(origin, image, dims, top)
        idx, val = _textured(rng, *crop_to_fov(origin, image, dims), s.texture)
        if visible < s.min_visible:
            continue
        columns.append((idx, (val * np.float32(visible)).astype(np.float32)))
        rings.append(ring)
        radii.append(radius * size)
        semis.append(r * size)
        centers.append(center)
    n_soma = len(columns)
    for _ in range(n_process):
        idx = np.zeros(0, np.int64)
        while idx.size == 0:
            start = rng.uniform(0.0, 1.0, 3) * (np.asarray(dims) - 1.0)
            origin, image = process_patch(rng, start, r, psf)
            visible = _visible_fraction(origin, image, dims)
            idx, val = crop_to_fov(origin, image, dims)
        idx, val = _textured(rng, idx, val, s.texture)
        columns.append((idx, (val * np.float32(visible)).astype(np.float32)))
        coords = np.array(np.unravel_index(idx, dims), dtype=float)
        centers.append((coords * val).sum(axis=1) / val.sum())
        rings.append(False)
        radii.append(radius)
        semis.append(r)
    n = len(columns)
    footprints = Footprints(
        A=columns_to_csc(columns, Z * H * W),
        kind=np.array(["soma"] * n_soma + ["process"] * n_process, dtype="<U7"),
        ring=np.array(rings, dtype=bool),
        centers=np.array(centers, dtype=float).reshape(n, 3),
    )
    return footprints, np.array(radii, dtype=float), np.array(semis, dtype=float).reshape(n, 3)


def volume_blobs(
    rng: np.random.Generator, dims: tuple[int, int, int], density: float, sigma: tuple[float, float],
    sigma_z: tuple[float, float],
) -> np.ndarray:
    """Out-of-focus neuropil blobs in a volume: ``round(density · H · W · max(1, Z / 3))``
    3-D Gaussians (sigma uniform in ``sigma`` px in-plane and ``sigma_z`` planes axially) at
    random places, ``voxels × n`` float32, each with maximum 1 inside the volume."""
    Z, H, W = dims
    n = int(round(density * H * W * max(1.0, Z / 3.0)))
    out = np.empty((Z * H * W, n), dtype=np.float32)
    axes = [np.arange(d, dtype=float) for d in dims]
    for j in range(n):
        center = rng.uniform(0.0, 1.0, 3) * (np.asarray(dims) - 1.0)
        sz, sxy = rng.uniform(*sigma_z), rng.uniform(*sigma)
        gz, gy, gx = (np.exp(-0.5 * ((a - c) / sd) ** 2) for a, c, sd in zip(axes, center, (sz, sxy, sxy)))
        out[:, j] = unit_max(gz[:, None, None] * gy[None, :, None] * gx[None, None, :]).ravel()
    return out


def hard_volume_background(
    rng: np.random.Generator, rng_dynamics: np.random.Generator, dims: tuple[int, int, int], n_frames: int,
    frame_rate: float, s: HardVolumeSettings = VOLUME_SETTINGS,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """Background of a hard volume in the tissue frame, before vignetting and bleaching:
    ``(b, f, kinds, plane_gain)`` with ``b`` ``voxels × nb`` float32 (photons per unit of
    ``f``), ``f`` ``nb × T``: the baseline (each plane at its own level ``plane_gain`` (Z,),
    varying ±``background_variation`` with an axial correlation of ``plane_correlation``
    planes, darkened by vessels; ``f`` = 1), 3-D slow neuropil fields and active neuropil
    blobs (both proportional to the baseline at their place)."""
    Z, H, W = dims
    gain = rng.uniform(*s.plane_level, Z)
    texture = smooth_field(rng, dims, (s.plane_correlation, H / 4.0, W / 4.0))
    base = s.photons * gain[:, None, None] * (1.0 + s.background_variation * texture)
    base = (base * vessel_mask(rng, (H, W), s.n_vessels)[None]).ravel().astype(np.float32)
    fields = neuropil_fields(rng, dims, s.n_fields) * base[:, None]
    blobs = volume_blobs(rng, dims, s.blob_density, s.blob_sigma, s.blob_sigma_z) * base[:, None]
    b = np.column_stack([base, fields, blobs]).astype(np.float32)
    f = np.vstack([
        np.ones((1, n_frames)),
        field_activity(rng_dynamics, s.n_fields, n_frames, frame_rate, s.field_amplitude, s.field_timescale),
        blob_activity(rng_dynamics, blobs.shape[1], n_frames, frame_rate, s.blob_rate, s.blob_amplitude),
    ])
    kinds = ("neuropil",) * (1 + s.n_fields) + ("blob",) * blobs.shape[1]
    return b, f, kinds, gain


def planar_to_volume_motion(mot: MotionModel, n_planes: int) -> MotionModel:
    """The 3-D truth of an in-plane motion model ``mot`` (dims ``(H, W)``) applied alike to
    every one of ``n_planes`` planes: rigid ``(T, 3)`` with a zero z column, modes (if any)
    ``(J, 3, Z, H, W)`` with a zero z component and the same field on every plane."""
    H, W = mot.dims
    rigid = np.zeros((mot.rigid.shape[0], 3), np.float32)
    rigid[:, 1:] = mot.rigid
    modes = None
    if mot.modes is not None:
        modes = np.zeros((mot.modes.shape[0], 3, n_planes, H, W), np.float32)
        modes[:, 1:] = mot.modes[:, :, None]
    return MotionModel((n_planes, H, W), rigid, modes, mot.weights)


def _radii(neuron_radius: float | Sequence[float], axial_radius: float | None, plane_spacing: float | None
           ) -> tuple[float, float, float]:
    """``(in-plane radius px, axial radius planes, plane spacing px)`` from the arguments of
    :func:`simulate_hard_volume`."""
    r = np.atleast_1d(np.asarray(neuron_radius, dtype=float))
    if r.size not in (1, 3):
        raise ValueError(f"neuron_radius must be one in-plane radius (px) or (z planes, y px, x px); got {neuron_radius}.")
    radius = float(r[0] if r.size == 1 else np.mean(r[1:]))
    spacing = radius if plane_spacing is None else float(plane_spacing)
    if r.size == 3:
        if axial_radius is not None:
            raise ValueError("pass the axial radius either as neuron_radius=(z, y, x) (z in planes) or as "
                             "axial_radius (px), not both.")
        axial = float(r[0])
    else:
        axial = (radius if axial_radius is None else float(axial_radius)) / spacing
    return radius, axial, spacing


def simulate_hard_volume(
    *,
    dims: tuple[int, int, int],
    n_frames: int,
    frame_rate: float,
    decay_time: float,
    neuron_radius: float | Sequence[float],
    motion: str | None,
    seed: int,
    out: str | os.PathLike[str] | None = None,
    nonrigid_amplitude: float | Sequence[float] | None = None,
    interp_order: int = 3,
    overwrite: bool = False,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
    channels: int = 1,
    plane_spacing: float | None = None,
    axial_radius: float | None = None,
    settings: HardVolumeSettings = VOLUME_SETTINGS,
    structural: StructuralSettings = STRUCTURAL,
) -> Simulation:
    """A hard two-photon volume movie ``T×Z×H×W`` in photons (float32; see the module docstring).

    ``dims`` (Z, H, W); ``frame_rate`` in volumes per second; ``neuron_radius`` the in-plane
    soma radius (px), or ``(z, y, x)`` with z the axial radius in planes; ``plane_spacing``
    (px, default the in-plane radius) and ``axial_radius`` (px, default the in-plane radius) set
    the axial radius in planes, ``axial_radius / plane_spacing`` (1 by default); ``motion``
    None, ``"rigid"`` (drift with jumps, in-plane) or ``"nonrigid"`` (plus a smooth in-plane
    warp of ``nonrigid_amplitude`` px, default 2.5, the same on every plane); ``channels``
    1 or 2 (adds the structural channel, ``Simulation.extra["structural"]`` ``T×Z×H×W``).

    The truth follows :class:`Simulation` in the camera frame (``A`` ``Z·H·W × K``, vignetted,
    unit-max; ``C`` in photons, bleached; ``shifts`` ``T × 3`` with dz = 0; ``motion`` the 3-D
    model), and ``Simulation.extra`` adds those of the 2-D hard preset (``radius``, ``tau``,
    ``F0``, ``snr``, ``snr_spike``, ``b0`` (Z, H, W), ``adu_gain``, ``adu_offset``) plus
    ``semi_axes`` (K, 3) (planes, px, px), ``plane_gain`` (Z,) each plane's background level
    factor, ``plane_spacing`` (px) and ``axial_radius`` (planes).
    """
    s = settings
    channels = check_channels(channels)
    if len(dims) != 3:
        raise ValueError(f"the hard volume preset needs dims=(Z, H, W); got {dims}.")
    dims = (int(dims[0]), int(dims[1]), int(dims[2]))
    radius, axial, spacing = _radii(neuron_radius, axial_radius, plane_spacing)
    if motion not in (None, "none", "rigid", "nonrigid"):
        raise ValueError(f"motion must be None, 'rigid' or 'nonrigid'; got {motion!r}.")
    if not (radius > 0 and axial > 0 and spacing > 0 and frame_rate > 0 and decay_time > 0 and n_frames >= 1
            and dims[0] >= 1 and min(dims[1:]) >= 16):
        raise ValueError("the hard volume preset needs neuron_radius, axial_radius, plane_spacing, frame_rate, "
                         "decay_time > 0, n_frames >= 1 and dims >= (1, 16, 16); got "
                         f"{radius}, {axial} planes, {spacing}, {frame_rate}, {decay_time}, {n_frames}, {dims}.")
    fp, radii, semis = hard_volume_footprints(streams.rng_for(seed, streams.FOOTPRINTS), dims, radius, axial,
                                              s.axial_psf_sigma / spacing, s)
    b_t, f_t, kinds, gain = hard_volume_background(streams.rng_for(seed, streams.NEUROPIL, 0),
                                                   streams.rng_for(seed, streams.NEUROPIL, 1), dims, n_frames,
                                                   frame_rate, s)
    center_vox = np.ravel_multi_index(
        tuple(np.clip(np.rint(fp.centers).astype(int), 0, np.asarray(dims) - 1).T), dims)
    cells = hard_cells(streams.rng_for(seed, streams.PROPERTIES), fp.kind, b_t[center_vox, 0], decay_time, s)
    bleach, g, counts, peaks, C_t = hard_traces(seed, cells, n_frames, frame_rate, s.bleach, s.burst_size)
    mot = hard_motion(seed, dims[1:], n_frames, frame_rate, motion, nonrigid_amplitude, s)  # every plane alike
    params = {"modality": "volumetric", "preset": "hard", "dims": list(dims), "n_frames": n_frames,
              "frame_rate": frame_rate, "decay_time": decay_time, "neuron_radius": radius, "motion": motion,
              "seed": seed, "nonrigid_amplitude": nonrigid_amplitude, "plane_spacing": spacing,
              "axial_radius": axial * spacing, "channels": channels,
              "settings": json.loads(json.dumps(asdict(s)))}
    render = dict(order=interp_order, out=out, overwrite=overwrite, chunk_frames=chunk_frames, n_threads=n_threads,
                  progress=progress)
    sim = assemble_hard(
        fp=fp, radii=radii, cells=cells, C_t=C_t, b_t=b_t, f_t=f_t, kinds=kinds, counts=counts, peaks=peaks, g=g,
        bleach=bleach, mot=mot, dims=dims, frame_rate=frame_rate, decay_time=decay_time, params=params,
        vignette_strength=s.vignette, read_noise=s.read_noise, adu_gain=s.adu_gain, adu_offset=s.adu_offset,
        seed=seed, render=render,
    )
    sim.shifts = np.zeros((n_frames, 3), np.float32)
    if mot is not None:
        sim.motion = planar_to_volume_motion(mot, dims[0])
        sim.shifts = sim.motion.rigid
    sim.extra.update(semi_axes=semis, plane_gain=gain, plane_spacing=spacing, axial_radius=axial)
    if channels == 2:
        add_structural(sim, seed=seed, A_tissue=fp.A, semi_axes=semis,
                       psf_sigma=np.array([s.axial_psf_sigma / spacing, s.psf_sigma, s.psf_sigma]), motion=mot,
                       render=render, settings=structural)
    return sim
