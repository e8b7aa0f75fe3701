"""The page of ``vlm serve`` in a real headless Chromium: upload a photo, ask, and check that the page shows exactly
the API's answers and scores and that the attention overlay is brightest over the most attended box; and that a file
over the server's body limit is refused by the page, with the server's message, without being sent.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); selenium gets both paths, so it never
tries to download a browser. Without them the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import pytest
from PIL import Image

from serve_testing import SMALL_BODY_MB, SMALL_BODY_MESSAGE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
QUESTION = "what color is the shape?"


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,820"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER),
                                                               log_output=str(tmp_path / "chromedriver.log")))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


# the overlay's brightness (R+G+B) at the centre of each box, read from the canvas
CENTRES_JS = """
const canvas = document.getElementById('overlay');
const ctx = canvas.getContext('2d');
return arguments[0].map(b => {
  const x = Math.floor((b[0] + b[2]) / 2 * canvas.width), y = Math.floor((b[1] + b[3]) / 2 * canvas.height);
  const d = ctx.getImageData(x, y, 1, 1).data;
  return d[0] + d[1] + d[2];
});
"""


def test_the_page_answers_a_photo_and_draws_the_attention(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = live_server
    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    wait.until(ec.element_to_be_clickable((By.ID, "submit")))  # the model is loaded
    browser.find_element(By.ID, "file").send_keys(str(PHOTO))
    wait.until(lambda d: d.find_element(By.ID, "picture").get_attribute("width") not in (None, "0", "300"))
    question = browser.find_element(By.ID, "question")
    question.clear()
    question.send_keys(QUESTION)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answers li"))

    api = httpx.post(f"{base}/v1/predict", files={"image": ("photo.jpg", PHOTO.read_bytes(), "image/jpeg")},
                     data={"question": QUESTION, "top_k": "5"}, timeout=60).json()
    items = browser.find_elements(By.CSS_SELECTOR, "#answers li")
    shown = [(li.get_attribute("data-answer"), float(li.get_attribute("data-score"))) for li in items]
    assert shown == [(a["answer"], a["score"]) for a in api["answers"]]
    texts = [(li.find_element(By.CLASS_NAME, "answer").text, li.find_element(By.CLASS_NAME, "score").text)
             for li in items]
    assert texts == [(a["answer"], f"{a['score']:.4f}") for a in api["answers"]]

    boxes = [r["box"] for r in api["regions"]]
    weights = [r["attention"] for r in api["regions"]]
    parts = [i for i, b in enumerate(boxes) if b != [0.0, 0.0, 1.0, 1.0]]  # the whole-image box covers every centre
    brightness = browser.execute_script(CENTRES_JS, [boxes[i] for i in parts])
    top = max(range(len(parts)), key=lambda n: weights[parts[n]])
    assert brightness[top] == max(brightness), (brightness, [weights[i] for i in parts])
    assert max(brightness) > min(brightness)  # a heat map, not a flat wash

    # the screenshot goes to the test's folder; VLM_SCREENSHOT=path (e.g. docs/serve-page.png) keeps a copy there
    shot = Path(os.environ.get("VLM_SCREENSHOT") or tmp_path / "serve-page.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


# counts the page's requests to /v1/predict
COUNT_PREDICTS_JS = """
window.predicts = 0;
const fetchBefore = window.fetch;
window.fetch = (url, options) => {
  if (String(url).includes('/v1/predict')) window.predicts += 1;
  return fetchBefore(url, options);
};
"""


def test_the_page_refuses_a_file_over_the_body_limit_without_sending_it(browser, small_body_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, log = small_body_server
    big = tmp_path / "noise.png"  # random pixels do not compress: a real image over the limit
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (420, 560, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > float(SMALL_BODY_MB) * 1024 * 1024
    assert httpx.get(f"{base}/v1/model").json()["limits"]["body_too_large"] == SMALL_BODY_MESSAGE

    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    wait.until(ec.element_to_be_clickable((By.ID, "submit")))
    browser.execute_script(COUNT_PREDICTS_JS)
    posts = log.read_text().count("POST /v1/predict")
    browser.find_element(By.ID, "file").send_keys(str(big))
    status = browser.find_element(By.ID, "status")
    wait.until(lambda d: status.text == SMALL_BODY_MESSAGE)  # said when the file is chosen
    question = browser.find_element(By.ID, "question")
    question.clear()
    question.send_keys(QUESTION)
    browser.execute_script("document.getElementById('status').textContent = '';")
    browser.find_element(By.ID, "submit").click()  # asked anyway: refused again
    wait.until(lambda d: status.text == SMALL_BODY_MESSAGE)
    assert "error" in status.get_attribute("class")
    assert not browser.find_elements(By.CSS_SELECTOR, "#answers li")
    assert browser.execute_script("return window.predicts") == 0
    assert log.read_text().count("POST /v1/predict") == posts  # nothing reached the server

    # sent anyway, the server refuses it with the same words
    r = httpx.post(f"{base}/v1/predict", files={"image": ("noise.png", big.read_bytes(), "image/png")},
                   data={"question": QUESTION}, timeout=60)
    assert r.status_code == 413 and r.json()["detail"] == SMALL_BODY_MESSAGE
