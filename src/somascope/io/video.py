"""Video files (AVI, MP4, MKV, MOV, M4V) and Miniscope recording folders, read with PyAV.

What is read, and from where
----------------------------
Frames
    The first video stream of the file, decoded by FFmpeg through PyAV (``av``, the extra
    ``somascope[video]``). A grey stream (``gray``, ``gray10le`` … ``gray16le``) gives its stored
    values: ``uint8`` for 8 bits, ``uint16`` above (10/12-bit values stay 0…1023/4095, not
    rescaled). Any other stream (RGB, BGR, palette, YUV) gives by default its luminance Y',
    as FFmpeg's swscale computes it (``gray`` / ``gray16le``: BT.601 weights for RGB, so a grey
    picture stored as RGB reads back exactly; the Y plane brought to full range for YUV).
    ``channel=0, 1, 2`` instead keeps R, G or B of the frame converted to RGB (``rgb24`` /
    ``rgb48le`` above 8 bits); a grey stream accepts only ``channel=None`` or ``0``.
Frame count (``n_raw``)
    The container's frame count (AVI header and index, MP4 sample table) when it is there and
    the presentation timestamps run ``start + k·step`` (``step`` = one frame in the stream's
    time base): checked at open by decoding frame 0 and by demuxing the packets (without
    decoding) from the key frame before the last frame to the end. Otherwise (Matroska,
    rounded or variable timestamps, no count in the header) every packet is demuxed once, without
    decoding, and the sorted timestamps are the frame index. A file holding fewer frames than its
    header announces is truncated and refused.
Seeking
    Frame ``k`` seeks to its timestamp (``av_seek_frame`` to the key frame at or before it,
    through the container's index) and decodes forward to it. For intra-frame codecs (rawvideo,
    MJPEG, FFV1 written with ``g=1``, …) every frame is a key frame, so any frame costs one
    frame's read and decode, wherever it lies in the file. For long-GOP codecs (H.264, HEVC,
    MPEG-4, FFV1 with its default ``g=12``) a read decodes from the key frame before ``k``: up to
    one GOP of frames. Runs of consecutive frames (and small forward gaps, up to the distance
    seeks have had to decode) are decoded in one pass without seeking again.
Frame rate
    The stream's ``average_rate`` (else ``guessed_rate``, ``base_rate``), in Hz.

Miniscope folders (:func:`video_files`, :func:`miniscope_metadata`)
    * UCLA Miniscope V4 software: ``0.avi, 1.avi, …`` with ``metaData.json`` and
      ``timeStamps.csv`` (``Time Stamp (ms)`` column), usually in a ``My_V4_Miniscope``
      subfolder of the session folder; the session folder itself is accepted when exactly one
      of its subfolders holds videos, or exactly one of those is a Miniscope one (its name or
      its ``metaData.json`` ``deviceType`` says "miniscope").
    * the older Miniscope DAQ software: ``msCam1.avi, msCam2.avi, …`` (``behavCam*.avi`` are
      left out) with ``timestamp.dat`` (tab-separated ``camNum frameNum sysClock buffer``,
      ``sysClock`` in ms; with several cameras the one whose row count matches the msCam
      frames is used).

    Files are taken in natural order (``2.avi`` before ``10.avi``). The recording's frame
    rate, which every file's segment carries, is chosen in this order: ``metaData.json``
    ``frameRate`` (``"30FPS"`` or a number: the rate the sensor was set to); else the rate
    measured from the timestamps (1000 / the mean frame interval in ms, leaving out gaps longer
    than 1.5× the median interval); else the videos' own rate (the old DAQ software's AVI
    header rate is not the acquisition rate, so the timestamps win over it). ``details`` shows
    the measured rate, the videos' rate, which source won, and the frames the timestamps show
    missing (each gap of ``g`` median intervals counts ``round(g) - 1``).

No pixel size is stored by these formats.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MovieError, import_optional, one_line

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".m4v")
_TIFF_EXTENSIONS = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_V4_NAME = re.compile(r"^\d+$")
_OLD_NAME = re.compile(r"^mscam\d+$", re.IGNORECASE)
_MAX_SUBFOLDERS = 32  # a session folder is scanned one level deep only when it has no more
_REPAIR = ("re-copy the file from the acquisition machine, or keep its complete frames with "
           "`ffmpeg -i IN -c copy OUT.mkv`")


# ----------------------------------------------------------------------------- folders
def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _videos_in(folder: Path) -> tuple[list[Path], bool]:
    """The video files directly in ``folder``, and whether it holds TIFFs (then the listing
    stops at the first one: a folder of TIFFs is not a video recording)."""
    videos = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                ext = os.path.splitext(entry.name)[1].lower()
                if ext in _TIFF_EXTENSIONS:
                    return [], True
                if ext in VIDEO_EXTENSIONS and entry.is_file():
                    videos.append(Path(entry.path))
    except OSError:
        return [], False
    return videos, False


def _recording_files(folder: Path, videos: list[Path]) -> list[Path]:
    """The files of the recording among ``videos``: the Miniscope ones when the folder is a
    Miniscope folder (``msCam*.avi``; numbered ``N.avi`` beside ``metaData.json``), else all."""
    old = [p for p in videos if _OLD_NAME.match(p.stem)]
    if old:
        return sorted(old, key=_natural_key)
    if (folder / "metaData.json").is_file():
        numbered = [p for p in videos if _V4_NAME.match(p.stem)]
        if numbered:
            return sorted(numbered, key=_natural_key)
    return sorted(videos, key=_natural_key)


def _is_miniscope_folder(folder: Path) -> bool:
    if "miniscope" in folder.name.lower():
        return True
    try:
        meta = json.loads((folder / "metaData.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "miniscope" in str(meta.get("deviceType", "")).lower()


def video_files(path: Path) -> list[Path] | None:
    """The video files of the recording in folder ``path``, in recording order; None when
    ``path`` is not such a folder (a file, a folder holding TIFFs, a Zarr store, a folder
    without videos).

    A folder holding video files and no TIFFs is a recording (Miniscope rules in the module
    docstring). A folder with no videos of its own is looked into one level deep (at most
    32 subfolders): exactly one video subfolder, or exactly one Miniscope subfolder among
    several, is the recording. Imports no video library.

    Raises
    ------
    MovieError
        When several subfolders hold videos and none (or more than one) is a Miniscope one:
        the message lists them.
    """
    path = Path(path)
    if not path.is_dir() or path.suffix.lower() == ".zarr":
        return None
    if any((path / m).exists() for m in (".zarray", ".zgroup", "zarr.json")):
        return None
    videos, tiffs = _videos_in(path)
    if tiffs:
        return None
    if videos:
        return _recording_files(path, videos)
    try:
        subfolders = [Path(e.path) for e in os.scandir(path) if e.is_dir()]
    except OSError:
        return None
    if not subfolders or len(subfolders) > _MAX_SUBFOLDERS:
        return None
    found: dict[Path, list[Path]] = {}
    for sub in subfolders:
        sub_videos, sub_tiffs = _videos_in(sub)
        if sub_videos and not sub_tiffs:
            found[sub] = sub_videos
    if not found:
        return None
    if len(found) > 1:
        scopes = [s for s in found if _is_miniscope_folder(s)]
        if len(scopes) != 1:
            names = ", ".join(sorted(s.name for s in found))
            raise MovieError(
                f"{path}: holds no video files itself, and several subfolders with videos ({names}); "
                "point at the one with the recording."
            )
        found = {scopes[0]: found[scopes[0]]}
    sub, sub_videos = next(iter(found.items()))
    return _recording_files(sub, sub_videos)


# ----------------------------------------------------------------------------- Miniscope
def _number(value: Any) -> float | None:
    """A positive number from ``30``, ``"30FPS"``, ``"30.0 fps"``; None otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = re.search(r"\d+(?:\.\d*)?|\.\d+", str(value))
        if match is None:
            return None
        number = float(match.group())
    return number if number > 0 and math.isfinite(number) else None


def _timestamp_rate(times_ms: np.ndarray) -> dict[str, Any]:
    """Measured rate (Hz) and missing frames from frame times in ms.

    Intervals longer than 1.5× the median are gaps: each counts ``round(gap / median) - 1``
    missing frames and is left out of the mean interval that gives the rate.
    """
    t = np.asarray(times_ms, dtype=np.float64)
    t = t[np.isfinite(t)]
    intervals = np.diff(t)
    intervals = intervals[intervals > 0]
    if len(intervals) < 2:
        return {}
    median = float(np.median(intervals))
    gaps = intervals[intervals > 1.5 * median]
    regular = intervals[intervals <= 1.5 * median]
    return {
        "timestamps_frame_rate": round(1000.0 / float(np.mean(regular)), 4),
        "timestamps_median_interval_ms": round(median, 4),
        "dropped_frames": int(np.sum(np.round(gaps / median) - 1)),
        "timestamps": int(len(t)),
    }


def _read_table(path: Path, delimiter: str | None) -> tuple[list[str], np.ndarray]:
    """Header names (lower case) and the numeric rows of a small text table."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    names = [n.strip().lower() for n in (header.split(delimiter) if delimiter else header.split())]
    rows = np.loadtxt(path, delimiter=delimiter, skiprows=1, ndmin=2, dtype=np.float64)
    return names, rows


def _v4_timestamps(folder: Path) -> dict[str, Any]:
    path = folder / "timeStamps.csv"
    if not path.is_file():
        return {}
    try:
        names, rows = _read_table(path, ",")
        column = next(i for i, n in enumerate(names) if "time" in n)
        return _timestamp_rate(rows[:, column])
    except (ValueError, StopIteration, IndexError, OSError) as exc:
        return {"timestamps_error": f"timeStamps.csv unreadable ({exc})"[:200]}


def _old_timestamps(folder: Path, videos: list[Path]) -> dict[str, Any]:
    path = folder / "timestamp.dat"
    if not path.is_file():
        return {}
    try:
        names, rows = _read_table(path, None)
        cam = rows[:, names.index("camnum")]
        clock = rows[:, names.index("sysclock")]
    except (ValueError, IndexError, OSError) as exc:
        return {"timestamps_error": f"timestamp.dat unreadable ({exc})"[:200]}
    cameras = np.unique(cam)
    chosen = cameras[0]
    if len(cameras) > 1:  # the Miniscope camera is the one with as many rows as msCam frames
        total = _count_frames_quickly(videos)
        counts = {c: int(np.sum(cam == c)) for c in cameras}
        chosen = min(cameras, key=lambda c: abs(counts[c] - total))
    found = _timestamp_rate(clock[cam == chosen])
    if found:
        found["timestamps_camera"] = int(chosen)
    return found


def _count_frames_quickly(videos: list[Path]) -> int:
    """Frames announced by the files' headers (no decoding), for telling cameras apart."""
    av = _import_av(videos[0])
    total = 0
    for path in videos:
        try:
            with av.open(str(path)) as container:
                total += int(container.streams.video[0].frames)
        except Exception:  # a bad file is reported by its own segment
            continue
    return total


def _stamp(folder: Path) -> tuple[Any, ...]:
    """What invalidates the cached folder metadata: the metadata files' sizes and times."""
    out = []
    for name in ("metaData.json", "timeStamps.csv", "timestamp.dat"):
        try:
            st = (folder / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def miniscope_kind(path: Path) -> str | None:
    """``"V4"`` or ``"DAQ"`` when ``path`` is a file of a Miniscope recording folder (a
    numbered ``N.avi`` beside ``metaData.json``; an ``msCamN.avi``), else None."""
    path = Path(path)
    if path.suffix.lower() != ".avi":
        return None
    if _V4_NAME.match(path.stem) and (path.parent / "metaData.json").is_file():
        return "V4"
    if _OLD_NAME.match(path.stem):
        return "DAQ"
    return None


def miniscope_metadata(folder: Path) -> dict[str, Any]:
    """Recording-level metadata of a Miniscope folder, cached per folder.

    Returns ``{"frame_rate": Hz or None, "details": {...}}``: the configured rate from
    ``metaData.json``, else the rate measured from the timestamps (the video rate is the
    caller's fallback); ``details`` holds the timestamps' rate, interval, missing frames and
    count, the source of the rate, and the scalar settings of ``metaData.json``.
    """
    folder = Path(folder).absolute()
    cached = _miniscope_metadata(str(folder), _stamp(folder))
    return {"frame_rate": cached["frame_rate"], "details": dict(cached["details"])}


@functools.lru_cache(maxsize=64)
def _miniscope_metadata(folder_name: str, stamp: tuple[Any, ...]) -> dict[str, Any]:
    folder = Path(folder_name)
    details: dict[str, Any] = {}
    rate: float | None = None
    meta_path = folder / "metaData.json"
    if meta_path.is_file():
        details["miniscope"] = "V4"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8", errors="replace"))
        except ValueError as exc:
            meta = {}
            details["metadata_error"] = f"metaData.json unreadable ({exc})"[:200]
        if isinstance(meta, dict):
            for key in ("deviceType", "deviceName", "frameRate", "gain", "led0", "ewl", "compression",
                        "framesPerFile"):
                if isinstance(meta.get(key), (int, float, str)) and not isinstance(meta.get(key), bool):
                    details[key] = meta[key]
            rate = _number(meta.get("frameRate")) if "frameRate" in meta else None
            if rate is not None:
                details["frame_rate_source"] = "metaData.json frameRate"
        details.update(_v4_timestamps(folder))
    else:
        details["miniscope"] = "DAQ (msCam)"
        videos = sorted((p for p in folder.glob("*.avi") if _OLD_NAME.match(p.stem)), key=_natural_key)
        details.update(_old_timestamps(folder, videos) if videos else {})
    if rate is None and "timestamps_frame_rate" in details:
        rate = float(details["timestamps_frame_rate"])
        details["frame_rate_source"] = "timestamps"
    measured = details.get("timestamps_frame_rate")
    if rate is not None and measured and abs(measured - rate) > 0.05 * rate:
        details["frame_rate_note"] = (f"timestamps measure {measured:g} Hz, {rate:g} Hz is used; "
                                      "pass frame_rate= / --fr to use another")
    return {"frame_rate": rate, "details": details}


# ----------------------------------------------------------------------------- one file
def _import_av(path: Path) -> Any:
    return import_optional("av", path, "video files (PyAV)", "video")


def _stream_rate(stream: Any) -> float | None:
    for name in ("average_rate", "guessed_rate", "base_rate"):
        value = getattr(stream, name, None)
        if value:
            rate = float(value)
            if rate > 0 and math.isfinite(rate):
                return rate
    return None


def _format_bits(fmt: Any) -> int:
    return max((int(c.bits) for c in fmt.components if not c.is_alpha), default=8)


def _is_grey(fmt: Any) -> bool:
    """An integer grey pixel format (``gray``, ``gray10le``, ``gray16be``, …)."""
    return re.fullmatch(r"gray\d*(le|be)?", fmt.name) is not None


class VideoSegment:
    """One video file read with PyAV: ``n_raw`` frames of shape ``(H, W)``, ``uint8`` (or
    ``uint16`` for streams of more than 8 bits).

    Grey streams give their stored values; colour streams their luminance, or with
    ``channel`` = 0/1/2 the R/G/B channel (module docstring). Frame ``k`` is reached by seeking
    to its timestamp: one frame's work for intra-frame codecs (rawvideo, MJPEG, intra FFV1),
    decoding from the previous key frame for long-GOP codecs (H.264, …). The frame index
    (``start + k·step`` checked at both ends, or every packet's timestamp) is built at
    construction by demuxing only; the container is reopened lazily after pickling.

    A file of a Miniscope folder carries the recording's metadata
    (:func:`miniscope_metadata`): frame rate and timestamp facts.
    """

    def __init__(self, path: Path, *, channel: int | None = None) -> None:
        self.path = Path(path)
        self._container: Any = None
        self._stream: Any = None
        self._frames: Iterator[Any] | None = None
        self._last: int | None = None  # index of the frame the decoder gave last
        self._lookback = 0  # most frames a seek has had to decode before its target
        self._pts: np.ndarray | None = None  # every frame's timestamp, when not start + k·step
        self._start = 0  # timestamp of frame 0 and ticks per frame (stream time base)
        self._tb_step: float | None = None
        try:
            self._open()
            stream = self._stream
            first = self._first_frame()
            if first is None:
                raise MovieError(f"{self.path}: its video stream holds no decodable frame (the file is empty or damaged); {_REPAIR}.")
            fmt = first.format
            self.codec = str(stream.codec_context.name)
            self.pixel_format = str(fmt.name)
            self.grey = _is_grey(fmt)
            self.channel = self._check_channel(channel)
            bits = _format_bits(fmt)
            self.dtype = np.dtype(np.uint8 if bits <= 8 else np.uint16)
            self._convert_to = ("rgb24" if bits <= 8 else "rgb48le") if self.channel is not None else (
                "gray" if bits <= 8 else "gray16le")
            self.frame_shape = (int(first.height), int(first.width))
            self.video_rate = _stream_rate(stream)
            self._start = int(first.pts) if first.pts is not None else 0
            self.n_raw = self._count(stream)
            self.metadata = self._metadata()
        except MovieError:
            raise
        except Exception as exc:
            raise MovieError(f"{self.path}: not a readable video ({one_line(exc)}); {_REPAIR}.") from exc
        finally:
            self.close()

    # -- opening and indexing ----------------------------------------------------------
    def _open(self) -> None:
        if self._container is not None:
            return
        av = _import_av(self.path)
        try:
            container = av.open(str(self.path))
        except Exception as exc:
            raise MovieError(
                f"{self.path}: not a readable video file ({one_line(exc)}); check that it is a complete "
                f"{self.path.suffix or 'video'} file ({_REPAIR})."
            ) from exc
        if not container.streams.video:
            container.close()
            raise MovieError(f"{self.path}: holds no video stream; point at a file with the imaging frames.")
        self._container = container
        self._stream = container.streams.video[0]
        self._stream.thread_type = "SLICE"  # frame threading would delay single-frame reads
        self._frames, self._last = None, None

    def _first_frame(self) -> Any:
        for frame in self._container.decode(self._stream):
            return frame
        return None

    def _step(self, stream: Any) -> float | None:
        """Ticks of the stream's time base per frame, when the rate is known."""
        if not self.video_rate or not stream.time_base:
            return None
        return 1.0 / (self.video_rate * float(stream.time_base))

    def _count(self, stream: Any) -> int:
        """Frames in the file; sets ``_pts`` when timestamps are not ``start + k·step``."""
        self._tb_step = self._step(stream)
        announced = int(stream.frames or 0)
        if announced > 0 and self._tb_step and self._tail_matches(announced):
            return announced
        pts = self._demux_timestamps()
        if announced and len(pts) < announced:
            raise MovieError(
                f"{self.path}: is truncated or damaged: its header announces {announced} frames but only "
                f"{len(pts)} are there; {_REPAIR}."
            )
        if len(pts) == 0:
            raise MovieError(f"{self.path}: holds no frames; {_REPAIR}.")
        self._pts = pts
        return len(pts)

    def _tail_matches(self, n: int) -> bool:
        """Whether the packets from the key frame before frame ``n - 1`` to the end of the file
        end exactly with frame ``n - 1`` at ``start + (n - 1)·step`` (demuxed, not decoded)."""
        last = self._start + (n - 1) * self._tb_step
        half = self._tb_step / 2
        try:
            self._container.seek(int(math.floor(last + half)), stream=self._stream, backward=True,
                                 any_frame=False)
            seen = [_packet_time(p) for p in self._container.demux(self._stream) if p.size]
        except Exception:
            return False
        seen = [t for t in seen if t is not None]
        return bool(seen) and abs(max(seen) - last) < half  # the last frame is the last packet

    def _demux_timestamps(self) -> np.ndarray:
        """Every frame's presentation time, sorted, from the packets (no decoding)."""
        self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
        times = [_packet_time(p) for p in self._container.demux(self._stream) if p.size]
        if any(t is None for t in times):
            raise MovieError(
                f"{self.path}: its packets carry no timestamps, so frames cannot be addressed; "
                "remux it with `ffmpeg -i IN -c copy OUT.mkv`."
            )
        return np.unique(np.asarray(times, dtype=np.int64))

    def _check_channel(self, channel: int | None) -> int | None:
        if channel is None:
            return None
        if self.grey:
            if channel != 0:
                raise MovieError(f"{self.path}: is a grey video (one channel); channel={channel} does not exist.")
            return None
        if not 0 <= int(channel) <= 2:
            raise MovieError(f"{self.path}: channel={channel} out of range; pass 0 (R), 1 (G) or 2 (B), "
                             "or None for the luminance.")
        return int(channel)

    def _metadata(self) -> dict[str, Any]:
        container = self.path.suffix.lstrip(".").upper() or self._container.format.name.split(",")[0].upper()
        details: dict[str, Any] = {
            "codec": self.codec,
            "pixel_format": self.pixel_format,
            "read_as": "stored grey values" if self.grey else (
                "luminance" if self.channel is None else f"channel {'RGB'[self.channel]}"),
        }
        if self.video_rate:
            details["video_frame_rate"] = round(self.video_rate, 6)
        meta: dict[str, Any] = {"format": f"{container} video ({self.codec})", "details": details}
        rate = self.video_rate
        kind = miniscope_kind(self.path)
        if kind is not None:
            scope = miniscope_metadata(self.path.parent)
            details.update(scope["details"])
            if scope["frame_rate"] is not None:
                rate = scope["frame_rate"]
            elif rate is not None:
                details["frame_rate_source"] = "video"
            meta["format"] = f"Miniscope {kind} ({container} {self.codec})"
        if rate is not None:
            meta["frame_rate"] = float(rate)
        return meta

    # -- reading -----------------------------------------------------------------------
    def _time_of(self, k: int) -> tuple[int, float, float]:
        """(seek target, lowest, highest) timestamps that frame ``k`` may carry."""
        if self._pts is not None:
            t = int(self._pts[k])
            return t, t, t
        centre = self._start + k * self._tb_step
        half = self._tb_step / 2
        return int(math.floor(centre + half - 1e-9)), centre - half, centre + half

    def _index_of(self, pts: int) -> int:
        if self._pts is not None:
            i = int(np.searchsorted(self._pts, pts))
            return i if i < len(self._pts) and self._pts[i] == pts else -1
        return int(round((pts - self._start) / self._tb_step))

    def _next_frame(self) -> Any:
        if self._frames is None:
            self._frames = iter(self._container.decode(self._stream))
        frame = next(self._frames, None)
        if frame is None:
            return None, None
        pts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
        if pts is None:
            raise MovieError(f"{self.path}: a decoded frame carries no timestamp; remux it with "
                             "`ffmpeg -i IN -c copy OUT.mkv`.")
        return frame, self._index_of(int(pts))

    def _decode_to(self, k: int) -> tuple[Any, int | None]:
        """Decode on from the current position to frame ``k``: (the frame or None when it is
        passed or the stream ends, the index of the first frame decoded)."""
        first_index = None
        while True:
            frame, index = self._next_frame()
            if frame is None:
                self._frames, self._last = None, None
                return None, first_index
            self._last = index
            if first_index is None:
                first_index = index
            if index == k:
                return frame, first_index
            if index > k:
                return None, first_index

    def _frame(self, k: int) -> Any:
        """The decoded frame ``k``: decoded on when it is just ahead of the decoder (within
        the distance seeks have had to decode), else after a seek to the key frame before it.
        A seek that lands after ``k`` (a container indexing decode times) is retried from
        further back."""
        ahead = None if self._last is None else k - self._last
        if ahead is not None and 0 < ahead <= max(1, self._lookback):
            frame, _ = self._decode_to(k)
            if frame is not None:
                return frame
        for back in (0, 1, 8, 64, k):
            target = self._time_of(max(0, k - back))[0]
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            self._frames, self._last = None, None
            frame, first_index = self._decode_to(k)
            if frame is not None:
                self._lookback = max(self._lookback, k - int(first_index))
                return frame
            if first_index is None or first_index <= k or back == k:
                break
        self._frames, self._last = None, None
        raise MovieError(f"{self.path}: frame {k} of {self.n_raw} could not be decoded (the file is damaged "
                         f"or truncated); {_REPAIR}.")

    def _to_array(self, frame: Any) -> np.ndarray:
        if self.channel is not None:
            return frame.to_ndarray(format=self._convert_to)[..., self.channel]
        if self.grey and frame.format.name == self.pixel_format:
            try:
                return frame.to_ndarray()
            except (ValueError, NotImplementedError):
                pass
        return frame.to_ndarray(format=self._convert_to)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted raw ``indices`` as ``(n, H, W)`` (``dtype``), decoding only what
        reaching them needs."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.frame_shape), dtype=self.dtype)
        if len(indices) == 0:
            return out
        if indices[0] < 0 or indices[-1] >= self.n_raw:
            raise MovieError(f"{self.path}: frame indices {indices[0]}..{indices[-1]} outside 0..{self.n_raw - 1}.")
        self._open()
        try:
            for i, k in enumerate(indices):
                out[i] = self._to_array(self._frame(int(k)))
        except MovieError:
            raise
        except Exception as exc:
            self._frames, self._last = None, None
            raise MovieError(f"{self.path}: decoding failed ({one_line(exc)}); the file is damaged; "
                             f"{_REPAIR}.") from exc
        return out

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        self._frames = None
        self._last = None
        if self._container is not None:
            self._container.close()
        self._container = None
        self._stream = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_container=None, _stream=None, _frames=None, _last=None)
        return state


def _packet_time(packet: Any) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts
