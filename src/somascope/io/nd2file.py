"""Nikon NIS-Elements ``.nd2`` files, read with the ``nd2`` package (extra ``somascope[nd2]``).

What is read, and from where:

- **Axes** from ``ND2File.sizes`` (the experiment loops, outermost first, then ``C``, ``Y``,
  ``X``). ``T`` is time and must be present. ``Z`` becomes **interleaved planes**: stored frame
  ``t * Z + z`` of this segment is plane ``z`` of volume ``t``, and ``metadata["n_planes"] = Z``,
  so :class:`~somascope.io.Movie` gives a ``T×Z×H×W`` movie, or one plane with ``plane=``.
  ``C`` is chosen with ``channel=`` (0-based, in the file's channel order); a file with several
  channels and no choice is refused. Several stage positions (``P``, an XY loop), a custom loop
  (``U``) or RGB pixels are refused with the fix (export one position / one grey channel).
- **Pixels** one 2-D plane at a time with ``ND2File.read_frame(seq)``, where the sequence index
  ``seq`` is the C-order ravel of the loop coordinates over the loops in ``sizes`` order (how the
  ``nd2`` package itself indexes its frames). The file is memory-mapped by ``nd2``; only the
  planes asked for are touched.
- **Frame rate** (volumes per second when there are planes) from the frames' own time stamps
  (``frame_metadata(seq).channels[0].time.relativeTimeMs``) of the first and last time point:
  ``(T - 1) / (t_last - t_first)``. The time loop's requested period (``experiment`` →
  ``TimeLoop``/``NETimeLoop`` ``periodMs``) is the fallback: NIS writes 0 or 1 ms there for
  "as fast as possible", and the measured ``periodDiff`` disagrees with the stamps in real
  files, so stamps come first. Both are shown in ``details``.
- **Pixel size** from ``ND2File.voxel_size()`` (µm, the calibration of channel 0) when the file
  says its axes are calibrated; the Z step goes to ``details``.
- An acquisition stopped early (fewer stored frames than the loops promise) keeps the complete
  time points when time is the outermost loop, and is refused otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MovieError, import_optional, one_line

#: Loop axes the reader understands; anything else with more than one step is refused.
_FRAME_AXES = ("C", "Y", "X")


def _open_nd2(path: Path) -> Any:
    """An open ``nd2.ND2File`` for ``path`` (kept a module function so it can be replaced)."""
    nd2 = import_optional("nd2", path, "Nikon .nd2 files", "nd2")
    try:
        return nd2.ND2File(str(path))
    except Exception as exc:  # nd2 raises OSError/ValueError/struct.error for damaged files
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: BaseException) -> MovieError:
    """The error for a file ``nd2`` cannot open or whose metadata it cannot decode (it parses
    the chunk map lazily, so truncation may surface on the first metadata access)."""
    return MovieError(
        f"{path}: not a readable ND2 file ({one_line(exc, 120)}); the file may be truncated or "
        "damaged — copy it again or re-export it from NIS-Elements."
    )



class Nd2Segment:
    """One ``.nd2`` file as a segment: ``n_raw = T·Z`` stored 2-D frames of one channel,
    ``frame_shape = (H, W)``, planes interleaved (see the module docstring)."""

    def __init__(self, path: Path, *, channel: int | None = None) -> None:
        self.path = Path(path)
        self._file: Any = None
        f = self._open()
        try:
            self._describe(f, channel)
        except MovieError:
            self.close()
            raise
        except Exception as exc:  # metadata the nd2 package could not decode
            self.close()
            raise _unreadable(self.path, exc) from exc
        self.close()  # reopened on the first read (and by each worker)

    # -- metadata ------------------------------------------------------------------
    def _describe(self, f: Any, channel: int | None) -> None:
        sizes = {str(k): int(v) for k, v in dict(f.sizes).items()}
        if int(sizes.get("S", 1)) > 1 or getattr(f, "is_rgb", False):
            raise MovieError(
                f"{self.path}: holds RGB pixels (axes {_axes_text(sizes)}); export one grey "
                "channel per plane from NIS-Elements."
            )
        if sizes.get("P", 1) > 1:
            raise MovieError(
                f"{self.path}: holds {sizes['P']} stage positions (XY loop, axes {_axes_text(sizes)}); "
                "export one position to its own file (NIS-Elements: split the multipoint ND "
                "document, or save nd2.ND2File(path).asarray(position=k) as TIFF)."
            )
        other = [k for k in sizes if k not in ("T", "Z", "P", *_FRAME_AXES) and sizes[k] > 1]
        if other:
            raise MovieError(
                f"{self.path}: has loop axes {other} besides time, Z and channel (axes "
                f"{_axes_text(sizes)}); export a plain time series (T, optionally Z and C)."
            )
        if sizes.get("T", 1) < 2:
            raise MovieError(
                f"{self.path}: is not a time series (axes {_axes_text(sizes)}, no time loop with "
                "more than one point); somascope reads movies."
            )
        self.sizes = sizes
        self.coord_axes = [k for k in sizes if k not in ("S", *_FRAME_AXES)]
        self.coord_shape = tuple(sizes[k] for k in self.coord_axes)
        n_t, self.n_z = sizes["T"], sizes.get("Z", 1)
        n_c = sizes.get("C", 1)
        if channel is None:
            if n_c > 1:
                raise MovieError(
                    f"{self.path}: has {n_c} channels ({', '.join(_channel_names(f, n_c))}); pass "
                    f"channel= (0..{n_c - 1}) to choose the functional channel."
                )
            channel = 0
        if not 0 <= int(channel) < n_c:
            raise MovieError(f"{self.path}: channel={channel} out of range 0..{n_c - 1}.")
        self.channel, self.n_channels = int(channel), n_c
        stored = _stored_frames(f)
        details: dict[str, Any] = {"axes": _axes_text(sizes)}
        expected = int(np.prod(self.coord_shape, dtype=np.int64))
        if stored is not None and stored < expected:
            per_t = expected // n_t
            if self.coord_axes[0] != "T" or stored < per_t:
                raise MovieError(
                    f"{self.path}: stores {stored} of the {expected} frames its loops describe and "
                    "time is not the outermost loop; re-export the acquired part from NIS-Elements."
                )
            details["incomplete"] = f"{stored} of {expected} frames stored; kept {stored // per_t} time points"
            n_t = stored // per_t
        self.n_t = n_t
        self.n_raw = n_t * self.n_z
        self.frame_shape = (sizes["Y"], sizes["X"])
        self.dtype = np.dtype(f.dtype).newbyteorder("=")
        self.metadata = self._metadata(f, details)

    def _metadata(self, f: Any, details: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"format": "Nikon ND2", "n_channels": 1}
        names = _channel_names(f, self.n_channels)
        details["channel"] = f"{self.channel} ({names[self.channel]})" if names else self.channel
        stamp_period = self._stamp_period_s(f)
        loop_period = _loop_period_s(f)
        if loop_period is not None:
            details["time_loop_period_s"] = round(loop_period, 6)
        if stamp_period is not None:
            details["time_stamp_period_s"] = round(stamp_period, 6)
        period = stamp_period if stamp_period is not None else loop_period
        if period is not None:
            meta["frame_rate"] = 1.0 / period
            details["frame_rate_from"] = "frame time stamps" if stamp_period is not None else "time loop period"
        if self.n_z > 1:
            meta["n_planes"] = self.n_z
            meta["frame_rate_per_volume"] = True
        pixel = _pixel_size_um(f)
        if pixel is not None:
            meta["pixel_size_um"] = pixel[:2]
            if self.n_z > 1 and pixel[2] is not None:
                details["z_step_um"] = pixel[2]
        objective = _objective(f)
        if objective:
            details["objective"] = objective
        meta["details"] = details
        return meta

    def _stamp_period_s(self, f: Any) -> float | None:
        """Seconds between time points from the first and last time points' stamps."""
        first = _frame_time_ms(f, self._seq_index(0))
        last = _frame_time_ms(f, self._seq_index((self.n_t - 1) * self.n_z))
        if first is None or last is None or not last > first:
            return None
        return (last - first) / 1000.0 / (self.n_t - 1)

    def _seq_index(self, raw: int) -> int:
        """The ``nd2`` sequence index of stored frame ``raw`` (= ``t * Z + z``)."""
        t, z = divmod(int(raw), self.n_z)
        coords = [t if a == "T" else z if a == "Z" else 0 for a in self.coord_axes]
        return int(np.ravel_multi_index(coords, self.coord_shape)) if coords else 0

    # -- handles -------------------------------------------------------------------
    def _open(self) -> Any:
        if self._file is None:
            self._file = _open_nd2(self.path)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # closing a damaged file must not mask the real error
                pass
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    # -- reading -------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Stored frames at sorted ``indices`` as ``(n, H, W)`` in the file's dtype."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.frame_shape), dtype=self.dtype)
        if len(indices) == 0:
            return out
        f = self._open()
        for k, raw in enumerate(indices):
            if not 0 <= raw < self.n_raw:
                raise MovieError(f"{self.path}: frame {raw} out of range 0..{self.n_raw - 1}.")
            try:
                plane = np.asarray(f.read_frame(self._seq_index(int(raw))))
            except Exception as exc:
                raise MovieError(
                    f"{self.path}: frame {raw} could not be read ({one_line(exc, 120)}); the file may be "
                    "truncated or damaged — copy it again or re-export it from NIS-Elements."
                ) from exc
            if self.n_channels > 1:
                plane = plane[self.channel]
            out[k] = plane.reshape(self.frame_shape)
        return out


# -- metadata helpers ------------------------------------------------------------------
def _axes_text(sizes: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def _stored_frames(f: Any) -> int | None:
    """Frames the file stores (``attributes.sequenceCount``), if it says."""
    try:
        count = f.attributes.sequenceCount
    except Exception:
        return None
    return int(count) if count else None


def _channel_names(f: Any, n: int) -> list[str]:
    try:
        names = [str(ch.channel.name) for ch in f.metadata.channels]
    except Exception:
        return []
    return names if len(names) == n else []


def _frame_time_ms(f: Any, seq: int) -> float | None:
    try:
        value = f.frame_metadata(seq).channels[0].time.relativeTimeMs
    except Exception:  # legacy files give dicts; no stamp is not an error
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _loop_period_s(f: Any) -> float | None:
    """The time loop's requested period in seconds, when it is a real interval (> 1 ms)."""
    try:
        loops = list(f.experiment)
    except Exception:
        return None
    for loop in loops:
        kind = getattr(loop, "type", "")
        params = getattr(loop, "parameters", None)
        if kind == "TimeLoop":
            period = getattr(params, "periodMs", None)
        elif kind == "NETimeLoop":
            phases = [p for p in (getattr(params, "periods", None) or []) if getattr(p, "count", 0)]
            period = getattr(phases[0], "periodMs", None) if len(phases) == 1 else None
        else:
            continue
        if period is not None and float(period) > 1.0:
            return float(period) / 1000.0
    return None


def _pixel_size_um(f: Any) -> tuple[float, float, float | None] | None:
    """``(y, x, z)`` µm from ``voxel_size()``, or None when the axes are not calibrated."""
    try:
        calibrated = f.metadata.channels[0].volume.axesCalibrated
    except Exception:
        calibrated = None
    if calibrated is not None and not any(calibrated[:2]):
        return None
    try:
        vs = f.voxel_size()
        x, y, z = float(vs.x), float(vs.y), float(vs.z)
    except Exception:
        return None
    if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
        return None
    if calibrated is None and x == 1.0 and y == 1.0:
        return None  # nd2's value when the file has no calibration
    return (y, x, z if z > 0 and math.isfinite(z) else None)


def _objective(f: Any) -> str | None:
    try:
        name = f.metadata.channels[0].microscope.objectiveName
    except Exception:
        return None
    return str(name) if name else None
