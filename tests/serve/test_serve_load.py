"""A bounded load test of a real ``vlm serve`` process on 127.0.0.1: 200 requests from 8 concurrent clients over more
distinct images than the feature cache holds. Each answer equals the same request sent alone (top-1 answer, scores
within 1e-3), requests share forward passes, and the server's resident memory after the run stays within 10% of
what it was after warm-up."""

from __future__ import annotations

import concurrent.futures
import itertools
from pathlib import Path

import easy_vqa
import httpx
import psutil

from serve_testing import running_server

CACHE = 16
IMAGES = [Path(easy_vqa.get_test_image_paths()[i]).read_bytes() for i in range(40)]  # 40 distinct > 16 cached
QUESTIONS = ["what color is the shape?", "what shape is in the image?", "is there a circle?"]
CASES = list(itertools.product(range(len(IMAGES)), range(len(QUESTIONS))))


def _ask(client: httpx.Client, base: str, case: tuple[int, int]) -> dict:
    image, question = case
    r = client.post(f"{base}/v1/predict", files={"image": ("x.png", IMAGES[image], "image/png")},
                    data={"question": QUESTIONS[question], "top_k": "3"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_200_requests_from_8_clients_answer_as_alone_in_bounded_memory(vqa_checkpoint, tmp_path):
    with running_server(vqa_checkpoint, tmp_path / "serve.log", "--cache-size", str(CACHE), "--max-batch", "8",
                        "--batch-wait-ms", "2") as (base, proc, _):
        server = psutil.Process(proc.pid)
        with httpx.Client() as client:  # warm-up: every case once, one at a time: the reference answers
            alone = {case: _ask(client, base, case) for case in CASES}
        rss_warm = server.memory_info().rss
        plan = [CASES[(7 * n) % len(CASES)] for n in range(200)]

        def run(worker: int) -> list[tuple[tuple[int, int], dict]]:
            with httpx.Client() as client:
                return [(case, _ask(client, base, case)) for case in plan[worker::8]]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = [item for part in pool.map(run, range(8)) for item in part]
        rss_after = server.memory_info().rss

    assert len(results) == 200
    for case, got in results:
        ref = alone[case]
        assert got["answers"][0]["answer"] == ref["answers"][0]["answer"], (case, got["answers"], ref["answers"])
        for a, b in zip(got["answers"], ref["answers"]):
            assert abs(a["score"] - b["score"]) <= 1e-3, (case, got["answers"], ref["answers"])
    assert max(got["batch_size"] for _, got in results) > 1  # concurrent requests shared forward passes
    assert any(not got["image"]["cached"] for _, got in results)  # more images than the cache holds
    assert abs(rss_after - rss_warm) <= 0.10 * rss_warm, (rss_warm, rss_after)
