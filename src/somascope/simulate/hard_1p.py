"""The "hard" one-photon preset: micro-endoscope-like movies in photon counts, where dim, broad,
overlapping somata sit on a large, fluctuating, vignetted background; calibrated on an independent
simulator (``dev_sim/dev_1p``) so that one-photon defaults can be tuned across many seeds.

The model (all constants in :class:`OnePhotonHardSettings`):

- Somata only (dendrites are blurred away in one-photon images), 1 per 700 px² at radius 10 px,
  scaled by (10/r)², radii ±15 %, at least 1.2 radii apart (neighbours overlap). Each is a
  soft-edged elliptical cell body (0.7 of its radius) seen through scattering tissue: blurred by
  a near Gaussian (0.3 radii) plus a wide halo (0.9 radii, a quarter of the light), so a soma is
  a broad soft blob (half maximum at 0.7 radii) whose skirt reaches ~1.4 radii.
- Resting brightness 2–8 % of the local background; one spike adds a log-normal ΔF/F (median
  1.5); sparse firing (0.02–1 Hz log-uniform, 30 % with bursts), 20 % silent somata, AR(2)
  transients (rise 0.05–0.1 s, per-cell decay log-uniform within ×/÷ 1.94 of ``decay_time``).
- Background: a smooth baseline of 140 photons/pixel/frame at the centre (±20 % over a third of
  the field) shaded by four wide, blurred blood vessels (surface vessels: twice as wide as the
  two-photon preset's, 70 % of their darkness); four slow large-scale fields modulating it up and
  down (std 10 %, 3–20 s); out-of-focus blobs (1 per 1200 px², σ 15–35 px at radius 10) with
  their own transients (0.5–3 Hz, 8 % each); an out-of-focus population haze that follows the
  in-focus cells' summed activity (smoothed over 1 s, 3 % on average) — ~150 photons/pixel/frame
  in all at the centre. Everything is vignetted (corners 50 % darker) and bleaches by 15 %.
- Magnification: at radius r a pixel covers (10/r)² as much tissue as at radius 10, so the
  photons per pixel scale by (10/r)² and the vessels' blur and the blobs' size by r/10; a cell
  then collects the same light at every radius and the SNR does not depend on it.
- Poisson shot noise + Gaussian read noise (2 photons), written as ADU = photons + 100.
- Rigid motion: a slow drift of ~1 px per axis with 2 px jumps (0.01 Hz), or none.

Calibrated: ours vs dev_1p, both 160×160×1500 at 20 Hz, radius 10 px, decay_time 0.775 s (the
geometric middle of dev_1p's 0.4–1.5 s), rigid motion; statistics in photons, from the written
``movie.tif`` and ``gt.npz`` of each. "Background pixels": summed true footprints < 0.05; "temporal
std": after removing a quadratic trend (bleaching) per pixel; "slow share": std of that trend-free
trace smoothed over 1 s / its std (median over background pixels). Ours: seed 0, and the mean of
seeds 0–3 (the SNR median pooled over their 120 active somata; one seed's median ranges 6.0–16.4):

================================================  =======  ===========  =======
statistic                                         seed 0   seeds 0–3    dev_1p
================================================  =======  ===========  =======
mean level of the mean image (photons)            135.6    132.9        134.5
spatial spread of the mean image (std / mean)     0.31     0.28         0.25
temporal std of background pixels (photons)       15.6     15.2         16.2
slow share of that std                            0.49     0.50         0.46
std of the frame-mean trace (photons)             7.0      6.7          7.2
median peak SNR of active somata                  6.0      8.4          9.2
active somata with peak SNR < 4                   0.33     0.21         0.28
active somata                                     30       30           32
resting brightness / baseline background, median  0.043    0.046        0.056
footprint radius at half maximum / radius         0.70     0.70         0.66
footprint radius at 0.2 of the maximum / radius   1.02     1.02         1.00
rigid motion, std per axis (px)                   0.98     1.03         0.94
================================================  =======  ===========  =======
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from . import _fields as streams
from ._fields import smooth_field
from .footprints import Footprints, columns_to_csc, crop_to_fov, place_centers, soma_patch, with_halo
from .hard import SETTINGS as HARD_2P
from .hard import HardSettings, assemble_hard, hard_cells, hard_traces
from .motion import MotionModel, jumpy_path
from .neuropil import blob_activity, field_activity, neuropil_blobs, neuropil_fields, vessel_mask
from .result import Simulation
from .structural import STRUCTURAL, StructuralSettings, add_structural, check_channels


@dataclass(frozen=True)
class OnePhotonHardSettings:
    """Constants of the hard one-photon preset (units in the names' comments). Lengths in px
    and photons per pixel hold at ``reference_radius``; see the module docstring for how they
    scale with the radius."""

    density: float = 1 / 700  # somata per px² at reference_radius
    reference_radius: float = 10.0  # px; density scales as (reference_radius / radius)²
    radius_cv: float = 0.15  # relative spread of soma radii
    min_separation: float = 1.2  # radii between soma centres (overlaps)
    ellipticity: float = 0.15
    body_scale: float = 0.7  # cell body semi-axes / radius, before scattering
    body_edge: float = 0.15  # softness of the body's edge, body radii
    scatter_core: float = 0.3  # Gaussian sigma of the near scattering, radii
    scatter_halo: float = 0.9  # Gaussian sigma of the wide scattering halo, radii
    halo_weight: float = 0.25  # fraction of a soma's light in the halo
    silent_fraction: float = 0.2  # of the somata
    firing_rate: tuple[float, float] = (0.02, 1.0)  # Hz, log-uniform
    burst_fraction: float = 0.3  # cells that also fire bursts
    burst_rate: tuple[float, float] = (0.01, 0.04)  # Hz
    burst_size: float = 6.0  # mean spikes per burst (within 150 ms)
    rise_time: tuple[float, float] = (0.05, 0.1)  # s
    decay_spread: float = 1.94  # per-cell decay log-uniform in [D / spread, D · spread]
    f0_ratio: tuple[float, float] = (0.02, 0.08)  # cell resting brightness / local background
    dff_median: float = 1.5  # ΔF/F of one spike, log-normal
    dff_logsd: float = 0.5
    bleach: float = 0.15  # fraction of fluorescence lost over the movie
    photons: float = 140.0  # baseline photons/pixel/frame at the centre, unvignetted, at reference_radius
    background_variation: float = 0.2  # relative spatial variation of the baseline
    background_scale: float = 3.0  # baseline's spatial scale: the field of view divided by this
    n_vessels: int = 4
    vessel_width: float = 2.0  # vessels' width relative to the two-photon preset's (surface vessels)
    vessel_contrast: float = 0.7  # vessels' darkness relative to the two-photon preset's
    vessel_blur: float = 2.0  # px at reference_radius: vessels are out of focus
    n_fields: int = 4
    field_amplitude: float = 0.2  # of the baseline; the fields modulate it with std amplitude / 2
    field_timescale: tuple[float, float] = (3.0, 20.0)  # s
    blob_density: float = 1 / 1200  # out-of-focus blobs per px²
    blob_sigma: tuple[float, float] = (15.0, 35.0)  # px at reference_radius
    blob_rate: tuple[float, float] = (0.5, 3.0)  # Hz
    blob_amplitude: float = 0.08  # one event, fraction of the baseline
    haze_amplitude: float = 0.03  # out-of-focus population haze, mean fraction of the baseline
    haze_time: float = 1.0  # s, smoothing of the population activity it follows
    marker_haze: float = 1.0  # structural channel: out-of-focus marker light, mean, / a marker's median peak
    marker_haze_variation: float = 0.5  # its relative spatial variation (scale: background_scale)
    vignette: float = 0.5
    read_noise: float = 2.0  # photons
    adu_gain: float = 1.0  # ADU per photon in the written uint16 movie
    adu_offset: float = 100.0
    motion_std: float = 1.0  # px per axis, rigid drift
    jump_rate: float = 0.01  # Hz
    jump_amplitude: float = 2.0  # px


SETTINGS_1P = OnePhotonHardSettings()
_CELL_FIELDS = ("silent_fraction", "firing_rate", "burst_fraction", "burst_rate", "rise_time", "decay_spread",
                "f0_ratio", "dff_median", "dff_logsd")


def _cell_settings(s: OnePhotonHardSettings) -> HardSettings:
    """The two-photon preset's settings with this preset's cell statistics, for :func:`hard_cells`."""
    return replace(HARD_2P, **{name: getattr(s, name) for name in _CELL_FIELDS})


def scattered_soma(
    center: np.ndarray, semi_axes: np.ndarray, angle: float, radius: float, s: OnePhotonHardSettings
) -> tuple[np.ndarray, np.ndarray]:
    """A soma seen through scattering tissue on a local patch, ``(origin, image)``: a filled
    ellipse of ``semi_axes`` px (rotated by ``angle`` rad) with a soft edge, blurred by a near
    Gaussian of ``scatter_core · radius`` px, a fraction ``halo_weight`` of its light spread
    further by a halo of ``scatter_halo · radius`` px."""
    core = np.full(2, s.scatter_core * radius)
    origin, image = soma_patch(center, semi_axes, angle, False, 0.0, 1.0, core, edge=s.body_edge)
    return with_halo(origin, image, s.scatter_halo * radius, s.halo_weight)


def hard_1p_footprints(
    rng: np.random.Generator, dims: tuple[int, int], radius: float, s: OnePhotonHardSettings = SETTINGS_1P
) -> tuple[Footprints, np.ndarray]:
    """Somata of the hard one-photon preset on ``dims`` (H, W): ``(footprints, radius)``,
    ``radius`` ``(K,)`` px each soma's mean semi-axis (before the ``body_scale``); every
    component is a filled soma (``kind == "soma"``, ``ring`` False)."""
    H, W = dims
    n = int(round(s.density * (s.reference_radius / radius) ** 2 * H * W))
    r = np.array([radius, radius], dtype=float)
    centers = place_centers(rng, dims, n, r, s.min_separation)
    columns, radii = [], []
    for center in centers:
        size = float(np.clip(rng.normal(1.0, s.radius_cv), 0.6, 1.5))
        e = rng.uniform(0.0, s.ellipticity)
        semi = r * size * s.body_scale * (1.0 + e, 1.0 - e)
        origin, image = scattered_soma(center, semi, rng.uniform(0.0, np.pi), radius * size, s)
        columns.append(crop_to_fov(origin, image, dims))
        radii.append(radius * size)
    footprints = Footprints(
        A=columns_to_csc(columns, H * W), kind=np.full(n, "soma", dtype="<U7"), ring=np.zeros(n, dtype=bool),
        centers=np.asarray(centers, dtype=float).reshape(n, 2),
    )
    return footprints, np.array(radii, dtype=float)


def _wide_vessels(rng: np.random.Generator, dims: tuple[int, int], n: int, widen: float) -> np.ndarray:
    """:func:`~somascope.simulate.neuropil.vessel_mask` drawn on a grid ``widen`` times coarser
    and enlarged to ``dims`` (linear interpolation), so its vessels are ``widen`` times wider."""
    small = tuple(max(8, int(np.ceil(d / max(widen, 1.0)))) for d in dims)
    mask = vessel_mask(rng, small, n)
    return ndimage.zoom(mask, (dims[0] / small[0], dims[1] / small[1]), order=1, mode="nearest", grid_mode=True)


def hard_1p_background(
    rng: np.random.Generator, dims: tuple[int, int], radius: float, s: OnePhotonHardSettings = SETTINGS_1P
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Spatial background in the tissue frame, before vignetting: ``(b, kinds)``, ``b``
    ``pixels × nb`` float32 in photons per unit of activity. Columns: the baseline (``photons``
    at ``reference_radius``, scaled by ``(reference_radius / radius)²``, ± ``background_variation``,
    shaded by wide, blurred vessels), ``n_fields`` slow large-scale fields, the population haze, then the
    out-of-focus blobs; all but the baseline proportional to the baseline below them. The vessels'
    blur and the blobs' sizes scale with ``radius``."""
    zoom = radius / s.reference_radius
    variation = smooth_field(rng, dims, np.array(dims) / s.background_scale)
    base = s.photons / zoom**2 * (1.0 + s.background_variation * variation)
    vessels = 1.0 - s.vessel_contrast * (1.0 - _wide_vessels(rng, dims, s.n_vessels, s.vessel_width * zoom))
    vessels = ndimage.gaussian_filter(vessels, s.vessel_blur * zoom, mode="nearest")
    base = (base * vessels).ravel().astype(np.float32)
    fields = neuropil_fields(rng, dims, s.n_fields) * base[:, None]
    blobs = neuropil_blobs(rng, dims, s.blob_density, (s.blob_sigma[0] * zoom, s.blob_sigma[1] * zoom)) * base[:, None]
    b = np.column_stack([base, fields, base, blobs]).astype(np.float32)
    return b, ("haze",) * (2 + s.n_fields) + ("blob",) * blobs.shape[1]


def hard_1p_dynamics(
    rng: np.random.Generator, n_blobs: int, n_frames: int, frame_rate: float, population: np.ndarray,
    s: OnePhotonHardSettings = SETTINGS_1P,
) -> np.ndarray:
    """Time courses of :func:`hard_1p_background`'s columns, ``nb × T`` float64: 1 for the
    baseline; the slow fields' zero-mean modulations of it (std ``field_amplitude / 2``,
    ``field_timescale``), so they move the background up and down without raising its mean; the
    population haze, the
    in-focus cells' summed spike counts ``population`` ``(T,)`` smoothed over ``haze_time`` s and
    scaled to a mean of ``haze_amplitude`` (constant when no cell fires); blob transients."""
    fields = field_activity(rng, s.n_fields, n_frames, frame_rate, s.field_amplitude, s.field_timescale)
    haze = ndimage.gaussian_filter1d(np.asarray(population, dtype=float), s.haze_time * frame_rate, mode="reflect")
    haze = s.haze_amplitude * (haze / haze.mean() if haze.mean() > 0 else np.ones(n_frames))
    return np.vstack([
        np.ones((1, n_frames)),
        fields - fields.mean(axis=1, keepdims=True),
        haze[None, :],
        blob_activity(rng, n_blobs, n_frames, frame_rate, s.blob_rate, s.blob_amplitude),
    ])


def simulate_hard_1p(
    *,
    dims: tuple[int, int],
    n_frames: int,
    frame_rate: float,
    decay_time: float,
    neuron_radius: float,
    motion: str | None = "rigid",
    seed: int,
    out: str | os.PathLike[str] | None = None,
    interp_order: int = 3,
    overwrite: bool = False,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
    settings: OnePhotonHardSettings = SETTINGS_1P,
    channels: int = 1,
    structural: StructuralSettings = STRUCTURAL,
) -> Simulation:
    """A hard one-photon movie ``T×H×W`` in photons (float32; see the module docstring).

    ``neuron_radius`` (px, 5–12 typical) sets the number of somata (density ∝ 1/r²) and the
    scale of the scattering, the vessels' blur and the out-of-focus blobs; ``decay_time`` (s)
    the typical decay (fast indicators 0.4, slow 1.5–2.5); ``motion`` ``"rigid"`` (drift with
    jumps) or None. With ``out`` the movie is written to a :class:`somascope.store.Store` there
    and ``Simulation.movie`` is that store.

    The truth is that of :func:`~somascope.simulate.hard.simulate_hard` (the same
    :class:`Simulation` fields and ``extra`` keys, so :func:`write_ground_truth_folder` writes
    the same ``gt.npz``): camera frame, ``A`` vignetted and unit-max, ``C`` in photons,
    bleached; ``extra["snr"]`` is the ``dev_sim`` peak SNR (:func:`somascope.metrics.peak_snr`),
    ``extra["b0"]`` the baseline background (camera frame, unbleached); ``modality`` is
    ``"one_photon"``.

    ``channels=2`` adds a static structural channel (:mod:`~somascope.simulate.structural`,
    constants ``structural``; a dual-colour miniscope's second channel): the marker in the cell
    bodies (``body_scale`` of each radius) seen through the same scattering as the functional
    channel (core and halo), on the out-of-focus marker's haze (``marker_haze`` times a marker's
    median peak, varying smoothly by ``marker_haze_variation``), moved by the same motion;
    ``extra`` then holds ``structural``, ``labelled`` and the marker's truth as for the two-photon
    preset, and ``movie`` is the same as with ``channels=1``.
    """
    s = settings
    channels = check_channels(channels)
    dims = (int(dims[0]), int(dims[1]))
    radius = float(np.mean(neuron_radius))
    if motion not in (None, "none", "rigid"):
        raise ValueError(f"the hard one-photon preset has rigid motion or none: motion must be None or 'rigid'; "
                         f"got {motion!r}.")
    if not (radius > 0 and frame_rate > 0 and decay_time > 0 and n_frames >= 1 and min(dims) >= 16):
        raise ValueError("the hard preset needs neuron_radius, frame_rate, decay_time > 0, n_frames >= 1 and "
                         f"dims >= (16, 16); got {radius}, {frame_rate}, {decay_time}, {n_frames}, {dims}.")
    H, W = dims
    fp, radii = hard_1p_footprints(streams.rng_for(seed, streams.FOOTPRINTS), dims, radius, s)
    b_t, kinds = hard_1p_background(streams.rng_for(seed, streams.NEUROPIL, 0), dims, radius, s)
    center_px = np.ravel_multi_index(tuple(np.clip(np.rint(fp.centers).astype(int), 0, [H - 1, W - 1]).T), dims)
    cells = hard_cells(streams.rng_for(seed, streams.PROPERTIES), fp.kind, b_t[center_px, 0], decay_time,
                       _cell_settings(s))

    bleach, g, counts, peaks, C_t = hard_traces(seed, cells, n_frames, frame_rate, s.bleach, s.burst_size)
    f_t = hard_1p_dynamics(streams.rng_for(seed, streams.NEUROPIL, 1), b_t.shape[1] - 2 - s.n_fields, n_frames,
                           frame_rate, counts.sum(axis=0), s)
    mot = None
    if motion == "rigid":
        rigid = jumpy_path(streams.rng_for(seed, streams.MOTION, 0), n_frames, frame_rate, s.motion_std,
                           s.jump_rate, s.jump_amplitude)
        mot = MotionModel(dims, rigid)
    params = {"modality": "one_photon", "preset": "hard", "dims": list(dims), "n_frames": n_frames,
              "frame_rate": frame_rate, "decay_time": decay_time, "neuron_radius": radius, "motion": motion,
              "seed": seed, "settings": json.loads(json.dumps(asdict(s)))}
    render = dict(order=interp_order, out=out, overwrite=overwrite, chunk_frames=chunk_frames, n_threads=n_threads,
                  progress=progress)
    sim = assemble_hard(
        fp=fp, radii=radii, cells=cells, C_t=C_t, b_t=b_t, f_t=f_t, kinds=kinds, counts=counts, peaks=peaks, g=g,
        bleach=bleach, mot=mot, dims=dims, frame_rate=frame_rate, decay_time=decay_time, params=params,
        vignette_strength=s.vignette, read_noise=s.read_noise, adu_gain=s.adu_gain, adu_offset=s.adu_offset,
        seed=seed, render=render,
    )
    if channels == 2:
        body = radii * s.body_scale
        field = smooth_field(streams.rng_for(seed, streams.STRUCTURAL, 2), dims, np.array(dims) / s.background_scale)
        haze = s.marker_haze * structural.brightness * (1.0 + s.marker_haze_variation * field)
        add_structural(sim, seed=seed, A_tissue=fp.A, semi_axes=np.column_stack([body, body]),
                       psf_sigma=np.full(2, s.scatter_core * radius), motion=mot, render=render, settings=structural,
                       halo=(s.scatter_halo * radius, s.halo_weight), haze=haze)
    return sim
