"""``somascope batch …``: the batch manager's command line, on a tiny simulated movie.

One batch (an mcorr item, a cnmf item made from it, two quality variants) is built and run once
per module with the serial engine; tests that change a batch work on a copy of its folder.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope import simulate
from somascope.batch import Batch
from somascope.cli import main
from somascope.cli_batch import _parse_grid


def _cli(*argv: Any) -> tuple[int, str, str]:
    """``main(argv)`` → (exit code, stdout, stderr), for the module fixture (no capsys there)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("somascope: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw-data root with a 64×64×600 two-photon movie (10 cells, rigid motion), ImageJ TIFF at 30 Hz."""
    folder = tmp_path_factory.mktemp("batch-raw")
    sim = simulate.two_photon(dims=(64, 64), n_frames=600, n_cells=10, motion="rigid", max_shift=3.0, seed=1)
    tifffile.imwrite(folder / "movie.tif", np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    return folder


@pytest.fixture(scope="module")
def ran(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """create → add mcorr → add cnmf from it → grid → ls (queued) → run → ls (done), once."""
    batch = tmp_path_factory.mktemp("batch") / "b"
    steps: dict[str, Any] = {"batch": batch, "raw": raw}
    code, out, _ = _cli("batch", "create", batch, "--raw-data-root", raw)
    assert code == 0 and str(batch) in out
    code, out, _ = _cli("batch", "add", batch, "movie.tif", "--algo", "mcorr", "--radius", "5", "--fr", "30",
                        "--name", "mc", "--comment", "first try")
    assert code == 0
    steps["mcorr"] = out.strip()
    code, out, _ = _cli("batch", "add", batch, "mc", "--set", "merge.merge_thr=0.8", "--name", "base")
    assert code == 0
    steps["cnmf"] = out.strip()
    steps["grid"] = _cli("batch", "grid", batch, "base", "quality.min_SNR=2,3")
    steps["ls_before"] = _cli("batch", "ls", batch)
    steps["run"] = _cli("batch", "run", batch, "--scheduler", "serial", "-q")
    steps["ls_after"] = _cli("batch", "ls", batch)
    return steps


def _copy(ran: dict[str, Any], tmp_path: Path) -> Path:
    dest = tmp_path / "b"
    shutil.copytree(ran["batch"], dest)
    return dest


def test_add_prints_uuids_and_stores_params(ran: dict[str, Any]) -> None:
    uuid_re = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    assert uuid_re.match(ran["mcorr"]) and uuid_re.match(ran["cnmf"])
    with Batch.open(ran["batch"]) as batch:
        mc, base = batch.item(ran["mcorr"]), batch.item(ran["cnmf"])
    assert mc["params"] == {"data.neuron_radius": 5.0, "data.fr": 30.0}
    assert mc["input"] == {"movie": "movie.tif"}  # relative to the raw-data root
    assert mc["comments"] == "first try"
    assert base["input"] == {"item": ran["mcorr"]} and base["params"] == {"merge.merge_thr": 0.8}


def test_grid_then_ls_queued_then_run_then_ls_done(ran: dict[str, Any]) -> None:
    code, out, _ = ran["grid"]
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "base [min_SNR=2]" in lines[0] and "base [min_SNR=3]" in lines[1]

    code, out, _ = ran["ls_before"]
    assert code == 0
    rows = out.strip().splitlines()
    assert rows[0].split()[:4] == ["uuid", "name", "algorithm", "status"]
    assert len(rows) == 5 and all(" queued" in r for r in rows[1:])
    assert ran["mcorr"][:8] in out and ran["mcorr"] not in out  # short uuids

    code, out, _ = ran["run"]
    assert code == 0, out
    assert "ran 4 items: 4 done, 0 failed" in out

    code, out, _ = ran["ls_after"]
    assert code == 0
    rows = out.strip().splitlines()[1:]
    assert len(rows) == 4 and all(" done " in r for r in rows)
    assert "components" in out and "accepted" in out


def test_status_counts(ran: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "batch", "status", ran["batch"])
    assert code == 0
    assert re.search(r"done\s+4", out) and re.search(r"queued\s+0", out) and "4 items" in out


def test_diff_prints_only_the_varied_keys(ran: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "batch", "diff", ran["batch"], "base", "base [min_SNR=2]", "base [min_SNR=3]")
    assert code == 0
    assert "quality.min_SNR" in out
    # equal across the three (own or inherited from the mcorr item): not printed
    for same in ("merge_thr", "neuron_radius", "data.fr", "algorithm"):
        assert same not in out
    assert "default" in out  # base does not set min_SNR
    # the whole batch: the algorithm and merge_thr vary too (the mcorr item is no cnmf, sets no merge_thr)
    code, out, _ = _run(capsys, "batch", "diff", ran["batch"])
    assert code == 0 and "algorithm" in out and "merge.merge_thr" in out and "neuron_radius" not in out


def test_show_prints_params_stage_folders_and_outputs(ran: dict[str, Any],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    batch = ran["batch"]
    code, out, _ = _run(capsys, "batch", "show", batch, "base [min_SNR=3]")
    assert code == 0
    assert "status" in out and "done" in out and "peak memory" in out and "MiB" in out
    assert "data.neuron_radius: 5.0" in out  # inherited from the mcorr item
    assert "merge.merge_thr: 0.8" in out and "quality.min_SNR: 3" in out
    assert "stage folders:" in out
    for stage in ("motion", "summary", "cnmf", "quality", "traces"):
        assert re.search(rf"^  {stage}\s+{re.escape(str(batch / 'stages' / stage))}/\w+$", out, re.M), stage
    assert "results.h5" in out and "versions: somascope" in out
    code, out, _ = _run(capsys, "batch", "show", batch, ran["mcorr"][:6])  # a uuid prefix
    assert code == 0 and "mcorr" in out and str(ran["raw"] / "movie.tif") in out


def test_sample_and_samples(ran: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = _copy(ran, tmp_path)
    code, out, _ = _run(capsys, "batch", "samples", batch)
    assert code == 0 and "no samples" in out
    code, out, _ = _run(capsys, "batch", "sample", batch, "base", "m12-day3", "--tag", "animal=m12",
                        "--tag", "session=3", "--comment", "looks good")
    assert code == 0 and (batch / "samples" / "m12-day3" / "results.h5").is_file()
    code, out, _ = _run(capsys, "batch", "samples", batch)
    assert code == 0
    header, row = out.strip().splitlines()
    assert "animal" in header and "session" in header
    assert "m12-day3" in row and "m12" in row and "looks good" in row and ran["cnmf"][:8] in row
    code, _, err = _run(capsys, "batch", "sample", batch, "mc", "x")  # an mcorr item has no CNMF results
    assert code == 2
    _one_line_error(err, "Fix:")


def test_rm_refused_for_an_input_then_variant_removed_and_clean(ran: dict[str, Any], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    batch = _copy(ran, tmp_path)
    code, _, err = _run(capsys, "batch", "rm", batch, "mc")
    assert code != 0
    _one_line_error(err, "read", "Fix: remove")
    with Batch.open(batch) as b:
        assert len(b.rows()) == 4
        variant, base = b.item("base [min_SNR=3]"), b.item("base")
    own = {k: batch / v for k, v in variant["stage_dirs"].items() if v not in base["stage_dirs"].values()}
    shared = {k: batch / v for k, v in variant["stage_dirs"].items() if v in base["stage_dirs"].values()}
    assert {"quality", "traces"} <= set(own) and {"motion", "summary", "cnmf"} <= set(shared)

    code, out, _ = _run(capsys, "batch", "rm", batch, "base [min_SNR=3]")
    assert code == 0
    assert f"removed {variant['uuid'][:8]}" in out and "freed" in out
    assert not any(p.exists() for p in own.values()) and all(p.is_dir() for p in shared.values())
    assert not (batch / "items" / variant["uuid"]).exists()

    code, out, _ = _run(capsys, "batch", "clean", batch)  # nothing left over
    assert code == 0 and "no stage folder to remove" in out
    orphan = batch / "stages" / "cnmf" / "0123456789abcdef0123"
    orphan.mkdir()
    (orphan / "data.bin").write_bytes(b"\0" * 300_000)
    code, out, _ = _run(capsys, "batch", "clean", batch)
    assert code == 0 and "stages/cnmf/0123456789abcdef0123" in out and "freed 0.3 MiB" in out
    assert not orphan.exists() and all(p.is_dir() for p in shared.values())


def test_reset(ran: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = _copy(ran, tmp_path)
    code, out, _ = _run(capsys, "batch", "reset", batch)  # no failed or interrupted item
    assert code == 0 and "no failed or interrupted item" in out
    code, out, _ = _run(capsys, "batch", "reset", batch, "base")
    assert code == 0 and f"queued {ran['cnmf'][:8]} base" in out
    with Batch.open(batch) as b:
        assert [r["status"] for r in b.rows()] == ["done", "queued", "done", "done"]
    code, out, _ = _run(capsys, "batch", "ls", batch)
    assert re.search(r"base\s+cnmf\s+queued\s*$", out, re.M)  # no stale seconds/detail
    code, out, _ = _run(capsys, "batch", "reset", batch, "--all")
    assert code == 0 and out.count("queued ") == 4


def test_export_writes_nwb(ran: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pynwb")
    batch = _copy(ran, tmp_path)
    meta = tmp_path / "meta.yaml"
    meta.write_text("subject_id: m12\nspecies: Mus musculus\nsex: F\nage: P90D\n"
                    "session_start_time: '2024-05-01T10:30:00+02:00'\n")
    code, out, _ = _run(capsys, "batch", "export", batch, "base [min_SNR=2]", "--nwb-metadata", meta, "-q")
    assert code == 0
    path = Path(out.strip().removeprefix("wrote "))
    assert path.name == "results.nwb" and path.is_file() and path.parent.parent == batch / "items"
    code, _, err = _run(capsys, "batch", "export", batch, "mc")
    assert code == 2
    _one_line_error(err, "Fix:")


def test_run_exits_1_and_names_the_failed_item(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b"
    gone = tmp_path / "gone.tif"
    shutil.copyfile(raw / "movie.tif", gone)
    assert _run(capsys, "batch", "create", batch)[0] == 0
    code, out, _ = _run(capsys, "batch", "add", batch, gone, "--name", "doomed")
    assert code == 0
    gone.unlink()  # the movie disappears before the run
    code, out, _ = _run(capsys, "batch", "run", batch, "--scheduler", "serial", "-q")
    assert code == 1
    assert "1 failed" in out and re.search(r"^failed \w{8} doomed: ", out, re.M)
    code, out, _ = _run(capsys, "batch", "show", batch, "doomed")
    assert code == 0 and "status" in out and "failed" in out and "traceback:" in out
    code, out, _ = _run(capsys, "batch", "ls", batch)
    assert "failed" in out
    code, out, _ = _run(capsys, "batch", "run", batch, "--scheduler", "serial", "-q")
    assert code == 0 and "nothing to run" in out


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["add", "__B__", "movie.tif", "--algo", "bogus"], ["unknown algorithm 'bogus'", "Fix: use one of mcorr"]),
        (["add", "__B__", "movie.tif", "--set", "nosuch_param=3"], ["unknown parameter 'nosuch_param'"]),
        (["add", "__B__", "movie.tif", "--set", "min_SNR"], ["expected KEY=VALUE"]),
        (["add", "__B__", "no-such-movie.tif"], ["not found", "Fix:"]),
        (["show", "__B__", "zzzzzz"], ["no item 'zzzzzz'", "Fix: use a uuid"]),
        (["rm", "__B__", "zzzzzz"], ["no item 'zzzzzz'"]),
        (["grid", "__B__", "base", "quality.min_SNR"], ["expected KEY=V1,V2"]),
        (["grid", "__B__", "base", "nosuch_param=1,2"], ["unknown parameter"]),
        (["ls", "__NOBATCH__"], ["no batch at", "Fix:", "somascope batch create"]),
        (["run", "__NOBATCH__"], ["no batch at"]),
        (["create", "__B__"], ["already holds a batch", "Fix:"]),
        (["run", "__B__", "--scheduler", "slurm", "--cluster-config", "__B__/none.yaml"], ["none.yaml"]),
    ],
)
def test_errors_are_one_line_with_the_fix(ran: dict[str, Any], tmp_path: Path, argv: list[str],
                                          needles: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    batch = _copy(ran, tmp_path)
    argv = [a.replace("__B__", str(batch)).replace("__NOBATCH__", str(tmp_path / "nothing")) for a in argv]
    with Batch.open(batch) as b:
        before = [(r["uuid"], r["status"]) for r in b.rows()]
    code, out, err = _run(capsys, "batch", *argv)
    assert code == 2, (out, err)
    _one_line_error(err, *needles)
    with Batch.open(batch) as b:
        assert [(r["uuid"], r["status"]) for r in b.rows()] == before  # nothing added, removed or run


def test_parse_grid_values() -> None:
    assert _parse_grid(["gSig=3,4"]) == {"gSig": [3, 4]}
    assert _parse_grid(["min_SNR=2,2.5,3"]) == {"min_SNR": [2, 2.5, 3]}
    assert _parse_grid(["gSig=[3,3],[4, 4]", "method_init=greedy_roi,'corr,pnr'"]) == {
        "gSig": [[3, 3], [4, 4]], "method_init": ["greedy_roi", "corr,pnr"]}
    assert _parse_grid(["gSig=[3,3]"]) == {"gSig": [[3, 3]]}
    for bad in ("gSig", "=3,4", "gSig=", "gSig=3,,4"):
        with pytest.raises(ValueError, match="grid"):
            _parse_grid([bad])


def test_grid_of_two_keys_without_running(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b"
    assert _run(capsys, "batch", "create", batch, "--raw-data-root", raw)[0] == 0
    code, out, _ = _run(capsys, "batch", "add", batch, "movie.tif", "--set", "gSig=[3,3]", "--set", "min_SNR=2")
    assert code == 0
    code, out, _ = _run(capsys, "batch", "grid", batch, "movie", "gSig=[3,3],[4,4]", "min_SNR=2,2.5")
    assert code == 0
    names = [line.split("  ", 1)[1] for line in out.strip().splitlines()]
    assert len(names) == 3  # the combination equal to the item's own values is skipped
    assert "movie [gSig=4x4, min_SNR=2.5]" in names
    with Batch.open(batch) as b:
        variants = [r["variant"] for r in b.rows()[1:]]
    assert {"init.gSig": [4, 4], "quality.min_SNR": 2.5} in variants
    code, out, _ = _run(capsys, "batch", "grid", batch, "movie", "gSig=[3,3]", "min_SNR=2")
    assert code == 0 and "no new item" in out


def test_root_shows_and_sets(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b"
    assert _run(capsys, "batch", "create", batch)[0] == 0
    code, out, _ = _run(capsys, "batch", "root", batch)
    assert code == 0 and "none" in out
    code, out, _ = _run(capsys, "batch", "root", batch, raw)
    assert code == 0 and str(raw) in out
    code, out, _ = _run(capsys, "batch", "add", batch, "movie.tif", "--algo", "mcorr")
    assert code == 0
    code, _, err = _run(capsys, "batch", "root", batch, tmp_path / "missing")
    assert code == 2
    _one_line_error(err, "no such folder")


def test_import_mesmerize(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("somascope.batch.mesmerize")
    mm_dir = tmp_path / "mesmerize"
    mcorr, cnmf = "0b3c1f2e-4d5a-4b6c-8d7e-9f0a1b2c3d4e", "1c4d2e3f-5e6b-4c7d-9e8f-0a1b2c3d4e5f"
    mmap = f"{mcorr}/{mcorr}-movie_els__d1_64_d2_64_d3_1_order_F_frames_600.mmap"
    (mm_dir / mmap).parent.mkdir(parents=True)
    (mm_dir / mmap).write_bytes(b"")
    columns = ["algo", "item_name", "input_movie_path", "params", "outputs", "added_time", "ran_time",
               "algo_duration", "comments", "uuid"]
    df = pd.DataFrame(columns=columns)
    df.loc[0] = pd.Series({"algo": "mcorr", "item_name": "session1", "input_movie_path": "movie.tif",
                           "params": {"main": {"max_shifts": [6, 6], "pw_rigid": False}},
                           "outputs": {"mcorr-output-path": mmap, "success": True, "traceback": None},
                           "added_time": "2024-03-01T10:00:00", "ran_time": None, "algo_duration": None,
                           "comments": None, "uuid": mcorr})
    df.loc[1] = pd.Series({"algo": "cnmf", "item_name": "session1", "input_movie_path": mmap,
                           "params": {"main": {"fr": 30, "gSig": [4, 4], "min_SNR": 2.0}},
                           "outputs": None, "added_time": "2024-03-01T10:00:00", "ran_time": None,
                           "algo_duration": None, "comments": "K=4", "uuid": cnmf})
    pickle_path = mm_dir / "batch.pickle"
    df.to_pickle(pickle_path)

    batch = tmp_path / "b"
    assert _run(capsys, "batch", "create", batch, "--raw-data-root", raw)[0] == 0
    code, out, err = _run(capsys, "batch", "import-mesmerize", batch, pickle_path)
    assert code == 0, err
    assert f"imported {mcorr[:8]} session1 (mcorr)" in out and f"imported {cnmf[:8]} session1 (cnmf)" in out
    assert "2 items queued" in out
    with Batch.open(batch) as b:
        assert b.item(cnmf)["input"] == {"item": mcorr} and b.item(cnmf)["comments"] == "K=4"
    code, _, err = _run(capsys, "batch", "import-mesmerize", batch, pickle_path)  # the same items again
    assert code == 2
    _one_line_error(err, "already in this batch", "Fix:")

    (tmp_path / "junk.pickle").write_bytes(b"not a pickle at all")
    code, _, err = _run(capsys, "batch", "import-mesmerize", batch, tmp_path / "junk.pickle")
    assert code == 2
    _one_line_error(err, "junk.pickle")
    code, _, err = _run(capsys, "batch", "import-mesmerize", batch, tmp_path / "missing.pickle")
    assert code == 2
    _one_line_error(err, "missing.pickle")


def test_batch_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("create", "root", "add", "grid", "ls", "status", "run", "show", "diff", "rm", "reset", "clean",
                 "export", "import-mesmerize", "sample", "samples"):
        assert re.search(rf"^\s+{name}\s", out, re.M), name


def test_add_with_a_params_file_and_overrides(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b"
    params = tmp_path / "params.yaml"
    params.write_text("quality:\n  min_SNR: 2.5\nmerge_thr: 0.85\n")
    assert _run(capsys, "batch", "create", batch, "--raw-data-root", raw)[0] == 0
    code, out, _ = _run(capsys, "batch", "add", batch, "movie.tif", "--params", params, "--decay-time", "0.6")
    assert code == 0
    first = out.strip()
    code, out, _ = _run(capsys, "batch", "add", batch, "movie.tif", "--params", params,
                        "--set", "quality.min_SNR=3", "--name", "override")
    assert code == 0
    with Batch.open(batch) as b:
        assert b.item(first)["params"] == {"quality": {"min_SNR": 2.5}, "merge_thr": 0.85, "data.decay_time": 0.6}
        assert b.item("override")["params"] == {"quality.min_SNR": 3, "merge.merge_thr": 0.85}
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_SRN: 2\n")
    code, _, err = _run(capsys, "batch", "add", batch, "movie.tif", "--params", bad)
    assert code == 2
    _one_line_error(err, "bad.yaml", "min_SRN", "Did you mean")


def test_status_shows_a_running_item_with_its_stage_and_heartbeat(ran: dict[str, Any], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from somascope.batch import db
    from somascope.batch.execute import new_lease

    batch = _copy(ran, tmp_path)
    with Batch.open(batch) as b:  # as if this process were running it
        db.update_item(b._con, ran["cnmf"], {"status": "running", "lease": new_lease(), "stage": "cnmf (4/8)",
                                             "heartbeat": time.time() - 7})
    code, out, _ = _run(capsys, "batch", "status", batch)
    assert code == 0
    assert re.search(r"running\s+1", out) and re.search(r"done\s+3", out)
    assert re.search(rf"^running {ran['cnmf'][:8]} base: stage cnmf \(4/8\), heartbeat [7-9] s ago$", out, re.M)
    code, out, _ = _run(capsys, "batch", "ls", batch)
    assert re.search(r"base\s+cnmf\s+running\s+cnmf \(4/8\)", out)
