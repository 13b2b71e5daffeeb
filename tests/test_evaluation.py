"""Component evaluation: trace SNR, r-values, the accept/reject rule and duplicates.

The central test builds estimates from the simulator's ground truth, injects junk components
(pure-noise footprints, thin processes with weak activity) and checks that the rule keeps the
true cells and rejects the junk. Everything else checks one piece against a hand computation
or a constructed case.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.signal import lfilter
from scipy.stats import norm

from somascope import simulate
from somascope.cnmf.estimates import Estimates
from somascope.evaluation import (
    activity_frames,
    area_ratio,
    binary_masks,
    eccentricity,
    evaluate_components,
    event_exceptionality,
    find_duplicates,
    footprint_masks,
    remove_duplicates,
    residual_traces,
    select_components,
    spatial_consistency,
    trace_mode,
    trace_snr,
)
from somascope.params import ParameterError, Params, QualityParams
from somascope.simulate.footprints import crop_to_fov, process_patch

FR, DECAY = 30.0, 0.4


# ----------------------------------------------------------------------------- helpers


def disc(dims: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(dims, dtype=float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return (d2 <= radius**2).astype(np.float64)


def ar1_calcium(spikes: np.ndarray, decay_frames: float) -> np.ndarray:
    return lfilter([1.0], [1.0, -np.exp(-1.0 / decay_frames)], spikes, axis=-1)


def noise_following_trace(raw: np.ndarray, decay_frames: float) -> np.ndarray:
    """What a deconvolution fitted to noise gives: events wherever the noise exceeds 2σ."""
    sd = np.std(raw)
    return ar1_calcium(np.maximum(raw - 2 * sd, 0.0), decay_frames)


class FrameSource:
    """A minimal frame source (shape, len, time slicing) wrapping an array, counting reads."""

    def __init__(self, movie: np.ndarray) -> None:
        self._movie = movie
        self.shape = movie.shape
        self.dtype = movie.dtype
        self.reads = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item: slice) -> np.ndarray:
        self.reads += 1
        return np.array(self._movie[item])


# ----------------------------------------------------------------------------- the bar


@pytest.fixture(scope="module")
def scene() -> dict:
    """Ground-truth estimates of a simulated 2-photon movie plus injected junk components."""
    sim = simulate.two_photon(dims=(96, 96), n_frames=1500, n_cells=36, seed=7)
    dims, T = sim.dims, sim.n_frames
    P = int(np.prod(dims))
    rng = np.random.default_rng(11)
    true = np.flatnonzero(sim.active)
    A_true, C_true = sim.A[:, true], sim.C[true]
    sigma_px = float(np.mean(sim.noise_std))
    decay_frames = FR * DECAY

    def process(amplitude_z: float) -> tuple[np.ndarray, np.ndarray]:
        """A thin process and weak activity: 5 isolated spikes, each peaking at ``amplitude_z``
        noise standard deviations of the process's own trace."""
        start = rng.uniform(12, dims[0] - 12, 2)
        origin, image = process_patch(rng, start, np.array([5.0, 5.0]), np.array([0.6, 0.6]))
        idx, val = crop_to_fov(origin, image, dims)
        a = np.zeros(P)
        a[idx] = val
        spikes = np.zeros(T)
        spikes[rng.choice(np.arange(20, T - 40, 60), 5, replace=False)] = amplitude_z * sigma_px / np.linalg.norm(a)
        return a, ar1_calcium(spikes, decay_frames)

    weak = [process(1.5) for _ in range(8)]       # low SNR: junk by the unsupervised tests
    moderate = [process(6.0) for _ in range(6)]   # clear events: junk only by their shape
    movie = sim.movie.copy()
    for a, c in weak + moderate:
        movie += np.outer(c, a).astype(np.float32).reshape(T, *dims)

    noise_fp = []
    for _ in range(8):
        centre = rng.uniform(6, dims[0] - 6, 2)
        noise_fp.append(np.abs(rng.standard_normal(P)) * disc(dims, tuple(centre), 4.5).ravel())
    residual = movie.reshape(T, P).T - A_true @ C_true - sim.b @ sim.f
    for a, c in weak + moderate:
        residual -= np.outer(a, c)
    noise_C = [noise_following_trace(a @ residual / (a @ a), decay_frames) for a in noise_fp]

    A = sp.hstack([A_true, sp.csc_matrix(np.stack(noise_fp + [a for a, _ in weak + moderate], axis=1))]).tocsc()
    C = np.vstack([C_true, np.array(noise_C), np.array([c for _, c in weak + moderate])]).astype(np.float32)
    K0 = true.size
    groups = {
        "true": np.arange(K0),
        "soma": np.flatnonzero(sim.kind[true] == "soma"),
        "noise": K0 + np.arange(8),
        "weak": K0 + 8 + np.arange(8),
        "moderate": K0 + 16 + np.arange(6),
    }
    est = Estimates(A=A, C=C, b=sim.b, f=sim.f.astype(np.float32), dims=dims, frame_rate=FR)
    return {"est": est, "movie": movie, "groups": groups, "sim": sim}


def test_rule_keeps_true_cells_and_rejects_injected_junk(scene: dict) -> None:
    params = Params.from_neuron(5, fr=FR, decay_time=DECAY, use_ecc=False,  # the SNR / r-value rule alone
                                use_cnn=False)
    ev = evaluate_components(scene["est"], scene["movie"], params)
    g = scene["groups"]
    accepted = np.isin(np.arange(ev.K), ev.idx_components)
    assert accepted[g["true"]].mean() >= 0.95
    assert not accepted[g["noise"]].any(), ev.SNR_comp[g["noise"]]
    assert not accepted[g["weak"]].any(), (ev.SNR_comp[g["weak"]], ev.r_values[g["weak"]])
    # the measurements behind the decisions: junk is low on both tests, cells high on both
    assert np.all(ev.SNR_comp[g["noise"]] < params.quality.min_SNR)
    assert np.all(ev.SNR_comp[g["weak"]] < params.quality.min_SNR)
    assert np.nanmax(ev.r_values[g["noise"]]) < 0.4
    assert np.median(ev.SNR_comp[g["true"]]) > 3
    assert np.median(ev.r_values[g["true"]]) > 0.95
    # processes with clear activity are real signals (SNR above all weak junk) and some pass the
    # unsupervised tests: only their shape gives them away (next test)
    assert ev.SNR_comp[g["moderate"]].min() > ev.SNR_comp[g["weak"]].max()
    assert accepted[g["moderate"]].any()


def test_eccentricity_test_rejects_processes_whatever_their_snr(scene: dict) -> None:
    params = Params.from_neuron(5, fr=FR, decay_time=DECAY, use_ecc=True)
    ev = evaluate_components(scene["est"], scene["movie"], params)
    g = scene["groups"]
    accepted = np.isin(np.arange(ev.K), ev.idx_components)
    assert accepted[g["soma"]].mean() >= 0.95
    assert not accepted[np.r_[g["noise"], g["weak"], g["moderate"]]].any()


def test_evaluation_returns_a_new_object_and_leaves_inputs_alone(scene: dict) -> None:
    est, movie = scene["est"], scene["movie"]
    movie_before = movie[::97].copy()
    C_before = est.C.copy()
    ev = evaluate_components(est, movie, Params.from_neuron(5, fr=FR, decay_time=DECAY, use_ecc=False))
    assert ev is not est
    assert est.SNR_comp is None and est.r_values is None and est.YrA is None and est.idx_components is None
    np.testing.assert_array_equal(est.C, C_before)
    np.testing.assert_array_equal(movie[::97], movie_before)
    # the accepted and rejected sets partition the components; YrA was filled in
    assert np.union1d(ev.idx_components, ev.idx_components_bad).tolist() == list(range(ev.K))
    assert np.intersect1d(ev.idx_components, ev.idx_components_bad).size == 0
    assert ev.YrA.shape == est.C.shape and ev.YrA.dtype == np.float32


def test_frame_source_and_chunking_give_the_same_result(scene: dict) -> None:
    est, movie = scene["est"], scene["movie"]
    params = Params.from_neuron(5, fr=FR, decay_time=DECAY)
    sub = est.select(np.r_[0:6, scene["groups"]["noise"][:2]])
    whole = evaluate_components(sub, movie, params)
    source = FrameSource(movie)
    chunked = evaluate_components(sub, source, params, chunk_frames=250)
    assert source.reads == 6  # one pass over 1500 frames in chunks of 250
    np.testing.assert_allclose(chunked.SNR_comp, whole.SNR_comp, rtol=1e-5)
    np.testing.assert_allclose(chunked.r_values, whole.r_values, rtol=1e-6)
    np.testing.assert_allclose(chunked.YrA, whole.YrA, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(chunked.idx_components, whole.idx_components)


def test_given_residuals_are_used_and_not_recomputed(scene: dict) -> None:
    est, movie = scene["est"], scene["movie"]
    sub = est.select(np.arange(6))
    params = Params.from_neuron(5, fr=FR, decay_time=DECAY)
    first = evaluate_components(sub, movie, params)
    # residuals given with twice the noise: the SNR must fall, the r-values stay
    noisier = dataclasses.replace(sub, YrA=2 * first.YrA)
    second = evaluate_components(noisier, movie, params)
    np.testing.assert_array_equal(second.YrA, 2 * first.YrA)
    assert np.all(second.SNR_comp < first.SNR_comp)
    assert np.median(second.SNR_comp / first.SNR_comp) < 0.6
    np.testing.assert_allclose(second.r_values, first.r_values)


def test_cnn_predictions_enter_the_rule_when_present(scene: dict) -> None:
    est, movie = scene["est"], scene["movie"]
    g = scene["groups"]
    params = Params.from_neuron(5, fr=FR, decay_time=DECAY, use_ecc=False, use_cnn=False)
    plain = evaluate_components(est, movie, params)
    params = params.replace(use_cnn=True)
    cell, junk = g["true"][0], g["noise"][0]
    assert cell in plain.idx_components and junk in plain.idx_components_bad
    cnn = np.full(est.K, 0.5)
    cnn[cell], cnn[junk] = 0.05, 0.95  # the classifier vetoes a cell and vouches for junk
    with_cnn = dataclasses.replace(est, cnn_preds=cnn)
    params = params.replace(SNR_lowest=0.0)  # noise has SNR < 0.5: let the classifier alone decide
    ev = evaluate_components(with_cnn, movie, params)
    expected = np.union1d(np.setdiff1d(plain.idx_components, [cell]), [junk])
    np.testing.assert_array_equal(ev.idx_components, expected)
    off = evaluate_components(with_cnn, movie, params.replace(use_cnn=False))
    np.testing.assert_array_equal(off.idx_components, plain.idx_components)


def test_volumetric_components_are_evaluated() -> None:
    sim = simulate.volumetric(dims=(6, 40, 40), n_frames=400, n_cells=14, decay_time=1.2, seed=2)
    dims, T = sim.dims, sim.n_frames
    rng = np.random.default_rng(3)
    act = np.flatnonzero(sim.active)
    junk = []
    for _ in range(4):
        centre = (rng.uniform(1, 5), *rng.uniform(6, 34, 2))
        junk.append(np.abs(rng.standard_normal(int(np.prod(dims)))) * _ellipsoid(dims, centre, (1.5, 4, 4)))
    Aj = np.stack(junk, axis=1)
    residual = sim.movie.reshape(T, -1).T - sim.A[:, act] @ sim.C[act] - sim.b @ sim.f
    Cj = np.array([noise_following_trace(a @ residual / (a @ a), sim.frame_rate * 1.2) for a in Aj.T])
    est = Estimates(A=sp.hstack([sim.A[:, act], sp.csc_matrix(Aj)]).tocsc(), C=np.vstack([sim.C[act], Cj]),
                    b=sim.b, f=sim.f, dims=dims, frame_rate=sim.frame_rate)
    params = Params.from_neuron((1.5, 4.0, 4.0), fr=sim.frame_rate, decay_time=1.2, use_ecc=False)
    ev = evaluate_components(est, sim.movie, params)
    K0 = act.size
    accepted = np.isin(np.arange(ev.K), ev.idx_components)
    soma = np.asarray(sim.kind)[act] == "soma"
    assert accepted[:K0][soma].all()
    # the shape classifier reads a volume's footprints in their widest plane: the dendrite is not a soma
    assert not accepted[:K0][~soma].any() and ev.cnn_preds[:K0][~soma].max() < 0.1
    assert not accepted[K0:].any()
    assert np.all(ev.r_values[:K0] > 0.7) and np.all(ev.r_values[K0:] < 0.4)


def _ellipsoid(dims: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(dims, dtype=float)
    return (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1).astype(float).ravel()


# ----------------------------------------------------------------------------- trace SNR


def test_trace_mode_finds_the_baseline_under_transients() -> None:
    rng = np.random.default_rng(0)
    T = 3000
    noise = rng.standard_normal((100, T))
    spikes = (rng.random((100, T)) < 0.01) * rng.uniform(3, 10, (100, T))
    traces = 5.0 + noise + ar1_calcium(spikes, 10.0)  # calcium above baseline ~30 % of the time
    error = trace_mode(traces) - 5.0
    assert abs(error.mean()) < 0.2 and error.std() < 0.2 and np.abs(error).max() < 0.6
    assert np.mean(np.median(traces, axis=1) - 5.0) > 2 * abs(error.mean())  # the median is pulled up
    assert trace_mode(np.full(50, 2.5)) == 2.5
    assert isinstance(trace_mode(traces[0]), float)


def test_noise_and_baseline_of_pure_noise_are_recovered() -> None:
    rng = np.random.default_rng(1)
    Y = 3.0 + 0.5 * rng.standard_normal((200, 2000))
    ex = event_exceptionality(Y, 12)
    assert abs(np.mean(ex.noise) / 0.5 - 1) < 0.01
    assert np.percentile(np.abs(ex.noise / 0.5 - 1), 90) < 0.08
    assert np.all(np.abs(ex.baseline - 3.0) < 0.5 * 0.3)
    # noise has no exceptional events: SNR stays far below the usual thresholds
    assert np.percentile(ex.snr, 99) < 0.7
    assert np.percentile(trace_snr(Y, 12, sigma_factor=1), 99) < 2.2
    assert np.all(ex.fitness <= 0)


def test_snr_matches_a_direct_evaluation_of_the_paper_formulas() -> None:
    rng = np.random.default_rng(2)
    T, N = 800, 10
    y = rng.standard_normal(T)
    y[300:310] += 5.0
    for factor in (1.0, 3.0):
        ex = event_exceptionality(y[None], N, sigma_factor=factor)
        beta, sigma = ex.baseline[0], ex.noise[0]
        below = y[y < beta] - beta
        assert sigma == pytest.approx(np.sqrt(np.mean(below**2)))  # half-normal noise below the baseline
        u = norm.sf((y - beta) / (factor * sigma))  # probability of each value under the noise
        windows = np.array([np.prod(u[t:t + N]) for t in range(T - N + 1)])  # of each N-frame event
        P_min = windows.min()
        assert ex.onset[0] == int(np.argmin(windows)) == 300
        assert ex.fitness[0] == pytest.approx(np.log(P_min), rel=1e-9)
        assert ex.snr[0] == pytest.approx(norm.isf(P_min ** (1 / N)), rel=1e-9)  # Φ⁻¹(1 − P^(1/N))
    assert 4.5 < event_exceptionality(y, N, sigma_factor=1).snr[0] < 6.5  # a 5σ plateau


def test_snr_properties() -> None:
    rng = np.random.default_rng(3)
    y = rng.standard_normal(1000)
    y[500:512] += 4.0
    base = trace_snr(y, 12)[0]
    # invariant to the units and offset of the trace
    assert trace_snr(7.0 * y + 100.0, 12)[0] == pytest.approx(base, rel=1e-6)
    # grows with the event
    z = y.copy()
    z[500:512] += 4.0
    assert trace_snr(z, 12)[0] > base + 1
    # unscaled z-scores (sigma_factor=1) give much larger numbers for the same trace
    assert trace_snr(y, 12, sigma_factor=1)[0] > 2 * base
    # huge events do not overflow
    z[500:512] += 1e6
    assert np.isfinite(trace_snr(z, 12)[0]) and trace_snr(z, 12)[0] > 1000
    # a flat trace has no evidence of anything
    assert trace_snr(np.ones(100), 5)[0] == 0.0
    # a window longer than the trace uses the whole trace
    assert event_exceptionality(y[:8], 12).window == 8


def test_snr_input_errors() -> None:
    with pytest.raises(ValueError, match="window"):
        trace_snr(np.zeros((2, 50)), 0)
    with pytest.raises(ValueError, match="NaN"):
        trace_snr(np.array([[1.0, np.nan, 2.0]]), 2)
    with pytest.raises(ValueError, match="sigma_factor"):
        trace_snr(np.zeros((1, 50)), 3, sigma_factor=-1)
    with pytest.raises(ValueError, match="K × T"):
        trace_snr(np.zeros((2, 3, 4)), 3)


# ----------------------------------------------------------------------------- residuals & r-values


#: Radius of the tiny movie's cells: Gaussians of σ 2.5 px are 4.5 px wide at 0.2 of their peak.
TINY_RADIUS = 4.5


def make_tiny(synchronous: bool = False) -> dict:
    """4 neurons (cells 2 and 3 overlap) in 30×30×300 on a background ramp, known noise.
    ``synchronous``: cells 2 and 3 fire together (identical traces)."""
    dims, T = (30, 30), 300
    rng = np.random.default_rng(4)
    centres = [(8, 8), (8, 21), (21, 12), (21, 17)]
    grid = np.indices(dims, dtype=float)
    A = np.stack([np.exp(-((grid - np.array(c)[:, None, None]) ** 2).sum(0) / (2 * 2.5**2)).ravel()
                  for c in centres], axis=1)
    A[A < 0.05] = 0
    spikes = (rng.random((4, T)) < 0.03) * rng.uniform(1, 3, (4, T))
    if synchronous:
        spikes[3] = spikes[2]
    C = ar1_calcium(spikes, 8.0)
    b = (1.0 + 4.0 * grid[1] / dims[1]).ravel()[:, None]  # brighter to the right
    f = 2.0 + 0.5 * np.sin(np.arange(T)[None] / 20)
    clean = (A @ C + b @ f).T.reshape(T, *dims)
    movie = (clean + 0.2 * rng.standard_normal(clean.shape)).astype(np.float32)
    return {"A": sp.csc_matrix(A), "C": C, "b": b, "f": f, "movie": movie, "clean": clean.astype(np.float32),
            "dims": dims}


@pytest.fixture(scope="module")
def tiny() -> dict:
    return make_tiny()


def test_residual_traces_equal_the_dense_formula(tiny: dict) -> None:
    A, C, b, f, movie = tiny["A"], tiny["C"], tiny["b"], tiny["f"], tiny["movie"]
    Yr = movie.reshape(movie.shape[0], -1).T.astype(np.float64)
    Ad = A.toarray()
    expected = (Ad.T @ (Yr - Ad @ C - b @ f)) / (Ad**2).sum(0)[:, None]
    got = residual_traces(movie, A, C, b, f, chunk_frames=64)
    np.testing.assert_allclose(got, expected, atol=2e-4)
    # noise-free data: the traces explain everything
    assert np.abs(residual_traces(tiny["clean"], A, C, b, f)).max() < 1e-3


def test_rvalues_of_true_and_wrong_footprints(tiny: dict) -> None:
    A, C, b, f, movie, dims = tiny["A"], tiny["C"], tiny["b"], tiny["f"], tiny["movie"], tiny["dims"]
    r = spatial_consistency(movie, A, C, b, f)
    assert np.all(r > 0.9)
    # a footprint where there is no cell, given cell 0's (active) trace: inconsistent
    bump = np.exp(-((np.indices(dims) - np.array([15, 27])[:, None, None]) ** 2).sum(0) / 8.0).ravel()
    wrong = sp.hstack([A, sp.csc_matrix((bump * (bump > 0.05))[:, None])]).tocsc()
    r2 = spatial_consistency(movie, wrong, np.vstack([C, C[:1]]), b, f)
    assert r2[4] < 0.3
    np.testing.assert_allclose(r2[1:4], r[1:4], atol=0.05)
    # undefined cases: a flat trace, a footprint of fewer than 3 pixels
    tiny_fp = np.zeros((900, 1))
    tiny_fp[[100, 101], 0] = 1.0
    r3 = spatial_consistency(movie, sp.hstack([A, sp.csc_matrix(tiny_fp)]).tocsc(), np.vstack([C, C[:1]]), b, f)
    assert np.isnan(r3[4])
    C_flat = C.copy()
    C_flat[2] = 0
    assert np.isnan(spatial_consistency(movie, A, C_flat, b, f)[2])
    # a binary mask is constant on its support: no correlation can be computed
    mask = sp.csc_matrix((A[:, [0]].toarray() > 0).astype(float))
    assert np.isnan(spatial_consistency(movie, mask, C[:1], b, f)[0])


def test_rvalue_removes_background_and_other_components(tiny: dict) -> None:
    A, C, b, f, movie = tiny["A"], tiny["C"], tiny["b"], tiny["f"], tiny["movie"]
    removed = spatial_consistency(movie, A, C, b, f)
    assert np.all(removed > 0.9)
    # the activity image is a change from the temporal mean: a static structure the model
    # leaves on a footprint (here the whole background ramp, 2–10× a cell's events) cancels
    missed_background = spatial_consistency(movie, A, C)
    assert np.all(missed_background > 0.9)
    # ... while a second cell firing in the same frames, left out of the model, stays in it
    grid = np.indices(tiny["dims"], dtype=float)
    twin = np.exp(-((grid - np.array([8.0, 13.0])[:, None, None]) ** 2).sum(0) / (2 * 2.5**2)).ravel()
    with_twin = movie + (twin[:, None] * C[0][None]).T.reshape(movie.shape).astype(np.float32)
    assert spatial_consistency(with_twin, A, C, b, f)[0] < removed[0] - 0.1
    # cells 2 and 3 overlap and fire together: their frames cannot be told apart, so only
    # subtracting the neighbour's activity leaves each cell's own image
    sync = make_tiny(synchronous=True)
    both = spatial_consistency(sync["movie"], sync["A"], sync["C"], sync["b"], sync["f"])
    assert np.all(both > 0.9)
    alone = spatial_consistency(sync["movie"], sync["A"][:, :3], sync["C"][:3], sync["b"], sync["f"])
    assert alone[2] < both[2] - 0.1


def test_flat_traces_are_judged_on_snr_and_empty_footprints_rejected(tiny: dict) -> None:
    A, C, b, f, movie, dims = tiny["A"], tiny["C"], tiny["b"], tiny["f"], tiny["movie"], tiny["dims"]
    C2 = np.vstack([C, np.abs(np.random.default_rng(0).standard_normal((1, C.shape[1])))])
    C2[2] = 0.0  # the fit lost cell 2's trace, but the data on its footprint still show it
    A2 = sp.hstack([A, sp.csc_matrix((900, 1))]).tocsc()  # and a component with no pixels
    ev = evaluate_components(Estimates(A=A2, C=C2, b=b, f=f, dims=dims), movie,
                             Params.from_neuron(TINY_RADIUS, fr=FR, decay_time=DECAY))
    assert np.isnan(ev.r_values[2]) and ev.SNR_comp[2] > 2.5
    assert ev.idx_components.tolist() == [0, 1, 2, 3]
    assert ev.idx_components_bad.tolist() == [4]


def test_an_out_of_core_store_gives_the_in_memory_result(tiny: dict, tmp_path) -> None:
    from somascope.store import Store

    movie = tiny["movie"]
    store = Store.create(tmp_path / "movie.zarr", movie.shape)
    store.write(0, movie)
    store = store.finalize()
    est = Estimates(A=tiny["A"], C=tiny["C"], b=tiny["b"], f=tiny["f"], dims=tiny["dims"])
    params = Params.from_neuron(TINY_RADIUS, fr=FR, decay_time=DECAY)
    on_disk = evaluate_components(est, store, params, chunk_frames=70)
    in_memory = evaluate_components(est, movie, params)
    np.testing.assert_allclose(on_disk.SNR_comp, in_memory.SNR_comp, rtol=1e-5)
    np.testing.assert_allclose(on_disk.r_values, in_memory.r_values, rtol=1e-6)
    np.testing.assert_array_equal(on_disk.idx_components, np.arange(4))


def test_activity_frames_are_windows_around_the_highest_peaks() -> None:
    c = np.zeros(200)
    for t, h in ((20, 1.0), (80, 5.0), (150, 3.0), (195, 0.1)):
        c[t] = h
    frames = activity_frames(c[None], n_peaks=2, frames_before=2, frames_after=3)[0]
    np.testing.assert_array_equal(frames, np.r_[78:84, 148:154])
    # windows are clipped to the movie; a flat trace has no frames
    frames = activity_frames(np.r_[np.zeros(10), 1.0][None], n_peaks=1, frames_before=2, frames_after=5)[0]
    np.testing.assert_array_equal(frames, [8, 9, 10])
    assert activity_frames(np.zeros((1, 50)))[0].size == 0
    with pytest.raises(ValueError, match="n_peaks"):
        activity_frames(c[None], n_peaks=0)


# ----------------------------------------------------------------------------- shape & rule


def test_eccentricity_of_known_shapes() -> None:
    from skimage.measure import regionprops

    dims = (80, 80)
    yy, xx = np.indices(dims, dtype=float)
    round_ = disc(dims, (40, 40), 8)
    ellipse = ((((yy - 40) * 0.8 + (xx - 40) * 0.6) / 24) ** 2 + ((-(yy - 40) * 0.6 + (xx - 40) * 0.8) / 8) ** 2 <= 1)
    line = ((np.abs(yy - xx) < 0.5) & (yy > 10) & (yy < 50)).astype(float)
    ecc = eccentricity(np.stack([round_.ravel(), ellipse.ravel(), line.ravel(), np.zeros(6400)], axis=1), dims)
    assert ecc[0] == pytest.approx(1.0, abs=0.02)
    props = regionprops(ellipse.astype(int))[0]  # an independent computation of the axes
    assert ecc[1] == pytest.approx(props.axis_major_length / props.axis_minor_length, rel=0.01)
    assert ecc[1] == pytest.approx(3.0, rel=0.05)
    assert ecc[2] > 20
    assert np.isnan(ecc[3])
    # volumes are measured in physical units: a ball sampled at 2 µm in z, 1 µm in y and x
    zz, y3, x3 = np.indices((10, 30, 30), dtype=float)
    ball = (((zz - 5) * 2) ** 2 + (y3 - 15) ** 2 + (x3 - 15) ** 2 <= 36).astype(float).ravel()[:, None]
    assert eccentricity(ball, (10, 30, 30), spacing=(2.0, 1.0, 1.0))[0] == pytest.approx(1.0, abs=0.1)
    assert eccentricity(ball, (10, 30, 30))[0] > 1.8
    with pytest.raises(ValueError, match="spacing"):
        eccentricity(ball, (10, 30, 30), spacing=(1.0, 1.0))


def test_area_ratio_of_discs_and_their_largest_piece() -> None:
    dims = (60, 60)
    one = disc(dims, (20, 20), 6)
    two = one + 0.5 * disc(dims, (45, 45), 3)  # a weaker second piece: not part of the mask
    faint = one + 0.1 * disc(dims, (30, 30), 25)  # tails below 0.2 of the peak: not either
    A = np.stack([one.ravel(), two.ravel(), faint.ravel(), np.zeros(3600)], axis=1)
    masks = footprint_masks(A, dims)
    ratio = area_ratio(masks, dims, (6, 6))
    assert ratio[:3] == pytest.approx(one.sum() / (np.pi * 36), rel=1e-9)
    assert ratio[0] == pytest.approx(1.0, abs=0.05) and ratio[3] == 0
    assert area_ratio(masks, dims, (3, 3))[0] == pytest.approx(4 * ratio[0])


def test_a_volume_cell_is_judged_by_its_widest_plane() -> None:
    """A cell of a thin stack (its mask reaching all 4 planes, 4.5 px wide) is round and about
    one neuron in its widest plane, while in voxels it looks flat and several neurons deep; a
    sheet of neuropil 4× as wide is large there too."""
    from somascope.evaluation.quality import widest_planes

    dims = (4, 40, 40)
    z, y, x = np.indices(dims, dtype=float)
    cell = np.exp(-((z - 1.5) ** 2 / 2 / 1.2**2 + ((y - 20) ** 2 + (x - 18) ** 2) / 2 / 2.5**2))
    sheet = np.exp(-((z - 1.5) ** 2 / 2 / 1.2**2 + ((y - 20) ** 2 + (x - 20) ** 2) / 2 / 10.0**2))
    masks = footprint_masks(np.stack([cell.ravel(), sheet.ravel(), np.zeros(cell.size)], axis=1), dims)
    planes = widest_planes(masks, dims)
    assert planes.shape == (40 * 40, 3) and planes[:, 2].nnz == 0
    np.testing.assert_array_equal(planes[:, 0].toarray().reshape(40, 40), masks[:, 0].toarray().reshape(dims)[1])
    ecc = eccentricity(planes, dims[1:])
    area = area_ratio(planes, dims[1:], (4.0, 4.0))
    assert ecc[0] < 1.2 and 0.8 < area[0] < 1.6 and area[1] > 8 * area[0]
    assert eccentricity(masks, dims)[0] > 2.0  # in voxels the same cell looks flat


def test_area_test_rejects_large_active_neuropil(tiny: dict) -> None:
    A, C, b, f, movie, dims = tiny["A"], tiny["C"], tiny["b"], tiny["f"], tiny["movie"], tiny["dims"]
    grid = np.indices(dims, dtype=float)
    blob = np.exp(-((grid - 15.0) ** 2).sum(0) / (2 * 7.0**2)).ravel()  # out-of-focus neuropil
    rng = np.random.default_rng(8)
    c_blob = ar1_calcium((rng.random(movie.shape[0]) < 0.03) * 6.0, 20.0)
    with_blob = movie + (blob[:, None] * c_blob[None]).T.reshape(movie.shape).astype(np.float32)
    est = Estimates(A=sp.hstack([A, sp.csc_matrix(blob[:, None])]).tocsc(), C=np.vstack([C, c_blob]),
                    b=b, f=f, dims=dims)
    params = Params.from_neuron(TINY_RADIUS, fr=FR, decay_time=DECAY)
    ev = evaluate_components(est, with_blob, params)
    assert ev.idx_components.tolist() == [0, 1, 2, 3]
    off = evaluate_components(est, with_blob, params.replace(use_area=False, use_cnn=False))
    assert 4 in off.idx_components  # a real signal, which only its size shows not to be a soma
    shape = evaluate_components(est, with_blob, params.replace(use_area=False))
    assert shape.cnn_preds[4] <= params.quality.cnn_lowest < shape.cnn_preds[:4].min()  # ... or its shape
    assert shape.idx_components.tolist() == [0, 1, 2, 3]


def test_select_components_truth_table() -> None:
    q = QualityParams(min_SNR=2.5, SNR_lowest=0.5, rval_thr=0.8, rval_lowest=-0.2, min_cnn_thr=0.9, cnn_lowest=0.1,
                      use_ecc=False, use_area=False)
    snr = np.array([3.0, 1.0, 1.0, 0.4, 3.0, 1.0, np.nan, 3.0, 3.0])
    r = np.array([0.0, 0.9, 0.5, 0.95, -0.5, np.nan, 0.9, 0.0, 0.0])
    good, bad = select_components(snr, r, quality=q)
    assert good.tolist() == [0, 1, 6, 7, 8]  # SNR passes; r passes; NaN is no evidence either way
    cnn = np.array([0.5, 0.5, 0.95, 0.5, 0.5, 0.95, 0.5, 0.05, 0.5])
    good, bad = select_components(snr, r, cnn, quality=q)
    assert good.tolist() == [0, 1, 2, 5, 6, 8]  # 2 and 5 rescued by the CNN, 7 vetoed by it
    assert np.union1d(good, bad).tolist() == list(range(9))
    ecc = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0])
    q_ecc = dataclasses.replace(q, use_ecc=True, max_ecc=3.0)
    assert select_components(snr, r, quality=q_ecc, ecc=ecc)[0].tolist() == [0, 1, 6, 7]
    valid = np.ones(9, bool)
    valid[0] = False
    assert 0 in select_components(snr, r, quality=q, valid=valid)[1]
    with pytest.raises(ValueError, match="ecc"):
        select_components(snr, r, quality=q_ecc)
    area = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 2.5])
    q_area = dataclasses.replace(q, use_area=True, max_area_ratio=2.5)
    assert select_components(snr, r, quality=q_area, area=area)[0].tolist() == [0, 1, 6, 8]
    with pytest.raises(ValueError, match="area"):
        select_components(snr, r, quality=q_area)
    with pytest.raises(ValueError, match="r_values"):
        select_components(snr, r[:3], quality=q)


def test_evaluate_components_input_errors(tiny: dict) -> None:
    A, C, b, f, movie, dims = tiny["A"], tiny["C"], tiny["b"], tiny["f"], tiny["movie"], tiny["dims"]
    est = Estimates(A=A, C=C, b=b, f=f, dims=dims)
    params = Params.from_neuron(TINY_RADIUS, fr=FR, decay_time=DECAY)
    with pytest.raises(ValueError, match="no traces C"):
        evaluate_components(Estimates(A=A, dims=dims), movie, params)
    with pytest.raises(ValueError, match="dims"):
        evaluate_components(est, movie[:, :20], params)
    with pytest.raises(ValueError, match="frames"):
        evaluate_components(est, movie[:100], params)
    with pytest.raises(ValueError, match="T × H × W"):
        evaluate_components(est, movie.reshape(300, -1), params)
    with pytest.raises(TypeError, match="Params"):
        evaluate_components(est, movie, {"min_SNR": 2})
    bad = movie.copy()
    bad[5, 8, 8] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_components(est, bad, params)
    bad = movie.copy()
    bad[5, 0, 29] = np.nan  # off every footprint: harmless
    assert evaluate_components(est, bad, params).idx_components.size == 4


# ----------------------------------------------------------------------------- duplicates


@pytest.fixture()
def cells() -> tuple[np.ndarray, tuple[int, int]]:
    dims = (40, 40)
    base = [disc(dims, c, 4) for c in ((8, 8), (8, 30), (30, 8), (30, 30))]
    return np.stack([m.ravel() for m in base], axis=1), dims


def test_copies_and_pieces_of_a_cell_are_duplicates(cells: tuple) -> None:
    A, dims = cells
    copy0 = np.roll(A[:, 0].reshape(dims), 1, axis=1).ravel() * 0.9  # found again, 1 px off
    exact1 = A[:, 1] * 2.0                                            # same mask, other scale
    half2 = A[:, 2] * (np.indices(dims)[1].ravel() < 8)              # the left half of cell 2
    neighbour = disc(dims, (30, 36), 4).ravel()                       # overlaps cell 3 a little
    A2 = np.column_stack([A, copy0, exact1, half2, neighbour])
    score = np.array([0.9, 0.85, 0.9, 0.9, 0.95, 0.8, 0.1, 0.9])
    dup = find_duplicates(A2, score=score, max_distance=0.3)
    pairs = {tuple(p) for p in dup.pairs.tolist()}
    assert pairs == {(0, 4), (1, 5), (2, 6)}
    # the better score stays: the copy of 0 wins, 1 wins over its copy, the half is removed
    assert dup.remove.tolist() == [0, 5, 6]
    assert dup.duplicate_of[[0, 5, 6]].tolist() == [4, 1, 2]
    assert dup.keep.tolist() == [1, 2, 3, 4, 7]
    # containment below the threshold: the neighbour stays apart from cell 3
    assert (3, 7) not in pairs


def test_duplicate_chains_keep_distinct_cells(cells: tuple) -> None:
    A, dims = cells
    blob = np.clip(A[:, 0] + A[:, 1] + disc(dims, (8, 19), 8).ravel(), 0, 1)  # covers cells 0 and 1
    A2 = np.column_stack([A, blob])
    dup = find_duplicates(A2, score=np.array([0.9, 0.9, 0.9, 0.9, 0.5]))
    assert dup.remove.tolist() == [4]  # both cells kept; the blob containing them goes
    dup = find_duplicates(A2, score=np.array([0.5, 0.5, 0.9, 0.9, 0.95]))
    assert dup.remove.tolist() == [0, 1]
    # without scores, the larger footprint is kept
    assert find_duplicates(np.column_stack([A[:, 0], A[:, 0] * (np.arange(1600) < 8 * 40)])).remove.tolist() == [1]


def test_remove_duplicates_on_estimates(cells: tuple) -> None:
    A, dims = cells
    A2 = np.column_stack([A, A[:, 2]])
    C = np.arange(5 * 10, dtype=np.float32).reshape(5, 10)
    est = Estimates(A=A2, C=C, dims=dims, r_values=np.array([0.9, 0.9, 0.7, 0.9, 0.95]),
                    idx_components=np.array([0, 1, 2, 3, 4]))
    out = remove_duplicates(est)
    assert out.K == 4 and est.K == 5
    np.testing.assert_array_equal(out.C, C[[0, 1, 3, 4]])
    np.testing.assert_array_equal(out.idx_components, np.arange(4))
    np.testing.assert_array_equal(binary_masks(out.A).sum(axis=0).A1, binary_masks(A2[:, [0, 1, 3, 4]]).sum(axis=0).A1)


def test_duplicate_input_errors(cells: tuple) -> None:
    A, _ = cells
    with pytest.raises(ValueError, match="score"):
        find_duplicates(A, score=np.ones(3))
    with pytest.raises(ValueError, match="max_distance"):
        find_duplicates(A, max_distance=1.5)
    with pytest.raises(ValueError, match="subset_thr"):
        find_duplicates(A, subset_thr=0)
    with pytest.raises(ValueError, match="binarise_frac"):
        binary_masks(A, 2.0)
    with pytest.raises(TypeError, match="Estimates"):
        remove_duplicates(A)


def test_select_components_area_bounds() -> None:
    q = QualityParams(min_SNR=2.5, SNR_lowest=0.5, use_ecc=False, use_area=True, max_area_ratio=2.5,
                      min_area_ratio=0.35)
    snr = np.full(5, 5.0)
    r = np.full(5, 0.9)
    area = np.array([0.1, 0.34, 0.36, 2.4, 2.6])
    good, bad = select_components(snr, r, quality=q, area=area)
    assert good.tolist() == [2, 3] and bad.tolist() == [0, 1, 4]  # pieces and neuropil-sized blobs go
    with pytest.raises(ParameterError, match="min_area_ratio"):
        QualityParams(min_area_ratio=3.0, max_area_ratio=2.5)
