"""Write members of the hard two-photon family (``two_photon(preset="hard")``) into a folder, each in
the ``dev_sim`` layout (``movie.tif`` uint16 + ``gt.npz``), with ``family.json`` listing every member's
settings, so defaults can be tuned and scored (``benchmarks/score_gt.py``) across many seeds.

    .venv/bin/python benchmarks/make_hard_family.py OUT [--n 8] [--seed0 100] [--frames 1500] [--dims 160 160]

Members cycle through a small sweep: radius 5–10 px, frame rate 7.5–30 Hz, decay time 0.4–2.5 s
(fast and slow indicators), every fourth member non-rigid (2.5 px warp), the others rigid.
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


def member_settings(i: int, seed0: int) -> dict[str, object]:
    """Settings of member ``i``: seed ``seed0 + i`` and the ``i``-th entry of :data:`SWEEP` (cycled)."""
    radius, fr, decay, motion = SWEEP[i % len(SWEEP)]
    return {"name": f"m{i:03d}", "seed": seed0 + i, "radius": radius, "fr": fr, "decay": decay, "motion": motion}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=8, help="number of members")
    ap.add_argument("--seed0", type=int, default=100, help="seed of the first member")
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--dims", type=int, nargs=2, default=(160, 160))
    args = ap.parse_args(argv)

    from somascope.simulate import two_photon, write_ground_truth_folder

    args.out.mkdir(parents=True, exist_ok=True)
    members = []
    for i in range(args.n):
        m = member_settings(i, args.seed0)
        t0 = time.perf_counter()
        sim = two_photon(dims=tuple(args.dims), n_frames=args.frames, frame_rate=m["fr"], decay_time=m["decay"],
                         neuron_radius=m["radius"], motion=m["motion"], seed=m["seed"], preset="hard")
        write_ground_truth_folder(sim, args.out / str(m["name"]))
        m.update(frames=args.frames, dims=list(args.dims), n_components=sim.n_cells,
                 median_snr=round(float(sim.params["snr"]), 2))
        members.append(m)
        print(f"{m['name']}: seed {m['seed']} radius {m['radius']} fr {m['fr']} decay {m['decay']} {m['motion']}, "
              f"{sim.n_cells} components, median peak SNR {m['median_snr']} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    (args.out / "family.json").write_text(json.dumps({"preset": "hard", "members": members}, indent=1) + "\n")
    print(f"wrote {len(members)} members and {args.out / 'family.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
