"""Read a mesmerize-core batch into plain item specs for somascope's batch manager.

mesmerize-core (the batch manager built on CaImAn) keeps a batch as one pandas DataFrame written
with ``DataFrame.to_pickle`` to a ``.pickle`` file, one row per item:

``algo``
    ``"mcorr"`` (NoRMCorre), ``"cnmf"`` or ``"cnmfe"`` — the only algorithms mesmerize-core runs.
``item_name``, ``comments``, ``uuid``
    the user's name for the item, free text, and a ``uuid4`` string naming the item's output
    folder ``<batch folder>/<uuid>/``.
``input_movie_path``
    a string: relative to the batch folder when the movie lies in it (the motion-corrected movie
    of an mcorr item, ``<uuid>/<uuid>-<movie>_els__d1_…_order_F_frames_….mmap``), else relative to
    mesmerize-core's *parent raw data path* (``set_parent_raw_data_path``); absolute in old or
    hand-edited batches.
``params``
    ``{"main": {...CaImAn parameters...}}``, with ``"refit": True`` for a cnmf item that refits;
    early mesmerize-core versions used ``{"mcorr_kwargs": {...}}``, ``{"cnmf_kwargs": {...},
    "eval_kwargs": {...}}``. :meth:`somascope.params.Params.from_dict` reads all of these.
``outputs``, ``added_time``, ``ran_time``, ``algo_duration``
    None until the item ran; then a dict with ``success``, ``traceback`` and output paths.

:func:`read_mesmerize_batch` turns the rows into :class:`ItemSpec` objects, each the plain
description of one item to add to a somascope batch:

* A cnmf/cnmfe (or mcorr) item whose input is the motion-corrected movie of an mcorr item of the
  same batch gets ``input = {"item": <that item's uuid>}``; the movie is recognised by the mcorr
  item's recorded ``mcorr-output-path``, else by a ``.mmap`` file inside that item's ``<uuid>/``
  folder or named ``<uuid>…`` (the layout of older versions). The list is ordered so that an item
  comes after the item it reads (mcorr before cnmf); otherwise the batch's order is kept.
* Other inputs become ``{"movie": path}``. A relative path is kept relative: somascope resolves it
  against its raw-data root, so set that root to mesmerize-core's parent raw data path (pass the
  same folder as ``raw_data_root`` to have missing movies noted). An absolute path under
  ``raw_data_root`` is made relative to it. A relative path into the batch folder (a file that is
  not an mcorr output) is made absolute when the batch folder is known.
* ``params`` is a copy of the mesmerize dict, numpy values made plain Python. Keys are not
  dropped: the batch manager validates them. mesmerize-core runs every cnmfe item with
  ``method_init="corr_pnr"``, ``only_init=True``, ``center_psf=True`` and
  ``normalize_init=False`` unless ``main`` says otherwise; those it did not store are added, so
  the item stays a one-photon CNMF-E run here.
* ``notes`` says, in words, what was added, guessed or not carried over: implicit CNMF-E settings,
  a missing name or uuid, keys somascope ignores or rejects, results mesmerize-core computed (they
  are not imported: somascope runs the item again), extra columns.
* An ``algo`` other than mcorr/cnmf/cnmfe is an error naming the rows (decided over skipping them
  silently): drop those rows from the DataFrame and pass the DataFrame.

The pickle is read with an allow-list unpickler: only the pandas, numpy and plain Python types a
batch DataFrame is made of can be loaded, and any other global (``os.system``, a class of another
package, a pandas reader or writer) stops the reading before anything is called.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import logging
import math
import os
import pickle
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..io.suite2p import _allowed as _plain_allow_list
from ..params import IGNORED_KEYS, ParameterError, Params
from .db import BatchError

__all__ = ["ALGORITHMS", "ItemSpec", "MesmerizeBatchError", "read_mesmerize_batch"]

#: the algorithms mesmerize-core runs
ALGORITHMS = ("mcorr", "cnmf", "cnmfe")
#: the columns mesmerize-core writes
MESMERIZE_COLUMNS = ("algo", "item_name", "input_movie_path", "params", "outputs", "added_time",
                     "ran_time", "algo_duration", "comments", "uuid")
#: the columns an item cannot be converted without
REQUIRED_COLUMNS = ("algo", "params", "input_movie_path", "uuid")
#: settings mesmerize-core's cnmfe runner uses unless the item's ``main`` parameters set them
CNMFE_IMPLICIT: dict[str, Any] = {"method_init": "corr_pnr", "only_init": True, "center_psf": True,
                                  "normalize_init": False}
# top-level keys of a mesmerize params dict, all understood by Params.from_dict
_PARAM_KEYS = frozenset({"main", "refit", "eval", "mcorr_kwargs", "cnmf_kwargs", "cnmfe_kwargs",
                         "eval_kwargs"})


class MesmerizeBatchError(BatchError):
    """A mesmerize-core batch cannot be read or converted; the message names the problem and the fix."""


@dataclass
class ItemSpec:
    """One item to add to a somascope batch, converted from a mesmerize-core row.

    Attributes:
        name: the item's name (mesmerize ``item_name``).
        algorithm: ``"mcorr"``, ``"cnmf"`` or ``"cnmfe"``.
        input: ``{"movie": path}`` (relative to the raw-data root, or absolute) or
            ``{"item": uuid}`` (the output of another spec of the same batch).
        params: the mesmerize parameter dict, for :meth:`somascope.params.Params.from_dict`.
        uuid: the mesmerize uuid, kept so outputs and links stay recognisable.
        comments: the mesmerize comments, or None.
        notes: what the conversion added, guessed or did not carry over, in words.
    """

    name: str
    algorithm: str
    input: dict
    params: dict
    uuid: str
    comments: str | None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- public entry


def read_mesmerize_batch(source: Any, *, raw_data_root: str | os.PathLike[str] | None = None
                         ) -> list[ItemSpec]:
    """The items of a mesmerize-core batch as :class:`ItemSpec` objects (module docstring).

    Args:
        source: the batch ``.pickle`` file, or the batch DataFrame already loaded.
        raw_data_root: the folder somascope resolves relative movie paths against (normally
            mesmerize-core's parent raw data path); absolute movie paths under it become relative.

    Returns:
        one spec per row; an item reading another item's output comes after it.

    Raises:
        MesmerizeBatchError: the file is not a mesmerize-core batch, holds objects other than a
            batch's (refused unread), lacks a required column, or has an unknown algorithm or
            duplicate uuids.
        FileNotFoundError: ``source`` names no file.
    """
    frame, batch_dir = _load_frame(source)
    _check_columns(frame)
    root = Path(raw_data_root).expanduser() if raw_data_root is not None else None
    rows = frame.to_dict(orient="records")
    _check_algorithms(rows)
    ids, id_notes = _item_uuids(rows)
    outputs = {u: _output_path(row) for u, row in zip(ids, rows) if _algo(row) == "mcorr"}
    extra = [c for c in frame.columns if c not in MESMERIZE_COLUMNS]
    item_ids = set(ids)
    specs = [_spec(row, item_id, notes, outputs=outputs, item_ids=item_ids, batch_dir=batch_dir,
                   root=root, extra=extra) for row, item_id, notes in zip(rows, ids, id_notes)]
    return _ordered(specs)


# ----------------------------------------------------------------------------- loading


def _load_frame(source: Any) -> tuple[Any, Path | None]:
    """The batch DataFrame and the batch folder (None when unknown)."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        batch_path = source.attrs.get("batch_path")  # set by mesmerize-core's load/create_batch
        return source, Path(str(batch_path)).parent if isinstance(batch_path, (str, PurePath)) else None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be the path of a mesmerize-core batch .pickle file or a pandas "
                        f"DataFrame, got {type(source).__name__}.")
    path = Path(source).expanduser()
    if path.is_dir():
        raise MesmerizeBatchError(f"{path}: is a folder; pass the batch .pickle file in it (the file "
                                  "given to mesmerize-core's load_batch).")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mesmerize-core batch file; check the path.")
    frame = _unpickle(path)
    if not isinstance(frame, pd.DataFrame):
        raise MesmerizeBatchError(f"{path}: holds a {type(frame).__name__}, not a pandas DataFrame, so it "
                                  "is not a mesmerize-core batch; pass the .pickle file of the batch.")
    return frame, path.parent


def _unpickle(path: Path) -> Any:
    """The object pickled in ``path``, loaded with :class:`_BatchUnpickler`."""
    try:
        with open(path, "rb") as fh:
            return _BatchUnpickler(fh).load()
    except MesmerizeBatchError as exc:
        raise MesmerizeBatchError(f"{path}: {exc}") from None
    except Exception as exc:  # damaged or foreign files raise many types
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MesmerizeBatchError(f"{path}: not a readable mesmerize-core batch ({text}); pass the "
                                  "batch's .pickle file, or load it with pandas.read_pickle and pass "
                                  "the DataFrame.") from exc


# where a pickle may name a pandas class or unpickling helper (public namespaces re-export them)
_PANDAS_NAMESPACES = ("pandas", "pandas.arrays", "pandas.core", "pandas._libs")
# the pandas base classes of what a DataFrame is made of: frames, indexes, block managers,
# blocks, extension arrays and dtypes, datetime scalars and offsets, missing-value markers
_PANDAS_BASES = (("pandas.core.generic", "NDFrame"), ("pandas.core.indexes.base", "Index"),
                 ("pandas.core.internals.managers", "BaseBlockManager"),
                 ("pandas.core.internals.managers", "BlockManager"),
                 ("pandas.core.internals.blocks", "Block"), ("pandas._libs.internals", "Block"),
                 ("pandas._libs.internals", "BlockPlacement"),
                 ("pandas.core.arrays.base", "ExtensionArray"),
                 ("pandas.core.dtypes.base", "ExtensionDtype"),
                 ("pandas._libs.arrays", "NDArrayBacked"), ("pandas._libs.tslibs.offsets", "BaseOffset"),
                 ("pandas._libs.sparse", "SparseIndex"), ("pandas.core.flags", "Flags"),
                 ("pandas", "Timestamp"), ("pandas", "Timedelta"), ("pandas", "Period"),
                 ("pandas", "Interval"))
_PATH_CLASSES = ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _pandas_bases() -> tuple[type, ...]:
    """The classes of :data:`_PANDAS_BASES` this pandas has (their names move between versions)."""
    import pandas as pd

    found: list[type] = [type(pd.NaT), type(pd.NA)]
    for module, name in _PANDAS_BASES:
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, type):
            found.append(obj)
    return tuple(found)


def _pandas_helper(name: str) -> bool:
    """Names of the functions pandas pickles call to rebuild its objects."""
    return "unpickle" in name or name.startswith("_new_") or name == "new_block"


def _pandas_global(module: str, name: str) -> Any | None:
    """A pandas data class or unpickling helper a DataFrame pickle may name, else None.

    Classes are judged by their bases (pandas ≥ 3 reports ``__module__ == "pandas"`` for the
    public ones, readers and writers included); functions by name and defining module."""
    if not _in(module, _PANDAS_NAMESPACES) or "." in name:
        return None
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type):
        if _BatchUnpickler.bases is None:
            _BatchUnpickler.bases = _pandas_bases()
        return obj if issubclass(obj, _BatchUnpickler.bases) else None
    home = getattr(obj, "__module__", None) or ""
    helper = callable(obj) and _pandas_helper(name) and _in(home, ("pandas.core", "pandas._libs"))
    return obj if helper else None


def _plain_global(module: str, name: str) -> Any | None:
    """A numpy, builtin, datetime, path, UUID … global a DataFrame pickle may name, else None."""
    table = _BatchUnpickler.table
    if table is None:
        table = _BatchUnpickler.table = {**_plain_allow_list(), ("uuid", "UUID"): uuidlib.UUID}
        for builtin in ("list", "dict", "tuple", "str", "int", "float", "bool"):
            table[("builtins", builtin)] = getattr(__import__("builtins"), builtin)
    if module == "pathlib._local" and name in _PATH_CLASSES:  # pickled by Python >= 3.13
        module = "pathlib"
    return table.get((module, name))


def _pandas_renames() -> dict[tuple[str, str], tuple[str, str]]:
    """pandas' own map of classes moved since the pickle was written (empty if it has none)."""
    try:
        from pandas.compat import pickle_compat
    except ImportError:
        return {}
    return dict(getattr(pickle_compat, "_class_locations_map", {}))


def _unpickler_base() -> type:
    """pandas' compatibility unpickler (reads pickles of older pandas), else the standard one."""
    try:
        from pandas.compat.pickle_compat import Unpickler
    except ImportError:
        return pickle.Unpickler
    usable = isinstance(Unpickler, type) and issubclass(Unpickler, (pickle.Unpickler, pickle._Unpickler))
    return Unpickler if usable else pickle.Unpickler


class _BatchUnpickler(_unpickler_base()):  # type: ignore[misc]
    """Unpickles only what a batch DataFrame is made of; raises on any other global."""

    table: dict[tuple[str, str], Any] | None = None
    bases: tuple[type, ...] | None = None
    renames: dict[tuple[str, str], tuple[str, str]] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _BatchUnpickler.renames is None:
            _BatchUnpickler.renames = _pandas_renames()
        named = f"{module}.{name}"
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol < 3)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module, name = _BatchUnpickler.renames.get((module, name), (module, name))
        obj = _plain_global(module, name)
        if obj is None:
            obj = _pandas_global(module, name)
        if obj is None:
            raise MesmerizeBatchError(
                f"refused to load {named}: a mesmerize-core batch holds only pandas, numpy and plain "
                "Python objects, so this file may not be a mesmerize batch (or holds objects other "
                "code added). Unpickling it could run code; nothing was run. If you trust the file, "
                "load it with pandas.read_pickle and pass the DataFrame.")
        return obj


# ----------------------------------------------------------------------------- checks


def _check_columns(frame: Any) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        have = ", ".join(map(str, frame.columns)) or "none"
        raise MesmerizeBatchError(
            f"not a mesmerize-core batch: column(s) {', '.join(missing)} missing (it has: {have}). "
            f"A mesmerize-core batch DataFrame has the columns {', '.join(MESMERIZE_COLUMNS)}; pass "
            "the DataFrame mesmerize-core's load_batch returns, or its .pickle file.")


def _algo(row: Mapping[str, Any]) -> str:
    value = row.get("algo")
    return "" if _missing(value) else str(value).strip().lower()


def _check_algorithms(rows: list[dict[str, Any]]) -> None:
    bad = [(i, row.get("algo")) for i, row in enumerate(rows) if _algo(row) not in ALGORITHMS]
    if bad:
        listed = "; ".join(f"row {i}: {algo!r}" for i, algo in bad[:10])
        raise MesmerizeBatchError(
            f"{len(bad)} item(s) have an algorithm somascope cannot convert ({listed}); mesmerize-core "
            f"runs only {', '.join(ALGORITHMS)}. Drop those rows (df = df[df['algo'].isin("
            f"{list(ALGORITHMS)})]) and pass the DataFrame.")


def _item_uuids(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Each row's uuid (a new one, noted, where missing); error on duplicates."""
    ids: list[str] = []
    notes: list[list[str]] = []
    for row in rows:
        value = row.get("uuid")
        if _missing(value) or not str(value).strip():
            ids.append(str(uuidlib.uuid4()))
            notes.append([f"the mesmerize item had no uuid; a new one was made ({ids[-1]})"])
        else:
            ids.append(str(value).strip())
            notes.append([])
    seen: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise MesmerizeBatchError(
                f"rows {seen[item_id]} and {i} have the same uuid {item_id}; a mesmerize-core batch "
                "names each item once. Remove the duplicate row and pass the DataFrame.")
        seen[item_id] = i
    return ids, notes


# ----------------------------------------------------------------------------- conversion


def _spec(row: dict[str, Any], item_id: str, notes: list[str], *, outputs: dict[str, str | None],
          item_ids: set[str], batch_dir: Path | None, root: Path | None,
          extra: list[str]) -> ItemSpec:
    """The spec of one row."""
    algo = _algo(row)
    raw_input = row.get("input_movie_path")
    if _missing(raw_input) or not str(raw_input).strip():
        raise MesmerizeBatchError(f"item {item_id} ({algo}) has no input_movie_path; give it the "
                                  "movie path, or drop the row, and pass the DataFrame.")
    input_text = str(raw_input).strip()
    parent = _parent_item(input_text, item_id, outputs)
    if parent is not None:
        item_input: dict[str, str] = {"item": parent}
    else:
        item_input = {"movie": _movie_path(input_text, item_ids, batch_dir, root, notes)}
    name = _name(row, algo, item_id, input_text, notes)
    params = _params(row.get("params"), algo, notes)
    notes += _run_notes(row) + _extra_notes(row, extra)
    comments = None if _missing(row.get("comments")) else str(row["comments"])
    return ItemSpec(name=name, algorithm=algo, input=item_input, params=params, uuid=item_id,
                    comments=comments, notes=notes)


def _name(row: dict[str, Any], algo: str, item_id: str, input_text: str, notes: list[str]) -> str:
    value = row.get("item_name")
    if not _missing(value) and str(value).strip():
        return str(value)
    name = _pure(input_text).stem or f"{algo}-{item_id[:8]}"
    notes.append(f"the mesmerize item had no item_name; named {name!r} after its input")
    return name


def _output_path(row: dict[str, Any]) -> str | None:
    """The motion-corrected movie an mcorr row recorded, in forward-slash form, or None."""
    outputs = row.get("outputs")
    if not isinstance(outputs, Mapping) or _missing(outputs.get("mcorr-output-path")):
        return None
    return _pure(str(outputs["mcorr-output-path"])).as_posix()


def _parent_item(input_text: str, own_id: str, outputs: dict[str, str | None]) -> str | None:
    """The uuid of the mcorr item whose motion-corrected movie ``input_text`` names, or None."""
    path = _pure(input_text)
    posix = path.as_posix()
    for item_id, output in outputs.items():
        if item_id != own_id and output and (posix == output or posix.endswith("/" + output)):
            return item_id
    if path.suffix.lower() != ".mmap":
        return None
    folder = path.parent.name
    candidates = [u for u in outputs if u != own_id]
    found = [u for u in candidates if folder == u] or [u for u in candidates if path.name.startswith(u)]
    return found[0] if found else None


def _movie_path(text: str, item_ids: set[str], batch_dir: Path | None, root: Path | None,
                notes: list[str]) -> str:
    """A movie path for the spec: relative to ``root`` where it can be, else absolute."""
    path = _pure(text)
    if not path.is_absolute():
        in_batch = bool(path.parts) and path.parts[0] in item_ids
        if batch_dir is not None and (in_batch or (batch_dir / path.as_posix()).exists()):
            path = _pure(str(batch_dir / path.as_posix()))
            notes.append(f"its input {text!r} lies in the mesmerize batch folder; stored as the "
                         f"absolute path {path}")
        elif in_batch:
            notes.append(f"its input {text!r} lies in the output folder of mesmerize item "
                         f"{path.parts[0]}, relative to the batch folder, which is not known here; "
                         "pass the batch's .pickle file instead of the DataFrame, or fix the path")
            return path.as_posix()
        else:
            if root is not None and not (root / path.as_posix()).exists():
                notes.append(f"its movie {path.as_posix()!r} was not found under the raw-data root "
                             f"{root}; mesmerize-core stored it relative to its parent raw data "
                             "path, so use that folder as the raw-data root")
            return path.as_posix()
    if root is not None:
        relative = _relative_to(path, root)
        if relative is not None:
            return relative
    if isinstance(path, PureWindowsPath) and os.name != "nt":
        notes.append(f"its movie {text!r} is a Windows path; make it reachable from this machine")
    return str(path)


def _relative_to(path: PurePath, root: Path) -> str | None:
    """``path`` relative to ``root`` in forward-slash form, or None when it is not under it."""
    if type(path) is not type(PurePath(str(root))):
        return None
    norm = type(path)(os.path.normpath(str(path)))
    try:
        return norm.relative_to(os.path.normpath(os.path.abspath(root))).as_posix()
    except ValueError:
        return None


def _params(raw: Any, algo: str, notes: list[str]) -> dict[str, Any]:
    """A plain copy of the mesmerize parameters, with the notes on what is unusual in them."""
    if _missing(raw):
        notes.append("the mesmerize item had no parameters; somascope's defaults will be used")
        params: dict[str, Any] = {}
    elif not isinstance(raw, Mapping):
        raise MesmerizeBatchError(f"the params of a {algo} item are a {type(raw).__name__}, not a "
                                  "dict such as {'main': {...}}; fix the row and pass the DataFrame.")
    else:
        params = _plain(raw)
    odd = sorted(str(k) for k in params if k not in _PARAM_KEYS)
    if odd:
        notes.append(f"unusual top-level parameter key(s) {', '.join(odd)} kept (a mesmerize "
                     "params dict has 'main', and 'refit' for cnmf)")
    if "refit" in params and algo != "cnmf":
        notes.append(f"'refit' kept, though mesmerize-core applies it only to cnmf items, not {algo}")
    if algo == "cnmfe":
        _add_cnmfe_implicit(params, notes)
    ignored = sorted(_ignored_keys(params))
    if ignored:
        notes.append(f"parameter(s) with no meaning in somascope, ignored when it runs: "
                     f"{', '.join(ignored)}")
    problem = _params_problem(params)
    if problem:
        notes.append(f"somascope.params does not accept these parameters as they are: {problem}")
    return params


def _add_cnmfe_implicit(params: dict[str, Any], notes: list[str]) -> None:
    """Store the CNMF-E settings mesmerize-core applies to cnmfe items when not given."""
    container = params.get("main", params.get("cnmfe_kwargs"))
    if container is None:
        container = params.setdefault("main", {})
    if not isinstance(container, dict):
        return  # Params.from_dict reports it
    try:
        given: set[str] | None = Params.given_keys(params)
    except ParameterError:
        given = None
    added = {}
    for key, value in CNMFE_IMPLICIT.items():
        present = (key in container) if given is None else Params.given_keys({key: value}) <= given
        if not present:
            container[key] = value
            added[key] = value
    if added:
        notes.append("added the settings mesmerize-core's cnmfe runner uses when not given: "
                     + ", ".join(f"{k}={v!r}" for k, v in added.items()))


def _ignored_keys(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in params.items():
        if key in IGNORED_KEYS:
            found.append(prefix + str(key))
        elif isinstance(value, Mapping):
            found += _ignored_keys(value, f"{prefix}{key}.")
    return found


def _params_problem(params: dict[str, Any]) -> str | None:
    """Why :meth:`Params.from_dict` rejects ``params``, or None when it accepts them."""
    logger = logging.getLogger(Params.__module__)
    level = logger.level
    logger.setLevel(logging.ERROR)  # ignored keys are noted already
    try:
        Params.from_dict(params)
    except (ParameterError, TypeError, ValueError) as exc:
        return " ".join(str(exc).split())
    finally:
        logger.setLevel(level)
    return None


def _run_notes(row: dict[str, Any]) -> list[str]:
    outputs = row.get("outputs")
    if not isinstance(outputs, Mapping):
        return []
    when = "" if _missing(row.get("ran_time")) else f" on {row['ran_time']}"
    outcome = "succeeded" if outputs.get("success") is True else "failed"
    return [f"mesmerize-core ran this item{when} and it {outcome}; its CaImAn results are not "
            "imported: somascope runs the item again"]


def _extra_notes(row: dict[str, Any], extra: list[str]) -> list[str]:
    notes = []
    for column in extra:
        value = row.get(column)
        if not _missing(value):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:79] + "…"
            notes.append(f"column {column!r} = {shown} not carried over")
    return notes


def _ordered(specs: list[ItemSpec]) -> list[ItemSpec]:
    """``specs`` in their order, each moved after the item it reads (depth first)."""
    by_id = {s.uuid: s for s in specs}
    out: list[ItemSpec] = []
    done: set[str] = set()

    def place(spec: ItemSpec, chain: tuple[str, ...]) -> None:
        if spec.uuid in done:
            return
        if spec.uuid in chain:
            raise MesmerizeBatchError(f"items {' → '.join(chain)} read each other's outputs in a "
                                      "circle; fix their input_movie_path and pass the DataFrame.")
        parent = spec.input.get("item")
        if parent is not None:
            place(by_id[parent], chain + (spec.uuid,))
        done.add(spec.uuid)
        out.append(spec)

    for spec in specs:
        place(spec, ())
    return out


# ----------------------------------------------------------------------------- small helpers


def _missing(value: Any) -> bool:
    """None, NaN, NaT or pandas.NA (how pandas fills an empty cell)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def _pure(text: str) -> PurePath:
    """``text`` as a pure path of the flavour it was written in (Windows if it looks like one)."""
    windows = "\\" in text or (len(text) > 1 and text[1] == ":" and text[0].isalpha())
    return PureWindowsPath(text) if windows else PurePosixPath(text)


def _plain(value: Any) -> Any:
    """A deep copy with numpy scalars and arrays as Python values and paths as strings."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    return value
