"""The hard family's volume variant (``volumetric(preset="hard")``) and the structural second
channel (``channels=2``) of the hard volume and 2-D presets: shapes, ground truth, motion that is
the same on every plane, files that read back, and the ``simulate`` command."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from somascope.io import open_movie
from somascope.simulate import one_photon, two_photon, volumetric, write_ground_truth_folder
from somascope.simulate.groundtruth import to_adu
from somascope.simulate.motion import make_motion, warp_frame
from somascope.simulate.render import NoiseModel, render_movie

VOL = dict(dims=(4, 64, 64), n_frames=60, frame_rate=5.0, decay_time=0.8, preset="hard", seed=3)


@pytest.fixture(scope="module")
def vol():
    return volumetric(**VOL, motion="rigid", channels=2)


@pytest.fixture(scope="module")
def still():  # no motion: temporal statistics per voxel
    return volumetric(**{**VOL, "dims": (3, 48, 48), "n_frames": 120}, motion=None, channels=2)


def test_shapes_and_ground_truth(vol):
    Z, H, W = VOL["dims"]
    T, K = VOL["n_frames"], vol.n_cells
    assert vol.movie.shape == (T, Z, H, W) and vol.movie.dtype == np.float32
    assert vol.A.shape == (Z * H * W, K) and vol.C.shape == (K, T) and vol.spike_counts.shape == (K, T)
    assert vol.still_mean.shape == (Z, H, W) and vol.extra["b0"].shape == (Z, H, W)
    assert vol.centers.shape == (K, 3) and vol.shifts.shape == (T, 3)
    assert vol.modality == "volumetric" and vol.params["preset"] == "hard"
    soma = vol.kind == "soma"
    assert soma.sum() > 10 and (~soma).sum() >= 1
    assert np.sum(soma & ~vol.active) == round(0.2 * soma.sum())  # silent somata, as in 2-D
    assert not vol.C[~vol.active].any()
    # the footprints sit where the centres say (z in planes, C order of (Z, H, W))
    A = vol.A.toarray().T.reshape(K, Z, H, W)
    peak = np.array(np.unravel_index(A.reshape(K, -1).argmax(axis=1), (Z, H, W))).T
    assert np.median(np.abs(peak[soma] - vol.centers[soma]).max(axis=1)) < 3
    assert np.allclose(A.reshape(K, -1).max(axis=1), 1.0)  # unit-max
    # the movie's mean follows the expected still volume, plane by plane
    movie_mean = np.asarray(vol.movie).mean(axis=(0, 2, 3))
    assert np.allclose(movie_mean, vol.still_mean.mean(axis=(1, 2)), rtol=0.05)


def test_somata_span_about_two_planes(vol):
    Z, H, W = VOL["dims"]
    A = vol.A.toarray().T.reshape(vol.n_cells, Z, H, W)
    planes = (A.max(axis=(2, 3)) >= 0.2).sum(axis=1)
    soma = vol.kind == "soma"
    assert 1.5 <= planes[soma].mean() <= 2.6
    assert planes[soma].min() >= 1 and planes[soma].max() <= 3
    assert vol.extra["axial_radius"] == pytest.approx(1.0) and vol.extra["plane_spacing"] == pytest.approx(6.0)
    # a larger plane spacing: thinner in planes
    thin = volumetric(**{**VOL, "dims": (3, 48, 48), "n_frames": 5}, plane_spacing=12.0)
    At = thin.A.toarray().T.reshape(thin.n_cells, 3, 48, 48)
    spans = (At.max(axis=(2, 3)) >= 0.2).sum(axis=1)[thin.kind == "soma"]
    assert thin.extra["axial_radius"] == pytest.approx(0.5) and spans.mean() < planes[soma].mean()


def test_each_plane_has_its_own_background(vol):
    b0 = vol.extra["b0"].mean(axis=(1, 2))
    assert np.ptp(b0) / b0.mean() > 0.05
    gain = vol.extra["plane_gain"]
    assert np.corrcoef(b0, gain)[0, 1] > 0.9  # the planes' levels follow their gains
    assert 4 < np.median(vol.still_mean) < 14  # ~8 photons/voxel of background, plus cells


def test_motion_is_in_plane_and_the_same_on_every_plane(vol):
    T = VOL["n_frames"]
    assert np.all(vol.shifts[:, 0] == 0) and np.abs(vol.shifts[:, 1:]).max() > 0.3
    for t in (0, T // 2, T - 1):
        d = vol.displacement(t)
        assert d.shape == (3, *VOL["dims"]) and not d[0].any()
        assert np.all(d[1:] == d[1:, :1])  # every plane alike
    warped = volumetric(**{**VOL, "dims": (2, 40, 40), "n_frames": 20}, motion="nonrigid")
    d = warped.displacement(7)
    assert not d[0].any() and np.array_equal(d[1:, 0], d[1:, 1]) and np.ptp(d[1]) > 0


def test_renderer_moves_each_plane_by_the_planar_motion():
    rng = np.random.default_rng(0)
    dims = (3, 24, 28)
    T = 5
    A = sparse.random(int(np.prod(dims)), 4, density=0.05, random_state=1, format="csc", dtype=np.float32)
    C = rng.uniform(0, 2, (4, T))
    b = np.ones((np.prod(dims), 1), np.float32)
    f = np.ones((1, T))
    mot = make_motion(rng, dims[1:], T, 10.0, "rigid", np.full(2, 2.0), np.zeros(2))
    movie = render_movie(A, C, b, f, dims, noise=NoiseModel(0.0, 0.0), noise_key=(0, 7, 0), motion=mot, n_threads=1)
    for t in range(T):
        clean = (A @ C[:, t] + 1.0).astype(np.float32).reshape(dims)
        for z in range(dims[0]):
            expect = np.maximum(warp_frame(clean[z], mot, t, 3), 0.0)
            assert np.allclose(movie[t, z], expect, atol=1e-5)


def test_same_seed_same_movie():
    kw = {**VOL, "dims": (2, 32, 32), "n_frames": 15}
    a, b = volumetric(**kw, motion="rigid", channels=2), volumetric(**kw, motion="rigid", channels=2)
    assert np.array_equal(a.movie, b.movie) and np.array_equal(a.extra["structural"], b.extra["structural"])
    assert np.array_equal(a.shifts, b.shifts) and (a.A != b.A).nnz == 0
    c = volumetric(**{**kw, "seed": 4}, motion="rigid")
    assert not np.array_equal(a.movie, c.movie)
    # the structural channel leaves the functional one as it was
    assert np.array_equal(a.movie, volumetric(**kw, motion="rigid").movie)


def test_structural_labels_most_somata_and_no_dendrites(vol):
    soma = vol.kind == "soma"
    labelled = vol.extra["labelled"]
    assert labelled.sum() == round(0.85 * soma.sum()) and not labelled[~soma].any()
    assert (labelled & soma & ~vol.active).any()  # silent somata carry it too
    A_s = vol.extra["structural_A"]
    assert A_s.shape == vol.A.shape
    assert np.array_equal(np.diff(A_s.indptr) > 0, labelled)
    assert np.all(vol.extra["structural_brightness"][~labelled] == 0)


def test_structural_channel_is_static_and_only_noise(still):
    s = np.asarray(still.extra["structural"], np.float64)
    mean, var = s.mean(axis=0), s.var(axis=0, ddof=1)
    expected = still.extra["structural_mean"]
    assert np.allclose(mean, expected, rtol=0.15, atol=0.4)
    ratio = var / (expected + 0.3**2)  # Poisson shot noise + read noise, nothing else
    assert 0.9 < np.median(ratio) < 1.1
    nuclei = expected > 0.5 * expected.max()
    assert 0.8 < np.median(ratio[nuclei]) < 1.2  # even where the marker is brightest
    # the functional channel, in contrast, fluctuates beyond its noise where cells fire
    fn = np.asarray(still.movie, np.float64)
    Z, H, W = still.dims
    A = still.A.toarray().reshape(Z, H, W, -1)
    busiest = int(np.argmax(still.C.std(axis=1)))
    px = A[..., busiest] > 0.3

    def excess(movie: np.ndarray, level: np.ndarray) -> float:  # the pixels' summed trace: variance / noise's
        return float(movie[:, px].sum(axis=1).var(ddof=1) / (level[px] + 0.3**2).sum())

    assert excess(fn, still.still_mean) > 2.0
    assert 0.6 < excess(s, expected) < 1.5


def _register(frame: np.ndarray, template: np.ndarray) -> np.ndarray:
    from somascope.motion import register_frame

    shift, _ = register_frame(frame.astype(np.float32), template.astype(np.float32), max_shifts=6,
                              upsample_factor=10)
    return np.asarray(shift, float)


def test_both_channels_move_with_the_true_shifts_on_every_plane(vol):
    """Frames averaged over runs of steady motion, registered plane by plane to each channel's
    still image, are displaced by the true in-plane shift — the same on every plane."""
    shifts = vol.shifts[:, 1:]
    order = np.argsort(shifts[:, 0] + 0.01 * shifts[:, 1])
    groups = [order[:15], order[-15:]]  # the frames most displaced one way and the other
    for movie, template in ((np.asarray(vol.extra["structural"]), vol.extra["structural_mean"]),
                            (np.asarray(vol.movie), vol.still_mean)):
        planes = [z for z in range(vol.dims[0]) if np.ptp(template[z]) > 0.5 * np.ptp(template)]  # with cells
        assert len(planes) >= 2
        for g in groups:
            avg = movie[g].mean(axis=0)
            true = shifts[g].mean(axis=0)
            found = np.array([_register(avg[z], template[z]) for z in planes])
            assert np.abs(found - true).max() < 0.5, (found, true)
    assert np.abs(shifts[groups[0]].mean(axis=0) - shifts[groups[1]].mean(axis=0)).max() > 0.5


def test_volume_tiff_reads_back(tmp_path: Path, vol):
    write_ground_truth_folder(vol, tmp_path / "v")
    T, (Z, H, W) = vol.n_frames, vol.dims
    for ch, source in ((0, vol.movie), (1, vol.extra["structural"])):
        m = open_movie(tmp_path / "v" / "movie.tif", n_channels=2, channel=ch)
        assert m.shape == (T, Z, H, W) and m.frame_rate == pytest.approx(5.0)
        assert np.array_equal(np.asarray(m[:]), to_adu(source, 1.0, 20.0, 50.0))
    with pytest.raises(Exception, match="channel"):
        open_movie(tmp_path / "v" / "movie.tif")
    gt = np.load(tmp_path / "v" / "gt.npz")
    assert gt["A"].shape == (vol.n_cells, Z, H, W) and tuple(gt["dims"]) == (Z, H, W)
    assert np.array_equal(gt["labelled"], vol.extra["labelled"]) and int(gt["n_channels"]) == 2
    assert gt["mean_clean"].shape == (Z, H, W) and gt["mean_raw"].shape == (Z, H, W)
    assert gt["structural_mean"].shape == (Z, H, W) and gt["shifts"].shape == (T, 3)
    # one channel: a plain TZYX hyperstack, opened without options, with its plane spacing
    one = volumetric(**{**VOL, "dims": (3, 32, 32), "n_frames": 12}, motion="rigid")
    write_ground_truth_folder(one, tmp_path / "one")
    m = open_movie(tmp_path / "one" / "movie.tif")
    assert m.shape == (12, 3, 32, 32) and m.frame_rate == pytest.approx(5.0)
    assert m.metadata.get("plane_step_px") == pytest.approx(6.0)
    assert np.array_equal(np.asarray(m[:]), to_adu(one.movie, 1.0, 20.0, 50.0))


@pytest.mark.parametrize("simulator", [two_photon, one_photon], ids=["2p", "1p"])
def test_two_dimensional_hard_preset_with_a_structural_channel(tmp_path: Path, simulator):
    kw = dict(dims=(48, 48), n_frames=30, frame_rate=15.0, decay_time=0.8, neuron_radius=6.0, preset="hard",
              motion="rigid", seed=2)
    plain, two = simulator(**kw), simulator(**kw, channels=2)
    assert np.array_equal(plain.movie, two.movie) and "structural" not in plain.extra
    assert two.extra["structural"].shape == two.movie.shape
    soma = two.kind == "soma"
    assert two.extra["labelled"].sum() == round(0.85 * soma.sum()) and not two.extra["labelled"][~soma].any()
    write_ground_truth_folder(two, tmp_path / "t")
    for ch, source in ((0, two.movie), (1, two.extra["structural"])):
        m = open_movie(tmp_path / "t" / "movie.tif", n_channels=2, channel=ch)
        assert m.shape == (30, 48, 48) and m.frame_rate == pytest.approx(15.0)
        assert np.array_equal(np.asarray(m[:]), to_adu(source, 1.0, two.extra["adu_gain"], two.extra["adu_offset"]))
    # the marker is static and sits on the labelled somata: brighter there than between cells (by
    # far in two-photon data; widefield optics add the out-of-focus marker's haze and its halo)
    image = np.asarray(two.extra["structural"]).mean(axis=0).ravel()
    A = sparse.csc_matrix(two.A)
    on = np.asarray(A[:, two.extra["labelled"]].max(axis=1).todense()).ravel() > 0.5
    off = np.asarray(A.max(axis=1).todense()).ravel() < 0.05
    assert image[on].mean() > (2.0 if simulator is two_photon else 1.05) * image[off].mean()
    with pytest.raises(ValueError, match="preset='hard'"):
        simulator(dims=(32, 32), n_frames=10, channels=2)


def test_cli_simulates_a_hard_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from somascope.cli import main

    out = tmp_path / "cv"
    assert main(["simulate", str(out), "--preset", "hard", "--kind", "volume", "--dims", "3", "40", "40",
                 "--frames", "20", "--fr", "4", "--radius", "5", "--seed", "1", "-q"]) == 0
    assert "volumetric movie 20×3×40×40" in capsys.readouterr().out
    m = open_movie(out / "movie.tif")
    assert m.shape == (20, 3, 40, 40) and m.frame_rate == pytest.approx(4.0)
    gt = np.load(out / "gt.npz")
    assert gt["A"].shape[1:] == (3, 40, 40) and float(gt["fs"]) == 4.0
    two = tmp_path / "c2"
    assert main(["simulate", str(two), "--preset", "hard", "--kind", "2p", "--dims", "40", "40", "--frames", "12",
                 "--channels", "2", "-q"]) == 0
    assert open_movie(two / "movie.tif", n_channels=2, channel=1).shape == (12, 40, 40)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # usage errors: one line, exit status 2, nothing written
        main(["simulate", str(tmp_path / "x"), "--kind", "1p", "--channels", "2", "-q"])
    assert "structural" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "y"), "--preset", "hard", "--kind", "volume", "--dims", "40", "40", "-q"])
    assert "Z H W" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    from somascope.cli import HARD_VOLUME_DIMS

    assert HARD_VOLUME_DIMS == (4, 192, 192)  # without --dims: the 4 planes of 192×192


def test_score_gt_matches_volume_footprints(vol):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "score_gt.py"
    spec = importlib.util.spec_from_file_location("score_gt_for_tests", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    from somascope.simulate.groundtruth import ground_truth_arrays

    gt = ground_truth_arrays(vol)
    target = np.flatnonzero(gt["is_soma"] & gt["is_active"])
    s = mod.score_footprints(vol.A, target, gt["mean_clean"], gt)
    assert s["f1"] == pytest.approx(1.0) and s["n_true"] == target.size
    assert np.abs(s["offset"]).max() <= 0.3  # the truth against itself (sub-pixel search on a small image)
    half = target[: target.size // 2]
    s = mod.score_footprints(vol.A, half, gt["mean_clean"], gt)
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(half.size / target.size)
