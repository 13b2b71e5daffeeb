"""The batch pipeline (``somascope run``): end to end on a simulated movie, stage reuse, resuming
after a crash or a kill, preflight refusals, the command line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope import simulate
from somascope.cli import main
from somascope.cnmf.estimates import Estimates
from somascope.pipeline import PipelineError, load_results, run
from somascope.pipeline import stages
from somascope.pipeline.stages import STAGE_NAMES

DIMS = (64, 64)
RADIUS = 5.0
#: F1 of the accepted components against the active somata on this movie: 0.875 measured
#: (7 of 9 found, no false positive); one more miss or false positive still passes.
MIN_F1 = 0.8


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A 64×64×600 two-photon movie with 10 cells and rigid motion, as an ImageJ TIFF at 30 Hz."""
    folder = tmp_path_factory.mktemp("pipeline-movie")
    sim = simulate.two_photon(dims=DIMS, n_frames=600, n_cells=10, motion="rigid", max_shift=3.0, seed=1)
    path = folder / "movie.tif"
    tifffile.imwrite(path, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    return path, sim


@pytest.fixture(scope="module")
def clean_run(movie: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One uninterrupted run; other tests copy its output folder or compare against it."""
    path, _ = movie
    out = tmp_path_factory.mktemp("pipeline-clean") / "out"
    return run(path, out, radius=RADIUS, engine="serial", progress=False)


def _copy_run(clean_run: Any, tmp_path: Path) -> Path:
    dest = tmp_path / "out"
    shutil.copytree(clean_run.out, dest)
    return dest


def _assert_same_results(a: Path, b: Path) -> None:
    ra, rb = load_results(a), load_results(b)
    ea, eb = ra.estimates, rb.estimates
    assert ea.K == eb.K
    np.testing.assert_allclose(ea.A.toarray(), eb.A.toarray(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ea.C, eb.C, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ea.idx_components, eb.idx_components)
    np.testing.assert_allclose(ra.motion["shifts"], rb.motion["shifts"], atol=1e-6)
    np.testing.assert_allclose(ra.summary["corr"], rb.summary["corr"], atol=1e-6)


def _f1(sim: Any, out: Path) -> float:
    from somascope.demo import true_footprints
    from somascope.metrics import match_footprints
    from somascope.motion.result import MotionResult

    est = Estimates.load(out / "results.h5")
    motion = MotionResult.load(out / "stages" / "motion" / "result", open_store=False)
    somata = np.flatnonzero(np.asarray(sim.active) & (np.asarray(sim.kind) == "soma"))
    match = match_footprints(true_footprints(sim, motion)[:, somata], est.A[:, est.accepted_indices], DIMS)
    return float(match.f1)


# -- end to end ----------------------------------------------------------------------------------
def test_end_to_end_run_finds_the_cells_and_writes_every_output(movie: tuple[Path, Any], clean_run: Any) -> None:
    _, sim = movie
    out = clean_run.out
    assert clean_run.computed == list(STAGE_NAMES) and not clean_run.reused
    assert (out / "results.h5").is_file() and (out / "params.yaml").is_file() and (out / "run.log").is_file()
    assert clean_run.report_path == out / "report" / "report.html" and clean_run.report_path.is_file()
    for name in STAGE_NAMES:
        manifest = json.loads((out / "stages" / name / "manifest.json").read_text())
        assert manifest["stage"] == name and manifest["seconds"] >= 0 and manifest["peak_rss_bytes"] > 0
        for output in manifest["outputs"]:
            assert (out / output).exists(), output
    assert not list((out / "stages").glob("*.partial"))
    assert (out / "stages" / "motion" / "movie.zarr").is_dir()  # the Store lives under OUT

    # the accepted components are the simulated cells
    assert _f1(sim, out) >= MIN_F1
    # the results file holds the final estimates, motion, summary, params and stage timings
    res = load_results(out / "results.h5")
    est = res.estimates
    assert est.K == clean_run.estimates.K and est.dims == DIMS
    assert est.F_dff.shape == est.C.shape == est.S.shape == (est.K, 600)
    assert res.motion["shifts"].shape == (600, 2) and res.summary["corr"].shape == DIMS
    assert res.params["data"]["fr"] == pytest.approx(30.0) and res.params["data"]["neuron_radius"] == [RADIUS] * 2
    assert list(res.stages) == list(STAGE_NAMES[:-1])
    assert all(r["seconds"] >= 0 and not r["reused"] for r in res.stages.values())
    # traces stage: deconvolved again from the raw traces, which it keeps (raw = C + YrA)
    quality = Estimates.load(out / "stages" / "quality" / "estimates.h5")
    np.testing.assert_allclose(est.C + est.YrA, quality.C + quality.YrA, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(est.idx_components, quality.idx_components)
    # a plain Estimates reader finds the estimates in the pipeline file
    assert Estimates.load(out / "results.h5").K == est.K


def test_preflight_memory_estimate_is_within_a_factor_2_of_a_fresh_runs_peak(movie: tuple[Path, Any], clean_run: Any,
                                                                            tmp_path: Path) -> None:
    # a fresh process, as a user's run is: this test process's own memory (every module and
    # JIT-compiled kernel of the tests before) is not the run's. clean_run ran first, so the
    # Numba kernels load from their disk cache here, as they do on a user's second run.
    path, _ = movie
    code = (f"from somascope.pipeline import run; r = run({str(path)!r}, {str(tmp_path / 'out')!r}, "
            f"radius={RADIUS}, engine='serial', progress=False); "
            "print(r.estimate.memory, max(s.peak_rss_bytes for s in r.stages))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    estimate, peak = map(int, done.stdout.split()[-2:])
    assert 0.5 < estimate / peak < 2.0


def test_peak_memory_of_the_whole_process_tree_is_measured(tmp_path: Path) -> None:
    from somascope.pipeline.resources import PeakMemory

    code = "import numpy as np, time; a = np.ones(40_000_000); time.sleep(1.0)"  # 320 MB in a child
    with PeakMemory() as idle:
        time.sleep(0.3)
    with PeakMemory() as busy:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert busy.peak - idle.peak > 250e6


# -- reuse -------------------------------------------------------------------------------------------
def test_rerun_reuses_every_stage_and_from_reruns_the_rest(movie: tuple[Path, Any], clean_run: Any,
                                                           tmp_path: Path) -> None:
    path, _ = movie
    out = _copy_run(clean_run, tmp_path)
    motion_manifest = out / "stages" / "motion" / "manifest.json"
    stamp = motion_manifest.stat().st_mtime_ns
    again = run(path, out, radius=RADIUS, engine="serial", progress=False)
    assert again.reused == list(STAGE_NAMES) and again.computed == []
    assert motion_manifest.stat().st_mtime_ns == stamp
    assert "motion: reused" in (out / "run.log").read_text()

    later = run(path, out, radius=RADIUS, engine="serial", progress=False, from_stage="traces")
    assert later.computed == ["traces", "results"]
    assert later.reused == ["motion", "summary", "seeds", "background", "cnmf", "quality", "refit"]
    _assert_same_results(out / "results.h5", clean_run.results_path)


def test_changed_parameters_rerun_exactly_the_stages_that_depend_on_them(movie: tuple[Path, Any], clean_run: Any,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = movie
    out = _copy_run(clean_run, tmp_path)
    in_memory: list[list[str]] = []
    real_traces = stages.run_traces

    def traces(ctx: Any, folder: Path) -> Any:  # which stages' Estimates the run holds meanwhile
        in_memory.append(sorted(s for s, got in ctx._products.items() if got.get("estimates") is not None))
        return real_traces(ctx, folder)

    monkeypatch.setattr(stages, "run_traces", traces)
    strict = run(path, out, radius=RADIUS, engine="serial", progress=False, overrides={"min_SNR": 50.0,
                                                                                       "rval_thr": 0.99},
                 nwb=True)
    assert strict.reused == ["motion", "summary", "seeds", "background", "cnmf"]
    assert strict.computed == ["quality", "refit", "traces", "results"]
    assert strict.estimates.accepted_indices.size < clean_run.estimates.accepted_indices.size
    # only the latest stage's components × frames arrays stay in memory (long recordings); the
    # traces stage loaded the quality stage's from its folder
    assert in_memory == [[]]
    assert strict.nwb_path is not None and strict.nwb_path.is_file()
    log = (out / "run.log").read_text()
    assert "params.quality changed (quality.min_SNR: 2.5 → 50.0" in log

    merged = run(path, out, radius=RADIUS, engine="serial", progress=False,
                 overrides={"merge_thr": 0.6, "refit": True})
    assert merged.reused == ["motion", "summary", "seeds", "background"]
    assert merged.computed == ["cnmf", "quality", "refit", "traces", "results"]
    assert merged.stage("refit").detail.startswith("refit ")  # quality.refit: CNMF seeded with the accepted
    assert (out / "stages" / "refit" / "estimates.h5").is_file()
    assert "cnmf … (" in (out / "run.log").read_text()
    assert "params.merge changed (merge.merge_thr: 0.8 → 0.6)" in (out / "run.log").read_text()
    assert merged.nwb_path is None and not (out / "results.nwb").exists()  # a stale NWB file is not left


# -- crashes and kills ----------------------------------------------------------------------------------
_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import somascope.cnmf

    def stuck(*args, **kwargs):  # CNMF "runs" until the process is killed
        Path(sys.argv[3]).write_text("in cnmf")
        time.sleep(120)

    somascope.cnmf.fit = stuck
    from somascope.pipeline import run
    run(sys.argv[1], sys.argv[2], radius=float(sys.argv[4]), engine="serial", progress=False)
""")


def test_killed_or_failed_runs_resume_and_give_the_clean_result(movie: tuple[Path, Any], clean_run: Any,
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    path, _ = movie
    out, marker = tmp_path / "out", tmp_path / "in-cnmf"
    script = tmp_path / "killed_run.py"
    script.write_text(_KILL_SCRIPT)
    # 1. SIGKILL while CNMF runs
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(out), str(marker), str(RADIUS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never reached CNMF"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.h5").exists()
    assert not (out / "stages" / "cnmf").exists()  # only cnmf.partial, never a finished-looking folder
    assert (out / "stages" / "motion" / "manifest.json").is_file()
    stamp = (out / "stages" / "motion" / "manifest.json").stat().st_mtime_ns

    # 2. an exception in the quality stage, after it wrote into its folder

    def broken(ctx: Any, folder: Path) -> Any:
        (folder / "estimates.h5").write_bytes(b"half written")
        raise RuntimeError("simulated crash in the quality tests")

    with monkeypatch.context() as m:
        m.setattr(stages, "run_quality", broken)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(path, out, radius=RADIUS, engine="serial", progress=False)
    assert not (out / "results.h5").exists()
    assert not (out / "stages" / "quality").exists() and not (out / "stages" / "quality.partial").exists()
    assert (out / "stages" / "cnmf" / "manifest.json").is_file()
    assert "run failed: RuntimeError: simulated crash" in (out / "run.log").read_text()

    # 3. run again: the finished stages are reused and the result is that of the clean run
    final = run(path, out, radius=RADIUS, engine="serial", progress=False)
    assert final.reused == ["motion", "summary", "seeds", "background", "cnmf"]
    assert (out / "stages" / "motion" / "manifest.json").stat().st_mtime_ns == stamp
    assert "[1/9] motion: reused" in (out / "run.log").read_text()
    assert not list((out / "stages").glob("*.partial"))  # the killed run's cnmf.partial is gone
    _assert_same_results(out / "results.h5", clean_run.results_path)


# -- preflight refusals ------------------------------------------------------------------------------------
def _refused(tmp_path: Path, movie_path: Path, match: str, **kwargs: Any) -> None:
    out = tmp_path / "refused"
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        run(movie_path, out, engine="serial", progress=False, **kwargs)
    assert time.perf_counter() - t0 < 5.0  # refused before any heavy work
    assert not (out / "stages").exists()


def test_preflight_refuses_a_movie_without_frame_rate(movie: tuple[Path, Any], tmp_path: Path) -> None:
    data = tifffile.imread(movie[0])[:100]
    npy = tmp_path / "raw.npy"
    np.save(npy, data)
    _refused(tmp_path, npy, r"frame rate is unknown.*Fix: pass --fr 30", radius=RADIUS)


def test_preflight_refuses_a_neuron_larger_than_a_patch(movie: tuple[Path, Any], tmp_path: Path) -> None:
    _refused(tmp_path, movie[0], r"patch", radius=8.0, params={"patch": {"rf": 10, "stride": 5}})


def test_preflight_refuses_a_neuron_larger_than_the_frame(movie: tuple[Path, Any], tmp_path: Path) -> None:
    _refused(tmp_path, movie[0], r"larger than the frame", radius=40.0, params={"patch": {"rf": None}})


def test_preflight_refuses_too_little_disk(movie: tuple[Path, Any], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import somascope.pipeline.preflight as preflight

    full = shutil._ntuple_diskusage(10**12, 10**12 - 10**5, 10**5)  # 100 kB free
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: full)
    _refused(tmp_path, movie[0], r"not enough disk space.*Fix", radius=RADIUS)


def test_preflight_refuses_an_output_path_that_is_a_file(movie: tuple[Path, Any], tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    with pytest.raises(PipelineError, match="is a file"):
        run(movie[0], target, radius=RADIUS, engine="serial", progress=False)
    assert target.read_text() == "not a folder"


def test_preflight_refuses_a_movie_too_short(tmp_path: Path) -> None:
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, np.ones((8, 32, 32), np.float32), imagej=True, metadata={"axes": "TYX", "finterval": 0.1})
    _refused(tmp_path, short, r"8 frames.*at least", radius=3.0)


def test_default_radius_is_used_with_a_warning(movie: tuple[Path, Any], tmp_path: Path) -> None:
    from somascope.pipeline.preflight import prepare

    prepared = prepare(movie[0], tmp_path / "o")
    assert prepared.params.data.neuron_radius == (5.0, 5.0) and prepared.radius_source == "default"
    assert any("default radius of 5 px" in w for w in prepared.warnings)
    assert prepared.fr_source == "movie metadata" and prepared.params.data.fr == pytest.approx(30.0)
    # --fr wins over the params file, which wins over the movie's metadata
    params_file = tmp_path / "p.yaml"
    params_file.write_text("data:\n  fr: 15\n  neuron_radius: 4\nquality:\n  min_SNR: 3\n")
    p = prepare(movie[0], tmp_path / "o", params_file)
    assert p.params.data.fr == 15 and p.params.data.neuron_radius == (4.0, 4.0) and p.params.quality.min_SNR == 3
    assert p.params.quality.N_samples_exceptionality == 6  # derived values follow the file's rate
    p = prepare(movie[0], tmp_path / "o", params_file, fr=20, radius=6)
    assert p.params.data.fr == 20 and p.params.init.gSig == (6.0, 6.0) and p.fr_source == "--fr"


# -- the command line -----------------------------------------------------------------------------------
def test_cli_run_reuses_the_python_run_and_errors_are_one_line(movie: tuple[Path, Any], clean_run: Any,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    path, _ = movie
    out = _copy_run(clean_run, tmp_path)
    assert main(["run", str(path), "--out", str(out), "--fr", "30", "--radius", "5", "--scheduler", "serial",
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "results.h5" in printed and "accepted" in printed
    log = (out / "run.log").read_text()
    assert all(f"{name}: reused" in log for name in STAGE_NAMES)  # the same parameters: nothing recomputed

    npy = tmp_path / "raw.npy"
    np.save(npy, tifffile.imread(path)[:100])
    for argv, needle in (
        (["run", str(npy), "--out", str(tmp_path / "x"), "--radius", "5", "--scheduler", "serial", "-q"],
         "frame rate is unknown"),
        (["run", str(path), "--out", str(out), "--from", "nonsense", "--scheduler", "serial", "-q"],
         "unknown stage 'nonsense'"),
        (["run", str(path), "--out", str(out), "--set", "min_SNRR=3", "--scheduler", "serial", "-q"],
         "min_SNR"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("somascope: error:") and needle in err[0], err
    assert not (tmp_path / "x").exists()


def test_cli_help_lists_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--fr", "--radius", "--no-motion", "--scheduler", "--workers", "--force", "--from",
                   "--nwb", "--params"):
        assert option in text


def test_a_correction_that_blurs_the_mean_image_is_not_applied(movie: tuple[Path, Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The real case is a dark Miniscope crop (../shared/data/minian_1p_crop: crispness 39.6 →
    # 35.8, shifts jittering ±0.9 px around a still field); simulated movies that do not move
    # keep their crispness (registered to a template of their own noise), so the measured
    # crispness of the corrected movie is lowered here, after a real correction.
    import dataclasses as dc

    from somascope import motion
    from somascope.store import Store

    real = motion.correct

    def blurring(*args: Any, **kwargs: Any) -> Any:
        mc = real(*args, **kwargs)
        return dc.replace(mc, metrics={**mc.metrics, "crispness_corrected": 0.9 * mc.metrics["crispness_raw"]})

    monkeypatch.setattr(motion, "correct", blurring)
    path, _ = movie
    res = run(path, tmp_path / "out", radius=RADIUS, engine="serial", progress=False)
    stage = next(r for r in res.stages if r.stage == "motion")
    assert stage.detail.startswith("not applied: correction lowered the crispness")
    store = Store.open(tmp_path / "out" / "stages" / "motion" / "movie.zarr")
    np.testing.assert_array_equal(store[:20], tifffile.imread(path)[:20])  # the movie as recorded
    assert "registration followed noise" in (tmp_path / "out" / "run.log").read_text()
    assert load_results(res.results_path).motion is None  # no shifts claimed for the movie
