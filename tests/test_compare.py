"""Tests for reading mask sets of other tools (somascope.io.masks) and ``somascope compare``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import tifffile

from somascope.cli import main
from somascope.cnmf.estimates import Estimates
from somascope.io.masks import MaskError, load_masks, read_masks

roifile = pytest.importorskip("roifile")

DIMS = (64, 72)
#: ImageJ polygons (x, y vertices on pixel corners) and ovals (left, top, right, bottom)
POLYGONS = [[(10, 10), (20, 10), (20, 18), (10, 18)], [(40, 5), (52, 9), (47, 20), (38, 16)]]
OVALS = [(30, 30, 42, 40), (5, 40, 14, 52)]


def _disks(dims: tuple[int, int] = DIMS) -> np.ndarray:
    """Six disks ``6 × H × W`` (boolean) on a grid, none touching."""
    yy, xx = np.mgrid[: dims[0], : dims[1]]
    centres = [(12, 12), (12, 36), (12, 58), (40, 12), (40, 36), (40, 58)]
    return np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= 25 for cy, cx in centres])


def _as_stack(A: sp.spmatrix, dims: tuple[int, int]) -> np.ndarray:
    return np.asarray(A.toarray()).T.reshape(-1, *dims)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / (a | b).sum())


def _expected_rois(dims: tuple[int, int] = DIMS) -> list[np.ndarray]:
    """The masks ImageJ gives: pixels whose centres lie inside each ROI (an independent rasteriser)."""
    from matplotlib.path import Path as MplPath

    yy, xx = np.mgrid[: dims[0], : dims[1]]
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    masks = [MplPath(np.array(poly, float)).contains_points(centres).reshape(dims) for poly in POLYGONS]
    for left, top, right, bottom in OVALS:
        cx, cy, rx, ry = (left + right) / 2, (top + bottom) / 2, (right - left) / 2, (bottom - top) / 2
        masks.append(((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1)
    return masks


def _write_roiset(path: Path) -> Path:
    rois = [roifile.ImagejRoi.frompoints(np.array(poly)) for poly in POLYGONS]
    for left, top, right, bottom in OVALS:
        roi = roifile.ImagejRoi()
        roi.roitype = roifile.ROI_TYPE.OVAL
        roi.left, roi.top, roi.right, roi.bottom = left, top, right, bottom
        rois.append(roi)
    roifile.roiwrite(path, rois, name=[f"roi{i}" for i in range(len(rois))])
    return path


def _write_nwb(path: Path, masks: np.ndarray, *, pixel: bool = False, accepted: np.ndarray | None = None) -> Path:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import ImageSegmentation, OpticalChannel

    nwb = NWBFile(session_description="masks", identifier="masks-test",
                  session_start_time=dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))
    device = nwb.create_device(name="Microscope")
    channel = OpticalChannel(name="Green", description="GCaMP", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(name="Plane", optical_channel=channel, imaging_rate=30.0, description="",
                                     device=device, excitation_lambda=920.0, indicator="GCaMP6f", location="V1")
    segmentation = ImageSegmentation()
    nwb.create_processing_module("ophys", "optical physiology").add(segmentation)
    seg = segmentation.create_plane_segmentation(name="Cells", description="", imaging_plane=plane)
    if accepted is not None:
        seg.add_column("accepted", "1: accepted")
    for k, mask in enumerate(masks):
        extra = {} if accepted is None else {"accepted": int(k in accepted)}
        if pixel:
            ys, xs = np.nonzero(mask)
            seg.add_roi(pixel_mask=[(int(x), int(y), 1.0) for x, y in zip(xs, ys)], **extra)
        else:
            seg.add_roi(image_mask=mask.astype(np.float32), **extra)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def _write_results(path: Path, masks: np.ndarray, accepted: np.ndarray) -> Path:
    A = sp.csc_matrix(masks.reshape(len(masks), -1).T.astype(np.float32) * 3.0)
    Estimates(A=A, dims=masks.shape[1:], idx_components=accepted,
              idx_components_bad=np.setdiff1d(np.arange(len(masks)), accepted)).save(path)
    return path


# -- reading ----------------------------------------------------------------------------------
def test_roiset_polygons_and_ovals(tmp_path):
    path = _write_roiset(tmp_path / "RoiSet.zip")
    masks = load_masks(path, DIMS)
    assert masks.kind == "imagej" and masks.dims == DIMS and masks.A.dtype == np.float32
    got = _as_stack(masks.A, DIMS)
    expected = _expected_rois()
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert _jaccard(g, e) >= 0.9
    assert np.array_equal(got[0], expected[0])  # an axis-aligned polygon is exact


def test_single_roi_file(tmp_path):
    roi = roifile.ImagejRoi.frompoints(np.array(POLYGONS[1]))
    roi.tofile(tmp_path / "cell.roi")
    got = _as_stack(read_masks(tmp_path / "cell.roi", DIMS), DIMS)
    assert got.shape == (1, *DIMS) and _jaccard(got[0], _expected_rois()[1]) >= 0.9


def test_roiset_without_dims_names_the_flag(tmp_path):
    path = _write_roiset(tmp_path / "RoiSet.zip")
    with pytest.raises(MaskError, match="--dims H W") as info:
        read_masks(path)
    assert "\n" not in str(info.value)


def test_label_image_and_stack_are_exact(tmp_path):
    disks = _disks()
    labels = np.zeros(DIMS, np.uint16)
    for k, d in enumerate(disks):
        labels[d] = 10 * (k + 1)  # labels need not be consecutive
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    np.save(tmp_path / "labels.npy", labels.astype(np.int32))
    from PIL import Image

    Image.fromarray(labels).save(tmp_path / "labels.png")
    np.save(tmp_path / "stack.npy", disks)
    weights = disks * np.linspace(0.5, 2, 6)[:, None, None]
    tifffile.imwrite(tmp_path / "stack.tif", weights.astype(np.float32))
    for name in ("labels.tif", "labels.npy", "labels.png", "stack.npy"):
        masks = load_masks(tmp_path / name)
        assert masks.dims == DIMS
        assert np.array_equal(_as_stack(masks.A, DIMS), disks.astype(np.float32)), name
    assert np.allclose(_as_stack(read_masks(tmp_path / "stack.tif"), DIMS), disks)  # each peak scaled to 1


def test_nwb_image_and_pixel_masks(tmp_path):
    pytest.importorskip("pynwb")
    disks = _disks()
    image = _write_nwb(tmp_path / "image.nwb", disks, accepted=np.array([0, 2, 3]))
    got = load_masks(image)
    assert got.kind == "nwb" and got.dims == DIMS
    assert np.array_equal(_as_stack(got.A, DIMS), disks[[0, 2, 3]])
    assert load_masks(image, all_components=True).K == 6
    pixel = _write_nwb(tmp_path / "pixel.nwb", disks, pixel=True)
    with pytest.raises(MaskError, match="--dims"):
        read_masks(pixel)
    assert np.array_equal(_as_stack(read_masks(pixel, DIMS), DIMS), disks)
    with pytest.raises(MaskError, match="no PlaneSegmentation named 'Other'.*Cells"):
        load_masks(image, name="Other")


def test_somascope_results_accepted_or_all(tmp_path):
    disks = _disks()
    path = _write_results(tmp_path / "est.h5", disks, np.array([1, 4]))
    masks = load_masks(path)
    assert masks.kind == "somascope" and masks.dims == DIMS
    assert np.array_equal(_as_stack(masks.A, DIMS), disks[[1, 4]])
    assert load_masks(path, all_components=True).K == 6


def test_suite2p_plane_folder(tmp_path):
    disks = _disks()
    stat = np.empty(len(disks), dtype=object)
    for k, d in enumerate(disks):
        ys, xs = np.nonzero(d)
        stat[k] = {"ypix": ys, "xpix": xs, "lam": np.ones(ys.size, np.float32)}
    np.save(tmp_path / "stat.npy", stat, allow_pickle=True)
    np.save(tmp_path / "ops.npy", np.array({"Ly": DIMS[0], "Lx": DIMS[1], "fs": 30.0}), allow_pickle=True)
    np.save(tmp_path / "iscell.npy", np.array([[1, 0.9], [0, 0.1], [1, 0.8], [1, 0.7], [0, 0.2], [1, 0.6]]))
    masks = load_masks(tmp_path)
    assert masks.kind == "suite2p" and masks.dims == DIMS
    assert np.array_equal(_as_stack(masks.A, DIMS), disks[[0, 2, 3, 5]])


def test_unknown_format_lists_the_accepted(tmp_path):
    (tmp_path / "cells.csv").write_text("x,y\n")
    with pytest.raises(MaskError, match="unknown mask format '.csv'; accepted: an ImageJ RoiSet.zip") as info:
        read_masks(tmp_path / "cells.csv")
    assert "\n" not in str(info.value)
    with pytest.raises(MaskError, match="neither results.h5"):
        read_masks(tmp_path)


# -- compare ----------------------------------------------------------------------------------
def test_compare_result_with_itself(tmp_path, capsys):
    path = _write_results(tmp_path / "est.h5", _disks(), np.arange(6))
    assert main(["compare", str(path), str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["f1"] == 1.0 and out["matched"] == 6 and out["dims"] == list(DIMS)


def test_compare_subset_precision_recall(tmp_path, capsys):
    disks = _disks()
    np.save(tmp_path / "reference.npy", disks)
    spurious = np.zeros(DIMS, bool)
    spurious[26:30, 26:30] = True
    labels = np.zeros(DIMS, np.int32)
    for k, d in enumerate([*disks[:4], spurious]):
        labels[d] = k + 1
    np.save(tmp_path / "labels.npy", labels)
    assert main(["compare", str(tmp_path / "labels.npy"), str(tmp_path / "reference.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matched"] == 4 and out["a"]["n"] == 5 and out["b"]["n"] == 6
    assert out["precision"] == pytest.approx(4 / 5) and out["recall"] == pytest.approx(4 / 6)
    assert out["f1"] == pytest.approx(8 / 11)
    assert main(["compare", str(tmp_path / "labels.npy"), str(tmp_path / "reference.npy")]) == 0
    table = capsys.readouterr().out
    assert "precision" in table and "0.800" in table and "0.667" in table


def test_compare_roiset_takes_the_other_sides_size(tmp_path, capsys):
    zip_path = _write_roiset(tmp_path / "RoiSet.zip")
    np.save(tmp_path / "truth.npy", np.stack(_expected_rois()))
    assert main(["compare", str(zip_path), str(tmp_path / "truth.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == 1.0
    assert main(["compare", str(zip_path), str(zip_path)]) == 2
    err = capsys.readouterr().err
    assert "--dims" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", str(zip_path), str(zip_path), "--dims", *map(str, DIMS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == 1.0


def test_compare_mismatched_fields(tmp_path, capsys):
    np.save(tmp_path / "a.npy", _disks())
    np.save(tmp_path / "b.npy", _disks((60, 72)))
    assert main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "64×72" in err and "60×72" in err and "one field of view" in err


def test_run_folder_reads_the_results_file(tmp_path):
    import h5py

    from somascope.cnmf.estimates import write_estimates

    disks = _disks()
    est = Estimates(A=sp.csc_matrix(disks.reshape(6, -1).T.astype(np.float32)), dims=DIMS,
                    idx_components=np.array([0, 5]), idx_components_bad=np.arange(1, 5))
    (tmp_path / "run").mkdir()
    with h5py.File(tmp_path / "run" / "results.h5", "w") as fh:  # the pipeline keeps estimates in /estimates
        write_estimates(fh.create_group("estimates"), est)
    masks = load_masks(tmp_path / "run")
    assert masks.kind == "somascope" and np.array_equal(_as_stack(masks.A, DIMS), disks[[0, 5]])
