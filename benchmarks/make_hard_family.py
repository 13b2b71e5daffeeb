"""Write members of a hard family — two-photon (``two_photon(preset="hard")``, the default),
one-photon (``--kind 1p``: ``one_photon(preset="hard")``) or volumes (``--kind volume``:
``volumetric(preset="hard")``, ImageJ TZYX hyperstacks) — into a folder, each in the ``dev_sim``
layout (``movie.tif`` uint16 + ``gt.npz``), with ``family.json`` listing every member's settings, so
defaults can be tuned and scored (``benchmarks/score_gt.py``) across many seeds. ``--channels 2``
(every kind) adds the static structural channel (channel 1).

    .venv/bin/python benchmarks/make_hard_family.py OUT [--kind 2p|1p|volume] [--n 8] [--seed0 100]
                                                        [--frames 1500] [--dims 160 160 | --dims 4 160 160]
                                                        [--channels 1|2]

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


# volumes: the two-photon sweep at volume rates (a 30 Hz frame rate shared by 3–6 planes)
SWEEP_VOLUME = (
    (6.0, 7.5, 0.8, "rigid"),
    (5.0, 10.0, 0.4, "rigid"),
    (8.0, 3.0, 2.5, "rigid"),
    (7.0, 5.0, 1.2, "nonrigid"),
    (10.0, 3.75, 1.5, "rigid"),
    (5.5, 6.0, 0.6, "rigid"),
    (9.0, 7.5, 2.0, "rigid"),
    (6.0, 5.0, 0.5, "nonrigid"),
)


def member_settings(i: int, seed0: int, kind: str = "2p") -> dict[str, object]:
    """Settings of member ``i``: seed ``seed0 + i`` and the ``i``-th entry of :data:`SWEEP`
    (``kind`` "2p"), :data:`SWEEP_1P` ("1p") or :data:`SWEEP_VOLUME` ("volume"), cycled."""
    sweep = {"1p": SWEEP_1P, "volume": SWEEP_VOLUME}.get(kind, SWEEP)
    radius, fr, decay, motion = sweep[i % len(sweep)]
    return {"name": f"m{i:03d}", "seed": seed0 + i, "radius": radius, "fr": fr, "decay": decay, "motion": motion}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kind", choices=["2p", "1p", "volume"], default="2p",
                    help="two-photon, one-photon or volume family")
    ap.add_argument("--n", type=int, default=8, help="number of members")
    ap.add_argument("--seed0", type=int, default=100, help="seed of the first member")
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--dims", type=int, nargs="+", default=None, help="H W (volume: Z H W); default 160 160 (4 160 160)")
    ap.add_argument("--channels", type=int, choices=[1, 2], default=1, help="2: add the structural channel")
    args = ap.parse_args(argv)
    if args.dims is None:
        args.dims = (4, 160, 160) if args.kind == "volume" else (160, 160)
    if len(args.dims) != (3 if args.kind == "volume" else 2):
        ap.error(f"--dims takes {'Z H W' if args.kind == 'volume' else 'H W'} for --kind {args.kind}")

    from somascope.simulate import one_photon, two_photon, volumetric, write_ground_truth_folder

    simulator = {"1p": one_photon, "volume": volumetric}.get(args.kind, two_photon)
    extra = {"channels": 2} if args.channels == 2 else {}
    args.out.mkdir(parents=True, exist_ok=True)
    members = []
    for i in range(args.n):
        m = member_settings(i, args.seed0, args.kind)
        t0 = time.perf_counter()
        sim = simulator(dims=tuple(args.dims), n_frames=args.frames, frame_rate=m["fr"], decay_time=m["decay"],
                        neuron_radius=m["radius"], motion=m["motion"], seed=m["seed"], preset="hard", **extra)
        write_ground_truth_folder(sim, args.out / str(m["name"]))
        n_active = int(((sim.kind == "soma") & sim.active).sum())
        m.update(frames=args.frames, dims=list(args.dims), n_components=sim.n_cells, n_active_somata=n_active,
                 median_snr=round(float(sim.params["snr"]), 2))
        members.append(m)
        print(f"{m['name']}: seed {m['seed']} radius {m['radius']} fr {m['fr']} decay {m['decay']} {m['motion']}, "
              f"{sim.n_cells} components ({n_active} active somata), median peak SNR of active somata "
              f"{m['median_snr']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    family = {"preset": "hard", "kind": args.kind, "members": members}
    if args.channels == 2:
        family["channels"] = 2
    (args.out / "family.json").write_text(json.dumps(family, indent=1) + "\n")
    print(f"wrote {len(members)} members and {args.out / 'family.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
