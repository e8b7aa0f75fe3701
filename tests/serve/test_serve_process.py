"""A real ``vlm serve`` process on a free loopback port, queried over HTTP with httpx: the routes, a bad request that
leaves it serving, the warning for a non-loopback host, and a graceful shutdown that answers the requests in
flight."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time
from pathlib import Path

import easy_vqa
import httpx
from serve_testing import free_port, running_server, stop

IMAGE = Path(easy_vqa.get_test_image_paths()[0]).read_bytes()


def _ask(base: str, question: str = "what color is the shape?") -> httpx.Response:
    return httpx.post(f"{base}/v1/predict", files={"image": ("x.png", IMAGE, "image/png")},
                      data={"question": question, "top_k": "2"}, timeout=60)


def test_vlm_serve_answers_over_http(live_server):
    base, proc, _ = live_server
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").status_code == 200
    info = httpx.get(f"{base}/v1/model").json()
    assert info["arch"] == "lxmert" and info["task"] == "vqa"
    r = _ask(base)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["answers"]) == 2 and len(body["regions"]) == 17
    again = httpx.post(f"{base}/v1/predict", data={"image_key": body["image_key"], "question": "what shape?"})
    assert again.json()["image"]["cached"] is True
    bad = httpx.post(f"{base}/v1/predict", files={"image": ("x.png", b"nope", "image/png")}, data={"question": "q"})
    assert bad.status_code == 400 and bad.json()["field"] == "image"
    assert _ask(base).status_code == 200  # still serving
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "vlm serve" in page.text
    assert httpx.get(f"{base}/docs").status_code == 200
    assert proc.poll() is None


def test_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vlm.cli", "serve", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "no config.json" in out.stderr and "Traceback" not in out.stderr


def test_another_host_than_loopback_warns_that_there_is_no_authentication(vqa_checkpoint, tmp_path):
    log = tmp_path / "serve.log"
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "serve", "--checkpoint", str(vqa_checkpoint),
                                 "--host", "0.0.0.0", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "no authentication" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert "no authentication" in log.read_text(), log.read_text()
    finally:
        stop(proc)


def test_sigterm_finishes_the_requests_in_flight(vqa_checkpoint, tmp_path):
    # a long batch wait keeps the requests inside the server when the signal comes
    with running_server(vqa_checkpoint, tmp_path / "serve.log", "--batch-wait-ms", "1500", "--max-batch",
                        "64") as (base, proc, log):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_ask, base, f"what color is shape {i}?") for i in range(4)]
            time.sleep(0.8)
            proc.send_signal(signal.SIGTERM)
            responses = [f.result(60) for f in futures]
        assert [r.status_code for r in responses] == [200] * 4
        assert all(r.json()["batch_size"] == 4 for r in responses)
        # uvicorn re-raises the signal once it has shut down gracefully, so the process ends "killed by SIGTERM"
        assert proc.wait(60) in (0, -signal.SIGTERM), log.read_text()
        assert "Traceback" not in log.read_text()
