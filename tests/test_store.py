"""Out-of-core store: reads equal writes, parallel writers, atomic completion."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from somascope.io import open_movie
from somascope.parallel import Engine
from somascope.store import Store, StoreError, default_chunks


@pytest.fixture()
def movie() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(150, 70, 90)).astype(np.float32)


def test_default_chunks_are_bricks() -> None:
    assert default_chunks((3000, 512, 512)) == (128, 64, 64)
    assert default_chunks((300, 30, 30)) == (300, 30, 30)
    assert default_chunks((100, 5, 200, 200)) == (25, 5, 64, 64)  # 2 MiB bricks


def test_reads_equal_writes_frames_and_patches(tmp_path: Path, movie: np.ndarray) -> None:
    store = Store.create(tmp_path / "s.zarr", movie.shape, chunks=(32, 32, 32), frame_rate=20.0)
    for t0 in range(0, 150, 32):
        store.write(t0, movie[t0 : t0 + 32])
    store = store.finalize()
    assert store.complete and store.frame_rate == 20.0 and store.shape == movie.shape
    np.testing.assert_array_equal(store[:], movie)
    np.testing.assert_array_equal(store[17:61], movie[17:61])
    np.testing.assert_array_equal(store.read_patch(slice(10, 50), slice(33, 90)), movie[:, 10:50, 33:90])
    np.testing.assert_array_equal(store.read_patch(slice(0, 8), slice(0, 8), slice(5, 9)), movie[5:9, :8, :8])
    # a store is itself a frame source that open_movie-free stages can read
    assert store[3].shape == (70, 90)


def test_volume_store(tmp_path: Path) -> None:
    vol = np.random.default_rng(4).random((20, 3, 16, 18)).astype(np.float32)
    store = Store.from_source(vol, tmp_path / "v.zarr")
    np.testing.assert_array_equal(store[:], vol)
    np.testing.assert_array_equal(store.read_patch(slice(2, 9), slice(4, 12)), vol[:, :, 2:9, 4:12])


def test_parallel_writers_from_two_processes(tmp_path: Path, movie: np.ndarray) -> None:
    np.save(tmp_path / "m.npy", (movie * 100).astype(np.int16))
    source = open_movie(tmp_path / "m.npy", frame_rate=7.5)
    with Engine("local", n_workers=2) as engine:
        store = Store.from_source(source, tmp_path / "s.zarr", engine=engine, chunks=(16, 35, 45))
    assert store.frame_rate == 7.5
    np.testing.assert_array_equal(store[:], (movie * 100).astype(np.int16).astype(np.float32))


def test_unfinished_store_never_looks_complete(tmp_path: Path, movie: np.ndarray) -> None:
    path = tmp_path / "s.zarr"
    store = Store.create(path, movie.shape)
    store.write(0, movie[:128])
    assert not path.exists()
    with pytest.raises(StoreError, match="interrupted"):
        Store.open(path)
    worker_view = Store.open(store.path, mode="r+")  # how a worker reopens it
    worker_view.write(128, movie[128:])
    np.testing.assert_array_equal(store.finalize()[:], movie)


def test_failed_copy_leaves_previous_store_untouched(tmp_path: Path, movie: np.ndarray) -> None:
    path = tmp_path / "s.zarr"
    Store.from_source(movie, path)

    class Broken:
        shape = movie.shape

        def __getitem__(self, key: object) -> np.ndarray:
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        Store.from_source(Broken(), path, overwrite=True)
    np.testing.assert_array_equal(Store.open(path)[:], movie)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_overwrite_replaces_only_when_complete(tmp_path: Path, movie: np.ndarray) -> None:
    path = tmp_path / "s.zarr"
    Store.from_source(movie, path)
    with pytest.raises(StoreError, match="already exists"):
        Store.create(path, movie.shape)
    new = Store.from_source(movie[:40] * 2, path, overwrite=True)
    np.testing.assert_array_equal(new[:], movie[:40] * 2)


def test_bad_shapes_and_foreign_arrays(tmp_path: Path) -> None:
    import zarr

    with pytest.raises(StoreError, match="T×H×W"):
        Store.create(tmp_path / "a.zarr", (10, 10))
    store = Store.create(tmp_path / "b.zarr", (10, 8, 8))
    with pytest.raises(StoreError, match="do not fit"):
        store.write(0, np.zeros((2, 8, 9)))
    with pytest.raises(StoreError, match="outside"):
        store.write(9, np.zeros((2, 8, 8)))
    zarr.open_array(str(tmp_path / "c.zarr"), mode="w", shape=(4, 4, 4), dtype="f4")
    with pytest.raises(StoreError, match="not a somascope store"):
        Store.open(tmp_path / "c.zarr")


def test_store_pickles_as_path(tmp_path: Path, movie: np.ndarray) -> None:
    store = Store.from_source(movie, tmp_path / "s.zarr")
    blob = pickle.dumps(store)
    assert len(blob) < 2000
    np.testing.assert_array_equal(pickle.loads(blob)[100], movie[100])


def test_direct_brick_reads_equal_zarr_reads(tmp_path: Path) -> None:
    """Reads straight from the brick files give what Zarr gives, for every kind of key,
    bricks cut at the edges, and bricks never written (the fill value 0)."""
    rng = np.random.default_rng(5)
    shape = (150, 70, 90)
    data = rng.standard_normal(shape).astype(np.float32)
    store = Store.create(tmp_path / "d.zarr", shape, chunks=(40, 32, 32))
    store.write(0, data[:120])  # frames 120.. are never written
    store = store.finalize()
    assert store._direct  # the layout Store.create writes
    data[120:] = 0.0
    keys = [np.s_[:], np.s_[7], np.s_[-1], np.s_[3:91, 5:69, 31:90], np.s_[39:41], np.s_[..., 64],
            np.s_[100:150, 33], np.s_[:, 0:1, 89], np.s_[10:10], np.s_[2, ...], np.s_[-3:, -5:, :-7]]
    for key in keys:
        got = store[key]
        np.testing.assert_array_equal(got, data[key])
        np.testing.assert_array_equal(got, np.asarray(store._array[key]))
    # fancy keys fall back to Zarr
    np.testing.assert_array_equal(store[::2, 3, 4], data[::2, 3, 4])
