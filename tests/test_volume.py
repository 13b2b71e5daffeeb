"""Volumes (T × Z × H × W) through `somascope run`: the neuron size of a volume, thin stacks,
the patches' share of components, the shape tests in the widest plane, and ground truth
recovered end to end from a simulated thin stack."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from somascope.cli import main
from somascope.io import open_movie
from somascope.params import Params

preflight = importlib.import_module("somascope.pipeline.preflight")


def _hyperstack(path: Path, planes: int = 4, **metadata: float) -> Path:
    vol = np.random.default_rng(0).random((30, planes, 40, 40)).astype(np.float32)
    tifffile.imwrite(path, vol, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TZYX", "finterval": 1 / 10, **metadata})
    return path


def test_one_radius_of_a_volume_is_in_plane_with_an_axial_size_from_the_spacing(tmp_path: Path) -> None:
    # no plane spacing in the file: one plane deep
    movie = open_movie(_hyperstack(tmp_path / "a.tif"))
    p, *_ = preflight.build_params(None, movie, radius=6.0)
    assert p.data.neuron_radius == (1.0, 6.0, 6.0)
    # spacing 1.5 µm, pixels 0.5 µm (XResolution 2 per µm): planes 3 px apart → r_z = 2 planes
    movie = open_movie(_hyperstack(tmp_path / "b.tif", spacing=1.5))
    assert movie.metadata["plane_step_px"] == pytest.approx(3.0)
    p, *_ = preflight.build_params(None, movie, radius=6.0)
    assert p.data.neuron_radius == pytest.approx((2.0, 6.0, 6.0))
    # three values set all three
    p, *_ = preflight.build_params(None, movie, radius=(1.5, 5.0, 4.0))
    assert p.data.neuron_radius == pytest.approx((1.5, 5.0, 4.0))


def test_a_thin_stack_searches_no_motion_along_z_unless_asked(tmp_path: Path) -> None:
    movie = open_movie(_hyperstack(tmp_path / "a.tif", planes=4))
    p, *_ = preflight.build_params(None, movie, radius=6.0)
    assert p.motion.max_shifts[0] == 0 and p.motion.max_shifts[1:] == (8, 8)
    p, *_ = preflight.build_params(None, movie, radius=6.0, overrides={"motion.max_shifts": [1, 5, 5]})
    assert p.motion.max_shifts == (1, 5, 5)
    thick = open_movie(_hyperstack(tmp_path / "b.tif", planes=12))
    p, *_ = preflight.build_params(None, thick, radius=6.0)
    assert p.motion.max_shifts[0] > 0


def test_components_per_patch_count_the_planes_a_patch_really_has() -> None:
    """A volume's neuron is its ellipsoid, a disc of its in-plane radius 4/3·r_z planes thick; a
    patch cut short by a thin stack holds its share of a whole patch's components."""
    from somascope.cnmf.fit import components_per_fov

    p = Params.from_neuron((1.0, 5.0, 5.0), fr=15)
    rf = p.patch.rf
    whole = np.prod([2 * r for r in rf]) / (np.pi * 25 * 4 / 3)
    assert p.init.K == round(0.6 * whole)
    assert components_per_fov(p, tuple(2 * r for r in rf)) == p.init.K
    assert components_per_fov(p, (4, 2 * rf[1], 2 * rf[2])) == int(np.ceil(p.init.K * 4 / (2 * rf[0]) - 1e-9))
    plane = Params.from_neuron((5.0, 5.0), fr=15)  # a plane: unchanged, area over the disc
    assert plane.init.K == round(0.6 * (2 * plane.patch.rf[0]) ** 2 / (np.pi * 25))


def test_a_simulated_thin_stack_gives_one_component_per_cell(tmp_path: Path) -> None:
    """4 planes of 64×64, 400 volumes at 15 Hz: run with --radius only (the frame rate from the
    file); the accepted components are the active 3-D somata, each once."""
    from somascope.cnmf.estimates import Estimates
    from somascope.metrics import match_footprints
    from somascope.pipeline.results import load_results

    sim = tmp_path / "sim"
    assert main(["simulate", str(sim), "--kind", "volume", "--dims", "4", "64", "64", "--frames", "400",
                 "--fr", "15", "--seed", "3", "-q"]) == 0
    out = tmp_path / "run"
    assert main(["run", str(sim / "movie.tif"), "--out", str(out), "--radius", "4", "-q"]) == 0
    truth = Estimates.load(sim / "ground_truth.h5")
    somata = np.flatnonzero(np.asarray(truth.extra["active"], bool) & np.asarray(truth.extra["is_soma"], bool))
    est = load_results(out / "results.h5").estimates
    assert est.dims == (4, 64, 64) and est.A.shape[0] == 4 * 64 * 64
    m = match_footprints(truth.A[:, somata], est.A[:, est.accepted_indices], tuple(truth.dims))
    # measured: F1 0.857 (precision 0.83, recall 0.88; 17 cells, so ±1 cell moves these by 0.06);
    # each true cell matches one component
    assert m.f1 >= 0.8 and m.precision >= 0.75 and m.recall >= 0.8, (m.f1, m.precision, m.recall)
    # the report shows the volume plane by plane as well as projected
    assert (out / "report" / "components_planes.png").stat().st_size > 10_000
    assert "components_planes.png" in (out / "report" / "report.html").read_text()


def test_a_volume_component_is_outlined_only_in_the_planes_it_occupies() -> None:
    """The report's plane-by-plane figure outlines a component in a plane only where it
    reaches 30 % of its peak over the whole volume (its faint edge planes stay clean)."""
    from scipy import sparse

    from somascope.report_figures import footprint_outlines

    dims = (3, 20, 20)
    z, y, x = np.indices(dims, dtype=float)
    cell = np.exp(-((z - 1.0) ** 2 / 2 / 0.4**2 + ((y - 10) ** 2 + (x - 10) ** 2) / 2 / 3.0**2))
    A = sparse.csr_matrix(cell.reshape(-1, 1))
    peak = np.array([cell.max()])
    per_plane = [footprint_outlines(sparse.csc_matrix(A[k * 400:(k + 1) * 400]), (20, 20), 0.3, peaks=peak)[0]
                 for k in range(3)]
    assert per_plane[1] and not per_plane[0] and not per_plane[2]  # edge planes peak at 4 % of the cell's


SIMA_VOLUME = Path(__file__).resolve().parents[2] / "shared" / "data" / "sima_example" / "example-volume.h5"


@pytest.mark.skipif(not SIMA_VOLUME.is_file(), reason="the shared sima example is not here")
def test_the_sima_example_volume_opens_motion_corrects_and_cnmf_names_the_minimum_frames(tmp_path: Path,
                                                                                          capsys) -> None:
    # t, z, y, x, channel; 10 frames of 3 planes
    assert main(["motion-correct", str(SIMA_VOLUME), "--axes", "tzyxc", "--channel", "1", "--out",
                 str(tmp_path / "mc"), "--scheduler", "serial", "-q"]) == 0
    from somascope.cnmf import fit
    from somascope.cnmf.fit import MIN_FRAMES
    from somascope.store import Store

    store = Store.open(tmp_path / "mc" / "corrected.zarr")
    assert store.shape == (10, 3, 64, 64) and np.isfinite(np.asarray(store[:])).all()
    p, *_ = preflight.build_params(None, store, fr=10.0, radius=4.0)
    rule = f"has 10 frames; the pipeline needs at least {MIN_FRAMES} frames to estimate noise levels"
    with pytest.raises(ValueError, match=rule):
        fit(store, p)
    # the pipeline's run says the same, before anything is written
    assert main(["run", str(SIMA_VOLUME), "--axes", "tzyxc", "--channel", "0", "--fr", "10",
                 "--out", str(tmp_path / "run")]) == 2
    assert rule in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_plane_by_plane_gives_one_component_per_cell_across_planes(tmp_path: Path) -> None:
    """`patch.by_plane`: each plane fitted in 2-D, a cell's pieces in adjacent planes merged into
    one 3-D component (the same thin stack as above, through a Store)."""
    from somascope.cnmf import fit
    from somascope.cnmf.estimates import Estimates
    from somascope.cnmf.planes import plane_params
    from somascope.metrics import match_footprints
    from somascope.store import Store

    sim = tmp_path / "sim"
    assert main(["simulate", str(sim), "--kind", "volume", "--dims", "4", "64", "64", "--frames", "400",
                 "--fr", "15", "--seed", "3", "-q"]) == 0
    movie = open_movie(sim / "movie.tif")
    store = Store.from_source(movie, tmp_path / "movie.zarr")
    p, *_ = preflight.build_params(None, movie, radius=4.0, overrides={"patch.by_plane": True})
    p2 = plane_params(p)
    assert p2.data.neuron_radius == (4.0, 4.0) and p2.ndim == 2 and p2.init.K < p.init.K
    est = fit(store, p)
    assert est.dims == (4, 64, 64) and est.provenance.get("by_plane") is True
    assert not list(tmp_path.glob(".planes-*"))  # the plane Stores are gone
    truth = Estimates.load(sim / "ground_truth.h5")
    somata = np.flatnonzero(np.asarray(truth.extra["active"], bool) & np.asarray(truth.extra["is_soma"], bool))
    acc = est.accepted_indices
    m = match_footprints(truth.A[:, somata], est.A[:, acc], tuple(truth.dims))
    assert m.f1 >= 0.85 and m.precision >= 0.9, (m.f1, m.precision, m.recall)
    # a matched cell reaching two planes is one component with pixels in both
    planes = np.asarray((abs(est.A[:, acc[m.est_idx]]) > 0).toarray().reshape(4, -1, m.tp).any(axis=1).sum(axis=0))
    assert (planes >= 2).mean() > 0.5, planes
