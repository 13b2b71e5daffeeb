"""Training the shape classifier with PyTorch (``somascope[train]``): PyTorch's network and the
NumPy forward pass agree, training learns discs from bars and large blobs, fine-tuning keeps the
architecture, and ``somascope train-classifier`` turns pipeline results into a weights file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import tifffile
from scipy import ndimage

torch = pytest.importorskip("torch")

from somascope import curation as cur  # noqa: E402
from somascope import simulate  # noqa: E402
from somascope.cli import main  # noqa: E402
from somascope.cnmf.estimates import Estimates, ResultsFileError  # noqa: E402
from somascope.evaluation.classifier import CROP_SIZE, component_crops  # noqa: E402
from somascope.evaluation.classifier.cnn import forward, load_weights, predict, shipped_weights  # noqa: E402
from somascope.evaluation.classifier.train import (  # noqa: E402
    build_model,
    fine_tune,
    from_weights,
    to_weights,
    train,
    train_from_results,
)
from somascope.params import Params  # noqa: E402
from somascope.pipeline.results import write_results_file  # noqa: E402

RADIUS = 5.0


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One PyTorch thread: on a shared, loaded machine several threads are several times slower.
    (NumPy's BLAS can set the OpenMP thread count back, so training calls also pass threads=1.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- a synthetic training set ----------------------------------------------------------------------
def shape_images(rng: np.random.Generator, n: int, dims: tuple[int, int] = (64, 64),
                 r: float = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` footprint images ``(n, H, W)`` and their targets ``(n,)`` bool, in turn: a soma (a
    disc of 0.8–1.2 neuron radii ``r``), a process (a bar 5–8 radii long, under one wide, any
    angle) and neuropil (a disc of 2.2–3 radii); blurred, with multiplicative noise."""
    yy, xx = np.indices(dims, dtype=np.float64)
    images, soma = [], []
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * np.array(dims)
        kind = i % 3
        if kind == 1:
            angle = rng.uniform(0, np.pi)
            half_length, half_width = r * rng.uniform(2.5, 4.0), r * rng.uniform(0.2, 0.4)
            u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
            v = (xx - cx) * np.cos(angle) - (yy - cy) * np.sin(angle)
            image = ((u / half_length) ** 2 + (v / half_width) ** 2 <= 1).astype(np.float64)
        else:
            radius = r * (rng.uniform(0.8, 1.2) if kind == 0 else rng.uniform(2.2, 3.0))
            image = np.clip(radius + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0)
        image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.0))
        images.append(image * np.clip(1.0 + 0.2 * rng.standard_normal(dims), 0.0, None))
        soma.append(kind == 0)
    return np.stack(images), np.array(soma)


def shape_crops(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops ``(n, CROP_SIZE, CROP_SIZE)`` of :func:`shape_images` and their targets."""
    images, soma = shape_images(rng, n)
    A = sp.csc_matrix(images.reshape(n, -1).T)
    return component_crops(A, images.shape[1:], RADIUS), soma


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive outscores a negative (ties half)."""
    pos, neg = scores[positive][:, None], scores[~positive][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {"fit": shape_crops(rng, 300), "val": shape_crops(rng, 90), "fresh": shape_crops(rng, 150)}


@pytest.fixture(scope="module")
def trained(shapes: dict[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    """Three epochs on the 300 synthetic crops (batches of 64, validation on 90 more)."""
    x, y = shapes["fit"]
    return train(x, y, val=shapes["val"], epochs=3, batch_size=64, seed=0, card={"what": "test"}, threads=1)


# -- the network -----------------------------------------------------------------------------------
def _torch_probabilities(weights: Any, crops: np.ndarray) -> np.ndarray:
    model = from_weights(weights).eval()                 # eval: no dropout, as in inference
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(np.asarray(crops, np.float32)[:, None]))[:, 0]).numpy()


def test_numpy_forward_equals_torch_after_one_epoch(shapes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    x, y = shapes["fit"]
    result = train(x, y, epochs=1, batch_size=64, seed=1, threads=1)
    assert len(result.train_loss) == 1 and result.val_loss == [] and result.best_epoch == 0
    w = result.weights
    assert w.crop_size == CROP_SIZE and set(w.arrays) == {f"{n}_{p}" for n in ("conv1", "conv2", "conv3",
                                                                               "dense1", "dense2") for p in "wb"}
    xt = shapes["fresh"][0]
    expected = _torch_probabilities(w, xt)
    assert np.ptp(expected) > 1e-3
    np.testing.assert_allclose(forward(w, xt), expected, atol=1e-5, rtol=0)
    # and for an untrained network of another crop size
    model = build_model(32).eval()
    w32 = to_weights(model, crop_size=32)
    crops32 = np.random.default_rng(2).random((20, 32, 32), dtype=np.float32)
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(crops32[:, None]))[:, 0]).numpy()
    np.testing.assert_allclose(forward(w32, crops32), direct, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="too small"):
        build_model(11)


def test_training_lowers_the_loss_and_separates_discs_from_bars_and_blobs(
        trained: Any, shapes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(trained.train_loss) == len(trained.val_loss) == 3
    assert trained.train_loss[-1] < trained.train_loss[0]
    assert trained.val_loss[trained.best_epoch] == min(trained.val_loss)
    assert trained.weights.card == {"what": "test"}
    x, y = shapes["fresh"]
    p = forward(trained.weights, x)
    assert auc(p, y) > 0.9
    # the same seed gives the same weights
    x, y = shapes["val"]
    first, again = (train(x, y, epochs=1, batch_size=32, seed=7, threads=1) for _ in range(2))
    for name, value in first.weights.arrays.items():
        np.testing.assert_array_equal(again.weights.arrays[name], value)


def test_training_input_errors(shapes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    x, y = shapes["fit"]
    with pytest.raises(ValueError, match="both kinds"):
        train(x[y], y[y], epochs=1)
    with pytest.raises(ValueError, match="one target each"):
        train(x, y[:-1], epochs=1)


def test_fine_tune_keeps_the_architecture_and_moves_the_weights(
        trained: Any, shapes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    x, y = shapes["val"]
    tuned = fine_tune(x, y, trained.weights, epochs=1, seed=3, card={"fine": True})
    w0, w1 = trained.weights, tuned.weights
    assert (w1.crop_size, w1.window_radii) == (w0.crop_size, w0.window_radii)
    assert {k: v.shape for k, v in w1.arrays.items()} == {k: v.shape for k, v in w0.arrays.items()}
    assert any(not np.array_equal(w1.arrays[k], w0.arrays[k]) for k in w0.arrays)
    assert w1.card == {"fine": True}
    assert tuned.val_loss                                 # 90 examples: a fifth of them validate
    assert auc(forward(w1, shapes["fresh"][0]), shapes["fresh"][1]) > 0.9
    with pytest.raises(ValueError, match="initial weights take"):
        train(x[:, :20, :20], y, init=trained.weights, epochs=1)


# -- training from results files -------------------------------------------------------------------
def _fake_results(path: Path, images: np.ndarray, accepted: Sequence[int], *, is_1p: bool = False,
                  radius: float = RADIUS) -> Path:
    """A pipeline results file holding footprints ``images`` ``(K, H, W)`` with ``accepted`` the
    accepted ones (no movie, motion or summary: what training reads)."""
    K, H, W = images.shape
    good = np.asarray(sorted(accepted), np.int64)
    est = Estimates(A=sp.csc_matrix(images.reshape(K, H * W).T), dims=(H, W), idx_components=good,
                    idx_components_bad=np.setdiff1d(np.arange(K), good).astype(np.int64))
    params = Params.from_neuron(radius, is_1p=is_1p)
    return write_results_file(path, est, motion=None, summary=None, params=params, stages=[], movie_info={})


def test_train_from_results_files_records_what_went_in(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    files = []
    for i in range(2):
        images, soma = shape_images(rng, 45)
        images[7] = 0.0                                   # an empty footprint: left out
        files.append(_fake_results(tmp_path / f"run{i}.h5", images, np.flatnonzero(soma)))
    out = tmp_path / "sub" / "w.npz"
    result = train_from_results(files, out, epochs=2, seed=0)
    assert out.is_file() and not list(out.parent.glob(".*partial*"))
    w = load_weights(out)
    for name, value in result.weights.arrays.items():
        np.testing.assert_array_equal(w.arrays[name], value)
    card = w.card
    assert card == result.weights.card
    assert card["n_examples"] == 88 and card["n_soma"] == 30 and card["n_not"] == 58
    assert [f["path"] for f in card["trained_from"]] == [str(p) for p in files]
    assert [f["n_empty_left_out"] for f in card["trained_from"]] == [1, 1]
    assert card["labels"] == "accepted/rejected" and card["modality"] == "2p" and card["epochs"] == 2
    assert card["best_epoch"] == result.best_epoch and len(card["train_loss"]) == 2
    assert card["init"] == ("random" if shipped_weights("2p") is None else str(shipped_weights("2p")))
    # starting from these weights instead: their geometry and their card are kept
    again = train_from_results(files[:1], tmp_path / "w2.npz", init=out, epochs=1)
    assert again.weights.card["init"] == str(out) and again.weights.card["init_card"]["n_examples"] == 88
    assert again.weights.crop_size == w.crop_size and again.weights.card["n_examples"] == 44


def test_train_from_results_refuses_what_it_cannot_learn_from(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images, soma = shape_images(rng, 12)
    good = _fake_results(tmp_path / "good.h5", images, np.flatnonzero(soma))
    out = tmp_path / "w.npz"

    text = tmp_path / "notes.h5"
    text.write_text("not HDF5\n")
    with pytest.raises(ValueError, match="is not a somascope results file"):
        train_from_results([text], out)
    plain = tmp_path / "plain.h5"
    Estimates(A=sp.csc_matrix(images.reshape(12, -1).T), dims=images.shape[1:]).save(plain)
    with pytest.raises(ResultsFileError, match="not a somascope pipeline results file"):
        train_from_results([plain], out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_from_results([tmp_path / "missing.h5"], out)
    empty = _fake_results(tmp_path / "empty.h5", images[:0], [])
    with pytest.raises(ValueError, match="holds no components"):
        train_from_results([good, empty], out)
    everything = _fake_results(tmp_path / "all.h5", images, range(12))
    with pytest.raises(ValueError, match="all accepted .* both somata and non-somata"):
        train_from_results([everything], out)
    one_photon = _fake_results(tmp_path / "1p.h5", images, np.flatnonzero(soma), is_1p=True)
    with pytest.raises(ValueError, match="mix one-photon .*1p.h5.* and two-photon .*good.h5"):
        train_from_results([good, one_photon], out)
    with pytest.raises(ValueError, match="no manual accept/reject decision"):
        train_from_results([good], out, manual_only=True)
    with pytest.raises(ValueError, match="is a folder"):
        train_from_results([good], tmp_path)
    with pytest.raises(ValueError, match="at least one results file"):
        train_from_results([], out)
    assert not out.exists()


# -- the command line on real runs -----------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory, _quick_report: Any) -> Path:
    """A ``somascope run`` folder of a 64 × 64 × 300 two-photon movie with 8 cells (≈5 s)."""
    from somascope.pipeline import run

    sim = simulate.two_photon(dims=(64, 64), n_frames=300, n_cells=8, motion="rigid", max_shift=3.0, seed=1)
    folder = tmp_path_factory.mktemp("train-run")
    tifffile.imwrite(folder / "movie.tif", np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    run(folder / "movie.tif", folder / "out", radius=RADIUS, engine="serial", progress=False)
    return folder / "out"


def test_cli_trains_on_runs_and_the_weights_serve_the_quality_stage(
        run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from somascope.pipeline import load_results

    est = load_results(run_folder / "results.h5").estimates
    assert 0 < est.idx_components.size < est.K
    out = tmp_path / "weights.npz"
    code = main(["-q", "train-classifier", str(run_folder), "--out", str(out), "--epochs", "2", "--seed", "1"])
    printed = capsys.readouterr().out.strip()
    assert code == 0 and len(printed.splitlines()) == 1
    assert f"trained on {est.K} examples ({est.idx_components.size} somata" in printed
    assert "2 epochs, best epoch" in printed and f"--set quality.cnn_weights={out}" in printed
    w = load_weights(out)
    assert w.card["n_examples"] == est.K and w.card["seed"] == 1
    assert w.card["trained_from"][0]["path"] == str(run_folder / "results.h5")
    p = predict(est.A, est.dims, RADIUS, w)
    assert p.shape == (est.K,) and np.all((p >= 0) & (p <= 1))

    # a person's decisions in a copy of the results file: --manual-only learns from those alone
    curated = tmp_path / "curated.h5"
    shutil.copy(run_folder / "results.h5", curated)
    accept, reject = int(est.idx_components[0]), [int(k) for k in est.idx_components_bad[:3]]
    state = cur.change(cur.new_state(), est.A, accept=[accept], reject=reject, who="test")
    cur.write_curated_results(curated, state, est.idx_components, est.K)
    tuned = tmp_path / "tuned.npz"
    code = main(["-q", "train-classifier", str(curated), "--out", str(tuned), "--init", str(out), "--epochs", "1",
                 "--manual-only"])
    assert code == 0 and "trained on 4 examples (1 somata, 3 not)" in capsys.readouterr().out
    card = load_weights(tuned).card
    assert card["labels"] == "manual" and card["init"] == str(out)

    # errors are one line, exit status 2
    code = main(["-q", "train-classifier", str(run_folder / "report" / "report.html"), "--out", str(tuned)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("somascope: error: ") and "is not a somascope results file" in err
