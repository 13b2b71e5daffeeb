"""Summary images computed by engine tasks over ranges of frames equal the serial scan."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from somascope import summary
from somascope.parallel import Engine
from somascope.store import Store
from somascope.summary import summary_images

from test_summary import blob_movie

#: float32 rounding of sums formed in another order (ranges, sub-blocks, merges)
ATOL = 2e-6


class PicklingEngine:
    """A parallel-looking engine that runs tasks here, one by one, after sending each item and
    result through pickle (as Dask would): merging logic and transport, without a cluster."""

    kind = "local"

    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self.calls: list[tuple[str, list[tuple[int, int]]]] = []

    def map(self, fn: Any, items: Any, *, desc: str | None = None, progress: bool = True, unit: str = "task") -> list[Any]:
        items = [pickle.loads(pickle.dumps(item)) for item in items]
        self.calls.append((fn.__name__, [(int(i[2]), int(i[3])) for i in items]))
        return [pickle.loads(pickle.dumps(fn(item))) for item in items]


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    return blob_movie(90, (20, 17), seed=6, n_cells=5)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, movie: np.ndarray) -> Store:
    """The movie in a store with 8-frame time chunks (so that it splits into many ranges)."""
    return Store.from_source(movie, tmp_path_factory.mktemp("s") / "movie.zarr", chunks=(8, 20, 17))


def assert_same_images(a: summary.SummaryImages, b: summary.SummaryImages) -> None:
    assert a.images().keys() == b.images().keys() and a.n_frames == b.n_frames
    for name, image in a.images().items():
        other = b.images()[name]
        assert other.dtype == np.float32 and other.shape == image.shape
        scale = max(1.0, float(np.abs(image).max()))
        np.testing.assert_allclose(other, image, rtol=0, atol=ATOL * scale, err_msg=name)


@pytest.mark.parametrize(
    "n_workers, kwargs",
    [
        (2, {"max_corr_frames": 20, "gSig": 1.5}),  # 4 blocks; the cut at 48 splits a block
        (3, {"max_corr_frames": 30, "gSig": (1.0, 2.0), "neighbours": 4}),  # cuts near block bounds
        (5, {"max_corr_frames": 40, "gSig": 2.0}),  # blocks of 45 frames span three ranges
        (4, {"max_corr_frames": 20, "chunk_frames": 16}),  # chunks smaller than a range; no 1p
        (2, {}),
    ],
)
def test_ranges_equal_the_serial_scan(store: Store, n_workers: int, kwargs: dict[str, Any]) -> None:
    serial = summary_images(store, **kwargs)
    engine = PicklingEngine(n_workers)
    parallel = summary_images(store, engine=engine, **kwargs)
    assert_same_images(serial, parallel)
    names = [name for name, _ in engine.calls]
    assert names == (["_pass1_task", "_pass2_task"] if "gSig" in kwargs else ["_pass1_task"])
    ranges = engine.calls[0][1]
    assert len(ranges) == n_workers and ranges[0][0] == 0 and ranges[-1][1] == 90
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(n == ranges for _, n in engine.calls)  # pass 2 reads the same ranges


def test_range_cuts_follow_time_chunks_and_block_bounds(store: Store) -> None:
    def cuts(n_frames: int, n_workers: int, block_frames: int | None) -> list[int]:
        plan = summary._Plan(
            n_frames=n_frames, frame_shape=(20, 17), chunk_frames=16, offsets=(), main_offsets=(), gSig=None,
            bounds=None if block_frames is None else tuple(summary._block_bounds(n_frames, block_frames)),
        )
        ranges = summary._frame_ranges(store, plan, PicklingEngine(n_workers))  # reads store.time_chunk (8)
        assert ranges[0][0] == 0 and ranges[-1][1] == n_frames
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        return [t0 for t0, _ in ranges[1:]]

    assert cuts(90, 2, None) == [48]  # 45 → the nearest multiple of the time chunk
    assert cuts(900, 3, 300) == [300, 600]  # 304 → block bound 300: within a time chunk and 1/16 range
    assert cuts(900, 3, 200) == [304, 600]  # bounds 225, 450, 675 are too far: balanced ranges
    assert cuts(90, 3, 30) == [32, 64]  # 30 is 2 away, more than 1/16 of a range (1.9)
    many = cuts(90, 20, None)  # more workers than time chunks: at most one range per chunk
    assert len(many) <= 11 and all(c % 8 == 0 for c in many) and len(set(many)) == len(many)
    plan = summary._Plan(90, (20, 17), 16, (), (), None, None)
    assert summary._frame_ranges(store, plan, Engine("serial")) == [(0, 90)]
    assert summary._frame_ranges(store, plan, None) == [(0, 90)]


def test_without_a_parallel_engine_or_a_store_the_driver_reads(store: Store, movie: np.ndarray) -> None:
    serial = summary_images(store, max_corr_frames=20, gSig=1.5)
    engine = PicklingEngine(2)
    in_memory = summary_images(movie, max_corr_frames=20, gSig=1.5, engine=engine)  # ndarray: no tasks
    assert engine.calls == []
    for name, image in serial.images().items():
        np.testing.assert_array_equal(in_memory.images()[name], image)
    with Engine("serial") as serial_engine:
        again = summary_images(store, max_corr_frames=20, gSig=1.5, engine=serial_engine)
    for name, image in serial.images().items():
        np.testing.assert_array_equal(again.images()[name], image)


def test_nan_in_a_range_names_its_frames(tmp_path: Path, movie: np.ndarray) -> None:
    bad = movie.copy()
    bad[70, 3, 3] = np.inf
    store = Store.from_source(bad, tmp_path / "bad.zarr", chunks=(8, 20, 17))
    with pytest.raises(ValueError, match=r"frames 64\.\.79 contain NaN"):
        summary_images(store, engine=PicklingEngine(2), chunk_frames=16)


def test_moments_centred_apart_merge_exactly(movie: np.ndarray) -> None:
    offsets = summary.neighbour_offsets(2, 8)
    whole = summary._Moments((20, 17), offsets)
    whole.add(movie - movie[:10].mean(0))
    first = summary._Moments((20, 17), offsets)
    first.add(movie[:40] - movie[:10].mean(0))
    second = summary._Moments((20, 17), offsets)
    second.add(movie[40:] - movie[40:50].mean(0))
    second.shift_by(movie[40:50].mean(0).astype(np.float64) - movie[:10].mean(0))
    first.merge(second)
    for a, b in zip([whole.s1, whole.s2, *whole.cross], [first.s1, first.s2, *first.cross]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(first.correlation(), whole.correlation(), atol=1e-6)


def test_local_engine_equals_serial(store: Store) -> None:
    serial = summary_images(store, max_corr_frames=20, gSig=1.5)
    with Engine("local", n_workers=2) as engine:
        parallel = summary_images(store, max_corr_frames=20, gSig=1.5, engine=engine)
    assert_same_images(serial, parallel)
