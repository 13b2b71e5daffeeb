"""Component evaluation: trace SNR, spatial consistency, the accept/reject rule, duplicates.

:func:`evaluate_components` scores the components of an :class:`~somascope.cnmf.estimates.Estimates`
against the movie and splits them into accepted and rejected (``quality``);
:func:`find_duplicates` / :func:`remove_duplicates` find components that are the same cell
twice by the overlap of their footprints (``duplicates``); :func:`activity_z` of
:func:`neuropil_traces` is the own activity that tells a structural channel's silent cells
(``activity``).
"""

from __future__ import annotations

from .activity import activity_z, neuropil_traces, neuropil_weights
from .duplicates import Duplicates, binary_masks, find_duplicates, remove_duplicates
from .quality import (
    Exceptionality,
    activity_frames,
    area_ratio,
    eccentricity,
    evaluate_components,
    event_exceptionality,
    footprint_masks,
    residual_traces,
    select_components,
    spatial_consistency,
    trace_mode,
    trace_snr,
)

__all__ = [
    "Duplicates",
    "Exceptionality",
    "activity_frames",
    "activity_z",
    "area_ratio",
    "binary_masks",
    "eccentricity",
    "evaluate_components",
    "event_exceptionality",
    "find_duplicates",
    "footprint_masks",
    "neuropil_traces",
    "neuropil_weights",
    "remove_duplicates",
    "residual_traces",
    "select_components",
    "spatial_consistency",
    "trace_mode",
    "trace_snr",
]
