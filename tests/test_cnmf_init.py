"""CNMF initialisation: GreedyROI, RollingGreedyROI, sparse NMF, background, resampling.

Each test checks a property that fails when the code is wrong: cells of a simulated movie are
found where they are, background ranks and traces are recovered, block means and
interpolation are exact where they must be, and bad input gets a clear error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

import somascope.cnmf.initialization as init_mod
from somascope import simulate
from somascope.cnmf.initialization import (
    Initialization,
    downsample,
    greedy_roi,
    hals,
    initial_background,
    initialize,
    register_method,
    sparse_nmf,
    upsample,
)
from somascope.metrics import match_footprints, trace_correlation
from somascope.params import ParameterError, Params

DIMS = (30, 30)


def tiny_movie(seed: int, **kw: object) -> simulate.Simulation:
    """4 cells of radius 3 px in 30×30×300 frames (10 s at 30 Hz), all firing."""
    args = dict(dims=DIMS, n_frames=300, n_cells=4, neuron_radius=3, firing_rate=(1.0, 2.0),
                background_fluctuation=0.02, seed=seed)
    args.update(kw)
    return simulate.two_photon(**args)


def params(**kw: object) -> Params:
    d: dict[str, object] = {"neuron_radius": 3, "fr": 30, "K": 4}
    d.update(kw)
    return Params.from_dict(d)


@pytest.fixture(scope="module")
def sim() -> simulate.Simulation:
    return tiny_movie(0)


def residual_ms(Y: np.ndarray, init: Initialization) -> float:
    """Mean square of ``Y − A·C − b·f`` (tiny data: formed densely in the test only)."""
    Yr = Y.reshape(Y.shape[0], -1).T.astype(np.float64)
    model = init.A.toarray() @ init.C + init.b @ init.f
    return float(np.mean((Yr - model) ** 2))


# ----------------------------------------------------------------------------- GreedyROI


@pytest.mark.parametrize("rolling_length", [None, 50])
def test_greedy_roi_finds_every_cell_at_its_place(sim: simulate.Simulation,
                                                   rolling_length: int | None) -> None:
    init = greedy_roi(sim.movie, 4, 3, 7, rolling_length=rolling_length)
    m = match_footprints(sim.A, init.A, DIMS)
    assert m.recall == 1.0 and m.precision == 1.0
    gap = np.linalg.norm(sim.centers[m.ref_idx] - init.center[m.est_idx], axis=1)
    assert gap.max() < 1.5
    assert trace_correlation(sim.C, init.C, m).min() > 0.7  # raw rank-1 traces, before HALS
    assert init.method == ("greedy_roi" if rolling_length is None else "rolling_greedy_roi")
    assert init.A.shape == (900, 4) and init.C.shape == (4, 300)
    # each footprint lies in a gSiz box and has unit norm
    for k in range(4):
        rows = np.unravel_index(init.A[:, k].indices, DIMS)
        assert max(np.ptp(r) for r in rows) <= 6
    np.testing.assert_allclose(sp.linalg.norm(init.A, axis=0), 1.0, rtol=1e-5)


def test_greedy_roi_single_noiseless_cell_is_exact() -> None:
    yy, xx = np.mgrid[:20, :20]
    a = np.exp(-((yy - 9) ** 2 + (xx - 11) ** 2) / (2 * 2.0**2))
    a[np.hypot(yy - 9, xx - 11) > 4] = 0  # inside the 9×9 box
    c = np.maximum(np.sin(np.arange(200) / 7.0), 0) * 3
    Y = (c[:, None, None] * a + 1.0).astype(np.float32)
    # CaImAn's GreedyROI (no surround) recovers it exactly
    init = greedy_roi(Y, 1, 2.0, 9, nb=1, surround=None)
    est = init.A.toarray().reshape(20, 20)
    assert np.corrcoef(est.ravel(), a.ravel())[0, 1] > 0.9999
    assert np.corrcoef(init.C[0], c)[0, 1] > 0.9999
    np.testing.assert_allclose(init.center[0], (9, 11), atol=0.01)
    # the model explains the movie: Y ≈ A·C + b·f
    assert residual_ms(Y, init) < 1e-4 * float(np.mean(Y**2))
    # the surround (local mean subtracted before the fit) costs little
    init = greedy_roi(Y, 1, 2.0, 9, nb=1)
    assert np.corrcoef(init.A.toarray().ravel(), a.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(init.center[0], (9, 11), atol=0.05)


def _cells_on_a_fluctuating_glow(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 cells (σ 2.5 px) next to a broad (σ 9 px) background glow that fluctuates slowly."""
    rng = np.random.default_rng(seed)
    H = W = 40
    T = 400
    yy, xx = np.mgrid[:H, :W]
    centres = [(10, 10), (28, 14), (16, 30)]
    A = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2)) for cy, cx in centres])
    spikes = rng.random((3, T)) < 0.03
    C = np.zeros((3, T))
    for t in range(T):
        C[:, t] = (0.9 * C[:, t - 1] if t else 0) + spikes[:, t]
    glow = np.exp(-((yy - 30) ** 2 + (xx - 32) ** 2) / (2 * 9.0**2))
    level = 3.0 + 0.5 * np.sin(np.arange(T) / 15.0)
    Y = (np.einsum("kt,khw->thw", C, A) + level[:, None, None] * glow + 1.0
         + 0.3 * rng.standard_normal((T, H, W)))
    return Y.astype(np.float32), A.reshape(3, -1).T


@pytest.mark.parametrize("seed", [0, 1])
def test_surround_keeps_smooth_background_from_outranking_cells(seed: int) -> None:
    Y, A = _cells_on_a_fluctuating_glow(seed)
    with_surround = greedy_roi(Y, 3, 2.5, 7, rolling_length=50)
    without = greedy_roi(Y, 3, 2.5, 7, rolling_length=50, surround=None)
    assert match_footprints(A, with_surround.A, (40, 40)).recall == 1.0
    assert match_footprints(A, without.A, (40, 40)).recall < 1.0


# ----------------------------------------------------------------------------- initialize


@pytest.mark.parametrize("method", ["greedy_roi", "rolling_greedy_roi"])
def test_initialize_recovers_cells_and_a_model_of_the_movie(sim: simulate.Simulation,
                                                            method: str) -> None:
    p = params(**{"init.method": method})
    assert p.init.tsub == 2  # the movie is downsampled in time and brought back
    Y0 = sim.movie.copy()
    init = initialize(sim.movie, p)
    np.testing.assert_array_equal(sim.movie, Y0)  # input untouched
    m = match_footprints(sim.A, init.A, DIMS)
    assert m.f1 == 1.0
    assert trace_correlation(sim.C, init.C, m).min() > 0.75
    assert init.method == method and init.dims == DIMS
    assert init.A.shape == (900, 4) and init.C.shape == (4, 300)
    assert init.b.shape == (900, p.init.nb) and init.f.shape == (p.init.nb, 300)
    assert init.A.dtype == np.float32 and init.C.dtype == np.float32
    assert init.A.min() >= 0 and init.C.min() >= 0 and init.b.min() >= 0 and init.f.min() >= 0
    # the model leaves about the noise: mean square residual within 25 % of noise variance
    noise = float(np.mean(sim.noise_std.astype(np.float64) ** 2))
    assert residual_ms(sim.movie, init) < 1.25 * noise


def test_initialize_with_spatial_downsampling(sim: simulate.Simulation) -> None:
    init = initialize(sim.movie, params(**{"init.ssub": 2}))
    assert init.A.shape == (900, 4)
    m = match_footprints(sim.A, init.A, DIMS)
    assert m.recall == 1.0
    assert trace_correlation(sim.C, init.C, m).min() > 0.75


def test_initialize_on_a_movie_binned_beforehand_equals_binning_inside(sim: simulate.Simulation) -> None:
    """``n_frames=T``: the movie was binned over ``init.tsub`` frames by the caller (as a patch
    task does while it streams a Store): the same components, traces for every frame."""
    p = params(**{"init.ssub": 2, "init.tsub": 3})
    T = sim.n_frames + 1  # a partial last bin
    Y = np.concatenate([sim.movie, sim.movie[-1:]])
    inside = initialize(Y, p)
    outside = initialize(downsample(Y, 1, 3), p, n_frames=T)
    assert outside.C.shape == (4, T) and outside.f.shape[1] == T
    np.testing.assert_allclose(outside.A.toarray(), inside.A.toarray(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(outside.C, inside.C, rtol=1e-3, atol=1e-3 * np.abs(inside.C).max())
    with pytest.raises(ValueError, match="294 frames binned over init.tsub=3 frames has 98 rows, got 101"):
        initialize(downsample(Y, 1, 3), p, n_frames=T - 7)


def test_initialize_without_global_background(sim: simulate.Simulation) -> None:
    init = initialize(sim.movie, params(nb=-2))
    assert init.b.shape == (900, 0) and init.f.shape == (0, 300)
    assert match_footprints(sim.A, init.A, DIMS).recall == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_initialize_volumetric(seed: int) -> None:
    vol = simulate.volumetric(dims=(6, 24, 24), n_frames=200, n_cells=4, seed=seed)
    p = Params.from_neuron((1.5, 4, 4), fr=5, K=4)
    init = initialize(vol.movie, p)
    assert init.A.shape == (6 * 24 * 24, 4) and init.center.shape == (4, 3)
    m = match_footprints(vol.A, init.A, vol.dims)
    assert m.f1 == 1.0
    assert trace_correlation(vol.C, init.C, m).min() > 0.7


def test_initialize_is_deterministic(sim: simulate.Simulation) -> None:
    a = initialize(sim.movie, params(**{"init.method": "sparse_nmf", "K": 5}))
    b = initialize(sim.movie, params(**{"init.method": "sparse_nmf", "K": 5}))
    assert (a.A != b.A).nnz == 0
    np.testing.assert_array_equal(a.C, b.C)
    np.testing.assert_array_equal(a.f, b.f)


# ----------------------------------------------------------------------------- sparse NMF


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_nmf_recovers_processes_better_than_greedy(seed: int) -> None:
    proc = simulate.two_photon(dims=(32, 32), n_frames=300, n_cells=3, neuron_radius=3,
                               firing_rate=(1.0, 2.0), background_fluctuation=0.02,
                               process_fraction=1.0, seed=seed)
    assert set(proc.kind) == {"process"}
    snmf = initialize(proc.movie, params(**{"init.method": "sparse_nmf", "K": 5}))
    greedy = initialize(proc.movie, params(**{"init.method": "greedy_roi", "K": 5}))
    m_snmf = match_footprints(proc.A, snmf.A, proc.dims)
    m_greedy = match_footprints(proc.A, greedy.A, proc.dims)
    assert m_snmf.recall == 1.0
    assert m_snmf.distances.mean() < 0.3  # shapes, not boxes
    assert m_snmf.distances.mean() < m_greedy.distances.mean() - 0.1
    assert trace_correlation(proc.C, snmf.C, m_snmf).min() > 0.85


def test_sparse_nmf_alpha_makes_footprints_sparser(sim: simulate.Simulation) -> None:
    loose = sparse_nmf(sim.movie, 4, alpha=0.0)
    tight = sparse_nmf(sim.movie, 4, alpha=2.0)
    assert tight.A.nnz < 0.5 * loose.A.nnz
    assert match_footprints(sim.A, tight.A, DIMS).recall >= 0.75


# ----------------------------------------------------------------------------- background


def _smooth_images(n: int, dims: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[: dims[0], : dims[1]]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0, dims[0]), rng.uniform(0, dims[1])
        out.append(1.0 + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 8.0**2)))
    return np.stack(out).reshape(n, -1).T  # pixels × n


def test_initial_background_recovers_a_rank_two_background() -> None:
    rng = np.random.default_rng(3)
    b = _smooth_images(2, (24, 24), rng)
    t = np.arange(400)
    f = np.stack([2 + np.sin(t / 30.0), 1 + 0.5 * np.cos(t / 11.0)])
    Yr = b @ f + 0.05 * rng.standard_normal((576, 400))
    b_est, f_est = initial_background(Yr.astype(np.float32), 2, n_iter=50)
    assert b_est.shape == (576, 2) and f_est.shape == (2, 400)
    assert b_est.min() >= 0 and f_est.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(b_est, axis=0), 1.0, rtol=1e-5)
    rms = np.sqrt(np.mean((Yr - b_est @ f_est) ** 2))
    assert rms < 0.06  # the noise level: nothing of the background is left
    # the movie given as T × H × W gives the same result as its pixels × T view
    Y = np.ascontiguousarray(Yr.T.reshape(400, 24, 24), dtype=np.float32)
    b2, f2 = initial_background(Y, 2, n_iter=50)
    np.testing.assert_allclose(b2 @ f2, b_est @ f_est, rtol=1e-3, atol=1e-3)


def test_initial_background_mask_keeps_cells_out_of_the_background() -> None:
    rng = np.random.default_rng(4)
    dims = (24, 24)
    b = _smooth_images(1, dims, rng)
    t = np.arange(400)
    f = (2 + np.sin(t / 25.0))[None]
    cells = np.zeros(dims, bool)
    cells[4:12, 4:12] = True
    activity = 4.0 * (rng.random(400) < 0.05)
    activity = np.convolve(activity, 0.9 ** np.arange(30))[:400]
    Yr = b @ f + np.outer(cells.ravel() * 3.0, activity) + 0.05 * rng.standard_normal((576, 400))
    b_all, f_all = initial_background(Yr, 1)
    b_out, f_out = initial_background(Yr, 1, mask=~cells)
    r_all = np.corrcoef(f_all[0], f[0])[0, 1]
    r_out = np.corrcoef(f_out[0], f[0])[0, 1]
    assert r_out > 0.995 and r_out > r_all + 0.05
    # b is fitted on every pixel (also those under the cells) with f fixed
    assert b_out.shape == (576, 1) and np.all(b_out[cells.ravel()] > 0)
    np.testing.assert_allclose((b_out @ f_out)[~cells.ravel()], (b @ f)[~cells.ravel()],
                               rtol=0.01)


def test_initial_background_removes_components_without_forming_them() -> None:
    rng = np.random.default_rng(5)
    Yr = rng.random((200, 150)).astype(np.float32) + 2.0
    A = sp.random(200, 3, density=0.1, random_state=1, format="csc", dtype=np.float64)
    C = rng.random((3, 150))
    b1, f1 = initial_background(Yr, 2, A=A, C=C)
    b2, f2 = initial_background((Yr - A @ C).astype(np.float32), 2)
    np.testing.assert_allclose(b1 @ f1, b2 @ f2, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- resampling


def _naive_block_mean(Y: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    shape = tuple(math.ceil(n / s) for n, s in zip(Y.shape, factors))
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        block = Y[tuple(slice(i * s, (i + 1) * s) for i, s in zip(idx, factors))]
        out[idx] = block.mean()
    return out


@pytest.mark.parametrize("shape, ssub, tsub", [((7, 10, 13), 3, 2), ((5, 3, 7, 8), 2, 3),
                                               ((4, 6, 6), 1, 1)])
def test_downsample_is_block_mean_with_partial_blocks(shape: tuple[int, ...], ssub: int,
                                                       tsub: int) -> None:
    Y = np.random.default_rng(0).random(shape).astype(np.float32)
    out = downsample(Y, ssub, tsub)
    expected = _naive_block_mean(Y, (tsub,) + (ssub,) * (len(shape) - 1))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert out.dtype == np.float32 and not np.shares_memory(out, Y)
    scale = np.linspace(1, 2, math.prod(shape[1:]), dtype=np.float32).reshape(shape[1:])
    np.testing.assert_allclose(downsample(Y, ssub, tsub, divisor=scale),
                               _naive_block_mean(Y / scale, (tsub,) + (ssub,) * (len(shape) - 1)),
                               rtol=1e-5)


@pytest.mark.parametrize("dims, ssub", [((12, 15), 3), ((4, 9, 10), 2)])
def test_upsample_restores_linear_images_and_traces(dims: tuple[int, ...], ssub: int) -> None:
    tsub, T = 2, 21
    grids = np.meshgrid(*[np.arange(d, dtype=np.float64) for d in dims], indexing="ij")
    ramp = 5.0 + sum((i + 1) * g for i, g in enumerate(grids))  # linear, positive
    trace = 1.0 + 0.1 * np.arange(T)
    movie = (trace[:, None] * ramp.ravel()[None]).reshape((T,) + dims).astype(np.float32)
    ds = downsample(movie, ssub, tsub)
    ds_dims = ds.shape[1:]
    # rank-1 initialisation of the downsampled movie: footprint = first frame, trace = ratio
    a = ds[0].ravel().astype(np.float64)
    c = ds.reshape(ds.shape[0], -1).mean(axis=1) / a.mean()
    coarse = Initialization(A=sp.csc_matrix(a[:, None]), C=c[None], b=np.ones((a.size, 1)),
                            f=np.ones((1, ds.shape[0])), center=np.zeros((1, len(dims))),
                            method="test", dims=ds_dims)
    full = upsample(coarse, dims, T, ssub, tsub)
    assert full.A.shape == (math.prod(dims), 1) and full.C.shape == (1, T)
    model = (full.A.toarray() @ full.C).T.reshape((T,) + dims)
    # exact between block centres (linear interpolation of a linear function), in space
    # and in time; outside the outer centres values are held
    inner = tuple(slice(ssub // 2 + 1, d - ssub) for d in dims)
    t_in = slice(1, T - 2)
    np.testing.assert_allclose(model[(t_in,) + inner], movie[(t_in,) + inner], rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(full.b), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- HALS


def test_hals_lowers_the_residual_and_keeps_footprints_near_their_support(
        sim: simulate.Simulation) -> None:
    rough = greedy_roi(sim.movie, 4, 3, 7, nIter=1)
    refined = hals(sim.movie, rough, n_iter=3, dilation=1)
    assert residual_ms(sim.movie, refined) < residual_ms(sim.movie, rough)
    allowed = init_mod._dilated_support(rough.A, DIMS, 1)
    assert not (refined.A.toarray() > 0)[~allowed].any()
    assert refined.C.min() >= 0
    assert hals(sim.movie, rough, n_iter=0) is rough


# ----------------------------------------------------------------------------- registry


def test_register_method_runs_on_the_downsampled_normalised_movie(
        sim: simulate.Simulation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(init_mod, "_REGISTRY", dict(init_mod._REGISTRY))
    seen: dict[str, object] = {}

    def corners(Y: np.ndarray, params: Params, *, ssub: tuple[int, ...], tsub: int) -> Initialization:
        seen.update(shape=Y.shape, ssub=ssub, tsub=tsub)
        T, dims = Y.shape[0], Y.shape[1:]
        A = sp.csc_matrix(([1.0], ([0], [0])), shape=(math.prod(dims), 1), dtype=np.float32)
        return Initialization(A=A, C=np.ones((1, T), np.float32),
                              b=np.zeros((math.prod(dims), 0), np.float32),
                              f=np.zeros((0, T), np.float32), center=np.zeros((1, 2)),
                              method="corners", dims=dims)

    register_method("greedy_corr", corners, refine=False)
    init = initialize(sim.movie, params(**{"init.method": "greedy_corr", "init.ssub": 2}))
    assert seen == {"shape": (150, 15, 15), "ssub": (2, 2), "tsub": 2}
    assert init.method == "corners" and init.A.shape == (900, 1) and init.C.shape == (1, 300)
    assert "greedy_corr" in init_mod.available_methods()


# ----------------------------------------------------------------------------- errors


def test_clear_errors_for_bad_input(sim: simulate.Simulation) -> None:
    bad = sim.movie.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        initialize(bad, params())
    with pytest.raises(TypeError, match="NumPy array"):
        initialize(sim.movie.tolist(), params())
    with pytest.raises(ValueError, match="T × H × W"):
        initialize(sim.movie[0], params())
    with pytest.raises(ParameterError, match="spatial axes"):
        initialize(sim.movie[:, None], params())
    with pytest.raises(TypeError, match="Params"):
        initialize(sim.movie, {"K": 4})


def test_clear_errors_for_methods_and_sizes(sim: simulate.Simulation) -> None:
    with pytest.raises(ParameterError, match="seed_masks"):
        initialize(sim.movie, params(), method="seeded")
    with pytest.raises(ParameterError, match="not a known"):
        initialize(sim.movie, params(), method="magic")
    with pytest.raises(ParameterError, match="lower K"):
        greedy_roi(sim.movie[:, :3, :3], 10, 1, 3)
    with pytest.raises(ParameterError, match="gSig"):
        greedy_roi(sim.movie, 2, (1, 2, 3), 5)
    with pytest.raises(ValueError, match="mask"):
        initial_background(sim.movie, 1, mask=np.ones(10, bool))
    with pytest.raises(ParameterError, match="nb"):
        initial_background(sim.movie, 0)
    with pytest.raises(ValueError, match="both A"):
        initial_background(sim.movie, 1, A=sp.csc_matrix((900, 1)))
    with pytest.raises(ValueError, match="downsampled"):
        upsample(greedy_roi(sim.movie, 1, 3, 7), DIMS, 300, ssub=2, tsub=1)
