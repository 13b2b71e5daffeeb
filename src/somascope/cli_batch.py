"""``somascope batch …``: the batch manager's command line (thin layers over
:class:`somascope.batch.Batch`; the guide is ``docs/batch.md``)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import (_add_nwb_args, _cluster_config, _console_warnings_only, _disk_size, _gb, _nwb_metadata, _parse_set,
                  add_engine_args)


def _open_batch(args: argparse.Namespace) -> Any:
    from .batch import Batch

    return Batch.open(args.batch)


def _short_uuid(uuid: Any) -> str:
    return str(uuid)[:8]


def _clip(text: Any, width: int) -> str:
    text = "" if text is None or text != text else " ".join(str(text).split())  # None/NaN → ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _yaml_text(value: Any) -> str:
    import yaml

    from .io.jsonable import jsonable

    class Dumper(yaml.SafeDumper):  # mappings as blocks, lists on one line
        pass

    Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return yaml.dump(jsonable(value), Dumper=Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False).rstrip()


def _parse_tags(items: Sequence[str] | None) -> dict[str, Any]:
    """``--tag animal=m12 --tag session=3`` → ``{"animal": "m12", "session": 3}``."""
    try:
        return _parse_set(items)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--set", "--tag").replace("quality.min_SNR=3", "animal=m12")) from None


def _split_values(text: str) -> list[str]:
    """``"3,4"`` → ``["3", "4"]``; commas inside brackets, braces or quotes do not split:
    ``"[3,3],[4,4]"`` → ``["[3,3]", "[4,4]"]``."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["quality.min_SNR=2,2.5,3", "gSig=[3,3],[4,4]"]`` → ``{"quality.min_SNR": [2, 2.5, 3],
    "gSig": [[3, 3], [4, 4]]}``: values split on commas outside brackets, each read like a
    ``--set`` value."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"grid {item!r}: expected KEY=V1,V2,…, e.g. quality.min_SNR=2,2.5,3 or "
                             f"gSig=[3,3],[4,4] (a list value in brackets).")
        parts = _split_values(text)
        if any(not p for p in parts):
            raise ValueError(f"grid {item!r}: an empty value between commas. Fix: e.g. {key}=2,3.")
        if key in grid:
            raise ValueError(f"grid: {key} is given twice. Fix: give all its values once, e.g. {key}=2,3.")
        grid[key] = [_parse_set([f"{key}={p}"])[key] for p in parts]
    return grid


def _stage_sizes(batch: Any) -> dict[Path, int]:
    """Bytes of every shared stage folder (``stages/<stage>/<key>``) of a batch."""
    root = batch.stage_cache
    if not root.is_dir():
        return {}
    return {folder: _disk_size(folder) for stage in root.iterdir() if stage.is_dir()
            for folder in stage.iterdir() if folder.is_dir()}


def _print_freed(batch: Any, before: dict[Path, int]) -> None:
    gone = [p for p in before if not p.exists()]
    for p in sorted(gone):
        print(f"  removed {p.relative_to(batch.path)} ({_gb(before[p])})")
    if gone:
        print(f"freed {_gb(sum(before[p] for p in gone))} in {len(gone)} stage folder(s)")
    else:
        print("no stage folder to remove: every one is used by an item")


def cmd_batch_create(args: argparse.Namespace) -> int:
    from .batch import Batch

    with Batch.create(args.batch, raw_data_root=args.raw_data_root) as batch:
        root = f"; raw-data root {batch.raw_data_root}" if batch.raw_data_root else ""
        print(f"created batch {batch.path}{root}")
    return 0


def cmd_batch_root(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        if args.dir is not None:
            folder = Path(args.dir).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"raw-data root {folder}: no such folder. Fix: give the folder the "
                                        f"movies' relative paths start from.")
            batch.raw_data_root = folder
        print(f"raw-data root of {batch.path}: {batch.raw_data_root or '(none: movie paths are absolute)'}")
    return 0


def _add_params(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters of a new item: ``--params`` file, then ``--fr/--radius/--decay-time``,
    then ``--set``."""
    import yaml

    from .params import Params

    base: dict[str, Any] = {}
    if args.params is not None:
        Params.load(args.params)  # checks the format and every key, with the file named
        base = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
    over: dict[str, Any] = {}
    if args.fr is not None:
        over["data.fr"] = args.fr
    if args.radius:
        over["data.neuron_radius"] = args.radius[0] if len(args.radius) == 1 else tuple(args.radius)
    if args.decay_time is not None:
        over["data.decay_time"] = args.decay_time
    over.update(_parse_set(args.set))
    if not base or not over:
        return {**base, **over}
    if Params.given_keys(base) & Params.given_keys(over):  # options override the file's value
        return {**Params.given_values(base), **over}
    return {**base, **over}


def cmd_batch_add(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        movie: Any = args.input
        try:
            batch.item(movie)
        except ValueError:  # not an item: a movie path, relative to the raw-data root or else to here
            path = Path(movie).expanduser()
            root = batch.raw_data_root
            if not path.is_absolute() and root is not None and not (root / path).exists() and path.exists():
                movie = str(path.absolute())
        uuid = batch.add(movie, args.algo, _add_params(args), args.name, comments=args.comment,
                         tags=_parse_tags(args.tag))
    print(uuid)
    return 0


def cmd_batch_grid(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        base = batch.item(args.item)
        uuids = batch.add_variants(base["uuid"], _parse_grid(args.grid), name=args.name)
        if not uuids:
            print(f"no new item: every combination equals the values of {base['name']!r}")
        for uuid in uuids:
            print(f"{uuid}  {batch.item(uuid)['name']}")
    return 0


def cmd_batch_ls(args: argparse.Namespace) -> int:
    import pandas as pd

    with _open_batch(args) as batch:
        df = batch.items()
        if not len(df):
            print(f"no items in {batch.path}. Add one: somascope batch add {batch.path} MOVIE --algo mcorr")
            return 0
        if args.all_columns:
            df = df.copy()
            for col in ("params", "variant", "tags", "versions"):
                df[col] = [json.dumps(v, default=str) if v else "" for v in df[col]]
            df["peak_memory"] = [_gb(v) if v == v and v else "" for v in df["peak_memory"]]
            with pd.option_context("display.max_colwidth", 80, "display.width", None):
                print(df.to_string(index=False))
            return 0
        table = pd.DataFrame({
            "uuid": [_short_uuid(u) for u in df["uuid"]],
            "name": [_clip(n, 40) for n in df["name"]],
            "algorithm": df["algorithm"],
            "status": df["status"],
            "stage": [_clip(s, 20) for s in df["stage"]],
            # a queued item keeps the seconds and detail of its last run: not shown
            "seconds": [f"{s:.1f}" if s == s and s is not None and st != "queued" else ""
                        for s, st in zip(df["seconds"], df["status"])],
            "detail / error": [_clip(e if st in ("failed", "interrupted") and e else d if st != "queued" else "", 60)
                               for st, d, e in zip(df["status"], df["detail"], df["error"])],
        })
        print(table.to_string(index=False))
    return 0


def cmd_batch_status(args: argparse.Namespace) -> int:
    from .batch.db import STATUSES

    with _open_batch(args) as batch:
        rows = batch.rows()
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        print(f"{batch.path}: {len(rows)} item{'s' if len(rows) != 1 else ''}")
        for status, n in counts.items():
            print(f"  {status:<12} {n}")
        now = time.time()
        for r in rows:
            if r["status"] == "running":
                age = f"{now - r['heartbeat']:.0f} s ago" if r.get("heartbeat") else "none yet"
                print(f"running {_short_uuid(r['uuid'])} {r['name']}: stage {r.get('stage') or '(starting)'}, "
                      f"heartbeat {age}")
    return 0


def cmd_batch_run(args: argparse.Namespace) -> int:
    _console_warnings_only()
    with _open_batch(args) as batch:
        wanted = [batch.item(ref)["uuid"] for ref in args.items] if args.items else None
        with _cluster_config(args):
            ran = batch.run(wanted, engine=args.scheduler, workers=args.workers, progress=not args.quiet)
        rows = {r["uuid"]: r for r in batch.rows()}
        done_now = set(ran["uuid"])
        failed = [rows[u] for u in ran["uuid"] if rows[u]["status"] == "failed"]
        skipped = [r for u, r in rows.items() if (wanted is None or u in wanted) and u not in done_now
                   and r["status"] in ("queued", "interrupted")]
        if not len(ran) and not skipped:
            if args.quiet:  # else the run said so
                print("nothing to run: no queued or interrupted item")
            return 0
        print(f"ran {len(ran)} item{'s' if len(ran) != 1 else ''}: {len(ran) - len(failed)} done, {len(failed)} failed")
        for r in failed:
            print(f"failed {_short_uuid(r['uuid'])} {r['name']}: {r['error']}")
        for r in skipped:
            print(f"not run {_short_uuid(r['uuid'])} {r['name']}: its input item is not done")
        if failed:
            print(f"details: somascope batch show {batch.path} ITEM; after a fix: somascope batch reset {batch.path}"
                  f" then run")
    return 1 if failed or skipped else 0


def cmd_batch_show(args: argparse.Namespace) -> int:
    import textwrap

    from .params import Params

    with _open_batch(args) as batch:
        row = batch.item(args.item)
        if args.json:
            print(json.dumps({k: v for k, v in row.items() if k != "lease"}, indent=2, default=str))
            return 0
        inp = row["input"]
        inherited: dict[str, Any] = {}
        if inp.get("item"):
            parent = batch.item(inp["item"])
            source = f"item {parent['name']!r} ({parent['uuid']}, {parent['status']})"
            for layer in batch.effective_layers(parent):
                inherited.update(Params.given_values(layer))
        else:
            source = inp["movie"]
            try:
                resolved = batch.movie_path(row)
                if str(resolved) != source:
                    source += f" → {resolved}"
            except ValueError as exc:
                source += f" (unresolved: {' '.join(str(exc).split())})"
        fields: dict[str, Any] = {
            "uuid": row["uuid"], "name": row["name"], "algorithm": row["algorithm"], "status": row["status"],
            "input": source, "stage": row.get("stage"), "detail": row.get("detail"),
            "added": _when(row.get("added")), "started": _when(row.get("started")),
            "finished": _when(row.get("finished")),
            "seconds": None if row.get("seconds") is None else f"{row['seconds']:.1f}",
            "peak memory": _gb(row["peak_rss_bytes"]) if row.get("peak_rss_bytes") else None,
            "heartbeat": f"{time.time() - row['heartbeat']:.0f} s ago"
            if row["status"] == "running" and row.get("heartbeat") else None,
            "comments": row.get("comments"), "tags": row.get("tags") or None, "error": row.get("error"),
        }
        width = max(len(k) for k in fields)
        for key, value in fields.items():
            if value is not None:
                print(f"{key:<{width}}  {value}")
        for title, value in (("params from the input item", inherited), ("params", row.get("params")),
                             ("variant", row.get("variant"))):
            if value:
                print(f"{title}:\n" + textwrap.indent(_yaml_text(value), "  "))
        if not (inherited or row.get("params") or row.get("variant")):
            print("params: (none given: all derived from the defaults and the movie)")
        stage_dirs = row.get("stage_dirs") or {}
        if stage_dirs:
            print("stage folders:")
            w = max(len(k) for k in stage_dirs)
            for key, rel in stage_dirs.items():
                print(f"  {key:<{w}}  {batch.path / rel}")
        if row.get("outputs"):
            print(f"outputs ({batch.item_dir(row['uuid'])}):")
            for rel in row["outputs"]:
                print(f"  {batch.path / rel}")
        if row["status"] == "failed" and row.get("traceback"):
            print("traceback:\n" + textwrap.indent(row["traceback"].rstrip(), "  "))
        if row.get("versions"):
            print("versions: " + ", ".join(f"{k} {v}" for k, v in row["versions"].items()))
    return 0


def cmd_batch_diff(args: argparse.Namespace) -> int:
    import pandas as pd

    with _open_batch(args) as batch:
        df = batch.params_diff(args.items or None)
    if not len(df):
        print("no items")
        return 0
    varied = [c for c in df.columns if c != "uuid"]
    if not varied:
        print(f"the {len(df)} items have the same parameters")
        return 0
    table = df[varied].astype(object).where(df[varied].notna(), "default")
    table.insert(0, "uuid", [_short_uuid(u) for u in df["uuid"]])
    with pd.option_context("display.max_colwidth", 40, "display.width", None):
        print(table.to_string())
    return 0


def cmd_batch_rm(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        names = {r["uuid"]: r["name"] for r in batch.rows(args.items)}
        before = _stage_sizes(batch)
        removed = batch.remove(list(names), force=args.force)
        for uuid in removed:
            print(f"removed {_short_uuid(uuid)} {names[uuid]}")
        _print_freed(batch, before)
    return 0


def cmd_batch_reset(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        if args.items:
            refs: Any = list(args.items)
        elif args.all:
            refs = None
        else:
            refs = [r["uuid"] for r in batch.rows() if r["status"] in ("failed", "interrupted")]
            if not refs:
                print("no failed or interrupted item to queue again (give ITEMs, or --all for every item)")
                return 0
        changed = batch.reset(refs)
        names = {r["uuid"]: r["name"] for r in batch.rows()}
        for uuid in changed:
            print(f"queued {_short_uuid(uuid)} {names[uuid]}")
        if changed:
            print(f"run them: somascope batch run {batch.path}")
    return 0


def cmd_batch_clean(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        before = _stage_sizes(batch)
        batch.clean()
        _print_freed(batch, before)
    return 0


def cmd_batch_export(args: argparse.Namespace) -> int:
    _console_warnings_only()
    with _open_batch(args) as batch:
        path = batch.export(args.item, nwb_metadata=_nwb_metadata(args), dandi=args.dandi)
    print(f"wrote {path}")
    return 0


def cmd_batch_import_mesmerize(args: argparse.Namespace) -> int:
    from .batch.mesmerize import read_mesmerize_batch

    with _open_batch(args) as batch:
        specs = read_mesmerize_batch(args.file, raw_data_root=args.raw_data_root)
        uuids = batch.import_mesmerize(specs, raw_data_root=args.raw_data_root)
        rows = {r["uuid"]: r for r in batch.rows()}
        notes = {s.uuid: s.notes for s in specs}
        for uuid in uuids:
            r = rows[uuid]
            print(f"imported {_short_uuid(uuid)} {r['name']} ({r['algorithm']})")
            for note in notes.get(uuid, []):
                print(f"    note: {note}")
        print(f"{len(uuids)} item{'s' if len(uuids) != 1 else ''} queued; run them: somascope batch run {batch.path}")
    return 0


def cmd_batch_sample(args: argparse.Namespace) -> int:
    with _open_batch(args) as batch:
        path = batch.promote(args.item, args.name, tags=_parse_tags(args.tag), comments=args.comment)
    print(f"sample {args.name}: {path}")
    return 0


def cmd_batch_samples(args: argparse.Namespace) -> int:
    import pandas as pd

    with _open_batch(args) as batch:
        df = batch.samples()
        if not len(df):
            print(f"no samples in {batch.path}. Promote a done item: somascope batch sample {batch.path} ITEM NAME")
            return 0
        df = df.copy()
        df["item"] = [_short_uuid(u) for u in df["item"]]
        df["created"] = [t.tz_convert(None).strftime("%Y-%m-%d %H:%M") if t == t else "" for t in df["created"]]
        df["comments"] = [_clip(c, 40) for c in df["comments"]]
        with pd.option_context("display.max_colwidth", 80, "display.width", None):
            print(df.fillna("").to_string(index=False))
    return 0


def add_batch_commands(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The ``somascope batch …`` subcommands (thin layers over :class:`somascope.batch.Batch`)."""
    sub = p.add_subparsers(dest="batch_command", metavar="SUBCOMMAND", required=True)

    def cmd(name: str, func: Any, text: str, **kwargs: Any) -> argparse.ArgumentParser:
        q = sub.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".",
                           **kwargs)
        q.add_argument("batch", type=Path, metavar="BATCH", help="the batch folder")
        q.set_defaults(func=func)
        return q

    q = cmd("create", cmd_batch_create, "create an empty batch folder")
    q.add_argument("--raw-data-root", type=Path, metavar="DIR",
                   help="folder movie paths are stored relative to (so the batch moves between computers)")

    q = cmd("root", cmd_batch_root, "show or set the raw-data root (the folder relative movie paths start from)")
    q.add_argument("dir", type=Path, nargs="?", metavar="DIR", help="the new raw-data root (omit to show it)")

    q = cmd("add", cmd_batch_add, "add an item: a movie (or an mcorr item's output) × algorithm × parameters; "
                                  "prints its uuid")
    q.add_argument("input", metavar="MOVIE_OR_ITEM",
                   help="a movie path (relative paths: under the raw-data root, else here), or an mcorr item "
                        "(uuid, uuid prefix or name) whose motion-corrected output a cnmf/cnmfe item reads")
    q.add_argument("--algo", default="cnmf", metavar="ALGO",
                   help="mcorr (motion correction + summary images), cnmf (the whole pipeline, default) or cnmfe "
                        "(cnmf for one-photon data)")
    q.add_argument("--params", type=Path, metavar="FILE",
                   help="parameter file (.yaml/.json; CaImAn/Mesmerize keys accepted)")
    q.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="one parameter, e.g. --set quality.min_SNR=3 (repeatable; overrides --params)")
    q.add_argument("--fr", type=float, metavar="HZ", help="frame rate, Hz (data.fr)")
    q.add_argument("--radius", type=float, nargs="+", metavar="PX",
                   help="neuron radius in pixels, one value or one per axis (data.neuron_radius)")
    q.add_argument("--decay-time", type=float, metavar="S", help="indicator decay time, s (data.decay_time)")
    q.add_argument("--name", help="the item's name (default: the movie's, or '<mcorr item> cnmf')")
    q.add_argument("--comment", help="free text kept with the item")
    q.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag, e.g. --tag animal=m12 (repeatable)")

    q = cmd("grid", cmd_batch_grid, "add one variant of an item per combination of parameter values; prints them",
            epilog="Values are split on commas outside brackets and read like --set values: min_SNR=2,2.5,3 "
                   "gives three values, gSig=[3,3],[4,4] two list values. Combinations equal to the item's own "
                   "values are skipped.")
    q.add_argument("item", metavar="ITEM", help="the item to vary (uuid, uuid prefix, name)")
    q.add_argument("grid", nargs="+", metavar="KEY=V1,V2,…", help="values per parameter")
    q.add_argument("--name", help="base name of the variants (default: the item's)")

    q = cmd("ls", cmd_batch_ls, "list the items: uuid, name, algorithm, status, stage, seconds, detail or error")
    q.add_argument("--all-columns", action="store_true", help="every column (input, params, times, versions…)")

    cmd("status", cmd_batch_status, "count the items per status; the running ones with their stage and heartbeat")

    q = cmd("run", cmd_batch_run, "run the queued and interrupted items (inputs first) on one engine; "
                                  "exit status 1 if one failed")
    q.add_argument("items", nargs="*", metavar="ITEM", help="only these items (default: all)")
    add_engine_args(q)

    q = cmd("show", cmd_batch_show, "every field of one item: parameters, input, times, memory, stage folders, "
                                    "outputs, error and traceback, versions")
    q.add_argument("item", metavar="ITEM", help="uuid, uuid prefix (≥ 4 characters) or name")
    q.add_argument("--json", action="store_true", help="the item's row as JSON")

    q = cmd("diff", cmd_batch_diff, "the parameters that differ between items (a value not set: default)")
    q.add_argument("items", nargs="*", metavar="ITEM", help="the items to compare (default: all)")

    q = cmd("rm", cmd_batch_rm, "remove items, their outputs and the shared stages no other item uses")
    q.add_argument("items", nargs="+", metavar="ITEM")
    q.add_argument("--force", action="store_true", help="also an item marked running (its process must be gone)")

    q = cmd("reset", cmd_batch_reset, "queue items again (default: the failed and interrupted ones)")
    q.add_argument("items", nargs="*", metavar="ITEM")
    q.add_argument("--all", action="store_true", help="every item, done ones too (stages still valid are reused)")

    cmd("clean", cmd_batch_clean, "delete shared stage folders no item refers to; prints the space freed")

    q = cmd("export", cmd_batch_export, "write a done cnmf/cnmfe item's NWB file (items/<uuid>/results.nwb)")
    q.add_argument("item", metavar="ITEM")
    _add_nwb_args(q)

    q = cmd("import-mesmerize", cmd_batch_import_mesmerize,
            "add the items of a mesmerize-core batch (its .pickle file), queued")
    q.add_argument("file", type=Path, metavar="FILE.pickle", help="the mesmerize-core batch file")
    q.add_argument("--raw-data-root", type=Path, metavar="DIR",
                   help="mesmerize-core's parent raw data path (relative movie paths start there)")

    q = cmd("sample", cmd_batch_sample, "keep a done cnmf/cnmfe item's results as a named project sample")
    q.add_argument("item", metavar="ITEM")
    q.add_argument("name", metavar="NAME", help="the sample's name, e.g. m12-day3")
    q.add_argument("--tag", action="append", metavar="KEY=VALUE",
                   help="e.g. --tag animal=m12 --tag session=3 (repeatable)")
    q.add_argument("--comment", help="free text kept with the sample")

    cmd("samples", cmd_batch_samples, "list the project samples and their tags")
