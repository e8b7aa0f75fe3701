"""Serving a store folder over HTTP with ``Range`` support: :func:`make_server`, ``vlm features serve``.

Python's ``http.server`` answers every request with the whole file, which a store read by URL cannot use (each sample
is a byte range of a shard, :mod:`features.store.remote`). This server answers single ``Range`` requests
(``bytes=A-B``, ``bytes=A-``, ``bytes=-N``) with ``206 Partial Content``, keeps connections alive (HTTP/1.1), serves
only the store's own files (manifest, shards, sidecars, index) and nothing above the folder. It is meant for a
trusted network — a loopback test, the nodes of one cluster — not for the open internet: no TLS, no authentication;
put nginx or a bucket in front for that.
"""

from __future__ import annotations

import os
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from features.errors import StoreError
from features.store.format import MANIFEST, is_store_file

__all__ = ["StoreRequestHandler", "make_server"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class StoreRequestHandler(BaseHTTPRequestHandler):
    """GET and HEAD of a store's files, whole or one byte range. The folder is the server's ``directory``."""

    protocol_version = "HTTP/1.1"
    server_version = "vlm-store"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature of the base class
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def send_cut(self, path: Path, start: int, length: int) -> int:
        """How many bytes of the answer to send (all of them here); a test's subclass returns fewer to cut it short."""
        return length

    def _file(self) -> Path | None:
        name = unquote(urlsplit(self.path).path).lstrip("/")
        root: Path = self.server.directory  # type: ignore[attr-defined]
        if "/" in name or not is_store_file(name) or name.endswith(".tmp"):
            return None
        path = root / name
        return path if path.is_file() else None

    def _serve(self, *, body: bool) -> None:
        path = self._file()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not a file of this store")
            return
        size = path.stat().st_size
        start, length, status = 0, size, HTTPStatus.OK
        header = self.headers.get("Range")
        if header:
            found = _RANGE.fullmatch(header.strip())
            if found is None or not (found[1] or found[2]):
                self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "one byte range expected")
                return
            if found[1]:
                start = int(found[1])
                end = min(int(found[2]), size - 1) if found[2] else size - 1
            else:  # the last N bytes
                start, end = max(size - int(found[2]), 0), size - 1
            if start >= size or end < start:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length, status = end - start + 1, HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if path.suffix == ".json" else "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        send = self.send_cut(path, start, length)
        if send < length:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            _copy(handle, self.wfile, send)


def _copy(source: Any, target: Any, count: int) -> None:
    left = count
    while left > 0:
        chunk = source.read(min(left, 1 << 20))
        if not chunk:
            break
        target.write(chunk)
        left -= len(chunk)


def make_server(directory: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0, *,
                handler: type[StoreRequestHandler] = StoreRequestHandler, verbose: bool = False
                ) -> ThreadingHTTPServer:
    """A threading HTTP server of the store in ``directory`` (call ``serve_forever()``; port 0 picks a free one).

    Its URL: ``f"http://{host}:{server.server_address[1]}"``.

    Raises:
        StoreError: The folder holds no ``manifest.json``.
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise StoreError(f"{directory} is not a feature store: {directory / MANIFEST} not found")
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.directory = directory.resolve()  # type: ignore[attr-defined]
    server.verbose = verbose  # type: ignore[attr-defined]
    return server

