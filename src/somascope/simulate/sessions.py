"""Several sessions of one field of view: the tissue deforms smoothly between sessions
(affine + small non-rigid) and a changing subset of the cells is active."""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import _fields as streams
from ._config import params_record, validate
from .background import spatial_components
from .footprints import Footprints, SUPPORT_CUTOFF, columns_to_csc, make_footprints
from .generators import BACKGROUND_SCALE, cell_properties, one_photon, simulate_session, two_photon
from .result import Simulation

MIN_VISIBLE = 0.25  # a cell is part of a session when this fraction of it lies in the field of view
_MODALITIES = {"two_photon": two_photon, "one_photon": one_photon}


def _session_params(modality: str, fixed: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    if modality not in _MODALITIES:
        raise ValueError(f"modality must be one of {sorted(_MODALITIES)}; got {modality!r}.")
    signature = inspect.signature(_MODALITIES[modality])
    params = {name: p.default for name, p in signature.parameters.items()}
    for key in kwargs:
        if key not in params or key in fixed:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean {close[0]!r}?" if close and close[0] not in fixed else ""
            raise ValueError(f"sessions() got an unknown or reserved parameter {key!r}{hint} "
                             f"(any parameter of {modality}() except {', '.join(sorted(fixed))} can be passed).")
    params.update(kwargs)
    params.update(fixed)
    return params


def session_mapping(
    rng: np.random.Generator, dims: tuple[int, int], max_translation: float, max_rotation: float,
    max_scale: float, deformation_amplitude: float,
) -> np.ndarray:
    """Where each pixel of a new session lies in session 0: ``q(p) = m + M (p - m) + t + n(p)``
    with ``m`` the centre of the field of view, ``M`` a small rotation (≤ ``max_rotation``
    degrees) with scaling and shear (≤ ``max_scale``), ``t`` a translation (≤ ``max_translation``
    px per axis) and ``n`` a smooth field (≤ ``deformation_amplitude`` px per axis).
    Returns ``q`` as ``(2, H, W)`` float64 (session-0 pixel coordinates)."""
    angle = np.deg2rad(rng.uniform(-1.0, 1.0) * max_rotation)
    scale = 1.0 + rng.uniform(-1.0, 1.0) * max_scale
    shear = rng.uniform(-1.0, 1.0) * max_scale / 2.0
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    M = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    t = rng.uniform(-1.0, 1.0, 2) * max_translation
    centre = (np.asarray(dims, dtype=float) - 1.0) / 2.0
    p = np.indices(dims, dtype=float)
    q = np.tensordot(M, p - centre[:, None, None], axes=1) + (centre + t)[:, None, None]
    sigma = np.asarray(dims, dtype=float) / 3.0
    for a in range(2):
        q[a] += deformation_amplitude * streams.smooth_field(rng, dims, sigma)
    return q


def _affine_fit(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares affine ``q ≈ M p + t`` of a mapping ``coords`` (``(2, H, W)``) and the
    largest deviation from it (px)."""
    p = np.indices(coords.shape[1:], dtype=float).reshape(2, -1)
    design = np.vstack([p, np.ones(p.shape[1])]).T
    solution, *_ = np.linalg.lstsq(design, coords.reshape(2, -1).T, rcond=None)
    M, t = solution[:2].T, solution[2]
    residual = float(np.abs(design @ solution - coords.reshape(2, -1).T).max())
    return M, t, residual


def _locate(coords: np.ndarray, jacobian: np.ndarray, target: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The session point ``p`` with ``coords(p) = target`` (Newton steps from ``start``)."""
    p = start.astype(float)
    for _ in range(4):
        at = p[:, None]
        q = np.array([ndimage.map_coordinates(coords[a], at, order=1, mode="nearest")[0] for a in range(2)])
        J = np.array([[ndimage.map_coordinates(jacobian[a, b], at, order=1, mode="nearest")[0] for b in range(2)]
                      for a in range(2)])
        p = p + np.linalg.solve(J, target - q)
    return p


def resample_footprints(
    canvas: Footprints, canvas_dims: tuple[int, int], coords: np.ndarray
) -> tuple[Footprints, np.ndarray]:
    """The canvas footprints seen through a session whose pixel ``p`` shows canvas point
    ``coords[:, p]`` (``(2, H, W)``); cubic-spline resampling, each column rescaled to a
    maximum of 1. Keeps the cells with at least :data:`MIN_VISIBLE` of their mass in view.
    Returns the session's :class:`Footprints` and the canvas indices of its cells."""
    dims = coords.shape[1:]
    A = canvas.A.tocsc()
    M, t, residual = _affine_fit(coords)
    M_inv = np.linalg.inv(M)
    jacobian = np.stack([np.stack(np.gradient(coords[a]), axis=0) for a in range(2)])
    margin = residual + 3.0
    columns, keep, centers = [], [], []
    for k in range(A.shape[1]):
        idx = A.indices[A.indptr[k]:A.indptr[k + 1]]
        val = A.data[A.indptr[k]:A.indptr[k + 1]].astype(np.float64)
        yx = np.array(np.unravel_index(idx, canvas_dims))
        lo, hi = yx.min(axis=1), yx.max(axis=1) + 1
        patch = np.zeros(hi - lo)
        patch[tuple(yx - lo[:, None])] = val
        corners = np.array([[lo[0], hi[0], lo[0], hi[0]], [lo[1], lo[1], hi[1], hi[1]]], dtype=float)
        seen = M_inv @ (corners - t[:, None])
        start = np.maximum(np.floor(seen.min(axis=1) - margin).astype(int), 0)
        stop = np.minimum(np.ceil(seen.max(axis=1) + margin).astype(int) + 1, dims)
        if np.any(stop <= start):
            continue
        block = coords[:, start[0]:stop[0], start[1]:stop[1]] - lo[:, None, None]
        sampled = np.maximum(ndimage.map_coordinates(patch, block, order=3, mode="constant", cval=0.0), 0.0)
        if sampled.sum() < MIN_VISIBLE * val.sum() or sampled.max() <= 0:
            continue
        sampled /= sampled.max()
        rows, cols = np.nonzero(sampled >= SUPPORT_CUTOFF)
        columns.append((np.ravel_multi_index((rows + start[0], cols + start[1]), dims).astype(np.int64),
                        sampled[rows, cols].astype(np.float32)))
        keep.append(k)
        if canvas.kind[k] == "soma":
            guess = M_inv @ (canvas.centers[k] - t)
            centers.append(_locate(coords, jacobian, canvas.centers[k], guess))
        else:
            w = sampled[rows, cols]
            centers.append(np.array([(rows + start[0]) @ w, (cols + start[1]) @ w]) / w.sum())
    kept = np.array(keep, dtype=np.int64)
    footprints = Footprints(
        A=columns_to_csc(columns, int(np.prod(dims))),
        kind=canvas.kind[kept], ring=canvas.ring[kept], centers=np.array(centers, dtype=float).reshape(-1, 2),
    )
    return footprints, kept


def sessions(
    n_sessions: int = 3,
    dims: tuple[int, int] = (128, 128),
    n_frames: int = 1000,
    n_cells: int = 50,
    *,
    modality: str = "two_photon",
    max_translation: float = 5.0,
    max_rotation: float = 2.0,
    max_scale: float = 0.02,
    deformation_amplitude: float = 1.0,
    session_active_fraction: float = 0.8,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> list[Simulation]:
    """Simulate ``n_sessions`` sessions of one field of view (two- or one-photon).

    One population of cells (about ``n_cells`` per field of view, with fixed shapes,
    brightness, firing rates and decay times) lives on tissue that moves between sessions:
    session 0 is the reference, and each later session sees it through a smooth deformation
    — rotation up to ``max_rotation`` degrees, scaling/shear up to ``max_scale``, translation
    up to ``max_translation`` px per axis and a smooth non-rigid field up to
    ``deformation_amplitude`` px — given as ``Simulation.session_displacement`` in the motion
    convention (``session(p) ≈ session0(p - D(p))``). Cells leave and enter at the borders.
    In each session a non-silent cell is active with probability ``session_active_fraction``.
    Spikes, background fluctuations, within-session motion and noise are new each session.

    Each :class:`Simulation` has ``cell_ids``: the same id is the same cell in every session;
    :func:`~somascope.simulate.identity_matches` pairs two sessions' components. ``out`` is a
    folder receiving ``session_<i>.zarr`` stores. Other keyword arguments are those of
    :func:`two_photon` / :func:`one_photon` (``modality``), e.g. ``snr``, ``motion``,
    ``neuron_radius``, ``frame_rate``.
    """
    if isinstance(n_sessions, bool) or not isinstance(n_sessions, (int, np.integer)) or n_sessions < 1:
        raise ValueError(f"n_sessions must be an integer >= 1; got {n_sessions!r}.")
    geometry = {"max_translation": max_translation, "max_rotation": max_rotation, "max_scale": max_scale,
                "deformation_amplitude": deformation_amplitude}
    for name, value in geometry.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < np.inf:
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
    if max_scale >= 0.5 or max_rotation > 45:
        raise ValueError("sessions simulates small deformations: use max_scale < 0.5 and max_rotation <= 45 degrees.")
    if not isinstance(session_active_fraction, (int, float, np.number)) or not 0 <= session_active_fraction <= 1:
        raise ValueError(f"session_active_fraction must be a number in [0, 1]; got {session_active_fraction!r}.")
    fixed = {"dims": dims, "n_frames": n_frames, "n_cells": n_cells, "seed": seed, "out": None}
    p = _session_params(modality, fixed, kwargs)
    c = validate(p, 2)
    folder = None if out is None else Path(out)
    if folder is not None:
        for s in range(n_sessions):
            target = folder / f"session_{s}.zarr"
            if target.exists() and not c.overwrite:
                raise ValueError(f"out: {target} already exists; pass overwrite=True or choose another folder.")

    # The population lives on a canvas larger than the field of view by the largest excursion.
    dims2 = c.dims
    half_diagonal = float(np.hypot(*dims2)) / 2.0
    pad = int(np.ceil(max_translation + (np.deg2rad(max_rotation) + 1.5 * max_scale) * half_diagonal
                      + deformation_amplitude + 2.0 * c.radius.max() + 3.0 * c.psf_sigma.max() + 2.0))
    canvas_dims = (dims2[0] + 2 * pad, dims2[1] + 2 * pad)
    n_canvas = int(round(c.n_cells * np.prod(canvas_dims) / np.prod(dims2)))
    canvas = make_footprints(
        streams.rng_for(c.seed, streams.FOOTPRINTS), canvas_dims, n_canvas, c.radius,
        ring_fraction=c.ring_fraction, process_fraction=c.process_fraction, min_separation=c.min_separation,
        ellipticity=c.ellipticity, psf_sigma=c.psf_sigma,
    )
    props = cell_properties(streams.rng_for(c.seed, streams.PROPERTIES), n_canvas, c)
    canvas_background = spatial_components(streams.rng_for(c.seed, streams.BACKGROUND), canvas_dims,
                                           c.n_background, np.asarray(dims2, dtype=float) / BACKGROUND_SCALE)
    record = {"modality": modality, "n_sessions": int(n_sessions), **geometry,
              "session_active_fraction": session_active_fraction, **params_record(p),
              "out": None if out is None else str(out)}

    result = []
    for s in range(n_sessions):
        rng = streams.rng_for(c.seed, streams.SESSIONS, s)
        if s == 0:
            q = np.indices(dims2, dtype=float)
        else:
            q = session_mapping(rng, dims2, max_translation, max_rotation, max_scale, deformation_amplitude)
        active_here = rng.random(n_canvas) < session_active_fraction
        coords = q + pad
        footprints, kept = resample_footprints(canvas, canvas_dims, coords)
        background = np.empty((int(np.prod(dims2)), c.n_background), dtype=np.float32)
        for j in range(c.n_background):
            image = canvas_background[:, j].reshape(canvas_dims)
            sampled = np.maximum(ndimage.map_coordinates(image, coords, order=3, mode="nearest"), 0.0)
            background[:, j] = streams.unit_max(sampled).ravel()
        cell_props = props.subset(kept)
        sim = simulate_session(
            c, footprints, cell_props, background, modality=modality, params={**record, "session": s},
            session=s, active=~cell_props.silent & active_here[kept], cell_ids=kept,
            session_displacement=(np.indices(dims2, dtype=float) - q).astype(np.float32),
            out=None if folder is None else folder / f"session_{s}.zarr",
        )
        result.append(sim)
    return result
