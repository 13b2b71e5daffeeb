"""Errors raised for bad input files."""

from __future__ import annotations


class MovieError(ValueError):
    """A movie file cannot be used as given; the message names the file and the fix."""
