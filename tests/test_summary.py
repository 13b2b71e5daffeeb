"""Summary images: each equals a plain in-memory NumPy formula, whatever the chunking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from somascope.summary import (
    SummaryImages,
    correlation_image,
    highpass,
    load_summary,
    max_correlation_image,
    mean_image,
    max_image,
    neighbour_offsets,
    pnr_image,
    save_summary,
    std_image,
    summary_images,
)

TOL = 1e-5


# ---------------------------------------------------------------------------------------
# Data and plain references
# ---------------------------------------------------------------------------------------


def blob_movie(n_frames: int, frame_shape: tuple[int, ...], seed: int = 0, n_cells: int = 4) -> np.ndarray:
    """Baseline 100 + Gaussian cells with sparse exponential transients + noise; float32.
    Two pixels are held constant (zero variance)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in frame_shape], indexing="ij")
    movie = np.full((n_frames, *frame_shape), 100.0)
    for _ in range(n_cells):
        centre = [rng.uniform(0, s) for s in frame_shape]
        shape = np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * 1.5**2))
        spikes = (rng.random(n_frames) < 0.08) * rng.uniform(3, 8, n_frames)
        trace = ndimage.convolve1d(spikes, np.exp(-np.arange(15) / 4.0), origin=-7, mode="constant")
        movie += trace.reshape(-1, *[1] * len(frame_shape)) * shape
    movie += rng.normal(0, 1.0, movie.shape)
    movie = movie.astype(np.float32)
    movie[(slice(None),) + (0,) * len(frame_shape)] = 7.25  # a corner pixel
    movie[(slice(None),) + tuple(s // 2 for s in frame_shape)] = 100.3  # a central pixel
    return movie


def all_offsets(n_spatial: int, neighbours: int) -> list[tuple[int, ...]]:
    """Every neighbour offset (both signs) of the 4/8 (2-D) or 6/26 (3-D) neighbourhood."""
    out = []
    for off in itertools.product((-1, 0, 1), repeat=n_spatial):
        n_nonzero = sum(o != 0 for o in off)
        if n_nonzero == 0:
            continue
        if neighbours in (4, 6) and n_nonzero != 1:
            continue
        out.append(off)
    assert len(out) == neighbours
    return out


def ref_correlation(movie: np.ndarray, neighbours: int) -> np.ndarray:
    """Per pixel: mean over in-bounds neighbours of the Pearson correlation (0 when either
    pixel is constant)."""
    x = movie.astype(np.float64)
    mu, sd = x.mean(0), x.std(0)
    z = np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1), 0.0)
    shape = movie.shape[1:]
    out = np.zeros(shape)
    for p in np.ndindex(*shape):
        vals = []
        for off in all_offsets(len(shape), neighbours):
            q = tuple(pi + oi for pi, oi in zip(p, off))
            if all(0 <= qi < si for qi, si in zip(q, shape)):
                vals.append(np.mean(z[(slice(None),) + p] * z[(slice(None),) + q]))
        out[p] = np.mean(vals)
    return out


def ref_blocks(n_frames: int, block: int) -> list[tuple[int, int]]:
    n = max(1, n_frames // block)
    edges = [k * n_frames // n for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def ref_highpass(frame: np.ndarray, gsig: float) -> np.ndarray:
    """One 2-D frame filtered with the explicit kernel outer(g, g) - 1 / (2r+1)^2."""
    r = max(1, int(2 * gsig))
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * gsig**2))
    g /= g.sum()
    kernel = np.outer(g, g) - 1.0 / (2 * r + 1) ** 2
    return ndimage.correlate(frame.astype(np.float64), kernel, mode="reflect")


def ref_pnr(movie: np.ndarray, gsig: float, noise_thr: float, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.stack([ref_highpass(fr, gsig) for fr in movie])
    mean = f.mean(0)
    sigma = np.sqrt(np.sum(np.diff(f, axis=0) ** 2, axis=0) / (2 * (len(f) - 1)))
    pnr = np.where(sigma > 0, (f.max(0) - mean) / np.where(sigma > 0, sigma, 1), 0.0)
    thresholded = f - mean
    thresholded[thresholded < noise_thr * sigma] = 0.0
    return pnr, ref_correlation(thresholded, neighbours)


# ---------------------------------------------------------------------------------------
# 2-D movies
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    return blob_movie(47, (13, 11), seed=1)


@pytest.mark.parametrize("chunk_frames", [1, 10, 47, 500])
def test_basic_images_equal_numpy(movie: np.ndarray, chunk_frames: int) -> None:
    original = movie.copy()
    images = summary_images(movie, chunk_frames=chunk_frames)
    x = movie.astype(np.float64)
    np.testing.assert_allclose(images.mean, x.mean(0), rtol=TOL)
    np.testing.assert_array_equal(images.max, movie.max(0))
    np.testing.assert_allclose(images.std, x.std(0), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(images.corr, ref_correlation(movie, 8), atol=TOL)
    assert images.n_frames == 47
    assert images.max_corr is None and images.pnr is None and images.corr_pnr is None
    assert all(im.dtype == np.float32 and im.shape == (13, 11) for im in images.images().values())
    np.testing.assert_array_equal(movie, original)  # input untouched


def test_correlation_image_4_and_8_neighbours(movie: np.ndarray) -> None:
    corr4 = correlation_image(movie, neighbours=4, chunk_frames=9)
    corr8 = correlation_image(movie, neighbours=8, chunk_frames=9)
    np.testing.assert_allclose(corr4, ref_correlation(movie, 4), atol=TOL)
    np.testing.assert_allclose(corr8, ref_correlation(movie, 8), atol=TOL)
    assert not np.allclose(corr4, corr8)
    # Cells make neighbouring pixels correlate: the image is far from noise level somewhere.
    assert corr8.max() > 0.5


def test_constant_pixels_give_zero_not_nan(movie: np.ndarray) -> None:
    images = summary_images(movie, chunk_frames=10, max_corr_frames=15, gSig=1.5)
    for name, image in images.images().items():
        assert np.isfinite(image).all(), name
    for pixel in [(0, 0), (6, 5)]:
        assert images.std[pixel] == 0.0
        assert images.corr[pixel] == 0.0
        assert images.max_corr is not None and images.max_corr[pixel] == 0.0
    assert images.mean[0, 0] == np.float32(7.25) and images.mean[6, 5] == np.float32(100.3)
    flat = summary_images(np.full((20, 5, 6), 3.0, np.float32), gSig=1, max_corr_frames=5)
    for name, image in flat.images().items():
        expected = 3.0 if name in ("mean", "max") else 0.0
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_single_functions_match_summary(movie: np.ndarray) -> None:
    full = summary_images(movie, chunk_frames=8, max_corr_frames=12, gSig=2)
    # Same accumulators; summary_images sums the max-correlation blocks separately, so the
    # float64 sums differ only in rounding order.
    np.testing.assert_allclose(mean_image(movie, chunk_frames=8), full.mean, rtol=1e-6)
    np.testing.assert_array_equal(max_image(movie), full.max)
    np.testing.assert_allclose(std_image(movie, chunk_frames=8), full.std, rtol=1e-6)
    np.testing.assert_array_equal(max_correlation_image(movie, block_frames=12, chunk_frames=8), full.max_corr)
    pnr, corr_pnr = pnr_image(movie, 2, chunk_frames=8)
    np.testing.assert_array_equal(pnr, full.pnr)
    np.testing.assert_array_equal(corr_pnr, full.corr_pnr)
    np.testing.assert_allclose(full.corr_pnr_product, full.pnr * full.corr_pnr, rtol=1e-6)


@pytest.mark.parametrize("chunk_frames", [4, 13, 47])
def test_max_correlation_equals_blockwise_reference(movie: np.ndarray, chunk_frames: int) -> None:
    result = max_correlation_image(movie, block_frames=15, chunk_frames=chunk_frames)
    blocks = ref_blocks(47, 15)
    assert blocks == [(0, 15), (15, 31), (31, 47)]
    expected = np.max([ref_correlation(movie[a:b], 8) for a, b in blocks], axis=0)
    np.testing.assert_allclose(result, expected, atol=TOL)


def test_max_correlation_finds_cell_active_in_one_block() -> None:
    rng = np.random.default_rng(3)
    n_frames, shape = 400, (16, 16)
    yy, xx = np.mgrid[:16, :16]
    cell = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / (2 * 1.5**2))
    trace = np.zeros(n_frames)
    trace[20:80] = rng.uniform(0, 6, 60)  # active only in the first 100-frame block
    movie = (trace[:, None, None] * cell + rng.normal(0, 1, (n_frames, *shape))).astype(np.float32)
    images = summary_images(movie, max_corr_frames=100, chunk_frames=64)
    assert images.max_corr is not None
    assert images.max_corr[8, 8] > images.corr[8, 8] + 0.15
    assert images.max_corr[8, 8] > 0.6
    assert images.corr[8, 8] > 3 * np.median(np.abs(images.corr))


@pytest.mark.parametrize("chunk_frames", [6, 47])
def test_pnr_equals_reference_formula(movie: np.ndarray, chunk_frames: int) -> None:
    pnr, corr_pnr = pnr_image(movie, 2.0, noise_thr=1.5, neighbours=8, chunk_frames=chunk_frames)
    ref, ref_corr = ref_pnr(movie, 2.0, 1.5, 8)
    np.testing.assert_allclose(pnr, ref, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(corr_pnr, ref_corr, atol=TOL)


def test_pnr_is_high_on_an_active_cell() -> None:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:24, :24]
    cell = np.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / (2 * 2.0**2))
    spikes = (rng.random(300) < 0.03) * 10.0
    trace = np.convolve(spikes, np.exp(-np.arange(20) / 5.0))[:300]
    background = 50 + 20 * np.exp(-((yy - 5) ** 2 + (xx - 20) ** 2) / (2 * 8.0**2))  # smooth 1p haze
    movie = (background + trace[:, None, None] * cell + rng.normal(0, 1, (300, 24, 24))).astype(np.float32)
    pnr, corr_pnr = pnr_image(movie, 2)
    assert pnr[12, 12] > 3 * np.median(pnr)
    assert corr_pnr[12, 12] > 0.5 > np.median(corr_pnr)


# ---------------------------------------------------------------------------------------
# The high-pass filter
# ---------------------------------------------------------------------------------------


def ref_highpass_separable(frame: np.ndarray, gsig: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian minus box, each as SciPy 1-D filters along every axis, all in float64 (the
    definition the kernel implements, also where the radius exceeds the frame)."""
    sig = np.broadcast_to(np.asarray(gsig, float), (frame.ndim,))
    blur = box = frame.astype(np.float64)
    for axis, s in enumerate(sig):
        r = max(1, int(2 * s))
        g = np.exp(-0.5 * np.arange(-r, r + 1) ** 2 / s**2)
        blur = ndimage.correlate1d(blur, g / g.sum(), axis=axis, mode="reflect")
        box = ndimage.uniform_filter1d(box, 2 * r + 1, axis=axis, mode="reflect")
    return blur - box


def scipy_highpass(frames: np.ndarray, gsig: float | tuple[float, ...]) -> np.ndarray:
    """The SciPy path of :func:`highpass` (float32 between the axes), as 2-D movies ran it before."""
    from somascope import summary

    sig = summary._as_gsig(gsig, frames.ndim - 1)
    radii = [max(1, int(2 * s)) for s in sig]
    return summary._highpass_scipy(frames.astype(np.float32), sig, radii, np.empty(frames.shape, np.float32))


HIGHPASS_CASES = [
    ((4, 32, 32), 2.0),  # square
    ((3, 37, 23), 4.0),  # non-square, radius 8
    ((3, 23, 41), (1.0, 3.0)),  # per-axis gSig
    ((3, 5, 4), 3.0),  # radius 6 exceeds both sides: reflected more than once
    ((2, 1, 7), (0.4, 2.5)),  # one row; radius floor of 1
    ((2, 2, 2), 6.0),
]


@pytest.mark.parametrize("shape, gsig", HIGHPASS_CASES)
def test_highpass_kernel_equals_float64_reference(shape: tuple[int, ...], gsig: float | tuple[float, ...]) -> None:
    rng = np.random.default_rng(len(shape) + shape[1])
    frames = (500.0 + 10.0 * rng.random(shape)).astype(np.float32)  # a large baseline, small signal
    out = highpass(frames, gsig)
    assert out.dtype == np.float32 and out.shape == frames.shape
    ref = np.stack([ref_highpass_separable(f, gsig) for f in frames])
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 1e-6 * scale
    # The SciPy path rounds to float32 between its passes: a few units in the last place of the
    # baseline of 500 (~5e-5 of the filtered scale here); the kernel is float64 throughout.
    assert np.abs(out - scipy_highpass(frames, gsig)).max() <= 4 * np.spacing(np.float32(510.0))
    centred = frames - np.float32(500.0)  # what the scan filters (frames minus a mean image)
    assert np.abs(highpass(centred, gsig) - scipy_highpass(centred, gsig)).max() <= 1e-5 * scale


def test_highpass_kernel_equals_explicit_2d_kernel_and_maps_constants_to_zero(movie: np.ndarray) -> None:
    out = highpass(movie, 2.0)
    np.testing.assert_allclose(out, np.stack([ref_highpass(f, 2.0) for f in movie]), atol=1e-5 * np.abs(out).max())
    assert np.abs(highpass(np.full((2, 9, 12), 700.0, np.float32), (1.5, 2.5))).max() < 1e-4
    # any dtype and memory layout in, float32 out, input untouched
    ints = np.round(movie[:5] * 10).astype(np.uint16)
    strided = np.asfortranarray(ints.astype(np.float64))[:, ::2, ::-1]
    np.testing.assert_allclose(highpass(strided, 1.0), highpass(np.ascontiguousarray(strided, np.float32), 1.0),
                               rtol=0, atol=0)
    np.testing.assert_allclose(highpass(ints, 1.0), scipy_highpass(ints, 1.0), atol=1e-4 * 10 * np.abs(out).max())


def test_highpass_volumes_keep_the_scipy_path() -> None:
    vol = blob_movie(3, (4, 9, 8), seed=3, n_cells=2)
    np.testing.assert_array_equal(highpass(vol, (1.0, 2.0, 2.0)), scipy_highpass(vol, (1.0, 2.0, 2.0)))
    ref = np.stack([ref_highpass_separable(v, (1.0, 2.0, 2.0)) for v in vol])
    np.testing.assert_allclose(highpass(vol, (1.0, 2.0, 2.0)), ref, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Volumes, other sources, files, errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("neighbours", [6, 26])
def test_volume_images_equal_numpy(neighbours: int) -> None:
    movie = blob_movie(30, (4, 6, 5), seed=2, n_cells=3)
    images = summary_images(movie, chunk_frames=7, neighbours=neighbours, max_corr_frames=10)
    x = movie.astype(np.float64)
    np.testing.assert_allclose(images.mean, x.mean(0), rtol=TOL)
    np.testing.assert_allclose(images.std, x.std(0), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(images.corr, ref_correlation(movie, neighbours), atol=TOL)
    expected = np.max([ref_correlation(movie[a:b], neighbours) for a, b in ref_blocks(30, 10)], axis=0)
    np.testing.assert_allclose(images.max_corr, expected, atol=TOL)
    assert images.corr.shape == (4, 6, 5)


def test_volume_pnr_runs_with_per_axis_gsig() -> None:
    movie = blob_movie(25, (3, 8, 8), seed=4, n_cells=2)
    pnr, corr_pnr = pnr_image(movie, (1, 2, 2), chunk_frames=6)
    pnr_all, _ = pnr_image(movie, (1, 2, 2), chunk_frames=25)
    assert pnr.shape == corr_pnr.shape == (3, 8, 8)
    np.testing.assert_allclose(pnr, pnr_all, rtol=1e-6)
    assert np.isfinite(pnr).all() and (pnr >= 0).all()


class ListSource:
    """A minimal non-ndarray frame source (uint16 frames, time slicing only)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        assert isinstance(key, slice), "only time slices are asked for"
        return self._data[key].copy()


def test_any_frame_source_and_integer_data(movie: np.ndarray) -> None:
    ints = np.round(movie * 10).astype(np.uint16)
    from_source = summary_images(ListSource(ints), chunk_frames=11)
    from_array = summary_images(ints.astype(np.float32), chunk_frames=47)
    np.testing.assert_allclose(from_source.corr, from_array.corr, atol=1e-6)
    np.testing.assert_allclose(from_source.mean, ints.mean(0), rtol=TOL)


def test_store_source(tmp_path, movie: np.ndarray) -> None:
    store_mod = pytest.importorskip("somascope.store")
    store = store_mod.Store.from_source(movie, tmp_path / "movie.zarr")
    images = summary_images(store, max_corr_frames=15)
    np.testing.assert_allclose(images.corr, ref_correlation(movie, 8), atol=TOL)


def test_progress_bar(movie: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    summary_images(movie, chunk_frames=10, progress=True)
    assert "summary images" in capsys.readouterr().err


def test_save_and_load(tmp_path, movie: np.ndarray) -> None:
    from matplotlib.image import imread

    images = summary_images(movie, chunk_frames=10, max_corr_frames=20)
    written = save_summary(images, tmp_path / "out")
    names = {"mean", "max", "std", "corr", "max_corr"}
    assert set(written) == {f"{n}.npy" for n in names} | {f"{n}.png" for n in names} | {"summary.json"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(written)  # no temp files left
    png = imread(written["corr.png"])
    assert png.shape[:2] == (13, 11)
    assert png[..., 0].max() == 1.0 and png[..., 0].min() == 0.0  # full 8-bit range used
    back = load_summary(tmp_path / "out")
    assert isinstance(back, SummaryImages) and back.n_frames == 47 and back.pnr is None
    np.testing.assert_array_equal(back.max_corr, images.max_corr)
    vol = summary_images(blob_movie(12, (3, 5, 4), n_cells=1))
    save_summary(vol, tmp_path / "vol")
    assert imread(tmp_path / "vol" / "corr.png").shape[:2] == (5, 12)  # planes side by side


def test_bad_input_errors(movie: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"T×H×W or T×Z×H×W.*np.newaxis"):
        summary_images(movie[0])
    with pytest.raises(ValueError, match="empty"):
        summary_images(movie[:0])
    with pytest.raises(ValueError, match="empty"):
        summary_images(np.zeros((5, 0, 4), np.float32))
    with pytest.raises(TypeError, match="frame source"):
        summary_images([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="use 4 or 8"):
        correlation_image(movie, neighbours=6)
    with pytest.raises(ValueError, match="use 6 or 26"):
        correlation_image(blob_movie(5, (2, 3, 3)), neighbours=8)
    with pytest.raises(ValueError, match="chunk_frames"):
        summary_images(movie, chunk_frames=0)
    with pytest.raises(ValueError, match="max_corr_frames"):
        summary_images(movie, max_corr_frames=1)
    with pytest.raises(ValueError, match="gSig"):
        summary_images(movie, gSig=-1)
    with pytest.raises(ValueError, match="gSig"):
        summary_images(movie, gSig=(1, 2, 3))
    bad = movie.copy()
    bad[30, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"frames 30\.\.39 contain NaN"):
        summary_images(bad, chunk_frames=10)
    with pytest.raises(TypeError, match="SummaryImages"):
        save_summary({"mean": movie[0]}, "unused")  # type: ignore[arg-type]


def test_neighbour_offsets_are_half_of_each_neighbourhood() -> None:
    for n_spatial, neighbours in [(2, 4), (2, 8), (3, 6), (3, 26)]:
        half = neighbour_offsets(n_spatial, neighbours)
        assert len(half) == neighbours // 2
        both = set(half) | {tuple(-o for o in off) for off in half}
        assert both == set(all_offsets(n_spatial, neighbours))
