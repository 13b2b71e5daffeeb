"""CNMF in patches (map → reduce) and the out-of-core refinement over a Store by blocks.

* :func:`patch_grid`: window sizes, overlaps, coverage, an exact tiling by the owned parts, and
  the margin between an owned part and its window's edge, on 2-D and 3-D grids with borders.
* :class:`BlockedMovie`: the movie passes read block by block from a Store equal the in-memory
  computation (projections, the spatial update's statistics, whole spatial / temporal updates).
* :func:`combine_patches`: hand-built patch results — ownership keeps a shared cell once,
  footprints land at their global pixels, noise from the owner, backgrounds combined.
* :func:`fit` end to end on a simulated Store in ≥ 4 patches: ground truth recovered about as
  well as without patches; a local Dask cluster gives the serial result; clear NaN errors.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from somascope import simulate
from somascope.cnmf import fit
from somascope.cnmf.blocked import BlockedMovie
from somascope.cnmf.fit import components_per_fov
from somascope.cnmf.patches import (Patch, PatchResult, _embed, _owned, _window_pixels, combine_patches,
                                    patch_grid)
from somascope.cnmf.spatial import _PixelSystem, _sufficient_statistics, search_regions, update_spatial
from somascope.cnmf.temporal import project_movie, update_temporal
from somascope.metrics import match_footprints
from somascope.parallel import Engine
from somascope.params import Params
from somascope.store import Store

FR = 30.0


# ----------------------------------------------------------------------------- helpers


def blob(dims: tuple[int, ...], centre: tuple[float, ...], sigma: float, cut: float = 0.05) -> np.ndarray:
    """A Gaussian footprint (flat, C order of ``dims``), zero below ``cut`` × max."""
    grid = np.indices(dims, dtype=float)
    img = np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre)) / (2 * sigma**2))
    return np.where(img >= cut, img, 0.0).ravel()


def write_store(path: object, Y: np.ndarray, **kw: object) -> Store:
    store = Store.create(path, Y.shape, frame_rate=FR, **kw)
    store.write(0, Y)
    return store.finalize()


# ----------------------------------------------------------------------------- patch_grid

GRIDS = [
    # dims, rf, stride, border_pix
    ((96, 96), (24, 24), (9, 9), 0),
    ((100, 37), (16, 24), (8, 6), 0),  # second axis shorter than a patch: one patch, whole axis
    ((128, 90), (20, 20), (11, 10), 5),
    ((30, 64, 70), (8, 16, 16), (4, 5, 7), 2),  # a volume with a border
    ((50, 50), (10, 10), (0, 0), 0),  # no overlap asked
    ((30, 31), (5, 5), (9, 9), 0),  # the largest overlap allowed: patches one pixel apart
    ((40, 40), (30, 10), (7, 7), 3),  # first axis shorter than a patch after the border
]


@pytest.mark.parametrize("dims, rf, stride, border", GRIDS)
def test_patch_grid_windows_overlap_cover_and_owned_parts_tile(dims, rf, stride, border) -> None:
    patches = patch_grid(dims, rf, stride, border)
    ndim = len(dims)
    assert [p.index for p in patches] == list(range(len(patches)))
    count = np.zeros(dims, np.int64)
    for p in patches:
        assert len(p.window) == len(p.own) == ndim
        count[p.own] += 1
        for ax in range(ndim):
            lo, hi = border, dims[ax] - border
            win, own = p.window[ax], p.own[ax]
            # 2·rf wide, or the whole (border-cropped) axis when that is shorter
            assert win.stop - win.start == min(2 * rf[ax], hi - lo)
            assert lo <= win.start and win.stop <= hi
            # own ⊂ window, never empty
            assert win.start <= own.start < own.stop <= win.stop
            # an owned pixel is ≥ stride // 2 from its window's edge, unless that edge is the FOV's
            if win.start != lo:
                assert own.start - win.start >= stride[ax] // 2
            if win.stop != hi:
                assert win.stop - own.stop >= stride[ax] // 2
    # the owned parts tile the cropped field of view exactly: every pixel owned once
    inner = tuple(slice(border, d - border) for d in dims)
    expected = np.zeros(dims, np.int64)
    expected[inner] = 1
    np.testing.assert_array_equal(count, expected)
    # along every axis, neighbouring windows overlap by ≥ stride and cover [lo, hi)
    for ax in range(ndim):
        lo, hi = border, dims[ax] - border
        wins = sorted({(p.window[ax].start, p.window[ax].stop) for p in patches})
        assert wins[0][0] == lo and wins[-1][1] == hi
        for (a0, a1), (b0, b1) in zip(wins, wins[1:]):
            assert a0 < b0 and a1 < b1
            assert a1 - b0 >= stride[ax], (ax, wins)
        if 2 * rf[ax] >= hi - lo:
            assert len(wins) == 1
    # the number of patches is the product of the per-axis counts
    n_axis = [len({(p.window[ax].start, p.window[ax].stop) for p in patches}) for ax in range(ndim)]
    assert len(patches) == int(np.prod(n_axis))


def test_patch_grid_counts_and_shapes_of_a_known_grid() -> None:
    patches = patch_grid((96, 96), (24, 24), (9, 9))
    assert len(patches) == 9  # 48-px patches, ≥ 9 px overlap: starts 0, 24, 48
    assert [p.window[0].start for p in patches[::3]] == [0, 24, 48]
    assert all(p.shape == (48, 48) for p in patches)
    assert isinstance(patches[0], Patch)
    assert len(patch_grid((20, 20), (10, 10), (3, 3))) == 1  # one patch: the whole frame


@pytest.mark.parametrize("dims, rf, stride, border, match", [
    ((20, 20), (5, 5), (2, 2), 10, "border_pix"),  # nothing left of the axis
    ((20, 20), (5, 5), (2, 2), 12, "border_pix"),
    ((20, 20), (5,), (2, 2), 0, "one value per axis"),
    ((20, 20), (5, 5), (2,), 0, "one value per axis"),
    ((20, 20, 20), (5, 5), (2, 2), 0, "one value per axis"),
])
def test_patch_grid_rejects_bad_inputs(dims, rf, stride, border, match) -> None:
    with pytest.raises(ValueError, match=match):
        patch_grid(dims, rf, stride, border)


# ----------------------------------------------------------------------------- BlockedMovie


@pytest.fixture(scope="module")
def small_movie(tmp_path_factory) -> dict:
    """300 × 50 × 70 movie ``A·C + b·f`` + noise, as an array and as a Store; blocks 32 × 48."""
    rng = np.random.default_rng(7)
    dims, T = (50, 70), 300
    centres = [(8, 10), (12, 15), (25, 33), (40, 60), (30, 47), (45, 8), (20, 66)]
    A = np.stack([blob(dims, c, 2.0) for c in centres], 1)
    spikes = rng.random((len(centres), T)) < 0.05
    from scipy.signal import lfilter

    C = lfilter([1.0], [1.0, -0.9], spikes * rng.uniform(0.5, 1.5, spikes.shape), axis=1)
    yy, xx = np.indices(dims)
    b = (1.0 + 0.01 * xx + 0.02 * yy).ravel()[:, None]
    f = (2.0 + 0.3 * np.sin(np.arange(T) / 15.0))[None, :]
    Y = (A @ C + b @ f).T.reshape(T, *dims) + 0.1 * rng.standard_normal((T, *dims))
    Y = Y.astype(np.float32)
    store = write_store(tmp_path_factory.mktemp("patchtests_blocked") / "movie.zarr", Y)
    return {"Y": Y, "store": store, "A": A, "C": C, "b": b, "f": f, "dims": dims, "T": T}


def test_blocked_movie_blocks_tile_the_frame(small_movie) -> None:
    bm = BlockedMovie(small_movie["store"], block=(32, 48))
    assert bm.shape == small_movie["Y"].shape and bm.n_pixels == 50 * 70
    seen = np.concatenate([bm.block_pixels(blk) for blk in bm.blocks])
    np.testing.assert_array_equal(np.sort(seen), np.arange(bm.n_pixels))
    assert len(bm.blocks) == 4  # 50 → 32 + 18, 70 → 48 + 22
    with pytest.raises(ValueError, match="block"):
        BlockedMovie(small_movie["store"], block=(32,))
    with pytest.raises(ValueError, match="pixels"):
        bm.project(sp.csc_matrix((10, 2)))


@pytest.mark.parametrize("engine", [None, "serial"])
def test_blocked_project_equals_in_memory(small_movie, engine) -> None:
    rng = np.random.default_rng(3)
    P = small_movie["Y"][0].size
    # random sparse footprints, one dense column (touches every block) and one empty column
    A = sp.random(P, 6, density=0.05, random_state=4, format="csc")
    A = sp.hstack([A, sp.csc_matrix(np.ones((P, 1))), sp.csc_matrix((P, 1))], format="csc")
    A.data = rng.uniform(0.1, 1.0, A.nnz)
    eng = None if engine is None else Engine(engine)
    bm = BlockedMovie(small_movie["store"], eng, block=(32, 48))
    got = bm.project(A)
    want = project_movie(small_movie["Y"], A)
    assert got.shape == (8, small_movie["T"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert np.all(got[-1] == 0)
    # the dispatch in project_movie goes to the blocked movie
    np.testing.assert_allclose(project_movie(bm, A), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("need_yy", [True, False])
def test_blocked_pattern_statistics_equal_in_memory(small_movie, need_yy) -> None:
    Y, dims, T = small_movie["Y"], small_movie["dims"], small_movie["T"]
    A = sp.csc_matrix(small_movie["A"])
    nb = 1
    region = search_regions(A, dims, method="dilate")
    system = _PixelSystem.build(region, nb)
    Cf = np.vstack([small_movie["C"], small_movie["f"]])
    want = _sufficient_statistics(Y.reshape(T, -1), Cf, system, 500, need_yy=need_yy)
    bm = BlockedMovie(small_movie["store"], block=(32, 48))
    got = _sufficient_statistics(bm, Cf, system, 500, need_yy=need_yy)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)
    # and the numbers are the statistics themselves (checked at a few entries by hand)
    U, _, ymean = got
    Y2 = Y.reshape(T, -1).astype(np.float64)
    np.testing.assert_allclose(ymean, Y2.mean(0), rtol=1e-6)
    rows = system.rows
    for e in np.random.default_rng(0).choice(U.size, 20, replace=False):
        np.testing.assert_allclose(U[e], Y2[:, rows[e]] @ Cf[system.comp[e]], rtol=1e-6)
    if need_yy:
        np.testing.assert_allclose(got[1], (Y2**2).sum(0), rtol=1e-6)


def test_blocked_spatial_and_temporal_updates_equal_in_memory(small_movie) -> None:
    Y, dims = small_movie["Y"], small_movie["dims"]
    params = Params.from_neuron(2, fr=FR)
    rng = np.random.default_rng(5)
    A0 = sp.csc_matrix(small_movie["A"] * rng.uniform(0.8, 1.2, small_movie["A"].shape[1]))
    C0 = small_movie["C"] + 0.05 * rng.random(small_movie["C"].shape)
    f0, b0 = small_movie["f"], small_movie["b"]
    sn = np.full(int(np.prod(dims)), 0.1)
    bm = BlockedMovie(small_movie["store"], block=(32, 48))

    mem = update_spatial(Y, A0, C0, f0, sn, params, b=b0)
    blk = update_spatial(bm, A0, C0, f0, sn, params, b=b0)
    np.testing.assert_array_equal(mem.kept, blk.kept)
    assert mem.A.shape[1] >= 6
    np.testing.assert_allclose(blk.A.toarray(), mem.A.toarray(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(blk.b, mem.b, rtol=1e-4, atol=1e-5)

    C_kept = C0[mem.kept]
    tm = update_temporal(Y, mem.A, mem.b, C_kept, f0, params)
    tb = update_temporal(bm, mem.A, mem.b, C_kept, f0, params)
    scale = np.abs(tm.C).max()
    np.testing.assert_allclose(tb.C, tm.C, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(tb.f, tm.f, rtol=1e-4, atol=1e-5 * np.abs(tm.f).max())
    # the update recovers the true traces (so the comparison is of something meaningful)
    for k, kk in enumerate(mem.kept):
        assert np.corrcoef(tm.C[k], small_movie["C"][kk])[0, 1] > 0.9


# ----------------------------------------------------------------------------- combine_patches


def two_patches() -> tuple[tuple[int, int], list[Patch]]:
    """A 20 × 36 frame in two patches: windows [0, 24) and [12, 36) along x, owned [0, 18), [18, 36)."""
    dims = (20, 36)
    patches = patch_grid(dims, (10, 12), (8, 8))
    assert [(p.window[1].start, p.window[1].stop, p.own[1].start, p.own[1].stop) for p in patches] == [
        (0, 24, 0, 18), (12, 36, 18, 36)]
    return dims, patches


def local(vec: np.ndarray, dims: tuple[int, ...], patch: Patch) -> np.ndarray:
    """A full-frame image (flat) cut to a patch's window (flat, C order of the window)."""
    return vec.reshape(dims)[patch.window].ravel()


def result(patch: Patch, A: np.ndarray, C: np.ndarray, b: np.ndarray, f: np.ndarray,
           sn: float) -> PatchResult:
    """A hand-built map-step result (A: window pixels × K, b: window pixels × nb)."""
    n = int(np.prod(patch.shape))
    return PatchResult(patch=patch, A=sp.csc_matrix(A.reshape(n, -1), dtype=np.float32),
                       C=np.asarray(C, np.float32).reshape(-1, f.shape[1]), b=np.asarray(b, np.float32),
                       f=np.asarray(f, np.float32), sn=np.full(n, sn, np.float32),
                       n_found=A.reshape(n, -1).shape[1], n_screened=0)


def test_owned_uses_centre_of_mass_in_global_coordinates() -> None:
    dims, (p0, p1) = two_patches()
    # blobs of radius < 4 px: those centred in the overlap [12, 24) lie whole in both windows
    cells = {"left": (10, 6), "shared_left": (10, 17.7), "shared_right": (10, 18.3), "right": (8, 30),
             "edge_left": (3, 14), "edge_right": (16, 21.5)}
    for name, centre in cells.items():
        g = blob(dims, centre, 1.5)
        owners = []
        for p in (p0, p1):
            A = local(g, dims, p)[:, None]
            owners.append(bool(A.any()) and bool(_owned(A, p)[0]))  # only patches that see it
        # a blob whose centre lies in the overlap is seen by both patches, owned by exactly one
        assert sum(owners) == 1, name
        assert owners[0] == (centre[1] < 18), name


def test_the_owner_of_a_cell_sees_it_whole_on_a_2d_grid() -> None:
    """Cells narrower than the overlap: the patch owning the centre holds the whole cell and
    keeps it, and no other patch that holds it whole keeps it too."""
    dims = (96, 96)
    patches = patch_grid(dims, (24, 24), (9, 9))  # 3 × 3 patches, overlaps ≥ 9 px
    rng = np.random.default_rng(4)
    for centre in rng.uniform(4, 92, size=(60, 2)):
        g = blob(dims, tuple(centre), 1.5)  # radius 3.7 px < stride / 2
        owner = [p for p in patches if all(o.start <= c < o.stop for o, c in zip(p.own, centre))]
        assert len(owner) == 1
        whole = [p for p in patches if np.isclose(local(g, dims, p).sum(), g.sum())]
        assert owner[0] in whole
        keepers = [p for p in whole if _owned(local(g, dims, p)[:, None], p)[0]]
        assert keepers == owner, centre


def test_combine_keeps_a_shared_cell_once_at_its_global_pixels() -> None:
    dims, patches = two_patches()
    T = 50
    rng = np.random.default_rng(2)
    centres = [(10, 6), (9, 16), (10, 20), (6, 31)]  # 16 and 20 lie in the overlap [12, 24)
    truth = np.stack([blob(dims, c, 1.5) for c in centres], 1)
    traces = rng.random((len(centres), T))
    f = np.ones((1, T))
    results = []
    for p, sn in zip(patches, (1.0, 2.0)):
        # every cell the patch sees (fully or in part), as a map step would find it
        seen = [k for k in range(len(centres)) if local(truth[:, k], dims, p).any()]
        A = np.stack([local(truth[:, k], dims, p) for k in seen], 1)
        keep = _owned(A, p)  # what _fit_patch does after screening
        kept = [k for k, ok in zip(seen, keep) if ok]
        results.append((kept, result(p, A[:, keep], traces[kept], np.ones((A.shape[0], 1)), f, sn)))
    assert results[0][0] == [0, 1] and results[1][0] == [2, 3]
    A, C, b, fc, sn = combine_patches([r for _, r in results], dims, Params.from_neuron(2, fr=FR))
    assert A.shape == (20 * 36, 4) and sp.isspmatrix_csc(A) and A.dtype == np.float32
    np.testing.assert_allclose(A.toarray(), truth, rtol=1e-6)  # each cell once, at its pixels
    np.testing.assert_allclose(C, traces, rtol=1e-6)
    # the noise of every pixel comes from the patch that owns it
    sn_img = sn.reshape(dims)
    assert np.all(sn_img[:, :18] == 1.0) and np.all(sn_img[:, 18:] == 2.0)


def test_embed_moves_rows_to_their_window_pixels() -> None:
    dims = (9, 11)
    patch = Patch(index=0, window=(slice(2, 6), slice(3, 8)), own=(slice(2, 6), slice(3, 8)))
    rng = np.random.default_rng(0)
    M = sp.random(20, 3, density=0.4, random_state=1, format="csc")
    M.data = rng.random(M.nnz)
    px = _window_pixels(patch.window, dims)
    E = _embed(M, px, 99).toarray()
    for k in range(3):
        img = E[:, k].reshape(dims)
        np.testing.assert_array_equal(img[patch.window], M[:, k].toarray().reshape(patch.shape))
        img[patch.window] = 0
        assert not img.any()


def test_combine_noise_outside_every_patch_is_the_median() -> None:
    dims = (30, 30)
    patches = patch_grid(dims, (8, 8), (4, 4), border_pix=3)
    T = 20
    res = [result(p, np.zeros((int(np.prod(p.shape)), 0)), np.zeros((0, T)),
                  np.zeros((int(np.prod(p.shape)), 0)), np.zeros((0, T)), 1.0 + p.index)
           for p in patches]
    A, C, b, f, sn = combine_patches(res, dims, Params.from_neuron(2, fr=FR))
    assert A.shape == (900, 0) and C.shape == (0, T) and b.shape == (900, 0) and f.shape == (0, T)
    img = sn.reshape(dims)
    inner = img[3:-3, 3:-3]
    for p in patches:
        assert np.all(img[p.own] == 1.0 + p.index)
    border = np.ones(dims, bool)
    border[3:-3, 3:-3] = False
    assert np.all(img[border] == np.median(inner))


def _shared_background(low_rank: bool) -> tuple:
    """Four patches whose local backgrounds are one global b·f0 (each scaled differently)."""
    dims = (40, 40)
    patches = patch_grid(dims, (12, 12), (8, 8))
    assert len(patches) == 4
    T = 120
    rng = np.random.default_rng(11)
    yy, xx = np.indices(dims)
    b_true = (1.0 + 0.5 * np.sin(xx / 7.0) + 0.02 * yy).ravel()
    f0 = 2.0 + 0.4 * np.sin(np.arange(T) / 9.0) + 0.1 * rng.random(T)
    res = []
    for p in patches:
        s = 0.5 + p.index  # each patch splits the scale between its b and f its own way
        n = int(np.prod(p.shape))
        res.append(result(p, np.zeros((n, 0)), np.zeros((0, T)), local(b_true, dims, p)[:, None] / s,
                          s * f0[None, :], 1.0))
    params = Params.from_neuron(2, fr=FR).replace(nb=1, low_rank_background=low_rank)
    return dims, patches, b_true, f0, res, params


def test_combine_low_rank_background_reproduces_shared_background() -> None:
    dims, patches, b_true, f0, res, params = _shared_background(True)
    _, _, b, f, _ = combine_patches(res, dims, params)
    assert b.shape == (1600, 1) and f.shape == (1, f0.size)
    assert np.all(b >= 0) and np.all(f >= 0)
    model = b.astype(np.float64) @ f.astype(np.float64)
    truth = np.outer(b_true, f0)
    rel = np.linalg.norm(model - truth) / np.linalg.norm(truth)
    assert rel < 1e-5, rel  # measured 4.7e-8


def test_combine_full_background_keeps_every_patch_column_divided_by_cover() -> None:
    dims, patches, b_true, f0, res, params = _shared_background(False)
    _, _, b, f, _ = combine_patches(res, dims, params)
    assert b.shape == (1600, 4) and f.shape == (4, f0.size)
    cover = np.zeros(dims)
    for p in patches:
        cover[p.window] += 1
    assert cover.max() == 4 and cover.min() == 1
    for k, (p, r) in enumerate(zip(patches, res)):
        want = np.zeros(dims)
        want[p.window] = r.b[:, 0].reshape(p.shape)
        np.testing.assert_allclose(b[:, k].reshape(dims), want / cover, rtol=1e-6)
        np.testing.assert_allclose(f[k], r.f[0], rtol=1e-6)
    # and together they are the shared background exactly
    np.testing.assert_allclose(b.astype(np.float64) @ f, np.outer(b_true, f0), rtol=1e-5)


# ----------------------------------------------------------------------------- end to end

DIMS = (96, 96)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> simulate.Simulation:
    """36 cells (28 active somata) in 96 × 96 × 800 frames, written to a Store."""
    path = tmp_path_factory.mktemp("patchtests_sim") / "sim.zarr"
    return simulate.two_photon(dims=DIMS, n_frames=800, n_cells=36, neuron_radius=4, seed=0, snr=2.0,
                               out=path)


@pytest.fixture(scope="module")
def patch_params() -> Params:
    return Params.from_neuron(4, fr=FR).replace(rf=(24, 24), K=10)


def active_somata(sim: simulate.Simulation) -> np.ndarray:
    return np.flatnonzero(sim.active & (sim.kind == "soma"))


def f1_accepted(sim: simulate.Simulation, est) -> float:
    acc = est.accepted_indices
    return match_footprints(sim.A[:, active_somata(sim)], est.A[:, acc], DIMS).f1


@pytest.fixture(scope="module")
def fits(sim, patch_params) -> dict:
    """The simulated Store fitted in patches (engine None: in this process) and whole."""
    assert isinstance(sim.movie, Store)
    assert len(patch_grid(DIMS, patch_params.patch.rf, patch_params.patch.stride)) >= 4
    t0 = time.perf_counter()
    patched = fit(sim.movie, patch_params)
    t1 = time.perf_counter()
    whole_params = patch_params.replace(rf=None, K=components_per_fov(patch_params, DIMS))
    whole = fit(sim.movie, whole_params)
    t2 = time.perf_counter()
    return {"patched": patched, "whole": whole, "t_patched": t1 - t0, "t_whole": t2 - t1}


def test_fit_in_patches_finds_the_active_somata(sim, fits) -> None:
    est = fits["patched"]
    assert est.A.shape == (int(np.prod(DIMS)), est.K) and est.C.shape == (est.K, sim.n_frames)
    f1_patched = f1_accepted(sim, est)
    f1_whole = f1_accepted(sim, fits["whole"])
    print(f"\nF1 (accepted vs {active_somata(sim).size} active somata): patches {f1_patched:.3f} "
          f"({fits['t_patched']:.1f} s, K={est.K}), whole FOV {f1_whole:.3f} "
          f"({fits['t_whole']:.1f} s, K={fits['whole'].K})")
    assert f1_patched >= 0.85  # measured 0.98 (seeds 1, 2: 0.93, 0.92)
    assert abs(f1_patched - f1_whole) <= 0.1  # whole FOV measured 0.96
    # every active soma found is found once: no duplicates left by the patch borders
    m = match_footprints(sim.A[:, active_somata(sim)], est.A, DIMS)
    assert m.recall >= 0.9
    centres = np.array([np.unravel_index(int(np.argmax(est.A[:, k].toarray())), DIMS)
                        for k in est.accepted_indices])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 99
    assert d.min() > 2.0, "two accepted components peak at the same place: a duplicate"


# ----------------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def engine_fits(sim, patch_params) -> dict:
    """The same Store fitted in patches with a serial engine and on a 2-worker local cluster."""
    t0 = time.perf_counter()
    serial = fit(sim.movie, patch_params, engine=Engine("serial"), evaluate=False)
    t1 = time.perf_counter()
    with Engine("local", n_workers=2) as eng:
        t2 = time.perf_counter()
        dask = fit(sim.movie, patch_params, engine=eng, evaluate=False)
        t3 = time.perf_counter()
    print(f"\nserial engine {t1 - t0:.1f} s; local cluster start {t2 - t1:.1f} s, fit {t3 - t2:.1f} s")
    return {"serial": serial, "dask": dask}


def test_serial_and_local_cluster_give_the_same_components(engine_fits) -> None:
    s, d = engine_fits["serial"], engine_fits["dask"]
    assert s.K == d.K and s.K > 10
    # Bitwise equal when this process also runs BLAS on one thread (as the workers do); with
    # several BLAS threads here, sums are ordered differently and a few footprint pixels move
    # by ~1e-5 of the footprint's peak (measured 7.7e-6 on unit-norm footprints): hence atol.
    a_scale = float(np.abs(s.A.data).max())
    np.testing.assert_allclose(d.A.toarray(), s.A.toarray(), rtol=1e-5, atol=1e-4 * a_scale)
    c_scale = float(np.abs(s.C).max())
    np.testing.assert_allclose(d.C, s.C, rtol=1e-5, atol=1e-5 * c_scale)
    np.testing.assert_allclose(d.f, s.f, rtol=1e-5, atol=1e-5 * float(np.abs(s.f).max()))


def test_store_out_of_core_equals_movie_in_memory(sim, patch_params, engine_fits) -> None:
    """The Store read by blocks (BlockedMovie) and the same movie as an array: the same fit."""
    s = engine_fits["serial"]
    m = fit(np.asarray(sim.movie), patch_params, evaluate=False)
    assert m.K == s.K
    a_scale = float(np.abs(s.A.data).max())
    # The passes' products are float32 BLAS (~1e-7 relative) summed over 5000-pixel slabs in
    # memory and over the Store's 64×64 blocks out of core; the updates' iterations carry that
    # to ~1e-4 of the peak in a rare footprint pixel (measured 1.4e-4 in 1 of 295k) and of a
    # trace sample (1.9e-4 relative in 2 of 25.6k): hence the tolerances.
    np.testing.assert_allclose(m.A.toarray(), s.A.toarray(), rtol=1e-5, atol=3e-4 * a_scale)
    np.testing.assert_allclose(m.C, s.C, rtol=1e-3, atol=1e-5 * float(np.abs(s.C).max()))


def test_fit_without_evaluation_leaves_the_split_unset(engine_fits, fits) -> None:
    est = engine_fits["serial"]
    assert est.idx_components is None and est.idx_components_bad is None
    assert est.SNR_comp is None and est.r_values is None
    assert est.K > 0 and est.C.shape[0] == est.K
    # evaluated, the same fit has the split
    assert fits["patched"].idx_components is not None


# ----------------------------------------------------------------------------- long recordings


class CountingSource:
    """A Store seen through its reads: the frame range of every request."""

    def __init__(self, store: Store) -> None:
        self.store, self.requests = store, []
        self.shape, self.time_chunk = store.shape, store.time_chunk

    def __getitem__(self, key: tuple) -> np.ndarray:
        self.requests.append((key[0].start, key[0].stop))
        return self.store[key]


def test_a_patch_is_read_once_in_whole_chunks_binned_in_time(tmp_path, monkeypatch) -> None:
    """One pass in whole chunks gives the binned patch and the noise of the given pieces."""
    from somascope.cnmf import patches
    from somascope.cnmf.initialization import downsample
    from somascope.deconvolution.noise import estimate_noise_segments

    rng = np.random.default_rng(5)
    Y = rng.standard_normal((530, 40, 40)).astype(np.float32)
    store = write_store(tmp_path / "s.zarr", Y, chunks=(48, 32, 32))
    patch = Patch(0, (slice(3, 35), slice(5, 29)), (slice(3, 35), slice(5, 29)))
    monkeypatch.setattr(patches, "_READ_ELEMENTS", 300 * 32 * 24)  # several reads
    src = CountingSource(store)
    ranges = [(0, 20), (250, 300), (310, 320), (510, 530)]  # pieces inside one read and across reads
    binned, sn = patches._read_binned(src, patch, 5, ranges, (0.25, 0.5), "mean")
    window = Y[(slice(None),) + patch.window]
    np.testing.assert_allclose(binned, downsample(window, 1, 5), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sn, estimate_noise_segments([window[a:b].reshape(b - a, -1) for a, b in ranges]),
                               rtol=1e-6)
    starts = [a for a, _ in src.requests]
    assert len(src.requests) > 1 and starts == sorted(starts)
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(src.requests, src.requests[1:]))  # one pass
    assert src.requests[-1][1] == 530
    assert all(a % 240 == 0 for a in starts)  # whole chunks of 48, whole bins of 5


def test_patch_bins_grow_with_the_recording_beyond_the_bound() -> None:
    from somascope.cnmf.patches import MAX_INIT_FRAMES, patch_tsub

    assert patch_tsub(3000, 4) == 4 and patch_tsub(4 * MAX_INIT_FRAMES, 4) == 4
    for T in (21_000, 108_000):
        tsub = patch_tsub(T, 4)
        assert tsub > 4 and -(-T // tsub) <= MAX_INIT_FRAMES
    assert patch_tsub(20, 4) == 4 and patch_tsub(6, 4) == 3  # never more than half the frames


def test_bounded_bins_and_noise_segments_still_find_the_cells(sim, patch_params, fits, monkeypatch) -> None:
    """A recording 8× longer than the bound (made here by lowering the bounds): the patches are
    initialised on bins of 8 frames, noise and screen read 4 segments, and the cells are found."""
    from somascope.cnmf import patches
    from somascope.deconvolution import noise

    monkeypatch.setattr(patches, "MAX_INIT_FRAMES", 100)
    monkeypatch.setattr(noise, "NOISE_MAX_FRAMES", 400)
    monkeypatch.setattr(noise, "NOISE_SEGMENT_FRAMES", 100)
    assert patches.patch_tsub(sim.n_frames, patch_params.patch.p_tsub) == 8
    assert len(noise.pixel_noise_frames(sim.n_frames)) == 4
    est = fit(sim.movie, patch_params)
    f1 = f1_accepted(sim, est)
    print(f"\nF1 with bins of 8 frames and 4 noise segments: {f1:.3f} (default {f1_accepted(sim, fits['patched']):.3f})")
    assert est.C.shape == (est.K, sim.n_frames)
    assert f1 >= 0.85
    # 400 frames instead of 800: the same noise levels, each from half the frequency bins
    ratio = est.sn / fits["patched"].sn
    assert abs(np.median(ratio) - 1) < 0.03 and np.percentile(np.abs(ratio - 1), 95) < 0.25


def test_full_cnmf_in_each_patch_finds_the_cells(sim, patch_params) -> None:
    """``patch.only_init=False``: each patch reads its whole window and runs the whole CNMF."""
    est = fit(sim.movie, patch_params.replace(**{"patch.only_init": False}))
    assert est.C.shape == (est.K, sim.n_frames)
    assert f1_accepted(sim, est) >= 0.85


# ----------------------------------------------------------------------------- errors


def test_nan_in_a_patch_names_the_patch_and_the_fix(tmp_path) -> None:
    rng = np.random.default_rng(0)
    Y = (5.0 + rng.standard_normal((40, 60, 60))).astype(np.float32)
    Y[17, 40, 50] = np.nan  # in two of the 16 patches (the first of them raises)
    store = write_store(tmp_path / "nan.zarr", Y)
    params = Params.from_neuron(4, fr=FR).replace(rf=(12, 12), K=2)
    patches = patch_grid((60, 60), params.patch.rf, params.patch.stride)
    bad = [p for p in patches if all(s.start <= c < s.stop for s, c in zip(p.window, (40, 50)))]
    assert len(patches) > 1 and bad
    with pytest.raises(ValueError, match="NaN") as info:
        fit(store, params)
    msg = str(info.value)
    assert "frame 17" in msg and "Fix" in msg
    described = [" × ".join(f"{s.start}:{s.stop}" for s in p.window) for p in bad]
    assert any(d in msg for d in described), msg


def test_nan_only_in_the_skipped_border_is_harmless(tmp_path) -> None:
    """The fix the NaN error suggests works: NaN confined to ``patch.border_pix`` is skipped."""
    s = simulate.two_photon(dims=(48, 48), n_frames=300, n_cells=8, neuron_radius=4, seed=1, snr=2.0)
    Y = np.array(s.movie)
    Y[:, :, 0] = np.nan  # a motion-correction edge
    store = write_store(tmp_path / "border.zarr", Y)
    params = Params.from_neuron(4, fr=FR).replace(rf=(12, 12), K=4, border_pix=2)
    with pytest.raises(ValueError, match="NaN"):
        fit(store, params.replace(border_pix=0), evaluate=False)
    est = fit(store, params)
    assert est.K > 0 and est.idx_components is not None
    for name in ("C", "YrA", "b", "f", "sn", "SNR_comp", "r_values"):
        assert np.all(np.isfinite(getattr(est, name))), name
    assert np.all(np.isfinite(est.A.data))
    nan_px = np.flatnonzero(~np.isfinite(Y[0]).ravel())
    assert est.A[nan_px].nnz == 0 and not est.b[nan_px].any()
