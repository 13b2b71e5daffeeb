"""Movie reading: formats, layouts, interleaving, laziness and clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import tifffile

from somascope.io import MovieError, iter_chunks, open_movie

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture()
def frames() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 4000, size=(37, 24, 20), dtype=np.uint16)


def test_multipage_tiff_contiguous_and_compressed(tmp_path: Path, frames: np.ndarray) -> None:
    plain, packed = tmp_path / "plain.tif", tmp_path / "packed.tif"
    tifffile.imwrite(plain, frames)
    tifffile.imwrite(packed, frames, compression="zlib")
    for path in (plain, packed):
        with open_movie(path, frame_rate=30) as movie:
            assert movie.shape == frames.shape and movie.dtype == np.uint16
            assert movie.frame_rate == 30
            np.testing.assert_array_equal(movie[5:17], frames[5:17])
            np.testing.assert_array_equal(movie[3], frames[3])
            np.testing.assert_array_equal(movie[::7, 2:5, 1], frames[::7, 2:5, 1])
            np.testing.assert_array_equal(movie[[30, 2, 9]], frames[[30, 2, 9]])


def test_bigtiff_and_imagej_frame_rate(tmp_path: Path, frames: np.ndarray) -> None:
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, frames, bigtiff=True)
    np.testing.assert_array_equal(open_movie(big)[:], frames)
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, frames, imagej=True, metadata={"axes": "TYX", "finterval": 1 / 15})
    movie = open_movie(ij)
    assert movie.frame_rate == pytest.approx(15)
    np.testing.assert_array_equal(movie[:], frames)


def test_folder_and_list_of_tiffs_concatenate_in_natural_order(tmp_path: Path, frames: np.ndarray) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    parts = [frames[:10], frames[10:11], frames[11:]]
    for name, part in zip(["file_2.tif", "file_10.tif", "file_11.tif"], parts):
        tifffile.imwrite(folder / name, part)
    movie = open_movie(folder)
    assert movie.shape == frames.shape
    np.testing.assert_array_equal(movie[:], frames)
    np.testing.assert_array_equal(movie[8:13], frames[8:13])  # read across file borders
    listed = open_movie([folder / "file_2.tif", folder / "file_10.tif"])
    assert listed.shape[0] == 11


def test_hdf5_time_last_needs_explicit_axes(tmp_path: Path) -> None:
    frames = np.random.default_rng(2).integers(0, 100, size=(200, 16, 12), dtype=np.uint16)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["imaging"] = np.moveaxis(frames, 0, -1)  # (16, 12, 200): time last
        f["imaging"].attrs["fr"] = 12.5
    with pytest.raises(MovieError, match="axes="):
        open_movie(path)
    movie = open_movie(path, axes="yxt")
    assert movie.shape == (200, 16, 12) and movie.frame_rate == 12.5
    np.testing.assert_array_equal(movie[4:9], frames[4:9])


def test_hdf5_dataset_choice(tmp_path: Path, frames: np.ndarray) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a/mov"] = frames
        f["b"] = frames[:5]
        f["mean"] = frames.mean(0)
    with pytest.raises(MovieError, match="dataset="):
        open_movie(path)
    with pytest.raises(MovieError, match="no dataset 'c'"):
        open_movie(path, dataset="c")
    assert open_movie(path, dataset="a/mov").shape == frames.shape


def test_zarr_npy_raw(tmp_path: Path, frames: np.ndarray) -> None:
    import zarr

    z = zarr.open_array(str(tmp_path / "m.zarr"), mode="w", shape=frames.shape, dtype=frames.dtype, chunks=(8, 24, 20))
    z[:] = frames
    np.testing.assert_array_equal(open_movie(tmp_path / "m.zarr")[10:20], frames[10:20])
    np.save(tmp_path / "m.npy", frames)
    np.testing.assert_array_equal(open_movie(tmp_path / "m.npy")[1:3], frames[1:3])
    frames.astype(">u2").tofile(tmp_path / "m.raw")
    with pytest.raises(MovieError, match="shape="):
        open_movie(tmp_path / "m.raw")
    raw = open_movie(tmp_path / "m.raw", shape=frames.shape, dtype=">u2")
    got = raw[2:4]
    assert got.dtype == np.uint16 and got.dtype.isnative
    np.testing.assert_array_equal(got, frames[2:4])


def test_interleaved_channels_and_planes(tmp_path: Path) -> None:
    n_t, n_z, n_c = 6, 3, 2
    stored = np.zeros((n_t * n_z * n_c, 8, 8), np.uint16)
    for t in range(n_t):
        for z in range(n_z):
            for c in range(n_c):
                stored[(t * n_z + z) * n_c + c] = 100 * t + 10 * z + c
    path = tmp_path / "si.tif"
    tifffile.imwrite(path, stored)
    with pytest.raises(MovieError, match="channel="):
        open_movie(path, n_channels=2, n_planes=3)
    vol = open_movie(path, n_channels=2, channel=1, n_planes=3, frame_rate=30)
    assert vol.shape == (n_t, n_z, 8, 8)
    assert vol.frame_rate == pytest.approx(30)  # an explicit rate is the volume rate
    assert vol[4][:, 0, 0].tolist() == [401, 411, 421]
    one = open_movie(path, n_channels=2, channel=0, n_planes=3, plane=2)
    assert one.shape == (n_t, 8, 8)
    assert one[:, 0, 0].tolist() == [100 * t + 20 for t in range(n_t)]


def test_channel_axis_in_array(tmp_path: Path) -> None:
    data = np.arange(5 * 2 * 6 * 7 * 2, dtype=np.float32).reshape(5, 2, 6, 7, 2)
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["imaging"] = data
    with pytest.raises(MovieError, match="channel="):
        open_movie(path, axes="tzyxc")
    movie = open_movie(path, axes="tzyxc", channel=1)
    np.testing.assert_array_equal(movie[:], data[..., 1])


def test_imagej_hyperstack_channels_require_choice(tmp_path: Path) -> None:
    data = np.zeros((4, 2, 8, 9), np.uint16)  # T C Y X
    data[:, 1] = 7
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(MovieError, match="channel="):
        open_movie(path)
    movie = open_movie(path, channel=1)
    assert movie.shape == (4, 8, 9) and int(movie[2].max()) == 7


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("missing.tif", None, "no such file"),
        ("notes.txt", lambda p: p.write_text("x"), "unsupported file type"),
        ("image.tif", lambda p: tifffile.imwrite(p, np.zeros((16, 16), np.uint16)), "single 2-D image"),
        ("image.npy", lambda p: np.save(p, np.zeros((16, 16))), "single 2-D image"),
        ("empty.npy", lambda p: np.save(p, np.zeros((0, 16, 16))), "no complete frame"),
        ("rgb.tif", lambda p: tifffile.imwrite(p, np.zeros((3, 16, 16, 3), np.uint8), photometric="rgb"), "RGB"),
        ("broken.h5", lambda p: p.write_bytes(b"not hdf5"), "not a readable HDF5"),
    ],
)
def test_bad_input_errors_name_the_file(tmp_path: Path, name: str, make, match: str) -> None:
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(MovieError, match=match) as info:
        open_movie(path)
    assert name in str(info.value)


def test_nan_and_inf_are_reported(tmp_path: Path) -> None:
    data = np.ones((30, 6, 6), np.float32)
    data[12, 2, 2] = np.nan
    data[25, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", data)
    movie = open_movie(tmp_path / "bad.npy")
    report = movie.count_nonfinite(chunk_frames=7)
    assert report == {"nan": 1, "inf": 1, "frames": [12, 25]}
    with pytest.raises(MovieError, match="1 NaN and 1 Inf"):
        movie.check_finite()


def test_iter_chunks_covers_every_frame_once(frames: np.ndarray) -> None:
    got = list(iter_chunks(frames, 10, start=3))
    assert [t0 for t0, _ in got] == [3, 13, 23, 33]
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), frames[3:].astype(np.float32))
    assert got[0][1].dtype == np.float32
    got[0][1][:] = -1  # chunks are copies: the source is never modified
    assert frames.min() >= 0


def test_read_ahead_keeps_order_reads_one_range_ahead_and_raises_where_it_failed() -> None:
    import threading

    from somascope.io.chunks import frame_ranges, read_ahead

    ranges = frame_ranges(25, 10)
    assert ranges == [(0, 10), (10, 20), (20, 25)]
    log, threads = [], set()

    def read(t0: int, t1: int) -> list[int]:
        log.append(t0)
        threads.add(threading.current_thread().name)
        return list(range(t0, t1))

    got = []
    for t0, t1, values in read_ahead(read, ranges):
        assert len(log) <= len(got) + 2  # the range yielded and at most the next one
        got.append((t0, t1, values))
    assert [(a, b) for a, b, _ in got] == ranges and got[1][2] == list(range(10, 20))
    assert all(name.startswith("read-ahead") for name in threads)  # not the caller's thread

    def fail_at_ten(t0: int, t1: int) -> int:
        if t0 == 10:
            raise OSError("disk error at 10")
        return t0

    seen = []
    with pytest.raises(OSError, match="at 10"):
        for t0, _, _ in read_ahead(fail_at_ten, ranges):
            seen.append(t0)
    assert seen == [0]


def test_movie_pickles_as_paths(tmp_path: Path, frames: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "m.tif", frames)
    movie = open_movie(tmp_path / "m.tif")
    movie[0:2]  # open the handle first
    blob = pickle.dumps(movie)
    assert len(blob) < 10_000
    np.testing.assert_array_equal(pickle.loads(blob)[7], frames[7])


def _rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize("fmt", ["bigtiff", "npy"])
def test_multi_gigabyte_file_is_read_lazily(tmp_path: Path, fmt: str) -> None:
    shape = (2000, 1024, 1024)  # 4 GiB of uint16, written sparsely
    path = tmp_path / ("big.tif" if fmt == "bigtiff" else "big.npy")
    if fmt == "bigtiff":
        mm = tifffile.memmap(path, shape=shape, dtype=np.uint16, bigtiff=True)
    else:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    mm[1500] = 9
    mm.flush()
    del mm
    before = _rss()
    movie = open_movie(path)
    assert movie.shape == shape and movie.nbytes == 2000 * 1024 * 1024 * 2
    assert int(movie[1500].max()) == 9 and int(movie[10:20].max()) == 0
    assert _rss() - before < 200 * 2**20


@pytest.mark.skipif(not SHARED.exists(), reason="shared real data not available")
def test_real_files_from_shared_data() -> None:
    sima = SHARED / "sima_example"
    tif = open_movie(sima / "example.tif")
    h5 = open_movie(sima / "example.h5", axes="yxt")
    assert tif.shape == h5.shape == (20, 128, 256)
    np.testing.assert_array_equal(tif[3:6], h5[3:6])
    vol = open_movie(sima / "example-volume.h5", axes="tzyxc", channel=0)
    assert vol.shape == (10, 3, 64, 64)
    assert open_movie(sima / "example-tiffs").shape == (3, 173, 173)
    allen = SHARED / "allen_ophys_etl_tiny"
    be = open_movie(allen / "dewarping_regression_test_input.h5")
    with h5py.File(allen / "dewarping_regression_test_input.h5", "r") as f:
        ref = f[next(iter(f.keys()))][2]
    assert be[2].dtype.isnative
    np.testing.assert_array_equal(be[2], ref)
    signed = open_movie(allen / "792757260_test_data.h5", dataset="input_frames")
    assert signed.dtype == np.int16 and signed.shape == (100, 100, 100)


def test_imagej_tzyx_hyperstack_is_a_volume_at_its_time_point_rate(tmp_path: Path) -> None:
    """An ImageJ TZYX hyperstack (what `somascope simulate --kind volume` writes, and what Fiji
    exports): T volumes of Z planes; its finterval is the time between volumes, not planes."""
    from somascope.cli import main

    vol = np.arange(20 * 3 * 8 * 10, dtype=np.float32).reshape(20, 3, 8, 10)
    tifffile.imwrite(tmp_path / "vol.tif", vol, imagej=True, metadata={"axes": "TZYX", "finterval": 1 / 15})
    movie = open_movie(tmp_path / "vol.tif")
    assert movie.shape == (20, 3, 8, 10)
    assert movie.frame_rate == pytest.approx(15.0)
    np.testing.assert_array_equal(movie[5:7], vol[5:7])
    assert main(["simulate", str(tmp_path / "sim"), "--kind", "volume", "--dims", "3", "32", "32", "--frames", "40",
                 "--fr", "10", "-q"]) == 0
    sim = open_movie(tmp_path / "sim" / "movie.tif")
    assert sim.shape == (40, 3, 32, 32) and sim.frame_rate == pytest.approx(10.0)
