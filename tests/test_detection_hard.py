"""Detection at default parameters on a small member of the hard two-photon family.

The full-size, multi-seed accuracy runs are in ``benchmarks/bench_accuracy.py`` (docs/accuracy.md);
this is the small version that CI runs: dense somata, donuts, dendrites, silent cells, active
out-of-focus neuropil blobs, vessels, bleaching and ~8 photons per pixel per frame, fitted with
the defaults that ``Params.from_neuron(radius, fr)`` derives, and scored by the dev_sim rule
(masks at 0.2 of the peak, largest piece, Jaccard < 0.7, Hungarian) against the active somata.
"""

from __future__ import annotations

import numpy as np
import pytest

from somascope import simulate
from somascope.cnmf import fit
from somascope.metrics import match_footprints, trace_correlation
from somascope.params import Params


@pytest.fixture(scope="module")
def hard_fit():
    sim = simulate.two_photon(dims=(112, 112), n_frames=900, frame_rate=15.0, decay_time=0.8, neuron_radius=6.0,
                              motion=None, seed=11, preset="hard")
    est = fit(sim.movie, Params.from_neuron(6.0, fr=15.0))
    targets = np.flatnonzero((sim.kind == "soma") & np.asarray(sim.active, bool))
    return sim, est, targets


def test_defaults_find_the_active_somata_of_a_hard_movie(hard_fit) -> None:
    sim, est, targets = hard_fit
    acc = est.accepted_indices
    m = match_footprints(sim.A[:, targets], est.A[:, acc], sim.dims, binarise_frac=0.2, largest_piece=True)
    snr = np.asarray(sim.extra["snr"])[targets]
    found = np.zeros(targets.size, bool)
    found[m.ref_idx] = True
    # the defaults before the hard family: precision 0.83, F1 0.54 (recall 0.40) on this movie
    assert m.precision >= 0.85
    assert found[snr >= 6].mean() >= 0.9
    assert found[snr < 3].sum() <= 1  # below that, nothing tells a cell from noise
    assert m.f1 >= 0.65  # this seed has 11 of its 25 active somata below SNR 5
    r = trace_correlation(sim.C[targets], est.C[acc], m)
    assert np.median(r) >= 0.9


def test_neuropil_and_dendrites_are_not_accepted(hard_fit) -> None:
    sim, est, targets = hard_fit
    others = np.flatnonzero(sim.kind != "soma")  # dendrite segments
    acc = est.accepted_indices
    m = match_footprints(sim.A[:, others], est.A[:, acc], sim.dims, binarise_frac=0.2, largest_piece=True)
    assert m.tp <= max(1, 0.25 * others.size)
    # whatever is accepted is about a soma's size
    from somascope.evaluation import area_ratio, footprint_masks

    assert np.all(area_ratio(footprint_masks(est.A[:, acc], sim.dims), sim.dims, (6.0, 6.0)) <= 2.5)
