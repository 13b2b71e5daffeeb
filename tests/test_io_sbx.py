"""Scanbox ``.sbx`` reader: files written byte by byte from the format (uint16, inverted,
(lines, pixels, channels) per frame, frames in a row) with their ``info`` .mat beside them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from somascope.io import MovieError, open_movie

H, W = 12, 10


def write_sbx(folder: Path, frames: np.ndarray, *, name: str = "mouse_000_001", bidirectional: bool = False,
              resfreq: float = 7930.0, new_channels: bool = True, channels_code: int | None = None,
              **fields: Any) -> Path:
    """Write ``frames`` (T, H, W, C) uint16 intensities as ``<name>.sbx`` + ``<name>.mat``, the
    way Scanbox stores them: 65535 − value, C order (T, lines, pixels, channels), no header."""
    t, h, w, c = frames.shape
    sbx = folder / f"{name}.sbx"
    (np.uint16(65535) - frames.astype(np.uint16)).astype("<u2").tofile(sbx)
    info: dict[str, Any] = {
        "sz": np.array([h, w], dtype=np.uint16),
        "scanmode": 0 if bidirectional else 1,
        "resfreq": resfreq,
        # Scanbox stores half the line count here in bidirectional mode (sbxread.m doubles it)
        "recordsPerBuffer": h // 2 if bidirectional else h,
        "scanbox_version": 3 if new_channels else 2,
        "config": {"magnification": 2, "magnification_list": np.array([1.0, 1.2, 1.7]), "lines": h,
                   "frames": t, "coord_rel": np.zeros(4)},
    }
    if new_channels:
        info["chan"] = {"nchan": c}
    else:
        info["channels"] = channels_code if channels_code is not None else (1 if c == 2 else 2)
    info.update(fields)
    scipy.io.savemat(folder / f"{name}.mat", {"info": info})
    return sbx


def _frames(t: int, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, size=(t, H, W, c), dtype=np.uint16)


def test_one_channel_values_rate_slices_and_pickle(tmp_path: Path) -> None:
    frames = _frames(23)
    path = write_sbx(tmp_path, frames, resfreq=7930.0)
    movie = open_movie(path)  # chosen from the .sbx suffix alone
    assert movie.shape == (23, H, W) and movie.dtype == np.uint16
    assert movie.metadata["format"] == "Scanbox .sbx"
    assert movie.frame_rate == pytest.approx(7930.0 / H)  # one line per mirror period
    ref = frames[..., 0]
    np.testing.assert_array_equal(movie[:], ref)
    np.testing.assert_array_equal(open_movie(path.with_suffix(".mat"))[:], ref)  # the info file names it too
    np.testing.assert_array_equal(movie[7], ref[7])
    np.testing.assert_array_equal(movie[3:11], ref[3:11])
    np.testing.assert_array_equal(movie[[20, 1, 9, 10]], ref[[20, 1, 9, 10]])
    np.testing.assert_array_equal(movie[::5, 2:4, 7], ref[::5, 2:4, 7])
    details = movie.metadata["details"]
    assert details["scan_mode"] == "unidirectional" and details["channels"] == "1 PMT"
    assert details["magnification"] == 2 and "pixel_size_um" not in movie.metadata
    movie[0:2]  # the memory map is open; pickling drops it
    blob = pickle.dumps(movie)
    assert len(blob) < 10_000
    np.testing.assert_array_equal(pickle.loads(blob)[22], ref[22])


def test_two_channels_need_a_choice_and_bidirectional_rate_doubles(tmp_path: Path) -> None:
    frames = _frames(9, c=2, seed=1)
    path = write_sbx(tmp_path, frames, bidirectional=True, resfreq=8000.0)
    with pytest.raises(MovieError, match=r"2 channels.*channel="):
        open_movie(path)
    for ch in (0, 1):
        movie = open_movie(path, channel=ch)
        np.testing.assert_array_equal(movie[:], frames[..., ch])
        np.testing.assert_array_equal(movie[[0, 4, 8]], frames[[0, 4, 8], :, :, ch])
        assert movie.frame_rate == pytest.approx(2 * 8000.0 / H)  # two lines per mirror period
        assert movie.metadata["details"]["scan_mode"] == "bidirectional"
    with pytest.raises(MovieError, match="out of range"):
        open_movie(path, channel=2)


@pytest.mark.parametrize(("code", "n", "pmts"), [(1, 2, "PMT0+PMT1"), (2, 1, "PMT0"), (3, 1, "PMT1")])
def test_old_channels_convention(tmp_path: Path, code: int, n: int, pmts: str) -> None:
    frames = _frames(5, c=n, seed=code)
    path = write_sbx(tmp_path, frames, new_channels=False, channels_code=code)
    movie = open_movie(path, channel=n - 1)
    np.testing.assert_array_equal(movie[:], frames[..., n - 1])
    assert movie.metadata["details"]["channels"] == pmts


def test_optotune_planes_are_deinterleaved(tmp_path: Path) -> None:
    frames = _frames(13, seed=2)  # 6 volumes of 2 planes + 1 frame of an incomplete volume
    path = write_sbx(tmp_path, frames, volscan=1, otparam=np.array([10.0, 90.0, 2.0]))
    movie = open_movie(path)
    assert movie.shape == (6, 2, H, W) and movie.dropped_frames == 1
    assert movie.frame_rate == pytest.approx(7930.0 / H / 2)  # volumes per second
    np.testing.assert_array_equal(movie[:, 0], frames[0:12:2, ..., 0])
    np.testing.assert_array_equal(movie[2:4, 1], frames[[5, 7], ..., 0])
    one = open_movie(path, plane=1)
    np.testing.assert_array_equal(one[:], frames[1:12:2, ..., 0])
    assert movie.metadata["details"]["planes_from"] == "info.otparam[2]"
    # volscan = 0: a plain movie whatever otparam still holds
    (tmp_path / "flat").mkdir()
    flat = write_sbx(tmp_path / "flat", frames, volscan=0, otparam=np.array([10.0, 90.0, 2.0]))
    assert open_movie(flat).shape == (13, H, W)


def test_folded_lines_become_sub_frames(tmp_path: Path) -> None:
    frames = _frames(4, seed=3)
    path = write_sbx(tmp_path, frames, fold_lines=4)  # 12 lines = 3 sub-frames of 4 lines
    movie = open_movie(path)
    assert movie.shape == (12, 4, W)
    np.testing.assert_array_equal(movie[:], frames[..., 0].reshape(12, 4, W))
    assert movie.frame_rate == pytest.approx(7930.0 / 4)


def test_oldest_files_without_sz_are_512_by_796(tmp_path: Path) -> None:
    frames = np.random.default_rng(6).integers(0, 65536, size=(2, 512, 796, 1), dtype=np.uint16)
    path = write_sbx(tmp_path, frames, new_channels=False)
    info = scipy.io.loadmat(path.with_suffix(".mat"), squeeze_me=True)["info"]
    fields = {name: info[name].item() for name in info.dtype.names if name not in ("sz", "config")}
    scipy.io.savemat(path.with_suffix(".mat"), {"info": fields})
    movie = open_movie(path)
    assert movie.shape == (2, 512, 796) and "512×796 assumed" in movie.metadata["details"]["frame_size"]
    np.testing.assert_array_equal(movie[1], frames[1, ..., 0])


def test_agrees_with_sbxreader(tmp_path: Path) -> None:
    sbxreader = pytest.importorskip("sbxreader")
    frames = _frames(6, c=2, seed=4)
    path = write_sbx(tmp_path, frames, bidirectional=True, volscan=0)
    ref = sbxreader.sbx_memmap(str(path))  # (frames, planes, channels, H, W)
    for ch in (0, 1):
        movie = open_movie(path, channel=ch)
        np.testing.assert_array_equal(movie[:], np.array(ref[:, 0, ch]))
        assert movie.frame_rate == pytest.approx(ref.metadata["frame_rate"])


def test_truncated_sbx_drops_the_incomplete_frame_and_says_so(tmp_path: Path) -> None:
    frames = _frames(8, seed=5)
    path = write_sbx(tmp_path, frames)
    with open(path, "ab") as f:
        f.write(b"\x00" * (H * W))  # half a frame: the recording was cut off
    movie = open_movie(path)
    assert movie.shape == (8, H, W)
    np.testing.assert_array_equal(movie[:], frames[..., 0])
    assert "incomplete frame" in movie.metadata["details"]["incomplete_tail"]
    path.write_bytes(path.read_bytes()[: H * W])  # less than one frame
    with pytest.raises(MovieError, match="less than one"):
        open_movie(path)


def test_missing_or_bad_info_file_names_the_fix(tmp_path: Path) -> None:
    path = write_sbx(tmp_path, _frames(3))
    mat = path.with_suffix(".mat")
    mat.rename(tmp_path / "elsewhere.mat")
    with pytest.raises(MovieError, match=r"mouse_000_001\.mat is missing.*copy it next to the \.sbx"):
        open_movie(path)
    mat.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(MovieError, match="not a readable MATLAB"):
        open_movie(path)
    scipy.io.savemat(mat, {"something": np.zeros(3)})
    with pytest.raises(MovieError, match="no Scanbox 'info' struct"):
        open_movie(path)
    scipy.io.savemat(mat, {"info": {"sz": np.array([7.0, np.nan]), "channels": 2}})
    with pytest.raises(MovieError, match=r"info.sz=.*is not \[lines, pixels\]"):
        open_movie(path)
    scipy.io.savemat(mat, {"info": {"sz": np.array([H, W]), "channels": 7}})
    with pytest.raises(MovieError, match="cannot tell how many channels"):
        open_movie(path)


def test_pipeline_runs_end_to_end_on_an_sbx_recording(tmp_path: Path) -> None:
    from somascope import simulate
    from somascope.pipeline import run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, seed=1)
    mov = np.asarray(sim.movie, dtype=np.float64)
    scaled = np.clip((mov - mov.min()) / (mov.max() - mov.min()) * 4000 + 100, 0, 65535).astype(np.uint16)
    path = write_sbx(tmp_path, scaled[..., None], resfreq=30.0 * 64)  # 64 lines at 30 frames/s
    result = run(path, tmp_path / "out", radius=5.0, engine="serial", progress=False)
    assert result.results_path.is_file()
    assert result.estimates.accepted_indices.size >= 4
    from somascope.pipeline import load_results

    assert load_results(result.results_path).params["data"]["fr"] == pytest.approx(30.0)
