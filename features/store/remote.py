"""Reading a store over HTTP(S): :class:`HttpFiles`, byte ranges of the files under one base URL.

A store served by any web server that answers ``Range`` requests (nginx, Apache, S3 and GCS over HTTPS, the loopback
server of :mod:`features.store.serve`) is read in place: :class:`~features.store.reader.FeatureStore` fetches the
manifest and the index once when it opens (two small files; the shard sizes come from the manifest, so opening makes
no request per shard), then reads each sample with one ``Range`` request for exactly its bytes, at the offset the
index records. The data plan — which sample when — is the same as from a local folder, so the data order and exact
resume are too.

What is checked, and what happens when the network misbehaves:

* every response to a range request must be ``206 Partial Content`` for exactly the bytes asked, of a file of the
  size the manifest records (its ``Content-Range`` total): a shard replaced on the server under a running job is an
  error, never a sample of another store;
* a connection that drops, times out or is cut short, and a server error (5xx, 429), are retried ``retries`` times
  (with a doubling pause from ``backoff`` seconds) on a fresh connection; then a :class:`~features.errors.ShardError`
  names the URL, the byte range and the last error. A short body is never returned;
* a client error (404, 403, ...) is not retried: the error names the URL and the status;
* the sample's checksum is checked by the reader as for a local file.

One persistent connection per process (reopened after a fork, so each DataLoader worker has its own). Only the
standard library is used (``http.client``); proxies from the environment are not applied.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import time
from typing import Any
from urllib.parse import quote, urlsplit

from features.errors import ShardError, StoreError

__all__ = ["DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "HttpFiles", "is_url", "remote_settings"]

#: Retries of a failed request when nothing else is said (``VLM_HTTP_RETRIES`` overrides it).
DEFAULT_RETRIES = 3
#: Seconds a connection may wait for the server (``VLM_HTTP_TIMEOUT`` overrides it).
DEFAULT_TIMEOUT = 60.0

_RETRIED_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def is_url(location: object) -> bool:
    """Whether a store location is an ``http://`` or ``https://`` URL (anything else is a local path)."""
    return isinstance(location, str) and location.lower().startswith(("http://", "https://"))


def remote_settings(retries: int | None = None, timeout: float | None = None) -> tuple[int, float]:
    """``(retries, timeout)``: the given values, else ``VLM_HTTP_RETRIES`` / ``VLM_HTTP_TIMEOUT``, else the defaults.

    Raises:
        StoreError: an environment variable is not a number, or a value is out of range.
    """
    def pick(value: Any, name: str, default: float, kind: type) -> Any:
        if value is None:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return kind(default)
            try:
                value = kind(raw)
            except ValueError:
                raise StoreError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
        if value < 0 or (kind is float and value == 0):
            raise StoreError(f"{name.lower().removeprefix('vlm_http_')} must be {'>= 0' if kind is int else '> 0'}, "
                             f"got {value}")
        return kind(value)

    return pick(retries, "VLM_HTTP_RETRIES", DEFAULT_RETRIES, int), pick(timeout, "VLM_HTTP_TIMEOUT",
                                                                         DEFAULT_TIMEOUT, float)


class _Retry(Exception):
    """A failure worth another try (a dropped or cut connection, a server error)."""


class HttpFiles:
    """Whole files and byte ranges of the files under one base URL (a store folder on a web server).

    Args:
        base: The folder's URL (``https://host/path/store``; a trailing ``/`` is optional).
        retries: Further tries of a request after a connection error, a cut-short body or a server error.
        timeout: Seconds to wait for the server on each try.
        backoff: Pause before the first retry, doubled for each further one.

    Raises:
        StoreError: The URL is not ``http(s)://host/...``.
    """

    def __init__(self, base: str, *, retries: int | None = None, timeout: float | None = None,
                 backoff: float = 0.25) -> None:
        parts = urlsplit(base)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise StoreError(f"{base}: not an http:// or https:// URL of a store folder")
        if parts.query or parts.fragment:
            raise StoreError(f"{base}: a store URL names a folder; it cannot carry a query or a fragment")
        self.base = base.rstrip("/")
        self.retries, self.timeout = remote_settings(retries, timeout)
        self.backoff = backoff
        self._scheme = parts.scheme.lower()
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self._pid = os.getpid()
        #: Requests sent and retries made by this process (for benchmarks and tests).
        self.requests = self.retried = 0

    def url(self, name: str) -> str:
        """The URL of the file ``name`` of the folder."""
        return f"{self.base}/{name}"

    def get(self, name: str) -> bytes:
        """The whole file ``name`` (the manifest, a sidecar, an index file).

        Raises:
            StoreError: Naming the URL, when it is missing (404: "not found") or cannot be read after the retries.
        """
        return self._request(name, None, None, None)

    def read(self, name: str, offset: int, size: int, total: int) -> bytes:
        """Exactly ``size`` bytes of file ``name`` at ``offset``; ``total`` is the file size the manifest records.

        Raises:
            ShardError: Naming the URL and the byte range, when the server does not answer with those bytes of a file
                of ``total`` bytes after the retries.
        """
        if size == 0:
            return b""
        return self._request(name, offset, size, total)

    # -- internals --------------------------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: the socket is the parent's
            self._conn, self._pid = None, os.getpid()
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None and os.getpid() == self._pid:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None

    def _request(self, name: str, offset: int | None, size: int | None, total: int | None) -> bytes:
        url = self.url(name)
        what = f"{url} (bytes {offset}..{offset + size})" if offset is not None and size is not None else url
        error = ShardError if offset is not None else StoreError
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._once(name, offset, size, total, url, what, error)
            except _Retry as exc:
                last = str(exc)
                self._drop()
        tries = f"{self.retries + 1} tries" if self.retries else "1 try (retries: 0)"
        raise error(f"{what}: could not be read after {tries}: {last}; check the server, or raise the retries "
                    "(VLM_HTTP_RETRIES)")

    def _once(self, name: str, offset: int | None, size: int | None, total: int | None, url: str, what: str,
              error: type[StoreError]) -> bytes:
        headers = {"Accept-Encoding": "identity"}
        if offset is not None and size is not None:
            headers["Range"] = f"bytes={offset}-{offset + size - 1}"
        self.requests += 1
        try:
            conn = self._connection()
            conn.request("GET", f"{self._path}/{quote(name)}", headers=headers)
            response = conn.getresponse()
            status = response.status
            if status in _RETRIED_STATUS:
                response.read()
                raise _Retry(f"the server answered {status} {response.reason}")
            body = response.read()
        except http.client.IncompleteRead as exc:
            raise _Retry(f"the response was cut short ({len(exc.partial)} bytes arrived, {exc.expected} more "
                         "were due)") from None
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        if response.will_close:
            self._drop()
        if status == 404:
            kind = "shard" if offset is not None else "file"
            raise error(f"{url}: not found (404): the {kind} is not on the server; is the URL the store folder?")
        if offset is None:
            if status != 200:
                raise error(f"{url}: the server answered {status} {response.reason}; expected 200")
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) != len(body):
                raise _Retry(f"the response was cut short ({len(body)} of {length} bytes)")
            return body
        assert size is not None and total is not None
        if status == 200:
            raise error(f"{url}: the server ignored the Range request (200 instead of 206 Partial Content); serve the "
                        "store with a server that answers Range requests (nginx, Apache, S3/GCS), or stage it to a "
                        "local folder with `vlm features stage`")
        if status != 206:
            raise error(f"{what}: the server answered {status} {response.reason}; expected 206 Partial Content")
        found = _CONTENT_RANGE.fullmatch((response.getheader("Content-Range") or "").strip())
        if found is None:
            raise error(f"{what}: the 206 response has no valid Content-Range header "
                        f"({response.getheader('Content-Range')!r})")
        first, last, whole = int(found[1]), int(found[2]), found[3]
        if whole != "*" and int(whole) != total:
            raise error(f"{url} has {whole} bytes on the server but the store's manifest records {total}: the shard "
                        "was changed or replaced on the server; re-publish the whole store (or stage it again)")
        if first != offset or last != offset + size - 1:
            raise error(f"{what}: the server sent bytes {first}..{last + 1} instead")
        if len(body) != size:
            raise _Retry(f"the response was cut short ({len(body)} of {size} bytes)")
        return body

    def close(self) -> None:
        """Close this process's connection."""
        self._drop()

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawn-started DataLoader workers
        state = self.__dict__.copy()
        state["_conn"] = None
        return state

    def __repr__(self) -> str:
        return f"HttpFiles({self.base!r}, retries={self.retries}, timeout={self.timeout})"
