"""Bad input movies: each is refused early (at open or preflight, before any stage runs) with one
line ``somascope: error: … Fix: …`` and exit code 2, or read correctly where the table of
docs/reliability.md says it is handled; the input is never modified."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile

from somascope.cli import main
from somascope.cnmf.fit import MIN_FRAMES
from somascope.io import MovieError, open_movie

T, H, W = 120, 48, 48


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from somascope import simulate

    sim = simulate.two_photon(dims=(H, W), n_frames=T, n_cells=5, neuron_radius=4, seed=1, progress=False)
    return np.clip(np.asarray(sim.movie) * 50, 0, 65000).astype(np.uint16)


def _snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of a file, or of every file under a folder (nothing for a missing path)."""
    if path.is_symlink() and not path.exists():
        return {"": (os.readlink(path).encode(), 0)}
    if path.is_file():
        return {"": (path.read_bytes(), path.stat().st_mtime_ns)}
    if path.is_dir():
        return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
                for p in sorted(path.rglob("*"))}
    return {}


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("somascope: error:"), err
    for needle in needles:
        assert needle.lower() in err[0].lower(), (needle, err[0])
    return err[0]


def _refused_by_run(inp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *needles: str,
                    extra: tuple[str, ...] = (), fix: bool = True) -> str:
    """``somascope run INPUT`` exits 2 with one line naming the problem, writes nothing to --out
    and leaves the input byte-identical."""
    before = _snapshot(inp)
    out = tmp_path / "out"
    line = _one_line_error(["run", str(inp), "--out", str(out), "--fr", "10", "--radius", "4", "-q", *extra],
                           capsys, *needles)
    if fix:
        assert "Fix:" in line
    assert not out.exists()  # refused before the output folder was made
    assert _snapshot(inp) == before
    return line


# -- damaged files ---------------------------------------------------------------------------------
def _tif(frames: np.ndarray, path: Path, **kw: Any) -> bytes:
    tifffile.imwrite(path, frames, **kw)
    return path.read_bytes()


def make_truncated_tiff(frames: np.ndarray, d: Path) -> Path:
    data = _tif(frames, d / "full.tif")
    (d / "movie.tif").write_bytes(data[:50_000])  # a 100-frame-ish uint16 movie cut after 50 kB
    return d / "movie.tif"


def make_truncated_imagej_tiff(frames: np.ndarray, d: Path) -> Path:
    data = _tif(frames, d / "full.tif", imagej=True, metadata={"axes": "TYX"})
    (d / "movie.tif").write_bytes(data[:50_000])
    return d / "movie.tif"


def make_truncated_compressed_tiff(frames: np.ndarray, d: Path) -> Path:
    data = _tif(frames, d / "full.tif", compression="zlib")
    (d / "movie.tif").write_bytes(data[: len(data) // 2])
    return d / "movie.tif"


def make_garbage_tiff(frames: np.ndarray, d: Path) -> Path:
    (d / "movie.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    return d / "movie.tif"


def make_empty_tiff(frames: np.ndarray, d: Path) -> Path:
    (d / "movie.tif").write_bytes(b"")
    return d / "movie.tif"


def make_truncated_hdf5(frames: np.ndarray, d: Path) -> Path:
    with h5py.File(d / "full.h5", "w") as f:
        f.create_dataset("mov", data=frames, chunks=(10, H, W))
    data = (d / "full.h5").read_bytes()
    (d / "movie.h5").write_bytes(data[: len(data) // 2])
    return d / "movie.h5"


def make_garbage_hdf5(frames: np.ndarray, d: Path) -> Path:
    (d / "movie.h5").write_bytes(np.random.default_rng(1).bytes(4000))
    return d / "movie.h5"


def make_truncated_npy(frames: np.ndarray, d: Path) -> Path:
    np.save(d / "full.npy", frames)
    data = (d / "full.npy").read_bytes()
    (d / "movie.npy").write_bytes(data[: len(data) // 2])
    return d / "movie.npy"


def _zarr(frames: np.ndarray, path: Path) -> Path:
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=frames.shape, dtype=frames.dtype, chunks=(10, H, W))
    z[:] = frames
    return path


def _chunk_files(store: Path) -> list[Path]:
    return sorted((p for p in store.rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr."))),
                  key=lambda p: [int(s) if s.isdigit() else -1 for s in p.relative_to(store).parts])


def make_zarr_bad_metadata(frames: np.ndarray, d: Path) -> Path:
    store = _zarr(frames, d / "movie.zarr")
    meta = store / "zarr.json" if (store / "zarr.json").exists() else store / ".zarray"
    meta.write_text("{not json")
    return store


def make_zarr_last_chunk_truncated(frames: np.ndarray, d: Path) -> Path:
    store = _zarr(frames, d / "movie.zarr")
    last = _chunk_files(store)[-1]
    last.write_bytes(last.read_bytes()[:50])
    return store


def make_mixed_shapes_folder(frames: np.ndarray, d: Path) -> Path:
    (d / "movie").mkdir()
    tifffile.imwrite(d / "movie" / "part_1.tif", frames[:60])
    tifffile.imwrite(d / "movie" / "part_2.tif", frames[60:, :40, :40])
    return d / "movie"


def make_empty_folder(frames: np.ndarray, d: Path) -> Path:
    (d / "movie").mkdir()
    return d / "movie"


def make_folder_without_movies(frames: np.ndarray, d: Path) -> Path:
    (d / "movie").mkdir()
    (d / "movie" / "notes.txt").write_text("session notes")
    (d / "movie" / "stim.csv").write_text("t,stim\n0,1\n")
    return d / "movie"


def make_folder_named_like_a_tiff(frames: np.ndarray, d: Path) -> Path:
    (d / "movie.tif").mkdir()
    return d / "movie.tif"


def make_folder_named_like_an_hdf5(frames: np.ndarray, d: Path) -> Path:
    (d / "movie.h5").mkdir()
    (d / "movie.h5" / "readme.txt").write_text("x")
    return d / "movie.h5"


def make_missing_path(frames: np.ndarray, d: Path) -> Path:
    return d / "no_such_movie.tif"


def make_broken_symlink(frames: np.ndarray, d: Path) -> Path:
    (d / "movie.tif").symlink_to(d / "moved_away.tif")
    return d / "movie.tif"


def make_nan_last_frame(frames: np.ndarray, d: Path) -> Path:
    data = frames.astype(np.float32)
    data[-1, 3, 4] = np.nan
    np.save(d / "movie.npy", data)
    return d / "movie.npy"


def make_inf_first_frame(frames: np.ndarray, d: Path) -> Path:
    data = frames.astype(np.float32)
    data[0, 0, 0] = np.inf
    tifffile.imwrite(d / "movie.tif", data)
    return d / "movie.tif"


def make_constant_movie(frames: np.ndarray, d: Path) -> Path:
    tifffile.imwrite(d / "movie.tif", np.full(frames.shape, 100, np.uint16))
    return d / "movie.tif"


def make_one_frame_tiff(frames: np.ndarray, d: Path) -> Path:
    tifffile.imwrite(d / "movie.tif", frames[:1])
    return d / "movie.tif"


def make_one_frame_npy(frames: np.ndarray, d: Path) -> Path:
    np.save(d / "movie.npy", frames[:1])
    return d / "movie.npy"


def make_five_frames(frames: np.ndarray, d: Path) -> Path:
    tifffile.imwrite(d / "movie.tif", frames[:5])
    return d / "movie.tif"


def make_frame_smaller_than_a_neuron(frames: np.ndarray, d: Path) -> Path:
    tifffile.imwrite(d / "movie.tif", frames[:, :6, :6])
    return d / "movie.tif"


def make_complex(frames: np.ndarray, d: Path) -> Path:
    np.save(d / "movie.npy", frames.astype(np.complex64))
    return d / "movie.npy"


def make_text_array(frames: np.ndarray, d: Path) -> Path:
    np.save(d / "movie.npy", np.full((T, 8, 8), "a"))
    return d / "movie.npy"


def make_tiff_of_mixed_page_shapes(frames: np.ndarray, d: Path) -> Path:
    with tifffile.TiffWriter(d / "movie.tif") as tif:
        for frame in frames[:T // 2]:
            tif.write(frame)
        for frame in frames[T // 2:]:
            tif.write(frame[:40, :40])
    return d / "movie.tif"


def make_rgb_tiff(frames: np.ndarray, d: Path) -> Path:
    tifffile.imwrite(d / "movie.tif", np.stack([frames // 256] * 3, -1).astype(np.uint8), photometric="rgb")
    return d / "movie.tif"


BAD_INPUTS: list[tuple[str, Callable[[np.ndarray, Path], Path], tuple[str, ...], tuple[str, ...]]] = [
    # (id, make, needles in the one line, extra CLI args)
    ("truncated_tiff", make_truncated_tiff, ("movie.tif", "truncated"), ()),
    ("truncated_imagej_tiff", make_truncated_imagej_tiff, ("movie.tif", "truncated"), ()),
    ("truncated_compressed_tiff", make_truncated_compressed_tiff, ("movie.tif", "truncated", "frame 60"), ()),
    ("garbage_tiff", make_garbage_tiff, ("movie.tif", "not a readable TIFF"), ()),
    ("empty_file", make_empty_tiff, ("movie.tif", "empty (0 bytes)"), ()),
    ("truncated_hdf5", make_truncated_hdf5, ("movie.h5", "truncated"), ()),
    ("garbage_hdf5", make_garbage_hdf5, ("movie.h5", "not a readable HDF5"), ()),
    ("truncated_npy", make_truncated_npy, ("movie.npy", "truncated"), ()),
    ("zarr_bad_metadata", make_zarr_bad_metadata, ("movie.zarr", "not a readable Zarr", "metadata"), ()),
    ("zarr_last_chunk_truncated", make_zarr_last_chunk_truncated,
     ("movie.zarr", f"frame {T - 1}", "truncated or corrupt"), ()),
    ("mixed_frame_shapes", make_mixed_shapes_folder, ("part_2.tif", "(40, 40)", "(48, 48)", "equal frame shapes"), ()),
    ("mixed_page_shapes_in_one_tiff", make_tiff_of_mixed_page_shapes,
     ("movie.tif", "pages of different shapes", f"{T // 2} of 48×48", f"{T - T // 2} of 40×40"), ()),
    ("empty_folder", make_empty_folder, ("movie", "empty folder"), ()),
    ("folder_without_movies", make_folder_without_movies, ("holding no TIFF files", "notes.txt"), ()),
    ("folder_named_movie_tif", make_folder_named_like_a_tiff, ("movie.tif", "is a folder, not a .tif file"), ()),
    ("folder_named_movie_h5", make_folder_named_like_an_hdf5, ("movie.h5", "is a folder, not a .h5 file"), ()),
    ("missing_path", make_missing_path, ("no_such_movie.tif", "no such file"), ()),
    ("broken_symlink", make_broken_symlink, ("movie.tif", "broken symbolic link", "moved_away.tif"), ()),
    ("nan_in_last_frame", make_nan_last_frame, ("movie.npy", f"frame {T - 1}", "1 NaN"), ()),
    ("inf_in_first_frame", make_inf_first_frame, ("movie.tif", "frame 0", "1 Inf"), ()),
    ("constant_movie", make_constant_movie, ("movie.tif", "blank", "single value 100"), ()),
    ("one_frame_tiff", make_one_frame_tiff, ("movie.tif", f"at least {MIN_FRAMES} frames"), ()),
    ("one_frame_npy", make_one_frame_npy, ("movie.npy", "1 frames", f"at least {MIN_FRAMES} frames"), ()),
    ("five_frames", make_five_frames, ("movie.tif", "5 frames", f"at least {MIN_FRAMES} frames"), ()),
    ("frame_smaller_than_a_neuron", make_frame_smaller_than_a_neuron,
     ("movie.tif", "larger than the frame (6, 6)", "--radius"), ()),
    ("complex_dtype", make_complex, ("movie.npy", "complex"), ()),
    ("text_dtype", make_text_array, ("movie.npy", "not numbers"), ()),
    ("rgb_tiff", make_rgb_tiff, ("movie.tif", "RGB", "--channel 0..2"), ()),
]


@pytest.mark.parametrize(("make", "needles", "extra"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_before_any_stage(make: Callable[[np.ndarray, Path], Path], needles: tuple[str, ...],
                                               extra: tuple[str, ...], frames: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    inp = make(frames, tmp_path)
    _refused_by_run(inp, tmp_path, capsys, *needles, extra=extra)


def test_truncated_tiff_is_refused_by_info_too(frames: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    inp = make_truncated_tiff(frames, tmp_path)
    before = _snapshot(inp)
    _one_line_error(["info", str(inp), "-q"], capsys, "truncated", "Fix:")
    assert _snapshot(inp) == before


def test_truncated_compressed_tiff_is_found_by_info_check(frames: np.ndarray, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A compressed TIFF's frames cannot be located without walking its pages: plain ``info``
    shows the header's frame count, ``info --check`` (which reads every frame) and ``run`` refuse it."""
    inp = make_truncated_compressed_tiff(frames, tmp_path)
    assert main(["info", str(inp), "-q"]) == 0
    capsys.readouterr()
    _one_line_error(["info", str(inp), "--check", "-q"], capsys, "movie.tif", "truncated", "Fix:")


def test_zarr_chunk_truncated_in_the_middle_is_refused_when_read(frames: np.ndarray, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Only the first, middle and last frames are read before a run: damage elsewhere is found
    when the frames are read (``info --check`` reads them all), with the same kind of one line."""
    store = _zarr(frames, tmp_path / "movie.zarr")
    chunk = _chunk_files(store)[2]  # frames 20-29
    chunk.write_bytes(chunk.read_bytes()[:50])
    before = _snapshot(store)
    _one_line_error(["info", str(store), "--check", "-q"], capsys, "movie.zarr", "frame 20", "truncated or corrupt",
                    "Fix:")
    assert _snapshot(store) == before


def test_zarr_missing_chunk_reads_as_fill_value_with_a_warning(frames: np.ndarray, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Zarr stores an all-empty chunk by leaving its file out, so an absent chunk is not an error:
    it reads as the fill value, and opening the store warns how many are absent."""
    store = _zarr(frames, tmp_path / "movie.zarr")
    _chunk_files(store)[5].unlink()  # frames 50-59
    before = _snapshot(store)
    with caplog.at_level("WARNING", logger="somascope.io"):
        assert main(["info", str(store), "-q"]) == 0
    assert "1 of its 12 chunk files are absent" in caplog.text and "fill value 0" in caplog.text
    movie = open_movie(store)
    assert not movie[50:60].any() and np.array_equal(movie[60:70], frames[60:70])
    assert _snapshot(store) == before


def test_nan_in_a_middle_frame_is_refused_by_motion_correction(frames: np.ndarray, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Preflight reads three frames, not the whole movie: NaN elsewhere are refused by motion
    correction, which checks every frame it reads (one line, exit 2)."""
    data = frames.astype(np.float32)
    data[30, 5, 5] = np.nan
    np.save(tmp_path / "movie.npy", data)
    before = _snapshot(tmp_path / "movie.npy")
    _one_line_error(["run", str(tmp_path / "movie.npy"), "--out", str(tmp_path / "out"), "--fr", "10", "--radius",
                     "4", "-q", "--scheduler", "serial"], capsys, "frames [30]", "NaN")
    assert _snapshot(tmp_path / "movie.npy") == before
    assert not (tmp_path / "out" / "results.h5").exists()


# -- permissions -----------------------------------------------------------------------------------
def test_unreadable_file_is_refused(frames: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 does not stop root (CI): simulate it by making every open of the file fail."""
    inp = tmp_path / "movie.tif"
    tifffile.imwrite(inp, frames)
    before = _snapshot(inp)
    real_open = builtins.open

    def no_read(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and Path(file) == inp:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", no_read)
        _one_line_error(["run", str(inp), "--out", str(tmp_path / "out"), "--fr", "10", "--radius", "4", "-q"],
                        capsys, "movie.tif", "permission denied", "Fix:", "chmod")
        _one_line_error(["info", str(inp), "-q"], capsys, "permission denied")
    assert _snapshot(inp) == before and not (tmp_path / "out").exists()


def test_unreadable_folder_is_refused(frames: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "movie"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", frames)
    before = _snapshot(folder)
    real_listdir, real_scandir = os.listdir, os.scandir

    def guard(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any = ".") -> Any:
            if Path(path) == folder:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        return call

    with monkeypatch.context() as m:
        m.setattr(os, "listdir", guard(real_listdir))
        m.setattr(os, "scandir", guard(real_scandir))
        _one_line_error(["info", str(folder), "-q"], capsys, "movie", "permission denied", "Fix:")
    assert _snapshot(folder) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_with_real_permissions(frames: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "movie.tif"
    tifffile.imwrite(inp, frames)
    inp.chmod(0)
    try:
        _one_line_error(["info", str(inp), "-q"], capsys, "movie.tif", "permission denied", "Fix:")
    finally:
        inp.chmod(0o644)


# -- data types, byte order, axes, raw layout ----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int64", "float64", "int16", "uint32", "float16"])
def test_numeric_dtypes_are_read_exactly(dtype: str, frames: np.ndarray, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = (frames.astype(np.int64) - 300).astype(dtype) if dtype.startswith("int") else frames.astype(dtype)
    np.save(tmp_path / "movie.npy", data)
    assert main(["info", str(tmp_path / "movie.npy"), "--json", "-q"]) == 0
    assert f'"dtype": "{dtype}"' in capsys.readouterr().out
    movie = open_movie(tmp_path / "movie.npy")
    assert movie.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(movie[:], data)


def test_bool_movie_is_read_as_zero_and_one(frames: np.ndarray, tmp_path: Path) -> None:
    """A boolean movie is a valid (if unusual) intensity movie: frames of 0 and 1."""
    data = frames > np.median(frames)
    tifffile.imwrite(tmp_path / "movie.tif", data)
    np.save(tmp_path / "movie.npy", data)
    for name in ("movie.tif", "movie.npy"):
        movie = open_movie(tmp_path / name)
        assert movie.shape == data.shape
        np.testing.assert_array_equal(np.asarray(movie[:], np.float32), data.astype(np.float32))


def test_int64_movie_runs_end_to_end(frames: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     _quick_report: None) -> None:
    inp = tmp_path / "movie.npy"
    np.save(inp, frames.astype(np.int64))
    before = _snapshot(inp)
    assert main(["run", str(inp), "--out", str(tmp_path / "out"), "--fr", "10", "--radius", "4", "-q",
                 "--scheduler", "serial"]) == 0
    assert "components" in capsys.readouterr().out
    assert (tmp_path / "out" / "results.h5").exists() and _snapshot(inp) == before


def test_rgb_tiff_channel_option_keeps_one_colour(frames: np.ndarray, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rgb = np.stack([frames // 256, frames // 512, frames // 1024], -1).astype(np.uint8)
    for planar, name in (("contig", "rgb.tif"), ("separate", "planar.tif")):
        tifffile.imwrite(tmp_path / name, rgb if planar == "contig" else np.moveaxis(rgb, -1, 1),
                         photometric="rgb", planarconfig=planar)
        for c in range(3):
            movie = open_movie(tmp_path / name, channel=c)
            assert movie.shape == (T, H, W)
            np.testing.assert_array_equal(movie[10:20], rgb[10:20, ..., c])
    assert main(["info", str(tmp_path / "rgb.tif"), "--channel", "1", "-q"]) == 0
    capsys.readouterr()
    _one_line_error(["info", str(tmp_path / "rgb.tif"), "--channel", "3", "-q"], capsys, "out of range",
                    "--channel 0..2")


def test_big_endian_raw_and_tiff_are_read_correctly(frames: np.ndarray, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    frames.astype(">u2").tofile(tmp_path / "movie.raw")
    tifffile.imwrite(tmp_path / "movie.tif", frames, byteorder=">")
    raw = open_movie(tmp_path / "movie.raw", shape=frames.shape, dtype=">u2")
    tif = open_movie(tmp_path / "movie.tif")
    for movie in (raw, tif):
        got = movie[:]
        assert got.dtype == np.uint16 and got.dtype.isnative
        np.testing.assert_array_equal(got, frames)
    assert main(["info", str(tmp_path / "movie.raw"), "--shape", str(T), str(H), str(W), "--dtype", ">u2",
                 "--json", "-q"]) == 0
    assert f'"shape": [\n    {T},' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("stored", "axes", "needles"),
    [
        ((T, 4, H, W), "xyt", ("names 3 axes but the data has 4", "Fix:")),
        ((T, H, W), "tzyx", ("names 4 axes but the data has 3", "Fix:")),
        ((T, H, W), "tyy", ("not an axis order", "Fix:")),
        ((T, H, W), "abc", ("not an axis order",)),
        ((H, W, 5 * W), None, ("cannot tell which axis is time", "--axes")),
    ],
)
def test_wrong_axes_are_refused(stored: tuple[int, ...], axes: str | None, needles: tuple[str, ...],
                                frames: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with h5py.File(tmp_path / "movie.h5", "w") as f:
        f["mov"] = np.random.default_rng(3).integers(0, 1000, stored, dtype=np.uint16)
    extra = ("--axes", axes) if axes else ()
    _refused_by_run(tmp_path / "movie.h5", tmp_path, capsys, "movie.h5", *needles, extra=extra)


def test_axes_on_a_tiff_is_refused(frames: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(tmp_path / "movie.tif", frames)
    _refused_by_run(tmp_path / "movie.tif", tmp_path, capsys, "axes= is for arrays", "drop --axes",
                    extra=("--axes", "tyx"))


@pytest.mark.parametrize(
    ("shape", "dtype", "needles"),
    [
        ((100, H, W), "uint16", ("holds", "needs", f"--shape {T} {H} {W}")),
        ((T + 10, H, W), "uint16", ("holds", "needs", f"--shape {T} {H} {W}")),
        ((T, H, W - 1), "uint16", ("no whole number of such frames",)),
        ((T, H, W), "float32", ("holds", "needs")),
        ((0, H, W), "uint16", ("positive sizes",)),
        ((T, H, W), "nonsense", ("not a data type",)),
        (None, None, ("no header", "--shape")),
    ],
)
def test_raw_layout_that_does_not_match_the_file_is_refused(shape: tuple[int, ...] | None, dtype: str | None,
                                                            needles: tuple[str, ...], frames: np.ndarray,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames.tofile(tmp_path / "movie.raw")
    extra: tuple[str, ...] = ()
    if shape is not None:
        extra += ("--shape", *map(str, shape))
    if dtype is not None:
        extra += ("--dtype", dtype)
    _refused_by_run(tmp_path / "movie.raw", tmp_path, capsys, "movie.raw", *needles, extra=extra)


def test_raw_layout_options_on_a_tiff_are_refused(frames: np.ndarray, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(tmp_path / "movie.tif", frames)
    _refused_by_run(tmp_path / "movie.tif", tmp_path, capsys, "describe raw binary files", "drop --shape",
                    extra=("--shape", str(T), str(H), str(W)))


def test_imagej_stack_saved_without_axes_is_read_as_frames(frames: np.ndarray, tmp_path: Path) -> None:
    """tifffile.imwrite(path, movie, imagej=True) without axes metadata labels the frames as
    'channels'; more than a handful of channels and no frames are frames."""
    tifffile.imwrite(tmp_path / "movie.tif", frames, imagej=True)
    movie = open_movie(tmp_path / "movie.tif")
    assert movie.shape == (T, H, W)
    np.testing.assert_array_equal(movie[T - 3:], frames[T - 3:])


def test_open_movie_raises_movie_error_for_library_users(frames: np.ndarray, tmp_path: Path) -> None:
    inp = make_truncated_tiff(frames, tmp_path)
    with pytest.raises(MovieError, match="truncated: .*|truncated or corrupt"):
        open_movie(inp)


def test_tiff_written_one_frame_at_a_time_is_one_movie(frames: np.ndarray, tmp_path: Path) -> None:
    """tifffile's writer called once per frame (a common acquisition-script pattern) stores a
    "shaped" series per page: the pages are the frames, not 120 one-frame movies."""
    with tifffile.TiffWriter(tmp_path / "movie.tif") as tif:
        for frame in frames:
            tif.write(frame)
    movie = open_movie(tmp_path / "movie.tif")
    assert movie.shape == (T, H, W)
    np.testing.assert_array_equal(movie[:], frames)
