"""The :class:`Simulation` container: a movie and its ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from .motion import MotionModel

_MODALITY_NAMES = {"two_photon": "two-photon", "one_photon": "one-photon", "volumetric": "volumetric"}


@dataclass(repr=False, eq=False)
class Simulation:
    """A simulated movie with everything that made it.

    Without motion, ``movie ≈ (A·C + b·f).T.reshape(T, *dims) + noise`` exactly (noise of
    standard deviation ``noise_std``, zero mean). With motion, each noise-free frame is
    first warped: ``frame_t(p) = clean_t(p - d_t(p))`` with ``d_t = displacement(t)``.

    Attributes
    ----------
    movie : ndarray ``T × *dims`` float32, or a :class:`somascope.store.Store` when written to disk.
    A : csc_matrix ``pixels × K`` float32, C-order pixels of ``dims``; each column has maximum 1
        (unit-max), so ``C[k]`` is cell k's contribution at its brightest pixel.
    C : ``K × T`` float64 calcium in movie units (baseline 0; the resting fluorescence is in ``b``).
    S : ``K × T`` float64 AR innovations in the units of C: ``C[:, t] - Σ_i g[:, i] C[:, t-1-i] = S[:, t]``;
        ``S = spike_counts · amplitude / peak(g) · bleach``.
    spike_counts : ``K × T`` int16 spikes per frame.
    b : ``pixels × nb`` float32 background components, each with maximum 1.
    f : ``nb × T`` float64 background time courses in movie units.
    background_kind : ``nb`` labels: ``"neuropil"`` (2-photon), ``"haze"`` (1-photon),
        ``"blob"`` (an out-of-focus neuropil blob with its own activity, hard preset) or
        ``"resting"`` (resting fluorescence of all cells, ``A·rest`` scaled, bleaching only).
    dims, frame_rate (Hz), decay_time (s, nominal; per cell in ``g``), g : ``K × p`` AR coefficients.
    kind : ``K`` labels ``"soma"`` or ``"process"``; ring : ``K`` bool, soma with nuclear exclusion.
    active : ``K`` bool, False for silent cells (C = S = 0).
    amplitude : ``K`` peak contribution of one spike (movie units, before bleaching).
    rate : ``K`` Poisson firing rate (Hz) outside bursts; 0 for inactive cells.
    centers : ``K × ndim`` px. cell_ids : ``K`` int, identity of each cell (shared across sessions).
    shifts : ``T × ndim`` float32, rigid part of the true displacement (zeros without motion).
    still_mean : ``dims`` float32, expected mean image of the motion-free movie.
    noise_std : ``dims`` float32, noise standard deviation at each pixel's mean intensity.
    photon_gain : movie units per photon; read_noise : std of additive Gaussian noise.
    bleach : ``T`` fraction of fluorescence left; vignette : ``dims`` or None.
    session : index within :func:`~somascope.simulate.sessions` (0 otherwise).
    session_displacement : ``(ndim, *dims)`` true deformation of this session relative to
        session 0 in the motion convention (``session(p) ≈ session0(p - D(p))``), or None.
    seed, params : what made it (``params`` holds the arguments).
    extra : further ground truth of a preset (``preset="hard"``: ``radius``, ``tau``, ``F0``,
        ``snr``, ``snr_spike``, ``b0``, ``adu_gain``, ``adu_offset``; see
        :func:`~somascope.simulate.hard.simulate_hard`; the hard volume adds ``semi_axes``,
        ``plane_gain``, ``plane_spacing``, ``axial_radius``, see
        :func:`~somascope.simulate.hard_volume.simulate_hard_volume`; ``channels=2`` adds the
        structural channel: ``structural`` (its movie, shaped like ``movie``), ``labelled`` (K,)
        bool, ``structural_A``, ``structural_brightness``, ``structural_mean``,
        ``structural_noise_std``, ``marker``, see
        :func:`~somascope.simulate.structural.structural_channel`); empty otherwise.
    """

    movie: Any
    A: sparse.csc_matrix
    C: np.ndarray
    S: np.ndarray
    b: np.ndarray
    f: np.ndarray
    dims: tuple[int, ...]
    frame_rate: float
    decay_time: float
    g: np.ndarray
    kind: np.ndarray
    active: np.ndarray
    shifts: np.ndarray
    still_mean: np.ndarray
    noise_std: np.ndarray
    seed: int
    params: dict[str, Any]
    modality: str
    spike_counts: np.ndarray
    amplitude: np.ndarray
    rate: np.ndarray
    ring: np.ndarray
    centers: np.ndarray
    cell_ids: np.ndarray
    background_kind: tuple[str, ...]
    bleach: np.ndarray
    vignette: np.ndarray | None
    photon_gain: float
    read_noise: float
    session: int = 0
    session_displacement: np.ndarray | None = None
    motion: MotionModel | None = field(default=None)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.C.shape[1] if self.C.shape[0] else self.f.shape[1])

    @property
    def n_cells(self) -> int:
        return int(self.A.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Movie shape ``(T, *dims)``."""
        return (self.n_frames, *self.dims)

    def displacement(self, t: int) -> np.ndarray:
        """True displacement of frame ``t`` at every pixel: ``(ndim, *dims)`` float32, px, in
        the convention ``frame_t(p) ≈ still_t(p - d(p))``. Zeros without motion."""
        if not 0 <= int(t) < self.n_frames:
            raise IndexError(f"frame {t} is outside 0..{self.n_frames - 1}")
        if self.motion is None:
            return np.zeros((len(self.dims), *self.dims), dtype=np.float32)
        return self.motion.displacement(int(t))

    def footprint(self, k: int) -> np.ndarray:
        """Image (``dims``, float32) of component ``k``'s footprint."""
        return self.A[:, k].toarray().reshape(self.dims)

    def clean_frames(self, t0: int = 0, t1: int | None = None) -> np.ndarray:
        """Noise-free, motion-free frames ``t0:t1`` (``A·C + b·f``), ``(t, *dims)`` float32."""
        t1 = self.n_frames if t1 is None else int(t1)
        model = (self.A @ self.C[:, t0:t1] if self.n_cells else 0.0) + self.b @ self.f[:, t0:t1]
        return np.ascontiguousarray(np.asarray(model, dtype=np.float32).T).reshape((t1 - t0, *self.dims))

    def __repr__(self) -> str:
        return f"Simulation({describe(self)})"


def describe(sim: Simulation) -> str:
    """One-line summary of a simulation, e.g. for the command line."""
    n_process = int(np.sum(sim.kind == "process"))
    size = "×".join(str(s) for s in sim.shape)
    motion = "no motion"
    if sim.motion is not None:
        peak = float(np.abs(sim.shifts).max()) if sim.shifts.size else 0.0
        motion = f"{'rigid' if sim.motion.is_rigid else 'non-rigid'} motion up to {peak:.1f} px"
    where = "in memory" if isinstance(sim.movie, np.ndarray) else f"at {getattr(sim.movie, 'final_path', '?')}"
    snr = sim.params.get("snr")
    session = f", session {sim.session}" if sim.session_displacement is not None else ""
    return (
        f"{_MODALITY_NAMES.get(sim.modality, sim.modality)} movie {size} at {sim.frame_rate:g} Hz {where}: "
        f"{sim.n_cells} components ({sim.n_cells - n_process} somata, {n_process} processes, "
        f"{int(np.sum(sim.active))} active), background rank {sim.b.shape[1]}, {motion}, "
        f"SNR {snr:g}, seed {sim.seed}{session}"
    )


def identity_matches(a: Simulation, b: Simulation) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth matches between two simulations of one field of view (e.g. two
    :func:`~somascope.simulate.sessions`): index arrays ``(ia, ib)`` such that component
    ``ia[i]`` of ``a`` and ``ib[i]`` of ``b`` are the same cell; ordered by ``ia``."""
    _, ia, ib = np.intersect1d(a.cell_ids, b.cell_ids, assume_unique=True, return_indices=True)
    order = np.argsort(ia)
    return ia[order].astype(np.int64), ib[order].astype(np.int64)
