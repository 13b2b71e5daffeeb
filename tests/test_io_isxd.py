"""Inscopix ``.isxd`` movies, written here with Inscopix's own ``isx`` package (``isx.Movie.write``):
pixel values, frame rate from the timing, invalid (dropped/cropped) frames, lazy per-frame reads,
damaged files and one pipeline run."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from somascope import simulate
from somascope.io import Movie, MovieError, open_movie
from somascope.io.isxd import IsxdSegment

isx = pytest.importorskip("isx")

PERIOD_US = 50_000  # 20 Hz


def write_isxd(path: Path, frames: np.ndarray, *, period_us: int = PERIOD_US, dropped: list[int] | None = None,
               cropped: list[list[int]] | None = None, pixel_um: tuple[int, int] | None = None) -> Path:
    """Write ``frames`` ``(T, H, W)`` (uint16 or float32) as an .isxd movie with isx's writer."""
    timing = isx.Timing(num_samples=len(frames), period=isx.Duration.from_usecs(period_us),
                        dropped=dropped or [], cropped=cropped or [])
    spacing = isx.Spacing(num_pixels=frames.shape[1:])
    if pixel_um is not None:  # isx has no public setter; the header field is what files carry
        from isx._internal import IsxRatio

        spacing._impl.pixel_width = IsxRatio(*pixel_um)
        spacing._impl.pixel_height = IsxRatio(*pixel_um)
    movie = isx.Movie.write(str(path), timing, spacing, frames.dtype.type)
    for i, frame in enumerate(frames):
        movie.set_frame_data(i, frame)  # isx skips (and says so) frames marked invalid
    movie.flush()
    del movie
    return path


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(0).integers(0, 4000, (30, 10, 14)).astype(np.uint16)
    return write_isxd(tmp_path_factory.mktemp("isxd") / "rec.isxd", data, pixel_um=(6, 5)), data


def test_values_shape_dtype_and_frame_rate(recording: tuple[Path, np.ndarray]) -> None:
    path, data = recording
    with open_movie(path) as m:  # chosen from the extension alone
        assert m.metadata["format"] == "Inscopix ISXD"
        assert m.shape == (30, 10, 14) and m.dtype == np.uint16
        np.testing.assert_array_equal(m[:], data)
        assert m.frame_rate == pytest.approx(20.0)
        details = m.metadata["details"]
        assert details["frame_period_s"] == pytest.approx(0.05)
        assert details["header_pixel_spacing"] == pytest.approx([1.2, 1.2])
        assert "pixel_size_um" not in m.metadata  # header spacing is not a specimen calibration
        assert "invalid_frames" not in details


def test_float32_movies_read_exactly(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(6, 7, 9)).astype(np.float32)
    with open_movie(write_isxd(tmp_path / "f.isxd", data, period_us=33_333)) as m:
        assert m.dtype == np.float32
        np.testing.assert_array_equal(m[:], data)
        assert m.frame_rate == pytest.approx(1e6 / 33_333)


def test_indexing_reads_only_the_frames_asked_for(recording: tuple[Path, np.ndarray],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = recording
    asked: list[int] = []
    real = isx.Movie.get_frame_data

    def spy(self: object, index: int) -> np.ndarray:
        asked.append(index)
        return real(self, index)

    monkeypatch.setattr(isx.Movie, "get_frame_data", spy)
    with open_movie(path) as m:
        np.testing.assert_array_equal(m[4], data[4])
        np.testing.assert_array_equal(m[10:14], data[10:14])
        pick = [0, 3, 17, 29]
        np.testing.assert_array_equal(m[pick], data[pick])
        np.testing.assert_array_equal(m[25:5:-6], data[25:5:-6])
        np.testing.assert_array_equal(m[1:3, 2:5, 7:], data[1:3, 2:5, 7:])
    assert asked == [4, 10, 11, 12, 13, 0, 3, 17, 29, 7, 13, 19, 25, 1, 2]


def test_movie_pickles_without_the_handle_and_reads_after(recording: tuple[Path, np.ndarray]) -> None:
    path, data = recording
    with open_movie(path) as m:
        m[0]
        blob = pickle.dumps(m)
    assert len(blob) < 3000
    back = pickle.loads(blob)
    assert isinstance(back, Movie)
    np.testing.assert_array_equal(back[[2, 28]], data[[2, 28]])
    back.close()


def test_files_concatenate_in_time(tmp_path: Path) -> None:
    a = np.full((4, 5, 6), 1, np.uint16)
    b = np.full((3, 5, 6), 2, np.uint16)
    paths = [write_isxd(tmp_path / "a.isxd", a), write_isxd(tmp_path / "b.isxd", b)]
    with open_movie(paths) as m:
        assert m.shape == (7, 5, 6) and m.frame_rate == pytest.approx(20.0)
        np.testing.assert_array_equal(m[:, 0, 0], [1, 1, 1, 1, 2, 2, 2])


def test_invalid_frames_stay_in_place_as_zeros_and_are_reported(tmp_path: Path) -> None:
    data = np.arange(1, 9, dtype=np.uint16)[:, None, None] * np.ones((1, 4, 5), np.uint16)
    path = write_isxd(tmp_path / "d.isxd", data, dropped=[3], cropped=[[5, 6]])
    with open_movie(path) as m:
        assert m.shape == (8, 4, 5)
        np.testing.assert_array_equal(m[:, 0, 0], [1, 2, 3, 0, 5, 0, 0, 8])
        invalid = m.metadata["details"]["invalid_frames"]
        assert invalid["count"] == 3 and invalid["first"] == [3, 5, 6]


def test_segment_protocol_and_channel(recording: tuple[Path, np.ndarray]) -> None:
    path, data = recording
    seg = IsxdSegment(path)
    assert seg.n_raw == 30 and seg.frame_shape == (10, 14) and seg.dtype == np.uint16
    np.testing.assert_array_equal(seg.read(np.array([1, 8], np.int64)), data[[1, 8]])
    assert seg.read(np.array([], np.int64)).shape == (0, 10, 14)
    seg.close()
    with pytest.raises(MovieError, match="one channel"):
        open_movie(path, channel=1)


def test_truncated_and_foreign_files_give_one_line_errors(recording: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = recording
    raw = path.read_bytes()
    for name, blob in (("cut.isxd", raw[: len(raw) - 200]), ("half.isxd", raw[: len(raw) // 2]),
                       ("junk.isxd", b"not an inscopix file" * 50)):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(MovieError, match=rf"{name}: not a readable Inscopix movie") as info:
            open_movie(tmp_path / name)
        assert "\n" not in str(info.value)
    assert path.read_bytes() == raw  # the input is never modified


def test_pipeline_runs_on_an_isxd_movie(tmp_path: Path) -> None:
    from somascope.pipeline import load_results, run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, seed=1)
    movie = np.asarray(sim.movie, np.float32)
    lo, hi = float(movie.min()), float(movie.max())
    frames = np.round((movie - lo) / (hi - lo) * 4000 + 100).astype(np.uint16)
    path = write_isxd(tmp_path / "sim.isxd", frames, period_us=33_333)
    result = run(path, tmp_path / "out", radius=5.0, engine="serial", progress=False)
    est = result.estimates
    assert est.dims == (64, 64) and est.C.shape[1] == 300
    assert est.accepted_indices.size >= 4
    assert load_results(tmp_path / "out" / "results.h5").params["data"]["fr"] == pytest.approx(1e6 / 33_333)
