"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def _quick_report() -> Iterator[None]:
    """A stub for the HTML report of pipeline runs (it costs seconds per run and is tested in
    test_pipeline/test_report): a one-line ``report.html``."""
    import somascope.report

    def stub(folder: Any, **kwargs: Any) -> Path:
        path = Path(folder) / "report.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html>{kwargs['estimates'].K} components</html>")
        return path

    with pytest.MonkeyPatch.context() as m:
        m.setattr(somascope.report, "write_run_report", stub)
        yield
