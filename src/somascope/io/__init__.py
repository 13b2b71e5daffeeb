"""Reading and writing movies and results.

``open_movie`` returns a lazy :class:`Movie`; ``iter_chunks`` reads any frame source
(``numpy.ndarray``, :class:`Movie`, :class:`somascope.store.Store`) in chunks of frames.
"""

from __future__ import annotations

from .chunks import iter_chunks, n_chunks
from .errors import MovieError
from .movie import Movie, open_movie

__all__ = ["Movie", "MovieError", "iter_chunks", "n_chunks", "open_movie"]
