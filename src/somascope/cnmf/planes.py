"""A volume fitted plane by plane: each plane a 2-D CNMF, a cell's pieces in adjacent planes
merged into one 3-D component (``patch.by_plane``, an option for thin stacks).

A thin stack's planes lie about a soma's radius apart, so a cell shows in one to three planes.
Plane by plane, each plane is an ordinary two-photon movie (2-D patches, initialisation,
updates and merging with the 2-D parameters of the plane, :func:`plane_params`); then:

1. the components of all planes become ``Z·H·W``-pixel footprints, each in its own plane, with
   the planes' backgrounds side by side (``b`` block-diagonal, ``f`` stacked: nb per plane);
2. pieces of one cell are paired between adjacent planes: their masks overlap in the image
   plane (IoU ≥ :data:`PLANE_IOU`) and their traces correlate (≥ :data:`PLANE_CORR`); each
   component pairs with at most one above and one below (the most correlated first), so a
   chain is one cell through consecutive planes;
3. each chain becomes one component, the rank-1 fit of its pieces' contributions
   (:func:`somascope.cnmf.merging.merge_components` with these groups).

The quality tests then judge the 3-D components. A Store's planes are copied one at a time to
a plane Store beside it (removed after its fit), so the movie is never held in memory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .estimates import Estimates

__all__ = ["PLANE_CORR", "PLANE_IOU", "by_plane", "cross_plane_groups", "fit_by_plane", "plane_params"]

log = logging.getLogger(__name__)

#: Overlap (intersection over union, in the image plane) of two adjacent planes' masks from
#: which they may be one cell.
PLANE_IOU = 0.2
#: Correlation of the traces ``C`` of two adjacent planes' pieces from which they are one cell.
#: 0.5–0.7 gave the best F1 on a hard simulated stack (0.854–0.856; 0.85: 0.834, pieces of
#: one cell left apart count as false positives; ``docs/volumes.md``).
PLANE_CORR = 0.6


def by_plane(params: Any, dims: tuple[int, ...]) -> bool:
    """Whether a movie of frames ``dims`` is fitted plane by plane: a volume with
    ``patch.by_plane`` set."""
    return len(dims) == 3 and bool(params.patch.by_plane)


def plane_params(params: Any) -> Any:
    """The 2-D parameters of one plane of a volume: every per-axis value without its z entry,
    and ``init.K`` (components per patch) scaled from the volume's rule to the plane's (a
    patch of one plane holds a neuron's disc instead of its ellipsoid)."""
    from somascope.params import _PER_AXIS, Params, _rule_K

    d = params.to_dict()
    flat: dict[str, Any] = {}
    for group, values in d.items():
        for name, value in values.items():
            key = f"{group}.{name}"
            if key in _PER_AXIS and isinstance(value, (list, tuple)) and len(value) == 3:
                value = tuple(value[1:])
            flat[key] = value
    if isinstance(flat.get("init.sigma_smooth_snmf"), (list, tuple)) and len(flat["init.sigma_smooth_snmf"]) == 4:
        flat["init.sigma_smooth_snmf"] = tuple(flat["init.sigma_smooth_snmf"][:1]) + tuple(
            flat["init.sigma_smooth_snmf"][2:])
    flat["motion.is3D"] = False
    if params.init.K is not None and params.patch.rf is not None:
        volume = {"patch.rf": tuple(params.patch.rf), "data.neuron_radius": tuple(params.data.neuron_radius)}
        plane = {"patch.rf": flat["patch.rf"], "data.neuron_radius": flat["data.neuron_radius"]}
        flat["init.K"] = max(1, round(params.init.K * _rule_K(plane, 2) / _rule_K(volume, 3)))
    return Params.from_dict(flat)


@dataclass(frozen=True)
class _PlaneView:
    """Plane ``z`` of a ``T × Z × H × W`` source as a ``T × H × W`` source (time slices)."""

    source: Any
    z: int

    @property
    def shape(self) -> tuple[int, ...]:
        T, _, H, W = (int(s) for s in self.source.shape)
        return (T, H, W)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def frame_rate(self) -> float | None:
        return getattr(self.source, "frame_rate", None)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        t = key[0] if isinstance(key, tuple) else key
        rest = key[1:] if isinstance(key, tuple) else ()
        return np.asarray(self.source[t, self.z], dtype=np.float32)[(slice(None), *rest)]


def fit_by_plane(source: Any, params: Any, *, engine: Any = None, progress: bool = False,
                 fit_plane: Any) -> Estimates:
    """CNMF of a volume ``T × Z × H × W`` plane by plane (module docstring); unevaluated.

    ``fit_plane(plane_source, plane_params)`` fits one plane (``cnmf.fit``'s own 2-D path,
    without evaluation); a :class:`~somascope.store.Store` source gets a plane Store per plane,
    written beside it and removed after the plane's fit.
    """
    from somascope.store import Store

    T, Z, H, W = (int(s) for s in source.shape)
    p2 = plane_params(params)
    ests = []
    is_store = isinstance(source, Store)
    work = Path(tempfile.mkdtemp(prefix=".planes-", dir=Path(source.path).parent)) if is_store else None
    try:
        for z in range(Z):
            view = _PlaneView(source, z)
            if is_store:
                assert work is not None
                plane: Any = Store.from_source(view, work / f"plane{z}.zarr", engine=engine, progress=progress)
            else:
                plane = np.ascontiguousarray(view[:])
            est = fit_plane(plane, p2)
            log.info("plane %d of %d: %d components", z + 1, Z, est.K)
            ests.append(est)
            if is_store:
                shutil.rmtree(plane.path, ignore_errors=True)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    est, plane_of = _stack_planes(ests, (Z, H, W), params)
    groups = cross_plane_groups(est, plane_of)
    log.info("plane by plane: %d components in %d planes, %d cells reaching more than one plane",
             est.K, Z, len(groups))
    if not groups:
        return est
    from .merging import merge_components

    merged = merge_components(est, params, groups=groups).estimates
    return merged


def _stack_planes(ests: list[Estimates], dims: tuple[int, int, int], params: Any) -> tuple[Estimates, np.ndarray]:
    """One volume :class:`Estimates` from each plane's: footprints moved to their plane's
    pixels, traces stacked, backgrounds side by side; and the plane of each component."""
    Z, H, W = dims
    n = H * W
    A_parts, b_parts = [], []
    plane_of = np.concatenate([np.full(e.K, z, np.int64) for z, e in enumerate(ests)])
    for z, e in enumerate(ests):
        coo = sp.coo_matrix(e.A)
        A_parts.append(sp.csc_matrix((coo.data, (coo.row + z * n, coo.col)), shape=(Z * n, e.K)))
        b = np.zeros((0, 0)) if e.b is None else np.asarray(e.b)
        b_parts.append(b)
    nbs = [b.shape[1] for b in b_parts]
    B = np.zeros((Z * n, sum(nbs)), np.float32)
    col = 0
    for z, b in enumerate(b_parts):
        B[z * n:(z + 1) * n, col:col + b.shape[1]] = b
        col += b.shape[1]
    T = next(e.C.shape[1] for e in ests if e.C is not None)
    f = np.concatenate([e.f if e.f is not None else np.zeros((0, T), np.float32) for e in ests])

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(e, name) for e in ests]
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts)

    g = None
    if all(e.g is not None for e in ests):
        p = max(e.g.shape[1] for e in ests)
        g = np.concatenate([np.pad(e.g, ((0, 0), (0, p - e.g.shape[1]))) for e in ests])
    est = Estimates(
        A=sp.hstack(A_parts, format="csc"), dims=dims, C=cat("C"), S=cat("S"), YrA=cat("YrA"), b=B, f=f,
        sn=cat("sn"), g=g, bl=cat("bl"), c1=cat("c1"), lam=cat("lam"), neurons_sn=cat("neurons_sn"),
        frame_rate=ests[0].frame_rate, params=params.to_dict(), seed=ests[0].seed,
        provenance={**ests[0].provenance, "by_plane": True},
    )
    return est, plane_of


def cross_plane_groups(est: Estimates, plane_of: np.ndarray) -> list[np.ndarray]:
    """Chains of components through consecutive planes that are one cell (module docstring):
    index arrays of ≥ 2 components, each at most one per plane."""
    from somascope.metrics import binarise_footprints

    Z, H, W = est.dims
    n = H * W
    masks = binarise_footprints(est.A)
    # each component's mask in its own plane's pixels
    flat = sp.csc_matrix((np.ones(masks.nnz), masks.indices % n, masks.indptr), shape=(n, est.K))
    C = np.asarray(est.C, np.float64)
    centred = C - C.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    unit = np.divide(centred, norm[:, None], out=np.zeros_like(centred), where=norm[:, None] > 0)
    area = np.asarray(flat.sum(axis=0)).ravel()
    up = np.full(est.K, -1)
    down = np.full(est.K, -1)
    for z in range(Z - 1):
        a_idx, b_idx = np.flatnonzero(plane_of == z), np.flatnonzero(plane_of == z + 1)
        if not a_idx.size or not b_idx.size:
            continue
        overlap = (flat[:, a_idx].T @ flat[:, b_idx]).tocoo()
        iou = overlap.data / (area[a_idx][overlap.row] + area[b_idx][overlap.col] - overlap.data)
        keep = iou >= PLANE_IOU
        i, j = a_idx[overlap.row[keep]], b_idx[overlap.col[keep]]
        corr = np.einsum("pt,pt->p", unit[i], unit[j])
        for k in np.argsort(-corr):
            if corr[k] < PLANE_CORR:
                break
            if down[i[k]] < 0 and up[j[k]] < 0:
                down[i[k]], up[j[k]] = j[k], i[k]
    groups = []
    for start in np.flatnonzero((up < 0) & (down >= 0)):
        chain = [start]
        while down[chain[-1]] >= 0:
            chain.append(down[chain[-1]])
        groups.append(np.asarray(chain, np.int64))
    return groups
