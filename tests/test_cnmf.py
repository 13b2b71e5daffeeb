"""CNMF on one field of view: spatial and temporal updates, merging, seeded init, ``fit``.

Each piece is checked on tiny data: exact recovery from noise-free constructed movies where
the answer is known (spatial update, projections, residual traces), ground truth recovered
from small simulated movies (4 cells in 30 × 30 × 600, a 3-D toy volume), and clear errors
for bad input.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from somascope import simulate
from somascope.cnmf import Estimates, fit, refit
from somascope.cnmf.fit import components_per_fov, pixel_noise
from somascope.cnmf.merging import find_merge_groups, merge_components
from somascope.cnmf.seeded import as_masks, seeded_initialization
from somascope.cnmf.spatial import search_regions, threshold_footprints, update_spatial
from somascope.cnmf.temporal import project_movie, update_order, update_temporal
from somascope.metrics import match_footprints, trace_correlation
from somascope.params import ParameterError, Params

FR = 30.0


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def tiny() -> simulate.Simulation:
    """4 active somata in 30 × 30 × 600 frames."""
    return simulate.two_photon(dims=(30, 30), n_frames=600, n_cells=4, neuron_radius=4, seed=0,
                               silent_fraction=0, process_fraction=0, snr=3,
                               firing_rate=(0.5, 2.0))


@pytest.fixture(scope="module")
def tiny_params() -> Params:
    return Params.from_neuron(4, fr=FR)


def blob(dims: tuple[int, ...], centre: tuple[float, ...], sigma: float, cut: float = 0.05) -> np.ndarray:
    grid = np.indices(dims, dtype=float)
    img = np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre)) / (2 * sigma**2))
    return np.where(img >= cut, img, 0.0).ravel()


def ar1(rng: np.random.Generator, n: int, T: int, rate: float = 0.05, g: float = 0.9) -> np.ndarray:
    from scipy.signal import lfilter

    spikes = rng.random((n, T)) < rate
    return lfilter([1.0], [1.0, -g], spikes * rng.uniform(0.5, 1.5, (n, T)), axis=1)


@pytest.fixture(scope="module")
def exact() -> dict:
    """Noise-free movie Y = A·C + b·f + m (m a per-pixel constant) on 20 × 20 pixels."""
    rng = np.random.default_rng(1)
    dims, T = (20, 20), 400
    A = np.stack([blob(dims, (6, 6), 2.0), blob(dims, (9, 10), 2.0), blob(dims, (14, 5), 1.5)], 1)
    C = ar1(rng, 3, T)
    yy, xx = np.indices(dims)
    b = (1.0 + 0.05 * xx + 0.02 * yy).ravel()[:, None]
    f = (2.0 + 0.3 * np.sin(np.arange(T) / 15.0) + 0.1 * rng.random(T))[None, :]
    m = 3.0 * A[:, 0] + 0.5  # constant offsets: resting fluorescence of cell 0, a floor
    Y = (A @ C + b @ f + m[:, None]).T.reshape(T, *dims).astype(np.float32)
    return {"Y": Y, "A": A, "C": C, "b": b, "f": f, "dims": dims, "T": T}


def exact_params(**kw: object) -> Params:
    return Params.from_neuron(2, fr=FR, thr_method="max", maxthr=0.0, **kw)


# ----------------------------------------------------------------------------- spatial


def test_spatial_update_is_exact_on_noise_free_data(exact: dict) -> None:
    """With negligible noise the per-pixel NNLS returns the true footprints and background,
    whatever constant each pixel carries (the intercept)."""
    Y, A, C, b, f = exact["Y"], exact["A"], exact["C"], exact["b"], exact["f"]
    P = A.shape[0]
    start = (A > 0.3).astype(float)  # a rough start: the search region grows from its support
    out = update_spatial(Y, start, C, f, np.full(P, 1e-9), exact_params())
    assert out.kept.tolist() == [0, 1, 2]
    np.testing.assert_allclose(out.A.toarray(), A, atol=2e-4 * A.max())
    np.testing.assert_allclose(out.b, b, rtol=2e-4)


def test_spatial_update_holds_background_when_asked(exact: dict) -> None:
    Y, A, C, b, f = exact["Y"], exact["A"], exact["C"], exact["b"], exact["f"]
    P = A.shape[0]
    params = exact_params(update_background_components=False)
    out = update_spatial(Y, A, C, f, np.full(P, 1e-9), params, b=b)
    np.testing.assert_array_equal(out.b, b.astype(np.float32))
    np.testing.assert_allclose(out.A.toarray(), A, atol=2e-4 * A.max())
    # a wrong fixed background is not corrected: the footprints absorb the error
    off = update_spatial(Y, A, C, f, np.full(P, 1e-9), params, b=0.5 * b)
    np.testing.assert_array_equal(off.b, (0.5 * b).astype(np.float32))
    assert np.abs(off.A.toarray() - A).max() > 0.01
    with pytest.raises(ValueError, match="pass its current value b"):
        update_spatial(Y, A, C, f, np.full(P, 1e-9), params)


def test_spatial_penalty_and_l0_prune_weak_pixels(exact: dict) -> None:
    """A component contributing far below the noise at some pixels is pruned there by
    nnls_L0, and the L1 penalty shrinks coefficients by about ½·sn/‖c‖."""
    Y, A, C, f = exact["Y"], exact["A"], exact["C"], exact["f"]
    P, T = A.shape[0], exact["T"]
    sn = np.full(P, 0.02)
    weak = A.copy()
    weak[:, 2] *= 0.002  # cell 2 almost invisible
    Yw = (weak @ C + exact["b"] @ f).T.reshape(Y.shape).astype(np.float32)
    l0 = update_spatial(Yw, A, C, f, sn, exact_params(method_ls="nnls_L0"))
    assert 2 not in l0.kept.tolist()  # pruned everywhere: the component came out empty
    free = update_spatial(Yw, A, C, f, np.full(P, 1e-9), exact_params())
    assert 2 in free.kept.tolist()
    lasso = update_spatial(Y, A, C, f, sn, exact_params())
    centred = C - C.mean(axis=1, keepdims=True)
    shrink = 0.5 * sn[0] / np.linalg.norm(centred, axis=1)
    k = 0
    a = lasso.A.toarray()[:, k]
    inside = A[:, k] > 0.5
    assert np.all(a[inside] < A[inside, k])
    assert np.median(A[inside, k] - a[inside]) == pytest.approx(shrink[k], rel=0.5)


def test_spatial_update_recovers_simulated_footprints(tiny: simulate.Simulation, tiny_params: Params) -> None:
    sn = pixel_noise(tiny.movie, tiny_params)
    assert sn.shape == (900,)
    out = update_spatial(tiny.movie, tiny.A, tiny.C, tiny.f, sn, tiny_params.replace(nb=3),
                         b=tiny.b)
    A_true = tiny.A.toarray()
    got = out.A.toarray()
    corr = [np.corrcoef(got[:, i], A_true[:, k])[0, 1] for i, k in enumerate(out.kept)]
    assert out.kept.size == 4 and min(corr) > 0.9


def test_search_regions_dilate_and_ellipse() -> None:
    dims = (15, 15)
    A = np.zeros((225, 1))
    A[7 * 15 + 7] = 1.0
    region = search_regions(A, dims, method="dilate")
    assert region.nnz == 13  # city-block ball of radius 2
    cube = search_regions(np.eye(1, 7 * 7 * 7, 3 * 49 + 3 * 7 + 3).T, (7, 7, 7), method="dilate")
    assert cube.nnz == 25
    disc_fp = blob(dims, (7, 7), 2.0, cut=0.1)[:, None]
    ell = search_regions(disc_fp, dims, method="ellipse", dist=3.0, gSig=(2.0, 2.0)).toarray().ravel()
    assert np.all(ell[disc_fp.ravel() > 0])
    assert ell.sum() < 225 and ell.sum() > (disc_fp > 0).sum()
    with pytest.raises(ValueError, match="search-region method"):
        search_regions(A, dims, method="box")


def test_threshold_keeps_largest_piece_and_energy() -> None:
    dims = (20, 20)
    big = blob(dims, (5, 5), 2.0, cut=0.2)
    small = 0.5 * blob(dims, (15, 15), 1.0, cut=0.2)
    A = (big + small)[:, None]
    kept = threshold_footprints(A, dims).toarray().ravel()
    np.testing.assert_allclose(kept, big, atol=1e-6)
    both = threshold_footprints(A, dims, extract_cc=False).toarray().ravel()
    assert np.count_nonzero(both) == np.count_nonzero(A)
    by_max = threshold_footprints(A, dims, thr_method="max", maxthr=0.5, extract_cc=False)
    assert np.all(by_max.data > 0.5)
    by_nrg = threshold_footprints(A, dims, nrgthr=0.5, extract_cc=False).toarray().ravel()
    assert 0.5 * (A**2).sum() <= (by_nrg**2).sum() < 0.8 * (A**2).sum()


def test_spatial_input_errors(exact: dict) -> None:
    Y, A, C, f = exact["Y"], exact["A"], exact["C"], exact["f"]
    with pytest.raises(ValueError, match="one finite, non-negative noise level per pixel"):
        update_spatial(Y, A, C, f, np.ones(3))
    with pytest.raises(ValueError, match="C must be traces of shape"):
        update_spatial(Y, A, C[:2], f, np.ones(A.shape[0]))
    with pytest.raises(ValueError, match="pixels × K"):
        update_spatial(Y, A[:10], C, f, np.ones(A.shape[0]))


# ----------------------------------------------------------------------------- temporal


def test_project_movie_matches_dense_product(exact: dict) -> None:
    Y, A = exact["Y"], exact["A"]
    want = A.T @ Y.reshape(exact["T"], -1).T.astype(np.float64)
    got = project_movie(Y, sp.csc_matrix(A), block=37)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_update_order_groups_do_not_overlap() -> None:
    A = sp.random(400, 30, density=0.02, random_state=4, format="csc")
    groups = update_order(A)
    assert sorted(np.concatenate(groups).tolist()) == list(range(30))
    mask = (A != 0).astype(float)
    overlap = (mask.T @ mask).toarray()
    for g in groups:
        sub = overlap[np.ix_(g, g)]
        assert np.count_nonzero(sub - np.diag(np.diag(sub))) == 0
    assert len(groups) < 30


def test_temporal_update_recovers_traces(tiny: simulate.Simulation, tiny_params: Params) -> None:
    T = tiny.movie.shape[0]
    # traces start at 0 above a true, non-negative resting level: the constrained baseline
    # (not the pipeline default) is the well-posed case for checking the update itself
    params = tiny_params.replace(nb=3, bas_nonneg=True)
    out = update_temporal(tiny.movie, tiny.A, tiny.b, np.zeros((4, T)), np.zeros((3, T)), params)
    corr = [np.corrcoef(out.C[k], tiny.C[k])[0, 1] for k in range(4)]
    assert min(corr) > 0.9
    assert out.S.min() >= 0 and out.C.min() >= 0 and out.f.min() >= 0
    assert out.g.shape == (4, 1) and np.all((out.g > 0.5) & (out.g < 1))
    np.testing.assert_allclose(out.g[:, 0], tiny.g[:, 0], atol=0.08)
    given = update_temporal(tiny.movie, tiny.A, tiny.b, out.C, out.f, params, g=tiny.g)
    np.testing.assert_array_equal(given.g, tiny.g)  # given time constants are used as they are
    with pytest.raises(ValueError, match="deconvolution.p=1"):
        update_temporal(tiny.movie, tiny.A, tiny.b, out.C, out.f, params, g=np.full((4, 2), 0.4))
    # raw trace = C + YrA is each footprint's least-squares amplitude of the data left after
    # removing every other component and the background
    A = tiny.A.toarray().astype(np.float64)
    Y2 = tiny.movie.reshape(T, -1).astype(np.float64)
    model = A @ out.C.astype(np.float64) + tiny.b @ out.f.astype(np.float64)
    for k in range(4):
        a = A[:, k]
        raw = a @ (Y2.T - model + np.outer(a, out.C[k])) / (a @ a)
        np.testing.assert_allclose(out.C[k] + out.YrA[k], raw, atol=1e-3 * np.abs(raw).max())


@pytest.mark.parametrize("p", [0, 2])
def test_temporal_update_other_ar_orders(tiny: simulate.Simulation, tiny_params: Params, p: int) -> None:
    T = tiny.movie.shape[0]
    params = tiny_params.replace(nb=3, p=p, ITER=1, bas_nonneg=True)
    out = update_temporal(tiny.movie, tiny.A, tiny.b, np.zeros((4, T)), np.zeros((3, T)), params)
    assert out.g.shape == (4, p)
    corr = [np.corrcoef(out.C[k], tiny.C[k])[0, 1] for k in range(4)]
    assert min(corr) > 0.7 and np.median(corr) > (0.75 if p == 0 else 0.85)


def test_temporal_update_rejects_empty_footprints(tiny: simulate.Simulation) -> None:
    A = tiny.A.toarray()
    A[:, 1] = 0
    T = tiny.movie.shape[0]
    with pytest.raises(ValueError, match=r"components \[1\] have empty footprints"):
        update_temporal(tiny.movie, A, tiny.b, np.zeros((4, T)), np.zeros((3, T)))


# ----------------------------------------------------------------------------- merging


def _split_estimates(tiny: simulate.Simulation) -> Estimates:
    """Cell 0 cut into two overlapping halves that share its trace, plus the 3 other cells."""
    A = tiny.A.toarray()
    cols = np.unravel_index(np.arange(A.shape[0]), tiny.dims)[1]
    centre = np.average(cols, weights=A[:, 0])
    weight = np.clip((centre + 1.5 - cols) / 3.0, 0.0, 1.0)  # 1 → 0 over three columns
    left = A[:, 0] * weight
    right = A[:, 0] * (1.0 - weight)
    A_split = np.column_stack([left, A[:, 1:], right])
    C = np.vstack([tiny.C[:1], tiny.C[1:], tiny.C[:1]]).astype(np.float32)
    return Estimates(A=A_split, dims=tiny.dims, C=C, YrA=np.zeros_like(C), frame_rate=FR)


def test_merging_joins_a_split_cell(tiny: simulate.Simulation, tiny_params: Params) -> None:
    est = _split_estimates(tiny)
    assert [g.tolist() for g in find_merge_groups(est.A, est.C, 0.8)] == [[0, 4]]
    result = merge_components(est, tiny_params)
    assert result.n_merged == 1 and result.groups[0].tolist() == [0, 4]
    out = result.estimates
    assert out.K == 4
    merged = out.A[:, 3].toarray().ravel()
    truth = tiny.A[:, 0].toarray().ravel()
    assert np.corrcoef(merged, truth)[0, 1] > 0.99
    assert np.linalg.norm(merged) == pytest.approx(1.0, rel=1e-5)
    assert np.corrcoef(out.C[3], tiny.C[0])[0, 1] > 0.95
    np.testing.assert_array_equal(out.C[:3], est.C[1:4])  # the others are untouched
    assert out.S is None and out.g is None  # est had no deconvolution fields for them


def test_merging_respects_threshold_area_and_switch(tiny: simulate.Simulation, tiny_params: Params) -> None:
    est = _split_estimates(tiny)
    assert merge_components(est, tiny_params.replace(do_merge=False)).n_merged == 0
    assert merge_components(est, tiny_params.replace(max_merge_area=10)).n_merged == 0
    # overlapping but uncorrelated components are not merged
    rng = np.random.default_rng(0)
    C = est.C.copy()
    C[4] = ar1(rng, 1, C.shape[1])[0]
    assert find_merge_groups(est.A, C, 0.8) == []
    # identical traces merge only when the footprints overlap
    dims = (20, 20)
    same = np.vstack([est.C[0], est.C[0]])
    apart = np.column_stack([blob(dims, (5, 5), 1.5), blob(dims, (14, 14), 1.5)])
    touching = np.column_stack([blob(dims, (5, 5), 1.5), blob(dims, (8, 5), 1.5)])
    assert find_merge_groups(apart, same, 0.8) == []
    assert [g.tolist() for g in find_merge_groups(touching, same, 0.8)] == [[0, 1]]
    with pytest.raises(ValueError, match=r"merge threshold"):
        find_merge_groups(est.A, est.C, 1.5)


def test_trace_products_in_blocks_match_whole_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long recordings: merging's correlations, the spatial update's Gram matrix and the
    temporal projection are formed a few rows or frames at a time, in float32 storage with
    float64 sums; they equal the whole-array float64 results."""
    from somascope.cnmf import merging, spatial

    rng = np.random.default_rng(3)
    C = (rng.gamma(2.0, 1.0, (7, 500)) + np.linspace(0, 3, 500)).astype(np.float32)
    C[5] = 2.0  # a constant trace correlates 0 with everything
    i, j = np.array([0, 1, 2, 4, 5]), np.array([3, 3, 6, 6, 0])
    monkeypatch.setattr(merging, "_PAIR_ELEMENTS", 1100)  # two rows at a time
    got = merging.pair_correlations(C, i, j)
    want = [np.corrcoef(C[a].astype(np.float64), C[b].astype(np.float64))[0, 1] for a, b in zip(i[:4], j[:4])]
    want.append(0.0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    monkeypatch.setattr(spatial, "_GRAM_ELEMENTS", 50)  # 7 frames at a time
    mean, V = spatial._centred_gram(C)
    C64 = C.astype(np.float64)
    centred = C64 - C64.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(mean, C64.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(V, centred @ centred.T, rtol=1e-9, atol=1e-9 * np.abs(V).max())
    Y = rng.normal(size=(40, 6, 5)).astype(np.float32)
    A = sp.random(30, 4, density=0.4, random_state=1, format="csc")
    np.testing.assert_allclose(project_movie(Y, A, dtype=np.float32), project_movie(Y, A), rtol=1e-5, atol=1e-5)
    assert project_movie(Y, A, dtype=np.float32).dtype == np.float32


# ----------------------------------------------------------------------------- seeded


def test_seeded_initialization_from_masks(tiny: simulate.Simulation) -> None:
    masks = tiny.A.toarray().T.reshape(4, *tiny.dims) > 0.2
    init = seeded_initialization(tiny.movie, masks, nb=1)
    assert init.method == "seeded" and init.K == 4 and init.b.shape == (900, 1)
    support = init.A.toarray() > 0
    assert not np.any(support & ~masks.reshape(4, -1).T)  # restricted to the masks
    np.testing.assert_allclose(np.linalg.norm(init.A.toarray(), axis=0), 1.0, rtol=1e-5)
    corr = [np.corrcoef(init.C[k], tiny.C[k])[0, 1] for k in range(4)]
    assert min(corr) > 0.8
    # real-valued masks (footprint weights) as a pixels × K sparse matrix work the same way
    real = seeded_initialization(tiny.movie, tiny.A, nb=2)
    assert real.K == 4 and real.nb == 2


def test_seeded_mask_errors() -> None:
    dims = (10, 10)
    with pytest.raises(ValueError, match="fit neither"):
        as_masks(np.ones((3, 5, 5)), dims)
    with pytest.raises(ValueError, match=r"mask\(s\) \[1\] are empty"):
        as_masks(np.stack([np.ones(dims), np.zeros(dims)]), dims)
    with pytest.raises(ValueError, match="non-negative"):
        as_masks(-np.ones((1, *dims)), dims)
    with pytest.raises(ValueError, match="no masks"):
        as_masks(np.zeros((100, 0)), dims)
    assert as_masks(np.ones(dims, bool), dims).shape == (100, 1)


# ----------------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def fitted(tiny: simulate.Simulation, tiny_params: Params) -> Estimates:
    return fit(tiny.movie, tiny_params)


def test_fit_finds_the_cells(tiny: simulate.Simulation, fitted: Estimates) -> None:
    est = fitted
    match = match_footprints(tiny.A, est.A, tiny.dims)
    assert match.recall == 1.0
    corr = trace_correlation(tiny.C, est.C, match)
    assert np.median(corr) > 0.9
    accepted = match_footprints(tiny.A, est.A[:, est.accepted_indices], tiny.dims)
    assert accepted.tp >= 3 and accepted.precision == 1.0
    # what the container holds
    K, T = est.K, tiny.movie.shape[0]
    assert est.dims == (30, 30) and est.frame_rate == FR and est.seed == 0
    np.testing.assert_allclose(sp.linalg.norm(est.A, axis=0), 1.0, rtol=1e-5)
    for name in ("C", "S", "YrA"):
        assert getattr(est, name).shape == (K, T)
    nb = est.params["init"]["nb"]
    assert est.b.shape == (900, nb) and est.f.shape == (nb, T) and est.sn.shape == (900,)
    assert est.g.shape == (K, 1) and est.SNR_comp.shape == (K,) and est.r_values.shape == (K,)
    assert est.params["init"]["method"] == "rolling_greedy_roi"
    assert est.provenance["stage"] == "cnmf"


def test_fit_seeded_traces(tiny: simulate.Simulation, tiny_params: Params) -> None:
    est = fit(tiny.movie, tiny_params, seed_masks=tiny.A)
    match = match_footprints(tiny.A, est.A, tiny.dims)
    assert match.tp == 4
    assert np.median(trace_correlation(tiny.C, est.C, match)) > 0.95


def test_fit_reads_frame_sources_and_round_trips(tiny: simulate.Simulation, tiny_params: Params,
                                                 fitted: Estimates, tmp_path) -> None:
    class Frames:  # the frame-source protocol of docs/conventions.md
        def __init__(self, arr: np.ndarray) -> None:
            self.arr, self.shape, self.dtype = arr, arr.shape, arr.dtype

        def __len__(self) -> int:
            return self.shape[0]

        def __getitem__(self, key: slice) -> np.ndarray:
            return self.arr[key]

    before = tiny.movie.copy()
    again = fit(Frames(tiny.movie.astype(np.float64)), tiny_params)
    np.testing.assert_array_equal(tiny.movie, before)  # input untouched
    assert again.K == fitted.K
    np.testing.assert_allclose(again.C, fitted.C, rtol=1e-3, atol=1e-3 * fitted.C.max())
    path = fitted.save(tmp_path / "cnmf.h5")
    loaded = Estimates.load(path)
    assert (loaded.A != fitted.A).nnz == 0
    for name in ("C", "S", "YrA", "b", "f", "sn", "g", "SNR_comp", "idx_components"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    assert Params.from_dict(loaded.params) == tiny_params


def test_refit_is_seeded_with_accepted_components(tiny: simulate.Simulation, fitted: Estimates) -> None:
    out = refit(fitted, tiny.movie)
    assert 0 < out.K <= fitted.accepted_indices.size
    assert out.idx_components is not None
    match = match_footprints(fitted.A[:, fitted.accepted_indices], out.A, tiny.dims)
    assert match.tp == out.K
    bare = Estimates(A=fitted.A, dims=fitted.dims, C=fitted.C, idx_components=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="refit needs accepted components"):
        refit(bare, tiny.movie)


def test_fit_with_refit_parameter(tiny: simulate.Simulation, tiny_params: Params) -> None:
    est = fit(tiny.movie, tiny_params.replace(refit=True))
    assert est.provenance["refit"] is True
    assert est.params["quality"]["refit"] is True
    assert match_footprints(tiny.A, est.A[:, est.accepted_indices], tiny.dims).tp >= 3


def test_fit_3d_volume() -> None:
    sim = simulate.volumetric(dims=(6, 24, 24), n_frames=400, n_cells=4, neuron_radius=(1.5, 3.5, 3.5),
                              frame_rate=10, seed=2, silent_fraction=0, process_fraction=0, snr=3,
                              firing_rate=(0.5, 2.0))
    params = Params.from_neuron((1.5, 3.5, 3.5), fr=10)
    est = fit(sim.movie, params)
    assert est.dims == (6, 24, 24) and est.A.shape[0] == 6 * 24 * 24
    match = match_footprints(sim.A, est.A[:, est.accepted_indices], sim.dims)
    assert match.recall >= 0.75 and match.precision >= 0.75
    assert np.median(trace_correlation(sim.C, est.C[est.accepted_indices], match)) > 0.85


def test_components_per_field_of_view() -> None:
    p = Params.from_neuron(5, fr=FR)  # rf = 44: patches 88 px wide overlapping by 11
    assert components_per_fov(p, (128, 128)) == p.init.K * 4
    assert components_per_fov(p, (88, 88)) == p.init.K
    assert components_per_fov(p, (44, 88)) == -(-p.init.K // 2)
    assert components_per_fov(p.replace(rf=None, K=7), (128, 128)) == 7


def test_fit_input_errors(tiny: simulate.Simulation, tiny_params: Params) -> None:
    movie = tiny.movie
    bad = movie.copy()
    bad[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values \\(first in frame 3\\)"):
        fit(bad, tiny_params)
    with pytest.raises(ValueError, match="at least 16"):
        fit(movie[:10], tiny_params)
    with pytest.raises(ValueError, match="describe 3-D frames"):
        fit(movie, Params.from_neuron((2, 4, 4), fr=FR))
    with pytest.raises(ValueError, match="ring background.*T × H × W"):
        fit(np.zeros((20, 2, 8, 8), np.float32), Params.from_neuron((1, 2, 2), fr=FR).replace(nb=0))
    with pytest.raises(ParameterError, match="seed_masks=masks"):
        fit(movie, tiny_params.replace(method="seeded", K=None))
    with pytest.raises(TypeError, match="Params or a dict"):
        fit(movie, "defaults")


def test_importing_cnmf_is_light() -> None:
    code = ("import sys, somascope.cnmf as c; assert callable(c.fit); "
            "print(sorted(m for m in ('numba', 'dask', 'distributed', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
