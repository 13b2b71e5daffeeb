"""The result of motion correction and its files.

``MotionResult.save(folder)`` writes (each file atomically; ``metrics.json`` last, so a folder
holding it is complete):

- ``shifts.npy``: ``(T, ndim)`` float32 rigid displacements, px (``docs/conventions.md``);
- ``shifts.csv``: ``frame, dy, dx[, dz first for volumes], corr`` (corr = frame–template
  correlation after correction);
- ``patch_shifts.npy``: ``(T, n_patches, ndim)`` float32 (piecewise-rigid only);
- ``template.npy``, ``mean_image.npy``, ``mean_raw.npy``: ``(*dims)`` float32;
- ``frame_corr.npy``: ``(T,)`` float32;
- ``metrics.json``: scalar metrics, ``border_pix``, the patch grid, the parameters used and
  the path of the corrected store.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path, atomic_write_text
from ..io.jsonable import jsonable
from .piecewise import PatchGrid

FORMAT = "somascope-motion/1"


@dataclass
class MotionResult:
    """Displacements, template and quality of a motion-corrected movie.

    Attributes
    ----------
    shifts : ``(T, ndim)`` float32 rigid displacement of each frame, px:
        ``frame(p) ≈ template(p - shift)`` (``(dy, dx)`` or ``(dz, dy, dx)``).
    template : ``(*dims)`` float32 image every frame was registered to.
    mean_image : ``(*dims)`` float32 mean of the corrected frames (NaN-aware).
    mean_raw : ``(*dims)`` float32 mean of the frames before correction.
    frame_corr : ``(T,)`` float32 correlation of each corrected frame with the template.
    metrics : scalars: crispness before/after, mean correlation before/after, residual
        shifts (rms / max px, and the sampled frames with their residuals).
    border_pix : per spatial axis, px at each edge that may hold pixels shifted in from
        outside the frame (``ceil`` of the largest |displacement|); ignore them downstream.
    params : the ``motion`` parameters used (plain dict).
    patch_shifts : ``(T, n_patches, ndim)`` float32 patch displacements (pw-rigid) or None.
    patch_grid : geometry of the patches (pw-rigid) or None.
    store : the corrected movie (:class:`~somascope.store.Store`) or None.
    """

    shifts: np.ndarray
    template: np.ndarray
    mean_image: np.ndarray
    mean_raw: np.ndarray
    frame_corr: np.ndarray
    metrics: dict[str, Any]
    border_pix: tuple[int, ...]
    params: dict[str, Any]
    patch_shifts: np.ndarray | None = None
    patch_grid: PatchGrid | None = None
    store: Any = field(default=None, repr=False)

    @property
    def n_frames(self) -> int:
        return int(self.shifts.shape[0])

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.template.shape)

    @property
    def pw_rigid(self) -> bool:
        return self.patch_shifts is not None

    def __repr__(self) -> str:
        kind = "piecewise-rigid" if self.pw_rigid else "rigid"
        before = self.metrics.get("crispness_raw", float("nan"))
        after = self.metrics.get("crispness_corrected", float("nan"))
        return (f"MotionResult({kind}, {self.n_frames} frames of {self.dims}, border_pix={self.border_pix}, "
                f"crispness {before:.4g} → {after:.4g}, "
                f"store={'None' if self.store is None else str(self.store.final_path)!r})")

    # -- files -----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the result into ``folder`` (created if needed); see the module docstring.
        Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"shifts": self.shifts, "template": self.template, "mean_image": self.mean_image,
                  "mean_raw": self.mean_raw, "frame_corr": self.frame_corr}
        if self.patch_shifts is not None:
            arrays["patch_shifts"] = self.patch_shifts
        for name, arr in arrays.items():
            with atomic_path(folder / f"{name}.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.asarray(arr, dtype=np.float32))
        atomic_write_text(folder / "shifts.csv", self._csv())
        meta = {
            "format": FORMAT,
            "n_frames": self.n_frames,
            "dims": list(self.dims),
            "border_pix": list(self.border_pix),
            "metrics": jsonable(self.metrics),
            "params": jsonable(self.params),
            "patch_grid": None if self.patch_grid is None else self.patch_grid.to_dict(),
            "store": None if self.store is None else str(Path(self.store.final_path).absolute()),
        }
        atomic_write_text(folder / "metrics.json", json.dumps(meta, indent=2, allow_nan=True) + "\n")
        return folder

    def _csv(self) -> str:
        axes = ["dz", "dy", "dx"][-self.shifts.shape[1]:]
        buf = io.StringIO()
        buf.write(",".join(["frame", *axes, "corr"]) + "\n")
        for t in range(self.n_frames):
            vals = ",".join(f"{v:.4f}" for v in self.shifts[t])
            buf.write(f"{t},{vals},{self.frame_corr[t]:.5f}\n")
        return buf.getvalue()

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, open_store: bool = True) -> MotionResult:
        """Read a result written by :meth:`save`; reopens the corrected store when it still
        exists (``open_store=False`` skips that)."""
        folder = Path(folder)
        meta_path = folder / "metrics.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no metrics.json here; not a saved motion-correction result "
                                    "(or it was interrupted while saving; save it again).")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}.")

        def arr(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy")

        store = None
        if open_store and meta.get("store") and Path(meta["store"]).exists():
            from ..store import Store

            store = Store.open(meta["store"])
        grid = None if meta.get("patch_grid") is None else PatchGrid.from_dict(meta["patch_grid"])
        return cls(
            shifts=arr("shifts"), template=arr("template"), mean_image=arr("mean_image"), mean_raw=arr("mean_raw"),
            frame_corr=arr("frame_corr"), metrics=meta["metrics"], border_pix=tuple(meta["border_pix"]),
            params=meta["params"], patch_shifts=arr("patch_shifts") if grid is not None else None,
            patch_grid=grid, store=store,
        )
