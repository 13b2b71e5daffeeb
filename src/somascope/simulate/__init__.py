"""Simulated calcium-imaging movies with ground truth, for tests, demos and benchmarks.

:func:`two_photon`, :func:`one_photon` and :func:`volumetric` return a :class:`Simulation`
(movie + footprints ``A``, traces ``C``/``S``, background ``b``/``f``, true motion, noise
level); :func:`sessions` simulates several sessions of one field of view with known
deformations and cell identities (:func:`identity_matches`). ``two_photon(preset="hard")``
is a dense, dim, cluttered family calibrated on an independent simulator
(:mod:`~somascope.simulate.hard`), and ``one_photon(preset="hard")`` its micro-endoscope-like
one-photon counterpart — broad scattered somata 2–8 % above a large, fluctuating, vignetted
background (:mod:`~somascope.simulate.hard_1p`); both vary with ``dims``, ``n_frames``,
``frame_rate``, ``neuron_radius`` and ``decay_time``. ``volumetric(preset="hard")`` is the
two-photon family in 3-D (:mod:`~somascope.simulate.hard_volume`: somata spanning ~2 planes,
per-plane background, the same in-plane motion on every plane), and ``channels=2`` gives the
hard two-photon and volume presets a static structural channel
(:mod:`~somascope.simulate.structural`). :func:`write_ground_truth_folder` writes
a simulation in the ``dev_sim`` layout (``movie.tif`` uint16 + ``gt.npz``; a volume or two
channels as an ImageJ hyperstack, ``TZYX`` / ``TCYX`` / ``TZCYX``). Every random ingredient is
drawn from its own stream of ``seed``, so one seed always gives the same movie, in memory or
written out of core to a :class:`somascope.store.Store`.
"""

from __future__ import annotations

from .generators import one_photon, two_photon, volumetric
from .groundtruth import write_ground_truth_folder
from .result import Simulation, describe, identity_matches
from .sessions import sessions

__all__ = ["Simulation", "describe", "identity_matches", "one_photon", "sessions", "two_photon", "volumetric",
           "write_ground_truth_folder"]
