"""The batch manager (``somascope.batch.Batch``): concurrent writers, stage sharing between items,
loading, a killed driver, a live lease, failures, removal and cleaning, samples, moving a batch,
and the errors it gives."""

from __future__ import annotations

import fcntl
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope import simulate
from somascope.batch import Batch, BatchError
from somascope.params import ParameterError

#: The grid of the stage-sharing batch; its base item sets min_SNR 2 and gSig 4, so the
#: combination (2, 4) is the base itself and is skipped.
BASE = {"quality.min_SNR": 2, "gSig": 4}
GRID = {"quality.min_SNR": [2, 3], "gSig": [3, 4]}
_DETAIL = re.compile(r"^(\d+) components, (\d+) accepted$")


@pytest.fixture(scope="module", autouse=True)
def _stub_report(_quick_report: None) -> None:
    """The HTML report is stubbed (conftest): the items' runs are what these tests are about."""


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64×64×600 two-photon movie, 10 cells, rigid motion, ImageJ TIFF at 30 Hz (raw/movie.tif)."""
    folder = tmp_path_factory.mktemp("batch-raw")
    sim = simulate.two_photon(dims=(64, 64), n_frames=600, n_cells=10, motion="rigid", max_shift=3.0, seed=1)
    path = folder / "movie.tif"
    tifffile.imwrite(path, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    return path


@pytest.fixture(scope="module")
def ran(movie: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A batch run once: an mcorr item, a cnmf item made from it (BASE) and its GRID variants.
    Read only: tests that change a batch work on a copy (:func:`_copy`)."""
    path = tmp_path_factory.mktemp("batch-ran") / "batch"
    with Batch.create(path, raw_data_root=movie.parent) as b:
        mc = b.add(movie, "mcorr", name="mc")
        cn = b.add(mc, "cnmf", BASE, name="cn")
        variants = b.add_variants(cn, GRID)
        t0 = time.perf_counter()
        df = b.run(engine="serial", progress=False)
        seconds = time.perf_counter() - t0
    return {"path": path, "mc": mc, "cn": cn, "variants": variants, "ran": df, "seconds": seconds}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _names(b: Batch) -> dict[str, str]:
    """name → uuid."""
    return {r["name"]: r["uuid"] for r in b.rows()}


def _stage_folders(batch_path: Path) -> list[Path]:
    return sorted(p for p in (batch_path / "stages").glob("*/*") if p.is_dir())


# -- 1. concurrent writers ---------------------------------------------------------------------
_ADDER = textwrap.dedent("""
    import os, sys, time
    from somascope.batch import Batch

    path, k, movie, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    b = Batch.open(path)
    open(go + f".ready{k}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(50):
        b.add(movie, "cnmf", {"quality.min_SNR": 1 + i}, name=f"p{k}-{i}")
""")


def test_concurrent_adds_from_four_processes_are_all_kept_and_every_listing_is_whole(movie: Path,
                                                                                      tmp_path: Path) -> None:
    path = tmp_path / "batch"
    script = tmp_path / "adder.py"
    script.write_text(_ADDER)
    go = tmp_path / "go"
    Batch.create(path, raw_data_root=movie.parent).close()
    logs = [tmp_path / f"adder{k}.err" for k in range(4)]
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(k), str(movie), str(go)],
                              stdout=subprocess.DEVNULL, stderr=logs[k].open("w")) for k in range(4)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.ready{k}").exists() for k in range(4)):
        for k, p in enumerate(procs):
            assert p.poll() is None, logs[k].read_text()
        assert time.monotonic() < deadline, "the adders never started"
        time.sleep(0.01)
    go.touch()  # all four add at the same time
    counts: list[int] = []
    with Batch.open(path) as b:
        while True:
            finished = all(p.poll() is not None for p in procs)
            df = b.items()  # read after the poll: the last listing sees everything
            counts.append(len(df))
            for col in ("uuid", "name", "algorithm", "params", "status", "input"):
                assert df[col].notna().all(), (col, df[df[col].isna()])
            for name, params, algo, status in zip(df["name"], df["params"], df["algorithm"], df["status"]):
                assert isinstance(params, dict) and params == {"quality.min_SNR": 1 + int(name.split("-")[1])}
                assert algo == "cnmf" and status == "queued"
            # each writer's items appear whole and in the order it added them
            for k in range(4):
                mine = [n for n in df["name"] if n.startswith(f"p{k}-")]
                assert mine == [f"p{k}-{i}" for i in range(len(mine))]
            if finished:
                break
            time.sleep(0.01)
        for k, p in enumerate(procs):
            assert p.returncode == 0, logs[k].read_text()
        final = b.items()
    assert counts == sorted(counts), "a listing had fewer items than an earlier one"
    assert len(set(counts)) > 2, f"the listings never saw the writers at work: {counts[:5]} …"
    assert len(final) == 200
    assert set(final["name"]) == {f"p{k}-{i}" for k in range(4) for i in range(50)}
    assert final["uuid"].is_unique
    assert set(final["input"]) == {"movie.tif"}  # stored relative to the raw-data root


# -- 2. stage sharing ---------------------------------------------------------------------------
def test_add_variants_skips_the_base_combination_and_params_diff_shows_the_grid_keys(ran: dict[str, Any]) -> None:
    with Batch.open(ran["path"]) as b:
        rows = {r["uuid"]: r for r in b.rows()}
        names = sorted(rows[u]["name"] for u in ran["variants"])
        assert names == ["cn [min_SNR=2, gSig=3]", "cn [min_SNR=3, gSig=3]", "cn [min_SNR=3, gSig=4]"]
        for u in ran["variants"]:  # made from the same mcorr item as the base, with the base's params
            assert rows[u]["input"] == {"item": ran["mc"]} and rows[u]["params"] == BASE
        assert set(ran["ran"]["status"]) == {"done"} and len(ran["ran"]) == 5

        cnmf = [ran["cn"], *ran["variants"]]
        diff = b.params_diff(cnmf)
        assert list(diff.columns) == ["uuid", "init.gSig", "quality.min_SNR"]
        assert list(diff["uuid"]) == cnmf
        got = {name: (float(np.max(g)), float(s)) for name, g, s in
               zip(diff.index, diff["init.gSig"], diff["quality.min_SNR"])}
        assert got == {"cn": (4, 2), "cn [min_SNR=2, gSig=3]": (3, 2), "cn [min_SNR=3, gSig=3]": (3, 3),
                       "cn [min_SNR=3, gSig=4]": (4, 3)}
        everything = b.params_diff()  # with the mcorr item: the algorithm differs too
        assert list(everything.columns) == ["uuid", "algorithm", "init.gSig", "quality.min_SNR"]


def test_add_variants_skips_the_base_combination_however_it_is_spelled(movie: Path, tmp_path: Path) -> None:
    with Batch.create(tmp_path / "batch", raw_data_root=movie.parent) as b:
        base = b.add(movie, "cnmf", {"gSig": (4, 4), "min_SNR": 2})
        added = b.add_variants(base, {"gSig": [4, 5], "quality.min_SNR": [2]})
        assert [b.item(u)["name"] for u in added] == ["movie [gSig=5, min_SNR=2]"]


def test_items_share_cnmf_where_only_quality_thresholds_differ(ran: dict[str, Any]) -> None:
    with Batch.open(ran["path"]) as b:
        by_name = {r["name"]: r for r in b.rows()}
        dirs = {n: r["stage_dirs"] for n, r in by_name.items()}
        assert set(dirs["mc"]) == {"motion", "summary"}  # mcorr stops after the summary images
        g4 = [dirs["cn"], dirs["cn [min_SNR=3, gSig=4]"]]
        g3 = [dirs["cn [min_SNR=2, gSig=3]"], dirs["cn [min_SNR=3, gSig=3]"]]
        assert g4[0]["cnmf"] == g4[1]["cnmf"] and g3[0]["cnmf"] == g3[1]["cnmf"]
        assert g4[0]["cnmf"] != g3[0]["cnmf"]
        quality = [d["quality"] for d in g4 + g3]
        assert len(set(quality)) == 4  # each item's own thresholds
        for d in dirs.values():
            for stage, rel in d.items():
                assert not Path(rel).is_absolute() and rel.startswith(f"stages/{stage}/")
                assert (b.path / rel / "manifest.json").is_file()
        # the border pixels of the mcorr item's motion reached the CNMF items' parameters
        border = int(max(b.load("mc").motion.border_pix))
        assert border > 0
        for u in (ran["cn"], *ran["variants"]):
            assert b.load(u).params.patch.border_pix == border, b.item(u)["name"]


def test_items_of_one_mcorr_item_share_one_motion_correction_store_and_summary(ran: dict[str, Any]) -> None:
    with Batch.open(ran["path"]) as b:
        rows = b.rows()
        assert len({r["stage_dirs"]["motion"] for r in rows}) == 1
        assert len({r["stage_dirs"]["summary"] for r in rows}) == 1
        mc = b.load("mc")
        for r in rows:  # the motion the border pixels came from is the motion the item ran on
            assert b.load(r["uuid"]).motion.border_pix == mc.motion.border_pix
    stores = subprocess.run(["find", str(ran["path"]), "-name", "movie.zarr"], check=True, capture_output=True,
                            text=True).stdout.split()
    assert len(stores) == 1, stores


# -- 3. load ------------------------------------------------------------------------------------
def test_load_gives_each_items_outputs(ran: dict[str, Any], movie: Path, tmp_path: Path) -> None:
    with Batch.open(ran["path"]) as b:
        for u in [ran["cn"], *ran["variants"]]:
            row = b.item(u)
            K, accepted = map(int, _DETAIL.match(row["detail"]).groups())
            out = b.load(u)
            assert out.estimates.K == K and out.estimates.accepted_indices.size == accepted
            assert out.results_path == b.item_dir(u) / "results.h5" and out.report_path is not None
            assert out.summary.corr.shape == (64, 64)
        mc = b.load(ran["mc"])
        assert mc.algorithm == "mcorr" and mc.results_path is None
        assert mc.motion.shifts.shape == (600, 2)
        assert mc.summary.mean.shape == (64, 64)
        assert tuple(mc.movie.shape) == (600, 64, 64)
        assert np.isfinite(np.asarray(mc.movie[:5])).all()
        with pytest.raises(BatchError, match="no CNMF results.*Fix:"):
            mc.estimates
    with Batch.create(tmp_path / "fresh", raw_data_root=movie.parent) as b:
        queued = b.add(movie, "cnmf")
        with pytest.raises(BatchError, match="is queued.*Fix:"):
            b.load(queued)


# -- 4 and 5. a killed driver; a live lease ----------------------------------------------------------
_SLOW_DRIVER = textwrap.dedent("""
    import sys, time
    import somascope.batch.execute as execute
    import somascope.pipeline.stages as stages

    execute.HEARTBEAT_S = 0.2  # the stage column follows quickly
    real = stages.run_cnmf

    def slow(ctx, folder):  # CNMF "runs" until the process is killed
        time.sleep(60)
        return real(ctx, folder)

    stages.run_cnmf = slow
    from somascope.batch import Batch

    Batch.open(sys.argv[1]).run(sys.argv[2], engine="serial", progress=False)
""")


def test_a_killed_driver_leaves_an_interrupted_item_that_resumes_and_a_live_lease_is_kept(
        movie: Path, tmp_path: Path) -> None:
    from somascope.batch.execute import _claim

    path = tmp_path / "batch"
    with Batch.create(path, raw_data_root=movie.parent) as b:
        u = b.add(movie, "cnmf", name="slow")
    script = tmp_path / "driver.py"
    script.write_text(_SLOW_DRIVER)
    err = tmp_path / "driver.err"
    proc = subprocess.Popen([sys.executable, str(script), str(path), u], stdout=subprocess.DEVNULL,
                            stderr=err.open("w"))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the item never reached cnmf"
            with Batch.open(path) as b:
                row = b.item(u)
            if row["status"] == "running" and (row["stage"] or "").startswith("cnmf"):
                break
            time.sleep(0.05)

        # 5. the lease is alive: opening keeps it running, another run does not take it
        with Batch.open(path) as b:
            assert b.mark_interrupted() == []
            row = b.item(u)
            assert row["status"] == "running" and row["lease"].rsplit(":", 3)[1] == str(proc.pid)
            assert b.run(u, engine="serial", progress=False).empty
            assert b.run(engine="serial", progress=False).empty
            assert _claim(b, row) is None  # the compare-and-set refuses a running item
            with pytest.raises(BatchError, match="running"):
                b.reset(u)
            with pytest.raises(BatchError, match="running"):
                b.remove(u)
            assert b.item(u)["lease"] == row["lease"] and b.item(u)["status"] == "running"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # 4. kill -9: the next open marks it interrupted; nothing looks finished that is not
    out = path / "items" / u
    with Batch.open(path) as b:
        row = b.item(u)
        assert row["status"] == "interrupted" and row["lease"] is None
        assert "stopped during stage cnmf" in row["error"] and "resumes" in row["error"]
    assert not (out / "results.h5").exists()
    partial = [p for p in _stage_folders(path) if p.name.endswith(".partial")]
    assert [p.parent.name for p in partial] == ["cnmf"]
    assert not (partial[0] / "manifest.json").exists()
    assert not partial[0].with_name(partial[0].name.removesuffix(".partial")).exists()
    for folder in _stage_folders(path):
        if not folder.name.endswith(".partial"):
            assert (folder / "manifest.json").is_file(), folder
    motion_manifest = next((path / "stages" / "motion").glob("*/manifest.json"))
    stamp = motion_manifest.stat().st_mtime_ns
    log_before = (out / "run.log").read_text()
    assert "[1/9] motion …" in log_before  # the killed run computed the motion correction itself

    with Batch.open(path) as b:
        ran = b.run(engine="serial", progress=False)
        assert list(ran["uuid"]) == [u]
        row = b.item(u)
        assert row["status"] == "done" and row["error"] is None and row["lease"] is None
        assert _DETAIL.match(row["detail"])
        assert b.load(u).estimates.K == int(_DETAIL.match(row["detail"]).group(1))
    assert (out / "results.h5").is_file()
    resumed = (out / "run.log").read_text()[len(log_before):]
    for stage in ("motion", "summary", "background"):
        assert f"{stage}: reused" in resumed, stage
    assert "cnmf …" in resumed
    assert motion_manifest.stat().st_mtime_ns == stamp
    assert not [p for p in _stage_folders(path) if p.name.endswith(".partial")]


# -- 6. failures ------------------------------------------------------------------------------------
def test_a_failing_item_is_marked_failed_the_others_run_and_reset_queues_it(ran: dict[str, Any], movie: Path,
                                                                            tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import somascope.pipeline.stages as stages

    path = _copy(ran["path"], tmp_path / "batch")
    gone = tmp_path / "elsewhere" / "gone.tif"
    gone.parent.mkdir()
    shutil.copyfile(movie, gone)
    real = stages.run_quality

    def broken(ctx: Any, folder: Path) -> Any:
        if ctx.params.quality.min_SNR == 4:
            raise RuntimeError("simulated crash in the quality tests")
        return real(ctx, folder)

    monkeypatch.setattr(stages, "run_quality", broken)
    with Batch.open(path) as b:
        bad = b.add("mc", "cnmf", {"quality.min_SNR": 4, "gSig": 4}, name="crashes")
        lost = b.add(gone, "cnmf", name="movie gone")
        good = b.add("mc", "cnmf", {"quality.min_SNR": 5, "gSig": 4}, name="fine")
        gone.unlink()  # valid when added, missing when run
        ran_now = b.run(engine="serial", progress=False)
        assert list(ran_now["uuid"]) == [bad, lost, good]
        assert list(ran_now["status"]) == ["failed", "failed", "done"]
        row = b.item(bad)
        assert row["error"] == "RuntimeError: simulated crash in the quality tests"
        assert "Traceback" in row["traceback"]
        assert "RuntimeError: simulated crash in the quality tests" in row["traceback"]
        assert row["lease"] is None and row["finished"] is not None
        row = b.item(lost)
        assert "\n" not in row["error"] and "gone.tif" in row["error"] and row["traceback"]
        assert (b.item_dir(good) / "results.h5").is_file() and not (b.item_dir(bad) / "results.h5").exists()
        with pytest.raises(BatchError, match="is failed.*its error: RuntimeError"):
            b.load(bad)

        assert b.reset(bad) == [bad]
        row = b.item(bad)
        assert row["status"] == "queued" and row["error"] is None and row["traceback"] is None
        monkeypatch.setattr(stages, "run_quality", real)
        assert list(b.run(engine="serial", progress=False)["uuid"]) == [bad]  # the other failure stays failed
        assert b.item(bad)["status"] == "done" and b.item(lost)["status"] == "failed"


# -- 7. remove and clean -----------------------------------------------------------------------------
def test_remove_deletes_only_what_no_other_item_uses_and_clean_spares_a_locked_stage(ran: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    path = _copy(ran["path"], tmp_path / "batch")
    with Batch.open(path) as b:
        names = _names(b)
        victim = b.item("cn [min_SNR=3, gSig=3]")
        others = {rel for r in b.rows() if r["uuid"] != victim["uuid"] for rel in r["stage_dirs"].values()}
        own = {stage: path / rel for stage, rel in victim["stage_dirs"].items() if rel not in others}
        shared = [path / rel for rel in victim["stage_dirs"].values() if rel in others]
        assert set(own) == {"quality", "refit", "traces"}
        assert {Path(s).parent.name for s in shared} >= {"motion", "summary", "cnmf"}

        # an mcorr item other items read cannot go alone
        n = len(b.rows())
        with pytest.raises(BatchError, match=r"output of an item being removed.*Fix:"):
            b.remove(names["mc"])
        assert len(b.rows()) == n and (path / "items" / names["mc"]).is_dir()

        # a run holding the traces stage (shared lock) keeps it through remove
        lock = open(own["traces"].with_name(own["traces"].name + ".lock"), "a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
            assert b.remove(victim["uuid"]) == [victim["uuid"]]
            assert not b.item_dir(victim["uuid"]).exists()
            assert not own["quality"].exists() and not own["refit"].exists()
            assert own["traces"].is_dir()
            assert all(s.is_dir() for s in shared)
            assert b.clean() == []
            assert own["traces"].is_dir()
        finally:
            lock.close()
        assert b.clean() == [own["traces"]]
        assert not own["traces"].exists()
        # every item left still loads
        for r in b.rows():
            assert all((path / rel / "manifest.json").is_file() for rel in r["stage_dirs"].values())
        assert b.load("cn [min_SNR=2, gSig=3]").estimates.K > 0


# -- 8. samples ------------------------------------------------------------------------------------------
def test_promoted_samples_keep_their_tags_and_outlive_the_item(ran: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(ran["path"], tmp_path / "batch")
    with Batch.open(path) as b:
        K = b.load("cn").estimates.K
        dest = b.promote("cn", "m1-day3", tags={"animal": "m1", "session": 3, "condition": "saline"},
                         comments="curated")
        assert dest == path / "samples" / "m1-day3" / "results.h5" and dest.is_file()
        df = b.samples()
        assert {"name", "item", "item_name", "animal", "session", "condition", "comments", "created",
                "path"} <= set(df.columns)
        s = df.iloc[0]
        assert (s["name"], s["item"], s["item_name"], s["animal"], s["session"], s["condition"]) == (
            "m1-day3", ran["cn"], "cn", "m1", 3, "saline")
        with pytest.raises(BatchError, match="exists.*Fix:"):
            b.promote("cn [min_SNR=3, gSig=4]", "m1-day3")
        with pytest.raises(BatchError, match="no CNMF results.*Fix:"):
            b.promote("mc", "mc-sample")
        assert len(b.samples()) == 1

        b.remove("cn")
        assert not b.item_dir(ran["cn"]).exists()
        assert dest.is_file()
        from somascope.cnmf.estimates import Estimates

        assert Estimates.load(dest).K == K
        s = b.samples().iloc[0]
        assert s["name"] == "m1-day3" and s["item"] == ran["cn"] and s["item_name"] is None


# -- 9. moving a batch ---------------------------------------------------------------------------------
def test_a_moved_batch_finds_its_movie_under_a_new_root_and_loads(ran: dict[str, Any], movie: Path,
                                                                   tmp_path: Path) -> None:
    first = _copy(ran["path"], tmp_path / "first")
    moved = tmp_path / "other-computer"
    path = _copy(first, moved / "batch")
    shutil.rmtree(first)  # the copy cannot be reading from the folder it came from
    raw = moved / "raw"
    raw.mkdir()
    shutil.copy2(movie, raw / "movie.tif")
    with Batch.open(path, raw_data_root=raw) as b:
        assert b.raw_data_root == raw
        for r in b.rows():
            assert b.movie_path(r) == raw / "movie.tif"
            assert all(not Path(rel).is_absolute() for rel in r["stage_dirs"].values())
        out = b.load("cn")
        assert out.out == path / "items" / ran["cn"]
        assert all(str(d).startswith(str(path)) for d in out.stage_dirs.values())
        assert out.estimates.K == int(_DETAIL.match(b.item("cn")["detail"]).group(1))
        assert tuple(b.load("mc").movie.shape) == (600, 64, 64)
        assert b.add("movie.tif", "mcorr", name="again") and b.item("again")["input"] == {"movie": "movie.tif"}
    with Batch.open(path) as b:  # without the override: the stored root
        assert b.raw_data_root == movie.parent


def test_a_moved_batch_reuses_the_stages_computed_before_the_move(ran: dict[str, Any], movie: Path,
                                                                  tmp_path: Path) -> None:
    path = _copy(ran["path"], tmp_path / "other-computer" / "batch")
    raw = tmp_path / "other-computer" / "raw"
    raw.mkdir()
    shutil.copy2(movie, raw / "movie.tif")  # same bytes, same modification time
    with Batch.open(path, raw_data_root=raw) as b:
        before = b.item("mc")["stage_dirs"]
        log = b.item_dir(ran["mc"]) / "run.log"
        n = len(log.read_text())
        b.reset("mc")
        b.run("mc", engine="serial", progress=False)
        assert b.item("mc")["status"] == "done"
        again = log.read_text()[n:]
        assert "motion: reused" in again and "summary: reused" in again
        assert b.item("mc")["stage_dirs"] == before
    assert len(list(path.rglob("movie.zarr"))) == 1


# -- 10. errors ----------------------------------------------------------------------------------------
def test_errors_say_what_to_do(movie: Path, tmp_path: Path) -> None:
    path = tmp_path / "batch"
    with Batch.create(path, raw_data_root=movie.parent) as b:
        with pytest.raises(BatchError, match=r"unknown algorithm 'suite2p'.*Fix:"):
            b.add(movie, "suite2p")
        with pytest.raises(BatchError, match=r"not found.*Fix:"):
            b.add(tmp_path / "missing.tif", "cnmf")
        with pytest.raises(BatchError, match=r"not found \(under the raw-data root.*Fix:"):
            b.add("missing.tif", "cnmf")
        with pytest.raises(ParameterError, match=r"unknown parameter 'min_SNRR'\. Did you mean 'min_SNR'"):
            b.add(movie, "cnmf", {"min_SNRR": 3})
        assert b.rows() == []  # nothing refused was added
        u = b.add(movie, "mcorr")
        with pytest.raises(ParameterError):
            b.add_variants(u, {"min_SNRR": [2, 3]})
        with pytest.raises(BatchError, match=r"not a list.*Fix:"):
            b.add_variants(u, {"quality.min_SNR": 3})
        with pytest.raises(BatchError, match=r"cannot be the input.*Fix:"):
            b.add(u, "mcorr")
        for ref in ("nonexistent", "ffffffff"):
            with pytest.raises(BatchError, match=r"no item .*Fix:"):
                b.item(ref)
        with pytest.raises(BatchError, match=r"no item at position 7: the batch has 1 items"):
            b.item(7)
        with pytest.raises(BatchError, match=r"no item 'nonexistent'.*Fix:"):
            b.load("nonexistent")
        assert len(b.rows()) == 1
    with pytest.raises(BatchError, match=r"already holds a batch.*Fix:"):
        Batch.create(path)
    with Batch.create(path, exist_ok=True) as b:  # exist_ok opens it
        assert len(b.rows()) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match=r"no batch at .*Fix:"):
        Batch.open(tmp_path / "empty")
    with pytest.raises(BatchError, match=r"no batch at .*Fix:"):
        Batch.open(tmp_path / "nowhere")
