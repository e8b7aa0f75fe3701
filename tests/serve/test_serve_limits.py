"""The body limit's middleware on its own (no model, no server): a refused body is read up to twice the limit and
for a bounded time before the 413 JSON is sent, so that a client sending its whole body at once gets the answer; a
client waiting for ``100 Continue`` or a body past the bound is answered without reading; and the 413 message says
the limit in MiB."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from downstream.serve.limits import MIB, RequestLimits, body_too_large_message, format_mib

LIMIT = 25_000
CHUNK = 10_000


async def _inner(scope, receive, send):  # the app behind the limits: reads the whole body, answers 200
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _post(chunks: int, *, length: int | None = None, expect: bool = False, delay: float = 0.0,
          **limits) -> tuple[int, dict[str, str], dict, int]:
    """POST a multipart body of ``chunks`` messages of :data:`CHUNK` bytes through :class:`RequestLimits`; returns
    ``(status, headers, JSON body, messages read)``."""
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if expect:
        headers.append((b"expect", b"100-continue"))
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers}
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read >= chunks:
            await asyncio.sleep(3600)  # a real server waits for a body that is not coming
        await asyncio.sleep(delay)
        read += 1
        return {"type": "http.request", "body": b"\0" * CHUNK, "more_body": read < chunks}

    async def send(message):
        sent.append(message)

    middleware = RequestLimits(_inner, max_body_bytes=LIMIT, form_paths=["/v1/predict"], **limits)
    asyncio.run(asyncio.wait_for(middleware(scope, receive, send), 30))
    answer = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], answer, json.loads(b"".join(m.get("body", b"") for m in sent[1:])), read


TOO_LARGE = {"detail": "body: the request is larger than the 0.023842 MiB allowed", "field": "body",
             "code": "body_too_large"}


def test_a_body_within_twice_the_limit_is_read_before_the_413():
    status, headers, body, read = _post(4, length=4 * CHUNK)
    assert (status, body, read) == (413, TOO_LARGE, 4)  # read to its end: the client is not reset while sending
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"


def test_a_length_past_twice_the_limit_or_a_client_waiting_for_100_continue_is_answered_without_reading():
    assert _post(100, length=100 * CHUNK)[::3] == (413, 0)
    assert _post(4, length=4 * CHUNK, expect=True)[::3] == (413, 0)  # reading would ask it for the body


def test_a_chunked_body_is_counted_then_read_up_to_twice_the_limit():
    status, headers, body, read = _post(100)  # no length: the app reads it and the limit counts
    assert (status, body, headers["connection"]) == (413, TOO_LARGE, "close")
    assert read == 6  # 30,000 bytes pass the limit; 60,000 pass twice it: no more is read
    assert _post(4)[::3] == (413, 4)  # within the bound: to its end


def test_a_trickling_body_is_read_for_a_bounded_time():
    start = time.monotonic()
    status, _, body, read = _post(5, length=5 * CHUNK, delay=0.2, drain_timeout_s=0.5)
    assert (status, body) == (413, TOO_LARGE) and 1 <= read < 5
    assert time.monotonic() - start < 2


def test_a_body_within_the_limit_reaches_the_app():
    assert _post(2, length=2 * CHUNK)[0] == 200
    assert _post(2)[0] == 200


@pytest.mark.parametrize("size, text", [(16 * MIB, "16 MiB"), (MIB // 2, "0.5 MiB"), (int(0.05 * MIB), "0.05 MiB"),
                                        (int(1.5 * MIB), "1.5 MiB"), (300_000, "0.286102 MiB (300000 bytes)")])
def test_the_limit_is_said_in_mib(size, text):
    assert format_mib(size) == text
    assert body_too_large_message(size) == f"body: the request is larger than the {text} allowed"
