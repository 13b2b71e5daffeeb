"""What the viewer shows, read lazily from a result: a :class:`Source` per run folder, results
file or batch item.

A source is opened from

- a ``somascope run`` folder ``OUT`` (or its ``OUT/results.h5``): the results file, the motion
  stage's Store ``OUT/stages/motion/movie.zarr`` and, for one-photon data, the ring model
  ``OUT/stages/background/ring.npz``; the curation is ``OUT/curation.json``;
- a bare results file ``X.h5`` (a pipeline file, or a standalone one of ``Estimates.save``):
  no movie; the curation is ``X.curation.json``;
- a batch item ``BATCH_FOLDER::ITEM`` (ITEM: uuid, unique prefix, name or position): its
  ``results.h5`` and the Store / ring model in the batch's shared stage folders.

Nothing heavy is read when a source is opened: the estimates, summary images, Store and ring
model load on first use; contours are computed once; frames are read from the Store a block of
at most :data:`BLOCK_BYTES` at a time, never the whole movie.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import curation as cur

__all__ = ["Source", "SourceError", "NoMovieError", "open_sources", "footprint_contours", "decimate_minmax",
           "encode_png", "to_uint8", "compare", "NO_MOVIE", "CONTOUR_ENERGY"]

#: Error message of the movie views of a source without a Store.
NO_MOVIE = ("no motion-corrected movie for this result (a bare results file): the movie view needs the run "
            "folder")
#: A contour encloses the pixels that hold this fraction of the footprint's energy (sum of squares),
#: as CaImAn's ``get_contours(thr_method="nrg", thr=0.9)``.
CONTOUR_ENERGY = 0.9
#: Most bytes of frames read from the Store at once (whole frames, at most a time chunk).
BLOCK_BYTES = 16 * 2**20
#: Blocks of frames kept in memory.
BLOCK_CACHE = 4
#: Preferred order of the summary images.
IMAGE_ORDER = ("mean", "max", "corr", "max_corr", "pnr", "corr_pnr", "std")
#: Metric name in the API → Estimates field.
METRICS = {"snr": "SNR_comp", "r_value": "r_values", "cnn": "cnn_preds", "activity": "activity"}
#: Trace series in the API → how to compute it from the estimates.
SERIES = ("raw", "denoised", "dff", "spikes")


class SourceError(ValueError):
    """A path cannot be opened as a viewer source; the message says why and what to give."""


class NoMovieError(LookupError):
    """The source has no motion-corrected movie (a bare results file)."""


@dataclass(frozen=True)
class Located:
    """Where a source's files are. ``out``: the run folder / batch item folder (None for a bare
    file); ``store``, ``ring``: None when absent."""

    name: str
    kind: str  # "run", "file" or "batch"
    results: Path
    out: Path | None
    store: Path | None
    ring: Path | None
    curation: Path


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def locate(spec: str | os.PathLike[str]) -> Located:
    """Find the files of one source (module docstring); :class:`SourceError` with the fix if none."""
    text = os.fspath(spec)
    if "::" in text:
        return _locate_batch_item(*text.split("::", 1))
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        results = path / "results.h5"
        if not results.is_file():
            hint = (" It is a batch folder: give BATCH::ITEM (an item's uuid, name or position; "
                    "somascope batch ls lists them)." if (path / "batch.sqlite").is_file() else
                    " The run did not finish: run somascope run again, or give a results .h5 file.")
            raise SourceError(f"{path} holds no results.h5.{hint}")
        return _run_folder(path, path.name)
    if not path.exists():
        raise SourceError(f"{path} does not exist. Fix: give a somascope run folder, a results .h5 file, or "
                          "BATCH_FOLDER::ITEM.")
    if path.name == "results.h5" and (path.parent / "stages").is_dir():
        return _run_folder(path.parent, path.parent.name)
    return Located(path.stem, "file", path, None, None, None, cur.curation_path(path, run_folder=False))


def _run_folder(out: Path, name: str) -> Located:
    return Located(name, "run", out / "results.h5", out, _existing(out / "stages" / "motion" / "movie.zarr"),
                   _existing(out / "stages" / "background" / "ring.npz"), out / cur.CURATION_FILE)


def _locate_batch_item(batch_path: str, item: str) -> Located:
    from ..batch import Batch, BatchError

    try:
        with Batch.open(batch_path) as batch:
            ref: Any = int(item) if item.lstrip("-").isdigit() and len(item) < 4 else item
            outputs = batch.load(ref)
    except BatchError as exc:
        raise SourceError(f"{batch_path}::{item}: {exc}") from None
    if outputs.results_path is None:
        raise SourceError(f"batch item {outputs.name!r} ({outputs.algorithm}) has no results.h5: only CNMF items "
                          "(cnmf, cnmfe) have components to view. Fix: give a cnmf item.")
    dirs = outputs.stage_dirs
    store = _existing(dirs["motion"] / "movie.zarr") if "motion" in dirs else None
    ring = _existing(dirs["background"] / "ring.npz") if "background" in dirs else None
    return Located(outputs.name, "batch", outputs.results_path, outputs.out, store, ring,
                   outputs.out / cur.CURATION_FILE)


# -- pure helpers ----------------------------------------------------------------------------------
def _energy_mask(values: np.ndarray, energy: float) -> np.ndarray:
    """Which of ``values`` (positive) are the largest ones holding ``energy`` of the sum of squares."""
    order = np.argsort(values)[::-1]
    sq = values[order].astype(np.float64) ** 2
    cum = np.cumsum(sq)
    n = int(np.searchsorted(cum, energy * cum[-1])) + 1
    keep = np.zeros(values.size, bool)
    keep[order[:min(n, values.size)]] = True
    return keep


def footprint_contours(A: Any, dims: tuple[int, int], energy: float = CONTOUR_ENERGY
                       ) -> tuple[list[list[list[list[float]]]], list[list[float] | None]]:
    """Contours and centres of every footprint of ``A`` (``pixels × K``, C order of ``dims`` = (H, W)).

    Each footprint is cropped to its bounding box; its mask is the pixels that hold ``energy``
    of its energy (sum of squares); the contours are :func:`skimage.measure.find_contours` of
    that mask at 0.5 (between pixel centres). Returns ``(contours, centers)``: per component a
    list of polylines ``[[x, y], …]`` in pixel coordinates (x = column, y = row, +0.5 = pixel
    centre, rounded to 0.1 px; closed ones end where they start) and the centre of mass
    ``[x, y]`` (None for an empty footprint).
    """
    from skimage.measure import find_contours

    A = sp.csc_matrix(A)
    A.sort_indices()
    H, W = dims
    contours: list[list[list[list[float]]]] = []
    centers: list[list[float] | None] = []
    for k in range(A.shape[1]):
        s, e = A.indptr[k], A.indptr[k + 1]
        idx, val = A.indices[s:e], A.data[s:e]
        pos = val > 0
        if not pos.any():
            contours.append([])
            centers.append(None)
            continue
        idx, val = idx[pos], val[pos]
        rows, cols = np.divmod(idx, W)
        weight = float(val.sum())
        centers.append([round(float(cols @ val) / weight + 0.5, 2), round(float(rows @ val) / weight + 0.5, 2)])
        keep = _energy_mask(val, energy)
        r, c = rows[keep], cols[keep]
        r0, c0 = int(r.min()), int(c.min())
        crop = np.zeros((int(r.max()) - r0 + 3, int(c.max()) - c0 + 3))
        crop[r - r0 + 1, c - c0 + 1] = 1.0
        lines = _drop_specks(find_contours(crop, 0.5))
        offset = np.array([c0 - 0.5, r0 - 0.5])  # crop (row, col) → (x, y): −1 pad, +0.5 centre
        contours.append([np.round(line[:, ::-1] + offset, 1).tolist() for line in lines])
    return contours, centers


#: Polylines enclosing less than this (px²) are not drawn, unless a footprint has nothing larger:
#: a lone pixel's contour encloses 0.5 px², two touching pixels 1.5 px² (the specks of noise
#: components would otherwise cover the field).
MIN_CONTOUR_AREA = 2.0


def _drop_specks(lines: list[np.ndarray]) -> list[np.ndarray]:
    """The polylines enclosing at least :data:`MIN_CONTOUR_AREA` and a tenth of the largest
    (shoelace area); the largest is always kept."""
    if len(lines) <= 1:
        return lines
    areas = [0.5 * abs(float(np.dot(ln[:, 0], np.roll(ln[:, 1], 1)) - np.dot(ln[:, 1], np.roll(ln[:, 0], 1))))
             for ln in lines]
    floor = max(MIN_CONTOUR_AREA, 0.1 * max(areas))
    largest = int(np.argmax(areas))
    return [ln for i, (ln, a) in enumerate(zip(lines, areas)) if a >= floor or i == largest]


def decimate_minmax(x: np.ndarray, n: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(step, mins, maxs)``: ``x`` (1-D) cut into bins of ``step = ceil(len / n)`` samples (the
    last may be shorter), each bin's minimum and maximum; ``step`` 1 gives ``x`` itself twice."""
    x = np.asarray(x)
    n = max(1, int(n))
    step = max(1, math.ceil(x.size / n))
    if step == 1 or x.size == 0:
        return 1, x, x
    starts = np.arange(0, x.size, step)
    return step, np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)


def to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``image`` scaled so that ``lo`` → 0 and ``hi`` → 255 (clipped; NaN → 0), uint8."""
    img = np.asarray(image, np.float32)
    span = float(hi - lo) if hi > lo else 1.0
    out = np.nan_to_num((img - lo) * (255.0 / span), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out, 0, 255).astype(np.uint8)


def encode_png(image8: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 image (8-bit grayscale), encoded with Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image8), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _percentiles(image: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    finite = np.asarray(image, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(finite, [lo, hi])
    return float(a), float(b if b > a else a + 1.0)


def floats(values: Any, digits: int | None = None) -> list[float | None]:
    """A JSON-safe list: NaN and infinities become None (``null``)."""
    arr = np.asarray(values, np.float64).ravel()
    if digits is not None:
        arr = np.round(arr, digits)
    out: list[Any] = arr.tolist()
    if not np.isfinite(arr).all():
        out = [v if math.isfinite(v) else None for v in out]
    return out


# -- the source ----------------------------------------------------------------------------------
class Source:
    """One result the viewer shows (module docstring). ``sid`` is its id in the API.

    Shapes: ``dims = (H, W)``, ``K`` components, ``T`` frames; traces are K × T, footprints
    ``A`` pixels × K (C order of ``dims``); frames H × W float32 in movie units.
    """

    def __init__(self, spec: str | os.PathLike[str], sid: int = 0) -> None:
        self.sid = sid
        self.where = locate(spec)
        self._blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._peek = self._read_header()
        self._file_stamp = self._stamp()

    # -- header (cheap) --------------------------------------------------------------------
    def _read_header(self) -> dict[str, Any]:
        import h5py

        path = self.where.results
        try:
            fh = h5py.File(path, "r")
        except OSError as exc:
            raise SourceError(f"{path}: not an HDF5 results file ({exc}). Fix: give a somascope results .h5 "
                              "file or run folder.") from None
        with fh:
            from somascope.cnmf.estimates import ResultsFileError
            from somascope.pipeline.results import check_schema

            try:
                check_schema(fh, path)  # a file from a newer somascope: refused before anything is read
            except ResultsFileError as exc:
                raise SourceError(str(exc)) from None
            g = fh if fh.attrs.get("format") is not None else fh.get("estimates")
            if g is None or g.attrs.get("format") != "somascope-estimates":
                raise SourceError(f"{path} is not a somascope results file (no estimates). Fix: give the "
                                  "results.h5 of somascope run or a file written by Estimates.save.")
            dims = tuple(int(d) for d in g.attrs["dims"])
            if len(dims) != 2:
                raise SourceError(f"{path}: the viewer shows 2-D fields of view; this result is a volume {dims}. "
                                  "Fix: view one plane's result (run the pipeline per plane).")
            fr = g.attrs.get("frame_rate", fh.attrs.get("frame_rate"))
            params = json.loads(fh["params"].attrs["json"]) if "params" in fh else None
            if params is None:
                raw = g.attrs.get("params")
                params = json.loads(raw) if raw else None
            return {"dims": dims, "K": int(g["A"].attrs["shape"][1]), "T": int(g.attrs.get("T", -1)),
                    "fr": None if fr is None else float(fr), "params": params or {},
                    "fields": [n for n in METRICS.values() if n in g],
                    "summary": [n for n in fh["summary"]] if "summary" in fh else []}

    def _stamp(self) -> tuple[int, int]:
        st = self.where.results.stat()
        return int(st.st_mtime_ns), int(st.st_size)

    @property
    def dims(self) -> tuple[int, int]:
        return self._peek["dims"]  # type: ignore[return-value]

    @property
    def K(self) -> int:
        return int(self._peek["K"])

    @property
    def T(self) -> int:
        if self._peek["T"] >= 0:
            return int(self._peek["T"])
        return int(self.store.shape[0]) if self.has_movie else 0

    @property
    def params(self) -> dict[str, Any]:
        return self._peek["params"]

    @property
    def fr(self) -> float | None:
        if self._peek["fr"] is not None:
            return self._peek["fr"]
        data = self.params.get("data", {}) if isinstance(self.params, dict) else {}
        return float(data["fr"]) if data.get("fr") else None

    @property
    def has_movie(self) -> bool:
        return self.where.store is not None

    @property
    def is_1p(self) -> bool:
        p = self.params if isinstance(self.params, dict) else {}
        return bool(p.get("data", {}).get("is_1p")) or p.get("init", {}).get("nb") == 0 or self.where.ring is not None

    # -- lazy contents ---------------------------------------------------------------------
    @cached_property
    def _contents(self) -> dict[str, Any]:
        import h5py

        from ..cnmf.estimates import read_estimates

        with h5py.File(self.where.results, "r") as fh:
            g = fh if fh.attrs.get("format") is not None else fh["estimates"]
            est = read_estimates(g)
            summary = {n: np.asarray(fh["summary"][n][()], np.float32) for n in fh["summary"]} \
                if "summary" in fh else {}
            state_in_file, auto = cur.read_curation_group(fh)
        if auto is None:
            auto = est.idx_components if est.idx_components is not None else np.arange(est.K, dtype=np.int64)
        return {"estimates": est, "summary": summary, "auto_idx": np.asarray(auto, np.int64),
                "state_in_file": state_in_file}

    @property
    def estimates(self) -> Any:
        """The :class:`~somascope.cnmf.estimates.Estimates` (loaded on first use)."""
        return self._contents["estimates"]

    @property
    def auto_idx(self) -> np.ndarray:
        """Accepted indices of the automatic split (before manual curation)."""
        return self._contents["auto_idx"]

    @cached_property
    def images(self) -> dict[str, np.ndarray]:
        """Summary images by name (H × W float32), plus ``footprints`` (the max of the footprints
        each scaled to 1)."""
        found = self._contents["summary"]
        ordered = {n: found[n] for n in IMAGE_ORDER if n in found}
        ordered.update({n: v for n, v in found.items() if n not in ordered})
        ordered["footprints"] = self._footprint_image()
        return ordered

    def image_names(self) -> list[str]:
        """Names of the images, without loading the estimates."""
        names = [n for n in IMAGE_ORDER if n in self._peek["summary"]]
        return names + [n for n in self._peek["summary"] if n not in names] + ["footprints"]

    def _footprint_image(self) -> np.ndarray:
        A = sp.csc_matrix(self.estimates.A, dtype=np.float32)
        peak = np.zeros(A.shape[1], np.float32)
        if A.nnz:
            peak = np.asarray(abs(A).max(axis=0).toarray()).ravel()
        scaled = A @ sp.diags(1.0 / np.where(peak > 0, peak, 1.0))
        img = np.zeros(A.shape[0], np.float32)
        coo = sp.coo_matrix(scaled)
        np.maximum.at(img, coo.row, coo.data.astype(np.float32))
        return img.reshape(self.dims)

    @cached_property
    def store(self) -> Any:
        """The motion-corrected :class:`~somascope.store.Store` (T × H × W float32)."""
        if self.where.store is None:
            raise NoMovieError(NO_MOVIE)
        from ..store import Store

        return Store.open(self.where.store)

    @cached_property
    def ring(self) -> Any:
        """The one-photon ring model (:class:`~somascope.cnmf.ring.RingModel`) or None."""
        if self.where.ring is None:
            return None
        from ..cnmf.ring import load_ring_model

        return load_ring_model(self.where.ring)

    @property
    def background_kind(self) -> str:
        """How the reconstruction's background is computed (the model the pipeline used)."""
        est = self.estimates
        nb = 0 if est.b is None or est.f is None else int(est.b.shape[1])
        parts = []
        if self.where.ring is not None:
            parts.append("ring model (CNMF-E), per frame from the frame's ring neighbours")
        if nb:
            parts.append(f"low-rank b·f (nb={nb})")
        return " + ".join(parts) or "none"

    # -- curation ------------------------------------------------------------------------
    @cached_property
    def _state(self) -> dict[str, Any]:
        state = cur.load_curation(self.where.curation)
        if not self.where.curation.is_file() and self._contents["state_in_file"] is not None:
            state = cur.check_state(self._contents["state_in_file"], f"{self.where.results}:/curation")
        state, _ = cur.reapply(state, self.estimates.A)  # in memory: keys follow the components
        return state

    @property
    def state(self) -> dict[str, Any]:
        """The curation (``curation.json``'s content)."""
        return self._state

    def split(self) -> dict[str, Any]:
        """The ``accepted`` / ``auto_accepted`` / ``manual`` / ``notes`` fields of ``/components``."""
        K = self.K
        good, _ = cur.curated_split(self.auto_idx, K, self.state)
        accepted = np.zeros(K, bool)
        accepted[good] = True
        auto = np.zeros(K, bool)
        auto[self.auto_idx] = True
        return {"accepted": accepted.tolist(), "auto_accepted": auto.tolist(),
                "manual": {str(k): v for k, v in sorted(cur.manual_decisions(self.state).items())},
                "notes": {str(k): v for k, v in sorted(cur.note_texts(self.state).items())},
                "n_accepted": int(good.size), "unmatched": len(self.state.get("unmatched", []))}

    def _save(self, state: dict[str, Any]) -> None:
        if self._stamp() != self._file_stamp:
            raise cur.CurationError(f"{self.where.results} changed on disk since the viewer opened it (a pipeline "
                                    "rerun?). Fix: restart somascope view to see the new result.")
        # the results file first: a refused rewrite leaves curation.json as it was
        cur.write_curated_results(self.where.results, state, self.auto_idx, self.K)
        self._file_stamp = self._stamp()
        cur.save_curation(self.where.curation, state)
        self.__dict__["_state"] = state

    def curate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply a ``POST /curate`` body (accept / reject / reset / notes / who), save, return :meth:`split`."""
        if not isinstance(body, dict):
            raise cur.CurationError("the request body must be a JSON object with accept/reject/reset/notes.")
        unknown = sorted(set(body) - {"accept", "reject", "reset", "notes", "who"})
        if unknown:
            raise cur.CurationError(f"unknown fields {unknown}: give accept, reject, reset, notes, who.")
        state = cur.change(self.state, self.estimates.A, accept=body.get("accept"), reject=body.get("reject"),
                           reset=body.get("reset"), notes=body.get("notes"), who=body.get("who"))
        self._save(state)
        return self.split()

    def undo(self, who: str | None = None) -> dict[str, Any]:
        """Undo the last curate action, save, return :meth:`split`."""
        self._save(cur.undo(self.state, who))
        return self.split()

    # -- API payloads ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The ``/api/sources`` entry (no heavy loading)."""
        return {"id": self.sid, "name": self.where.name, "kind": self.where.kind, "path": str(self.where.results),
                "dims": list(self.dims), "K": self.K, "n_frames": self.T, "fr": self.fr,
                "has_movie": self.has_movie, "is_1p": self.is_1p, "images": self.image_names(),
                "metrics": [m for m, f in METRICS.items() if f in self._peek["fields"]],
                "curation": str(self.where.curation)}

    def meta(self) -> dict[str, Any]:
        """:meth:`info` plus what needs the estimates: background model and display scales."""
        out = self.info()
        out["background"] = self.background_kind
        out["scales"] = {"movie": list(self.movie_scale), "residual": list(self.residual_scale)}
        out["series"] = self.series_names()
        return out

    @cached_property
    def _components_static(self) -> dict[str, Any]:
        est = self.estimates
        contours, centers = footprint_contours(est.A, self.dims)
        metrics = {m: floats(getattr(est, f), 4) for m, f in METRICS.items() if getattr(est, f) is not None}
        q = self.params.get("quality", {}) if isinstance(self.params, dict) else {}
        thresholds = {m: q.get(key) for m, key in (("snr", "min_SNR"), ("r_value", "rval_thr"),
                                                    ("cnn", "min_cnn_thr")) if m in metrics and key in q}
        if "activity" in metrics:  # a structural run's seeded cells: silent below this
            from ..evaluation.activity import activity_threshold

            data = self.params.get("data", {}) if isinstance(self.params, dict) else {}
            decay, rate = data.get("decay_time"), data.get("fr") or self.fr
            if decay and rate:
                thresholds["activity"] = round(activity_threshold(self.T, float(decay), float(rate)), 4)
        flags = {name: (None if getattr(est, name) is None else np.asarray(getattr(est, name), bool).tolist())
                 for name in ("seeded", "silent")}
        return {"K": est.K, "dims": list(self.dims), "contours": contours, "centers": centers,
                "metrics": metrics, "thresholds": thresholds, **flags}

    def components(self) -> dict[str, Any]:
        """The ``/components`` payload (contours computed once)."""
        return {**self._components_static, **self.split()}

    def _check_k(self, k: int) -> int:
        if not 0 <= k < self.K:
            raise IndexError(f"component {k} does not exist: this result has K={self.K} (0..{self.K - 1}).")
        return k

    def series_names(self) -> list[str]:
        est = self.estimates
        present = {"raw": est.C is not None, "denoised": est.C is not None, "dff": est.F_dff is not None,
                   "spikes": est.S is not None}
        return [s for s in SERIES if present[s]]

    def _series(self, name: str, k: int, t0: int, t1: int) -> np.ndarray:
        est = self.estimates
        if name == "raw":
            row = est.C[k, t0:t1]
            return row + est.YrA[k, t0:t1] if est.YrA is not None else row
        field = {"denoised": "C", "dff": "F_dff", "spikes": "S"}[name]
        return getattr(est, field)[k, t0:t1]

    def trace(self, k: int, t0: int = 0, t1: int | None = None, n: int = 2000) -> dict[str, Any]:
        """Frames ``[t0, t1)`` of component ``k``'s traces, min/max per bin of at most ``n`` bins."""
        self._check_k(k)
        T = self.estimates.T or 0
        t1 = T if t1 is None else int(t1)
        t0 = int(t0)
        if not 0 <= t0 < t1 <= T:
            raise ValueError(f"frames [{t0}, {t1}) are outside the traces: give 0 ≤ t0 < t1 ≤ T={T}.")
        if not n >= 1:
            raise ValueError(f"n={n}: give the number of points wanted, at least 1.")
        series: dict[str, Any] = {}
        step = 1
        for name in self.series_names():
            step, lo, hi = decimate_minmax(self._series(name, k, t0, t1), n)
            series[name] = {"min": floats(lo), "max": floats(hi)}
        return {"k": k, "t0": t0, "t1": t1, "step": step, "fr": self.fr, "series": series}

    def footprint(self, k: int, margin: int = 2) -> dict[str, Any]:
        """Component ``k``'s footprint cropped to its bounding box + ``margin`` px (clipped to the field)."""
        self._check_k(k)
        A = self.estimates.A
        idx = A.indices[A.indptr[k]:A.indptr[k + 1]]
        H, W = self.dims
        if idx.size == 0:
            return {"k": k, "y0": 0, "x0": 0, "values": []}
        rows, cols = np.divmod(idx, W)
        y0, y1 = max(0, int(rows.min()) - margin), min(H, int(rows.max()) + margin + 1)
        x0, x1 = max(0, int(cols.min()) - margin), min(W, int(cols.max()) + margin + 1)
        img = A[:, k].toarray().reshape(self.dims)[y0:y1, x0:x1]
        return {"k": k, "y0": y0, "x0": x0, "values": [floats(row, 6) for row in img]}

    # -- images and frames -----------------------------------------------------------------
    def image_png(self, name: str) -> bytes:
        """PNG of a summary image (8-bit gray, H × W, scaled from its 1st to its 99.5th percentile)."""
        if name not in self.image_names():
            raise KeyError(f"no image {name!r}: this result has {', '.join(self.image_names())}.")
        cache = self.__dict__.setdefault("_png_cache", {})
        if name not in cache:
            img = self.images[name]
            cache[name] = encode_png(to_uint8(img, *_percentiles(img, 1.0, 99.5)))
        return cache[name]

    @cached_property
    def movie_scale(self) -> tuple[float, float]:
        """Display range of movie and reconstruction frames: 1st percentile of the mean image to
        the 99.5th of the max image (the mean's 99.9th without a max image)."""
        imgs = self._contents["summary"]
        mean = imgs.get("mean")
        if mean is None:
            if not self.has_movie:
                return 0.0, 1.0
            mean = self._frames(0)[0]
        lo, _ = _percentiles(mean, 1.0, 99.9)
        hi = _percentiles(imgs["max"], 1.0, 99.5)[1] if "max" in imgs else _percentiles(mean, 1.0, 99.9)[1]
        return lo, max(hi, lo + 1e-6)

    @cached_property
    def residual_scale(self) -> tuple[float, float]:
        """Symmetric display range of the residual: ± 4 × the median pixel noise (± a quarter of
        the movie range without the noise estimate)."""
        sn = self.estimates.sn
        s = 4.0 * float(np.median(sn)) if sn is not None and np.size(sn) else 0.0
        if not s > 0:
            lo, hi = self.movie_scale
            s = 0.25 * (hi - lo)
        return -s, s

    def _block_len(self) -> int:
        frame_bytes = 4 * math.prod(self.dims)
        return max(1, min(int(self.store.time_chunk), BLOCK_BYTES // frame_bytes))

    def _frames(self, t: int) -> np.ndarray:
        """The block of frames (n × H × W float32) holding frame ``t``; cached (LRU of :data:`BLOCK_CACHE`)."""
        n = self._block_len()
        b0 = (t // n) * n
        key = (b0, n)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        block = np.asarray(self.store[b0:min(b0 + n, self.store.shape[0])], np.float32)
        self._blocks[key] = block
        while len(self._blocks) > BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return block

    def movie_frame(self, t: int) -> np.ndarray:
        """Frame ``t`` of the motion-corrected Store (H × W float32)."""
        if not self.has_movie:
            raise NoMovieError(NO_MOVIE)
        T = int(self.store.shape[0])
        if not 0 <= t < T:
            raise IndexError(f"frame {t} does not exist: the movie has T={T} frames (0..{T - 1}).")
        n = self._block_len()
        return self._frames(t)[t - (t // n) * n]

    def reconstruction(self, t: int, frame: np.ndarray | None = None) -> np.ndarray:
        """``A·C[:, t]`` + the background the pipeline used, frame ``t`` (H × W float32): the
        low-rank ``b·f[:, t]`` and/or, for one-photon data, the ring model's background of the
        frame (computed from the frame itself, as the pipeline subtracted it)."""
        est = self.estimates
        if est.C is None or not 0 <= t < est.C.shape[1]:
            raise IndexError(f"frame {t} is outside the traces (T={est.T}).")
        rec = np.asarray(est.A @ est.C[:, t].astype(np.float64)).ravel()
        if est.b is not None and est.f is not None and est.b.shape[1]:
            rec = rec + est.b @ est.f[:, t].astype(np.float64)
        rec = rec.reshape(self.dims).astype(np.float32)
        if self.ring is not None:
            frame = self.movie_frame(t) if frame is None else frame
            rec += self.ring.background(frame[None])[0]
        return rec

    def frame(self, t: int, kind: str = "movie") -> np.ndarray:
        """Frame ``t`` of ``kind``: ``movie``, ``reconstruction`` or ``residual`` (movie − reconstruction)."""
        if kind not in ("movie", "reconstruction", "residual"):
            raise ValueError(f"kind={kind!r}: give movie, reconstruction or residual.")
        if not self.has_movie:
            raise NoMovieError(NO_MOVIE)
        movie = self.movie_frame(t)
        if kind == "movie":
            return movie
        rec = self.reconstruction(t, movie)
        return rec if kind == "reconstruction" else movie - rec

    def frame_png(self, t: int, kind: str = "movie") -> bytes:
        """PNG of :meth:`frame`: movie and reconstruction on :attr:`movie_scale`, residual on
        :attr:`residual_scale` (0 → mid-gray)."""
        img = self.frame(t, kind)
        lo, hi = self.residual_scale if kind == "residual" else self.movie_scale
        return encode_png(to_uint8(img, lo, hi))


def open_sources(specs: list[str | os.PathLike[str]]) -> list[Source]:
    """One :class:`Source` per path (ids 0..n-1 in order); :class:`SourceError` names a bad one."""
    if not specs:
        raise SourceError("no result given. Fix: somascope view OUT (a run folder, a results .h5 or BATCH::ITEM).")
    return [Source(spec, i) for i, spec in enumerate(specs)]


def compare(a: Source, b: Source) -> dict[str, Any]:
    """Matched components of two sources (:func:`somascope.metrics.match_footprints`: Jaccard of
    the binarised footprints, Hungarian assignment): ``pairs`` ``[[i, j], …]`` (i in ``a``, j in
    ``b``), their Jaccard ``distances``, ``unmatched_a``, ``unmatched_b``."""
    from ..metrics import match_footprints

    if a.dims != b.dims:
        raise ValueError(f"sources {a.sid} and {b.sid} have different fields of view ({a.dims[0]}×{a.dims[1]} vs "
                         f"{b.dims[0]}×{b.dims[1]} px): compare results of one movie, or of sessions registered to "
                         "one field of view.")
    m = match_footprints(a.estimates.A, b.estimates.A, a.dims)
    return {"a": a.sid, "b": b.sid, "pairs": np.column_stack([m.ref_idx, m.est_idx]).tolist(),
            "distances": floats(m.distances, 4), "unmatched_a": m.unmatched_ref.tolist(),
            "unmatched_b": m.unmatched_est.tolist()}


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
