"""Bruker PrairieView recordings: a folder of TIFF files described by its PVScan ``.xml``.

Layout read (PrairieView 5.x): ``<PVScan>`` holds a ``<PVStateShard>`` of settings
(``<PVStateValue key=… value=…>``; indexed ones such as ``micronsPerPixel`` hold
``<IndexedValue index="XAxis"|"YAxis" value=…>``; the older ``<Key key="micronsPerPixel_XAxis"
value=…>`` form is read too) and one or more ``<Sequence type=… cycle=…>``, each a list of
``<Frame relativeTime=… absoluteTime=… index=…>`` whose ``<File channel=… channelName=…
filename=… [page=…]>`` children name the image of each channel (a single-page OME-TIFF per
frame and channel, or a page of a multi-page file).

Design: :func:`bruker_files` claims the recording (the folder, or its ``.xml``) and returns
``[xml]``; one :class:`BrukerSegment` reads every frame of the chosen channel from its file,
page by page with ``tifffile``, opening only the files of the frames asked for. The XML is
parsed once (``iterparse``, frame elements cleared as they go) into the ordered list of files
of the channel, which the segment keeps zlib-compressed so it pickles small.

- **Channels**: ``channel=`` is the 0-based position among the channels the recording holds
  (``Ch1``, ``Ch2``, … in channel-number order: with Ch1 and Ch2, ``channel=1`` is Ch2); with one
  channel it may be left out, with several it must be given.
- **Layouts**: a T-series (``Sequence`` types containing ``TSeries``, e.g. "TSeries Timed
  Element"): the frames of all its sequences in order, one plane. A ``TSeries ZSeries Element``
  recording (one sequence per volume, several frames each): frames are interleaved planes,
  ``metadata["n_planes"]`` = frames per volume (a last, incomplete volume is dropped by
  :class:`~somascope.io.Movie`); with ``bidirectionalZ="True"`` every second volume is stored
  reversed so that plane ``z`` is always the same depth. Single images, Z-stacks and line scans
  are refused.
- **Frame rate** (volumes per second with planes): from the frames' ``absoluteTime`` stamps
  (``relativeTime`` when absent) — the median step between frames, or between the first frames
  of successive volumes; ``1 / framePeriod`` (``/ n_planes`` for volumes, flyback not counted)
  when the stamps are missing. Both are shown in ``details``.
- **Pixel size** from ``micronsPerPixel`` X/Y (µm), as ``(y, x)``.
- A file the XML lists but the folder lacks is refused at open time (all listed files of the
  channel are checked against one directory listing).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MovieError, one_line

_HEAD_BYTES = 4096


def bruker_files(path: Path) -> list[Path] | None:
    """``[xml]`` when ``path`` is a PrairieView recording (a folder holding one PVScan ``.xml``,
    or that ``.xml``); None otherwise. Cheap for other paths: only ``.xml`` heads are read."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix.lower() == ".xml" and _is_pvscan(path) else None
    if not path.is_dir():
        return None
    try:
        xmls = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and p.is_file() and _is_pvscan(p))
    except OSError:
        return None
    if len(xmls) <= 1:
        return xmls or None
    named = [p for p in xmls if p.stem == path.name]
    if len(named) == 1:
        return named
    raise MovieError(
        f"{path}: holds several PrairieView recordings ({', '.join(p.name for p in xmls)}); "
        "pass the .xml of the one to open."
    )


def _is_pvscan(xml: Path) -> bool:
    """Whether the file starts like a PrairieView PVScan document."""
    try:
        with open(xml, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return False
    return b"<PVScan" in head


class BrukerSegment:
    """All frames of one channel of a PrairieView recording: ``n_raw`` frames of
    ``frame_shape = (H, W)``, planes interleaved for a TSeries ZSeries (see the module)."""

    def __init__(self, path: Path, *, channel: int | None = None) -> None:
        claimed = bruker_files(Path(path))
        if not claimed:
            raise MovieError(
                f"{path}: not a PrairieView recording (no PVScan .xml found); pass the recording's "
                "folder or its .xml."
            )
        self.path = claimed[0]
        self.folder = self.path.parent
        self._tif: Any = None
        self._tif_name: str | None = None
        self._names: list[str] | None = None
        parsed = _parse_pvscan(self.path)
        files, pages, names = self._layout(parsed, channel)
        self._check_files(files)
        self._names_z = zlib.compress("\n".join(files).encode(), 6)
        self._pages = np.asarray(pages, dtype=np.int32)
        self.n_raw = len(files)
        self._names = files
        self.frame_shape, self.dtype = self._probe(files[0], int(self._pages[0]))
        self.metadata = self._metadata(parsed, names)

    # -- layout --------------------------------------------------------------------
    def _layout(self, parsed: dict[str, Any], channel: int | None) -> tuple[list[str], list[int], dict[int, str]]:
        """Ordered file names and 0-based pages of the chosen channel, and the channel names."""
        sequences = parsed["sequences"]
        frames = [fr for seq in sequences for fr in seq["frames"]]
        if not frames:
            raise MovieError(
                f"{self.path}: its PVScan XML lists no frames (no <Sequence> with <Frame>); the "
                "acquisition may have been aborted or the XML truncated."
            )
        types = sorted({seq["type"] for seq in sequences})
        if not all("TSeries" in t for t in types):
            raise MovieError(
                f"{self.path}: is a PrairieView {', '.join(types) or 'untyped'} acquisition, not a "
                "time series; somascope reads T-series (optionally with a Z-series per time point)."
            )
        names: dict[int, str] = {}
        for fr in frames[:1]:
            for num, (_, _, cname) in sorted(fr["files"].items()):
                names[num] = cname
        numbers = sorted(names)
        if channel is None:
            if len(numbers) > 1:
                raise MovieError(
                    f"{self.path}: has {len(numbers)} channels ("
                    + ", ".join(f"{i}={names[n]}" for i, n in enumerate(numbers))
                    + f"); pass channel= (0..{len(numbers) - 1}) to choose the functional channel."
                )
            channel = 0
        if not 0 <= int(channel) < len(numbers):
            raise MovieError(
                f"{self.path}: channel={channel} out of range 0..{len(numbers) - 1} (channels: "
                + ", ".join(f"{i}={names[n]}" for i, n in enumerate(numbers)) + ")."
            )
        self.channel = int(channel)
        self.channel_number = numbers[self.channel]
        self.volumetric = any("ZSeries" in seq["type"] for seq in sequences)
        self.n_planes = len(sequences[0]["frames"]) if self.volumetric else 1
        if self.volumetric:
            for k, seq in enumerate(sequences[:-1]):
                if len(seq["frames"]) != self.n_planes:
                    raise MovieError(
                        f"{self.path}: volume {k + 1} has {len(seq['frames'])} frames but the first "
                        f"has {self.n_planes}; volumes of a TSeries ZSeries must have equal planes."
                    )
        files: list[str] = []
        pages: list[int] = []
        for k, seq in enumerate(sequences):
            seq_frames = seq["frames"]
            if self.volumetric and seq["bidirectional"] and k % 2 == 1:
                seq_frames = seq_frames[::-1]
            for fr in seq_frames:
                entry = fr["files"].get(self.channel_number)
                if entry is None:
                    raise MovieError(
                        f"{self.path}: frame {fr['index']} of cycle {seq['cycle']} lists no file for "
                        f"channel {names[self.channel_number]}; the XML is incomplete."
                    )
                files.append(entry[0])
                pages.append(entry[1])
        return files, pages, names

    def _check_files(self, files: list[str]) -> None:
        try:
            present = set(os.listdir(self.folder))
        except OSError as exc:
            raise MovieError(f"{self.folder}: cannot list the recording's folder ({exc}).") from exc
        missing = [n for n in dict.fromkeys(files) if n not in present and not (self.folder / n).exists()]
        if missing:
            raw = any("RAWDATA" in n for n in present)
            hint = (" The folder holds RAWDATA files: convert them to TIFF with Bruker's Image-Block "
                    "Ripping Utility first." if raw else " Copy the whole recording folder again.")
            raise MovieError(
                f"{self.path}: lists {len(missing)} file(s) missing from {self.folder} (first: "
                f"{missing[0]}).{hint}"
            )

    def _probe(self, name: str, page: int) -> tuple[tuple[int, int], np.dtype]:
        """Frame shape and dtype from the first file (one page read)."""
        data = self._read_page(name, page)
        self._close_tif()
        if data.ndim != 2:
            raise MovieError(
                f"{self.folder / name}: holds an image of shape {data.shape}, not one grey 2-D "
                "frame per page; export single-channel TIFFs from PrairieView."
            )
        return (int(data.shape[0]), int(data.shape[1])), np.dtype(data.dtype).newbyteorder("=")

    # -- metadata ------------------------------------------------------------------
    def _metadata(self, parsed: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
        state = parsed["state"]
        meta: dict[str, Any] = {"format": "Bruker PrairieView", "n_channels": 1,
                                "data_paths": [str(self.folder)]}  # the data are the folder's files
        details: dict[str, Any] = {
            "sequence_type": parsed["sequences"][0]["type"],
            "cycles": len(parsed["sequences"]),
            "channel": f"{self.channel} ({names[self.channel_number]})",
            "channels": [names[n] for n in sorted(names)],
        }
        if parsed.get("version"):
            details["prairieview_version"] = parsed["version"]
        frame_period = _as_float(state.get("framePeriod"))
        if frame_period is not None:
            details["framePeriod_s"] = frame_period
        stamp = _stamp_period(parsed["sequences"], self.volumetric)
        if stamp is not None:
            details["time_stamp_period_s"] = round(stamp, 6)
        if stamp is not None:
            meta["frame_rate"] = 1.0 / stamp
            details["frame_rate_from"] = "frame time stamps"
        elif frame_period is not None and frame_period > 0:
            meta["frame_rate"] = 1.0 / (frame_period * self.n_planes)
            details["frame_rate_from"] = "framePeriod" + (" × planes (flyback not counted)" if self.volumetric else "")
        if self.volumetric:
            meta["n_planes"] = self.n_planes
            meta["frame_rate_per_volume"] = True
        um = state.get("micronsPerPixel")
        if isinstance(um, dict):
            x, y = _as_float(um.get("XAxis")), _as_float(um.get("YAxis"))
            if x and y and x > 0 and y > 0:
                meta["pixel_size_um"] = (y, x)
            z = _as_float(um.get("ZAxis"))
            if self.volumetric and z:
                details["micronsPerPixel_ZAxis"] = z
        for key in ("objectiveLens", "opticalZoom", "dwellTime", "laserWavelength"):
            value = state.get(key)
            if isinstance(value, str) and value:
                details[key] = value
        meta["details"] = details
        return meta

    # -- handles -------------------------------------------------------------------
    def _file_names(self) -> list[str]:
        if self._names is None:
            self._names = zlib.decompress(self._names_z).decode().split("\n")
        return self._names

    def _read_page(self, name: str, page: int) -> np.ndarray:
        import tifffile

        path = self.folder / name
        try:
            if self._tif_name != name:
                self._close_tif()
                self._tif = tifffile.TiffFile(path)
                self._tif_name = name
            pages = self._tif.pages
            if page >= len(pages):
                raise MovieError(
                    f"{path}: has {len(pages)} page(s) but the PVScan XML points to page {page + 1}; "
                    "the file is truncated or the XML belongs to another recording."
                )
            return pages[page].asarray()
        except MovieError:
            self._close_tif()
            raise
        except FileNotFoundError as exc:
            self._close_tif()
            raise MovieError(
                f"{path}: listed in {self.path.name} but missing; copy the whole recording again."
            ) from exc
        except Exception as exc:  # tifffile raises several types for damaged files
            self._close_tif()
            raise MovieError(
                f"{path}: not a readable TIFF ({one_line(exc, 160)}); the file is "
                "truncated or damaged — copy the recording again."
            ) from exc

    def _close_tif(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._tif = None
        self._tif_name = None

    def close(self) -> None:
        self._close_tif()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tif"] = None
        state["_tif_name"] = None
        state["_names"] = None  # kept compressed in _names_z
        return state

    # -- reading -------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted ``indices`` as ``(n, H, W)`` in the files' dtype."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.frame_shape), dtype=self.dtype)
        names = self._file_names() if len(indices) else []
        for k, i in enumerate(indices):
            data = self._read_page(names[int(i)], int(self._pages[int(i)]))
            if data.shape != self.frame_shape:
                raise MovieError(
                    f"{self.folder / names[int(i)]}: frame of shape {data.shape}, but the recording's "
                    f"frames are {self.frame_shape}; the folder mixes recordings."
                )
            out[k] = data
        if len(indices) and self._pages.max(initial=0) == 0:
            self._close_tif()  # one page per file: nothing to gain from keeping it open
        return out


# -- the XML ---------------------------------------------------------------------------
def _parse_pvscan(xml: Path) -> dict[str, Any]:
    """Settings, sequences and frames of a PVScan XML, in document order.

    Returns ``{"version", "state": {key: str | {index: str}}, "sequences": [{"type", "cycle",
    "bidirectional", "frames": [{"index", "relative", "absolute", "files": {channel: (filename,
    page0, channelName)}}]}]}``; times in seconds (None when absent).
    """
    import xml.etree.ElementTree as ET

    state: dict[str, Any] = {}
    sequences: list[dict[str, Any]] = []
    version = None
    stack: list[Any] = []
    try:
        for event, elem in ET.iterparse(xml, events=("start", "end")):
            if event == "start":
                if not stack:
                    if elem.tag != "PVScan":
                        raise MovieError(f"{xml}: root element is <{elem.tag}>, not <PVScan>; not a PrairieView XML.")
                    version = elem.get("version")
                elif elem.tag == "Sequence":
                    sequences.append({
                        "type": elem.get("type", ""),
                        "cycle": elem.get("cycle", str(len(sequences) + 1)),
                        "bidirectional": (elem.get("bidirectionalZ", "False").lower() == "true"),
                        "frames": [],
                    })
                stack.append(elem)
                continue
            stack.pop()
            if elem.tag == "Frame" and sequences:
                sequences[-1]["frames"].append(_frame(xml, elem))
                _drop(stack, elem)
            elif elem.tag == "Sequence":
                _drop(stack, elem)
            elif elem.tag in ("PVStateValue", "Key") and not sequences:
                _state_value(elem, state)
    except ET.ParseError as exc:
        raise MovieError(
            f"{xml}: the PVScan XML is malformed ({exc}); it may be truncated (acquisition aborted) "
            "— PrairieView can regenerate it, or copy the recording again."
        ) from exc
    except OSError as exc:
        raise MovieError(f"{xml}: cannot read the PVScan XML ({exc}).") from exc
    if not sequences:
        raise MovieError(f"{xml}: the PVScan XML holds no <Sequence>; nothing was acquired.")
    return {"version": version, "state": state, "sequences": sequences}


def _drop(stack: list[Any], elem: Any) -> None:
    """Free a parsed element (and its place in its parent) so long XMLs stay small in memory."""
    elem.clear()
    if stack:
        stack[-1].remove(elem)


def _frame(xml: Path, elem: Any) -> dict[str, Any]:
    files: dict[int, tuple[str, int, str]] = {}
    for f in elem.iter("File"):
        name = f.get("filename")
        try:
            num = int(f.get("channel", "1"))
            page = int(f.get("page", "1")) - 1
        except ValueError as exc:
            raise MovieError(f"{xml}: a <File> element has a non-integer channel or page ({exc}).") from exc
        if not name:
            raise MovieError(f"{xml}: a <File> element has no filename.")
        files[num] = (name, max(page, 0), f.get("channelName") or f"Ch{num}")
    return {
        "index": elem.get("index"),
        "relative": _as_float(elem.get("relativeTime")),
        "absolute": _as_float(elem.get("absoluteTime")),
        "files": files,
    }


def _state_value(elem: Any, state: dict[str, Any]) -> None:
    """Record a top-level setting: ``PVStateValue`` (value or IndexedValue children) or the
    older ``Key key=name_Index value=…`` form."""
    key = elem.get("key")
    if not key:
        return
    if elem.tag == "Key":
        base, _, index = key.partition("_")
        if index:
            state.setdefault(base, {})
            if isinstance(state[base], dict):
                state[base][index] = elem.get("value")
        else:
            state[key] = elem.get("value")
        return
    if elem.get("value") is not None:
        state[key] = elem.get("value")
        return
    indexed = {iv.get("index"): iv.get("value") for iv in elem.iter("IndexedValue") if iv.get("index")}
    if indexed:
        state[key] = indexed


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _stamp_period(sequences: list[dict[str, Any]], volumetric: bool) -> float | None:
    """Median seconds between frames (or between volume starts) from the frame stamps."""
    def times(frames: list[dict[str, Any]]) -> list[float] | None:
        for key in ("absolute", "relative"):
            values = [fr[key] for fr in frames]
            if all(v is not None for v in values):
                return values
        return None

    if volumetric:
        starts = times([seq["frames"][0] for seq in sequences if seq["frames"]])
        steps = np.diff(starts) if starts and len(starts) > 1 else np.array([])
    else:
        steps_list: list[np.ndarray] = []
        for seq in sequences:  # within each sequence: pauses between cycles are not frame steps
            t = times(seq["frames"])
            if t and len(t) > 1:
                steps_list.append(np.diff(t))
        steps = np.concatenate(steps_list) if steps_list else np.array([])
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else None
