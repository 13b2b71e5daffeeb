"""The one place that knows about Dask.

An :class:`Engine` runs ``fn(item)`` over a list of small, picklable items (paths, slices,
parameters — never movie arrays) and returns the results in order:

- ``Engine("serial")``: a plain loop in this process; real tracebacks, for tests and debugging.
- ``Engine("local")`` (default): a Dask ``LocalCluster`` of worker *processes*, one BLAS/OpenMP
  thread each (set in the workers' environment before NumPy loads, so workers never
  oversubscribe the cores).
- ``Engine("slurm", n_workers=4, cluster_kwargs={...})`` (also ``"pbs"``, ``"sge"``, ``"lsf"``,
  ``"htcondor"``, ``"moab"``, ``"oar"``): submit that many batch jobs through dask-jobqueue
  (the ``cluster`` extra); each job runs worker processes with one BLAS thread each.
  :func:`job_script` shows the script such a job runs, without submitting anything.
- ``Engine("tcp://host:8786")``: connect to a running scheduler (a cluster started with
  ``dask scheduler`` / ``dask worker``, e.g. in one's own job script).
- ``Engine(client)``: use an existing ``distributed.Client``; ``Engine(cluster)``: an existing
  Dask cluster object (e.g. a ``dask_jobqueue.SLURMCluster``; it is not closed here).

Use it as a context manager so the cluster is shut down when work ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


#: Batch systems dask-jobqueue drives: the name given to :class:`Engine` → its cluster class.
BATCH_SYSTEMS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
    "oar": "OARCluster",
}

#: The command that lists one's own jobs on each batch system (named in errors).
QUEUE_COMMANDS = {
    "slurm": "squeue -u $USER",
    "pbs": "qstat -u $USER",
    "sge": "qstat -u $USER",
    "lsf": "bjobs",
    "htcondor": "condor_q",
    "moab": "showq -u $USER",
    "oar": "oarstat -u $USER",
}

#: Seconds :class:`Engine` waits for a remote scheduler when ``connect_timeout`` is not given.
DEFAULT_CONNECT_TIMEOUT = 20.0

#: What :func:`job_script` writes in place of the scheduler address (a real run's own address).
SCHEDULER_PLACEHOLDER = "tcp://SCHEDULER-HOST:PORT"

#: Tasks :meth:`Engine.imap` keeps submitted per worker (enough to keep every worker busy while
#: results travel back, few enough that the tasks' inputs stay small).
IN_FLIGHT_PER_WORKER = 3

#: Entries of Dask's low-level logs (``distributed.admin.low-level-log-length``, Dask's default
#: 1000) in the clients and clusters an Engine starts. Those logs keep the messages that carried
#: each task's inputs, two per task, so with the default a long run holds hundreds of finished
#: tasks' inputs in this process (client and local scheduler): on 256² × 100,000 frames, +0.2 GB
#: of motion chunks' templates by the end of motion correction. They only serve to debug Dask.
LOW_LEVEL_LOG_LENGTH = 16


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup-limited sched sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def _quiet_dask_logs() -> None:
    """Silence the cluster's own chatter (start/stop of workers, closed comms at shutdown): not
    the user's business; its warnings and errors still show."""
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                 "distributed.batched", "distributed.http.proxy", "distributed.worker",
                 "distributed.deploy.spec"):
        logging.getLogger(name).setLevel(logging.ERROR)


# -- batch systems (dask-jobqueue) ------------------------------------------------------------
def is_batch_system(spec: Any) -> bool:
    """Whether ``spec`` names a batch system of :data:`BATCH_SYSTEMS` (any case)."""
    return isinstance(spec, str) and spec.strip().lower() in BATCH_SYSTEMS


def _looks_like_address(spec: str) -> bool:
    """A scheduler address has a port or a protocol (``tcp://…``, ``host:8786``); a bare word
    is meant as an engine name."""
    return ":" in spec or "/" in spec


def _unknown_spec(spec: Any) -> ValueError:
    names = ", ".join(repr(n) for n in BATCH_SYSTEMS)
    return ValueError(
        f"scheduler={spec!r} is not understood; use 'serial', 'local', a batch system ({names}), "
        "a scheduler address such as 'tcp://10.0.0.5:8786', a distributed.Client or a Dask cluster."
    )


def _batch_name(spec: str) -> str:
    """``spec`` as a key of :data:`BATCH_SYSTEMS`; a ValueError naming the choices if it is none."""
    name = spec.strip().lower()
    if name not in BATCH_SYSTEMS:
        raise _unknown_spec(spec)
    return name


def jobqueue_class(name: str) -> type:
    """The dask-jobqueue cluster class of batch system ``name`` (``"slurm"`` → ``SLURMCluster``).

    Raises an ImportError naming the ``cluster`` extra when dask-jobqueue is not installed.
    """
    import importlib

    name = _batch_name(name)
    try:
        module = importlib.import_module("dask_jobqueue")
    except ImportError as exc:
        raise ImportError(
            f"running on a {name.upper()} cluster needs the dask-jobqueue package ({exc}); "
            'pip install "somascope[cluster]" (or pip install dask-jobqueue).'
        ) from exc
    return getattr(module, BATCH_SYSTEMS[name])


def _config(name: str, key: str) -> Any:
    """Dask's config value ``jobqueue.<name>.<key>`` (from ~/.config/dask/jobqueue.yaml, the
    environment or ``dask.config.set``), ``None`` when unset."""
    import dask.config

    return dask.config.get(f"jobqueue.{name}.{key.replace('_', '-')}", None)


def thread_exports(blas_threads: int = 1) -> list[str]:
    """``export VAR=N`` lines for every variable of :data:`THREAD_ENV_VARS`: the start of each
    job script, so that the workers' BLAS/OpenMP/Numba pools have ``blas_threads`` threads."""
    return [f"export {var}={int(blas_threads)}" for var in THREAD_ENV_VARS]


def jobqueue_kwargs(name: str, cluster_kwargs: Mapping[str, Any] | None = None, *,
                    threads_per_worker: int = 1, blas_threads: int = 1) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster class of batch system ``name``.

    ``cluster_kwargs`` (keys with ``_`` or ``-``) are kept as given; what they leave out comes
    from Dask's config ``jobqueue.<name>.*`` as dask-jobqueue reads it, except:

    - ``job_script_prologue``: :func:`thread_exports` first, then the user's own lines
      (``cluster_kwargs``, else the config's ``job-script-prologue`` or deprecated ``env-extra``);
    - ``processes`` (worker processes per job), when neither given nor configured:
      ``cores // threads_per_worker``, as a local cluster has (dask-jobqueue would pick ≈ √cores).

    Raises a ValueError naming the fix when the job's ``cores`` or ``memory`` is not set anywhere.
    """
    name = _batch_name(name)
    kwargs = {str(k).replace("-", "_"): v for k, v in (cluster_kwargs or {}).items()}
    for key, example in (("cores", "8"), ("memory", "'32GB'")):
        if kwargs.get(key) is None and _config(name, key) is None:
            raise ValueError(
                f"a {name.upper()} job needs its {key}: give cluster_kwargs={{'{key}': {example}, …}} "
                f"(CLI: --cluster-config FILE) or set jobqueue.{name}.{key} in ~/.config/dask/jobqueue.yaml."
            )
    user_lines = kwargs.pop("job_script_prologue", None)
    env_extra = kwargs.pop("env_extra", None)
    if user_lines is None:
        user_lines = env_extra if env_extra is not None else (
            _config(name, "job-script-prologue") or _config(name, "env-extra"))
    if isinstance(user_lines, str):
        user_lines = [user_lines]
    kwargs["job_script_prologue"] = thread_exports(blas_threads) + list(user_lines or [])
    if kwargs.get("processes") is None:
        configured = _config(name, "processes")
        cores = kwargs.get("cores") if kwargs.get("cores") is not None else _config(name, "cores")
        kwargs["processes"] = int(configured) if configured is not None else max(
            1, int(cores) // max(1, int(threads_per_worker)))
    return kwargs


def processes_per_job(name: str, cluster_kwargs: Mapping[str, Any] | None = None, *,
                      threads_per_worker: int = 1) -> int:
    """Worker processes one job of batch system ``name`` runs (see :func:`jobqueue_kwargs`);
    1 when the job's cores are not known yet."""
    try:
        return int(jobqueue_kwargs(name, cluster_kwargs, threads_per_worker=threads_per_worker)["processes"])
    except ValueError:
        return 1


def _check_submit_command(name: str, cls: type) -> None:
    """A clear error when the batch system's submit command (``sbatch``, ``qsub``…) is not on
    PATH: the jobs could not be submitted from this machine."""
    command = getattr(getattr(cls, "job_cls", None), "submit_command", None)
    if not isinstance(command, str) or not command.strip():
        return
    program = shlex.split(command)[0]
    if shutil.which(program) is None:
        raise FileNotFoundError(
            f"Engine({name!r}) submits its workers with {program!r}, which is not on PATH here. Fix: run "
            f"somascope on a {name.upper()} login node (where {program!r} works), or use 'local' or a "
            "scheduler address instead."
        )


@contextlib.contextmanager
def _temporary_cluster(cls: type, name: str, kwargs: dict[str, Any]) -> Iterator[Any]:
    """A dask-jobqueue cluster (class ``cls`` of batch system ``name``) for inspection: its
    scheduler on localhost, no jobs submitted, closed on exit."""
    kwargs = dict(kwargs)
    options = kwargs.pop("scheduler_options", None)
    if options is None:
        options = _config(name, "scheduler-options") or {}
    options = {k: v for k, v in dict(options).items() if k not in ("interface", "host", "port")}
    kwargs["scheduler_options"] = {**options, "host": "127.0.0.1", "dashboard_address": ":0"}
    _quiet_dask_logs()
    cluster = cls(**kwargs)
    try:
        yield cluster
    finally:
        cluster.close()


def job_script(kind: str, *, n_workers: int | None = None, cluster_kwargs: Mapping[str, Any] | None = None,
               threads_per_worker: int = 1, blas_threads: int = 1) -> str:
    """The script each batch job of ``Engine(kind, n_workers=…, cluster_kwargs=…)`` would run.

    Built by dask-jobqueue itself (``cluster.job_script()``) from the same keyword arguments as
    the engine's; nothing is submitted (the cluster object made for it is closed before
    returning). The scheduler address in the worker command is :data:`SCHEDULER_PLACEHOLDER`:
    a real run puts its own scheduler's there. ``n_workers`` (jobs) is only checked: every job
    runs the same script.
    """
    name = _batch_name(kind)
    if n_workers is not None and int(n_workers) < 1:
        raise ValueError(f"n_workers={n_workers!r}: a batch engine needs at least one job.")
    cls = jobqueue_class(name)
    kwargs = jobqueue_kwargs(name, cluster_kwargs, threads_per_worker=threads_per_worker,
                             blas_threads=blas_threads)
    with _temporary_cluster(cls, name, kwargs) as cluster:
        script = str(cluster.job_script())
        address = str(cluster.scheduler_address)
    return script.replace(address, SCHEDULER_PLACEHOLDER)


@contextlib.contextmanager
def cluster_config(kind: str, settings: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, Dask's config ``jobqueue.<kind>.<key>`` is ``settings[key]`` (keys with
    ``_`` or ``-``): the job settings of a file given on the command line, as if they were in
    ~/.config/dask/jobqueue.yaml."""
    import dask.config

    name = _batch_name(kind)
    values = {f"jobqueue.{name}.{str(k).replace('_', '-')}": v for k, v in (settings or {}).items()}
    with dask.config.set(values):
        yield


@contextlib.contextmanager
def _short_dask_logs() -> Iterator[None]:
    """Within the block, Dask schedulers and workers are made with :data:`LOW_LEVEL_LOG_LENGTH`-entry
    low-level logs."""
    import dask.config

    with dask.config.set({"distributed.admin.low-level-log-length": LOW_LEVEL_LOG_LENGTH}):
        yield


def _is_cluster(obj: Any) -> bool:
    """A Dask cluster object (``LocalCluster``, ``SLURMCluster``…): has a scheduler address and scales."""
    return hasattr(obj, "scheduler_address") and callable(getattr(obj, "scale", None))


def _is_jobqueue_cluster(obj: Any) -> bool:
    return hasattr(obj, "job_cls") and hasattr(obj, "job_script")


class Engine:
    """Runs functions over items serially, on a local Dask cluster, on batch jobs, or on a
    remote scheduler.

    Parameters
    ----------
    scheduler
        ``"serial"``, ``"local"``, a batch system of :data:`BATCH_SYSTEMS` (``"slurm"``,
        ``"pbs"``, …), a scheduler address (``"tcp://…"``, ``"tls://…"``, ``"host:port"``), a
        ``distributed.Client``, or a Dask cluster object (e.g. a ``dask_jobqueue.SLURMCluster``;
        used as is and not closed by :meth:`close`).
    n_workers
        ``"local"``: worker processes (default: available cores). A batch system: jobs to submit
        (default 1; each runs ``processes`` workers, see :func:`jobqueue_kwargs`). A cluster
        object: jobs (dask-jobqueue) or workers to scale it to (default: as it is).
    threads_per_worker
        Dask threads per worker process (default 1).
    blas_threads
        BLAS/OpenMP/Numba threads inside each worker (default 1).
    memory_limit
        Per-worker memory limit for ``"local"`` (Dask syntax, e.g. ``"4GB"``; default: the
        machine's memory divided among workers). Batch jobs take ``memory`` in ``cluster_kwargs``.
    connect_timeout
        Seconds to wait for a remote scheduler (default :data:`DEFAULT_CONNECT_TIMEOUT`). For a
        batch system or cluster object: seconds to wait for the first worker, with an error
        naming the fix when none comes; by default no wait (a job may sit in the queue for
        hours; tasks wait on the scheduler until workers arrive).
    cluster_kwargs
        Batch systems only: arguments of the dask-jobqueue cluster class (``cores``,
        ``memory``, ``queue``, ``account``, ``walltime``, ``job_extra_directives``, …); what is
        not given comes from Dask's config ``jobqueue.<name>.*`` (~/.config/dask/jobqueue.yaml).
    """

    def __init__(
        self,
        scheduler: Any = "local",
        *,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        blas_threads: int = 1,
        memory_limit: str | int | None = None,
        connect_timeout: float | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._cluster: Any = None
        self._owns_client = False
        #: the batch system's name (``"slurm"``…) and the jobs requested, for batch engines
        self.batch_system: str | None = None
        self.n_jobs = 0
        if cluster_kwargs is not None and not is_batch_system(scheduler):
            raise ValueError(
                f"cluster_kwargs apply to batch systems ({', '.join(BATCH_SYSTEMS)}), not to "
                f"scheduler={scheduler!r}. Fix: drop cluster_kwargs or name a batch system."
            )
        if isinstance(scheduler, str) and scheduler == "serial":
            self.kind = "serial"
            self.n_workers = 1
            return
        if isinstance(scheduler, str) and scheduler == "local":
            self.kind = "local"
            self.n_workers = int(n_workers or available_cores())
            self._start_local(threads_per_worker, blas_threads, memory_limit)
            return
        if is_batch_system(scheduler):
            self.kind = "jobqueue"
            self._start_jobqueue(_batch_name(scheduler), n_workers, cluster_kwargs, threads_per_worker,
                                 blas_threads)
            return
        if isinstance(scheduler, str):
            if not _looks_like_address(scheduler.strip()):
                raise _unknown_spec(scheduler)
            self.kind = "remote"
            self._connect(scheduler)
            return
        if _is_cluster(scheduler):
            self.kind = "jobqueue" if _is_jobqueue_cluster(scheduler) else "cluster"
            self._use_cluster(scheduler, n_workers)
            return
        if hasattr(scheduler, "submit") and hasattr(scheduler, "gather"):
            self.kind = "client"
            self._client = scheduler
            self.n_workers = max(1, len(scheduler.scheduler_info().get("workers", {})))
            return
        raise _unknown_spec(scheduler)

    def _start_local(self, threads_per_worker: int, blas_threads: int, memory_limit: Any) -> None:
        from distributed import Client, LocalCluster

        _quiet_dask_logs()
        env = {var: str(blas_threads) for var in THREAD_ENV_VARS}
        with _short_dask_logs():
            self._cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                memory_limit=memory_limit if memory_limit is not None else "auto",
                dashboard_address=":0",  # a free port: two runs on one machine never collide
                silence_logs=logging.ERROR,
                env=env,
            )
            self._client = Client(self._cluster)
        self._owns_client = True

    def _connect(self, address: str) -> None:
        from distributed import Client

        timeout = DEFAULT_CONNECT_TIMEOUT if self.connect_timeout is None else self.connect_timeout
        try:
            with _short_dask_logs():  # this process's side (a running scheduler keeps its own config)
                self._client = Client(address, timeout=f"{timeout}s")
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"could not reach a Dask scheduler at {address!r} ({exc}); start one with "
                "'dask scheduler' and workers with 'dask worker ADDRESS', or use scheduler='local'."
            ) from exc
        self._owns_client = True
        self.n_workers = max(1, len(self._client.scheduler_info().get("workers", {})))

    def _start_jobqueue(self, name: str, n_jobs: int | None, cluster_kwargs: Mapping[str, Any] | None,
                        threads_per_worker: int, blas_threads: int) -> None:
        """Build the dask-jobqueue cluster of ``name``, submit ``n_jobs`` jobs (default 1) and
        connect a client; ``n_workers`` = jobs × worker processes per job."""
        from distributed import Client

        jobs = 1 if n_jobs is None else int(n_jobs)
        if jobs < 1:
            raise ValueError(f"n_workers={n_jobs!r}: a batch engine needs at least one job.")
        cls = jobqueue_class(name)  # first: a missing dask-jobqueue is the first thing to fix
        kwargs = jobqueue_kwargs(name, cluster_kwargs, threads_per_worker=threads_per_worker,
                                 blas_threads=blas_threads)
        _check_submit_command(name, cls)
        _quiet_dask_logs()
        self.batch_system = name
        self.n_jobs = jobs
        self.n_workers = jobs * int(kwargs["processes"])
        with _short_dask_logs():
            self._cluster = cls(**kwargs)
        try:
            self._cluster.scale(jobs=jobs)
            with _short_dask_logs():
                self._client = Client(self._cluster)
            self._owns_client = True
            log.info("submitted %d %s job(s) of %d worker process(es) each; tasks start when the jobs run "
                     "(see %s)", jobs, name.upper(), kwargs["processes"], QUEUE_COMMANDS[name])
            self._wait_for_first_worker()
        except BaseException:
            self.close()
            raise

    def _use_cluster(self, cluster: Any, n_workers: int | None) -> None:
        """Connect to an existing cluster object (scaled to ``n_workers`` jobs/workers if given)."""
        from distributed import Client

        jobqueue = self.kind == "jobqueue"
        self.batch_system = getattr(getattr(cluster, "job_cls", None), "config_name", None) if jobqueue else None
        if n_workers is not None and jobqueue:
            cluster.scale(jobs=int(n_workers))
        elif n_workers is not None:
            cluster.scale(int(n_workers))
        # the worker processes of one job, as dask-jobqueue's own scale() counts them
        per_job = int(getattr(getattr(cluster, "_dummy_job", None), "worker_processes", 1)) if jobqueue else 1
        self.n_jobs = len(getattr(cluster, "worker_spec", {}) or {})
        self._client = Client(cluster)
        self._owns_client = True
        try:
            running = len(self._client.scheduler_info().get("workers", {}))
            self.n_workers = max(1, self.n_jobs * per_job, running)
            self._wait_for_first_worker()
        except BaseException:
            self.close()  # our client only: the cluster is the caller's
            raise

    def _wait_for_first_worker(self) -> None:
        """With ``connect_timeout`` set, wait that long for one worker; a ConnectionError naming
        the batch system's queue command and the settings to check when none arrives."""
        if self.connect_timeout is None:
            return
        try:
            self._client.wait_for_workers(1, timeout=float(self.connect_timeout))
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise ConnectionError(self._no_worker_message()) from exc

    def _no_worker_message(self) -> str:
        """Why no worker came, and what to check, for :meth:`_wait_for_first_worker`."""
        name = self.batch_system
        where = f"{name.upper()} job" if name else "cluster worker"
        message = (f"no {where} connected to the Dask scheduler within {self.connect_timeout:g} s "
                   f"({self.n_jobs} job(s) requested). ")
        cluster = self._cluster if self._cluster is not None else self.scheduler
        jobs = getattr(cluster, "workers", {}) or {}
        if name and jobs and all(getattr(job, "job_id", None) is None for job in jobs.values()):
            message += "The jobs were not submitted (see the errors logged above). "
        if name:
            queue = QUEUE_COMMANDS.get(name, "the batch system's queue command")
            message += (f"Fix: check the jobs with '{queue}' (pending or rejected?), the queue/"
                        f"partition, account, cores, memory and walltime in cluster_kwargs or "
                        f"~/.config/dask/jobqueue.yaml (jobqueue.{name}), and the job logs (log_directory); "
                        "or give a longer connect_timeout.")
        else:
            message += "Fix: check that the cluster's workers start, or give a longer connect_timeout."
        return message

    # -- work ------------------------------------------------------------------------
    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        desc: str | None = None,
        progress: bool = True,
        unit: str = "task",
    ) -> list[Any]:
        """``[fn(item) for item in items]``, run by the engine, results in input order.

        A failing task raises its own exception here (the remaining tasks are cancelled).
        """
        items = list(items)
        results: list[Any] = [None] * len(items)
        for i, result in self.imap(fn, items, desc=desc, progress=progress, unit=unit, total=len(items)):
            results[i] = result
        return results

    def imap(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        desc: str | None = None,
        progress: bool = True,
        unit: str = "task",
        total: int | None = None,
        in_flight: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """``(i, fn(item_i))`` as the tasks finish (in input order when serial).

        ``items`` is consumed lazily and at most ``in_flight`` tasks (default
        :data:`IN_FLIGHT_PER_WORKER` × workers) are submitted at a time, so that items that
        carry arrays (e.g. the traces a block of a pass needs) are built only shortly before
        they run, and the caller can fold each result in as it comes: the memory of a pass
        stays that of a few tasks however many there are. A failing task raises its own
        exception here (the tasks in flight are cancelled).
        """
        bar = None
        if progress and total != 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc or getattr(fn, "__name__", "tasks"), unit=unit)
        try:
            if self.kind == "serial":
                for i, item in enumerate(items):
                    result = fn(item)
                    if bar is not None:
                        bar.update(1)
                    yield i, result
                return
            import warnings

            from distributed import as_completed

            limit = max(1, int(in_flight or IN_FLIGHT_PER_WORKER * self.n_workers))
            source = enumerate(items)
            index: dict[str, int] = {}
            done = as_completed([])

            def submit(n: int) -> None:
                for _ in range(n):
                    try:
                        i, item = next(source)
                    except StopIteration:
                        return
                    with warnings.catch_warnings():
                        # a block's traces add up to MB; by design, not the "large array in the
                        # graph" this warning is about
                        warnings.filterwarnings("ignore", message="Sending large graph")
                        future = self._client.submit(fn, item, pure=False)
                    index[future.key] = i
                    done.add(future)

            submit(limit)
            try:
                for future in done:
                    i = index.pop(future.key)
                    result = future.result()
                    del future
                    submit(1)
                    if bar is not None:
                        bar.update(1)
                    yield i, result
            except BaseException:
                self._client.cancel(list(done.futures))
                raise
        finally:
            if bar is not None:
                bar.close()

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (``None`` in serial mode)."""
        return self._client

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({self.kind!r}, n_workers={self.n_workers})"


def as_engine(engine: Engine | str | None) -> Engine:
    """An :class:`Engine` from ``None`` (serial), a scheduler spec (batch systems with their
    defaults from Dask's config), or an engine."""
    if engine is None:
        return Engine("serial")
    if isinstance(engine, Engine):
        return engine
    return Engine(engine)
