"""A static structural channel for the hard presets (``channels=2``): a second fluorophore
(a nuclear or cytoplasmic label, e.g. H2B- or tdTomato-like) in most somata, with no activity.

The marker is in a fraction ``label_fraction`` (85 %) of the somata, silent ones included, never
in dendrites or neuropil. A labelled soma's marker is a filled nucleus (``marker="nuclear"``:
a plateau ball/disc of ``nucleus_scale`` of the soma's radius at its centre) or the soma's own
footprint (``"cytoplasmic"``), its peak brightness log-normal around ``brightness`` photons per
pixel per frame, on a dim uniform autofluorescence (``autofluorescence`` photons). It does not
bleach or fluctuate; it is moved by the functional channel's motion, vignetted alike, and read
with its own Poisson shot noise and Gaussian read noise (stream ``(seed, STRUCTURAL, 1, t)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from . import _fields as streams
from .footprints import columns_to_csc, crop_to_fov, soma_patch, with_halo
from .motion import MotionModel
from .render import NoiseModel, render_movie

MARKERS = ("nuclear", "cytoplasmic")


@dataclass(frozen=True)
class StructuralSettings:
    """Constants of the structural channel (units in the names' comments)."""

    label_fraction: float = 0.85  # of the somata (silent ones included); dendrites never
    marker: str = "nuclear"  # "nuclear" (filled nucleus) or "cytoplasmic" (the soma's footprint)
    nucleus_scale: float = 0.55  # nuclear label radius / soma radius (every axis)
    brightness: float = 8.0  # photons/pixel/frame at a labelled soma's peak, median (tissue frame)
    brightness_logsd: float = 0.4  # log-normal spread of that brightness between cells
    autofluorescence: float = 1.5  # photons/pixel/frame, uniform, under the vignette
    read_noise: float = 0.3  # photons


STRUCTURAL = StructuralSettings()


def check_channels(channels: int) -> int:
    """``channels`` as an int, 1 or 2; a clear error otherwise."""
    if int(channels) not in (1, 2) or int(channels) != channels:
        raise ValueError(f"channels must be 1 (functional only) or 2 (functional + structural); got {channels!r}.")
    return int(channels)


def structural_out(out: str | os.PathLike[str] | None) -> Path | None:
    """Where the structural channel's :class:`~somascope.store.Store` goes when the functional
    movie goes to ``out``: ``NAME_structural.EXT`` beside it (None without ``out``)."""
    if out is None:
        return None
    out = Path(out)
    return out.with_name(f"{out.stem}_structural{out.suffix}")


def structural_channel(
    *,
    seed: int,
    kind: np.ndarray,
    centers: np.ndarray,
    semi_axes: np.ndarray,
    A_tissue: sparse.csc_matrix,
    dims: tuple[int, ...],
    psf_sigma: np.ndarray,
    n_frames: int,
    frame_rate: float,
    motion: MotionModel | None,
    vignette: np.ndarray,
    render: dict[str, Any],
    settings: StructuralSettings = STRUCTURAL,
    halo: tuple[float, float] | None = None,
    haze: np.ndarray | None = None,
) -> dict[str, Any]:
    """Render the structural channel of a hard-preset movie and its ground truth.

    ``kind`` (K,) ``"soma"``/``"process"``, ``centers`` (K, ndim) px (planes along z),
    ``semi_axes`` (K, ndim) each soma's radius per axis (px; planes along z), ``A_tissue``
    (``pixels × K``) the functional footprints in the tissue frame, ``dims`` (H, W) or (Z, H, W),
    ``psf_sigma`` (ndim,) px, ``motion`` the model that moved the functional channel (the same
    one moves this channel), ``vignette`` ``dims`` float32, ``render`` the options of
    :func:`~somascope.simulate.render.render_movie` (``order``, ``out``, ``overwrite``,
    ``chunk_frames``, ``n_threads``, ``progress``; ``out`` is the functional movie's path, the
    structural one goes to :func:`structural_out`). For widefield (one-photon) optics, ``halo``
    ``(sigma px, weight)`` spreads that fraction of each marker's light by a wide Gaussian (the
    tissue's scattering), and ``haze`` (``dims``, photons per pixel per frame, tissue frame) adds
    the out-of-focus marker light to the autofluorescence.

    Returns a dict of ``Simulation.extra`` entries: ``structural`` (the movie ``T × *dims``
    float32 photons, or a Store), ``labelled`` (K,) bool, ``structural_A`` (``pixels × K`` CSC
    float32, camera frame, unit-max; empty columns where unlabelled), ``structural_brightness``
    (K,) photons at each footprint's peak in the camera frame (0 where unlabelled),
    ``structural_mean`` (``dims`` float32, the expected image, photons),
    ``structural_noise_std`` (``dims`` float32, photons) and ``marker``.
    """
    s = settings
    if s.marker not in MARKERS:
        raise ValueError(f"marker must be one of {MARKERS}; got {s.marker!r}.")
    dims = tuple(int(d) for d in dims)
    K = int(kind.size)
    rng = streams.rng_for(seed, streams.STRUCTURAL, 0)
    somata = np.flatnonzero(kind == "soma")
    labelled = np.zeros(K, bool)
    labelled[rng.choice(somata, int(round(s.label_fraction * somata.size)), replace=False)] = True
    brightness = np.where(labelled, s.brightness * np.exp(s.brightness_logsd * rng.standard_normal(K)), 0.0)
    columns: list[tuple[np.ndarray, np.ndarray]] = []
    A_tissue = sparse.csc_matrix(A_tissue)
    for k in range(K):
        if not labelled[k]:
            columns.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
        elif s.marker == "cytoplasmic":
            lo, hi = A_tissue.indptr[k], A_tissue.indptr[k + 1]
            columns.append((A_tissue.indices[lo:hi].astype(np.int64), A_tissue.data[lo:hi].astype(np.float32)))
        else:
            origin, image = soma_patch(centers[k], semi_axes[k] * s.nucleus_scale, 0.0, False, 0.0, 1.0,
                                       np.asarray(psf_sigma, float))
            if halo is not None:
                origin, image = with_halo(origin, image, *halo)
            columns.append(crop_to_fov(origin, image, dims))
    A_s = columns_to_csc(columns, int(np.prod(dims)))
    C_s = np.repeat(brightness[:, None], n_frames, axis=1)
    b_s = np.full((int(np.prod(dims)), 1), s.autofluorescence, np.float32)
    if haze is not None:
        b_s += np.asarray(haze, np.float32).reshape(-1, 1)
    f_s = np.ones((1, n_frames))
    noise = NoiseModel(1.0, s.read_noise)
    opts = dict(render)
    opts["out"] = structural_out(opts.get("out"))
    movie = render_movie(A_s, C_s, b_s, f_s, dims, noise=noise, noise_key=(seed, streams.STRUCTURAL, 1),
                         motion=motion, vignette=vignette, frame_rate=frame_rate,
                         metadata={"channel": "structural"}, **opts)
    V = np.asarray(vignette, np.float32).ravel()
    A_cam = sparse.csc_matrix(sparse.diags(V) @ A_s)
    peak = np.asarray(A_cam.max(axis=0).toarray()).ravel() if K else np.zeros(0)
    scale = np.where(peak > 0, peak, 1.0)
    A_cam = sparse.csc_matrix(A_cam @ sparse.diags(1.0 / scale)).astype(np.float32)
    mean = (np.asarray(A_s @ brightness).ravel() + b_s[:, 0]) * V
    mean = mean.astype(np.float32).reshape(dims)
    return {
        "structural": movie, "labelled": labelled, "structural_A": A_cam,
        "structural_brightness": brightness * np.where(peak > 0, peak, 0.0), "structural_mean": mean,
        "structural_noise_std": noise.std(mean), "marker": s.marker,
    }


def add_structural(
    sim: Any, *, seed: int, A_tissue: sparse.csc_matrix, semi_axes: np.ndarray, psf_sigma: np.ndarray,
    motion: MotionModel | None, render: dict[str, Any], settings: StructuralSettings = STRUCTURAL,
    halo: tuple[float, float] | None = None, haze: np.ndarray | None = None,
) -> Any:
    """Give the hard-preset :class:`~somascope.simulate.Simulation` ``sim`` its structural
    channel (:func:`structural_channel`, moved by ``motion``, the model that rendered ``sim``):
    its entries go into ``sim.extra``, and ``sim.params`` records ``channels`` = 2 and the
    ``structural`` settings. ``halo`` and ``haze``: widefield optics, see
    :func:`structural_channel`. Returns ``sim``."""
    from dataclasses import asdict

    extra = structural_channel(
        seed=seed, kind=sim.kind, centers=sim.centers, semi_axes=semi_axes, A_tissue=A_tissue,
        dims=tuple(sim.dims), psf_sigma=psf_sigma, n_frames=sim.n_frames, frame_rate=sim.frame_rate,
        motion=motion, vignette=sim.vignette, render=render, settings=settings, halo=halo, haze=haze,
    )
    sim.extra.update(extra)
    sim.params["channels"] = 2
    sim.params["structural"] = asdict(settings)
    return sim
