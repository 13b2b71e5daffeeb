"""Spatial footprints: somata (ring-shaped or filled ellipses / ellipsoids) and thin,
elongated processes (dendrite-like), rendered on local patches into a sparse matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.special import expit

EDGE = 0.08  # softness of a soma's edge, in units of its radius
SUPPORT_CUTOFF = 0.01  # footprint values below this fraction of the peak are set to 0
PROCESS_WIDTH = 0.5  # Gaussian sigma (px) of a process's cross-section before the PSF


@dataclass(frozen=True)
class Footprints:
    """Footprints of K components on a field of view ``dims``.

    A : csc_matrix, float32, ``pixels × K`` (C-order pixels), each column's maximum is 1.
    kind : (K,) str, ``"soma"`` or ``"process"``.
    ring : (K,) bool, soma with nuclear exclusion (a ring/shell); False for filled somata and processes.
    centers : (K, ndim) float64, soma centre or the middle point of a process, in pixels.
    """

    A: sparse.csc_matrix
    kind: np.ndarray
    ring: np.ndarray
    centers: np.ndarray


def place_centers(
    rng: np.random.Generator, dims: Sequence[int], n: int, radius: np.ndarray, min_separation: float
) -> np.ndarray:
    """``n`` random centres inside ``dims`` (``(n, ndim)``, pixels) no closer to each other
    than ``min_separation`` radii (distance measured in units of ``radius`` per axis)."""
    dims_arr = np.asarray(dims, dtype=float)
    if n == 0:
        return np.zeros((0, len(dims)))
    # Random sequential packing of hard discs jams at 55 % of the area (balls: 38 %): fail fast beyond.
    ball = (np.pi / 4 if len(dims) == 2 else np.pi / 6) * np.prod(min_separation * radius)
    crowded = n * ball > (0.55 if len(dims) == 2 else 0.38) * np.prod(dims_arr + min_separation * radius)
    accepted = np.empty((n, len(dims)))
    count = 0
    batch = max(64, 4 * n)
    for _ in range(0 if crowded else 20):
        candidates = rng.uniform(0.0, 1.0, (batch, len(dims))) * (dims_arr - 1.0)
        for c in candidates:
            if count and np.min(np.sum(((accepted[:count] - c) / radius) ** 2, axis=1)) < min_separation**2:
                continue
            accepted[count] = c
            count += 1
            if count == n:
                return accepted
    raise ValueError(
        f"cannot place {n} cells of radius {tuple(float(r) for r in np.round(radius, 2))} px at least {min_separation} radii "
        f"apart in a field of view of {tuple(dims)} px; use fewer cells, a smaller neuron_radius or a "
        f"smaller min_separation."
    )


def soma_patch(
    center: np.ndarray,
    semi_axes: np.ndarray,
    angle: float,
    ring: bool,
    nucleus_radius: float,
    nucleus_level: float,
    psf_sigma: np.ndarray,
    edge: float = EDGE,
    shape_power: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A soma rendered on a local patch: ``(origin, image)`` with ``origin`` the patch's
    first pixel (may lie outside the field of view). The ellipse (ellipsoid) has
    ``semi_axes`` (px, per axis), rotated by ``angle`` (rad) in the last two axes; a ring
    soma is dimmer (``nucleus_level``) inside ``nucleus_radius`` (fraction of the radius).
    The profile is a plateau with a logistic edge of softness ``edge`` (radii), or with
    ``shape_power`` p a generalised Gaussian ``exp(-ρ^p)`` (p = 2 Gaussian, larger p flatter)."""
    in_plane = semi_axes[-2:].max()
    reach = semi_axes.copy()
    reach[-2:] = in_plane
    half = np.ceil(reach * (1.0 + 4 * edge) * (1.0 if shape_power is None else 1.5) + 3.0 * psf_sigma + 1.0).astype(int)
    origin = np.floor(center).astype(int) - half
    axes = [np.arange(o, o + 2 * h + 1) - c for o, h, c in zip(origin, half, center)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * grids[-2] + sin * grids[-1]
    v = -sin * grids[-2] + cos * grids[-1]
    rho2 = (u / semi_axes[-2]) ** 2 + (v / semi_axes[-1]) ** 2
    for g, a in zip(grids[:-2], semi_axes[:-2]):
        rho2 = rho2 + (g / a) ** 2
    rho = np.sqrt(rho2)
    image = expit((1.0 - rho) / edge) if shape_power is None else np.exp(-rho**shape_power)
    if ring:
        image = image * (1.0 - (1.0 - nucleus_level) * expit((nucleus_radius - rho) / edge))
    return origin, ndimage.gaussian_filter(image, psf_sigma, mode="constant")


def process_patch(
    rng: np.random.Generator, start: np.ndarray, radius: np.ndarray, psf_sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved process (dendrite-like) starting at ``start``: a persistent random walk
    4–10 in-plane radii long, one pixel wide, blurred by the PSF. Returns ``(origin, image)``."""
    ndim = len(start)
    scale = radius / radius[-1]  # anisotropic volumes: move less along the coarser axis
    step = 0.3
    n_steps = int(np.ceil(rng.uniform(4.0, 10.0) * radius[-1] / step))
    direction = rng.standard_normal(ndim)
    kicks = rng.normal(0.0, 0.05, (n_steps, ndim))
    points = np.empty((n_steps, ndim))
    position = np.asarray(start, dtype=float).copy()
    for i in range(n_steps):
        direction = direction / np.linalg.norm(direction) + kicks[i]
        direction /= np.linalg.norm(direction)
        position = position + step * direction * scale
        points[i] = position
    sigma = np.sqrt((PROCESS_WIDTH * scale) ** 2 + psf_sigma**2)
    pad = np.ceil(3.0 * sigma + 1.0).astype(int)
    origin = np.floor(points.min(axis=0)).astype(int) - pad
    shape = np.ceil(points.max(axis=0)).astype(int) + pad + 1 - origin
    image = np.zeros(tuple(shape))
    index = np.rint(points - origin).astype(int)
    image[tuple(index.T)] = 1.0
    return origin, ndimage.gaussian_filter(image, sigma, mode="constant")


def with_halo(origin: np.ndarray, image: np.ndarray, sigma: float, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """A patch ``image`` (placed at ``origin``) with ``weight`` of its light spread by a Gaussian
    of ``sigma`` px: the wide scattering halo of widefield optics. The patch grows by 3 sigma on
    every side and its origin moves to match."""
    pad = int(np.ceil(3.0 * sigma))
    image = np.pad(image, pad)
    image = (1.0 - weight) * image + weight * ndimage.gaussian_filter(image, sigma, mode="constant")
    return np.asarray(origin) - pad, image


def crop_to_fov(origin: np.ndarray, image: np.ndarray, dims: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The part of a patch inside the field of view as ``(flat_pixel_indices, values)``:
    indices in C order of ``dims`` (sorted), values float32 scaled to a maximum of 1 with
    values under :data:`SUPPORT_CUTOFF` dropped. Empty arrays when nothing is visible."""
    lo = np.maximum(origin, 0)
    hi = np.minimum(origin + np.array(image.shape), np.asarray(dims))
    if np.any(hi <= lo):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sub = image[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))]
    peak = sub.max()
    if peak <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sub = sub / peak
    keep = sub >= SUPPORT_CUTOFF
    coords = np.nonzero(keep)
    flat = np.ravel_multi_index(tuple(c + a for c, a in zip(coords, lo)), tuple(dims))
    return flat.astype(np.int64), sub[keep].astype(np.float32)


def columns_to_csc(columns: list[tuple[np.ndarray, np.ndarray]], n_pixels: int) -> sparse.csc_matrix:
    """Stack ``(indices, values)`` columns into a float32 CSC matrix ``n_pixels × len(columns)``."""
    lengths = np.array([len(idx) for idx, _ in columns], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([idx for idx, _ in columns]) if columns else np.zeros(0, np.int64)
    data = np.concatenate([val for _, val in columns]) if columns else np.zeros(0, np.float32)
    return sparse.csc_matrix((data, indices, indptr), shape=(n_pixels, len(columns)), dtype=np.float32)


def make_footprints(
    rng: np.random.Generator,
    dims: Sequence[int],
    n_cells: int,
    radius: np.ndarray,
    *,
    ring_fraction: float,
    process_fraction: float,
    min_separation: float,
    ellipticity: float,
    psf_sigma: np.ndarray,
) -> Footprints:
    """Random somata and processes on ``dims``; see :class:`Footprints`.

    ``radius`` (per axis, px) is the typical soma radius (sizes vary ±12 %); a fraction
    ``process_fraction`` of the components are processes, placed anywhere (they may cross
    somata); somata are at least ``min_separation`` radii apart, so neighbours can overlap.
    Somata are ellipses with an ellipticity up to ``ellipticity`` in the imaging plane.
    """
    dims = tuple(int(d) for d in dims)
    n_process = int(round(process_fraction * n_cells))
    n_soma = n_cells - n_process
    centers = list(place_centers(rng, dims, n_soma, radius, min_separation))
    columns, kinds, rings = [], [], []
    for center in centers:
        size = np.clip(rng.lognormal(0.0, 0.12), 0.7, 1.4)
        e = rng.uniform(0.0, ellipticity)
        semi = radius * size
        semi[-2:] *= (1.0 + e, 1.0 - e)
        is_ring = bool(rng.random() < ring_fraction)
        origin, image = soma_patch(
            center, semi, rng.uniform(0.0, np.pi), is_ring,
            rng.uniform(0.45, 0.65), rng.uniform(0.1, 0.35), psf_sigma,
        )
        columns.append(crop_to_fov(origin, image, dims))
        kinds.append("soma")
        rings.append(is_ring)
    for _ in range(n_process):
        idx = np.zeros(0, np.int64)
        while idx.size == 0:  # a process that leaves the field of view at once is drawn again
            start = rng.uniform(0.0, 1.0, len(dims)) * (np.asarray(dims) - 1.0)
            origin, image = process_patch(rng, start, radius, psf_sigma)
            idx, val = crop_to_fov(origin, image, dims)
        columns.append((idx, val))
        coords = np.array(np.unravel_index(idx, dims), dtype=float)
        centers.append((coords * val).sum(axis=1) / val.sum())
        kinds.append("process")
        rings.append(False)
    order = rng.permutation(n_cells)
    return Footprints(
        A=columns_to_csc([columns[i] for i in order], int(np.prod(dims))),
        kind=np.array(kinds, dtype="<U7")[order] if n_cells else np.zeros(0, "<U7"),
        ring=np.array(rings, dtype=bool)[order] if n_cells else np.zeros(0, bool),
        centers=np.array(centers, dtype=float).reshape(-1, len(dims))[order],
    )
