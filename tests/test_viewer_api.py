"""The viewer's server (``somascope view``): every endpoint over real HTTP on a free port, the token on
every request, static files only from the page's folder, a run folder, a bare results file and a
batch item as sources, the movie / reconstruction / residual frames, curation and undo on disk,
and the speed of contours and traces."""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import tifffile
from PIL import Image

from somascope import simulate
from somascope.batch import Batch
from somascope.cli import main
from somascope.cnmf.estimates import Estimates
from somascope.pipeline import load_results, run
from somascope.store import Store
from somascope.viewer import serve
from somascope.viewer.data import NO_MOVIE, Source, decimate_minmax, footprint_contours
from somascope.viewer.server import STATIC_DIR, TOKEN_HEADER

DIMS = (64, 64)
T_LONG = 20_000


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64×64×600 two-photon movie, 10 cells, rigid motion, ImageJ TIFF at 30 Hz."""
    folder = tmp_path_factory.mktemp("viewer-raw")
    sim = simulate.two_photon(dims=DIMS, n_frames=600, n_cells=10, motion="rigid", max_shift=3.0, seed=1)
    path = folder / "movie.tif"
    tifffile.imwrite(path, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    return path


@pytest.fixture(scope="module")
def run_out(movie: Path, tmp_path_factory: pytest.TempPathFactory, _quick_report: Any) -> Path:
    """A finished ``somascope run`` folder (read only: tests that curate work on a copy)."""
    out = tmp_path_factory.mktemp("viewer-run") / "out"
    run(movie, out, radius=5.0, engine="serial", progress=False)
    return out


@pytest.fixture(scope="module")
def batch_item(movie: Path, tmp_path_factory: pytest.TempPathFactory, _quick_report: Any) -> str:
    """``BATCH::ITEM`` of a finished cnmf item."""
    path = tmp_path_factory.mktemp("viewer-batch") / "batch"
    with Batch.create(path, raw_data_root=movie.parent) as b:
        b.add(movie, "cnmf", {"gSig": 4}, name="cn")
        b.run(engine="serial", progress=False)
    return f"{path}::cn"


@pytest.fixture(scope="module")
def long_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standalone estimates file (``Estimates.save``, no pipeline groups): 32×32, K=4, 20,000 frames."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]
    A = np.column_stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0).ravel()
                         for cy, cx in ((8, 8), (8, 24), (24, 8), (24, 24))])
    C = rng.gamma(1.0, 1.0, (4, T_LONG)).astype(np.float32)
    est = Estimates(A=A, dims=(32, 32), C=C, S=C * 0.5, YrA=rng.normal(0, 0.1, C.shape).astype(np.float32),
                    F_dff=C * 0.1, SNR_comp=np.array([5.0, 1.0, np.nan, 3.0]), frame_rate=30.0)
    path = tmp_path_factory.mktemp("viewer-long") / "long.h5"
    est.save(path)
    return path


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The package's page if it is there, else placeholders in a temporary folder."""
    if (STATIC_DIR / "index.html").is_file() and (STATIC_DIR / "app.js").is_file():
        return None
    folder = tmp_path_factory.mktemp("viewer-static")
    (folder / "index.html").write_text('<html><meta name="somascope-token" content="{{TOKEN}}"></html>')
    (folder / "app.js").write_text("// placeholder\n")
    return folder


@pytest.fixture(scope="module")
def bare(run_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's results file copied alone: no Store beside it."""
    path = tmp_path_factory.mktemp("viewer-bare") / "session.h5"
    shutil.copy2(run_out / "results.h5", path)
    return path


@pytest.fixture(scope="module")
def server(run_out: Path, bare: Path, batch_item: str, long_file: Path, static_dir: Path | None) -> Any:
    """Sources 0: the run folder, 1: the bare results file, 2: the batch item, 3: the long standalone file."""
    srv = serve([run_out, bare, batch_item, long_file], open_browser=False, static_dir=static_dir)
    yield srv
    srv.stop()


def _request(srv: Any, path: str, *, token: str | None = "", method: str = "GET", body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)``; ``token=""``: the server's token as a query argument, None: none."""
    if token is not None:
        path += ("&" if "?" in path else "?") + "token=" + (token or srv.token)
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _json(srv: Any, path: str, **kwargs: Any) -> Any:
    status, headers, body = _request(srv, path, **kwargs)
    assert status == 200, (path, status, body[:300])
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def _error(srv: Any, path: str, status: int, **kwargs: Any) -> str:
    got, headers, body = _request(srv, path, **kwargs)
    assert got == status, (path, got, body[:300])
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)["error"]


def _png(srv: Any, path: str) -> np.ndarray:
    status, headers, body = _request(srv, path)
    assert status == 200 and headers["Content-Type"] == "image/png", (path, status, body[:300])
    img = Image.open(io.BytesIO(body))
    assert img.mode == "L"
    return np.asarray(img)


# -- security --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/sources", "/api/0/components", "/api/0/frame/0.png",
                                  "/api/compare/0/1", "/api/nonexistent"])
def test_every_request_without_the_right_token_is_refused(server: Any, path: str) -> None:
    assert "no token" in _error(server, path, 403, token=None)
    assert "wrong token" in _error(server, path, 403, token="x" + server.token)
    assert "wrong token" in _error(server, path, 403, token=None, headers={TOKEN_HEADER: server.token[:-1]})


def test_posts_need_the_token_too_and_nothing_is_written(server: Any, run_out: Path) -> None:
    for path in ("/api/0/curate", "/api/0/undo"):
        _error(server, path, 403, token=None, method="POST", body={"reject": [0]})
    assert not (run_out / "curation.json").exists() and not (run_out / "results.prev.h5").exists()


def test_the_page_and_static_files_come_with_the_token(server: Any) -> None:
    status, headers, body = _request(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert server.token in page and "{{TOKEN}}" not in page
    status, headers, _ = _request(server, "/static/app.js", token=None, headers={TOKEN_HEADER: server.token})
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
    assert server.url == f"http://127.0.0.1:{server.port}/?token={server.token}"


@pytest.mark.parametrize("path", ["/static/..%2Fserver.py", "/static/%2e%2e%2fdata.py", "/static/..%2F..%2Fcli.py",
                                  "/static/../server.py", "/static/%2Fetc%2Fpasswd", "/static/.hidden",
                                  "/static/nothing.js", "/static/static"])
def test_static_serves_only_files_of_its_folder(server: Any, path: str) -> None:
    status, _, body = _request(server, path)
    assert status == 404 and b"import" not in body and b"root:" not in body


def test_only_loopback_and_its_own_host_name(server: Any) -> None:
    assert server.sources and server._sockets[0].getsockname()[0] == "127.0.0.1"
    assert "requests must address" in _error(server, "/api/sources", 403, headers={"Host": "evil.example:80"})


# -- sources and images ---------------------------------------------------------------------------
def test_sources_list_every_result_with_what_it_has(server: Any, run_out: Path) -> None:
    est = load_results(run_out / "results.h5").estimates
    src = _json(server, "/api/sources")
    assert [s["id"] for s in src] == [0, 1, 2, 3]
    assert [s["kind"] for s in src] == ["run", "file", "batch", "file"]
    assert [s["has_movie"] for s in src] == [True, False, True, False]
    run0 = src[0]
    assert run0["dims"] == list(DIMS) and run0["K"] == est.K and run0["n_frames"] == 600 and run0["fr"] == 30.0
    assert run0["is_1p"] is False and run0["metrics"] == ["snr", "r_value", "cnn"]   # the classifier is on for 2p
    assert run0["images"][:4] == ["mean", "max", "corr", "max_corr"] and "footprints" in run0["images"]
    assert run0["path"] == str(run_out / "results.h5") and src[2]["name"] == "cn"
    assert Source(run_out / "results.h5").info()["kind"] == "run"  # a run's results.h5 brings its run folder
    assert src[3]["images"] == ["footprints"] and src[3]["metrics"] == ["snr"] and src[3]["n_frames"] == T_LONG
    meta = _json(server, "/api/0/meta")
    assert meta["background"].startswith("low-rank b·f") and meta["series"] == ["raw", "denoised", "dff", "spikes"]
    lo, hi = meta["scales"]["movie"]
    assert lo < hi and meta["scales"]["residual"][0] == -meta["scales"]["residual"][1] < 0


def test_images_are_8_bit_pngs_of_the_field(server: Any) -> None:
    for name in ("mean", "max", "corr", "max_corr", "std", "footprints"):
        img = _png(server, f"/api/0/image/{name}.png")
        assert img.shape == DIMS and img.dtype == np.uint8 and img.max() == 255 and img.min() == 0
    assert _png(server, "/api/3/image/footprints.png").shape == (32, 32)
    assert "no image 'pnr'" in _error(server, "/api/0/image/pnr.png", 404)
    assert "no source 7" in _error(server, "/api/7/components", 404)


# -- components, traces, footprints -----------------------------------------------------------------
def test_components_have_one_contour_set_each_and_the_split(server: Any, run_out: Path) -> None:
    res = load_results(run_out / "results.h5")
    est = res.estimates
    c = _json(server, "/api/0/components")
    assert c["K"] == est.K == len(c["contours"]) == len(c["centers"]) == len(c["accepted"])
    assert np.flatnonzero(c["accepted"]).tolist() == est.idx_components.tolist() == np.flatnonzero(
        c["auto_accepted"]).tolist()
    assert c["manual"] == {} and c["notes"] == {}
    assert c["metrics"]["snr"] == pytest.approx(est.SNR_comp.tolist(), abs=1e-4)
    q = res.params["quality"]
    assert c["thresholds"] == {"snr": q["min_SNR"], "r_value": q["rval_thr"], "cnn": q["min_cnn_thr"]}
    assert c["metrics"]["cnn"] == pytest.approx(est.cnn_preds.tolist(), abs=1e-4)
    for k, lines in enumerate(c["contours"]):
        assert lines, f"component {k} has no contour"
        pts = np.concatenate([np.asarray(line) for line in lines])
        assert pts.min() >= 0 and pts[:, 0].max() <= DIMS[1] and pts[:, 1].max() <= DIMS[0]
        # the contour surrounds the footprint's centre of mass
        x, y = c["centers"][k]
        assert pts[:, 0].min() <= x <= pts[:, 0].max() and pts[:, 1].min() <= y <= pts[:, 1].max()
    assert np.isnan(_json(server, "/api/3/components")["metrics"]["snr"][2] or np.nan)  # NaN → null


def test_a_structural_runs_activity_z_is_a_metric_with_the_silent_threshold(tmp_path: Path) -> None:
    from somascope.evaluation.activity import activity_threshold

    yy, xx = np.mgrid[:32, :32]
    A = np.column_stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0).ravel() for cy, cx in ((8, 8), (24, 24))])
    est = Estimates(A=A, dims=(32, 32), C=np.ones((2, 500), np.float32), SNR_comp=np.array([3.0, 1.0]),
                    activity=np.array([9.5, np.nan]), seeded=[True, False], silent=[False, False],
                    idx_components=[0, 1], frame_rate=30.0, params={"data": {"decay_time": 0.4, "fr": 30.0}})
    est.save(tmp_path / "structural.h5")
    src = Source(tmp_path / "structural.h5")
    assert src.info()["metrics"] == ["snr", "activity"]
    c = src.components()
    assert c["metrics"]["activity"] == [9.5, None] and c["seeded"] == [True, False]
    assert c["thresholds"]["activity"] == pytest.approx(activity_threshold(500, 0.4, 30.0), abs=1e-4)


def test_traces_are_min_max_per_bin_and_exact_at_step_1(server: Any, run_out: Path) -> None:
    est = load_results(run_out / "results.h5").estimates
    k = int(est.idx_components[0])
    raw = est.C[k] + est.YrA[k]
    tr = _json(server, f"/api/0/trace/{k}?n=50")
    assert tr["step"] == 12 and tr["t0"] == 0 and tr["t1"] == 600 and tr["fr"] == 30.0
    assert set(tr["series"]) == {"raw", "denoised", "dff", "spikes"}
    lo, hi = np.array(tr["series"]["raw"]["min"]), np.array(tr["series"]["raw"]["max"])
    assert lo.size == hi.size == 50
    bins = raw.reshape(50, 12)
    assert np.all(lo[:, None] <= bins + 1e-6) and np.all(bins <= hi[:, None] + 1e-6)
    np.testing.assert_allclose(lo, bins.min(axis=1), rtol=1e-6)
    # a short range at full resolution: the values themselves
    tr = _json(server, f"/api/0/trace/{k}?t0=100&t1=180&n=2000")
    assert tr["step"] == 1
    for name, want in (("raw", raw), ("denoised", est.C[k]), ("dff", est.F_dff[k]), ("spikes", est.S[k])):
        s = tr["series"][name]
        assert s["min"] == s["max"]
        np.testing.assert_array_equal(np.float32(s["min"]), want[100:180].astype(np.float32))
    # a last bin shorter than the others
    tr = _json(server, f"/api/0/trace/{k}?t0=0&t1=101&n=10")
    assert tr["step"] == 11 and len(tr["series"]["raw"]["min"]) == 10
    assert tr["series"]["raw"]["max"][-1] == pytest.approx(float(raw[99:101].max()), rel=1e-6)
    assert "outside the traces" in _error(server, f"/api/0/trace/{k}?t0=500&t1=700", 400)
    assert "is not an integer" in _error(server, f"/api/0/trace/{k}?n=abc", 400)
    assert "does not exist" in _error(server, f"/api/0/trace/{est.K}", 404)


def test_footprint_is_the_bounding_box_with_a_margin(server: Any, run_out: Path) -> None:
    est = load_results(run_out / "results.h5").estimates
    k = 1
    fp = _json(server, f"/api/0/footprint/{k}")
    full = est.A[:, k].toarray().reshape(DIMS)
    values = np.array(fp["values"])
    rows, cols = np.nonzero(full)
    assert fp["y0"] == max(0, rows.min() - 2) and fp["x0"] == max(0, cols.min() - 2)
    np.testing.assert_allclose(values, full[fp["y0"]:fp["y0"] + values.shape[0], fp["x0"]:fp["x0"] + values.shape[1]],
                               atol=1e-6)
    assert values.shape[0] >= rows.max() - rows.min() + 1 and np.abs(values).sum() == pytest.approx(
        np.abs(full).sum(), rel=1e-5)


# -- the movie views -----------------------------------------------------------------------------------
def test_frames_are_the_stores_and_the_residual_is_movie_minus_reconstruction(server: Any, run_out: Path) -> None:
    store = Store.open(run_out / "stages" / "motion" / "movie.zarr")
    est = load_results(run_out / "results.h5").estimates
    for t in (0, 137, 599):
        movie = np.array(_json(server, f"/api/0/frame/{t}.json")["values"])
        np.testing.assert_array_equal(movie.astype(np.float32), store[t])
        rec = np.array(_json(server, f"/api/0/frame/{t}.json?kind=reconstruction")["values"])
        res = np.array(_json(server, f"/api/0/frame/{t}.json?kind=residual")["values"])
        want = (est.A @ est.C[:, t].astype(np.float64) + est.b @ est.f[:, t].astype(np.float64)).reshape(DIMS)
        np.testing.assert_allclose(rec, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res, movie - rec, atol=1e-5)
        assert np.abs(res).mean() < 0.5 * np.abs(movie).mean()  # the model explains most of the frame
        for kind in ("movie", "reconstruction", "residual"):
            assert _png(server, f"/api/0/frame/{t}.png?kind={kind}").shape == DIMS
    assert "frame 600 does not exist" in _error(server, "/api/0/frame/600.png", 404)
    assert "give movie, reconstruction or residual" in _error(server, "/api/0/frame/0.png?kind=raw", 400)


@pytest.fixture(scope="module")
def run_1p(tmp_path_factory: pytest.TempPathFactory, _quick_report: Any) -> Path:
    """A one-photon run (ring background): 64×64×300 simulated micro-endoscope movie at 20 Hz."""
    folder = tmp_path_factory.mktemp("viewer-1p")
    sim = simulate.one_photon(dims=DIMS, n_frames=300, n_cells=10, seed=2)
    path = folder / "movie.tif"
    tifffile.imwrite(path, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / sim.frame_rate})
    run(path, folder / "out", radius=6.0, engine="serial", progress=False, overrides={"data.is_1p": True})
    return folder / "out"


def test_one_photon_reconstruction_uses_the_ring_background_of_each_frame(run_1p: Path) -> None:
    """The residual is what CNMF saw (the movie without the ring background) minus its model."""
    est = load_results(run_1p / "results.h5").estimates
    subtracted = Store.open(run_1p / "stages" / "background" / "movie.zarr")
    with serve([run_1p], open_browser=False) as srv:
        meta = _json(srv, "/api/0/meta")
        assert meta["is_1p"] and meta["background"].startswith("ring model")
        for t in (0, 150, 299):
            res = np.array(_json(srv, f"/api/0/frame/{t}.json?kind=residual")["values"])
            model = est.A @ est.C[:, t].astype(np.float64)
            if est.b is not None and est.b.shape[1]:
                model = model + est.b @ est.f[:, t].astype(np.float64)
            np.testing.assert_allclose(res, subtracted[t] - model.reshape(DIMS), atol=2e-3)
            movie = np.array(_json(srv, f"/api/0/frame/{t}.json")["values"])
            assert np.abs(res).mean() < 0.2 * np.abs(movie).mean()
            assert _png(srv, f"/api/0/frame/{t}.png?kind=reconstruction").shape == DIMS


def test_a_bare_results_file_has_no_movie_but_everything_else(server: Any) -> None:
    for path in ("/api/1/frame/0.png", "/api/1/frame/3.json?kind=residual", "/api/1/frame/0.png?kind=reconstruction"):
        assert _error(server, path, 404) == NO_MOVIE
    c = _json(server, "/api/1/components")
    assert len(c["contours"]) == c["K"]
    assert _json(server, "/api/1/trace/0?n=100")["step"] == 6
    assert _png(server, "/api/1/image/corr.png").shape == DIMS
    assert _json(server, "/api/1/footprint/0")["k"] == 0


def test_a_batch_item_is_a_source_with_its_movie(server: Any, batch_item: str) -> None:
    batch, item = batch_item.split("::")
    with Batch.open(batch) as b:
        out = b.load(item)
        store, est = out.movie, out.estimates
    c = _json(server, "/api/2/components")
    assert c["K"] == est.K and len(c["contours"]) == est.K
    np.testing.assert_array_equal(np.float32(_json(server, "/api/2/frame/42.json")["values"]), store[42])
    assert _png(server, "/api/2/frame/42.png?kind=residual").shape == DIMS


# -- compare -------------------------------------------------------------------------------------------
def test_compare_pairs_the_same_result_with_itself_and_refuses_other_fields(server: Any) -> None:
    K = _json(server, "/api/sources")[0]["K"]
    m = _json(server, "/api/compare/0/1")  # the run and its results file copied: the same components
    assert m["pairs"] == [[k, k] for k in range(K)] and m["unmatched_a"] == m["unmatched_b"] == []
    assert m["distances"] == [0.0] * K
    m = _json(server, "/api/compare/0/2")  # another run of the movie: mostly the same cells
    assert len(m["pairs"]) >= 5 and len(m["pairs"]) + len(m["unmatched_a"]) == K
    assert "different fields of view" in _error(server, "/api/compare/0/3", 400)


# -- curation ----------------------------------------------------------------------------------------
def test_curate_and_undo_round_trip_on_disk(run_out: Path, tmp_path: Path, static_dir: Path | None) -> None:
    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    est = load_results(out / "results.h5").estimates
    k_rej, k_acc = int(est.idx_components[0]), int(est.idx_components_bad[0])
    with serve([out], open_browser=False, static_dir=static_dir) as srv:
        got = _json(srv, "/api/0/curate", method="POST",
                    body={"reject": [k_rej], "accept": [k_acc], "notes": {str(k_acc): "small soma"}, "who": "tester"})
        assert got["manual"] == {str(k_rej): "reject", str(k_acc): "accept"}
        assert got["notes"] == {str(k_acc): "small soma"}
        assert not got["accepted"][k_rej] and got["accepted"][k_acc] and got["auto_accepted"][k_rej]
        # on disk: the split in the results file, the decisions and the log beside it, the previous file kept
        on_disk = load_results(out / "results.h5").estimates
        assert k_rej in on_disk.idx_components_bad and k_acc in on_disk.idx_components
        assert Estimates.load(out / "results.prev.h5").idx_components.tolist() == est.idx_components.tolist()
        state = json.loads((out / "curation.json").read_text())
        assert state["format"] == "somascope-curation/1"
        assert state["decisions"][str(k_rej)]["decision"] == "reject" and state["decisions"][str(k_rej)]["pixels"]
        assert state["log"][-1]["who"] == "tester" and state["log"][-1]["components"] == sorted([k_rej, k_acc])
        with h5py.File(out / "results.h5", "r") as fh:
            assert json.loads(fh["curation/json"][()].decode()) == state
            assert fh["curation/auto_idx_components"][()].tolist() == est.idx_components.tolist()
            assert "motion" in fh and "summary" in fh and "stages" in fh and fh["params"].attrs["json"]
        # what a reload shows
        again = _json(srv, "/api/0/components")
        assert again["manual"] == got["manual"] and again["accepted"] == got["accepted"]
        assert Source(out).split()["accepted"] == got["accepted"]
        # a rejection by the filter sliders is one more curate request; undo takes it back
        _json(srv, "/api/0/curate", method="POST", body={"reject": [k_acc]})
        after = _json(srv, "/api/0/undo", method="POST", body={})
        assert after["manual"] == got["manual"]
        after = _json(srv, "/api/0/undo", method="POST")
        assert after["manual"] == {} and after["notes"] == {} and after["accepted"] == after["auto_accepted"]
        assert load_results(out / "results.h5").estimates.idx_components.tolist() == est.idx_components.tolist()
        log = json.loads((out / "curation.json").read_text())["log"]
        assert [e["action"] for e in log] == ["curate", "reject", "undo", "undo"]
        assert "nothing to undo" in _error(srv, "/api/0/undo", 400, method="POST")
        # bad requests change nothing
        assert "does not exist" in _error(srv, "/api/0/curate", 400, method="POST", body={"reject": [10_000]})
        assert "not JSON" in _error(srv, "/api/0/curate", 400, method="POST", body=b"{reject")
        assert "unknown fields" in _error(srv, "/api/0/curate", 400, method="POST", body={"rejected": [1]})
        assert len(json.loads((out / "curation.json").read_text())["log"]) == 4


def test_a_results_file_rewritten_behind_the_viewers_back_is_not_overwritten(run_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    src = Source(out)
    src.split()
    time.sleep(0.01)
    shutil.copy2(out / "results.h5", out / "other.h5")
    (out / "other.h5").replace(out / "results.h5")
    with h5py.File(out / "results.h5", "a") as fh:
        fh.attrs["touched"] = 1
    with pytest.raises(ValueError, match="changed on disk"):
        src.curate({"reject": [0]})
    assert not (out / "curation.json").exists()


# -- command line, browser -------------------------------------------------------------------------
def test_view_command_prints_the_url_and_stops_on_ctrl_c(run_out: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.viewer.server import ViewerServer

    def interrupted(self: ViewerServer) -> None:
        status, _, _ = _request(self, "/api/sources")
        assert status == 200
        raise KeyboardInterrupt

    monkeypatch.setattr(ViewerServer, "wait", interrupted)
    assert main(["view", str(run_out), "--no-browser"]) == 0
    printed = capsys.readouterr()
    assert "http://127.0.0.1:" in printed.out and "?token=" in printed.out and "stopped" in printed.err
    assert main(["view", str(run_out.parent / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["view", str(run_out / "stages")]) == 2
    assert "holds no results.h5" in capsys.readouterr().err


def test_serve_opens_the_browser_at_the_url_with_the_token(run_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    srv = serve(run_out, token="fixed-token")
    try:
        assert opened == [srv.url] and srv.url.endswith("?token=fixed-token")
    finally:
        srv.stop()


# -- speed ----------------------------------------------------------------------------------------------
def _synthetic_footprints(K: int, dims: tuple[int, int], radius: float, seed: int = 0) -> sp.csc_matrix:
    rng = np.random.default_rng(seed)
    H, W = dims
    r = int(2 * radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(yy ** 2 + xx ** 2) / (2 * (radius / 1.5) ** 2))
    m = g > 0.01
    rows, cols, vals = [], [], []
    for k in range(K):
        cy, cx = rng.integers(r, H - r), rng.integers(r, W - r)
        rows.append((yy[m] + cy) * W + xx[m] + cx)
        cols.append(np.full(int(m.sum()), k))
        vals.append(g[m] * rng.uniform(0.5, 2.0))
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(H * W, K))


def test_contours_of_2000_components_take_under_2_s() -> None:
    A = _synthetic_footprints(2000, (512, 512), 6.0)
    t0 = time.perf_counter()
    contours, centers = footprint_contours(A, (512, 512))
    seconds = time.perf_counter() - t0
    print(f"contours of 2000 components (512×512, {A.nnz // 2000} px each): {seconds:.2f} s")
    assert len(contours) == len(centers) == 2000 and all(len(c) == 1 for c in contours)
    assert seconds <= 2.0


def test_a_20000_frame_trace_is_served_quickly(server: Any, long_file: Path) -> None:
    _json(server, "/api/3/trace/0?n=1")  # loads the estimates
    t0 = time.perf_counter()
    tr = _json(server, "/api/3/trace/1?n=2000")
    seconds = time.perf_counter() - t0
    print(f"trace endpoint, {T_LONG} frames → 2000 bins: {1000 * seconds:.1f} ms")
    est = Estimates.load(long_file)
    raw = est.C[1] + est.YrA[1]
    assert tr["step"] == 10 and len(tr["series"]["raw"]["max"]) == 2000
    np.testing.assert_allclose(tr["series"]["raw"]["max"], raw.reshape(2000, 10).max(axis=1), rtol=1e-6)
    assert seconds < 1.0


def test_decimation_keeps_every_extreme() -> None:
    x = np.random.default_rng(0).normal(size=1001).astype(np.float32)
    step, lo, hi = decimate_minmax(x, 100)
    assert step == 11 and lo.size == hi.size == 91
    assert lo.min() == x.min() and hi.max() == x.max()
    assert decimate_minmax(x, 5000)[0] == 1
