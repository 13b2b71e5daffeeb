"""The batch's SQLite file: schema, connections, and the few statements that change it.

One file, ``BATCH/batch.sqlite``, holds the items, the samples and a few settings. SQLite gives
what several local processes need at once: every write is one transaction (a reader sees a row
whole or not at all), writers queue behind a lock (``busy_timeout``), and a process killed in the
middle of a write leaves the file as it was before it. On a cluster only the driver process
opens it: SQLite's locks are not safe on network file systems, so workers report back through
Dask instead.

Rows are plain dicts here; JSON columns (``params``, ``variant``, ``tags``, …) are decoded.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

FORMAT = "somascope-batch"
SCHEMA_VERSION = 1
DB_FILE = "batch.sqlite"
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 60.0

STATUSES = ("queued", "running", "done", "failed", "interrupted")
#: Columns holding JSON text.
JSON_COLUMNS = frozenset({"input", "params", "variant", "tags", "versions", "stage_dirs", "outputs"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    input TEXT NOT NULL,
    params TEXT NOT NULL,
    variant TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'queued',
    added REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL,
    peak_rss_bytes INTEGER,
    stage TEXT,
    detail TEXT,
    error TEXT,
    traceback TEXT,
    comments TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    versions TEXT,
    stage_dirs TEXT,
    outputs TEXT,
    lease TEXT,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS samples (
    name TEXT PRIMARY KEY,
    item TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    comments TEXT,
    created REAL NOT NULL,
    path TEXT NOT NULL
);
"""


class BatchError(ValueError):
    """A batch that cannot be opened or an operation that cannot be done, with the fix."""


class _Connection(sqlite3.Connection):
    """A connection that knows its file (named in errors)."""

    path: Path


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit, :func:`transaction`)."""
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, factory=_Connection)
    con.path = Path(path)
    con.row_factory = sqlite3.Row
    with sqlite_errors(con):
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return con


def _path(con: sqlite3.Connection) -> str:
    return str(getattr(con, "path", DB_FILE))


@contextlib.contextmanager
def sqlite_errors(con: sqlite3.Connection) -> Iterator[None]:
    """SQLite's errors on the batch file as :class:`BatchError` with the fix: the file locked by
    another process for longer than :data:`BUSY_TIMEOUT_S`, or damaged (not a database)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise BatchError(
                f"the batch file {_path(con)} is locked by another process (a somascope batch command or a "
                f"program holding it open) and stayed locked for {BUSY_TIMEOUT_S:g} s ({text}). Fix: wait for the "
                "other command to finish, or close the program that holds the file, then try again.") from None
        if "disk" in text and ("full" in text or "I/O" in text):
            raise BatchError(f"cannot write the batch file {_path(con)} ({text}). Fix: free some disk space on its "
                             "disk, then try again.") from None
        raise
    except sqlite3.DatabaseError as exc:
        raise BatchError(
            f"the batch file {_path(con)} is damaged or not an SQLite database ({exc}). Fix: restore it from a backup, "
            "or create a new batch with 'somascope batch create'.") from None


@contextlib.contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any error): a writer holds the write
    lock from the start, so a read-modify-write is never interleaved with another process's.
    A file locked too long or damaged raises :class:`BatchError` (:func:`sqlite_errors`)."""
    with sqlite_errors(con):
        con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise
    with sqlite_errors(con):
        con.execute("COMMIT")


def initialise(con: sqlite3.Connection, settings: Mapping[str, Any]) -> None:
    """Create the tables and write the format, schema version and ``settings``."""
    with transaction(con):
        for statement in _SCHEMA.strip().split(";"):
            if statement.strip():
                con.execute(statement)
        values = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created": time.time(), **settings}
        for key, value in values.items():
            con.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def check_format(con: sqlite3.Connection, path: Path) -> None:
    """Refuse a file that is not a somascope batch or has a newer schema."""
    try:
        rows = dict(con.execute("SELECT key, value FROM settings").fetchall())
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            with sqlite_errors(con):
                raise
        raise BatchError(f"{path} is not a somascope batch ({exc}). Fix: open the batch folder that "
                         f"'somascope batch create' made, or create one.") from None
    except sqlite3.DatabaseError as exc:
        raise BatchError(f"{path} is not a somascope batch ({exc}). Fix: open the batch folder that "
                         f"'somascope batch create' made, or create one.") from None
    if json.loads(rows.get("format", "null")) != FORMAT:
        raise BatchError(f"{path} is an SQLite file but not a somascope batch. Fix: open the folder that "
                         f"'somascope batch create' made.")
    version = int(json.loads(rows.get("schema_version", "0")))
    if version > SCHEMA_VERSION:
        raise BatchError(f"{path} was written by a newer somascope (batch schema {version}, this one reads "
                         f"{SCHEMA_VERSION}). Fix: upgrade somascope (pip install -U somascope).")


def get_setting(con: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = con.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return default if row is None else json.loads(row[0])


def set_setting(con: sqlite3.Connection, key: str, value: Any) -> None:
    with transaction(con):
        con.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def decode(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a dict, JSON columns decoded."""
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def encode(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values ready for SQLite: JSON columns as text."""
    from ..io.jsonable import jsonable

    return {k: (json.dumps(jsonable(v), allow_nan=True) if k in JSON_COLUMNS and v is not None else v)
            for k, v in values.items()}


def insert_items(con: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert items in one transaction (all or none)."""
    if not rows:
        return
    with transaction(con):
        for row in rows:
            values = encode(row)
            keys = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            con.execute(f"INSERT INTO items ({keys}) VALUES ({marks})", tuple(values.values()))


def update_item(con: sqlite3.Connection, uuid: str, values: Mapping[str, Any], *,
                when_status: Sequence[str] | None = None, when_lease: str | None = None) -> bool:
    """Set columns of one item; with ``when_status`` / ``when_lease`` only if its status is one
    of those / it still holds that lease (compare-and-set). Returns whether a row changed."""
    values = encode(values)
    sets = ", ".join(f"{k} = ?" for k in values)
    sql = f"UPDATE items SET {sets} WHERE uuid = ?"
    args: list[Any] = [*values.values(), uuid]
    if when_status is not None:
        sql += f" AND status IN ({', '.join('?' for _ in when_status)})"
        args.extend(when_status)
    if when_lease is not None:
        sql += " AND lease = ?"
        args.append(when_lease)
    with transaction(con):
        return con.execute(sql, args).rowcount == 1


def select_items(con: sqlite3.Connection, where: str = "", args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Items in the order they were added (one consistent snapshot)."""
    sql = "SELECT * FROM items" + (f" WHERE {where}" if where else "") + " ORDER BY position"
    with sqlite_errors(con):
        rows = con.execute(sql, tuple(args)).fetchall()
    return [decode(r) for r in rows]
