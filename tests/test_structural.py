"""Structural-channel seeding: seeds and additions in CNMF, silent cells kept and flagged, and a
simulated two-channel movie through `somascope run --structural-channel`."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from somascope.cnmf.estimates import Estimates
from somascope.cnmf.seeded import MASK_SHARE, mark_seeds, outside_masks
from somascope.evaluation.quality import SILENT_RVAL, _keep_seeded
from somascope.params import QualityParams


def _disc(dims: tuple[int, int], centre: tuple[float, float], r: float) -> np.ndarray:
    yy, xx = np.mgrid[:dims[0], :dims[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r).astype(np.float64)


def _columns(images: list[np.ndarray]) -> sp.csc_matrix:
    return sp.csc_matrix(np.stack([im.ravel() for im in images], axis=1))


DIMS = (40, 40)
MASKS = _columns([_disc(DIMS, (10, 10), 4), _disc(DIMS, (30, 30), 4)])


def test_an_unseeded_component_joins_the_seeds_only_outside_every_mask() -> None:
    found = _columns([
        _disc(DIMS, (10, 11), 4),  # the first mask's cell found again: not added
        _disc(DIMS, (10, 30), 4),  # a cell the marker missed: added
        _disc(DIMS, (20, 20), 9),  # a large one over both masks, most of it outside them: added
    ])
    assert outside_masks(found, MASKS).tolist() == [False, True, True]
    # straddling: a bit less than half its energy in the union of the masks is still "outside"
    half = _disc(DIMS, (10, 10), 4) * 0.95 + _disc(DIMS, (10, 19), 4)
    assert outside_masks(_columns([half]), MASKS).tolist() == [True]


def test_a_mask_that_cnmf_left_without_a_component_is_put_back_as_a_silent_candidate() -> None:
    T = 50
    A = _columns([_disc(DIMS, (10, 10), 3.5), _disc(DIMS, (20, 35), 3)])  # mask 0's cell + an added cell
    est = Estimates(A=A, dims=DIMS, C=np.ones((2, T), np.float32), YrA=np.zeros((2, T), np.float32),
                    S=np.zeros((2, T), np.float32), neurons_sn=np.ones(2), g=np.full((2, 1), 0.9))
    out = mark_seeds(est, MASKS)
    assert out.K == 3 and out.seeded.tolist() == [True, False, True]
    back = out.A[:, 2].toarray().ravel()
    assert np.allclose(back > 0, MASKS[:, 1].toarray().ravel() > 0) and np.isclose(np.linalg.norm(back), 1.0)
    assert np.all(out.C[2] == 0) and out.YrA is None and out.g.shape == (3, 1)  # residuals left to the evaluation
    assert est.K == 2  # not modified
    # every mask held: nothing is added, only the flags
    held = mark_seeds(Estimates(A=MASKS, dims=DIMS, C=np.ones((2, T))), MASKS)
    assert held.K == 2 and held.seeded.all() and held.C.shape == (2, T)
    assert 0 < MASK_SHARE < 1


def test_seeded_cells_are_accepted_and_those_without_activity_are_flagged_silent() -> None:
    q = QualityParams()
    seeded = np.array([True, True, True, True, False, False, True])
    low, high = SILENT_RVAL - 0.2, SILENT_RVAL + 0.1
    # active by SNR, by r-value (a cell that fires often: low SNR, its own shape), silent (r low or
    # none), not seeded, not seeded, seeded but empty
    snr = np.array([q.min_SNR + 1, q.min_SNR - 1, q.min_SNR - 1, q.min_SNR - 1, q.min_SNR + 1, 0.1, np.nan])
    r = np.array([low, high, low, np.nan, high, low, np.nan])
    valid = np.array([True, True, True, True, True, True, False])
    good_in = np.array([0, 4])  # what the ordinary tests accepted
    good, bad, silent = _keep_seeded(seeded, snr, r, valid, good_in, q)
    assert good.tolist() == [0, 1, 2, 3, 4] and bad.tolist() == [5, 6]
    assert silent.tolist() == [False, False, True, True, False, False, False]


def test_estimates_keep_the_flags_through_select_save_and_load(tmp_path) -> None:
    est = Estimates(A=MASKS, dims=DIMS, C=np.ones((2, 30)), seeded=[True, False], silent=[1, 0],
                    idx_components=[0, 1])
    assert est.silent.dtype == bool
    back = Estimates.load(est.save(tmp_path / "e.h5"))
    assert back.seeded.tolist() == [True, False] and back.silent.tolist() == [True, False]
    assert est.select([1]).silent.tolist() == [False]
    with pytest.raises(ValueError, match="silent has 3 entries"):
        Estimates(A=MASKS, dims=DIMS, silent=[True, False, True])
