"""``somascope view``: a local web viewer of results — contours on the summary images, traces,
footprints, the movie beside its reconstruction and residual — and manual curation saved back
into the results file.

:func:`serve` opens the results (:mod:`.data`), starts the Tornado server (:mod:`.server`) on
127.0.0.1 with a random token and, by default, opens the page in the browser. Curation
(:mod:`.curation`) writes ``curation.json`` and the curated split into the results file.
Importing this package does not import Tornado.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import ViewerServer

__all__ = ["serve"]


def serve(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, port: int = 0,
          open_browser: bool = True, token: str | None = None, block: bool = False,
          static_dir: str | Path | None = None) -> ViewerServer:
    """Serve the viewer for ``paths`` (run folders, results files or ``BATCH_FOLDER::ITEM``).

    Parameters
    ----------
    paths
        One or more results; their ids in the API are 0..n-1 in this order. Two give the compare view.
    port
        Port on 127.0.0.1; 0 (default) picks a free one.
    open_browser
        Open the page (``ViewerServer.url``, with the token) with :func:`webbrowser.open`.
    token
        The access token (default: ``secrets.token_urlsafe(24)``).
    block
        Serve until Ctrl-C, then stop and return; False: return the running server at once
        (serving in a background thread; call ``.stop()``).
    static_dir
        Folder of the page's files (default: the package's ``viewer/static``).

    Returns
    -------
    ViewerServer
        With ``.url``, ``.port``, ``.token`` and ``.stop()``.

    Raises
    ------
    SourceError
        A path is not a result (the message says what to give).
    ValueError
        The port cannot be used.
    """
    from .data import open_sources
    from .server import ViewerServer

    specs = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    server = ViewerServer(open_sources(specs), port=port, token=token, static_dir=static_dir)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    if block:
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return server
