"""The one place that knows about Dask.

An :class:`Engine` runs ``fn(item)`` over a list of small, picklable items (paths, slices,
parameters — never movie arrays) and returns the results in order:

- ``Engine("serial")``: a plain loop in this process; real tracebacks, for tests and debugging.
- ``Engine("local")`` (default): a Dask ``LocalCluster`` of worker *processes*, one BLAS/OpenMP
  thread each (set in the workers' environment before NumPy loads, so workers never
  oversubscribe the cores).
- ``Engine("tcp://host:8786")``: connect to a running scheduler (a cluster started with
  ``dask scheduler`` / ``dask worker``, or by dask-jobqueue on SLURM).
- ``Engine(client)``: use an existing ``distributed.Client``.

Use it as a context manager so the cluster is shut down when work ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


#: Tasks :meth:`Engine.imap` keeps submitted per worker (enough to keep every worker busy while
#: results travel back, few enough that the tasks' inputs stay small).
IN_FLIGHT_PER_WORKER = 3


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup-limited sched sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


class Engine:
    """Runs functions over items serially, on a local Dask cluster, or on a remote scheduler.

    Parameters
    ----------
    scheduler
        ``"serial"``, ``"local"``, a scheduler address (``"tcp://…"``, ``"tls://…"``,
        ``"host:port"``), or a ``distributed.Client``.
    n_workers
        Worker processes for ``"local"`` (default: available cores).
    threads_per_worker
        Dask threads per worker process (default 1).
    blas_threads
        BLAS/OpenMP/Numba threads inside each worker (default 1).
    memory_limit
        Per-worker memory limit for ``"local"`` (Dask syntax, e.g. ``"4GB"``; default: the
        machine's memory divided among workers).
    connect_timeout
        Seconds to wait for a remote scheduler.
    """

    def __init__(
        self,
        scheduler: Any = "local",
        *,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        blas_threads: int = 1,
        memory_limit: str | int | None = None,
        connect_timeout: float = 20.0,
    ) -> None:
        self.scheduler = scheduler
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._cluster: Any = None
        self._owns_client = False
        if isinstance(scheduler, str) and scheduler == "serial":
            self.kind = "serial"
            self.n_workers = 1
            return
        if isinstance(scheduler, str) and scheduler == "local":
            self.kind = "local"
            self.n_workers = int(n_workers or available_cores())
            self._start_local(threads_per_worker, blas_threads, memory_limit)
            return
        if isinstance(scheduler, str):
            self.kind = "remote"
            self._connect(scheduler)
            return
        if hasattr(scheduler, "submit") and hasattr(scheduler, "gather"):
            self.kind = "client"
            self._client = scheduler
            self.n_workers = max(1, len(scheduler.scheduler_info().get("workers", {})))
            return
        raise ValueError(
            f"scheduler={scheduler!r} is not understood; use 'serial', 'local', a scheduler "
            "address such as 'tcp://10.0.0.5:8786', or a distributed.Client."
        )

    def _start_local(self, threads_per_worker: int, blas_threads: int, memory_limit: Any) -> None:
        import logging

        from distributed import Client, LocalCluster

        # the cluster's own chatter (start/stop of workers, closed comms at shutdown) is not
        # the user's business; its warnings and errors still show
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                     "distributed.batched", "distributed.http.proxy", "distributed.worker"):
            logging.getLogger(name).setLevel(logging.ERROR)

        env = {var: str(blas_threads) for var in THREAD_ENV_VARS}
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

        try:
            self._client = Client(address, timeout=f"{self.connect_timeout}s")
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"could not reach a Dask scheduler at {address!r} ({exc}); start one with "
                "'dask scheduler' and workers with 'dask worker ADDRESS', or use scheduler='local'."
            ) from exc
        self._owns_client = True
        self.n_workers = max(1, len(self._client.scheduler_info().get("workers", {})))

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
    """An :class:`Engine` from ``None`` (serial), a scheduler spec, or an engine."""
    if engine is None:
        return Engine("serial")
    if isinstance(engine, Engine):
        return engine
    return Engine(engine)
