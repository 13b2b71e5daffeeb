"""How well can any test on the traces tell the labelled silent somata of a two-channel hard-family
member from its labelled active ones? An ideal observer, built from the ground truth.

For every labelled soma, a trace that a real pipeline can only approach: the true calcium seen
through the true footprint, plus the Poisson and read noise of the footprint-weighted pixels,
plus (optionally) the simulated neuropil (out-of-focus blobs with transients and slow fields,
rebuilt from the member's seed) — read either on the footprint (``footprint``) or as footprint
mean minus a ring around it (``ring``, as ``evaluation.activity`` does). Neighbours are demixed
perfectly. The test is the activity z of ``evaluation.activity`` with the true decay; the
threshold is chosen on the member itself, the best for min(precision, recall) of the silent
flags. Figures above what this reaches cannot be asked of the pipeline on that member.

    .venv/bin/python benchmarks/bench_silent_ceiling.py FAMILY [--members m000 m001 ...]

``FAMILY`` is a folder written by ``make_hard_family.py --channels 2`` (two-photon planes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def best_threshold(z: np.ndarray, silent: np.ndarray, active: np.ndarray) -> tuple[float, float, float]:
    """(min(P, R), P, R) of the flags ``z <= t`` at the best ``t``, against ``silent`` (bool)."""
    best = (0.0, 0.0, 0.0)
    for t in np.unique(z):
        flag = z <= t
        tp = int((flag & silent).sum())
        p, r = tp / max(int((flag & (silent | active)).sum()), 1), tp / max(int(silent.sum()), 1)
        best = max(best, (min(p, r), p, r))
    return best


def ceiling(folder: Path, member: dict, rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Best (min(P, R), P, R) of the ideal observer's silent flags, per reading."""
    import scipy.sparse as sp

    from somascope.evaluation.activity import activity_z, neuropil_weights
    from somascope.simulate import _fields as streams
    from somascope.simulate.hard import SETTINGS, hard_background

    g = np.load(folder / member["name"] / "gt.npz", allow_pickle=True)
    dims = tuple(int(d) for d in g["dims"])
    A = g["A"].reshape(g["A"].shape[0], -1).astype(np.float64)
    C = g["C"].astype(np.float64) * g["bleach"][None, :]
    T, fr, decay = C.shape[1], float(member["fr"]), float(member["decay"])
    b, f, kinds = hard_background(streams.rng_for(member["seed"], streams.NEUROPIL, 0),
                                  streams.rng_for(member["seed"], streams.NEUROPIL, 1), dims, T, fr, SETTINGS)
    moving = np.array([k == "blob" for k in kinds]) | np.array([k == "neuropil" for k in kinds])
    moving[0] = False  # the flat baseline
    neuropil_b, neuropil_f = b[:, moving], f[moving]
    variance = (g["mean_clean"].ravel() - float(g["offset"])) / float(g["gain"]) + float(g["read_noise"]) ** 2
    soma, on, lab = g["is_soma"], g["is_active"], g["labelled"]
    cells = np.flatnonzero(soma & lab)
    silent, active = ~on[cells], on[cells]
    radius = float(member["radius"])
    out = {}
    footprints = sp.csc_matrix(A[cells].T)
    on_mask = sp.csc_matrix(footprints.multiply(footprints >= 0.2 * footprints.max(axis=0).toarray()))
    for reading in ("footprint", "ring"):
        if reading == "footprint":
            U = A[cells] / np.linalg.norm(A[cells], axis=1, keepdims=True)
        else:  # the pipeline's own weights: the footprint on its mask minus the ring around it
            U = neuropil_weights(on_mask, dims, radius).toarray().T
        sd = np.sqrt((U ** 2) @ variance)
        own = (U * A[cells]).sum(axis=1)[:, None] * C[cells]
        noise = rng.standard_normal(own.shape)
        pil = (U @ neuropil_b) @ neuropil_f
        for name, trace in ((f"{reading}: own + noise", own / sd[:, None] + noise),
                            (f"{reading}: own + neuropil + noise", (own + pil) / sd[:, None] + noise)):
            out[name] = best_threshold(activity_z(trace, decay, fr), silent, active)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", type=Path)
    ap.add_argument("--members", nargs="*", default=None)
    args = ap.parse_args(argv)
    family = json.loads((args.family / "family.json").read_text())
    if family.get("kind", "2p") != "2p" or family.get("channels") != 2:
        ap.error("FAMILY must be a two-channel two-photon family (make_hard_family.py --channels 2)")
    rng = np.random.default_rng(0)
    for member in family["members"]:
        if args.members and member["name"] not in args.members:
            continue
        for name, (m, p, r) in ceiling(args.family, member, rng).items():
            print(f"{member['name']}  {name:34s} best min(P, R) {m:.2f}  (P {p:.2f}, R {r:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
