"""CNMF source extraction on one field of view: ``somascope.cnmf.fit(movie, params) -> Estimates``.

``fit`` and ``refit`` live in :mod:`somascope.cnmf.fit`; the pieces in ``initialization``,
``seeded``, ``spatial``, ``temporal`` and ``merging``; the results container
:class:`~somascope.cnmf.estimates.Estimates` in ``estimates``. Importing this package is
light (NumPy, SciPy, h5py): Numba and the rest load when a fit runs.
"""

from __future__ import annotations

from .estimates import Estimates
from .fit import fit, refit

__all__ = ["Estimates", "fit", "refit"]
