"""What ``vlm serve`` loads once and runs per request: the model, its feature extractor, the feature cache and the
micro-batching worker, over the one inference path of :mod:`downstream.predict`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError

import vlm
from downstream.predict import (
    build_extractor,
    forward_with_attention,
    label_scores,
    load_for_inference,
    top_labels,
)
from downstream.serve.batching import Closed, MicroBatcher, QueueFull
from downstream.serve.cache import FeatureCache
from downstream.serve.errors import APIError
from downstream.serve.limits import body_too_large_message, format_mib
from downstream.serve.settings import ServeSettings
from features.backends import Extractor
from features.decode import decode_image
from features.errors import ImageTooLargeError
from features.extract import extract_decoded
from features.io import file_sha256
from vlm.data.collate import TokenTable, make_batch, regions_of
from vlm.engine.distributed import DistInfo, resolve_device
from vlm.models.folder import ANSWERING_TASKS, LoadedModel, check_folder
from vlm.precision import autocast, autocast_dtype

logger = logging.getLogger(__name__)

#: An image key is the sha256 of the image file's bytes, in hex.
IMAGE_KEY = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Job:
    """One request on its way through the worker."""

    key: str  # image content hash
    question: str
    top_k: int
    sample: dict[str, Any] | None  # region features when the cache had them
    image: np.ndarray | None  # decoded uint8 [S, S, 3] when it did not
    size: tuple[int, int]  # (width, height) of the original image
    truncated: bool  # the question was cut to the text length the model was trained with
    question_tokens: int  # tokens of the question as the model sees it ([CLS]/[SEP] included)
    decode_ms: float = 0.0
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Answered:
    """The worker's answer to one job."""

    answers: list[tuple[str, float]]
    boxes: np.ndarray  # [K, 4] normalised x1, y1, x2, y2
    attention: np.ndarray  # [K]
    width: int
    height: int
    cached: bool  # the features came from the cache (no decode, no extraction)
    extract_ms: float
    model_ms: float
    queue_ms: float
    batch_size: int


@dataclass
class Example:
    """An image the loaded model was trained on the like of, with a question (or statement) about it."""

    image: Path
    question: str
    expected: str


class Service:
    """The loaded checkpoint and everything that answers requests about it.

    Construction only checks the folder (cheap: a bad ``--checkpoint`` fails before the server starts);
    :meth:`load` builds the model, the extractor and the worker, once.

    Args:
        checkpoint: A fine-tuned model folder (VQA or classification).
        settings: Limits, cache and batching.
    """

    def __init__(self, checkpoint: str | Path, settings: ServeSettings) -> None:
        self.folder = Path(checkpoint)
        self.settings = settings.check()
        check_folder(self.folder, tasks=ANSWERING_TASKS, need_features=True)  # no weights read yet
        self.cache = FeatureCache(settings.cache_size)
        self.ckpt: LoadedModel | None = None
        self.extractor: Extractor | None = None
        self.tokenizer: Any = None
        self.device = torch.device("cpu")
        self.batcher: MicroBatcher[Job] | None = None
        self.examples: list[Example] = []
        self.weights_sha256 = ""
        self.load_error: str | None = None
        self.load_seconds = 0.0
        self._ready = threading.Event()
        # Fast tokenizers may change their truncation state inside a call: handlers and the worker take turns.
        self._tok_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------- loading

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def load(self) -> None:
        """Load the model, the extractor and the tokenizer, start the worker; sets :attr:`ready`."""
        start = time.perf_counter()
        self.device = resolve_device(self.settings.device, DistInfo())
        self.ckpt = load_for_inference(self.folder, device=self.device)
        self.extractor = build_extractor(self.ckpt.features, device=self.device)
        self.tokenizer = vlm.load_tokenizer()
        self.weights_sha256 = file_sha256(self.folder / "model.safetensors")
        self.examples = find_examples(self.folder, self.ckpt.task)
        self._warm_up()
        self.batcher = MicroBatcher(self._run_batch, max_batch=self.settings.max_batch,
                                    wait_s=self.settings.batch_wait_ms / 1000.0, queue_size=self.settings.queue_size)
        self.batcher.start()
        self.load_seconds = time.perf_counter() - start
        self._ready.set()
        logger.info("loaded %s (%s, %s) on %s in %.1fs", self.folder, self.ckpt.model.config.arch, self.ckpt.task,
                    self.device, self.load_seconds)

    def _warm_up(self) -> None:
        """One extraction and forward pass on a blank image, so the first request does not pay for the lazy set-up
        of the kernels (measured on the tiny test model: 400 ms for the first forward, 10 ms after)."""
        assert self.ckpt is not None and self.extractor is not None
        side = self.extractor.image_size
        sample = extract_decoded(self.extractor, [np.zeros((side, side, 3), dtype=np.uint8)], [(side, side)])[0]
        batch = make_batch(self.tokenizer, ["warm up"], [sample], self.ckpt.max_text_len)[0].to(self.device)
        with torch.inference_mode(), autocast(self.device, self.settings.precision):
            forward_with_attention(self.ckpt.model, batch)

    def load_in_background(self, on_error: Any = None) -> threading.Thread:
        """:meth:`load` on a thread (so ``/healthz`` answers at once and ``/readyz`` says when the model is in);
        a failure is logged, kept in :attr:`load_error`, and passed to ``on_error``."""

        def run() -> None:
            try:
                self.load()
            except Exception as exc:  # reported by /readyz and the log; the process owner decides to stop
                self.load_error = f"{type(exc).__name__}: {exc}"
                logger.error("cannot load %s: %s", self.folder, self.load_error)
                if on_error is not None:
                    on_error(exc)

        thread = threading.Thread(target=run, name="vlm-serve-load", daemon=True)
        thread.start()
        return thread

    def close(self, timeout: float | None = None) -> None:
        """Finish the requests queued, then stop the worker."""
        if self.batcher is not None and not self.batcher.close(timeout):
            logger.warning("the inference worker did not finish within %.0fs", timeout or 0)

    # ---------------------------------------------------------------------------------------------- requests

    def require_ready(self) -> None:
        if self.load_error:
            raise APIError(503, None, "model_failed", "the model could not be loaded; see the server log")
        if not self.ready:
            raise APIError(503, None, "loading", "the model is still loading; retry shortly",
                           headers={"Retry-After": "1"})

    def prepare(self, image: bytes | None, image_key: str | None, question: str, top_k: int) -> Job:
        """Check one request and make its job: question tokenised, image looked up by content hash or decoded.

        Runs on a handler thread, so decoding and tokenising happen in parallel with the worker's forward pass.

        Raises:
            APIError: The request names its fault (4xx).
        """
        assert self.ckpt is not None and self.extractor is not None
        if not question.strip():
            raise APIError(422, "question", "empty_question", "question: the question is empty")
        if not 1 <= top_k <= self.settings.max_top_k:
            raise APIError(422, "top_k", "bad_top_k", f"top_k: expected 1 to {self.settings.max_top_k}, got {top_k}")
        cut = len(question) > self.settings.max_question_chars
        if cut:  # bounded work for the tokenizer; far past the model's text positions anyway
            question = question[:self.settings.max_question_chars]
        with self._tok_lock:
            table = TokenTable([question], self.tokenizer, self.ckpt.max_text_len)
        tokens, truncated = int(table.lengths[0]), bool(table.truncated) or cut
        decode_ms, sample, array, size = 0.0, None, None, (0, 0)
        if image is not None:
            if not image:
                raise APIError(400, "image", "empty_image", "image: the file is empty")
            key = hashlib.sha256(image).hexdigest()
            sample = self.cache.get(key)
            if sample is None:
                start = time.perf_counter()
                array, width, height = self._decode(image)
                decode_ms, size = (time.perf_counter() - start) * 1000, (width, height)
        elif image_key is not None:
            key = image_key.strip().lower()
            if not IMAGE_KEY.match(key):
                raise APIError(422, "image_key", "bad_image_key",
                               "image_key: expected the 64 hex digits a previous answer returned as image_key")
            sample = self.cache.get(key)
            if sample is None:
                raise APIError(404, "image_key", "unknown_image_key",
                               f"image_key: not in the feature cache (it keeps the {self.cache.capacity} most "
                               "recent images); send the image again")
        else:
            raise APIError(422, "image", "missing_image", "image: send an image file (or the image_key of one sent "
                           "before)")
        if sample is not None:
            size = (int(sample["meta"]["width"]), int(sample["meta"]["height"]))
        return Job(key=key, question=question, top_k=top_k, sample=sample, image=array, size=size,
                   truncated=truncated, question_tokens=tokens, decode_ms=decode_ms)

    def _decode(self, data: bytes) -> tuple[np.ndarray, int, int]:
        assert self.extractor is not None
        try:
            return decode_image(io.BytesIO(data), self.extractor.image_size, max_pixels=self.settings.max_pixels)
        except ImageTooLargeError as exc:
            raise APIError(413, "image", "image_too_large", f"image: {exc}") from None
        except UnidentifiedImageError:
            raise APIError(400, "image", "not_an_image", "image: not an image in a format the server reads (PNG, "
                           "JPEG, GIF, WebP, BMP, TIFF...)") from None
        except Exception as exc:  # PIL raises many types for a damaged file; the client is told which kind
            raise APIError(400, "image", "bad_image", f"image: the image cannot be decoded: it is truncated or "
                           f"corrupt ({type(exc).__name__})") from None

    def submit(self, job: Job) -> Future:
        """Queue ``job`` for the worker.

        Raises:
            APIError: 503 when the queue is full or the service is shutting down.
        """
        assert self.batcher is not None
        try:
            return self.batcher.submit(job)
        except QueueFull as exc:
            raise APIError(503, None, "busy", f"the server is busy ({exc}); retry shortly",
                           headers={"Retry-After": "1"}) from None
        except Closed:
            raise APIError(503, None, "shutting_down", "the server is shutting down") from None

    def _run_batch(self, jobs: list[Job]) -> None:
        """The worker: extract the images not cached (each distinct image once), then one forward pass."""
        assert self.ckpt is not None and self.extractor is not None
        start = time.perf_counter()
        cached = [job.sample is not None for job in jobs]
        new: dict[str, Job] = {}
        for job in jobs:
            if job.sample is None:
                job.sample = self.cache.get(job.key)  # extracted since its handler looked?
                if job.sample is None:
                    new.setdefault(job.key, job)
        if new:
            samples = extract_decoded(self.extractor, [j.image for j in new.values()], [j.size for j in new.values()])
            fresh = dict(zip(new, samples))
            for key, sample in fresh.items():
                self.cache.put(key, sample)
            for job in jobs:
                if job.sample is None:
                    job.sample = fresh[job.key]
        for job in jobs:
            job.image = None  # the pixels are not needed any more
        extracted = time.perf_counter()
        with self._tok_lock:
            batch, _ = make_batch(self.tokenizer, [j.question for j in jobs], [j.sample for j in jobs],
                                  self.ckpt.max_text_len)
        batch = batch.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.settings.precision):
            logits, attention = forward_with_attention(self.ckpt.model, batch)
        scores = label_scores(self.ckpt.task, logits).cpu()
        done = time.perf_counter()
        extract_ms, model_ms = (extracted - start) * 1000 if new else 0.0, (done - extracted) * 1000
        for row, job in enumerate(jobs):
            _, boxes = regions_of(job.sample)
            job.future.set_result(Answered(
                answers=top_labels(scores[row], self.ckpt.labels, job.top_k), boxes=np.asarray(boxes),
                attention=attention[row, :len(boxes)], width=job.size[0], height=job.size[1], cached=cached[row],
                extract_ms=0.0 if cached[row] else extract_ms, model_ms=model_ms,
                queue_ms=(start - job.enqueued) * 1000, batch_size=len(jobs)))

    # ------------------------------------------------------------------------------------------------- about

    def describe(self) -> dict[str, Any]:
        """What is loaded: for ``GET /v1/model`` (no server paths: the folder's name only)."""
        assert self.ckpt is not None
        cfg = self.ckpt.model.config
        dtype = autocast_dtype(self.device, self.settings.precision)
        return {
            "name": self.folder.name if self.folder.name != "model" else f"{self.folder.parent.name}/model",
            "arch": cfg.arch, "task": self.ckpt.task,
            "labels": list(self.ckpt.labels), "num_labels": len(self.ckpt.labels),
            "score": "sigmoid per answer" if self.ckpt.task == "vqa" else "softmax over classes",
            "num_parameters": sum(p.numel() for p in self.ckpt.model.parameters()),
            "hidden_size": cfg.hidden_size, "max_question_tokens": self.ckpt.max_text_len,
            "features": self.ckpt.features, "weights_sha256": self.weights_sha256,
            "device": str(self.device), "autocast": str(dtype).removeprefix("torch.") if dtype else "fp32",
            "settings": dataclasses.asdict(self.settings), "cache": self.cache.stats(),
            "limits": {"max_body_bytes": self.settings.max_body_bytes,
                       "max_body": format_mib(self.settings.max_body_bytes),
                       "body_too_large": body_too_large_message(self.settings.max_body_bytes)},
            "batching": self.batcher.stats() if self.batcher else {}, "examples": len(self.examples),
            "load_seconds": round(self.load_seconds, 3),
        }


def find_examples(folder: Path, task: str, count: int = 6) -> list[Example]:
    """Test images of the built-in world the model folder's run was trained on (easy-VQA, Sort-of-CLEVR, scenes) with
    a question (VQA) or statement (classification) about each; else none (a user's model would not know them)."""
    from downstream.evaluate_model import read_run_config
    from vlm.data.builtin import builtin_world

    cfg = read_run_config(folder)
    world = builtin_world(cfg.train_spec()) if cfg is not None else None
    if world is None:
        return []
    if world == "easy-vqa":
        import easy_vqa

        from vlm.data.easy_vqa import build_statements, read_easy_vqa

        paths = easy_vqa.get_test_image_paths()
        image = {str(i): Path(paths[i]) for i in range(len(paths))}
        if task == "vqa":
            rows = [(e.image_id, e.question, e.multiple_choice_answer or "") for e in read_easy_vqa("test")]
        else:
            examples, _ = build_statements("test")
            rows = [(e.image_id, e.text, "true" if e.label == 1 else "false") for e in examples]
    else:
        from features.builtin import default_cache_dir
        from vlm.data.scenes import dataset_root
        from vlm.data.scenes.clevr import images_dir, read_questions, read_statements

        root = dataset_root(world, cfg.data.cache_dir or default_cache_dir())
        image = {p.stem: p for p in images_dir(root, "test").glob("*.png")}
        if task == "vqa":
            rows = [(e.image_id, e.question, e.answers[0] if e.answers else "") for e in read_questions(root, "test")]
        else:
            rows = [(e.image_id, e.text, "true" if e.label == 1 else "false") for e in read_statements(root, "test")]
    out: list[Example] = []
    seen: set[str] = set()
    for image_id, text, expected in rows:
        if image_id not in seen and image_id in image:
            seen.add(image_id)
            out.append(Example(image=image[image_id], question=text, expected=expected))
        if len(out) == count:
            break
    return out
