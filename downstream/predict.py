"""``vlm predict``: answer a question about any image with a fine-tuned VQA model, optionally drawing where the
model looked.

The image goes through the same feature extractor as the checkpoint's training data (backend and settings from the
model folder's ``features.json``). The attention picture shades each region's box by the attention that the pooled
``[CLS]`` pays to it in the last layer: for LXMERT, the last cross-modality layer's text→region attention of
``[CLS]``; for the single stream, the last layer's self-attention of ``[CLS]`` over the region tokens (renormalised
over the regions). Heads are averaged.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vlm
from features.backends import backend_options
from features.extract import extract
from features.store import FeatureStore
from vlm.data.collate import TokenTable, pad_regions, regions_of
from vlm.data.vqa import AnswerVocab
from vlm.errors import DataError
from vlm.layers import CrossModalLayer

logger = logging.getLogger(__name__)


def extract_image(image: str | Path, features_info: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Region features of one image with the backend and settings recorded in ``features_info``."""
    path = Path(image)
    if not path.is_file():
        raise DataError(f"--image {path}: file not found")
    backend = features_info.get("backend")
    if not backend:
        raise DataError("the checkpoint's features.json names no extraction backend; re-run vlm finetune")
    settings = features_info.get("settings") or {}
    accepted = set(backend_options(backend))
    options = {k: v for k, v in settings.items() if k in accepted}
    listing = workdir / "image.txt"
    listing.write_text(f"image\t{path.resolve()}\n")
    manifest = extract(str(listing), workdir / "store", backend, options, part=(0, 1), device="cpu",
                       progress=False, num_workers=0, on_error="fail")
    if manifest.get("num_samples", 1) < 1:
        raise DataError(f"--image {path}: no features extracted")
    return FeatureStore(workdir / "store")["image"]


def _attention_to_regions(model: torch.nn.Module, batch: vlm.Batch) -> np.ndarray:
    """Head-averaged attention of the pooled ``[CLS]`` over the regions in the last layer: ``[K]``."""
    enc = model.encoder
    captured: dict[str, tuple] = {}
    if enc.config.arch == "lxmert":
        if not len(enc.cross_layers):
            raise DataError("the model has no cross-modality layers to read attention from")
        layer: torch.nn.Module = enc.cross_layers[-1]
    else:
        layer = enc.layers[-1]
    handle = layer.register_forward_pre_hook(lambda m, args: captured.__setitem__("args", args))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    args = captured["args"]
    with torch.no_grad():
        return _cls_attention(layer, args, batch)


def _cls_attention(layer: torch.nn.Module, args: tuple, batch: vlm.Batch) -> np.ndarray:
    if isinstance(layer, CrossModalLayer):
        text, _, region, region_bias = args
        q, _, _ = layer.cross.project(text)
        _, k, _ = layer.cross.project(region)
        scores = q[:, :, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + region_bias  # (1, nh, 1, K)
        attn = scores.float().softmax(-1)[0, :, 0].mean(0)
    else:
        x, bias = args
        q, k, _ = layer.attn.project(x)
        scores = q[:, :, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias  # (1, nh, 1, S)
        kk = batch.region_feats.shape[1]
        attn = scores.float().softmax(-1)[0, :, 0].mean(0)[2:2 + kk]  # [CLS] [IMG] v1..vK ...
        attn = attn / attn.sum().clamp_min(1e-12)
    return attn.cpu().numpy()


def predict(checkpoint: str | Path, image: str | Path, question: str, top_k: int = 5,
            attention_png: str | Path | None = None) -> dict[str, Any]:
    """Top-``k`` answers with probabilities (sigmoid scores of the answer head) and, optionally, the attention PNG."""
    folder = Path(checkpoint)
    model = vlm.from_pretrained(folder).eval()
    if model.task != "vqa":
        raise DataError(f"{folder}: a {model.task!r} checkpoint; vlm predict needs a fine-tuned VQA model folder")
    if not question.strip():
        raise DataError("--question is empty")
    answers = AnswerVocab.load(folder / "answers.json").answers
    if len(answers) != model.config.num_answers:
        raise DataError(f"{folder / 'answers.json'}: {len(answers)} answers for an answer head of "
                        f"{model.config.num_answers}; the answer table does not belong to these weights")
    info_path = folder / "features.json"
    if not info_path.is_file():
        raise DataError(f"{folder}: no features.json (the extractor settings); re-run vlm finetune")
    info = json.loads(info_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        sample = extract_image(image, info, Path(tmp))
    feats, boxes, region_mask = pad_regions([regions_of(sample)])
    tok = vlm.load_tokenizer()
    table = TokenTable([question], tok, model.config.max_position_embeddings)
    ids, mask = table.pad(np.arange(1))
    batch = vlm.Batch(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.zeros(ids.shape, dtype=torch.long), region_feats=torch.from_numpy(feats),
                      region_boxes=torch.from_numpy(boxes), region_mask=torch.from_numpy(region_mask))
    with torch.no_grad():
        scores = torch.sigmoid(model(batch).logits[0].float())
    top = scores.topk(min(top_k, len(answers)))
    result: dict[str, Any] = {"answers": [(answers[i], float(s)) for s, i in zip(top.values, top.indices)],
                              "truncated_to": table.max_len if table.truncated else None}
    if table.truncated:
        logger.warning("the question is longer than the model's %d text positions: truncated to them", table.max_len)
    if attention_png:
        weights = _attention_to_regions(model, batch)
        draw_attention(image, boxes[0], weights, attention_png, title=f"{question}  →  {result['answers'][0][0]}")
        result["attention"] = str(attention_png)
        result["region_attention"] = weights.tolist()
    return result


def draw_attention(image: str | Path, boxes: np.ndarray, weights: np.ndarray, out: str | Path, title: str) -> None:
    """The image under a heat map: each pixel is shaded by the attention mass of the boxes covering it (a region that
    covers the whole image adds the same amount everywhere); the most attended box is outlined."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from PIL import Image, ImageOps

    with Image.open(image) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    w, h = img.size
    scale = np.array([w, h, w, h])
    heat = np.zeros((h, w), dtype=np.float32)
    for box, wt in zip(boxes, weights):
        x1, y1, x2, y2 = np.clip(np.round(box * scale), 0, [w, h, w, h]).astype(int)
        heat[y1:y2, x1:x2] += wt
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    fig = Figure(figsize=(6, 6 * h / max(w, 1) + 0.6))  # no pyplot: the caller's backend is left alone
    ax = fig.subplots()
    ax.imshow(img)
    ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0.0, vmax=1.0)
    if len(weights):
        x1, y1, x2, y2 = boxes[int(np.argmax(weights))] * scale
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="cyan", linewidth=2))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
