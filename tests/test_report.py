"""The HTML run report: every figure it shows exists, the numbers it shows are the right ones,
and it renders with no components and with every optional input missing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from somascope import simulate
from somascope.cnmf.estimates import Estimates
from somascope.metrics import match_footprints
from somascope.motion.piecewise import PatchGrid
from somascope.motion.result import MotionResult
from somascope.params import Params
from somascope.report import write_run_report
from somascope.report_figures import footprint_outlines, project_footprints
from somascope.summary import summary_images

T = 300
STAGES = [
    {"stage": "motion", "seconds": 12.5, "peak_rss_bytes": 3 * 2**29, "reused": True, "detail": "rigid"},
    {"stage": "summary", "seconds": 2.0, "peak_rss_bytes": None, "reused": False, "detail": ""},
    {"stage": "cnmf", "seconds": 61.0, "peak_rss_bytes": 5 * 2**30, "reused": False, "detail": "16 patches"},
]


def _page_figures(html: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", html)


def _card(html: str, key: str) -> str:
    match = re.search(rf"id='card-{key}'><div class='num'>([^<]*)<", html)
    assert match, f"no headline card {key!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def sim() -> Any:
    return simulate.two_photon(dims=(48, 48), n_frames=T, n_cells=12, motion="rigid", max_shift=2.0, seed=3)


@pytest.fixture(scope="module")
def case(sim: Any) -> dict[str, Any]:
    """Estimates built from the ground truth: every active soma but one is found and accepted,
    plus one accepted spurious blob (a false positive) and two rejected components."""
    rng = np.random.default_rng(0)
    somata = np.flatnonzero(np.asarray(sim.active) & (np.asarray(sim.kind) == "soma"))
    assert somata.size >= 5
    found = somata[1:]  # somata[0] is missed
    blob = np.zeros(sim.dims, np.float32)
    yy, xx = np.mgrid[: sim.dims[0], : sim.dims[1]]
    blob[...] = np.exp(-((yy - 2.0) ** 2 + (xx - 45.0) ** 2) / 8.0)  # a corner far from every true soma
    A = sp.hstack([sim.A[:, found], sp.csc_matrix(blob.reshape(-1, 1)), sim.A[:, somata[:1]] * 0.5,
                   sp.csc_matrix(np.roll(blob, 20, axis=0).reshape(-1, 1))], format="csc")
    K = A.shape[1]
    C = np.vstack([sim.C[found], np.abs(rng.normal(0, 0.3, (3, T)))]).astype(np.float32)
    S = np.vstack([sim.S[found], np.zeros((3, T))]).astype(np.float32)
    accepted = np.arange(found.size + 1)  # the found somata and the spurious blob
    rejected = np.arange(found.size + 1, K)
    snr = rng.uniform(3, 30, K)
    snr[rejected] = [1.0, 0.3]
    est = Estimates(A=A, dims=tuple(sim.dims), C=C, S=S, YrA=rng.normal(0, 0.1, (K, T)).astype(np.float32),
                    F_dff=C / 4, bl=np.full(K, 0.2, np.float32), SNR_comp=snr, r_values=rng.uniform(-0.5, 1, K),
                    cnn_preds=rng.uniform(0, 1, K), idx_components=accepted, idx_components_bad=rejected,
                    frame_rate=30.0)
    images = summary_images(sim.movie, max_corr_frames=100)
    motion = MotionResult(shifts=np.asarray(sim.shifts, np.float32), template=images.mean, mean_image=images.mean,
                          mean_raw=images.mean, frame_corr=rng.uniform(0.8, 0.95, T).astype(np.float32),
                          metrics={"crispness_raw": 1.0, "crispness_corrected": 1.4}, border_pix=(2, 2),
                          params={"pw_rigid": False})
    truth = {"A": sim.A, "somata": somata, "C": sim.C}
    return {"est": est, "images": images, "motion": motion, "truth": truth, "somata": somata, "found": found}


@pytest.fixture(scope="module")
def full_report(case: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("report-full") / "report"
    path = write_run_report(folder, estimates=case["est"], params=Params(), summary=case["images"],
                            motion=case["motion"], stages=STAGES, truth=case["truth"],
                            movie_info={"path": "/data/movie.tif", "shape": (T, 48, 48), "dtype": "uint16"})
    return path, path.read_text(encoding="utf-8")


def test_report_embeds_existing_figures_of_every_section(full_report: tuple[Path, str]) -> None:
    path, html = full_report
    assert path.name == "report.html" and path.is_file()
    figures = _page_figures(html)
    assert set(figures) >= {"summary.png", "components.png", "traces.png", "activity.png", "shifts.png",
                            "motion_quality.png", "quality.png", "stages.png"}
    for name in figures:
        assert (path.parent / name).stat().st_size > 2000, name
        assert (path.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "could not be drawn" not in html
    assert not [p for p in path.parent.iterdir() if ".partial-" in p.name]


def test_headline_and_accuracy_match_the_ground_truth_scoring(case: dict[str, Any],
                                                              full_report: tuple[Path, str]) -> None:
    path, html = full_report
    est, truth = case["est"], case["truth"]
    match = match_footprints(truth["A"][:, truth["somata"]], est.A[:, est.accepted_indices], est.dims)
    # one soma missed and one spurious component accepted: F1 = 2tp / (2tp + 1 + 1)
    tp = case["found"].size
    assert (match.tp, match.fp, match.fn) == (tp, 1, 1)
    assert _card(html, "f1") == f"{match.f1:.3f}" == f"{2 * tp / (2 * tp + 2):.3f}"
    assert _card(html, "accepted") == str(tp + 1)
    assert _card(html, "rejected") == "2"
    assert _card(html, "components-found") == str(est.K)
    assert _card(html, "frames") == str(T)
    assert _card(html, "run-time") == "1 min 16 s"  # 12.5 + 2 + 61 s
    assert _card(html, "peak-memory") == "5.00 GiB"
    record = json.loads((path.parent / "report.json").read_text())
    assert record["accuracy"]["f1"] == pytest.approx(match.f1)
    assert record["accuracy"]["median_trace_corr"] == pytest.approx(1.0)  # the traces are the true ones
    assert record["accepted"] == tp + 1 and record["failed_sections"] == []


def test_stage_table_and_parameters_are_shown(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    for stage in ("motion", "summary", "cnmf"):
        assert re.search(rf"<tr><td>{stage}</td><td>[^<]+</td><td>[^<]+</td><td>[^<]+</td><td>(reused|ran)</td>", html)
    assert "<tr><td>motion</td><td>12.5 s</td>" in html and "<td>reused</td>" in html
    assert "<td>16 patches</td>" in html and "<tr><td>total</td><td>1 min 16 s</td>" in html
    assert "min_SNR: 2.5" in html  # the full parameters, as YAML
    assert "<td>merge_thr</td><td>0.8</td>" in html


def test_examples_span_the_snr_range_of_accepted_components(case: dict[str, Any],
                                                            full_report: tuple[Path, str]) -> None:
    path, _ = full_report
    est = case["est"]
    shown = json.loads((path.parent / "report.json").read_text())["examples"]
    acc = est.accepted_indices
    by_snr = acc[np.argsort(-est.SNR_comp[acc])]
    assert len(shown) == min(8, acc.size) and set(shown) <= set(acc.tolist())
    assert shown[0] == by_snr[0] and shown[-1] == by_snr[-1]  # highest and lowest accepted SNR
    assert by_snr[(acc.size - 1) // 2] in shown  # and the median
    assert list(est.SNR_comp[shown]) == sorted(est.SNR_comp[shown], reverse=True)


def test_no_components_renders_with_a_clear_note(case: dict[str, Any], tmp_path: Path) -> None:
    P = 48 * 48
    est = Estimates(A=sp.csc_matrix((P, 0), dtype=np.float32), dims=(48, 48), C=np.zeros((0, T), np.float32),
                    S=np.zeros((0, T), np.float32), SNR_comp=np.zeros(0), r_values=np.zeros(0),
                    idx_components=np.zeros(0, np.int64), idx_components_bad=np.zeros(0, np.int64), frame_rate=30.0)
    path = write_run_report(tmp_path / "r", estimates=est, params=Params(), summary=case["images"],
                            motion=case["motion"], stages=STAGES[:1], truth=case["truth"])
    html = path.read_text()
    assert "No components were found" in html
    assert _card(html, "components-found") == "0" and _card(html, "accepted") == "0"
    assert _card(html, "f1") == "0.000"
    assert "could not be drawn" not in html
    for name in _page_figures(html):
        assert (path.parent / name).is_file()


@pytest.mark.parametrize("K", [0, 3])
def test_everything_optional_missing_still_renders(K: int, tmp_path: Path) -> None:
    A = sp.random(32 * 40, K, density=0.05, format="csc", random_state=1, dtype=np.float32)
    est = Estimates(A=A, dims=(32, 40))  # no traces, no metrics, not evaluated, no frame rate
    path = write_run_report(tmp_path / "r", estimates=est, params=None)
    html = path.read_text()
    assert "could not be drawn" not in html
    assert _card(html, "components-found") == str(K)
    assert ("No components were found" in html) == (K == 0)
    assert ("not evaluated" in html) == (K > 0)
    for name in _page_figures(html):
        assert (path.parent / name).is_file()
    assert ("components.png" in _page_figures(html)) == (K > 0)  # outlines on the sum of footprints


def test_piecewise_rigid_motion_shows_patch_spread(case: dict[str, Any], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grid = PatchGrid(dims=(48, 48), patch_shape=(24, 24), starts=((0, 24), (0, 24)))
    rigid = case["motion"]
    mc = MotionResult(shifts=rigid.shifts, template=rigid.template, mean_image=rigid.mean_image,
                      mean_raw=rigid.mean_raw, frame_corr=rigid.frame_corr, metrics={}, border_pix=(3, 3),
                      params={"pw_rigid": True},
                      patch_shifts=(rigid.shifts[:, None, :] + rng.normal(0, 0.3, (T, 4, 2))).astype(np.float32),
                      patch_grid=grid)
    est = case["est"]
    path = write_run_report(tmp_path / "r", estimates=est, params=Params(), motion=mc, n_examples=2)
    html = path.read_text()
    assert "piecewise-rigid (4 patches)" in html and "spread over patches" in html
    assert (path.parent / "shifts.png").stat().st_size > 2000
    assert len(json.loads((path.parent / "report.json").read_text())["examples"]) == 2


def test_inconsistent_inputs_are_refused_with_the_fix(case: dict[str, Any], tmp_path: Path) -> None:
    est = case["est"]
    with pytest.raises(ValueError, match="same frame"):
        write_run_report(tmp_path / "a", estimates=est, params=Params(),
                         truth={"A": sp.csc_matrix((10, 2)), "somata": [0]})
    with pytest.raises(ValueError, match="'seconds'"):
        write_run_report(tmp_path / "b", estimates=est, params=Params(), stages=[{"stage": "motion"}])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_run_report(tmp_path / "file", estimates=est, params=Params())


def test_outlines_enclose_the_footprint_area() -> None:
    """A disk of radius 6 px outlined at half its height: the polygon's area is the disk's."""
    yy, xx = np.mgrid[:40, :50]
    disk = ((yy - 20.3) ** 2 + (xx - 14.8) ** 2 <= 36).astype(float)
    smooth = np.clip(6.5 - np.hypot(yy - 20.3, xx - 14.8), 0, 1)  # 1 inside, ramps to 0 over 1 px
    A = sp.csc_matrix(np.stack([disk.ravel(), smooth.ravel(), np.zeros(40 * 50)], axis=1))
    outlines = footprint_outlines(A, (40, 50), level=0.5)
    assert outlines[2] == []
    (ring,) = outlines[1]
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert area == pytest.approx(np.pi * 6.0**2, rel=0.05)
    assert x.mean() == pytest.approx(14.8, abs=0.3) and y.mean() == pytest.approx(20.3, abs=0.3)
    # volumes are outlined on their maximum over planes
    vol = sp.csc_matrix(np.stack([np.stack([np.zeros((40, 50)), smooth]).ravel()], axis=1))
    flat, dims = project_footprints(vol, (2, 40, 50))
    assert dims == (40, 50) and np.allclose(flat.toarray().ravel(), smooth.ravel())
