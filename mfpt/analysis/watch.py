"""The web server of `mfpt watch`: a read-only page over a run folder (or a folder of runs) that updates itself.

Routes (GET only; any other method is answered 405):
    /                 the page (mfpt/analysis/static/watch.html), which polls the API below
    /static/NAME      the page's own script and style sheet, shipped with the package (nothing is fetched online)
    /api/runs         {"root": ..., "runs": [...]}: the run folders under the served folder
    /api/state?run=R  the state of run R (relative to the served folder; '' = the folder itself), see live.py
    /files/PATH       a file of the served folder (report.md, results.json, figures)
A path that leaves the served folder (`..`, an absolute path, a link pointing out) is refused with 403.
"""

from __future__ import annotations

import json
import mimetypes
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mfpt.analysis.live import is_run_folder, list_runs, run_state
from mfpt.core.errors import UserError
from mfpt.core.network import is_loopback

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"watch.html": "text/html", "watch.js": "text/javascript", "watch.css": "text/css"}


class OutsideFolder(ValueError):
    """A requested path that is not inside the served folder."""


def inside(root: Path, relative: str) -> Path:
    """`relative` resolved under `root`, or OutsideFolder when it is absolute, climbs out, or links out."""
    if relative.startswith(("/", "\\")) or "\\" in relative or "\x00" in relative:
        raise OutsideFolder(relative)
    if any(part == ".." for part in PurePosixPath(relative).parts):
        raise OutsideFolder(relative)
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise OutsideFolder(relative)
    return target


class WatchServer(ThreadingHTTPServer):
    """Serves one folder; `root` is resolved once, and every path is checked against it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, host: str, port: int, quiet: bool = True) -> None:
        self.root = root.resolve()
        self.quiet = quiet
        if ":" in host:  # an IPv6 address
            self.address_family = socket.AF_INET6
        super().__init__((host, port), WatchHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


class WatchHandler(BaseHTTPRequestHandler):
    server: WatchServer
    server_version = "mfpt-watch"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        try:
            if path in ("/", "/index.html"):
                self._file(STATIC / "watch.html", STATIC_FILES["watch.html"])
            elif path.startswith("/static/"):
                name = path[len("/static/"):]
                if name not in STATIC_FILES:
                    return self._error(HTTPStatus.NOT_FOUND, f"no static file {name!r}")
                self._file(STATIC / name, STATIC_FILES[name])
            elif path == "/api/runs":
                self._json({"root": str(self.server.root), "runs": list_runs(self.server.root)})
            elif path == "/api/state":
                folder = inside(self.server.root, query.get("run", [""])[0])
                if not is_run_folder(folder):
                    return self._error(HTTPStatus.NOT_FOUND, "no run there (yet): its config.toml is missing")
                self._json(run_state(folder))
            elif path.startswith("/files/"):
                target = inside(self.server.root, path[len("/files/"):])
                if not target.is_file():
                    return self._error(HTTPStatus.NOT_FOUND, "no such file in the run folder")
                self._file(target, mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            else:
                self._error(HTTPStatus.NOT_FOUND, "not a page of mfpt watch")
        except OutsideFolder:
            self._error(HTTPStatus.FORBIDDEN, "outside the watched folder")
        except (UserError, OSError, ValueError) as err:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")

    do_HEAD = do_GET  # noqa: N815

    def _refuse_write(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "mfpt watch is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_write  # noqa: N815

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, content: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(content, allow_nan=False, default=str).encode("utf-8"), "application/json")

    def _file(self, path: Path, content_type: str) -> None:
        text_types = ("text/", "application/json")
        charset = "; charset=utf-8" if content_type.startswith(text_types) else ""
        self._send(HTTPStatus.OK, path.read_bytes(), content_type + charset)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode("utf-8"), "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if not self.server.quiet:
            super().log_message(format, *args)


def open_server(root: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False,
                quiet: bool = True) -> WatchServer:
    """The server over `root`, bound and ready (serve_forever() runs it). A non-loopback host needs allow_remote."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"{str(root)!r} is not a folder; give a run folder (output_dir) or a folder of runs.")
    if not is_loopback(host) and not allow_remote:
        raise UserError(f"--host {host} would let anyone who reaches it read the run; pass --allow-remote to do it "
                        "anyway, or keep 127.0.0.1 and use an SSH tunnel (docs/watch.md).")
    try:
        return WatchServer(folder, host, port, quiet=quiet)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port.") from None
