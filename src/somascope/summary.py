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
float64, which keeps the error of correlations and standard deviations below 1e-6.
"""

from __future__ import annotations

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
) -> SummaryImages:
    """Compute all summary images in one scan of ``source`` (two when ``gSig`` is given).

    Parameters
    ----------
    source
        Frame source of shape ``(T, H, W)`` or ``(T, Z, H, W)``: ndarray, Movie, Store.
    chunk_frames
        Frames read at a time; default: about 128 MB of float32 (a multiple of the store's
        time chunk for a :class:`~somascope.store.Store`). Results do not depend on it.
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
        Show a tqdm progress bar.

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
    """Running mean, max and successive-difference noise of high-passed frames."""

    def __init__(self, frame_shape: tuple[int, ...]) -> None:
        self.n = 0
        self.s1 = np.zeros(frame_shape, np.float64)
        self.ssd = np.zeros(frame_shape, np.float64)
        self.max = np.full(frame_shape, -np.inf, np.float32)
        self.last: np.ndarray | None = None

    def add(self, filtered: np.ndarray) -> None:
        """Add consecutive filtered frames ``(t, *frame_shape)`` (float32)."""
        np.maximum(self.max, filtered.max(axis=0), out=self.max)
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
    ``max(1, int(2 * gSig))``; borders are reflected. The kernel sums to zero, so a constant
    image maps to 0. Returns a new float32 array of the same shape.
    """
    from scipy import ndimage

    sig = _as_gsig(gSig, frames.ndim - 1)
    radii = [max(1, int(2 * s)) for s in sig]
    frames = np.asarray(frames, dtype=np.float32)
    out = np.empty_like(frames)
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


# --------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------


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
) -> SummaryImages:
    """The one scan behind every public function (see the module docstring)."""
    n_frames, frame_shape = _check_source(source)
    n_spatial = len(frame_shape)
    if neighbours is None:
        neighbours = _full_neighbours(n_spatial)
    offsets = neighbour_offsets(n_spatial, neighbours) if (with_corr or gSig is not None) else []
    chunk_frames = _resolve_chunk_frames(source, chunk_frames, n_frames, frame_shape)
    if block_frames is not None:
        if isinstance(block_frames, bool) or not isinstance(block_frames, (int, np.integer)) or block_frames < 2:
            raise ValueError(f"max_corr_frames must be an integer >= 2 (frames per block); got {block_frames!r}.")
    if gSig is not None:
        _as_gsig(gSig, n_spatial)
        if not np.isfinite(noise_thr) or noise_thr < 0:
            raise ValueError(f"noise_thr must be a finite number >= 0; got {noise_thr!r}.")
    bounds = _block_bounds(n_frames, block_frames) if block_frames is not None else [0, n_frames]
    main_offsets = offsets if with_corr or block_frames is not None else []

    total = _Moments(frame_shape, main_offsets)
    block = _Moments(frame_shape, main_offsets) if block_frames is not None else total
    max_corr: np.ndarray | None = None
    peak = np.full(frame_shape, -np.inf, np.float32)
    filtered = _FilteredStats(frame_shape) if gSig is not None else None
    shift: np.ndarray | None = None
    k = 0  # index of the current block
    n_pass = 2 if gSig is not None else 1

    for t0, chunk in _chunks(source, chunk_frames, progress, f"summary images (pass 1/{n_pass})"):
        t1 = t0 + chunk.shape[0]
        np.maximum(peak, chunk.max(axis=0), out=peak)
        if shift is None:
            shift = chunk.mean(axis=0, dtype=np.float64).astype(np.float32)
        np.subtract(chunk, shift, out=chunk)
        if filtered is not None:
            # The filter is linear: filtering centred frames changes F by a constant image
            # per pixel, which cancels in F - mean(F), in the differences and in the peak.
            filtered.add(highpass(chunk, gSig))  # type: ignore[arg-type]
        pos = t0
        while pos < t1:
            end = min(t1, bounds[k + 1])
            block.add(chunk[pos - t0 : end - t0])
            pos = end
            if block_frames is not None and end == bounds[k + 1]:
                corr_k = block.correlation()
                max_corr = corr_k if max_corr is None else np.maximum(max_corr, corr_k)
                total.merge(block)
                block = _Moments(frame_shape, main_offsets)
                k += 1
        _check_finite((block, total), t0, t1, source)

    assert shift is not None
    mu, var = total.mean_var()
    mean = (shift.astype(np.float64) + mu).astype(np.float32)
    std = np.sqrt(var).astype(np.float32)
    corr = total.correlation() if with_corr else np.zeros(frame_shape, np.float32)

    pnr = corr_pnr = None
    if filtered is not None:
        f_mean, sigma, pnr = filtered.finish()
        corr_pnr = _thresholded_correlation(
            source, chunk_frames, gSig, shift, f_mean, sigma, noise_thr, offsets, progress  # type: ignore[arg-type]
        )
    return SummaryImages(
        mean=mean,
        max=peak,
        std=std,
        corr=corr,
        max_corr=max_corr,
        pnr=pnr,
        corr_pnr=corr_pnr,
        n_frames=n_frames,
    )


def _thresholded_correlation(
    source: Any,
    chunk_frames: int,
    gSig: float | Sequence[float],
    shift: np.ndarray,
    f_mean: np.ndarray,
    sigma: np.ndarray,
    noise_thr: float,
    offsets: Sequence[tuple[int, ...]],
    progress: bool,
) -> np.ndarray:
    """Second pass for one-photon data: correlation image of the high-passed frames minus
    their mean, with values below ``noise_thr * sigma`` set to zero.

    ``shift`` is the centring image of the first pass and ``f_mean`` the mean of the
    high-passed centred frames, so ``highpass(frames - shift) - f_mean = F - mean_t F``.
    """
    base = f_mean.astype(np.float32)
    floor = (noise_thr * sigma).astype(np.float32)
    moments = _Moments(tuple(base.shape), offsets)
    centre: np.ndarray | None = None
    for _, chunk in _chunks(source, chunk_frames, progress, "summary images (pass 2/2)"):
        chunk -= shift
        data = highpass(chunk, gSig)
        data -= base
        data[data < floor] = 0.0
        if centre is None:
            centre = data.mean(axis=0, dtype=np.float64).astype(np.float32)
        data -= centre
        moments.add(data)
    return moments.correlation()


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _chunks(source: Any, chunk_frames: int, progress: bool, desc: str) -> Iterator[tuple[int, np.ndarray]]:
    """Chunks of float32 frames from :func:`somascope.io.iter_chunks` (fresh arrays)."""
    from .io import iter_chunks

    yield from iter_chunks(source, chunk_frames, dtype=np.float32, progress=progress, desc=desc)


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
        "summary images need finite data. Replace them first, e.g. np.nan_to_num(movie) or "
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
