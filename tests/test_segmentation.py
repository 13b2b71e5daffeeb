"""Cell bodies from a static structural image (:mod:`somascope.segmentation`): ground-truth
labelled somata recovered from the simulator's structural channel (nuclear and cytoplasmic
markers, 2-D and 3-D), NaN borders, empty images, bad input, and the seed masks' invariants."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from somascope.segmentation import MIN_CONTRAST, seed_masks, segment_cells
from somascope.simulate.hard import simulate_hard
from somascope.simulate.hard_volume import simulate_hard_volume
from somascope.simulate.structural import StructuralSettings


def _structural(marker: str, seed: int, *, volume: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean image, centres of the labelled somata, radius per axis)`` of a small hard movie's
    structural channel (40 frames, no motion)."""
    common: dict[str, Any] = dict(n_frames=40, frame_rate=30.0, decay_time=0.4, motion=None, seed=seed, channels=2,
                                  structural=StructuralSettings(marker=marker))
    if volume:
        sim = simulate_hard_volume(dims=(6, 72, 72), neuron_radius=(2.0, 5.0, 5.0), **common)
        radius = np.array([2.0, 5.0, 5.0])
    else:
        sim = simulate_hard(dims=(112, 112), neuron_radius=6.0, **common)
        radius = np.array([6.0, 6.0])
    truth = sim.extra["labelled"] & (sim.kind == "soma")
    return np.asarray(sim.extra["structural"]).mean(axis=0), sim.centers[truth], radius


def _match(labels: np.ndarray, centres: np.ndarray, radius: np.ndarray, tol: float = 0.6) -> tuple[int, int, int]:
    """``(true positives, labelled somata, labels)``: one-to-one matching of label centroids to
    ``centres`` within ``tol`` radii (per axis)."""
    K = int(labels.max())
    if K == 0 or len(centres) == 0:
        return 0, len(centres), K
    found = np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, np.arange(1, K + 1))).reshape(K, -1)
    dist = np.linalg.norm((centres[:, None] - found[None]) / radius, axis=2)
    r, c = linear_sum_assignment(np.where(dist <= tol, dist, 1e6))
    return int((dist[r, c] <= tol).sum()), len(centres), K


@pytest.mark.parametrize("marker", ["nuclear", "cytoplasmic"])
def test_recovers_labelled_somata_2d(marker: str) -> None:
    tp = n = k = 0
    for seed in (1, 2):
        image, centres, radius = _structural(marker, seed)
        labels = segment_cells(image, 6.0)
        assert labels.dtype == np.int32 and labels.shape == image.shape
        assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))  # 0..K, none missing
        a, b, c = _match(labels, centres, radius)
        tp, n, k = tp + a, n + b, k + c
    assert n >= 30
    assert tp / n >= 0.9, f"recall {tp}/{n}"
    assert tp / k >= 0.9, f"precision {tp}/{k}"


@pytest.mark.parametrize("marker", ["nuclear", "cytoplasmic"])
def test_recovers_labelled_somata_3d(marker: str) -> None:
    image, centres, radius = _structural(marker, 4, volume=True)
    labels = segment_cells(image, radius)
    tp, n, k = _match(labels, centres, radius)
    assert n >= 10
    assert tp / n >= 0.85 and tp / k >= 0.85, (tp, n, k)
    masks = seed_masks(labels, radius)
    assert masks.shape == (image.size, k)


def test_input_not_modified_and_scale_invariant() -> None:
    image, _, _ = _structural("nuclear", 1)
    image[:2] = np.nan
    before = image.copy()
    labels = segment_cells(image, 6.0)
    assert np.array_equal(image, before, equal_nan=True)
    # contrast is measured in the image's own noise: gain and offset (ADU) change nothing
    assert np.array_equal(segment_cells(image * 20.0 + 50.0, 6.0), labels)


def test_nan_border_is_background() -> None:
    image, centres, radius = _structural("cytoplasmic", 1)
    full = segment_cells(image, 6.0)
    cut = image.copy()
    cut[:, -6:] = np.nan
    cut[:4] = np.inf
    labels = segment_cells(cut, 6.0)
    assert not labels[:, -6:].any() and not labels[:4].any()
    inner = centres[(centres[:, 1] < 112 - 6 - 12) & (centres[:, 0] > 4 + 12)]
    assert _match(labels, inner, radius)[0] >= _match(full, inner, radius)[0] - 1
    # seed masks see only the labels: they may grow into the border, where the cell goes on
    assert seed_masks(labels, 6.0).shape[1] == labels.max()


@pytest.mark.parametrize("shape", [(64, 64), (3, 40, 40)])
def test_no_cells_gives_no_labels(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(100.0, 3.0, shape)
    assert segment_cells(noise, 5.0).max() == 0
    assert segment_cells(np.full(shape, 7.0), 5.0).max() == 0  # constant: K = 0, documented
    empty = seed_masks(np.zeros(shape, np.int32), 5.0)
    assert empty.shape == (int(np.prod(shape)), 0)


def test_noise_free_discs_and_thin_axial_radius() -> None:
    yy, xx = np.mgrid[:80, :80]
    image = np.zeros((80, 80))
    centres = np.array([[20.0, 20.0], [20.0, 55.0], [58.0, 30.0]])
    for cy, cx in centres:
        image += ((yy - cy) ** 2 + (xx - cx) ** 2 <= 36).astype(float)
    labels = segment_cells(image, 6.0)
    assert _match(labels, centres, np.array([6.0, 6.0]))[::2] == (3, 3)
    stack = np.stack([image * 0.3, image, image * 0.3])
    labels3 = segment_cells(stack, (0.7, 6.0, 6.0))
    assert labels3.max() == 3


def test_seed_masks_grow_nuclei_without_overlap() -> None:
    image, centres, radius = _structural("nuclear", 2)
    labels = segment_cells(image, 6.0)
    masks = seed_masks(labels, 6.0)
    K = int(labels.max())
    assert sp.isspmatrix_csc(masks) and masks.dtype == np.float32 and masks.shape == (image.size, K)
    assert masks.data.min() > 0 and masks.data.max() <= 1
    counts = np.asarray((masks > 0).sum(axis=1)).ravel()
    assert counts.max() == 1  # no pixel in two masks
    sizes = np.asarray((masks > 0).sum(axis=0)).ravel()
    label_sizes = np.bincount(labels.ravel(), minlength=K + 1)[1:]
    assert np.all(sizes >= label_sizes)  # each mask holds its label ...
    flat = labels.ravel()
    for k in (0, K // 2, K - 1):
        rows = masks[:, k].nonzero()[0]
        assert np.all(np.isin(flat[rows], [0, k + 1]))  # ... and no other label's pixels
    # a nuclear label (~0.55 r) grows to about the soma (r): area about pi r^2
    assert 0.5 * np.pi * 36 < np.median(sizes) < 1.3 * np.pi * 36
    assert np.median(label_sizes) < 0.6 * np.median(sizes)


def test_bad_inputs_raise_clear_errors() -> None:
    image = np.zeros((32, 32))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        segment_cells(np.zeros(32), 5.0)
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        segment_cells(np.zeros((2, 3, 32, 32)), 5.0)
    with pytest.raises(ValueError, match="one per axis"):
        segment_cells(image, (5.0, 5.0, 5.0))
    with pytest.raises(ValueError, match="one per axis"):
        segment_cells(np.zeros((4, 32, 32)), (5.0, 5.0))
    with pytest.raises(ValueError, match="positive"):
        segment_cells(image, 0.0)
    with pytest.raises(ValueError, match="positive"):
        segment_cells(image, (1.0, -2.0))
    with pytest.raises(ValueError, match="no finite pixel"):
        segment_cells(np.full((32, 32), np.nan), 5.0)
    with pytest.raises(ValueError, match="empty"):
        segment_cells(np.zeros((0, 32)), 5.0)
    with pytest.raises(ValueError, match="real-valued"):
        segment_cells(np.zeros((32, 32), complex), 5.0)
    with pytest.raises(ValueError, match="min_contrast"):
        segment_cells(image, 5.0, min_contrast=-1.0)
    with pytest.raises(ValueError, match="integers"):
        seed_masks(np.zeros((32, 32)), 5.0)
    with pytest.raises(ValueError, match="relabel_sequential"):
        seed_masks(np.array([[0, 2], [2, 0]]), 1.0)
    with pytest.raises(ValueError, match="one per axis"):
        seed_masks(np.zeros((3, 8, 8), np.int32), (2.0, 2.0))
    assert MIN_CONTRAST > 0
