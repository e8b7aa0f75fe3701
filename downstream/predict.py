"""``vlm predict``: answer a question about any image with a fine-tuned VQA model, optionally drawing where the
model looked.

The image goes through the same feature extractor as the checkpoint's training data (backend and settings from the
model folder's ``features.json``) and the question is truncated to the text length the model was trained with (the
folder records it). The attention picture shades each region's box by the attention that the pooled
``[CLS]`` pays to it in the last layer: for LXMERT, the last cross-modality layer's text→region attention of
``[CLS]``; for the single stream, the last layer's self-attention of ``[CLS]`` over the region tokens (renormalised
over the regions). Heads are averaged.

The pieces here are the one inference path of a fine-tuned model folder, shared with ``vlm serve``
(:mod:`downstream.serve`): load the folder, build its extractor, extract an image in memory (no feature store is
written), batch texts with regions, and one forward that returns the logits and the ``[CLS]`` attention together.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

import vlm
from features.backends import Extractor, backend_options, create_extractor
from features.decode import decode_image
from features.extract import extract_decoded
from vlm.data.collate import make_batch, regions_of
from vlm.errors import DataError
from vlm.models.attention import cls_region_attention
from vlm.models.folder import ANSWERING_TASKS, LoadedModel, load_model_folder
from vlm.precision import autocast

logger = logging.getLogger(__name__)



def load_for_inference(folder: str | Path, device: str | torch.device = "cpu",
                       tasks: tuple[str, ...] = ANSWERING_TASKS) -> LoadedModel:
    """A fine-tuned model folder for ``vlm predict`` and ``vlm serve``: the model (eval mode, on ``device``), its
    labels, the features record that says how to extract a new image, and the text length questions are truncated
    to (:func:`vlm.models.folder.load_model_folder`).

    Raises:
        DataError: not a model folder of one of ``tasks``, or labels or extractor settings missing or not fitting.
    """
    return load_model_folder(folder, tasks=tasks, device=device, need_features=True)


def build_extractor(features_info: dict[str, Any], device: str | torch.device = "cpu") -> Extractor:
    """The feature extractor recorded in a model folder's ``features.json`` (its backend and settings; settings the
    backend does not take as options, such as derived ones like ``grid`` of ``patches``, are left out)."""
    backend = features_info.get("backend")
    if not backend:
        raise DataError("the checkpoint's features.json names no extraction backend; re-run vlm finetune")
    settings = features_info.get("settings") or {}
    accepted = set(backend_options(backend))
    options = {k: v for k, v in settings.items() if k in accepted and k != "device"}
    return create_extractor(backend, **options, device=device)


def image_regions(extractor: Extractor, image: str | Path | IO[bytes], max_pixels: int | None = None
                  ) -> dict[str, Any]:
    """Region features of one image, in memory: decoded as :func:`features.extract.extract` decodes, then run
    through ``extractor``. A store-like sample ``{"feats", "boxes", "meta"}``."""
    array, width, height = decode_image(image, extractor.image_size, max_pixels=max_pixels)
    return extract_decoded(extractor, [array], [(width, height)])[0]


def forward_with_attention(model: torch.nn.Module, batch: vlm.Batch) -> tuple[torch.Tensor, np.ndarray]:
    """One forward pass: the logits ``[B, A]`` and the head-averaged attention of the pooled ``[CLS]`` over the
    regions in the last layer, ``[B, K]`` (padded regions get ~0).

    For LXMERT the last cross-modality layer's text→region attention of ``[CLS]``; for the single stream the last
    layer's self-attention of ``[CLS]`` over the region tokens, renormalised over the regions
    (:func:`vlm.models.attention.cls_region_attention` of the encoder's ``attentions``).
    """
    with torch.inference_mode():
        out = model(batch, output_attentions=True)
        attention = _cls_attention(out.encoder_output)
    return out.logits, attention


def _cls_attention(encoder_output: vlm.EncoderOutput) -> np.ndarray:
    """``[B, K]``: the attention row of ``[CLS]`` (query 0) over the regions in the last layer, averaged over heads."""
    if not encoder_output.attentions:
        raise DataError("the model has no layer in which the text attends to the regions (LXMERT: no "
                        "cross-modality layers) to read attention from")
    return cls_region_attention(encoder_output).cpu().numpy()


def label_scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Scores ``[B, A]`` of the head's labels: the VQA head's sigmoid (answers are scored independently, as trained
    with soft-score BCE); the classifier's softmax (class probabilities, as trained with cross-entropy)."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "vqa" else logits.softmax(-1)


def top_labels(scores: torch.Tensor, labels: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` best ``(label, score)`` of one row of scores, best first."""
    top = scores.topk(min(k, len(labels)))
    return [(labels[int(i)], float(s)) for s, i in zip(top.values, top.indices)]


def predict(checkpoint: str | Path, image: str | Path, question: str, top_k: int = 5,
            attention_png: str | Path | None = None, precision: str = "auto") -> dict[str, Any]:
    """Top-``k`` answers with probabilities (sigmoid scores of the answer head) and, optionally, the attention PNG.
    The question is truncated to the text length the model was trained with (``truncated_to`` says when).

    The same code path as ``vlm serve`` (:mod:`downstream.serve`): :func:`load_for_inference`,
    :func:`build_extractor`, :func:`image_regions`, :func:`vlm.data.collate.make_batch`,
    :func:`forward_with_attention`; ``precision`` is the autocast of the forward pass, as ``vlm evaluate`` and
    ``vlm serve`` take it (``auto``: bf16 where the device runs it natively).
    """
    folder = Path(checkpoint)
    ckpt = load_for_inference(folder, tasks=("vqa",))
    if not question.strip():
        raise DataError("--question is empty")
    path = Path(image)
    if not path.is_file():
        raise DataError(f"--image {path}: file not found")
    extractor = build_extractor(ckpt.features)
    try:
        sample = image_regions(extractor, path)
    except Exception as exc:  # PIL raises many types for a file that is not a readable image
        raise DataError(f"--image {path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    batch, table = make_batch(vlm.load_tokenizer(), [question], [sample], ckpt.max_text_len)
    with autocast(torch.device("cpu"), precision):
        logits, weights = forward_with_attention(ckpt.model, batch)
    scores = label_scores(ckpt.task, logits)[0]
    result: dict[str, Any] = {"answers": top_labels(scores, ckpt.labels, top_k),
                              "truncated_to": table.max_len if table.truncated else None}
    if table.truncated:
        logger.warning("the question is longer than the %d tokens the model was trained with: truncated to them",
                       table.max_len)
    if attention_png:
        boxes = regions_of(sample)[1]
        draw_attention(image, boxes, weights[0], attention_png,
                       title=f"{question}  →  {result['answers'][0][0]}")
        result["attention"] = str(attention_png)
        result["region_attention"] = weights[0].tolist()
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
