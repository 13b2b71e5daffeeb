"""The batch manager: many movies × many parameter variants, run, loaded back and compared.

:class:`Batch` is a folder with one SQLite file of items (:mod:`~somascope.batch.db`), their
outputs by uuid and the pipeline stages they share (:mod:`~somascope.batch.core`); items run
on one engine shared by all of them (:mod:`~somascope.batch.execute`). A mesmerize-core batch
can be imported (:mod:`~somascope.batch.mesmerize`). The command line is ``somascope batch``;
the guide is ``docs/batch.md``.
"""

from __future__ import annotations

from .core import ALGORITHMS, Batch, ItemOutputs
from .db import BatchError

__all__ = ["ALGORITHMS", "Batch", "BatchError", "ItemOutputs"]
