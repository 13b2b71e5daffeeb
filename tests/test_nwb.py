"""Tests for NWB export (somascope.io.nwb): round trips, standard containers, atomic writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

pynwb = pytest.importorskip("pynwb")

from somascope import simulate  # noqa: E402
from somascope.cnmf.estimates import Estimates  # noqa: E402
from somascope.io.nwb import NWBContents, NWBError, export_nwb, read_nwb  # noqa: E402
from somascope.motion import MotionResult, patch_grid  # noqa: E402

ACCEPTED = np.array([0, 2, 3, 5])
REJECTED = np.array([1, 4])
START = dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def sim():
    return simulate.two_photon(dims=(48, 48), n_frames=200, n_cells=6, motion="rigid", seed=7)


@pytest.fixture(scope="module")
def est(sim) -> Estimates:
    """Ground-truth estimates with made-up quality metrics and accepted/rejected split."""
    K, T = sim.C.shape
    rng = np.random.default_rng(1)
    C = sim.C.astype(np.float32)
    return Estimates(
        A=sim.A,
        dims=sim.dims,
        C=C,
        S=sim.S.astype(np.float32),
        YrA=rng.normal(0, 0.3, (K, T)).astype(np.float32),
        F_dff=(C / 3.0).astype(np.float32),
        SNR_comp=rng.uniform(1, 10, K),
        r_values=rng.uniform(-0.2, 1, K),
        idx_components=ACCEPTED,
        idx_components_bad=REJECTED,
        frame_rate=sim.frame_rate,
        params={"init": {"K": 6}, "merge": {"thr": 0.8}},
        seed=7,
    )


@pytest.fixture(scope="module")
def motion(sim) -> MotionResult:
    T = sim.C.shape[1]
    return MotionResult(
        shifts=sim.shifts.astype(np.float32),
        template=sim.still_mean,
        mean_image=sim.still_mean * 0.9,
        mean_raw=sim.still_mean * 0.8,
        frame_corr=np.linspace(0.5, 1.0, T, dtype=np.float32),
        metrics={"crispness_raw": 1.0, "crispness_corrected": 2.0},
        border_pix=(4, 4),
        params={"max_shifts": [6, 6]},
    )


@pytest.fixture(scope="module")
def summary(sim) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {"mean": sim.still_mean, "corr": rng.uniform(-1, 1, sim.dims).astype(np.float32)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, est, motion, summary) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("nwb_export")
    movie = folder / "movie.tif"
    path = export_nwb(
        folder / "session.nwb", est, motion=motion, summary=summary, movie_path=movie,
        session_start_time=START, identifier="nwb-test-1", experimenter="Doe, Jane",
        lab="Lab", institution="Inst", indicator="GCaMP6f", excitation_lambda=920.0,
        emission_lambda=510.0, location="V1", device="scope2p", grid_spacing_um=0.8,
    )
    return path, movie


@pytest.fixture(scope="module")
def contents(exported) -> NWBContents:
    return read_nwb(exported[0])


# ------------------------------------------------------------------ round trip via read_nwb


def test_read_nwb_round_trips_estimates(contents, est):
    back = contents.estimates
    assert back.dims == est.dims and back.K == est.K and back.T == est.T
    assert isinstance(back.A, sp.csc_matrix) and back.A.shape == est.A.shape
    np.testing.assert_array_equal(back.A.toarray(), est.A.toarray().astype(np.float32))
    for name in ("C", "S", "F_dff"):
        got = getattr(back, name)
        assert got.shape == est.C.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, getattr(est, name))
    # raw = C + YrA is stored; YrA comes back as raw - C, to float32 rounding of the sum
    scale = np.abs(est.C).max() + np.abs(est.YrA).max()
    np.testing.assert_allclose(back.YrA, est.YrA, atol=4 * np.finfo(np.float32).eps * scale)
    np.testing.assert_allclose(back.SNR_comp, est.SNR_comp, rtol=1e-6)
    np.testing.assert_allclose(back.r_values, est.r_values, rtol=1e-6, atol=1e-7)
    assert back.cnn_preds is None
    assert set(back.accepted_indices.tolist()) == set(ACCEPTED.tolist())
    assert set(back.rejected_indices.tolist()) == set(REJECTED.tolist())
    assert back.frame_rate == pytest.approx(est.frame_rate)
    assert back.params == est.params and back.seed == 7


def test_read_nwb_round_trips_motion_summary_metadata(contents, sim, motion, summary, exported):
    np.testing.assert_array_equal(contents.shifts, sim.shifts.astype(np.float32))
    np.testing.assert_array_equal(contents.template, motion.template)
    assert contents.patch_shifts is None
    assert set(contents.summary) == set(summary)
    for name, img in summary.items():
        np.testing.assert_array_equal(contents.summary[name], img)
    meta = contents.metadata
    np.testing.assert_array_equal(meta["mean_raw"], motion.mean_raw)
    np.testing.assert_array_equal(meta["frame_corr"], motion.frame_corr)
    assert meta["identifier"] == "nwb-test-1"
    assert dt.datetime.fromisoformat(meta["session_start_time"]) == START
    assert meta["experimenter"] == ["Doe, Jane"]
    assert (meta["indicator"], meta["location"], meta["device"]) == ("GCaMP6f", "V1", "scope2p")
    assert meta["excitation_lambda"] == 920.0 and meta["emission_lambda"] == 510.0
    assert meta["imaging_rate"] == pytest.approx(sim.frame_rate)
    assert meta["grid_spacing_um"] == (0.8, 0.8)
    assert meta["border_pix"] == [4, 4]
    assert meta["motion_metrics"]["crispness_corrected"] == 2.0
    assert Path(meta["movie_path"]) == exported[1].resolve()


# ------------------------------------------------------------------ the file as other NWB tools see it


def test_file_uses_standard_containers(exported, est, sim):
    path, _ = exported
    K, T = est.C.shape
    assert pynwb.validate(path=str(path)) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pynwb.NWBHDF5IO(str(path), mode="r") as io:
            nwb = io.read()
            plane = nwb.imaging_planes["ImagingPlane"]
            assert plane.imaging_rate == pytest.approx(sim.frame_rate)
            assert plane.device is nwb.devices["scope2p"]
            np.testing.assert_allclose(plane.grid_spacing[:], [0.8e-6, 0.8e-6])
            ophys = nwb.processing["ophys"]
            seg = ophys["ImageSegmentation"]["PlaneSegmentation"]
            assert isinstance(seg, pynwb.ophys.PlaneSegmentation)
            assert seg.imaging_plane is plane
            masks = seg["image_mask"].data[:]
            assert masks.shape == (K, *sim.dims) and masks.dtype == np.float32
            k = 3  # mask k is column k of A reshaped in C order
            np.testing.assert_array_equal(masks[k], est.A[:, k].toarray().reshape(sim.dims))
            assert seg["accepted"].data[:].tolist() == [i in ACCEPTED for i in range(K)]
            assert np.isfinite(seg["snr"].data[:]).all() and "cnn_pred" not in seg.colnames

            fluo = ophys["Fluorescence"]
            for name, want in (("C", est.C), ("raw", est.C + est.YrA)):
                rrs = fluo[name]
                assert isinstance(rrs, pynwb.ophys.RoiResponseSeries)
                assert rrs.data.shape == (T, K) and rrs.data.dtype == np.float32
                assert rrs.rate == pytest.approx(sim.frame_rate)
                assert rrs.rois.table is seg
                np.testing.assert_allclose(rrs.data[:], want.T, rtol=1e-6, atol=1e-6)
            assert ophys["DfOverF"]["dff"].data.shape == (T, K)
            assert ophys["Deconvolved"]["spikes"].data.shape == (T, K)

            images = ophys["summary_images"]
            assert isinstance(images, pynwb.base.Images)
            assert isinstance(images["corr"], pynwb.image.GrayscaleImage)
            assert images["corr"].data.shape == sim.dims
            assert ophys["motion_correction_images"]["template"].data.shape == sim.dims

            shifts = ophys["motion_shifts"]
            assert shifts.unit == "pixels" and shifts.data.shape == (T, 2)
            assert shifts.rate == pytest.approx(sim.frame_rate)
            assert "(dy, dx)" in shifts.description and "template(p - d)" in shifts.description

            movie = nwb.acquisition["raw_movie"]
            assert movie.format == "external" and list(movie.external_file[:]) == ["movie.tif"]
            # the masks' reference images are the summary images (an Images container); the
            # schema's ImageSeries link stays empty (the external movie has no data in the file)
            assert seg.reference_images is None
            assert "processing/ophys/summary_images/mean" in seg.description
            assert "somascope" in nwb.scratch
    relevant = [w for w in caught if issubclass(w.category, UserWarning)]
    assert not relevant, [str(w.message) for w in relevant]


# ------------------------------------------------------------------ variants


def test_piecewise_rigid_patch_shifts_are_flattened_in_grid_order(tmp_path, est, motion):
    T = est.T
    grid = patch_grid(est.dims, strides=(24, 24), overlaps=(8, 8))
    assert grid.grid_shape == (2, 2)
    rng = np.random.default_rng(3)
    gridded = rng.normal(0, 2, (T, 2, 2, 2)).astype(np.float32)  # T × gy × gx × (dy, dx)
    pw = dataclasses.replace(motion, patch_shifts=gridded, patch_grid=grid)
    back = read_nwb(export_nwb(tmp_path / "pw.nwb", est, motion=pw))
    assert back.patch_shifts.shape == (T, 4, 2)
    np.testing.assert_array_equal(back.patch_shifts[:, 1], gridded[:, 0, 1])  # C order of the grid
    np.testing.assert_array_equal(back.patch_shifts[:, 2], gridded[:, 1, 0])
    assert back.metadata["patch_grid"] == grid.to_dict()
    assert pynwb.validate(path=str(tmp_path / "pw.nwb")) == []


def test_volumes_round_trip_with_hwz_masks(tmp_path):
    rng = np.random.default_rng(4)
    dims, K, T = (3, 10, 12), 5, 40
    A = sp.random(int(np.prod(dims)), K, density=0.1, random_state=4, format="csc", dtype=np.float32)
    est = Estimates(A=A, dims=dims, C=rng.random((K, T), dtype=np.float32), frame_rate=4.0)
    mean = rng.random(dims, dtype=np.float32)
    shifts = rng.normal(0, 1, (T, 3)).astype(np.float32)
    mr = MotionResult(shifts=shifts, template=mean, mean_image=mean, mean_raw=mean,
                      frame_corr=np.ones(T, np.float32), metrics={}, border_pix=(1, 2, 2), params={})
    path = export_nwb(tmp_path / "vol.nwb", est, motion=mr, summary={"mean": mean},
                      grid_spacing_um=(2.0, 0.5, 0.25))
    assert pynwb.validate(path=str(path)) == []
    with pynwb.NWBHDF5IO(str(path), mode="r") as io:
        nwb = io.read()
        masks = nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]["image_mask"].data[:]
        assert masks.shape == (K, 10, 12, 3)  # (H, W, Z)
        np.testing.assert_array_equal(masks[2][..., 1], A[:, 2].toarray().reshape(dims)[1])
        np.testing.assert_allclose(nwb.imaging_planes["ImagingPlane"].grid_spacing[:],
                                   [0.5e-6, 0.25e-6, 2.0e-6])
    back = read_nwb(path)
    assert back.estimates.dims == dims
    np.testing.assert_array_equal(back.estimates.A.toarray(), A.toarray())
    np.testing.assert_array_equal(back.summary["mean"], mean)
    np.testing.assert_array_equal(back.template, mean)
    np.testing.assert_array_equal(back.shifts, shifts)
    assert back.metadata["grid_spacing_um"] == (2.0, 0.5, 0.25)


def test_unevaluated_estimates_and_cnn_column(tmp_path, est):
    plain = Estimates(A=est.A, dims=est.dims, C=est.C, frame_rate=est.frame_rate)
    back = read_nwb(export_nwb(tmp_path / "plain.nwb", plain)).estimates
    assert back.idx_components is None and back.idx_components_bad is None
    assert back.SNR_comp is None and back.r_values is None and back.S is None and back.YrA is None
    assert back.accepted_indices.tolist() == list(range(est.K))

    cnn = np.linspace(0, 1, est.K)
    scored = Estimates(A=est.A, dims=est.dims, C=est.C, cnn_preds=cnn,
                       idx_components=np.array([1, 2]))
    back = read_nwb(export_nwb(tmp_path / "cnn.nwb", scored, imaging_rate=15.0)).estimates
    np.testing.assert_allclose(back.cnn_preds, cnn, rtol=1e-6)
    assert back.frame_rate == 15.0
    assert back.idx_components.tolist() == [1, 2] and back.idx_components_bad is None
    assert back.rejected_indices.tolist() == [0, 3, 4, 5]


def test_a_structural_runs_flags_and_activity_round_trip(tmp_path, est):
    flags = Estimates(A=est.A, dims=est.dims, C=est.C, frame_rate=est.frame_rate,
                      seeded=np.arange(est.K) % 2 == 0, silent=np.arange(est.K) == 2,
                      activity=np.where(np.arange(est.K) % 2 == 0, 3.0 + np.arange(est.K), np.nan))
    back = read_nwb(export_nwb(tmp_path / "structural.nwb", flags)).estimates
    assert back.seeded.tolist() == flags.seeded.tolist() and back.silent.tolist() == flags.silent.tolist()
    np.testing.assert_allclose(back.activity, flags.activity, rtol=1e-6)  # NaN where unseeded, both


# ------------------------------------------------------------------ files: overwrite, atomicity


def test_metadata_makes_the_subject_and_explicit_arguments_win(tmp_path, est):
    from somascope.io.nwb import NWBMetadataError

    meta = {"subject_id": "m7", "species": "Rattus norvegicus", "sex": "m", "age": "P8W",
            "session_start_time": "2024-05-01T10:30:00+02:00", "keywords": "V1, rat",
            "indicator": "GCaMP8m", "location": "V1", "experimenter": ["Doe, Jane", "Roe, Rick"]}
    path = export_nwb(tmp_path / "meta.nwb", est, metadata=meta, indicator="jGCaMP8s")
    got = read_nwb(path).metadata
    assert (got["subject_id"], got["species"], got["sex"], got["age"]) == ("m7", "Rattus norvegicus", "M", "P8W")
    assert got["session_start_time"] == "2024-05-01T10:30:00+02:00"
    assert got["keywords"] == ["V1", "rat"] and got["experimenter"] == ["Doe, Jane", "Roe, Rick"]
    assert got["indicator"] == "jGCaMP8s" and got["location"] == "V1"  # the argument won, the rest is metadata
    assert got["session_description"] == "somascope calcium-imaging analysis"
    no_subject = read_nwb(export_nwb(tmp_path / "plain.nwb", est)).metadata
    assert no_subject["subject_id"] is None and no_subject["keywords"] is None
    with pytest.raises(NWBMetadataError, match="Fix: write 'Mus musculus'"):
        export_nwb(tmp_path / "bad.nwb", est, metadata={"species": "mouse"})
    assert not (tmp_path / "bad.nwb").exists()


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def test_refuses_to_overwrite_unless_asked(tmp_path, est):
    path = export_nwb(tmp_path / "a.nwb", est, identifier="first")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_nwb(path, est, identifier="second")
    assert read_nwb(path).metadata["identifier"] == "first"
    export_nwb(path, est, identifier="second", overwrite=True)
    assert read_nwb(path).metadata["identifier"] == "second"


def test_failed_write_leaves_no_file(tmp_path, est, monkeypatch):
    real_write = pynwb.NWBHDF5IO.write

    def write_then_die(self, *args, **kwargs):
        real_write(self, *args, **kwargs)  # the temporary file is complete here
        raise RuntimeError("killed mid-export")

    good = export_nwb(tmp_path / "keep.nwb", est, identifier="good")
    monkeypatch.setattr(pynwb.NWBHDF5IO, "write", write_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        export_nwb(tmp_path / "new.nwb", est)
    with pytest.raises(RuntimeError, match="killed"):
        export_nwb(good, est, identifier="bad", overwrite=True)
    monkeypatch.undo()
    assert not (tmp_path / "new.nwb").exists()
    assert _partials(tmp_path) == []
    assert read_nwb(good).metadata["identifier"] == "good"


# ------------------------------------------------------------------ clear errors


def test_clear_errors_for_bad_inputs(tmp_path, est, motion):
    no_rate = Estimates(A=est.A, dims=est.dims, C=est.C)
    with pytest.raises(NWBError, match="imaging_rate"):
        export_nwb(tmp_path / "x.nwb", no_rate)
    no_c = Estimates(A=est.A, dims=est.dims, frame_rate=30.0)
    with pytest.raises(NWBError, match="no traces"):
        export_nwb(tmp_path / "x.nwb", no_c)
    no_a = dataclasses.replace(est)
    no_a.A = None
    with pytest.raises(NWBError, match="A is None"):
        export_nwb(tmp_path / "x.nwb", no_a)
    bad_dims = dataclasses.replace(est)
    bad_dims.dims = (48 * 48,)
    with pytest.raises(NWBError, match="dims"):
        export_nwb(tmp_path / "x.nwb", bad_dims)
    short = dataclasses.replace(motion, shifts=motion.shifts[:-1])
    with pytest.raises(NWBError, match="motion.shifts"):
        export_nwb(tmp_path / "x.nwb", est, motion=short)
    with pytest.raises(NWBError, match="summary image 'mean'"):
        export_nwb(tmp_path / "x.nwb", est, summary={"mean": np.zeros((4, 4))})
    with pytest.raises(NWBError, match="grid_spacing_um"):
        export_nwb(tmp_path / "x.nwb", est, grid_spacing_um=(1.0, 2.0, 3.0))
    assert list(tmp_path.iterdir()) == []  # nothing was written for any of them


def test_missing_pynwb_names_the_install_command(tmp_path, est, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynwb", None)
    with pytest.raises(ImportError, match="pip install pynwb"):
        export_nwb(tmp_path / "x.nwb", est)
    with pytest.raises(ImportError, match="pip install pynwb"):
        read_nwb(tmp_path / "x.nwb")


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_nwb(tmp_path / "missing.nwb")
    junk = tmp_path / "junk.nwb"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(NWBError, match="not an HDF5 file"):
        read_nwb(junk)
    h5py = pytest.importorskip("h5py")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as fh:
        fh["x"] = np.zeros(3)
    with pytest.raises(NWBError, match="as an NWB file"):
        read_nwb(plain)


def test_importing_the_module_does_not_import_pynwb():
    code = "import sys, somascope.io.nwb; assert 'pynwb' not in sys.modules, 'pynwb imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
