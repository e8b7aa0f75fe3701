"""Helpers of the ``vlm serve`` tests (a module, not a conftest: the test files import it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from vlm_testing import TINY_MODEL

TINY = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
FAST = ["--max-steps", "2", "--no-progress", "train.batch_size=4", "train.precision=fp32", "train.log_every=1",
        "data.train_limit=16", "data.eval_limit=8", *TINY]

#: ``--max-body-mb`` of the ``small_body_server`` fixture, and the message of its 413
SMALL_BODY_MB = "0.5"
SMALL_BODY_MESSAGE = "body: the request is larger than the 0.5 MiB allowed"


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` RGB pixels, with no pixel data: a decompression bomb's shape
    (a real one compresses a huge image into a small file; the header is all the server may read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND",
                                                                                                           b"")


@contextlib.contextmanager
def running_server(checkpoint: Path, log: Path, *extra: str, ready_timeout: float = 180.0
                   ) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """Start ``vlm serve --checkpoint ... --port <free>`` (its output to ``log``), wait for ``/readyz``, yield
    ``(base_url, process, log)``; always stopped by its pid (SIGTERM, then SIGKILL after 30 s)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "serve", "--checkpoint", str(checkpoint),
                                 "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vlm serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"vlm serve not ready after {ready_timeout}s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base, proc, log
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM the process by its pid, SIGKILL it if it has not exited after ``timeout``; its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode
