"""Faults during ``somascope run`` and the output folder (issue 16, docs/reliability.md).

What each test checks is what a user sees and what is left on disk: the exit code, the one
line on stderr, which files exist afterwards, and that a rerun of the same command resumes and
gives the result of a clean run. The movie is tiny (48 × 48 × 150, five cells) and run without
motion correction, on small CNMF patches (so a Dask run has several patch tasks), so that a run
takes a few seconds.

Kills and Ctrl-C use the runner's test hook ``SOMASCOPE_TEST_HOLD_STAGE`` (documented in
:mod:`somascope.pipeline.runner`): the run stops inside the named stage, logs that it does to
``run.log``, and waits for the test's signal.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sqlite3
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
from somascope.pipeline import RunFault, RunInterrupted, load_results
from somascope.pipeline.runner import TEST_HOLD_ENV

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and locks")

#: The run's options: serial, quiet, no motion correction, CNMF on patches, refit on (so that
#: every stage does work).
RUN_ARGS = ["--radius", "4", "--scheduler", "serial", "-q", "--no-motion", "--set", "patch.rf=14",
            "--set", "patch.stride=6", "--set", "quality.refit=true"]
#: Every stage, in order.
STAGES = ("motion", "summary", "seeds", "background", "cnmf", "quality", "refit", "traces", "results")


def _write_movie(path: Path, dims: tuple[int, int], n_frames: int, seed: int) -> Path:
    sim = simulate.two_photon(dims=dims, n_frames=n_frames, n_cells=5, neuron_radius=4, seed=seed)
    tifffile.imwrite(path, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    return path


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_movie(tmp_path_factory.mktemp("rel-movie") / "movie.tif", (48, 48), 150, seed=1)


@pytest.fixture(scope="module")
def clean(movie: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run; the faulted runs are compared with it."""
    out = tmp_path_factory.mktemp("rel-clean") / "out"
    assert main(["run", str(movie), "--out", str(out), *RUN_ARGS]) == 0
    assert (out / "results.h5").is_file()
    return out


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit code and the stderr lines of ``somascope ARGV`` run in this process."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def _assert_same_results(a: Path, b: Path) -> None:
    """Components identical up to the summation order: footprints and traces within 1e-4 relative."""
    ea, eb = load_results(a).estimates, load_results(b).estimates
    assert ea.K == eb.K and ea.K > 0
    A, B = ea.A.toarray(), eb.A.toarray()
    np.testing.assert_allclose(A, B, rtol=1e-4, atol=1e-4 * np.abs(B).max())
    np.testing.assert_allclose(ea.C, eb.C, rtol=1e-4, atol=1e-4 * np.abs(eb.C).max())
    np.testing.assert_array_equal(ea.idx_components, eb.idx_components)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _looks_finished(out: Path) -> list[str]:
    """Every output in ``out`` that looks complete: results.h5 and finished stage folders."""
    found = [p.name for p in out.glob("results.*")]
    found += [p.parent.name for p in (out / "stages").glob("*/manifest.json")]
    return sorted(found)


# -- 1. refused before any stage: nothing is left ---------------------------------------------
def test_a_run_refused_by_preflight_leaves_no_folder_and_one_line(movie: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import somascope.pipeline.preflight as preflight

    full = shutil._ntuple_diskusage(10**12, 10**12 - 10**5, 10**5)  # 100 kB free
    with monkeypatch.context() as m:
        m.setattr(preflight.shutil, "disk_usage", lambda path: full)
        out = tmp_path / "new" / "out"
        code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("somascope: error: ") and "disk" in err[0] and "Fix:" in err[0]
    assert not out.exists()  # no params.yaml, run.log, stages/ or lock left in a folder the run made
    # into an existing folder: nothing is written there either
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    code, err = _cli(["run", str(movie), "--out", str(existing), *RUN_ARGS, "--set", "patch.rf=3"], capsys)
    assert code == 2 and len(err) == 1 and "patch" in err[0]
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_a_bad_movie_found_in_the_first_stage_leaves_no_folder_and_one_line(
        movie: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable frame found only when the motion stage reads it (a file damaged in the
    middle): the one line of the error, and the new folder is gone (run.log included)."""
    from somascope.io import MovieError
    from somascope.pipeline import stages

    def unreadable(ctx: Any, folder: Path) -> Any:
        (folder / "movie.zarr").mkdir()
        raise MovieError(f"{movie}: frame 77 cannot be read (the file is damaged). Fix: export the movie again.")

    monkeypatch.setattr(stages, "run_motion", unreadable)
    out = tmp_path / "out"
    code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 2
    assert err == [f"somascope: error: {movie}: frame 77 cannot be read (the file is damaged). Fix: export the "
                   "movie again."]  # no second "run failed" line from the runner
    assert not out.exists()


# -- 2. read-only output ------------------------------------------------------------------------
def test_a_read_only_output_folder_is_a_fault_with_one_line(movie: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import pathlib

    # (a) the folder cannot be created: a read-only file system
    out = tmp_path / "ro" / "out"
    real_mkdir = pathlib.Path.mkdir

    def read_only_mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "mkdir", read_only_mkdir)
        with pytest.raises(RunFault, match=r"read-only \(.*\)\. Kept: nothing was written\. Fix: make it writable "
                                           r"or choose another --out"):
            from somascope.pipeline import run

            run(movie, out, radius=4, engine="serial", progress=False, motion=False)
        code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("somascope: ") and "read-only" in err[0]
    assert not out.exists()

    # (b) an existing folder whose files cannot be written (permission denied on the first
    # stage's manifest)
    from somascope.pipeline import runner

    out = tmp_path / "denied"
    out.mkdir()
    real = runner.write_manifest

    def denied(folder: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(folder) / "manifest.json"))

    with monkeypatch.context() as m:
        m.setattr(runner, "write_manifest", denied)
        code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert runner.write_manifest is real
    assert code == 1 and len(err) == 1 and "not writable" in err[0] and "stage motion" in err[0]
    assert "Traceback" not in "\n".join(err)
    assert _looks_finished(out) == [] and not list((out / "stages").glob("*.partial"))


# -- 3. disk full in the middle of a stage ---------------------------------------------------------
def test_disk_full_in_a_stage_keeps_the_finished_stages_and_the_rerun_completes(
        movie: Path, clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from somascope.pipeline import stages

    real = stages._estimates_file

    def full_disk(folder: Path, est: Any) -> list[str]:
        if folder.name == "quality.partial":  # half of the file, then the disk is full
            (folder / "estimates.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, est)

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(stages, "_estimates_file", full_disk)
        code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 1 and len(err) == 1, err
    line = err[0]
    assert "disk is full" in line and "stage quality" in line and "mounted at" in line
    assert "motion, summary, seeds, background, cnmf are kept" in line and "rerun the same command" in line
    assert not (out / "results.h5").exists()
    assert _looks_finished(out) == ["background", "cnmf", "motion", "seeds", "summary"]
    assert not (out / "stages" / "quality.partial").exists()
    kept = _tree(out / "stages")
    # the disk has room again: the same command resumes at quality and gives the clean result
    code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 0 and err == []
    assert all(_tree(out / "stages").get(k) == v for k, v in kept.items())  # reused, not rewritten
    assert "[5/9] cnmf: reused" in (out / "run.log").read_text()
    _assert_same_results(out / "results.h5", clean / "results.h5")


def test_disk_full_while_the_store_is_written_removes_the_new_folder(movie: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from somascope.store import Store

    def full(self: Any, t0: int, frames: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "write", full)
    out = tmp_path / "out"
    code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 1 and len(err) == 1
    assert "disk is full in stage motion" in err[0] and "nothing was finished" in err[0]
    assert not out.exists()


def test_an_hdf5_disk_full_error_without_errno_is_recognised(tmp_path: Path) -> None:
    """h5py reports ENOSPC as an OSError without errno, the number only in its message."""
    from somascope.pipeline.errors import as_fault

    exc = OSError("Can't write data (file write failed: time = Thu, errno = 28, error message = 'No space left "
                  "on device', buf = 0x1, total write size = 4096)")
    fault = as_fault(exc, out=tmp_path, stage="cnmf", kept=["motion"], removed=False)
    assert fault is not None and "disk is full in stage cnmf" in str(fault) and "motion is kept" in str(fault)
    # a permission error on an input file is the input's problem, not a fault of the run
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/movie.tif")
    assert as_fault(denied, out=tmp_path, stage="motion", kept=[], removed=False) is None
    assert as_fault(ValueError("x"), out=tmp_path, stage="motion", kept=[], removed=False) is None


# -- 4. a folder holding another movie's run ----------------------------------------------------------
def test_a_folder_holding_another_movies_run_is_refused(movie: Path, clean: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = _write_movie(tmp_path / "other.tif", (40, 40), 120, seed=2)
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    before = _tree(out)
    code, err = _cli(["run", str(other), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 2 and len(err) == 1
    assert "holds the run of another movie" in err[0] and str(movie) in err[0] and "150 × 48 × 48" in err[0]
    assert "Fix: choose another --out" in err[0] and "--force" in err[0]
    assert _tree(out) == before  # nothing touched, not even run.log
    # the Python API refuses too; --force replaces that run
    again = tmp_path / "out2"
    shutil.copytree(clean, again)
    from somascope.pipeline import PipelineError, run

    with pytest.raises(PipelineError, match="another movie"):
        run(other, again, radius=4, engine="serial", progress=False, motion=False)
    result = run(other, again, radius=4, engine="serial", progress=False, motion=False, force=True, until="motion")
    assert result.stage("motion").reused is False
    assert (again / "stages" / "motion" / "manifest.json").is_file()


# -- 5, 8. SIGKILL in every stage; a second run while one holds the lock -----------------------------
def _start(movie: Path, out: Path, hold: str) -> subprocess.Popen[str]:
    env = {**os.environ, TEST_HOLD_ENV: hold}
    return subprocess.Popen([sys.executable, "-m", "somascope.cli", "run", str(movie), "--out", str(out), *RUN_ARGS],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_hold(proc: subprocess.Popen[str], out: Path, stage: str, n_before: int) -> None:
    marker = f"holding in stage {stage} ("
    deadline = time.monotonic() + 120
    while True:
        log = out / "run.log"
        if log.is_file() and log.read_text().count(marker) > n_before:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before stage {stage}: {proc.returncode} {proc.communicate()}")
        assert time.monotonic() < deadline, f"the run never reached stage {stage}"
        time.sleep(0.05)


def test_sigkill_in_every_stage_then_the_rerun_resumes_and_equals_a_clean_run(
        movie: Path, clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    finished: dict[str, tuple[int, int]] = {}
    for i, stage in enumerate(STAGES):
        # in the results stage: killed as it starts (its outputs are written into OUT itself)
        hold = f"{stage}:start" if stage == "results" else stage
        proc = _start(movie, out, hold)
        _wait_for_hold(proc, out, stage, 0)
        if stage == "cnmf":  # 5. a second run into the folder is refused by the lock, naming the first
            code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
            assert code == 2 and len(err) == 1
            assert f"another somascope run (pid {proc.pid} on this computer) is writing into {out}" in err[0]
            lock = (out / ".lock").read_text().strip()
            assert lock == f"{socket.gethostname()}:{proc.pid}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # nothing looks finished that was not: only the stages before this one
        assert _looks_finished(out) == sorted(STAGES[:i]), stage
        assert not (out / "stages" / stage / "manifest.json").exists()
        # the stages finished by earlier runs were reused, not computed again
        manifests = {s: (out / "stages" / s / "manifest.json").stat().st_mtime_ns for s in STAGES[:i]}
        assert all(manifests[s] == finished[s] for s in finished), stage
        finished = {s: manifests[s] for s in STAGES[:i]}
        # the dead run's lock is left behind: the next run takes it over
        assert (out / ".lock").read_text().strip() == f"{socket.gethostname()}:{proc.pid}"
        log_text = (out / "run.log").read_text()
        (out / "run.log").write_text(log_text.replace("holding in stage", "held in stage"))
    code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 0 and err == []
    assert not (out / ".lock").exists() and not list((out / "stages").glob("*.partial"))
    assert "[8/9] traces: reused" in (out / "run.log").read_text()
    _assert_same_results(out / "results.h5", clean / "results.h5")


def test_a_lock_of_another_host_is_respected_and_an_empty_old_one_is_taken_over(movie: Path, clean: Path,
                                                                               tmp_path: Path) -> None:
    from somascope.pipeline import PipelineError, run

    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (out / ".lock").write_text("cluster-node-7:4242\n")
    with pytest.raises(PipelineError, match=r"pid 4242 on host cluster-node-7.*delete .*\.lock"):
        run(movie, out, radius=4, engine="serial", progress=False, motion=False)
    (out / ".lock").write_text("")  # an earlier somascope's lock file (flock, left empty)
    result = run(movie, out, radius=4, engine="serial", progress=False, motion=False,
                 overrides={"patch.rf": 14, "patch.stride": 6, "quality.refit": True})
    assert result.computed == [] and not (out / ".lock").exists()


# -- 10. Ctrl-C -----------------------------------------------------------------------------------------
def test_ctrl_c_stops_with_one_line_exit_130_and_the_rerun_resumes(movie: Path, clean: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    proc = _start(movie, out, "quality")
    _wait_for_hold(proc, out, "quality", 0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("somascope: interrupted") and "in stage quality" in lines[0], stderr
    assert "motion, summary, seeds, background, cnmf are kept" in lines[0] and "rerun the same command" in lines[0]
    assert _looks_finished(out) == ["background", "cnmf", "motion", "seeds", "summary"]
    assert not (out / "stages" / "quality.partial").exists() and not (out / ".lock").exists()
    assert "run interrupted: RunInterrupted" not in (out / "run.log").read_text()
    assert "run interrupted: KeyboardInterrupt" in (out / "run.log").read_text()
    code, err = _cli(["run", str(movie), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 0 and err == []
    assert "[5/9] cnmf: reused" in (out / "run.log").read_text()
    _assert_same_results(out / "results.h5", clean / "results.h5")


def test_ctrl_c_in_the_first_stage_of_a_new_folder_leaves_nothing(movie: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from somascope.pipeline import run, stages

    def interrupted(ctx: Any, folder: Path) -> Any:
        (folder / "movie.zarr").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "run_motion", interrupted)
    out = tmp_path / "out"
    with pytest.raises(RunInterrupted, match=r"^stopped in stage motion; nothing was finished, so the new "
                                             r"folder .* was removed$"):
        run(movie, out, radius=4, engine="serial", progress=False, motion=False)
    assert not out.exists()


# -- 9. a Dask worker killed in the middle of the CNMF patches ----------------------------------------
_WORKER_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import somascope.cnmf.patches as patches

    FLAG = sys.argv[1]
    fit_patch = patches._fit_patch

    def fit_patch_once_dying(item):
        # on a worker: the first patch task kills its own worker process (like an OOM kill)
        try:
            fd = os.open(FLAG, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return fit_patch(item)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":  # not in the worker processes, which import this script again
        patches._fit_patch = fit_patch_once_dying
        from somascope.cli import main
        sys.exit(main(["run", *sys.argv[2:]]))
""")


def test_a_dask_worker_killed_in_the_cnmf_patches_is_retried_and_the_run_completes(movie: Path, clean: Path,
                                                                                  tmp_path: Path) -> None:
    script = tmp_path / "worker_kill.py"
    script.write_text(_WORKER_KILL_SCRIPT)
    flag, out = tmp_path / "killed-worker", tmp_path / "out"
    args = [a if a != "serial" else "local" for a in RUN_ARGS] + ["--workers", "2"]
    proc = subprocess.run([sys.executable, str(script), str(flag), str(movie), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300)  # never hangs
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.read_text().isdigit()  # a worker did die in a patch task
    assert "Traceback" not in proc.stderr
    _assert_same_results(out / "results.h5", clean / "results.h5")


def test_a_lost_cluster_is_a_fault_that_says_what_was_kept(tmp_path: Path) -> None:
    """Every retry of a task killed its worker (Dask's allowed-failures exhausted): a RunFault,
    not a Dask traceback."""
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    from somascope.pipeline.errors import as_fault

    lost = KilledWorker("fit-patch-3", SimpleNamespace(address="tcp://127.0.0.1:40000"), 3)
    fault = as_fault(lost, out=tmp_path, stage="cnmf", kept=["motion", "summary"], removed=False)
    assert fault is not None
    text = str(fault)
    assert text.startswith("the Dask workers running a task died too often") and "in stage cnmf" in text
    assert "motion, summary are kept" in text and "\n" not in text


# -- 6. results files of a newer schema ------------------------------------------------------------------
def test_results_of_a_newer_schema_are_refused_with_upgrade(clean: Path, tmp_path: Path) -> None:
    import h5py

    from somascope.cnmf.estimates import Estimates, ResultsFileError
    from somascope.pipeline.results import check_schema

    newer = tmp_path / "results.h5"
    shutil.copy(clean / "results.h5", newer)
    with h5py.File(newer, "r+") as fh:
        fh.attrs["pipeline_schema_version"] = np.int64(99)
    before = newer.read_bytes()
    with pytest.raises(ResultsFileError, match=r"newer somascope \(pipeline schema 99 > 1\)\. Fix: upgrade somascope"):
        load_results(newer)
    with h5py.File(newer, "r+") as fh:
        fh.attrs["pipeline_schema_version"] = np.int64(1)
        fh["estimates"].attrs["schema_version"] = np.int64(7)
    with pytest.raises(ResultsFileError, match=r"newer somascope \(results schema version 7 > 1\)\. Fix: upgrade"):
        load_results(newer)
    with pytest.raises(ResultsFileError, match=r"schema version 7.*upgrade somascope"):
        Estimates.load(newer)
    with h5py.File(newer, "r") as fh:  # the check every reader of results.h5 can call first
        with pytest.raises(ResultsFileError, match=r"Fix: upgrade somascope"):
            check_schema(fh, newer)
    from somascope.cli import main

    assert main(["info", str(newer)]) == 2  # where a movie is expected: refused, with the upgrade fix
    from somascope.viewer.data import Source, SourceError

    with pytest.raises(SourceError, match=r"newer somascope .*Fix: upgrade somascope"):
        Source(newer)  # the viewer refuses it before reading anything else
    assert len(before) == newer.stat().st_size  # only read


def test_a_results_file_given_as_a_movie_says_what_it_is(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.cli import main

    assert main(["info", str(clean / "results.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("somascope: error:") and "is a somascope results file, not a movie" in err
    assert "somascope view" in err and "\n" not in err


# -- 7. a batch file that is corrupt or locked ---------------------------------------------------------
def test_a_corrupt_batch_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.batch import Batch

    Batch.create(tmp_path / "b").close()
    db_file = tmp_path / "b" / "batch.sqlite"
    db_file.write_bytes(os.urandom(4096))
    before = db_file.read_bytes()
    code, err = _cli(["batch", "ls", str(tmp_path / "b")], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("somascope: error: ") and "not a somascope batch" in err[0] and "Fix:" in err[0]
    assert db_file.read_bytes() == before


def test_a_batch_file_of_a_newer_schema_is_refused_with_upgrade(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.batch import Batch

    Batch.create(tmp_path / "b").close()
    con = sqlite3.connect(tmp_path / "b" / "batch.sqlite", isolation_level=None)
    con.execute("UPDATE settings SET value = '9' WHERE key = 'schema_version'")
    con.close()
    code, err = _cli(["batch", "ls", str(tmp_path / "b")], capsys)
    assert code == 2 and len(err) == 1
    assert "newer somascope (batch schema 9" in err[0] and "Fix: upgrade somascope" in err[0]


def test_a_batch_file_locked_by_another_process_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from somascope.batch import Batch, db

    Batch.create(tmp_path / "b").close()
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.3)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sqlite3, sys, time
            con = sqlite3.connect(sys.argv[1], isolation_level=None)
            con.execute("BEGIN EXCLUSIVE")
            print("locked", flush=True)
            time.sleep(60)
        """), str(tmp_path / "b" / "batch.sqlite")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, err = _cli(["batch", "ls", str(tmp_path / "b")], capsys)
        assert code == 2 and len(err) == 1
        assert "is locked by another process" in err[0] and "Fix: wait" in err[0]
    finally:
        holder.kill()
        holder.wait()
    with Batch.open(tmp_path / "b") as batch:  # once the other process is gone, it opens
        assert batch.rows() == []


def test_an_output_folder_that_is_the_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming the folder of TIFFs that is read, or a folder inside the Zarr store that is
    read: refused before anything is written (the input stays as it was)."""
    import tifffile
    import zarr

    from somascope.cli import main

    frames = (np.random.default_rng(0).random((40, 24, 24)) * 1000).astype(np.uint16)
    folder = tmp_path / "tiffs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", frames)
    tifffile.imwrite(folder / "b.tif", frames)
    store = tmp_path / "movie.zarr"
    z = zarr.open(str(store), mode="w", shape=frames.shape, chunks=(20, 24, 24), dtype="f4")
    z[:] = frames
    for inp, out, said in ((folder, folder, "is the input itself"), (store, store / "out", "inside the input store")):
        before = sorted(p.name for p in inp.iterdir())
        assert main(["run", str(inp), "--out", str(out), "--fr", "10", "--radius", "3", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("somascope: error:") and said in err and "Fix:" in err and "\n" not in err
        assert sorted(p.name for p in inp.iterdir()) == before
