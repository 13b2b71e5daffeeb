"""Tests of the hard one-photon family, ``one_photon(preset="hard")`` (somascope.simulate.hard_1p)."""

from __future__ import annotations

import numpy as np
import pytest

from somascope import simulate
from somascope.simulate import one_photon

SMALL_1P = dict(dims=(64, 64), n_frames=200, frame_rate=20.0, decay_time=0.8, neuron_radius=6.0, preset="hard")


@pytest.fixture(scope="module")
def small():
    return one_photon(**SMALL_1P, motion="rigid", seed=5)


def test_same_seed_same_movie_in_memory_and_in_a_store(small, tmp_path):
    again = one_photon(**SMALL_1P, motion="rigid", seed=5, chunk_frames=37, n_threads=1)
    assert np.array_equal(again.movie, small.movie)
    assert np.array_equal(again.A.toarray(), small.A.toarray()) and np.array_equal(again.C, small.C)
    stored = one_photon(**SMALL_1P, motion="rigid", seed=5, out=tmp_path / "m.zarr")
    assert np.array_equal(np.asarray(stored.movie[0:200]), small.movie)
    other = one_photon(**SMALL_1P, motion="rigid", seed=6)
    assert not np.array_equal(other.movie, small.movie)
    # the motion has its own random stream: switching it off leaves the cells and their spikes alone
    still = one_photon(**SMALL_1P, motion=None, seed=5)
    assert np.array_equal(still.spike_counts, small.spike_counts) and not still.shifts.any()
    assert 0.5 < np.median(small.shifts.std(axis=0)) < 1.5


def test_resting_brightness_is_2_to_8_percent_of_the_local_background(small):
    F0 = small.extra["F0"]  # resting photons at each soma's brightest pixel (camera frame, unbleached)
    peak_px = np.asarray(small.A.argmax(axis=0)).ravel()
    ratio = F0 / small.extra["b0"].ravel()[peak_px]
    assert np.all((ratio > 0.019) & (ratio < 0.082)), ratio
    assert ratio.max() - ratio.min() > 0.03  # spread over the range, not one value
    # and that resting light is in the movie: the "resting" background component at the peak pixels
    j = small.background_kind.index("resting")
    resting = small.b[peak_px, j] * small.f[j, 0] / small.bleach[0]
    overlap = np.asarray(small.A[peak_px] @ F0).ravel()  # neighbours' skirts add to a soma's own F0
    assert np.all(resting >= F0 * 0.999) and np.allclose(resting, overlap, rtol=1e-4)
    # the background is large: its baseline peaks near 140 · 1.2 photons/pixel at radius 10, and a pixel
    # covers (10/6)² as much tissue at radius 6
    assert 0.85 < small.extra["b0"].max() / (140 * (10 / 6) ** 2) < 1.25


def test_somata_are_broad_soft_blobs_at_the_right_density():
    from somascope.simulate import _fields
    from somascope.simulate.hard_1p import SETTINGS_1P, hard_1p_footprints

    for radius in (5.0, 10.0):
        fp, radii = hard_1p_footprints(_fields.rng_for(2, _fields.FOOTPRINTS), (128, 128), radius)
        assert np.all(fp.kind == "soma") and not fp.ring.any()
        assert fp.kind.size == round(SETTINGS_1P.density * (10.0 / radius) ** 2 * 128**2)
        A = fp.A.toarray()
        assert np.allclose(A.max(axis=0), 1.0)
        inside = np.all((fp.centers > 2 * radius) & (fp.centers < 128 - 2 * radius), axis=1)
        half = np.sqrt((A[:, inside] >= 0.5).sum(axis=0) / np.pi) / radii[inside]
        skirt = np.sqrt((A[:, inside] >= 0.05).sum(axis=0) / np.pi) / radii[inside]
        assert np.all((half > 0.6) & (half < 0.8)), half  # a soft blob about the size of the cell ...
        assert np.all(skirt > 1.35), skirt  # ... whose scattered halo reaches well beyond its radius


def test_active_somata_snr_in_a_plausible_band_and_by_the_dev_sim_definition():
    from somascope.metrics import peak_snr

    sim = one_photon(dims=(64, 64), n_frames=600, frame_rate=20.0, decay_time=0.8, neuron_radius=5.0,
                     motion="rigid", seed=3, preset="hard")
    soma = sim.kind == "soma"
    assert np.sum(soma & ~sim.active) == round(0.2 * soma.sum())  # 20 % silent somata
    assert not sim.C[~sim.active].any()
    snr = sim.extra["snr"]
    assert np.allclose(snr, peak_snr(sim.A, sim.C, sim.still_mean, sim.read_noise))
    target = snr[soma & sim.active]
    assert 3.0 < np.median(target) < 15.0  # dev_1p: 9.2 over 1500 frames
    assert 0.05 < np.mean(target < 4) < 0.6  # a good share of the cells is hard to see
    assert sim.params["snr"] == pytest.approx(np.median(target))


def test_photon_noise_and_a_fluctuating_bleaching_background():
    sim = one_photon(dims=(64, 64), n_frames=400, frame_rate=20.0, decay_time=0.8, neuron_radius=6.0, motion=None,
                     seed=4, preset="hard")
    movie = np.asarray(sim.movie, dtype=np.float64)
    mean = movie.mean(axis=0)
    assert np.allclose(mean, sim.still_mean, rtol=0.03)
    # frame-to-frame differences see the shot + read noise (slow background and calcium cancel)
    diff_var = np.diff(movie, axis=0).var(axis=0) / 2
    assert 0.9 < np.median(diff_var / (sim.still_mean + sim.read_noise**2)) < 1.25
    # the background fluctuates slowly by several photons beyond the bleaching, and bleaches by 15 %
    frame_mean = movie.mean(axis=(1, 2))
    t = np.arange(frame_mean.size)
    trend = np.polyval(np.polyfit(t, frame_mean, 2), t)
    assert (frame_mean - trend).std() > 1.0
    assert sim.bleach[-1] == pytest.approx(0.85)
    assert mean[:8, :8].mean() < 0.8 * mean[28:36, 28:36].mean()  # vignetted corners


def test_ground_truth_folder_round_trip(small, tmp_path):
    from somascope.io import open_movie
    from somascope.simulate.groundtruth import to_adu

    folder = simulate.write_ground_truth_folder(small, tmp_path / "m", chunk_frames=60)
    frames = np.asarray(open_movie(folder / "movie.tif")[0:200])
    assert frames.shape == (200, 64, 64) and frames.dtype == np.uint16
    assert np.array_equal(frames, to_adu(small.movie, 1.0, 1.0, 100.0))  # ADU = photons + 100
    gt = np.load(folder / "gt.npz", allow_pickle=True)
    for key in ("A", "C", "S", "is_soma", "is_active", "kind", "snr", "centers", "radius", "tau", "g", "shifts",
                "mean_clean", "b0", "bleach", "params", "fs", "F0", "snr_spike", "mean_raw"):
        assert key in gt.files, key
    N = small.n_cells
    assert gt["A"].shape == (N, 64, 64) and gt["C"].shape == (N, 200) and gt["is_soma"].all()
    assert set(gt["kind"]) == {"gauss"}
    assert np.allclose(gt["C"] * gt["bleach"], small.C, rtol=1e-4, atol=1e-4)
    assert np.array_equal(gt["snr"], small.extra["snr"].astype(np.float32))
    assert np.allclose(gt["mean_clean"], small.still_mean + 100, rtol=1e-5)
    assert float(gt["gain"]) == 1.0 and float(gt["offset"]) == 100.0 and float(gt["read_noise"]) == 2.0
    params = str(gt["params"])
    assert '"modality": "one_photon"' in params and '"preset": "hard"' in params and float(gt["fs"]) == 20.0


def test_preset_dispatch_and_errors():
    easy = one_photon(dims=(40, 40), n_frames=20, n_cells=5, seed=2)
    assert np.array_equal(one_photon(dims=(40, 40), n_frames=20, n_cells=5, seed=2, preset="easy").movie, easy.movie)
    with pytest.raises(ValueError, match="preset must be"):
        one_photon(dims=(40, 40), n_frames=20, preset="medium")
    with pytest.raises(ValueError, match="rigid motion or none"):
        one_photon(dims=(40, 40), n_frames=20, motion="nonrigid", preset="hard")


def test_cli_simulate_1p_hard_writes_a_movie(tmp_path):
    from somascope.cli import main

    assert main(["simulate", str(tmp_path / "h"), "--kind", "1p", "--preset", "hard", "--seed", "4", "--radius", "6",
                 "--fr", "10", "--decay-time", "1.5", "--frames", "20", "--dims", "40", "48", "-q"]) == 0
    gt = np.load(tmp_path / "h" / "gt.npz", allow_pickle=True)
    assert gt["C"].shape[1] == 20 and float(gt["fs"]) == 10.0 and gt["A"].shape[1:] == (40, 48)
    params = str(gt["params"])
    assert '"modality": "one_photon"' in params and '"decay_time": 1.5' in params and '"motion": "rigid"' in params
    import tifffile

    movie = tifffile.imread(tmp_path / "h" / "movie.tif")
    assert movie.shape == (20, 40, 48) and movie.dtype == np.uint16 and movie.mean() > 200  # 100 ADU + photons
    # a dual-colour micro-endoscope: the structural channel interleaved with the functional one
    assert main(["simulate", str(tmp_path / "v"), "--kind", "1p", "--preset", "hard", "--seed", "4", "--radius", "6",
                 "--fr", "10", "--decay-time", "1.5", "--frames", "20", "--dims", "40", "48", "--channels", "2",
                 "-q"]) == 0
    from somascope.io import open_movie

    functional = open_movie(tmp_path / "v" / "movie.tif", n_channels=2, channel=0)
    assert functional.shape == (20, 40, 48) and np.array_equal(np.asarray(functional[:]), movie)
    assert open_movie(tmp_path / "v" / "movie.tif", n_channels=2, channel=1).shape == (20, 40, 48)
