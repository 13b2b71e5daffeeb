"""Typed analysis parameters: one object, ten groups, CaImAn/Mesmerize keys accepted.

:class:`Params` holds one dataclass per stage of the pipeline:

==============  ==========================================================================
group           what it controls
==============  ==========================================================================
data            what is known about the recording (frame rate, indicator, pixel size, cell size)
motion          rigid / piecewise-rigid (NoRMCorre) motion correction
init            initialisation of components (GreedyROI, RollingGreedyROI, GreedyCorr, …)
patch           splitting the field of view into overlapping patches (MapReduce)
merge           merging of duplicate / split components
temporal        block-coordinate updates of the traces (C, f)
spatial         updates of the footprints (A, b)
quality         component evaluation (SNR, r-value, CNN) and the optional refit
online          OnACID
deconvolution   OASIS deconvolution and noise / time-constant estimation
==============  ==========================================================================

CaImAn keeps the AR order ``p`` and the noise settings in its ``preprocess`` and ``temporal``
groups; here they all live in ``deconvolution`` (one name, one place), and ``temporal`` keeps
only the block-update settings. The number of background components ``nb`` (CaImAn's ``gnb``)
is a property of the model and lives in ``init``.

Derived defaults
----------------
Users know the neuron radius (px, or µm with the pixel size ``dxy``), the frame rate ``fr`` and
the indicator's ``decay_time``. :meth:`Params.from_dict` / :meth:`Params.from_neuron` fill every
parameter *not given* from these with the rules below (``r`` = neuron radius in px per axis,
``1p`` = ``data.is_1p``). Given values always win. ``Params()`` equals the rules applied to
``r = 5 px``, ``fr = 30 Hz``, ``decay_time = 0.4 s``, two-photon.

* ``data.neuron_radius``: given, else ``neuron_radius_um / dxy``, else inferred from a given
  ``gSig`` (``r = gSig``, 1p: ``2·gSig``) or ``gSiz`` (``(gSiz - 1) / 2``), else 5 px.
* ``init.gSig = r`` (1p: ``r / 2``, the CNMF-E filter width);
  ``init.gSiz = 2·ceil(r) + 1`` (odd; equals ``2·gSig + 1`` for two-photon).
* ``patch.rf = 4·gSiz`` (1p: ``3·gSiz``; GreedyCorr's cost grows faster than a patch's area:
  4·gSiz patches cost it 4.5× the time on a 256×256 one-photon movie): patches of about
  eight neurons across (88 px for 5 px neurons), large enough that the overlaps cost little;
  ``patch.stride = gSiz`` so every neuron lies whole in some patch.
* ``init.K`` = components per patch: ``round(0.6 × patch area / neuron area)``; in a volume
  the neuron is its ellipsoid, ``4/3·r_z`` planes (at least one) of its in-plane disc; a patch cut short by the field
  of view (a thin stack's depth) gets its share of it (room
  for dense somata, dendrites and neuropil pieces: surplus candidates are merged away or
  rejected by the quality tests, missing ones are lost), at least 1; 30 when ``rf`` is None
  (whole field of view). The same for one-photon data: GreedyCorr takes its seeds in order of
  ``corr × pnr`` and stops at ``K`` or when no pixel passes ``min_corr`` and ``min_pnr``
  (``K = None``, CNMF-E's choice, is accepted: on the one-photon family, with ``SNR_lowest``
  0.5, it found more cells — 87 % before the quality tests against 80 % — among 2–3 times as
  many components, mostly pieces of bright somata, and the median F1 fell from 0.84 to 0.76).
* ``init.ssub = p_ssub = max(1, floor(min(in-plane gSig) / 2.5))``, in the imaging plane (a
  volume's planes are not merged) (keeps gSig ≥ 2.5 px after spatial
  downsampling); ``init.tsub = max(1, floor(fr·decay_time / 6))`` (keeps ≥ 6 frames per
  decay time after temporal downsampling); inside patches ``p_tsub = max(1,
  floor(fr·decay_time / 3))`` (≥ 3 frames per decay time: the patches only initialise; the
  full-rate data refine the result).
* ``quality.use_ecc`` is on: footprints whose mask is more than ``max_ecc`` = 3 times longer
  than wide (dendrites, axons, border slivers) are rejected as not being somata;
  ``quality.use_area`` is on: masks larger than ``max_area_ratio`` = 2.5 neuron areas
  (out-of-focus neuropil, background, merged neighbours) are rejected. Thresholds: CaImAn's
  (``min_SNR`` 2.5, ``rval_thr`` 0.8, ``rval_lowest`` -1) but ``SNR_lowest`` 1 (not 0.5):
  chosen on dense, low-SNR movies across the hard family and ``dev_sim`` (docs/accuracy.md).
  One-photon: ``min_SNR`` 1.5, ``rval_thr`` 0.6, ``min_area_ratio`` 0.35 — the traces of a
  micro-endoscope's cells keep more of the background's noise, so true cells score lower;
  chosen on the one-photon family and ``dev_sim/dev_1p`` (docs/one-photon.md).
* ``quality.use_cnn`` = two-photon (the shape classifier's shipped weights are two-photon;
  one-photon: off, as in CaImAn; a volume's footprints are read in their plane of most
  energy); ``min_cnn_thr`` 0.7 (CaImAn: 0.9),
  ``cnn_lowest`` 0.1 — chosen on held-out simulations, the hard family and ``dev_sim/dev_2p``
  (docs/classifier.md).
* ``deconvolution.bas_nonneg`` is off: a CNMF trace's baseline is whatever the background
  and the footprint's constant leave, often negative; constraining it to ≥ 0 zeroes the
  traces of real cells (8 % of them on a simulated 512×512 movie).
* ``init.method`` = ``"rolling_greedy_roi"`` (1p: ``"greedy_corr"``); ``init.nb`` = 3 (1p: 0, the ring
  model); ``patch.nb_patch = nb`` if ``nb ≤ 0`` else 1; ``init.normalize_init`` = False for
  ``greedy_corr`` else True; ``patch.del_duplicates`` = ``is_1p``;
  ``init.sigma_smooth_snmf = (0.5,) * (ndim + 1)``; ``init.maxIter`` = 5 (1p: 2 — GreedyCorr's
  footprints are regressions already; two HALS passes scored better on four of the seven
  one-photon movies measured, worse on two, at 40 % of the refinement's cost).
* ``motion.max_shifts = ceil(1.2·r)``; ``motion.strides`` = ``5·r`` rounded to a multiple
  of 8 px (at least 16: piecewise-rigid patches of 48 px for 6 px neurons; with 10·r, warps of
  2–3 px over ~40 px cost a fifth of the F1 of non-rigid hard movies); ``motion.overlaps =
  strides // 2``;
  ``motion.max_deviation_rigid = ceil(max(r) / 2)``; ``motion.gSig_filt = gSig`` for 1p
  (high-pass before registration), else None; ``motion.pw_rigid = "auto"`` (1p: False); ``motion.is3D = (ndim == 3)``.
* ``quality.N_samples_exceptionality = ceil(fr·decay_time)`` (frames in the SNR window).
* ``online.max_shifts_online = ceil(2·max(r))``.

:meth:`Params.replace` re-applies the rules: fields that still hold the value the rule gives
follow a changed neuron radius / frame rate, fields that were set to something else are kept.

CaImAn and Mesmerize dictionaries
---------------------------------
:meth:`Params.from_dict` accepts nested dicts (our groups or CaImAn's ``data``, ``init``,
``motion``, ``patch``, ``merging``, ``temporal``, ``spatial``, ``quality``, ``online``,
``preprocess`` and their ``*_params`` spellings), flat dicts, dotted keys (``"motion.strides"``),
Mesmerize items (``{"main": {...}, "eval": {...}, "refit": True}``, ``mcorr_kwargs``,
``cnmf_kwargs``, ``eval_kwargs``) and CaImAn aliases (``k``, ``merge_thresh``, ``gnb``,
``method_init``, ``border_nan``, ``num_frames_split``, ``only_init_patch``, ``center_psf``,
``rolling_sum``). Keys CaImAn accepts that mean nothing here (``n_processes``, ``use_cuda``,
…; see ``IGNORED_KEYS``) are dropped with one logged warning that lists them. Any other key
raises :class:`ParameterError` with a did-you-mean. Lists become tuples; a scalar given for a
per-axis value is broadcast (``gSig=4`` → ``(4.0, 4.0)``).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import numbers
import os
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np

__all__ = [
    "DataParams",
    "DeconvolutionParams",
    "IGNORED_KEYS",
    "InitParams",
    "MAX_FRAME_RATE_HZ",
    "MergeParams",
    "MotionParams",
    "OnlineParams",
    "ParameterError",
    "Params",
    "PatchParams",
    "QualityParams",
    "SpatialParams",
    "TemporalParams",
]

log = logging.getLogger(__name__)

#: The fastest frame (or volume) rate accepted, Hz. Calcium indicators change over tens of
#: milliseconds and the fastest calcium or voltage imaging records a few thousand frames per
#: second; a larger value is a unit mistake (a line rate, a pixel clock, an interval in µs).
MAX_FRAME_RATE_HZ = 10_000.0


class ParameterError(ValueError):
    """A parameter is unknown, has the wrong type, or has an impossible value."""


# ----------------------------------------------------------------------------- checks


def _fail(key: str, value: Any, problem: str, fix: str) -> NoReturn:
    raise ParameterError(f"{key}={value!r}: {problem}. Fix: {fix}.")


def _need(ok: bool, key: str, value: Any, problem: str, fix: str) -> None:
    if not ok:
        _fail(key, value, problem, fix)


def _positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    ok = value >= 0 if zero_ok else value > 0
    word = "non-negative" if zero_ok else "positive"
    _need(ok, key, value, f"must be {word}", f"give a {word} value")


def _all_positive(key: str, values: tuple[float, ...], *, zero_ok: bool = False) -> None:
    ok = all((v >= 0 if zero_ok else v > 0) for v in values)
    word = "non-negative" if zero_ok else "positive"
    _need(ok, key, values, f"every entry must be {word}", f"give {word} values, one per axis")


def _between(key: str, value: float, lo: float, hi: float) -> None:
    _need(lo <= value <= hi, key, value, f"must lie in [{lo}, {hi}]", f"give a value in [{lo}, {hi}]")


def _choice(key: str, value: str, choices: tuple[str, ...], extra: str = "") -> None:
    _need(value in choices, key, value, f"must be one of {', '.join(map(repr, choices))}",
          f"pick one of those{extra}")


# ----------------------------------------------------------------------------- type coercion

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _plain(value: Any) -> Any:
    """NumPy scalars/arrays and lists → Python scalars and tuples (recursively)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ParameterError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(key, value, "may not be None", "give a value")
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            return _coerce(value, arms[0], key)
        for arm in arms:
            try:
                return _coerce(value, arm, key)
            except ParameterError:
                continue
        _fail(key, value, f"must be one of: {', '.join(_type_name(a) for a in arms)}"
              + (" or None" if type(None) in args else ""), "give a value of one of those types")
    if value is None:
        _fail(key, value, "may not be None", f"give a {_type_name(tp)}")
    value = _plain(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        _fail(key, value, "must be True or False", "give a boolean")
    if tp is int:
        if not isinstance(value, bool):
            if isinstance(value, numbers.Integral):
                return int(value)
            if isinstance(value, numbers.Real) and float(value).is_integer():
                return int(value)
        _fail(key, value, "must be a whole number", "give an integer")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            x = float(value)
            _need(math.isfinite(x), key, value, "must be finite", "give a finite number")
            return x
        _fail(key, value, "must be a number", "give a number")
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(key, value, "must be a string", "give a string")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            _fail(key, value, "must be a sequence", "give a list or tuple such as (4, 4)")
        if len(args) == 2 and args[1] is Ellipsis:
            _need(len(value) > 0, key, value, "must not be empty", "give one value per axis")
            return tuple(_coerce(v, args[0], key) for v in value)
        _need(len(value) == len(args), key, value, f"must have {len(args)} entries",
              f"give exactly {len(args)} values")
        return tuple(_coerce(v, t, key) for v, t in zip(value, args))
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # pragma: no cover - programming error


class _Group:
    """Shared behaviour of the parameter groups: coercion on construction, ``validate()``."""

    _group: ClassVar[str]

    def __post_init__(self) -> None:
        self.validate()

    def _normalize(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            key = f"{self._group}.{f.name}"
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], key))

    def validate(self) -> None:
        """Coerce every field to its type (lists → tuples, …) and check its value.

        Raises:
            ParameterError: naming the key, the value and the fix.
        """
        self._normalize()
        self._check()

    def _check(self) -> None:  # overridden
        pass

    def _k(self, name: str) -> str:
        return f"{self._group}.{name}"


# ----------------------------------------------------------------------------- groups


@dataclass
class DataParams(_Group):
    """What is known about the recording.

    Attributes:
        fr: frame rate in Hz (volume rate for 3-D data), at most :data:`MAX_FRAME_RATE_HZ`
            (10 kHz: a larger value is a unit mistake). Default 30.
        decay_time: decay time of a typical transient of the indicator in s (≈0.4 for
            GCaMP6f, 1–1.5 for GCaMP6s). Sets the SNR window and temporal downsampling.
        dxy: pixel size in µm per pixel along each spatial axis, ``(dy, dx)`` or
            ``(dz, dy, dx)``. Its length is the number of spatial axes of every per-axis
            parameter. (CaImAn's ``dxy``; its docstring says "pixels per µm" but it is used as
            µm per pixel, as here.)
        neuron_radius: typical neuron radius in px per axis. Drives the derived defaults
            (module docstring). The input key ``neuron_radius_um`` gives it in µm; it is
            converted with ``dxy`` and stored in px.
        is_1p: one-photon (wide-field / miniscope) data: CNMF-E ring background, GreedyCorr
            initialisation, high-pass filtered motion estimation. CaImAn's ``center_psf``.
    """

    _group: ClassVar[str] = "data"

    fr: float = 30.0
    decay_time: float = 0.4
    dxy: tuple[float, ...] = (1.0, 1.0)
    neuron_radius: tuple[float, ...] = (5.0, 5.0)
    is_1p: bool = False

    def _check(self) -> None:
        _positive(self._k("fr"), self.fr)
        _need(self.fr <= MAX_FRAME_RATE_HZ, self._k("fr"), self.fr,
              f"a frame rate above {MAX_FRAME_RATE_HZ:g} Hz is faster than any calcium imaging (a line rate, "
              "a pixel clock or an interval in µs is not a frame rate)",
              "give the frames (volumes) per second, e.g. --fr 30 on the command line or data.fr: 30")
        _positive(self._k("decay_time"), self.decay_time)
        _all_positive(self._k("dxy"), self.dxy)
        _all_positive(self._k("neuron_radius"), self.neuron_radius)


BORDER_MODES = ("copy", "zero", "nan")


@dataclass
class MotionParams(_Group):
    """Rigid and piecewise-rigid (NoRMCorre) motion correction.

    Attributes:
        pw_rigid: ``"auto"`` (default), True or False. True: estimate a piecewise-rigid
            displacement field after the rigid pass; False: rigid only. ``"auto"``: after the
            rigid template is built, the patch displacements of a sample of frames are measured
            against it and piecewise-rigid correction runs when their spread around the rigid
            displacement exceeds :data:`somascope.motion.PW_RIGID_AUTO_THRESHOLD_PX` (0.5 px;
            ``docs/motion.md``), or rigid when the frame is smaller than one patch. Strings
            ``"true"``/``"false"`` (any case) are read as booleans. The result records what ran.
            One-photon data default to False (rigid): on their high-passed frames the patch
            displacements are noisy, and ``"auto"`` chose piecewise-rigid on 3 of 8 simulated
            movies whose motion was rigid, at twice the time (CaImAn's CNMF-E demo and minian
            also register one-photon data rigidly).
        max_shifts: largest rigid displacement searched, px per axis.
        strides: distance between the starts of neighbouring pw-rigid patches, px per axis
            (a patch is ``strides + overlaps`` wide).
        overlaps: overlap of neighbouring pw-rigid patches, px per axis; < strides.
        max_deviation_rigid: largest difference between a patch's displacement and the
            rigid displacement, px.
        upsample_factor: sub-pixel precision of the cross-correlation peak is
            ``1 / upsample_factor`` px.
        upsample_factor_grid: upsampling of the patch displacement field when it is applied
            to the frame (smoothness of the pw-rigid field).
        niter_rig: passes of rigid template refinement.
        chunk_frames: frames per chunk processed in parallel (CaImAn's ``num_frames_split``).
        border_mode: how pixels shifted in from outside the frame are filled: ``"copy"``
            (nearest valid pixel), ``"zero"`` or ``"nan"``. CaImAn's ``border_nan``
            (True → ``"nan"``, False → ``"zero"``, ``"copy"`` → ``"copy"``).
        gSig_filt: standard deviation (px per axis) of the high-pass filter applied to the
            frames before estimating displacements (one-photon data); None: no filtering.
        smooth_shifts: standard deviation, in frames, of a Gaussian smoothing of the
            estimated displacements along time; None: no smoothing.
        is3D: the movie is a volume ``T×Z×H×W``; every per-axis value then has 3 entries.
    """

    _group: ClassVar[str] = "motion"

    pw_rigid: bool | str = "auto"
    max_shifts: tuple[int, ...] = (6, 6)
    strides: tuple[int, ...] = (24, 24)
    overlaps: tuple[int, ...] = (12, 12)
    max_deviation_rigid: int = 3
    upsample_factor: int = 10
    upsample_factor_grid: int = 4
    niter_rig: int = 1
    chunk_frames: int = 200
    border_mode: str = "copy"
    gSig_filt: tuple[float, ...] | None = None
    smooth_shifts: float | None = None
    is3D: bool = False

    def _normalize(self) -> None:
        super()._normalize()
        if isinstance(self.pw_rigid, str):
            word = self.pw_rigid.strip().lower()
            self.pw_rigid = {"true": True, "false": False}.get(word, word)

    def _check(self) -> None:
        _need(self.pw_rigid in (True, False, "auto"), self._k("pw_rigid"), self.pw_rigid,
              "must be \"auto\", True or False", "give auto, true or false")
        _all_positive(self._k("max_shifts"), self.max_shifts, zero_ok=True)
        _all_positive(self._k("strides"), self.strides)
        _all_positive(self._k("overlaps"), self.overlaps, zero_ok=True)
        _need(len(self.overlaps) == len(self.strides)
              and all(o < s for o, s in zip(self.overlaps, self.strides)),
              self._k("overlaps"), self.overlaps,
              f"must be smaller than motion.strides={self.strides} on every axis",
              "use overlaps of about strides // 2")
        _positive(self._k("max_deviation_rigid"), self.max_deviation_rigid, zero_ok=True)
        for name in ("upsample_factor", "upsample_factor_grid", "niter_rig", "chunk_frames"):
            _need(getattr(self, name) >= 1, self._k(name), getattr(self, name),
                  "must be at least 1", "give a whole number ≥ 1")
        _choice(self._k("border_mode"), self.border_mode, BORDER_MODES)
        if self.gSig_filt is not None:
            _all_positive(self._k("gSig_filt"), self.gSig_filt)
        if self.smooth_shifts is not None:
            _positive(self._k("smooth_shifts"), self.smooth_shifts, zero_ok=True)


INIT_METHODS = ("greedy_roi", "rolling_greedy_roi", "greedy_corr", "sparse_nmf", "seeded")


@dataclass
class InitParams(_Group):
    """Initialisation of spatial and temporal components.

    Attributes:
        method: ``"greedy_roi"`` (GreedyROI), ``"rolling_greedy_roi"`` (candidate centres
            from the maximum of a rolling sum over ``rolling_length`` frames: sparse activity;
            the two-photon default), ``"greedy_corr"`` (CNMF-E: correlation × peak-to-noise seeds,
            one-photon), ``"sparse_nmf"`` (dendrites, no blob prior) or ``"seeded"`` (from
            given masks). CaImAn's ``method_init``: ``greedy_roi`` with its default
            ``rolling_sum=True`` is ``rolling_greedy_roi``; ``corr_pnr``/``greedy_pnr`` is
            ``greedy_corr``; ``sparse_nmf`` is ``sparse_nmf``.
        K: components to find per patch (whole field of view when ``patch.rf`` is None).
            None: no upper bound, only for ``greedy_corr`` (stops on min_corr/min_pnr) and
            ``seeded``. CaImAn's ``k``/``K``.
        gSig: standard deviation of the Gaussian neuron model, px per axis (≈ neuron radius
            for two-photon, ≈ radius / 2 for the CNMF-E filter).
        gSiz: size of the neuron's bounding box, px per axis, odd, ≥ gSig.
        ssub: spatial downsampling factor during initialisation.
        tsub: temporal downsampling factor during initialisation.
        nb: background components: ≥ 1 global low-rank background of that rank; 0 ring
            model (CNMF-E, one-photon); -2 no background. CaImAn's ``gnb``; its -1 (full-rank
            background) is refused, as CNMF here does not implement it. With ``data.is_1p``, a
            value ≥ 1 is allowed (a low-rank background instead of the ring model).
        rolling_length: window of the rolling sum for ``rolling_greedy_roi``, frames.
        min_corr: smallest local correlation of a GreedyCorr seed pixel, in [0, 1]
            (correlation of the high-passed movie thresholded at 2 noise levels).
        min_pnr: smallest peak-to-noise ratio of a GreedyCorr seed pixel (peak of the
            high-passed movie over its white-noise level). 0.6 / 6 were chosen on the simulated
            one-photon family and ``dev_sim/dev_1p`` (docs/one-photon.md); CaImAn's 0.8 / 10
            apply to its own filtering and noise estimate and find a fraction of the cells here.
        ring_size_factor: radius of the CNMF-E background ring in units of gSiz / 2 (> 1).
        ssub_B: extra spatial downsampling of the ring background.
        fov_mask: where components may be: ``"auto"`` (one-photon data: the lens's field of
            view, :func:`somascope.summary.lens_mask` of the mean image — the whole frame when
            nothing is dark; two-photon data: everywhere), ``"none"`` (everywhere) or the path
            of an image file (``.npy`` or TIFF, the frame's shape; non-zero = inside).
            Components whose centre lies outside are not kept by the patches, so they are never
            evaluated or accepted.
        init_iter: CaImAn's GreedyCorr passes; accepted for compatibility. GreedyCorr here
            makes one pass that removes each neuron from the seed images as it is found.
        nIter: rank-1 refinement iterations per GreedyROI component.
        maxIter: HALS iterations after initialisation.
        normalize_init: equalise pixel noise levels before initialising.
        alpha_snmf: sparsity weight of sparse NMF.
        max_iter_snmf: iterations of sparse NMF.
        sigma_smooth_snmf: Gaussian smoothing of the movie before sparse NMF, standard
            deviations in (frames, px per spatial axis).
        perc_baseline_snmf: percentile removed from each pixel before sparse NMF, in [0, 100].
        seed_adds: with a structural channel's masks as seeds, also add the components the
            unseeded detection (``method``) finds outside every mask: the active cells the
            structural marker does not label (``docs/structural.md``).
    """

    _group: ClassVar[str] = "init"

    method: str = "rolling_greedy_roi"
    K: int | None = 59
    gSig: tuple[float, ...] = (5.0, 5.0)
    gSiz: tuple[int, ...] = (11, 11)
    ssub: int = 2
    tsub: int = 2
    nb: int = 3
    rolling_length: int = 100
    min_corr: float = 0.6
    min_pnr: float = 6.0
    ring_size_factor: float = 1.5
    ssub_B: int = 2
    fov_mask: str = "auto"
    init_iter: int = 2
    nIter: int = 5
    maxIter: int = 5
    normalize_init: bool = True
    alpha_snmf: float = 0.5
    max_iter_snmf: int = 500
    sigma_smooth_snmf: tuple[float, ...] = (0.5, 0.5, 0.5)
    perc_baseline_snmf: float = 20.0
    seed_adds: bool = True

    def _check(self) -> None:
        _choice(self._k("method"), self.method, INIT_METHODS,
                " (CaImAn's names are accepted under the key 'method_init')")
        if self.K is None:
            _need(self.method in ("greedy_corr", "seeded"), self._k("K"), None,
                  f"no upper bound on the number of components only works with "
                  f"method 'greedy_corr' or 'seeded', not {self.method!r}",
                  "give K, the number of components per patch")
        else:
            _need(self.K >= 1, self._k("K"), self.K, "must be at least 1",
                  "give the number of components per patch")
        _all_positive(self._k("gSig"), self.gSig)
        _all_positive(self._k("gSiz"), self.gSiz)
        _need(all(s % 2 == 1 for s in self.gSiz), self._k("gSiz"), self.gSiz,
              "must be odd on every axis", "use 2·ceil(radius) + 1")
        _need(len(self.gSiz) == len(self.gSig) and all(z >= g for z, g in zip(self.gSiz, self.gSig)),
              self._k("gSiz"), self.gSiz,
              f"the neuron's bounding box is smaller than init.gSig={self.gSig}",
              "set gSiz ≥ gSig (about 2·gSig + 1), or leave it out to derive it")
        for name in ("ssub", "tsub", "ssub_B", "rolling_length", "init_iter", "max_iter_snmf"):
            _need(getattr(self, name) >= 1, self._k(name), getattr(self, name),
                  "must be at least 1", "give a whole number ≥ 1")
        _need(self.nb >= -2, self._k("nb"), self.nb,
              "must be ≥ 1 (global background rank), 0 (ring model), -1 (full rank) or -2 (none)",
              "use 1 for two-photon or 0 for one-photon data")
        _need(self.nb != -1, self._k("nb"), self.nb,
              "a full-rank background (CaImAn's gnb=-1) is not implemented here: CNMF refuses it",
              "use init.nb ≥ 1 (low-rank background), 0 (one-photon ring model) or -2 (no background)")
        _between(self._k("min_corr"), self.min_corr, 0.0, 1.0)
        _positive(self._k("min_pnr"), self.min_pnr, zero_ok=True)
        _need(isinstance(self.fov_mask, str) and bool(self.fov_mask.strip()), self._k("fov_mask"),
              self.fov_mask, "must be 'auto', 'none' or the path of a mask image", "e.g. 'auto'")
        _need(self.ring_size_factor > 1, self._k("ring_size_factor"), self.ring_size_factor,
              "the background ring must lie outside the neuron", "use a value > 1, e.g. 1.5")
        _positive(self._k("nIter"), self.nIter, zero_ok=True)
        _positive(self._k("maxIter"), self.maxIter, zero_ok=True)
        _positive(self._k("alpha_snmf"), self.alpha_snmf, zero_ok=True)
        _all_positive(self._k("sigma_smooth_snmf"), self.sigma_smooth_snmf, zero_ok=True)
        _between(self._k("perc_baseline_snmf"), self.perc_baseline_snmf, 0.0, 100.0)


@dataclass
class PatchParams(_Group):
    """Processing the field of view in overlapping patches (CaImAn's meaning of rf/stride).

    Attributes:
        rf: half-size of a patch, px per axis (a patch is ``2·rf`` wide); None processes the
            whole field of view at once. Must be ≥ init.gSiz (a patch holds ≥ 2 neurons across).
        stride: overlap of neighbouring patches, px per axis; < 2·rf.
        border_pix: pixels excluded at every border of the field of view (e.g. resonant-scanner
            or motion-correction edges).
        only_init: in patches, only initialise (then refine once on the full field of view)
            instead of running full CNMF per patch.
        nb_patch: background components per patch (same meaning as init.nb).
        p_patch: AR order used inside patches (0: no deconvolution there).
        p_ssub: spatial downsampling factor inside patches.
        p_tsub: temporal downsampling factor inside patches.
        del_duplicates: delete duplicate components in patch overlaps instead of merging them.
        low_rank_background: compress the per-patch backgrounds into init.nb global
            components (ignored when init.nb ≤ 0).
        remove_very_bad_comps: drop clearly bad components inside each patch.
        by_plane: a volume's CNMF plane by plane (each plane a 2-D fit, a cell split across
            adjacent planes merged into one 3-D component; ``docs/volumes.md``) instead of in
            3-D patches. Off by default: on the hard simulated thin stacks it scored within
            0.01 F1 of the 3-D fit and took 1.1× its time. Ignored for 2-D movies.
    """

    _group: ClassVar[str] = "patch"

    rf: tuple[int, ...] | None = (44, 44)
    stride: tuple[int, ...] = (11, 11)
    border_pix: int = 0
    only_init: bool = True
    nb_patch: int = 1
    p_patch: int = 0
    p_ssub: int = 2
    p_tsub: int = 4
    del_duplicates: bool = False
    low_rank_background: bool = True
    remove_very_bad_comps: bool = False
    by_plane: bool = False

    def _check(self) -> None:
        _all_positive(self._k("stride"), self.stride, zero_ok=True)
        if self.rf is not None:
            _all_positive(self._k("rf"), self.rf)
            _need(len(self.stride) == len(self.rf)
                  and all(s < 2 * r for s, r in zip(self.stride, self.rf)),
                  self._k("stride"), self.stride,
                  f"the overlap must be smaller than the patch width 2·rf={tuple(2 * r for r in self.rf)}",
                  "use a stride of about one neuron diameter (init.gSiz)")
        _positive(self._k("border_pix"), self.border_pix, zero_ok=True)
        _need(self.nb_patch >= -2, self._k("nb_patch"), self.nb_patch,
              "must be ≥ -2 (same meaning as init.nb)", "use 1 (two-photon) or 0 (one-photon)")
        _need(self.p_patch in (0, 1, 2), self._k("p_patch"), self.p_patch,
              "the AR order must be 0, 1 or 2", "use 0 (default) or the value of deconvolution.p")
        for name in ("p_ssub", "p_tsub"):
            _need(getattr(self, name) >= 1, self._k(name), getattr(self, name),
                  "must be at least 1", "give a whole number ≥ 1")


@dataclass
class MergeParams(_Group):
    """Merging components that are one neuron.

    Attributes:
        merge_thr: trace correlation above which spatially overlapping components are
            merged, in (0, 1]. CaImAn's ``merge_thr``/``merge_thresh``.
        do_merge: merge at all.
        merge_parallel: merge groups in parallel.
        max_merge_area: largest area (px) of a merged component; None: no limit.
    """

    _group: ClassVar[str] = "merge"

    merge_thr: float = 0.8
    do_merge: bool = True
    merge_parallel: bool = False
    max_merge_area: int | None = None

    def _check(self) -> None:
        _need(0 < self.merge_thr <= 1, self._k("merge_thr"), self.merge_thr,
              "a correlation threshold must lie in (0, 1]", "use e.g. 0.8")
        if self.max_merge_area is not None:
            _positive(self._k("max_merge_area"), self.max_merge_area)


@dataclass
class TemporalParams(_Group):
    """Block-coordinate updates of the traces (the deconvolution inside them is configured in
    :class:`DeconvolutionParams`).

    Attributes:
        ITER: block-coordinate-descent passes over all components per temporal update.
        block_size_temp: pixels per block when computing ``Aᵀ·Y`` (bounds memory).
    """

    _group: ClassVar[str] = "temporal"

    ITER: int = 2
    block_size_temp: int = 5000

    def _check(self) -> None:
        for name in ("ITER", "block_size_temp"):
            _need(getattr(self, name) >= 1, self._k(name), getattr(self, name),
                  "must be at least 1", "give a whole number ≥ 1")


SPATIAL_EXPANSIONS = ("dilate", "ellipse")
THRESHOLD_METHODS = ("nrg", "max")
SPATIAL_SOLVERS = ("lasso_lars", "nnls_L0")


@dataclass
class SpatialParams(_Group):
    """Updates of the footprints.

    Attributes:
        method_exp: how a footprint's search region grows: ``"dilate"`` or ``"ellipse"``.
        dist: growth factor of the ellipse (``method_exp="ellipse"``), in units of the axes.
        extract_cc: keep only the largest connected part of a thresholded footprint (turn
            off for dendrites).
        thr_method: footprint thresholding: ``"nrg"`` (keep ``nrgthr`` of the energy) or
            ``"max"`` (drop pixels below ``maxthr`` × maximum).
        maxthr: relative threshold for ``thr_method="max"``, in [0, 1].
        nrgthr: energy fraction kept for ``thr_method="nrg"``, in (0, 1].
        method_ls: per-pixel regression: ``"lasso_lars"`` or ``"nnls_L0"``.
        medw: median-filter window (px per axis) applied to footprints; None: none.
        normalize_yyt_one: normalise traces to unit energy before the update.
        update_background_components: also update the background footprints b.
        block_size_spat: pixels per block when computing ``Y·Cᵀ`` (bounds memory).
    """

    _group: ClassVar[str] = "spatial"

    method_exp: str = "dilate"
    dist: float = 3.0
    extract_cc: bool = True
    thr_method: str = "nrg"
    maxthr: float = 0.1
    nrgthr: float = 0.9999
    method_ls: str = "lasso_lars"
    medw: tuple[int, ...] | None = None
    normalize_yyt_one: bool = True
    update_background_components: bool = True
    block_size_spat: int = 5000

    def _check(self) -> None:
        _choice(self._k("method_exp"), self.method_exp, SPATIAL_EXPANSIONS)
        _positive(self._k("dist"), self.dist)
        _choice(self._k("thr_method"), self.thr_method, THRESHOLD_METHODS)
        _between(self._k("maxthr"), self.maxthr, 0.0, 1.0)
        _need(0 < self.nrgthr <= 1, self._k("nrgthr"), self.nrgthr, "must lie in (0, 1]",
              "use e.g. 0.9999")
        _choice(self._k("method_ls"), self.method_ls, SPATIAL_SOLVERS)
        if self.medw is not None:
            _all_positive(self._k("medw"), self.medw)
        _need(self.block_size_spat >= 1, self._k("block_size_spat"), self.block_size_spat,
              "must be at least 1", "give a whole number ≥ 1")


@dataclass
class QualityParams(_Group):
    """Component evaluation: accepted if any test passes its threshold and none falls below
    its lowest value.

    Attributes:
        min_SNR: trace SNR (peak SNR over ``N_samples_exceptionality`` frames) to accept.
        SNR_lowest: trace SNR below which a component is rejected; ≤ min_SNR.
        rval_thr: spatial consistency (correlation of footprint and data during transients)
            to accept, in [-1, 1].
        rval_lowest: spatial consistency below which a component is rejected; ≤ rval_thr.
        use_cnn: use the shape classifier (``somascope.evaluation.classifier``): its
            probability that a footprint is a soma is ``cnn_preds``. Two-dimensional data
            only; skipped (with a log line) where no weights exist for the modality.
        min_cnn_thr: classifier score to accept, in [0, 1].
        cnn_lowest: classifier score below which a component is rejected; ≤ min_cnn_thr.
        cnn_weights: a weights file (``.npz``, ``somascope train-classifier``); None: the
            weights shipped for the modality (``data.is_1p``).
        gSig_range: neuron sizes (in units of ``init.gSig``, px) at which the classifier looks
            at each footprint, keeping the highest score (fields whose cells vary in size);
            None: only ``init.gSig``.
        use_ecc: also reject elongated footprints.
        max_ecc: largest accepted eccentricity (major / minor axis), ≥ 1.
        use_area: also reject footprints much larger than a neuron (out-of-focus neuropil,
            background, merged neighbours).
        max_area_ratio: largest accepted footprint area (pixels ≥ 0.2 × its peak, largest
            connected piece) over the area of a neuron of ``data.neuron_radius`` (π·r² in
            2-D, 4/3·π·r³ in 3-D); > 0.
        min_area_ratio: smallest accepted footprint area, the same measure; 0 (two-photon)
            turns it off; one-photon: 0.35 — pieces of a bright soma that GreedyCorr finds
            again in what removing the soma left behind are a third of its size or less.
        N_samples_exceptionality: frames in the SNR window, ``ceil(fr·decay_time)``.
        refit: after evaluation, re-run CNMF seeded with the accepted footprints
            (Mesmerize's ``refit``).
    """

    _group: ClassVar[str] = "quality"

    min_SNR: float = 2.5
    SNR_lowest: float = 1.0
    rval_thr: float = 0.8
    rval_lowest: float = -1.0
    use_cnn: bool = True
    min_cnn_thr: float = 0.7
    cnn_lowest: float = 0.1
    cnn_weights: str | None = None
    gSig_range: tuple[float, ...] | None = None
    use_ecc: bool = True
    max_ecc: float = 3.0
    use_area: bool = True
    max_area_ratio: float = 2.5
    min_area_ratio: float = 0.0
    N_samples_exceptionality: int = 12
    refit: bool = False

    def _check(self) -> None:
        _positive(self._k("min_SNR"), self.min_SNR, zero_ok=True)
        _need(self.SNR_lowest <= self.min_SNR, self._k("SNR_lowest"), self.SNR_lowest,
              f"must not exceed quality.min_SNR={self.min_SNR} (would reject what it accepts)",
              "lower SNR_lowest or raise min_SNR")
        _between(self._k("rval_thr"), self.rval_thr, -1.0, 1.0)
        _between(self._k("rval_lowest"), self.rval_lowest, -1.0, 1.0)
        _need(self.rval_lowest <= self.rval_thr, self._k("rval_lowest"), self.rval_lowest,
              f"must not exceed quality.rval_thr={self.rval_thr}", "lower rval_lowest")
        _between(self._k("min_cnn_thr"), self.min_cnn_thr, 0.0, 1.0)
        _between(self._k("cnn_lowest"), self.cnn_lowest, 0.0, 1.0)
        _need(self.cnn_lowest <= self.min_cnn_thr, self._k("cnn_lowest"), self.cnn_lowest,
              f"must not exceed quality.min_cnn_thr={self.min_cnn_thr}", "lower cnn_lowest")
        if self.gSig_range is not None:
            _all_positive(self._k("gSig_range"), self.gSig_range)
        _need(self.max_ecc >= 1, self._k("max_ecc"), self.max_ecc,
              "an eccentricity is at least 1", "use e.g. 3")
        _positive(self._k("max_area_ratio"), self.max_area_ratio)
        _positive(self._k("min_area_ratio"), self.min_area_ratio, zero_ok=True)
        _need(self.min_area_ratio < self.max_area_ratio, self._k("min_area_ratio"), self.min_area_ratio,
              f"must be below quality.max_area_ratio={self.max_area_ratio}", "lower min_area_ratio")
        _need(self.N_samples_exceptionality >= 1, self._k("N_samples_exceptionality"),
              self.N_samples_exceptionality, "must be at least 1 frame",
              "leave it out to derive ceil(fr·decay_time)")


ONLINE_INIT_METHODS = ("bare", "cnmf", "seeded")


@dataclass
class OnlineParams(_Group):
    """OnACID (online CNMF). Acceptance thresholds for new components are
    ``quality.min_SNR`` and ``quality.rval_thr``.

    Attributes:
        init_batch: frames used to initialise before going online.
        init_method: initialisation of the first batch: ``"bare"``, ``"cnmf"`` or ``"seeded"``.
        epochs: passes over the data.
        ds_factor: spatial downsampling factor.
        max_shifts_online: largest rigid displacement searched per frame, px.
        motion_correct: correct motion frame by frame.
        normalize: normalise each frame by the noise level.
        min_num_trial: candidate components tested per frame.
        max_num_added: largest number of components added per frame.
        thresh_CNN_noisy: online classifier score to accept a candidate, in [0, 1].
        sniper_mode: screen candidates with the classifier (else spatial correlation).
        test_both: require the classifier and spatial correlation.
        thresh_overlap: largest overlap (IoU) of a candidate with existing components, [0, 1].
        thresh_fitness_delta: threshold (≤ 0) of the derivative test for new traces.
        thresh_fitness_raw: log-likelihood threshold (≤ 0) of the trace SNR test; None:
            computed from quality.min_SNR and N_samples_exceptionality.
        minibatch_shape: frames in the residual buffer.
        minibatch_suff_stat: frames per update of the sufficient statistics.
        batch_update_suff_stat: update sufficient statistics in mini-batches.
        update_freq: each footprint is updated at least every that many frames.
        update_num_comps: look for new components.
        iters_shape: block-coordinate iterations per footprint update.
        max_comp_update_shape: most footprints updated per frame; None: all.
        num_times_comp_updated: stop updating a footprint after that many updates; None: never.
        expected_comps: expected number of components (memory preallocation).
        n_refit: extra trace refits per frame.
        simultaneously: demix and deconvolve together.
        dist_shape_update: spread footprint updates over frames.
        full_XXt: keep the full residual statistic for the ring background (1p).
        use_corr_img: find candidates in the correlation image.
        use_peak_max: find candidates at local maxima.
        W_update_factor: update the ring weights W this many times less often than footprints.
        stop_detection: stop adding components in the last epoch.
    """

    _group: ClassVar[str] = "online"

    init_batch: int = 200
    init_method: str = "bare"
    epochs: int = 1
    ds_factor: int = 1
    max_shifts_online: int = 10
    motion_correct: bool = True
    normalize: bool = False
    min_num_trial: int = 5
    max_num_added: int = 5
    thresh_CNN_noisy: float = 0.5
    sniper_mode: bool = False
    test_both: bool = False
    thresh_overlap: float = 0.5
    thresh_fitness_delta: float = -50.0
    thresh_fitness_raw: float | None = None
    minibatch_shape: int = 100
    minibatch_suff_stat: int = 5
    batch_update_suff_stat: bool = False
    update_freq: int = 200
    update_num_comps: bool = True
    iters_shape: int = 5
    max_comp_update_shape: int | None = None
    num_times_comp_updated: int | None = None
    expected_comps: int = 500
    n_refit: int = 0
    simultaneously: bool = False
    dist_shape_update: bool = False
    full_XXt: bool = False
    use_corr_img: bool = False
    use_peak_max: bool = True
    W_update_factor: int = 1
    stop_detection: bool = False

    def _check(self) -> None:
        for name in ("init_batch", "epochs", "ds_factor", "minibatch_shape",
                     "minibatch_suff_stat", "update_freq", "iters_shape", "expected_comps",
                     "W_update_factor"):
            _need(getattr(self, name) >= 1, self._k(name), getattr(self, name),
                  "must be at least 1", "give a whole number ≥ 1")
        _choice(self._k("init_method"), self.init_method, ONLINE_INIT_METHODS)
        for name in ("max_shifts_online", "min_num_trial", "max_num_added", "n_refit"):
            _positive(self._k(name), getattr(self, name), zero_ok=True)
        _between(self._k("thresh_CNN_noisy"), self.thresh_CNN_noisy, 0.0, 1.0)
        _between(self._k("thresh_overlap"), self.thresh_overlap, 0.0, 1.0)
        _need(self.thresh_fitness_delta <= 0, self._k("thresh_fitness_delta"),
              self.thresh_fitness_delta, "is a log-likelihood threshold and must be ≤ 0",
              "use e.g. -50")
        if self.thresh_fitness_raw is not None:
            _need(self.thresh_fitness_raw <= 0, self._k("thresh_fitness_raw"),
                  self.thresh_fitness_raw, "is a log-likelihood threshold and must be ≤ 0",
                  "leave it out (None) to derive it from quality.min_SNR")
        for name in ("max_comp_update_shape", "num_times_comp_updated"):
            value = getattr(self, name)
            if value is not None:
                _need(value >= 1, self._k(name), value, "must be at least 1",
                      "give a whole number ≥ 1, or None for no limit")


NOISE_METHODS = ("mean", "median", "logmexp")
DECONVOLUTION_METHODS = ("oasis",)


@dataclass
class DeconvolutionParams(_Group):
    """OASIS deconvolution inside the temporal update, and noise / time-constant estimation.

    Attributes:
        p: order of the autoregressive model of the indicator: 0 (no dynamics), 1 (decay
            only) or 2 (rise and decay).
        s_min: smallest spike (event) size kept. None: no threshold (plain L1 solution);
            > 0: in the units of the trace; < 0: ``|s_min|·sn·sqrt(1 − d)`` (relative to the
            noise ``sn``, ``d`` the decay factor per frame; CaImAn's convention); 0 or
            ``"auto"``: the largest threshold that keeps the residual within the noise.
        bas_nonneg: constrain the baseline to be ≥ 0 (else ≥ min of the trace).
        noise_range: frequency band over which the power spectral density is averaged to
            estimate the noise, in cycles per frame; 0.5 is the Nyquist frequency.
        noise_method: how the PSD is averaged: ``"mean"``, ``"median"`` or ``"logmexp"``.
        lags: autocovariance lags beyond ``p`` used to estimate the AR coefficients (as in
            CaImAn), ≥ 0.
        fudge_factor: shrinkage of the estimated time constants, in (0, 1] (bias correction).
        optimize_g: number of large isolated events used to refine the AR coefficients;
            0: no refinement.
        method_deconvolution: ``"oasis"`` (the only solver).
    """

    _group: ClassVar[str] = "deconvolution"

    p: int = 1
    s_min: float | str | None = None
    bas_nonneg: bool = False
    noise_range: tuple[float, float] = (0.25, 0.5)
    noise_method: str = "mean"
    lags: int = 10
    fudge_factor: float = 0.98
    optimize_g: int = 0
    method_deconvolution: str = "oasis"

    def _check(self) -> None:
        _need(self.p in (0, 1, 2), self._k("p"), self.p, "the AR order must be 0, 1 or 2",
              "use 1 for fast imaging of a decay, 2 to also model the rise")
        if isinstance(self.s_min, str):
            _choice(self._k("s_min"), self.s_min, ("auto",), " or give a number or None")
        lo, hi = self.noise_range
        _need(0 <= lo < hi <= 0.5, self._k("noise_range"), self.noise_range,
              "must be (low, high) with 0 ≤ low < high ≤ 0.5 cycles per frame (0.5 = Nyquist)",
              "use (0.25, 0.5)")
        _choice(self._k("noise_method"), self.noise_method, NOISE_METHODS)
        _positive(self._k("lags"), self.lags, zero_ok=True)
        _need(0 < self.fudge_factor <= 1, self._k("fudge_factor"), self.fudge_factor,
              "must lie in (0, 1]", "use e.g. 0.98")
        _positive(self._k("optimize_g"), self.optimize_g, zero_ok=True)
        _choice(self._k("method_deconvolution"), self.method_deconvolution, DECONVOLUTION_METHODS,
                " (CaImAn's 'cvxpy'/'cvx' solvers are not provided)")


_GROUPS: dict[str, type[_Group]] = {
    "data": DataParams,
    "motion": MotionParams,
    "init": InitParams,
    "patch": PatchParams,
    "merge": MergeParams,
    "temporal": TemporalParams,
    "spatial": SpatialParams,
    "quality": QualityParams,
    "online": OnlineParams,
    "deconvolution": DeconvolutionParams,
}

# flat field name → group; field names are unique across groups (one name per concept)
_FIELD_GROUP: dict[str, str] = {}
for _g, _cls in _GROUPS.items():
    for _f in fields(_cls):  # type: ignore[arg-type]
        assert _f.name not in _FIELD_GROUP, f"duplicate parameter name {_f.name}"
        _FIELD_GROUP[_f.name] = _g

# per-axis values: one entry per spatial axis; a scalar is broadcast
_PER_AXIS = ("data.dxy", "data.neuron_radius", "init.gSig", "init.gSiz", "motion.max_shifts",
             "motion.strides", "motion.overlaps", "motion.gSig_filt", "patch.rf",
             "patch.stride", "spatial.medw")


# ----------------------------------------------------------------------------- derivation


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)  # 30 Hz × 0.4 s is 12.000000000000002 frames, not 13


#: Components initialised per patch, per neuron area (or volume) of the patch. Dense cortex
#: has somata covering ~30 % of a field of view plus dendrites and out-of-focus neuropil; the
#: initialisation must have room for all of them, since a cell left out is lost while a
#: surplus candidate is merged away or rejected by the quality tests (0.3 found 57 % of the
#: active somata of dense, low-SNR movies, 0.6 finds 88 %).
K_PER_NEURON_AREA = 0.6


def _rule_K(v: dict[str, Any], ndim: int) -> int:
    rf = v["patch.rf"]
    if rf is None:
        return 30
    r = v["data.neuron_radius"]
    # a neuron's area, or in a volume its ellipsoid's volume 4/3·π·r_z·r_y·r_x (a disc of its
    # in-plane radius 4/3·r_z planes thick on average; at least one plane). Counting it as its
    # axial diameter, 2·r_z planes, gave 2/3 of these components and lost dim cells: on five hard
    # simulated volumes F1 0.823–0.890 → 0.847–0.920 (docs/volumes.md)
    neuron = math.pi * r[-2] * r[-1] * (1.0 if ndim == 2 else max(1.0, 4.0 / 3.0 * r[0]))
    ratio = math.prod(2 * x for x in rf) / neuron
    return max(1, round(K_PER_NEURON_AREA * ratio))


#: Global background components of two-photon data: the neuropil is not one image times one
#: trace (out-of-focus fields fluctuate on their own); with one component their activity
#: leaks into the cells' traces and becomes components of its own.
NB_2P = 3


# (dotted key, rule(values, ndim)); evaluated in this order, each rule sees the values
# (given or derived) of the keys before it. data.* is always given by then.
_RULES: tuple[tuple[str, Callable[[dict[str, Any], int], Any]], ...] = (
    ("init.gSig", lambda v, n: tuple(r / 2 if v["data.is_1p"] else float(r)
                                     for r in v["data.neuron_radius"])),
    ("init.gSiz", lambda v, n: tuple(2 * _ceil(r) + 1 for r in v["data.neuron_radius"])),
    ("patch.rf", lambda v, n: tuple((3 if v["data.is_1p"] else 4) * s for s in v["init.gSiz"])),
    ("patch.stride", lambda v, n: tuple(v["init.gSiz"])),
    ("init.K", _rule_K),
    ("init.ssub", lambda v, n: max(1, math.floor(min(v["init.gSig"][-2:]) / 2.5 + 1e-9))),  # in the plane
    ("init.tsub", lambda v, n: max(1, math.floor(v["data.fr"] * v["data.decay_time"] / 6 + 1e-9))),
    ("patch.p_ssub", lambda v, n: v["init.ssub"]),
    ("patch.p_tsub", lambda v, n: max(1, math.floor(v["data.fr"] * v["data.decay_time"] / 3 + 1e-9))),
    ("init.method", lambda v, n: "greedy_corr" if v["data.is_1p"] else "rolling_greedy_roi"),
    ("init.nb", lambda v, n: 0 if v["data.is_1p"] else NB_2P),
    ("init.maxIter", lambda v, n: 2 if v["data.is_1p"] else 5),
    ("patch.nb_patch", lambda v, n: v["init.nb"] if v["init.nb"] <= 0 else 1),
    ("init.normalize_init", lambda v, n: v["init.method"] != "greedy_corr"),
    ("init.sigma_smooth_snmf", lambda v, n: (0.5,) * (n + 1)),
    ("patch.del_duplicates", lambda v, n: v["data.is_1p"]),
    ("motion.pw_rigid", lambda v, n: False if v["data.is_1p"] else "auto"),
    ("motion.max_shifts", lambda v, n: tuple(_ceil(1.2 * r) for r in v["data.neuron_radius"])),
    ("motion.strides", lambda v, n: tuple(max(16, 8 * math.floor(5 * r / 8 + 0.5))
                                          for r in v["data.neuron_radius"])),
    ("motion.overlaps", lambda v, n: tuple(s // 2 for s in v["motion.strides"])),
    ("motion.max_deviation_rigid", lambda v, n: _ceil(max(v["data.neuron_radius"]) / 2)),
    ("motion.gSig_filt", lambda v, n: tuple(v["init.gSig"]) if v["data.is_1p"] else None),
    ("motion.is3D", lambda v, n: n == 3),
    ("quality.min_SNR", lambda v, n: 1.5 if v["data.is_1p"] else 2.5),
    ("quality.rval_thr", lambda v, n: 0.6 if v["data.is_1p"] else 0.8),
    ("quality.min_area_ratio", lambda v, n: 0.35 if v["data.is_1p"] else 0.0),
    ("quality.use_cnn", lambda v, n: not v["data.is_1p"]),  # a volume: in each cell's widest plane
    ("quality.N_samples_exceptionality",
     lambda v, n: max(1, _ceil(v["data.fr"] * v["data.decay_time"]))),
    ("online.max_shifts_online", lambda v, n: _ceil(2 * max(v["data.neuron_radius"]))),
)
_RULE_OF: dict[str, Callable[[dict[str, Any], int], Any]] = dict(_RULES)


# ----------------------------------------------------------------------------- CaImAn / Mesmerize keys

_R_ENGINE = "parallelism, memory and hardware are handled by somascope.parallel.Engine"
_R_IO = "inputs and outputs are function arguments, not parameters"
_R_PROV = "provenance is recorded automatically"
_R_VIEW = "display and movie export belong to the viewer"
_R_CHUNK = "time chunks are set by motion.chunk_frames"
_R_IMPL = "a CaImAn implementation detail with no counterpart here"
_R_ARRAY = "array-valued settings are not parameters here"
_R_METHOD = "belongs to a CaImAn method somascope does not provide"
_R_BATCH = "batch metadata, kept by the batch manager"
_R_CNN = "the classifier weights ship with somascope"

#: Keys CaImAn or Mesmerize accept that have no meaning here: accepted, logged, dropped.
IGNORED_KEYS: dict[str, str] = {
    **dict.fromkeys(("n_processes", "n_pixels_per_process", "num_blocks_per_run_spat",
                     "num_blocks_per_run_temp", "memory_fact", "use_cuda", "in_memory",
                     "memory_efficient", "max_num_samples_fft"), _R_ENGINE),
    **dict.fromkeys(("fnames", "dims", "var_name_hdf5", "mmap_F", "mmap_C"), _R_IO),
    **dict.fromkeys(("caiman_version", "last_commit"), _R_PROV),
    **dict.fromkeys(("show_movie", "save_online_movie", "movie_name_online", "opencv_codec",
                     "verbosity"), _R_VIEW),
    **dict.fromkeys(("splits_rig", "splits_els", "num_splits_to_process_rig",
                     "num_splits_to_process_els"), _R_CHUNK),
    **dict.fromkeys(("shifts_opencv", "shifts_interpolate", "nonneg_movie", "min_mov",
                     "check_nan", "compute_g", "include_noise", "skip_refinement", "use_dense",
                     "seed_method"), _R_IMPL),
    **dict.fromkeys(("kernel", "expandCore", "se", "ss", "sn", "pixels", "indices"), _R_ARRAY),
    **dict.fromkeys(("SC_kernel", "SC_sigma", "SC_thr", "SC_normalize", "SC_use_NN", "SC_nnn",
                     "lambda_gnmf", "options_local_NMF", "solvers", "ring_CNN"), _R_METHOD),
    **dict.fromkeys(("item_name", "optional_outputs"), _R_BATCH),
    "path_to_model": _R_CNN,
}

# flat CaImAn/Mesmerize name → our dotted key
_ALIASES: dict[str, str] = {
    "k": "init.K",
    "gnb": "init.nb",
    "method_init": "init.method",
    "merge_thresh": "merge.merge_thr",
    "border_nan": "motion.border_mode",
    "num_frames_split": "motion.chunk_frames",
    "only_init_patch": "patch.only_init",
    "center_psf": "data.is_1p",
}
# input-only keys resolved when the object is built
_SPECIAL: dict[str, str] = {
    "neuron_radius_um": "data.neuron_radius_um",
    "rolling_sum": "init.rolling_sum",
}
# aliases that only apply inside one (CaImAn) group
_GROUP_ALIASES: dict[str, dict[str, str]] = {
    "merging": {"thr": "merge.merge_thr"},
    "merge": {"thr": "merge.merge_thr"},
    "merge_params": {"thr": "merge.merge_thr"},
    "online": {"max_shifts": "online.max_shifts_online"},
    "online_params": {"max_shifts": "online.max_shifts_online"},
}
# nested group name → our groups its keys may land in
_GROUP_CONTEXTS: dict[str, frozenset[str]] = {}
for _names, _targets in (
    (("data", "data_params"), {"data"}),
    (("motion", "motion_params"), {"motion"}),
    (("init", "init_params"), {"init", "data"}),
    (("patch", "patch_params"), {"patch"}),
    (("merge", "merging", "merge_params"), {"merge"}),
    (("temporal", "temporal_params"), {"temporal", "deconvolution", "init"}),
    (("spatial", "spatial_params"), {"spatial", "init"}),
    (("quality", "quality_params"), {"quality"}),
    (("online", "online_params"), {"online", "quality"}),
    (("preprocess", "preprocess_params"), {"deconvolution"}),
    (("deconvolution",), {"deconvolution"}),
):
    for _n in _names:
        _GROUP_CONTEXTS[_n] = frozenset(_targets)
# Mesmerize containers: their content is parsed like a top-level dict
_CONTAINERS = frozenset({"main", "eval", "mcorr_kwargs", "cnmf_kwargs", "cnmfe_kwargs",
                         "eval_kwargs"})
# a None from CaImAn means "compute it" for these
_NONE_MEANS_DEFAULT = frozenset({"patch.stride", "init.gSiz", "quality.N_samples_exceptionality",
                                "patch.low_rank_background"})

_CAIMAN_INIT = {"greedy_roi": "greedy_roi", "corr_pnr": "greedy_corr", "greedy_pnr": "greedy_corr",
                "sparse_nmf": "sparse_nmf", "sparse_NMF": "sparse_nmf"}


def _convert_method_init(value: Any, path: str) -> Any:
    if value in INIT_METHODS:
        return value
    if isinstance(value, str) and value in _CAIMAN_INIT:
        return _CAIMAN_INIT[value]
    _fail(path, value, "has no counterpart here (CaImAn's graph_nmf, local_NMF and pca_ica "
          "initialisations are not provided)",
          f"use one of {', '.join(map(repr, INIT_METHODS))} or CaImAn's "
          f"{', '.join(map(repr, _CAIMAN_INIT))}")


def _convert_border_nan(value: Any, path: str) -> Any:
    if value is True or value == "nan":
        return "nan"
    if value is False or value == "zero":
        return "zero"
    if value == "copy":
        return "copy"
    _fail(path, value, "must be True (→ 'nan'), False (→ 'zero') or 'copy'",
          "use motion.border_mode with one of 'copy', 'zero', 'nan'")


def _inf_to_none(value: Any, path: str) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isinf(value):
        return None
    return value


def _bool_to_int(value: Any, path: str) -> Any:
    return int(value) if isinstance(value, bool) else value


_ALIAS_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "method_init": _convert_method_init,
    "border_nan": _convert_border_nan,
}
_TARGET_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "online.max_comp_update_shape": _inf_to_none,
    "online.num_times_comp_updated": _inf_to_none,
    "deconvolution.optimize_g": _bool_to_int,  # CaImAn's default is False
}


def _known_names() -> dict[str, str]:
    """Every accepted key (lower-cased) → 'key (where it goes)', for did-you-mean hints."""
    out: dict[str, str] = {}
    for name, g in _FIELD_GROUP.items():
        out.setdefault(name.lower(), f"{name!r} (group {g!r})")
    for name, target in {**_ALIASES, **_SPECIAL}.items():
        out.setdefault(name.lower(), f"{name!r} (→ {target})")
    for name in IGNORED_KEYS:
        out.setdefault(name.lower(), f"{name!r} (accepted, unused)")
    for name in [*_GROUP_CONTEXTS, *_CONTAINERS]:
        out.setdefault(name.lower(), f"{name!r} (a group)")
    return out


def _unknown(key: str, path: str, context: str | None) -> NoReturn:
    names = _known_names()
    close = difflib.get_close_matches(key.lower(), list(names), n=3, cutoff=0.6)
    where = f" in group {context!r}" if context else ""
    hint = (f"Did you mean {' or '.join(names[c] for c in close)}?" if close
            else "No known parameter has a similar name.")
    raise ParameterError(f"unknown parameter {path!r}{where}. {hint} Fix: correct the name; every parameter "
                         f"is listed, by group, in somascope.params.Params().to_dict().")


@dataclass
class _Collected:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def put(self, target: str, value: Any, path: str) -> None:
        value = _plain(value)
        if target in self.values and self.values[target] != value:
            raise ParameterError(
                f"conflicting values for {target}: {self.sources[target]}={self.values[target]!r} "
                f"and {path}={value!r}. Fix: give it once.")
        self.values[target] = value
        self.sources[target] = path


def _resolve(key: str, path: str, context: str | None) -> tuple[str, Callable[[Any, str], Any] | None]:
    """Map a key (inside group ``context`` or top level) to (dotted target, converter)."""
    if context is not None and key in _GROUP_ALIASES.get(context, {}):
        target, conv = _GROUP_ALIASES[context][key], None
    elif key in _FIELD_GROUP:
        target, conv = f"{_FIELD_GROUP[key]}.{key}", None
    elif key in _ALIASES:
        target, conv = _ALIASES[key], _ALIAS_CONVERTERS.get(key)
    elif key in _SPECIAL:
        target, conv = _SPECIAL[key], None
    else:
        _unknown(key, path, context)
    if context is not None:
        group = target.split(".")[0]
        if group not in _GROUP_CONTEXTS[context]:
            raise ParameterError(
                f"parameter {path!r} is given in group {context!r} but belongs to group "
                f"{group!r}. Fix: move it to {group!r} or give it at the top level.")
    return target, conv


def _collect(d: Mapping[str, Any], out: _Collected, prefix: str = "",
             context: str | None = None) -> None:
    for key, value in d.items():
        if not isinstance(key, str):
            raise ParameterError(f"parameter names must be strings, got {key!r} in "
                                 f"{prefix or 'the top level'}. Fix: use string keys.")
        path = prefix + key
        if key in IGNORED_KEYS:
            out.ignored.append(path)
            continue
        if context is None and "." in key:
            group, _, name = key.partition(".")
            if group in _GROUP_CONTEXTS:
                _collect({name: value}, out, f"{prefix}{group}.", group)
                continue
            _unknown(key, path, None)
        if context is None and (key in _GROUP_CONTEXTS or key in _CONTAINERS):
            if not isinstance(value, Mapping):
                raise ParameterError(f"{path!r} is a group of parameters and must be a mapping, "
                                     f"got {value!r}. Fix: give a dict such as "
                                     f"{{{key!r}: {{...}}}}.")
            _collect(value, out, path + ".", None if key in _CONTAINERS else key)
            continue
        value = _plain(value)
        target, conv = _resolve(key, path, context)
        if conv is not None:
            value = conv(value, path)
        if target in _TARGET_CONVERTERS:
            value = _TARGET_CONVERTERS[target](value, path)
        if target == "init.method" and key == "method_init" and value == "greedy_roi":
            # CaImAn's greedy_roi uses a rolling sum unless rolling_sum=False
            out.put("init._caiman_greedy_roi", True, path)
        if value is None and target in _NONE_MEANS_DEFAULT:
            continue
        out.put(target, value, path)


# ----------------------------------------------------------------------------- building


def _is_scalar(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _infer_ndim(values: dict[str, Any], sources: dict[str, str]) -> int:
    lengths: dict[int, str] = {}
    for key in (*_PER_AXIS, "data.neuron_radius_um"):
        v = values.get(key)
        if isinstance(v, tuple) and len(v) > 1:
            lengths.setdefault(len(v), sources[key])
    if len(lengths) > 1:
        raise ParameterError(
            "per-axis parameters disagree on the number of spatial axes: "
            + ", ".join(f"{src} has {n}" for n, src in sorted(lengths.items()))
            + ". Fix: give every per-axis value for the same axes ((y, x) or (z, y, x)).")
    is3d = values.get("motion.is3D")
    if lengths:
        ndim, source = next(iter(lengths.items()))
        if isinstance(is3d, bool) and is3d != (ndim == 3):
            raise ParameterError(
                f"{sources['motion.is3D']}={is3d!r} contradicts {source}, which has {ndim} "
                f"entries (one per spatial axis). Fix: give 3-entry per-axis values for volumes "
                f"and 2-entry ones otherwise, or drop is3D (it follows from them).")
        return ndim
    return 3 if is3d is True else 2


def _broadcast(value: Any, ndim: int) -> Any:
    if _is_scalar(value):
        return (value,) * ndim
    if isinstance(value, tuple) and len(value) == 1:
        return value * ndim
    return value


def _build(values: dict[str, Any], sources: dict[str, str]) -> Params:
    """Apply the derivation rules to the given (dotted) values and construct Params."""
    v = dict(values)
    ndim = _infer_ndim(v, sources)
    for key in (*_PER_AXIS, "data.neuron_radius_um"):
        if key in v:
            v[key] = _broadcast(v[key], ndim)
    if "init.sigma_smooth_snmf" in v and _is_scalar(v["init.sigma_smooth_snmf"]):
        v["init.sigma_smooth_snmf"] = (v["init.sigma_smooth_snmf"],) * (ndim + 1)

    gsiz = v.get("init.gSiz")
    if isinstance(gsiz, tuple) and all(_is_scalar(s) and float(s).is_integer() for s in gsiz):
        odd = tuple(int(s) + 1 if int(s) % 2 == 0 else int(s) for s in gsiz)
        if odd != gsiz:
            log.warning("init.gSiz=%r has even entries; using %r (a bounding box has a centre "
                        "pixel, as in CaImAn)", gsiz, odd)
            v["init.gSiz"] = odd

    data = DataParams()
    v.setdefault("data.fr", data.fr)
    v.setdefault("data.decay_time", data.decay_time)
    v.setdefault("data.is_1p", data.is_1p)
    v.setdefault("data.dxy", (1.0,) * ndim)
    is_1p = _coerce(v["data.is_1p"], bool, "data.is_1p")

    radius_um = v.pop("data.neuron_radius_um", None)
    if "data.neuron_radius" not in v:
        if radius_um is not None:
            if "data.dxy" not in values:
                _fail(sources["data.neuron_radius_um"], radius_um,
                      "a radius in µm needs the pixel size", "also give dxy (µm per pixel)")
            um = _coerce(radius_um, tuple[float, ...], "neuron_radius_um")
            dxy = _coerce(v["data.dxy"], tuple[float, ...], "data.dxy")
            _all_positive("neuron_radius_um", um)
            _all_positive("data.dxy", dxy)
            _need(len(um) == len(dxy), "neuron_radius_um", um,
                  f"needs one entry per axis of data.dxy={dxy}", "give matching lengths")
            v["data.neuron_radius"] = tuple(u / d for u, d in zip(um, dxy))
        elif "init.gSig" in v:
            gsig = _coerce(v["init.gSig"], tuple[float, ...], "init.gSig")
            _all_positive("init.gSig", gsig)
            v["data.neuron_radius"] = tuple((2 * g if is_1p else g) for g in gsig)
        elif "init.gSiz" in v:
            gsiz_t = _coerce(v["init.gSiz"], tuple[float, ...], "init.gSiz")
            _all_positive("init.gSiz", gsiz_t)
            v["data.neuron_radius"] = tuple(max((s - 1) / 2, 0.5) for s in gsiz_t)
        else:
            v["data.neuron_radius"] = (5.0,) * ndim
    elif radius_um is not None:
        raise ParameterError(f"both {sources['data.neuron_radius']} and "
                             f"{sources['data.neuron_radius_um']} give the neuron radius. "
                             f"Fix: give only one.")

    # the data group is complete: check it before deriving anything from it
    for name in ("fr", "decay_time", "dxy", "neuron_radius", "is_1p"):
        key = f"data.{name}"
        v[key] = _coerce(v[key], _hints(DataParams)[name], key)
    DataParams(**{name: v[f"data.{name}"] for name in ("fr", "decay_time", "dxy",
                                                       "neuron_radius", "is_1p")})
    _need(len(v["data.neuron_radius"]) == len(v["data.dxy"]), "data.neuron_radius",
          v["data.neuron_radius"], f"needs one entry per axis of data.dxy={v['data.dxy']}",
          "give matching lengths")

    _resolve_rolling(v, sources, is_1p)

    for key, rule in _RULES:
        if key not in v:
            v[key] = rule(v, ndim)
        else:
            group, name = key.split(".")
            v[key] = _coerce(v[key], _hints(_GROUPS[group])[name], key)

    groups: dict[str, _Group] = {}
    for g, cls in _GROUPS.items():
        prefix = g + "."
        kwargs = {k[len(prefix):]: val for k, val in v.items() if k.startswith(prefix)}
        groups[g] = cls(**kwargs)
    return Params(**groups)  # type: ignore[arg-type]


def _resolve_rolling(v: dict[str, Any], sources: dict[str, str], is_1p: bool) -> None:
    """CaImAn selects RollingGreedyROI with method_init='greedy_roi' + rolling_sum (default True)."""
    rolling = v.pop("init.rolling_sum", None)
    caiman_greedy = v.pop("init._caiman_greedy_roi", False)
    if rolling is None and caiman_greedy:
        rolling = True
    if rolling is None:
        return
    rolling = _coerce(rolling, bool, sources.get("init.rolling_sum", "rolling_sum"))
    method = v.get("init.method", "greedy_corr" if is_1p else "rolling_greedy_roi")
    if method not in ("greedy_roi", "rolling_greedy_roi"):
        return  # rolling_sum only concerns GreedyROI
    wanted = "rolling_greedy_roi" if rolling else "greedy_roi"
    source = sources.get("init.method", "")
    if "init.method" in v and source.split(".")[-1] == "method" and method != wanted:
        raise ParameterError(f"{source}={method!r} contradicts "
                             f"{sources.get('init.rolling_sum', 'rolling_sum')}={rolling!r}. "
                             f"Fix: give only method ('greedy_roi' or 'rolling_greedy_roi').")
    v["init.method"] = wanted


# ----------------------------------------------------------------------------- Params


@dataclass
class Params:
    """All parameters of a somascope analysis, in groups (see the module docstring).

    Build it with :meth:`from_neuron` (from what you know about the recording),
    :meth:`from_dict` (CaImAn / Mesmerize / somascope dicts), :meth:`load` (JSON / YAML), or
    directly from group objects: ``Params(motion=MotionParams(pw_rigid=True))``.
    Construction validates everything; after changing attributes in place call
    :meth:`validate`.
    """

    data: DataParams = field(default_factory=DataParams)
    motion: MotionParams = field(default_factory=MotionParams)
    init: InitParams = field(default_factory=InitParams)
    patch: PatchParams = field(default_factory=PatchParams)
    merge: MergeParams = field(default_factory=MergeParams)
    temporal: TemporalParams = field(default_factory=TemporalParams)
    spatial: SpatialParams = field(default_factory=SpatialParams)
    quality: QualityParams = field(default_factory=QualityParams)
    online: OnlineParams = field(default_factory=OnlineParams)
    deconvolution: DeconvolutionParams = field(default_factory=DeconvolutionParams)

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for ``T×H×W`` movies, 3 for ``T×Z×H×W``)."""
        return len(self.data.dxy)

    def validate(self) -> None:
        """Check every group and the constraints between groups.

        Raises:
            ParameterError: naming the key, the value and the fix.
        """
        for g, cls in _GROUPS.items():
            group = getattr(self, g)
            if not isinstance(group, cls):
                raise ParameterError(f"Params.{g} must be a {cls.__name__}, got "
                                     f"{type(group).__name__}. Fix: use Params.from_dict("
                                     f"{{{g!r}: {{...}}}}) to build from a dict.")
            group.validate()
        n = self.ndim
        _need(n in (2, 3), "data.dxy", self.data.dxy, "must have 2 (y, x) or 3 (z, y, x) entries",
              "give one pixel size per spatial axis")
        _need(self.motion.is3D == (n == 3), "motion.is3D", self.motion.is3D,
              f"disagrees with the {n} spatial axes of data.dxy={self.data.dxy}",
              "give 3-entry per-axis values for volumes, 2-entry ones otherwise")
        for key in _PER_AXIS:
            g, name = key.split(".")
            value = getattr(getattr(self, g), name)
            if value is not None:
                _need(len(value) == n, key, value,
                      f"needs one entry per spatial axis ({n}, as data.dxy={self.data.dxy})",
                      f"give {n} values")
        _need(len(self.init.sigma_smooth_snmf) == n + 1, "init.sigma_smooth_snmf",
              self.init.sigma_smooth_snmf, f"needs {n + 1} entries (time, then each spatial axis)",
              f"give {n + 1} values")
        if self.patch.rf is not None:
            _need(all(r >= s for r, s in zip(self.patch.rf, self.init.gSiz)), "patch.rf",
                  self.patch.rf,
                  f"a patch (2·rf wide) must hold at least two neurons across, but the neuron's "
                  f"bounding box is init.gSiz={self.init.gSiz}",
                  f"set rf ≥ {tuple(self.init.gSiz)} per axis, or rf=None to process the whole "
                  f"field of view")

    # ---- constructors

    @staticmethod
    def given_keys(d: Mapping[str, Any]) -> set[str]:
        """Dotted names (``"data.fr"``) of the parameters a dict sets, however it spells them
        (nested, flat, CaImAn or Mesmerize keys and aliases); keys CaImAn accepts that mean
        nothing here are left out silently (:meth:`from_dict` warns about them)."""
        return set(Params.given_values(d))

    @staticmethod
    def given_values(d: Mapping[str, Any]) -> dict[str, Any]:
        """``{"data.fr": 30.0, …}``: the values a dict sets under their dotted names, however it
        spells them (see :meth:`given_keys`); aliases converted (``merge_thresh`` →
        ``merge.merge_thr``). Internal markers (names starting with ``_``) are left out.

        Raises:
            ParameterError: unknown or conflicting keys.
        """
        quiet = logging.getLogger(__name__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            values = _collect_all(d).values
        finally:
            quiet.setLevel(level)
        return {k: v for k, v in values.items() if not k.split(".")[-1].startswith("_")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Params:
        """Build from a nested, flat, dotted, CaImAn or Mesmerize dict (module docstring).

        Parameters not given are derived from the neuron radius, frame rate and decay time.
        The dict is not modified.

        Raises:
            ParameterError: unknown key (with a did-you-mean), conflicting keys, wrong type
                or impossible value.
        """
        collected = _collect_all(d)
        return _build(collected.values, collected.sources)

    @classmethod
    def from_neuron(cls, radius_px: float | tuple[float, ...] | None = None, *,
                    radius_um: float | tuple[float, ...] | None = None, fr: float = 30.0,
                    decay_time: float = 0.4, dxy: float | tuple[float, ...] | None = None,
                    is_1p: bool = False, **overrides: Any) -> Params:
        """Parameters derived from what a user knows about the recording.

        Args:
            radius_px: typical neuron radius in px (scalar or one per axis), or
            radius_um: the radius in µm, converted with ``dxy``.
            fr: frame rate, Hz.
            decay_time: indicator decay time, s.
            dxy: pixel size, µm per pixel (scalar or one per axis); required with radius_um.
            is_1p: one-photon data.
            **overrides: any other parameters, flat or CaImAn names.
        """
        if (radius_px is None) == (radius_um is None):
            raise ParameterError("give exactly one of radius_px and radius_um. Fix: e.g. "
                                 "Params.from_neuron(radius_px=5, fr=30, decay_time=0.4).")
        d: dict[str, Any] = {"fr": fr, "decay_time": decay_time, "is_1p": is_1p}
        if radius_px is not None:
            d["neuron_radius"] = radius_px
        else:
            d["neuron_radius_um"] = radius_um
        if dxy is not None:
            d["dxy"] = dxy
        collected = _collect_all(d, overrides)  # an override repeating an argument is a conflict
        return _build(collected.values, collected.sources)

    def replace(self, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Params:
        """A new, validated Params with some values changed (flat, dotted or CaImAn keys).

        Fields that hold the value the derivation rule gives for this object follow the
        change (e.g. ``replace(fr=15)`` also updates ``quality.N_samples_exceptionality``);
        fields set to anything else are kept. This object is not modified.
        """
        new = _collect_all(overrides or {}, kwargs)
        base = self._given()
        radius_keys = {"data.neuron_radius", "data.neuron_radius_um", "init.gSig"}
        if radius_keys & set(new.values):
            base.pop("data.neuron_radius", None)
        if {"init.rolling_sum", "init._caiman_greedy_roi"} & set(new.values):
            base.pop("init.method", None)  # let rolling_sum / method_init choose the method
        values = {**base, **new.values}
        sources = {k: k for k in base} | new.sources
        return _build(values, sources)

    def _given(self) -> dict[str, Any]:
        """Dotted values of this object, leaving out those equal to their derivation rule."""
        flat = self._flat()
        out = {}
        for key, value in flat.items():
            if key in _RULE_OF and _RULE_OF[key](flat, self.ndim) == value:
                continue
            out[key] = value
        return out

    def _flat(self) -> dict[str, Any]:
        return {f"{g}.{f.name}": getattr(getattr(self, g), f.name)
                for g in _GROUPS for f in fields(getattr(self, g))}

    # ---- serialisation

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested ``{group: {field: value}}`` of plain JSON types (tuples become lists)."""
        def plain(x: Any) -> Any:
            return [plain(i) for i in x] if isinstance(x, tuple) else x
        return {g: {f.name: plain(getattr(getattr(self, g), f.name))
                    for f in fields(getattr(self, g))} for g in _GROUPS}

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text of :meth:`to_dict`; also written (atomically) to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            _write_atomic(Path(path), text)
        return text

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """YAML text of :meth:`to_dict`; also written (atomically) to ``path`` if given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            _write_atomic(Path(path), text)
        return text

    @classmethod
    def from_json(cls, text: str) -> Params:
        """Parse JSON text (any dict :meth:`from_dict` accepts)."""
        try:
            d = json.loads(text, object_pairs_hook=_unique_json_pairs)
        except json.JSONDecodeError as err:
            raise ParameterError(f"invalid JSON parameters: {err}. Fix: check the syntax "
                                 f"at that position.") from err
        return cls.from_dict(d)

    @classmethod
    def from_yaml(cls, text: str) -> Params:
        """Parse YAML text (any dict :meth:`from_dict` accepts)."""
        import yaml

        try:
            d = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as err:
            raise ParameterError(f"invalid YAML parameters: {yaml_problem(err)}. Fix: check the syntax "
                                 f"at that position.") from err
        if d is None:
            raise ParameterError("the YAML text holds no parameters. Fix: give a mapping such "
                                 "as 'data: {fr: 30}'.")
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Params:
        """Read parameters from a ``.json``, ``.yaml`` or ``.yml`` file."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ParameterError(f"cannot tell the format of {str(p)!r} from its extension. "
                                 f"Fix: use a .json, .yaml or .yml file.")
        if p.is_dir():
            raise ParameterError(f"the parameters file {str(p)!r} is a folder. Fix: give the path of a "
                                 f"{suffix} file.")
        if not p.exists():
            raise ParameterError(f"the parameters file {str(p)!r} does not exist. Fix: check the path.")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ParameterError(f"{p}: not a {'JSON' if suffix == '.json' else 'YAML'} text file (byte "
                                 f"{err.start} is not UTF-8 text). Fix: give a parameters file written as text, "
                                 f"e.g. one saved by Params.save.") from err
        try:
            return cls.from_json(text) if suffix == ".json" else cls.from_yaml(text)
        except ParameterError as err:
            raise ParameterError(f"{p}: {err}") from err

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to a ``.json``, ``.yaml`` or ``.yml`` file (atomically)."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            self.to_json(path)
        elif suffix in (".yaml", ".yml"):
            self.to_yaml(path)
        else:
            raise ParameterError(f"cannot tell the format of {str(path)!r} from its extension. "
                                 f"Fix: use a .json, .yaml or .yml file.")

    # ---- comparison

    def diff(self, other: Params) -> list[tuple[str, Any, Any]]:
        """Differences as ``(dotted key, value here, value in other)``, in group order."""
        if not isinstance(other, Params):
            raise TypeError(f"can only diff against Params, got {type(other).__name__}")
        mine, theirs = self._flat(), other._flat()
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]


def _collect_all(*mappings: Mapping[str, Any]) -> _Collected:
    """Collect several dicts into one set of dotted values; log the ignored keys once."""
    collected = _Collected()
    for d in mappings:
        if not isinstance(d, Mapping):
            raise ParameterError(f"parameters must be a mapping (dict), got "
                                 f"{type(d).__name__}. Fix: pass a dict such as {{'fr': 30}}.")
        _collect(d, collected)
    _warn_ignored(collected.ignored)
    return collected


def _warn_ignored(paths: list[str]) -> None:
    if not paths:
        return
    by_reason: dict[str, list[str]] = {}
    for path in paths:
        by_reason.setdefault(IGNORED_KEYS[path.split(".")[-1]], []).append(path)
    log.warning("ignoring %d parameter(s) with no meaning in somascope: %s", len(paths),
                "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in by_reason.items()))


def yaml_problem(err: BaseException) -> str:
    """A PyYAML error as one line: ``line 2, column 1: expected ',' or ']', but got '<stream
    end>' (while parsing a flow sequence)`` (its own message spans lines and quotes the text)."""
    problem = getattr(err, "problem", None)
    if not problem:
        return " ".join(str(err).split())
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    return where + " ".join(problem.split()) + (f" ({' '.join(context.split())})" if context else "")


def _unique_json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a key given twice in one object is a contradiction, not "last wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParameterError(f"the key {key!r} is given twice in one object (values {out[key]!r} and "
                                 f"{value!r}). Fix: keep one of them.")
        out[key] = value
    return out


@functools.cache
def _unique_key_loader() -> type:
    """A PyYAML SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merge keys ('<<') and complex keys: PyYAML's own rules
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ParameterError(f"the key {key!r} is given twice in one mapping (lines {lines[key]} "
                                         f"and {line}). Fix: keep one of them.")
                lines[key] = line
            return super().construct_mapping(node, deep=deep)

    return Loader


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

