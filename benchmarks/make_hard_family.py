"""Write members of a hard family — two-photon (``two_photon(preset="hard")``, the default) or
one-photon (``--kind 1p``: ``one_photon(preset="hard")``) — into a folder, each in the ``dev_sim``
layout (``movie.tif`` uint16 + ``gt.npz``), with ``family.json`` listing every member's settings, so
defaults can be tuned and scored (``benchmarks/score_gt.py``) across many seeds.

    .venv/bin/python benchmarks/make_hard_family.py OUT [--kind 2p|1p] [--n 8] [--seed0 100] [--frames 1500]
                                                        [--dims 160 160]

Two-photon members cycle through a small sweep: radius 5–10 px, frame rate 7.5–30 Hz, decay time
0.4–2.5 s (fast and slow indicators), every fourth member non-rigid (2.5 px warp), the others rigid.
One-photon members cycle through their own sweep: radius 5–12 px, frame rate 7.5–30 Hz, decay time
0.4–2.0 s, all with rigid motion (drift with jumps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# (radius px, frame rate Hz, decay time s, motion): a small sweep the members cycle through
SWEEP = (
    (6.0, 15.0, 0.8, "rigid"),
    (5.0, 30.0, 0.4, "rigid"),
    (8.0, 7.5, 2.5, "rigid"),
    (7.0, 15.0, 1.2, "nonrigid"),
    (10.0, 10.0, 1.5, "rigid"),
    (5.5, 20.0, 0.6, "rigid"),
    (9.0, 30.0, 2.0, "rigid"),
    (6.0, 7.5, 0.5, "nonrigid"),
)

# the same for the one-photon family: larger cells, all rigid
SWEEP_1P = (
    (10.0, 20.0, 0.8, "rigid"),
    (6.0, 30.0, 0.4, "rigid"),
    (12.0, 10.0, 1.5, "rigid"),
    (8.0, 15.0, 1.0, "rigid"),
    (5.0, 7.5, 2.0, "rigid"),
    (9.0, 20.0, 0.6, "rigid"),
    (7.0, 10.0, 1.2, "rigid"),
    (11.0, 30.0, 0.5, "rigid"),
)


def member_settings(i: int, seed0: int, kind: str = "2p") -> dict[str, object]:
    """Settings of member ``i``: seed ``seed0 + i`` and the ``i``-th entry of :data:`SWEEP`
    (``kind`` "2p") or :data:`SWEEP_1P` ("1p"), cycled."""
    sweep = SWEEP_1P if kind == "1p" else SWEEP
    radius, fr, decay, motion = sweep[i % len(sweep)]
    return {"name": f"m{i:03d}", "seed": seed0 + i, "radius": radius, "fr": fr, "decay": decay, "motion": motion}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kind", choices=["2p", "1p"], default="2p", help="two-photon or one-photon family")
    ap.add_argument("--n", type=int, default=8, help="number of members")
    ap.add_argument("--seed0", type=int, default=100, help="seed of the first member")
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--dims", type=int, nargs=2, default=(160, 160))
    args = ap.parse_args(argv)

    from somascope.simulate import one_photon, two_photon, write_ground_truth_folder

    simulator = one_photon if args.kind == "1p" else two_photon
    args.out.mkdir(parents=True, exist_ok=True)
    members = []
    for i in range(args.n):
        m = member_settings(i, args.seed0, args.kind)
        t0 = time.perf_counter()
        sim = simulator(dims=tuple(args.dims), n_frames=args.frames, frame_rate=m["fr"], decay_time=m["decay"],
                        neuron_radius=m["radius"], motion=m["motion"], seed=m["seed"], preset="hard")
        write_ground_truth_folder(sim, args.out / str(m["name"]))
        n_active = int(((sim.kind == "soma") & sim.active).sum())
        m.update(frames=args.frames, dims=list(args.dims), n_components=sim.n_cells, n_active_somata=n_active,
                 median_snr=round(float(sim.params["snr"]), 2))
        members.append(m)
        print(f"{m['name']}: seed {m['seed']} radius {m['radius']} fr {m['fr']} decay {m['decay']} {m['motion']}, "
              f"{sim.n_cells} components ({n_active} active somata), median peak SNR of active somata "
              f"{m['median_snr']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    family = {"preset": "hard", "kind": args.kind, "members": members}
    (args.out / "family.json").write_text(json.dumps(family, indent=1) + "\n")
    print(f"wrote {len(members)} members and {args.out / 'family.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
