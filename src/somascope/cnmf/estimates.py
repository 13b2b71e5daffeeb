"""The results of source extraction: :class:`Estimates`, and its HDF5 file format.

One ``Estimates`` is what batch CNMF, CNMF-E, OnACID and registration produce and consume:
spatial footprints ``A`` (``scipy.sparse.csc_matrix``, pixels × K, pixels in C order of
``dims``), temporal traces ``C``/``S``/``YrA`` (K × T), the background ``b``/``f``, noise and
AR-model parameters, quality metrics, the accepted/rejected split, and the parameters, seed
and provenance that make the result reproducible.

Files: :meth:`Estimates.save` / :meth:`Estimates.load` write and read a standalone HDF5 file;
:func:`write_estimates` / :func:`read_estimates` do the same into any group of an open
``h5py`` file, so a pipeline results file can hold motion results beside the estimates. The
layout is documented in ``docs/results-schema.md`` (``format = "somascope-estimates"``,
``schema_version`` :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy
import scipy.sparse as sp

from somascope import __version__
from somascope.io.atomic import atomic_path

__all__ = [
    "Estimates",
    "ResultsFileError",
    "write_estimates",
    "read_estimates",
    "collect_provenance",
    "FORMAT",
    "SCHEMA_VERSION",
]

#: Value of the ``format`` attribute of every estimates group.
FORMAT = "somascope-estimates"
#: Version of the on-disk layout written by this code; files with a higher version are refused.
SCHEMA_VERSION = 1

# Per-component traces, K × T.
_TRACE_FIELDS = ("C", "S", "YrA", "F_dff")
# Per-component scalars, shape (K,).
_VECTOR_FIELDS = ("neurons_sn", "bl", "c1", "lam", "SNR_comp", "r_values", "cnn_preds", "activity")
# Per-component flags, bool (K,): seeded from a structural channel's masks; silent (seeded,
# no activity: a cell that did not fire).
_FLAG_FIELDS = ("seeded", "silent")
# Component index lists into 0..K-1.
_INDEX_FIELDS = ("idx_components", "idx_components_bad")
# Every array field stored as a plain dataset, in file order.
_ARRAY_FIELDS = ("C", "S", "YrA", "F_dff", "b", "f", "sn", "g", *_VECTOR_FIELDS, *_FLAG_FIELDS, *_INDEX_FIELDS)

# (units, description) written as dataset attributes; the schema document repeats them.
_FIELD_INFO: dict[str, tuple[str, str]] = {
    "A": ("a.u.", "spatial footprints, pixels x K, CSC, pixels in C order of dims"),
    "C": ("a.u. (movie intensity x footprint scale)", "denoised calcium traces, K x T"),
    "S": ("a.u. (same scale as C)", "deconvolved activity (spike) estimates, K x T"),
    "YrA": ("a.u. (same scale as C)", "residual traces: raw trace minus C, K x T"),
    "F_dff": ("1 (fraction)", "Delta F / F traces, K x T"),
    "b": ("a.u.", "spatial background components, pixels x nb"),
    "f": ("a.u. (movie intensity)", "temporal background components, nb x T"),
    "sn": ("movie intensity", "noise standard deviation of each pixel, pixels"),
    "g": ("1", "AR coefficients of each component's calcium model, K x p"),
    "neurons_sn": ("a.u. (same scale as C)", "noise standard deviation of each trace, K"),
    "bl": ("a.u. (same scale as C)", "baseline of each trace, K"),
    "c1": ("a.u. (same scale as C)", "initial calcium value of each trace, K"),
    "lam": ("a.u.", "sparsity penalty used in deconvolution, K"),
    "SNR_comp": ("1", "trace signal-to-noise ratio, K"),
    "r_values": ("1 (correlation)", "spatial consistency r-value, K"),
    "cnn_preds": ("1 (probability)", "CNN probability of being a cell, K"),
    "activity": ("1 (noise deviations)", "seeded cell's own activity z (neuropil-subtracted), NaN if unseeded, K"),
    "seeded": ("bool", "component seeded from a structural-channel mask, K"),
    "silent": ("bool", "seeded cell without activity (kept, flagged), K"),
    "idx_components": ("index", "indices of accepted components, into 0..K-1"),
    "idx_components_bad": ("index", "indices of rejected components, into 0..K-1"),
}

# Arrays with at least this many elements are chunked and compressed.
_COMPRESS_MIN_ELEMENTS = 4096


class ResultsFileError(ValueError):
    """A file or HDF5 group is not a readable somascope estimates result."""


def collect_provenance(input_path: str | os.PathLike[str] | None = None, **fields: Any) -> dict:
    """A provenance record for a result: input, time, host and software versions.

    Parameters
    ----------
    input_path
        The movie (or other input) the result was computed from; stored as an absolute path.
    **fields
        Further JSON-able entries to record (e.g. ``stage="cnmf"``, ``motion_file=...``).

    Returns
    -------
    dict
        Keys ``created`` (UTC, ISO 8601), ``host``, ``platform``, ``python``, ``somascope``,
        ``numpy``, ``scipy``, ``h5py``, ``input_path`` (if given), then the given ``fields``.
    """
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "somascope": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "h5py": h5py.__version__,
    }
    if input_path is not None:
        record["input_path"] = str(Path(input_path).expanduser().absolute())
    record.update(fields)
    return _to_jsonable(record, "provenance")


def _to_jsonable(obj: Any, where: str) -> Any:
    """Return a copy of ``obj`` made of JSON types (dict/list/str/int/float/bool/None).

    NumPy scalars and arrays become Python numbers and lists, tuples become lists, paths
    become strings. Anything else (or a non-string dict key) raises ``TypeError`` naming
    where it sits, e.g. ``params['motion']['template']``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic) and not isinstance(obj, (np.complexfloating, np.void)):
        return _to_jsonable(obj.item(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a non-string key {key!r}; results store parameters as JSON, "
                    "whose keys are strings: use str keys."
                )
            out[key] = _to_jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"{where} holds a {type(obj).__name__}, which cannot be saved as JSON; use numbers, "
        "strings, booleans, None, lists or dicts (store arrays in Estimates.extra instead)."
    )


def _as_real_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"Estimates.{name} must be a real numeric array, got dtype {arr.dtype}; "
            "convert it with np.asarray(..., dtype=np.float32)."
        )
    return arr


def _as_index_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"Estimates.{name} must hold integer component indices, got dtype {arr.dtype}; "
            "for a boolean mask use np.flatnonzero(mask)."
        )
    return arr.astype(np.int64, copy=False)


@dataclass(eq=False)
class Estimates:
    """Components found in a movie, with everything needed to interpret and reproduce them.

    Shapes use ``K`` components, ``T`` frames, ``P = prod(dims)`` pixels, ``nb`` background
    components and ``p`` AR order. Only ``A`` and ``dims`` are required; every other field may
    be ``None`` (not computed). Arrays keep the dtype they are given (float32 for traces
    is usual) and are never modified in place.

    Attributes
    ----------
    A : scipy.sparse.csc_matrix, P × K
        Spatial footprints; column k reshaped to ``dims`` (C order) is the image of cell k.
        Dense arrays and other sparse formats are converted to CSC on construction.
    dims : tuple of int
        Field of view ``(H, W)`` or ``(Z, H, W)`` in pixels.
    C, S, YrA, F_dff : ndarray, K × T
        Denoised calcium traces, deconvolved activity, residual traces (raw trace = C + YrA)
        and ΔF/F traces.
    b : ndarray, P × nb;  f : ndarray, nb × T
        Low-rank background: ``b @ f`` is the background movie (pixels × frames).
    sn : ndarray, P
        Noise standard deviation of each pixel, in movie intensity units.
    neurons_sn, bl, c1, lam : ndarray, K
        Per-trace noise, baseline, initial value and deconvolution sparsity penalty.
    g : ndarray, K × p
        AR coefficients of each trace (``p`` may be 0).
    SNR_comp, r_values, cnn_preds : ndarray, K
        Quality metrics: trace SNR, spatial consistency, CNN cell probability.
    activity : ndarray, K
        Own activity z of each seeded cell (:mod:`somascope.evaluation.activity`: the
        neuropil-subtracted trace's largest transient, in noise deviations), NaN for the
        others; below :func:`~somascope.evaluation.activity.activity_threshold` a seeded cell is
        silent. None without a structural channel.
    seeded, silent : ndarray of bool, K
        Cells seeded from a structural channel's masks, and those of them that showed no
        activity (silent cells: accepted, flagged). None without a structural channel.
    idx_components, idx_components_bad : ndarray of int64
        Indices (into ``0..K-1``) of accepted and rejected components; disjoint.
    frame_rate : float
        Imaging rate in Hz.
    params : dict
        Parameters used (nested, JSON types; tuples are stored as lists).
    software_version : str
        somascope version that produced the result (default: the running one).
    seed : int
        Seed of the random generator used, for reproducibility.
    provenance : dict
        JSON-able record of input path, timestamps, host, … (see :func:`collect_provenance`).
    extra : dict of str → ndarray
        Further named arrays (e.g. CNMF-E ring weights). :meth:`select` copies them unchanged.
    """

    A: Any
    dims: tuple[int, ...]
    C: np.ndarray | None = None
    S: np.ndarray | None = None
    b: np.ndarray | None = None
    f: np.ndarray | None = None
    YrA: np.ndarray | None = None
    sn: np.ndarray | None = None
    neurons_sn: np.ndarray | None = None
    g: np.ndarray | None = None
    bl: np.ndarray | None = None
    c1: np.ndarray | None = None
    lam: np.ndarray | None = None
    F_dff: np.ndarray | None = None
    SNR_comp: np.ndarray | None = None
    r_values: np.ndarray | None = None
    cnn_preds: np.ndarray | None = None
    activity: np.ndarray | None = None
    seeded: np.ndarray | None = None
    silent: np.ndarray | None = None
    idx_components: np.ndarray | None = None
    idx_components_bad: np.ndarray | None = None
    frame_rate: float | None = None
    params: dict | None = None
    software_version: str | None = __version__
    seed: int | None = None
    provenance: dict = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        self._coerce()
        self.validate()

    def _coerce(self) -> None:
        """Bring inputs to their canonical types (new objects; inputs are not modified)."""
        try:
            self.dims = tuple(int(d) for d in np.atleast_1d(np.asarray(self.dims)))
        except (TypeError, ValueError):
            raise TypeError(
                f"Estimates.dims must be a tuple of ints like (H, W), got {self.dims!r}."
            ) from None
        if sp.issparse(self.A):
            if not isinstance(self.A, sp.csc_matrix):
                self.A = sp.csc_matrix(self.A)
        elif self.A is not None:
            dense = _as_real_array("A", self.A)
            if dense.ndim != 2:
                raise ValueError(
                    f"Estimates.A must be pixels x K (2-D), got shape {dense.shape}; "
                    "reshape footprint images with A.reshape(-1, K, order='C')."
                )
            self.A = sp.csc_matrix(dense)
        for name in ("C", "S", "YrA", "F_dff", "b", "f", "sn", "g", *_VECTOR_FIELDS):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_real_array(name, value))
        for name in _INDEX_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_index_array(name, value))
        for name in _FLAG_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.array(value, dtype=bool).ravel())
        if self.frame_rate is not None:
            self.frame_rate = float(self.frame_rate)
        if self.seed is not None:
            if isinstance(self.seed, (bool, np.bool_)) or not isinstance(
                self.seed, (int, np.integer)
            ):
                raise TypeError(f"Estimates.seed must be an int or None, got {self.seed!r}.")
            self.seed = int(self.seed)
        if self.software_version is not None:
            self.software_version = str(self.software_version)
        if self.params is not None:
            raw = self.params.to_dict() if hasattr(self.params, "to_dict") else self.params
            if not isinstance(raw, Mapping):
                raise TypeError(
                    f"Estimates.params must be a dict (or have .to_dict()), got "
                    f"{type(self.params).__name__}."
                )
            self.params = _to_jsonable(raw, "params")
        if self.provenance is None:
            self.provenance = {}
        if not isinstance(self.provenance, Mapping):
            raise TypeError(
                f"Estimates.provenance must be a dict, got {type(self.provenance).__name__}."
            )
        self.provenance = _to_jsonable(self.provenance, "provenance")
        if self.extra is None:
            self.extra = {}
        if not isinstance(self.extra, Mapping):
            raise TypeError(f"Estimates.extra must be a dict, got {type(self.extra).__name__}.")
        self.extra = {
            key: (_as_real_array(f"extra[{key!r}]", val) if isinstance(key, str) else val)
            for key, val in self.extra.items()
        }

    def __repr__(self) -> str:
        present = [
            name
            for name in ("C", "S", "YrA", "F_dff", "b", "f", "sn", "g", *_VECTOR_FIELDS)
            if getattr(self, name) is not None
        ]
        n_acc = "all" if self.idx_components is None else str(self.idx_components.size)
        return (
            f"Estimates(K={self.K}, T={self.T}, dims={self.dims}, accepted={n_acc}, "
            f"frame_rate={self.frame_rate}, fields=[{', '.join(present)}])"
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> Estimates:
        """Check that all fields agree in shape and type; return ``self``.

        Raises
        ------
        ValueError, TypeError
            Naming the offending field, the shape found and the shape expected.
        """
        dims = self.dims
        if not isinstance(dims, tuple) or len(dims) not in (2, 3) or min(dims) < 1:
            raise ValueError(
                f"Estimates.dims must be (H, W) or (Z, H, W) with positive sizes, got {dims!r}."
            )
        if not isinstance(self.A, sp.csc_matrix):
            raise TypeError(
                f"Estimates.A must be a scipy.sparse.csc_matrix, got {type(self.A).__name__}; "
                "convert it with scipy.sparse.csc_matrix(A)."
            )
        n_pix = math.prod(dims)
        if self.A.ndim != 2 or self.A.shape[0] != n_pix:
            raise ValueError(
                f"Estimates.A has shape {self.A.shape} but dims {dims} have {n_pix} pixels; "
                "A must be pixels x K with pixels in C order of dims."
            )
        if self.A.dtype.kind not in "biuf":
            raise TypeError(f"Estimates.A must be real-valued, got dtype {self.A.dtype}.")
        if self.A.nnz and not np.all(np.isfinite(self.A.data)):
            raise ValueError("Estimates.A contains NaN or infinite values.")
        K = self.A.shape[1]

        T: int | None = None
        T_from = ""
        for name in (*_TRACE_FIELDS, "f"):
            arr = getattr(self, name)
            if arr is None:
                continue
            self._check_array(name, arr, 2)
            if name != "f" and arr.shape[0] != K:
                raise ValueError(
                    f"Estimates.{name} has shape {arr.shape} but A has K={K} components; "
                    f"{name} must be K x T = ({K}, T)."
                )
            if T is None:
                T, T_from = arr.shape[1], name
            elif arr.shape[1] != T:
                raise ValueError(
                    f"Estimates.{name} has {arr.shape[1]} frames but {T_from} has {T}; "
                    "all traces must cover the same frames."
                )
        if self.b is not None:
            self._check_array("b", self.b, 2)
            if self.b.shape[0] != n_pix:
                raise ValueError(
                    f"Estimates.b has shape {self.b.shape} but dims {dims} have {n_pix} pixels; "
                    "b must be pixels x nb."
                )
            if self.f is not None and self.f.shape[0] != self.b.shape[1]:
                raise ValueError(
                    f"Estimates.b has {self.b.shape[1]} background components but f has "
                    f"{self.f.shape[0]}; b must be pixels x nb and f nb x T."
                )
        if self.sn is not None:
            self._check_array("sn", self.sn, 1)
            if self.sn.shape[0] != n_pix:
                raise ValueError(
                    f"Estimates.sn has {self.sn.shape[0]} entries but dims {dims} have "
                    f"{n_pix} pixels; sn holds one noise level per pixel."
                )
        if self.g is not None:
            if isinstance(self.g, np.ndarray) and self.g.ndim == 1:
                raise ValueError(
                    f"Estimates.g must be 2-D, K x p = ({K}, p), got shape {self.g.shape}; "
                    "use g[:, None] for p=1."
                )
            self._check_array("g", self.g, 2)
            if self.g.shape[0] != K:
                raise ValueError(
                    f"Estimates.g has shape {self.g.shape}; it must be K x p = ({K}, p) "
                    "(use g[:, None] for p=1)."
                )
        for name in (*_VECTOR_FIELDS, *_FLAG_FIELDS):
            arr = getattr(self, name)
            if arr is None:
                continue
            self._check_array(name, arr, 1)
            if arr.shape[0] != K:
                raise ValueError(
                    f"Estimates.{name} has {arr.shape[0]} entries but A has K={K} components."
                )
        seen: dict[int, str] = {}
        for name in _INDEX_FIELDS:
            arr = getattr(self, name)
            if arr is None:
                continue
            self._check_array(name, arr, 1)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"Estimates.{name} must hold integers, got dtype {arr.dtype}.")
            if arr.size and (arr.min() < 0 or arr.max() >= K):
                raise ValueError(
                    f"Estimates.{name} holds indices outside 0..{K - 1} (K={K}): "
                    f"min {arr.min()}, max {arr.max()}."
                )
            if np.unique(arr).size != arr.size:
                raise ValueError(f"Estimates.{name} lists a component more than once.")
            for i in arr.tolist():
                if i in seen:
                    raise ValueError(
                        f"component {i} is in both {seen[i]} and {name}; accepted and "
                        "rejected components must be disjoint."
                    )
                seen[i] = name
        if self.frame_rate is not None and not (
            math.isfinite(self.frame_rate) and self.frame_rate > 0
        ):
            raise ValueError(
                f"Estimates.frame_rate must be a positive number of Hz, got {self.frame_rate}."
            )
        for key, val in self.extra.items():
            if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
                raise ValueError(
                    f"Estimates.extra key {key!r} is not a valid name; use a non-empty string "
                    "without '/'."
                )
            if not isinstance(val, np.ndarray) or val.dtype.kind not in "biuf":
                raise TypeError(f"Estimates.extra[{key!r}] must be a real numeric numpy array.")
        if not isinstance(self.provenance, dict):
            raise TypeError("Estimates.provenance must be a dict.")
        if self.params is not None and not isinstance(self.params, dict):
            raise TypeError("Estimates.params must be a dict or None.")
        return self

    @staticmethod
    def _check_array(name: str, arr: Any, ndim: int) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(
                f"Estimates.{name} must be a numpy array, got {type(arr).__name__}; "
                "build a new Estimates (or use dataclasses.replace) to convert it."
            )
        if arr.ndim != ndim:
            raise ValueError(
                f"Estimates.{name} must be {ndim}-D, got shape {arr.shape}."
            )
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"Estimates.{name} must be real-valued, got dtype {arr.dtype}.")

    # ------------------------------------------------------------------ properties
    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.A.shape[1])

    @property
    def T(self) -> int | None:
        """Number of frames covered by the traces, or ``None`` if no traces are stored."""
        for name in (*_TRACE_FIELDS, "f"):
            arr = getattr(self, name)
            if arr is not None:
                return int(arr.shape[1])
        return None

    @property
    def n_pixels(self) -> int:
        """Number of pixels, ``prod(dims)``."""
        return math.prod(self.dims)

    @property
    def accepted_indices(self) -> np.ndarray:
        """Indices of accepted components (all components if none were evaluated)."""
        if self.idx_components is not None:
            return self.idx_components.copy()
        return np.arange(self.K, dtype=np.int64)

    @property
    def rejected_indices(self) -> np.ndarray:
        """Indices of rejected components (those not accepted if no rejected list is stored)."""
        if self.idx_components_bad is not None:
            return self.idx_components_bad.copy()
        if self.idx_components is None:
            return np.zeros(0, dtype=np.int64)
        return np.setdiff1d(np.arange(self.K, dtype=np.int64), self.idx_components)

    @property
    def accepted(self) -> Estimates:
        """A new ``Estimates`` holding only the accepted components (see :meth:`select`)."""
        return self.select(self.accepted_indices)

    # ------------------------------------------------------------------ views
    def footprint(self, k: int) -> np.ndarray:
        """Image of component ``k``, shape ``dims``, dtype of ``A``."""
        if not -self.K <= k < self.K:
            raise IndexError(f"component {k} does not exist; there are K={self.K}.")
        return self.A[:, k].toarray().reshape(self.dims)

    def footprint_images(self, idx: Any = None) -> np.ndarray:
        """Dense footprint images, shape ``(n, *dims)``; all components if ``idx`` is None.

        Memory is ``n × prod(dims)`` values: select the components you need for large K.
        """
        cols = self.A if idx is None else self.A[:, self._normalise_index(idx)]
        return np.asarray(cols.T.toarray()).reshape((cols.shape[1], *self.dims))

    # ------------------------------------------------------------------ subsets
    def _normalise_index(self, idx: Any) -> np.ndarray:
        arr = np.asarray(idx)
        if arr.dtype == bool:
            if arr.shape != (self.K,):
                raise ValueError(
                    f"a boolean component mask must have length K={self.K}, got shape {arr.shape}."
                )
            return np.flatnonzero(arr).astype(np.int64)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TypeError(
                "select components with a 1-D array of integer indices or a boolean mask of "
                f"length K; got {arr.dtype} array of shape {arr.shape}."
            )
        if arr.min() < 0 or arr.max() >= self.K:
            raise IndexError(
                f"component indices must lie in 0..{self.K - 1} (K={self.K}); got min "
                f"{arr.min()}, max {arr.max()}."
            )
        if np.unique(arr).size != arr.size:
            raise ValueError("component indices must not repeat.")
        return arr.astype(np.int64, copy=False)

    def select(self, idx: Any) -> Estimates:
        """A new ``Estimates`` with components ``idx``, in that order.

        ``idx`` is a 1-D array of distinct integer indices or a boolean mask of length K.
        Per-component fields (A's columns, traces, per-component vectors, ``g``) are indexed;
        ``idx_components``/``idx_components_bad`` are renumbered to the new positions (components
        left out drop from them). Background, pixel noise, parameters, provenance and
        ``extra`` are copied unchanged. Nothing is shared with ``self``.
        """
        sel = self._normalise_index(idx)
        new_pos = np.full(self.K, -1, dtype=np.int64)
        new_pos[sel] = np.arange(sel.size)
        kwargs: dict[str, Any] = {}
        for name in (*_TRACE_FIELDS, *_VECTOR_FIELDS, *_FLAG_FIELDS, "g"):
            arr = getattr(self, name)
            kwargs[name] = None if arr is None else arr[sel]
        for name in _INDEX_FIELDS:
            arr = getattr(self, name)
            if arr is not None:
                mapped = new_pos[arr]
                kwargs[name] = mapped[mapped >= 0]
            else:
                kwargs[name] = None
        for name in ("b", "f", "sn"):
            arr = getattr(self, name)
            kwargs[name] = None if arr is None else arr.copy()
        return Estimates(
            A=sp.csc_matrix(self.A[:, sel]),
            dims=self.dims,
            frame_rate=self.frame_rate,
            params=copy.deepcopy(self.params),
            software_version=self.software_version,
            seed=self.seed,
            provenance=copy.deepcopy(self.provenance),
            extra={k: v.copy() for k, v in self.extra.items()},
            **kwargs,
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], *, compression: str | None = "gzip") -> Path:
        """Write to a standalone HDF5 results file, atomically; return its path.

        The estimates go in the file's root group (layout: ``docs/results-schema.md``). The
        file appears only when complete; an existing file at ``path`` is replaced only then,
        and is left untouched if writing fails.

        Parameters
        ----------
        path
            Destination ``.h5`` file; its folder must exist.
        compression
            ``"gzip"`` (default, readable everywhere), ``"lzf"`` (faster, h5py only) or None.
        """
        self.validate()
        final = Path(path)
        with atomic_path(final) as tmp:
            with h5py.File(tmp, "w") as fh:
                write_estimates(fh, self, compression=compression)
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str], group: str | None = None) -> Estimates:
        """Read estimates saved by :meth:`save` or :func:`write_estimates`.

        Parameters
        ----------
        path
            HDF5 results file.
        group
            Group holding the estimates. ``None``: the root group if it holds estimates,
            else a top-level ``/estimates`` group (the usual place in a pipeline file).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ResultsFileError
            If the file is not HDF5, holds no somascope estimates at ``group``, was written
            with a newer schema version, or is inconsistent.
        """
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"results file {str(p)!r} does not exist.")
        if p.is_dir() or not h5py.is_hdf5(p):
            raise ResultsFileError(
                f"{str(p)!r} is not an HDF5 file, so not a somascope results file; "
                "pass the .h5 file written by Estimates.save()."
            )
        try:
            fh = h5py.File(p, "r")
        except OSError as err:
            raise ResultsFileError(f"cannot open results file {str(p)!r}: {err}") from err
        with fh:
            return read_estimates(_find_group(fh, group, p))


def _find_group(fh: h5py.File, group: str | None, path: Path) -> h5py.Group:
    if group is not None:
        if group not in fh or not isinstance(fh[group], h5py.Group):
            raise ResultsFileError(
                f"results file {str(path)!r} has no group {group!r}; its top-level entries "
                f"are {sorted(fh.keys())}."
            )
        return fh[group]
    if _attr_str(fh, "format") is not None:
        return fh
    if "estimates" in fh and isinstance(fh["estimates"], h5py.Group):
        return fh["estimates"]
    raise ResultsFileError(
        f"{str(path)!r} is not a somascope results file: neither its root nor an "
        f"'/estimates' group has format={FORMAT!r} (top-level entries: "
        f"{sorted(fh.keys())}); pass group=... if the estimates are stored elsewhere."
    )


def _attr_str(obj: h5py.HLObject, name: str) -> str | None:
    if name not in obj.attrs:
        return None
    value = obj.attrs[name]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
    return str(value)


def _where(group: h5py.Group) -> str:
    return f"{group.file.filename}:{group.name}"


def _create(group: h5py.Group, name: str, data: np.ndarray, compression: str | None) -> None:
    kwargs: dict[str, Any] = {}
    if compression is not None and data.size >= _COMPRESS_MIN_ELEMENTS:
        kwargs = {"compression": compression, "shuffle": True}
        if compression == "gzip":
            kwargs["compression_opts"] = 4
    ds = group.create_dataset(name, data=data, **kwargs)
    info = _FIELD_INFO.get(name)
    if info is not None:
        ds.attrs["units"], ds.attrs["description"] = info


def write_estimates(
    group: h5py.Group, est: Estimates, *, compression: str | None = "gzip"
) -> None:
    """Write ``est`` into an empty, writable ``h5py`` group (e.g. ``f.create_group("estimates")``).

    See ``docs/results-schema.md`` for the layout. For a standalone file use
    :meth:`Estimates.save`, which also makes the write atomic.
    """
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}.")
    if len(group) or "format" in group.attrs:
        raise ValueError(
            f"HDF5 group {_where(group)!r} is not empty; write estimates into a new group "
            "(e.g. f.create_group('estimates'))."
        )
    est.validate()
    attrs = group.attrs
    attrs["format"] = FORMAT
    attrs["schema_version"] = np.int64(SCHEMA_VERSION)
    attrs["software_version"] = est.software_version or __version__
    attrs["written_by"] = __version__
    attrs["written_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs["dims"] = np.asarray(est.dims, dtype=np.int64)
    attrs["K"] = np.int64(est.K)
    attrs["T"] = np.int64(-1 if est.T is None else est.T)
    if est.frame_rate is not None:
        attrs["frame_rate"] = np.float64(est.frame_rate)
    if est.seed is not None:
        attrs["seed"] = np.int64(est.seed)
    attrs["params"] = json.dumps(_to_jsonable(est.params, "params"))
    attrs["provenance"] = json.dumps(_to_jsonable(est.provenance, "provenance"))

    a_group = group.create_group("A")
    a_group.attrs["format"] = "csc"
    a_group.attrs["shape"] = np.asarray(est.A.shape, dtype=np.int64)
    a_group.attrs["units"], a_group.attrs["description"] = _FIELD_INFO["A"]
    _create(a_group, "data", est.A.data, compression)
    _create(a_group, "indices", est.A.indices, compression)
    _create(a_group, "indptr", est.A.indptr, compression)

    for name in _ARRAY_FIELDS:
        arr = getattr(est, name)
        if arr is not None:
            _create(group, name, arr, compression)
    if est.extra:
        extra = group.create_group("extra")
        for key, val in est.extra.items():
            _create(extra, key, val, compression)


def read_estimates(group: h5py.Group) -> Estimates:
    """Read an :class:`Estimates` written by :func:`write_estimates` from an ``h5py`` group.

    Raises
    ------
    ResultsFileError
        If the group is not a somascope estimates group, has a newer schema version, lacks
        required entries, or its contents are inconsistent. The message names file and group.
    """
    where = _where(group)
    fmt = _attr_str(group, "format")
    if fmt != FORMAT:
        found = "no 'format' attribute" if fmt is None else f"format={fmt!r}"
        raise ResultsFileError(
            f"{where!r} is not a somascope results group ({found}; expected format={FORMAT!r})."
        )
    version = int(group.attrs.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        raise ResultsFileError(
            f"{where!r} uses results schema version {version}, but this somascope "
            f"({__version__}) reads up to version {SCHEMA_VERSION}; upgrade somascope."
        )
    if version < 1:
        raise ResultsFileError(f"{where!r} has an invalid schema_version {version}.")
    try:
        a_group = group["A"]
        shape = tuple(int(s) for s in a_group.attrs["shape"])
        A = sp.csc_matrix(
            (a_group["data"][()], a_group["indices"][()], a_group["indptr"][()]), shape=shape
        )
        dims = tuple(int(d) for d in group.attrs["dims"])
        params = json.loads(_attr_str(group, "params") or "null")
        provenance = json.loads(_attr_str(group, "provenance") or "{}")
    except KeyError as err:
        raise ResultsFileError(f"{where!r} is incomplete: missing {err}.") from err
    except (ValueError, TypeError) as err:
        raise ResultsFileError(f"{where!r} has an unreadable entry: {err}") from err
    arrays = {name: group[name][()] for name in _ARRAY_FIELDS if name in group}
    extra = {}
    if "extra" in group:
        extra = {key: ds[()] for key, ds in group["extra"].items()}
    attrs = group.attrs
    try:
        return Estimates(
            A=A,
            dims=dims,
            frame_rate=float(attrs["frame_rate"]) if "frame_rate" in attrs else None,
            params=params,
            software_version=_attr_str(group, "software_version"),
            seed=int(attrs["seed"]) if "seed" in attrs else None,
            provenance=provenance,
            extra=extra,
            **arrays,
        )
    except (ValueError, TypeError) as err:
        raise ResultsFileError(f"{where!r} holds inconsistent estimates: {err}") from err

