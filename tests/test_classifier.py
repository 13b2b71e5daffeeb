"""The shape classifier without PyTorch: neuron-scaled crops, labels against a ground truth, the
NumPy forward pass against a plain loop implementation, weights files, the classifier inside
``evaluate_components``, and ``somascope train-classifier`` without PyTorch."""

from __future__ import annotations

import dataclasses
import importlib.abc
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import tifffile

from somascope import simulate
from somascope.cli import main
from somascope.cnmf.estimates import Estimates
from somascope.evaluation import evaluate_components
from somascope.evaluation.classifier import CLASSES, CROP_SIZE, component_crops, frame_offset, label_components
from somascope.evaluation.classifier.cnn import LAYERS, Weights, forward, load_weights, predict, shipped_weights
from somascope.params import Params

REFERENCE = Path(__file__).parent / "data" / "classifier_2p_reference.npz"


# -- helpers ---------------------------------------------------------------------------------------
def soft_disc(dims: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """An anti-aliased disc (1 inside, a one-pixel linear edge), ``(H, W)`` float64."""
    yy, xx = np.indices(dims, dtype=np.float64)
    return np.clip(radius + 0.5 - np.hypot(yy - centre[0], xx - centre[1]), 0.0, 1.0)


def hard_disc(dims: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Pixels within ``radius`` of ``centre``, ``(H, W)`` float64 of 0/1."""
    yy, xx = np.indices(dims, dtype=np.float64)
    return (np.hypot(yy - centre[0], xx - centre[1]) <= radius).astype(np.float64)


def columns(*images: np.ndarray) -> sp.csc_matrix:
    """Footprint images ``(H, W)`` → ``pixels × K`` CSC (C-order pixels)."""
    return sp.csc_matrix(np.stack([np.asarray(im, np.float64).ravel() for im in images], axis=1))


def random_weights(rng: np.random.Generator, crop_size: int = 16, filters: tuple[int, int, int] = (8, 16, 32),
                   dense: int = 64, gain: float = 1.5) -> Weights:
    """Network parameters drawn at random: weights of standard deviation ``gain / √fan_in`` (the
    output stays away from the sigmoid's flat ends), biases slightly positive (few dead units)."""
    f1, f2, f3 = filters
    side = ((crop_size - 4) // 2 - 2) // 2
    shapes = {"conv1_w": (f1, 1, 3, 3), "conv2_w": (f2, f1, 3, 3), "conv3_w": (f3, f2, 3, 3),
              "dense1_w": (dense, f3 * side * side), "dense2_w": (1, dense)}
    arrays: dict[str, np.ndarray] = {}
    for layer in LAYERS:
        shape = shapes[f"{layer}_w"]
        w = rng.normal(0.0, gain / np.sqrt(np.prod(shape[1:])), shape).astype(np.float32)
        arrays[f"{layer}_w"] = w
        arrays[f"{layer}_b"] = rng.uniform(0.0, 0.1, w.shape[0]).astype(np.float32)
    return Weights(arrays=arrays, crop_size=crop_size, window_radii=3.0, card={"what": "random test weights"})


def constant_weights(probability: float, crop_size: int = CROP_SIZE) -> Weights:
    """Weights whose output is ``probability`` for every crop (all zero but the last bias)."""
    w = random_weights(np.random.default_rng(0), crop_size=crop_size)
    arrays = {k: np.zeros_like(v) for k, v in w.arrays.items()}
    arrays["dense2_b"][:] = np.log(probability / (1.0 - probability))
    return dataclasses.replace(w, arrays=arrays)


def reference_forward(w: Weights, crop: np.ndarray) -> float:
    """The network on one crop with explicit loops (float64): valid cross-correlations,
    ReLU, floor 2×2 max-pooling, (channel, row, column) flattening, dense layers, sigmoid."""
    a = {k: np.asarray(v, np.float64) for k, v in w.arrays.items()}

    def conv(x: list[list[list[float]]], wk: np.ndarray, b: np.ndarray) -> list[list[list[float]]]:
        n_in, h, wd = len(x), len(x[0]), len(x[0][0])
        out = []
        for o in range(wk.shape[0]):
            plane = []
            for i in range(h - 2):
                row = []
                for j in range(wd - 2):
                    s = float(b[o])
                    for c in range(n_in):
                        for di in range(3):
                            for dj in range(3):
                                s += float(wk[o, c, di, dj]) * x[c][i + di][j + dj]
                    row.append(max(s, 0.0))
                plane.append(row)
            out.append(plane)
        return out

    def pool(x: list[list[list[float]]]) -> list[list[list[float]]]:
        return [[[max(p[2 * i][2 * j], p[2 * i][2 * j + 1], p[2 * i + 1][2 * j], p[2 * i + 1][2 * j + 1])
                  for j in range(len(p[0]) // 2)] for i in range(len(p) // 2)] for p in x]

    x = [[[float(v) for v in row] for row in crop]]
    x = pool(conv(pool(conv(conv(x, a["conv1_w"], a["conv1_b"]), a["conv2_w"], a["conv2_b"])),
                  a["conv3_w"], a["conv3_b"]))
    flat = [v for plane in x for row in plane for v in row]
    hidden = []
    for u in range(a["dense1_w"].shape[0]):
        s = float(a["dense1_b"][u]) + sum(float(a["dense1_w"][u, i]) * flat[i] for i in range(len(flat)))
        hidden.append(max(s, 0.0))
    z = float(a["dense2_b"][0]) + sum(float(a["dense2_w"][0, u]) * hidden[u] for u in range(len(hidden)))
    return 1.0 / (1.0 + np.exp(-z))


# -- crops -----------------------------------------------------------------------------------------
def test_a_disc_crop_is_centred_and_the_same_at_every_neuron_size() -> None:
    small = component_crops(columns(soft_disc((60, 60), (30, 30), 5)), (60, 60), 5)[0]
    large = component_crops(columns(soft_disc((100, 100), (50, 50), 10)), (100, 100), 10)[0]
    odd = component_crops(columns(soft_disc((100, 100), (50.3, 49.6), 12)), (100, 100), 12)[0]
    assert small.shape == (CROP_SIZE, CROP_SIZE) and small.dtype == np.float32
    grid = np.arange(CROP_SIZE)
    centre = ((small.sum(1) @ grid) / small.sum(), (small.sum(0) @ grid) / small.sum())
    np.testing.assert_allclose(centre, ((CROP_SIZE - 1) / 2, (CROP_SIZE - 1) / 2), atol=1e-3)
    # a disc of one neuron radius spans a third of the crop's width (±3 radii): about π/36 of it is lit
    assert abs((small > 0.5).mean() - np.pi / 36) < 0.02
    assert np.abs(small - large).max() < 0.1 and np.abs(small - odd).max() < 0.1
    assert np.abs(small - large).mean() < 0.01


def test_crops_ignore_position_and_brightness_and_empty_footprints_give_zeros() -> None:
    dims = (50, 60)
    base = soft_disc(dims, (20, 25), 4) + 0.5 * soft_disc(dims, (22, 28), 2)   # an asymmetric shape
    moved = 7.0 * np.roll(np.roll(base, 9, axis=0), -6, axis=1)
    crops = component_crops(columns(base, moved, np.zeros(dims)), dims, 4.0)
    assert crops.shape == (3, CROP_SIZE, CROP_SIZE)
    np.testing.assert_allclose(crops[1], crops[0], atol=1e-6)
    assert crops[0].max() == pytest.approx(1.0) and crops[0].min() >= 0.0
    assert not crops[2].any()
    # a per-axis radius: a disc in pixels, an ellipse in neuron radii
    aniso = component_crops(columns(base), dims, (4.0, 8.0))[0]
    assert (aniso > 0.5).sum(axis=1).max() < (aniso > 0.5).sum(axis=0).max()


def test_crops_refuse_volumes_and_mismatched_frames() -> None:
    with pytest.raises(ValueError, match="quality.use_cnn"):
        component_crops(sp.csc_matrix((4 * 10 * 10, 1)), (4, 10, 10), 3.0)
    with pytest.raises(ValueError, match="pixel rows"):
        component_crops(sp.csc_matrix((99, 1)), (10, 10), 3.0)
    with pytest.raises(ValueError, match="radius"):
        component_crops(sp.csc_matrix((100, 1)), (10, 10), 0.0)


# -- labels ----------------------------------------------------------------------------------------
DIMS = (80, 80)
R = 5.0
#: The hand-made truth: centres of the somata, and which fire.
SOMA_CENTRES = [(12, 12), (12, 22), (22, 12), (22, 22),   # a cluster of four touching somata
                (50, 14), (48, 48), (14, 62)]
SOMA_ACTIVE = [True, True, True, True, True, False, True]


def _truth() -> dict[str, Any]:
    """Seven somata (one silent) and a long, thin process on 80 × 80 px, in the gt.npz layout."""
    somata = [hard_disc(DIMS, c, R) for c in SOMA_CENTRES]
    process = np.zeros(DIMS)
    process[66:68, 10:70] = 1.0
    A = np.stack(somata + [process])
    return {"A": A, "is_soma": np.array([True] * len(somata) + [False]),
            "is_active": np.array(SOMA_ACTIVE + [True])}


def test_every_kind_of_component_gets_its_label() -> None:
    truth = _truth()
    A = truth["A"]
    blob = hard_disc(DIMS, (38, 70), 8)                 # far from every cell, 2.6 neuron areas
    speck = np.zeros(DIMS)
    speck[74:76, 2:4] = 1.0
    piece = np.zeros(DIMS)
    piece[48:51, 12:15] = 1.0                            # 9 px inside soma 4
    components = {
        "soma0": (A[0], "soma", 0),
        "soma4": (A[4], "soma", 4),
        "soma6_shifted": (np.roll(A[6], (1, -1), axis=(0, 1)), "soma", 6),
        "soma6_twice": (0.5 * A[6], "soma", 6),         # a duplicate is a soma's shape too
        "cluster_of_four": (A[0] + A[1] + A[2] + A[3], "merged", -1),
        "process": (A[7], "dendrite", -1),
        "silent": (A[5], "silent_soma", 5),
        "fragment": (piece, "fragment", -1),
        "blob": (blob, "neuropil", -1),
        "speck": (speck, "noise", -1),
        "empty": (np.zeros(DIMS), "noise", -1),
    }
    names = list(components)
    labels = label_components(columns(*(components[n][0] for n in names)), DIMS, truth, radius=R)
    assert labels.classes.shape == labels.distance.shape == labels.soma_index.shape == (len(names),)
    assert set(labels.classes.tolist()) <= set(CLASSES)
    got = dict(zip(names, labels.classes.tolist()))
    assert got == {n: components[n][1] for n in names}
    np.testing.assert_array_equal(labels.soma_index, [components[n][2] for n in names])
    np.testing.assert_array_equal(labels.is_soma, np.isin([components[n][1] for n in names], ("soma", "silent_soma")))
    assert labels.distance[names.index("soma0")] == pytest.approx(0.0)
    assert labels.distance[names.index("speck")] == 1.0
    counts = labels.counts()
    assert sum(counts.values()) == len(names) and counts["soma"] == 4 and counts["noise"] == 2


def test_the_offset_brings_components_of_a_shifted_frame_onto_the_truth() -> None:
    truth = _truth()
    A = truth["A"]
    order = [0, 4, 5, 6, 7]                               # three active somata, the silent one, the process
    for shift in ((2, 1), (7, -5)):
        moved = columns(*(np.roll(A[k], shift, axis=(0, 1)) for k in order))
        with_offset = label_components(moved, DIMS, truth, radius=R, offset=shift)
        assert with_offset.classes.tolist() == ["soma", "soma", "silent_soma", "soma", "dendrite"]
        np.testing.assert_array_equal(with_offset.soma_index, [0, 4, 5, 6, -1])
        np.testing.assert_allclose(with_offset.distance[:4], 0.0, atol=1e-12)
    # 8.6 px off without the offset: no component matches its soma any more
    assert not label_components(moved, DIMS, truth, radius=R).is_soma.any()
    with pytest.raises(ValueError, match="px but the components"):
        label_components(sp.csc_matrix((70 * 80, 1)), (70, 80), truth, radius=R)


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, _quick_report: Any) -> tuple[Any, Path]:
    """``somascope run`` on a 64 × 64 × 300 two-photon movie with 8 cells and rigid motion (≈5 s):
    the simulation and the folder holding ``movie.tif`` and the run ``out``."""
    from somascope.pipeline import run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, motion="rigid", max_shift=3.0, seed=1)
    folder = tmp_path_factory.mktemp("classifier-run")
    tifffile.imwrite(folder / "movie.tif", np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    run(folder / "movie.tif", folder / "out", radius=5.0, engine="serial", progress=False)
    return sim, folder


@pytest.fixture(scope="module")
def tiny_run(tiny_run_dir: tuple[Any, Path]) -> tuple[Any, Any]:
    """The simulation and the results of :func:`tiny_run_dir`."""
    from somascope.pipeline import load_results

    sim, folder = tiny_run_dir
    return sim, load_results(folder / "out" / "results.h5")


def test_labels_of_a_real_run_find_the_somata(tiny_run: tuple[Any, Any]) -> None:
    sim, res = tiny_run
    est = res.estimates
    N = sim.A.shape[1]
    truth = {"A": sim.A.T.toarray().reshape(N, *est.dims), "is_soma": np.asarray(sim.kind) == "soma",
             "is_active": np.asarray(sim.active)}
    offset = frame_offset(res.summary["mean"], sim.still_mean)
    assert np.all(np.abs(offset) <= 3.5)                  # the motion's range
    labels = label_components(est.A, est.dims, truth, radius=5.0, offset=offset)
    assert labels.classes.size == est.K and set(labels.classes.tolist()) <= set(CLASSES)
    active_somata = np.flatnonzero(truth["is_soma"] & truth["is_active"])
    found = set(labels.soma_index[labels.classes == "soma"].tolist())
    assert found <= set(active_somata.tolist())
    assert len(found) >= active_somata.size / 2
    soma = np.flatnonzero(labels.classes == "soma")
    crops = component_crops(est.A[:, soma], est.dims, 5.0)
    assert crops.shape == (soma.size, CROP_SIZE, CROP_SIZE)
    assert np.all(crops.reshape(soma.size, -1).max(axis=1) == pytest.approx(1.0))


# -- the forward pass and weights files ------------------------------------------------------------
def test_forward_equals_a_plain_loop_implementation() -> None:
    rng = np.random.default_rng(5)
    w = random_weights(rng, crop_size=16)
    dims = (40, 40)
    crops = component_crops(columns(soft_disc(dims, (20, 20), 4), soft_disc(dims, (15, 25), 3)
                                    + soft_disc(dims, (18, 19), 3)), dims, 4.0, size=16)
    crops = np.concatenate([crops, rng.random((2, 16, 16), dtype=np.float32)])
    expected = np.array([reference_forward(w, c) for c in crops])
    got = forward(w, crops)
    assert got.shape == (4,) and got.dtype == np.float32
    assert np.ptp(expected) > 1e-3                       # the crops give different outputs
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # many crops at once: each gets its own result
    many = np.repeat(crops, 70, axis=0)
    np.testing.assert_allclose(forward(w, many), np.repeat(got, 70), atol=1e-6)
    with pytest.raises(ValueError, match="crops must be"):
        forward(w, crops[:, :15])


def test_weights_files_round_trip_and_bad_files_are_refused(tmp_path: Path) -> None:
    w = random_weights(np.random.default_rng(1), crop_size=20)
    path = w.save(tmp_path / "w.npz")
    back = load_weights(path)
    assert back.crop_size == 20 and back.window_radii == 3.0 and back.card == w.card and back.source == str(path)
    for name, value in w.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], value)
    assert not list(tmp_path.glob(".*partial*"))          # nothing left of the atomic write

    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_weights(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    with pytest.raises(ValueError, match="not a classifier weights file"):
        load_weights(text)
    np.savez(tmp_path / "partial.npz", conv1_w=w.arrays["conv1_w"])
    with pytest.raises(ValueError, match="lacks"):
        load_weights(tmp_path / "partial.npz")
    wrong = dict(w.arrays, dense1_w=np.zeros((64, 10), np.float32))
    np.savez(tmp_path / "wrong.npz", **wrong, crop_size=20, window_radii=3.0)
    with pytest.raises(ValueError, match="dense1_w has shape"):
        load_weights(tmp_path / "wrong.npz")
    # weights of one crop size read with another's
    np.savez(tmp_path / "size.npz", **w.arrays, crop_size=24, window_radii=3.0)
    with pytest.raises(ValueError, match="crop_size 24"):
        load_weights(tmp_path / "size.npz")


def test_predict_keeps_the_best_scale() -> None:
    rng = np.random.default_rng(2)
    w = random_weights(rng, crop_size=16)
    dims = (48, 48)
    A = columns(soft_disc(dims, (24, 24), 3), soft_disc(dims, (20, 30), 6))
    at = [forward(w, component_crops(A, dims, r, size=16)) for r in (3.0, 6.0)]
    np.testing.assert_allclose(predict(A, dims, 3.0, w), at[0], atol=1e-6)
    np.testing.assert_allclose(predict(A, dims, 3.0, w, radii=[3.0, 6.0]), np.maximum(*at), atol=1e-6)


def test_forward_matches_framework_reference() -> None:
    """The shipped weights in NumPy give the probabilities PyTorch gave when they were trained."""
    shipped = shipped_weights("2p")
    if shipped is None or not REFERENCE.is_file():
        pytest.skip("the shipped 2p weights or tests/data/classifier_2p_reference.npz are not in the tree yet")
    w = load_weights(None, modality="2p")
    with np.load(REFERENCE) as z:
        crops, probabilities = z["crops"], z["probabilities"]
    np.testing.assert_allclose(forward(w, crops), probabilities, atol=1e-5, rtol=0)


# -- the classifier in evaluate_components ---------------------------------------------------------
@pytest.fixture(scope="module")
def cells() -> dict[str, Any]:
    """Five firing cells (Gaussian footprints, σ = 2.5 px) on 40 × 40 px × 300 frames, noise σ 0.2."""
    dims, T = (40, 40), 300
    rng = np.random.default_rng(8)
    centres = [(8, 8), (8, 30), (20, 19), (31, 9), (31, 30)]
    yy, xx = np.indices(dims, dtype=np.float64)
    A = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5 ** 2)).ravel() for cy, cx in centres], 1)
    A[A < 0.05] = 0.0
    spikes = (rng.random((len(centres), T)) < 0.03) * rng.uniform(1, 3, (len(centres), T))
    C = np.zeros_like(spikes)
    for t in range(T):
        C[:, t] = spikes[:, t] + (0.9 * C[:, t - 1] if t else 0.0)
    b = np.ones((A.shape[0], 1))
    f = np.full((1, T), 2.0)
    movie = ((A @ C + b @ f).T.reshape(T, *dims) + 0.2 * rng.standard_normal((T, *dims))).astype(np.float32)
    est = Estimates(A=sp.csc_matrix(A), C=C.astype(np.float32), b=b, f=f, dims=dims, frame_rate=30.0)
    return {"est": est, "movie": movie, "dims": dims}


def test_evaluate_components_fills_cnn_preds_from_the_given_weights(cells: dict[str, Any], tmp_path: Path) -> None:
    est, movie, dims = cells["est"], cells["movie"], cells["dims"]
    w = random_weights(np.random.default_rng(3), crop_size=CROP_SIZE)
    path = w.save(tmp_path / "random.npz")
    params = Params.from_neuron(3, fr=30.0, decay_time=0.3, use_ecc=False, use_cnn=True, cnn_weights=str(path))
    ev = evaluate_components(est, movie, params)
    assert ev.cnn_preds is not None and ev.cnn_preds.shape == (est.K,)
    assert np.all((ev.cnn_preds >= 0) & (ev.cnn_preds <= 1))
    np.testing.assert_allclose(ev.cnn_preds, predict(est.A, dims, (3.0, 3.0), load_weights(path)), atol=1e-6)
    # scores given with the estimates are kept, not recomputed
    given = np.linspace(0.2, 0.8, est.K)
    again = evaluate_components(dataclasses.replace(est, cnn_preds=given), movie, params)
    np.testing.assert_array_equal(again.cnn_preds, given)
    # use_cnn off: no scores
    assert evaluate_components(est, movie, params.replace(use_cnn=False)).cnn_preds is None


def test_the_classifier_thresholds_accept_and_veto(cells: dict[str, Any], tmp_path: Path) -> None:
    est, movie = cells["est"], cells["movie"]
    sure = constant_weights(0.99).save(tmp_path / "sure.npz")
    doubt = constant_weights(0.05).save(tmp_path / "doubt.npz")
    base = Params.from_neuron(3, fr=30.0, decay_time=0.3, use_ecc=False)
    plain = evaluate_components(est, movie, base.replace(use_cnn=False))
    assert plain.idx_components.size == est.K                        # real cells: accepted on SNR / r

    # the trace tests accept nothing; a score ≥ min_cnn_thr accepts every component
    strict = base.replace(min_SNR=1e3, rval_thr=1.0)
    assert evaluate_components(est, movie, strict.replace(use_cnn=False)).idx_components.size == 0
    vouched = evaluate_components(est, movie, strict.replace(cnn_weights=str(sure), min_cnn_thr=0.9))
    np.testing.assert_allclose(vouched.cnn_preds, 0.99, atol=1e-5)
    assert vouched.idx_components.size == est.K
    assert evaluate_components(est, movie, strict.replace(cnn_weights=str(sure), min_cnn_thr=0.995)
                               ).idx_components.size == 0

    # a score ≤ cnn_lowest rejects every component whatever its SNR; just above it, none
    vetoed = evaluate_components(est, movie, base.replace(cnn_weights=str(doubt), cnn_lowest=0.1))
    assert vetoed.idx_components.size == 0 and vetoed.idx_components_bad.size == est.K
    kept = evaluate_components(est, movie, base.replace(cnn_weights=str(doubt), cnn_lowest=0.04))
    np.testing.assert_array_equal(kept.idx_components, plain.idx_components)


def test_one_photon_runs_without_the_classifier_unless_given_weights(cells: dict[str, Any]) -> None:
    # no one-photon weights ship: the 1p defaults turn the classifier off, and asking for it
    # without weights skips it (a log line), leaving the SNR / r-value split
    est, movie = cells["est"], cells["movie"]
    assert shipped_weights("1p") is None and shipped_weights("2p") is not None
    one_p = Params.from_neuron(3, fr=30.0, decay_time=0.3, use_ecc=False, is_1p=True, min_area_ratio=0.0)
    assert one_p.quality.use_cnn is False
    plain = evaluate_components(est, movie, one_p)
    asked = evaluate_components(est, movie, one_p.replace(use_cnn=True))
    assert plain.cnn_preds is None and asked.cnn_preds is None
    np.testing.assert_array_equal(asked.idx_components, plain.idx_components)
    # the shipped two-photon weights score every component of a two-photon run
    two_p = evaluate_components(est, movie, Params.from_neuron(3, fr=30.0, decay_time=0.3, use_ecc=False))
    assert two_p.cnn_preds.shape == (est.K,) and np.all((two_p.cnn_preds >= 0) & (two_p.cnn_preds <= 1))


def test_missing_weights_file_is_a_clear_error(cells: dict[str, Any], tmp_path: Path) -> None:
    params = Params.from_neuron(3, fr=30.0, decay_time=0.3, use_ecc=False, cnn_weights=str(tmp_path / "no.npz"))
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        evaluate_components(cells["est"], cells["movie"], params)


# -- the command line without PyTorch --------------------------------------------------------------
class _NoTorch(importlib.abc.MetaPathFinder):
    """An import hook under which PyTorch is not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_train_classifier_without_torch_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # `import torch` raises ImportError, as where PyTorch is not installed (not sys.modules["torch"] = None:
    # SciPy's array-API checks read sys.modules["torch"] and fail on a None)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoTorch(), *sys.meta_path])
    code = main(["train-classifier", str(tmp_path / "results.h5"), "--out", str(tmp_path / "w.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("somascope: error: training the classifier needs PyTorch")
    assert "pip install 'somascope[train]'" in err
    assert not (tmp_path / "w.npz").exists()


def test_new_weights_rescore_a_finished_run(tiny_run_dir: tuple[Any, Path], tmp_path: Path) -> None:
    # the quality stage's key holds the weights file's digest: the same path with other weights
    # in it scores the components again, and the same weights reuse the stage
    import shutil

    from somascope.pipeline import load_results, run

    _, source = tiny_run_dir
    folder = tmp_path / "run"
    shutil.copytree(source / "out", folder)
    movie = source / "movie.tif"
    weights = tmp_path / "mine.npz"
    random_weights(np.random.default_rng(1), crop_size=CROP_SIZE).save(weights)
    kw = dict(radius=5.0, engine="serial", progress=False, overrides={"quality.cnn_weights": str(weights)})
    first = load_results(run(movie, folder, **kw).results_path).estimates.cnn_preds
    random_weights(np.random.default_rng(2), crop_size=CROP_SIZE).save(weights)
    second = run(movie, folder, **kw)
    assert "quality" not in second.reused
    again = load_results(second.results_path).estimates.cnn_preds
    assert first.shape == again.shape and not np.allclose(first, again)
    third = run(movie, folder, **kw)
    assert "quality" in third.reused


def test_a_two_photon_run_keeps_its_classifier_scores_in_results_and_nwb(tiny_run: tuple[Any, Any],
                                                                           tmp_path: Path) -> None:
    # the default two-photon run scores every component with the shipped weights; the scores
    # are in the results file and, as the cnn_pred column, in the NWB export
    from somascope.evaluation.classifier.cnn import predict
    from somascope.io.nwb import export_nwb, read_nwb

    _, res = tiny_run
    est = res.estimates
    assert res.params["quality"]["use_cnn"] is True
    assert est.cnn_preds is not None and est.cnn_preds.shape == (est.K,)
    np.testing.assert_allclose(est.cnn_preds, predict(est.A, est.dims, 5.0), atol=1e-5)
    back = read_nwb(export_nwb(tmp_path / "run.nwb", est)).estimates
    np.testing.assert_allclose(back.cnn_preds, est.cnn_preds, atol=1e-6)
