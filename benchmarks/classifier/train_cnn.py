"""Train the shipped shape-classifier weights from the sets ``build_dataset.py`` wrote, and
measure them on held-out simulations and on ``dev_sim`` (never trained on).

    .venv/bin/python benchmarks/classifier/train_cnn.py --train /tmp/cls/train2p /tmp/cls/train2p_b \\
        --heldout /tmp/cls/held2p --dev /tmp/cls/dev2p --kind 2p --write

Crops are cut again from the stored footprints at the network's geometry
(:data:`somascope.evaluation.classifier.CROP_SIZE`), each component twice: at the neuron
radius the run was given and at that radius × a random factor in [0.8, 1.25] (a user's radius
is a guess). One movie in ``--val-every`` is kept for validation (the epoch with the lowest
validation loss is kept). Prints ROC AUC (soma vs not) per set, and, per held-out movie, the F1 of
the accept rule without and with the classifier for a grid of thresholds. With ``--write``:
the weights into the package (``weights_<kind>.npz``), reference inputs/outputs of the forward
pass for the tests (``tests/data/classifier_<kind>_reference.npz``), the record of what went in
(``benchmarks/classifier/card_<kind>.json``) and figures (``docs/img/classifier-<kind>-*.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]


def load_parts(dirs: list[Path]) -> list[dict[str, Any]]:
    """Every movie's part (``OUT/parts/*.npz``) under the given build folders."""
    parts = []
    for d in dirs:
        for f in sorted((d / "parts").glob("*.npz")):
            if f.name.endswith(".tmp.npz"):
                continue
            z = dict(np.load(f, allow_pickle=False))
            dims = tuple(int(v) for v in z["dims"])
            z["A"] = sp.csc_matrix((z.pop("A_data"), z.pop("A_indices"), z.pop("A_indptr")),
                                   shape=(dims[0] * dims[1], z["classes"].size))
            z["dims"] = dims
            z["settings"] = json.loads(str(z["settings"]))
            z["name"] = f.stem
            parts.append(z)
    return parts


def crops_of(parts: list[dict[str, Any]], *, jitter: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops, targets (soma or not) and movie numbers of every component of ``parts``."""
    from somascope.evaluation.classifier import component_crops

    rng = np.random.default_rng(seed)
    X, y, movie = [], [], []
    for i, p in enumerate(parts):
        target = np.isin(p["classes"], ("soma", "silent_soma"))
        scales = [1.0] + ([float(rng.uniform(0.8, 1.25))] if jitter else [])
        for s in scales:
            X.append(component_crops(p["A"], p["dims"], float(p["radius"]) * s))
            y.append(target)
            movie.append(np.full(target.size, i))
    return np.concatenate(X), np.concatenate(y), np.concatenate(movie)


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the Mann–Whitney statistic, ties counted half)."""
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def rule_f1(p: dict[str, Any], cnn: np.ndarray | None, min_cnn_thr: float, cnn_lowest: float) -> dict[str, float]:
    """F1 of the accept rule (default thresholds; with ``cnn`` the classifier's too) on one
    held-out movie, counting each active soma once (duplicates are false positives, as after
    the matching's one-to-one assignment)."""
    from somascope.evaluation import select_components
    from somascope.params import QualityParams

    q = QualityParams(min_cnn_thr=min_cnn_thr, cnn_lowest=min(cnn_lowest, min_cnn_thr), use_cnn=cnn is not None)
    valid = np.asarray(p["A"].sum(axis=0)).ravel() > 0
    good, _ = select_components(p["snr"], p["r"], cnn, quality=q, ecc=p["ecc"], area=p["area"], valid=valid)
    truth = p["truth_active_soma"]
    idx = p["soma_index"][good]
    tp = np.unique(idx[(idx >= 0) & truth[np.maximum(idx, 0)]]).size
    n_true = int(truth.sum())
    prec = tp / max(good.size, 1)
    rec = tp / max(n_true, 1)
    return {"f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "precision": prec, "recall": rec}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, nargs="+", required=True)
    ap.add_argument("--heldout", type=Path, nargs="*", default=[])
    ap.add_argument("--dev", type=Path, nargs="*", default=[])
    ap.add_argument("--kind", choices=["2p", "1p"], default="2p")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=8)
    ap.add_argument("--write", action="store_true", help="write weights, reference, card and figures")
    args = ap.parse_args(argv)

    from somascope.evaluation.classifier import CLASSES, CROP_SIZE, WINDOW_RADII
    from somascope.evaluation.classifier.cnn import forward
    from somascope.evaluation.classifier.train import train

    t0 = time.perf_counter()
    parts = load_parts(args.train)
    X, y, movie = crops_of(parts, jitter=True, seed=args.seed)
    val = movie % args.val_every == args.val_every - 1
    counts = {c: int(sum((p["classes"] == c).sum() for p in parts)) for c in CLASSES}
    print(f"{len(parts)} movies, {sum(p['classes'].size for p in parts)} components {counts}; "
          f"{X.shape[0]} crops ({int(y.mean() * 100)} % somata), {int(val.sum())} for validation "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    card: dict[str, Any] = {
        "kind": args.kind, "crop_size": CROP_SIZE, "window_radii": WINDOW_RADII, "seed": args.seed,
        "epochs": args.epochs, "movies": [p["settings"] for p in parts], "class_counts": counts,
        "n_components": int(sum(p["classes"].size for p in parts)), "n_crops": int(X.shape[0]),
        "target": "soma or silent_soma (somascope.evaluation.classifier.labels)",
        "augmentation": "each component at its radius and at radius x U(0.8, 1.25); random rotation/flip per batch",
    }

    def report(epoch: int, tl: float, vl: float) -> None:
        print(f"  epoch {epoch:2d}: train {tl:.4f}  validation {vl:.4f}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    res = train(X[~val], y[~val], val=(X[val], y[val]), epochs=args.epochs, seed=args.seed, card=card,
                progress=report)
    w = res.weights
    card["best_epoch"] = res.best_epoch
    card["train_loss"] = [round(v, 4) for v in res.train_loss]
    card["val_loss"] = [round(v, 4) for v in res.val_loss]
    card["auc"] = {"validation": roc_auc(forward(w, X[val]), y[val])}
    sets = [("heldout", args.heldout)] + [(d.name, [d]) for d in args.dev]   # each dev_sim movie on its own
    for name, dirs in sets:
        if not dirs:
            continue
        hp = load_parts(dirs)
        Xh, yh, mh = crops_of(hp, jitter=False, seed=args.seed)
        ph = forward(w, Xh)
        card["auc"][name] = roc_auc(ph, yh)
        card.setdefault("per_movie", {})
        grid = [(t, lo) for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95) for lo in (0.0, 0.05, 0.1, 0.2, 0.3)]
        for i, p in enumerate(hp):
            cnn = ph[mh == i]
            row = {"settings": p["settings"], "auc": roc_auc(cnn, yh[mh == i])}
            if "soma_index" in p:
                row["without"] = rule_f1(p, None, 1.0, 0.0)
                row["with"] = {f"{t}/{lo}": rule_f1(p, cnn, t, lo) for t, lo in grid}
            card["per_movie"][p["name"]] = row
    card = json.loads(json.dumps(card, default=float))
    w = type(w)(arrays=w.arrays, crop_size=w.crop_size, window_radii=w.window_radii, card=summary(card))
    print(json.dumps(card["auc"], indent=1))
    rows = {k: v for k, v in card.get("per_movie", {}).items() if "without" in v}
    if rows:
        keys = list(next(iter(rows.values()))["with"])
        base = np.median([v["without"]["f1"] for v in rows.values() if not v["settings"].get("dev")])
        med = {k: float(np.median([v["with"][k]["f1"] for v in rows.values() if not v["settings"].get("dev")]))
               for k in keys}
        best = max(med, key=med.get)
        print(f"held-out median F1 without the classifier {base:.3f}; with (min_cnn_thr/cnn_lowest) "
              + "  ".join(f"{k} {v:.3f}" for k, v in med.items()) + f"; best {best}")
        for name, v in rows.items():
            print(f"  {name}: AUC {v['auc']:.3f}  F1 without {v['without']['f1']:.3f} "
                  f"(P {v['without']['precision']:.3f})  with {best}: {v['with'][best]['f1']:.3f} "
                  f"(P {v['with'][best]['precision']:.3f})")
    if args.write:
        pkg = ROOT / "src" / "somascope" / "evaluation" / "classifier"
        w.save(pkg / f"weights_{args.kind}.npz")
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(X.shape[0], 64, replace=False)
        ref_in = X[pick].astype(np.float32)
        model_out = _torch_forward(w, ref_in)
        (ROOT / "tests" / "data").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(ROOT / "tests" / "data" / f"classifier_{args.kind}_reference.npz", crops=ref_in,
                            probabilities=model_out)
        (ROOT / "benchmarks" / "classifier" / f"card_{args.kind}.json").write_text(json.dumps(card, indent=1))
        _figures(w, X[val], y[val], ROOT / "docs" / "img", args.kind, res)
        print("wrote", pkg / f"weights_{args.kind}.npz")
    return 0


def summary(card: dict[str, Any]) -> dict[str, Any]:
    """What the weights file itself records of its training (the whole card is in
    ``benchmarks/classifier/card_<kind>.json``)."""
    seeds = [m["seed"] for m in card["movies"]]
    keep = ("kind", "crop_size", "window_radii", "seed", "epochs", "best_epoch", "class_counts", "n_components",
            "n_crops", "target", "augmentation", "auc")
    return {**{k: card[k] for k in keep if k in card}, "n_movies": len(seeds),
            "movie_seeds": f"{min(seeds)}-{max(seeds)}", "card": f"benchmarks/classifier/card_{card['kind']}.json"}


def _torch_forward(w: Any, crops: np.ndarray) -> np.ndarray:
    """The framework's own forward pass of ``w`` (the reference the NumPy pass is tested against)."""
    import torch

    from somascope.evaluation.classifier.train import from_weights

    model = from_weights(w).eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(crops[:, None]))[:, 0]).numpy().astype(np.float32)


def _figures(w: Any, X: np.ndarray, y: np.ndarray, out: Path, kind: str, res: Any) -> None:
    """Loss curves, ROC curve and example crops with their scores (validation set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from somascope.evaluation.classifier.cnn import forward

    p = forward(w, X)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(res.train_loss, label="training")
    ax[0].plot(res.val_loss, label="validation")
    ax[0].axvline(res.best_epoch, color="grey", ls=":")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss (weighted cross-entropy)")
    ax[0].legend()
    order = np.argsort(-p)
    tpr = np.cumsum(y[order]) / max(y.sum(), 1)
    fpr = np.cumsum(~y[order]) / max((~y).sum(), 1)
    ax[1].plot(np.r_[0, fpr], np.r_[0, tpr])
    ax[1].plot([0, 1], [0, 1], color="grey", ls=":")
    ax[1].set_xlabel("false positive rate")
    ax[1].set_ylabel("true positive rate")
    ax[1].set_title(f"validation ROC, AUC {roc_auc(p, y):.3f}")
    fig.tight_layout()
    fig.savefig(out / f"classifier-{kind}-training.png", dpi=110)
    plt.close(fig)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
    for row, label in enumerate((True, False)):
        idx = rng.choice(np.flatnonzero(y == label), 8, replace=False)
        for a, i in zip(axes[row], idx):
            a.imshow(X[i], cmap="gray", vmin=0, vmax=1)
            a.set_title(f"{p[i]:.2f}", fontsize=9)
            a.axis("off")
        axes[row, 0].text(-0.3, 0.5, "soma" if label else "not a soma", transform=axes[row, 0].transAxes,
                          ha="right", va="center", fontsize=10)
    fig.suptitle("validation crops and the classifier's probability of a soma", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"classifier-{kind}-examples.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
