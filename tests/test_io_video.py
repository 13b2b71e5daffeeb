"""Video files and Miniscope folders (``somascope.io.video``): frames written with PyAV in
rawvideo, FFV1, MJPEG and H.264 read back exactly (or within the codec's loss), seeking decodes
only what it must, Miniscope V4 and DAQ folders give their files in natural order and the
recording's frame rate, damaged files are refused with one line, and a Miniscope folder runs
through the pipeline."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from somascope.io import MovieError, open_movie
from somascope.io.video import VideoSegment, miniscope_metadata, video_files

av = pytest.importorskip("av")


# ----------------------------------------------------------------------------- helpers
def write_video(path: Path, frames: np.ndarray, codec: str = "rawvideo", pix_fmt: str = "gray",
                rate: float = 30, gop: int | None = None, options: dict[str, str] | None = None) -> Path:
    """Write ``frames`` (T×H×W grey, or T×H×W×3 RGB) with PyAV; returns ``path``."""
    in_format = {np.dtype(np.uint16): "gray16le"}.get(frames.dtype, "rgb24" if frames.ndim == 4 else "gray")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=in_format)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def noise(n: int, shape: tuple[int, int] = (24, 32), seed: int = 0, dtype: Any = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, (n, *shape), dtype=dtype)


def smooth(n: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Frames a lossy codec keeps well: a broad gradient and a blob that moves, distinct per frame."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    out = np.empty((n, *shape), np.uint8)
    for k in range(n):
        blob = 80 * np.exp(-((yy - shape[0] / 2) ** 2 + (xx - 5 - k % shape[1]) ** 2) / 40)
        out[k] = np.clip(40 + 1.5 * k % 100 + xx + blob, 0, 255)
    return out


def count_decoded(seg: VideoSegment) -> list[int]:
    """Patch ``seg`` to count the frames its decoder hands out; returns the counter."""
    calls = [0]
    original = seg._next_frame

    def counting() -> Any:
        frame, index = original()
        calls[0] += frame is not None
        return frame, index

    seg._next_frame = counting  # type: ignore[method-assign]
    return calls


# ----------------------------------------------------------------------------- single files
def test_rawvideo_avi_reads_the_frames_written_and_the_rate(tmp_path: Path) -> None:
    frames = noise(40)
    path = write_video(tmp_path / "movie.avi", frames, rate=25)
    movie = open_movie(path)
    assert isinstance(movie._segments[0], VideoSegment)  # picked from the extension alone
    assert movie.shape == (40, 24, 32) and movie.dtype == np.uint8
    assert movie.frame_rate == pytest.approx(25.0)
    assert movie.metadata["format"] == "AVI video (rawvideo)"
    assert movie.metadata["details"]["codec"] == "rawvideo" and movie.metadata["details"]["pixel_format"] == "gray"
    np.testing.assert_array_equal(movie[7], frames[7])
    np.testing.assert_array_equal(movie[5:15], frames[5:15])
    np.testing.assert_array_equal(movie[[30, 3, 17, 39]], frames[[30, 3, 17, 39]])
    np.testing.assert_array_equal(movie[::7], frames[::7])
    np.testing.assert_array_equal(np.asarray(movie), frames)
    clone = pickle.loads(pickle.dumps(movie))
    assert clone._segments[0]._container is None  # handles are not pickled
    np.testing.assert_array_equal(clone[[0, 21, 38]], frames[[0, 21, 38]])
    movie.close()


@pytest.mark.parametrize("gop", [1, 12])
def test_ffv1_is_lossless_and_a_seek_decodes_from_the_key_frame_only(tmp_path: Path, gop: int) -> None:
    frames = noise(60, seed=gop)
    path = write_video(tmp_path / "ffv1.avi", frames, codec="ffv1", gop=gop)
    seg = VideoSegment(path)
    assert (seg.n_raw, seg.frame_shape, seg.dtype) == (60, (24, 32), np.uint8)
    decoded = count_decoded(seg)
    np.testing.assert_array_equal(seg.read(np.array([50])), frames[[50]])
    assert decoded[0] == (1 if gop == 1 else 50 - 48 + 1)  # key frames at 0, 12, …, 48
    decoded[0] = 0
    np.testing.assert_array_equal(seg.read(np.array([51, 52, 53])), frames[51:54])
    assert decoded[0] == 3  # the next frames are decoded on, without seeking again
    np.testing.assert_array_equal(seg.read(np.array([2, 13, 14, 40, 59])), frames[[2, 13, 14, 40, 59]])
    np.testing.assert_array_equal(seg.read(np.arange(60)), frames)
    seg.close()


def test_ffv1_16_bit_grey_keeps_its_values(tmp_path: Path) -> None:
    frames = noise(12, seed=3, dtype=np.uint16)
    path = write_video(tmp_path / "deep.avi", frames, codec="ffv1", pix_fmt="gray16le", gop=1)
    movie = open_movie(path)
    assert movie.dtype == np.uint16 and movie.metadata["details"]["pixel_format"] == "gray16le"
    np.testing.assert_array_equal(movie[[0, 5, 11]], frames[[0, 5, 11]])


def test_mjpeg_reads_within_the_codecs_loss(tmp_path: Path) -> None:
    frames = smooth(30)
    path = write_video(tmp_path / "mjpeg.avi", frames, codec="mjpeg", pix_fmt="yuvj420p",
                       options={"qmin": "1", "qmax": "2"})
    movie = open_movie(path)
    assert movie.shape == (30, 48, 64) and movie.dtype == np.uint8
    assert movie.metadata["details"]["read_as"] == "luminance"
    for got, want in ((movie[[3, 29, 11]], frames[[3, 29, 11]]), (movie[10:20], frames[10:20])):
        err = np.abs(got.astype(int) - want.astype(int))
        assert err.mean() < 1.5 and err.max() <= 12, (err.mean(), err.max())


def test_colour_video_gives_luminance_or_the_channel_asked_for(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (6, 16, 24, 3), dtype=np.uint8)
    path = write_video(tmp_path / "colour.avi", rgb, pix_fmt="bgr24")
    lum = open_movie(path)[:].astype(float)
    want = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(lum - want).max() <= 1.5
    for c in range(3):
        np.testing.assert_array_equal(open_movie(path, channel=c)[[1, 4]], rgb[[1, 4], ..., c])
    with pytest.raises(MovieError, match="channel=3"):
        open_movie(path, channel=3)
    grey = write_video(tmp_path / "grey.avi", noise(3))
    with pytest.raises(MovieError, match="grey video"):
        open_movie(grey, channel=1)


def test_h264_long_gop_reads_any_frame(tmp_path: Path) -> None:
    try:
        av.codec.Codec("libx264", "w")
    except Exception:
        pytest.skip("PyAV here cannot encode H.264 (libx264)")
    frames = smooth(60)
    for name in ("movie.mp4", "movie.mkv"):  # MP4: timestamps start + k·step; MKV: rounded to ms
        path = write_video(tmp_path / name, frames, codec="libx264", pix_fmt="yuv420p", gop=25,
                           options={"crf": "10", "preset": "veryfast"})
        movie = open_movie(path)
        assert movie.shape == (60, 48, 64) and movie.frame_rate == pytest.approx(30.0)
        order = [59, 5, 30, 31, 24, 25, 0]
        err = np.abs(movie[order].astype(int) - frames[order].astype(int))
        assert err.mean() < 1.5 and err.max() <= 16, (name, err.mean(), err.max())


def test_matroska_ffv1_is_indexed_by_its_timestamps(tmp_path: Path) -> None:
    frames = noise(40, seed=5)
    path = write_video(tmp_path / "movie.mkv", frames, codec="ffv1", gop=8)
    seg = VideoSegment(path)
    assert seg.n_raw == 40 and seg._pts is not None  # ms timestamps: 0, 33, 67, …
    np.testing.assert_array_equal(seg.read(np.array([1, 2, 17, 39])), frames[[1, 2, 17, 39]])
    np.testing.assert_array_equal(seg.read(np.array([0])), frames[[0]])


# ----------------------------------------------------------------------------- bad input
def test_truncated_and_fake_videos_are_refused_in_one_line(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.avi", noise(40))
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MovieError, match="truncated") as info:
        open_movie(cut)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)
    text = tmp_path / "notes.avi"
    text.write_text("frame rate 30 Hz, mouse 12\n" * 50)
    with pytest.raises(MovieError, match="not a readable video"):
        open_movie(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MovieError, match="empty.mp4"):
        open_movie(empty)
    assert whole.read_bytes() == data  # inputs are never modified


def test_missing_pyav_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_video(tmp_path / "movie.avi", noise(3))
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MovieError, match=r"somascope\[video\]"):
        open_movie(path)


# ----------------------------------------------------------------------------- Miniscope folders
def v4_session(root: Path, n_files: int = 11, per_file: int = 3, frame_rate: Any = "20FPS",
               timestamps: np.ndarray | None = None) -> tuple[Path, np.ndarray]:
    """A Miniscope V4 session: ``My_V4_Miniscope/0.avi … {n_files-1}.avi`` (FFV1, header rate
    60 Hz), its metaData.json and timeStamps.csv, a webcam folder beside it; frame k holds k."""
    scope = root / "My_V4_Miniscope"
    cam = root / "My_WebCam"
    scope.mkdir(parents=True)
    cam.mkdir()
    frames = (np.arange(n_files * per_file, dtype=np.uint8)[:, None, None] * 5 + noise(n_files * per_file, (16, 20)) % 3)
    for i in range(n_files):
        write_video(scope / f"{i}.avi", frames[i * per_file:(i + 1) * per_file], codec="ffv1", rate=60)
    meta: dict[str, Any] = {"deviceType": "Miniscope_V4_BNO", "deviceName": "My V4 Miniscope", "gain": "Low",
                            "compression": "FFV1", "ROI": {"height": 16, "width": 20}}
    if frame_rate is not None:
        meta["frameRate"] = frame_rate
    (scope / "metaData.json").write_text(json.dumps(meta))
    if timestamps is not None:
        rows = "\n".join(f"{i},{t:.0f},0" for i, t in enumerate(timestamps))
        (scope / "timeStamps.csv").write_text("Frame Number,Time Stamp (ms),Buffer Index\n" + rows + "\n")
    write_video(cam / "0.avi", noise(4, (10, 12)))
    (cam / "metaData.json").write_text(json.dumps({"deviceType": "WebCam-320x240", "frameRate": "30FPS"}))
    (root / "metaData.json").write_text(json.dumps({"researcherName": "x", "miniscopes": ["My V4 Miniscope"]}))
    return scope, frames


def gapped_times(n: int, interval: float, missing: list[int]) -> np.ndarray:
    """Frame times (ms) of ``n`` recorded frames at ``interval`` with the frames at positions
    ``missing`` of the full sequence dropped."""
    full = interval * np.arange(n + len(missing))
    return np.delete(full, missing)


def test_miniscope_v4_folder_in_natural_order_with_the_recordings_rate(tmp_path: Path) -> None:
    times = gapped_times(33, 50.0, [10, 20])  # 20 Hz, two frames dropped
    scope, frames = v4_session(tmp_path / "session", timestamps=times)
    files = video_files(scope)
    assert [p.name for p in files] == [f"{i}.avi" for i in range(11)]  # 2.avi before 10.avi
    movie = open_movie(scope)
    assert movie.shape == (33, 16, 20) and movie.paths == files
    np.testing.assert_array_equal(movie[:], frames)
    np.testing.assert_array_equal(movie[[2, 3, 30, 31, 32]], frames[[2, 3, 30, 31, 32]])  # across files
    assert movie.frame_rate == pytest.approx(20.0)  # metaData.json, not the videos' 60 Hz
    details = movie.metadata["details"]
    assert movie.metadata["format"] == "Miniscope V4 (AVI ffv1)"
    assert details["frame_rate_source"] == "metaData.json frameRate" and details["video_frame_rate"] == 60
    assert details["timestamps_frame_rate"] == pytest.approx(20.0) and details["dropped_frames"] == 2
    assert details["deviceType"] == "Miniscope_V4_BNO" and json.dumps(details)
    # the session folder picks the Miniscope subfolder over the webcam one
    assert video_files(scope.parent) == files
    assert open_movie(scope.parent).shape == (33, 16, 20)
    # one file of the folder alone carries the recording's rate too
    single = open_movie(scope / "3.avi")
    assert single.frame_rate == pytest.approx(20.0)
    np.testing.assert_array_equal(single[:], frames[9:12])
    assert pickle.loads(pickle.dumps(movie))[31].tolist() == frames[31].tolist()


@pytest.mark.parametrize(("frame_rate", "timestamps", "want", "source"), [
    (15, None, 15.0, "metaData.json frameRate"),
    ("30.0 FPS", None, 30.0, "metaData.json frameRate"),
    (None, 1000 / 12.5 * np.arange(20), 12.5, "timestamps"),
    (None, None, 60.0, "video"),
])
def test_miniscope_rate_comes_from_metadata_then_timestamps_then_video(tmp_path: Path, frame_rate: Any,
                                                                       timestamps: Any, want: float,
                                                                       source: str) -> None:
    scope, _ = v4_session(tmp_path / "s", n_files=2, frame_rate=frame_rate, timestamps=timestamps)
    movie = open_movie(scope)
    assert movie.frame_rate == pytest.approx(want, rel=1e-3)
    assert movie.metadata["details"]["frame_rate_source"] == source


def test_old_miniscope_folder_takes_mscam_files_and_the_timestamps_rate(tmp_path: Path) -> None:
    folder = tmp_path / "H10_M30_S12"
    folder.mkdir()
    frames = np.arange(20, dtype=np.uint8)[:, None, None] * 10 + np.zeros((20, 12, 14), np.uint8)
    for i in range(10):
        write_video(folder / f"msCam{i + 1}.avi", frames[2 * i:2 * i + 2], rate=30)
    write_video(folder / "behavCam1.avi", noise(5, (30, 40)))
    rows = ["camNum\tframeNum\tsysClock\tbuffer"]
    rows += [f"0\t{i + 1}\t{int(i * 33.3)}\t1" for i in range(5)]  # the behaviour camera
    rows += [f"1\t{i + 1}\t{i * 50}\t1" for i in range(20)]  # the Miniscope: 20 rows, 20 Hz
    (folder / "timestamp.dat").write_text("\n".join(rows) + "\n")
    files = video_files(folder)
    assert [p.name for p in files] == [f"msCam{i}.avi" for i in range(1, 11)]
    movie = open_movie(folder)
    np.testing.assert_array_equal(movie[:], frames)
    assert movie.frame_rate == pytest.approx(20.0)  # the timestamps win over the AVI header's 30
    details = movie.metadata["details"]
    assert details["miniscope"] == "DAQ (msCam)" and details["timestamps_camera"] == 1
    assert details["frame_rate_source"] == "timestamps" and details["dropped_frames"] == 0
    assert miniscope_metadata(folder)["frame_rate"] == pytest.approx(20.0)


def test_folders_that_are_not_video_recordings_are_not_claimed_and_av_is_not_imported(tmp_path: Path) -> None:
    import tifffile

    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    tifffile.imwrite(tiffs / "a.tif", np.zeros((3, 4, 4), np.uint8))
    (tiffs / "preview.avi").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "store.zarr").mkdir()
    single = tmp_path / "movie.avi"
    single.write_bytes(b"")
    paths = [str(tiffs), str(tmp_path / "empty"), str(single)]
    code = ("import sys; from pathlib import Path; from somascope.io.video import video_files; "
            f"r = [video_files(Path(p)) for p in {paths!r}]; print(r, 'av' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[None, None, None] False"
    assert video_files(tmp_path / "store.zarr") is None
    for name in ("a", "b"):  # two video subfolders, neither a Miniscope one: ask which
        (tmp_path / "two" / name).mkdir(parents=True)
        write_video(tmp_path / "two" / name / "0.avi", noise(2))
    with pytest.raises(MovieError, match="several subfolders"):
        open_movie(tmp_path / "two")


# ----------------------------------------------------------------------------- the pipeline
def test_pipeline_runs_on_a_one_photon_miniscope_folder(tmp_path: Path) -> None:
    from somascope import simulate
    from somascope.metrics import match_footprints
    from somascope.pipeline import load_results, run

    sim = simulate.one_photon(dims=(64, 64), n_frames=300, n_cells=8, neuron_radius=5.0, frame_rate=20.0, seed=2)
    movie = np.asarray(sim.movie, np.float64)
    scaled = np.clip((movie - movie.min()) / (np.percentile(movie, 99.99) - movie.min()) * 250, 0, 255)
    frames = np.round(scaled).astype(np.uint8)
    scope = tmp_path / "session" / "My_V4_Miniscope"
    scope.mkdir(parents=True)
    for i in range(3):
        write_video(scope / f"{i}.avi", frames[100 * i:100 * (i + 1)], codec="ffv1", rate=30)
    (scope / "metaData.json").write_text(json.dumps({"deviceType": "Miniscope_V4_BNO", "frameRate": "20FPS"}))
    result = run(scope, tmp_path / "out", radius=5.0, engine="serial", progress=False, overrides={"is_1p": True})
    res = load_results(result.results_path)
    assert res.params["data"]["is_1p"] and res.params["data"]["fr"] == pytest.approx(20.0)
    est = res.estimates
    assert est.C.shape[1] == 300 and len(est.accepted_indices) >= 1
    match = match_footprints(sim.A[:, np.flatnonzero(sim.active)], est.A[:, est.accepted_indices], (64, 64),
                             max_centroid_distance=6.0)
    assert match.precision >= 0.5  # what was accepted is cells of the movie, read in the right order
