"""Stage manifests: what a finished stage was computed from, and whether it can be reused.

Every finished stage folder ``OUT/stages/<name>/`` holds ``manifest.json``, written last and
atomically. Its *identity* is

- ``inputs``: for ``motion`` the movie's fingerprint (paths, sizes, modification times,
  shape, dtype, channel/plane selection); for later stages nothing beyond their upstreams;
- ``params``: the dotted parameter values the stage depends on (``{"merge.merge_thr": 0.8,
  …}``) and ``settings`` the stage's other choices (``--no-motion``, ΔF/F window, …);
- ``upstream``: ``{stage: digest}`` of the manifests of the stages whose outputs it read;
- ``somascope_version``.

Its ``digest`` hashes the identity *and* the stage's ``run_id`` (a fresh random id per
execution): a stage that runs again gets a new digest, so everything that read its old
outputs runs again too, even if the new outputs happen to be identical.

:func:`compare` says why a manifest does not match what the run expects, in words
("params.merge changed (merge.merge_thr: 0.8 → 0.9)").
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FORMAT = "somascope-stage/1"
MANIFEST = "manifest.json"

__all__ = ["FORMAT", "MANIFEST", "Expected", "compare", "digest_of", "movie_fingerprint", "read_manifest",
           "write_manifest"]


def canonical(obj: Any) -> str:
    """Stable JSON text (sorted keys, no spaces): equal values give equal text."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=True)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Expected:
    """The identity a stage's manifest must have to be reused."""

    def __init__(self, stage: str, *, inputs: Mapping[str, Any], params: Mapping[str, Any],
                 settings: Mapping[str, Any], upstream: Mapping[str, str], version: str) -> None:
        self.stage = stage
        self.inputs = _plain(dict(inputs))
        self.params = _plain(dict(params))
        self.settings = _plain(dict(settings))
        self.upstream = dict(upstream)
        self.version = version

    def identity(self) -> dict[str, Any]:
        return {"stage": self.stage, "inputs": self.inputs, "params": self.params,
                "settings": self.settings, "upstream": self.upstream, "somascope_version": self.version}


def digest_of(identity: Mapping[str, Any], run_id: str) -> str:
    """Digest of a manifest: its identity plus the id of the execution that produced it."""
    return sha256(canonical({**identity, "run_id": run_id}))


def movie_fingerprint(movie: Any, relative_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What identifies the input movie: every file (or folder) with its size and modification
    time, the movie's shape and dtype, and the channel/plane selection.

    A folder (Zarr) counts the sizes of all files under it and its newest modification time.
    Paths under ``relative_to`` (a batch's raw-data root) are recorded relative to it, so that
    stages computed before the data moved to another folder or computer are still recognised.
    """
    root = None if relative_to is None else Path(relative_to).absolute()
    files = []
    for path in getattr(movie, "paths", []):
        p = Path(path).absolute()
        size, mtime = _size_mtime(p)
        shown = str(p)
        if root is not None and p.is_relative_to(root):
            shown = p.relative_to(root).as_posix()
        files.append({"path": shown, "size": size, "mtime_ns": mtime})
    return {
        "files": files,
        "shape": [int(s) for s in movie.shape],
        "dtype": str(movie.dtype),
        "channel": getattr(movie, "channel", None),
        "n_channels": getattr(movie, "n_channels", None),
        "plane": getattr(movie, "plane", None),
        "n_planes": getattr(movie, "n_planes", None),
    }


def _size_mtime(path: Path) -> tuple[int, int]:
    st = path.stat()
    if not path.is_dir():
        return int(st.st_size), int(st.st_mtime_ns)
    size, newest = 0, int(st.st_mtime_ns)
    for root, _dirs, names in os.walk(path):
        for name in names:
            s = os.stat(os.path.join(root, name))
            size += int(s.st_size)
            newest = max(newest, int(s.st_mtime_ns))
    return size, newest


# -- files ---------------------------------------------------------------------------------------
def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest in ``folder``, or None when there is none (or it is unreadable)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def write_manifest(folder: str | os.PathLike[str], expected: Expected, *, run_id: str, started: float,
                   seconds: float, peak_rss_bytes: int | None, outputs: Sequence[str], detail: str,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``folder/manifest.json`` atomically (the stage's last write); return its content."""
    from ..io.atomic import atomic_write_text

    identity = expected.identity()
    data = {
        "format": FORMAT,
        **identity,
        "run_id": run_id,
        "digest": digest_of(identity, run_id),
        "started": _iso(started),
        "finished": _iso(started + seconds),
        "seconds": round(float(seconds), 4),
        "peak_rss_bytes": None if peak_rss_bytes is None else int(peak_rss_bytes),
        "outputs": list(outputs),
        "detail": detail,
        **(dict(extra) if extra else {}),
    }
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(_plain(data), indent=2, allow_nan=True) + "\n")
    return data


def _iso(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")


# -- comparison -----------------------------------------------------------------------------------
def compare(manifest: Mapping[str, Any] | None, expected: Expected, folder: Path) -> list[str]:
    """Reasons why ``manifest`` cannot be reused for ``expected`` (empty: it can)."""
    if manifest is None:
        return ["no finished output"]
    reasons: list[str] = []
    identity = {k: manifest.get(k) for k in ("stage", "inputs", "params", "settings", "upstream",
                                             "somascope_version")}
    if manifest.get("digest") != digest_of(identity, str(manifest.get("run_id"))):
        return ["its manifest is damaged"]
    if manifest.get("somascope_version") != expected.version:
        reasons.append(f"the somascope version changed ({manifest.get('somascope_version')} → {expected.version})")
    if manifest.get("inputs") != expected.inputs:
        reasons.append(_input_change(manifest.get("inputs") or {}, expected.inputs))
    if manifest.get("params") != expected.params:
        reasons.append(_param_change(manifest.get("params") or {}, expected.params))
    if manifest.get("settings") != expected.settings:
        reasons.append("settings changed (" + _dict_diff(manifest.get("settings") or {}, expected.settings) + ")")
    old_up = manifest.get("upstream") or {}
    changed = [s for s in expected.upstream if old_up.get(s) != expected.upstream[s]]
    if changed or set(old_up) != set(expected.upstream):
        names = changed or sorted(set(old_up) ^ set(expected.upstream))
        reasons.append(f"{', '.join(names)} {'was' if len(names) == 1 else 'were'} computed again")
    missing = [name for name in manifest.get("outputs", []) if not (folder / name).exists()]
    if missing:
        reasons.append(f"outputs are missing ({', '.join(missing[:3])})")
    return reasons


def _input_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    old_files = [f.get("path") for f in old.get("files", [])]
    new_files = [f.get("path") for f in new.get("files", [])]
    if old_files != new_files:
        return "the input movie is another file"
    if old.get("files") != new.get("files"):
        return "the input movie changed on disk (size or modification time)"
    return "the movie is read differently (" + _dict_diff({k: v for k, v in old.items() if k != "files"},
                                                           {k: v for k, v in new.items() if k != "files"}) + ")"


def _param_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    groups = sorted({k.split(".")[0] for k in keys})
    shown = ", ".join(f"{k}: {_short(old.get(k))} → {_short(new.get(k))}" for k in keys[:4])
    more = f", … {len(keys) - 4} more" if len(keys) > 4 else ""
    return f"params.{'/'.join(groups)} changed ({shown}{more})"


def _dict_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {_short(old.get(k))} → {_short(new.get(k))}" for k in keys[:4])


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "…"
