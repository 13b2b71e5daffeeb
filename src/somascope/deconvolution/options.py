"""Deconvolution options: plain keyword arguments, or a ``deconvolution`` parameter group.

The names match the ``deconvolution`` group of ``somascope.params`` (and CaImAn's temporal
parameters): ``p``, ``s_min``, ``bas_nonneg``, ``noise_range``, ``noise_method``, ``lags``,
``fudge_factor``, ``optimize_g``, ``method_deconvolution``. A group may be given as an
object with these attributes, as a full parameter object with a ``deconvolution``
attribute, or as a mapping; keyword arguments that are not ``None`` override it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ..params import DeconvolutionParams
from .noise import check_noise_method, check_noise_range

# One definition of the options: the ``deconvolution`` parameter group.
DeconvolutionOptions = DeconvolutionParams
FIELDS = tuple(f.name for f in fields(DeconvolutionParams))


def resolve_options(params: Any = None, **overrides: Any) -> DeconvolutionOptions:
    """Merge a parameter group (or ``None``) with keyword overrides and validate the result."""
    values: dict[str, Any] = {}
    if params is not None:
        group = getattr(params, "deconvolution", params)
        if isinstance(group, Mapping):
            unknown = [k for k in group if k not in FIELDS]
            if unknown:
                hints = []
                for key in unknown:
                    close = difflib.get_close_matches(str(key), FIELDS, n=1)
                    hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                raise ValueError(
                    f"unknown deconvolution parameter(s): {', '.join(hints)}; "
                    f"known: {', '.join(FIELDS)}."
                )
            values.update(group)
        else:
            for key in FIELDS:
                if hasattr(group, key):
                    values[key] = getattr(group, key)
    for key, value in overrides.items():
        if key not in FIELDS:  # programming error in this package
            raise TypeError(f"unexpected option {key!r}")
        if value is not None:
            values[key] = value
    return _validate(DeconvolutionOptions(**values))


def _validate(opts: DeconvolutionOptions) -> DeconvolutionOptions:
    if opts.method_deconvolution != "oasis":
        raise ValueError(
            f"method_deconvolution={opts.method_deconvolution!r} is not available; "
            "somascope implements 'oasis'."
        )
    if opts.p not in (0, 1, 2):
        raise ValueError(f"p={opts.p!r}: the AR order must be 0 (no dynamics), 1 or 2.")
    s_min = opts.s_min
    if isinstance(s_min, str):
        if s_min != "auto":
            raise ValueError(f"s_min={s_min!r}: use a number, 'auto' or None.")
    elif s_min is not None:
        s_min = float(s_min)
        if s_min != s_min:
            raise ValueError("s_min must not be NaN.")
    lags = int(opts.lags)
    if lags < 0:
        raise ValueError(f"lags={opts.lags} must be >= 0 (the default is 10).")
    optimize_g = int(opts.optimize_g)
    if optimize_g < 0:
        raise ValueError(f"optimize_g={opts.optimize_g} must be >= 0 (number of events; 0: off).")
    fudge = float(opts.fudge_factor)
    if not 0.0 < fudge <= 1.0:
        raise ValueError(f"fudge_factor={fudge} must lie in (0, 1]; the default is 0.98.")
    return DeconvolutionOptions(
        p=int(opts.p),
        s_min=s_min,
        bas_nonneg=bool(opts.bas_nonneg),
        noise_range=check_noise_range(opts.noise_range),
        noise_method=check_noise_method(opts.noise_method),
        lags=lags,
        fudge_factor=fudge,
        optimize_g=optimize_g,
        method_deconvolution="oasis",
    )
