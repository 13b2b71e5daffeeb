"""Inscopix ``.isxd`` movies, read with Inscopix's ``isx`` package (extra ``somascope[inscopix]``).

What is read, and from where:

- **Frames** one at a time with ``isx.Movie.get_frame_data(i)`` (``(H, W)``, uint16, float32 or
  uint8); ``isx.Movie.read`` only parses the header, so opening is cheap and reads are lazy.
- **Shape** from ``Movie.spacing.num_pixels`` (rows, columns) and ``Movie.timing.num_samples``.
  Every sample is a stored frame, including the ones the timing marks dropped, cropped or blank:
  the library returns those as zero frames, and keeping them keeps frame ``k`` at time
  ``k · period`` (alignment with GPIO/behaviour). How many there are, and the first few, are
  shown in ``details`` (``invalid_frames``) so they can be excluded downstream.
- **Frame rate** ``1 / Movie.timing.period`` (seconds, an exact ratio in the file).
- **Pixel spacing**: the header's ``spacing`` pixel width/height is shown in ``details``
  (``header_pixel_spacing``) but not used as ``pixel_size_um``: Inscopix writes a fixed default
  (3) where nothing was calibrated, so the value says nothing about the specimen.
- **Acquisition info** (``Movie.get_acquisition_info()``: microscope, exposure, LED power, …,
  present in nVista/nVoke files) goes to ``details`` as its scalar values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MovieError, import_optional, one_line


def _isx(path: Path) -> Any:
    return import_optional("isx", path, "Inscopix .isxd files", "inscopix")



class IsxdSegment:
    """One ``.isxd`` movie: ``n_raw`` frames of ``frame_shape = (H, W)``."""

    def __init__(self, path: Path, *, channel: int | None = None) -> None:
        self.path = Path(path)
        self._movie: Any = None
        if channel not in (None, 0):
            raise MovieError(
                f"{self.path}: channel={channel} given but an .isxd movie has one channel; "
                "leave channel out (dual-colour recordings are separate .isxd files)."
            )
        movie = self._open()
        try:
            timing, spacing = movie.timing, movie.spacing
            self.n_raw = int(timing.num_samples)
            self.frame_shape = tuple(int(n) for n in spacing.num_pixels)
            self.dtype = np.dtype(movie.data_type).newbyteorder("=")
            self.metadata = _metadata(movie, timing, spacing)
        except MovieError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise MovieError(
                f"{self.path}: its .isxd header could not be read ({one_line(exc)}); the file may be "
                "damaged — export it again from Inscopix Data Processing."
            ) from exc
        self.close()
        if self.n_raw < 1 or min(self.frame_shape) < 1:
            raise MovieError(
                f"{self.path}: holds no frames (samples {self.n_raw}, frame {self.frame_shape}); "
                "check that the recording finished writing."
            )

    # -- handles -------------------------------------------------------------------
    def _open(self) -> Any:
        if self._movie is None:
            isx = _isx(self.path)
            try:
                self._movie = isx.Movie.read(str(self.path))
            except Exception as exc:  # isx raises a bare Exception with the C library's message
                raise MovieError(
                    f"{self.path}: not a readable Inscopix movie ({one_line(exc)}); the file may be "
                    "truncated or not an .isxd movie (cell sets and event sets are not movies)."
                ) from exc
        return self._movie

    def close(self) -> None:
        self._movie = None  # isx frees the C handle when the object goes away

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_movie"] = None
        return state

    # -- reading -------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted ``indices`` as ``(n, H, W)`` in the file's dtype."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.frame_shape), dtype=self.dtype)
        if len(indices) == 0:
            return out
        movie = self._open()
        for k, i in enumerate(indices):
            try:
                out[k] = movie.get_frame_data(int(i))
            except Exception as exc:
                raise MovieError(
                    f"{self.path}: frame {int(i)} could not be read ({one_line(exc)}); the file may "
                    "be truncated or damaged — copy or export it again."
                ) from exc
        return out


def _metadata(movie: Any, timing: Any, spacing: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": "Inscopix ISXD"}
    details: dict[str, Any] = {}
    period = float(timing.period.secs_float)
    if period > 0 and math.isfinite(period):
        meta["frame_rate"] = 1.0 / period
        details["frame_period_s"] = period
    invalid = np.flatnonzero(~np.asarray(timing.get_valid_samples_mask(), dtype=bool))
    if invalid.size:
        details["invalid_frames"] = {
            "count": int(invalid.size),
            "first": invalid[:10].tolist(),
            "why": f"dropped {len(timing.dropped)}, cropped ranges {len(timing.cropped)}, "
                   f"blank {len(timing.blank)}; read as zero frames",
        }
    impl = getattr(spacing, "_impl", None)  # the header's pixel spacing has no public accessor
    try:
        details["header_pixel_spacing"] = [float(impl.pixel_height._as_float()), float(impl.pixel_width._as_float())]
    except Exception:
        pass
    try:
        start = timing.start.to_datetime()
        if start.year > 1970:
            details["start"] = str(start)
    except Exception:
        pass
    try:
        acq = movie.get_acquisition_info() or {}
    except Exception:
        acq = {}
    scalars = {str(k): v for k, v in acq.items() if isinstance(v, (int, float, str, bool))}
    if scalars:
        details["acquisition"] = dict(list(scalars.items())[:20])
    meta["details"] = details
    return meta
