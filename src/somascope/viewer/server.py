"""The viewer's web server: a Tornado application on 127.0.0.1 with a token on every request.

Routes (JSON unless stated; errors are ``{"error": "message"}`` with a 4xx/5xx status):

=====================================  ======================================================
``GET /``                              ``static/index.html`` with ``{{TOKEN}}`` replaced (HTML)
``GET /static/<name>``                 a file of the static folder, nothing else
``GET /api/sources``                   one entry per source (:meth:`Source.info`)
``GET /api/<sid>/meta``                the entry plus background model and display scales
``GET /api/<sid>/image/<name>.png``    a summary image (PNG)
``GET /api/<sid>/components``          contours, centres, split, metrics, thresholds
``GET /api/<sid>/trace/<k>``           ``?t0=&t1=&n=``: traces, min/max per bin
``GET /api/<sid>/footprint/<k>``       the footprint cropped to its bounding box + 2 px
``GET /api/<sid>/frame/<t>.png|json``  ``?kind=movie|reconstruction|residual``
``POST /api/<sid>/curate``             ``{"accept", "reject", "reset", "notes", "who"}``
``POST /api/<sid>/undo``               undo the last curate action
``GET /api/compare/<a>/<b>``           matched components of two sources
=====================================  ======================================================

Every request needs the token, as the query argument ``token`` or the header
``X-Somascope-Token`` (403 otherwise), and a ``Host`` of this loopback address (403 otherwise:
no DNS rebinding). The server serves only the sources it was started with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import re
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from ..curation import CurationError
from .data import NoMovieError, Source, compare, floats

log = logging.getLogger("somascope.viewer")

__all__ = ["ViewerServer", "make_app", "STATIC_DIR", "TOKEN_HEADER", "HOST"]

#: The folder of the page (``index.html``, ``app.js``, ``app.css``).
STATIC_DIR = Path(__file__).parent / "static"
#: Header that may carry the token instead of the query argument.
TOKEN_HEADER = "X-Somascope-Token"
#: The only address the server listens on.
HOST = "127.0.0.1"
#: Largest request body (curation requests), bytes.
MAX_BODY = 8 * 2**20
#: Most points a trace request may ask for.
MAX_POINTS = 200_000
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".json": "application/json", ".png": "image/png",
          ".svg": "image/svg+xml", ".ico": "image/x-icon", ".map": "application/json"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


class BaseHandler(tornado.web.RequestHandler):
    """Token and host check on every request; JSON errors."""

    def initialize(self, server: ViewerServer) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")

    def prepare(self) -> None:
        host = self.request.host or ""
        if host not in self.server.allowed_hosts:
            self._fail(403, f"requests must address {HOST}:{self.server.port} (got Host {host!r}).")
            return
        given = self.get_query_argument("token", None) or self.request.headers.get(TOKEN_HEADER, "")
        if not given or not secrets.compare_digest(str(given), self.server.token):
            why = "no token" if not given else "wrong token"
            self._fail(403, f"{why}: open the URL that 'somascope view' printed (it ends in ?token=…).")

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason if exc is None or isinstance(exc, tornado.web.HTTPError) else _message(exc)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def send_json(self, payload: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload, separators=(",", ":"), allow_nan=False))

    def send_bytes(self, data: bytes, content_type: str) -> None:
        self.set_header("Content-Type", content_type)
        self.finish(data)

    def source(self, sid: str) -> Source:
        i = int(sid)
        if not 0 <= i < len(self.server.sources):
            raise ApiError(404, f"no source {i}: this viewer has sources 0..{len(self.server.sources) - 1}.")
        return self.server.sources[i]

    def int_arg(self, name: str, default: int | None) -> int | None:
        text = self.get_query_argument(name, None)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise ApiError(400, f"{name}={text!r} is not an integer.") from None

    def answer(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, its exceptions answered as JSON errors (404 missing, 400 invalid, 500 else)."""
        try:
            return fn(*args)
        except ApiError as exc:
            self._fail(exc.status, str(exc))
        except NoMovieError as exc:
            self._fail(404, _message(exc))
        except CurationError as exc:
            self._fail(409 if "changed on disk" in str(exc) else 400, _message(exc))
        except (KeyError, IndexError, LookupError, FileNotFoundError) as exc:
            self._fail(404, _message(exc))
        except ValueError as exc:
            self._fail(400, _message(exc))
        except Exception as exc:  # noqa: BLE001 - the page shows the message; the log has the traceback
            log.exception("viewer request %s failed", self.request.uri)
            self._fail(500, f"{type(exc).__name__}: {_message(exc)}")
        return None


class IndexHandler(BaseHandler):
    def get(self) -> None:
        path = self.server.static_dir / "index.html"
        if not path.is_file():
            self._fail(500, f"{path} is missing: somascope was installed without the viewer's page. Fix: "
                            "reinstall somascope (pip install -e .) from a complete checkout.")
            return
        page = path.read_text(encoding="utf-8").replace("{{TOKEN}}", self.server.token)
        self.send_bytes(page.encode("utf-8"), _TYPES[".html"])


class StaticHandler(BaseHandler):
    def get(self, name: str) -> None:
        folder = self.server.static_dir.resolve()
        path = (folder / name).resolve() if _SAFE_NAME.match(name) else None
        if path is None or path.parent != folder or not path.is_file():
            self._fail(404, f"no static file {name!r}.")
            return
        kind = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.send_bytes(path.read_bytes(), kind)


class NotFoundHandler(BaseHandler):
    def get(self, *args: Any) -> None:
        self._fail(404, f"no such endpoint: {self.request.path}. The API is under /api/ (sources, <id>/components, "
                        "…); see somascope.viewer.server.")

    post = get


class SourcesHandler(BaseHandler):
    def get(self) -> None:
        self.answer(lambda: self.send_json([s.info() for s in self.server.sources]))


class MetaHandler(BaseHandler):
    def get(self, sid: str) -> None:
        self.answer(lambda: self.send_json(self.source(sid).meta()))


class ImageHandler(BaseHandler):
    def get(self, sid: str, name: str) -> None:
        self.answer(lambda: self.send_bytes(self.source(sid).image_png(name), "image/png"))


class ComponentsHandler(BaseHandler):
    def get(self, sid: str) -> None:
        self.answer(lambda: self.send_json(self.source(sid).components()))


class TraceHandler(BaseHandler):
    def get(self, sid: str, k: str) -> None:
        def run() -> None:
            n = self.int_arg("n", 2000)
            if n is not None and n > MAX_POINTS:
                raise ApiError(400, f"n={n} points is more than {MAX_POINTS}: ask for a shorter range instead.")
            src = self.source(sid)
            self.send_json(src.trace(int(k), self.int_arg("t0", 0) or 0, self.int_arg("t1", None), n or 2000))
        self.answer(run)


class FootprintHandler(BaseHandler):
    def get(self, sid: str, k: str) -> None:
        self.answer(lambda: self.send_json(self.source(sid).footprint(int(k))))


class FrameHandler(BaseHandler):
    def get(self, sid: str, t: str, fmt: str) -> None:
        def run() -> None:
            src, kind = self.source(sid), self.get_query_argument("kind", "movie")
            if fmt == "png":
                self.send_bytes(src.frame_png(int(t), kind), "image/png")
                return
            img = src.frame(int(t), kind)
            self.send_json({"t": int(t), "kind": kind, "dims": list(img.shape),
                            "values": [floats(row) for row in img]})
        self.answer(run)


class CurateHandler(BaseHandler):
    def body(self) -> Any:
        raw = self.request.body or b"{}"
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, f"the request body is not JSON ({exc}).") from None

    def post(self, sid: str) -> None:
        self.answer(lambda: self.send_json(self.source(sid).curate(self.body())))


class UndoHandler(CurateHandler):
    def post(self, sid: str) -> None:
        def run() -> None:
            body = self.body()
            who = body.get("who") if isinstance(body, dict) else None
            self.send_json(self.source(sid).undo(who))
        self.answer(run)


class CompareHandler(BaseHandler):
    def get(self, a: str, b: str) -> None:
        def run() -> None:
            key = (int(a), int(b))
            cache = self.server.compare_cache
            if key not in cache:
                cache[key] = compare(self.source(a), self.source(b))
            self.send_json(cache[key])
        self.answer(run)


def make_app(server: ViewerServer) -> tornado.web.Application:
    """The Tornado application of ``server`` (routes in the module docstring)."""
    s = {"server": server}
    routes = [
        (r"/", IndexHandler, s),
        (r"/static/([^/]+)", StaticHandler, s),
        (r"/api/sources", SourcesHandler, s),
        (r"/api/(\d+)/meta", MetaHandler, s),
        (r"/api/(\d+)/image/([^/]+)\.png", ImageHandler, s),
        (r"/api/(\d+)/components", ComponentsHandler, s),
        (r"/api/(\d+)/trace/(\d+)", TraceHandler, s),
        (r"/api/(\d+)/footprint/(\d+)", FootprintHandler, s),
        (r"/api/(\d+)/frame/(\d+)\.(png|json)", FrameHandler, s),
        (r"/api/(\d+)/curate", CurateHandler, s),
        (r"/api/(\d+)/undo", UndoHandler, s),
        (r"/api/compare/(\d+)/(\d+)", CompareHandler, s),
    ]
    # no gzip: on the loopback interface compressing (0.3 s for the contours of 2,000 components)
    # costs more than sending
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler, default_handler_args=s,
                                   log_function=_log_request)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    path = handler.request.path  # never the query: it holds the token
    (log.warning if status >= 500 else log.debug)("%d %s %s %.1f ms", status, handler.request.method, path,
                                                   1000 * handler.request.request_time())


class ViewerServer:
    """The viewer serving ``sources`` on ``127.0.0.1:port`` (0: a free port) in a background thread.

    Attributes: ``url`` (with the token), ``port``, ``token``, ``sources``. :meth:`wait` blocks
    until Ctrl-C (or :meth:`stop` from another thread); :meth:`stop` shuts it down.
    """

    def __init__(self, sources: Sequence[Source], *, port: int = 0, token: str | None = None,
                 static_dir: str | Path | None = None) -> None:
        self.sources = list(sources)
        self.token = token or secrets.token_urlsafe(24)
        self.static_dir = Path(static_dir) if static_dir is not None else STATIC_DIR
        self.compare_cache: dict[tuple[int, int], Any] = {}
        try:
            self._sockets = bind_sockets(int(port), HOST)
        except OSError as exc:
            raise ValueError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}). Fix: choose another --port, "
                             "or 0 for a free one.") from None
        self.port = int(self._sockets[0].getsockname()[1])
        self.allowed_hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        self.app = make_app(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"somascope-viewer-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        """The page's address, with the token."""
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        server = HTTPServer(self.app, max_body_size=MAX_BODY)
        server.add_sockets(self._sockets)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            loop.run_until_complete(server.close_all_connections())
            loop.close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here, in the caller)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ViewerServer({HOST}:{self.port}, {len(self.sources)} sources)"
