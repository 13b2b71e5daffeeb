"""somascope: calcium-imaging analysis from raw movies to cells.

Importing the package is cheap: submodules (and with them Dask, Numba, matplotlib) are
loaded on first attribute access, e.g. ``somascope.simulate`` or ``somascope.io``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "io",
    "store",
    "parallel",
    "params",
    "simulate",
    "summary",
    "metrics",
    "motion",
    "cnmf",
    "deconvolution",
    "dff",
    "evaluation",
    "pipeline",
    "report",
    "cli",
}

__all__ = sorted(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'somascope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
