"""The Dask engine: same results serial and parallel, errors surface, BLAS threads set; batch
systems (SLURM, PBS) through dask-jobqueue, with a fake sbatch."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from somascope.parallel import THREAD_ENV_VARS, Engine, as_engine, cluster_config, job_script
from somascope.pipeline.resources import EngineHandle


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise RuntimeError("task three failed")
    return x


def _first_sum(item: tuple[int, object]) -> float:
    return float(item[1].sum())  # type: ignore[attr-defined]


def _blas_env(_: int) -> dict[str, str | None]:
    return {var: os.environ.get(var) for var in THREAD_ENV_VARS}


def test_serial_map_keeps_order_and_raises_real_errors() -> None:
    engine = as_engine(None)
    assert engine.kind == "serial"
    assert engine.map(_square, range(6), progress=False) == [0, 1, 4, 9, 16, 25]
    with pytest.raises(RuntimeError, match="task three"):
        engine.map(_fail_on_three, range(5), progress=False)


def test_local_cluster_same_results_and_single_threaded_blas() -> None:
    with Engine("local", n_workers=2, blas_threads=1) as engine:
        assert engine.n_workers == 2
        assert engine.map(_square, range(20), progress=False) == [x * x for x in range(20)]
        envs = engine.map(_blas_env, range(4), progress=False)
        assert all(env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1" for env in envs)
        with pytest.raises(RuntimeError, match="task three"):
            engine.map(_fail_on_three, range(5), progress=False)
        # an engine wrapping an existing client (how a cluster-started Client is passed in)
        shared = Engine(engine.client)
        assert shared.kind == "client" and shared.map(_square, [7], progress=False) == [49]
        # imap pulls its items lazily, a few in flight: what a pass over many blocks relies on
        pulled = []

        def items():
            for x in range(30):
                pulled.append(x)
                yield x

        seen = {}
        for i, result in engine.imap(_square, items(), progress=False, in_flight=4):
            assert len(pulled) <= len(seen) + 4 + 1  # never more than in_flight ahead of the results
            seen[i] = result
        assert seen == {x: x * x for x in range(30)}
        with pytest.raises(RuntimeError, match="task three"):
            list(engine.imap(_fail_on_three, iter(range(8)), progress=False, in_flight=2))
        # finished tasks' inputs are let go: Dask's low-level logs (1000 entries by default) would
        # keep the messages that carried them (a long recording: hundreds of motion chunks)
        import gc

        import numpy as np

        def one_input(m: memoryview) -> bool:
            try:
                return m.nbytes == 2**18
            except ValueError:  # a released buffer
                return False

        def held() -> int:  # message buffers of one input's size this process holds
            gc.collect()
            return sum(1 for m in gc.get_objects() if type(m) is memoryview and one_input(m))

        def run(n: int) -> int:
            inputs = ((x, np.full(2**15, float(x))) for x in range(n))  # 256 KiB each
            assert sum(r for _, r in engine.imap(_first_sum, inputs, progress=False)) == sum(range(n)) * 2**15
            return held()

        first = run(120)
        assert run(240) - first < 120  # bounded (without the short logs: two more per task, 480)


def test_bad_scheduler_specs() -> None:
    with pytest.raises(ValueError, match="not understood"):
        Engine(42)
    with pytest.raises(ConnectionError, match="dask scheduler"):
        Engine("tcp://127.0.0.1:9", connect_timeout=2)


# -- batch systems through dask-jobqueue ---------------------------------------------------------
EXPORTS = [f"export {var}=1" for var in THREAD_ENV_VARS]


@pytest.fixture
def jobqueue():
    """dask-jobqueue (the ``cluster`` extra), with the SLURM/PBS settings of a test machine's
    ~/.config/dask/jobqueue.yaml kept out of the way."""
    import dask

    module = pytest.importorskip("dask_jobqueue")
    clean = {f"jobqueue.{name}.{key}": None for name in ("slurm", "pbs")
             for key in ("cores", "memory", "processes", "queue", "account")}
    clean.update({f"jobqueue.{name}.job-script-prologue": [] for name in ("slurm", "pbs")})
    with dask.config.set(clean):
        yield module


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch``/``scancel`` on PATH that only record what they are given: each submitted script
    is copied to ``jobs/job-PID.sh`` and gets job id PID; cancelled ids go to ``jobs/cancelled``."""
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$FAKE_JOBS_DIR/job-$$.sh"\necho "Submitted batch job $$"\n')
    (bin_dir / "scancel").write_text('#!/bin/sh\necho "$@" >> "$FAKE_JOBS_DIR/cancelled"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_JOBS_DIR", str(jobs))
    return jobs


@pytest.fixture
def running_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` that runs the job script at once, in the background in its own process group
    (job id = the group's id), and ``scancel`` that ends that group: jobs that really start
    Dask workers on this machine. Job output goes to ``jobs/job-ID.log``."""
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$FAKE_JOBS_DIR/next.sh"\n'
        'setsid sh "$FAKE_JOBS_DIR/next.sh" > "$FAKE_JOBS_DIR/job-$$.log" 2>&1 < /dev/null &\n'
        'echo "Submitted batch job $!"\n')
    (bin_dir / "scancel").write_text(
        '#!/bin/sh\necho "$@" >> "$FAKE_JOBS_DIR/cancelled"\nkill -TERM -- -"$1" 2>/dev/null\nexit 0\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_JOBS_DIR", str(jobs))
    return jobs


def _submitted(jobs: Path, n: int, timeout: float = 15.0) -> list[Path]:
    """The job scripts the fake sbatch received, once there are ``n`` (submission is asynchronous)."""
    deadline = time.monotonic() + timeout
    while len(scripts := sorted(jobs.glob("job-*.sh"))) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return scripts


def _children() -> set[int]:
    """Process ids of this process's descendants."""
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def _no_new_children(before: set[int], timeout: float = 5.0) -> bool:
    """Whether every descendant started since ``before`` was taken has ended (the fake
    sbatch/scancel; a local cluster of an earlier test may leave multiprocessing's helpers)."""
    deadline = time.monotonic() + timeout
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _children() - before


def test_slurm_job_script_from_config_and_cluster_kwargs(jobqueue) -> None:
    import dask

    with dask.config.set({"jobqueue.slurm.cores": 2, "jobqueue.slurm.memory": "4GB",
                          "jobqueue.slurm.queue": "config-queue", "jobqueue.slurm.walltime": "01:00:00"}):
        script = job_script("slurm")
        lines = script.splitlines()
        assert lines[0].startswith("#!") and "#SBATCH -p config-queue" in lines
        assert "#SBATCH --cpus-per-task=2" in lines and "#SBATCH --mem=4G" in lines
        assert "#SBATCH -t 01:00:00" in lines
        # one worker process per core, one BLAS thread each: the exports come before the worker starts
        worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
        assert "--nworkers 2" in worker and "--nthreads 1" in worker
        assert all(lines.index(e) < lines.index(worker) for e in EXPORTS)
        assert "tcp://SCHEDULER-HOST:PORT" in worker  # the temporary scheduler's address is not shown

        # cluster_kwargs win over the config; the user's prologue comes after the thread exports
        script = job_script("SLURM", n_workers=3, cluster_kwargs={
            "queue": "gpu", "account": "lab42", "walltime": "02:30:00", "memory": "8GB", "processes": 1,
            "job_extra_directives": ["--constraint=avx2"], "job-script-prologue": ["module load cuda"]})
        lines = script.splitlines()
        for line in ("#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH -t 02:30:00", "#SBATCH --mem=8G",
                     "#SBATCH --cpus-per-task=2", "#SBATCH --constraint=avx2"):
            assert line in lines, (line, script)
        assert lines.index(EXPORTS[-1]) < lines.index("module load cuda")
        assert "--nworkers" not in script  # one process of two threads per job, as asked

    # the same settings from a file given on the command line (--cluster-config)
    with cluster_config("slurm", {"cores": 4, "memory": "16GB", "queue": "from-file",
                                  "job_extra_directives": ["--exclusive"]}):
        script = job_script("slurm", cluster_kwargs={"walltime": "00:10:00"})
    assert "#SBATCH -p from-file" in script and "#SBATCH --exclusive" in script and "--nworkers 4" in script
    assert "#SBATCH -t 00:10:00" in script and all(e in script for e in EXPORTS)


def test_pbs_job_script(jobqueue) -> None:
    import dask

    with dask.config.set({"jobqueue.pbs.cores": 4, "jobqueue.pbs.memory": "16GB", "jobqueue.pbs.queue": "workq",
                          "jobqueue.pbs.job-script-prologue": ["source ~/venv/bin/activate"]}):
        script = job_script("pbs", cluster_kwargs={"walltime": "04:00:00", "account": "proj7"})
    lines = script.splitlines()
    assert "#PBS -q workq" in lines and "#PBS -A proj7" in lines and "#PBS -l walltime=04:00:00" in lines
    assert any(line.startswith("#PBS -l select=1:ncpus=4:mem=") for line in lines), script
    assert lines.index(EXPORTS[-1]) < lines.index("source ~/venv/bin/activate")  # ours first, then theirs
    assert "--nworkers 4" in script


def test_job_script_needs_the_job_size(jobqueue) -> None:
    with pytest.raises(ValueError, match=r"cores.*jobqueue\.slurm\.cores"):
        job_script("slurm", cluster_kwargs={"memory": "4GB"})
    with pytest.raises(ValueError, match=r"memory"):
        job_script("slurm", cluster_kwargs={"cores": 4})


def test_slurm_engine_submits_jobs_and_closes_cleanly(jobqueue, fake_slurm: Path) -> None:
    kwargs = {"cores": 2, "memory": "4GB", "queue": "short"}
    before = _children()
    handle = EngineHandle("slurm", 3, cluster_kwargs=kwargs)
    assert handle.kind == "jobqueue" and handle.planned_workers == 6  # 3 jobs × 2 worker processes
    engine = handle.get()
    try:
        assert engine.kind == "jobqueue" and engine.n_jobs == 3 and engine.n_workers == 6
        assert len(engine._cluster.worker_spec) == 3  # jobs requested
        scripts = _submitted(fake_slurm, 3)
        assert len(scripts) == 3
        for script in scripts:
            text = script.read_text()
            assert "#SBATCH -p short" in text and all(e in text for e in EXPORTS)
            assert engine._cluster.scheduler_address in text  # the real scheduler, for real jobs
    finally:
        handle.close()
    cancelled = (fake_slurm / "cancelled").read_text().split()
    assert sorted(cancelled) == sorted(s.stem.removeprefix("job-") for s in scripts)  # every job cancelled
    assert engine.client is None and _no_new_children(before)


def test_slurm_engine_waits_for_a_worker_when_asked(jobqueue, fake_slurm: Path) -> None:
    started, before = time.monotonic(), _children()
    with pytest.raises(ConnectionError, match=r"no SLURM job connected.*squeue -u \$USER.*jobqueue\.slurm"):
        Engine("slurm", cluster_kwargs={"cores": 1, "memory": "2GB"}, connect_timeout=1)
    assert time.monotonic() - started < 15
    assert len((fake_slurm / "cancelled").read_text().split()) == 1  # the pending job was cancelled
    assert _no_new_children(before)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def test_slurm_jobs_run_workers_with_one_blas_thread(jobqueue, running_slurm: Path, monkeypatch) -> None:
    """The job script as submitted starts workers that connect, run tasks and get the thread
    exports (the driver's own environment says otherwise). The tasks are functions of the
    standard library: a job's workers import what they run, and this test module is not on
    their path."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    kwargs = {"cores": 2, "memory": "2GB", "scheduler_options": {"dashboard_address": ":0"}}
    with Engine("slurm", cluster_kwargs=kwargs, connect_timeout=90) as engine:
        assert engine.n_workers == 2
        assert engine.map(abs, range(-4, 4), progress=False) == [abs(x) for x in range(-4, 4)]
        assert engine.map(os.getenv, THREAD_ENV_VARS, progress=False) == ["1"] * len(THREAD_ENV_VARS)
    job_ids = [int(i) for i in (running_slurm / "cancelled").read_text().split()]
    assert len(job_ids) == 1
    deadline = time.monotonic() + 20
    while any(map(_group_alive, job_ids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_group_alive, job_ids)), "a worker process outlived its cancelled job"


def test_engine_on_an_existing_jobqueue_cluster(jobqueue, fake_slurm: Path) -> None:
    cluster = jobqueue.SLURMCluster(cores=2, memory="2GB", processes=2,
                                    scheduler_options={"dashboard_address": ":0"})
    try:
        with Engine(cluster, n_workers=2) as engine:
            assert engine.kind == "jobqueue" and engine.n_workers == 4
            assert len(_submitted(fake_slurm, 2)) == 2
        assert cluster.status.name == "running"  # the caller's cluster: not closed by the engine
        assert EngineHandle(cluster).kind == "jobqueue"
    finally:
        cluster.close()


def test_batch_engine_errors(jobqueue, tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"not understood.*'slurm'.*'pbs'"):
        Engine("slurmm")
    with pytest.raises(ValueError, match=r"not understood"):
        job_script("torque")
    with pytest.raises(ValueError, match=r"cluster_kwargs apply to batch systems"):
        Engine("local", cluster_kwargs={"cores": 2})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(FileNotFoundError, match=r"'sbatch'.*login node"):
        Engine("slurm", cluster_kwargs={"cores": 2, "memory": "4GB"})


def test_missing_dask_jobqueue_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'pip install "somascope\[cluster\]"'):
        Engine("slurm", cluster_kwargs={"cores": 2, "memory": "4GB"})
    with pytest.raises(ImportError, match=r"somascope\[cluster\]"):
        job_script("pbs", cluster_kwargs={"cores": 2, "memory": "4GB"})
