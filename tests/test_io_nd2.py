"""Nikon ``.nd2`` files.

The ``nd2`` package reads ND2 but cannot write it, so this file checks the reader two ways:

- **A real file** (NIS-Elements, T=3 × Z=10 × C=2, 31×38 px, uint16): ``cluster.nd2`` as shipped
  in the ``pims_nd2`` 1.1 source distribution on PyPI (BSD-3), fetched by pip into a cache folder
  the first time (or given as ``$SOMASCOPE_ND2_SAMPLE``); those tests are skipped when it cannot
  be had (no network). Every value is
  cross-checked against ``nd2.imread`` and the file's own metadata (``voxel_size``, the frame
  time stamps read through ``ND2File.events``).
- **A stand-in** for ``nd2.ND2File`` built here (``sizes``, ``dtype``, ``attributes``,
  ``metadata``, ``experiment``, ``voxel_size``, ``frame_metadata``, ``read_frame``), swapped in
  for the opener, so the reader's mapping (loop order, planes, channels, positions, frame rate
  sources, incomplete acquisitions) and one pipeline run are tested on any machine. The stand-in
  indexes frames the way ``nd2`` does (C-order ravel of the loop coordinates in ``sizes``
  order), which the real-file test confirms.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from somascope import simulate
from somascope.io import Movie, MovieError, open_movie
from somascope.io import nd2file
from somascope.io.nd2file import Nd2Segment


# -- a stand-in for nd2.ND2File ------------------------------------------------------------------
class FakeND2:
    """Exposes the attributes of ``nd2.ND2File`` the reader uses, over an array whose leading
    axes are the loops (in ``sizes`` order), then C (if any), Y, X."""

    def __init__(self, data: np.ndarray, axes: str, *, stamps_ms: np.ndarray | None = None,
                 period_ms: float | None = None, voxel: tuple[float, float, float] | None = (0.8, 0.8, 2.0),
                 stored: int | None = None, rgb: bool = False, channel_names: list[str] | None = None) -> None:
        self.data = data
        self.sizes = {a: int(n) for a, n in zip(axes, data.shape) if n > 1 or a in "YX"}
        self.dtype = data.dtype
        self.is_rgb = rgb
        loops = [a for a in axes if a not in "CYX"]
        self.n_seq = int(np.prod([data.shape[axes.index(a)] for a in loops]))
        self.attributes = SimpleNamespace(sequenceCount=stored if stored is not None else self.n_seq)
        n_c = self.sizes.get("C", 1)
        names = channel_names or [f"ch{i}" for i in range(n_c)]
        calibrated = voxel is not None
        self.metadata = SimpleNamespace(channels=[
            SimpleNamespace(channel=SimpleNamespace(name=n),
                            volume=SimpleNamespace(axesCalibrated=(calibrated,) * 3),
                            microscope=SimpleNamespace(objectiveName="Apo 25x"))
            for n in names])
        self._voxel = voxel or (1.0, 1.0, 1.0)
        exp = []
        for a in loops:
            if a == "T":
                exp.append(SimpleNamespace(type="TimeLoop", parameters=SimpleNamespace(periodMs=period_ms or 0.0)))
            elif a == "Z":
                exp.append(SimpleNamespace(type="ZStackLoop", parameters=SimpleNamespace(stepUm=2.0)))
        self.experiment = exp
        self.stamps_ms = stamps_ms
        self.frames = data.reshape(self.n_seq, *data.shape[len(loops):])
        self.reads: list[int] = []
        self.closed = False

    def voxel_size(self) -> SimpleNamespace:
        x, y, z = self._voxel
        return SimpleNamespace(x=x, y=y, z=z)

    def frame_metadata(self, seq: int) -> Any:
        if self.stamps_ms is None:
            raise ValueError("no frame metadata")
        t = SimpleNamespace(relativeTimeMs=float(self.stamps_ms[seq]))
        return SimpleNamespace(channels=[SimpleNamespace(time=t)])

    def read_frame(self, seq: int) -> np.ndarray:
        self.reads.append(int(seq))
        return self.frames[seq]

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``make(name, FakeND2)`` → the path of an (empty) .nd2 file that opens as that stand-in."""
    registry: dict[str, FakeND2] = {}

    def opener(path: Path) -> FakeND2:
        f = registry[Path(path).name]
        f.closed = False
        return f

    monkeypatch.setattr(nd2file, "_open_nd2", opener)

    def make(name: str, f: FakeND2) -> Path:
        registry[name] = f
        path = tmp_path / name
        path.write_bytes(b"")
        return path

    return make


def _tzyx(t: int, z: int, h: int = 6, w: int = 7) -> np.ndarray:
    """Frames whose pixels encode (t, z): value 100·t + z, plus a pixel ramp."""
    base = 100 * np.arange(t)[:, None, None, None] + np.arange(z)[None, :, None, None]
    return (base + np.arange(h * w).reshape(1, 1, h, w) * 1000).astype(np.uint32)


# -- mapping, on the stand-in ----------------------------------------------------------------------
def test_time_series_values_and_lazy_reads(fake: Any) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (20, 9, 11)).astype(np.uint16)
    f = FakeND2(data, "TYX", stamps_ms=np.arange(20) * 50.0 + 12.0)
    path = fake("t.nd2", f)
    with open_movie(path) as m:  # chosen from the extension
        assert m.metadata["format"] == "Nikon ND2" and m.shape == (20, 9, 11) and m.dtype == np.uint16
        f.reads.clear()
        np.testing.assert_array_equal(m[5], data[5])
        np.testing.assert_array_equal(m[2:6], data[2:6])
        np.testing.assert_array_equal(m[[0, 7, 19]], data[[0, 7, 19]])
        np.testing.assert_array_equal(m[12:3:-4], data[12:3:-4])
        assert f.reads == [5, 2, 3, 4, 5, 0, 7, 19, 4, 8, 12]
        np.testing.assert_array_equal(m[:], data)
        assert m.frame_rate == pytest.approx(20.0)
        assert m.metadata["pixel_size_um"] == (0.8, 0.8)
        assert m.metadata["details"]["frame_rate_from"] == "frame time stamps"
    blob = pickle.dumps(m)
    back = pickle.loads(blob)
    assert isinstance(back, Movie) and "FakeND2" not in str(blob)
    np.testing.assert_array_equal(back[[1, 18]], data[[1, 18]])


@pytest.mark.parametrize("axes", ["TZYX", "ZTYX"])
def test_z_becomes_planes_whatever_the_loop_order(fake: Any, axes: str) -> None:
    tz = _tzyx(4, 3)
    stored = tz if axes == "TZYX" else tz.transpose(1, 0, 2, 3)
    # stamps per sequence index: volume t starts at 250 ms · t
    t_of = np.indices(stored.shape[:2])[axes.index("T")].ravel()
    z_of = np.indices(stored.shape[:2])[axes.index("Z")].ravel()
    path = fake("z.nd2", FakeND2(stored, axes, stamps_ms=250.0 * t_of + 10.0 * z_of))
    with open_movie(path) as m:
        assert m.shape == (4, 3, 6, 7)
        np.testing.assert_array_equal(m[:], tz)
        assert m.frame_rate == pytest.approx(4.0)  # volumes per second
        assert m.metadata["n_planes"] == 3 and m.metadata["details"]["z_step_um"] == 2.0
    with open_movie(path, plane=1) as one:
        assert one.shape == (4, 6, 7) and one.frame_rate == pytest.approx(4.0)
        np.testing.assert_array_equal(one[:], tz[:, 1])


def test_channels_need_a_choice(fake: Any) -> None:
    data = np.stack([_tzyx(5, 1)[:, 0], 7 + _tzyx(5, 1)[:, 0]], axis=1)  # T, C, Y, X
    path = fake("c.nd2", FakeND2(data, "TCYX", channel_names=["GCaMP", "tdTomato"]))
    with pytest.raises(MovieError, match=r"2 channels \(GCaMP, tdTomato\); pass channel= \(0\.\.1\)"):
        open_movie(path)
    with open_movie(path, channel=1) as m:
        np.testing.assert_array_equal(m[:], data[:, 1])
        assert m.metadata["details"]["channel"] == "1 (tdTomato)"
    with pytest.raises(MovieError, match="out of range"):
        open_movie(path, channel=2)


def test_positions_rgb_custom_loops_and_non_movies_are_refused(fake: Any) -> None:
    cases = {
        "p.nd2": (FakeND2(np.zeros((3, 2, 4, 5), np.uint16), "TPYX"), "2 stage positions.*export one position"),
        "u.nd2": (FakeND2(np.zeros((3, 2, 4, 5), np.uint16), "TUYX"), r"loop axes \['U'\]"),
        "z.nd2": (FakeND2(np.zeros((4, 4, 5), np.uint16), "ZYX"), "not a time series"),
        "rgb.nd2": (FakeND2(np.zeros((3, 4, 5), np.uint16), "TYX", rgb=True), "RGB pixels"),
    }
    for name, (f, message) in cases.items():
        with pytest.raises(MovieError, match=message):
            open_movie(fake(name, f))


def test_frame_rate_sources_in_order(fake: Any) -> None:
    data = np.zeros((6, 4, 5), np.uint16)
    # stamps beat the loop period
    with open_movie(fake("a.nd2", FakeND2(data, "TYX", stamps_ms=np.arange(6) * 100.0, period_ms=500.0))) as m:
        assert m.frame_rate == pytest.approx(10.0)
        assert m.metadata["details"]["time_loop_period_s"] == 0.5
    # no stamps: the loop's period
    with open_movie(fake("b.nd2", FakeND2(data, "TYX", period_ms=500.0))) as m:
        assert m.frame_rate == pytest.approx(2.0)
        assert m.metadata["details"]["frame_rate_from"] == "time loop period"
    # "as fast as possible" (period 0 or 1 ms) and no stamps: unknown, not 1000 Hz
    with open_movie(fake("c.nd2", FakeND2(data, "TYX", period_ms=1.0))) as m:
        assert m.frame_rate is None
    # uncalibrated pixels: no pixel size
    with open_movie(fake("d.nd2", FakeND2(data, "TYX", voxel=None))) as m:
        assert "pixel_size_um" not in m.metadata


def test_an_acquisition_stopped_early_keeps_its_complete_time_points(fake: Any) -> None:
    tz = _tzyx(5, 3)
    with open_movie(fake("stop.nd2", FakeND2(tz, "TZYX", stored=11))) as m:  # 3 full volumes + 2 planes
        assert m.shape == (3, 3, 6, 7)
        np.testing.assert_array_equal(m[:], tz[:3])
        assert "11 of 15 frames" in m.metadata["details"]["incomplete"]
    with pytest.raises(MovieError, match="not the outermost loop"):
        open_movie(fake("zt.nd2", FakeND2(tz.transpose(1, 0, 2, 3), "ZTYX", stored=11)))


def test_a_frame_that_cannot_be_read_gives_a_one_line_error(fake: Any) -> None:
    f = FakeND2(np.zeros((4, 3, 3), np.uint16), "TYX")

    def broken(seq: int) -> np.ndarray:
        raise ValueError("chunk 2 is\ncorrupt")

    f.read_frame = broken  # type: ignore[method-assign]
    with open_movie(fake("bad.nd2", f)) as m:
        with pytest.raises(MovieError, match=r"bad.nd2: frame 2 could not be read") as info:
            m[2]
    assert "\n" not in str(info.value)


def test_pipeline_runs_through_the_nd2_reader(fake: Any) -> None:
    """End to end through Nd2Segment's mapping (pixels served by the stand-in: nd2 cannot write)."""
    from somascope.pipeline import load_results, run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, seed=1)
    movie = np.asarray(sim.movie, np.float32)
    lo, hi = float(movie.min()), float(movie.max())
    frames = np.round((movie - lo) / (hi - lo) * 4000 + 100).astype(np.uint16)
    path = fake("sim.nd2", FakeND2(frames, "TYX", stamps_ms=np.arange(300) * 1000 / 30))
    out = path.parent / "out"
    result = run(path, out, radius=5.0, engine="serial", progress=False)
    est = result.estimates
    assert est.dims == (64, 64) and est.C.shape[1] == 300
    assert est.accepted_indices.size >= 4
    assert load_results(out / "results.h5").params["data"]["fr"] == pytest.approx(30.0)


# -- a real ND2 file -----------------------------------------------------------------------------
#: The sample's checksum (``cluster.nd2`` of the pims_nd2 1.1 sdist).
SAMPLE_SHA256 = "f8ee69c3efbaaed4f892e986c3efd06372597ec084e75437243e8dd51388de62"


def _sample() -> Path | None:
    """``$SOMASCOPE_ND2_SAMPLE``, else ``cluster.nd2`` from the pims_nd2 1.1 source distribution,
    fetched once from PyPI by pip into a cache folder (``~/.cache/somascope-tests``) and checked
    against :data:`SAMPLE_SHA256`; None (the real-file tests skip) when neither can be had."""
    import hashlib
    import subprocess
    import sys
    import tarfile
    import tempfile

    env = os.environ.get("SOMASCOPE_ND2_SAMPLE")
    if env:
        return Path(env) if Path(env).is_file() else None
    cached = Path.home() / ".cache" / "somascope-tests" / "cluster.nd2"
    if not cached.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                "pims-nd2==1.1", "-d", tmp], check=True, capture_output=True, timeout=180)
                archive = next(Path(tmp).glob("pims_nd2-1.1.tar.gz"))
                with tarfile.open(archive) as tar:
                    member = next(m for m in tar.getmembers() if m.name.endswith("/cluster.nd2"))
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
            except (OSError, subprocess.SubprocessError, StopIteration, tarfile.TarError):
                return None
            if hashlib.sha256(data).hexdigest() != SAMPLE_SHA256:
                return None
            cached.parent.mkdir(parents=True, exist_ok=True)
            part = cached.with_suffix(".part")
            part.write_bytes(data)
            os.replace(part, cached)
    return cached


SAMPLE = _sample()
needs_sample = pytest.mark.skipif(
    SAMPLE is None, reason="no real ND2 sample (pip could not fetch the pims_nd2 1.1 sdist; set "
                           "SOMASCOPE_ND2_SAMPLE to its cluster.nd2)")


@needs_sample
def test_real_file_matches_nd2_imread_and_its_metadata() -> None:
    nd2 = pytest.importorskip("nd2")
    with nd2.ND2File(str(SAMPLE)) as f:
        sizes = dict(f.sizes)
        truth = f.asarray()  # T, Z, C, Y, X for this file
        voxel = f.voxel_size()
        events = f.events(orient="list")
    assert list(sizes) == ["T", "Z", "C", "Y", "X"]
    seconds = np.asarray(events["Time [s]"])
    n_t, n_z = sizes["T"], sizes["Z"]
    rate = (n_t - 1) / (seconds[(n_t - 1) * n_z] - seconds[0])
    with pytest.raises(MovieError, match=r"2 channels .*pass channel="):
        open_movie(SAMPLE)
    for channel in (0, 1):
        with open_movie(SAMPLE, channel=channel) as m:
            assert m.shape == (n_t, n_z, sizes["Y"], sizes["X"]) and m.dtype == truth.dtype
            np.testing.assert_array_equal(m[:], truth[:, :, channel])
            np.testing.assert_array_equal(m[1], truth[1, :, channel])
            np.testing.assert_array_equal(m[[0, 2]], truth[[0, 2], :, channel])
            assert m.frame_rate == pytest.approx(rate, rel=1e-6)
            assert m.metadata["pixel_size_um"] == pytest.approx((voxel.y, voxel.x))
            assert m.metadata["details"]["z_step_um"] == pytest.approx(voxel.z)
            blob = pickle.dumps(m)
        back = pickle.loads(blob)
        np.testing.assert_array_equal(back[2, 7], truth[2, 7, channel])
        back.close()
    with open_movie(SAMPLE, channel=0, plane=4) as one:
        np.testing.assert_array_equal(one[:], truth[:, 4, 0])
    seg = Nd2Segment(SAMPLE, channel=1)
    assert seg.n_raw == n_t * n_z and seg.frame_shape == (sizes["Y"], sizes["X"])
    np.testing.assert_array_equal(seg.read(np.array([3, 17, 29])), truth.reshape(-1, *truth.shape[2:])[[3, 17, 29], 1])
    seg.close()


@needs_sample
def test_real_file_truncated_or_foreign_gives_one_line_errors(tmp_path: Path) -> None:
    raw = SAMPLE.read_bytes()
    for name, blob in (("cut.nd2", raw[: len(raw) - 5000]), ("head.nd2", raw[:100]), ("junk.nd2", b"\x00junk" * 400)):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(MovieError, match=rf"{name}: not a readable ND2 file") as info:
            open_movie(tmp_path / name, channel=0)
        assert "\n" not in str(info.value)
