"""Numba kernels of the component evaluation (:mod:`.quality`)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def project_frames(Y: np.ndarray, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                   out: np.ndarray) -> None:
    """``out[j, t] = Σ_p W[p, j] · Y[t, p]``: the weighted sums of each frame, for the columns
    of a ``pixels × n`` CSC matrix ``W`` (``indptr``, ``indices``, ``data``) and frames ``Y``
    (``frames × pixels``, C order); ``out`` is ``n × frames``. One frame per thread: each
    frame's pixels are read from one contiguous row (a sparse-times-transposed-dense product
    reads them strided, about 4× slower on a 256×256 movie)."""
    n = indptr.size - 1
    for t in prange(Y.shape[0]):
        row = Y[t]
        for j in range(n):
            s = 0.0
            for k in range(indptr[j], indptr[j + 1]):
                s += row[indices[k]] * data[k]
            out[j, t] = s
