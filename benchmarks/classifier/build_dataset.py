"""Build the shape classifier's training set from the project's own simulations, reproducibly.

Each movie's settings are drawn from a generator seeded by its seed, so one seed always gives
the same movie. For every movie: simulate it (``somascope.simulate``), write it in the
``dev_sim`` layout, run ``somascope run`` on it the way a user would (``--fr``, ``--radius``, and
``--decay-time`` for slow indicators; ``--1p`` for one-photon), label *every* component the run
found, before the quality tests, against the truth
(:func:`somascope.evaluation.classifier.label_components`), and keep its neuron-scaled crop
(:func:`~somascope.evaluation.classifier.component_crops`) and its footprint (so crops of another
geometry can be cut later) with its class, its trace SNR,
r-value and whether the rule without the classifier accepted it.

    .venv/bin/python benchmarks/classifier/build_dataset.py OUT --kind 2p --n 44 --seed0 1000

writes ``OUT/parts/<movie>.npz`` (one per movie; a rerun skips the movies already done) and
``OUT/card.json`` (every movie's settings, counts per class, time, the code's version).
``--dev`` labels the ``../shared/data/dev_sim`` movies instead (the check; never trained on).
Seeds: the shipped two-photon weights were trained on seeds 1000–1043 and 1100–1113
(``--n 44 --seed0 1000`` and ``--n 14 --seed0 1100``) and measured on 2000–2009; the one-photon
movies of ``docs/classifier.md`` are 3000–3006; the hard family of ``docs/accuracy.md`` uses
100–107, 200–201 and 300 (never trained on).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEV_SIM = ROOT.parent / "shared" / "data" / "dev_sim"
RATES = (7.5, 10.0, 15.0, 20.0, 30.0)


def movie_settings(kind: str, seed: int) -> dict[str, Any]:
    """The settings of the movie of ``seed`` (drawn from a generator seeded by it)."""
    rng = np.random.default_rng([seed, 7])
    s: dict[str, Any] = {"name": f"{kind}-{seed}", "kind": kind, "seed": int(seed),
                         "fr": float(rng.choice(RATES)), "decay": round(float(rng.uniform(0.4, 2.5)), 2),
                         "dims": [256, 256], "frames": 700}
    if kind == "2p":
        s["radius"] = round(float(rng.uniform(4.5, 11.0)), 1)
        s["preset"] = "hard" if rng.random() < 0.8 else "easy"
        s["motion"] = "nonrigid" if rng.random() < 0.25 else "rigid"
    else:
        s["radius"] = round(float(rng.uniform(5.0, 12.0)), 1)
        s["decay"] = round(float(rng.uniform(0.4, 2.0)), 2)
        s["preset"] = "hard"
        s["motion"] = "rigid"
    return s


def simulate_movie(s: dict[str, Any], folder: Path) -> None:
    """Write the movie of settings ``s`` into ``folder`` (``movie.tif`` + ``gt.npz``)."""
    from somascope.simulate import one_photon, two_photon, write_ground_truth_folder

    common = dict(dims=tuple(s["dims"]), n_frames=s["frames"], frame_rate=s["fr"], decay_time=s["decay"],
                  neuron_radius=s["radius"], motion=s["motion"], seed=s["seed"])
    if s["kind"] == "1p":
        sim = one_photon(**common, preset="hard")
    elif s["preset"] == "hard":
        sim = two_photon(**common, preset="hard")
    else:   # the easy generator: cells at about a third of the hard family's density
        area = s["dims"][0] * s["dims"][1]
        n_cells = int(area / (1200.0 * (s["radius"] / 6.0) ** 2))
        sim = two_photon(**common, n_cells=n_cells, vignette_strength=0.2)
    write_ground_truth_folder(sim, folder)


def label_run(run: Path, gt_path: Path, radius: float) -> dict[str, np.ndarray]:
    """Crops, classes and quality figures of every component of a ``somascope run`` folder."""
    from somascope.evaluation import area_ratio, eccentricity, footprint_masks
    from somascope.evaluation.classifier import component_crops, frame_offset, label_components
    from somascope.pipeline import load_results

    res = load_results(run / "results.h5")
    est = res.estimates
    gt = np.load(gt_path, allow_pickle=True)
    dims = tuple(est.dims)
    mean = res.summary.get("mean")
    if mean is None:
        mean = res.motion["mean_image"]
    offset = frame_offset(mean, gt["mean_clean"])
    labels = label_components(est.A, dims, gt, radius=radius, offset=offset)
    masks = footprint_masks(est.A, dims)
    accepted = np.zeros(est.K, bool)
    accepted[est.accepted_indices] = True
    A = est.A.tocsc().astype(np.float32)
    return {"crops": component_crops(est.A, dims, radius).astype(np.float16), "classes": labels.classes,
            "A_data": A.data, "A_indices": A.indices, "A_indptr": A.indptr, "dims": np.asarray(dims),
            "radius": np.float64(radius),
            "distance": labels.distance.astype(np.float32), "soma_index": labels.soma_index,
            "truth_active_soma": np.asarray(gt["is_soma"], bool) & np.asarray(gt["is_active"], bool), "snr": np.asarray(est.SNR_comp, np.float32),
            "r": np.asarray(est.r_values, np.float32), "accepted": accepted,
            "ecc": eccentricity(masks, dims).astype(np.float32),
            "area": area_ratio(masks, dims, radius).astype(np.float32), "offset": np.asarray(offset)}


def run_movie(movie: Path, out: Path, s: dict[str, Any], engine: Any) -> float:
    """``somascope run`` on ``movie`` as a user would; returns the wall time, s."""
    from somascope.pipeline import run

    overrides = {"data.is_1p": True} if s["kind"] == "1p" else None
    decay = s["decay"] if s["decay"] >= 1.0 else None
    t0 = time.perf_counter()
    run(movie, out, fr=s["fr"], radius=s["radius"], decay_time=decay, overrides=overrides, engine=engine,
        progress=False, force=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kind", choices=["2p", "1p"], default="2p")
    ap.add_argument("--n", type=int, default=48, help="number of movies")
    ap.add_argument("--seed0", type=int, default=1000)
    ap.add_argument("--dev", action="store_true", help="label the dev_sim movie of --kind instead")
    ap.add_argument("--keep-movies", action="store_true", help="keep each movie and run folder")
    args = ap.parse_args(argv)

    import somascope
    from somascope.parallel import Engine

    parts = args.out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    card_path = args.out / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {"movies": {}}
    card["somascope"] = somascope.__version__
    if args.dev:   # run as the issues' users did: dev_2p --fr 15 --radius 6, dev_1p --fr 20 --radius 10 --1p
        fr, radius = (15.0, 6.0) if args.kind == "2p" else (20.0, 10.0)
        todo = [{"name": f"dev_{args.kind}", "kind": args.kind, "dev": True, "fr": fr, "radius": radius, "decay": 0.0}]
    else:
        todo = [movie_settings(args.kind, args.seed0 + i) for i in range(args.n)]
    with Engine("local", n_workers=2) as engine:
        for s in todo:
            part = parts / f"{s['name']}.npz"
            if part.is_file():
                continue
            work = args.out / "movies" / s["name"]
            t0 = time.perf_counter()
            if s.get("dev"):
                folder = DEV_SIM / s["name"]
            else:
                folder = work / "data"
                simulate_movie(s, folder)
            t_sim = time.perf_counter() - t0
            t_run = run_movie(folder / "movie.tif", work / "run", s, engine)
            arrays = label_run(work / "run", folder / "gt.npz", s["radius"])
            tmp = part.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays, settings=json.dumps(s))
            tmp.replace(part)
            classes, counts = np.unique(arrays["classes"], return_counts=True)
            s.update(n_components=int(arrays["classes"].size), classes=dict(zip(classes.tolist(), counts.tolist())),
                     n_accepted=int(arrays["accepted"].sum()), seconds_simulate=round(t_sim, 1),
                     seconds_run=round(t_run, 1))
            card["movies"][s["name"]] = s
            card_path.write_text(json.dumps(card, indent=1))
            print(f"{s['name']}: {s['n_components']} components {s['classes']} sim {t_sim:.0f} s run {t_run:.0f} s",
                  flush=True)
            if not args.keep_movies:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
