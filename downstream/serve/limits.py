"""Request limits applied before FastAPI reads a body: the content type of the upload routes, and the body size,
from ``Content-Length`` and again counted while the bytes arrive (a chunked upload has no length to trust).

A body over the limit is answered 413 with the JSON error and the connection is closed. Many clients (Python's
urllib, httpx, scripts) send the whole body without waiting for ``100 Continue``: closing a connection whose
request is still arriving resets it, and such a client sees "connection reset" instead of the answer. So a refused
body is first read and thrown away while it stays within :data:`DRAIN_FACTOR` times the limit and
:data:`DRAIN_TIMEOUT_S` seconds; past that bound the 413 is sent and the connection closed without reading more. A
client that does wait (``Expect: 100-continue``: curl, for a large body) is answered at once, before it sends a byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downstream.serve.errors import APIError, error_body

#: Form encodings the upload routes parse.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
#: A refused body is read (and discarded) up to this many times the limit before the 413 is sent; a larger one is not.
DRAIN_FACTOR = 2
#: Seconds the reading of a refused body may take at most (a client that trickles its bytes is cut off then).
DRAIN_TIMEOUT_S = 10.0
MIB = 1024 * 1024


def format_mib(size: int) -> str:
    """``size`` bytes in MiB as ``--max-body-mb`` takes them: ``16 MiB``, ``0.5 MiB``, ``0.05 MiB``.

    The shortest decimal (up to 6 places) that ``int(value * 2**20)``, the command line's conversion, maps back to
    ``size``; a byte count no such decimal gives is written ``0.286102 MiB (300000 bytes)``.
    """
    mib = size / MIB
    for places in range(7):
        value = round(mib, places)
        if int(value * MIB) == size:
            return f"{value:.{places}f} MiB"
    return f"{mib:.6g} MiB ({size} bytes)"


def body_too_large_message(max_body_bytes: int) -> str:
    """The ``detail`` of the 413 ``body_too_large`` answer (the page shows the same words, from ``GET /v1/model``)."""
    return f"body: the request is larger than the {format_mib(max_body_bytes)} allowed"


async def send_error(send: Send, error: APIError) -> None:
    """Answer with ``error``'s JSON body and close the connection (the rest of the request body is not read)."""
    body = json.dumps(error_body(str(error.detail), error.field, error.code)).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()
             if k.lower() not in ("connection", "content-type", "content-length")]
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: ``POST`` to ``form_paths`` must be a form (else 415), and no request body may pass
    ``max_body_bytes`` (else 413, naming the field ``body``, and the connection is closed).

    Args:
        app: The wrapped application.
        max_body_bytes: Largest body accepted, multipart overhead included.
        form_paths: Paths whose ``POST`` must carry one of :data:`FORM_TYPES`.
        drain_factor: A refused body is read before answering while it is within this many times the limit.
        drain_timeout_s: How long reading a refused body may take at most.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, form_paths: Iterable[str] = (), *,
                 drain_factor: float = DRAIN_FACTOR, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.form_paths = frozenset(form_paths)
        self.drain_bytes = int(drain_factor * max_body_bytes)
        self.drain_timeout_s = drain_timeout_s

    def _too_large(self) -> APIError:
        # the connection is closed after it: what is left of the body is never read
        return APIError(413, "body", "body_too_large", body_too_large_message(self.max_body_bytes),
                        headers={"Connection": "close"})

    async def _drain(self, receive: Receive, received: int) -> None:
        """Read and discard the rest of a refused body while ``received`` stays within :attr:`drain_bytes` and the
        time within :attr:`drain_timeout_s`; stops at its end, at a disconnect, or at either bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while received <= self.drain_bytes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "POST" and scope["path"] in self.form_paths:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind not in FORM_TYPES:
                await send_error(send, APIError(415, "content-type", "wrong_content_type",
                                                f"content-type: expected multipart/form-data (fields image, "
                                                f"question, top_k), got {kind or 'none'}"))
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            # refused before the app sees it; a client waiting for "100 Continue" has sent nothing yet (reading
            # would ask it for the body), one that did not is sending it now: read it when within the bound
            waits = headers.get("expect", "").strip().lower() == "100-continue"
            if not waits and int(length) <= self.drain_bytes:
                await self._drain(receive, 0)
            await send_error(send, self._too_large())
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive, received)
                    # an HTTPException: FastAPI lets it through its body parsing to the app's error handler
                    raise self._too_large()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except APIError as exc:  # raised outside a route's error handling (e.g. by another middleware)
            if started or exc.code != "body_too_large":
                raise
            await send_error(send, exc)
