"""Label CNMF components against a ground truth: the training targets of the shape classifier.

Every component gets one class, none is dropped. Masks are the matching's
(:func:`somascope.metrics.binarise_footprints`: pixels ≥ 0.2 × the footprint's maximum, largest
connected piece), distances are Jaccard distances, and a component is a soma when its mask is
within :data:`MATCH_DISTANCE` of a true soma's (the ``somascope.metrics`` / ``dev_sim`` rule).
The other classes say what the component is instead, in this order of precedence:

- ``"soma"``: within the distance of an active soma (a second component on the same soma
  too: its shape is a soma's, and the duplicate test of the accept rule handles the pair);
- ``"silent_soma"``: within the distance of a soma that never fires (its shape is a soma's; the
  component took its pixels from something else);
- ``"merged"``: covers at least :data:`MERGED_COVER` of two or more somata (and matches none:
  two equal touching somata taken as one are within 0.5 of each, so such a pair is a ``"soma"``,
  as the scoring counts it);
- ``"dendrite"``: at least :data:`PIECE_SHARE` of its mask lies on a process (dendrite segment);
- ``"fragment"``: at least :data:`PIECE_SHARE` of its mask lies on one soma, too little of it
  to match;
- ``"neuropil"``: larger than :data:`NEUROPIL_AREA` neuron areas (out-of-focus neuropil,
  background);
- ``"noise"``: the rest.

The binary target is :attr:`Labels.is_soma` (``"soma"`` or ``"silent_soma"``): what the
classifier can see in a footprint is its shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["CLASSES", "Labels", "frame_offset", "label_components"]

#: Class names, in the order of precedence of the rule above.
CLASSES = ("soma", "silent_soma", "merged", "dendrite", "fragment", "neuropil", "noise")
#: Jaccard distance below which a component matches a true footprint (the dev_sim rule).
MATCH_DISTANCE = 0.7
#: Fraction of a true soma's mask a component must cover to count it in a merged pair.
MERGED_COVER = 0.3
#: Fraction of a component's mask on one true footprint that makes it a piece of it.
PIECE_SHARE = 0.5
#: Mask area, in neuron areas (π r²), above which an unmatched component is neuropil.
NEUROPIL_AREA = 1.5


@dataclass(frozen=True)
class Labels:
    """Classes of ``K`` components.

    Attributes
    ----------
    classes : ``(K,)`` str, one of :data:`CLASSES`.
    distance : ``(K,)`` float, Jaccard distance to the nearest true soma (1 without overlap).
    soma_index : ``(K,)`` int, index in the truth of that soma when the component matches it
        (class ``"soma"`` or ``"silent_soma"``), else -1.
    """

    classes: np.ndarray
    distance: np.ndarray
    soma_index: np.ndarray

    @property
    def is_soma(self) -> np.ndarray:
        """``(K,)`` bool: the classifier's target (``"soma"`` or ``"silent_soma"``)."""
        return np.isin(self.classes, ("soma", "silent_soma"))

    def counts(self) -> dict[str, int]:
        """Number of components of each class."""
        return {c: int((self.classes == c).sum()) for c in CLASSES}


def label_components(
    A: Any,
    dims: Sequence[int],
    truth: Mapping[str, Any],
    *,
    radius: float,
    offset: Sequence[float] = (0.0, 0.0),
) -> Labels:
    """Class of every component of ``A`` against a ground truth.

    Parameters
    ----------
    A
        Footprints ``pixels × K`` (pixels in C order of ``dims``).
    dims
        Frame shape ``(H, W)``.
    truth
        The ``dev_sim`` ground-truth layout (a ``gt.npz`` or a dict): ``A`` ``(N, H, W)`` true
        footprints, ``is_soma`` and ``is_active`` ``(N,)`` bool.
    radius
        Neuron radius in pixels (the neuropil rule's unit area).
    offset
        ``(dy, dx)`` px of the components' frame relative to the truth's (a cell at ``p`` in
        the truth is at ``p + offset`` in ``A``); :func:`frame_offset` finds it.
    """
    from somascope.metrics import binarise_footprints, shift_footprints

    dims = tuple(int(d) for d in dims)
    A_gt = np.asarray(truth["A"], np.float32)
    if A_gt.shape[1:] != dims:
        raise ValueError(f"the truth's footprints are {A_gt.shape[1:]} px but the components' frames {dims}.")
    N = A_gt.shape[0]
    is_soma = np.asarray(truth["is_soma"], bool)
    active = np.asarray(truth["is_active"], bool)
    ref = shift_footprints(sp.csc_matrix(A_gt.reshape(N, -1).T), dims, offset)
    est = sp.csc_matrix(A, dtype=np.float64)
    K = est.shape[1]
    B_ref = binarise_footprints(ref, dims, 0.2, largest_piece=True)
    B_est = binarise_footprints(est, dims, 0.2, largest_piece=True)
    size_ref = np.asarray(B_ref.sum(axis=0)).ravel()
    size_est = np.asarray(B_est.sum(axis=0)).ravel()
    inter = (B_est.T @ B_ref).toarray()                       # K × N
    union = size_est[:, None] + size_ref[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where(inter > 0, 1.0 - inter / union, 1.0)
        cover = np.where(size_ref[None, :] > 0, inter / size_ref[None, :], 0.0)   # of each true footprint
        share = np.where(size_est[:, None] > 0, inter / size_est[:, None], 0.0)   # of the component

    def nearest(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance to, and index of, the nearest true footprint among ``sel``."""
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            return np.ones(K), np.full(K, -1)
        return dist[:, idx].min(axis=1), idx[np.argmin(dist[:, idx], axis=1)]

    (d_active, i_active), (d_silent, i_silent) = nearest(is_soma & active), nearest(is_soma & ~active)
    classes = np.full(K, "noise", dtype="<U11")
    area = math.pi * float(radius) ** 2
    for k in range(K):
        if size_est[k] == 0:
            continue
        if d_active[k] < MATCH_DISTANCE:
            classes[k] = "soma"
        elif d_silent[k] < MATCH_DISTANCE:
            classes[k] = "silent_soma"
        elif (cover[k, is_soma] >= MERGED_COVER).sum() >= 2:
            classes[k] = "merged"
        elif (~is_soma).any() and share[k, ~is_soma].max() >= PIECE_SHARE:
            classes[k] = "dendrite"
        elif is_soma.any() and share[k, is_soma].max() >= PIECE_SHARE:
            classes[k] = "fragment"
        elif size_est[k] > NEUROPIL_AREA * area:
            classes[k] = "neuropil"
    soma_index = np.where(classes == "soma", i_active, np.where(classes == "silent_soma", i_silent, -1))
    return Labels(classes=classes, distance=np.minimum(d_active, d_silent),
                  soma_index=soma_index.astype(np.int64))


def frame_offset(image: np.ndarray, truth_mean: np.ndarray, max_shift: int = 15) -> np.ndarray:
    """Offset ``(dy, dx)`` px (sub-pixel) of a run's frame relative to the truth's: ``image(p) ≈
    truth_mean(p - offset)``. By phase correlation of the run's mean image with the truth's
    motion-free mean image (both ``H × W``; their intensity scales do not matter)."""
    from somascope.motion import register_frame

    image = np.nan_to_num(np.asarray(image, dtype=np.float32))
    truth_mean = np.asarray(truth_mean, dtype=np.float32)
    m = int(min(max_shift, min(image.shape) // 4 - 1))
    shift, _ = register_frame(image, truth_mean, max_shifts=max(m, 1), upsample_factor=20)
    return np.asarray(shift, dtype=np.float64)
