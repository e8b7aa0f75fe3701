"""``vlm serve``'s API in-process: FastAPI's TestClient over ``create_app`` and tiny fine-tuned model folders.

Every route, the answers and attention of ``vlm predict``'s code path, the image key and the feature cache,
micro-batching equal to one request at a time, and every bad request answered with a JSON 4xx naming its field while
the server keeps serving.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from pathlib import Path

import easy_vqa
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from downstream.predict import predict
from downstream.serve import ServeSettings, create_app
from downstream.serve.errors import APIError
from vlm.cli import main
from vlm.config import ConfigError

from serve_testing import png_header

IMAGES = easy_vqa.get_test_image_paths()
QUESTION = "what color is the shape?"


def _png(i: int = 0) -> bytes:
    return Path(IMAGES[i]).read_bytes()


def _ask(client: TestClient, image: bytes | None = None, question: str = QUESTION, **fields):
    files = {"image": ("x.png", image, "image/png")} if image is not None else None
    return client.post("/v1/predict", files=files, data={"question": question, **fields})


def _client(checkpoint: Path, **settings) -> TestClient:
    app = create_app(checkpoint, settings=ServeSettings(**{"precision": "fp32", **settings}))
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    assert app.state.service.wait_ready(120), app.state.service.load_error
    return client


@pytest.fixture(scope="module")
def client(vqa_checkpoint):
    c = _client(vqa_checkpoint, max_body_bytes=300_000, max_pixels=1_000_000)
    yield c
    c.__exit__(None, None, None)


def _error(response, status: int, field: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "field", "code"} and body["field"] == field, body
    assert "Traceback" not in response.text and "/work" not in response.text
    if code:
        assert body["code"] == code, body
    return body


# ------------------------------------------------------------------------------------------------------- routes


def test_healthz_at_once_readyz_503_until_the_model_is_loaded(vqa_checkpoint):
    app = create_app(vqa_checkpoint, settings=ServeSettings(precision="fp32"), load=False)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        _error(_ask(client, _png()), 503, None, "loading")
        _error(client.get("/v1/model"), 503, None, "loading")
        app.state.service.load()
        assert client.get("/readyz").status_code == 200
        assert _ask(client, _png()).status_code == 200


def test_predict_gives_vlm_predicts_answers_and_attention(client, vqa_checkpoint):
    r = _ask(client, _png(3), top_k="3")
    assert r.status_code == 200, r.text
    body = r.json()
    alone = predict(vqa_checkpoint, IMAGES[3], QUESTION, top_k=3, attention_png=None, precision="fp32")  # as the client
    assert [a["answer"] for a in body["answers"]] == [a for a, _ in alone["answers"]]
    np.testing.assert_allclose([a["score"] for a in body["answers"]], [s for _, s in alone["answers"]], atol=1e-5)
    labels = json.loads((vqa_checkpoint / "answers.json").read_text())["answers"]
    assert len(body["answers"]) == min(3, len(labels)) and all(a["answer"] in labels for a in body["answers"])
    scores = [a["score"] for a in body["answers"]]
    assert scores == sorted(scores, reverse=True)
    regions = body["regions"]
    assert len(regions) == 17  # the patches backend of the built-in features: whole image + 4x4 patches
    assert regions[0]["box"] == [0.0, 0.0, 1.0, 1.0]
    assert all(0.0 <= v <= 1.0 for reg in regions for v in reg["box"])
    assert sum(reg["attention"] for reg in regions) == pytest.approx(1.0, abs=1e-5)
    assert body["image_key"] == body["image"]["key"] == hashlib.sha256(_png(3)).hexdigest()
    assert body["image"]["width"] == 64 and body["image"]["height"] == 64 and body["image"]["cached"] is False
    assert set(body["timings_ms"]) == {"decode", "extract", "model", "queue", "total"}
    assert body["truncated"] is False and body["task"] == "vqa"


def test_attention_equals_vlm_predicts_region_attention(client, vqa_checkpoint, tmp_path):
    body = _ask(client, _png(5)).json()
    alone = predict(vqa_checkpoint, IMAGES[5], QUESTION, top_k=1, attention_png=tmp_path / "a.png", precision="fp32")
    np.testing.assert_allclose([reg["attention"] for reg in body["regions"]], alone["region_attention"], atol=1e-5)


def test_a_second_question_uses_the_image_key_and_skips_extraction(client):
    first = _ask(client, _png(7)).json()
    again = _ask(client, None, "what shape is in the image?", image_key=first["image_key"]).json()
    assert again["image"]["cached"] is True and again["timings_ms"]["extract"] == 0.0
    assert again["timings_ms"]["decode"] == 0.0 and again["image"]["width"] == 64
    resent = _ask(client, _png(7)).json()  # the same bytes again: found by content hash, not decoded
    assert resent["image"]["cached"] is True and resent["image_key"] == first["image_key"]


def test_an_evicted_image_key_is_404_and_the_image_can_be_sent_again(vqa_checkpoint):
    client = _client(vqa_checkpoint, cache_size=2)
    try:
        keys = [_ask(client, _png(i)).json()["image_key"] for i in range(3)]
        _error(_ask(client, None, image_key=keys[0]), 404, "image_key", "unknown_image_key")
        assert _ask(client, None, image_key=keys[2]).json()["image"]["cached"] is True
        assert _ask(client, _png(0)).status_code == 200
        assert client.get("/v1/model").json()["cache"]["size"] == 2
    finally:
        client.__exit__(None, None, None)


def test_model_describes_what_is_loaded(client, vqa_checkpoint):
    info = client.get("/v1/model").json()
    assert info["arch"] == "lxmert" and info["task"] == "vqa"
    assert info["labels"] == json.loads((vqa_checkpoint / "answers.json").read_text())["answers"]
    assert info["features"] == json.loads((vqa_checkpoint / "features.json").read_text())
    assert info["weights_sha256"] == hashlib.sha256((vqa_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert info["max_question_tokens"] == 40 and info["examples"] > 0
    assert str(vqa_checkpoint.parent.parent) not in json.dumps(info)  # no server paths


def test_examples_are_easy_vqa_test_images_served_by_index(client):
    examples = client.get("/v1/examples").json()
    assert examples and all(e["question"] and e["expected"] for e in examples)
    r = client.get(examples[0]["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    _error(client.get(f"/v1/examples/{len(examples)}/image"), 404, "index", "unknown_example")
    _error(client.get("/v1/examples/abc/image"), 422, "index")
    _error(client.get("/v1/examples/..%2f..%2fetc%2fpasswd/image"), 404, None)  # an index, never a path


def test_the_page_and_the_api_docs_need_no_network(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for doc in ("/docs", "/redoc"):
        html = client.get(doc).text
        assert "http://" not in html and "https://" not in html.replace("https://fastapi.tiangolo.com", ""), doc
    assert "/static-docs/swagger-ui-bundle.js" in client.get("/docs").text
    assert client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static-docs/redoc.standalone.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    form = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form


def test_a_classification_checkpoint_gives_class_probabilities(classify_checkpoint):
    client = _client(classify_checkpoint)
    try:
        info = client.get("/v1/model").json()
        assert info["task"] == "classification" and info["labels"] == ["false", "true"]
        body = _ask(client, _png(0), "there is a red circle", top_k="2").json()
        assert sorted(a["answer"] for a in body["answers"]) == ["false", "true"]
        assert sum(a["score"] for a in body["answers"]) == pytest.approx(1.0, abs=1e-5)
        assert client.get("/v1/examples").json()[0]["expected"] in ("true", "false")
    finally:
        client.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------ micro-batching


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
def test_a_micro_batch_answers_as_one_request_at_a_time(arch, request):
    checkpoint = request.getfixturevalue("vqa_checkpoint" if arch == "lxmert" else "vilbert_checkpoint")
    client = _client(checkpoint, max_batch=8, batch_wait_ms=0)
    service = client.app.state.service
    try:
        questions = ["what color is the shape?", "is there a circle?", "what shape is it?",
                     "is the shape " + "very " * 10 + "red?"]
        alone = [_ask(client, _png(i), q).json() for i, q in enumerate(questions)]
        gate = threading.Event()
        run = service._run_batch
        sizes = []

        def held(jobs):  # the worker waits until all four are queued, then answers them in one forward
            gate.wait(10)
            sizes.append(len(jobs))
            run(jobs)

        service.batcher._run_batch = held
        jobs = [service.prepare(_png(i), None, q, 5) for i, q in enumerate(questions)]
        futures = [service.submit(job) for job in jobs]
        gate.set()
        results = [f.result(30) for f in futures]
        service.batcher._run_batch = run
        assert sizes in ([1, 3], [4])  # the worker may have taken the first before the others were queued
        assert [r.batch_size for r in results][-1] == sizes[-1] > 1
        for one, batched in zip(alone, results):
            assert [a["answer"] for a in one["answers"]] == [a for a, _ in batched.answers]
            np.testing.assert_allclose([a["score"] for a in one["answers"]], [s for _, s in batched.answers],
                                       atol=1e-5)
            np.testing.assert_allclose([r["attention"] for r in one["regions"]], batched.attention, atol=1e-5)
    finally:
        client.__exit__(None, None, None)


def test_a_full_queue_answers_503_and_the_queued_requests_are_answered(vqa_checkpoint):
    client = _client(vqa_checkpoint, queue_size=2, max_batch=1, batch_wait_ms=0)
    service = client.app.state.service
    gate, run = threading.Event(), service._run_batch
    service.batcher._run_batch = lambda jobs: (gate.wait(10), run(jobs))
    try:
        futures = [service.submit(service.prepare(_png(0), None, QUESTION, 1))]
        deadline = time.monotonic() + 10
        while service.batcher.queued() and time.monotonic() < deadline:  # the worker holds the first one
            time.sleep(0.01)
        futures += [service.submit(service.prepare(_png(i), None, QUESTION, 1)) for i in (1, 2)]  # the 2 that wait
        r = _error(_ask(client, _png(4)), 503, None, "busy")
        assert "busy" in r["detail"]
        with pytest.raises(APIError):
            service.submit(service.prepare(_png(5), None, QUESTION, 1))
        gate.set()
        assert all(f.result(30).answers for f in futures)
        assert _ask(client, _png(4)).status_code == 200
    finally:
        gate.set()
        client.__exit__(None, None, None)


# -------------------------------------------------------------------------------------------------- bad requests


def test_not_an_image_is_400_naming_image(client):
    _error(_ask(client, b"this is text, not pixels"), 400, "image", "not_an_image")
    _error(_ask(client, b""), 400, "image", "empty_image")


def test_a_truncated_image_is_400_naming_image(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(buf, "JPEG")
    _error(_ask(client, buf.getvalue()[:len(buf.getvalue()) // 2]), 400, "image", "bad_image")
    _error(_ask(client, _png()[:200]), 400, "image", "bad_image")


@pytest.mark.parametrize("width, height", [(2000, 1000), (60_000, 60_000)])  # over our limit; over PIL's bomb limit
def test_a_decompression_bomb_is_refused_from_its_header(client, width, height):
    body = _error(_ask(client, png_header(width, height)), 413, "image", "image_too_large")
    assert "pixels" in body["detail"] or "too large" in body["detail"]


def test_a_body_over_the_limit_is_413_by_length_and_by_counting(client):
    big = b"\0" * 400_000
    _error(_ask(client, big), 413, "body", "body_too_large")

    def chunks():  # no Content-Length: the bytes are counted as they arrive
        boundary = b"--zz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="question"\r\n\r\nwhat?\r\n'
        yield boundary + b'Content-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for _ in range(8):
            yield b"\0" * 60_000
        yield b"\r\n--zz--\r\n"

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    _error(r, 413, "body", "body_too_large")


def test_empty_and_missing_questions_are_422_naming_question(client):
    _error(_ask(client, _png(), "   "), 422, "question", "empty_question")
    r = client.post("/v1/predict", files={"image": ("x.png", _png(), "image/png")})
    _error(r, 422, "question", "missing")


def test_a_missing_image_is_422_naming_image(client):
    _error(_ask(client, None), 422, "image", "missing_image")
    _error(client.post("/v1/predict", data={"question": "q", "image": "not a file"}), 422, "image")


def test_a_very_long_question_is_truncated_and_says_so(client):
    body = _ask(client, _png(), "what color is the shape " * 400).json()
    # truncated to the text length the model was trained with (data.max_text_len, recorded in the folder)
    assert body["truncated"] is True and body["question_tokens"] == body["max_question_tokens"] == 40
    huge = _ask(client, _png(), "why " * 20_000).json()  # past max_question_chars: cut before tokenising
    assert huge["truncated"] is True


@pytest.mark.parametrize("kind, body", [("application/json", b'{"question": "q"}'), ("text/plain", b"q"),
                                        (None, b"")])
def test_a_wrong_content_type_is_415(client, kind, body):
    headers = {"content-type": kind} if kind else {}
    _error(client.post("/v1/predict", content=body, headers=headers), 415, "content-type", "wrong_content_type")


@pytest.mark.parametrize("top_k, code", [("0", "bad_top_k"), ("1000", "bad_top_k"), ("many", None)])
def test_a_bad_top_k_is_422_naming_top_k(client, top_k, code):
    _error(_ask(client, _png(), top_k=top_k), 422, "top_k", code)


def test_a_bad_image_key_is_refused_and_never_a_path(client):
    _error(_ask(client, None, image_key="../../etc/passwd"), 422, "image_key", "bad_image_key")
    _error(_ask(client, None, image_key="0" * 64), 404, "image_key", "unknown_image_key")


def test_malformed_multipart_is_400_naming_the_body(client):
    r = client.post("/v1/predict", content=b"x" * 100, headers={"content-type": "multipart/form-data; boundary=zz"})
    _error(r, 400, "body")


def test_an_unexpected_error_is_a_json_500_without_internals_and_the_server_keeps_serving(client, caplog):
    model = client.app.state.service.ckpt.model
    forward = model.forward

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/private")

    model.forward = broken
    try:
        body = _error(_ask(client, _png()), 500, None, "internal")
        assert "secret" not in json.dumps(body)
    finally:
        model.forward = forward
    assert "secret internals" in caplog.text  # logged for the operator
    assert _ask(client, _png()).status_code == 200


def test_unknown_routes_and_methods_are_json(client):
    _error(client.get("/nope"), 404, None)
    _error(client.get("/v1/predict"), 405, None)


# ------------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("setting, needle", [
    (dict(max_batch=0), "serve setting max_batch: expected a number in (0, inf), got 0"),
    (dict(cache_size=-1), "serve setting cache_size: expected a number in [0, inf), got -1"),
    (dict(request_timeout_s=0.0), "serve setting request_timeout_s: expected a number in (0, inf), got 0.0"),
    (dict(precision="fp8"), "serve setting precision: expected one of auto, fp32, bf16, fp16, got 'fp8'"),
])
def test_settings_out_of_range_are_refused_naming_the_setting(tmp_path, setting, needle):
    with pytest.raises(ConfigError) as e:  # before the folder is looked at
        create_app(tmp_path, settings=ServeSettings(**setting), load=False)
    assert needle in str(e.value)


def test_the_cli_reports_a_bad_setting_in_one_line(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path), "--cache-size", "-1"]) == 2
    err = capsys.readouterr().err
    assert "vlm serve: error: serve setting cache_size: expected a number in [0, inf), got -1" in err
