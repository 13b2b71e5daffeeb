"""Resources of a pipeline run: the engine, peak memory of the process tree, memory and disk
estimates.

- :class:`EngineHandle` starts the :class:`~somascope.parallel.Engine` only when a stage first
  needs it (a run whose stages are all reused never starts a Dask cluster).
- :class:`PeakMemory` samples, in a background thread every :data:`SAMPLE_SECONDS`, the summed
  resident memory (RSS) of this process and all its descendants (the local Dask workers and
  their nannies), and keeps the largest value seen.
- :func:`estimate_resources` predicts the memory and disk a run needs, before any heavy work
  (formulas in ``docs/pipeline.md``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Seconds between two samples of the process tree's memory.
SAMPLE_SECONDS = 0.2
#: Working copies of one motion chunk a worker holds (read, float32, corrected, FFT buffers).
MOTION_COPIES = 6
#: Working copies of one patch of the movie a CNMF worker holds (data, residual, products).
PATCH_COPIES = 4
#: Largest block of frames a streaming pass reads at once (summary images: 128 MiB).
STREAM_CHUNK_BYTES = 128 * 2**20
#: Copies of that block the driver holds (read, float32, centred/products).
STREAM_COPIES = 3
#: Block a worker reads in CNMF's blocked passes (``cnmf.blocked``: 64 MiB), and its copies.
BLOCK_BYTES = 64 * 2**20
BLOCK_COPIES = 2
#: Copies of a K × T float32 array the driver holds at once (merging: C, S, YrA and the merged
#: C, YrA and standardised traces; the traces stage: C, YrA in, raw, C, S, ΔF/F out).
TRACE_COPIES = 6
#: Copies of the K × T float32 traces in the results (C, S, YrA, F_dff, raw, spare).
RESULT_TRACE_COPIES = 6
#: Components left after the patches' screen and merging, as a fraction of the most the
#: initialisation can start from: 0.37 on the hard 512² benchmark movie (759 of 2,052), 0.32
#: on the easy one; the K × T arrays of the driver are this many components' (on long
#: recordings they are most of its memory).
KEPT_FRACTION = 0.5
#: Bytes per non-zero footprint pixel (value float32 + row index int64).
FOOTPRINT_NNZ_BYTES = 12
#: The driver process with somascope, NumPy, SciPy, Numba, Zarr, h5py and matplotlib loaded,
#: after a run's first stages (measured ≈ 200 MB after imports, 300–400 MB while a small run works).
BASE_PROCESS_BYTES = 300 * 10**6
#: A local Dask worker process and its nanny, idle (measured ≈ 200 MB together).
BASE_WORKER_BYTES = 200 * 10**6


def tree_rss(pid: int | None = None) -> int:
    """Summed resident memory (bytes) of process ``pid`` (default: this one) and every
    descendant process. Processes that end while being read are skipped."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class PeakMemory:
    """Context manager: the largest :func:`tree_rss` seen while the block runs (``.peak``).

    Samples every :data:`SAMPLE_SECONDS` in a daemon thread, plus once on entry and exit, so
    even a block shorter than one interval gets a value.
    """

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = float(interval)
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.peak = max(self.peak, tree_rss())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="somascope-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


class EngineHandle:
    """The run's :class:`~somascope.parallel.Engine`, started on first use.

    ``spec`` is an Engine (used as is, never closed here), ``None``/``"serial"``, ``"local"``, a
    batch system (``"slurm"``, ``"pbs"``, … of :data:`~somascope.parallel.BATCH_SYSTEMS`), a
    scheduler address, or a Dask cluster object; ``n_workers`` is the local cluster's worker
    processes, or a batch system's jobs; ``cluster_kwargs`` are a batch system's job settings
    (``cores``, ``memory``, ``queue``…; the rest from ~/.config/dask/jobqueue.yaml).
    """

    def __init__(self, spec: Any = None, n_workers: int | None = None,
                 cluster_kwargs: Mapping[str, Any] | None = None) -> None:
        self.spec = "serial" if spec is None else spec
        self.n_workers = n_workers
        self.cluster_kwargs = dict(cluster_kwargs) if cluster_kwargs is not None else None
        self._engine: Any = None
        self._owned = False

    @property
    def kind(self) -> str:
        """``"serial"``, ``"local"``, ``"jobqueue"`` (a batch system or a dask-jobqueue cluster),
        ``"cluster"`` (another Dask cluster object) or ``"remote"`` (``"client"`` for a given
        Engine's client)."""
        from ..parallel import is_batch_system

        if self._engine is not None:
            return str(self._engine.kind)
        spec = self.spec
        if hasattr(spec, "kind"):
            return str(spec.kind)
        if is_batch_system(spec):
            return "jobqueue"
        if hasattr(spec, "scheduler_address") and hasattr(spec, "scale"):
            return "jobqueue" if hasattr(spec, "job_cls") else "cluster"
        return spec if spec in ("serial", "local") else "remote"

    @property
    def planned_workers(self) -> int:
        """Worker processes the engine has or will have (1 for serial; a batch system: jobs
        (default 1) × worker processes per job; remote: unknown → 1)."""
        from ..parallel import is_batch_system, processes_per_job

        if self._engine is not None:
            return int(self._engine.n_workers)
        if hasattr(self.spec, "n_workers"):
            return int(self.spec.n_workers)
        if self.spec == "local":
            from ..parallel import available_cores

            return int(self.n_workers or available_cores())
        if is_batch_system(self.spec):
            return int(self.n_workers or 1) * processes_per_job(self.spec, self.cluster_kwargs)
        return 1

    def get(self) -> Any:
        """The engine (started now if needed)."""
        if self._engine is None:
            from ..parallel import Engine

            if isinstance(self.spec, Engine):
                self._engine = self.spec
            else:
                self._engine = Engine(self.spec, n_workers=self.n_workers, cluster_kwargs=self.cluster_kwargs)
                self._owned = True
        return self._engine

    def close(self) -> None:
        if self._engine is not None and self._owned:
            self._engine.close()
        self._engine = None
        self._owned = False

    def __repr__(self) -> str:
        return f"EngineHandle({self.spec!r}, started={self._engine is not None})"


# -- estimates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResourceEstimate:
    """Predicted needs of a run, in bytes: ``memory = driver + workers × per_worker`` (with
    ``workers = 0`` when the driver does all the work itself, serially)."""

    memory: int
    driver: int
    per_worker: int
    workers: int
    disk: int
    components: int
    parts: dict[str, int]


def _patch_frames(T: int, params: Any) -> int:
    """Frames of its window a CNMF patch task holds: the bins and one piece of noise frames
    (:mod:`somascope.cnmf.patches`), or every frame with ``patch.only_init=False``."""
    if not params.patch.only_init:
        return T
    from ..cnmf.patches import patch_tsub
    from ..deconvolution.noise import NOISE_SEGMENT_FRAMES

    return -(-T // patch_tsub(T, params.patch.p_tsub)) + min(T, NOISE_SEGMENT_FRAMES)


def estimate_resources(shape: tuple[int, ...], params: Any, *, workers: int, motion: bool,
                       store_needed: bool = True, whole_fov_fit: bool = True) -> ResourceEstimate:
    """Memory and disk a run on a movie of ``shape`` (``T×H×W`` or ``T×Z×H×W``) will need.

    With ``F = pixels × 4`` bytes per float32 frame, ``M = T × F`` the float32 movie and
    ``K`` the number of components the initialisation starts from
    (:func:`somascope.cnmf.fit.components_per_fov`):

    - *work of one worker*: the largest of a motion chunk (``chunk_frames × F × 6``), a CNMF
      patch (``T_p × (2·rf+1)² × 4 × 4`` with ``T_p`` the frames a patch holds: its time bins
      and a piece of noise frames, at most ~3,500 however long the movie) and a block of CNMF's blocked passes
      (``2 × min(M, 64 MiB)``);
    - *driver*: the process (300 MB) + streaming passes (summary, quality:
      ``3 × min(M, 128 MiB)``) + traces ``k × T × 4 × 6`` with ``k = KEPT_FRACTION × K`` the
      components that survive the patches (``K`` without patches) + footprints ``K × (2·gSiz)² × 12``,
      plus ``2 × M`` when the field of view is fitted in one piece (``whole_fov_fit``: no
      ``patch.rf``, or a single patch);
    - memory: serial ``driver + work``; with ``W`` workers ``driver + W × (200 MB + work)``;
    - disk: the float32 Store ``M`` (when it must be written) + results ``k × T × 4 × 6``
      + footprints.

    The constants were calibrated against the peaks the pipeline records (``docs/pipeline.md``).
    """
    from ..cnmf.fit import components_per_fov

    T = int(shape[0])
    dims = tuple(int(d) for d in shape[1:])
    frame = 4 * math.prod(dims)
    movie = T * frame
    K = components_per_fov(params, dims) if params.init.K is not None else 100
    kept = math.ceil(KEPT_FRACTION * K) if params.patch.rf is not None else K
    box = math.prod(min(2 * int(s), d) for s, d in zip(params.init.gSiz, dims))
    footprints = K * box * FOOTPRINT_NNZ_BYTES
    traces = kept * T * 4 * TRACE_COPIES
    motion_work = min(int(params.motion.chunk_frames), T) * frame * MOTION_COPIES if motion else 0
    patch_work = 0
    if params.patch.rf is not None:
        patch_work = (_patch_frames(T, params) * math.prod(min(2 * int(r) + 1, d) for r, d in zip(params.patch.rf, dims))
                      * 4 * PATCH_COPIES)
    block_work = BLOCK_COPIES * min(movie, BLOCK_BYTES)
    work = max(motion_work, patch_work, block_work)
    whole = 2 * movie if (whole_fov_fit or params.patch.rf is None) else 0
    streaming = STREAM_COPIES * min(movie, STREAM_CHUNK_BYTES)
    driver = BASE_PROCESS_BYTES + streaming + traces + footprints + whole
    W = max(1, int(workers))
    if W == 1:
        memory, per_worker, n = driver + work, work, 0
    else:
        per_worker = BASE_WORKER_BYTES + work
        memory, n = driver + W * per_worker, W
    results = kept * T * 4 * RESULT_TRACE_COPIES + footprints
    disk = (movie if store_needed else 0) + results
    parts = {"movie_float32": movie, "streaming": streaming, "traces": traces, "footprints": footprints,
             "whole_fov": whole, "motion_work": motion_work, "patch_work": patch_work, "block_work": block_work,
             "results": results}
    return ResourceEstimate(memory=int(memory), driver=int(driver), per_worker=int(per_worker), workers=n,
                            disk=int(disk), components=int(K), parts=parts)


def human_bytes(n: float | None) -> str:
    """``1.23 GB`` / ``45.6 MB`` style (powers of 1000, as disk tools print them)."""
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
