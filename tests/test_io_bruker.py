"""Bruker PrairieView recordings: a folder of single-page OME-TIFFs and its PVScan XML, both
written here (tifffile pages + an XML with the PrairieView structure: PVStateShard settings,
Sequence → Frame → File). Channels, volumes, frame rate, pixel size, lazy reads, bad folders
and one pipeline run."""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope import simulate
from somascope.io import Movie, MovieError, open_movie
from somascope.io.backends import claim
from somascope.io.bruker import BrukerSegment, bruker_files

FRAME_PERIOD = 0.0335  # s
UM_PER_PX = (1.25, 1.1)  # (y, x)


def write_bruker(
    folder: Path,
    channels: dict[int, np.ndarray],
    *,
    name: str = "TSeries-20240101-001",
    planes: int = 1,
    bidirectional: bool = False,
    stamps: bool = True,
    multipage: bool = False,
    volume_period: float | None = None,
) -> Path:
    """Write a PrairieView-like recording: ``channels`` maps the Bruker channel number (1, 2…)
    to frames ``(n, H, W)`` in acquisition order; with ``planes > 1`` every ``planes`` frames
    are one ``TSeries ZSeries Element`` cycle. Returns the XML path."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(channels.values())))
    root = ET.Element("PVScan", version="5.8.64.800", date="1/1/2024 10:00:00 AM", notes="")
    shard = ET.SubElement(root, "PVStateShard")
    ET.SubElement(shard, "PVStateValue", key="activeMode", value="Galvo")
    ET.SubElement(shard, "PVStateValue", key="framePeriod", value=repr(FRAME_PERIOD))
    ET.SubElement(shard, "PVStateValue", key="objectiveLens", value="Nikon 16X")
    mpp = ET.SubElement(shard, "PVStateValue", key="micronsPerPixel")
    ET.SubElement(mpp, "IndexedValue", index="XAxis", value=repr(UM_PER_PX[1]))
    ET.SubElement(mpp, "IndexedValue", index="YAxis", value=repr(UM_PER_PX[0]))
    ET.SubElement(mpp, "IndexedValue", index="ZAxis", value="2")
    power = ET.SubElement(shard, "PVStateValue", key="laserPower")
    ET.SubElement(power, "IndexedValue", index="0", value="12", description="Imaging")
    n_cycles = n // planes if planes > 1 else 1
    per_cycle = planes if planes > 1 else n
    vol = volume_period if volume_period is not None else FRAME_PERIOD * planes * 1.2
    kind = "TSeries ZSeries Element" if planes > 1 else "TSeries Timed Element"
    k = 0
    for c in range(n_cycles):
        seq = ET.SubElement(root, "Sequence", type=kind, cycle=str(c + 1), time="10:00:00.0",
                            bidirectionalZ=str(bidirectional))
        page_files: dict[int, list[np.ndarray]] = {ch: [] for ch in channels}
        for i in range(per_cycle):
            t = c * vol + i * FRAME_PERIOD
            attrs = {"index": str(i + 1), "parameterSet": "CurrentSettings"}
            if stamps:
                attrs.update(relativeTime=repr(t - c * vol if planes > 1 else t), absoluteTime=repr(2.5 + t))
            frame = ET.SubElement(seq, "Frame", attrs)
            for ch, data in channels.items():
                if multipage:
                    fname = f"{name}_Cycle{c + 1:05d}_Ch{ch}.ome.tif"
                    page_files[ch].append(data[k])
                    ET.SubElement(frame, "File", channel=str(ch), channelName=f"Ch{ch}", page=str(i + 1),
                                  filename=fname)
                else:
                    fname = f"{name}_Cycle{c + 1:05d}_Ch{ch}_{i + 1:06d}.ome.tif"
                    tifffile.imwrite(folder / fname, data[k])
                    ET.SubElement(frame, "File", channel=str(ch), channelName=f"Ch{ch}", page="1",
                                  filename=fname)
            ET.SubElement(frame, "ExtraParameters", validData="True")
            fshard = ET.SubElement(frame, "PVStateShard")
            ET.SubElement(fshard, "PVStateValue", key="framePeriod", value="99")  # per-frame: not the top level
            k += 1
        if multipage:
            for ch, pages in page_files.items():
                tifffile.imwrite(folder / f"{name}_Cycle{c + 1:05d}_Ch{ch}.ome.tif", np.stack(pages),
                                 photometric="minisblack")
    xml = folder / f"{name}.xml"
    ET.ElementTree(root).write(xml, encoding="utf-8", xml_declaration=True)
    return xml


def _frames(n: int, seed: int, dims: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8000, (n, *dims)).astype(np.uint16)


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    folder = tmp_path_factory.mktemp("bruker") / "TSeries-20240101-001"
    data = {1: _frames(40, 1), 2: _frames(40, 2)}
    write_bruker(folder, data)
    (folder / "TSeries-20240101-001_VoltageRecording_001.xml").write_text(
        '<?xml version="1.0"?><VRecSessionEntry></VRecSessionEntry>')  # not a PVScan: ignored
    return folder, data


# -- channels, values, metadata ----------------------------------------------------------------
def test_two_channels_need_a_choice_and_each_reads_its_own_files(two_channels: Any) -> None:
    folder, data = two_channels
    with pytest.raises(MovieError, match=r"2 channels \(0=Ch1, 1=Ch2\).*channel="):
        open_movie(folder)
    for channel, number in ((0, 1), (1, 2)):
        with open_movie(folder, channel=channel) as m:
            assert m.shape == (40, 12, 16) and m.dtype == np.uint16
            np.testing.assert_array_equal(m[:], data[number])
            assert m.metadata["details"]["channel"] == f"{channel} (Ch{number})"
    with pytest.raises(MovieError, match="out of range"):
        open_movie(folder, channel=2)


def test_frame_rate_pixel_size_and_details_come_from_the_xml(two_channels: Any) -> None:
    folder, _ = two_channels
    with open_movie(folder, channel=1) as m:
        assert m.frame_rate == pytest.approx(1 / FRAME_PERIOD, rel=1e-9)
        assert m.metadata["format"] == "Bruker PrairieView"
        assert m.metadata["pixel_size_um"] == pytest.approx(UM_PER_PX)
        details = m.metadata["details"]
        assert details["framePeriod_s"] == pytest.approx(FRAME_PERIOD)  # the top level, not a frame's
        assert details["frame_rate_from"] == "frame time stamps"
        assert details["channels"] == ["Ch1", "Ch2"] and details["objectiveLens"] == "Nikon 16X"
        assert m.metadata["paths"] == [str(folder / "TSeries-20240101-001.xml")]


def test_info_counts_the_recordings_files_on_disk(two_channels: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from somascope.cli import _gb, main

    folder, _ = two_channels
    assert main(["info", str(folder), "--channel", "0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "Bruker PrairieView"
    # the folder's files (its TIFFs and the XML), not the XML alone
    assert info["size_on_disk"] == _gb(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))
    assert info["size_on_disk"] != _gb(next(folder.glob("*.xml")).stat().st_size)


def test_frame_period_is_the_fallback_without_time_stamps(tmp_path: Path) -> None:
    write_bruker(tmp_path / "rec", {2: _frames(5, 3)}, stamps=False)
    with open_movie(tmp_path / "rec") as m:
        assert m.frame_rate == pytest.approx(1 / FRAME_PERIOD)
        assert m.metadata["details"]["frame_rate_from"] == "framePeriod"


def test_indexing_reads_the_right_frames_and_only_those(two_channels: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, data = two_channels
    opened: list[str] = []
    real = tifffile.TiffFile

    def spy(path: Any, *a: Any, **k: Any) -> Any:
        opened.append(Path(path).name)
        return real(path, *a, **k)

    with open_movie(folder, channel=1) as m:
        monkeypatch.setattr(tifffile, "TiffFile", spy)
        np.testing.assert_array_equal(m[7], data[2][7])
        np.testing.assert_array_equal(m[3:11], data[2][3:11])
        pick = [0, 5, 6, 19, 33, 39]
        np.testing.assert_array_equal(m[pick], data[2][pick])
        np.testing.assert_array_equal(m[30:2:-4], data[2][30:2:-4])
        np.testing.assert_array_equal(m[2:6, 3:7, 4:9], data[2][2:6, 3:7, 4:9])
    assert len(opened) == 1 + 8 + 6 + 7 + 4  # one file per frame asked for
    assert all("_Ch2_" in name for name in opened)


def test_movie_pickles_small_and_reads_after(two_channels: Any) -> None:
    folder, data = two_channels
    with open_movie(folder, channel=0) as m:
        m[0]
        blob = pickle.dumps(m)
    assert len(blob) < 4000  # paths, settings and the compressed file list
    back = pickle.loads(blob)
    assert isinstance(back, Movie)
    np.testing.assert_array_equal(back[[1, 38]], data[1][[1, 38]])
    back.close()


def test_the_folder_or_its_xml_is_claimed_and_nothing_else(two_channels: Any, tmp_path: Path) -> None:
    folder, _ = two_channels
    xml = folder / "TSeries-20240101-001.xml"
    assert bruker_files(folder) == [xml] and bruker_files(xml) == [xml]
    reader, paths = claim(folder)
    assert reader.name == "Bruker" and paths == [xml]
    with open_movie(xml, channel=1) as m:
        assert m.shape == (40, 12, 16)
    assert bruker_files(folder / "TSeries-20240101-001_VoltageRecording_001.xml") is None
    assert bruker_files(next(folder.glob("*.ome.tif"))) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    tifffile.imwrite(plain / "a.tif", _frames(3, 4), photometric="minisblack")
    assert bruker_files(plain) is None and bruker_files(tmp_path / "nothing") is None


def test_segment_is_the_protocol(two_channels: Any) -> None:
    folder, data = two_channels
    seg = BrukerSegment(folder, channel=1)
    assert seg.n_raw == 40 and seg.frame_shape == (12, 16) and seg.dtype == np.uint16
    np.testing.assert_array_equal(seg.read(np.array([2, 9, 10], np.int64)), data[2][[2, 9, 10]])
    assert seg.read(np.array([], np.int64)).shape == (0, 12, 16)
    seg.close()


# -- volumes and multi-page files ----------------------------------------------------------------
def test_zseries_cycles_are_planes_and_bidirectional_cycles_are_put_back_in_order(tmp_path: Path) -> None:
    planes, volumes = 3, 5
    depth = np.arange(planes)
    # acquisition order: even volumes top→bottom, odd ones bottom→top (bidirectional Z)
    order = np.concatenate([depth if v % 2 == 0 else depth[::-1] for v in range(volumes)])
    vol_index = np.repeat(np.arange(volumes), planes)
    frames = (1000 * vol_index[:, None, None] + 10 * order[:, None, None]
              + np.zeros((1, 8, 9), np.int64)).astype(np.uint16)
    write_bruker(tmp_path / "vol", {2: frames}, planes=planes, bidirectional=True, volume_period=0.5)
    with open_movie(tmp_path / "vol") as m:
        assert m.shape == (volumes, planes, 8, 9)
        expected = 1000 * np.arange(volumes)[:, None] + 10 * depth[None, :]
        np.testing.assert_array_equal(m[:][:, :, 0, 0], expected)
        assert m.frame_rate == pytest.approx(2.0)  # volumes per second, from the cycle stamps
        assert m.metadata["n_planes"] == planes
    with open_movie(tmp_path / "vol", plane=2) as one:
        assert one.shape == (volumes, 8, 9) and one.frame_rate == pytest.approx(2.0)
        np.testing.assert_array_equal(one[:][:, 0, 0], 1000 * np.arange(volumes) + 20)


def test_pages_of_multipage_files_are_frames(tmp_path: Path) -> None:
    data = _frames(12, 5)
    write_bruker(tmp_path / "mp", {1: data}, planes=4, multipage=True)
    assert len(list((tmp_path / "mp").glob("*.tif"))) == 3
    with open_movie(tmp_path / "mp") as m:
        assert m.shape == (3, 4, 12, 16)
        np.testing.assert_array_equal(m[:].reshape(12, 12, 16), data)
        np.testing.assert_array_equal(m[1, 2], data[6])


# -- bad recordings ------------------------------------------------------------------------------
def test_a_file_listed_in_the_xml_but_missing_is_refused_naming_it(two_channels: Any, tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    write_bruker(folder, {1: _frames(6, 6), 2: _frames(6, 7)})
    gone = next(folder.glob("*_Ch2_000004.ome.tif"))
    gone.unlink()
    with pytest.raises(MovieError, match=r"1 file\(s\) missing.*_Ch2_000004\.ome\.tif"):
        open_movie(folder, channel=1)
    with open_movie(folder, channel=0) as m:  # the other channel is whole
        assert m.shape[0] == 6


def test_damaged_files_give_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    xml = write_bruker(folder, {2: _frames(6, 8)})
    victim = next(folder.glob("*_000003.ome.tif"))
    victim.write_bytes(victim.read_bytes()[:60])
    with open_movie(folder) as m:
        np.testing.assert_array_equal(m[0:2].shape, (2, 12, 16))
        with pytest.raises(MovieError, match=r"000003\.ome\.tif: not a readable TIFF") as info:
            m[2]
        assert "\n" not in str(info.value)
    text = xml.read_text()
    xml.write_text(text[: len(text) // 2])
    with pytest.raises(MovieError, match="malformed.*truncated"):
        open_movie(folder)


def test_non_time_series_and_empty_xml_are_refused(tmp_path: Path) -> None:
    xml = write_bruker(tmp_path / "z", {1: _frames(4, 9)})
    xml.write_text(xml.read_text().replace("TSeries Timed Element", "ZSeries"))
    with pytest.raises(MovieError, match="ZSeries acquisition, not a time series"):
        open_movie(tmp_path / "z")
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / "e.xml").write_text('<?xml version="1.0"?><PVScan version="5"><PVStateShard/></PVScan>')
    with pytest.raises(MovieError, match="no <Sequence>"):
        open_movie(empty)


# -- end to end ----------------------------------------------------------------------------------
def test_pipeline_runs_on_a_bruker_folder(tmp_path: Path) -> None:
    from somascope.pipeline import run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, seed=1)
    movie = np.asarray(sim.movie, np.float32)
    lo, hi = float(movie.min()), float(movie.max())
    frames = np.round((movie - lo) / (hi - lo) * 4000 + 100).astype(np.uint16)
    write_bruker(tmp_path / "TSeries-sim", {2: frames})
    result = run(tmp_path / "TSeries-sim", tmp_path / "out", radius=5.0, engine="serial", progress=False)
    est = result.estimates
    assert est.dims == (64, 64) and est.C.shape[1] == 300
    assert est.accepted_indices.size >= 4
    from somascope.pipeline import load_results

    assert load_results(tmp_path / "out" / "results.h5").params["data"]["fr"] == pytest.approx(1 / FRAME_PERIOD)
