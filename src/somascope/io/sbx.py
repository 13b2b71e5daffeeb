"""Scanbox (Neurolabware) ``.sbx`` movies, memory-mapped.

A Scanbox recording is two files with one name: ``<name>.sbx``, the raw samples, and
``<name>.mat``, the MATLAB (v5) ``info`` struct that describes them. What is read from where:

``<name>.sbx`` (no header)
    uint16 samples, frame after frame. Within a frame the order is lines (rows) × pixels
    (columns) × channels, channel fastest, i.e. C order ``(H, W, C)`` — the layout Scanbox's own
    ``sbxread.m`` reshapes to ``[nchan, pixels, lines, N]`` in MATLAB's column-major order. The
    samples are stored inverted: ``sbxread.m`` returns ``intmax('uint16') - x``, and so does this
    reader (brighter = larger). The number of frames is the file size over the frame size; an
    incomplete last frame (an aborted recording) is dropped and reported in ``details``.
``info.sz``
    ``[lines, pixels per line]``: the frame shape ``(H, W)`` (512 × 796 when absent, as in the
    first Scanbox versions and ``sbxread.m``; ``details`` says so).
``info.chan.nchan`` (Scanbox ≥ 3) or ``info.channels`` (older: 1 = both PMTs, 2 = PMT0 only,
3 = PMT1 only)
    channels stored per pixel; with two, ``channel=`` (0 = PMT0, 1 = PMT1) must choose one.
``info.scanmode`` (1 = unidirectional, the default when absent as in ``sbxread.m``;
0 = bidirectional) and ``info.resfreq``
    the resonant mirror scans ``resfreq`` lines per second one way, twice that bidirectionally,
    so ``frame_rate = resfreq × (2 if bidirectional else 1) / lines``. (``info.recordsPerBuffer``
    is shown in ``details`` but not used: bidirectional files store half the line count there,
    which ``sbxread.m`` doubles on load, so ``resfreq / recordsPerBuffer`` is the rate in both
    modes only with the stored value.)
``info.volscan`` with ``info.otparam`` (``otparam[2]``, MATLAB's ``otparam(3)``), ``info.otwave``
or ``info.etl_table``
    optotune volumes: ``n_planes`` planes interleaved frame by frame (frame ``k`` is plane
    ``k mod n_planes``), undone by :class:`~somascope.io.Movie`; ``frame_rate`` stays the rate of
    stored frames and Movie divides it by ``n_planes``. ``volscan == 0`` means one plane whatever
    ``otparam`` holds; files without ``volscan`` use ``otparam`` when present.
``info.fold_lines`` (> 0)
    "folded" sub-frames: each stored frame holds ``lines / fold_lines`` consecutive sub-frames of
    ``fold_lines`` lines; they become frames of their own at ``lines / fold_lines`` times the rate.
Pixel size
    not stored: Scanbox saves the zoom (``info.config.magnification``, shown in ``details``) but
    no µm per pixel; calibrate on the rig and pass the pixel size yourself.

Read with :func:`numpy.memmap` directly, not with sbxreader: sbxreader's metadata parser needs
fields that are optional in Scanbox files (``info.config.lines``, ``magnification_list``,
``knobby`` or ``coord_rel``) and raises bare ``AttributeError``s on files without them, prints
instead of raising for a missing ``.sbx``, and reads frame 0 on every open to estimate dead
columns; the layout itself is three lines of numpy. (Tests check this reader against sbxreader.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backends import _as_index
from .errors import MovieError

#: frame size of the first Scanbox files, which had no ``info.sz`` (``sbxread.m`` assumes it too)
_OLD_SZ = (512, 796)
#: ``info.channels`` of Scanbox < 3 → (channels stored, which PMTs)
_OLD_CHANNELS = {1: (2, "PMT0+PMT1"), 2: (1, "PMT0"), 3: (1, "PMT1")}


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` of a loadmat struct, with 0-d arrays as Python scalars; ``default`` if absent."""
    value = getattr(obj, name, default)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value


def _floats(value: Any) -> np.ndarray:
    """A MATLAB numeric value as a flat float array; empty when absent or not numeric."""
    try:
        return np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    except (TypeError, ValueError):
        return np.empty(0)


def _scalar(value: Any) -> float | None:
    """A finite float from a MATLAB scalar, or None (absent, empty, NaN, not a number)."""
    arr = _floats(value)
    return float(arr[0]) if arr.size == 1 and np.isfinite(arr[0]) else None


def load_info(sbx: Path) -> Any:
    """The ``info`` struct of the ``.mat`` file beside ``sbx`` (``scipy.io.loadmat``, squeezed,
    structs as attribute objects); MovieError naming the fix when it is missing or unreadable."""
    import scipy.io

    mat = sbx.with_suffix(".mat")
    if not mat.is_file():
        raise MovieError(
            f"{sbx}: its Scanbox info file {mat.name} is missing; Scanbox writes it beside the .sbx "
            "with the same name — copy it next to the .sbx (the frame size, channels and rate are in it)."
        )
    try:
        content = scipy.io.loadmat(mat, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise MovieError(
            f"{mat}: is a MATLAB v7.3 file, which scipy cannot read; re-save it in MATLAB with "
            f"load('{mat.stem}.mat'); save('{mat.stem}.mat', 'info', '-v7')."
        ) from exc
    except Exception as exc:  # scipy raises several types for damaged files
        raise MovieError(f"{mat}: not a readable MATLAB .mat file ({exc}); copy it again from the rig.") from exc
    info = content.get("info")
    if info is None or not hasattr(info, "_fieldnames"):
        names = sorted(k for k in content if not k.startswith("__"))
        raise MovieError(f"{mat}: holds no Scanbox 'info' struct (variables: {names}); "
                         "use the .mat file Scanbox wrote with the .sbx.")
    return info


def channels_of(info: Any) -> tuple[int, str]:
    """Channels stored per pixel and which PMTs they are, from ``chan.nchan`` or ``channels``."""
    chan = _get(info, "chan")
    nchan = _scalar(_get(chan, "nchan")) if chan is not None else None
    if nchan is not None:
        n = int(nchan)
        return n, {1: "1 PMT", 2: "PMT0+PMT1"}.get(n, f"{n} channels")
    old = _scalar(_get(info, "channels"))
    if old is not None and int(old) in _OLD_CHANNELS:
        return _OLD_CHANNELS[int(old)]
    raise MovieError(
        f"info.channels={_get(info, 'channels')!r} and no info.chan.nchan: cannot tell how many channels "
        "the .sbx holds (expected channels 1 = both PMTs, 2 = PMT0, 3 = PMT1)."
    )


def planes_of(info: Any) -> tuple[int, str | None]:
    """Optotune planes interleaved frame by frame, and the info field that said so."""
    volscan = _get(info, "volscan")
    if volscan is not None and not np.any(_floats(volscan)):
        return 1, None
    otparam = _floats(_get(info, "otparam", []))
    if otparam.size >= 3 and np.isfinite(otparam[2]) and otparam[2] >= 1:
        return int(otparam[2]), "otparam[2]"
    otwave = _floats(_get(info, "otwave", []))
    if otwave.size > 1:
        return int(otwave.size), "otwave"
    etl = np.asarray(_get(info, "etl_table", []))
    if etl.ndim == 2 and etl.shape[0] > 1:
        return int(etl.shape[0]), "etl_table"
    return 1, None


def sbx_files(path: Path) -> list[Path] | None:
    """``[<name>.sbx]`` for a ``<name>.mat`` with its ``.sbx`` beside it (the info file names the
    recording too), else None."""
    path = Path(path)
    if path.suffix.lower() == ".mat" and path.with_suffix(".sbx").is_file():
        return [path.with_suffix(".sbx")]
    return None


class SbxSegment:
    """One ``.sbx`` file (with its ``.mat`` beside it) as a segment of uint16 frames ``(H, W)``
    of one channel; planes stay interleaved (``metadata["n_planes"]``) for Movie to undo."""

    def __init__(self, path: Path, *, channel: int | None = None) -> None:
        self.path = Path(path)
        info = load_info(self.path)
        sz = _floats(_get(info, "sz", _OLD_SZ))
        if sz.size != 2 or not np.all(sz >= 1):
            raise MovieError(f"{self.path.with_suffix('.mat')}: info.sz={sz.tolist()} is not [lines, pixels]; "
                             "use the .mat file Scanbox wrote with this .sbx.")
        lines, pixels = int(sz[0]), int(sz[1])
        try:
            self.n_channels, pmts = channels_of(info)
        except MovieError as exc:
            raise MovieError(f"{self.path.with_suffix('.mat')}: {exc}") from None
        self.channel = self._pick_channel(channel)
        fold = int(_scalar(_get(info, "fold_lines")) or 0)
        if fold > 0 and lines % fold:
            raise MovieError(f"{self.path}: info.fold_lines={fold} does not divide the {lines} lines of a frame; "
                             "the sub-frames cannot be split (check the .mat belongs to this .sbx).")
        sub = lines // fold if fold > 0 else 1
        self.frame_shape = (lines // sub, pixels)
        self.dtype = np.dtype(np.uint16)
        frame_bytes = lines * pixels * self.n_channels * 2
        size = self.path.stat().st_size
        n_stored, tail = divmod(size, frame_bytes)
        if n_stored == 0:
            raise MovieError(f"{self.path}: holds {size} bytes, less than one {lines}×{pixels}×{self.n_channels}"
                             "-channel frame; the recording is empty or its .mat describes another file.")
        self.n_raw = n_stored * sub
        self._mm: Any = None
        n_planes, planes_from = planes_of(info)
        self.metadata = self._metadata(info, lines, pixels, pmts, sub, n_planes, planes_from, tail)

    def _pick_channel(self, channel: int | None) -> int:
        if channel is None:
            if self.n_channels > 1:
                raise MovieError(
                    f"{self.path}: holds {self.n_channels} channels (0 = PMT0, usually green; 1 = PMT1, usually "
                    "red); pass channel= to choose the functional one."
                )
            return 0
        if not 0 <= int(channel) < self.n_channels:
            raise MovieError(f"{self.path}: channel={channel} out of range 0..{self.n_channels - 1} "
                             f"(the file holds {self.n_channels}).")
        return int(channel)

    def _metadata(self, info: Any, lines: int, pixels: int, pmts: str, sub: int, n_planes: int,
                  planes_from: str | None, tail: int) -> dict[str, Any]:
        scanmode = _scalar(_get(info, "scanmode"))
        bidirectional = scanmode is not None and int(scanmode) == 0
        config = _get(info, "config")
        details: dict[str, Any] = {
            "scanbox_version": _scalar(_get(info, "scanbox_version")),
            "channels": pmts,
            "channel_read": self.channel if self.n_channels > 1 else None,
            "scan_mode": "bidirectional" if bidirectional else "unidirectional",
            "lines_x_pixels": f"{lines}×{pixels}",
            "resonant_frequency_hz": _scalar(_get(info, "resfreq")),
            "records_per_buffer": _scalar(_get(info, "recordsPerBuffer")),
            "magnification": _scalar(_get(config, "magnification")) if config is not None else None,
            "pixel_size": "not stored by Scanbox (zoom only); pass it yourself",
        }
        if not hasattr(info, "sz"):
            details["frame_size"] = "info.sz absent: Scanbox's original 512×796 assumed"
        if sub > 1:
            details["fold_lines"] = f"{sub} sub-frames of {lines // sub} lines per stored frame"
        if planes_from:
            details["planes_from"] = f"info.{planes_from}"
        if tail:
            details["incomplete_tail"] = (f"last {tail} bytes are an incomplete frame (aborted recording?) "
                                          "and were dropped")
        meta: dict[str, Any] = {"format": "Scanbox .sbx", "details": {
            k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in details.items() if v is not None}}
        resfreq = _scalar(_get(info, "resfreq"))
        if resfreq and resfreq > 0:
            meta["frame_rate"] = resfreq * (2 if bidirectional else 1) / lines * sub
        if n_planes > 1:
            meta["n_planes"] = n_planes
        return meta

    # -- handles -------------------------------------------------------------------
    def _open(self) -> Any:
        if self._mm is None:
            lines_per_frame = self.frame_shape[0]
            self._mm = np.memmap(self.path, dtype="<u2", mode="r",
                                 shape=(self.n_raw, lines_per_frame, self.frame_shape[1], self.n_channels))
        return self._mm

    def close(self) -> None:
        self._mm = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    # -- reading -------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at sorted raw ``indices`` as ``(n, H, W)`` uint16, un-inverted (65535 − stored)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return np.empty((0, *self.frame_shape), self.dtype)
        stored = self._open()[_as_index(indices), :, :, self.channel]
        return np.asarray(np.invert(stored), dtype=self.dtype)
