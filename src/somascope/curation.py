"""Manual curation: a person's accept / reject decisions and notes, kept apart from the automatic
split, saved atomically, undone from a log, and re-applied when the components change.

State (``curation.json`` beside the results file; ``docs/results-schema.md``, "Curation")::

    {"format": "somascope-curation/1",
     "decisions": {"12": {"decision": "reject", "pixels": [...], "who": "ana", "when": "2025-…"}},
     "notes": {"12": {"text": "dendrite", "pixels": [...], "who": ..., "when": ...}},
     "unmatched": [{"kind": "decision" | "note", "k": 40, ...the entry...}],
     "log": [{"when", "who", "action", "components": [...], "before": {"12": {...}}}, ...]}

Keys are component indices (strings, JSON). ``pixels`` are the flat (C order) indices of the
component's *support* when the person decided: its pixels at least :data:`SUPPORT_FRAC` × its
maximum (:data:`somascope.metrics.MASK_FRAC`, the mask the matching and the quality tests use).
When the components change (the pipeline ran CNMF, refit or merging again), :func:`reapply`
moves each decision to the new component whose support has Jaccard index ≥ :data:`MATCH_JACCARD`
with the stored pixels (best match first, one decision per component); decisions that match
nothing stay in ``unmatched`` (tried again at the next re-application), never dropped.

The curated split is the automatic one (``auto_idx``: accepted indices of the quality tests)
with every manual decision applied (:func:`curated_split`). :func:`write_curated_results`
rewrites a results file with that split in its estimates and a ``/curation`` group, keeping the
previous file as ``<name>.prev.h5``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import getpass
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .metrics import MASK_FRAC

log = logging.getLogger("somascope.curation")

__all__ = ["FORMAT", "CURATION_FILE", "CURATION_GROUP", "SUPPORT_FRAC", "MATCH_JACCARD", "CurationError",
           "Reapplied", "new_state", "check_state", "load_curation", "save_curation", "curation_path", "previous_path",
           "supports", "manual_decisions", "note_texts", "curated_split", "change", "undo", "reapply",
           "apply_to_estimates", "write_curation_group", "read_curation_group", "write_curated_results",
           "reapply_for_results"]

#: Value of the ``format`` key of ``curation.json``.
FORMAT = "somascope-curation/1"
#: File name beside a run folder's ``results.h5`` (a bare ``X.h5`` has ``X.curation.json``).
CURATION_FILE = "curation.json"
#: Group of a results file that records the curation (``json``, ``auto_idx_components``).
CURATION_GROUP = "curation"
#: A component's support: pixels ≥ this fraction of its maximum.
SUPPORT_FRAC = MASK_FRAC
#: Smallest Jaccard index between stored pixels and a new component's support to re-apply.
MATCH_JACCARD = 0.5
#: Log actions that :func:`undo` can undo.
UNDOABLE = ("accept", "reject", "reset", "note", "curate")


class CurationError(ValueError):
    """A curation request or file is invalid; the message names the problem and the fix."""


@dataclass
class Reapplied:
    """What :func:`reapply` did: ``mapping`` old key → new component index of every decision and
    note that matched; ``unmatched`` the old keys (decisions and notes) that matched nothing;
    ``changed`` whether the state differs (anything moved or became unmatched or matched)."""

    mapping: dict[int, int] = field(default_factory=dict)
    unmatched: list[int] = field(default_factory=list)
    changed: bool = False


# -- state ------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _default_who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


def new_state() -> dict[str, Any]:
    """An empty curation: no decision, no note, an empty log."""
    return {"format": FORMAT, "decisions": {}, "notes": {}, "unmatched": [], "log": []}


def check_state(state: Any, where: str) -> dict[str, Any]:
    """``state`` completed with missing keys; :class:`CurationError` if it is not a curation."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CurationError(f"{where} is not a somascope curation (format {found!r}, expected {FORMAT!r}). "
                            "Fix: move it away; the viewer starts a new one.")
    out = new_state()
    out.update(state)
    for key in ("decisions", "notes"):
        if not isinstance(out[key], dict) or not all(str(k).isdigit() for k in out[key]):
            raise CurationError(f"{where}: '{key}' must map component indices to entries. Fix: correct or "
                                "move the file away.")
    bad = [k for k, v in out["decisions"].items() if not isinstance(v, dict)
           or v.get("decision") not in ("accept", "reject")]
    if bad:
        raise CurationError(f"{where}: decisions {bad[:5]} are neither 'accept' nor 'reject'. Fix: correct "
                            "or remove them.")
    return out


def load_curation(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The curation at ``path`` (a new, empty one if the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return new_state()
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CurationError(f"{p}: not readable JSON ({exc}). Fix: repair the file or move it away (its "
                            "decisions are then lost).") from None
    return check_state(state, str(p))


def save_curation(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (indented JSON, UTF-8)."""
    from .io.atomic import atomic_write_text

    return atomic_write_text(Path(path), json.dumps(state, indent=1, ensure_ascii=False) + "\n")


def curation_path(results_path: str | os.PathLike[str], run_folder: bool) -> Path:
    """``OUT/curation.json`` for a run folder or batch item, ``X.curation.json`` for a bare ``X.h5``."""
    p = Path(results_path)
    return p.parent / CURATION_FILE if run_folder else p.with_name(p.stem + ".curation.json")


def previous_path(results_path: str | os.PathLike[str]) -> Path:
    """Where the previous results file is kept: ``results.h5`` → ``results.prev.h5``."""
    p = Path(results_path)
    return p.with_name(p.stem + ".prev" + (p.suffix or ".h5"))


# -- footprint supports -------------------------------------------------------------------------
def supports(A: Any) -> sp.csc_matrix:
    """Binary supports (``pixels × K`` CSC of ones): pixels ≥ :data:`SUPPORT_FRAC` × each column's max."""
    from .metrics import binarise_footprints

    B = binarise_footprints(A, frac=SUPPORT_FRAC)
    B.sort_indices()
    return B


def _pixels(B: sp.csc_matrix, k: int) -> list[int]:
    return [int(i) for i in B.indices[B.indptr[k]:B.indptr[k + 1]]]


# -- reading the state ---------------------------------------------------------------------------
def manual_decisions(state: Mapping[str, Any]) -> dict[int, str]:
    """``{k: "accept" | "reject"}`` of the manual decisions."""
    return {int(k): v["decision"] for k, v in state["decisions"].items()}


def note_texts(state: Mapping[str, Any]) -> dict[int, str]:
    """``{k: text}`` of the notes."""
    return {int(k): v["text"] for k, v in state["notes"].items()}


def _auto_mask(auto_idx: np.ndarray | None, K: int) -> np.ndarray:
    mask = np.zeros(K, bool)
    if auto_idx is None:
        mask[:] = True
    else:
        mask[np.asarray(auto_idx, np.int64)] = True
    return mask


def curated_split(auto_idx: np.ndarray | None, K: int, state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(idx_components, idx_components_bad)``, sorted int64: the automatic split (``auto_idx``
    accepted; None: all accepted) with the manual decisions applied. Decisions on indices ≥ K
    (stale) are ignored."""
    mask = _auto_mask(auto_idx, K)
    for k, decision in manual_decisions(state).items():
        if 0 <= k < K:
            mask[k] = decision == "accept"
    return np.flatnonzero(mask).astype(np.int64), np.flatnonzero(~mask).astype(np.int64)


# -- changing the state --------------------------------------------------------------------------
def _indices(values: Any, K: int, what: str) -> list[int]:
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        raise CurationError(f"'{what}' must be a list of component indices, got {type(values).__name__}.")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) and not (isinstance(v, str) and v.isdigit()):
            raise CurationError(f"'{what}' holds {v!r}, not a component index. Fix: give integers 0..{K - 1}.")
        k = int(v)
        if not 0 <= k < K:
            raise CurationError(f"component {k} in '{what}' does not exist: there are K={K} (0..{K - 1}).")
        out.append(k)
    return sorted(set(out))


def _snapshot(state: Mapping[str, Any], keys: Iterable[int]) -> dict[str, Any]:
    """Each key's decision and note before a change (what :func:`undo` puts back)."""
    return {str(k): {"decision": copy.deepcopy(state["decisions"].get(str(k))),
                     "note": copy.deepcopy(state["notes"].get(str(k)))} for k in keys}


def change(state: Mapping[str, Any], A: Any, *, accept: Any = None, reject: Any = None, reset: Any = None,
           notes: Mapping[str, Any] | None = None, who: str | None = None) -> dict[str, Any]:
    """A new state with these manual decisions made and one log entry for them.

    ``accept`` / ``reject``: component indices decided by hand; ``reset``: indices whose manual
    decision is dropped (back to the automatic one); ``notes``: ``{k: text}`` (empty text removes
    the note). ``A`` (``pixels × K``) gives each decision its footprint support. Raises
    :class:`CurationError` for unknown indices, an index both accepted and rejected, or nothing
    to do.
    """
    A = sp.csc_matrix(A)
    K = A.shape[1]
    acc, rej, res = _indices(accept, K, "accept"), _indices(reject, K, "reject"), _indices(reset, K, "reset")
    clash = sorted(set(acc) & set(rej) | (set(acc) | set(rej)) & set(res))
    if clash:
        raise CurationError(f"components {clash[:10]} are given more than one of accept/reject/reset in one "
                            "request. Fix: give each component once.")
    if notes is not None and not isinstance(notes, Mapping):
        raise CurationError("'notes' must be an object {component index: text}.")
    note_items = {k: str(v if v is not None else "") for k, v in (notes or {}).items()}
    note_keys = _indices(list(note_items), K, "notes")
    if not (acc or rej or res or note_keys):
        raise CurationError("nothing to do: give 'accept', 'reject', 'reset' or 'notes'.")
    who = str(who)[:200] if who else _default_who()
    when = _now()
    touched = sorted(set(acc) | set(rej) | set(res) | set(note_keys))
    new = copy.deepcopy(dict(state))
    before = _snapshot(new, touched)
    B = supports(A) if (acc or rej or note_keys) else None
    for k, decision in [(k, "accept") for k in acc] + [(k, "reject") for k in rej]:
        new["decisions"][str(k)] = {"decision": decision, "pixels": _pixels(B, k), "who": who, "when": when}
    for k in res:
        new["decisions"].pop(str(k), None)
    for key, text in note_items.items():
        k = str(int(key))
        if text.strip():
            new["notes"][k] = {"text": text, "pixels": _pixels(B, int(k)), "who": who, "when": when}
        else:
            new["notes"].pop(k, None)
    kinds = [name for name, ks in (("accept", acc), ("reject", rej), ("reset", res), ("note", note_keys)) if ks]
    new["log"].append({"when": when, "who": who, "action": kinds[0] if len(kinds) == 1 else "curate",
                       "components": touched, "accept": acc, "reject": rej, "reset": res,
                       "notes": [k for k in note_keys], "before": before})
    return new


def _last_undoable(log_entries: list[dict[str, Any]]) -> int | None:
    undone = {e.get("undoes") for e in log_entries if e.get("action") == "undo"}
    for i in range(len(log_entries) - 1, -1, -1):
        action = log_entries[i].get("action")
        if action == "reapply":
            return None  # the indices before a re-application are another set of components
        if action in UNDOABLE and i not in undone:
            return i
    return None


def undo(state: Mapping[str, Any], who: str | None = None) -> dict[str, Any]:
    """A new state with the last change (of :func:`change`) not yet undone put back, and an
    ``undo`` log entry. :class:`CurationError` when there is nothing to undo (none, or only
    changes made before the components were recomputed)."""
    new = copy.deepcopy(dict(state))
    i = _last_undoable(new["log"])
    if i is None:
        raise CurationError("nothing to undo: no manual change since the components were last computed.")
    entry = new["log"][i]
    for k, prev in entry.get("before", {}).items():
        for kind, key in (("decision", "decisions"), ("note", "notes")):
            if prev.get(kind) is None:
                new[key].pop(k, None)
            else:
                new[key][k] = prev[kind]
    new["log"].append({"when": _now(), "who": str(who)[:200] if who else _default_who(), "action": "undo",
                       "undoes": i, "components": list(entry.get("components", []))})
    return new


# -- following the cells -----------------------------------------------------------------------
def _match(pixel_sets: list[list[int]], B: sp.csc_matrix) -> list[tuple[int, int, float]]:
    """``(item, component, jaccard)`` of every pair with Jaccard ≥ :data:`MATCH_JACCARD`."""
    if not pixel_sets or B.shape[1] == 0:
        return []
    rows = np.concatenate([np.asarray(p, np.int64) for p in pixel_sets] + [np.zeros(0, np.int64)])
    rows = np.clip(rows, 0, B.shape[0] - 1)  # pixels of another field of view cannot match anyway
    cols = np.repeat(np.arange(len(pixel_sets)), [len(p) for p in pixel_sets])
    M = sp.csc_matrix((np.ones(rows.size), (rows, cols)), shape=(B.shape[0], len(pixel_sets)))
    M.data[:] = 1.0  # duplicates summed by the constructor
    inter = (M.T @ B).tocoo()
    size_m = np.asarray(M.sum(axis=0)).ravel()
    size_b = np.asarray(B.sum(axis=0)).ravel()
    jac = inter.data / (size_m[inter.row] + size_b[inter.col] - inter.data)
    ok = jac >= MATCH_JACCARD
    return list(zip(inter.row[ok].tolist(), inter.col[ok].tolist(), jac[ok].tolist()))


def _assign(entries: list[tuple[int, dict[str, Any]]], B: sp.csc_matrix) -> tuple[dict[int, int], list[int]]:
    """Greedy best-first one-to-one assignment of ``(old key, entry)`` to components."""
    pairs = _match([e.get("pixels") or [] for _, e in entries], B)
    pairs.sort(key=lambda p: (-p[2], abs(entries[p[0]][0] - p[1]), p[1]))
    taken_items: dict[int, int] = {}
    taken_comps: set[int] = set()
    for item, comp, _ in pairs:
        if item in taken_items or comp in taken_comps:
            continue
        taken_items[item] = comp
        taken_comps.add(comp)
    unmatched = [i for i in range(len(entries)) if i not in taken_items]
    return taken_items, unmatched


def reapply(state: Mapping[str, Any], A: Any) -> tuple[dict[str, Any], Reapplied]:
    """Move decisions and notes (and earlier unmatched ones) onto the components of ``A``
    (``pixels × K``) by footprint support (module docstring). Returns the new state and what
    happened; the state is unchanged (``changed`` False) when every entry stays on its index."""
    A = sp.csc_matrix(A)
    B = supports(A)
    new = copy.deepcopy(dict(state))
    result = Reapplied()
    old_unmatched = new.get("unmatched", [])
    new_unmatched: list[dict[str, Any]] = []
    for kind, key in (("decision", "decisions"), ("note", "notes")):
        entries = [(int(k), v) for k, v in sorted(new[key].items(), key=lambda kv: int(kv[0]))]
        n_current = len(entries)
        entries += [(int(u.get("k", -1)), {k: v for k, v in u.items() if k not in ("kind", "k")})
                    for u in old_unmatched if u.get("kind") == kind]
        assigned, lost = _assign(entries, B)
        placed: dict[str, Any] = {}
        for i, comp in assigned.items():
            old_k, entry = entries[i]
            placed[str(comp)] = entry
            if i < n_current:
                result.mapping[old_k] = comp
                result.changed |= old_k != comp
            else:
                result.changed = True  # an unmatched entry found its cell again
        for i in lost:
            old_k, entry = entries[i]
            new_unmatched.append({"kind": kind, "k": old_k, **entry})
            if i < n_current:
                result.unmatched.append(old_k)
                result.changed = True
        new[key] = dict(sorted(placed.items(), key=lambda kv: int(kv[0])))
    new["unmatched"] = new_unmatched
    if result.changed:
        moved = {str(k): v for k, v in result.mapping.items() if k != v}
        new["log"].append({"when": _now(), "who": "somascope", "action": "reapply", "components": sorted(
            {int(k) for k in new["decisions"]} | {int(k) for k in new["notes"]}), "moved": moved,
            "unmatched": sorted(set(result.unmatched)), "K": int(A.shape[1])})
        return new, result
    return copy.deepcopy(dict(state)), result


# -- estimates and results files -------------------------------------------------------------------
def apply_to_estimates(est: Any, state: Mapping[str, Any], auto_idx: np.ndarray | None = None) -> Any:
    """``est`` (a new :class:`~somascope.cnmf.estimates.Estimates`) with the curated split;
    ``auto_idx`` defaults to ``est.idx_components`` (the automatic split)."""
    import dataclasses

    auto = est.idx_components if auto_idx is None else auto_idx
    good, bad = curated_split(auto, est.K, state)
    return dataclasses.replace(est, idx_components=good, idx_components_bad=bad)


def write_curation_group(fh: Any, state: Mapping[str, Any], auto_idx: np.ndarray | None, K: int) -> None:
    """Write the ``/curation`` group into an open, writable h5py file: datasets ``json`` (the
    curation, UTF-8 text) and ``auto_idx_components`` (int64, the automatic accepted indices);
    attributes ``format``, ``written_at``, ``n_decisions``."""
    import h5py

    if CURATION_GROUP in fh:
        del fh[CURATION_GROUP]
    g = fh.create_group(CURATION_GROUP)
    g.attrs["format"] = FORMAT
    g.attrs["written_at"] = _now()
    g.attrs["n_decisions"] = np.int64(len(state["decisions"]))
    g.create_dataset("json", data=json.dumps(state, ensure_ascii=False), dtype=h5py.string_dtype("utf-8"))
    auto = np.arange(K, dtype=np.int64) if auto_idx is None else np.asarray(auto_idx, np.int64)
    ds = g.create_dataset("auto_idx_components", data=auto)
    ds.attrs["description"] = "accepted components of the automatic quality tests, before manual curation"


def read_curation_group(fh: Any) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """``(state, auto_idx)`` of an open h5py file's ``/curation`` group; ``(None, None)`` without one."""
    if CURATION_GROUP not in fh:
        return None, None
    g = fh[CURATION_GROUP]
    text = g["json"][()] if "json" in g else None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    state = None if text is None else json.loads(text)
    auto = g["auto_idx_components"][()].astype(np.int64) if "auto_idx_components" in g else None
    return state, auto


def _estimates_group(fh: Any) -> Any:
    if fh.attrs.get("format") is not None:
        return fh
    if "estimates" in fh:
        return fh["estimates"]
    raise CurationError(f"{fh.filename} holds no somascope estimates (no /estimates group). Fix: open a results "
                        "file written by somascope run or Estimates.save.")


def _replace_index(g: Any, name: str, values: np.ndarray) -> None:
    attrs = dict(g[name].attrs) if name in g else {}
    if name in g:
        del g[name]
    ds = g.create_dataset(name, data=np.asarray(values, np.int64))
    for key, value in attrs.items():
        ds.attrs[key] = value
    if "units" not in attrs:
        ds.attrs["units"] = "index"
        ds.attrs["description"] = ("indices of accepted components, into 0..K-1" if name == "idx_components"
                                   else "indices of rejected components, into 0..K-1")


def _keep_previous(path: Path) -> Path:
    """Make ``<name>.prev.h5`` the current ``path`` (a hard link, else a copy), atomically."""
    from .io.atomic import atomic_path

    prev = previous_path(path)
    with atomic_path(prev) as tmp:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
    return prev


def write_curated_results(path: str | os.PathLike[str], state: Mapping[str, Any], auto_idx: np.ndarray | None,
                          K: int) -> Path:
    """Rewrite the results file ``path`` atomically with the curated split in its estimates
    (``idx_components`` / ``idx_components_bad``) and the ``/curation`` group; every other group
    and attribute is copied unchanged. The file as it was is kept as ``<name>.prev.h5``.
    ``K``: the number of components the state refers to (checked against the file)."""
    import h5py

    from .io.atomic import atomic_path

    p = Path(path)
    good, bad = curated_split(auto_idx, K, state)
    with atomic_path(p) as tmp:
        with h5py.File(p, "r") as src, h5py.File(tmp, "w") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                if name != CURATION_GROUP:
                    src.copy(src[name], dst, name=name)
            g = _estimates_group(dst)
            k_file = int(g["A"].attrs["shape"][1])
            if k_file != K:
                raise CurationError(f"{p} now holds {k_file} components, the curation was made on {K}: the file "
                                    "changed on disk (a pipeline rerun?). Fix: restart somascope view.")
            _replace_index(g, "idx_components", good)
            _replace_index(g, "idx_components_bad", bad)
            write_curation_group(dst, state, auto_idx, K)
        _keep_previous(p)
    return p


def reapply_for_results(out: str | os.PathLike[str], est: Any) -> tuple[Any, tuple[dict[str, Any], np.ndarray] | None]:
    """The pipeline's ``results`` stage: re-apply ``OUT/curation.json`` (if any) to the new ``est``.

    Returns ``(est with the curated split, (state, auto_idx))``, or ``(est, None)`` without a
    curation. The state is re-applied to ``est.A`` (:func:`reapply`) and, if that changed it,
    saved back to ``OUT/curation.json``; decisions that match no component are logged as a
    warning and kept in the file.
    """
    path = Path(out) / CURATION_FILE
    if not path.is_file():
        return est, None
    try:
        state = load_curation(path)
    except CurationError as exc:
        raise CurationError(f"{exc} (the results stage re-applies the manual curation; it will not silently "
                            "drop it)") from None
    state, what = reapply(state, est.A)
    if what.changed:
        save_curation(path, state)
    if what.unmatched:
        log.warning("curation: %d manual decision(s)/note(s) on components %s match no new component "
                    "(footprint Jaccard < %.1f); kept in %s, not applied", len(what.unmatched),
                    sorted(set(what.unmatched))[:20], MATCH_JACCARD, path)
    moved = sum(1 for k, v in what.mapping.items() if k != v)
    log.info("curation: %d manual decision(s) re-applied (%d moved to new indices)", len(state["decisions"]), moved)
    auto = est.idx_components if est.idx_components is not None else np.arange(est.K, dtype=np.int64)
    return apply_to_estimates(est, state, auto), (state, np.asarray(auto, np.int64))
