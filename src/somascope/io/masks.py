"""Reading sets of cell masks from other tools, to compare them with a somascope result.

:func:`load_masks` (and :func:`read_masks`, its matrix alone) turns any of these into
footprints ``pixels × K`` (pixels in C order of ``(H, W)``, float32 in ``[0, 1]``, each
column scaled to peak 1), the layout of ``Estimates.A``:

- an ImageJ / Fiji ROI Manager set ``RoiSet.zip`` or a single ``.roi`` (polygon, freehand,
  traced, rectangle and oval ROIs), rasterised on the pixel grid as ImageJ does: a pixel is
  in the ROI when its centre is. The file holds no image size: ``dims`` must be given;
- an NWB file's ``PlaneSegmentation`` (``image_mask`` or ``pixel_mask``; the first one found,
  or the one named by ``name``; a somascope ``accepted`` or suite2p ``iscell`` column selects
  the accepted ROIs unless ``all_components``);
- a label image (2-D ``.tif``/``.tiff``/``.npy``/``.png`` of integers: each label > 0 one mask);
- a stack of masks (3-D ``.tif``/``.tiff``/``.npy``, ``K × H × W``, boolean or weights);
- a somascope results file (``results.h5`` of ``somascope run``, or a file written by
  ``Estimates.save``) or a run folder: its accepted components unless ``all_components``;
- a suite2p plane folder (or its ``stat.npy``) with ``iscell.npy`` and ``ops.npy``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["FORMATS", "MaskError", "MaskSet", "load_masks", "load_masks_pair", "read_masks"]

log = logging.getLogger(__name__)

#: The accepted inputs, as error messages list them.
FORMATS = ("an ImageJ RoiSet.zip or .roi, an NWB file (.nwb, PlaneSegmentation), a label image or a K×H×W "
           "mask stack (.tif/.tiff/.npy/.png), a somascope results file (.h5) or run folder, or a suite2p "
           "plane folder (stat.npy + iscell.npy)")

_ARRAY_SUFFIXES = {".tif", ".tiff", ".npy", ".png"}
_RESULTS_SUFFIXES = {".h5", ".hdf5"}


class MaskError(ValueError):
    """A mask set cannot be read as given; the message names the file and the fix."""


class MaskDimsError(MaskError):
    """The mask file holds no image size and none was given."""


@dataclass(frozen=True)
class MaskSet:
    """Masks read by :func:`load_masks`.

    Attributes
    ----------
    A : scipy.sparse.csc_matrix, shape ``(H*W, K)``
        Footprints, float32 in ``[0, 1]``, pixels in C order of ``dims``.
    dims : tuple of int
        Field of view ``(H, W)``, pixels.
    kind : str
        What was read: ``"imagej"``, ``"nwb"``, ``"array"`` (label image or stack), ``"somascope"`` or
        ``"suite2p"``.
    path : Path
        The file or folder read.
    """

    A: sp.csc_matrix
    dims: tuple[int, int]
    kind: str
    path: Path

    @property
    def K(self) -> int:
        """Number of masks."""
        return int(self.A.shape[1])


def read_masks(path: str | Path, dims: tuple[int, int] | None = None, **kwargs: Any) -> sp.csc_matrix:
    """The footprints ``(H*W) × K`` (float32, C order) of the mask set at ``path``; see :func:`load_masks`."""
    return load_masks(path, dims, **kwargs).A


def load_masks(path: str | Path, dims: tuple[int, int] | None = None, *, name: str | None = None,
               all_components: bool = False) -> MaskSet:
    """Read a mask set in any of the formats of the module docstring.

    Parameters
    ----------
    path
        File or folder.
    dims
        Field of view ``(H, W)``: required for ImageJ ROIs and NWB ``pixel_mask``; checked
        against the file's own size otherwise.
    name
        NWB only: the PlaneSegmentation to read (default: the first one).
    all_components
        somascope results, NWB and suite2p: every component, not only the accepted ones.

    Raises
    ------
    MaskError
        Unknown format, unreadable file, or ``dims`` missing or not matching the file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder.")
    shape = None if dims is None else _check_dims(dims, p)
    kind, reader = _reader_for(p)
    try:
        A, found = reader(p, shape, name=name, all_components=all_components)
    except MaskError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise MaskError(f"{p}: cannot be read as {kind} masks ({' '.join(str(exc).split())}); "
                        f"accepted: {FORMATS}.") from exc
    if shape is not None and found != shape:
        raise MaskError(f"{p}: masks of {found[0]}×{found[1]} pixels, but --dims {shape[0]} {shape[1]} "
                        "was given; drop --dims or give the masks' own size.")
    return MaskSet(_normalise(A), found, kind, p)


def load_masks_pair(path_a: str | Path, path_b: str | Path, dims: tuple[int, int] | None = None,
                    **kwargs: Any) -> tuple[MaskSet, MaskSet]:
    """Two mask sets of one field of view, for comparing them.

    A side without its own image size (ImageJ ROIs, NWB pixel masks) takes ``dims``, else the
    other side's. ``kwargs`` go to :func:`load_masks`. MaskError when the fields differ.
    """
    try:
        a = load_masks(path_a, dims, **kwargs)
    except MaskDimsError:
        b = load_masks(path_b, dims, **kwargs)
        a = load_masks(path_a, b.dims, **kwargs)
    else:
        try:
            b = load_masks(path_b, dims, **kwargs)
        except MaskDimsError:
            b = load_masks(path_b, a.dims, **kwargs)
    if a.dims != b.dims:
        raise MaskError(f"{a.path} is {a.dims[0]}×{a.dims[1]} pixels but {b.path} is {b.dims[0]}×{b.dims[1]}; "
                        "compare masks of one field of view (somascope register aligns different sessions).")
    return a, b


# -- dispatch -------------------------------------------------------------------------------
def _reader_for(p: Path) -> tuple[str, Any]:
    """``(kind, reader)`` for a path, by folder contents or suffix; MaskError when unknown."""
    if p.is_dir():
        if (p / "results.h5").is_file():
            return "somascope", _read_somascope
        if (p / "stat.npy").is_file():
            return "suite2p", _read_suite2p
        raise MaskError(f"{p}: a folder with neither results.h5 (somascope run) nor stat.npy (suite2p plane); "
                        f"accepted: {FORMATS}.")
    suffix = p.suffix.lower()
    if p.name == "stat.npy":
        return "suite2p", _read_suite2p
    if suffix in (".zip", ".roi"):
        return "imagej", _read_imagej
    if suffix == ".nwb":
        return "nwb", _read_nwb
    if suffix in _RESULTS_SUFFIXES:
        return "somascope", _read_somascope
    if suffix in _ARRAY_SUFFIXES:
        return "array", _read_array
    raise MaskError(f"{p}: unknown mask format {suffix or '(no suffix)'!r}; accepted: {FORMATS}.")


def _check_dims(dims: Any, p: Path) -> tuple[int, int]:
    shape = tuple(int(d) for d in dims)
    if len(shape) != 2 or min(shape) < 1:
        raise MaskError(f"{p}: --dims must be two positive sizes H W (2-D fields only); got {dims!r}.")
    return shape  # type: ignore[return-value]


def _normalise(A: sp.spmatrix) -> sp.csc_matrix:
    """Columns scaled to peak 1, negatives dropped, float32 CSC."""
    M = sp.csc_matrix(A, dtype=np.float32)
    M.data = np.clip(M.data, 0, None)
    M.eliminate_zeros()
    peak = M.max(axis=0).toarray().ravel()
    scale = np.divide(1.0, peak, out=np.zeros_like(peak), where=peak > 0)
    M = sp.csc_matrix(M @ sp.diags(scale.astype(np.float32)), dtype=np.float32)
    n_empty = int(np.sum(peak <= 0))
    if n_empty:
        log.warning("%d of %d masks are empty (outside the field of view?)", n_empty, M.shape[1])
    return M


def _stack_to_csc(stack: np.ndarray) -> sp.csc_matrix:
    """``K × H × W`` masks → ``(H*W) × K`` CSC."""
    K = stack.shape[0]
    return sp.csc_matrix(np.asarray(stack, dtype=np.float32).reshape(K, -1).T)


# -- arrays: label images and mask stacks ---------------------------------------------------
def _load_array(p: Path) -> np.ndarray:
    if p.suffix.lower() == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im)
    import tifffile

    return tifffile.imread(p)


def _read_array(p: Path, dims: tuple[int, int] | None, **_: Any) -> tuple[sp.csc_matrix, tuple[int, int]]:
    arr = np.asarray(_load_array(p))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and p.suffix.lower() == ".png":
        raise MaskError(f"{p}: a colour PNG; save the labels as a single-channel (grey, 16-bit) image.")
    if arr.ndim == 2:
        return _labels_to_csc(arr, p), (int(arr.shape[0]), int(arr.shape[1]))
    if arr.ndim == 3:
        if arr.dtype.kind not in "biuf":
            raise MaskError(f"{p}: a mask stack must be boolean or numeric, not {arr.dtype}.")
        return _stack_to_csc(arr), (int(arr.shape[1]), int(arr.shape[2]))
    raise MaskError(f"{p}: an array of shape {arr.shape}; masks are a 2-D label image (H×W) or a stack "
                    "K×H×W — save them so.")


def _labels_to_csc(labels: np.ndarray, p: Path) -> sp.csc_matrix:
    """Each label ``> 0`` of an ``H × W`` integer image → one binary column; labels in increasing order."""
    if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "biu":
        raise MaskError(f"{p}: a 2-D image of {labels.dtype} values is not a label image; save integer labels "
                        "(0 = background), or one weighted mask as a 1×H×W stack.")
    flat = labels.ravel().astype(np.int64)
    pixels = np.flatnonzero(flat > 0)
    values, cols = np.unique(flat[pixels], return_inverse=True)
    data = np.ones(pixels.size, np.float32)
    return sp.csc_matrix((data, (pixels, cols.ravel())), shape=(flat.size, values.size))


# -- ImageJ ROIs ----------------------------------------------------------------------------
def _read_imagej(p: Path, dims: tuple[int, int] | None, **_: Any) -> tuple[sp.csc_matrix, tuple[int, int]]:
    if dims is None:
        raise MaskDimsError(f"{p}: ImageJ ROIs hold no image size; give it with --dims H W (dims=(H, W)).")
    import roifile

    rois = roifile.ImagejRoi.fromfile(p)
    rois = rois if isinstance(rois, list) else [rois]
    columns = [_rasterise_roi(roi, dims, p, roifile.ROI_TYPE) for roi in rois]
    if not columns:
        return sp.csc_matrix((dims[0] * dims[1], 0), dtype=np.float32), dims
    return sp.csc_matrix(np.stack(columns, axis=1).astype(np.float32)), dims


def _rasterise_roi(roi: Any, dims: tuple[int, int], p: Path, types: Any) -> np.ndarray:
    """One ROI → a flat boolean mask ``(H*W,)``: the pixels whose centres lie inside it."""
    from skimage import draw

    mask = np.zeros(dims, dtype=bool)
    kind = roi.roitype
    if roi.composite or kind not in (types.POLYGON, types.FREEHAND, types.TRACED, types.RECT, types.OVAL):
        what = "composite" if roi.composite else types(kind).name.lower()
        raise MaskError(f"{p}: ROI {roi.name!r} is a {what} ROI; only polygon, freehand, traced, rectangle and "
                        "oval ROIs are areas — convert it (Edit ▸ Selection) or remove it in the ROI Manager.")
    if kind == types.RECT:
        mask[max(roi.top, 0):max(roi.bottom, 0), max(roi.left, 0):max(roi.right, 0)] = True
    elif kind == types.OVAL:
        cy, cx = (roi.top + roi.bottom) / 2 - 0.5, (roi.left + roi.right) / 2 - 0.5
        rr, cc = draw.ellipse(cy, cx, (roi.bottom - roi.top) / 2, (roi.right - roi.left) / 2, shape=dims)
        mask[rr, cc] = True
    else:  # vertices on pixel corners: a pixel (r, c) has its centre at (r + 0.5, c + 0.5)
        xy = np.asarray(roi.coordinates(), dtype=np.float64)
        rr, cc = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=dims)
        mask[rr, cc] = True
    return mask.ravel()


# -- NWB ------------------------------------------------------------------------------------
def _read_nwb(p: Path, dims: tuple[int, int] | None, *, name: str | None = None,
              all_components: bool = False) -> tuple[sp.csc_matrix, tuple[int, int]]:
    from pynwb import NWBHDF5IO
    from pynwb.ophys import PlaneSegmentation

    with NWBHDF5IO(str(p), "r", load_namespaces=True) as io:
        nwbfile = io.read()
        segs = [o for o in nwbfile.objects.values() if isinstance(o, PlaneSegmentation)]
        names = sorted(s.name for s in segs)
        if name is not None:
            segs = [s for s in segs if s.name == name]
        if not segs:
            found = f"it holds {', '.join(names)}" if names else "it holds none"
            raise MaskError(f"{p}: no PlaneSegmentation{'' if name is None else f' named {name!r}'} ({found}); "
                            "name one of those with --segmentation.")
        seg = segs[0]
        if "image_mask" in seg.colnames:
            A, found_dims = _nwb_image_masks(seg, p)
        elif "pixel_mask" in seg.colnames:
            if dims is None:
                raise MaskDimsError(f"{p}: PlaneSegmentation {seg.name!r} has pixel masks and no image size; "
                                    "give it with --dims H W (dims=(H, W)).")
            A, found_dims = _nwb_pixel_masks(seg, dims, p), dims
        else:
            raise MaskError(f"{p}: PlaneSegmentation {seg.name!r} has neither image_mask nor pixel_mask (voxel "
                            "masks are volumes); export 2-D image or pixel masks.")
        keep = None if all_components else _nwb_accepted(seg)
    return (A if keep is None else A[:, keep]), found_dims


def _nwb_image_masks(seg: Any, p: Path) -> tuple[sp.csc_matrix, tuple[int, int]]:
    """``image_mask`` ``K × H × W`` → ``(H*W) × K``."""
    data = np.asarray(seg["image_mask"].data[()])
    if data.ndim != 3:
        raise MaskError(f"{p}: image_mask of shape {data.shape}; only 2-D planes (K × H × W) are compared.")
    return _stack_to_csc(data), (int(data.shape[1]), int(data.shape[2]))


def _nwb_pixel_masks(seg: Any, dims: tuple[int, int], p: Path) -> sp.csc_matrix:
    """``pixel_mask`` rows of ``(x, y, weight)`` (x the column, y the row) → ``(H*W) × K``."""
    index = seg["pixel_mask"]
    ends = np.asarray(index.data[()], dtype=np.int64)
    flat = np.asarray(index.target.data[()])
    x, y, w = (np.asarray(flat[f], dtype=np.float64) for f in ("x", "y", "weight"))
    H, W = dims
    if flat.size and (x.max() >= W or y.max() >= H or min(x.min(), y.min()) < 0):
        raise MaskError(f"{p}: pixel masks reach x={int(x.max())}, y={int(y.max())}, outside --dims {H} {W}; "
                        "give the imaging plane's size.")
    cols = np.repeat(np.arange(ends.size), np.diff(np.concatenate([[0], ends])))
    rows = y.astype(np.int64) * W + x.astype(np.int64)
    return sp.csc_matrix((w.astype(np.float32), (rows, cols)), shape=(H * W, ends.size))


def _nwb_accepted(seg: Any) -> np.ndarray | None:
    """Indices of the accepted ROIs (somascope ``accepted``, suite2p ``iscell``), None: no such column."""
    for column in ("accepted", "iscell"):
        if column in seg.colnames:
            values = np.asarray(seg[column].data[()])
            values = values[:, 0] if values.ndim == 2 else values
            return np.flatnonzero(values > 0.5)
    return None


# -- somascope results ----------------------------------------------------------------------
def _read_somascope(p: Path, dims: tuple[int, int] | None, *, all_components: bool = False,
                    **_: Any) -> tuple[sp.csc_matrix, tuple[int, int]]:
    from ..cnmf.estimates import Estimates

    est = Estimates.load(p / "results.h5" if p.is_dir() else p)  # the root group, else /estimates
    if len(est.dims) != 2:
        raise MaskError(f"{p}: a volume of dims {tuple(est.dims)}; only 2-D fields are compared.")
    A = sp.csc_matrix(est.A)
    keep = np.arange(est.K) if all_components else est.accepted_indices
    return A[:, keep], (int(est.dims[0]), int(est.dims[1]))


# -- suite2p --------------------------------------------------------------------------------
def _read_suite2p(p: Path, dims: tuple[int, int] | None, *, all_components: bool = False,
                  **_: Any) -> tuple[sp.csc_matrix, tuple[int, int]]:
    from .suite2p import load_metadata

    folder = p if p.is_dir() else p.parent
    ops = load_metadata(folder)
    H, W = int(ops["Ly"]), int(ops["Lx"])
    stat = _load_stat(folder / "stat.npy")
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for k, roi in enumerate(stat):
        ypix, xpix = np.asarray(roi["ypix"], np.int64), np.asarray(roi["xpix"], np.int64)
        rows.append(ypix * W + xpix)
        cols.append(np.full(ypix.size, k))
        vals.append(np.asarray(roi.get("lam", np.ones(ypix.size)), np.float32))
    A = sp.csc_matrix((np.concatenate(vals or [np.zeros(0)]), (np.concatenate(rows or [np.zeros(0, int)]),
                                                               np.concatenate(cols or [np.zeros(0, int)]))),
                      shape=(H * W, len(stat)))
    iscell_path = folder / "iscell.npy"
    if all_components or not iscell_path.is_file():
        return A, (H, W)
    iscell = np.load(iscell_path, allow_pickle=False)
    iscell = iscell[:, 0] if iscell.ndim == 2 else iscell
    return A[:, np.flatnonzero(iscell > 0.5)], (H, W)


def _load_stat(path: Path) -> list[dict[str, Any]]:
    """suite2p's ``stat.npy`` (an object array of dicts) through the allow-list unpickler of
    :mod:`somascope.io.suite2p`, never ``np.load(allow_pickle=True)``."""
    from .suite2p import _AllowListUnpickler

    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if header is None or not header(f)[2].hasobject:
            raise MaskError(f"{path}: not suite2p's stat.npy (an array of dicts); use the one suite2p wrote.")
        stat = _AllowListUnpickler(f).load()
    stat = list(np.asarray(stat, dtype=object).ravel())
    if not all(isinstance(roi, dict) and "ypix" in roi and "xpix" in roi for roi in stat):
        raise MaskError(f"{path}: its entries are not suite2p ROIs (dicts with ypix, xpix).")
    return stat
