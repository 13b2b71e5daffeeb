"""Manual curation (``somascope.curation``): decisions and notes, the curated split, undo,
re-application to new components by footprint support, the results file rewritten with the
split and a ``/curation`` group (the previous one kept), and the pipeline's ``results`` stage
re-applying ``OUT/curation.json`` when the quality stage runs again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import tifffile

from somascope import simulate
from somascope.cnmf.estimates import Estimates
from somascope.pipeline import load_results, run
from somascope import curation as cur

DIMS = (32, 32)


def _disk(cy: float, cx: float, r: float = 3.0, dims: tuple[int, int] = DIMS) -> np.ndarray:
    yy, xx = np.mgrid[:dims[0], :dims[1]]
    return np.clip(1.0 - np.hypot(yy - cy, xx - cx) / (r + 1), 0, None).ravel()


def _A(centres: list[tuple[float, float]]) -> sp.csc_matrix:
    return sp.csc_matrix(np.column_stack([_disk(cy, cx) for cy, cx in centres]))


CENTRES = [(6, 6), (6, 20), (16, 12), (25, 6), (25, 25)]


@pytest.fixture()
def est() -> Estimates:
    """Five disks; the automatic split accepts 0, 1, 2."""
    rng = np.random.default_rng(0)
    C = rng.random((5, 40)).astype(np.float32)
    return Estimates(A=_A(CENTRES), dims=DIMS, C=C, YrA=0.1 * C, idx_components=np.array([0, 1, 2]),
                     idx_components_bad=np.array([3, 4]), frame_rate=10.0)


# -- decisions, split, undo ---------------------------------------------------------------------
def test_change_records_decisions_with_their_pixels_and_gives_the_curated_split(est: Estimates) -> None:
    s = cur.change(cur.new_state(), est.A, accept=[4], reject=[1], notes={"2": "dendrite?"}, who="ana")
    assert cur.manual_decisions(s) == {4: "accept", 1: "reject"}
    assert cur.note_texts(s) == {2: "dendrite?"}
    support = cur.supports(est.A)
    assert s["decisions"]["4"]["pixels"] == support.indices[support.indptr[4]:support.indptr[5]].tolist()
    assert s["decisions"]["1"]["who"] == "ana" and s["decisions"]["1"]["when"].endswith("+00:00")
    good, bad = cur.curated_split(est.idx_components, est.K, s)
    assert good.tolist() == [0, 2, 4] and bad.tolist() == [1, 3]
    entry = s["log"][-1]
    assert entry["action"] == "curate" and entry["components"] == [1, 2, 4] and entry["who"] == "ana"
    assert entry["before"]["4"] == {"decision": None, "note": None}
    # reset: back to the automatic decision; one action, one log entry
    s2 = cur.change(s, est.A, reset=[1])
    assert cur.manual_decisions(s2) == {4: "accept"} and s2["log"][-1]["action"] == "reset"
    assert cur.curated_split(est.idx_components, est.K, s2)[0].tolist() == [0, 1, 2, 4]
    # no automatic split (idx_components None): all accepted unless rejected by hand
    assert cur.curated_split(None, 5, s)[1].tolist() == [1]
    # an empty note removes it
    assert cur.note_texts(cur.change(s, est.A, notes={"2": ""})) == {}
    # the state given is never changed
    assert cur.manual_decisions(s) == {4: "accept", 1: "reject"}


def test_undo_puts_back_each_change_in_turn_and_says_when_there_is_nothing_left(est: Estimates) -> None:
    s1 = cur.change(cur.new_state(), est.A, reject=[0], who="a")
    s2 = cur.change(s1, est.A, accept=[0, 3], notes={"3": "bright"}, who="b")
    u1 = cur.undo(s2, who="c")
    assert cur.manual_decisions(u1) == {0: "reject"} and cur.note_texts(u1) == {}
    assert u1["decisions"]["0"] == s1["decisions"]["0"]  # who/when/pixels of the earlier decision come back
    assert u1["log"][-1] == {**u1["log"][-1], "action": "undo", "undoes": 1, "who": "c"}
    u2 = cur.undo(u1)
    assert cur.manual_decisions(u2) == {} and len(u2["log"]) == 4
    with pytest.raises(cur.CurationError, match="nothing to undo"):
        cur.undo(u2)


@pytest.mark.parametrize("kwargs, message", [
    ({"accept": [5]}, "component 5 in 'accept' does not exist: there are K=5"),
    ({"accept": [1], "reject": [1]}, "more than one of accept/reject/reset"),
    ({"reject": ["x"]}, "not a component index"),
    ({"reject": 3}, "must be a list"),
    ({}, "nothing to do"),
    ({"notes": {"9": "x"}}, "component 9 in 'notes' does not exist"),
])
def test_invalid_requests_name_the_problem(est: Estimates, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(cur.CurationError, match=message.replace("(", r"\(").replace("/", ".")):
        cur.change(cur.new_state(), est.A, **kwargs)


def test_curation_file_round_trip_and_refusals(tmp_path: Path, est: Estimates) -> None:
    path = tmp_path / "curation.json"
    assert cur.load_curation(path) == cur.new_state()
    s = cur.change(cur.new_state(), est.A, reject=[2])
    cur.save_curation(path, s)
    assert cur.load_curation(path) == s and not list(tmp_path.glob(".*partial*"))
    path.write_text("{not json")
    with pytest.raises(cur.CurationError, match="not readable JSON"):
        cur.load_curation(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(cur.CurationError, match="not a somascope curation"):
        cur.load_curation(path)
    assert cur.curation_path(tmp_path / "results.h5", True) == tmp_path / "curation.json"
    assert cur.curation_path(tmp_path / "x.h5", False) == tmp_path / "x.curation.json"
    assert cur.previous_path(tmp_path / "results.h5") == tmp_path / "results.prev.h5"


# -- re-application to new components -------------------------------------------------------------
def test_reapply_leaves_unchanged_components_alone(est: Estimates) -> None:
    s = cur.change(cur.new_state(), est.A, accept=[4], reject=[1], notes={"2": "n"})
    new, what = cur.reapply(s, est.A)
    assert not what.changed and new == s and what.mapping == {1: 1, 4: 4, 2: 2}


def test_reapply_follows_the_cells_to_new_indices_and_keeps_what_matches_nothing(est: Estimates) -> None:
    s = cur.change(cur.new_state(), est.A, accept=[4], reject=[1, 3], notes={"4": "big"})
    # new components: reordered, cell 4 moved by one pixel, cell 3 gone, a new cell added
    new_A = _A([(16, 12), (25, 26), (6, 20), (6, 6), (12, 27)])
    moved, what = cur.reapply(s, new_A)
    assert what.changed and what.mapping == {1: 2, 4: 1} and what.unmatched == [3]
    assert cur.manual_decisions(moved) == {2: "reject", 1: "accept"} and cur.note_texts(moved) == {1: "big"}
    assert [u["k"] for u in moved["unmatched"]] == [3] and moved["unmatched"][0]["decision"] == "reject"
    assert moved["log"][-1]["action"] == "reapply" and moved["log"][-1]["unmatched"] == [3]
    # the stored pixels are the person's: a decision keeps what it was made on
    assert moved["decisions"]["1"]["pixels"] == s["decisions"]["4"]["pixels"]
    # undo does not reach across a re-application (other components)
    with pytest.raises(cur.CurationError, match="nothing to undo"):
        cur.undo(moved)
    # the lost cell comes back in a later result: its decision applies again
    back, what = cur.reapply(moved, _A([(25, 6), (6, 20)]))
    assert what.changed and cur.manual_decisions(back) == {0: "reject", 1: "reject"}
    assert sorted((u["kind"], u["k"]) for u in back["unmatched"]) == [("decision", 1), ("note", 1)]


def test_reapply_gives_one_decision_per_component_the_best_match(est: Estimates) -> None:
    # two decided cells merged into one new component that covers mostly cell 0
    s = cur.change(cur.new_state(), est.A, reject=[0], accept=[1])
    merged = _A([(6, 7), (25, 25)])
    new, what = cur.reapply(s, merged)
    assert cur.manual_decisions(new) == {0: "reject"} and what.unmatched == [1]


# -- the results file -------------------------------------------------------------------------------
def test_write_curated_results_keeps_everything_else_and_the_previous_file(tmp_path: Path, est: Estimates) -> None:
    path = tmp_path / "x.h5"
    est.save(path)
    with h5py.File(path, "a") as fh:
        fh.create_group("motion").create_dataset("shifts", data=np.ones((40, 2)))
    before = path.read_bytes()
    s = cur.change(cur.new_state(), est.A, reject=[0], accept=[3])
    cur.write_curated_results(path, s, est.idx_components, est.K)
    back = Estimates.load(path)
    assert back.idx_components.tolist() == [1, 2, 3] and back.idx_components_bad.tolist() == [0, 4]
    np.testing.assert_array_equal(back.C, est.C)
    assert (back.A != est.A).nnz == 0
    with h5py.File(path, "r") as fh:
        assert fh["motion/shifts"].shape == (40, 2)
        state, auto = cur.read_curation_group(fh)
        assert fh["idx_components"].attrs["units"] == "index"
    assert state == s and auto.tolist() == [0, 1, 2]
    prev = tmp_path / "x.prev.h5"
    assert prev.read_bytes() == before
    # a second change: the previous file is the first curated one (one level)
    s2 = cur.change(s, est.A, reset=[0])
    cur.write_curated_results(path, s2, auto, est.K)
    assert Estimates.load(prev).idx_components.tolist() == [1, 2, 3]
    assert Estimates.load(path).idx_components.tolist() == [0, 1, 2, 3]
    with pytest.raises(cur.CurationError, match="changed on disk"):
        cur.write_curated_results(path, s2, auto, est.K + 1)
    assert Estimates.load(path).idx_components.tolist() == [0, 1, 2, 3]  # untouched after the refusal


# -- the pipeline re-applies the curation ------------------------------------------------------------
def test_a_rerun_of_the_quality_stage_keeps_the_manual_decisions(tmp_path: Path, _quick_report: Any) -> None:
    sim = simulate.two_photon(dims=(64, 64), n_frames=600, n_cells=10, motion="rigid", max_shift=3.0, seed=1)
    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    out = tmp_path / "out"
    first = run(movie, out, radius=5.0, engine="serial", progress=False)
    est = first.estimates
    accepted, rejected = est.accepted_indices, est.rejected_indices
    snr = est.SNR_comp
    k_rej = int(accepted[np.argmax(snr[accepted])])  # the clearest cell, rejected by hand
    k_acc = int(rejected[0])  # a rejected component, accepted by hand
    from somascope.viewer.data import Source

    src = Source(out)
    src.curate({"reject": [k_rej], "accept": [k_acc], "notes": {str(k_acc): "kept by hand"}, "who": "test"})
    assert (out / "results.prev.h5").is_file() and (out / "curation.json").is_file()
    curated = load_results(out / "results.h5").estimates
    assert k_rej in curated.rejected_indices and k_acc in curated.accepted_indices

    # stricter thresholds: the quality stage (and those after it) run again, the split changes
    strict = {"quality.min_SNR": 4.0, "quality.rval_thr": 0.99}
    second = run(movie, out, radius=5.0, engine="serial", progress=False, overrides=strict)
    assert "quality" in second.computed and "cnmf" in second.reused
    with h5py.File(out / "results.h5", "r") as fh:
        state, auto = cur.read_curation_group(fh)
    new = load_results(out / "results.h5").estimates
    assert k_rej in new.rejected_indices and k_acc in new.accepted_indices
    assert k_rej in auto and k_acc not in auto  # the automatic split alone would undo both
    auto_only = set(accepted.tolist()) - set(auto.tolist()) - {k_rej}
    assert auto_only and auto_only <= set(new.rejected_indices.tolist())  # without a decision: automatic
    assert cur.manual_decisions(state) == {k_rej: "reject", k_acc: "accept"}
    assert cur.note_texts(cur.load_curation(out / "curation.json")) == {k_acc: "kept by hand"}
    assert second.estimates.idx_components.tolist() == new.idx_components.tolist()
    assert "by hand" in second.stage("results").detail
