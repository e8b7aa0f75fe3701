"""``vlm serve``'s application: ``create_app(checkpoint, settings=...)`` returns the FastAPI app that tests, the
command line and any ASGI server run.

Routes: ``POST /v1/predict`` (an image or the ``image_key`` of one sent before, a question, ``top_k``),
``GET /v1/model``, ``GET /v1/examples`` and ``/v1/examples/{n}/image``, ``GET /healthz``, ``GET /readyz``, the page
at ``/`` (``static/``), and the OpenAPI pages ``/docs`` and ``/redoc`` whose assets come from the
``fastapi-offline`` package, so they render without a network. Errors are JSON ``{"detail", "field", "code"}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from downstream.serve.errors import APIError, error_body
from downstream.serve.limits import RequestLimits
from downstream.serve.service import Answered, Service
from downstream.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PREDICT_PATH = "/v1/predict"


# ------------------------------------------------------------------------------------------------ response schemas


class Answer(BaseModel):
    answer: str = Field(description="an answer of the answer table, or a class name (classification)")
    score: float = Field(description="sigmoid score of the answer (VQA) or softmax probability of the class")


class Region(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 divided by the image's width and height", min_length=4,
                             max_length=4)
    attention: float = Field(description="attention of the pooled [CLS] in the last layer, heads averaged; the "
                                         "regions' values sum to 1")


class ImageInfo(BaseModel):
    key: str = Field(description="sha256 of the image file: send it as image_key to ask again without the file")
    width: int
    height: int
    cached: bool = Field(description="the region features came from the cache: no decode, no extraction")


class Timings(BaseModel):
    decode: float = Field(description="ms decoding the image (0 when cached)")
    extract: float = Field(description="ms extracting the region features of the batch's new images (0 when cached)")
    model: float = Field(description="ms of the forward pass of the micro-batch this request was part of")
    queue: float = Field(description="ms waiting for the worker")
    total: float = Field(description="ms from the request's form being read to the answer")


class PredictResponse(BaseModel):
    task: str = Field(description="vqa or classification")
    question: str
    answers: list[Answer]
    regions: list[Region]
    image: ImageInfo
    image_key: str = Field(description="same as image.key")
    truncated: bool = Field(description="the question was cut to the text length the model was trained with")
    question_tokens: int = Field(description="tokens the model saw, [CLS] and [SEP] included")
    max_question_tokens: int
    batch_size: int = Field(description="requests answered by the same forward pass")
    timings_ms: Timings


class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong, for a person")
    field: str | None = Field(description="the request field at fault: image, image_key, question, top_k, body, "
                                          "content-type")
    code: str = Field(description="a stable reason: not_an_image, bad_image, image_too_large, body_too_large, "
                                  "empty_question, missing, wrong_content_type, unknown_image_key, busy, loading...")


class ExampleInfo(BaseModel):
    index: int
    question: str
    expected: str
    image_url: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 503)}


# ---------------------------------------------------------------------------------------------------- the factory


def create_app(checkpoint: str | Path, *, settings: ServeSettings | None = None, load: bool = True) -> FastAPI:
    """The service over one fine-tuned model folder.

    Args:
        checkpoint: A VQA or classification model folder written by ``vlm finetune`` (``.../model``).
        settings: Limits, cache, batching, device (default :class:`ServeSettings`).
        load: Load the model when the app starts (on a thread: ``/readyz`` is 503 until it is in). False leaves
            that to the caller (``app.state.service.load()``), for tests that look at the app before.

    Raises:
        DataError: The folder is not a fine-tuned model folder (checked at once, before any weight is read).
    """
    service = Service(checkpoint, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load:
            service.load_in_background(getattr(app.state, "on_load_error", None))
        yield
        # uvicorn has stopped taking requests and waited for those in flight; finish whatever is still queued
        await run_in_threadpool(service.close, service.settings.shutdown_timeout_s)

    app = FastAPIOffline(title="vlm serve", version="1", lifespan=lifespan, static_url="/static-docs",
                         description="Ask questions about your own images with a fine-tuned vlm model and see "
                                     "where it looks. Errors are JSON {detail, field, code}.")
    app.state.service = service
    app.add_middleware(RequestLimits, max_body_bytes=service.settings.max_body_bytes, form_paths=[PREDICT_PATH])
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="the process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once the model is loaded, 503 before (or when loading failed)",
             responses={503: {"description": "loading or failed"}})
    async def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready"})
        status = "failed" if service.load_error else "loading"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/v1/model", summary="what is loaded: architecture, task, labels, feature settings, weights sha256",
             responses=ERRORS)
    async def model_info() -> dict[str, Any]:
        service.require_ready()
        return service.describe()

    @app.get("/v1/examples", summary="images the loaded model knows the like of, with a question each",
             response_model=list[ExampleInfo], responses=ERRORS)
    async def examples() -> list[ExampleInfo]:
        service.require_ready()
        return [ExampleInfo(index=i, question=e.question, expected=e.expected, image_url=f"/v1/examples/{i}/image")
                for i, e in enumerate(service.examples)]

    @app.get("/v1/examples/{index}/image", summary="the image of example `index`", response_class=FileResponse,
             responses=ERRORS)
    async def example_image(index: int) -> FileResponse:
        service.require_ready()
        if not 0 <= index < len(service.examples):  # an index into the server's own list, never a client path
            raise APIError(404, "index", "unknown_example", f"index: no example {index} "
                           f"({len(service.examples)} examples)")
        return FileResponse(service.examples[index].image)

    @app.post(PREDICT_PATH, summary="answer a question about an image, with the attention of each region",
              response_model=PredictResponse, responses=ERRORS)
    async def predict(
        question: Annotated[str, Form(description="the question (a statement, for a classification model)")],
        image: Annotated[UploadFile | None, File(description="the image file (PNG, JPEG, ...)")] = None,
        image_key: Annotated[str | None, Form(description="instead of image: the image_key of an image sent "
                                                           "before, while the server still caches it")] = None,
        top_k: Annotated[int, Form(description="how many answers")] = 5,
    ) -> PredictResponse:
        start = time.perf_counter()
        service.require_ready()
        data = await image.read() if image is not None else None
        job = await run_in_threadpool(service.prepare, data, image_key if data is None else None, question, top_k)
        future = service.submit(job)
        try:
            result: Answered = await asyncio.wait_for(asyncio.wrap_future(future),
                                                      service.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(503, None, "timeout", "the model did not answer in time; retry shortly") from None
        return PredictResponse(
            task=service.ckpt.task if service.ckpt else "", question=job.question,
            answers=[Answer(answer=a, score=s) for a, s in result.answers],
            regions=[Region(box=[float(v) for v in box], attention=float(w))
                     for box, w in zip(result.boxes, result.attention)],
            image=ImageInfo(key=job.key, width=result.width, height=result.height, cached=result.cached),
            image_key=job.key, truncated=job.truncated, question_tokens=job.question_tokens,
            max_question_tokens=service.ckpt.max_text_len if service.ckpt else 0, batch_size=result.batch_size,
            timings_ms=Timings(decode=round(job.decode_ms, 3), extract=round(result.extract_ms, 3),
                               model=round(result.model_ms, 3), queue=round(result.queue_ms, 3),
                               total=round((time.perf_counter() - start) * 1000, 3)))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail", "field", "code"}``; an unexpected one is logged with its traceback and
    answered with a bare 500 (no internals leave the server)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = getattr(exc, "field", "body" if exc.status_code in (400, 413, 415) else None)
        code = getattr(exc, "code", f"http_{exc.status_code}")
        return JSONResponse(error_body(str(exc.detail), field, code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        field = loc[0] if loc else None
        kind = first.get("type", "invalid")
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'query', 'path'))}: "
                            f"{e.get('msg', 'invalid')}" for e in errors)  # the client's input is not echoed
        return JSONResponse(error_body(message, field, "missing" if kind == "missing" else kind), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal error; the server log has the details", None, "internal"),
                            status_code=500)
