"""Multi-day registration (somascope.multiday, ``somascope register``)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage

from somascope.multiday import align_images, linking_scores, register_multi, register_pair, warp_footprints

MULTIDAY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev_sim" / "dev_multiday"
MULTIDAY = MULTIDAY.resolve()


# -- synthetic fields ------------------------------------------------------------------------
def _blobs(dims: tuple[int, int], centres: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """(K, H, W) Gaussian footprints, peak 1, at ``centres`` (K × 2, px)."""
    yy, xx = np.indices(dims)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return np.exp(-d2 / (2 * radius ** 2))


def _field(seed: int = 0, dims: tuple[int, int] = (96, 96), n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Footprints (n, H, W) of non-overlapping cells and a template with texture."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n:
        c = rng.uniform(8, np.array(dims) - 8)
        if all(np.hypot(*(c - q)) > 9 for q in centres):
            centres.append(c)
    A = _blobs(dims, np.array(centres))
    template = A.sum(axis=0) + 0.3 * ndimage.gaussian_filter(rng.normal(size=dims), 2.0) * 5
    return A, template


def _shifted(A: np.ndarray, template: np.ndarray, shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The same field seen shifted by ``shift`` (px): ``moving(p) = reference(p - shift)``."""
    move = (lambda im: ndimage.shift(im, shift, order=3, mode="nearest"))
    return np.stack([np.clip(move(a), 0, None) for a in A]), move(template)


def _session_table_ok(assignments: np.ndarray, sizes: list[int]) -> None:
    for s, k in enumerate(sizes):
        row = assignments[s]
        present = row[row >= 0]
        assert np.array_equal(np.sort(present), np.arange(k)), f"session {s}: each cell exactly once"
        assert np.all(row >= -1)


# -- alignment -------------------------------------------------------------------------------
def test_rigid_shift_recovered() -> None:
    A, tpl = _field(1)
    _, moved = _shifted(A, tpl, (3.4, -2.3))
    al = align_images(tpl, moved, nonrigid=False)
    np.testing.assert_allclose(al.rigid, [3.4, -2.3], atol=0.15)
    assert al.corr_after > al.corr_before


def test_nonrigid_flow_improves_rotated_field() -> None:
    A, tpl = _field(2)
    rotated = ndimage.rotate(tpl, 1.5, reshape=False, order=3, mode="nearest")
    rigid = align_images(tpl, rotated, nonrigid=False)
    full = align_images(tpl, rotated)
    assert full.corr_after > rigid.corr_after


def test_warp_footprints_follows_shift() -> None:
    A, tpl = _field(3, n=10)
    B, moved = _shifted(A, tpl, (2.0, 1.0))
    al = align_images(tpl, moved)
    dims = tpl.shape
    back = warp_footprints(sp.csc_matrix(B.reshape(len(B), -1).T), al.flow, dims)
    assert sp.issparse(back) and back.shape == (dims[0] * dims[1], len(B))
    err = np.abs(back.toarray().T.reshape(B.shape) - A)[:, 10:-10, 10:-10].max()
    assert err < 0.1


def test_nan_template_is_a_clear_error() -> None:
    A, tpl = _field(4, n=5)
    bad = tpl.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        register_pair(A, A, template_a=tpl, template_b=bad)


# -- pairs and many sessions -----------------------------------------------------------------
def test_pair_matches_and_unmatched() -> None:
    A, tpl = _field(5)
    B, moved = _shifted(A, tpl, (-2.6, 3.1))
    B = B[5:]  # the first five cells are gone in session B ...
    extra = _blobs(tpl.shape, np.array([[4.0, 4.0]]))  # ... and one new cell appears
    B = np.concatenate([B, extra])
    p = register_pair(A, B, template_a=tpl, template_b=moved)
    assert p.n_matched == len(A) - 5
    np.testing.assert_array_equal(p.matched_b, p.matched_a - 5)
    np.testing.assert_array_equal(p.unmatched_a, np.arange(5))
    np.testing.assert_array_equal(p.unmatched_b, [len(B) - 1])
    assert p.distances.shape == (len(A), len(B))
    assert np.all(p.distances[p.matched_a, p.matched_b] < 0.7)


def test_max_dist_caps_matches() -> None:
    A, tpl = _field(6, n=10)
    p = register_pair(A, A, template_a=tpl, template_b=tpl, max_dist=1e-9, align=False)
    assert p.n_matched <= len(A)  # identical masks have distance 0 and centroid gap 0
    far = register_pair(A, np.roll(A, 2, axis=2), template_a=tpl, template_b=tpl, max_dist=0.5, align=False)
    assert far.n_matched == 0


def test_multi_table_invariants_and_empty_session(caplog: pytest.LogCaptureFixture) -> None:
    A, tpl = _field(7)
    B, tb = _shifted(A[:30], tpl, (1.5, -1.0))
    C, tc = _shifted(A[10:], tpl, (-2.0, 2.5))
    empty = np.zeros((0, *tpl.shape))
    with caplog.at_level("WARNING"):
        m = register_multi([A, B, empty, C], [tpl, tb, tpl, tc])
    assert "no components" in caplog.text
    assert m.assignments.shape == (4, len(A))
    _session_table_ok(m.assignments, [len(A), 30, 0, len(A) - 10])
    assert np.all(m.assignments[2] == -1)
    ids = [np.arange(len(A)), np.arange(30), np.zeros(0, int), np.arange(10, len(A))]
    assert linking_scores(m.assignments, ids)["f1"] == 1.0
    assert m.union_A.shape == (tpl.size, len(A))


def test_multi_fields_of_different_sizes() -> None:
    A, tpl = _field(8, dims=(96, 96))
    B, tb = A[:, 1:-1, 2:], tpl[1:-1, 2:]  # two pixels fewer on each axis, cropped off centre by 1 px
    m = register_multi([A, B], [tpl, tb])
    ids = [np.arange(len(A)), np.arange(len(A))]
    assert linking_scores(m.assignments, ids)["f1"] >= 0.95


def test_different_pixel_sizes_error() -> None:
    from somascope.multiday import as_session

    A, tpl = _field(9, n=5)
    a = as_session(A, tpl)
    b = as_session(A, tpl)
    b.dxy = (2.0, 2.0)
    a.dxy = (1.0, 1.0)
    with pytest.raises(ValueError, match="pixel sizes"):
        register_multi([a, b])


def test_linking_scores_counts() -> None:
    table = np.array([[0, 1, -1], [1, 0, 2]])
    s = linking_scores(table, [np.array([7, 8]), np.array([8, 7, 9])])
    assert s["n_pred"] == 2 and s["tp"] == 2 and s["n_true"] == 2 and s["f1"] == 1.0
    s = linking_scores(np.array([[0, 1], [0, 1]]), [np.array([7, 8]), np.array([8, 7])])
    assert s["tp"] == 0 and s["precision"] == 0.0


def test_simulated_sessions() -> None:
    from somascope import simulate

    sims = simulate.sessions(3, dims=(96, 96), n_frames=40, n_cells=30, seed=3)
    m = register_multi([s.A for s in sims], [s.still_mean.reshape(s.dims) for s in sims])
    ids = [np.asarray(s.cell_ids) for s in sims]
    scores = linking_scores(m.assignments, ids)
    assert scores["f1"] >= 0.9, scores


# -- dev_multiday (shared data) --------------------------------------------------------------
@pytest.mark.skipif(not MULTIDAY.is_dir(), reason=f"shared data {MULTIDAY} missing")
def test_dev_multiday_true_footprints_f1() -> None:
    gts = [np.load(MULTIDAY / "sessions" / f"s{i}" / "gt.npz") for i in range(3)]
    m = register_multi([g["A"] for g in gts], [g["mean_raw"] for g in gts])
    _session_table_ok(m.assignments, [len(g["A"]) for g in gts])
    scores = linking_scores(m.assignments, [g["global_id"] for g in gts])
    assert scores["f1"] >= 0.98, scores  # measured 0.986 (precision 1.0, recall 0.971)
    for s, t in itertools.combinations(range(3), 2):
        p = register_pair(gts[s]["A"], gts[t]["A"], template_a=gts[s]["mean_raw"], template_b=gts[t]["mean_raw"])
        ia, ib = gts[s]["global_id"], gts[t]["global_id"]
        assert np.mean(ia[p.matched_a] == ib[p.matched_b]) == 1.0


# -- the command -----------------------------------------------------------------------------
def _results_file(path: Path, A: np.ndarray, template: np.ndarray, dxy: tuple[float, float] = (1.0, 1.0)) -> Path:
    from somascope.cnmf.estimates import Estimates
    from somascope.params import Params
    from somascope.pipeline.results import write_results_file

    dims = template.shape
    est = Estimates(A=sp.csc_matrix(A.reshape(len(A), -1).T), dims=dims, C=np.ones((len(A), 5), np.float32))
    summary = SimpleNamespace(n_frames=5, images=lambda: {"mean": template, "corr": template})
    params = Params.from_dict({"data": {"fr": 10.0, "dxy": list(dxy)}})
    return write_results_file(path, est, motion=None, summary=summary, params=params, stages=[], movie_info={})


def test_cli_register_two_results_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.cli import main

    A, tpl = _field(10, n=20)
    B, tb = _shifted(A[2:], tpl, (2.0, -1.5))
    fa = _results_file(tmp_path / "a.h5", A, tpl)
    fb = _results_file(tmp_path / "b.h5", B, tb)
    out = tmp_path / "reg"
    assert main(["register", str(fa), str(fb), "--out", str(out), "-q"]) == 0
    lines = (out / "assignments.csv").read_text().splitlines()
    assert lines[0] == "cell,n_sessions,a,b"
    table = np.array([[int(v) for v in row.split(",")[2:]] for row in lines[1:]]).T
    _session_table_ok(table, [20, 18])
    assert sum(1 for row in lines[1:] if row.split(",")[1] == "2") == 18
    import h5py

    with h5py.File(out / "register.h5") as fh:
        np.testing.assert_array_equal(fh["assignments"][()], table)
        assert tuple(fh["union_A"].attrs["shape"]) == (tpl.size, 20)
        assert "traces" not in fh  # bare results files: no movie to extract traces from
    assert (out / "report.html").read_text().count("<tr>") >= 4
    assert (out / "union_contours.png").stat().st_size > 1000


def test_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.cli import main

    A, tpl = _field(11, n=5)
    fa = _results_file(tmp_path / "a.h5", A, tpl)
    fb = _results_file(tmp_path / "b.h5", A, tpl, dxy=(2.0, 2.0))
    assert main(["register", str(fa), str(fb), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pixel sizes" in err and len(err.strip().splitlines()) == 1
    assert main(["register", str(fa), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_union_traces_from_session_stores(tmp_path: Path) -> None:
    from somascope import simulate
    from somascope.multiday import as_session
    from somascope.multiday.traces import deconvolve_union, union_traces

    sims = simulate.sessions(2, dims=(64, 64), n_frames=80, n_cells=12, seed=5, out=tmp_path)
    sessions = []
    for i, s in enumerate(sims):
        ses = as_session(s.A, s.still_mean.reshape(s.dims), name=f"s{i}")
        ses.store = tmp_path / f"session_{i}.zarr"
        sessions.append(ses)
    m = register_multi(sessions)
    traces = union_traces(m, sessions)
    assert [t.shape for t in traces] == [(m.n_union, 80)] * 2
    assert all(np.isfinite(t).all() for t in traces)
    # session 1's trace of each union cell it contains follows that cell's true calcium
    r = []
    for u in np.flatnonzero(m.assignments[1] >= 0):
        c_true = sims[1].C[m.assignments[1, u]]
        if c_true.std() > 0:
            r.append(np.corrcoef(traces[1][u], c_true)[0, 1])
    assert np.median(r) > 0.8, r
    # OASIS on them: denoised traces as close to the truth, spikes where the calcium rises
    denoised, spikes = deconvolve_union(traces, sessions)
    assert [d.shape for d in denoised] == [s.shape for s in spikes] == [(m.n_union, 80)] * 2
    assert (spikes[1] >= 0).all()
    r_d = [np.corrcoef(denoised[1][u], sims[1].C[m.assignments[1, u]])[0, 1]
           for u in np.flatnonzero(m.assignments[1] >= 0) if sims[1].C[m.assignments[1, u]].std() > 0
           and denoised[1][u].std() > 0]
    assert np.median(r_d) > 0.8, r_d
