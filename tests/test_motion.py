"""Motion correction: known displacements recovered, sign convention, pw-rigid, 3-D, parallel
chunks, borders, one-photon mode, files, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from somascope import motion, simulate
from somascope.params import ParameterError, Params
from somascope.parallel import Engine
from somascope.store import Store


def _image(shape: tuple[int, ...], seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """A smooth random image with structure at all positions."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (img - img.min()).astype(np.float32)


def _rmse_up_to_offset(estimated: np.ndarray, true: np.ndarray) -> float:
    """RMSE after removing the constant offset between the estimated template and the
    simulation's reference frame (the template is built from the data, so its position is
    arbitrary)."""
    err = estimated - true
    err = err - np.median(err, axis=0)
    return float(np.sqrt(np.mean(err**2)))


@pytest.fixture(scope="module")
def rigid_sim():
    return simulate.two_photon((64, 64), 240, n_cells=25, motion="rigid", max_shift=4.0, seed=11)


@pytest.fixture(scope="module")
def rigid_run(rigid_sim, tmp_path_factory):
    """Rigid correction of ``rigid_sim`` written to a store (shared by several tests)."""
    out = tmp_path_factory.mktemp("rigid") / "mc.zarr"
    return motion.correct(rigid_sim.movie, progress=False, max_shifts=(6, 6), chunk_frames=60, out=out)


# -- frame-level registration ---------------------------------------------------------
@pytest.mark.parametrize("true", [(3.0, -2.0), (1.3, -0.6), (-2.7, 4.2), (0.0, 0.0)])
def test_register_frame_recovers_known_shift_with_documented_sign(true):
    big = _image((120, 120), seed=1)
    template = big[20:-20, 20:-20]
    # Content moved by +d: frame(p) = template(p - d) (docs/conventions.md).
    frame = ndimage.shift(big, true, order=3, mode="reflect")[20:-20, 20:-20]
    shift, corr = motion.register_frame(frame, template, max_shifts=(6, 6), upsample_factor=20)
    assert np.allclose(shift, true, atol=0.05), (shift, true)
    assert corr > 0.95
    # Correcting the frame brings it back onto the template.
    fixed = motion.shift_frame(frame, shift)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(fixed[inner] - template[inner]).max() < 0.05 * np.ptp(template)


def test_sign_convention_with_a_single_cell():
    """A cell at p0 in the template appears at p0 + d in a frame displaced by d."""
    yy, xx = np.mgrid[0:64, 0:64]
    template = _image((64, 64), seed=9) * 0.1
    template += np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 8.0).astype(np.float32)
    frame = np.roll(template, (4, -3), axis=(0, 1))  # the cell is now at (34, 31)
    assert np.unravel_index(np.argmax(frame), frame.shape) == (34, 31)
    shift, _ = motion.register_frame(frame, template, max_shifts=(6, 6))
    assert np.allclose(shift, (4, -3), atol=0.05)


def test_register_frame_respects_max_shifts():
    big = _image((120, 120), seed=2)
    template = big[20:-20, 20:-20]
    frame = ndimage.shift(big, (7.0, 0.0), order=1, mode="reflect")[20:-20, 20:-20]
    shift, _ = motion.register_frame(frame, template, max_shifts=(3, 3))
    assert abs(shift[0]) <= 3.0 and abs(shift[1]) <= 3.0


def test_register_frame_3d_volume():
    big = _image((24, 64, 64), seed=3, sigma=1.5)
    template = big[4:-4, 8:-8, 8:-8]
    true = (1.4, -2.3, 3.0)
    frame = ndimage.shift(big, true, order=3, mode="reflect")[4:-4, 8:-8, 8:-8]
    shift, _ = motion.register_frame(frame, template, max_shifts=(2, 5, 5), upsample_factor=20)
    # Few planes limit the sub-pixel precision along z (docs/motion.md).
    assert np.allclose(shift, true, atol=(0.1, 0.05, 0.05)), shift
    fixed = motion.shift_frame(frame, shift)
    inner = (slice(3, -3), slice(6, -6), slice(6, -6))
    assert np.corrcoef(fixed[inner].ravel(), template[inner].ravel())[0, 1] > 0.995


def test_shift_frame_border_modes_and_input_untouched():
    frame = _image((40, 50), seed=4) + 1.0
    before = frame.copy()
    nan = motion.shift_frame(frame, (2.5, -3.0), border_mode="nan")
    assert np.array_equal(frame, before)
    # Sampling at p + d: rows whose source y + 2.5 > 39 are outside -> the last 3 rows.
    assert np.isnan(nan[-3:]).all() and np.isfinite(nan[:-3, 3:]).all()
    assert np.isnan(nan[:, :3]).all()
    zero = motion.shift_frame(frame, (2.5, -3.0), border_mode="zero")
    assert (zero[-3:] == 0).all() and (zero[:, :3] == 0).all()
    copy = motion.shift_frame(frame, (0.0, -3.0), border_mode="copy")
    assert np.allclose(copy[:, :3], frame[:, :1])  # the edge column repeated
    assert np.allclose(copy[:, 3:], frame[:, :-3])  # integer shifts are exact
    with pytest.raises(ValueError, match="border_mode"):
        motion.shift_frame(frame, (1, 1), border_mode="wrap")


def test_displacement_field_and_warp():
    grid = motion.patch_grid((64, 80), strides=(16, 16), overlaps=(9, 9))
    assert grid.patch_shape == (25, 25)
    assert all(s[-1] + 25 == d for s, d in zip(grid.starts, (64, 80)))  # last patch ends at the edge
    rng = np.random.default_rng(5)
    shifts = rng.uniform(-2, 2, (grid.n_patches, 2))
    field = motion.displacement_field(shifts, grid)
    centres = grid.centers().astype(int)  # odd patches: centres are whole pixels
    assert np.array_equal(centres, grid.centers())
    # The field passes through the patch displacements at the patch centres.
    assert np.allclose(field[:, centres[:, 0], centres[:, 1]].T, shifts, atol=1e-4)
    # A constant field warps like a rigid shift.
    frame = _image((64, 80), seed=6)
    const = motion.displacement_field(np.tile([1.25, -0.5], (grid.n_patches, 1)), grid)
    assert np.allclose(const, np.array([1.25, -0.5])[:, None, None], atol=1e-5)
    assert np.allclose(motion.warp_frame(frame, const), motion.shift_frame(frame, (1.25, -0.5)), atol=1e-4)


def test_register_frame_pw_finds_local_shifts():
    big = _image((140, 140), seed=7)
    template = big[20:-20, 20:-20]
    yy, xx = np.mgrid[0:140, 0:140].astype(np.float32)
    # Non-rigid motion: the left half moves by +1.5 px in y, the right half by -1.5, smoothly.
    dy = 1.5 * np.tanh((xx - 70) / 15.0) * -1
    frame = ndimage.map_coordinates(big, [yy - dy, xx], order=3, mode="reflect")[20:-20, 20:-20]
    rigid, patch, grid = motion.register_frame_pw(frame, template, max_shifts=(4, 4), strides=(24, 24),
                                                  overlaps=(12, 12), max_deviation_rigid=3)
    truth = dy[20:-20, 20:-20]
    centres = np.round(grid.centers()).astype(int)
    expected = truth[centres[:, 0], centres[:, 1]]
    assert np.sqrt(np.mean((patch[:, 0] - expected) ** 2)) < 0.15
    assert np.abs(patch[:, 1]).max() < 0.3  # patches across the shear see some x blur
    assert np.all(np.abs(patch - rigid) <= 3 + 1e-6)


# -- whole movies ----------------------------------------------------------------------
def test_rigid_correction_recovers_simulated_shifts(rigid_sim, rigid_run):
    sim, res = rigid_sim, rigid_run
    assert res.shifts.shape == (240, 2)
    assert _rmse_up_to_offset(res.shifts, sim.shifts) <= 0.1
    assert res.metrics["crispness_corrected"] > 1.3 * res.metrics["crispness_raw"]
    assert res.metrics["frame_corr_mean"] > res.metrics["frame_corr_raw_mean"]
    assert res.metrics["residual_rms_px"] < 0.15
    assert isinstance(res.store, Store) and res.store.complete and res.store.shape == sim.movie.shape
    # The store holds the corrected frames: frame t equals shift_frame with the reported shift.
    t = 123
    assert np.allclose(res.store[t], motion.shift_frame(sim.movie[t], res.shifts[t]), atol=1e-5)
    assert all(b >= np.ceil(np.abs(res.shifts[:, a]).max() - 1e-3) for a, b in enumerate(res.border_pix))


def test_chunked_parallel_equals_single_process(tmp_path):
    sim = simulate.two_photon((40, 40), 80, n_cells=10, motion="rigid", max_shift=3.0, seed=12)
    kw = dict(progress=False, max_shifts=(5, 5), chunk_frames=20)
    serial = motion.correct(sim.movie, out=tmp_path / "a.zarr", engine=Engine("serial"), **kw)
    with Engine("local", n_workers=2) as eng:
        parallel = motion.correct(sim.movie, out=tmp_path / "b.zarr", engine=eng, **kw)
    assert np.allclose(serial.shifts, parallel.shifts, atol=1e-6)
    assert np.allclose(serial.template, parallel.template, atol=1e-5)
    assert np.allclose(serial.store[:], parallel.store[:], atol=1e-4)
    # ... and both equal registering each frame on its own against the final template.
    plan = motion.prepare_template(serial.template, (5, 5))
    alone = np.array([motion.register_frame(f, plan)[0] for f in sim.movie])
    assert np.allclose(alone, serial.shifts, atol=1e-5)


def test_pw_rigid_beats_rigid_on_nonrigid_motion():
    sim = simulate.two_photon((96, 96), 200, n_cells=40, motion="nonrigid", max_shift=3.0,
                              nonrigid_amplitude=2.0, snr=3.0, seed=13)
    kw = dict(progress=False, max_shifts=(6, 6), strides=(24, 24), overlaps=(12, 12), max_deviation_rigid=3,
              chunk_frames=100)
    rigid = motion.correct(sim.movie, pw_rigid=False, **kw)
    pw = motion.correct(sim.movie, pw_rigid=True, **kw)
    inner = (slice(10, -10), slice(10, -10))

    def distance_to_still(res):
        offset, _ = motion.register_frame(sim.still_mean, res.template, (6, 6))
        mean = motion.shift_frame(res.mean_image, -offset)[inner]
        still = sim.still_mean[inner]
        return float(np.sqrt(np.mean((mean - mean.mean() - still + still.mean()) ** 2)) / still.std())

    d_rigid, d_pw = distance_to_still(rigid), distance_to_still(pw)
    assert d_pw < 0.75 * d_rigid, (d_rigid, d_pw)
    assert pw.metrics["frame_corr_mean"] > rigid.metrics["frame_corr_mean"]
    assert pw.patch_shifts.shape == (200, pw.patch_grid.n_patches, 2)
    # Per-frame displacement field close to the truth (after the template offset).
    offset, _ = motion.register_frame(sim.still_mean, pw.template, (6, 6))
    errs = []
    for t in (20, 100, 180):
        field = motion.displacement_field(pw.patch_shifts[t], pw.patch_grid) - offset[:, None, None]
        errs.append(np.sqrt(np.mean((field - sim.displacement(t))[(slice(None), *inner)] ** 2)))
    assert np.mean(errs) < 0.4, errs


def test_volumetric_rigid_and_pw():
    sim = simulate.volumetric((8, 40, 40), 60, n_cells=20, motion="rigid", max_shift=(0.5, 2.5, 2.5), snr=3.0, seed=14)
    res = motion.correct(sim.movie, progress=False, max_shifts=(1, 4, 4), chunk_frames=30)
    assert res.shifts.shape == (60, 3)
    err = [_rmse_up_to_offset(res.shifts[:, a], sim.shifts[:, a]) for a in range(3)]
    assert max(err[1:]) <= 0.1 and err[0] <= 0.15, err  # 8 planes: z is coarser (docs/motion.md)
    pw = motion.correct(sim.movie, progress=False, max_shifts=(1, 4, 4), chunk_frames=30, pw_rigid=True,
                        strides=(4, 20, 20), overlaps=(2, 10, 10), max_deviation_rigid=1, border_mode="zero")
    assert pw.patch_shifts.shape[1:] == (pw.patch_grid.n_patches, 3)
    assert _rmse_up_to_offset(pw.patch_shifts.mean(axis=1), sim.shifts) <= 0.15
    assert (pw.store is None) and pw.mean_image.shape == (8, 40, 40)


def test_one_photon_mode_uses_high_pass_for_estimation():
    sim = simulate.one_photon((80, 80), 120, motion="rigid", max_shift=4.0, snr=2.0, seed=15)
    kw = dict(progress=False, max_shifts=(6, 6), chunk_frames=60)
    plain = motion.correct(sim.movie, **kw)
    filtered = motion.correct(sim.movie, gSig_filt=(3, 3), **kw)
    err_plain = _rmse_up_to_offset(plain.shifts, sim.shifts)
    err_filt = _rmse_up_to_offset(filtered.shifts, sim.shifts)
    assert err_filt < 0.5 * err_plain and err_filt < 0.3, (err_plain, err_filt)
    # Shifts are applied to the raw frames, not the filtered ones.
    assert np.isclose(filtered.mean_image.mean(), sim.movie.mean(), rtol=0.02)


@pytest.mark.parametrize("shape, sig", [((3, 64, 80), (3.0, 3.0)), ((2, 11, 9), (4.0, 2.5)), ((40, 30), (1.0, 1.0))])
def test_compiled_band_pass_equals_scipy_gaussians(shape, sig):
    """The compiled difference of Gaussians is SciPy's (same taps, reflecting borders, also
    where the wide Gaussian is larger than the frame), to float32 rounding."""
    from somascope.motion.registration import BACKGROUND_SIGMA_RATIO, FINE_SIGMA_RATIO, high_pass

    x = (100 + 20 * np.random.default_rng(1).standard_normal(shape)).astype(np.float32)
    lead = (0.0,) * (len(shape) - 2)
    ref = (ndimage.gaussian_filter(x.astype(np.float64), lead + tuple(s * FINE_SIGMA_RATIO for s in sig), mode="reflect")
           - ndimage.gaussian_filter(x.astype(np.float64), lead + tuple(s * BACKGROUND_SIGMA_RATIO for s in sig),
                                     mode="reflect"))
    out = high_pass(x, sig)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(x).max())


def test_smooth_shifts_equals_smoothing_the_series(rigid_sim, rigid_run):
    smooth = motion.correct(rigid_sim.movie, progress=False, max_shifts=(6, 6), chunk_frames=60, smooth_shifts=2.0)
    expected = ndimage.gaussian_filter1d(rigid_run.shifts, 2.0, axis=0, mode="nearest")
    assert np.allclose(smooth.shifts, expected, atol=1e-5)


def test_apply_shifts_to_second_channel(rigid_sim, rigid_run, tmp_path):
    res = rigid_run
    red = 2.0 * rigid_sim.movie + 5.0  # same motion, other intensities
    in_memory = motion.apply_shifts(red, res)
    assert np.allclose(in_memory, 2.0 * res.store[:] + 5.0, atol=1e-3)
    on_disk = motion.apply_shifts(red, res, out=tmp_path / "red.zarr")
    assert np.allclose(on_disk[:], in_memory, atol=1e-5)
    with pytest.raises(ValueError, match="same frames"):
        motion.apply_shifts(red[:-1], res)


def test_save_and_load_round_trip(rigid_sim, tmp_path):
    res = motion.correct(rigid_sim.movie[:120], progress=False, max_shifts=(6, 6), chunk_frames=60, pw_rigid=True,
                         strides=(24, 24), overlaps=(12, 12), out=tmp_path / "m.zarr")
    folder = res.save(tmp_path / "run")
    header = (folder / "shifts.csv").read_text().splitlines()[0]
    assert header == "frame,dy,dx,corr"
    meta = json.loads((folder / "metrics.json").read_text())
    assert meta["border_pix"] == list(res.border_pix) and meta["params"]["pw_rigid"] is True
    back = motion.MotionResult.load(folder)
    assert np.array_equal(back.shifts, res.shifts) and np.array_equal(back.patch_shifts, res.patch_shifts)
    assert back.patch_grid == res.patch_grid and back.store.shape == res.store.shape
    assert not list(folder.glob(".*partial*"))


def test_plots(rigid_sim):
    import matplotlib

    matplotlib.use("Agg")
    from somascope.motion.plots import plot_quality, plot_shifts

    res = motion.correct(rigid_sim.movie[:60], progress=False, max_shifts=(6, 6), chunk_frames=60)
    fig = plot_shifts(res, frame_rate=30.0)
    assert len(fig.axes[0].lines) == 2
    assert len(plot_quality(res).axes) == 3


def test_metrics_reward_sharp_aligned_images():
    img = _image((64, 64), seed=8, sigma=1.0)
    blurred = ndimage.gaussian_filter(img, 2.0)
    assert motion.crispness(img) > 2 * motion.crispness(blurred)
    frames = np.stack([img, img + 1.0, np.roll(img, 5, axis=0)])
    corr = motion.frame_correlations(frames, img)
    assert np.allclose(corr[:2], 1.0) and corr[2] < 0.5


# -- clear errors ------------------------------------------------------------------------
def test_errors_name_the_problem_and_the_fix(rigid_sim, rigid_run):
    movie = rigid_sim.movie[:20]
    with pytest.raises(ValueError, match="input movie itself"):
        motion.correct(rigid_run.store, progress=False, out=rigid_run.store.final_path, overwrite=True)
    with pytest.raises(ParameterError, match="smaller than one piecewise-rigid patch"):
        motion.correct(movie, progress=False, pw_rigid=True, strides=(48, 48), overlaps=(24, 24))
    with pytest.raises(ParameterError, match="too large.*lower max_shifts"):
        motion.correct(movie, progress=False, max_shifts=(40, 40))
    with pytest.raises(ParameterError, match="Did you mean 'max_shifts'"):
        motion.correct(movie, progress=False, max_shift=3)
    with pytest.raises(ParameterError, match="3 spatial axes"):
        motion.correct(np.zeros((4, 6, 32, 32), np.float32), Params(), progress=False)
    with pytest.raises(ValueError, match="T×H×W"):
        motion.correct(np.zeros((32, 32), np.float32), progress=False)
    bad = movie.copy()
    bad[7, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"frames \[7\].*NaN"):
        motion.correct(bad, progress=False, max_shifts=(4, 4))
    with pytest.raises(ValueError, match="max_shifts"):
        motion.register_frame(movie[0], movie[1])


def test_failed_run_leaves_no_store(rigid_sim, tmp_path):
    bad = rigid_sim.movie[:60].copy()
    bad[50] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        motion.correct(bad, progress=False, max_shifts=(4, 4), chunk_frames=20, out=tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.zarr.partial").exists()


def test_import_stays_light():
    code = ("import sys, somascope.motion; "
            "print(sorted(m for m in ('numba', 'dask', 'distributed', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- pw_rigid="auto" -------------------------------------------------------------------
AUTO_KW = dict(progress=False, max_shifts=(6, 6), strides=(24, 24), overlaps=(12, 12), max_deviation_rigid=3,
               chunk_frames=100)


@pytest.fixture(scope="module")
def nonrigid_sim():
    return simulate.two_photon((96, 96), 200, n_cells=40, motion="nonrigid", max_shift=3.0,
                               nonrigid_amplitude=2.5, snr=3.0, seed=13)


def test_auto_picks_pw_rigid_on_nonrigid_motion_and_matches_explicit_true(nonrigid_sim):
    auto = motion.correct(nonrigid_sim.movie, **AUTO_KW)  # default pw_rigid="auto"
    model = auto.metrics["motion_model"]
    assert auto.pw_rigid and model["pw_rigid"] is True and model["requested"] == "auto"
    assert model["residual_px"] > model["threshold_px"] == motion.PW_RIGID_AUTO_THRESHOLD_PX
    assert auto.params["pw_rigid"] is True  # the result carries what ran
    explicit = motion.correct(nonrigid_sim.movie, pw_rigid=True, **AUTO_KW)
    np.testing.assert_allclose(auto.patch_shifts, explicit.patch_shifts, atol=1e-5)
    np.testing.assert_allclose(auto.template, explicit.template, atol=1e-4)


def test_auto_picks_rigid_on_rigid_motion():
    sim = simulate.two_photon((96, 96), 200, n_cells=40, motion="rigid", max_shift=3.0, snr=0.5, seed=13)
    res = motion.correct(sim.movie, **AUTO_KW)
    model = res.metrics["motion_model"]
    assert not res.pw_rigid and model["pw_rigid"] is False and res.params["pw_rigid"] is False
    assert model["residual_px"] < model["threshold_px"]
    assert "rigid" in model["reason"] and f"{model['residual_px']:.2f} px" in model["reason"]


def test_auto_is_not_fooled_by_the_dim_frames_of_a_bleached_recording():
    # rigid motion, bleached to 4 % of its light by the end: the last frames' patch displacements
    # are noise; counted, they read as a warp (0.9 px on a 256² movie), left out, they do not
    sim = simulate.two_photon((128, 128), 1200, n_cells=29, frame_rate=30.0, motion="rigid", max_shift=3.0,
                              bleach_time=12.5, seed=5)
    assert sim.bleach[-1] < 0.05
    res = motion.correct(sim.movie, **AUTO_KW)   # 1.0 px with the dim frames counted
    model = res.metrics["motion_model"]
    assert not res.pw_rigid and model["residual_px"] < model["threshold_px"]
    assert "matching the template well enough" in model["reason"]


def test_nonrigid_residual_leaves_out_samples_that_match_the_template_badly():
    rng = np.random.default_rng(1)
    still = rng.normal(0, 0.05, (60, 16, 2))
    corr = np.full((60, 16), 0.8)
    noisy = still.copy()
    noisy[40:] += rng.normal(0, 2.0, (20, 16, 2))      # dim frames: large, random "displacements"
    corr[40:] = 0.2                                    # ... and a poor match
    assert motion.nonrigid_residual(noisy) > 1.0
    assert motion.nonrigid_residual(noisy, corr) == pytest.approx(motion.nonrigid_residual(still[:40]))
    warped = still + rng.normal(0, 1.0, (60, 16, 2))   # a warp matches as well as still frames do
    assert motion.nonrigid_residual(warped, np.full((60, 16), 0.8)) == motion.nonrigid_residual(warped)


def test_explicit_pw_rigid_is_honoured_without_measuring(nonrigid_sim, tmp_path):
    forced = motion.correct(nonrigid_sim.movie, pw_rigid=False, **AUTO_KW)
    assert not forced.pw_rigid
    assert forced.metrics["motion_model"]["requested"] is False
    assert forced.metrics["motion_model"]["residual_px"] is None
    from somascope.params import Params

    via_dict = motion.correct(nonrigid_sim.movie[:100], Params.from_dict({"pw_rigid": "false"}), progress=False,
                              strides=(24, 24), overlaps=(12, 12))
    assert not via_dict.pw_rigid
    saved = motion.MotionResult.load(forced.save(tmp_path / "mc"))
    assert saved.metrics["motion_model"]["requested"] is False


def test_auto_falls_back_to_rigid_when_frames_are_smaller_than_a_patch():
    movie = np.random.default_rng(0).random((30, 30, 30), dtype=np.float32)
    res = motion.correct(movie, progress=False, max_shifts=(3, 3))  # default patches: 36 px > 30 px
    assert not res.pw_rigid and "smaller than one patch" in res.metrics["motion_model"]["reason"]
    with pytest.raises(ParameterError):
        motion.correct(movie, progress=False, max_shifts=(3, 3), pw_rigid=True)


def test_nonrigid_residual_ignores_a_constant_template_deformation():
    rng = np.random.default_rng(0)
    constant = np.broadcast_to(rng.normal(0, 2, (1, 9, 2)), (50, 9, 2))
    assert motion.nonrigid_residual(constant) == 0.0
    moving = constant + rng.normal(0, 1.0, (50, 9, 2))  # every patch moves
    assert motion.nonrigid_residual(moving) > 1.0
