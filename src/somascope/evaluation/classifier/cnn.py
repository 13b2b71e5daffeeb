"""The shape classifier's forward pass (NumPy and Numba, no training framework), and its weights.

The network (``ARCHITECTURE``), on a ``1 × S × S`` crop (:func:`.crops.component_crops`):

    conv 3×3, 8 filters → ReLU → conv 3×3, 16 → ReLU → max-pool 2 →
    conv 3×3, 32 → ReLU → max-pool 2 → dense 64 → ReLU → dense 1 → sigmoid

Convolutions are "valid" (no padding) cross-correlations, as in PyTorch's ``Conv2d``; the
dense layer reads the feature maps flattened in ``(channel, row, column)`` order. A weights
file is an ``.npz`` with ``conv1_w (f1, 1, 3, 3)``, ``conv1_b (f1,)``, ``conv2_w (f2, f1, 3, 3)``,
``conv2_b``, ``conv3_w (f3, f2, 3, 3)``, ``conv3_b``, ``dense1_w (u, f3·s²)``, ``dense1_b``,
``dense2_w (1, u)``, ``dense2_b (1,)`` (PyTorch's layouts; the shipped network has f = 8, 16,
32 and u = 64, and ``s`` is the side of the last feature maps) and the crop geometry it was
trained with, ``crop_size`` and ``window_radii``; ``card`` (JSON text) says what it was trained
on. The shipped files are ``weights_2p.npz`` (and ``weights_1p.npz`` where one-photon weights
measured better than none, ``docs/classifier.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARCHITECTURE", "LAYERS", "Weights", "forward", "load_weights", "predict", "shipped_weights",
           "weights_digest"]

#: The layers, in order, with their parameter arrays' names.
LAYERS = ("conv1", "conv2", "conv3", "dense1", "dense2")
ARCHITECTURE = "conv3x3(8)-relu-conv3x3(16)-relu-maxpool2-conv3x3(32)-relu-maxpool2-dense(64)-relu-dense(1)-sigmoid"


@dataclass(frozen=True)
class Weights:
    """Parameters of the network and the crop geometry they were trained with."""

    arrays: dict[str, np.ndarray]
    crop_size: int
    window_radii: float
    card: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` (atomically: a temporary name renamed when complete)."""
        from somascope.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **self.arrays, crop_size=np.int64(self.crop_size),
                                    window_radii=np.float64(self.window_radii), card=np.str_(json.dumps(self.card)))
        return path


def shipped_weights(modality: str = "2p") -> Path | None:
    """Path of the weights shipped for ``modality`` (``"2p"`` or ``"1p"``), or None if none ship."""
    if modality not in ("2p", "1p"):
        raise ValueError(f"modality must be '2p' or '1p'; got {modality!r}.")
    ref = resources.files("somascope.evaluation.classifier") / f"weights_{modality}.npz"
    return Path(str(ref)) if ref.is_file() else None


def weights_digest(path: str | os.PathLike[str] | None, *, modality: str = "2p") -> str | None:
    """SHA-256 of the weights file ``path`` (None: the one shipped for ``modality``), so that a
    result can say which classifier scored it; None when there is no such file."""
    import hashlib

    p = shipped_weights(modality) if path is None else Path(path)
    if p is None or not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()


def load_weights(path: str | os.PathLike[str] | None = None, *, modality: str = "2p") -> Weights:
    """Read a weights file (None: the shipped one for ``modality``) and check its shapes."""
    if path is None:
        path = shipped_weights(modality)
        if path is None:
            raise FileNotFoundError(f"no classifier weights ship for {modality} data. Fix: set "
                                    f"quality.use_cnn=false, or train weights (somascope train-classifier) "
                                    f"and give them as quality.cnn_weights.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path} do not exist. Fix: give the .npz that "
                                f"`somascope train-classifier` wrote (quality.cnn_weights).")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a classifier weights file (.npz): {exc}") from None
    names = [f"{layer}_{p}" for layer in LAYERS for p in ("w", "b")]
    missing = [n for n in names + ["crop_size", "window_radii"] if n not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a somascope classifier weights file.")
    arrays = {n: np.asarray(data[n], np.float32) for n in names}
    size = int(data["crop_size"])
    f1, f2, f3 = (arrays[f"conv{i}_w"].shape[0] for i in (1, 2, 3))
    d = arrays["dense1_w"].shape[0]
    expect = {"conv1_w": (f1, 1, 3, 3), "conv2_w": (f2, f1, 3, 3), "conv3_w": (f3, f2, 3, 3),
              "dense1_w": (d, f3 * _feature_side(size) ** 2), "dense2_w": (1, d)}
    expect.update({f"{layer}_b": (expect[f"{layer}_w"][0],) for layer in LAYERS})
    for n, shape in expect.items():
        if arrays[n].shape != shape:
            raise ValueError(f"{path}: {n} has shape {arrays[n].shape}, the network needs {shape} "
                             f"(crop_size {size}).")
    card = json.loads(str(data["card"])) if "card" in data else {}
    return Weights(arrays=arrays, crop_size=size, window_radii=float(data["window_radii"]), card=card,
                   source=str(path))


def forward(weights: Weights, crops: np.ndarray) -> np.ndarray:
    """Probability of being a soma for each crop: ``crops`` ``(N, S, S)`` → ``(N,)`` float32."""
    x = np.asarray(crops, np.float32)
    if x.ndim != 3 or x.shape[1:] != (weights.crop_size, weights.crop_size):
        raise ValueError(f"crops must be (N, {weights.crop_size}, {weights.crop_size}); got {x.shape}.")
    return _sigmoid(_logits(weights.arrays, x))


def predict(A: Any, dims: Sequence[int], radius: float | Sequence[float], weights: Weights | None = None,
            *, radii: Sequence[float] | None = None) -> np.ndarray:
    """Classifier probability ``(K,)`` of every footprint of ``A`` (``pixels × K``) being a soma.

    ``radius`` is the neuron radius in pixels (one number or ``(ry, rx)``); with ``radii``
    (``quality.gSig_range``), the footprints are looked at at each of those radii instead and
    the highest probability kept (for fields whose cells vary in size).
    """
    from .crops import component_crops

    w = load_weights() if weights is None else weights
    scales = [radius] if not radii else list(radii)
    best: np.ndarray | None = None
    for r in scales:
        p = forward(w, component_crops(A, dims, r, size=w.crop_size, window_radii=w.window_radii))
        best = p if best is None else np.maximum(best, p)
    assert best is not None
    return best


def _feature_side(size: int) -> int:
    """Side of the last feature maps for crops of side ``size``."""
    return ((size - 4) // 2 - 2) // 2


def _logits(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Network output before the sigmoid, ``x`` ``(n, S, S)`` float32 → ``(n,)`` (Numba kernel,
    one crop per thread; the PyTorch layouts are rearranged channels-last for it)."""
    from ._kernels import logits

    def hwio(name: str) -> np.ndarray:
        return np.ascontiguousarray(w[name].transpose(2, 3, 1, 0))

    f3 = w["conv3_w"].shape[0]
    units = w["dense1_w"].shape[0]
    side = int(round(np.sqrt(w["dense1_w"].shape[1] // f3)))
    d1 = np.ascontiguousarray(w["dense1_w"].reshape(units, f3, side, side).transpose(2, 3, 1, 0))
    return logits(np.ascontiguousarray(x, dtype=np.float32), hwio("conv1_w"), w["conv1_b"], hwio("conv2_w"),
                  w["conv2_b"], hwio("conv3_w"), w["conv3_b"], d1, w["dense1_b"],
                  np.ascontiguousarray(w["dense2_w"][0]), w["dense2_b"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)
