"""Bad parameters and the command line's error policy (issue 16, docs/reliability.md).

Every bad option, parameter or parameter file ends in ONE stderr line ``somascope: error: …``
naming what is wrong and the fix, exit code 2, nothing written into --out and the inputs
unchanged. Faults at run time exit 1, bugs print one "internal error" line, Ctrl-C exits 130,
and third-party log lines stay off the console unless --debug.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope import cli
from somascope.cli import main
from somascope.params import MAX_FRAME_RATE_HZ, ParameterError, Params


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120-frame 48×48 two-photon movie (5 cells of radius 4), no frame rate in its metadata."""
    from somascope import simulate

    folder = tmp_path_factory.mktemp("movie")
    sim = simulate.two_photon(dims=(48, 48), n_frames=120, n_cells=5, neuron_radius=4, seed=1, progress=False)
    tifffile.imwrite(folder / "m.tif", np.asarray(sim.movie, np.float32))
    return folder / "m.tif"


def _state(*paths: Path) -> list[tuple[bytes, int]]:
    return [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]


def _one_line(err: str, *needles: str, prefix: str = "somascope: error:") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix) and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _refused(capsys: pytest.CaptureFixture[str], movie: Path, out: Path, argv: list[str], *needles: str,
             inputs: tuple[Path, ...] = (), fix: bool = True) -> str:
    """``somascope run MOVIE --out OUT -q --scheduler serial ARGV`` exits 2 with one line holding
    ``needles`` and a fix; OUT is not created; the movie and ``inputs`` are unchanged."""
    before = _state(movie, *inputs)
    capsys.readouterr()
    code = main(["run", str(movie), "--out", str(out), "-q", "--scheduler", "serial", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    line = _one_line(err, *needles, *(["Fix:"] if fix else []))
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert _state(movie, *inputs) == before
    return line


# ----------------------------------------------------------------------------- radius


@pytest.mark.parametrize("radius", ["100", "1e9"])
def test_radius_larger_than_the_frame_is_refused(movie: Path, tmp_path: Path, radius: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--radius", radius], "larger than the frame (48, 48)",
             "--radius")


@pytest.mark.parametrize("radius", ["-3", "0", "nan", "inf"])
def test_radius_not_positive_is_refused_naming_the_option(movie: Path, tmp_path: Path, radius: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--radius", radius], f"--radius {float(radius):g}",
             "positive number of pixels")


def test_radius_zero_as_a_parameter_is_refused(movie: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--set", "data.neuron_radius=0"],
             "data.neuron_radius", "positive")


# ----------------------------------------------------------------------------- frame rate


@pytest.mark.parametrize("fr", ["0", "-30", "nan", "inf"])
def test_frame_rate_not_positive_is_refused_naming_the_option(movie: Path, tmp_path: Path, fr: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", fr], f"--fr {float(fr):g}", "positive number of Hz")


def test_absurd_frame_rate_is_refused_above_the_stated_limit(movie: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert MAX_FRAME_RATE_HZ == 10_000
    _refused(capsys, movie, tmp_path / "out", ["--fr", "1e6"], "--fr 1e+06", "above 10000 Hz")
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--set", "data.fr=1e6"], "data.fr=1000000.0",
             "above 10000 Hz")
    assert Params.from_dict({"fr": MAX_FRAME_RATE_HZ}).data.fr == MAX_FRAME_RATE_HZ  # the limit itself is allowed
    for command in (["info", str(movie)], ["summary", str(movie), "--out", str(tmp_path / "s")]):
        assert main([*command, "--fr", "20000", "-q"]) == 2
        _one_line(capsys.readouterr().err, "--fr 20000", "above 10000 Hz")
    assert not (tmp_path / "s").exists()


def test_absurd_frame_rate_in_the_metadata_is_refused_unless_fr_is_given(
        movie: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast = tmp_path / "fast.tif"  # a frame interval of 1 µs: 1e6 Hz
    tifffile.imwrite(fast, tifffile.imread(movie), imagej=True, metadata={"axes": "TYX", "finterval": 1e-6})
    assert main(["info", str(fast), "--json", "-q"]) == 0
    assert "above 10000 Hz" in capsys.readouterr().out  # info warns
    _refused(capsys, fast, tmp_path / "out", [], "data.fr=1000000.0", "--fr 30")
    from somascope.io import open_movie
    from somascope.pipeline.preflight import prepare

    with open_movie(fast, frame_rate=30.0) as fixed:  # what `run --fr 30` opens: --fr wins over the metadata
        prepared = prepare(fixed, tmp_path / "out")
        assert prepared.params.data.fr == 30.0 and prepared.fr_source == "movie metadata"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_key_in_set_says_did_you_mean(movie: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--set", "quality.min_snr=2"],
                    "unknown parameter 'quality.min_snr'", "Did you mean 'min_SNR' (group 'quality')")
    assert "Fix:" in line


@pytest.mark.parametrize(("text", "needles"), [
    ("init:\n  gSigg: 4\n", ["unknown parameter 'init.gSigg'", "Did you mean 'gSig'"]),
    ("merge_thres: 0.8\n", ["unknown parameter 'merge_thres'", "'merge_thresh' (→ merge.merge_thr)"]),  # CaImAn
    ("main:\n  min_snr: 2\n", ["unknown parameter 'main.min_snr'", "'min_SNR' (group 'quality')"]),  # Mesmerize
])
def test_unknown_key_in_a_params_file_says_did_you_mean(movie: Path, tmp_path: Path, text: str, needles: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "p.yaml"
    params.write_text(text)
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--params", str(params)], "p.yaml", *needles,
             "Did you mean", inputs=(params,))


def test_caiman_and_mesmerize_spellings_are_accepted(movie: Path, tmp_path: Path) -> None:
    p = Params.from_dict({"main": {"min_SNR": 2.0, "gnb": 2}, "merge_thresh": 0.7})
    assert p.quality.min_SNR == 2.0 and p.init.nb == 2 and p.merge.merge_thr == 0.7


# ----------------------------------------------------------------------------- contradictions


CONTRADICTIONS = [
    (["patch.rf=10", "patch.stride=25"], ["patch.stride=(25, 25)", "2·rf=(20, 20)"]),
    (["quality.SNR_lowest=5", "quality.min_SNR=2"], ["quality.SNR_lowest=5.0", "min_SNR=2.0"]),
    (["quality.rval_lowest=0.9", "quality.rval_thr=0.5"], ["quality.rval_lowest=0.9"]),
    (["quality.cnn_lowest=0.9", "quality.min_cnn_thr=0.5"], ["quality.cnn_lowest=0.9"]),
    (["quality.min_area_ratio=3", "quality.max_area_ratio=2"], ["quality.min_area_ratio=3.0"]),
    (["init.K=0"], ["init.K=0", "at least 1"]),
    (["init.K=-2"], ["init.K=-2"]),
    (["deconvolution.p=3"], ["deconvolution.p=3", "0, 1 or 2"]),
    (["init.nb=-1"], ["init.nb=-1", "full-rank background"]),
    (["init.gSig=6", "init.gSiz=5"], ["init.gSiz"]),
    (["motion.strides=[24,24]", "motion.overlaps=[24,24]"], ["motion.overlaps"]),
    (["init.gSig=[2,2,2]"], ["per-axis parameters disagree", "init.gSig has 3"]),
    (["motion.max_shifts=[100,100]"], ["motion.max_shifts=(100, 100)", "too large", "lower max_shifts"]),
]
NO_FIX_PART = {"motion.max_shifts=[100,100]"}  # somascope.motion.settings words its fix without "Fix:"


@pytest.mark.parametrize(("sets", "needles"), CONTRADICTIONS, ids=[" ".join(c[0]) for c in CONTRADICTIONS])
def test_contradictory_parameters_are_refused_before_anything_is_written(
        movie: Path, tmp_path: Path, sets: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--fr", "30", "--radius", "4"]
    for item in sets:
        argv += ["--set", item]
    _refused(capsys, movie, tmp_path / "out", argv, *needles, fix=" ".join(sets) not in NO_FIX_PART)


def test_a_key_given_twice_in_a_params_file_is_refused(movie: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    yml, jsn = tmp_path / "p.yaml", tmp_path / "p.json"
    yml.write_text("data:\n  fr: 30\n  fr: 20\n")
    jsn.write_text('{"quality": {"min_SNR": 2, "min_SNR": 3}}')
    _refused(capsys, movie, tmp_path / "out", ["--params", str(yml)], "p.yaml", "'fr' is given twice",
             "lines 2 and 3", inputs=(yml,))
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--params", str(jsn)], "p.json",
             "'min_SNR' is given twice", inputs=(jsn,))


def test_one_photon_with_a_low_rank_background_is_accepted_as_documented() -> None:
    """data.is_1p with init.nb > 0 is not a contradiction here: a low-rank background instead of
    the CNMF-E ring model (the background stage is then off), as CaImAn allows."""
    p = Params.from_dict({"is_1p": True, "nb": 2})
    assert p.data.is_1p and p.init.nb == 2
    assert Params.from_dict({"is_1p": True}).init.nb == 0  # the default stays the ring model


# ----------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(("item", "needles"), [
    ("init.K=abc", ["init.K='abc'", "whole number"]),
    ("init.K=4.5", ["init.K=4.5", "whole number"]),
    ("quality.min_SNR=[1,2]", ["quality.min_SNR=(1, 2)", "must be a number"]),
    ("quality.min_SNR=", ["quality.min_SNR=None", "may not be None"]),
    ("init.gSig=abc", ["init.gSig='abc'", "must be a sequence"]),  # a YAML string where a list is needed
    ("motion.pw_rigid=maybe", ["motion.pw_rigid='maybe'"]),
    ("merge.merge_thr=nan", ["merge.merge_thr=nan", "finite"]),
    ("data.is_1p=2", ["data.is_1p=2", "True or False"]),
    ("quality.min_SNR=[1", ["cannot read the value", "line 1, column 3"]),
])
def test_wrong_types_are_refused_naming_the_key(movie: Path, tmp_path: Path, item: str, needles: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--set", item], *needles)


def test_wrong_type_in_a_params_file_names_the_file(movie: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("init:\n  gSig: four\n")
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--params", str(params)], "p.yaml",
             "init.gSig='four'", inputs=(params,))


# ----------------------------------------------------------------------------- params files


PARAM_FILES = [
    ("bin.yaml", bytes(range(128, 256)) * 3, ["bin.yaml", "not a YAML text file"]),
    ("png.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["png.json", "not a JSON text file"]),
    ("list.yaml", b"- 1\n- 2\n", ["list.yaml", "must be a mapping", "got list"]),
    ("text.yaml", b"just some words\n", ["text.yaml", "must be a mapping", "got str"]),
    ("empty.yaml", b"", ["empty.yaml", "holds no parameters"]),
    ("empty.json", b"", ["empty.json", "invalid JSON"]),
    ("broken.yaml", b"init: [1\n", ["broken.yaml", "invalid YAML", "line 2, column 1"]),
    ("tab.yaml", b"data:\n\tfr: 30\n", ["tab.yaml", "invalid YAML", "'\\t'"]),
    ("yaml.json", b"data: {fr: 30}\n", ["yaml.json", "invalid JSON"]),
    ("params.toml", b"[data]\nfr = 30\n", ["params.toml", ".json, .yaml or .yml"]),
]


@pytest.mark.parametrize(("name", "content", "needles"), PARAM_FILES, ids=[p[0] for p in PARAM_FILES])
def test_a_params_file_that_is_not_yaml_or_json_is_refused(movie: Path, tmp_path: Path, name: str, content: bytes,
                                                           needles: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / name
    params.write_bytes(content)
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--params", str(params)], *needles, inputs=(params,))


def test_a_missing_params_file_or_a_folder_is_refused(movie: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--params", str(tmp_path / "nope.yaml")],
             "nope.yaml", "does not exist")
    (tmp_path / "folder.yaml").mkdir()
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", "--params", str(tmp_path / "folder.yaml")],
             "folder.yaml")
    with pytest.raises(ParameterError, match="is a folder"):
        Params.load(tmp_path / "folder.yaml")


# ----------------------------------------------------------------------------- options and usage


@pytest.mark.parametrize(("argv", "needles"), [
    (["--set", "min_SNR"], ["--set 'min_SNR'", "expected KEY=VALUE"]),
    (["--set", "=3"], ["--set '=3'", "expected KEY=VALUE"]),
    (["--decay-time", "0"], ["--decay-time 0", "positive number of seconds"]),
    (["--workers", "0"], ["--workers 0", "at least one worker"]),
    (["--scheduler", "bogus"], ["--scheduler 'bogus'", "not an engine"]),
    (["--from", "nowhere"], ["unknown stage 'nowhere'"]),
])
def test_bad_options_are_refused(movie: Path, tmp_path: Path, argv: list[str], needles: list[str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, movie, tmp_path / "out", ["--fr", "30", *argv], *needles)


@pytest.mark.parametrize(("argv", "needles"), [
    (["run", "__MOVIE__", "--out", "__OUT__", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["run", "__MOVIE__"], ["run: the following arguments are required: --out", "somascope run --help"]),
    (["run", "__MOVIE__", "--out", "__OUT__", "--fr", "fast"], ["run: argument --fr", "invalid float value: 'fast'"]),
    (["run", "__MOVIE__", "--out", "__OUT__", "--pw-rigid", "maybe"], ["invalid choice: 'maybe'"]),
    ([], ["the following arguments are required: COMMAND", "somascope --help"]),
    (["nosuchcommand"], ["invalid choice: 'nosuchcommand'"]),
    (["batch", "add"], ["batch add: the following arguments are required"]),
    (["simulate", "__OUT__", "--kind", "1p", "--channels", "2"], ["--channels 2", "Fix:"]),
])
def test_usage_errors_are_one_line_and_exit_2(movie: Path, tmp_path: Path, argv: list[str], needles: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [a.replace("__MOVIE__", str(movie)).replace("__OUT__", str(out)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    _one_line(capsys.readouterr().err, *needles, "Fix:")
    assert not out.exists()


# ----------------------------------------------------------------------------- every command, one policy


@pytest.mark.parametrize(("argv", "needles"), [
    (["info", "__MOVIE__", "--fr", "0"], ["--fr 0"]),
    (["summary", "__MOVIE__", "--out", "__OUT__", "--fr", "-1"], ["--fr -1"]),
    (["motion-correct", "__MOVIE__", "--out", "__OUT__", "--max-shifts", "-3", "--scheduler", "serial"],
     ["motion.max_shifts=(-3, -3)"]),
    (["simulate", "__OUT__", "--frames", "0"], ["n_frames"]),
    (["simulate", "__OUT__", "--fr", "0"], ["--fr 0"]),
    (["view", "__NONE__", "--no-browser"], ["does not exist"]),
    (["compare", "__NONE__", "__MOVIE__"], ["no such file or folder"]),
    (["register", "__NONE__", "--out", "__OUT__"], ["at least two sessions"]),
    (["register", "__NONE__", "__NONE__", "--out", "__OUT__"], ["no such run folder"]),
    (["train-classifier", "__NONE__", "--out", "__OUT__"], []),
    (["batch", "ls", "__NONE__"], ["no batch at"]),
    (["batch", "add", "__NONE__", "__MOVIE__", "--fr", "1e6"], ["--fr 1e+06"]),
    (["demo", "--out", "__OUT__", "--scheduler", "bogus"], ["--scheduler 'bogus'"]),
])
def test_every_command_follows_the_policy(movie: Path, tmp_path: Path, argv: list[str], needles: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [a.replace("__MOVIE__", str(movie)).replace("__OUT__", str(out)).replace("__NONE__", str(tmp_path / "no"))
            for a in argv]
    before = _state(movie)
    assert main([*argv, "-q"]) == 2
    _one_line(capsys.readouterr().err, *needles)
    assert not out.exists() and _state(movie) == before


# ----------------------------------------------------------------------------- faults, bugs, Ctrl-C


def test_a_bug_is_one_internal_error_line_and_debug_shows_the_traceback(
        movie: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: Any) -> int:
        return [][1]  # IndexError: list index out of range

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert main(["info", str(movie)]) == 1
    line = _one_line(capsys.readouterr().err, prefix="somascope: internal error (IndexError: list index out of range)")
    assert line.endswith("rerun with --debug for the traceback and report it")
    with pytest.raises(IndexError):
        main(["info", str(movie), "--debug"])


def test_user_errors_show_the_traceback_with_debug(movie: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="init.K"):
        main(["run", str(movie), "--out", str(tmp_path / "out"), "--fr", "30", "--set", "init.K=0", "--debug", "-q"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("code", "needles"), [
    (errno.ENOSPC, ["cannot write __OUT__: no space left on device", "Fix: free some space"]),
    (errno.EROFS, ["cannot write __OUT__: read-only file system", "Fix: choose a writable --out"]),
])
def test_a_full_or_read_only_output_disk_exits_1_and_leaves_no_partial_folder(
        tmp_path: Path, code: int, needles: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def writer(path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"II*\x00partial")  # a first block, then the disk says no
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(tifffile, "imwrite", writer)
    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--frames", "40", "--dims", "32", "32", "-q"]) == 1
    _one_line(capsys.readouterr().err, *(n.replace("__OUT__", str(out)) for n in needles))
    assert not out.exists()  # a new folder is removed: nothing that looks like a result


def test_a_run_fault_exits_1_with_its_line(movie: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fault = cli._run_fault()  # noqa: SLF001
    if fault is None:
        pytest.skip("somascope.pipeline.RunFault does not exist in this version")
    import somascope.pipeline

    message = ("the output disk is full in stage cnmf: no space left on the disk mounted at /. Kept: the finished "
               "stages motion, summary are kept in OUT/stages; rerun the same command to resume. Fix: free some space")

    def run(*args: Any, **kwargs: Any) -> None:
        raise fault(message)

    monkeypatch.setattr(somascope.pipeline, "run", run)
    assert main(["run", str(movie), "--out", str(tmp_path / "out"), "--fr", "30", "-q"]) == 1
    assert _one_line(capsys.readouterr().err) == f"somascope: error: {message}"


def test_ctrl_c_exits_130_and_says_what_was_kept(movie: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import somascope.pipeline

    out = tmp_path / "out"

    def run(movie: Any, out_dir: Any, *args: Any, **kwargs: Any) -> None:
        (Path(out_dir) / "stages" / "motion").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(somascope.pipeline, "run", run)
    assert main(["run", str(movie), "--out", str(out), "--fr", "30", "-q"]) == 130
    _one_line(capsys.readouterr().err, f"finished stages are kept in {out / 'stages'}", "rerun the same command",
              prefix="somascope: interrupted")

    def run_says(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("the finished stage motion is kept in OUT/stages; rerun the same command to resume")

    monkeypatch.setattr(somascope.pipeline, "run", run_says)
    assert main(["run", str(movie), "--out", str(out), "--fr", "30", "-q"]) == 130
    assert _one_line(capsys.readouterr().err, prefix="somascope: interrupted") == (
        "somascope: interrupted; the finished stage motion is kept in OUT/stages; rerun the same command to resume")
    with pytest.raises(KeyboardInterrupt):
        main(["run", str(movie), "--out", str(out), "--fr", "30", "-q", "--debug"])


# ----------------------------------------------------------------------------- third-party noise


def test_tifffile_log_lines_stay_off_the_console_without_debug(
        movie: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.io import MovieError

    def damaged(args: Any) -> int:
        logging.getLogger("tifffile").error("TiffPage 3: <TiffPage.asarray> corrupted tile @4096")
        raise MovieError("m.tif: is truncated or corrupt. Fix: copy the file again.")

    monkeypatch.setattr(cli, "cmd_info", damaged)
    console = logging.StreamHandler(sys.stderr)  # the console handler a real session has
    logging.getLogger().addHandler(console)
    try:
        assert main(["info", str(movie)]) == 2
        _one_line(capsys.readouterr().err, "is truncated or corrupt")
        with pytest.raises(MovieError):
            main(["info", str(movie), "--debug"])
        assert "corrupted tile" in capsys.readouterr().err  # --debug shows it
    finally:
        logging.getLogger().removeHandler(console)


def test_dask_compute_failed_tracebacks_stay_off_the_console(capfd: pytest.CaptureFixture[str]) -> None:
    """A task that fails on a worker process of a local cluster logs "Compute Failed" with its
    traceback there (on the inherited stderr); inside main() without --debug it does not."""
    from somascope.parallel import Engine

    before = os.environ.get("DASK_LOGGING")
    with cli._quiet_third_party(True):  # noqa: SLF001 - what main() wraps every command in
        with Engine("local", n_workers=1) as engine:
            with pytest.raises(ZeroDivisionError):
                engine._client.submit(operator.truediv, 1, 0).result()  # noqa: SLF001
    captured = capfd.readouterr()
    assert "Compute Failed" not in captured.err and "ZeroDivisionError" not in captured.err, captured.err
    assert os.environ.get("DASK_LOGGING") == before


def test_a_python_warning_is_one_log_line_without_debug(capsys: pytest.CaptureFixture[str],
                                                         caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning raised inside a command (e.g. ΔF/F undefined without a positive baseline)
    reaches the console as one ``somascope WARNING`` line, not a file:line header and source."""
    import warnings

    from somascope import cli

    def warn(args: Any) -> int:
        warnings.warn("baseline F0 <= 0 in trace(s) [0]: ΔF/F set to NaN there.", UserWarning, stacklevel=1)
        return 0

    parser = cli.build_parser()
    args = parser.parse_args(["info", "x.tif"])
    monkeypatch.setattr(cli, "build_parser", lambda: _ParserReturning(parser, args, warn))
    with caplog.at_level(logging.WARNING, logger="somascope"):
        assert cli.main(["info", "x.tif"]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "somascope"]
    assert said == ["baseline F0 <= 0 in trace(s) [0]: ΔF/F set to NaN there."], said
    err = capsys.readouterr().err
    assert "UserWarning" not in err and "warnings.warn" not in err, err  # no header, no source line


class _ParserReturning:
    """A parser stand-in whose parse_args returns ``args`` with ``func`` replaced."""

    def __init__(self, parser: Any, args: Any, func: Any) -> None:
        self.parser, self.args, self.func = parser, args, func

    def parse_args(self, argv: Any) -> Any:
        self.args.func = self.func
        return self.args


def test_a_closed_output_pipe_is_not_an_error(tmp_path: Path) -> None:
    """`somascope info movie.tif | head -1`: the reader closes the pipe early; no error line."""
    import subprocess
    import sys

    import tifffile

    tifffile.imwrite(tmp_path / "m.tif", np.zeros((20, 8, 8), np.uint16))
    code = (f"import sys, somascope.cli as c; sys.stdout.close = lambda: None; "
            f"sys.exit(c.main(['info', {str(tmp_path / 'm.tif')!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader went away before the writer wrote
    _, err = proc.communicate(timeout=120)
    assert b"somascope: error" not in err and b"Traceback" not in err, err
    assert proc.returncode in (0, 141)


def test_a_closed_pipe_after_the_work_keeps_the_output(tmp_path: Path) -> None:
    """A command whose reader goes away while it prints its last line (`somascope simulate … |
    head -1`) keeps what it wrote: only a failure of the work removes a new output folder."""
    from somascope.cli import _new_output_folder

    out = tmp_path / "sim"
    with pytest.raises(BrokenPipeError), _new_output_folder(out):
        (out / "movie.tif").write_bytes(b"done")
        raise BrokenPipeError
    assert (out / "movie.tif").read_bytes() == b"done"
    with pytest.raises(ValueError), _new_output_folder(tmp_path / "failed"):
        raise ValueError("the work failed")
    assert not (tmp_path / "failed").exists()
