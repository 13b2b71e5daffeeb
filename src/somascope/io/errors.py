"""Errors raised for bad input files."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


class MovieError(ValueError):
    """A movie file cannot be used as given; the message names the file and the fix."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace collapsed), at most ``limit`` characters
    (else cut with "…"); its type's name when it has no message. For the library errors that
    a reader quotes inside its own :class:`MovieError`."""
    text = " ".join(str(exc).split())
    return (text[:limit] + "…") if len(text) > limit else (text or type(exc).__name__)


def import_optional(module: str, path: Path, what: str, extra: str) -> Any:
    """``module`` imported, or a :class:`MovieError` saying that reading ``path`` (``what``, e.g.
    "Nikon .nd2 files") needs it and which ``somascope[extra]`` brings it. An ``OSError`` (a
    bundled C library that fails to load) counts as missing too."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        raise MovieError(f'{path}: reading {what} needs the {module} package ({one_line(exc)}); '
                         f'pip install "somascope[{extra}]".') from exc
