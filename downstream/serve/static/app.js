// vlm serve's page: pick an image, ask, draw the answers as bars and the [CLS] attention over the image.
// Plain JS, no build step. The image is sent once; later questions send its image_key (sha256 of the file) and fall
// back to the file when the server's cache no longer has it (404 on image_key). A file over the server's body limit
// (read from GET /v1/model) is refused here, with the server's own 413 message, without being uploaded.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 400; // px of the longest side of the picture on the page

const state = { file: null, key: null, boxes: null, weights: null, maxBody: Infinity, tooLarge: "" };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadModel() {
  for (;;) {
    const r = await fetch("/readyz");
    if (r.ok) break;
    await new Promise((res) => setTimeout(res, 500));
  }
  const info = await (await fetch("/v1/model")).json();
  state.maxBody = info.limits.max_body_bytes;
  state.tooLarge = info.limits.body_too_large;
  $("model-line").textContent = `${info.name}: ${info.arch}, ${info.task} over ${info.num_labels} labels, ` +
    `${info.features.backend} features, on ${info.device} (${info.autocast})`;
  if (info.task === "classification") {
    $("question-label").textContent = "Statement";
    $("question").placeholder = "there is a red circle";
  }
  const examples = await (await fetch("/v1/examples")).json();
  if (examples.length) {
    $("examples-line").hidden = false;
    let next = 0;
    $("example").onclick = async () => {
      const ex = examples[next % examples.length];
      next += 1;
      const blob = await (await fetch(ex.image_url)).blob();
      await useFile(new File([blob], `example-${ex.index}.png`, { type: blob.type }));
      $("question").value = ex.question;
      $("example-note").textContent = `expected: ${ex.expected}`;
    };
  }
  $("submit").disabled = false;
}

async function useFile(file) {
  if (!file.type.startsWith("image/") && file.type !== "") {
    setStatus(`${file.name} is not an image`, true);
    return;
  }
  state.file = file;
  state.key = null;
  state.boxes = state.weights = null;
  $("answers").replaceChildren();
  $("timings").textContent = "";
  $("example-note").textContent = "";
  const bitmap = await createImageBitmap(file).catch(() => null);
  const picture = $("picture");
  const overlay = $("overlay");
  if (!bitmap) { // the browser cannot show it; the server may still read it (it will say if not)
    picture.width = overlay.width = 0;
    setStatus(tooLarge(file) ? state.tooLarge : `${file.name}: the browser cannot preview it`, tooLarge(file));
    return;
  }
  const scale = Math.min(MAX_SIDE / bitmap.width, MAX_SIDE / bitmap.height, 8);
  picture.width = overlay.width = Math.max(1, Math.round(bitmap.width * scale));
  picture.height = overlay.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = picture.getContext("2d");
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(bitmap, 0, 0, picture.width, picture.height);
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  $("stage").hidden = false;
  $("drop-hint").hidden = true;
  setStatus(tooLarge(file) ? state.tooLarge : "", tooLarge(file));
}

// The file alone is over the server's body limit: the request would be refused (413), so it is not sent.
function tooLarge(file) {
  return file.size > state.maxBody;
}

async function send(question, topK, useKey) {
  const form = new FormData();
  form.append("question", question);
  form.append("top_k", String(topK));
  if (useKey && state.key) form.append("image_key", state.key);
  else form.append("image", state.file, state.file.name || "image");
  const r = await fetch("/v1/predict", { method: "POST", body: form });
  return { status: r.status, body: await r.json().catch(() => ({ detail: `HTTP ${r.status}` })) };
}

async function ask(event) {
  event.preventDefault();
  if (!state.file) { setStatus("choose an image first", true); return; }
  if (tooLarge(state.file)) { setStatus(state.tooLarge, true); return; }
  const question = $("question").value;
  const topK = Number($("top-k").value) || 5;
  $("submit").disabled = true;
  setStatus("thinking…");
  try {
    let res = await send(question, topK, true);
    if (res.status === 404 && res.body.field === "image_key") res = await send(question, topK, false);
    if (res.status !== 200) {
      setStatus(res.body.detail || `HTTP ${res.status}`, true);
      return;
    }
    show(res.body);
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
  } finally {
    $("submit").disabled = false;
  }
}

function show(body) {
  state.key = body.image_key;
  const list = $("answers");
  list.replaceChildren();
  for (const a of body.answers) {
    const li = document.createElement("li");
    li.dataset.answer = a.answer;
    li.dataset.score = String(a.score);
    const label = document.createElement("span");
    label.className = "answer";
    label.textContent = a.answer;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.display = "block";
    bar.style.width = `${(100 * Math.min(1, Math.max(0, a.score))).toFixed(2)}%`;
    track.appendChild(bar);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = a.score.toFixed(4);
    li.append(label, track, score);
    list.appendChild(li);
  }
  const t = body.timings_ms;
  $("timings").textContent = `decode ${t.decode.toFixed(1)} ms · extract ${t.extract.toFixed(1)} ms · model ` +
    `${t.model.toFixed(1)} ms · total ${t.total.toFixed(1)} ms · batch of ${body.batch_size}` +
    (body.image.cached ? " · features cached" : "");
  setStatus(body.truncated ? `the question was cut to the model's ${body.max_question_tokens} tokens` : "");
  state.boxes = body.regions.map((r) => r.box);
  state.weights = body.regions.map((r) => r.attention);
  drawOverlay();
}

// Inferno-like colour ramp (black → purple → orange → pale yellow): brighter means more attention.
const STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
function ramp(v) {
  const x = Math.min(1, Math.max(0, v)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  return STOPS[i].map((c, j) => Math.round(c + f * (STOPS[i + 1][j] - c)));
}

// Each pixel is shaded by the attention mass of the boxes covering it (as vlm predict --attention draws it),
// min-max normalised; the most attended box is outlined.
function drawOverlay() {
  const overlay = $("overlay");
  const w = overlay.width, h = overlay.height;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  if (!state.boxes || !w || !h) return;
  const heat = new Float32Array(w * h);
  state.boxes.forEach((b, n) => {
    const x1 = Math.max(0, Math.round(b[0] * w)), y1 = Math.max(0, Math.round(b[1] * h));
    const x2 = Math.min(w, Math.round(b[2] * w)), y2 = Math.min(h, Math.round(b[3] * h));
    for (let y = y1; y < y2; y++) for (let x = x1; x < x2; x++) heat[y * w + x] += state.weights[n];
  });
  let lo = Infinity, hi = -Infinity;
  for (const v of heat) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi - lo;
  const img = ctx.createImageData(w, h);
  for (let p = 0; p < heat.length; p++) {
    const [r, g, b] = ramp(span > 0 ? (heat[p] - lo) / span : 0);
    img.data.set([r, g, b, 150], p * 4);
  }
  ctx.putImageData(img, 0, 0);
  const top = state.weights.indexOf(Math.max(...state.weights));
  const b = state.boxes[top];
  ctx.strokeStyle = "cyan";
  ctx.lineWidth = 2;
  ctx.strokeRect(b[0] * w + 1, b[1] * h + 1, (b[2] - b[0]) * w - 2, (b[3] - b[1]) * h - 2);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) useFile(e.target.files[0]); });
  drop.addEventListener("click", (e) => { if (e.target === drop) $("file").click(); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) useFile(e.dataTransfer.files[0]);
  });
  $("ask").addEventListener("submit", ask);
  $("show-overlay").addEventListener("change", (e) => $("stage").classList.toggle("no-overlay", !e.target.checked));
  loadModel().catch((err) => setStatus(`cannot reach the server: ${err}`, true));
}

setUp();
