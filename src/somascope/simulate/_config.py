"""Checking and normalising the arguments of the simulators (clear errors, early)."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

MOTIONS = (None, "rigid", "nonrigid")


def _fail(name: str, value: Any, need: str) -> None:
    raise ValueError(f"{name} must be {need}; got {value!r}.")


def _number(p: dict[str, Any], name: str, lo: float | None = None, hi: float | None = None, *,
            open_lo: bool = False, allow_inf: bool = False, allow_none: bool = False) -> float | None:
    value = p[name]
    if value is None and allow_none:
        return None
    need = "a number" + (f" {'>' if open_lo else '>='} {lo}" if lo is not None else "") + (f" and <= {hi}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(name, value, need)
    v = float(value)
    if np.isnan(v) or (np.isinf(v) and not allow_inf):
        _fail(name, value, need)
    if lo is not None and (v < lo or (open_lo and v == lo)):
        _fail(name, value, need)
    if hi is not None and v > hi:
        _fail(name, value, need)
    return v


def _integer(p: dict[str, Any], name: str, lo: int, allow_none: bool = False) -> int | None:
    value = p[name]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        _fail(name, value, f"an integer >= {lo}")
    return int(value)


def _per_axis(p: dict[str, Any], name: str, ndim: int, lo: float, open_lo: bool = False) -> np.ndarray:
    """A scalar (same on every axis) or one value per axis, each >= lo."""
    value = p[name]
    arr = np.atleast_1d(np.asarray(value, dtype=object))
    need = f"a number {'>' if open_lo else '>='} {lo} or a sequence of {ndim} such numbers (one per axis)"
    if arr.ndim != 1 or len(arr) not in (1, ndim):
        _fail(name, value, need)
    out = []
    for v in arr:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(float(v)) \
                or float(v) < lo or (open_lo and float(v) == lo):
            _fail(name, value, need)
        out.append(float(v))
    return np.broadcast_to(np.array(out), (ndim,)).copy()


def validate(p: dict[str, Any], ndim: int) -> SimpleNamespace:
    """Check the arguments ``p`` of a simulator for a field of view with ``ndim`` axes and
    return them normalised (tuples → per-axis arrays, defaults filled in)."""
    c = SimpleNamespace(**p)
    dims = p["dims"]
    try:
        c.dims = tuple(int(d) for d in dims)
        ok = len(c.dims) == ndim and all(int(d) == d for d in dims) and min(c.dims) >= (1 if ndim == 3 else 4)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        axes = "(Z, H, W) with Z >= 1 and H, W >= 4" if ndim == 3 else "(H, W) with H, W >= 4"
        _fail("dims", dims, f"{axes} pixels")
    if ndim == 3 and min(c.dims[1:]) < 4:
        _fail("dims", dims, "(Z, H, W) with Z >= 1 and H, W >= 4 pixels")
    c.n_frames = _integer(p, "n_frames", 1)
    c.n_cells = _integer(p, "n_cells", 0)
    c.frame_rate = _number(p, "frame_rate", 0.0, open_lo=True)
    c.decay_time = _number(p, "decay_time", 0.0, open_lo=True)
    c.rise_time = _number(p, "rise_time", 0.0, open_lo=True, allow_none=True)
    if c.rise_time is not None and c.rise_time >= c.decay_time:
        _fail("rise_time", p["rise_time"], f"shorter than decay_time ({c.decay_time} s), or None for AR(1) dynamics")
    c.radius = _per_axis(p, "neuron_radius", ndim, 0.5)
    if p["motion"] not in MOTIONS and p["motion"] != "none":
        _fail("motion", p["motion"], "None, 'rigid' or 'nonrigid'")
    c.motion = None if p["motion"] in (None, "none") else p["motion"]
    c.max_shift = _per_axis(p, "max_shift", ndim, 0.0)
    if p.get("nonrigid_amplitude") is None:
        c.nonrigid_amplitude = 0.3 * c.max_shift
    else:
        c.nonrigid_amplitude = _per_axis(p, "nonrigid_amplitude", ndim, 0.0)
    c.snr = _number(p, "snr", 0.0, open_lo=True, allow_inf=True)
    seed = p["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        _fail("seed", seed, "a non-negative integer")
    c.seed = int(seed)
    rates = p["firing_rate"]
    try:
        lo, hi = (float(r) for r in rates)
        ok = 0 < lo <= hi < np.inf
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail("firing_rate", rates, "a (low, high) range of rates in Hz with 0 < low <= high")
    c.firing_rate = (lo, hi)
    for name in ("ring_fraction", "process_fraction", "silent_fraction", "read_noise_fraction"):
        setattr(c, name, _number(p, name, 0.0, 1.0))
    c.vignette_strength = _number(p, "vignette_strength", 0.0, 0.95)
    c.ellipticity = _number(p, "ellipticity", 0.0, 0.8)
    for name in ("burst_rate", "resting_level", "background_level", "min_separation", "decay_jitter",
                 "background_fluctuation"):
        setattr(c, name, _number(p, name, 0.0))
    c.spike_amplitude = _number(p, "spike_amplitude", 0.0, open_lo=True)
    c.background_timescale = _number(p, "background_timescale", 0.0, open_lo=True)
    c.bleach_time = _number(p, "bleach_time", 0.0, open_lo=True, allow_inf=True, allow_none=True)
    c.psf_sigma = _per_axis(p, "psf_sigma", ndim, 0.0)
    c.n_background = _integer(p, "n_background", 0)
    if c.n_background > 8:
        _fail("n_background", p["n_background"], "an integer from 0 to 8")
    if p["interp_order"] not in (1, 3):
        _fail("interp_order", p["interp_order"], "1 (linear) or 3 (cubic spline)")
    c.chunk_frames = _integer(p, "chunk_frames", 1, allow_none=True)
    c.n_threads = _integer(p, "n_threads", 1, allow_none=True)
    if p["out"] is not None:
        if not isinstance(p["out"], (str, os.PathLike)):
            _fail("out", p["out"], "None (keep the movie in memory) or a path for a new store")
        c.out = Path(p["out"])
        if c.out.exists() and not p["overwrite"]:
            raise ValueError(f"out: {c.out} already exists; pass overwrite=True or choose another path.")
    return c


def params_record(p: dict[str, Any]) -> dict[str, Any]:
    """The arguments as a plain dict (paths as strings) for ``Simulation.params``."""
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in p.items()}
