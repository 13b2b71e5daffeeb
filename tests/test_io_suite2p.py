"""suite2p binaries: ``suite2p/plane<k>/data.bin`` (int16, Ly × Lx frames, C order) with the
``ops.npy`` (or ``db.npy`` + ``settings.npy``) beside it, written here as suite2p writes them."""

from __future__ import annotations

import datetime
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope.io import MovieError, open_movie
from somascope.io.suite2p import suite2p_files

LY, LX, T = 14, 11, 25


def write_plane(folder: Path, frames: np.ndarray, *, name: str = "data.bin", fs: float = 30.0,
                layout: str = "ops", **extra: Any) -> Path:
    """Write ``frames`` (T, Ly, Lx) as suite2p does: raw little-endian int16, no header, and the
    pickled metadata dict beside it (``ops.npy``; ``layout='db'``: suite2p ≥ 1.0's db + settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames.astype("<i2").tofile(folder / name)
    t, ly, lx = frames.shape
    ops: dict[str, Any] = {
        "Ly": ly, "Lx": np.int64(lx), "nframes": t, "nplanes": 1, "nchannels": 1, "functional_chan": 1,
        "align_by_chan": 1, "reg_file": str(folder / "data.bin"), "save_path": str(folder),
        "date_proc": datetime.datetime(2024, 5, 1, 12, 0), "meanImg": frames.mean(0).astype(np.float32),
        "xrange": np.array([1, lx - 1]), "yrange": np.array([2, ly - 2]), "suite2p_version": "0.14.4",
        "fs": np.float64(fs),
    }
    ops.update(extra)
    if layout == "ops":
        np.save(folder / "ops.npy", ops, allow_pickle=True)
    else:
        fs_value = ops.pop("fs")
        np.save(folder / "db.npy", ops, allow_pickle=True)
        np.save(folder / "settings.npy", {"fs": fs_value, "registration": {"nonrigid": True}}, allow_pickle=True)
    return folder / name


def _frames(t: int = T, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2000, 30000, size=(t, LY, LX), dtype=np.int16)


def test_file_plane_folder_and_suite2p_folder_open_the_same_movie(tmp_path: Path) -> None:
    frames = _frames()
    root = tmp_path / "suite2p"
    path = write_plane(root / "plane0", frames, fs=15.5)
    for source in (path, root / "plane0", root, root / "plane0" / "ops.npy"):
        assert suite2p_files(source) == [path]
        movie = open_movie(source)
        assert movie.paths == [path]
        assert movie.shape == (T, LY, LX) and movie.dtype == np.int16
        assert movie.frame_rate == pytest.approx(15.5)
        np.testing.assert_array_equal(movie[:], frames)
    assert movie.metadata["format"] == "suite2p binary"
    np.testing.assert_array_equal(movie[4], frames[4])
    np.testing.assert_array_equal(movie[10:19], frames[10:19])
    np.testing.assert_array_equal(movie[[24, 0, 13]], frames[[24, 0, 13]])
    np.testing.assert_array_equal(movie[::6, 3:7, 2], frames[::6, 3:7, 2])
    details = movie.metadata["details"]
    assert details["registered"] is True and details["nframes"] == T and details["valid_xrange"] == [1, LX - 1]
    assert "pixel_size_um" not in movie.metadata
    movie[0:2]
    blob = pickle.dumps(movie)
    assert len(blob) < 10_000
    np.testing.assert_array_equal(pickle.loads(blob)[20], frames[20])


def test_raw_binary_second_channel_and_db_layout(tmp_path: Path) -> None:
    frames, red = _frames(seed=1), _frames(seed=2)
    plane = tmp_path / "plane0"
    raw = write_plane(plane, frames, name="data_raw.bin", nchannels=2)
    red.astype("<i2").tofile(plane / "data_chan2_raw.bin")
    assert suite2p_files(plane) == [raw]  # no data.bin: the raw movie
    movie = open_movie(plane)
    assert movie.metadata["details"]["registered"] is False
    np.testing.assert_array_equal(movie[:], frames)
    np.testing.assert_array_equal(open_movie(plane, channel=1)[:], red)
    with pytest.raises(MovieError, match="channel=2 not available"):
        open_movie(plane, channel=2)
    newer = write_plane(tmp_path / "new" / "plane0", frames, layout="db", fs=7.5)
    movie = open_movie(newer.parent)
    assert movie.frame_rate == pytest.approx(7.5) and movie.metadata["details"]["metadata_file"] == "db.npy"
    np.testing.assert_array_equal(movie[3:5], frames[3:5])


def test_size_mismatches_are_refused(tmp_path: Path) -> None:
    frames = _frames(seed=3)
    path = write_plane(tmp_path / "a" / "plane0", frames, nframes=T + 5)
    with pytest.raises(MovieError, match=rf"holds {T} frames but ops.npy says nframes={T + 5}"):
        open_movie(path)
    path = write_plane(tmp_path / "b" / "plane0", frames)
    with open(path, "ab") as f:
        f.write(b"\x01\x00\x02")
    with pytest.raises(MovieError, match="not a whole number of 14×11 int16 frames"):
        open_movie(path)
    path = write_plane(tmp_path / "c" / "plane0", frames, Ly=None)
    with pytest.raises(MovieError, match="has no frame size"):
        open_movie(path)
    bad = tmp_path / "d" / "plane0"
    write_plane(bad, frames)
    (bad / "ops.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(MovieError, match="not a readable suite2p metadata file"):
        open_movie(bad)


def test_several_planes_or_no_binaries_ask_for_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "suite2p"
    write_plane(root / "plane0", _frames(seed=4))
    second = write_plane(root / "plane1", _frames(seed=5))
    with pytest.raises(MovieError, match=r"2 planes \(plane0, plane1\); open one plane folder"):
        open_movie(root)
    np.testing.assert_array_equal(open_movie(root / "plane1")[:], _frames(seed=5))
    assert open_movie(second).shape == (T, LY, LX)
    gone = tmp_path / "deleted" / "suite2p"
    write_plane(gone / "plane0", _frames(), reg_file="/fast/disk/suite2p/plane0/data.bin")
    (gone / "plane0" / "data.bin").unlink()
    with pytest.raises(MovieError, match="without data.bin.*/fast/disk/suite2p/plane0/data.bin"):
        open_movie(gone)


def test_bin_without_suite2p_metadata_stays_with_the_raw_reader(tmp_path: Path) -> None:
    frames = _frames(seed=6)
    lone = tmp_path / "lone"
    lone.mkdir()
    frames.astype("<i2").tofile(lone / "data.bin")
    assert suite2p_files(lone / "data.bin") is None and suite2p_files(lone) is None
    with pytest.raises(MovieError, match="raw binary files carry no header"):
        open_movie(lone / "data.bin")
    movie = open_movie(lone / "data.bin", shape=(T, LY, LX), dtype=np.int16)
    assert movie.metadata["format"] == "raw binary"
    np.testing.assert_array_equal(movie[:], frames)
    # another .bin beside an ops.npy is not suite2p's either
    plane = tmp_path / "plane0"
    write_plane(plane, frames)
    frames.astype("<i2").tofile(plane / "movie.bin")
    assert suite2p_files(plane / "movie.bin") is None
    assert open_movie(plane / "movie.bin", shape=(T, LY, LX), dtype=np.int16).metadata["format"] == "raw binary"
    # paths of other formats are not claimed
    (tmp_path / "tiffs").mkdir()
    tifffile.imwrite(tmp_path / "tiffs" / "m.tif", frames)
    assert suite2p_files(tmp_path / "tiffs" / "m.tif") is None and suite2p_files(tmp_path / "tiffs") is None
    assert open_movie(tmp_path / "tiffs").metadata["format"] == "TIFF"


class _RunsCode:
    """A pickled object whose unpickling would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_metadata_is_unpickled_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    frames = _frames(seed=7)
    plane = tmp_path / "plane0"
    write_plane(plane, frames, evil=_RunsCode(marker))
    movie = open_movie(plane)
    np.testing.assert_array_equal(movie[:], frames)
    assert movie.metadata["details"]["suite2p_version"] == "0.14.4"
    assert not marker.exists()


def test_pipeline_runs_end_to_end_on_a_suite2p_binary(tmp_path: Path) -> None:
    from somascope import simulate
    from somascope.pipeline import load_results, run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, seed=1)
    mov = np.asarray(sim.movie, dtype=np.float64)
    scaled = np.round((mov - mov.min()) / (mov.max() - mov.min()) * 4000 - 500).astype(np.int16)
    write_plane(tmp_path / "suite2p" / "plane0", scaled, fs=30.0)
    result = run(tmp_path / "suite2p", tmp_path / "out", radius=5.0, engine="serial", progress=False)
    assert result.results_path.is_file()
    assert result.estimates.accepted_indices.size >= 4
    assert load_results(result.results_path).params["data"]["fr"] == pytest.approx(30.0)
