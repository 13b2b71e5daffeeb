"""Tests for the Estimates results dataclass, its HDF5 file format and atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import somascope
from somascope.cnmf import estimates as est_mod
from somascope.cnmf.estimates import (
    FORMAT,
    SCHEMA_VERSION,
    Estimates,
    ResultsFileError,
    collect_provenance,
    read_estimates,
    write_estimates,
)
from somascope.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text

DIMS = (12, 10)
K, T, NB, P = 5, 40, 2, 2


def _footprints(rng: np.random.Generator, dims: tuple[int, ...], k: int) -> sp.csc_matrix:
    """k sparse non-negative footprints; component j has value j+1 at a marker pixel j."""
    n_pix = int(np.prod(dims))
    dense = np.where(rng.random((n_pix, k)) < 0.15, rng.random((n_pix, k)), 0.0)
    dense[:k, :] = 0.0
    dense[np.arange(k), np.arange(k)] = np.arange(1, k + 1)
    return sp.csc_matrix(dense.astype(np.float32))


def _full_estimates(seed: int = 0) -> Estimates:
    """Estimates with every field set; row k of each per-component field encodes k."""
    rng = np.random.default_rng(seed)
    n_pix = int(np.prod(DIMS))
    comp = np.arange(K, dtype=np.float32)

    def traces(offset: float) -> np.ndarray:
        return rng.random((K, T), dtype=np.float32) + 100 * comp[:, None] + offset

    return Estimates(
        A=_footprints(rng, DIMS, K),
        dims=DIMS,
        C=traces(0),
        S=traces(1),
        b=rng.random((n_pix, NB)),
        f=rng.random((NB, T), dtype=np.float32),
        YrA=traces(2),
        sn=rng.random(n_pix, dtype=np.float32),
        neurons_sn=comp + 0.5,
        g=np.stack([comp / 10, -comp / 20], axis=1).astype(np.float64),
        bl=comp + 0.25,
        c1=comp + 0.125,
        lam=comp * 2.0,
        F_dff=traces(3),
        SNR_comp=comp * 3.0,
        r_values=comp / K,
        cnn_preds=np.linspace(0, 1, K),
        activity=np.where(comp % 2 == 0, comp + 4.0, np.nan),
        seeded=comp % 2 == 0,
        silent=comp == 2,
        idx_components=np.array([0, 2, 3]),
        idx_components_bad=np.array([1, 4]),
        frame_rate=30.5,
        params={"motion": {"max_shift": (6, 6), "pw_rigid": True}, "init": {"K": np.int64(4)},
                "quality": {"min_SNR": np.float64(2.5), "note": None}},
        seed=1234,
        provenance=collect_provenance("movie.tif", stage="test"),
        extra={"W_ring": rng.random((3, 4)), "mask": np.array([True, False, True])},
    )


def _assert_same(a: Estimates, b: Estimates) -> None:
    """Every dataclass field of a and b equal: values, dtypes, sparse structure, None-ness."""
    for fld in dataclasses.fields(Estimates):
        x, y = getattr(a, fld.name), getattr(b, fld.name)
        if fld.name == "A":
            assert type(y) is sp.csc_matrix and x.shape == y.shape and x.dtype == y.dtype
            np.testing.assert_array_equal(x.indptr, y.indptr)
            np.testing.assert_array_equal(x.indices, y.indices)
            np.testing.assert_array_equal(x.data, y.data)
        elif fld.name == "extra":
            assert x.keys() == y.keys()
            for key in x:
                assert x[key].dtype == y[key].dtype
                np.testing.assert_array_equal(x[key], y[key])
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), fld.name
            assert x.dtype == y.dtype and x.shape == y.shape, fld.name
            np.testing.assert_array_equal(x, y, err_msg=fld.name)
        else:
            assert x == y and type(x) is type(y), fld.name


# ------------------------------------------------------------------------ round trip
def test_roundtrip_every_field(tmp_path: Path) -> None:
    est = _full_estimates()
    unset = [f.name for f in dataclasses.fields(Estimates) if getattr(est, f.name) is None]
    assert unset == [], "the fixture must exercise every field"
    path = est.save(tmp_path / "res.h5")
    loaded = Estimates.load(path)
    _assert_same(est, loaded)
    assert loaded.dims == DIMS and isinstance(loaded.dims, tuple)
    assert loaded.params["motion"]["max_shift"] == [6, 6]  # tuples are stored as JSON lists
    assert loaded.params["init"]["K"] == 4 and type(loaded.params["init"]["K"]) is int
    assert loaded.provenance["input_path"] == str(Path("movie.tif").absolute())
    assert (loaded.K, loaded.T, loaded.n_pixels) == (K, T, 120)
    assert not list(tmp_path.glob(".*partial*"))


def test_roundtrip_minimal_keeps_none(tmp_path: Path) -> None:
    est = Estimates(A=sp.csc_matrix((120, 3)), dims=DIMS)
    loaded = Estimates.load(est.save(tmp_path / "min.h5"))
    _assert_same(est, loaded)
    for name in ("C", "S", "b", "f", "YrA", "sn", "g", "F_dff", "idx_components",
                 "frame_rate", "params", "seed"):
        assert getattr(loaded, name) is None, name
    assert loaded.extra == {} and loaded.T is None
    assert loaded.software_version == somascope.__version__


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_roundtrip_empty_3d_and_compression(tmp_path: Path, compression: str | None) -> None:
    rng = np.random.default_rng(1)
    dims = (3, 8, 9)
    est = Estimates(A=_footprints(rng, dims, 0), dims=dims, C=np.zeros((0, 7), np.float32),
                    g=np.zeros((0, 0)), idx_components=[], sn=rng.random(216))
    loaded = Estimates.load(est.save(tmp_path / "e.h5", compression=compression))
    _assert_same(est, loaded)
    assert loaded.K == 0 and loaded.T == 7 and loaded.accepted.K == 0
    big = Estimates(A=_footprints(rng, (64, 64), 2), dims=(64, 64),
                    C=rng.random((2, 5000), dtype=np.float32))
    big.save(tmp_path / "big.h5", compression=compression)
    with h5py.File(tmp_path / "big.h5", "r") as fh:
        assert fh["C"].compression == compression
        assert fh.attrs["format"] == FORMAT and fh.attrs["schema_version"] == SCHEMA_VERSION
    np.testing.assert_array_equal(Estimates.load(tmp_path / "big.h5").C, big.C)


def test_group_io_beside_other_results(tmp_path: Path) -> None:
    est = _full_estimates()
    path = tmp_path / "pipeline.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("motion/shifts", data=np.zeros((T, 2)))
        write_estimates(fh.create_group("estimates"), est)
        write_estimates(fh.create_group("session2"), est.accepted)
        with pytest.raises(ValueError, match="not empty"):
            write_estimates(fh["estimates"], est)
    _assert_same(est, Estimates.load(path))  # finds /estimates by default
    assert Estimates.load(path, group="session2").K == 3
    with h5py.File(path, "r") as fh:
        _assert_same(est, read_estimates(fh["estimates"]))
        with pytest.raises(ResultsFileError, match="motion"):
            read_estimates(fh["motion"])
    with pytest.raises(ResultsFileError, match="no group 'nope'"):
        Estimates.load(path, group="nope")


def test_inputs_not_modified_and_coerced() -> None:
    rng = np.random.default_rng(2)
    dense = _footprints(rng, DIMS, 3).toarray()
    dense_before = dense.copy()
    params = {"a": (1, 2), "nested": {"x": np.float32(0.5)}}
    est = Estimates(A=dense, dims=[12, 10], C=[[1.0, 2.0]] * 3, params=params,
                    idx_components=[2, 0])
    assert type(est.A) is sp.csc_matrix and est.dims == DIMS
    np.testing.assert_array_equal(dense, dense_before)
    assert params == {"a": (1, 2), "nested": {"x": np.float32(0.5)}}
    assert est.params == {"a": [1, 2], "nested": {"x": 0.5}}
    assert est.idx_components.dtype == np.int64
    np.testing.assert_array_equal(est.rejected_indices, [1])


# ------------------------------------------------------------------------ subsets
def test_select_keeps_alignment() -> None:
    est = _full_estimates()
    sub = est.select([3, 1, 4])
    assert sub.K == 3 and sub.T == T
    for new, old in enumerate([3, 1, 4]):
        # marker pixel `old` carries value old+1 in footprint `old`
        assert sub.A[old, new] == old + 1
        np.testing.assert_array_equal(sub.A[:, new].toarray(), est.A[:, old].toarray())
        for name in ("C", "S", "YrA", "F_dff", "g"):
            np.testing.assert_array_equal(getattr(sub, name)[new], getattr(est, name)[old])
        for name in ("neurons_sn", "bl", "c1", "lam", "SNR_comp", "r_values", "cnn_preds"):
            assert getattr(sub, name)[new] == getattr(est, name)[old]
    # accepted [0, 2, 3] -> only 3 kept, now at position 0; rejected [1, 4] -> positions 1, 2
    np.testing.assert_array_equal(sub.idx_components, [0])
    np.testing.assert_array_equal(sub.idx_components_bad, [1, 2])
    np.testing.assert_array_equal(sub.b, est.b)
    assert not np.shares_memory(sub.b, est.b) and not np.shares_memory(sub.C, est.C)
    assert sub.params == est.params and sub.params is not est.params

    mask = np.zeros(K, dtype=bool)
    mask[[1, 4]] = True
    np.testing.assert_array_equal(est.select(mask).C, est.C[[1, 4]])


def test_accepted_and_footprint_images() -> None:
    est = _full_estimates()
    acc = est.accepted
    np.testing.assert_array_equal(acc.C, est.C[[0, 2, 3]])
    np.testing.assert_array_equal(acc.idx_components, [0, 1, 2])
    assert acc.idx_components_bad.size == 0
    np.testing.assert_array_equal(est.rejected_indices, [1, 4])
    # C-order convention: pixel index j is (j // W, j % W); marker of component 3 is pixel 3
    img = est.footprint(3)
    assert img.shape == DIMS and img[0, 3] == 4.0
    stack = est.footprint_images([3, 0])
    assert stack.shape == (2, *DIMS)
    np.testing.assert_array_equal(stack[0], img)
    np.testing.assert_array_equal(est.footprint_images().reshape(K, -1).T, est.A.toarray())
    unevaluated = Estimates(A=est.A, dims=DIMS)
    np.testing.assert_array_equal(unevaluated.accepted_indices, np.arange(K))


@pytest.mark.parametrize(
    "idx, error, match",
    [([0, 0], ValueError, "repeat"), ([5], IndexError, "0..4"), ([-1], IndexError, "0..4"),
     (np.ones(3, bool), ValueError, "length K=5"), ([0.5], TypeError, "integer")],
)
def test_select_bad_index(idx, error, match) -> None:
    with pytest.raises(error, match=match):
        _full_estimates().select(idx)


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"A": sp.csc_matrix((100, K))}, ValueError, r"dims \(12, 10\) have 120 pixels"),
        ({"C": np.zeros((K + 1, T))}, ValueError, "C has shape"),
        ({"S": np.zeros((K, T + 1))}, ValueError, "S has 41 frames but C has 40"),
        ({"f": np.zeros((NB, T - 1))}, ValueError, "f has 39 frames"),
        ({"b": np.zeros((119, NB))}, ValueError, "b has shape"),
        ({"f": np.zeros((NB + 1, T))}, ValueError, "background components"),
        ({"sn": np.zeros(7)}, ValueError, "one noise level per pixel"),
        ({"g": np.zeros(K)}, ValueError, r"g must be 2-D.*g\[:, None\]"),
        ({"neurons_sn": np.zeros(K - 1)}, ValueError, "neurons_sn has 4 entries"),
        ({"idx_components": [0, 7]}, ValueError, "outside 0..4"),
        ({"idx_components": [0, 1], "idx_components_bad": [1]}, ValueError, "disjoint"),
        ({"idx_components": [2, 2], "idx_components_bad": None}, ValueError, "more than once"),
        ({"idx_components": [0.0, 1.0]}, TypeError, "integer"),
        ({"frame_rate": -3.0}, ValueError, "positive number of Hz"),
        ({"dims": (120,)}, ValueError, r"\(H, W\) or \(Z, H, W\)"),
        ({"C": np.zeros((K, T), complex)}, TypeError, "real numeric"),
        ({"params": {"x": object()}}, TypeError, r"params\['x'\] holds a object"),
        ({"params": {1: 2}}, TypeError, "non-string key"),
        ({"extra": {"a/b": np.zeros(2)}}, ValueError, "without '/'"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"A": sp.csc_matrix(np.full((120, K), np.nan))}, ValueError, "NaN"),
    ],
)
def test_shape_and_type_errors(changes, error, match) -> None:
    with pytest.raises(error, match=match):
        dataclasses.replace(_full_estimates(), **changes)


def test_validate_catches_later_mutation() -> None:
    est = _full_estimates()
    est.C = est.C[:, :-1]
    with pytest.raises(ValueError, match="frames"):
        est.validate()


# ------------------------------------------------------------------------ bad files
def test_load_rejects_foreign_and_newer_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as fh:
        fh["data"] = np.arange(3)
    with pytest.raises(ResultsFileError, match="foreign.h5.*not a somascope results file"):
        Estimates.load(foreign)

    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ResultsFileError, match="notes.h5.*not an HDF5 file"):
        Estimates.load(text)

    with pytest.raises(FileNotFoundError, match="missing.h5"):
        Estimates.load(tmp_path / "missing.h5")

    newer = _full_estimates().save(tmp_path / "newer.h5")
    with h5py.File(newer, "r+") as fh:
        fh.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ResultsFileError, match="newer.h5.*schema version 2.*upgrade somascope"):
        Estimates.load(newer)

    broken = _full_estimates().save(tmp_path / "broken.h5")
    with h5py.File(broken, "r+") as fh:
        del fh["C"]
        fh["C"] = np.zeros((K, T + 3))
    with pytest.raises(ResultsFileError, match="broken.h5.*inconsistent"):
        Estimates.load(broken)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_create = est_mod._create

    def failing_create(group, name, data, compression):
        if name == "YrA":  # fail halfway through the file
            raise OSError("disk full (simulated)")
        real_create(group, name, data, compression)

    monkeypatch.setattr(est_mod, "_create", failing_create)
    with pytest.raises(OSError, match="simulated"):
        _full_estimates().save(tmp_path / "res.h5")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _full_estimates(seed=0)
    path = good.save(tmp_path / "res.h5")
    before = path.read_bytes()

    def failing_create(group, name, data, compression):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(est_mod, "_create", failing_create)
    with pytest.raises(OSError, match="simulated"):
        _full_estimates(seed=1).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["res.h5"]
    monkeypatch.undo()
    _assert_same(good, Estimates.load(path))
    replacement = _full_estimates(seed=1)
    replacement.save(path)
    _assert_same(replacement, Estimates.load(path))


# ------------------------------------------------------------------------ atomic writes
def test_atomic_directory_replacement(tmp_path: Path) -> None:
    final = tmp_path / "store.zarr"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".store.zarr.partial-")
        tmp.mkdir()
        (tmp / "chunk").write_text("v1")
    assert (final / "chunk").read_text() == "v1"

    with pytest.raises(RuntimeError, match="worker died"):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "chunk").write_text("v2-half")
            raise RuntimeError("worker died")
    assert (final / "chunk").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]

    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "other").write_text("v2")
    assert sorted(p.name for p in final.iterdir()) == ["other"]
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]

    # a file may replace a folder and vice versa
    with atomic_path(final) as tmp:
        tmp.write_text("now a file")
    assert final.read_text() == "now a file"


def test_atomic_write_helpers_and_errors(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    atomic_write_text(target, json.dumps({"a": 1}) + "\r\n")
    assert target.read_bytes() == b'{"a": 1}\r\n'
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        atomic_write_text(tmp_path / "no" / "such" / "x.txt", "x")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "never.txt"):
            pass
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["table.json"]


def test_schema_document_lists_every_stored_entry(tmp_path: Path) -> None:
    """docs/results-schema.md names every dataset and attribute a full file contains."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results-schema.md").read_text()
    path = _full_estimates().save(tmp_path / "res.h5")
    names: set[str] = set()
    with h5py.File(path, "r") as fh:
        names.update(fh.attrs)
        fh.visititems(lambda name, obj: names.update([name, *obj.attrs]))
    names -= {"extra/W_ring", "extra/mask", "units", "description"}
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert missing == []
    # the reading recipe in the document works on a real file
    snippet = doc.split("```python\n")[1].split("```")[0].replace('"results.h5"', repr(str(path)))
    scope: dict = {}
    exec(snippet, scope)
    assert scope["dims"] == DIMS and scope["params"]["motion"]["max_shift"] == [6, 6]
    assert (scope["A"] != _full_estimates().A).nnz == 0
