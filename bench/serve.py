"""``vlm serve`` benchmark: latency, micro-batching and a warm service against a cold ``vlm predict``.

Prints one table, from one run (ratios are what to compare; these machines are noisy):

1. p50 / p95 latency of one request at 1 and at 8 concurrent clients, for a new image (decode + extract + forward)
   and for a cached one (``image_key``: forward only);
2. requests/s at 8 clients with micro-batching (``--max-batch 16``) vs one request per forward (``--max-batch 1``)
   — target >= 2x;
3. one image answered by a warm ``vlm serve`` vs a cold ``vlm predict`` (a new process: imports, model load,
   extraction, forward) — target >= 20x.

Each server is a real ``vlm serve`` process on a free loopback port, queried over HTTP with httpx.

    python bench/serve.py --checkpoint runs/demo/finetune/model [--requests 200]
    python bench/serve.py --quick          # trains a tiny model first; checks the script end to end, not speed
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = ["what color is the shape?", "what shape is in the image?", "is there a circle?", "is the shape red?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``vlm serve`` process, stopped by its pid when the block ends."""

    def __init__(self, checkpoint: str, log: Path, *flags: str) -> None:
        self.checkpoint, self.log, self.flags = checkpoint, log, flags

    def __enter__(self) -> str:
        import httpx

        port = _free_port()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "serve", "--checkpoint", self.checkpoint,
                                          "--port", str(port), *self.flags], stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return base
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise SystemExit(f"vlm serve did not get ready:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _post(client, base: str, n: int, images: list[bytes], cached_keys: list[str] | None) -> float:
    """One request; its latency in ms."""
    data = {"question": QUESTIONS[n % len(QUESTIONS)], "top_k": "3"}
    start = time.perf_counter()
    if cached_keys:
        r = client.post(f"{base}/v1/predict", data={**data, "image_key": cached_keys[n % len(cached_keys)]})
    else:
        r = client.post(f"{base}/v1/predict", data=data, files={"image": ("x.png", images[n % len(images)],
                                                                          "image/png")})
    ms = (time.perf_counter() - start) * 1000
    if r.status_code != 200:
        raise SystemExit(f"request {n}: HTTP {r.status_code}: {r.text}")
    return ms


def _load(base: str, clients: int, requests: int, images: list[bytes], cached_keys: list[str] | None
          ) -> tuple[list[float], float]:
    """``requests`` requests from ``clients`` threads; (latencies ms, requests/s)."""
    import httpx

    def worker(index: int) -> list[float]:
        with httpx.Client(timeout=120) as client:
            return [_post(client, base, n, images, cached_keys) for n in range(index, requests, clients)]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = [ms for part in pool.map(worker, range(clients)) for ms in part]
    return latencies, requests / (time.perf_counter() - start)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def _tiny_checkpoint(work: Path) -> str:
    """A 2-step fine-tuned tiny LXMERT on real easy-VQA features (for --quick)."""
    from features.extract import extract
    from vlm.cli import main

    stores = []
    for split, n in (("train", 24), ("test", 8)):
        extract(f"easy-vqa:{split}", work / f"feats-{split}", "patches", limit=n, part=(0, 1), device="cpu",
                progress=False, num_workers=0)
        stores.append(str(work / f"feats-{split}"))
    tiny = ["model.hidden_size=32", "model.num_attention_heads=4", "model.intermediate_size=64", "model.l_layers=1",
            "model.r_layers=1", "model.x_layers=1", "model.text_init=null", "train.batch_size=4",
            "train.precision=fp32", "data.train_limit=16", "data.eval_limit=8"]
    code = main(["finetune", "--task", "vqa", "--arch", "lxmert", "--features", stores[0], "--eval-features",
                 stores[1], "--out", str(work / "run"), "--max-steps", "2", "--no-progress", *tiny])
    if code:
        raise SystemExit(f"vlm finetune failed ({code})")
    return str(work / "run" / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a fine-tuned model folder (default with --quick: a tiny "
                                                           "one trained here)")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--quick", action="store_true", help="tiny model, 24 requests: checks the script runs")
    args = parser.parse_args()
    if not args.checkpoint and not args.quick:
        parser.error("give --checkpoint DIR (or --quick)")
    import easy_vqa
    import httpx

    requests = 24 if args.quick else args.requests
    paths = easy_vqa.get_test_image_paths()
    images = [Path(paths[i]).read_bytes() for i in range(min(len(paths), 2 * requests))]  # new: never repeated
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint or _tiny_checkpoint(work)
        with Server(checkpoint, work / "batched.log", "--max-batch", "16", "--cache-size",
                    str(4 * len(images))) as base:
            offset = 0
            for clients in (1, 8):
                fresh = images[offset:offset + requests]  # images this server has not seen
                offset += requests
                new, _ = _load(base, clients, len(fresh), fresh, None)
                keys = [httpx.post(f"{base}/v1/predict", data={"question": QUESTIONS[0]}, files={
                    "image": ("x.png", img, "image/png")}, timeout=120).json()["image_key"] for img in images[:8]]
                cached, _ = _load(base, clients, requests, images, keys)
                rows.append((f"latency ms, {clients} client(s), new image: p50 / p95",
                             f"{_p(new, 50):.1f} / {_p(new, 95):.1f}"))
                rows.append((f"latency ms, {clients} client(s), cached image: p50 / p95",
                             f"{_p(cached, 50):.1f} / {_p(cached, 95):.1f}"))
            keys = keys[:8]
            _, batched_rps = _load(base, 8, requests, images, keys)
            warm, _ = _load(base, 1, 5, images[-5:], None)
        with Server(checkpoint, work / "single.log", "--max-batch", "1", "--batch-wait-ms", "0") as base:
            keys = [httpx.post(f"{base}/v1/predict", data={"question": QUESTIONS[0]}, files={
                "image": ("x.png", img, "image/png")}, timeout=120).json()["image_key"] for img in images[:8]]
            _, single_rps = _load(base, 8, requests, images, keys)
        rows.append(("requests/s at 8 clients: micro-batching / one per forward",
                     f"{batched_rps:.1f} / {single_rps:.1f} = {batched_rps / single_rps:.2f}x (target >= 2x)"))
        photo = work / "image.png"
        photo.write_bytes(images[-1])
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vlm.cli", "predict", "--checkpoint", checkpoint, "--image", str(photo),
                        "--question", QUESTIONS[0]], check=True, capture_output=True)
        cold_ms = (time.perf_counter() - start) * 1000
        warm_ms = statistics.median(warm)
        rows.append(("one new image: cold vlm predict / warm vlm serve, ms",
                     f"{cold_ms:.0f} / {warm_ms:.1f} = {cold_ms / warm_ms:.0f}x (target >= 20x)"))
    width = max(len(name) for name, _ in rows)
    print(f"vlm serve benchmark ({'quick: tiny model, not a measurement' if args.quick else checkpoint}, "
          f"{requests} requests per row)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
