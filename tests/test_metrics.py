"""Matching footprints to a reference: exact counts on constructed sets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from somascope.metrics import Match, match_footprints, trace_correlation

DIMS = (64, 64)


def disc(centre: tuple[float, float], radius: float, dims: tuple[int, int] = DIMS) -> np.ndarray:
    yy, xx = np.mgrid[: dims[0], : dims[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.float64)


def as_pixels_by_k(masks: np.ndarray) -> sp.csc_matrix:
    """``K × H × W`` → sparse ``pixels × K`` (C order), the package's footprint layout."""
    return sp.csc_matrix(masks.reshape(len(masks), -1).T)


def jaccard_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 1.0 - (a & b).sum() / (a | b).sum()


@pytest.fixture(scope="module")
def ten_cells() -> np.ndarray:
    centres = [(8 + 16 * (i // 4), 8 + 16 * (i % 4)) for i in range(10)]
    return np.stack([disc(c, 3.5) for c in centres])


def test_identical_sets_match_perfectly(ten_cells: np.ndarray) -> None:
    m = match_footprints(as_pixels_by_k(ten_cells), as_pixels_by_k(ten_cells), DIMS)
    assert (m.tp, m.fp, m.fn) == (10, 0, 0)
    assert m.precision == m.recall == m.f1 == 1.0
    np.testing.assert_array_equal(m.ref_idx, np.arange(10))
    np.testing.assert_array_equal(m.est_idx, np.arange(10))
    np.testing.assert_array_equal(m.distances, 0.0)


def test_permuted_order_matches_the_right_cells(ten_cells: np.ndarray) -> None:
    perm = np.random.default_rng(0).permutation(10)
    m = match_footprints(ten_cells, ten_cells[perm])  # K × H × W masks, dims from the shape
    assert m.f1 == 1.0
    np.testing.assert_array_equal(perm[m.est_idx], m.ref_idx)


def test_constructed_mismatches_give_exact_counts(ten_cells: np.ndarray) -> None:
    # Six true cells, each shifted by one pixel, plus two components where there is no cell.
    shifted = [np.roll(ten_cells[i], 1, axis=1) for i in (0, 2, 3, 5, 7, 9)]
    elsewhere = [disc((56, 40), 3.5), disc((56, 56), 3.5)]
    est = np.stack(shifted[:3] + elsewhere[:1] + shifted[3:] + elsewhere[1:])
    m = match_footprints(as_pixels_by_k(ten_cells), as_pixels_by_k(est), DIMS)
    assert (m.n_ref, m.n_est, m.tp, m.fp, m.fn) == (10, 8, 6, 2, 4)
    assert m.precision == pytest.approx(6 / 8)
    assert m.recall == pytest.approx(6 / 10)
    assert m.f1 == pytest.approx(12 / 18)
    np.testing.assert_array_equal(m.ref_idx, [0, 2, 3, 5, 7, 9])
    np.testing.assert_array_equal(m.est_idx, [0, 1, 2, 4, 5, 6])
    np.testing.assert_array_equal(m.unmatched_ref, [1, 4, 6, 8])
    np.testing.assert_array_equal(m.unmatched_est, [3, 7])
    np.testing.assert_allclose(m.distances, jaccard_distance(ten_cells[0], shifted[0]))


def test_shift_beyond_threshold_is_not_matched() -> None:
    ref = disc((30, 30), 4)
    near, far = disc((30, 31), 4), disc((30, 34), 4)
    d_near, d_far = jaccard_distance(ref, near), jaccard_distance(ref, far)
    assert d_near < 0.7 <= d_far and jaccard_distance(ref, far) < 1  # far still overlaps
    m_near = match_footprints(ref[None], near[None])
    m_far = match_footprints(ref[None], far[None])
    assert m_near.tp == 1 and m_near.distances[0] == pytest.approx(d_near)
    assert m_far.tp == 0 and m_far.fp == 1 and m_far.fn == 1 and m_far.f1 == 0.0
    # A looser threshold accepts it; a centroid limit below the shift rejects it again.
    assert match_footprints(ref[None], far[None], max_distance=0.95).tp == 1
    assert match_footprints(ref[None], far[None], max_distance=0.95, max_centroid_distance=3).tp == 0


def test_assignment_is_globally_optimal_not_greedy() -> None:
    # 1-D intervals: est X is closest to ref B, but giving X to A lets Y take B (2 matches).
    dims = (1, 30)

    def interval(a: int, b: int) -> np.ndarray:
        row = np.zeros(dims)
        row[0, a:b] = 1
        return row

    ref = np.stack([interval(0, 10), interval(6, 16)])  # A, B
    est = np.stack([interval(3, 14), interval(9, 20)])  # X, Y
    assert jaccard_distance(ref[1], est[0]) < jaccard_distance(ref[0], est[0]) < 0.7
    m = match_footprints(ref, est)
    np.testing.assert_array_equal(m.ref_idx, [0, 1])
    np.testing.assert_array_equal(m.est_idx, [0, 1])


def test_binarisation_threshold_is_a_fraction_of_each_max() -> None:
    yy, xx = np.mgrid[:40, :40]
    bump = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 3.0**2))
    ref, est = bump, 5.0 * np.roll(bump, 2, axis=1)  # scale must not matter
    for frac in (0.1, 0.25, 0.5):
        expected = jaccard_distance(ref >= frac * ref.max(), est >= frac * est.max())
        m = match_footprints(ref[None], est[None], binarise_frac=frac, max_distance=1.0)
        assert m.distances[0] == pytest.approx(expected)
    assert (
        match_footprints(ref[None], est[None], binarise_frac=0.1).distances[0]
        < match_footprints(ref[None], est[None], binarise_frac=0.5).distances[0]
    )


def test_input_forms_agree(ten_cells: np.ndarray) -> None:
    est = np.stack([np.roll(c, 1, axis=0) for c in ten_cells[::-1]])
    forms = [
        match_footprints(ten_cells, est),
        match_footprints(as_pixels_by_k(ten_cells), as_pixels_by_k(est), DIMS),
        match_footprints(as_pixels_by_k(ten_cells).toarray(), as_pixels_by_k(est).toarray(), DIMS),
        match_footprints(sp.csr_array(as_pixels_by_k(ten_cells)), est, DIMS),
    ]
    for m in forms:
        np.testing.assert_array_equal(m.est_idx, 9 - m.ref_idx)
        np.testing.assert_array_equal(m.distances, forms[0].distances)


def test_volumes() -> None:
    zz, yy, xx = np.mgrid[:6, :20, :20]

    def ball(c: tuple[int, int, int]) -> np.ndarray:
        return ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 9).astype(float)

    ref = np.stack([ball((2, 5, 5)), ball((3, 14, 14))])
    est = np.stack([ball((3, 14, 15)), ball((2, 5, 5)), ball((3, 5, 15))])
    m = match_footprints(ref, est)
    assert (m.tp, m.fp, m.fn) == (2, 1, 0)
    np.testing.assert_array_equal(m.est_idx, [1, 0])
    m2 = match_footprints(as_pixels_by_k(ref), as_pixels_by_k(est), (6, 20, 20))
    np.testing.assert_array_equal(m2.est_idx, m.est_idx)


def test_thousands_of_cells_quickly() -> None:
    rng = np.random.default_rng(1)
    dims = (600, 600)
    n = 2500
    centres = np.stack(np.meshgrid(np.arange(6, 600, 12), np.arange(6, 600, 12)), -1).reshape(-1, 2)[:n]
    offsets = np.stack(np.mgrid[-3:4, -3:4], -1).reshape(-1, 2)
    offsets = offsets[(offsets**2).sum(1) <= 9]

    def footprints(cs: np.ndarray) -> sp.csc_matrix:
        pix = cs[:, None, :] + offsets[None]
        lin = np.ravel_multi_index((pix[..., 0].ravel(), pix[..., 1].ravel()), dims)
        col = np.repeat(np.arange(len(cs)), len(offsets))
        return sp.csc_matrix((np.ones(lin.size), (lin, col)), shape=(dims[0] * dims[1], len(cs)))

    keep = rng.permutation(n)[: n - 250]  # 10% missed
    est_centres = centres[keep] + rng.integers(-1, 2, (keep.size, 2))  # small errors
    t0 = time.perf_counter()
    m = match_footprints(footprints(centres), footprints(est_centres), dims)
    elapsed = time.perf_counter() - t0
    assert (m.tp, m.fp, m.fn) == (n - 250, 0, 250)
    np.testing.assert_array_equal(m.ref_idx, keep[m.est_idx])
    assert elapsed < 5.0


def test_grouped_assignment_equals_one_global_hungarian() -> None:
    # Crowded, overlapping cells: the per-group solution must equal one Hungarian
    # assignment on the full cost matrix (non-matchable pairs cost 1), as CaImAn solves it.
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(4)
    dims = (96, 96)
    ref = np.stack([disc(tuple(rng.uniform(4, 92, 2)), rng.uniform(2.5, 4.5), dims) for _ in range(150)])
    est = np.stack([disc(tuple(rng.uniform(4, 92, 2)), rng.uniform(2.5, 4.5), dims) for _ in range(170)])
    m = match_footprints(ref, est, max_centroid_distance=None)
    a, b = ref.reshape(150, -1) > 0, est.reshape(170, -1) > 0
    inter = a.astype(float) @ b.T.astype(float)
    dist = 1 - inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter)
    cost = np.where(dist < 0.7, dist, 1.0)
    r, c = linear_sum_assignment(cost)
    good = cost[r, c] < 1.0
    assert m.tp == good.sum() > 20
    assert m.distances.sum() == pytest.approx(cost[r, c][good].sum())
    np.testing.assert_allclose(m.distances, dist[m.ref_idx, m.est_idx])


def test_trace_correlation() -> None:
    rng = np.random.default_rng(2)
    C = rng.normal(size=(4, 200))
    m = Match(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3]), np.zeros(4), 4, 4)
    np.testing.assert_allclose(trace_correlation(C, C, m), 1.0)
    C_est = np.stack([3 * C[2] + 5, -C[0], C[3], np.full(200, 2.0)])
    m = Match(np.array([0, 2, 3]), np.array([1, 0, 3]), np.zeros(3), 4, 4)
    np.testing.assert_allclose(trace_correlation(C, C_est, m), [-1.0, 1.0, 0.0])
    partial = 0.6 * C[1] + 0.8 * rng.normal(size=200)
    m = Match(np.array([1]), np.array([0]), np.zeros(1), 4, 1)
    assert trace_correlation(C, partial[None], m)[0] == pytest.approx(np.corrcoef(C[1], partial)[0, 1])
    with pytest.raises(ValueError, match="same recording"):
        trace_correlation(C, C[:, :100], Match(np.array([0]), np.array([0]), np.zeros(1), 4, 4))
    with pytest.raises(ValueError, match="one row per component"):
        trace_correlation(C[:3], C, m)


def test_empty_sets_give_zero_f1(ten_cells: np.ndarray) -> None:
    none = np.zeros((0, *DIMS))
    for ref, est in [(none, ten_cells), (ten_cells, none), (none, none)]:
        m = match_footprints(ref, est)
        assert m.tp == 0 and m.f1 == 0.0 and m.precision == 0.0 and m.recall == 0.0
        assert (m.fp, m.fn) == (len(est), len(ref))
    no_overlap = match_footprints(ten_cells[:3], ten_cells[3:])
    assert no_overlap.tp == 0 and no_overlap.f1 == 0.0
    m = match_footprints(ten_cells, none)
    assert trace_correlation(np.ones((10, 5)), np.ones((0, 5)), m).shape == (0,)
    blank = match_footprints(np.zeros((2, *DIMS)), ten_cells[:2])  # all-zero footprints
    assert blank.tp == 0 and blank.fn == 2


def test_bad_input_errors(ten_cells: np.ndarray) -> None:
    A = as_pixels_by_k(ten_cells)
    with pytest.raises(ValueError, match="pass dims"):
        match_footprints(A, A)
    with pytest.raises(ValueError, match="rows but dims"):
        match_footprints(A, A, (32, 32))
    with pytest.raises(ValueError, match="dims="):
        match_footprints(ten_cells, ten_cells, (32, 32))
    with pytest.raises(ValueError, match="one field of view"):
        match_footprints(ten_cells, ten_cells[:, :32])
    with pytest.raises(ValueError, match="pixels × K"):
        match_footprints(np.zeros(5), A, DIMS)
    with pytest.raises(ValueError, match="max_distance"):
        match_footprints(A, A, DIMS, max_distance=0)
    with pytest.raises(ValueError, match="binarise_frac"):
        match_footprints(A, A, DIMS, binarise_frac=1.5)
    with pytest.raises(ValueError, match="NaN"):
        match_footprints(ten_cells * np.nan, ten_cells)


def test_largest_piece_drops_stray_pieces_of_a_mask():
    dims = (40, 40)
    yy, xx = np.indices(dims)
    cell = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 16).astype(float)
    stray = ((yy - 30) ** 2 + (xx - 30) ** 2 <= 16).astype(float)  # a second, separate piece
    ref = cell.ravel()[:, None]
    est = (cell + 0.9 * stray).ravel()[:, None]
    plain = match_footprints(ref, est, dims, binarise_frac=0.2)
    largest = match_footprints(ref, est, dims, binarise_frac=0.2, largest_piece=True)
    assert largest.tp == 1 and largest.distances[0] == 0.0
    assert plain.tp == 0  # the stray piece halves the overlap and moves the centroid 12.7 px away
    from somascope.metrics import binarise_footprints

    assert binarise_footprints(est, dims, 0.2, largest_piece=True).sum() == cell.sum()
    with pytest.raises(ValueError, match="dims"):
        binarise_footprints(est, None, 0.2, largest_piece=True)
