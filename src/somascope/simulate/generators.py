"""The simulators: :func:`two_photon`, :func:`one_photon` and :func:`volumetric`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy import sparse

from . import _fields as streams
from ._config import params_record, validate
from .background import bleaching, spatial_components, temporal_components, vignette
from .footprints import Footprints, make_footprints
from .motion import make_motion
from .render import NoiseModel, render_movie
from .result import Simulation
from .traces import ar_coefficients, calcium, impulse_peak, spike_counts

SECONDARY_LEVEL = 0.4  # mean brightness of each further background component relative to the first
BACKGROUND_SCALE = 4.0  # spatial scale of the background: the field of view divided by this


@dataclass(frozen=True)
class CellProperties:
    """Per-cell constants that stay with a cell across sessions (all ``(K,)`` float64 unless
    noted): single-spike ``amplitude`` and ``rest``ing brightness at the brightest pixel
    (movie units), firing ``rate`` (Hz), ``decay`` time (s), ``silent`` (bool)."""

    amplitude: np.ndarray
    rest: np.ndarray
    rate: np.ndarray
    decay: np.ndarray
    silent: np.ndarray

    def subset(self, index: np.ndarray) -> CellProperties:
        return CellProperties(*(getattr(self, n)[index] for n in ("amplitude", "rest", "rate", "decay", "silent")))


def cell_properties(rng: np.random.Generator, n: int, c: SimpleNamespace) -> CellProperties:
    """Random brightness (log-normal, mean ``spike_amplitude`` / ``resting_level``), rates
    (log-uniform in ``firing_rate``), decay times (log-normal around ``decay_time``) and
    exactly ``round(silent_fraction · n)`` silent cells."""
    lognormal_mean = np.exp(0.3**2 / 2)
    amplitude = c.spike_amplitude * rng.lognormal(0.0, 0.3, n) / lognormal_mean
    rest = c.resting_level * rng.lognormal(0.0, 0.3, n) / lognormal_mean
    rate = np.exp(rng.uniform(np.log(c.firing_rate[0]), np.log(c.firing_rate[1]), n))
    decay = c.decay_time * rng.lognormal(0.0, c.decay_jitter, n)
    silent = np.zeros(n, dtype=bool)
    silent[rng.choice(n, int(round(c.silent_fraction * n)), replace=False)] = True
    return CellProperties(amplitude, rest, rate, decay, silent)


def background_levels(b: np.ndarray, background_level: float) -> np.ndarray:
    """Mean level of each background component so that their sum averages ``background_level``
    over the field of view (the first component carries most of it)."""
    if b.shape[1] == 0:
        return np.zeros(0)
    weights = np.r_[1.0, np.full(b.shape[1] - 1, SECONDARY_LEVEL)]
    mean = float(np.mean(b @ weights))
    return weights * (background_level / mean if mean > 0 else 0.0)


def _col_max(M: sparse.spmatrix | np.ndarray) -> np.ndarray:
    peak = np.asarray(M.max(axis=0).toarray() if sparse.issparse(M) else M.max(axis=0), dtype=np.float64).ravel()
    return np.where(peak > 0, peak, 1.0)


def simulate_session(
    c: SimpleNamespace,
    footprints: Footprints,
    props: CellProperties,
    background: np.ndarray,
    *,
    modality: str,
    params: dict[str, Any],
    session: int = 0,
    active: np.ndarray | None = None,
    cell_ids: np.ndarray | None = None,
    session_displacement: np.ndarray | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Simulation:
    """Dynamics, noise, motion and rendering for one session of a field of view whose cells
    (``footprints``, ``props``) and spatial ``background`` (``pixels × nb``, unit-max, in the
    tissue frame) are given. ``active`` overrides ``~props.silent``."""
    dims, n_frames, rate = c.dims, c.n_frames, c.frame_rate
    n_pixels, n_cells = int(np.prod(dims)), footprints.A.shape[1]
    seed = c.seed
    bleach = bleaching(n_frames, rate, c.bleach_time)
    active = ~props.silent if active is None else np.asarray(active, dtype=bool)

    # What the camera sees with no motion: footprints and background times the vignette.
    A, b = footprints.A, background
    amplitude, rest = props.amplitude.copy(), props.rest.copy()
    V = vignette(dims, c.vignette_strength).ravel() if c.vignette_strength > 0 else None
    if V is not None:
        A = sparse.csc_matrix(sparse.diags(V) @ A)
        peak = _col_max(A)
        A = sparse.csc_matrix(A @ sparse.diags(1.0 / peak)).astype(np.float32)
        amplitude, rest = amplitude * peak, rest * peak
        b = b * V[:, None]
    b_peak = _col_max(b)
    b = (b / b_peak).astype(np.float32)

    # Spikes → calcium, each cell with its own AR filter, bleaching scaling the spike sizes.
    rates = np.where(active, props.rate, 0.0)
    counts = spike_counts(streams.rng_for(seed, streams.TRACES, session), rates, n_frames, rate, c.burst_rate)
    rise_scale = None if c.rise_time is None else c.rise_time / c.decay_time
    g = np.array([ar_coefficients(d, rate, None if rise_scale is None else rise_scale * d) for d in props.decay])
    g = g.reshape(n_cells, 1 if c.rise_time is None else 2)
    peaks = np.array([impulse_peak(gk) for gk in g])
    S = counts * (amplitude / peaks)[:, None] * bleach[None, :]
    C = calcium(S, g)

    # Background: smooth components with their own slow fluctuations, plus the resting
    # fluorescence of all cells (which only bleaches).
    levels = background_levels(background, c.background_level)
    f = temporal_components(streams.rng_for(seed, streams.DYNAMICS, session), levels, n_frames, rate,
                            c.background_fluctuation, c.background_timescale) * bleach * b_peak[:, None]
    kinds = ("haze" if modality == "one_photon" else "neuropil",) * b.shape[1]
    resting = np.asarray(A @ rest).ravel() if n_cells else np.zeros(n_pixels)
    if resting.max(initial=0.0) > 0:
        top = resting.max()
        b = np.column_stack([b, (resting / top).astype(np.float32)])
        f = np.vstack([f, top * bleach[None, :]])
        kinds = (*kinds, "resting")

    noise = NoiseModel.from_snr(c.snr, c.spike_amplitude, c.background_level + c.resting_level,
                                c.read_noise_fraction)
    motion = None
    if c.motion is not None:
        motion = make_motion(streams.rng_for(seed, streams.MOTION, session), dims, n_frames, rate, c.motion,
                             c.max_shift, c.nonrigid_amplitude)
    A_tissue, b_tissue = A, b
    if V is not None:  # the vignette is fixed to the camera: applied after the motion
        A_tissue = sparse.csc_matrix(sparse.diags(1.0 / V) @ A).astype(np.float32)
        b_tissue = (b / V[:, None]).astype(np.float32)
    movie = render_movie(
        A_tissue, C, b_tissue, f, dims, noise=noise, noise_key=(seed, streams.NOISE, session), motion=motion,
        vignette=None if V is None else V.reshape(dims), order=c.interp_order, out=out, overwrite=c.overwrite,
        frame_rate=rate, metadata={"simulation": params}, chunk_frames=c.chunk_frames, n_threads=c.n_threads,
        progress=c.progress,
    )
    still = (np.asarray(A @ C.mean(axis=1)).ravel() if n_cells else 0.0) + b @ f.mean(axis=1)
    still_mean = np.asarray(still, dtype=np.float32).reshape(dims)
    return Simulation(
        movie=movie, A=A, C=C, S=S, b=b, f=f, dims=dims, frame_rate=rate, decay_time=c.decay_time, g=g,
        kind=footprints.kind, active=active, shifts=(motion.rigid if motion is not None
                                                   else np.zeros((n_frames, len(dims)), np.float32)),
        still_mean=still_mean, noise_std=noise.std(still_mean), seed=seed, params=params, modality=modality,
        spike_counts=counts, amplitude=amplitude, rate=rates, ring=footprints.ring, centers=footprints.centers,
        cell_ids=np.arange(n_cells) if cell_ids is None else np.asarray(cell_ids),
        background_kind=kinds, bleach=bleach, vignette=None if V is None else V.reshape(dims),
        photon_gain=noise.gain, read_noise=noise.read_std, session=session,
        session_displacement=session_displacement, motion=motion,
    )


def simulate(p: dict[str, Any], modality: str) -> Simulation:
    """Validate the arguments ``p`` of a simulator and run it for one field of view."""
    ndim = 3 if modality == "volumetric" else 2
    c = validate(p, ndim)
    footprints = make_footprints(
        streams.rng_for(c.seed, streams.FOOTPRINTS), c.dims, c.n_cells, c.radius,
        ring_fraction=c.ring_fraction, process_fraction=c.process_fraction, min_separation=c.min_separation,
        ellipticity=c.ellipticity, psf_sigma=c.psf_sigma,
    )
    props = cell_properties(streams.rng_for(c.seed, streams.PROPERTIES), c.n_cells, c)
    background = spatial_components(streams.rng_for(c.seed, streams.BACKGROUND), c.dims, c.n_background,
                                    np.asarray(c.dims, dtype=float) / BACKGROUND_SCALE)
    params = {"modality": modality, **params_record(p)}
    return simulate_session(c, footprints, props, background, modality=modality, params=params, out=p["out"])


EASY_VOLUME_RADIUS = (1.5, 4.0, 4.0)  # (z, y, x) px, volumetric()'s default soma radius
HARD_VOLUME_RADIUS = 6.0  # px in-plane, volumetric(preset="hard")'s default (round somata, one plane axially)

#: Arguments the hard presets take (the rest belong to the easy model).
_HARD_KEYS = ("dims", "n_frames", "frame_rate", "decay_time", "neuron_radius", "motion", "seed", "out",
              "interp_order", "overwrite", "chunk_frames", "n_threads", "progress")


def _with_preset(p: dict[str, Any], modality: str) -> Simulation:
    """Simulate the arguments ``p`` of :func:`two_photon` / :func:`one_photon` with their
    ``preset``: the hard family of ``modality`` or the easy model."""
    preset = p.pop("preset")
    channels = p.pop("channels", 1)
    volume_keys = ("plane_spacing", "axial_radius")
    if preset == "hard":
        if modality == "one_photon":
            from .hard_1p import simulate_hard_1p as hard

            keys = _HARD_KEYS
        elif modality == "volumetric":
            from .hard_volume import simulate_hard_volume as hard

            keys = _HARD_KEYS + ("nonrigid_amplitude",) + volume_keys
            if p["neuron_radius"] is None:
                p["neuron_radius"] = HARD_VOLUME_RADIUS
        else:
            from .hard import simulate_hard as hard

            keys = _HARD_KEYS + ("nonrigid_amplitude",)
        return hard(**{k: p[k] for k in keys}, channels=channels)
    if preset not in (None, "easy"):
        raise ValueError(f"preset must be None, 'easy' or 'hard'; got {preset!r}.")
    if channels != 1:
        raise ValueError(f"channels={channels!r}: a second (structural) channel needs preset='hard'.")
    if modality == "volumetric":
        if any(p.pop(k) is not None for k in volume_keys):
            raise ValueError("plane_spacing and axial_radius are for preset='hard'; the easy volume takes "
                             "neuron_radius=(z, y, x).")
        if p["neuron_radius"] is None:
            p["neuron_radius"] = EASY_VOLUME_RADIUS
    return simulate(p, modality)


def two_photon(
    dims: tuple[int, int] = (128, 128),
    n_frames: int = 2000,
    n_cells: int = 50,
    frame_rate: float = 30.0,
    decay_time: float = 0.4,
    neuron_radius: float | tuple[float, float] = 5.0,
    motion: str | None = None,
    max_shift: float | tuple[float, float] = 5.0,
    snr: float = 1.0,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    rise_time: float | None = None,
    nonrigid_amplitude: float | tuple[float, float] | None = None,
    firing_rate: tuple[float, float] = (0.1, 2.0),
    burst_rate: float = 0.05,
    spike_amplitude: float = 1.0,
    resting_level: float = 3.0,
    ring_fraction: float = 0.6,
    process_fraction: float = 0.1,
    silent_fraction: float = 0.1,
    min_separation: float = 1.6,
    ellipticity: float = 0.3,
    psf_sigma: float | tuple[float, float] = 0.6,
    decay_jitter: float = 0.1,
    n_background: int = 2,
    background_level: float = 2.0,
    background_fluctuation: float = 0.1,
    background_timescale: float = 5.0,
    vignette_strength: float = 0.0,
    bleach_time: float | None = 1000.0,
    read_noise_fraction: float = 0.2,
    interp_order: int = 3,
    overwrite: bool = False,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
    preset: str | None = None,
    channels: int = 1,
) -> Simulation:
    """Simulate a two-photon movie ``T×H×W`` with ground truth.

    Cells are somata — ellipses with nuclear exclusion (ring, ``ring_fraction``) or filled,
    sizes ±12 % around ``neuron_radius`` px, ellipticity up to ``ellipticity``, at least
    ``min_separation`` radii apart so that neighbours overlap — and thin processes
    (``process_fraction``, ``kind == "process"``). A fraction ``silent_fraction`` never
    fires (``active == False``); the others fire as Poisson processes at rates log-uniform
    in ``firing_rate`` (Hz) plus bursts (``burst_rate`` Hz, ~4 spikes in 150 ms). Calcium
    follows AR(1) dynamics of ``decay_time`` s (±``decay_jitter`` log-normal per cell), or
    AR(2) with ``rise_time``. Background: ``n_background`` smooth neuropil components
    averaging ``background_level`` with slow fluctuations (``background_fluctuation``
    relative std, ``background_timescale`` s), plus the cells' resting fluorescence
    (``resting_level`` at a soma's brightest pixel); everything bleaches as
    ``exp(-t / bleach_time)``.

    Units: one spike adds ``spike_amplitude`` (±30 % per cell) at a cell's brightest pixel.
    Noise is Poisson–Gaussian: ``snr`` is one spike's peak amplitude over the noise standard
    deviation at a resting soma (intensity ``background_level + resting_level``), with a
    fraction ``read_noise_fraction`` of that variance being Gaussian read noise; the photon
    gain follows (``Simulation.photon_gain``); ``snr=inf`` gives a noise-free movie.

    Motion (``"rigid"`` or ``"nonrigid"``): a rigid drift plus jitter reaching ``max_shift``
    px (per axis allowed), and for ``"nonrigid"`` a smooth field up to ``nonrigid_amplitude``
    px (default 0.3·``max_shift``) that changes over time; frames are warped with cubic
    (``interp_order=3``) or linear splines, reflecting at the borders. The true displacement
    is ``Simulation.shifts`` (rigid part) and ``Simulation.displacement(t)``.

    With ``out`` a path, the movie is written frame-chunk by frame-chunk into a
    :class:`somascope.store.Store` there (any length fits; ``overwrite`` replaces an
    existing one) and ``Simulation.movie`` is that store; otherwise it is a float32 array
    (generated in chunks of ``chunk_frames``, peak memory ≈ the movie). The same ``seed``
    gives the same movie either way, whatever ``chunk_frames`` and ``n_threads``.
    ``vignette_strength`` darkens the corners by that fraction (off for two-photon).

    ``preset="hard"`` switches to the hard family (:mod:`somascope.simulate.hard`): a movie
    in photons, dense and dim, calibrated on an independent simulator. Only ``dims``,
    ``n_frames``, ``frame_rate``, ``decay_time`` (typical per-cell decay, s),
    ``neuron_radius`` (px; the number of cells follows from it), ``motion`` (rigid drift
    with jumps; ``"nonrigid"`` adds a smooth warp of ``nonrigid_amplitude`` px, default 2.5),
    ``seed``, ``out`` and the rendering options (``interp_order``, ``overwrite``,
    ``chunk_frames``, ``n_threads``, ``progress``) apply; the other arguments are ignored.
    ``channels=2`` (hard preset only) adds a static structural channel — a nuclear marker in
    85 % of the somata, none in dendrites or neuropil, moved by the same motion, with its own
    noise (:mod:`somascope.simulate.structural`): ``Simulation.extra["structural"]`` is its
    ``T×H×W`` movie and ``extra["labelled"]`` (K,) says which components carry it; ``movie``
    is the functional channel, the same as with ``channels=1``.
    ``preset=None`` or ``"easy"`` is the model above.
    """
    return _with_preset(dict(locals()), "two_photon")


def one_photon(
    dims: tuple[int, int] = (128, 128),
    n_frames: int = 1000,
    n_cells: int = 40,
    frame_rate: float = 20.0,
    decay_time: float = 0.4,
    neuron_radius: float | tuple[float, float] = 6.0,
    motion: str | None = None,
    max_shift: float | tuple[float, float] = 5.0,
    snr: float = 0.5,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    rise_time: float | None = None,
    nonrigid_amplitude: float | tuple[float, float] | None = None,
    firing_rate: tuple[float, float] = (0.1, 2.0),
    burst_rate: float = 0.05,
    spike_amplitude: float = 1.0,
    resting_level: float = 1.0,
    ring_fraction: float = 0.0,
    process_fraction: float = 0.0,
    silent_fraction: float = 0.1,
    min_separation: float = 1.4,
    ellipticity: float = 0.2,
    psf_sigma: float | tuple[float, float] = 2.5,
    decay_jitter: float = 0.1,
    n_background: int = 4,
    background_level: float = 20.0,
    background_fluctuation: float = 0.2,
    background_timescale: float = 2.0,
    vignette_strength: float = 0.4,
    bleach_time: float | None = 300.0,
    read_noise_fraction: float = 0.2,
    interp_order: int = 3,
    overwrite: bool = False,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
    preset: str | None = None,
    channels: int = 1,
) -> Simulation:
    """Simulate a one-photon (miniscope / widefield) movie ``T×H×W`` with ground truth.

    Same model and arguments as :func:`two_photon`, with one-photon defaults: large filled
    cells blurred by a wide PSF (``psf_sigma`` 2.5 px), a strong background (mean
    ``background_level`` = 20 spike amplitudes) made of ``n_background`` smooth components
    with their own fluctuations (20 %, 2 s), vignetting (corners ``vignette_strength``
    darker; fixed to the camera, so it does not move with the tissue), faster bleaching and
    a low ``snr``.

    ``preset="hard"`` switches to the hard one-photon family
    (:mod:`somascope.simulate.hard_1p`): a micro-endoscope-like movie in photons — dense,
    broad, scattered somata 2–8 % above a ~150 photons/pixel background that fluctuates,
    bleaches and is vignetted — calibrated on an independent simulator. Only ``dims``,
    ``n_frames``, ``frame_rate``, ``decay_time`` (typical per-cell decay, s), ``neuron_radius``
    (px; the number of cells follows from it), ``motion`` (``"rigid"``: drift with jumps, or
    None), ``seed``, ``out`` and the rendering options (``interp_order``, ``overwrite``,
    ``chunk_frames``, ``n_threads``, ``progress``) apply; the other arguments are ignored.
    ``channels=2`` (hard preset only) adds a static structural channel, as for
    :func:`two_photon` (a dual-colour miniscope's marker in 85 % of the cell bodies, through the
    near scattering). ``preset=None`` or ``"easy"`` is the model above.
    """
    return _with_preset(dict(locals()), "one_photon")


def volumetric(
    dims: tuple[int, int, int] = (8, 64, 64),
    n_frames: int = 300,
    n_cells: int = 40,
    frame_rate: float = 5.0,
    decay_time: float = 0.4,
    neuron_radius: float | tuple[float, float, float] | None = None,
    motion: str | None = None,
    max_shift: float | tuple[float, float, float] = (0.5, 3.0, 3.0),
    snr: float = 1.0,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    rise_time: float | None = None,
    nonrigid_amplitude: float | tuple[float, float, float] | None = None,
    firing_rate: tuple[float, float] = (0.1, 2.0),
    burst_rate: float = 0.05,
    spike_amplitude: float = 1.0,
    resting_level: float = 3.0,
    ring_fraction: float = 0.6,
    process_fraction: float = 0.05,
    silent_fraction: float = 0.1,
    min_separation: float = 1.6,
    ellipticity: float = 0.3,
    psf_sigma: float | tuple[float, float, float] = (0.8, 0.6, 0.6),
    decay_jitter: float = 0.1,
    n_background: int = 2,
    background_level: float = 2.0,
    background_fluctuation: float = 0.1,
    background_timescale: float = 5.0,
    vignette_strength: float = 0.0,
    bleach_time: float | None = 1000.0,
    read_noise_fraction: float = 0.2,
    interp_order: int = 3,
    overwrite: bool = False,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
    preset: str | None = None,
    channels: int = 1,
    plane_spacing: float | None = None,
    axial_radius: float | None = None,
) -> Simulation:
    """Simulate a volumetric two-photon movie ``T×Z×H×W`` (``dims = (Z, H, W)``,
    ``frame_rate`` in volumes per second) with ground truth.

    Same model and arguments as :func:`two_photon`; cells are 3-D ellipsoids (ring cells
    are shells) with per-axis radii ``neuron_radius`` = (z, y, x) px (default (1.5, 4, 4)),
    elongated in the imaging plane at random angles; processes are 3-D curves; motion has a z
    component (``max_shift`` per axis). ``A`` has ``Z·H·W`` rows in C order of ``(Z, H, W)``.

    ``preset="hard"`` switches to the hard family in 3-D (:mod:`somascope.simulate.hard_volume`):
    dense, dim somata as 3-D bodies spanning ~2 planes, dendrites, silent somata, sparse bursty
    firing, per-plane background and neuropil, photon counts, bleaching, vignetting and the
    same in-plane motion on every plane (no z motion). Only ``dims``, ``n_frames``,
    ``frame_rate``, ``decay_time``, ``neuron_radius`` (the in-plane radius px, default 6; or
    (z planes, y, x)), ``plane_spacing`` and ``axial_radius`` (px, both default to the in-plane
    radius: the axial radius is one plane), ``motion``, ``nonrigid_amplitude``, ``seed``,
    ``out``, ``channels`` (2 adds the structural channel, as for :func:`two_photon`) and the
    rendering options apply; the other arguments are ignored.
    """
    return _with_preset(dict(locals()), "volumetric")
