"""``somascope.pipeline.run``: the batch pipeline from a raw movie to cells, resumable.

The run: preflight (:mod:`~somascope.pipeline.preflight`) → plan (which stages can be reused,
from their manifests, :mod:`~somascope.pipeline.manifest`) → disk/memory check → the stages
(:mod:`~somascope.pipeline.stages`) in order → a summary table. Every stage writes into
``OUT/stages/<name>.partial/`` and the folder is renamed onto ``OUT/stages/<name>/`` once its
``manifest.json`` (written last) is in place, so a killed run never leaves a stage folder that
looks finished. ``OUT/results.h5`` is removed before any stage runs and written (atomically)
only by the last stage. ``OUT/run.log`` collects the log of every run (appended).

Nothing is written into OUT before the run passed its checks (preflight, the plan, disk space,
another movie's run in OUT, the lock): a refused run leaves no ``params.yaml``, ``run.log`` or
``stages/``. A run that fails before finishing any stage in a folder it created removes that
folder. ``OUT/.lock`` (``host:pid``, created atomically, removed at the end) keeps a second run
out of the folder; the lock of a run that died on this host is taken over. A full or read-only
output disk, or a lost Dask cluster, raises :class:`~somascope.pipeline.errors.RunFault`, and
Ctrl-C :class:`~somascope.pipeline.errors.RunInterrupted`; both say which finished stages were
kept. The test hook :data:`TEST_HOLD_ENV` stops a run inside a stage (for the fault tests only).

With ``stage_cache=DIR`` (the batch manager's shared stages) every stage but ``results`` lives
in ``DIR/<stage>/<key>/`` instead, where ``key`` hashes the stage's identity (inputs, parameters,
settings, upstream digests, version; :func:`cache_key`): runs of other parameter variants of the
same movie find the stages they share there, so a grid over quality thresholds motion-corrects
once and keeps one Store. A stage being computed holds ``DIR/<stage>/<key>.lock`` exclusively
(a second run that needs the same stage waits, then reuses it); a run holds the locks of the
cached stages it uses shared until it ends, so :func:`remove_unused_stages` never deletes a
stage in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunFault, RunInterrupted, as_fault, kept_text
from .manifest import Expected, canonical, compare, read_manifest, write_manifest
from .preflight import PipelineError, Prepared, check_nwb_metadata, check_resources, prepare
from .resources import EngineHandle, PeakMemory, ResourceEstimate, estimate_resources, human_bytes
from .results import NWB_FILE, REPORT_DIR, RESULTS_FILE
from .stages import STAGE_NAMES, STAGES, Stage

log = logging.getLogger("somascope.pipeline")

__all__ = ["RunResult", "StageRecord", "cache_key", "plan", "remove_unused_stages", "run"]

STAGES_DIR = "stages"
PARTIAL = ".partial"
LOG_FILE = "run.log"
PARAMS_FILE = "params.yaml"
LOCK_FILE = ".lock"


@dataclass
class StageRecord:
    """One stage of one run. ``seconds`` and ``peak_rss_bytes`` (whole process tree) are this
    run's; a reused stage took (almost) no time and has no peak. ``reason`` says why it ran."""

    stage: str
    seconds: float
    peak_rss_bytes: int | None
    reused: bool
    detail: str
    reason: str = ""
    digest: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The record as the report and the results file take it."""
        return {"stage": self.stage, "seconds": self.seconds, "peak_rss_bytes": self.peak_rss_bytes,
                "reused": self.reused, "detail": self.detail, "digest": self.digest}


@dataclass
class RunResult:
    """What :func:`run` produced: paths, the final estimates, the stage records.

    ``results_path`` and ``estimates`` are None for a run stopped before ``results``
    (``until``). ``stage_dirs`` maps each stage to its folder (in the stage cache, if any)."""

    out: Path
    results_path: Path | None
    report_path: Path | None
    nwb_path: Path | None
    estimates: Any
    params: Any
    stages: list[StageRecord]
    movie_info: dict[str, Any]
    estimate: ResourceEstimate | None = None
    seconds: float = 0.0
    stage_dirs: dict[str, Path] = field(default_factory=dict)

    def stage(self, name: str) -> StageRecord:
        for rec in self.stages:
            if rec.stage == name:
                return rec
        raise KeyError(f"no stage {name!r}; stages: {', '.join(r.stage for r in self.stages)}")

    @property
    def reused(self) -> list[str]:
        return [r.stage for r in self.stages if r.reused]

    @property
    def computed(self) -> list[str]:
        return [r.stage for r in self.stages if not r.reused]

    def table(self) -> str:
        """Plain-text table: stage, time, peak memory, reused; and the total."""
        rows = [("stage", "time", "peak memory", "reused", "")]
        for r in self.stages:
            rows.append((r.stage, f"{r.seconds:.1f} s", human_bytes(r.peak_rss_bytes) if r.peak_rss_bytes else "-",
                         "yes" if r.reused else "no", r.detail))
        peaks = [r.peak_rss_bytes for r in self.stages if r.peak_rss_bytes]
        rows.append(("total", f"{self.seconds:.1f} s", human_bytes(max(peaks)) if peaks else "-", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)


# -- the context the stages see --------------------------------------------------------------------
@dataclass
class RunContext:
    """Inputs and products shared by the stages of one run (products load lazily from disk)."""

    movie: Any
    params: Any
    out: Path
    engine: EngineHandle
    motion: bool
    nwb: bool
    progress: bool
    truth: Any
    movie_info: dict[str, Any]
    nwb_metadata: Any = None
    structural: Any = None
    stage_cache: Path | None = None
    movie_root: Path | None = None
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)
    current_stage: str | None = None
    _products: dict[str, dict[str, Any]] = field(default_factory=dict)
    _store: Any = None
    _analysis_store: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.movie.shape)

    def folder(self, stage: str) -> Path:
        """Where ``stage``'s outputs are: ``OUT/stages/<stage>`` or its folder in the stage cache."""
        return self.stage_dirs.get(stage, self.out / STAGES_DIR / stage)

    def cached(self, stage: str) -> bool:
        """Whether ``stage`` lives in the shared stage cache (every stage but ``results``)."""
        return self.stage_cache is not None and stage != "results"

    def remember(self, stage: str, products: Mapping[str, Any]) -> None:
        """Keep ``stage``'s products; earlier stages' Estimates are let go (each stage reads only
        its predecessor's, and :meth:`estimates` loads one again from its folder if asked): a
        long recording's components × frames arrays are hundreds of MB each."""
        for other in self._products.values():
            other.pop("estimates", None)
        self._products[stage] = dict(products)

    def _product(self, stage: str, key: str) -> tuple[bool, Any]:
        got = self._products.get(stage, {})
        return (key in got), got.get(key)

    def store(self) -> Any:
        """The float32 Store of the motion stage."""
        if self._store is None:
            from ..store import Store

            self._store = Store.open(self.folder("motion") / "movie.zarr")
        return self._store

    def analysis_store(self) -> Any:
        """The Store CNMF and the quality tests read: the background stage's movie without the
        ring background for one-photon data (``init.nb = 0``), else the motion stage's."""
        if self.params.init.nb != 0:
            return self.store()
        if self._analysis_store is None:
            from ..store import Store

            self._analysis_store = Store.open(self.folder("background") / "movie.zarr")
        return self._analysis_store

    def motion_result(self) -> Any:
        """The :class:`~somascope.motion.MotionResult` (None with motion correction off)."""
        known, value = self._product("motion", "motion")
        if known:
            return value
        folder = self.folder("motion") / "result"
        if not (folder / "metrics.json").is_file():
            return None
        from ..motion.result import MotionResult

        mc = MotionResult.load(folder, open_store=False)
        self.remember("motion", {"motion": mc})
        return mc

    def seed_masks(self) -> Any:
        """The structural channel's cell masks (``pixels × K`` CSC) of the seeds stage, or None
        without a structural channel."""
        known, value = self._product("seeds", "seeds")
        if known:
            return value
        path = self.folder("seeds") / "masks.npz"
        if not path.is_file():
            return None
        import scipy.sparse as sp

        masks = sp.csc_matrix(sp.load_npz(path))
        self._products.setdefault("seeds", {})["seeds"] = masks
        return masks

    def summary(self) -> Any:
        known, value = self._product("summary", "summary")
        if known:
            return value
        from ..summary import load_summary

        images = load_summary(self.folder("summary"))
        self._products.setdefault("summary", {})["summary"] = images
        return images

    def estimates(self, stage: str) -> Any:
        """The Estimates a stage produced (None when it produced none, e.g. refit off): the ones
        in memory when ``stage`` is the latest to have run, else a copy read from its folder that
        the caller owns (not kept here: see :meth:`remember`)."""
        known, value = self._product(stage, "estimates")
        if known:
            return value
        path = self.folder(stage) / "estimates.h5"
        if not path.is_file():
            return None
        from ..cnmf.estimates import Estimates

        return Estimates.load(path)

    def digests(self) -> dict[str, str]:
        return {name: m.get("digest", "") for name, m in self.manifests.items()}

    def records_for_report(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records]


# -- planning --------------------------------------------------------------------------------------
def _expected(stage: Stage, ctx: RunContext, movie_fp: dict[str, Any]) -> Expected:
    from .. import __version__

    params, settings = stage.depends(ctx)
    upstream = {u: ctx.manifests.get(u, {}).get("digest", "") for u in stage.upstream}
    inputs = {"movie": movie_fp} if stage.name == "motion" else {}
    return Expected(stage.name, inputs=inputs, params=params, settings=settings, upstream=upstream,
                    version=__version__)


def cache_key(expected: Expected) -> str:
    """Name of a stage's folder in the stage cache: a hash of its identity (no run id), so equal
    inputs, parameters, settings and upstream outputs give the same folder."""
    return hashlib.sha256(canonical(expected.identity()).encode("utf-8")).hexdigest()[:20]


def _cache_folder(ctx: RunContext, stage: Stage, movie_fp: dict[str, Any]) -> Path:
    assert ctx.stage_cache is not None
    return ctx.stage_cache / stage.name / cache_key(_expected(stage, ctx, movie_fp))


def _outputs_base(ctx: RunContext, stage: str) -> Path:
    """What a manifest's ``outputs`` are relative to: the stage's folder in the cache, else OUT."""
    return ctx.folder(stage) if ctx.cached(stage) else ctx.out


def _stages_until(until: str | None) -> tuple[Stage, ...]:
    return STAGES if until is None else STAGES[: STAGE_NAMES.index(until) + 1]


def plan(ctx: RunContext, movie_fp: dict[str, Any], *, force: bool = False,
         from_stage: str | None = None, until: str | None = None) -> dict[str, list[str]]:
    """``{stage: reasons}`` for every stage (up to ``until``): an empty list means the stage is
    reused.

    A stage runs when forced (``force``, or at/after ``from_stage``), when an upstream stage
    runs, or when its manifest does not match (:func:`~somascope.pipeline.manifest.compare`).
    Fills ``ctx.manifests`` with the manifests found on disk (and, with a stage cache,
    ``ctx.stage_dirs`` with the cache folders of the stages whose upstreams are known).
    """
    first = STAGE_NAMES.index(from_stage) if from_stage else None
    reasons: dict[str, list[str]] = {}
    for i, stage in enumerate(_stages_until(until)):
        running = [u for u in stage.upstream if reasons.get(u)]
        if ctx.cached(stage.name) and not running:
            ctx.stage_dirs[stage.name] = _cache_folder(ctx, stage, movie_fp)
        manifest = read_manifest(ctx.folder(stage.name))
        if manifest is not None:
            ctx.manifests[stage.name] = manifest
        if force:
            reasons[stage.name] = ["--force"]
            continue
        if first is not None and i >= first:
            reasons[stage.name] = [f"--from {from_stage}"]
            continue
        if running:
            reasons[stage.name] = [f"{' and '.join(running)} {'runs' if len(running) == 1 else 'run'} again"]
            continue
        found = compare(manifest, _expected(stage, ctx, movie_fp), _outputs_base(ctx, stage.name))
        if found == ["no finished output"] and ctx.cached(stage.name):
            found = ["not computed yet for these inputs and parameters"]
        reasons[stage.name] = found
    return reasons


# -- running one stage -------------------------------------------------------------------------------
def _install(partial: Path, final: Path) -> None:
    """Rename the finished ``partial`` folder onto ``final`` (an old ``final`` is removed after)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(partial, final)
    except BaseException:
        if old is not None:  # put the earlier output back
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


#: Test-only hook (for the fault tests of tests/test_reliability_runs.py): with this variable
#: set to ``STAGE`` (or ``STAGE:start``) the run stops inside that stage, after the stage wrote
#: its outputs into ``<stage>.partial`` but before its manifest (or, with ``:start``, before the
#: stage began), logs ``test hook SOMASCOPE_TEST_HOLD_STAGE: holding in stage STAGE`` to
#: ``OUT/run.log`` and sleeps until a signal ends it (SIGKILL, SIGINT), at most 10 minutes.
#: Unset (always, outside those tests) it does nothing.
TEST_HOLD_ENV = "SOMASCOPE_TEST_HOLD_STAGE"


def _test_hold(stage: str, when: str) -> None:
    """The :data:`TEST_HOLD_ENV` hook: a no-op unless that variable names this stage and moment."""
    wanted = os.environ.get(TEST_HOLD_ENV)
    if not wanted:
        return
    name, _, moment = wanted.partition(":")
    if name != stage or (moment or "end") != when:
        return
    log.info("test hook %s: holding in stage %s (%s, pid %d)", TEST_HOLD_ENV, stage, when, os.getpid())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _say(ctx: RunContext, message: str) -> None:
    log.info(message)
    if ctx.progress:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stdout)  # keeps progress bars on stderr intact


def _run_stage(stage: Stage, ctx: RunContext, expected: Expected, reasons: list[str], index: int,
               n_stages: int) -> StageRecord:
    final = ctx.folder(stage.name)
    partial = final.with_name(final.name + PARTIAL)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    why = "; ".join(reasons)
    _say(ctx, f"[{index}/{n_stages}] {stage.name} … ({stage.description}; runs because {why})")
    ctx.current_stage = stage.name
    started, t0 = time.time(), time.perf_counter()
    try:
        _test_hold(stage.name, "start")
        with PeakMemory() as peak:
            outcome = stage.run(ctx, partial)
        _test_hold(stage.name, "end")
        seconds = time.perf_counter() - t0
        if stage.name == "results" or ctx.cached(stage.name):
            outputs = list(outcome.outputs)
        else:
            outputs = [f"{STAGES_DIR}/{stage.name}/{o}" for o in outcome.outputs]
        manifest = write_manifest(partial, expected, run_id=uuid.uuid4().hex, started=started, seconds=seconds,
                                  peak_rss_bytes=peak.peak, outputs=outputs, detail=outcome.detail)
        if stage.name == "motion":
            ctx._store = None  # the Store moves with the folder
        _install(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    ctx.manifests[stage.name] = manifest
    ctx.current_stage = None
    ctx.remember(stage.name, outcome.products)
    log.info("%s finished in %.1f s, peak memory %s: %s", stage.name, seconds, human_bytes(peak.peak),
             outcome.detail)
    return StageRecord(stage.name, seconds, peak.peak, False, outcome.detail, why, manifest["digest"])


def _reuse_stage(stage: Stage, ctx: RunContext, index: int, n_stages: int) -> StageRecord:
    m = ctx.manifests[stage.name]
    detail = f"{m.get('detail', '')} (reused; computed {m.get('finished', '?')} in {float(m.get('seconds', 0)):.1f} s)"
    _say(ctx, f"[{index}/{n_stages}] {stage.name}: reused, nothing changed since {m.get('finished', '?')}")
    return StageRecord(stage.name, 0.0, None, True, detail, "", m.get("digest", ""))


def _cached_stage(stage: Stage, ctx: RunContext, fingerprint: dict[str, Any], reasons: list[str], index: int,
                  n_stages: int, held: contextlib.ExitStack, *, forced: bool) -> StageRecord:
    """Run or reuse a stage that lives in the stage cache, holding its lock until the run ends.

    Its folder is known only now when an upstream stage ran in this run. A stage planned to run
    is looked at again once its lock is held: another run may have computed it meanwhile.
    """
    folder = _cache_folder(ctx, stage, fingerprint)
    ctx.stage_dirs[stage.name] = folder
    expected = _expected(stage, ctx, fingerprint)
    lock = _StageLock(folder, exclusive=bool(reasons))
    held.callback(lock.close)
    if not forced:
        manifest = read_manifest(folder)
        if not compare(manifest, expected, folder):
            assert manifest is not None
            ctx.manifests[stage.name] = manifest
            lock.share()
            return _reuse_stage(stage, ctx, index, n_stages)
        if not reasons:  # removed between planning and now: compute it after all
            lock.close()
            lock = _StageLock(folder, exclusive=True)
            held.callback(lock.close)
            reasons = ["its cached folder was removed"]
    record = _run_stage(stage, ctx, expected, reasons, index, n_stages)
    lock.share()
    return record


# -- housekeeping ----------------------------------------------------------------------------------
class _RunLogHandler(logging.FileHandler):
    """OUT/run.log: best effort. A log line that cannot be written (the disk is full) is
    dropped, not reported with a traceback on stderr; the run's own error says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        return


@contextlib.contextmanager
def _run_log(out: Path, debug: bool) -> Iterator[None]:
    """Append this run's log (``somascope`` logger, INFO; DEBUG with ``debug``) to OUT/run.log.

    A failing run's error is written to run.log only (``run failed: …``): the caller (the
    command line prints one line) reports it."""
    logger = logging.getLogger("somascope")
    handler = _RunLogHandler(out / LOG_FILE, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    level = logging.DEBUG if debug else logging.INFO
    handler.setLevel(level)
    old_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    except BaseException as exc:
        kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "run %s: %s: %s",
                                (kind, type(exc).__name__, exc), None)
        handler.handle(record)  # to run.log only, not to the console
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)


def _this_host() -> str:
    import socket

    return socket.gethostname() or "localhost"


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    with contextlib.suppress(OSError):  # Linux: a killed child not yet reaped is a zombie
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


def _read_lock(path: Path) -> tuple[str, int] | None:
    """``(host, pid)`` of a lock file, None when it is unreadable or not ``host:pid``."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    host, sep, pid = text.rpartition(":")
    if not sep or not host or not pid.isdigit():
        return None
    return host, int(pid)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold OUT/.lock for the run: a second run into the same folder is refused.

    The lock file holds ``host:pid`` of the run and is created atomically (written under a
    temporary name, then hard-linked onto ``.lock``, which fails if it exists). A lock left by
    a run that died (its pid no longer runs on this host), or an empty/unreadable one (older
    somascope versions left an empty ``.lock``), is taken over. The lock file is removed when
    the run ends."""
    path = out / LOCK_FILE
    me = f"{_this_host()}:{os.getpid()}"
    tmp = out / f".lock.{uuid.uuid4().hex[:12]}"
    tmp.write_text(me + "\n", encoding="utf-8")
    try:
        for _attempt in range(5):
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system: exclusive create instead
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w", encoding="utf-8") as fh:
                        fh.write(me + "\n")
                    break
            holder = _read_lock(path)
            if holder is not None and (holder[0] != _this_host() or _pid_alive(holder[1])):
                host, pid = holder
                where = "this computer" if host == _this_host() else f"host {host}"
                raise PipelineError(
                    f"another somascope run (pid {pid} on {where}) is writing into {out} right now. Fix: wait for "
                    f"it to finish, or choose another --out (if no such run is going on, delete {path}).")
            # stale: its run died (or an old empty lock); move it aside atomically and try again
            aside = out / f".lock.stale-{uuid.uuid4().hex[:12]}"
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved != holder and moved is not None and _pid_alive(moved[1]):
                # another run took the stale lock over in between: give its lock back
                with contextlib.suppress(OSError):
                    os.link(aside, path)
            elif holder is not None:
                log.info("took over the lock of a run that no longer runs (%s:%d)", *holder)
            aside.unlink(missing_ok=True)
        else:
            raise PipelineError(f"could not take the lock {path} (other runs keep taking it). Fix: make sure "
                                f"only one somascope run writes into {out}.")
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield
    finally:
        if _read_lock(path) == (_this_host(), os.getpid()):
            path.unlink(missing_ok=True)


class _StageLock:
    """``flock`` on ``<stage folder>.lock``: exclusive while the stage is computed, shared while
    a run uses it (:func:`remove_unused_stages` takes it exclusively without waiting)."""

    def __init__(self, folder: Path, *, exclusive: bool) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(folder.with_name(folder.name + ".lock"), "a+")
        self.exclusive = exclusive
        self._flock(exclusive)

    def _flock(self, exclusive: bool) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)

    def share(self) -> None:
        """Keep holding the lock, shared (the stage is finished; others may use it too)."""
        if self.exclusive:
            self._flock(False)
            self.exclusive = False

    def close(self) -> None:
        self._fh.close()


def remove_unused_stages(stage_cache: str | os.PathLike[str], keep: Sequence[str | os.PathLike[str]] = ()
                         ) -> list[Path]:
    """Delete the stage folders of ``stage_cache`` not in ``keep`` and not in use by a run.

    A folder a run holds (its lock taken, shared or exclusive) is left alone, and so are the
    folders in ``keep`` (the stages some batch item still refers to). Returns the removed
    folders. Left-over ``*.partial`` folders of killed runs go too.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    root = Path(stage_cache)
    kept = {Path(k).absolute() for k in keep}
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            base = folder.with_name(folder.name.removesuffix(PARTIAL))
            if base.absolute() in kept and folder == base:
                continue
            with open(base.with_name(base.name + ".lock"), "a+") as fh:
                if fcntl is not None:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a run is using or computing it
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _clear_results(out: Path) -> None:
    """Remove the results of an earlier run (and temporaries a killed run left)."""
    for name in (RESULTS_FILE, NWB_FILE):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    shutil.rmtree(out / REPORT_DIR, ignore_errors=True)
    shutil.rmtree(out / STAGES_DIR / "results", ignore_errors=True)
    for leftover in out.glob(".*.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _whole_fov_fit(params: Any, dims: Sequence[int]) -> bool:
    """Whether CNMF reads the whole movie into memory (one patch, or no ``patch.rf``)."""
    rf = params.patch.rf
    if rf is None:
        return True
    return all(d <= 2 * r for d, r in zip(dims, rf))


# -- the run ---------------------------------------------------------------------------------------
def run(
    movie: Any,
    out: str | os.PathLike[str],
    params: Any = None,
    *,
    engine: Any = None,
    workers: int | None = None,
    fr: float | None = None,
    radius: float | Sequence[float] | None = None,
    decay_time: float | None = None,
    overrides: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    motion: bool = True,
    force: bool = False,
    from_stage: str | None = None,
    nwb: bool = False,
    nwb_metadata: Any = None,
    dandi: bool = False,
    progress: bool = True,
    truth: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None = None,
    debug: bool = False,
    stage_cache: str | os.PathLike[str] | None = None,
    until: str | None = None,
    movie_root: str | os.PathLike[str] | None = None,
    structural: Any = None,
) -> RunResult:
    """Run the whole pipeline on a movie: motion correction → summary images → CNMF → quality
    tests → (refit) → deconvolution and ΔF/F → results file, report (and NWB).

    Parameters
    ----------
    movie
        Path of a movie file (TIFF, HDF5, Zarr, NPY, …), a list of files concatenated in time,
        or a :class:`somascope.io.Movie`. Never modified.
    out
        Output folder (created). Layout in ``docs/pipeline.md``. A folder of an earlier run is
        reused stage by stage.
    params
        :class:`~somascope.params.Params`, a dict (CaImAn/Mesmerize keys accepted) or the path
        of a ``.yaml``/``.json`` parameters file; None: derived from the neuron radius, frame
        rate and decay time.
    engine
        :class:`~somascope.parallel.Engine`, ``"local"`` (a Dask cluster on this machine),
        ``"serial"``/None (this process) or a scheduler address; started only if a stage runs.
        An :class:`~somascope.pipeline.resources.EngineHandle` is used as is and left open (the
        batch manager's, shared by its items).
    workers
        Worker processes for ``engine="local"`` (default: one per core).
    fr, radius, decay_time
        Frame rate (Hz), neuron radius (px, scalar or per axis) and indicator decay time (s);
        they override the parameters. The frame rate is taken from ``fr``, else the parameters
        (if they set it), else the movie's metadata; if none has it the run is refused.
    overrides
        Further parameter values (flat, dotted, CaImAn or Mesmerize keys), applied last; or a
        sequence of such dicts applied one after the other (a batch item's parameters on top of
        its motion-correction item's).
    motion
        Motion-correct; False copies the movie into the Store as it is.
    force, from_stage
        Run every stage again / run again from this stage on (one of
        :data:`~somascope.pipeline.stages.STAGE_NAMES`).
    nwb
        Also write ``OUT/results.nwb``. Without the metadata the DANDI archive requires (subject
        id, species, sex, age, session start time) one warning lists what is missing.
    nwb_metadata
        Session, subject and imaging metadata for the NWB file: a
        :class:`~somascope.io.nwb.NWBMetadata`, a dict of its fields or the path of a YAML/JSON
        file (``docs/nwb.md``); validated before any stage runs. Implies ``nwb``. A change reruns
        only the ``results`` stage.
    dandi
        Write an NWB file ready for DANDI (implies ``nwb``): refuse to start, listing every
        missing field in one message, when the metadata lacks what DANDI requires.
    progress
        Stage headers, progress bars and the final table on stdout.
    truth
        Ground truth of simulated data for the report: ``{"A": pixels × K_true, "somata":
        indices, "C": K_true × T}``, or a function of the run's
        :class:`~somascope.motion.MotionResult` (None without motion correction) returning it
        (true footprints must be moved to the frame of the motion template).
    debug
        Also log DEBUG messages to ``OUT/run.log``.
    stage_cache
        A folder shared by several runs (the batch manager's): every stage but ``results``
        lives there under a key of its inputs and parameters, so runs of the same movie with
        other parameters reuse the stages they share (module docstring).
    structural
        A structural channel whose cells seed CNMF (``docs/structural.md``): a movie of the
        same frames (a :class:`~somascope.io.Movie`, e.g. the other channel, or a path; moved
        by the functional channel's motion) or an image of the frame's shape (array, ``.npy``
        or TIFF path) registered to the corrected movie. Silent cells are kept, flagged.
    movie_root
        A folder the movie's identity is recorded relative to (a batch's raw-data root): the
        stages stay valid when the data move with it.
    until
        Stop after this stage (one of :data:`~somascope.pipeline.stages.STAGE_NAMES`, e.g.
        ``"summary"`` for motion correction alone); no results file is written unless it is
        ``"results"``.

    Returns
    -------
    RunResult

    Raises
    ------
    PipelineError, ParameterError, MovieError
        Refused before any heavy work (unknown frame rate, neuron larger than a patch, disk too
        small, output path is a file, movie too short, …).
    """
    if from_stage is not None and from_stage not in STAGE_NAMES:
        raise PipelineError(f"unknown stage {from_stage!r} for --from. Fix: use one of {', '.join(STAGE_NAMES)}.")
    if until is not None and until not in STAGE_NAMES:
        raise PipelineError(f"unknown stage {until!r} for until. Fix: use one of {', '.join(STAGE_NAMES)}.")
    if until == "results":
        until = None
    t_start = time.perf_counter()
    meta, nwb_warnings = check_nwb_metadata(nwb_metadata, nwb=nwb, dandi=dandi)
    nwb = bool(nwb or dandi or meta is not None)
    prepared = prepare(movie, out, params, fr=fr, radius=radius, decay_time=decay_time, overrides=overrides,
                       motion=motion)
    prepared.warnings.extend(nwb_warnings)
    from .structural import resolve_structural

    structural_input = resolve_structural(structural, prepared.movie)
    out_path = prepared.out
    created = not out_path.exists()
    try:
        out_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fault = as_fault(exc, out=out_path, stage=None, kept=[], removed=False)
        if fault is None:
            raise
        raise fault from None
    shared = isinstance(engine, EngineHandle)  # a batch's engine, started once for all its items
    handle = engine if shared else EngineHandle(engine, workers)
    ctx = RunContext(movie=prepared.movie, params=prepared.params, out=out_path, engine=handle, motion=motion,
                     nwb=nwb, progress=progress, truth=truth, movie_info=prepared.movie_info(), nwb_metadata=meta,
                     structural=structural_input,
                     stage_cache=None if stage_cache is None else Path(stage_cache).expanduser().absolute(),
                     movie_root=None if movie_root is None else Path(movie_root).expanduser().absolute())
    remove_out = False
    try:
        with _lock(out_path):
            try:
                return _run(ctx, prepared, force=force, from_stage=from_stage, until=until, t_start=t_start,
                            debug=debug)
            except BaseException as exc:
                kept = _finished_stages(ctx)
                # a run that finished nothing in a folder it created leaves nothing behind
                remove_out = created and not kept
                if remove_out:
                    _empty_folder(out_path, keep=LOCK_FILE)
                translated = _translate(exc, ctx, kept, removed=remove_out)
                if translated is exc:
                    raise
                raise translated from exc
    except OSError as exc:  # the lock could not be written: a read-only or full output folder
        fault = as_fault(exc, out=out_path, stage=None, kept=[], removed=False)
        if fault is None:
            raise
        raise fault from None
    finally:
        if remove_out:
            with contextlib.suppress(OSError):
                out_path.rmdir()  # empty once the lock is gone (unless another run came in)
        if not shared:
            handle.close()
        if prepared.movie is not movie:  # opened here from a path: release its files
            prepared.movie.close()


def _finished_stages(ctx: RunContext) -> list[str]:
    """The stages whose finished folder (with its manifest) this run's output has now."""
    from .manifest import MANIFEST

    return [name for name in STAGE_NAMES if (ctx.folder(name) / MANIFEST).is_file()]


def _empty_folder(folder: Path, *, keep: str) -> None:
    """Remove everything in ``folder`` but the entry ``keep``."""
    for entry in folder.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _translate(exc: BaseException, ctx: RunContext, kept: list[str], *, removed: bool) -> BaseException:
    """The exception the caller sees: Ctrl-C → :class:`RunInterrupted`, a full or read-only
    output disk or a lost cluster → :class:`RunFault` (both saying what was kept); anything
    else unchanged."""
    if isinstance(exc, (RunFault, RunInterrupted)):
        return exc
    kept_in = ctx.stage_cache if ctx.stage_cache is not None else None
    if isinstance(exc, KeyboardInterrupt):
        where = f"stopped in stage {ctx.current_stage}; " if ctx.current_stage else ""
        return RunInterrupted(f"{where}{kept_text(ctx.out, kept, removed=removed, where=kept_in)}")
    if isinstance(exc, Exception):
        folders = [ctx.stage_cache] if ctx.stage_cache is not None else []
        fault = as_fault(exc, out=ctx.out, stage=ctx.current_stage, kept=kept, removed=removed,
                         output_folders=folders, kept_in=kept_in)
        if fault is not None:
            return fault
    return exc


def _check_same_movie(ctx: RunContext, fingerprint: dict[str, Any], force: bool) -> None:
    """Refuse to run into a folder that holds the run of another movie (other files, or another
    shape): its results, its curation and its report would be replaced by this movie's. A movie
    whose file changed on disk (same path and shape) is run again as before."""
    if force or ctx.cached("motion"):
        return
    manifest = ctx.manifests.get("motion")
    if not manifest:
        return
    old = (manifest.get("inputs") or {}).get("movie") or {}
    old_paths = [f.get("path") for f in old.get("files", [])]
    new_paths = [f.get("path") for f in fingerprint.get("files", [])]
    if old_paths == new_paths and list(old.get("shape") or []) == list(fingerprint["shape"]):
        return

    def describe(paths: list[Any], shape: Any) -> str:
        name = str(paths[0]) if paths else "an unnamed movie"
        more = f" and {len(paths) - 1} more files" if len(paths) > 1 else ""
        dims = " × ".join(str(int(d)) for d in shape) if shape else "?"
        return f"{name}{more}, {dims}"

    raise PipelineError(
        f"{ctx.out} holds the run of another movie ({describe(old_paths, old.get('shape'))}); this movie is "
        f"{describe(new_paths, fingerprint['shape'])}. Fix: choose another --out for this movie, or pass --force "
        "to replace that run.")


def _run(ctx: RunContext, prepared: Prepared, *, force: bool, from_stage: str | None, until: str | None,
         t_start: float, debug: bool = False) -> RunResult:
    from .manifest import movie_fingerprint

    # the last checks before anything is written into OUT (run.log, params.yaml, stages/)
    fingerprint = movie_fingerprint(ctx.movie, ctx.movie_root)
    reasons = plan(ctx, fingerprint, force=force, from_stage=from_stage, until=until)
    _check_same_movie(ctx, fingerprint, force)
    estimate = estimate_resources(ctx.shape, ctx.params, workers=ctx.engine.planned_workers, motion=ctx.motion,
                                  store_needed=bool(reasons["motion"]),
                                  whole_fov_fit=_whole_fov_fit(ctx.params, ctx.shape[1:]))
    line, warnings = check_resources(prepared, estimate)
    with _run_log(ctx.out, debug):
        return _run_stages(ctx, prepared, reasons, fingerprint, estimate, line, warnings, force=force,
                           from_stage=from_stage, until=until, t_start=t_start)


def _run_stages(ctx: RunContext, prepared: Prepared, reasons: dict[str, list[str]], fingerprint: dict[str, Any],
                estimate: ResourceEstimate, line: str, warnings: list[str], *, force: bool, from_stage: str | None,
                until: str | None, t_start: float) -> RunResult:
    log.info("=== somascope run: %s → %s", ctx.movie_info["path"], ctx.out)
    for key, value in ctx.movie_info.items():
        log.info("movie %s: %s", key, value)
    for message in prepared.warnings:
        log.warning(message)
    _say(ctx, f"somascope run: {ctx.movie_info['shape']} at {ctx.params.data.fr:g} Hz → {ctx.out}; {line}")
    for message in warnings:
        log.warning(message)
    ctx.params.save(ctx.out / PARAMS_FILE)
    if any(reasons.values()):
        _clear_results(ctx.out)
    stages = _stages_until(until)
    first_forced = 0 if force else (STAGE_NAMES.index(from_stage) if from_stage else len(STAGES))
    with contextlib.ExitStack() as held:
        for i, stage in enumerate(stages, start=1):
            if ctx.cached(stage.name):
                record = _cached_stage(stage, ctx, fingerprint, reasons[stage.name], i, len(stages), held,
                                       forced=i - 1 >= first_forced)
            elif reasons[stage.name]:
                expected = _expected(stage, ctx, fingerprint)
                record = _run_stage(stage, ctx, expected, reasons[stage.name], i, len(stages))
            else:
                record = _reuse_stage(stage, ctx, i, len(stages))
            ctx.records.append(record)
    est = None
    if until is None:
        est = ctx.estimates("results")  # in memory when the results stage ran
        if est is None:
            from ..cnmf.estimates import Estimates

            est = Estimates.load(ctx.out / RESULTS_FILE)
    report = ctx.out / REPORT_DIR / "report.html"
    result = RunResult(out=ctx.out, results_path=ctx.out / RESULTS_FILE if until is None else None,
                       report_path=report if report.exists() else None,
                       nwb_path=ctx.out / NWB_FILE if (ctx.out / NWB_FILE).exists() else None,
                       estimates=est, params=ctx.params, stages=list(ctx.records), movie_info=ctx.movie_info,
                       estimate=estimate, seconds=time.perf_counter() - t_start,
                       stage_dirs={s.name: ctx.folder(s.name) for s in stages})
    log.info("run finished in %.1f s:\n%s", result.seconds, result.table())
    if ctx.progress:
        print(result.table(), flush=True)
    return result
