"""Benchmark: cell bodies from the structural channel (:mod:`somascope.segmentation`).

Simulates hard two-photon movies with a static structural channel (``channels=2``, the
simulator's nuclear or cytoplasmic marker, :class:`somascope.simulate.structural.StructuralSettings`)
for every family — 2-D at radius 5, 7 and 10 px and volumes (``Z × H × W``), each with both
markers and several seeds — and keeps, per movie, the structural mean (frames motion-corrected
with the true rigid shifts, as the pipeline's motion correction would) and the ground truth in
``WORK/<name>.npz``; a later run reuses them. Then it runs :func:`segment_cells` and
:func:`seed_masks` on each mean image with the family's radius (the only per-image input) and
prints, per family:

- ``labelled``: ground-truth somata that carry the marker (silent ones included);
- ``recall`` / ``precision``: one-to-one (Hungarian) matching of label centroids to those
  somata' centres, a pair matching when their distance, per axis in units of the radius
  (``rz`` in planes for volumes), is at most ``--tolerance`` (0.6); a label matching no labelled
  soma is a false positive;
- ``IoU``: median IoU of the matched seed masks with the soma's true footprint binarised at
  :data:`somascope.metrics.MASK_FRAC` of its peak;
- ``recall(mask)`` / ``precision(mask)``: the same from :func:`somascope.metrics.match_footprints`
  of the seed masks with those footprints (overlap-based: a soma cut by the edge of the field
  of view matches its cut mask, where a centroid cannot);
- ``s/image``: wall time of ``segment_cells`` + ``seed_masks`` per image, and ``peak MB``: the
  most memory NumPy and Python allocated during them (``tracemalloc``), over the family's images.

    .venv/bin/python benchmarks/bench_segmentation.py                  # all families, seeds 11-13
    .venv/bin/python benchmarks/bench_segmentation.py --seeds 1 --families 2d-r7-nuclear
    .venv/bin/python benchmarks/bench_segmentation.py --frames 30      # a noisier mean

Families ``vol-…`` are the hard volume's default sampling (4 planes one radius apart, somata's
axial radius 1 plane); ``volz-…`` sample the same tissue twice as finely in z (8 planes, axial
radius 2 planes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import table  # noqa: E402


@dataclass(frozen=True)
class Family:
    """One row of the table: a simulator setting run at several seeds."""

    name: str
    kind: str  # "2p" or "volume"
    marker: str  # "nuclear" or "cytoplasmic"
    radius: float  # in-plane soma radius, px
    dims: tuple[int, ...]
    plane_spacing: float | None = None  # volumes: px between planes (None: the radius)


def families(dims2d: tuple[int, int], dims3d: tuple[int, int, int]) -> list[Family]:
    """The benchmark's families (2-D radius 5/7/10, volumes at two z samplings; both markers)."""
    out = []
    for marker in ("nuclear", "cytoplasmic"):
        for radius in (5.0, 7.0, 10.0):
            out.append(Family(f"2d-r{radius:g}-{marker}", "2p", marker, radius, dims2d))
        out.append(Family(f"vol-r6-{marker}", "volume", marker, 6.0, dims3d))
        fine = (2 * dims3d[0], *dims3d[1:])
        out.append(Family(f"volz-r6-{marker}", "volume", marker, 6.0, fine, plane_spacing=3.0))
    return out


def simulate_member(fam: Family, seed: int, frames: int, path: Path) -> None:
    """Simulate one movie of ``fam`` and save its structural mean and ground truth to ``path``."""
    from somascope.metrics import binarise_footprints
    from somascope.motion import shift_frame
    from somascope.simulate.hard import simulate_hard
    from somascope.simulate.hard_volume import simulate_hard_volume
    from somascope.simulate.structural import StructuralSettings

    common: dict[str, Any] = dict(dims=fam.dims, n_frames=frames, frame_rate=30.0, decay_time=0.4,
                                  neuron_radius=fam.radius, motion="rigid", seed=seed, channels=2,
                                  structural=StructuralSettings(marker=fam.marker))
    if fam.kind == "2p":
        sim = simulate_hard(**common)
        radius = np.array([fam.radius, fam.radius])
    else:
        sim = simulate_hard_volume(**common, plane_spacing=fam.plane_spacing)
        radius = np.array([sim.extra["axial_radius"], fam.radius, fam.radius])
    movie = sim.extra["structural"]
    total = np.zeros(movie.shape[1:], np.float64)
    for frame, shift in zip(movie, sim.shifts):
        total += shift_frame(np.asarray(frame, np.float32), shift)
    truth = np.flatnonzero(sim.extra["labelled"] & (sim.kind == "soma"))
    masks = sp.csc_matrix(binarise_footprints(sim.A[:, truth]), dtype=np.float32)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, mean=(total / len(movie)).astype(np.float32), centers=sim.centers[truth],
                        radius=radius, dims=np.array(fam.dims), m_data=masks.data, m_indices=masks.indices,
                        m_indptr=masks.indptr, m_shape=np.array(masks.shape))
    tmp.replace(path)


def score(labels: np.ndarray, masks: sp.csc_matrix, data: Any, tolerance: float) -> dict[str, Any]:
    """Match ``labels`` (and their seed ``masks``) to the labelled somata in ``data``."""
    from somascope.metrics import match_footprints

    radius = data["radius"]
    truth = data["centers"]
    K = int(labels.max())
    found = np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, np.arange(1, K + 1)),
                       dtype=float).reshape(K, labels.ndim)
    dist = np.linalg.norm((truth[:, None, :] - found[None]) / radius, axis=2)
    rows, cols = linear_sum_assignment(np.where(dist <= tolerance, dist, 1e6))
    ok = dist[rows, cols] <= tolerance
    rows, cols = rows[ok], cols[ok]
    gt = sp.csc_matrix((data["m_data"], data["m_indices"], data["m_indptr"]), shape=tuple(data["m_shape"]))
    a, b = gt[:, rows] > 0, masks[:, cols] > 0
    inter = np.asarray(a.multiply(b).sum(axis=0)).ravel()
    union = np.asarray(a.sum(axis=0)).ravel() + np.asarray(b.sum(axis=0)).ravel() - inter
    overlap = match_footprints(gt, masks, labels.shape)
    return {"n": len(truth), "k": K, "tp": len(rows), "iou": list(inter / np.maximum(union, 1)),
            "tp_overlap": overlap.tp}


def run_family(fam: Family, seeds: list[int], frames: int, work: Path, tolerance: float,
               min_contrast: float | None) -> dict[str, Any]:
    """Simulate (or reuse) and score every seed of ``fam``; one table row."""
    from somascope.segmentation import seed_masks, segment_cells

    paths = []
    for seed in seeds:
        path = work / f"{fam.name}_f{frames}_s{seed}.npz"
        if not path.exists():
            t0 = time.perf_counter()
            simulate_member(fam, seed, frames, path)
            print(f"  simulated {path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        paths.append(path)
    n = k = tp = tp_overlap = 0
    ious: list[float] = []
    seconds = peak = 0.0
    kwargs = {} if min_contrast is None else {"min_contrast": min_contrast}
    for path in paths:
        data = np.load(path)
        image, radius = data["mean"], data["radius"]
        t0 = time.perf_counter()
        labels = segment_cells(image, radius, **kwargs)
        masks = seed_masks(labels, radius)
        seconds += time.perf_counter() - t0
        tracemalloc.start()  # again, for memory (tracing slows the run it watches)
        seed_masks(segment_cells(image, radius, **kwargs), radius)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
        res = score(labels, masks, data, tolerance)
        n, k, tp, tp_overlap = n + res["n"], k + res["k"], tp + res["tp"], tp_overlap + res["tp_overlap"]
        ious += res["iou"]
    shape = "×".join(str(v) for v in fam.dims)
    return {"family": fam.name, "images": len(paths), "size": shape,
            "radius": "×".join(f"{v:g}" for v in np.load(paths[0])["radius"]), "labelled": n, "found": k,
            "recall": tp / max(n, 1), "precision": tp / max(k, 1),
            "IoU": float(np.median(ious)) if ious else float("nan"),
            "recall(mask)": tp_overlap / max(n, 1), "precision(mask)": tp_overlap / max(k, 1),
            "s/image": seconds / len(paths), "peak MB": peak}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "somascope-bench-segmentation",
                   help="folder for the simulated means (reused when present)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13], help="simulator seeds per 2-D family")
    p.add_argument("--volume-seeds", type=int, nargs="+", default=[11, 12], help="seeds per volume family")
    p.add_argument("--frames", type=int, default=300, help="frames averaged into the structural mean")
    p.add_argument("--dims", type=int, nargs=2, default=[256, 256], help="2-D field of view (H W)")
    p.add_argument("--volume-dims", type=int, nargs=3, default=[4, 160, 160],
                   help="volume (Z H W); the volz families use twice the planes")
    p.add_argument("--families", nargs="+", default=None, help="run only these families (default: all)")
    p.add_argument("--tolerance", type=float, default=0.6, help="match distance, in radii per axis")
    p.add_argument("--min-contrast", type=float, default=None, help="segment_cells' min_contrast (default: its own)")
    args = p.parse_args(argv)

    fams = families(tuple(args.dims), tuple(args.volume_dims))
    if args.families:
        unknown = set(args.families) - {f.name for f in fams}
        if unknown:
            p.error(f"unknown families {sorted(unknown)}; choose from {[f.name for f in fams]}")
        fams = [f for f in fams if f.name in args.families]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for fam in fams:
        seeds = args.seeds if fam.kind == "2p" else args.volume_seeds
        rows.append(run_family(fam, seeds, args.frames, args.work, args.tolerance, args.min_contrast))
        print(f"  {fam.name}: recall {rows[-1]['recall']:.3f}, precision {rows[-1]['precision']:.3f}",
              file=sys.stderr)
    print(f"structural segmentation, {args.frames}-frame means, match ≤ {args.tolerance} radius")
    print(table(rows, ["family", "images", "size", "radius", "labelled", "found", "recall", "precision", "IoU",
                       "recall(mask)", "precision(mask)", "s/image", "peak MB"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
