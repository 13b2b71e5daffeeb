"""Turning ground truth into frames: ``A·C + b·f`` in chunks of frames, motion, vignetting and
Poisson–Gaussian noise, written into memory or into a :class:`somascope.store.Store`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from ._fields import rng_for
from .motion import MotionModel, warp_frame

POISSON_EXACT_BELOW = 10.0  # expected photons per pixel under which shot noise is drawn exactly
CHUNK_VOXELS = 2**24  # voxels per chunk of frames written at once (64 MB of float32)


@dataclass(frozen=True)
class NoiseModel:
    """Poisson–Gaussian detector noise: a pixel of clean intensity ``x`` (movie units) reads
    ``gain · Poisson(x / gain) + Normal(0, read_std²)``, so its variance is
    ``gain·x + read_std²``. ``gain`` is the movie units per detected photon.

    Shot noise is drawn exactly (discrete photon counts) where fewer than
    :data:`POISSON_EXACT_BELOW` photons are expected, and everywhere in a frame where that is
    most pixels. Brighter pixels, where the count distribution is smooth, draw the whole
    reading from a skewness-corrected normal law (Cornish–Fisher) with the same mean,
    variance and skewness as the Poisson–Gaussian reading, which is several times faster.
    """

    gain: float
    read_std: float

    @classmethod
    def from_snr(cls, snr: float, spike_amplitude: float, reference_level: float, read_fraction: float) -> NoiseModel:
        """Noise such that at intensity ``reference_level`` the standard deviation is
        ``spike_amplitude / snr``, a fraction ``read_fraction`` of its variance being read
        noise and the rest shot noise. ``snr=inf`` gives a noise-free movie."""
        if not np.isfinite(snr):
            return cls(0.0, 0.0)
        variance = (spike_amplitude / snr) ** 2
        if reference_level <= 0:
            return cls(0.0, float(np.sqrt(variance)))
        return cls(float((1.0 - read_fraction) * variance / reference_level), float(np.sqrt(read_fraction * variance)))

    def std(self, level: np.ndarray) -> np.ndarray:
        """Noise standard deviation at clean intensity ``level`` (float32, same shape)."""
        level = np.maximum(np.asarray(level, dtype=np.float32), 0.0)
        return np.sqrt(self.gain * level + np.float32(self.read_std**2)).astype(np.float32)

    def sample(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A noisy reading of ``clean`` (≥ 0, float32); returns a new float32 array."""
        if self.gain == 0 and self.read_std == 0:
            return np.array(clean, dtype=np.float32)
        z = rng.standard_normal(clean.shape, dtype=np.float32)
        if self.gain == 0:
            return clean + np.float32(self.read_std) * z
        gain, read = np.float32(self.gain), np.float32(self.read_std)
        low = clean < np.float32(POISSON_EXACT_BELOW * self.gain)
        n_low = int(np.count_nonzero(low))
        if 2 * n_low >= low.size:  # mostly dim: exact everywhere (cheaper than masking)
            noisy = rng.poisson(clean / gain).astype(np.float32)
            noisy *= gain
            noisy += read * z
            return noisy
        # Cornish–Fisher: (z + a(z² - 1)) / sqrt(1 + 2a²) has unit variance and skewness ≈ 6a;
        # a Poisson–Gaussian reading has skewness gain²·x / var^1.5. (In place: 1 MB frames.)
        var = clean * gain
        var += read * read
        std = np.sqrt(var)
        a = clean * np.float32(self.gain**2 / 6.0)
        a /= np.maximum(var * std, np.float32(1e-30))
        noisy = z * z
        noisy -= np.float32(1.0)
        noisy *= a
        noisy += z
        a *= a
        a *= np.float32(2.0)
        a += np.float32(1.0)
        noisy /= np.sqrt(a, out=a)
        noisy *= std
        noisy += clean
        if n_low:
            photons = clean[low] / gain
            noisy[low] = (self.gain * rng.poisson(photons) + self.read_std * z[low]).astype(np.float32)
        return noisy


def clean_frame(A: sparse.csc_matrix, c: np.ndarray, bT: np.ndarray, f: np.ndarray) -> np.ndarray:
    """One noise-free, motion-free frame ``A·c + b·f`` as a flat float32 vector (pixels).
    ``c`` (``K``) and ``f`` (``nb``) are the frame's calcium and background levels, ``bT`` is
    ``b`` transposed (``nb × pixels``). Computed frame by frame, so a frame never depends on
    how the movie is chunked."""
    frame = np.asarray(A @ c, dtype=np.float32) if A.shape[1] else np.zeros(bT.shape[1], np.float32)
    for j in range(bT.shape[0]):
        frame += np.float32(f[j]) * bT[j]
    return frame


def _check_memory(nbytes: int) -> None:
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > 0.9 * available:
        raise MemoryError(
            f"the simulated movie needs {nbytes / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of memory "
            f"is available; pass out='movie.zarr' to write it to disk in chunks instead."
        )


def render_movie(
    A: sparse.csc_matrix,
    C: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    dims: Sequence[int],
    *,
    noise: NoiseModel,
    noise_key: Sequence[int],
    motion: MotionModel | None = None,
    vignette: np.ndarray | None = None,
    order: int = 3,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    frame_rate: float | None = None,
    metadata: dict[str, Any] | None = None,
    chunk_frames: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
) -> Any:
    """Render the movie ``vignette ⊙ warp_t(A·C + b·f) + noise``.

    ``A`` (``pixels × K``), ``b`` (``pixels × nb``) are in the motion-free tissue frame and
    ``C`` (``K × T``), ``f`` (``nb × T``) in movie units. Frame ``t``'s noise comes from the
    random stream ``(*noise_key, t)`` (see :func:`~._fields.rng_for`), so the frames are the same
    whatever the chunking or the number of threads. A ``motion`` model of the last two axes only
    (``motion.dims == dims[-2:]``) moves every plane of a volume by the same in-plane displacement. Returns a ``T × *dims`` float32 array, or
    with ``out`` a finalised :class:`somascope.store.Store` at that path.
    """
    dims = tuple(int(d) for d in dims)
    n_frames = C.shape[1] if C.shape[0] else f.shape[1]
    n_pixels = int(np.prod(dims))
    chunk = int(chunk_frames) if chunk_frames else max(1, min(n_frames, CHUNK_VOXELS // n_pixels))
    store = None
    if out is None:
        _check_memory(4 * n_frames * n_pixels)
        movie = np.empty((n_frames, *dims), dtype=np.float32)
    else:
        from ..store import Store

        store = Store.create(Path(out), (n_frames, *dims), frame_rate=frame_rate, metadata=metadata, overwrite=overwrite)
        chunk = max(1, round(chunk / store.time_chunk)) * store.time_chunk
    bT = np.ascontiguousarray(b.T, dtype=np.float32)
    grid = np.indices(motion.dims, dtype=np.float32) if motion is not None and not motion.is_rigid else None
    threads = int(n_threads) if n_threads else min(4, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_frames, desc="simulating", unit="frame")
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        for t0 in range(0, n_frames, chunk):
            t1 = min(n_frames, t0 + chunk)
            dest = movie[t0:t1] if store is None else np.empty((t1 - t0, *dims), dtype=np.float32)
            C_chunk = np.ascontiguousarray(C[:, t0:t1].T, dtype=np.float32)
            job = _frame_job(A, C_chunk, bT, f[:, t0:t1], dest, t0, noise, noise_key, motion, vignette, order, grid)
            if pool is None:
                for i in range(t1 - t0):
                    job(i)
            else:
                list(pool.map(job, range(t1 - t0)))
            if store is not None:
                store.write(t0, dest)
            if bar is not None:
                bar.update(t1 - t0)
    except BaseException:
        if store is not None:
            store.discard()
        raise
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
    return movie if store is None else store.finalize()


def _frame_job(
    A: sparse.csc_matrix,
    C_chunk: np.ndarray,
    bT: np.ndarray,
    f_chunk: np.ndarray,
    dest: np.ndarray,
    t0: int,
    noise: NoiseModel,
    noise_key: Sequence[int],
    motion: MotionModel | None,
    vignette: np.ndarray | None,
    order: int,
    grid: np.ndarray | None,
) -> Callable[[int], None]:
    def job(i: int) -> None:
        t = t0 + i
        frame = clean_frame(A, C_chunk[i], bT, f_chunk[:, i]).reshape(dest.shape[1:])
        if motion is not None and len(motion.dims) < frame.ndim:  # a volume moved in-plane: each plane alike
            planes = frame.reshape(-1, *motion.dims)
            frame = np.stack([warp_frame(p, motion, t, order, grid) for p in planes]).reshape(frame.shape)
            np.maximum(frame, 0.0, out=frame)
        elif motion is not None:
            frame = warp_frame(frame, motion, t, order, grid)
            np.maximum(frame, 0.0, out=frame)  # cubic splines overshoot a little at sharp edges
        if vignette is not None:
            frame *= vignette
        dest[i] = noise.sample(frame, rng_for(*noise_key, t))

    return job
