"""The command line: each command works on real files and fails in one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from somascope.cli import build_parser, main


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [a for a in build_parser()._subparsers._group_actions[0].choices]  # noqa: SLF001
    assert {"info", "simulate", "summary", "run", "demo"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: somascope " + command in capsys.readouterr().out


def test_info_reports_shape_rate_and_nonfinite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.ones((40, 12, 10), np.float32)
    data[7, 1, 1] = np.nan
    tifffile.imwrite(tmp_path / "m.tif", data, imagej=True, metadata={"axes": "TYX", "finterval": 0.05})
    assert main(["info", str(tmp_path / "m.tif"), "--check", "--json", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [40, 12, 10]
    assert info["frame_rate_hz"] == pytest.approx(20.0)
    assert info["duration_s"] == pytest.approx(2.0)
    assert info["non_finite"]["nan"] == 1 and info["non_finite"]["frames"] == [7]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "/no/such/movie.tif"], "no such file"),
        (["info", "__FILE__.txt"], "unsupported file type"),
        (["summary", "__FILE__.txt"], "unsupported file type"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a movie")
    argv = [a.replace("__FILE__.txt", str(tmp_path / "notes.txt")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("somascope: error:") and needle in err[0]


def test_simulate_then_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--frames", "120", "--dims", "40", "48", "--motion", "rigid", "-q"]) == 0
    assert {"movie.tif", "ground_truth.h5", "true_shifts.csv"} <= {p.name for p in out.iterdir()}
    from somascope.cnmf.estimates import Estimates
    from somascope.io import open_movie

    truth = Estimates.load(out / "ground_truth.h5")
    movie = open_movie(out / "movie.tif")
    assert movie.shape == (120, 40, 48) and movie.frame_rate == pytest.approx(30.0)
    assert truth.dims == (40, 48) and truth.C.shape[1] == 120 and truth.K >= 1
    shifts = np.loadtxt(out / "true_shifts.csv", delimiter=",", skiprows=1)
    assert shifts.shape == (120, 2) and np.abs(shifts).max() > 0.5
    summ = tmp_path / "summ"
    assert main(["summary", str(out / "movie.tif"), "--out", str(summ), "-q"]) == 0
    corr = np.load(summ / "corr.npy")
    assert corr.shape == (40, 48) and np.isfinite(corr).all()
    assert any(p.suffix == ".png" for p in summ.iterdir())


def test_console_script_demo_quick(tmp_path: Path) -> None:
    import re

    exe = Path(sys.executable).with_name("somascope")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "somascope.cli"]
    result = subprocess.run([*cmd, "demo", "--quick", "--out", str(tmp_path / "demo"), "-q"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo"
    report = demo / "report" / "report.html"
    assert report.exists() and f"report: {report}" in result.stdout
    page = report.read_text()
    figures = set(re.findall(r"src='([^']+\.png)'", page))
    assert len(figures) >= 5
    for figure in figures:
        assert (report.parent / figure).stat().st_size > 1000
    assert (demo / "movie.zarr").is_dir() and (demo / "stages" / "cnmf" / "manifest.json").is_file()
    from somascope.cnmf.estimates import Estimates

    found = Estimates.load(demo / "results.h5")
    truth = Estimates.load(demo / "ground_truth.h5")
    assert found.dims == truth.dims == (64, 64)
    assert found.F_dff is not None and found.F_dff.shape == found.C.shape
    scores = json.loads((report.parent / "report.json").read_text())["accuracy"]
    printed = float(result.stdout.split("F1 ")[1].split()[0])
    assert printed == pytest.approx(scores["f1"], abs=1e-3)  # the demo prints what the report shows
    assert scores["f1"] >= 0.75  # the quick demo finds most of its 12 simulated cells (0.857 measured)


def test_motion_correct_command_recovers_simulated_shifts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim_dir, out = tmp_path / "sim", tmp_path / "mc"
    assert main(["simulate", str(sim_dir), "--frames", "150", "--dims", "64", "64", "--motion", "rigid", "-q"]) == 0
    assert main(["motion-correct", str(sim_dir / "movie.tif"), "--out", str(out), "--scheduler", "serial",
                 "--tiff", "-q"]) == 0
    assert {"corrected.zarr", "corrected.tif", "shifts.csv", "template.npy", "metrics.json", "shifts.png"} <= {
        p.name for p in out.iterdir()}
    true = np.loadtxt(sim_dir / "true_shifts.csv", delimiter=",", skiprows=1)
    found = np.loadtxt(out / "shifts.csv", delimiter=",", skiprows=1)[:, 1:3]
    offset = np.median(found - true, axis=0)  # shifts are relative to the data-derived template
    assert np.sqrt(np.mean((found - offset - true) ** 2)) < 0.3
    corrected = tifffile.imread(out / "corrected.tif")
    assert corrected.shape == (150, 64, 64)
    assert main(["motion-correct", str(sim_dir / "movie.tif"), "--out", str(out), "--scheduler", "serial",
                 "-q"]) == 2  # refuses to overwrite an existing corrected store
    assert "already exists" in capsys.readouterr().err
