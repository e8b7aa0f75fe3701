"""``vlm predict``: answer a question about any image with a fine-tuned VQA model, optionally drawing where the
model looked.

The image goes through the same feature extractor as the checkpoint's training data (backend and settings from the
model folder's ``features.json``). The attention picture shades each region's box by the attention that the pooled
``[CLS]`` pays to it in the last layer: for LXMERT, the last cross-modality layer's text→region attention of
``[CLS]``; for the single stream, the last layer's self-attention of ``[CLS]`` over the region tokens (renormalised
over the regions). Heads are averaged.

The pieces here are the one inference path of a fine-tuned model folder, shared with ``vlm serve``
(:mod:`downstream.serve`): load the folder, build its extractor, extract an image in memory (no feature store is
written), batch texts with regions, and one forward that returns the logits and the ``[CLS]`` attention together.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

import vlm
from features.backends import Extractor, backend_options, create_extractor
from features.extract import decode_image, extract_decoded
from vlm.data.classification import ClassList
from vlm.data.collate import TokenTable, pad_regions, regions_of
from vlm.data.vqa import AnswerVocab
from vlm.errors import DataError
from vlm.layers import CrossModalLayer

logger = logging.getLogger(__name__)

#: Model tasks that answer (image, text) pairs, and how their logits become scores.
ANSWERING_TASKS = ("vqa", "classification")


@dataclass
class LoadedCheckpoint:
    """A fine-tuned model folder, loaded: the model (eval mode), its labels and how its features are made.

    Attributes:
        folder: The model folder.
        model: The VQA or classification model, in eval mode, on its device.
        labels: The answer table (VQA) or the class names (classification), in head order.
        features: The folder's ``features.json``: backend, settings, feature width, regions.
        max_text_len: Text positions of the model: longer questions are truncated to them.
    """

    folder: Path
    model: vlm.VLMModel
    labels: list[str]
    features: dict[str, Any] = field(default_factory=dict)
    max_text_len: int = 512

    @property
    def task(self) -> str:
        return self.model.task


def read_labels(folder: Path, task: str, head_size: int) -> list[str]:
    """The labels of a model folder's head: ``answers.json`` (VQA) or ``classes.json`` (classification; class ids
    as names when the folder has none), checked against the head's size.

    Raises:
        DataError: No answer table, or a table that does not fit the head.
    """
    if task == "vqa":
        path = folder / "answers.json"
        if not path.is_file():
            raise DataError(f"{folder}: no answers.json (the answer table of the head); re-run vlm finetune")
        labels = AnswerVocab.load(path).answers
    else:
        path = folder / "classes.json"
        labels = ClassList.load(path).names if path.is_file() else [str(i) for i in range(head_size)]
    if len(labels) != head_size:
        what = ("answers for an answer head", "the answer table") if task == "vqa" else ("classes for a classifier",
                                                                                        "the class list")
        raise DataError(f"{path}: {len(labels)} {what[0]} of {head_size}; {what[1]} does not belong to these weights")
    return labels


def read_features_info(folder: Path) -> dict[str, Any]:
    """The folder's ``features.json`` (how the training features were made), checked to name a backend.

    Raises:
        DataError: No file, or one without a backend.
    """
    path = folder / "features.json"
    if not path.is_file():
        raise DataError(f"{folder}: no features.json (the extractor settings); re-run vlm finetune")
    info = json.loads(path.read_text())
    if not isinstance(info, dict) or not info.get("backend"):
        raise DataError(f"{path}: names no extraction backend; re-run vlm finetune")
    return info


def load_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu",
                    tasks: tuple[str, ...] = ANSWERING_TASKS) -> LoadedCheckpoint:
    """Load a fine-tuned model folder for inference (``vlm predict`` and ``vlm serve``).

    Args:
        checkpoint: The model folder (``config.json``, ``model.safetensors``, ``features.json`` and the labels).
        device: Where the model runs.
        tasks: The model tasks the caller accepts.

    Raises:
        DataError: Not a model folder of one of ``tasks``, or labels or extractor settings missing or not fitting.
    """
    folder = Path(checkpoint)
    model = vlm.from_pretrained(folder).eval()
    if model.task not in tasks:
        raise DataError(f"{folder}: a {model.task!r} checkpoint; expected a fine-tuned "
                        f"{' or '.join(repr(t) for t in tasks)} model folder")
    head = model.config.num_answers if model.task == "vqa" else model.config.num_labels
    labels = read_labels(folder, model.task, head)
    info = read_features_info(folder)
    return LoadedCheckpoint(folder=folder, model=model.to(device), labels=labels, features=info,
                            max_text_len=model.config.max_position_embeddings)


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


def make_batch(tokenizer: Any, texts: list[str], samples: list[dict[str, Any]], max_text_len: int,
               device: str | torch.device = "cpu") -> tuple[vlm.Batch, TokenTable]:
    """Texts and the region samples of their images as one padded :class:`vlm.Batch`; the :class:`TokenTable` says
    how many texts were truncated to ``max_text_len``."""
    feats, boxes, region_mask = pad_regions([regions_of(s) for s in samples])
    table = TokenTable(texts, tokenizer, max_text_len)
    ids, mask = table.pad(np.arange(len(texts)))
    batch = vlm.Batch(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.zeros(ids.shape, dtype=torch.long), region_feats=torch.from_numpy(feats),
                      region_boxes=torch.from_numpy(boxes), region_mask=torch.from_numpy(region_mask))
    return batch.to(device), table


def forward_with_attention(model: torch.nn.Module, batch: vlm.Batch) -> tuple[torch.Tensor, np.ndarray]:
    """One forward pass: the logits ``[B, A]`` and the head-averaged attention of the pooled ``[CLS]`` over the
    regions in the last layer, ``[B, K]`` (padded regions get ~0).

    For LXMERT the last cross-modality layer's text→region attention of ``[CLS]``; for the single stream the last
    layer's self-attention of ``[CLS]`` over the region tokens, renormalised over the regions.
    """
    enc = model.encoder
    captured: dict[str, tuple] = {}
    if enc.config.arch == "lxmert":
        if not len(enc.cross_layers):
            raise DataError("the model has no cross-modality layers to read attention from")
        layer: torch.nn.Module = enc.cross_layers[-1]
    else:
        layer = enc.layers[-1]
    # the layer's inputs are caught on the way through, so the attention costs one more projection, not a forward
    handle = layer.register_forward_pre_hook(lambda m, args: captured.__setitem__("args", args))
    try:
        with torch.inference_mode():
            logits = model(batch).logits
            attention = _cls_attention(layer, captured["args"], batch)
    finally:
        handle.remove()
    return logits, attention


def _cls_attention(layer: torch.nn.Module, args: tuple, batch: vlm.Batch) -> np.ndarray:
    """``[B, K]``: the attention row of ``[CLS]`` (query 0) over the regions, averaged over heads."""
    if isinstance(layer, CrossModalLayer):
        text, _, region, region_bias = args
        q, _, _ = layer.cross.project(text)
        _, k, _ = layer.cross.project(region)
        q, k = q.float(), k.float()
        scores = q[:, :, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + region_bias.float()  # (B, nh, 1, K)
        attn = scores.softmax(-1)[:, :, 0].mean(1)  # (B, K)
    else:
        x, bias = args
        q, k, _ = layer.attn.project(x)
        q, k = q.float(), k.float()
        scores = q[:, :, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias.float()  # (B, nh, 1, S)
        kk = batch.region_feats.shape[1]
        attn = scores.softmax(-1)[:, :, 0].mean(1)[:, 2:2 + kk]  # [CLS] [IMG] v1..vK ...
        attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
    return attn.cpu().numpy()


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
            attention_png: str | Path | None = None) -> dict[str, Any]:
    """Top-``k`` answers with probabilities (sigmoid scores of the answer head) and, optionally, the attention PNG.

    The same code path as ``vlm serve`` (:mod:`downstream.serve`): :func:`load_checkpoint`, :func:`build_extractor`,
    :func:`image_regions`, :func:`make_batch`, :func:`forward_with_attention`.
    """
    folder = Path(checkpoint)
    ckpt = load_checkpoint(folder, tasks=("vqa",))
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
    logits, weights = forward_with_attention(ckpt.model, batch)
    scores = label_scores(ckpt.task, logits)[0]
    result: dict[str, Any] = {"answers": top_labels(scores, ckpt.labels, top_k),
                              "truncated_to": table.max_len if table.truncated else None}
    if table.truncated:
        logger.warning("the question is longer than the model's %d text positions: truncated to them", table.max_len)
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
