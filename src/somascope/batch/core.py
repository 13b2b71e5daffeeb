"""``Batch``: a table of items (movie × algorithm × parameters) on disk, run, loaded, compared.

A batch is a folder::

    BATCH/
      batch.sqlite           items, samples, settings (:mod:`somascope.batch.db`)
      items/<uuid>/          one item's outputs: results.h5, report/, run.log, params.yaml
      stages/<stage>/<key>/  stages shared by the items (motion Store, summary images, CNMF, …)
      samples/<name>/        curated results promoted to project samples

An item is ``algorithm`` (``mcorr``: motion correction and summary images; ``cnmf``: the whole
pipeline; ``cnmfe``: the same with ``data.is_1p``), an ``input`` (a movie path, relative to the
batch's raw-data root when under it, or another item: a CNMF item made from a motion-correction
item inherits its movie, its parameters and its border pixels) and parameters (any dict
:class:`~somascope.params.Params` accepts: somascope, CaImAn or Mesmerize keys, nested
``cnmf_kwargs``/``eval_kwargs`` too) plus a ``variant`` (dotted values a grid set on top).

Items share stages: the pipeline keeps every stage but ``results`` in ``stages/`` under a key of
its inputs and parameters (:mod:`somascope.pipeline.runner`), so items of one movie that differ
only in CNMF or quality parameters share one motion correction, one float32 Store and one set of
summary images; items that differ only in quality thresholds share CNMF too. A shared stage is
deleted when no item refers to it any more (:meth:`Batch.remove`, :meth:`Batch.clean`).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
import uuid as _uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from . import db
from .db import BatchError

log = logging.getLogger("somascope.batch")

ALGORITHMS = ("mcorr", "cnmf", "cnmfe")
ITEMS_DIR = "items"
STAGES_DIR = "stages"
SAMPLES_DIR = "samples"

__all__ = ["ALGORITHMS", "Batch", "BatchError", "ItemOutputs"]


def _now() -> float:
    return time.time()


def _check_algorithm(algorithm: str) -> str:
    algo = str(algorithm).lower()
    if algo not in ALGORITHMS:
        raise BatchError(f"unknown algorithm {algorithm!r}. Fix: use one of {', '.join(ALGORITHMS)} (cnmfe is cnmf "
                         f"for one-photon data).")
    return algo


def _check_params(layers: Sequence[Mapping[str, Any]]) -> Any:
    """The parameters ``layers`` build (on the defaults), so that a bad key or value is refused
    when the item is added."""
    from ..params import Params

    p = Params.from_dict({})
    for layer in layers:
        if layer:
            p = p.replace(layer)
    return p


def _dotted(d: Mapping[str, Any] | None) -> dict[str, Any]:
    from ..params import Params

    return Params.given_values(d or {})


@dataclass
class ItemOutputs:
    """An item's outputs, loaded when first asked for.

    ``estimates`` (CNMF items: the final :class:`~somascope.cnmf.estimates.Estimates`),
    ``motion`` (:class:`~somascope.motion.MotionResult`, None with motion not applied),
    ``summary`` (:class:`~somascope.summary.SummaryImages`), ``movie`` (the motion-corrected
    float32 :class:`~somascope.store.Store`, T × H × W), ``params`` (the
    :class:`~somascope.params.Params` it ran with); paths ``out``, ``results_path``,
    ``report_path``.
    """

    uuid: str
    name: str
    algorithm: str
    out: Path
    stage_dirs: dict[str, Path]

    @property
    def results_path(self) -> Path | None:
        path = self.out / "results.h5"
        return path if path.is_file() else None

    @property
    def report_path(self) -> Path | None:
        path = self.out / "report" / "report.html"
        return path if path.is_file() else None

    @cached_property
    def estimates(self) -> Any:
        if self.results_path is None:
            raise BatchError(f"item {self.name!r} ({self.algorithm}) has no CNMF results. Fix: load a cnmf/cnmfe "
                             f"item, or use .motion / .movie / .summary of a motion-correction item.")
        from ..cnmf.estimates import Estimates

        return Estimates.load(self.results_path)

    @cached_property
    def motion(self) -> Any:
        from ..motion.result import MotionResult

        folder = self.stage_dirs["motion"] / "result"
        return MotionResult.load(folder, open_store=False) if (folder / "metrics.json").is_file() else None

    @cached_property
    def summary(self) -> Any:
        from ..summary import load_summary

        return load_summary(self.stage_dirs["summary"])

    @cached_property
    def movie(self) -> Any:
        from ..store import Store

        return Store.open(self.stage_dirs["motion"] / "movie.zarr")

    @cached_property
    def params(self) -> Any:
        from ..params import Params

        return Params.load(self.out / "params.yaml")


class Batch:
    """A batch on disk (module docstring). Create with :meth:`create`, open with :meth:`open`.

    Every method reads the SQLite file afresh, so several processes may add, list and run items
    of one batch at the same time (on one machine or a local file system).
    """

    def __init__(self, path: Path, raw_data_root: str | os.PathLike[str] | None = None) -> None:
        self.path = path
        self._root_override = None if raw_data_root is None else Path(raw_data_root).expanduser().absolute()
        self._con = db.connect(path / db.DB_FILE)
        db.check_format(self._con, path / db.DB_FILE)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, raw_data_root: str | os.PathLike[str] | None = None,
               exist_ok: bool = False) -> Batch:
        """A new, empty batch in folder ``path`` (created). ``raw_data_root``: the folder movie
        paths are stored relative to (settable later, and per computer when opening)."""
        folder = Path(path).expanduser().absolute()
        if (folder / db.DB_FILE).exists():
            if exist_ok:
                return cls.open(folder, raw_data_root=raw_data_root)
            raise BatchError(f"{folder} already holds a batch. Fix: open it (Batch.open / somascope batch ls), or "
                             f"choose another folder.")
        if folder.exists() and not folder.is_dir():
            raise BatchError(f"{folder} is a file. Fix: choose a folder for the batch.")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{db.DB_FILE}.partial-{_uuid.uuid4().hex[:8]}"
        con = db.connect(tmp)
        root = None if raw_data_root is None else str(Path(raw_data_root).expanduser().absolute())
        db.initialise(con, {"raw_data_root": root})
        con.close()
        try:
            os.link(tmp, folder / db.DB_FILE)  # fails if another process created it meanwhile
        except FileExistsError:
            tmp.unlink()
            if not exist_ok:
                raise BatchError(f"{folder} already holds a batch. Fix: open it instead.") from None
        else:
            tmp.unlink()
        for sub in (ITEMS_DIR, STAGES_DIR, SAMPLES_DIR):
            (folder / sub).mkdir(exist_ok=True)
        return cls(folder)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, raw_data_root: str | os.PathLike[str] | None = None) -> Batch:
        """An existing batch (its folder, or its ``batch.sqlite``). Items left ``running`` by a
        process that is gone (killed, crashed, or silent for :data:`~somascope.batch.execute.STALE_S`)
        become ``interrupted``; :meth:`run` resumes them. ``raw_data_root`` overrides the stored
        root for this session (the same batch on another computer)."""
        folder = Path(path).expanduser().absolute()
        if folder.name == db.DB_FILE:
            folder = folder.parent
        if not (folder / db.DB_FILE).is_file():
            raise BatchError(f"no batch at {folder} (no {db.DB_FILE}). Fix: check the path, or create one with "
                             f"'somascope batch create {folder}'.")
        batch = cls(folder, raw_data_root)
        batch.mark_interrupted()
        return batch

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Batch({str(self.path)!r}, {len(db.select_items(self._con))} items)"

    # -- settings ------------------------------------------------------------------------------
    @property
    def raw_data_root(self) -> Path | None:
        """The folder relative movie paths start from (this session's override, else stored)."""
        if self._root_override is not None:
            return self._root_override
        stored = db.get_setting(self._con, "raw_data_root")
        return None if stored is None else Path(stored)

    @raw_data_root.setter
    def raw_data_root(self, value: str | os.PathLike[str] | None) -> None:
        root = None if value is None else str(Path(value).expanduser().absolute())
        db.set_setting(self._con, "raw_data_root", root)
        self._root_override = None

    @property
    def stage_cache(self) -> Path:
        return self.path / STAGES_DIR

    def item_dir(self, uuid: str) -> Path:
        return self.path / ITEMS_DIR / uuid

    # -- reading -------------------------------------------------------------------------------
    def rows(self, items: Any = None) -> list[dict[str, Any]]:
        """The items' rows (dicts, JSON decoded), all or those ``items`` names (see :meth:`item`)."""
        rows = db.select_items(self._con)
        if items is None:
            return rows
        return [self._find(ref, rows) for ref in _refs(items)]

    def item(self, ref: Any) -> dict[str, Any]:
        """One item's row: ``ref`` is its uuid (or a unique prefix of ≥ 4 characters), its name
        (if unique), its position in :meth:`items` (int), or a row/Series with a ``uuid``."""
        return self._find(ref, db.select_items(self._con))

    def _find(self, ref: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if hasattr(ref, "get") and ref.get("uuid") is not None and not isinstance(ref, str):
            ref = ref.get("uuid")
        if isinstance(ref, int) and not isinstance(ref, bool):
            if -len(rows) <= ref < len(rows):
                return rows[ref]
            raise BatchError(f"no item at position {ref}: the batch has {len(rows)} items. Fix: use a position "
                             f"from 0 to {len(rows) - 1}, a uuid or a name (somascope batch ls).")
        text = str(ref)
        exact = [r for r in rows if r["uuid"] == text]
        if exact:
            return exact[0]
        named = [r for r in rows if r["name"] == text]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise BatchError(f"{len(named)} items are named {text!r}. Fix: give the uuid (somascope batch ls shows "
                             f"it).")
        prefixed = [r for r in rows if len(text) >= 4 and r["uuid"].startswith(text)]
        if len(prefixed) == 1:
            return prefixed[0]
        why = "several uuids start so" if prefixed else "no uuid or name matches"
        raise BatchError(f"no item {text!r} in {self.path} ({why}). Fix: use a uuid, a name or a position from "
                         f"'somascope batch ls'.")

    def items(self) -> Any:
        """The batch as a pandas DataFrame, one row per item in the order added: uuid, name,
        algorithm, input, params, variant, status, stage (while running), detail (what it found),
        added/started/finished (UTC timestamps), seconds, peak_memory (bytes, whole process tree),
        error, comments, tags, versions."""
        import pandas as pd

        columns = ["uuid", "name", "algorithm", "input", "params", "variant", "status", "stage", "detail",
                   "added", "started", "finished", "seconds", "peak_memory", "error", "comments", "tags",
                   "versions"]
        records = []
        for r in db.select_items(self._con):
            rec = {k: r.get(k) for k in columns}
            rec["input"] = _input_text(r["input"])
            rec["peak_memory"] = r.get("peak_rss_bytes")
            records.append(rec)
        df = pd.DataFrame.from_records(records, columns=columns)
        for col in ("added", "started", "finished"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df

    def effective_layers(self, row: Mapping[str, Any], *, variant: bool = True,
                         rows: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The parameter dicts an item runs with, applied in order: those of its input item (if
        any, recursively), then its own ``params`` and (with ``variant``) ``variant``; ``cnmfe``
        adds ``data.is_1p``. ``rows`` (uuid → row) looks input items up without reading the
        batch again."""
        layers: list[dict[str, Any]] = []
        parent = row["input"].get("item")
        if parent:
            parent_row = rows[parent] if rows is not None else self.item(parent)
            layers += self.effective_layers(parent_row, rows=rows)
        layers += [dict(row["params"] or {}), dict(row["variant"] or {}) if variant else {}]
        if row["algorithm"] == "cnmfe":
            layers.append({"data.is_1p": True})
        return [layer for layer in layers if layer]

    def movie_path(self, row: Mapping[str, Any]) -> Path:
        """The movie an item reads (its input item's, for an item made from another)."""
        inp = row["input"]
        if inp.get("item"):
            return self.movie_path(self.item(inp["item"]))
        path = Path(inp["movie"])
        if not path.is_absolute():
            root = self.raw_data_root
            if root is None:
                raise BatchError(f"item {row['name']!r}: its movie {str(path)!r} is relative but the batch has no "
                                 f"raw-data root. Fix: somascope batch root {self.path} /path/to/raw/data (Python: "
                                 f"batch.raw_data_root = ...).")
            path = root / path
        return path

    # -- adding -------------------------------------------------------------------------------
    def add(self, movie: Any, algorithm: str = "cnmf", params: Mapping[str, Any] | None = None,
            name: str | None = None, *, comments: str | None = None, tags: Mapping[str, Any] | None = None,
            uuid: str | None = None) -> str:
        """Add one item; returns its uuid.

        ``movie``: a movie path (stored relative to the raw-data root when under it) or another
        item (uuid, name, position or row) whose output it reads: a ``cnmf``/``cnmfe`` item
        made from an ``mcorr`` item. ``params``: any parameter dict (somascope, CaImAn or
        Mesmerize keys), checked now. ``name`` defaults to the movie's file name.
        """
        row = self._new_row(movie, algorithm, params, name, comments=comments, tags=tags, uuid=uuid)
        db.insert_items(self._con, [row])
        return row["uuid"]

    def _new_row(self, movie: Any, algorithm: str, params: Mapping[str, Any] | None, name: str | None, *,
                 comments: str | None = None, tags: Mapping[str, Any] | None = None, uuid: str | None = None,
                 variant: Mapping[str, Any] | None = None) -> dict[str, Any]:
        algo = _check_algorithm(algorithm)
        params = dict(params or {})
        inp, default_name, parent_layers = self._input_of(movie, algo)
        _check_params([*parent_layers, params, dict(variant or {})])
        return {"uuid": uuid or str(_uuid.uuid4()), "name": name or default_name, "algorithm": algo, "input": inp,
                "params": params, "variant": dict(variant or {}), "status": "queued", "added": _now(),
                "comments": comments, "tags": dict(tags or {})}

    def _input_of(self, movie: Any, algo: str) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        """``(input, default name, parameter layers of the input item)`` of a new item: an item
        reference if ``movie`` names an item of this batch, else a movie path."""
        parent = None
        try:
            parent = self.item(movie)
        except BatchError:
            if not isinstance(movie, (str, os.PathLike)):
                raise
        if parent is not None:
            if parent["algorithm"] != "mcorr" or algo == "mcorr":
                raise BatchError(f"item {parent['name']!r} ({parent['algorithm']}) cannot be the input of a "
                                 f"{algo} item. Fix: make cnmf/cnmfe items from an mcorr item, or from a movie.")
            return {"item": parent["uuid"]}, f"{parent['name']} {algo}", self.effective_layers(parent)
        path = Path(movie).expanduser()
        root = self.raw_data_root
        full = path if path.is_absolute() else (root / path if root is not None else path.absolute())
        if not full.exists():
            raise BatchError(f"movie {str(movie)!r} not found" + (f" (under the raw-data root {root})" if root and not
                             path.is_absolute() else "") + ". Fix: check the path, or set the batch's raw-data root.")
        full = full.absolute()
        stored: str = str(full)
        if root is not None:
            try:
                stored = full.relative_to(root).as_posix()
            except ValueError:
                pass
        return {"movie": stored}, full.stem if full.is_file() else full.name, []

    def add_variants(self, item: Any, grid: Mapping[str, Sequence[Any]], *, name: str | None = None) -> list[str]:
        """One new item per combination of ``grid`` values (``{"quality.min_SNR": [2, 2.5, 3],
        "gSig": [3, 4]}``; any key spelling :class:`~somascope.params.Params` accepts) on top of
        ``item``'s parameters; combinations equal to ``item``'s own values are skipped. Names
        read ``"<name> [min_SNR=2, gSig=3]"``. Returns the new uuids (all added in one
        transaction)."""
        base = self.item(item)
        if not grid:
            raise BatchError("the grid is empty. Fix: give values per key, e.g. {'quality.min_SNR': [2, 3]}.")
        keys = list(grid)
        values = []
        for key in keys:
            vals = grid[key]
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
                raise BatchError(f"grid[{key!r}] = {vals!r} is not a list of values. Fix: give a list, e.g. "
                                 f"{{{key!r}: [{vals!r}]}}.")
            values.append(list(vals))
        layers = self.effective_layers(base)
        seen = {repr(_check_params(layers).to_dict())}  # combinations that change nothing are skipped
        rows = []
        for combo in itertools.product(*values):
            change: dict[str, Any] = {}
            for key, value in zip(keys, combo):
                change.update(_dotted({key: value}))
            built = repr(_check_params([*layers, change]).to_dict())
            if built in seen:
                continue
            seen.add(built)
            label = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in zip(keys, combo))
            movie = {"item": base["input"]["item"]} if base["input"].get("item") else None
            row = self._new_row(movie["item"] if movie else self.movie_path(base), base["algorithm"], base["params"],
                                f"{name or base['name']} [{label}]", comments=base.get("comments"),
                                tags=base.get("tags"), variant={**(base["variant"] or {}), **change})
            if not movie:
                row["input"] = dict(base["input"])  # keep it as stored (relative to the root)
            rows.append(row)
        db.insert_items(self._con, rows)
        return [r["uuid"] for r in rows]

    # -- changing -------------------------------------------------------------------------------
    def reset(self, items: Any = None) -> list[str]:
        """Queue items again (failed, interrupted or done; running ones are refused). Their
        outputs are kept until they run; the pipeline reuses what is still valid."""
        rows = self.rows(items)
        running = [r["name"] for r in rows if r["status"] == "running"]
        if running:
            raise BatchError(f"{', '.join(running)} {'is' if len(running) == 1 else 'are'} running. Fix: wait for "
                             f"it, or stop its 'somascope batch run'.")
        changed = []
        for r in rows:
            if db.update_item(self._con, r["uuid"], {"status": "queued", "error": None, "traceback": None,
                                                      "started": None, "finished": None, "stage": None,
                                                      "seconds": None, "peak_rss_bytes": None, "detail": None,
                                                      "outputs": None},
                              when_status=("failed", "interrupted", "done", "queued")):
                changed.append(r["uuid"])
        return changed

    def comment(self, item: Any, comments: str | None = None, *, tags: Mapping[str, Any] | None = None) -> None:
        """Set an item's comments and/or tags (merged into its tags)."""
        row = self.item(item)
        values: dict[str, Any] = {}
        if comments is not None:
            values["comments"] = comments
        if tags:
            values["tags"] = {**(row["tags"] or {}), **dict(tags)}
        if values:
            db.update_item(self._con, row["uuid"], values)

    def remove(self, items: Any, *, force: bool = False) -> list[str]:
        """Remove items, their output folders, and the shared stages no remaining item uses.

        Refused for a running item, and for an item another (kept) item takes as input.
        Samples promoted from an item keep their own copy of its results."""
        rows = self.rows(items)
        gone = {r["uuid"] for r in rows}
        for r in rows:
            if r["status"] == "running" and not force:
                raise BatchError(f"item {r['name']!r} is running. Fix: wait for it, or stop its run first.")
        users = [r for r in db.select_items(self._con) if r["input"].get("item") in gone and r["uuid"] not in gone]
        if users:
            names = ", ".join(repr(u["name"]) for u in users[:3])
            one = len(users) == 1
            raise BatchError(f"{names} read{'s' if one else ''} the output of an item being removed. Fix: remove "
                             f"{'it' if one else 'them'} too.")
        with db.transaction(self._con):
            for u in gone:
                self._con.execute("DELETE FROM items WHERE uuid = ?", (u,))
        for u in gone:
            shutil.rmtree(self.item_dir(u), ignore_errors=True)
        self.clean()
        return sorted(gone)

    def clean(self) -> list[Path]:
        """Delete shared stage folders that no item refers to (and none is using right now)."""
        from ..pipeline.runner import remove_unused_stages

        keep = [self.path / d for r in db.select_items(self._con) for d in (r.get("stage_dirs") or {}).values()]
        return remove_unused_stages(self.stage_cache, keep)

    def mark_interrupted(self) -> list[str]:
        """Items ``running`` under a lease whose process is gone become ``interrupted``."""
        from .execute import mark_stale

        return mark_stale(self._con)

    # -- running and loading ------------------------------------------------------------------
    def run(self, items: Any = None, *, engine: Any = "local", workers: int | None = None,
            cluster_kwargs: Mapping[str, Any] | None = None, progress: bool = True) -> Any:
        """Run the queued and interrupted items (all, or those named), inputs first, on one
        engine shared by all of them; returns the DataFrame rows of the items it ran."""
        from .execute import run_items

        ran = run_items(self, items, engine=engine, workers=workers, cluster_kwargs=cluster_kwargs,
                        progress=progress)
        df = self.items()
        return df[df["uuid"].isin(ran)]

    def load(self, item: Any) -> ItemOutputs:
        """An item's outputs (loaded lazily, :class:`ItemOutputs`); refused unless it is done."""
        row = self.item(item)
        if row["status"] != "done":
            raise BatchError(f"item {row['name']!r} is {row['status']}, it has no outputs yet. Fix: somascope batch "
                             f"run {self.path}" + (f" (its error: {row['error']})" if row.get("error") else "") + ".")
        dirs = {k: self.path / v for k, v in (row.get("stage_dirs") or {}).items()}
        return ItemOutputs(row["uuid"], row["name"], row["algorithm"], self.item_dir(row["uuid"]), dirs)

    def params_diff(self, items: Any = None) -> Any:
        """A DataFrame (one row per item, indexed by name) of only the parameters that differ
        between the items, under their dotted names; a value an item does not set is ``None``
        (its default)."""
        import pandas as pd

        rows = self.rows(items)
        by_uuid = {r["uuid"]: r for r in db.select_items(self._con)}
        values = []
        for r in rows:
            merged: dict[str, Any] = {"algorithm": r["algorithm"]}
            for layer in self.effective_layers(r, rows=by_uuid):
                merged.update({k: _hashable(v) for k, v in _dotted(layer).items()})
            values.append(merged)
        keys = sorted({k for v in values for k in v})
        varied = [k for k in keys if len({repr(v.get(k)) for v in values}) > 1]
        df = pd.DataFrame([{k: v.get(k) for k in varied} for v in values], columns=varied,
                          index=pd.Index([r["name"] for r in rows], name="name"))
        df.insert(0, "uuid", [r["uuid"] for r in rows])
        return df

    def export(self, item: Any, *, nwb: bool = True, nwb_metadata: Any = None, dandi: bool = False) -> Path:
        """Write an item's NWB file (``items/<uuid>/results.nwb``); returns its path. Only the
        pipeline's ``results`` stage runs again."""
        from .execute import export_item

        row = self.item(item)
        if row["algorithm"] == "mcorr" or row["status"] != "done":
            raise BatchError(f"item {row['name']!r} ({row['algorithm']}, {row['status']}) has no results to export. "
                             f"Fix: export a cnmf/cnmfe item that is done.")
        if not nwb:
            raise BatchError("nothing to export: nwb=False. Fix: export(item, nwb=True).")
        return export_item(self, row, nwb_metadata=nwb_metadata, dandi=dandi)

    # -- samples --------------------------------------------------------------------------------
    def promote(self, item: Any, sample: str, *, tags: Mapping[str, Any] | None = None,
                comments: str | None = None) -> Path:
        """Keep a (curated) item's results as a project sample named ``sample`` with ``tags``
        (``{"animal": "m12", "session": 3, "condition": "saline"}``): its ``results.h5`` is
        copied to ``samples/<sample>/``, so it stays when the item is removed or run again."""
        from ..io.atomic import atomic_path

        row = self.item(item)
        if row["status"] != "done" or row["algorithm"] == "mcorr":
            raise BatchError(f"item {row['name']!r} ({row['algorithm']}, {row['status']}) has no CNMF results. Fix: "
                             f"promote a cnmf/cnmfe item that is done.")
        if not sample or "/" in sample or sample.startswith("."):
            raise BatchError(f"sample name {sample!r} is not usable as a folder name. Fix: a plain name like "
                             f"'m12-day3'.")
        with db.sqlite_errors(self._con):
            exists = self._con.execute("SELECT 1 FROM samples WHERE name = ?", (sample,)).fetchone()
        if exists:
            raise BatchError(f"a sample named {sample!r} exists. Fix: choose another name, or remove it first.")
        folder = self.path / SAMPLES_DIR / sample
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / "results.h5"
        with atomic_path(dest) as tmp:
            shutil.copyfile(self.item_dir(row["uuid"]) / "results.h5", tmp)
        with db.transaction(self._con):
            self._con.execute("INSERT INTO samples (name, item, tags, comments, created, path) "
                              "VALUES (?, ?, ?, ?, ?, ?)",
                              (sample, row["uuid"], db.encode({"tags": dict(tags or {})})["tags"], comments, _now(),
                               dest.relative_to(self.path).as_posix()))
        return dest

    def samples(self) -> Any:
        """The project samples as a DataFrame: name, item, item_name, one column per tag,
        comments, created, path."""
        import json

        import pandas as pd

        names = {r["uuid"]: r["name"] for r in db.select_items(self._con)}
        recs = []
        with db.sqlite_errors(self._con):  # a locked or damaged file: one-line BatchError
            rows = self._con.execute("SELECT * FROM samples ORDER BY created").fetchall()
        for r in rows:
            rec = {"name": r["name"], "item": r["item"], "item_name": names.get(r["item"]),
                   **json.loads(r["tags"]), "comments": r["comments"], "created": r["created"],
                   "path": str(self.path / r["path"])}
            recs.append(rec)
        df = pd.DataFrame.from_records(recs)
        if len(df):
            df["created"] = pd.to_datetime(df["created"], unit="s", utc=True)
        return df

    def remove_sample(self, sample: str) -> None:
        with db.transaction(self._con):
            n = self._con.execute("DELETE FROM samples WHERE name = ?", (sample,)).rowcount
        if not n:
            raise BatchError(f"no sample named {sample!r}. Fix: see batch.samples().")
        shutil.rmtree(self.path / SAMPLES_DIR / sample, ignore_errors=True)

    # -- moving over from mesmerize -----------------------------------------------------------
    def import_mesmerize(self, source: Any, *, raw_data_root: str | os.PathLike[str] | None = None) -> list[str]:
        """Add the items of a mesmerize-core batch (its ``.pickle`` file or DataFrame, or the
        :class:`~somascope.batch.mesmerize.ItemSpec` list :func:`read_mesmerize_batch` made of
        it), keeping their uuids, names, parameters and comments; a CNMF item made from a
        motion-correction item's output is linked to that item. All are added in one
        transaction, queued."""
        from .mesmerize import ItemSpec, read_mesmerize_batch

        if isinstance(source, (list, tuple)) and all(isinstance(s, ItemSpec) for s in source):
            specs = list(source)
        else:
            specs = read_mesmerize_batch(source, raw_data_root=raw_data_root)
        for spec in specs:
            for note in spec.notes:
                log.info("mesmerize item %r: %s", spec.name, note)
        known = {r["uuid"] for r in db.select_items(self._con)}
        rows: list[dict[str, Any]] = []
        added: dict[str, dict[str, Any]] = {}
        for spec in specs:
            if spec.uuid in known:
                raise BatchError(f"item {spec.uuid} ({spec.name!r}) is already in this batch. Fix: import into a new "
                                 f"batch, or remove those items first.")
            if spec.input.get("item"):
                parent = added.get(spec.input["item"])
                if parent is None:
                    raise BatchError(f"mesmerize item {spec.name!r} reads item {spec.input['item']}, which is not in "
                                     f"the batch being imported.")
                algo = _check_algorithm(spec.algorithm)
                _check_params([*self.effective_layers(parent, rows=added), spec.params])
                row = {"uuid": spec.uuid, "name": spec.name, "algorithm": algo, "input": {"item": parent["uuid"]},
                       "params": dict(spec.params), "variant": {}, "status": "queued", "added": _now(),
                       "comments": spec.comments, "tags": {}}
            else:
                movie = Path(spec.input["movie"])
                if not movie.is_absolute() and self.raw_data_root is None and raw_data_root is not None:
                    movie = Path(raw_data_root) / movie
                row = self._new_row(movie, spec.algorithm, spec.params, spec.name, comments=spec.comments,
                                    uuid=spec.uuid)
            added[spec.uuid] = row
            rows.append(row)
        db.insert_items(self._con, rows)
        return [r["uuid"] for r in rows]


def _refs(items: Any) -> list[Any]:
    """Item references as a list: one reference (uuid, name, position, a row dict or a pandas
    row), a DataFrame of items (its ``uuid`` column) or any iterable of references."""
    if isinstance(items, (str, int, os.PathLike, Mapping)):
        return [items]
    columns = getattr(items, "columns", None)
    if columns is not None and "uuid" in columns:  # a DataFrame of items
        return list(items["uuid"])
    index = getattr(items, "index", None)
    if index is not None and not callable(index) and "uuid" in index:  # one row (a Series)
        return [items]
    return list(items)


def _input_text(inp: Mapping[str, Any]) -> str:
    return f"item:{inp['item']}" if inp.get("item") else str(inp.get("movie"))


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (list, tuple)) else "x".join(str(v) for v in value)
    return text if len(text) <= 20 else text[:17] + "…"


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
