"""The "hard" two-photon preset: dense, dim, cluttered movies in photon counts, calibrated on an
independent simulator (``dev_sim/dev_2p``) so that defaults can be tuned across many seeds.

Ingredients (all constants in :class:`HardSettings`): dense somata (0.0025 per px² at radius
6 px, scaled by (6/r)² so packing stays the same), radii ±15 %, half ring-shaped (nuclear
exclusion, sharp or soft edges) and half filled (generalised Gaussian profiles), a grainy
texture, 15 % dendrite segments, 20 % silent somata, sparse firing with bursts through AR(2)
transients, resting brightness 0.5–1.5 × the local background and log-normal ΔF/F, 15 %
bleaching, three vessels, slow neuropil fields, out-of-focus neuropil blobs with their own
activity, vignetting, ~8 photons/pixel/frame of background with Poisson shot noise and
Gaussian read noise, rigid drift with jumps and optionally a smooth non-rigid warp.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import sparse

from . import _fields as streams
from .background import bleaching, vignette
from .footprints import Footprints, columns_to_csc, crop_to_fov, place_centers, process_patch, soma_patch
from .motion import jumpy_path, make_motion
from .neuropil import blob_activity, field_activity, neuropil_blobs, neuropil_fields, vessel_mask
from .render import NoiseModel, render_movie
from .result import Simulation
from .structural import STRUCTURAL, StructuralSettings, add_structural, check_channels
from .traces import ar_coefficients, calcium, impulse_peak, spike_counts


@dataclass(frozen=True)
class HardSettings:
    """Constants of the hard preset (units in the names' comments)."""

    density: float = 0.0025  # somata per px² at reference_radius
    reference_radius: float = 6.0  # px; density scales as (reference_radius / radius)²
    radius_cv: float = 0.15  # relative spread of soma radii
    nonsoma_fraction: float = 0.15  # dendrite segments among all components
    donut_fraction: float = 0.5  # ring-shaped somata (nuclear exclusion)
    donut_edge: tuple[float, float] = (0.05, 0.2)  # edge softness of ring somata, radii
    shape_power: tuple[float, float] = (2.0, 3.5)  # profile exponent of filled somata
    filled_scale: float = 0.9  # filled somata: exp(-(ρ / filled_scale)^p)
    texture: float = 0.12  # relative std of a footprint's pixel-to-pixel graininess
    min_separation: float = 1.4  # radii between soma centres (partial overlaps)
    ellipticity: float = 0.2
    psf_sigma: float = 0.6  # px
    silent_fraction: float = 0.2  # of the somata
    firing_rate: tuple[float, float] = (0.02, 1.0)  # Hz, log-uniform
    burst_fraction: float = 0.3  # cells that also fire bursts
    burst_rate: tuple[float, float] = (0.01, 0.04)  # Hz
    burst_size: float = 6.0  # mean spikes per burst (within 150 ms)
    rise_time: tuple[float, float] = (0.05, 0.1)  # s
    decay_spread: float = 1.94  # per-cell decay log-uniform in [D / spread, D · spread]
    bleach: float = 0.15  # fraction of fluorescence lost over the movie
    photons: float = 8.0  # mean background photons per pixel per frame
    background_variation: float = 0.15  # relative spatial variation of the background
    f0_ratio: tuple[float, float] = (0.5, 1.5)  # cell resting brightness / local background
    dff_median: float = 0.5  # ΔF/F of one spike, log-normal
    dff_logsd: float = 0.6
    n_vessels: int = 3
    n_fields: int = 3
    field_amplitude: float = 0.15  # of the background
    field_timescale: tuple[float, float] = (5.0, 30.0)  # s
    blob_density: float = 1 / 1500  # neuropil blobs per px²
    blob_sigma: tuple[float, float] = (5.0, 14.0)  # px
    blob_rate: tuple[float, float] = (0.5, 3.0)  # Hz
    blob_amplitude: float = 0.12  # one event, fraction of the background
    vignette: float = 0.15
    read_noise: float = 0.3  # photons
    adu_gain: float = 20.0  # ADU per photon in the written uint16 movie
    adu_offset: float = 50.0
    motion_std: float = 0.7  # px per axis, rigid drift
    jump_rate: float = 0.03  # Hz
    jump_amplitude: float = 2.0  # px
    nonrigid_amplitude: float = 2.5  # px, for motion="nonrigid"


SETTINGS = HardSettings()


def hard_footprints(
    rng: np.random.Generator, dims: tuple[int, int], radius: float, s: HardSettings = SETTINGS
) -> tuple[Footprints, np.ndarray]:
    """Somata and dendrite segments of the hard preset on ``dims`` (H, W): ``(footprints,
    radius)`` with ``radius`` ``(K,)`` px (a soma's mean semi-axis; a dendrite's nominal
    ``radius``). Somata come first, then dendrites (``kind == "process"``)."""
    H, W = dims
    n_soma = int(round(s.density * (s.reference_radius / radius) ** 2 * H * W))
    n_process = int(round(n_soma * s.nonsoma_fraction / (1.0 - s.nonsoma_fraction)))
    r = np.array([radius, radius], dtype=float)
    psf = np.full(2, s.psf_sigma)
    columns, rings, radii = [], [], []
    centers = list(place_centers(rng, dims, n_soma, r, s.min_separation))
    for center in centers:
        size = float(np.clip(rng.normal(1.0, s.radius_cv), 0.6, 1.5))
        e = rng.uniform(0.0, s.ellipticity)
        semi = r * size * (1.0 + e, 1.0 - e)
        ring = bool(rng.random() < s.donut_fraction)
        angle = rng.uniform(0.0, np.pi)
        if ring:
            origin, image = soma_patch(center, semi, angle, True, rng.uniform(0.45, 0.65), rng.uniform(0.3, 0.6),
                                       psf, edge=rng.uniform(*s.donut_edge))
        else:
            origin, image = soma_patch(center, semi * s.filled_scale, angle, False, 0.0, 1.0, psf,
                                       shape_power=rng.uniform(*s.shape_power))
        columns.append(_textured(rng, *crop_to_fov(origin, image, dims), s.texture))
        rings.append(ring)
        radii.append(radius * size)
    for _ in range(n_process):
        idx = np.zeros(0, np.int64)
        while idx.size == 0:
            start = rng.uniform(0.0, 1.0, 2) * (np.asarray(dims) - 1.0)
            idx, val = crop_to_fov(*process_patch(rng, start, r, psf), dims)
        columns.append(_textured(rng, idx, val, s.texture))
        coords = np.array(np.unravel_index(idx, dims), dtype=float)
        centers.append((coords * val).sum(axis=1) / val.sum())
        rings.append(False)
        radii.append(radius)
    n = n_soma + n_process
    footprints = Footprints(
        A=columns_to_csc(columns, H * W),
        kind=np.array(["soma"] * n_soma + ["process"] * n_process, dtype="<U7"),
        ring=np.array(rings, dtype=bool),
        centers=np.array(centers, dtype=float).reshape(n, 2),
    )
    return footprints, np.array(radii, dtype=float)


def _textured(rng: np.random.Generator, idx: np.ndarray, val: np.ndarray, texture: float) -> tuple[np.ndarray, np.ndarray]:
    """A footprint column ``(indices, values)`` with multiplicative pixel noise of relative
    std ``texture``, rescaled to a maximum of 1."""
    if val.size == 0:
        return idx, val
    val = val * np.maximum(0.0, 1.0 + texture * rng.standard_normal(val.size))
    return idx, (val / val.max()).astype(np.float32)


@dataclass(frozen=True)
class HardCells:
    """Per-component properties (all ``(K,)``): resting brightness ``F0`` and one spike's
    peak ``amplitude`` at the footprint's peak (photons, tissue frame, unbleached), firing
    ``rate`` and ``burst_rate`` (Hz; 0 when silent), ``rise`` and ``decay`` (s), ``active``."""

    F0: np.ndarray
    amplitude: np.ndarray
    rate: np.ndarray
    burst_rate: np.ndarray
    rise: np.ndarray
    decay: np.ndarray
    active: np.ndarray


def hard_cells(
    rng: np.random.Generator, kind: np.ndarray, local_background: np.ndarray, decay_time: float,
    s: HardSettings = SETTINGS,
) -> HardCells:
    """Random :class:`HardCells` for components of ``kind`` sitting on ``local_background``
    photons (``(K,)``); exactly ``round(silent_fraction · n_somata)`` somata are silent."""
    n = kind.size
    F0 = rng.uniform(*s.f0_ratio, n) * local_background
    amplitude = F0 * s.dff_median * np.exp(s.dff_logsd * rng.standard_normal(n))
    rate = np.exp(rng.uniform(*np.log(s.firing_rate), n))
    burst = np.where(rng.random(n) < s.burst_fraction, rng.uniform(*s.burst_rate, n), 0.0)
    rise = rng.uniform(*s.rise_time, n)
    decay = decay_time * np.exp(rng.uniform(-1.0, 1.0, n) * np.log(s.decay_spread))
    active = np.ones(n, dtype=bool)
    somata = np.flatnonzero(kind == "soma")
    active[rng.choice(somata, int(round(s.silent_fraction * somata.size)), replace=False)] = False
    return HardCells(F0, amplitude, np.where(active, rate, 0.0), np.where(active, burst, 0.0), rise,
                     np.maximum(decay, 2.0 * rise), active)


def hard_background(
    rng: np.random.Generator, rng_dynamics: np.random.Generator, dims: tuple[int, int], n_frames: int,
    frame_rate: float, s: HardSettings = SETTINGS,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Background in the tissue frame, before vignetting and bleaching: ``(b, f, kinds)``
    with ``b`` ``pixels × nb`` float32 (photons per unit of ``f``) and ``f`` ``nb × T``:
    the baseline (varying ±``background_variation``, darkened by vessels; ``f`` = 1), slow
    neuropil fields and active neuropil blobs (both proportional to the baseline below them)."""
    from ._fields import smooth_field

    H, W = dims
    base = s.photons * (1.0 + s.background_variation * smooth_field(rng, dims, np.array(dims) / 4.0))
    base = (base * vessel_mask(rng, dims, s.n_vessels)).ravel().astype(np.float32)
    fields = neuropil_fields(rng, dims, s.n_fields) * base[:, None]
    blobs = neuropil_blobs(rng, dims, s.blob_density, s.blob_sigma) * base[:, None]
    b = np.column_stack([base, fields, blobs]).astype(np.float32)
    f = np.vstack([
        np.ones((1, n_frames)),
        field_activity(rng_dynamics, s.n_fields, n_frames, frame_rate, s.field_amplitude, s.field_timescale),
        blob_activity(rng_dynamics, blobs.shape[1], n_frames, frame_rate, s.blob_rate, s.blob_amplitude),
    ])
    kinds = ("neuropil",) * (1 + s.n_fields) + ("blob",) * blobs.shape[1]
    return b, f, kinds


def _unit_columns(M: sparse.spmatrix | np.ndarray) -> tuple[Any, np.ndarray]:
    """``M`` with each column scaled to a maximum of 1, and the maxima (1 for empty columns)."""
    peak = np.asarray(M.max(axis=0).toarray() if sparse.issparse(M) else M.max(axis=0), dtype=np.float64).ravel()
    peak = np.where(peak > 0, peak, 1.0)
    if sparse.issparse(M):
        return sparse.csc_matrix(M @ sparse.diags(1.0 / peak)).astype(np.float32), peak
    return (M / peak).astype(np.float32), peak


def simulate_hard(
    *,
    dims: tuple[int, int],
    n_frames: int,
    frame_rate: float,
    decay_time: float,
    neuron_radius: float,
    motion: str | None,
    seed: int,
    out: str | os.PathLike[str] | None = None,
    nonrigid_amplitude: float | None = None,
    interp_order: int = 3,
    overwrite: bool = False,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
    settings: HardSettings = SETTINGS,
    channels: int = 1,
    structural: StructuralSettings = STRUCTURAL,
) -> Simulation:
    """A hard two-photon movie ``T×H×W`` in photons (float32; see the module docstring).

    ``channels=2`` adds a static structural channel (:mod:`~somascope.simulate.structural`,
    constants ``structural``) moved by the same motion: ``Simulation.extra`` then holds
    ``structural`` (its movie ``T×H×W``), ``labelled`` (K,) bool and the marker's ground truth;
    the functional channel (``movie``) is the same as with ``channels=1``.

    The truth follows :class:`Simulation` in the camera frame (``A`` vignetted, unit-max;
    ``C`` in photons, bleached), and ``Simulation.extra`` adds ``radius`` (K,) px, ``tau``
    (K, 2) rise/decay s, ``F0`` (K,) resting photons at the peak, ``snr`` (K,) peak SNR
    (:func:`somascope.metrics.peak_snr`), ``snr_spike`` (K,) one spike's SNR, ``b0`` (H, W)
    baseline background photons (camera frame, unbleached), ``adu_gain`` and ``adu_offset``.
    """
    s = settings
    channels = check_channels(channels)
    dims = (int(dims[0]), int(dims[1]))
    radius = float(np.mean(neuron_radius))
    if motion not in (None, "none", "rigid", "nonrigid"):
        raise ValueError(f"motion must be None, 'rigid' or 'nonrigid'; got {motion!r}.")
    if not (radius > 0 and frame_rate > 0 and decay_time > 0 and n_frames >= 1 and min(dims) >= 16):
        raise ValueError("the hard preset needs neuron_radius, frame_rate, decay_time > 0, n_frames >= 1 and "
                         f"dims >= (16, 16); got {radius}, {frame_rate}, {decay_time}, {n_frames}, {dims}.")
    fp, radii = hard_footprints(streams.rng_for(seed, streams.FOOTPRINTS), dims, radius, s)
    b_t, f_t, kinds = hard_background(streams.rng_for(seed, streams.NEUROPIL, 0),
                                      streams.rng_for(seed, streams.NEUROPIL, 1), dims, n_frames, frame_rate, s)
    H, W = dims
    center_px = np.ravel_multi_index(tuple(np.clip(np.rint(fp.centers).astype(int), 0, [H - 1, W - 1]).T), dims)
    cells = hard_cells(streams.rng_for(seed, streams.PROPERTIES), fp.kind, b_t[center_px, 0], decay_time, s)

    bleach, g, counts, peaks, C_t = hard_traces(seed, cells, n_frames, frame_rate, s.bleach, s.burst_size)
    mot = hard_motion(seed, dims, n_frames, frame_rate, motion, nonrigid_amplitude, s)
    params = {"modality": "two_photon", "preset": "hard", "dims": list(dims), "n_frames": n_frames,
              "frame_rate": frame_rate, "decay_time": decay_time, "neuron_radius": radius, "motion": motion,
              "seed": seed, "nonrigid_amplitude": nonrigid_amplitude,
              "settings": json.loads(json.dumps(asdict(s)))}
    render = dict(order=interp_order, out=out, overwrite=overwrite, chunk_frames=chunk_frames, n_threads=n_threads,
                  progress=progress)
    sim = assemble_hard(
        fp=fp, radii=radii, cells=cells, C_t=C_t, b_t=b_t, f_t=f_t, kinds=kinds, counts=counts, peaks=peaks, g=g,
        bleach=bleach, mot=mot, dims=dims, frame_rate=frame_rate, decay_time=decay_time, params=params,
        vignette_strength=s.vignette, read_noise=s.read_noise, adu_gain=s.adu_gain, adu_offset=s.adu_offset,
        seed=seed, render=render,
    )
    if channels == 2:
        add_structural(sim, seed=seed, A_tissue=fp.A, semi_axes=np.column_stack([radii, radii]),
                       psf_sigma=np.full(2, s.psf_sigma), motion=mot, render=render, settings=structural)
    return sim


def hard_motion(seed: int, plane: tuple[int, int], n_frames: int, frame_rate: float, motion: str | None,
                nonrigid_amplitude: Any, s: HardSettings) -> Any:
    """The hard preset's in-plane motion of frames ``plane`` = (H, W): rigid drift with jumps,
    and with ``motion="nonrigid"`` a smooth warp; None for ``motion`` None/"none"."""
    if motion not in ("rigid", "nonrigid"):
        return None
    rng = streams.rng_for(seed, streams.MOTION, 0)
    rigid = jumpy_path(rng, n_frames, frame_rate, s.motion_std, s.jump_rate, s.jump_amplitude)
    amp = s.nonrigid_amplitude if nonrigid_amplitude is None else float(np.max(nonrigid_amplitude))
    return make_motion(rng, plane, n_frames, frame_rate, motion, np.zeros(2), np.full(2, amp), rigid=rigid)


def hard_traces(seed: int, cells: Any, n_frames: int, frame_rate: float, bleach_fraction: float,
                burst_size: float) -> tuple[np.ndarray, ...]:
    """The cells' activity in a hard-preset movie: ``(bleach, g, counts, peaks, C_t)`` — the
    bleaching curve (T,) losing ``bleach_fraction`` over the movie, AR(2) coefficients (K, 2),
    spike counts (K, T), each cell's impulse peak (K,) and calcium (K, T, photons, bleached)."""
    bleach = bleaching(n_frames, frame_rate, -max(n_frames - 1, 1) / frame_rate / np.log(1.0 - bleach_fraction))
    g = np.array([ar_coefficients(d, frame_rate, r) for d, r in zip(cells.decay, cells.rise)]).reshape(-1, 2)
    counts = spike_counts(streams.rng_for(seed, streams.TRACES, 0), cells.rate, n_frames, frame_rate,
                          cells.burst_rate, burst_size=burst_size)
    peaks = np.array([impulse_peak(gk) for gk in g])
    C_t = calcium(counts * (cells.amplitude / peaks)[:, None] * bleach[None, :], g)
    return bleach, g, counts, peaks, C_t


def assemble_hard(*, fp: Footprints, radii: np.ndarray, cells: Any, C_t: np.ndarray, b_t: np.ndarray,
                  f_t: np.ndarray, kinds: tuple[str, ...], counts: np.ndarray, peaks: np.ndarray, g: np.ndarray,
                  bleach: np.ndarray, mot: Any, dims: tuple[int, int], frame_rate: float, decay_time: float,
                  params: dict[str, Any], vignette_strength: float, read_noise: float, adu_gain: float,
                  adu_offset: float, seed: int, render: dict[str, Any]) -> Simulation:
    """Render a hard-preset movie and its ground truth (shared by the two- and one-photon presets).

    Adds the cells' resting light as a background component, vignettes everything (the truth is
    in the camera frame: ``A`` unit-max, ``C`` in photons), renders with shot and read noise
    (:func:`~somascope.simulate.render.render_movie`; ``render`` holds its ``order``, ``out``,
    ``overwrite``, ``chunk_frames``, ``n_threads``, ``progress``) and fills
    :class:`Simulation` with the ``extra`` keys both presets document. ``params["modality"]``
    names the modality.
    """
    from ..metrics import peak_snr

    n_frames = int(C_t.shape[1])
    resting = np.asarray(fp.A @ cells.F0).ravel().astype(np.float32)
    b_t = np.column_stack([b_t, resting])
    f_t = np.vstack([f_t, np.ones((1, n_frames))]) * bleach[None, :]
    kinds = (*kinds, "resting")

    V = vignette(dims, vignette_strength).ravel()
    A, a_peak = _unit_columns(sparse.csc_matrix(sparse.diags(V) @ fp.A))
    b, b_peak = _unit_columns(b_t * V[:, None])
    C, f = C_t * a_peak[:, None], f_t * b_peak[:, None]
    S = counts * (cells.amplitude * a_peak / peaks)[:, None] * bleach[None, :]
    noise = NoiseModel(1.0, read_noise)
    movie = render_movie(
        fp.A, C_t, b_t.astype(np.float32), f_t, dims, noise=noise, noise_key=(seed, streams.NOISE, 0), motion=mot,
        vignette=V.reshape(dims), frame_rate=frame_rate, metadata={"simulation": params}, **render,
    )
    still = np.asarray(A @ C.mean(axis=1)).ravel() + b @ f.mean(axis=1)
    still_mean = still.astype(np.float32).reshape(dims)
    unit = np.ones((1, 1))
    extra = {
        "radius": radii, "tau": np.column_stack([cells.rise, cells.decay]), "F0": cells.F0 * a_peak,
        "snr": peak_snr(A, C, still_mean, read_noise),
        "snr_spike": peak_snr(A, (cells.amplitude * a_peak)[:, None] * unit, still_mean, read_noise),
        "b0": (b[:, 0] * f[0, 0] / bleach[0]).reshape(dims).astype(np.float32),
        "adu_gain": adu_gain, "adu_offset": adu_offset,
    }
    target = (fp.kind == "soma") & cells.active
    params["snr"] = float(np.median(extra["snr"][target])) if target.any() else 0.0  # median peak SNR
    return Simulation(
        movie=movie, A=A, C=C, S=S, b=b, f=f, dims=dims, frame_rate=frame_rate, decay_time=decay_time, g=g,
        kind=fp.kind, active=cells.active,
        shifts=mot.rigid if mot is not None else np.zeros((n_frames, 2), np.float32),
        still_mean=still_mean, noise_std=noise.std(still_mean), seed=seed, params=params,
        modality=params["modality"], spike_counts=counts, amplitude=cells.amplitude * a_peak, rate=cells.rate,
        ring=fp.ring, centers=fp.centers, cell_ids=np.arange(fp.kind.size), background_kind=kinds, bleach=bleach,
        vignette=V.reshape(dims), photon_gain=1.0, read_noise=read_noise, motion=mot, extra=extra,
    )
