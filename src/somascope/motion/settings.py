"""Motion-correction settings: the ``motion`` parameter group, resolved and checked against a movie.

:func:`resolve` accepts what users have (``None``, a :class:`~somascope.params.Params`, its
``.motion`` group, or a dict of CaImAn / somascope keys) plus keyword overrides, and returns
a :class:`Settings` whose per-axis values have been checked against the movie's frame shape,
so that impossible combinations fail before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..params import MotionParams, ParameterError, Params
from .registration import check_max_shifts

@dataclass(frozen=True)
class Settings:
    """Resolved motion settings for a movie with frames of shape ``dims``.

    Per-axis values have one entry per spatial axis; ``max_deviation_rigid`` is broadcast to
    all axes (0 on an axis whose ``max_shifts`` is 0: no motion searched there, none deviating). ``params`` is the motion group as a plain dict (saved with results).

    ``pw_rigid`` is the mode that runs now (a bool). ``pw_rigid_requested`` is what was asked
    for: True, False or ``"auto"``; with ``"auto"``, ``pw_rigid`` starts False and
    :func:`somascope.motion.correct` switches it after measuring the movie, unless
    ``auto_unavailable`` says why piecewise-rigid correction cannot run on these frames.
    """

    dims: tuple[int, ...]
    pw_rigid: bool
    max_shifts: tuple[int, ...]
    strides: tuple[int, ...]
    overlaps: tuple[int, ...]
    max_deviation_rigid: tuple[int, ...]
    upsample_factor: int
    niter_rig: int
    chunk_frames: int
    border_mode: str
    gSig_filt: tuple[float, ...] | None
    smooth_shifts: float | None
    params: dict[str, Any]
    pw_rigid_requested: bool | str = False
    auto_unavailable: str | None = None

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return tuple(s + o for s, o in zip(self.strides, self.overlaps))


def motion_group(params: Any = None, ndim: int = 2, **overrides: Any) -> MotionParams:
    """The ``motion`` parameter group from ``params`` with ``overrides`` applied.

    ``params``: ``None`` (the defaults for ``ndim`` spatial axes), a :class:`Params`, a
    :class:`MotionParams`, or a dict accepted by :meth:`Params.from_dict`. Overrides are motion
    keys (CaImAn spellings such as ``border_nan`` or ``num_frames_split`` too, except with a
    bare ``MotionParams``).
    """
    if params is None:
        params = Params.from_dict({"dxy": (1.0,) * ndim}) if ndim != 2 else Params()
    elif isinstance(params, Mapping):
        params = Params.from_dict(params)
    if isinstance(params, Params):
        return params.replace(overrides).motion if overrides else params.motion
    if isinstance(params, MotionParams):
        if not overrides:
            return params
        names = [f.name for f in dataclasses.fields(MotionParams)]
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ParameterError(f"unknown motion parameter {key!r}.{hint} Known: {', '.join(names)}.")
        return dataclasses.replace(params, **overrides)
    raise ParameterError(f"params must be a somascope.params.Params, its .motion group, a dict or None; "
                         f"got {type(params).__name__}.")


def _per_axis(name: str, value: Any, ndim: int, dims: tuple[int, ...]) -> tuple[Any, ...]:
    if value is None:
        raise ParameterError(f"motion.{name} must be given for motion correction.")
    values = tuple(value) if isinstance(value, Sequence) else (value,) * ndim
    if len(values) == 1 and ndim > 1:
        values = values * ndim
    if len(values) != ndim:
        raise ParameterError(
            f"motion.{name}={tuple(values)} has {len(values)} entries but the movie's frames {dims} have {ndim} "
            f"spatial axes; give {ndim} values (for volumes build the parameters with 3-entry pixel sizes, "
            "e.g. Params.from_neuron(radius_px=(2, 5, 5), dxy=(3, 1, 1))).")
    return values


def resolve(params: Any, overrides: Mapping[str, Any], dims: Sequence[int]) -> Settings:
    """:class:`Settings` for frames of shape ``dims`` (``(H, W)`` or ``(Z, H, W)``).

    Raises
    ------
    ParameterError
        unknown keys, wrong number of per-axis values, ``max_shifts`` too large for the frame,
        patches (``strides + overlaps``) larger than the frame, or ``max_deviation_rigid`` too
        large for a patch; each message names the values and the fix.
    """
    dims = tuple(int(d) for d in dims)
    ndim = len(dims)
    if ndim not in (2, 3):
        raise ParameterError(f"frames must be 2-D (H, W) or 3-D (Z, H, W); got frames of shape {dims}.")
    group = motion_group(params, ndim, **dict(overrides))
    max_shifts = _per_axis("max_shifts", group.max_shifts, ndim, dims)
    try:
        max_shifts = check_max_shifts(dims, max_shifts, "frame")
    except ValueError as exc:
        raise ParameterError(f"motion.{exc}") from None
    strides = tuple(int(s) for s in _per_axis("strides", group.strides, ndim, dims))
    overlaps = tuple(int(o) for o in _per_axis("overlaps", group.overlaps, ndim, dims))
    # a patch deviates from the rigid shift along the axes motion is searched on, not others
    dev = tuple(int(group.max_deviation_rigid) if m > 0 else 0 for m in max_shifts)
    auto = group.pw_rigid == "auto"
    unavailable = None
    if group.pw_rigid:  # True or "auto"
        patch = tuple(s + o for s, o in zip(strides, overlaps))
        problem = None
        if any(p > d for p, d in zip(patch, dims)):
            problem = ParameterError(
                f"the frame {dims} is smaller than one piecewise-rigid patch (strides + overlaps = {patch} px); "
                f"lower motion.strides / motion.overlaps so that strides + overlaps ≤ {dims}, or use rigid "
                "correction (pw_rigid=False).")
            unavailable = f"the frame {dims} is smaller than one patch (strides + overlaps = {patch} px)"
        else:
            try:
                check_max_shifts(patch, dev, "patch")
            except ValueError as exc:
                problem = ParameterError(f"motion.max_deviation_rigid={group.max_deviation_rigid}: {exc}")
                unavailable = f"motion.max_deviation_rigid={group.max_deviation_rigid} is too large for a patch"
        if problem is not None and not auto:
            raise problem from None
    gsig = None
    if group.gSig_filt is not None:
        gsig = tuple(float(g) for g in _per_axis("gSig_filt", group.gSig_filt, ndim, dims))
    smooth = float(group.smooth_shifts) if group.smooth_shifts else None
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(group).items()}
    return Settings(
        dims=dims, pw_rigid=group.pw_rigid is True, max_shifts=max_shifts, strides=strides, overlaps=overlaps,
        max_deviation_rigid=dev, upsample_factor=int(group.upsample_factor), niter_rig=int(group.niter_rig),
        chunk_frames=int(group.chunk_frames), border_mode=str(group.border_mode), gSig_filt=gsig,
        smooth_shifts=smooth, params=plain, pw_rigid_requested=group.pw_rigid,
        auto_unavailable=unavailable if auto else None,
    )
