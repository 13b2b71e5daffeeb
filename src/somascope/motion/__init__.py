"""Motion correction (NoRMCorre): rigid and piecewise-rigid, sub-pixel, 2-D and 3-D, in parallel.

Whole movies::

    result = motion.correct(movie, params, out="run/corrected.zarr", engine=engine)
    result.save("run/motion")                        # shifts.csv/.npy, template, metrics.json
    motion.apply_shifts(red_channel, result, out="run/red.zarr")

Frame by frame (e.g. online processing)::

    shift, corr = motion.register_frame(frame, template, max_shifts=(6, 6))
    fixed = motion.shift_frame(frame, shift, border_mode="copy")

Sign convention (``docs/conventions.md``): a displacement ``d`` means
``frame(p) ≈ template(p - d)``; correcting samples the frame at ``p + d``. See ``docs/motion.md``.
"""

from __future__ import annotations

from .driver import PW_RIGID_AUTO_THRESHOLD_PX, apply_shifts, border_pix, correct, mean_after_shifts, nonrigid_residual
from .metrics import crispness, frame_correlations
from .piecewise import PatchGrid, displacement_field, patch_grid, register_frame_pw
from .registration import TemplatePlan, high_pass, prepare_template, register_frame, register_frames
from .result import MotionResult
from .warp import shift_frame, warp_frame

__all__ = [
    "MotionResult",
    "PW_RIGID_AUTO_THRESHOLD_PX",
    "PatchGrid",
    "TemplatePlan",
    "apply_shifts",
    "border_pix",
    "correct",
    "crispness",
    "displacement_field",
    "frame_correlations",
    "high_pass",
    "mean_after_shifts",
    "nonrigid_residual",
    "patch_grid",
    "prepare_template",
    "register_frame",
    "register_frame_pw",
    "register_frames",
    "shift_frame",
    "warp_frame",
]
