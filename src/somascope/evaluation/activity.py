"""Own activity of a cell seeded from a structural channel, net of the neuropil around it.

A seeded cell is reported silent (:func:`somascope.evaluation.evaluate_components`) when its
movie shows no activity of its own. Its CNMF trace is not the measure to read that from: the
neuropil under the cell (out-of-focus blobs, slow fields) and what the fit leaves of its
neighbours all project onto its footprint, so a cell that never fires still has transients,
and the trace SNR of a cell that fires often is low. Here each seeded cell gets

1. **a neuropil-subtracted trace**: the mean of the model's residual over the cell's region
   (its structural mask) minus the mean over a ring around it (:func:`neuropil_weights`: from
   :data:`RING_INNER` to :data:`RING_OUTER` radii beyond the region, other cells' pixels left
   out; per plane in a volume), i.e.
   ``uᵀ(Y − b·f − Σ_{j≠k} a_j c_j)`` with ``u`` the cell's weights minus the ring's. Neuropil
   smooth over the ring's width cancels; the cell's own transients do not;
2. **an activity z** (:func:`activity_z`): that trace, high-passed by a running median over
   ``2·decay_time + 1`` s (slow fields and drifts out), filtered with the indicator's
   exponential decay (a matched filter for one transient), and its largest excursion above
   the median in units of the filtered trace's noise (the spread of its values below the
   median, which events do not reach).

A cell whose activity z stays below :func:`activity_threshold` is silent: the largest excursion
that noise alone reaches over the recording, plus :data:`ACTIVITY_MARGIN`. The threshold follows
the noise maximum, which grows with the recording's length and falls with the decay in frames
(fewer independent stretches), so a long recording or a fast indicator at a low frame rate does
not turn silent cells active.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["ACTIVITY_MARGIN", "RING_INNER", "RING_OUTER", "activity_threshold", "activity_z", "neuropil_traces",
           "neuropil_weights"]

#: Length of an independent stretch of the high-passed, filtered noise, as a share of the decay
#: in frames (τ = decay_time · frame_rate): the largest of ``T`` frames of pure noise is about
#: √(2 ln(T / (NOISE_STRETCH · τ))) deviations. Measured on white noise, 2,000 and 20,000 frames,
#: τ from 2 to 60 frames: the median largest excursion lay within 0.2 of that (e.g. 3.91, 3.37,
#: 2.94 at 2,000 frames and τ = 2, 12, 60; 4.55, 4.04, 3.70 at 20,000).
NOISE_STRETCH = 0.7
#: Deviations by which a seeded cell's largest transient must exceed the noise maximum of its
#: recording to count as activity (:func:`activity_threshold`). Pure noise then passes in at
#: most 5 % of traces (white noise, τ ≥ 4 frames; 8 % at τ = 2). On the simulated two-channel
#: hard family (4 planes and 2 volumes of 2,000 frames, r 5–8 px, 7.5–30 Hz, decay 0.4–2.5 s) the
#: mean F1 of the silent flags was the same within 0.01 from 1.0 to 1.4 (``docs/structural.md``).
ACTIVITY_MARGIN = 1.2
#: Inner edge of the neuropil ring, in neuron radii beyond the cell's binary mask (a gap that
#: keeps the cell's own blurred edge out of it).
RING_INNER = 0.5
#: Outer edge of the neuropil ring, in neuron radii beyond the cell's binary mask.
RING_OUTER = 2.0
#: Fewest ring pixels (else other cells' pixels are kept in the ring).
MIN_RING_PIXELS = 10


def neuropil_weights(regions: Any, dims: Sequence[int], radius: float,
                     occupied: np.ndarray | None = None) -> sp.csc_matrix:
    """``pixels × n`` weights ``u`` of the neuropil-subtracted traces of ``n`` cells.

    ``regions`` (``pixels × n``, non-negative, C order of ``dims``, 2-D or 3-D frames) holds
    each cell's pixels and their weights: a seeded cell's structural mask, or a footprint on
    its binary mask. Column ``i`` of ``u`` is region ``i`` scaled to sum 1, minus 1/m on each
    of the m pixels of the ring between :data:`RING_INNER` and :data:`RING_OUTER` · ``radius``
    (px, in-plane) beyond the region, in every plane the region is in. Pixels in ``occupied``
    (bool, ``pixels``: the cells' masks) are left out of the ring unless fewer than
    :data:`MIN_RING_PIXELS` would remain. ``uᵀ·frame`` is the cell's mean minus its
    surround's: zero for light that is flat across the ring.
    """
    from scipy import ndimage as ndi

    dims = tuple(int(d) for d in dims)
    P = math.prod(dims)
    R = sp.csc_matrix(regions, dtype=np.float64)
    R.eliminate_zeros()
    n = R.shape[1]
    inner, outer = max(int(round(RING_INNER * radius)), 1), max(int(round(RING_OUTER * radius)), 2)
    structure = ndi.generate_binary_structure(len(dims), 1)
    reach = [outer] * len(dims)
    if len(dims) == 3:  # a volume: rings in-plane only
        structure[0] = structure[2] = False
        reach[0] = 0
    rows, cols, vals = [], [], []
    for i in range(n):
        px, weight = R.indices[R.indptr[i]:R.indptr[i + 1]], R.data[R.indptr[i]:R.indptr[i + 1]]
        if px.size == 0:
            continue
        # dilate within the region's box grown by the ring's width (not the whole frame)
        coords = np.unravel_index(px, dims)
        lo = [max(int(c.min()) - pad, 0) for c, pad in zip(coords, reach)]
        hi = [min(int(c.max()) + pad + 1, d) for c, pad, d in zip(coords, reach, dims)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        image = np.zeros([b - a for a, b in zip(lo, hi)], bool)
        image[tuple(c - a for c, a in zip(coords, lo))] = True
        near = ndi.binary_dilation(image, structure, iterations=inner)
        ring = ndi.binary_dilation(image, structure, iterations=outer) & ~near
        if occupied is not None:
            free = ring & ~occupied.reshape(dims)[box]
            if np.count_nonzero(free) >= MIN_RING_PIXELS:
                ring = free
        ring_px = np.ravel_multi_index(tuple(c + a for c, a in zip(np.nonzero(ring), lo)), dims)
        rows += [px, ring_px]
        cols.append(np.full(px.size + ring_px.size, i))
        vals += [weight / weight.sum(), np.full(ring_px.size, -1.0 / max(ring_px.size, 1))]
    if not rows:
        return sp.csc_matrix((P, n))
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(P, n))


def neuropil_traces(UtY: np.ndarray, U: Any, cells: np.ndarray, A: Any, C: np.ndarray,
                    b: np.ndarray | None, f: np.ndarray | None) -> np.ndarray:
    """``n × T`` neuropil-subtracted traces ``uᵀ(Y − b·f − Σ_{j≠k} a_j c_j)`` of ``cells``
    from ``UtY = Uᵀ·Y`` (``n × T``), the weights ``U`` (:func:`neuropil_weights`) and the
    model's ``A`` (``pixels × K``), ``C`` (``K × T``), ``b``, ``f`` (None: no background)."""
    U = sp.csc_matrix(U, dtype=np.float64)
    out = np.asarray(UtY, np.float64).copy()
    if b is not None and f is not None and np.size(b):
        out -= (U.T @ np.asarray(b, np.float64)) @ np.asarray(f, np.float64)
    UA = np.asarray((U.T @ sp.csc_matrix(A, dtype=np.float64)).todense())
    UA[np.arange(len(cells)), np.asarray(cells, np.int64)] = 0.0  # the cell's own fit stays in
    out -= UA @ np.asarray(C, np.float64)
    return out


def activity_threshold(n_frames: int, decay_time: float, frame_rate: float) -> float:
    """Activity z below which a seeded cell is silent, for a recording of ``n_frames`` frames
    at ``frame_rate`` Hz with an indicator decaying over ``decay_time`` s: the noise maximum
    √(2 ln(n_frames / (:data:`NOISE_STRETCH` · τ))) plus :data:`ACTIVITY_MARGIN`, τ the decay in
    frames (4.5 at 2,000 frames, 30 Hz, 0.4 s; 5.5 at 100,000)."""
    stretch = max(NOISE_STRETCH * float(decay_time) * float(frame_rate), 1.0)
    return math.sqrt(2.0 * math.log(max(float(n_frames) / stretch, math.e))) + ACTIVITY_MARGIN


def activity_z(traces: np.ndarray, decay_time: float, frame_rate: float) -> np.ndarray:
    """``(n,)`` activity z of each row of ``traces`` (``n × T``): see the module docstring.
    NaN for a trace too short to tell (fewer frames than the high-pass window)."""
    from scipy.ndimage import median_filter

    traces = np.atleast_2d(np.asarray(traces, np.float64))
    n, T = traces.shape
    tau = max(float(decay_time) * float(frame_rate), 1.0)  # decay, frames
    window = max(int(round((2.0 * float(decay_time) + 1.0) * float(frame_rate))) | 1, 3)
    out = np.full(n, np.nan)
    if T < window:
        return out
    kernel = np.exp(-np.arange(int(math.ceil(3.0 * tau))) / tau)
    kernel /= np.linalg.norm(kernel)
    for i in range(n):
        y = traces[i] - median_filter(traces[i], size=window, mode="reflect")
        z = np.convolve(y, kernel[::-1], mode="full")[kernel.size - 1:]
        mid = np.median(z)
        low = z[z < mid] - mid
        spread = math.sqrt(float(np.mean(low ** 2))) if low.size else 0.0
        out[i] = (z.max() - mid) / spread if spread > 0 else 0.0
    return out
