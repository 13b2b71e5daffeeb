"""Multi-day registration: the same cells across sessions (the CaImAn paper's RegisterPair and
RegisterMulti). Guide: docs/multiday.md."""

from __future__ import annotations

from .align import Alignment, align_images, warp_footprints
from .register import MultiResult, PairResult, Session, as_session, linking_scores, register_multi, register_pair

__all__ = ["Alignment", "MultiResult", "PairResult", "Session", "align_images", "as_session", "linking_scores",
           "register_multi", "register_pair", "warp_footprints"]
