"""Running a batch's items: leases, heartbeats, one shared engine, the pipeline per item.

The driver (the process that calls :meth:`Batch.run <somascope.batch.Batch.run>`) takes an
item by setting it ``running`` with a *lease* — ``host:pid:process start time:token`` — in one
compare-and-set transaction (two drivers never take the same item), then refreshes the item's
``heartbeat`` every :data:`HEARTBEAT_S` seconds from a thread while the pipeline runs. Whoever
opens the batch later turns a ``running`` item into ``interrupted`` when its lease is dead: on
this host, its process is gone (or is another process with the same pid); elsewhere, no
heartbeat for :data:`STALE_S` seconds. ``run`` picks interrupted items up again and the
pipeline resumes from their last finished stage; results are written atomically, so an item
killed mid-write has no results file that looks complete.

The items run one after the other in this process; each one's stages spread over the engine's
workers (a local Dask cluster, a scheduler address or a SLURM/PBS cluster). A worker that dies
has its tasks rerun elsewhere by Dask; an item that still fails because workers died is run once
more, then marked failed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import sys
import threading
import time
import traceback
import uuid as _uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import db
from .db import BatchError

log = logging.getLogger("somascope.batch")

#: Seconds between a running item's heartbeats.
HEARTBEAT_S = 5.0
#: Seconds without a heartbeat after which a lease held on another host counts as dead.
STALE_S = 120.0
#: Runs of an item whose failure was a dead worker (then it is marked failed).
WORKER_LOSS_RETRIES = 1

_STAGE_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\w+)")


# -- leases ------------------------------------------------------------------------------------
def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def new_lease() -> str:
    """This process's lease token: ``host:pid:start time:random``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or 0.0:.2f}:{_uuid.uuid4().hex[:8]}"


def lease_alive(lease: str | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether the process holding ``lease`` may still be running the item."""
    if not lease:
        return False
    try:
        host, pid_text, started_text, _ = lease.rsplit(":", 3)
        pid, started = int(pid_text), float(started_text)
    except ValueError:
        return False
    if host == socket.gethostname():
        actual = _process_start(pid)
        import psutil

        if actual is None:
            return False
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.Error:
            return False
        return abs(actual - started) < 1.0
    now = time.time() if now is None else now
    return heartbeat is not None and now - heartbeat < STALE_S


def mark_stale(con: sqlite3.Connection) -> list[str]:
    """Set ``interrupted`` on running items whose lease is dead; returns their uuids."""
    marked = []
    for row in db.select_items(con, "status = 'running'"):
        if lease_alive(row.get("lease"), row.get("heartbeat")):
            continue
        where = f" during stage {row['stage']}" if row.get("stage") else ""
        if db.update_item(con, row["uuid"], {"status": "interrupted", "lease": None, "stage": None,
                                              "error": f"the process running it stopped{where} (killed or crashed); "
                                                       f"'somascope batch run' resumes it"},
                          when_status=("running",), when_lease=row.get("lease")):
            marked.append(row["uuid"])
            log.warning("item %s (%s) was left running by a process that is gone: marked interrupted",
                        row["name"], row["uuid"])
    return marked


class _Heartbeat:
    """A thread refreshing an item's heartbeat (and current stage) while it runs."""

    def __init__(self, db_path: Path, uuid: str, lease: str) -> None:
        self.db_path, self.uuid, self.lease = db_path, uuid, lease
        self.stage: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{uuid[:8]}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        con = db.connect(self.db_path)
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    db.update_item(con, self.uuid, {"heartbeat": time.time(), "stage": self.stage},
                                   when_lease=self.lease)
                except sqlite3.Error as exc:  # a busy database must not kill the run
                    log.debug("heartbeat of %s skipped: %s", self.uuid, exc)
        finally:
            con.close()


class _StageWatcher(logging.Handler):
    """Catches the pipeline's ``[i/n] stage …`` lines to show the current stage."""

    def __init__(self, beat: _Heartbeat) -> None:
        super().__init__(logging.INFO)
        self.beat = beat

    def emit(self, record: logging.LogRecord) -> None:
        m = _STAGE_LINE.match(record.getMessage())
        if m:
            self.beat.stage = f"{m.group(3)} ({m.group(1)}/{m.group(2)})"


# -- one item ---------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import platform

    from .. import __version__

    out = {"somascope": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "dask", "distributed", "h5py", "zarr"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        out[name] = str(getattr(mod, "__version__", "?"))
    return out


def _border_layer(batch: Any, row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``patch.border_pix`` from the motion-correction item an item reads (unless it sets it)."""
    parent = row["input"].get("item")
    if not parent:
        return []
    from ..params import Params

    given = set().union(*(Params.given_keys(layer) for layer in batch.effective_layers(row)))
    if "patch.border_pix" in given:
        return []
    motion = batch.load(parent).motion
    border = 0 if motion is None else int(max(motion.border_pix, default=0))
    return [{"patch.border_pix": border}] if border else []


def _motion_layer(batch: Any, row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The motion parameters an item runs with, pinned: those its motion-correction item ran
    with, else those of its own parameters without its grid variant (plus any ``motion.*`` key
    the variant sets). Motion parameters derive from the neuron size, so a variant of ``gSig``
    would otherwise motion-correct again; it is meant to vary CNMF only."""
    from ..params import Params

    parent = row["input"].get("item")
    if parent:
        p = batch.load(parent).params
    else:
        from ..io import open_movie
        from ..pipeline.preflight import build_params

        own_motion = {k: v for k, v in Params.given_values(row["variant"] or {}).items() if k.startswith("motion.")}
        with open_movie(batch.movie_path(row)) as movie:
            p = build_params(None, movie, overrides=[*batch.effective_layers(row, variant=False), own_motion])[0]
    return [{f"motion.{k}": v for k, v in p.to_dict()["motion"].items()}]


def _pipeline_kwargs(batch: Any, row: Mapping[str, Any]) -> dict[str, Any]:
    layers = batch.effective_layers(row) + _motion_layer(batch, row) + _border_layer(batch, row)
    return {"movie": batch.movie_path(row), "out": batch.item_dir(row["uuid"]), "overrides": layers,
            "stage_cache": batch.stage_cache, "movie_root": batch.raw_data_root,
            "until": "summary" if row["algorithm"] == "mcorr" else None}


def _relative(batch: Any, path: Path) -> str:
    return Path(path).relative_to(batch.path).as_posix()


def _worker_loss(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"KilledWorker", "CommClosedError"})


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _run_one(batch: Any, row: dict[str, Any], handle: Any, progress: bool) -> bool:
    """Run one claimed item to done / failed; returns whether it is done. Interrupts propagate
    (the item is marked interrupted first)."""
    from ..io.errors import one_line
    from ..pipeline import run as pipeline_run

    lease = row["lease"]
    con = batch._con
    t0 = time.perf_counter()
    attempts = 0
    with _Heartbeat(batch.path / db.DB_FILE, row["uuid"], lease) as beat:
        watcher = _StageWatcher(beat)
        logger = logging.getLogger("somascope.pipeline")
        logger.addHandler(watcher)
        old_level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            while True:
                attempts += 1
                try:
                    result = pipeline_run(**_pipeline_kwargs(batch, row), engine=handle, progress=progress)
                    break
                except Exception as exc:
                    if _worker_loss(exc) and attempts <= WORKER_LOSS_RETRIES:
                        log.warning("item %s: a worker died (%s); running it again", row["name"], one_line(exc))
                        continue
                    db.update_item(con, row["uuid"], {
                        "status": "failed", "finished": time.time(), "seconds": time.perf_counter() - t0,
                        "error": f"{type(exc).__name__}: {one_line(exc)}", "traceback": traceback.format_exc(),
                        "lease": None, "stage": beat.stage, "versions": _versions()}, when_lease=lease)
                    log.error("item %s failed: %s: %s", row["name"], type(exc).__name__, one_line(exc))
                    return False
                except BaseException:
                    db.update_item(con, row["uuid"], {"status": "interrupted", "lease": None, "stage": beat.stage,
                                                      "error": "stopped by the user (interrupt)"}, when_lease=lease)
                    raise
        finally:
            logger.removeHandler(watcher)
            logger.setLevel(old_level)
    peaks = [r.peak_rss_bytes for r in result.stages if r.peak_rss_bytes]
    est = result.estimates
    if est is not None:
        detail = f"{est.K} components, {est.accepted_indices.size} accepted"
    else:
        mc = result.stage("motion").detail
        detail = f"motion: {mc}"
    outputs = [p for p in (result.results_path, result.report_path, result.nwb_path) if p is not None]
    db.update_item(con, row["uuid"], {
        "status": "done", "finished": time.time(), "seconds": time.perf_counter() - t0,
        "peak_rss_bytes": max(peaks) if peaks else None, "detail": detail, "error": None, "traceback": None,
        "stage": None, "lease": None, "versions": _versions(),
        "stage_dirs": {k: _relative(batch, v) for k, v in result.stage_dirs.items() if k != "results"},
        "outputs": [_relative(batch, p) for p in outputs]}, when_lease=lease)
    return True


def _claim(batch: Any, row: Mapping[str, Any]) -> dict[str, Any] | None:
    lease = new_lease()
    now = time.time()
    ok = db.update_item(batch._con, row["uuid"], {"status": "running", "lease": lease, "heartbeat": now,
                                                   "started": now, "finished": None, "error": None,
                                                   "traceback": None, "stage": None},
                        when_status=("queued", "interrupted"))
    if not ok:
        return None
    return {**row, "lease": lease}


# -- the run ------------------------------------------------------------------------------------
def _runnable(batch: Any, items: Any) -> list[dict[str, Any]]:
    """Queued/interrupted items among ``items`` (all if None), each after its input item."""
    rows = batch.rows(items)
    todo = [r for r in rows if r["status"] in ("queued", "interrupted")]
    by_uuid = {r["uuid"]: r for r in todo}
    ordered: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(r: dict[str, Any]) -> None:
        if r["uuid"] in seen:
            return
        seen.add(r["uuid"])
        parent = r["input"].get("item")
        if parent in by_uuid:
            visit(by_uuid[parent])
        ordered.append(r)

    for r in todo:
        visit(r)
    return ordered


def run_items(batch: Any, items: Any = None, *, engine: Any = "local", workers: int | None = None,
              cluster_kwargs: Mapping[str, Any] | None = None, progress: bool = True) -> list[str]:
    """Run the queued and interrupted items (module docstring); returns the uuids run (done or
    failed). Items whose input item is not done are skipped with a message."""
    from ..pipeline.resources import EngineHandle

    batch.mark_interrupted()
    todo = _runnable(batch, items)
    if not todo:
        log.info("nothing to run in %s: no queued or interrupted item", batch.path)
        if progress:
            print("nothing to run: no queued or interrupted item", flush=True)
        return []
    shared = isinstance(engine, EngineHandle)  # the caller's: used as is, left open
    handle = engine if shared else EngineHandle(engine, workers, cluster_kwargs)
    ran: list[str] = []
    try:
        for i, row in enumerate(todo, start=1):
            parent = row["input"].get("item")
            if parent and batch.item(parent)["status"] != "done":
                _say(progress, f"[item {i}/{len(todo)}] {row['name']}: skipped, its input item "
                               f"{batch.item(parent)['name']!r} is {batch.item(parent)['status']}")
                continue
            claimed = _claim(batch, row)
            if claimed is None:
                _say(progress, f"[item {i}/{len(todo)}] {row['name']}: taken by another run")
                continue
            _say(progress, f"[item {i}/{len(todo)}] {row['name']} ({row['algorithm']}, {row['uuid'][:8]}) …")
            done = _run_one(batch, claimed, handle, progress)
            ran.append(row["uuid"])
            after = batch.item(row["uuid"])
            _say(progress, f"[item {i}/{len(todo)}] {row['name']}: {after['status']} in {after['seconds'] or 0:.1f} s"
                           f" — {after['detail'] if done else after['error']}")
    finally:
        if not shared:
            handle.close()
    return ran


def _say(progress: bool, message: str) -> None:
    log.info(message)
    if progress:
        print(message, flush=True)


def export_item(batch: Any, row: Mapping[str, Any], *, nwb_metadata: Any = None, dandi: bool = False) -> Path:
    """Run only the ``results`` stage of a done item again, with the NWB file."""
    from ..pipeline import run as pipeline_run

    result = pipeline_run(**_pipeline_kwargs(batch, row), engine="serial", progress=False, nwb=True,
                          nwb_metadata=nwb_metadata, dandi=dandi)
    if result.nwb_path is None:  # pragma: no cover - the pipeline writes it when nwb=True
        raise BatchError(f"no NWB file was written for {row['name']!r}")
    computed = [r for r in result.computed if r != "results"]
    if computed:
        log.warning("export of %s had to compute %s again (their shared outputs were gone)", row["name"],
                    ", ".join(computed))
    return result.nwb_path
