"""Tests of somascope.simulate: ground truth is consistent with the movie it made."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage, signal, sparse

from somascope import simulate
from somascope.simulate import describe, identity_matches, one_photon, sessions, two_photon, volumetric

SMALL = dict(dims=(40, 40), n_frames=200, n_cells=10)
# A few bright point-like cells on a dark field: their centroids track the motion.
POINTS = dict(neuron_radius=1.0, ring_fraction=0.0, process_fraction=0.0, silent_fraction=0.0, n_background=0,
              background_level=0.0, resting_level=5.0, snr=np.inf, bleach_time=None, psf_sigma=0.7,
              min_separation=10.0)


def _model(sim: simulate.Simulation) -> np.ndarray:
    """A·C + b·f as frames, computed here from the ground truth (not by the package)."""
    return np.asarray((sim.A @ sim.C + sim.b @ sim.f).T, dtype=np.float64).reshape(sim.shape)


def _local_centroid(image: np.ndarray, center: np.ndarray, radius: int = 4) -> np.ndarray:
    lo = np.maximum(np.round(center).astype(int) - radius, 0)
    hi = np.minimum(np.round(center).astype(int) + radius + 1, image.shape)
    window = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return np.array(ndimage.center_of_mass(window)) + lo


@pytest.fixture(scope="module")
def small() -> simulate.Simulation:
    return two_photon(**SMALL, seed=3)


def test_same_seed_same_movie_whatever_chunks_and_threads(small):
    again = two_photon(**SMALL, seed=3, chunk_frames=7, n_threads=1)
    assert np.array_equal(small.movie, again.movie)
    assert np.array_equal(small.C, again.C) and (small.A != again.A).nnz == 0
    other = two_photon(**SMALL, seed=4)
    assert not np.allclose(small.movie, other.movie)


def test_output_types_and_shapes(small):
    K, T, P = small.n_cells, small.n_frames, 40 * 40
    assert small.movie.shape == (T, 40, 40) and small.movie.dtype == np.float32
    assert sparse.isspmatrix_csc(small.A) and small.A.shape == (P, K)
    assert small.C.shape == small.S.shape == small.spike_counts.shape == (K, T)
    assert small.b.shape[0] == P and small.f.shape == (small.b.shape[1], T)
    assert small.shifts.shape == (T, 2) and not small.shifts.any()
    assert small.still_mean.shape == small.noise_std.shape == (40, 40)
    assert small.params["n_cells"] == 10 and small.params["modality"] == "two_photon"
    assert small.seed == 3 and small.frame_rate == 30.0 and small.decay_time == 0.4
    # Footprints are unit-max and non-negative; traces non-negative.
    assert np.allclose(small.A.max(axis=0).toarray(), 1.0) and small.A.min() >= 0
    assert np.allclose(small.b.max(axis=0), 1.0)
    assert (small.C >= 0).all() and (small.S >= 0).all() and (small.f >= 0).all()
    assert set(small.kind) <= {"soma", "process"} and "process" in set(small.kind)
    assert "SNR 1" in describe(small) and "200×40×40" in describe(small)


def test_movie_is_model_plus_noise_of_reported_level(small):
    residual = small.movie - _model(small)
    # zero mean: the time-average of the residual is pure noise of std noise_std/sqrt(T)
    z = residual.mean(axis=0) / (small.noise_std / np.sqrt(small.n_frames))
    assert abs(z.mean()) < 0.3 and z.std() < 1.3
    ratio = residual.std(axis=0) / small.noise_std
    assert abs(ratio.mean() - 1) < 0.03 and ratio.min() > 0.75 and ratio.max() < 1.25
    assert np.allclose(small.still_mean, _model(small).mean(axis=0), rtol=1e-5, atol=1e-5)
    # The noise holds no trace of the cells' activity.
    firing = np.flatnonzero(small.C.std(axis=1) > 0)
    assert len(firing) >= 5
    projected = residual.reshape(small.n_frames, -1) @ small.A[:, firing].toarray()
    corr = [np.corrcoef(projected[:, i], small.C[k])[0, 1] for i, k in enumerate(firing)]
    assert np.max(np.abs(corr)) < 0.3


def test_noise_is_poisson_gaussian_with_reported_gain():
    sim = two_photon((48, 48), 400, 25, seed=1, snr=2.0, resting_level=10.0)
    var = (sim.movie - _model(sim)).var(axis=0).ravel()
    slope, intercept = np.polyfit(sim.still_mean.ravel(), var, 1)
    assert slope == pytest.approx(sim.photon_gain, rel=0.1)
    assert intercept == pytest.approx(sim.read_noise**2, rel=0.25, abs=0.02)
    # snr is the spike amplitude over the noise std at a resting soma
    assert np.sqrt(sim.photon_gain * 12.0 + sim.read_noise**2) == pytest.approx(1.0 / 2.0)


def test_spikes_to_calcium_ar1(small):
    C, S, g = small.C, small.S, small.g
    assert g.shape == (small.n_cells, 1)
    assert np.allclose(C[:, 1:] - g * C[:, :-1], S[:, 1:], rtol=0, atol=1e-12)
    assert np.allclose(C[:, 0], S[:, 0])
    decay = -1.0 / (small.frame_rate * np.log(g[:, 0]))
    assert np.median(decay) == pytest.approx(0.4, rel=0.15)
    expected = small.spike_counts * small.amplitude[:, None] * np.exp(-np.arange(small.n_frames) / (30.0 * 1000.0))
    assert np.allclose(S, expected, rtol=1e-9)


def test_spikes_to_calcium_ar2_peak_is_amplitude():
    sim = two_photon((32, 32), 300, 6, seed=2, rise_time=0.08, bleach_time=None, burst_rate=0.0,
                     firing_rate=(0.1, 0.1))
    C, S, g = sim.C, sim.S, sim.g
    assert g.shape == (6, 2)
    assert np.allclose(C[:, 2:] - g[:, :1] * C[:, 1:-1] - g[:, 1:] * C[:, :-2], S[:, 2:], atol=1e-12)
    # One spike's transient (rise, then decay) peaks at the cell's amplitude.
    impulse = np.zeros(200)
    impulse[0] = 1.0
    for k in range(6):
        kernel = signal.lfilter([1.0], [1.0, -g[k, 0], -g[k, 1]], impulse)
        assert np.argmax(kernel) > 0
        spikes = sim.spike_counts[k] > 0
        assert np.allclose(S[k, spikes] / sim.spike_counts[k, spikes] * kernel.max(), sim.amplitude[k])
    for k in np.flatnonzero(sim.active):
        t = np.flatnonzero(sim.spike_counts[k])
        lone = [u for u in t if u + 30 < sim.n_frames and not np.any((t > u - 90) & (t < u + 30) & (t != u))]
        for u in lone:
            assert C[k, u:u + 30].max() / sim.spike_counts[k, u] == pytest.approx(sim.amplitude[k], rel=0.01)


def test_silent_cells_and_firing_rates():
    sim = two_photon((48, 48), 3000, 20, seed=5, silent_fraction=0.25)
    silent = ~sim.active
    assert silent.sum() == 5
    assert not sim.C[silent].any() and not sim.S[silent].any() and not sim.spike_counts[silent].any()
    assert (sim.rate[silent] == 0).all() and (0.1 <= sim.rate[~silent]).all() and (sim.rate[~silent] <= 2.0).all()
    duration = sim.n_frames / sim.frame_rate
    expected = (sim.rate[~silent] + 0.05 * 4.0) * duration  # Poisson spikes + bursts of ~4
    observed = sim.spike_counts[~silent].sum(axis=1)
    assert abs(observed.sum() - expected.sum()) < 4 * np.sqrt(expected.sum()) + 0.05 * expected.sum()
    assert sim.spike_counts.max() >= 2  # bursts put several spikes in a frame


def test_footprint_shapes_rings_and_processes():
    sim = two_photon((96, 96), 10, 40, seed=7, process_fraction=0.2, ring_fraction=0.5, snr=np.inf)
    process_elongation = []
    for k in range(sim.n_cells):
        image = sim.footprint(k)
        y, x = np.nonzero(image)
        cov = np.cov(np.vstack([y, x]), aweights=image[y, x])
        axes = np.sqrt(np.linalg.eigvalsh(cov)[::-1])
        if sim.kind[k] == "process":
            process_elongation.append(axes[0] / axes[1])
        else:
            c = sim.centers[k]
            if 6 < min(c) and max(c) < 89:
                assert axes[0] / axes[1] < 2.0  # somata: ellipticity up to 0.3
            assert np.hypot(*(np.array(ndimage.center_of_mass(image)) - c)) < 1.5 or min(c) < 6 or max(c) > 89
            centre_value = image[int(round(c[0])), int(round(c[1]))]
            if sim.ring[k]:
                assert centre_value < 0.6  # nuclear exclusion
            elif 6 < min(c) and max(c) < 89:
                assert centre_value > 0.8
    assert len(process_elongation) == 8 and np.median(process_elongation) > 3.5  # thin and long
    assert sim.ring.sum() > 5 and (~sim.ring & (sim.kind == "soma")).sum() > 5
    # some somata overlap their neighbours
    support = (sim.A > 0).astype(np.int32)
    overlap = (support.T @ support).toarray()
    np.fill_diagonal(overlap, 0)
    assert overlap.any()


def test_bleaching_background_and_resting_component(small):
    assert small.background_kind == ("neuropil", "neuropil", "resting")
    rest = small.f[-1]
    assert np.allclose(rest / rest[0], np.exp(-np.arange(small.n_frames) / (30.0 * 1000.0)))
    # resting fluorescence lies exactly on the cells' footprints
    assert np.array_equal(small.b[:, -1] > 0, np.asarray(small.A.sum(axis=1)).ravel() > 0)
    neuropil = small.b[:, 0].reshape(40, 40)
    assert neuropil.min() > 0.4  # a smooth haze everywhere
    assert np.abs(np.diff(neuropil, axis=0)).max() < 0.1  # spatially smooth


def test_rigid_motion_moves_cells_by_reported_shift():
    moving = two_photon((48, 48), 60, 4, seed=11, motion="rigid", max_shift=3.0, **POINTS)
    still = two_photon((48, 48), 60, 4, seed=11, **POINTS)
    assert np.abs(moving.shifts).max(axis=0) == pytest.approx([3.0, 3.0], rel=1e-5)
    assert moving.shifts.std(axis=0).min() > 0.3
    for t in (0, 17, 45):
        d = moving.shifts[t]
        assert np.allclose(moving.displacement(t), d[:, None, None])
        for c in still.centers:
            if np.all((c > 6) & (c < 41)):
                before = _local_centroid(still.movie[t], c)
                after = _local_centroid(moving.movie[t], c + d)
                np.testing.assert_allclose(after - before, d, atol=0.15)


def test_nonrigid_motion_matches_displacement_field():
    kw = dict(POINTS, n_cells=8, motion="nonrigid", max_shift=2.0, nonrigid_amplitude=1.5)
    moving = two_photon((64, 64), 40, seed=12, **kw)
    still = two_photon((64, 64), 40, seed=12, **dict(kw, motion=None))
    field = moving.displacement(25)
    assert field.shape == (2, 64, 64) and field.dtype == np.float32
    assert (field - moving.shifts[25][:, None, None]).std() > 0.1  # not a rigid shift
    assert np.abs(field - moving.shifts[25][:, None, None]).max() <= 1.5 + 1e-4
    assert not np.allclose(moving.displacement(0), moving.displacement(39))  # changes over time
    grid = np.indices((64, 64), dtype=float)
    for t in (5, 25):
        d = moving.displacement(t)
        # the motion-free frame warped by the displacement is the moving frame
        warped = ndimage.map_coordinates(still.movie[t], grid - d, order=3, mode="reflect")
        assert np.abs(warped - moving.movie[t])[6:-6, 6:-6].max() < 0.05 * still.movie[t].max()
        for c in still.centers:
            if np.all((c > 8) & (c < 55)):
                before = _local_centroid(still.movie[t], c)
                local = d[:, int(round(c[0])), int(round(c[1]))]
                local = d[:, int(round(c[0] + local[0])), int(round(c[1] + local[1]))]  # d is where it lands
                after = _local_centroid(moving.movie[t], c + local)
                np.testing.assert_allclose(after - before, local, atol=0.2)


def test_one_photon_background_dominates_and_vignetting():
    sim = one_photon((48, 48), 300, 8, seed=4)
    flat = one_photon((48, 48), 300, 8, seed=4, vignette_strength=0.0)
    cells = np.asarray(sim.A @ sim.C)
    background = sim.b @ sim.f
    assert background.mean() > 10 * cells.mean()
    assert len(sim.background_kind) >= 4 and sim.background_kind[0] == "haze"
    # the background fluctuates by more than a single spike over time, at every pixel
    assert np.median(background.std(axis=1)) > 1.0
    assert sim.vignette is not None and sim.vignette[0, 0] < 0.7 and sim.vignette.max() == pytest.approx(1.0, abs=0.01)
    # the same tissue seen without vignetting: the vignette multiplies everything
    assert np.allclose(sim.still_mean, flat.still_mean * sim.vignette, rtol=1e-4)
    assert np.allclose(sim.b[:, :4] @ sim.f[:4], (flat.b[:, :4] @ flat.f[:4]) * sim.vignette.reshape(-1, 1), rtol=1e-4)
    assert (sim.ring == 0).all() and (sim.kind == "soma").all()
    radius = np.sqrt(np.asarray((sim.A > 0.5).sum(axis=0)).ravel() / np.pi)
    assert np.median(radius) > 5  # large blurry cells
    residual = sim.movie - _model(sim)
    assert abs(residual.std(axis=0).mean() / sim.noise_std.mean() - 1) < 0.05


def test_volumetric_ellipsoids_and_3d_motion():
    sim = volumetric((10, 40, 40), 30, 12, seed=6, neuron_radius=(2.0, 4.0, 4.0), motion="rigid",
                     max_shift=(0.5, 2.0, 2.0), process_fraction=0.0)
    assert sim.movie.shape == (30, 10, 40, 40) and sim.A.shape == (16000, 12)
    assert sim.shifts.shape == (30, 3) and np.abs(sim.shifts[:, 0]).max() == pytest.approx(0.5, rel=1e-5)
    assert sim.displacement(3).shape == (3, 10, 40, 40)
    inside = [k for k in range(12) if np.all((sim.centers[k] > [3, 6, 6]) & (sim.centers[k] < [6, 33, 33]))]
    assert inside
    for k in inside:
        image = sim.footprint(k)
        planes = np.flatnonzero(image.max(axis=(1, 2)) > 0.1)
        assert 3 <= len(planes) <= 7  # spans several planes, not all
        coords = np.array(np.nonzero(image))
        cov = np.cov(coords, aweights=image[tuple(coords)])
        sz, sy, sx = np.sqrt(np.diag(cov))
        assert 0.3 < sz / np.sqrt(sy * sx) < 0.75  # half as tall as wide, like the radii


def test_volumetric_motion_moves_cells_in_3d():
    kw = dict(POINTS, n_cells=10, neuron_radius=1.2, psf_sigma=(0.7, 0.7, 0.7), min_separation=6.0)
    moving = volumetric((16, 40, 40), 12, seed=9, motion="rigid", max_shift=(1.0, 2.0, 2.0), **kw)
    still = volumetric((16, 40, 40), 12, seed=9, **kw)
    checked = 0
    for t in (2, 9):
        d = moving.shifts[t]
        for c in still.centers:
            if np.all((c > [3, 5, 5]) & (c < [12, 34, 34])):
                before = _local_centroid(still.movie[t], c, radius=3)
                after = _local_centroid(moving.movie[t], c + d, radius=3)
                np.testing.assert_allclose(after - before, d, atol=0.15)
                checked += 1
    assert checked >= 2


def test_sessions_share_identities_under_known_deformation():
    sims = sessions(3, (64, 64), 60, 15, seed=2, max_translation=4.0, max_rotation=3.0, snr=np.inf,
                    session_active_fraction=0.7, process_fraction=0.0)
    assert len(sims) == 3 and [s.session for s in sims] == [0, 1, 2]
    assert not sims[0].session_displacement.any()
    for s in sims[1:]:
        D = s.session_displacement
        assert D.shape == (2, 64, 64) and np.abs(D).max() > 1.0
        assert D.std(axis=(1, 2)).max() > 0.3  # rotation/scale/non-rigid, not a translation
        ia, ib = identity_matches(sims[0], s)
        assert len(ia) >= 0.6 * min(sims[0].n_cells, s.n_cells)
        assert np.array_equal(sims[0].cell_ids[ia], s.cell_ids[ib])
        assert np.allclose(sims[0].amplitude[ia], s.amplitude[ib])  # same cell, same brightness
        moved = 0
        for i, j in zip(ia, ib):
            a, b = sims[0].footprint(i), s.footprint(j)
            ca, cb = np.array(ndimage.center_of_mass(a)), np.array(ndimage.center_of_mass(b))
            if np.all((ca > 8) & (ca < 55)) and np.all((cb > 8) & (cb < 55)):
                d = D[:, int(round(cb[0])), int(round(cb[1]))]
                np.testing.assert_allclose(cb - d, ca, atol=0.4)
                moved += np.hypot(*d) > 0.5
        assert moved >= 3
    # the active subsets change between sessions
    ids_active = [set(s.cell_ids[s.active]) for s in sims]
    assert ids_active[0] != ids_active[1] != ids_active[2]


def test_out_of_core_store_equals_in_memory(tmp_path):
    from somascope.store import Store

    kw = dict(SMALL, n_frames=150, seed=8, motion="rigid", max_shift=2.0)
    memory = two_photon(**kw)
    disk = two_photon(**kw, out=tmp_path / "movie.zarr", chunk_frames=20)
    assert isinstance(disk.movie, Store) and disk.movie.complete
    assert disk.movie.shape == memory.movie.shape and disk.movie.frame_rate == 30.0
    assert np.array_equal(disk.movie[:], memory.movie)
    assert np.array_equal(disk.shifts, memory.shifts) and np.array_equal(disk.C, memory.C)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        two_photon(**kw, out=tmp_path / "movie.zarr")
    again = two_photon(**kw, out=tmp_path / "movie.zarr", overwrite=True)
    assert np.array_equal(again.movie[:], memory.movie)


def test_sessions_written_out_of_core(tmp_path):
    sims = sessions(2, (32, 32), 20, 5, seed=1, out=tmp_path / "sess")
    assert sorted(p.name for p in (tmp_path / "sess").iterdir()) == ["session_0.zarr", "session_1.zarr"]
    assert sims[1].movie.shape == (20, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dims=(0, 10)), "dims must be"),
        (dict(dims=(8, 8, 8)), "dims must be"),
        (dict(n_frames=0), "n_frames must be an integer >= 1"),
        (dict(motion="wobble"), "motion must be None, 'rigid' or 'nonrigid'"),
        (dict(snr=0), "snr must be a number > 0"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(rise_time=0.5), "rise_time must be shorter than decay_time"),
        (dict(firing_rate=(2.0, 1.0)), "firing_rate must be a \\(low, high\\) range"),
        (dict(neuron_radius=(1.0, 2.0, 3.0)), "neuron_radius must be"),
        (dict(interp_order=2), "interp_order must be 1"),
        (dict(silent_fraction=1.5), "silent_fraction must be a number >= 0.0 and <= 1.0"),
        (dict(n_cells=500, neuron_radius=6.0), "cannot place 450 cells"),
    ],
)
def test_bad_input_is_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        two_photon(**{**SMALL, **kwargs})


def test_sessions_bad_input_is_explained():
    with pytest.raises(ValueError, match="did you mean 'neuron_radius'"):
        sessions(2, (32, 32), 10, 5, neuron_radiu=3.0)
    with pytest.raises(ValueError, match="unknown or reserved parameter 'dims_'"):
        sessions(2, (32, 32), 10, 5, dims_=(3, 3))
    with pytest.raises(ValueError, match="n_sessions must be an integer >= 1"):
        sessions(0)


def test_too_large_for_memory_suggests_out(monkeypatch):
    import psutil

    class Tiny:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    with pytest.raises(MemoryError, match="pass out="):
        two_photon(**SMALL)


def test_import_is_light():
    code = ("import sys, somascope.simulate; "
            "print(sorted(m for m in ('dask', 'distributed', 'numba', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- the hard two-photon family (preset="hard") ------------------------------------------------

HARD = dict(dims=(128, 128), n_frames=600, frame_rate=15.0, decay_time=0.8, neuron_radius=6.0, preset="hard")


@pytest.fixture(scope="module")
def hard():
    return two_photon(**HARD, motion="rigid", seed=3)


def test_hard_density_scales_with_radius_and_kinds():
    from somascope.simulate import _fields
    from somascope.simulate.hard import SETTINGS, hard_footprints

    for radius in (6.0, 9.0):
        fp, radii = hard_footprints(_fields.rng_for(1, _fields.FOOTPRINTS), (128, 128), radius)
        n_soma = int(np.sum(fp.kind == "soma"))
        assert n_soma / 128**2 == pytest.approx(SETTINGS.density * (6.0 / radius) ** 2, rel=0.03)
        assert np.mean(fp.kind == "process") == pytest.approx(SETTINGS.nonsoma_fraction, abs=0.03)
        assert 0.3 < np.mean(fp.ring[fp.kind == "soma"]) < 0.7  # half donuts, half filled
        assert np.allclose(fp.A.max(axis=0).toarray(), 1.0)
        assert 0.1 < np.std(radii[fp.kind == "soma"]) / radius < 0.2


def test_hard_silent_fraction_snr_band_and_photon_counts(hard):
    from somascope.metrics import peak_snr

    soma = hard.kind == "soma"
    assert np.sum(soma & ~hard.active) == round(0.2 * soma.sum())
    assert hard.active[~soma].all() and not hard.C[~hard.active].any()
    snr = hard.extra["snr"]
    assert np.allclose(snr, peak_snr(hard.A, hard.C, hard.still_mean, hard.read_noise))
    target = snr[soma & hard.active]
    assert 0.1 < np.mean(target < 6) < 0.6  # about a third of the active somata are dim
    assert 4 < np.median(target) < 20
    movie = np.asarray(hard.movie)
    assert 7 < np.median(hard.still_mean) < 12  # ~8 photons of background plus cells and neuropil
    assert abs(movie.mean() - hard.still_mean.mean()) < 0.05 * hard.still_mean.mean()
    assert 0.5 < np.median(hard.shifts.std(axis=0)) < 1.0
    assert hard.bleach[-1] == pytest.approx(0.85)


def test_hard_preset_leaves_easy_unchanged():
    easy = two_photon(**SMALL, seed=2)
    assert np.array_equal(two_photon(**SMALL, seed=2, preset="easy").movie, easy.movie)
    with pytest.raises(ValueError, match="preset must be"):
        two_photon(**SMALL, preset="medium")


def test_peak_snr_by_hand():
    from somascope.metrics import peak_snr

    A = sparse.csc_matrix(np.array([[1.0], [0.5], [0.0]]))  # 3 pixels, one component
    C = np.array([[2.0, 4.0]])
    mean = np.array([10.0, 6.0, 100.0])
    expected = 4.0 * (1 + 0.125) / np.sqrt(1.0 * (10 + 0.25) + 0.25 * (6 + 0.25))  # ΔF·Σa³/Σa² over √(Σa²v)/Σa²
    assert peak_snr(A, C, mean, 0.5)[0] == pytest.approx(expected)
    assert peak_snr(A, C, mean, 0.5, bleach=np.array([1.0, 0.25]))[0] == pytest.approx(expected / 2)
    images = A.toarray().T.reshape(1, 1, 3)
    assert peak_snr(images, C, mean.reshape(1, 3), 0.5)[0] == pytest.approx(expected)
    assert peak_snr(A, np.zeros((1, 2)), mean, 0.5)[0] == 0.0


def test_ground_truth_folder_round_trip(tmp_path):
    from somascope.io import open_movie
    from somascope.simulate.groundtruth import to_adu

    sim = two_photon(dims=(48, 48), n_frames=30, frame_rate=15.0, neuron_radius=5.0, motion="nonrigid", seed=1,
                     preset="hard")
    folder = simulate.write_ground_truth_folder(sim, tmp_path / "m", chunk_frames=7)
    movie = open_movie(folder / "movie.tif")
    frames = np.asarray(movie[0:30])
    assert frames.shape == (30, 48, 48) and frames.dtype == np.uint16
    assert np.array_equal(frames, to_adu(sim.movie, 1.0, 20.0, 50.0))
    gt = np.load(folder / "gt.npz", allow_pickle=True)
    for key in ("A", "C", "S", "is_soma", "is_active", "kind", "snr", "centers", "radius", "tau", "g", "shifts",
                "mean_clean", "b0", "bleach", "params", "fs"):
        assert key in gt.files, key
    N = sim.n_cells
    assert gt["A"].shape == (N, 48, 48) and np.allclose(gt["A"].max(axis=(1, 2)), 1.0)
    assert np.allclose(gt["C"] * gt["bleach"], sim.C, rtol=1e-4, atol=1e-4)
    assert set(gt["kind"]) <= {"donut", "gauss", "dendrite"}
    assert np.allclose(gt["mean_clean"], 20 * sim.still_mean + 50, rtol=1e-5)
    assert abs(gt["mean_raw"].mean() - frames.mean()) < 1e-3 * frames.mean()
    assert '"preset": "hard"' in str(gt["params"]) and float(gt["fs"]) == 15.0


def test_cli_simulate_hard_writes_dev_sim_layout(tmp_path):
    from somascope.cli import main

    assert main(["simulate", str(tmp_path / "h"), "--preset", "hard", "--seed", "4", "--radius", "7", "--fr", "10",
                 "--decay-time", "1.5", "--motion", "rigid", "--frames", "20", "--dims", "40", "40", "-q"]) == 0
    gt = np.load(tmp_path / "h" / "gt.npz", allow_pickle=True)
    assert gt["C"].shape[1] == 20 and float(gt["fs"]) == 10.0 and (tmp_path / "h" / "movie.tif").exists()
