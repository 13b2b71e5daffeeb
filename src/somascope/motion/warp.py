"""Applying displacements to frames: rigid shifts and per-pixel displacement fields.

Sign convention (``docs/conventions.md``): a displacement ``d`` means the frame's content moved
by ``d`` relative to the template, ``frame(p) ≈ template(p - d)``; correcting the frame samples
it at ``p + d``. Interpolation is cubic convolution (Keys, a = -0.5): local (4 taps per axis),
exact at integer shifts, and much cheaper than spline interpolation.

``border_mode`` says what pixels whose source lies outside the frame become:
``"copy"`` (the nearest edge pixel, as NoRMCorre does), ``"zero"`` or ``"nan"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BORDER_MODES = ("copy", "zero", "nan")


def _border(border_mode: str) -> tuple[int, float]:
    from . import _kernels

    if border_mode == "copy":
        return _kernels.COPY, 0.0
    if border_mode == "zero":
        return _kernels.FILL, 0.0
    if border_mode == "nan":
        return _kernels.FILL, float("nan")
    raise ValueError(f"border_mode={border_mode!r} is not one of {BORDER_MODES}; choose one of them.")


def shift_frame(frame: np.ndarray, shift: Sequence[float], border_mode: str = "copy", *,
                out: np.ndarray | None = None) -> np.ndarray:
    """Correct a frame displaced by a rigid ``shift``: ``out(p) = frame(p + shift)``.

    Parameters
    ----------
    frame
        ``(H, W)`` or ``(Z, H, W)``; not modified.
    shift
        Displacement ``(dy, dx)`` or ``(dz, dy, dx)`` in pixels, as estimated by
        :func:`~somascope.motion.register_frame`.
    border_mode
        ``"copy"``, ``"zero"`` or ``"nan"`` for pixels shifted in from outside the frame.
    out
        Optional float32 C-contiguous array of the frame's shape to write into (not the frame).

    Returns
    -------
    float32 array of the frame's shape (``out`` when given, else a new array).
    """
    frame = np.asarray(frame)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    if shift.size != frame.ndim:
        raise ValueError(f"shift has {shift.size} components but the frame has {frame.ndim} axes {frame.shape}; "
                         "pass one shift per spatial axis.")
    if out is None:
        out = np.empty(frame.shape, dtype=np.float32)
    _shift_into(np.ascontiguousarray(frame, dtype=np.float32), out, None, shift, border_mode)
    return out


def _shift_into(src: np.ndarray, out: np.ndarray, tmp: np.ndarray | None, shift: np.ndarray,
                border_mode: str) -> None:
    """Separable cubic shift of ``src`` into ``out`` (float32, C-contiguous, same shape), one
    pass per shifted axis, ping-ponging with ``tmp`` (allocated when needed and not given)."""
    from . import _kernels

    mode, fill = _border(border_mode)
    axes = [a for a in range(src.ndim) if shift[a] != 0.0]
    if not axes:
        out[...] = src
        return
    if len(axes) > 1 and tmp is None:
        tmp = np.empty_like(out)
    # the last pass must land in ``out``: start there for an odd number of passes
    dst = out if len(axes) % 2 == 1 else tmp
    current = src
    for axis in axes:
        a = int(np.prod(src.shape[:axis], dtype=np.int64))
        b = int(np.prod(src.shape[axis + 1:], dtype=np.int64))
        n = src.shape[axis]
        if b == 1:
            _kernels.shift_last(current.reshape(a, n), dst.reshape(a, n), float(shift[axis]), mode, fill)
        else:
            _kernels.shift_axis(current.reshape(a, n, b), dst.reshape(a, n, b), float(shift[axis]), mode, fill)
        current = dst
        dst = tmp if dst is out else out


def warp_frame(frame: np.ndarray, field: np.ndarray, border_mode: str = "copy", *,
               out: np.ndarray | None = None) -> np.ndarray:
    """Correct a frame with a per-pixel displacement field: ``out(p) = frame(p + field[:, p])``.

    Parameters
    ----------
    frame
        ``(H, W)`` or ``(Z, H, W)``; not modified.
    field
        ``(ndim, *frame.shape)`` displacement in pixels (e.g. from
        :func:`~somascope.motion.displacement_field`).
    border_mode
        ``"copy"``, ``"zero"`` or ``"nan"``.
    out
        Optional float32 C-contiguous array of the frame's shape to write into.

    Returns
    -------
    float32 array of the frame's shape (``out`` when given).
    """
    from . import _kernels

    frame = np.ascontiguousarray(frame, dtype=np.float32)
    field = np.asarray(field, dtype=np.float32)
    if field.shape != (frame.ndim, *frame.shape):
        raise ValueError(f"field of shape {field.shape} does not fit a frame of shape {frame.shape}; "
                         f"expected {(frame.ndim, *frame.shape)}.")
    mode, fill = _border(border_mode)
    if out is None:
        out = np.empty_like(frame)
    comps = [np.ascontiguousarray(c) for c in field]
    if frame.ndim == 2:
        _kernels.remap2d(frame, comps[0], comps[1], out, mode, fill)
    elif frame.ndim == 3:
        _kernels.remap3d(frame, comps[0], comps[1], comps[2], out, mode, fill)
    else:
        raise ValueError(f"frames must be 2-D or 3-D, got shape {frame.shape}.")
    return out
