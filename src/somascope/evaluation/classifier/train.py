"""Train the shape classifier with PyTorch (``pip install somascope[train]``).

The network is :data:`.cnn.ARCHITECTURE`, built here as a ``torch.nn.Sequential`` whose
parameters map one to one onto a :class:`.cnn.Weights` file, so what PyTorch trains the NumPy
forward pass (:func:`.cnn.forward`) computes, equal to 1e-5. Training: binary cross-entropy on
the logit, Adam, every batch turned by a random element of the square's symmetry group (the 4
rotations × flip: a soma has no orientation), seeded; the epoch with the lowest validation loss
is kept. Fine-tuning starts from given weights (:func:`fine_tune`, ``somascope
train-classifier``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cnn import LAYERS, Weights, _feature_side
from .crops import CROP_SIZE, WINDOW_RADII

__all__ = ["TrainResult", "build_model", "fine_tune", "require_torch", "to_weights", "train", "train_from_results"]

log = logging.getLogger(__name__)

#: Filters of the three convolutions and units of the hidden dense layer.
FILTERS = (8, 16, 32)
DENSE = 64


def require_torch() -> Any:
    """Import PyTorch, or say how to install it."""
    try:
        import torch
    except ImportError:
        raise ImportError("training the classifier needs PyTorch. Fix: pip install 'somascope[train]' "
                          "(the classifier's inference does not).") from None
    return torch


def build_model(crop_size: int = CROP_SIZE, filters: Sequence[int] = FILTERS, dense: int = DENSE) -> Any:
    """The network as a ``torch.nn.Sequential`` (logit output; the sigmoid is in the loss)."""
    torch = require_torch()
    nn = torch.nn
    f1, f2, f3 = (int(f) for f in filters)
    side = _feature_side(int(crop_size))
    if side < 1:
        raise ValueError(f"crop_size {crop_size} is too small for the network; use at least 12.")
    return nn.Sequential(
        nn.Conv2d(1, f1, 3), nn.ReLU(), nn.Conv2d(f1, f2, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(f2, f3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.25), nn.Linear(f3 * side * side, int(dense)), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(int(dense), 1),
    )


def _layers(model: Any) -> list[Any]:
    """The model's parameterised layers, in :data:`.cnn.LAYERS` order."""
    layers = [m for m in model if hasattr(m, "weight")]
    if len(layers) != len(LAYERS):
        raise ValueError(f"expected {len(LAYERS)} layers with weights, got {len(layers)}")
    return layers


def to_weights(model: Any, *, crop_size: int, window_radii: float = WINDOW_RADII,
               card: dict[str, Any] | None = None) -> Weights:
    """A :class:`.cnn.Weights` holding the model's parameters."""
    arrays: dict[str, np.ndarray] = {}
    for name, layer in zip(LAYERS, _layers(model)):
        arrays[f"{name}_w"] = layer.weight.detach().cpu().numpy().astype(np.float32).copy()
        arrays[f"{name}_b"] = layer.bias.detach().cpu().numpy().astype(np.float32).copy()
    return Weights(arrays=arrays, crop_size=int(crop_size), window_radii=float(window_radii), card=dict(card or {}))


def from_weights(w: Weights) -> Any:
    """A model initialised with the parameters of ``w``."""
    torch = require_torch()
    f = tuple(int(w.arrays[f"conv{i}_w"].shape[0]) for i in (1, 2, 3))
    model = build_model(w.crop_size, f, int(w.arrays["dense1_w"].shape[0]))
    with torch.no_grad():
        for name, layer in zip(LAYERS, _layers(model)):
            layer.weight.copy_(torch.from_numpy(w.arrays[f"{name}_w"]))
            layer.bias.copy_(torch.from_numpy(w.arrays[f"{name}_b"]))
    return model


@dataclass
class TrainResult:
    """Trained weights and the loss curve (one entry per epoch)."""

    weights: Weights
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0


def train(
    crops: np.ndarray,
    targets: np.ndarray,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    init: Weights | None = None,
    window_radii: float = WINDOW_RADII,
    card: dict[str, Any] | None = None,
    threads: int | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Fit the network to ``crops`` ``(N, S, S)`` float and ``targets`` ``(N,)`` bool (soma or not).

    ``val`` (crops, targets) picks the epoch to keep (lowest loss); without it the last epoch
    is kept. ``init`` starts from given weights (fine-tuning) instead of a seeded random start.
    Positive and negative examples are weighted to count equally.
    """
    torch = require_torch()
    x = np.asarray(crops, np.float32)
    y = np.asarray(targets, bool)
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[0] != y.size:
        raise ValueError(f"crops must be (N, S, S) with one target each; got {x.shape} and {y.shape}.")
    if y.all() or not y.any():
        raise ValueError("training needs examples of both kinds (somata and not); "
                         f"got {int(y.sum())} of {y.size} somata.")
    if init is not None and init.crop_size != x.shape[1]:
        raise ValueError(f"the crops are {x.shape[1]} px but the initial weights take {init.crop_size}.")
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(int(threads))
    rng = np.random.default_rng(seed)
    model = from_weights(init) if init is not None else build_model(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    pos_weight = torch.tensor([(~y).sum() / max(int(y.sum()), 1)], dtype=torch.float32)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    X, Y = torch.from_numpy(x[:, None]), torch.from_numpy(y.astype(np.float32))
    Xv = Yv = None
    if val is not None:
        Xv = torch.from_numpy(np.asarray(val[0], np.float32)[:, None])
        Yv = torch.from_numpy(np.asarray(val[1], bool).astype(np.float32))
    result = TrainResult(weights=to_weights(model, crop_size=x.shape[1], window_radii=window_radii, card=card))
    best = np.inf
    for epoch in range(int(epochs)):
        model.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        total = 0.0
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            xb = _dihedral(torch, X[idx], int(rng.integers(8)))
            opt.zero_grad()
            loss = loss_fn(model(xb)[:, 0], Y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        result.train_loss.append(total / len(y))
        if Xv is not None:
            model.eval()
            with torch.no_grad():
                vl = float(loss_fn(model(Xv)[:, 0], Yv))
            result.val_loss.append(vl)
            if vl < best:
                best, result.best_epoch = vl, epoch
                result.weights = to_weights(model, crop_size=x.shape[1], window_radii=window_radii, card=card)
        else:
            result.best_epoch = epoch
            result.weights = to_weights(model, crop_size=x.shape[1], window_radii=window_radii, card=card)
        if progress is not None:
            progress(epoch, result.train_loss[-1], result.val_loss[-1] if result.val_loss else float("nan"))
        log.info("epoch %d: train loss %.4f%s", epoch, result.train_loss[-1],
                 f", validation {result.val_loss[-1]:.4f}" if result.val_loss else "")
    return result


def fine_tune(crops: np.ndarray, targets: np.ndarray, init: Weights, *, epochs: int = 10, lr: float = 2e-4,
              seed: int = 0, val_fraction: float = 0.2, card: dict[str, Any] | None = None) -> TrainResult:
    """Continue training ``init`` on new examples (a user's curated components), with a lower
    learning rate; ``val_fraction`` of them (seeded) choose the epoch to keep."""
    x = np.asarray(crops, np.float32)
    y = np.asarray(targets, bool)
    rng = np.random.default_rng(seed)
    # a stratified split: each class gives val_fraction of its examples (none when it has < 5)
    val_idx = np.concatenate([
        rng.permutation(idx)[:int(round(val_fraction * idx.size))] if idx.size >= 5 else idx[:0]
        for idx in (np.flatnonzero(y), np.flatnonzero(~y))])
    fit_idx = np.setdiff1d(np.arange(y.size), val_idx)
    val = (x[val_idx], y[val_idx]) if y[val_idx].any() and not y[val_idx].all() else None
    if val is None:
        fit_idx = np.arange(y.size)
    return train(x[fit_idx], y[fit_idx], val=val, epochs=epochs, lr=lr, seed=seed, init=init,
                 window_radii=init.window_radii, card=card)


def _dihedral(torch: Any, x: Any, k: int) -> Any:
    """Element ``k`` (0–7) of the square's symmetry group applied to a batch ``(n, 1, S, S)``."""
    x = torch.rot90(x, k % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if k >= 4 else x


# -- training from pipeline results ----------------------------------------------------------------

@dataclass(frozen=True)
class _RunExamples:
    """The labelled footprints of one results file."""

    path: str
    A: Any                    # footprints of the examples: pixels × n (scipy.sparse CSC)
    dims: tuple[int, int]
    radius: tuple[float, float]
    is_1p: bool
    targets: np.ndarray       # (n,) bool: accepted (True) or rejected
    labels: str               # "manual" or "accepted/rejected"


def _results_file(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or ``path/results.h5`` for a ``somascope run`` folder."""
    from somascope.pipeline.results import RESULTS_FILE

    p = Path(path)
    return p / RESULTS_FILE if p.is_dir() else p


def _run_examples(path: str | os.PathLike[str], *, manual_only: bool) -> _RunExamples:
    """Footprints, geometry and targets of one pipeline results file (or run folder)."""
    import h5py

    from somascope.curation import manual_decisions, read_curation_group
    from somascope.pipeline import load_results

    p = _results_file(path)
    try:
        res = load_results(p)
    except FileNotFoundError:
        raise
    except OSError as exc:  # h5py: not HDF5 at all
        raise ValueError(f"{p} is not a somascope results file ({' '.join(str(exc).split())}). Fix: give the "
                         f"results.h5 (or the run folder) that `somascope run` wrote.") from None
    est = res.estimates
    params = res.params or est.params or {}
    data = params.get("data", {}) if isinstance(params, dict) else {}
    dims = tuple(int(d) for d in est.dims)
    if len(dims) != 2:
        raise ValueError(f"{p}: the shape classifier reads 2-D footprints; this run's frames are {dims}. "
                         "Fix: train on two-dimensional runs only.")
    if est.K == 0:
        raise ValueError(f"{p} holds no components: nothing to learn from. Fix: leave it out, or give runs "
                         "that found components.")
    if "neuron_radius" not in data:
        raise ValueError(f"{p} does not record the run's data.neuron_radius. Fix: give results written by "
                         "`somascope run`.")
    r = np.broadcast_to(np.asarray(data["neuron_radius"], np.float64), (2,))
    if manual_only:
        with h5py.File(p, "r") as fh:
            state, _ = read_curation_group(fh)
        decisions = {k: v for k, v in (manual_decisions(state) if state else {}).items() if 0 <= k < est.K}
        if not decisions:
            raise ValueError(f"{p} holds no manual accept/reject decision (--manual-only). Fix: curate it in "
                             "`somascope view` first, or train on the automatic split (drop --manual-only).")
        idx = np.array(sorted(decisions), np.int64)
        targets = np.array([decisions[k] == "accept" for k in idx.tolist()], bool)
        labels = "manual"
    else:
        if est.idx_components is None:
            raise ValueError(f"{p} has no accept/reject split (the quality stage did not run). Fix: give "
                             "results of a complete `somascope run`.")
        good = np.asarray(est.accepted_indices, np.int64)
        bad = np.asarray(est.rejected_indices, np.int64)
        idx = np.concatenate([good, bad])
        targets = np.concatenate([np.ones(good.size, bool), np.zeros(bad.size, bool)])
        labels = "accepted/rejected"
    A = est.A.tocsc()[:, idx]
    return _RunExamples(path=str(p), A=A, dims=(dims[0], dims[1]), radius=(float(r[0]), float(r[1])),
                        is_1p=bool(data.get("is_1p", False)), targets=targets, labels=labels)


def train_from_results(
    results: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    init: str | os.PathLike[str] | None = None,
    epochs: int = 10,
    manual_only: bool = False,
    seed: int = 0,
) -> TrainResult:
    """Train the shape classifier on the components of pipeline runs and write a weights file.

    Each results file (``somascope run``'s ``results.h5``, or its run folder) gives its
    footprints ``A`` (``pixels × K``), frame shape ``(H, W)`` and the run's
    ``data.neuron_radius`` (px); every footprint becomes a crop (:func:`.crops.component_crops`)
    at the geometry of the starting weights, with target "soma" for an accepted component
    (``idx_components``) and "not" for a rejected one (``idx_components_bad``). With
    ``manual_only``, only the components a person decided on (the file's ``/curation`` group,
    ``somascope view``) are examples, with their decision as the target. Empty footprints are
    left out.

    Training starts from ``init`` (a weights ``.npz``), else from the weights shipped for the
    runs' modality (``data.is_1p``), and fine-tunes them (:func:`fine_tune`); where none ship,
    the network is trained from a seeded random start (:func:`train`, ``CROP_SIZE`` crops). A
    seeded fifth of the examples (with 10 or more) picks the epoch kept. The weights' ``card``
    records the files, the number of examples of each kind and the training settings; the file
    is written atomically at ``out`` (its folder is created).

    Parameters
    ----------
    results
        Results files or run folders, all of one modality.
    out
        The weights file to write (``.npz``).
    init
        Weights to start from; None: the shipped ones.
    epochs
        Passes over the examples.
    manual_only
        Learn from the manual decisions only.
    seed
        Seed of the validation split, the initialisation and the batch order.

    Returns
    -------
    TrainResult
        The weights written (``weights.source`` is ``out``), the loss per epoch, the epoch kept.

    Raises
    ------
    ImportError
        PyTorch is not installed (:func:`require_torch`).
    ValueError
        A file is not a results file, holds no components (or no manual decision with
        ``manual_only``), the runs mix one- and two-photon data, ``out`` is a folder, or the
        examples are all of one kind.
    """
    import dataclasses
    import datetime as _dt

    from somascope import __version__

    from .cnn import ARCHITECTURE, load_weights, shipped_weights
    from .crops import component_crops

    require_torch()
    paths = [Path(p) for p in results]
    if not paths:
        raise ValueError("give at least one results file (somascope run's results.h5) to train on.")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the weights file to write, e.g. {out / 'weights.npz'}.")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be at least 1; got {epochs}.")
    runs = [_run_examples(p, manual_only=manual_only) for p in paths]
    kinds = {r.is_1p for r in runs}
    if len(kinds) > 1:
        one = [r.path for r in runs if r.is_1p]
        two = [r.path for r in runs if not r.is_1p]
        raise ValueError(f"the runs mix one-photon ({', '.join(one)}) and two-photon ({', '.join(two)}) data; "
                         "one set of weights serves one modality. Fix: train each modality separately.")
    modality = "1p" if kinds.pop() else "2p"
    if init is not None:
        start: Weights | None = load_weights(init)
    else:
        start = load_weights(None, modality=modality) if shipped_weights(modality) is not None else None
    size = start.crop_size if start is not None else CROP_SIZE
    window = start.window_radii if start is not None else WINDOW_RADII

    crops_list, target_list, files = [], [], []
    for r in runs:
        c = component_crops(r.A, r.dims, r.radius, size=size, window_radii=window)
        keep = c.reshape(c.shape[0], -1).any(axis=1)
        crops_list.append(c[keep])
        target_list.append(r.targets[keep])
        files.append({"path": r.path, "labels": r.labels, "n_soma": int(r.targets[keep].sum()),
                      "n_not": int((~r.targets[keep]).sum()), "n_empty_left_out": int((~keep).sum()),
                      "neuron_radius_px": list(r.radius)})
    x = np.concatenate(crops_list)
    y = np.concatenate(target_list)
    if y.size == 0:
        raise ValueError(f"every footprint of {', '.join(r.path for r in runs)} is empty: nothing to learn from.")
    if y.all() or not y.any():
        what = "manual decisions" if manual_only else "components"
        raise ValueError(f"the {what} of {', '.join(r.path for r in runs)} are all "
                         f"{'accepted' if y.all() else 'rejected'} ({y.size} examples): training needs both "
                         "somata and non-somata. Fix: add runs (or curate components) of the other kind.")
    card: dict[str, Any] = {
        "architecture": ARCHITECTURE,
        "modality": modality,
        "trained_from": files,
        "n_examples": int(y.size),
        "n_soma": int(y.sum()),
        "n_not": int((~y).sum()),
        "labels": "manual" if manual_only else "accepted/rejected",
        "init": (start.source or "shipped") if start is not None else "random",
        "init_card": start.card if start is not None else {},
        "epochs": int(epochs),
        "seed": int(seed),
        "crop_size": int(size),
        "window_radii": float(window),
        "somascope_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    log.info("training the classifier on %d examples (%d somata) from %d file(s), %s start",
             y.size, int(y.sum()), len(runs), card["init"])
    if start is not None:
        result = fine_tune(x, y, start, epochs=int(epochs), seed=int(seed), card=card)
    else:
        rng = np.random.default_rng(int(seed))
        order = rng.permutation(y.size)
        n_val = int(round(0.2 * y.size)) if y.size >= 10 else 0
        val_idx, fit_idx = order[:n_val], order[n_val:]
        val = (x[val_idx], y[val_idx]) if n_val and y[val_idx].any() and not y[val_idx].all() else None
        if y[fit_idx].all() or not y[fit_idx].any():  # the split took every example of one kind
            val, fit_idx = None, order
        result = train(x[fit_idx], y[fit_idx], val=val, epochs=int(epochs), seed=int(seed),
                       window_radii=window, card=card)
    card["best_epoch"] = int(result.best_epoch)
    card["train_loss"] = [float(v) for v in result.train_loss]
    card["val_loss"] = [float(v) for v in result.val_loss]
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = dataclasses.replace(result.weights, card=card, source=str(out))
    weights.save(out)
    result.weights = weights
    return result
