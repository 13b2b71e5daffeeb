"""Errors raised for bad input files."""

from __future__ import annotations


class MovieError(ValueError):
    """A movie file cannot be used as given; the message names the file and the fix."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace collapsed), at most ``limit`` characters
    (else cut with "…"); its type's name when it has no message. For the library errors that
    a reader quotes inside its own :class:`MovieError`."""
    text = " ".join(str(exc).split())
    return (text[:limit] + "…") if len(text) > limit else (text or type(exc).__name__)
