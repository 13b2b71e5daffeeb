"""Multi-day registration benchmark (issue 13).

1. ``dev_multiday`` (shared data), true footprints (``A`` of each session's ``gt.npz``) with the
   sessions' ``mean_raw`` images as templates: pairwise linking precision / recall / F1 over all
   session pairs, scored by ``global_id`` (the data README's rule), for ``register_multi``
   (the union table) and for ``register_pair`` on each pair.
2. End to end: ``somascope.pipeline.run`` on each session (fr 15, radius 6; finished stages of
   an earlier run in ``--runs`` are reused), then ``register_multi`` of the accepted components.
   Each detected component gets the ``global_id`` of the true footprint it matches in its session
   (the scoring rule of ``somascope.metrics``; unmatched: no identity); linking F1 over detected
   cells, and its ratio to the true-footprint F1.
3. Speed: 5 sessions × 600 cells on 512 × 512 (synthetic footprints, templates shifted, rotated
   and warped): ``register_multi`` time, alignment included (bar ≤ 10 s).

Run: ``python benchmarks/bench_multiday.py [--runs DIR] [--skip-e2e]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from somascope.metrics import MASK_FRAC, match_footprints
from somascope.multiday import linking_scores, register_multi, register_pair

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev_sim" / "dev_multiday"


def _gts() -> list:
    return [np.load(DATA / "sessions" / f"s{i}" / "gt.npz") for i in range(3)]


def true_footprints() -> dict:
    """Linking scores on the true footprints."""
    gts = _gts()
    t0 = time.perf_counter()
    m = register_multi([g["A"] for g in gts], [g["mean_raw"] for g in gts])
    seconds = time.perf_counter() - t0
    multi = linking_scores(m.assignments, [g["global_id"] for g in gts])
    tp = n_pred = n_true = 0
    for s, t in itertools.combinations(range(3), 2):
        p = register_pair(gts[s]["A"], gts[t]["A"], template_a=gts[s]["mean_raw"], template_b=gts[t]["mean_raw"])
        ia, ib = gts[s]["global_id"], gts[t]["global_id"]
        tp += int((ia[p.matched_a] == ib[p.matched_b]).sum())
        n_pred += p.n_matched
        n_true += len(np.intersect1d(ia, ib))
    pair = {"tp": tp, "n_pred": n_pred, "n_true": n_true, "precision": tp / n_pred, "recall": tp / n_true,
            "f1": 2 * tp / (n_pred + n_true)}
    return {"multi": multi, "pairwise": pair, "seconds": seconds}


def _identities(est, gt) -> np.ndarray:
    """``global_id`` of the true footprint each accepted component matches (-1: none)."""
    acc = est.accepted_indices
    ids = np.full(acc.size, -1, np.int64)
    m = match_footprints(gt["A"], est.A[:, acc], est.dims, binarise_frac=MASK_FRAC, largest_piece=True,
                         max_centroid_distance=None)
    ids[m.est_idx] = gt["global_id"][m.ref_idx]
    return ids


def end_to_end(runs: Path) -> dict:
    """Pipeline on each session, then registration of the accepted components."""
    from somascope.pipeline import load_results, run

    gts = _gts()
    folders, t_run = [], 0.0
    for i in range(3):
        t0 = time.perf_counter()
        run(DATA / "sessions" / f"s{i}" / "movie.tif", runs / f"s{i}", fr=15, radius=6, engine="serial",
            progress=False)
        t_run += time.perf_counter() - t0
        folders.append(runs / f"s{i}")
    t0 = time.perf_counter()
    m = register_multi(folders)
    seconds = time.perf_counter() - t0
    ests = [load_results(f / "results.h5").estimates for f in folders]
    ids = [_identities(e, g) for e, g in zip(ests, gts)]
    # the table holds component indices of the estimates; map them to positions among the accepted
    pos = np.full(m.assignments.shape, -1)
    for s, e in enumerate(ests):
        lookup = {int(k): j for j, k in enumerate(e.accepted_indices)}
        pos[s] = [lookup.get(int(v), -1) for v in m.assignments[s]]
    scores = linking_scores(pos, ids)
    return {"scores": scores, "detected": [int(len(i)) for i in ids],
            "detected_true": [int((i >= 0).sum()) for i in ids], "register_seconds": seconds,
            "pipeline_seconds": t_run}


def _render(centres: np.ndarray, radii: np.ndarray, dims: tuple[int, int]) -> sp.csc_matrix:
    """``pixels × K`` Gaussian footprints (peak 1, σ = radius / 2) at ``centres`` (K × 2 px)."""
    rows, cols, vals = [], [], []
    for k, (c, r) in enumerate(zip(centres, radii)):
        h = int(np.ceil(2 * r)) + 1
        y0, x0 = np.floor(c).astype(int) - h
        yy, xx = np.mgrid[max(y0, 0):min(y0 + 2 * h + 1, dims[0]), max(x0, 0):min(x0 + 2 * h + 1, dims[1])]
        v = np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * (r / 2) ** 2))
        keep = v > 0.05
        rows.append(np.ravel_multi_index((yy[keep], xx[keep]), dims))
        cols.append(np.full(int(keep.sum()), k))
        vals.append(v[keep])
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(dims[0] * dims[1], len(centres)))


def _deform(rng: np.random.Generator, dims: tuple[int, int]) -> callable:
    """A map p → p' (session coordinates of a reference point): rotation ≤ 1.5°, shift ≤ 4 px,
    smooth warp ≤ 2 px."""
    ang = np.deg2rad(rng.uniform(-1.5, 1.5))
    shift = rng.uniform(-4, 4, 2)
    grid = ndimage.zoom(rng.normal(0, 1.0, (2, 4, 4)), (1, dims[0] / 4, dims[1] / 4), order=3)
    centre = np.array(dims) / 2

    def f(p: np.ndarray) -> np.ndarray:
        q = p - centre
        rot = np.stack([np.cos(ang) * q[:, 0] - np.sin(ang) * q[:, 1], np.sin(ang) * q[:, 0] + np.cos(ang) * q[:, 1]],
                       axis=1)
        ij = np.clip(p.astype(int), 0, np.array(dims) - 1)
        return rot + centre + shift + grid[:, ij[:, 0], ij[:, 1]].T
    return f


def speed(n_sessions: int = 5, n_cells: int = 600, dims: tuple[int, int] = (512, 512), seed: int = 0) -> dict:
    """Registration time of ``n_sessions`` × ``n_cells`` on ``dims`` fields, and its linking F1."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(10, np.array(dims) - 10, (n_cells, 2))
    radii = rng.uniform(4, 7, n_cells)
    texture = ndimage.gaussian_filter(rng.normal(size=dims), 3) * 20
    As, tpls, ids = [], [], []
    grid = np.indices(dims).reshape(2, -1).T.astype(float)
    for s in range(n_sessions):
        f = (lambda p: p) if s == 0 else _deform(rng, dims)
        present = rng.random(n_cells) < 0.85
        c = f(centres[present])
        A = _render(c, radii[present], dims)
        # template: moving(f(p)) = reference(p): sample the reference texture at f⁻¹ ≈ p - (f(p) - p)
        back = 2 * grid - f(grid)
        tex = ndimage.map_coordinates(texture, back.T, order=1, mode="nearest").reshape(dims)
        everything = _render(f(centres), radii, dims)
        tpl = np.asarray(everything.sum(axis=1)).reshape(dims) * 5 + tex + rng.normal(0, 0.3, dims)
        As.append(A)
        tpls.append(tpl)
        ids.append(np.flatnonzero(present))
    t0 = time.perf_counter()
    m = register_multi(As, tpls)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "n_union": m.n_union, "scores": linking_scores(m.assignments, ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("/tmp/somascope-bench-multiday"),
                    help="folder for the pipeline runs (reused when finished)")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    out: dict = {}
    if DATA.is_dir():
        out["true_footprints"] = true_footprints()
        print("true footprints:", json.dumps(out["true_footprints"], indent=1))
        if not args.skip_e2e:
            out["end_to_end"] = end_to_end(args.runs)
            f1_true = out["true_footprints"]["multi"]["f1"]
            out["end_to_end"]["ratio_to_true"] = out["end_to_end"]["scores"]["f1"] / f1_true
            print("end to end:", json.dumps(out["end_to_end"], indent=1))
    else:
        print(f"{DATA} missing: dev_multiday parts skipped")
    out["speed"] = speed()
    print("5 × 600 on 512 × 512:", json.dumps(out["speed"], indent=1))


if __name__ == "__main__":
    main()
