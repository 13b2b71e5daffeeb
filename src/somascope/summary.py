"""Summary images of a movie, computed out of core in chunks of frames.

Every image here comes from one streaming scan over a frame source (``numpy.ndarray``,
:class:`somascope.io.Movie`, :class:`somascope.store.Store`, anything with ``shape`` and time
slicing; see ``docs/conventions.md``). Frames are read with :func:`somascope.io.iter_chunks`;
per-pixel sums, sums of squares and neighbour cross-products are accumulated in float64, so
the result does not depend on the chunk size and equals the in-memory computation.

Images (all float32, shape ``(H, W)`` for ``T×H×W`` movies, ``(Z, H, W)`` for ``T×Z×H×W``):

- ``mean``, ``max``, ``std`` (population standard deviation, ``ddof=0``) over time.
- ``corr``: correlation image (Smith & Häusser 2010): for each pixel, the average over its
  neighbours of the temporal Pearson correlation with that neighbour. 2-D movies use 4 or 8
  neighbours, volumes 6 or 26. Pixels on the border average over the neighbours they have.
  A pixel with zero variance correlates 0 with everything (never NaN).
- ``max_corr``: the maximum over consecutive blocks of frames of the per-block correlation
  image (as used for annotation in the CaImAn paper); brings out cells active in only a
  part of a long recording. The ``T`` frames are cut into ``n = max(1, T // block_frames)``
  blocks at frames ``k * T // n``, so every block has at least ``block_frames`` frames
  (fewer only when the whole movie is shorter) and the blocks do not depend on the chunking.
- ``pnr`` and ``corr_pnr`` (one-photon data, CNMF-E style, when ``gSig`` is given): each
  frame is high-pass filtered with a zero-sum kernel (a Gaussian of width ``gSig`` minus the
  box mean over the same support, radius ``int(2 * gSig)`` pixels); the noise per pixel
  ``sigma`` is the successive-difference estimate ``sqrt(sum_t (F[t+1]-F[t])**2 / (2 (T-1)))``
  of the filtered data ``F``; ``pnr = (max_t F - mean_t F) / sigma``; ``corr_pnr`` is the
  correlation image of ``F - mean_t F`` with values below ``noise_thr * sigma`` set to 0.
  (CNMF-E uses the temporal median as baseline and a PSD noise estimate; neither can be
  computed exactly in one streaming pass. The mean differs from the median by about the
  mean activity of a pixel; the successive-difference noise, like the PSD estimate, reads
  the high-frequency power.)
  Their product (:attr:`SummaryImages.corr_pnr_product`) is the seed image of GreedyCorr.
  This needs a second pass over the data (the threshold needs ``sigma`` first).

Numerics: frames are float32; each chunk is centred on the mean of the first chunk (per
pixel), products and sums are formed in float32 over at most 64 frames and accumulated in
float64, which keeps the error of correlations and standard deviations below 1e-6. The
high-pass filter of 2-D frames is a compiled kernel (Numba) that works in float64 and rounds
once (5–7× faster than SciPy's 1-D filters on 256²–512² frames); volumes use SciPy's filters.

Parallel scans: given an :class:`~somascope.parallel.Engine` that is not serial and a
:class:`~somascope.store.Store`, :func:`summary_images` cuts the frames into one contiguous
range per worker (on the store's time chunks, or on a max-correlation block boundary close
by). Each task opens the store by path, reads only its range and returns its per-range
statistics (a few frame-sized sums, no frames): moments, maxima, the correlation images of the
blocks inside the range, the moments of blocks the range cuts (merged across ranges before
their correlation is taken), and the high-passed sums together with the range's first and last
filtered frame (the successive difference across a boundary joins the noise sum). All ranges
are centred on the same image (the first chunk's mean, read by the driver first); in pass 2
each range centres its thresholded data on its own first chunk and the driver moves the sums
onto one centre before merging. The result equals the serial scan to float32 rounding.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SummaryImages",
    "summary_images",
    "mean_image",
    "max_image",
    "std_image",
    "correlation_image",
    "max_correlation_image",
    "pnr_image",
    "highpass",
    "neighbour_offsets",
    "save_summary",
    "load_summary",
    "smooth_change_share",
    "lens_mask",
]

#: A lens's field of view reaches out to this fraction of its brightness above the dark floor.
RIM = 0.25
#: Target size of one chunk of float32 frames read at a time (bytes).
DEFAULT_CHUNK_BYTES = 128 * 2**20
#: Frames per float32 partial sum before it is added to the float64 accumulators.
_SUBBLOCK = 64
#: A pixel whose variance is below this fraction of its second moment about the centring
#: value is treated as constant (std 0, correlation 0).
_CONSTANT_RTOL = 1e-6

_IMAGE_NAMES = ("mean", "max", "std", "corr", "max_corr", "pnr", "corr_pnr")


@dataclass(frozen=True)
class SummaryImages:
    """Summary images of one movie; each image has the movie's frame shape, float32.

    Attributes
    ----------
    mean, max, std : ndarray, ``(H, W)`` or ``(Z, H, W)``
        Temporal mean, maximum and standard deviation (``ddof=0``), in movie units.
    corr : ndarray
        Correlation image (mean Pearson correlation with the neighbours), in [-1, 1].
    max_corr : ndarray or None
        Max-correlation image over blocks of frames (``max_corr_frames`` given), else None.
    pnr : ndarray or None
        Peak-to-noise ratio of the high-passed data (``gSig`` given), else None.
    corr_pnr : ndarray or None
        Correlation image of the high-passed, noise-thresholded data (``gSig`` given).
    n_frames : int
        Number of frames summarised.
    """

    mean: np.ndarray
    max: np.ndarray
    std: np.ndarray
    corr: np.ndarray
    max_corr: np.ndarray | None
    pnr: np.ndarray | None
    corr_pnr: np.ndarray | None
    n_frames: int

    @property
    def corr_pnr_product(self) -> np.ndarray | None:
        """``corr_pnr * pnr``: the seed image GreedyCorr (CNMF-E) picks centres from."""
        if self.pnr is None or self.corr_pnr is None:
            return None
        return (self.corr_pnr * self.pnr).astype(np.float32)

    def images(self) -> dict[str, np.ndarray]:
        """The images that were computed, by name (``None`` ones left out)."""
        out = {}
        for name in _IMAGE_NAMES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def summary_images(
    source: Any,
    *,
    chunk_frames: int | None = None,
    neighbours: int | None = None,
    max_corr_frames: int | None = None,
    gSig: float | Sequence[float] | None = None,
    noise_thr: float = 2.0,
    progress: bool = False,
    engine: Any = None,
) -> SummaryImages:
    """Compute all summary images in one scan of ``source`` (two when ``gSig`` is given).

    Parameters
    ----------
    source
        Frame source of shape ``(T, H, W)`` or ``(T, Z, H, W)``: ndarray, Movie, Store.
    chunk_frames
        Frames read at a time; default: about 128 MB of float32, 32 MB per worker when an
        engine's workers read (a multiple of the store's time chunk for a
        :class:`~somascope.store.Store`). Results do not depend on it.
    neighbours
        4 or 8 for ``T×H×W`` movies, 6 or 26 for volumes; default 8 (2-D) / 26 (3-D).
    max_corr_frames
        Block length in frames for the max-correlation image (e.g. 1000); None skips it.
    gSig
        Half-size of a neuron in pixels (scalar or one per spatial axis) for the one-photon
        peak-to-noise and filtered correlation images; None skips them.
    noise_thr
        Filtered values below ``noise_thr * sigma`` are zeroed before ``corr_pnr``.
    progress
        Show a tqdm progress bar (in frames; in ranges when an engine does the work).
    engine
        A :class:`somascope.parallel.Engine`. When it is not serial and ``source`` is a
        :class:`~somascope.store.Store`, the frames are cut into one contiguous range per
        worker; each task opens the store and reads its own range, only the per-range
        statistics come back and are merged (equal to the serial result to float32 rounding).
        Otherwise (None, serial, in-memory or other sources) this process reads every frame.

    Returns
    -------
    SummaryImages
    """
    return _scan(
        source,
        chunk_frames=chunk_frames,
        neighbours=neighbours,
        with_corr=True,
        block_frames=max_corr_frames,
        gSig=gSig,
        noise_thr=noise_thr,
        progress=progress,
        engine=engine,
    )


def mean_image(source: Any, *, chunk_frames: int | None = None, progress: bool = False) -> np.ndarray:
    """Temporal mean of a ``T×H×W`` / ``T×Z×H×W`` frame source; float32 frame-shaped image."""
    return _scan(source, chunk_frames=chunk_frames, with_corr=False, progress=progress).mean


def max_image(source: Any, *, chunk_frames: int | None = None, progress: bool = False) -> np.ndarray:
    """Temporal maximum of a frame source; float32 frame-shaped image."""
    return _scan(source, chunk_frames=chunk_frames, with_corr=False, progress=progress).max


def std_image(source: Any, *, chunk_frames: int | None = None, progress: bool = False) -> np.ndarray:
    """Temporal standard deviation (``ddof=0``) of a frame source; float32 image."""
    return _scan(source, chunk_frames=chunk_frames, with_corr=False, progress=progress).std


def correlation_image(
    source: Any,
    *,
    neighbours: int | None = None,
    chunk_frames: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Correlation image: per pixel, the mean temporal Pearson correlation with its
    ``neighbours`` (4/8 in 2-D, 6/26 in 3-D; default 8/26). Float32, values in [-1, 1]."""
    return _scan(
        source, chunk_frames=chunk_frames, neighbours=neighbours, with_corr=True, progress=progress
    ).corr


def max_correlation_image(
    source: Any,
    *,
    block_frames: int = 1000,
    neighbours: int | None = None,
    chunk_frames: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Maximum over blocks of about ``block_frames`` frames of the block correlation image
    (see the module docstring for how blocks are cut). Float32, values in [-1, 1]."""
    images = _scan(
        source,
        chunk_frames=chunk_frames,
        neighbours=neighbours,
        with_corr=True,
        block_frames=block_frames,
        progress=progress,
    )
    assert images.max_corr is not None
    return images.max_corr


def pnr_image(
    source: Any,
    gSig: float | Sequence[float],
    *,
    noise_thr: float = 2.0,
    neighbours: int | None = None,
    chunk_frames: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Peak-to-noise image and filtered correlation image for one-photon data (CNMF-E).

    Returns
    -------
    pnr : ndarray, float32, frame-shaped
        ``(max_t F - mean_t F) / sigma`` of the high-passed data ``F`` (0 where sigma is 0).
    corr_pnr : ndarray, float32, frame-shaped
        Correlation image of ``F - mean_t F`` thresholded at ``noise_thr * sigma``.
    Multiply them for the GreedyCorr seed image. See the module docstring for the filter.
    """
    images = _scan(
        source,
        chunk_frames=chunk_frames,
        neighbours=neighbours,
        with_corr=False,
        gSig=gSig,
        noise_thr=noise_thr,
        progress=progress,
    )
    assert images.pnr is not None and images.corr_pnr is not None
    return images.pnr, images.corr_pnr


def smooth_change_share(source: Any, radius: float, *, n_frames: int = 200, n_blocks: int = 10) -> float:
    """Share of a movie's frame-to-frame changes that is spatially smooth (0–1).

    ``n_frames`` frames in ``n_blocks`` runs of consecutive frames spread evenly over the movie
    (consecutive, so that a chunked store is read in a few chunks), minus their mean image, are
    low-passed with a Gaussian of ``2 · radius`` px (``radius``: a neuron's radius); the share
    is the variance of the low-passed changes over the variance of all changes. One-photon
    data, whose changes are mostly a large, fluctuating background, give about 0.5 (simulated
    micro-endoscope movies 0.44–0.54, ``dev_sim/dev_1p`` 0.69); two-photon data, whose changes
    are cells and shot noise, 0.0–0.1 (``dev_2p`` 0.04, the hard family 0.02–0.09).
    """
    from scipy import ndimage

    T, dims = _check_source(source)
    run = max(1, min(T, int(n_frames)) // max(1, int(n_blocks)))
    starts = np.unique(np.linspace(0, T - run, max(1, int(n_blocks))).astype(int))
    frames = np.concatenate([np.asarray(source[int(t):int(t) + run], dtype=np.float32) for t in starts])
    changes = frames - frames.mean(axis=0)
    total = float(changes.var())
    if not total > 0:
        return 0.0
    # the low-pass on a grid coarsened to about a third of a neuron's radius (the same
    # variance of smooth changes, a fraction of the cost)
    f = max(1, int(float(radius) / 3))
    if f > 1 and len(dims) == 2:
        h, w = (dims[0] // f) * f, (dims[1] // f) * f
        coarse = changes[:, :h, :w].reshape(len(changes), h // f, f, w // f, f).mean(axis=(2, 4))
        low = np.stack([ndimage.gaussian_filter(c, 2.0 * float(radius) / f) for c in coarse])
        return float(low.var() / total)
    low = np.stack([ndimage.gaussian_filter(c, 2.0 * float(radius)) for c in changes])
    return float(low.var() / total)


def lens_mask(mean: np.ndarray, radius: float, *, dark: float = 0.1, least: float = 0.05) -> np.ndarray:
    """The field of view of a micro-endoscope's lens in its mean image (bool, frame-shaped).

    The mean image is smoothed (Gaussian of ``2 · radius`` px) and split in two by Otsu's
    threshold. The split is a lens edge only when the dark part holds (almost) no light: its
    median lies within ``dark`` of the way from the image's minimum to the bright part's mean
    (outside a lens the camera sees its offset; a vignetted field's dim corners, or the
    background between cells, hold far more) and it covers at least ``least`` of the frame.
    Then the pixels brighter than :data:`RIM` of the way from the minimum to the bright part's
    mean (the lens's dim, vignetted rim included), their largest connected piece with holes
    filled, are the field of view; otherwise the whole frame is.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    img = ndimage.gaussian_filter(np.asarray(mean, np.float64), 2.0 * float(radius))
    whole = np.ones(img.shape, bool)
    if not np.ptp(img) > 0:
        return whole
    inside = img > threshold_otsu(img)
    floor = float(img.min())
    if (~inside).mean() < least or inside.sum() == 0:
        return whole
    bright = float(img[inside].mean())
    if float(np.median(img[~inside])) - floor > dark * (bright - floor):
        return whole
    inside = img > floor + RIM * (bright - floor)  # keep the lens's dim, vignetted rim
    labels, _ = ndimage.label(inside)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def neighbour_offsets(n_spatial: int, neighbours: int) -> list[tuple[int, ...]]:
    """Half of the neighbour offsets (one of each ``±o`` pair) of a pixel.

    ``n_spatial`` is 2 (``H×W`` frames; ``neighbours`` 4 or 8) or 3 (``Z×H×W`` frames;
    6 or 26). Returns ``neighbours // 2`` offsets, each a tuple of -1/0/1 whose first non-zero
    entry is +1.
    """
    allowed = {2: (4, 8), 3: (6, 26)}
    if n_spatial not in allowed:
        raise ValueError(f"frames must be 2-D (H×W) or 3-D (Z×H×W); got {n_spatial} spatial axes.")
    if neighbours not in allowed[n_spatial]:
        kind = "T×H×W movies" if n_spatial == 2 else "T×Z×H×W volumes"
        a, b = allowed[n_spatial]
        raise ValueError(f"neighbours={neighbours!r} is not supported for {kind}; use {a} or {b}.")
    full = neighbours == _full_neighbours(n_spatial)
    offsets = []
    for off in itertools.product((-1, 0, 1), repeat=n_spatial):
        nonzero = [o for o in off if o != 0]
        if not nonzero or nonzero[0] != 1:
            continue
        if full or len(nonzero) == 1:
            offsets.append(tuple(off))
    return offsets


def _full_neighbours(n_spatial: int) -> int:
    """Number of neighbours in the full (corner-connected) neighbourhood: 8 in 2-D, 26 in 3-D."""
    return 3**n_spatial - 1


def save_summary(images: SummaryImages, folder: str | os.PathLike[str], *, png: bool = True) -> dict[str, Path]:
    """Write each computed image as ``<name>.npy`` (float32) and ``<name>.png`` (8-bit grey,
    scaled between the 0.5th and 99.5th percentiles; volumes as their planes side by side),
    plus ``summary.json`` (``n_frames`` and the image names). Every file is written under a
    temporary name and renamed when complete. ``folder`` is created if needed.

    Returns
    -------
    dict
        ``{"<name>.npy": path, "<name>.png": path, ..., "summary.json": path}``.
    """
    from .io.atomic import atomic_path, atomic_write_text

    if not isinstance(images, SummaryImages):
        raise TypeError(f"save_summary() needs a SummaryImages (from summary_images()); got {type(images).__name__}.")
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, image in images.images().items():
        path = out_dir / f"{name}.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(image, dtype=np.float32))
        written[path.name] = path
        if png:
            path = out_dir / f"{name}.png"
            _write_png(path, _to_uint8(image))
            written[path.name] = path
    meta = {"n_frames": int(images.n_frames), "images": sorted(images.images())}
    path = out_dir / "summary.json"
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    written[path.name] = path
    return written


def load_summary(folder: str | os.PathLike[str]) -> SummaryImages:
    """Read back what :func:`save_summary` wrote in ``folder``."""
    folder = Path(folder)
    meta_path = folder / "summary.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no summary.json here; write it with save_summary() first.")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    arrays: dict[str, np.ndarray | None] = {name: None for name in _IMAGE_NAMES}
    for name in meta["images"]:
        arrays[name] = np.load(folder / f"{name}.npy")
    missing = [n for n in ("mean", "max", "std", "corr") if arrays[n] is None]
    if missing:
        raise FileNotFoundError(f"{folder}: summary images {missing} are missing; save the summary again.")
    return SummaryImages(n_frames=int(meta["n_frames"]), **arrays)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Accumulators
# --------------------------------------------------------------------------------------


def _pair_slices(offset: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(a, b)`` of a frame such that ``frame[b]`` is ``frame[a]`` moved by ``offset``:
    pixel ``p`` in region ``a`` pairs with pixel ``p + offset`` in region ``b``."""
    a: list[slice] = []
    b: list[slice] = []
    for o in offset:
        if o == 0:
            a.append(slice(None))
            b.append(slice(None))
        elif o == 1:
            a.append(slice(0, -1))
            b.append(slice(1, None))
        else:
            a.append(slice(1, None))
            b.append(slice(0, -1))
    return tuple(a), tuple(b)


def _sum_of_products(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``sum_t x[t] * y[t]`` over the first axis, float32 (x, y: ``(t, ...)`` float32)."""
    return np.einsum("t...,t...->...", x, y)


class _Moments:
    """Running per-pixel moments of centred frames: count, sum, sum of squares and, for each
    neighbour offset, the sum of products with that neighbour (float64 accumulators)."""

    def __init__(self, frame_shape: tuple[int, ...], offsets: Sequence[tuple[int, ...]]) -> None:
        self.frame_shape = frame_shape
        self.pairs = [_pair_slices(o) for o in offsets]
        self.n = 0
        self.s1 = np.zeros(frame_shape, np.float64)
        self.s2 = np.zeros(frame_shape, np.float64)
        self.cross = [np.zeros(np.empty(frame_shape)[a].shape, np.float64) for a, _ in self.pairs]

    def add(self, frames: np.ndarray) -> None:
        """Add centred float32 frames ``(t, *frame_shape)``."""
        every = (slice(None),)
        for b0 in range(0, frames.shape[0], _SUBBLOCK):
            blk = frames[b0 : b0 + _SUBBLOCK]
            self.s1 += blk.sum(axis=0)
            self.s2 += _sum_of_products(blk, blk)
            for (a, b), acc in zip(self.pairs, self.cross):
                acc += _sum_of_products(blk[every + a], blk[every + b])
        self.n += frames.shape[0]

    def merge(self, other: _Moments) -> None:
        """Add the sums of ``other`` (same frame shape, offsets and centring) to these."""
        self.n += other.n
        self.s1 += other.s1
        self.s2 += other.s2
        for acc, more in zip(self.cross, other.cross):
            acc += more

    def shift_by(self, delta: np.ndarray) -> None:
        """Turn these into the sums of the same frames plus ``delta`` (a frame-shaped image),
        i.e. move the centring value by ``-delta``: exact in exact arithmetic, so moments of
        ranges centred on different images can be merged."""
        d = np.asarray(delta, dtype=np.float64)
        n = float(self.n)
        for (a, b), acc in zip(self.pairs, self.cross):
            acc += d[a] * self.s1[b] + d[b] * self.s1[a] + n * d[a] * d[b]
        self.s2 += 2.0 * d * self.s1 + n * d * d
        self.s1 += n * d

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the centred data and variance (``ddof=0``; exactly 0 for constant pixels)."""
        if self.n == 0:
            zeros = np.zeros(self.frame_shape, np.float64)
            return zeros, zeros.copy()
        mu = self.s1 / self.n
        second = self.s2 / self.n
        var = second - mu * mu
        var[var <= _CONSTANT_RTOL * second] = 0.0
        return mu, var

    def correlation(self) -> np.ndarray:
        """Mean Pearson correlation of each pixel with its neighbours, float32."""
        mu, var = self.mean_var()
        positive = var > 0
        inv_sd = np.zeros(self.frame_shape, np.float64)
        inv_sd[positive] = 1.0 / np.sqrt(var[positive])
        total = np.zeros(self.frame_shape, np.float64)
        count = np.zeros(self.frame_shape, np.float64)
        n = max(self.n, 1)
        for (a, b), acc in zip(self.pairs, self.cross):
            r = (acc / n - mu[a] * mu[b]) * inv_sd[a] * inv_sd[b]
            total[a] += r
            total[b] += r
            count[a] += 1
            count[b] += 1
        corr = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return np.clip(corr, -1.0, 1.0).astype(np.float32)


class _FilteredStats:
    """Running mean, max and successive-difference noise of high-passed frames (of one
    contiguous run of frames; keeps its first and last frame so that runs can be merged)."""

    def __init__(self, frame_shape: tuple[int, ...]) -> None:
        self.n = 0
        self.s1 = np.zeros(frame_shape, np.float64)
        self.ssd = np.zeros(frame_shape, np.float64)
        self.max = np.full(frame_shape, -np.inf, np.float32)
        self.first: np.ndarray | None = None
        self.last: np.ndarray | None = None

    def add(self, filtered: np.ndarray) -> None:
        """Add consecutive filtered frames ``(t, *frame_shape)`` (float32)."""
        np.maximum(self.max, filtered.max(axis=0), out=self.max)
        if self.first is None:
            self.first = filtered[0].copy()
        if self.last is not None:
            step = filtered[0] - self.last
            self.ssd += step.astype(np.float64) ** 2
        diff = np.empty((min(_SUBBLOCK, filtered.shape[0]), *filtered.shape[1:]), np.float32)
        for b0 in range(0, filtered.shape[0], _SUBBLOCK):
            blk = filtered[b0 : b0 + _SUBBLOCK + 1]  # one frame of overlap with the next block
            self.s1 += blk[:_SUBBLOCK].sum(axis=0)
            d = diff[: blk.shape[0] - 1]
            np.subtract(blk[1:], blk[:-1], out=d)
            self.ssd += _sum_of_products(d, d)
        self.last = filtered[-1].copy()
        self.n += filtered.shape[0]

    def merge(self, other: _FilteredStats) -> None:
        """Append the statistics of the run of frames that directly follows this one (same
        centring): sums add, maxima combine, and the successive difference across the boundary
        (``other.first - self.last``) joins the noise sum."""
        if other.n == 0:
            return
        if self.n == 0:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(other).items()})
            return
        assert self.last is not None and other.first is not None
        np.maximum(self.max, other.max, out=self.max)
        step = other.first - self.last
        self.ssd += step.astype(np.float64) ** 2
        self.ssd += other.ssd
        self.s1 += other.s1
        self.n += other.n
        self.last = other.last

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, sigma, pnr)`` as float64 / float64 / float32 images."""
        mean = self.s1 / self.n
        sigma = np.sqrt(self.ssd / (2.0 * max(self.n - 1, 1)))
        peak = self.max.astype(np.float64) - mean
        pnr = np.divide(peak, sigma, out=np.zeros_like(peak), where=sigma > 0)
        return mean, sigma, np.maximum(pnr, 0.0).astype(np.float32)


def highpass(frames: np.ndarray, gSig: float | Sequence[float]) -> np.ndarray:
    """Spatially high-pass each frame: Gaussian blur (sigma ``gSig``) minus box mean.

    ``frames`` is ``(t, H, W)`` or ``(t, Z, H, W)``; ``gSig`` a scalar or one value per
    spatial axis (pixels). Along each axis the Gaussian and the box both have radius
    ``max(1, int(2 * gSig))``; borders are reflected (half-sample symmetric, SciPy's
    ``mode="reflect"``, also when the radius exceeds the frame). The kernel sums to zero, so a
    constant image maps to 0. Returns a new float32 array of the same shape.

    ``T×H×W`` movies run a compiled kernel (Numba, single-threaded; about 0.3 ms per 256²
    frame for ``gSig=4``, 5× faster than SciPy's 1-D filters) that forms both separable
    passes of both filters in float64 and rounds once, so a large baseline (raw counts of
    hundreds) costs no precision; volumes use SciPy's 1-D filters (float32 between the axes,
    a few units in the last place of the input's magnitude).
    """
    sig = _as_gsig(gSig, frames.ndim - 1)
    radii = [max(1, int(2 * s)) for s in sig]
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    out = np.empty_like(frames)
    if frames.ndim != 3:
        return _highpass_scipy(frames, sig, radii, out)
    (H, W), (ry, rx) = frames.shape[1:], radii
    _highpass_kernel()(
        frames, _gaussian_weights(sig[0], ry), _gaussian_weights(sig[1], rx),
        _reflect_index(H, ry), _reflect_index(W, rx), out,
    )
    return out


def _highpass_scipy(
    frames: np.ndarray, sig: Sequence[float], radii: Sequence[int], out: np.ndarray
) -> np.ndarray:
    """:func:`highpass` with SciPy's 1-D filters along each axis, frame by frame, into
    ``out`` (float32 ``frames`` of any number of spatial axes; float32 between the axes)."""
    from scipy import ndimage

    # Frame by frame with reused buffers: 1-D filters along the slow axes of a whole chunk
    # are cache-unfriendly (about 1.5x slower on 512x512 frames).
    bufs = [np.empty(frames.shape[1:], np.float32) for _ in range(4)]
    for i, frame in enumerate(frames):
        blur, box = frame, frame
        for axis, (s, r) in enumerate(zip(sig, radii)):
            target = bufs[axis % 2]
            ndimage.gaussian_filter1d(blur, s, axis=axis, mode="reflect", radius=r, output=target)
            blur = target
            target = bufs[2 + axis % 2]
            ndimage.uniform_filter1d(box, 2 * r + 1, axis=axis, mode="reflect", output=target)
            box = target
        np.subtract(blur, box, out=out[i])
    return out


def _gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    """The ``2 * radius + 1`` normalised Gaussian taps SciPy's ``gaussian_filter1d`` uses
    (float64)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
    return w / w.sum()


def _reflect_index(n: int, radius: int) -> np.ndarray:
    """Source index of each position ``-radius .. n + radius - 1`` of an axis of ``n`` pixels
    extended by half-sample symmetric reflection (``… 1 0 | 0 1 … n-1 | n-1 n-2 …``, repeated
    as often as the radius needs); int64, length ``n + 2 * radius``."""
    i = np.arange(-radius, n + radius) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i).astype(np.int64)


_KERNEL: list[Any] = []


def _highpass_kernel() -> Any:
    """The compiled :func:`_highpass_frames` (Numba, cached on disk; compiled on first use so
    that importing this module does not load Numba)."""
    if not _KERNEL:
        import numba

        _KERNEL.append(numba.njit(cache=True, nogil=True)(_highpass_frames))
    return _KERNEL[0]


def _highpass_frames(frames, wy, wx, iy, ix, out):  # pragma: no cover - compiled
    """``out[t] = (gy ⊗ gx - box) ⋆ frames[t]`` for float32 ``frames`` ``(T, H, W)``.

    ``wy``, ``wx``: symmetric Gaussian taps (float64, odd lengths ``2r + 1``); ``iy``, ``ix``:
    reflected source indices of the extended axes (:func:`_reflect_index`). Per frame, a row
    pass forms the Gaussian and the box sum along x of every row (float64, pairs of taps
    ``k`` and ``-k`` together); a column pass combines them along y, the box as a running sum.
    """
    T, H, W = frames.shape
    ry = (wy.shape[0] - 1) // 2
    rx = (wx.shape[0] - 1) // 2
    ny = 2 * ry + 1
    inv_box = 1.0 / (wy.shape[0] * wx.shape[0])
    pad = np.empty(W + 2 * rx, np.float64)
    row_g = np.empty((H, W), np.float64)
    row_b = np.empty((H, W), np.float64)
    acc_g = np.empty(W, np.float64)
    acc_b = np.empty(W, np.float64)
    for t in range(T):
        frame = frames[t]
        for y in range(H):
            src = frame[y]
            mid = pad[rx:rx + W]
            for x in range(W):
                mid[x] = src[x]
            for i in range(rx):
                pad[i] = src[ix[i]]
                pad[W + rx + i] = src[ix[W + rx + i]]
            g = row_g[y]
            b = row_b[y]
            w0 = wx[rx]
            for x in range(W):
                g[x] = w0 * mid[x]
                b[x] = mid[x]
            for k in range(1, rx + 1):
                wk = wx[rx + k]
                left = pad[rx - k:rx - k + W]  # views: loops over x the compiler vectorises
                right = pad[rx + k:rx + k + W]
                for x in range(W):
                    pair = left[x] + right[x]
                    g[x] += wk * pair
                    b[x] += pair
        for x in range(W):
            acc_b[x] = 0.0
        for j in range(ny):
            b = row_b[iy[j]]
            for x in range(W):
                acc_b[x] += b[x]
        dst = out[t]
        w0 = wy[ry]
        for y in range(H):
            if y > 0:
                enter = row_b[iy[y + ny - 1]]
                leave = row_b[iy[y - 1]]
                for x in range(W):
                    acc_b[x] += enter[x] - leave[x]
            g = row_g[y]
            for x in range(W):
                acc_g[x] = w0 * g[x]
            for k in range(1, ry + 1):
                wk = wy[ry + k]
                up = row_g[iy[y + ry - k]]
                down = row_g[iy[y + ry + k]]
                for x in range(W):
                    acc_g[x] += wk * (up[x] + down[x])
            o = dst[y]
            for x in range(W):
                o[x] = acc_g[x] - acc_b[x] * inv_box
    return out


# --------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What one scan computes; the same for every range of frames it is cut into.

    ``offsets``: neighbour offsets of the correlation images (also pass 2's);
    ``main_offsets``: those pass 1 accumulates (none when only mean/max/std are asked for);
    ``bounds``: frame boundaries of the max-correlation blocks (None: no ``max_corr``);
    ``gSig``: per spatial axis (None: no one-photon images).
    """

    n_frames: int
    frame_shape: tuple[int, ...]
    chunk_frames: int
    offsets: tuple[tuple[int, ...], ...]
    main_offsets: tuple[tuple[int, ...], ...]
    bounds: tuple[int, ...] | None
    gSig: tuple[float, ...] | None


@dataclass
class _RangeStats:
    """Pass-1 statistics of the frames ``t0 .. t1 - 1`` of a movie, all centred on ``shift``.

    ``peak``: maximum (float32, uncentred); ``total``: moments of all the range's frames;
    ``max_corr``: maximum of the correlation images of the blocks that lie wholly inside the
    range (None: none does); ``pieces``: moments of the blocks only partly inside, by block
    index (merged across ranges, then their correlation images join ``max_corr``);
    ``filtered``: statistics of the high-passed frames (one-photon images).
    """

    t0: int
    t1: int
    shift: np.ndarray
    peak: np.ndarray
    total: _Moments
    max_corr: np.ndarray | None
    pieces: dict[int, _Moments]
    filtered: _FilteredStats | None

    def merge(self, other: _RangeStats) -> None:
        """Append the statistics of the range that directly follows this one."""
        if other.t0 != self.t1:
            raise ValueError(f"ranges must be merged in order: frames {self.t0}..{self.t1} then {other.t0}..{other.t1}")
        np.maximum(self.peak, other.peak, out=self.peak)
        self.total.merge(other.total)
        self.max_corr = _fold_max(self.max_corr, other.max_corr)
        for k, piece in other.pieces.items():
            if k in self.pieces:
                self.pieces[k].merge(piece)
            else:
                self.pieces[k] = piece
        if self.filtered is not None and other.filtered is not None:
            self.filtered.merge(other.filtered)
        self.t1 = other.t1

    def close_blocks(self) -> None:
        """Fold the correlation images of the merged pieces (now whole blocks) into
        ``max_corr``; call once every range is merged."""
        for k in sorted(self.pieces):
            self.max_corr = _fold_max(self.max_corr, self.pieces[k].correlation())
        self.pieces = {}


def _scan(
    source: Any,
    *,
    chunk_frames: int | None,
    neighbours: int | None = None,
    with_corr: bool,
    block_frames: int | None = None,
    gSig: float | Sequence[float] | None = None,
    noise_thr: float = 2.0,
    progress: bool = False,
    engine: Any = None,
) -> SummaryImages:
    """The one scan behind every public function (see the module docstring).

    Without a parallel ``engine`` (or for sources other than a Store) the driver reads the
    frames itself, in one range ``0 .. T``; else ranges run as engine tasks and their
    statistics are merged (see :func:`_frame_ranges`).
    """
    n_frames, frame_shape = _check_source(source)
    n_spatial = len(frame_shape)
    if neighbours is None:
        neighbours = _full_neighbours(n_spatial)
    offsets = neighbour_offsets(n_spatial, neighbours) if (with_corr or gSig is not None) else []
    given_chunk = chunk_frames
    chunk_frames = _resolve_chunk_frames(source, chunk_frames, n_frames, frame_shape)
    if block_frames is not None:
        if isinstance(block_frames, bool) or not isinstance(block_frames, (int, np.integer)) or block_frames < 2:
            raise ValueError(f"max_corr_frames must be an integer >= 2 (frames per block); got {block_frames!r}.")
    sig: tuple[float, ...] | None = None
    if gSig is not None:
        sig = _as_gsig(gSig, n_spatial)
        if not np.isfinite(noise_thr) or noise_thr < 0:
            raise ValueError(f"noise_thr must be a finite number >= 0; got {noise_thr!r}.")
    plan = _Plan(
        n_frames=n_frames,
        frame_shape=frame_shape,
        chunk_frames=chunk_frames,
        offsets=tuple(offsets),
        main_offsets=tuple(offsets if with_corr or block_frames is not None else []),
        bounds=None if block_frames is None else tuple(_block_bounds(n_frames, block_frames)),
        gSig=sig,
    )
    ranges = _frame_ranges(source, plan, engine)
    if len(ranges) > 1 and given_chunk is None:
        # every worker holds chunks of its own at once: a quarter of the driver's each, not
        # rounded up to the store's time chunk (a brick's frames are one contiguous range of
        # its file, so part of it reads at the cost of that part)
        frame_bytes = 4 * int(np.prod(frame_shape, dtype=np.int64))
        plan = dataclasses.replace(plan, chunk_frames=max(1, min(n_frames, DEFAULT_CHUNK_BYTES // 4 // frame_bytes)))
    n_pass = 2 if sig is not None else 1
    desc = f"summary images (pass 1/{n_pass})"
    if len(ranges) == 1:
        stats = _pass1(source, plan, 0, n_frames, None, progress, desc)
    else:
        # every range is centred on the same image, the first chunk's mean (as in one range)
        first = np.asarray(source[0 : min(chunk_frames, n_frames)], dtype=np.float32)
        shift = first.mean(axis=0, dtype=np.float64).astype(np.float32)
        del first
        items = [(source, plan, t0, t1, shift) for t0, t1 in ranges]
        parts = engine.map(_pass1_task, items, desc=desc, progress=progress, unit="range")
        stats = parts[0]
        for part in parts[1:]:
            stats.merge(part)
    stats.close_blocks()

    mu, var = stats.total.mean_var()
    mean = (stats.shift.astype(np.float64) + mu).astype(np.float32)
    std = np.sqrt(var).astype(np.float32)
    corr = stats.total.correlation() if with_corr else np.zeros(frame_shape, np.float32)

    pnr = corr_pnr = None
    if stats.filtered is not None:
        f_mean, sigma, pnr = stats.filtered.finish()
        corr_pnr = _thresholded_correlation(
            source, plan, ranges, engine, stats.shift, f_mean, sigma, noise_thr, progress
        )
    return SummaryImages(
        mean=mean,
        max=stats.peak,
        std=std,
        corr=corr,
        max_corr=stats.max_corr,
        pnr=pnr,
        corr_pnr=corr_pnr,
        n_frames=n_frames,
    )


def _frame_ranges(source: Any, plan: _Plan, engine: Any) -> list[tuple[int, int]]:
    """Contiguous frame ranges ``[(t0, t1), …]`` covering ``0 .. T``, one per engine worker.

    One range (the driver does the work) unless ``engine`` runs tasks elsewhere (its ``kind``
    is not ``"serial"``) and ``source`` is a :class:`~somascope.store.Store` (tasks open it by
    path; no frames travel). The cuts lie near ``k * T / n`` on multiples of the store's time
    chunk (no chunk read by two tasks), moved to a max-correlation block boundary when one lies
    within a time chunk and a sixteenth of a range (blocks cut by a range are merged from their
    pieces, so the ranges stay balanced).
    """
    n_frames = plan.n_frames
    if engine is None or getattr(engine, "kind", "serial") == "serial":
        return [(0, n_frames)]
    from .store import Store

    if not isinstance(source, Store):
        return [(0, n_frames)]
    step = max(1, int(source.time_chunk))
    n = max(1, min(int(getattr(engine, "n_workers", 1)), -(-n_frames // step)))
    cuts = {0, n_frames}
    snap = min(step, n_frames // (16 * n))
    for i in range(1, n):
        cut = int(round(i * n_frames / n / step)) * step
        if plan.bounds is not None:
            near = min(plan.bounds, key=lambda b, c=cut: abs(b - c))
            if abs(near - cut) <= snap:
                cut = near
        if 0 < cut < n_frames:
            cuts.add(cut)
    edges = sorted(cuts)
    return list(zip(edges[:-1], edges[1:]))


def _pass1_task(item: tuple[Any, _Plan, int, int, np.ndarray]) -> _RangeStats:
    """Engine task: :func:`_pass1` over one range, ``item = (store, plan, t0, t1, shift)``."""
    source, plan, t0, t1, shift = item
    return _pass1(source, plan, t0, t1, shift, False, "")


def _pass1(
    source: Any, plan: _Plan, t0: int, t1: int, shift: np.ndarray | None, progress: bool, desc: str
) -> _RangeStats:
    """Pass 1 over frames ``t0 .. t1 - 1``: max, moments (whole movie and max-correlation
    blocks) and the high-passed statistics, centred on ``shift`` (None: the mean of the first
    chunk read)."""
    frame_shape = plan.frame_shape
    blocks = plan.bounds is not None
    bounds = plan.bounds if plan.bounds is not None else (0, plan.n_frames)
    total = _Moments(frame_shape, plan.main_offsets)
    block = _Moments(frame_shape, plan.main_offsets) if blocks else total
    k = bisect.bisect_right(bounds, t0) - 1  # the block frame t0 lies in
    max_corr: np.ndarray | None = None
    pieces: dict[int, _Moments] = {}
    peak = np.full(frame_shape, -np.inf, np.float32)
    filtered = _FilteredStats(frame_shape) if plan.gSig is not None else None

    for c0, chunk in _chunks(source, plan.chunk_frames, progress, desc, t0, t1):
        c1 = c0 + chunk.shape[0]
        np.maximum(peak, chunk.max(axis=0), out=peak)
        if shift is None:
            shift = chunk.mean(axis=0, dtype=np.float64).astype(np.float32)
        np.subtract(chunk, shift, out=chunk)
        if filtered is not None:
            # The filter is linear: filtering centred frames changes F by a constant image
            # per pixel, which cancels in F - mean(F), in the differences and in the peak.
            filtered.add(highpass(chunk, plan.gSig))  # type: ignore[arg-type]
        pos = c0
        while pos < c1:
            end = min(c1, bounds[k + 1])
            block.add(chunk[pos - c0 : end - c0])
            pos = end
            if blocks and end == bounds[k + 1]:
                if bounds[k] >= t0:  # the whole block lies in this range
                    max_corr = _fold_max(max_corr, block.correlation())
                else:
                    pieces[k] = block
                total.merge(block)
                block = _Moments(frame_shape, plan.main_offsets)
                k += 1
        _check_finite((block, total), c0, c1, source)
    if blocks and block.n > 0:  # the range ends inside block k
        pieces[k] = block
        total.merge(block)
    assert shift is not None
    return _RangeStats(t0=t0, t1=t1, shift=shift, peak=peak, total=total, max_corr=max_corr,
                       pieces=pieces, filtered=filtered)


def _thresholded_correlation(
    source: Any,
    plan: _Plan,
    ranges: Sequence[tuple[int, int]],
    engine: Any,
    shift: np.ndarray,
    f_mean: np.ndarray,
    sigma: np.ndarray,
    noise_thr: float,
    progress: bool,
) -> np.ndarray:
    """Second pass for one-photon data: correlation image of the high-passed frames minus
    their mean, with values below ``noise_thr * sigma`` set to zero.

    ``shift`` is the centring image of the first pass and ``f_mean`` the mean of the
    high-passed centred frames, so ``highpass(frames - shift) - f_mean = F - mean_t F``.
    Ranges (as in pass 1) each centre their thresholded data on their first chunk's mean;
    their moments are moved onto the first range's centre before they are merged.
    """
    base = f_mean.astype(np.float32)
    floor = (noise_thr * sigma).astype(np.float32)
    desc = "summary images (pass 2/2)"
    if len(ranges) == 1:
        parts = [_pass2(source, plan, 0, plan.n_frames, shift, base, floor, progress, desc)]
    else:
        items = [(source, plan, t0, t1, shift, base, floor) for t0, t1 in ranges]
        parts = engine.map(_pass2_task, items, desc=desc, progress=progress, unit="range")
    centre, moments = parts[0]
    for other_centre, other in parts[1:]:
        other.shift_by(other_centre.astype(np.float64) - centre)
        moments.merge(other)
    return moments.correlation()


def _pass2_task(item: tuple[Any, ...]) -> tuple[np.ndarray, _Moments]:
    """Engine task: :func:`_pass2` over one range,
    ``item = (store, plan, t0, t1, shift, base, floor)``."""
    source, plan, t0, t1, shift, base, floor = item
    return _pass2(source, plan, t0, t1, shift, base, floor, False, "")


def _pass2(
    source: Any,
    plan: _Plan,
    t0: int,
    t1: int,
    shift: np.ndarray,
    base: np.ndarray,
    floor: np.ndarray,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, _Moments]:
    """Pass 2 over frames ``t0 .. t1 - 1``: ``(centre, moments)`` of the thresholded
    high-passed frames, centred on ``centre`` (their mean over the range's first chunk)."""
    def filtered() -> Any:
        for _, chunk in _chunks(source, plan.chunk_frames, progress, desc, t0, t1):
            chunk -= shift
            data = highpass(chunk, plan.gSig)  # type: ignore[arg-type]
            data -= base
            yield data

    return thresholded_moments(filtered(), floor, plan.frame_shape, plan.offsets)


def thresholded_moments(chunks: Any, floor: np.ndarray, frame_shape: tuple[int, ...],
                        offsets: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, _Moments]:
    """``(centre, moments)`` of frames with the values below ``floor`` (frame-shaped) set to 0.

    ``chunks`` yields float32 ``(t, *frame_shape)`` blocks of consecutive frames (not
    modified); the moments (with the neighbour ``offsets``, for a correlation image) are of
    the thresholded data centred on ``centre``, its mean over the first block.
    """
    moments = _Moments(frame_shape, offsets)
    centre: np.ndarray | None = None
    for chunk in chunks:
        data = np.where(chunk < floor, np.float32(0.0), chunk).astype(np.float32, copy=False)
        if centre is None:
            centre = data.mean(axis=0, dtype=np.float64).astype(np.float32)
        data -= centre
        moments.add(data)
    if centre is None:
        raise ValueError("thresholded_moments needs at least one block of frames.")
    return centre, moments


def _fold_max(current: np.ndarray | None, image: np.ndarray | None) -> np.ndarray | None:
    """Elementwise maximum of two images, either of which may be missing (None)."""
    if image is None:
        return current
    return image if current is None else np.maximum(current, image)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _chunks(
    source: Any, chunk_frames: int, progress: bool, desc: str, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Chunks of float32 frames ``start .. stop - 1`` from :func:`somascope.io.iter_chunks`
    (fresh arrays), cut on the movie's grid of ``chunk_frames`` (a range starting off the grid
    first reads up to the next grid line), so that reads stay aligned to a store's chunks."""
    from .io import iter_chunks

    stop = int(source.shape[0]) if stop is None else int(stop)
    if start % chunk_frames:
        head = min(stop, start + chunk_frames - start % chunk_frames)
        yield from iter_chunks(source, head - start, start=start, stop=head, dtype=np.float32,
                               progress=progress, desc=desc)
        start = head
    if start < stop:
        yield from iter_chunks(source, chunk_frames, start=start, stop=stop, dtype=np.float32,
                               progress=progress, desc=desc)


def _check_source(source: Any) -> tuple[int, tuple[int, ...]]:
    """Validate a frame source; return ``(T, frame_shape)``."""
    shape = getattr(source, "shape", None)
    if shape is None or not hasattr(source, "__getitem__"):
        raise TypeError(
            f"summary images need a frame source (ndarray, somascope.io.Movie, somascope.store.Store); "
            f"got {type(source).__name__}. Open files with somascope.io.open_movie(path)."
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        hint = (
            " A single image has no time axis; pass image[np.newaxis] for a one-frame movie."
            if len(shape) == 2
            else ""
        )
        raise ValueError(
            f"summary images need a movie of shape T×H×W or T×Z×H×W; got shape {shape}.{hint}"
        )
    if shape[0] == 0:
        raise ValueError(f"the movie is empty (shape {shape}, 0 frames); there is nothing to summarise.")
    if min(shape[1:]) == 0:
        raise ValueError(f"the movie frames are empty (shape {shape}); every spatial axis needs >= 1 pixel.")
    return shape[0], shape[1:]


def _check_finite(moments: Sequence[_Moments], t0: int, t1: int, source: Any) -> None:
    """Raise if NaN/inf entered the sums with frames ``t0..t1`` (cheap: checks the sum images)."""
    finite = np.logical_and.reduce([np.isfinite(m.s1) for m in moments])
    if finite.all():
        return
    bad = int((~finite).sum())
    name = getattr(source, "path", None) or type(source).__name__
    raise ValueError(
        f"{name}: frames {t0}..{t1 - 1} contain NaN or infinite values ({bad} pixels affected); "
        "summary images need finite data. Fix: replace them first, e.g. np.nan_to_num(movie) or "
        "interpolate the bad frames."
    )


def _resolve_chunk_frames(
    source: Any, chunk_frames: int | None, n_frames: int, frame_shape: tuple[int, ...]
) -> int:
    if chunk_frames is not None:
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be an integer >= 1; got {chunk_frames!r}.")
        return int(chunk_frames)
    frame_bytes = 4 * int(np.prod(frame_shape, dtype=np.int64))
    from .io.chunks import aligned_chunk_frames

    n = aligned_chunk_frames(source, DEFAULT_CHUNK_BYTES // frame_bytes)
    return int(min(n, n_frames))


def _block_bounds(n_frames: int, block_frames: int) -> list[int]:
    """Frame boundaries of ``max(1, T // block_frames)`` near-equal blocks."""
    n_blocks = max(1, n_frames // int(block_frames))
    return [k * n_frames // n_blocks for k in range(n_blocks + 1)]


def _as_gsig(gSig: float | Sequence[float], n_spatial: int) -> tuple[float, ...]:
    """``gSig`` as one positive float per spatial axis."""
    values = np.atleast_1d(np.asarray(gSig, dtype=np.float64))
    if values.ndim != 1 or values.size not in (1, n_spatial):
        raise ValueError(
            f"gSig must be a number or {n_spatial} numbers (one per spatial axis); got {gSig!r}."
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"gSig is the neuron half-size in pixels and must be > 0; got {gSig!r}.")
    if values.size == 1:
        values = np.repeat(values, n_spatial)
    return tuple(float(v) for v in values)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale an image to 0..255 between its 0.5th and 99.5th percentiles; volumes are laid
    out plane by plane side by side (``H × Z*W``)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = np.concatenate(list(img), axis=1)
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    scaled = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write an 8-bit grey image as PNG atomically."""
    from matplotlib.image import imsave

    from .io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            imsave(fh, pixels, cmap="gray", vmin=0, vmax=255, format="png")
