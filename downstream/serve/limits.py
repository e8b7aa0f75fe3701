"""Request limits applied before FastAPI reads a body: the content type of the upload routes, and the body size,
from ``Content-Length`` and again counted while the bytes arrive (a chunked upload has no length to trust)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downstream.serve.errors import APIError, error_body

#: Form encodings the upload routes parse.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def send_error(send: Send, error: APIError) -> None:
    """Answer with ``error``'s JSON body (the request body is not read)."""
    body = json.dumps(error_body(str(error.detail), error.field, error.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: ``POST`` to ``form_paths`` must be a form (else 415), and no request body may pass
    ``max_body_bytes`` (else 413, naming the field ``body``).

    Args:
        app: The wrapped application.
        max_body_bytes: Largest body accepted, multipart overhead included.
        form_paths: Paths whose ``POST`` must carry one of :data:`FORM_TYPES`.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, form_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.form_paths = frozenset(form_paths)

    def _too_large(self) -> APIError:
        return APIError(413, "body", "body_too_large", f"body: the request is larger than the {self.max_body_bytes} "
                        "bytes allowed")

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
            await send_error(send, self._too_large())  # refused before a byte of the body is read
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
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
