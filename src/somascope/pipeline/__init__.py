"""The batch pipeline: ``somascope run MOVIE --out DIR`` from a raw movie to cells.

:func:`run` chains the stages (:mod:`~somascope.pipeline.stages`: motion → summary → cnmf →
quality → refit → traces → results), keeps every stage's outputs on disk with a manifest of
what they were computed from, and on a second run reuses every stage whose inputs and
parameters did not change. :func:`load_results` reads ``OUT/results.h5``. See
``docs/pipeline.md``.

Errors: :class:`PipelineError` (a ValueError) refuses a run as asked (the input's or the
user's to fix); :class:`RunFault` stops a run for a fault that is not the input's (output disk
full or read-only, a lost cluster); :class:`RunInterrupted` (a KeyboardInterrupt) is Ctrl-C.
The messages of the last two say which finished stages were kept for the rerun.

Importing this package is light; the stages import their libraries when they run.
"""

from __future__ import annotations

from .errors import RunFault, RunInterrupted
from .preflight import PipelineError
from .results import PipelineResults, load_results
from .runner import RunResult, StageRecord, run
from .stages import STAGE_NAMES

__all__ = ["PipelineError", "PipelineResults", "RunFault", "RunInterrupted", "RunResult", "STAGE_NAMES",
           "StageRecord", "load_results", "run"]
