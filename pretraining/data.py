"""Pretraining data: texts (captions or questions with answers) joined by image id to a feature store, collated into
:class:`vlm.Batch` with the pretraining targets.

The texts (:class:`vlm.data.texts.TextExample` lists) are read by :func:`vlm.data.readers.read_texts`, the one reader
of a ``--data`` spec: ``easy-vqa`` (built in; its features are extracted on first use into a cache folder and reused
afterwards), ``easy-vqa-captions`` (built in), VQA v2, LXMERT's json list, COCO captions or a JSONL of texts; several
sources joined by ``+`` (``easy-vqa+easy-vqa-captions``, the presets' default) are read one after another.
``easy-vqa-captions`` stands in for the COCO/Visual Genome captions LXMERT pretrains on. easy-VQA has no captions, but
each image's colour and shape are told by its own answers (:func:`vlm.data.easy_vqa.read_image_attributes`), so every
image gets :data:`vlm.data.easy_vqa.CAPTION_TEMPLATES` ("a red circle", ...). Questions alone teach little grounding:
"is there a red shape?" names a colour the image mostly does not have, so neither masked words nor image-text matching
can be learnt from it; a caption's masked colour word can only be recovered from the image, and a mismatched caption
is really false.

The QA objective's answer table and soft targets follow the one answer rule of :mod:`vlm.data.vqa` (normalised
answers; one given answer scores 1.0; ten human answers use ``data.soft_score_rule``), the rule fine-tuning uses, so
every pretraining QA row carries over to a fine-tuning table built from the same answers.

Texts whose image is not in the store are counted, listed (the first few ids) and reported, never dropped silently.
A batch pads text to its longest text and regions to its most regions (``region_mask`` marks the real ones), so stores
with a varying number of regions per image work. Every random choice for example ``i`` in epoch ``e`` (masking, the
mismatched text, the donor regions) comes from a generator seeded by ``(seed, e, i)``: batches do not depend on the
batch size, the rank or a resume.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pretraining.masking import IGNORE, MaskingConfig, mask_regions, mask_tokens
from pretraining.negatives import MatchingConfig
from vlm.batch import Batch
from vlm.data.collate import TokenTable, join_to_store, pad_regions, read_samples, regions_of
from vlm.data.texts import TextExample
from vlm.data.vqa import AnswerVocab, answer_scores

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- answers


def answer_vocab(examples: list[TextExample], min_count: int = 1) -> AnswerVocab:
    """The QA objective's answer table: :meth:`vlm.data.vqa.AnswerVocab.build` over the texts that have answers."""
    return AnswerVocab.from_questions((e.answers for e in examples if e.answers), min_count)


# ------------------------------------------------------------------------------------------------------- dataset


class PretrainData:
    """Texts joined to a feature store; ``batch(indices, epoch)`` builds a masked, paired, padded ``Batch``.

    Args:
        examples: texts with their image ids.
        store: a ``features.FeatureStore`` (random access by image id).
        tokenizer: a fast BERT tokenizer.
        answers: the answer table of the QA objective (None or empty: no QA targets).
        masking: masking probabilities.
        max_text_len: texts are truncated to this many tokens (with ``[CLS]``/``[SEP]``).
        seed: seed of every random choice.
        train: apply masking and mismatching (False gives the plain pairs, for evaluation of other models).
    """

    def __init__(self, examples: list[TextExample], store: Any, tokenizer: Any,
                 answers: AnswerVocab | Sequence[str] | None,
                 masking: MaskingConfig | None = None, max_text_len: int = 40, seed: int = 0,
                 name: str = "data", soft_score_rule: str = "lxmert", matching: MatchingConfig | None = None) -> None:
        self.store, self.masking, self.seed = store, masking or MaskingConfig(), seed
        self.matching = matching or MatchingConfig()
        keep, self.report = join_to_store([e.image_id for e in examples], store, name)
        kept = [examples[i] for i in keep]
        images = sorted({e.image_id for e in kept})
        self.images = images
        code = {img: i for i, img in enumerate(images)}
        self.image_code = np.array([code[e.image_id] for e in kept], dtype=np.int64)
        # Tokenise once; keep the ids flat (no per-example Python objects held).
        table = TokenTable([e.text for e in kept], tokenizer, max_text_len)
        self.report.count_truncated(table, name)
        self.lengths, self.offsets, self.tokens = table.lengths, table.offsets, table.tokens
        # A mismatched text must not be one of the image's own texts either (easy-VQA asks "what shape is in the
        # image?" of every image: such a negative would be a true pair labelled false).
        text_code = {}
        self.text_code = np.array([text_code.setdefault(tuple(table.get(i).tolist()), len(text_code))
                                   for i in range(len(table))], dtype=np.int64)
        own: dict[int, set[int]] = {}
        for img, tc in zip(self.image_code.tolist(), self.text_code.tolist()):
            own.setdefault(img, set()).add(tc)
        self.own_texts = own
        # A mismatched text is of the same kind as the one it replaces (question for question, caption for caption):
        # drawn from all texts, a caption would mostly be swapped for a question, which describes no image, and the
        # matching objective would barely see a false caption.
        self.is_question = np.array([e.answers is not None for e in kept], dtype=bool)
        # The matching objective scores every text, or only those that assert something about the image.
        self.scored = ~self.is_question if self.matching.texts == "assertions" else np.ones(len(kept), dtype=bool)
        self._build_hard_negatives(kept, tokenizer, max_text_len, text_code)
        self.special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        vocab = tokenizer.get_vocab()
        bracketed = [i for t, i in vocab.items() if t.startswith("[") and t.endswith("]")]
        self.first_word_id = (max(bracketed) + 1) if bracketed else 0  # random replacements avoid [unused*]
        self.answers = answers if isinstance(answers, AnswerVocab) else AnswerVocab(answers or [])
        self.answer_rows: list[dict[int, float]] = [
            answer_scores(e.answers, self.answers, soft_score_rule)[0] if e.answers and len(self.answers) else {}
            for e in kept]

    def _build_hard_negatives(self, kept: list[TextExample], tokenizer: Any, max_text_len: int,
                              text_code: dict[tuple[int, ...], int]) -> None:
        """Tokenise once every one-word-swapped variant of every assertion, for the groups with a share > 0:
        ``var_start[i, g]`` / ``var_count[i, g]`` index ``var_tokens`` (a :class:`TokenTable`); ``var_code`` gives
        each variant's text code, so a variant that is one of the image's own texts is never a negative."""
        groups = self.matching.groups()
        shares = self.matching.shares()
        self.kind_p = np.asarray(shares)
        self.only_random = shares[0] == 1.0
        self.var_count = np.zeros((len(kept), len(groups)), dtype=np.int64)
        self.var_start = np.zeros((len(kept), len(groups)), dtype=np.int64)
        self.var_tokens: TokenTable | None = None
        self.var_code = np.zeros(0, dtype=np.int64)
        if self.only_random:
            return
        active = [g for g, p in zip(groups, shares[1:]) if p > 0]
        texts: list[str] = []
        for i, e in enumerate(kept):
            if self.is_question[i]:
                continue  # a question with a word swapped is still a question: no hard negatives
            variants = self.matching.variants(e.text, active)
            for g, name in enumerate(groups):
                v = variants.get(name, [])
                self.var_start[i, g], self.var_count[i, g] = len(texts), len(v)
                texts += v
        if texts:
            self.var_tokens = TokenTable(texts, tokenizer, max_text_len)
            self.var_code = np.array([text_code.setdefault(tuple(self.var_tokens.get(k).tolist()), len(text_code))
                                      for k in range(len(texts))], dtype=np.int64)

    def _hard_negative(self, i: int, g: int, rng: np.random.Generator) -> int | None:
        """A variant of text ``i`` with one word of group ``g`` swapped that is none of the image's own texts."""
        start, count = int(self.var_start[i, g]), int(self.var_count[i, g])
        own = self.own_texts[int(self.image_code[i])]
        for k in rng.permutation(count) if count else ():
            if int(self.var_code[start + k]) not in own:
                return start + int(k)
        return None

    def __len__(self) -> int:
        return len(self.image_code)

    def unmasked(self) -> PretrainData:
        """The same pairs (same seed, same negatives) with no word or region masked: what held-out matching and QA
        are scored on, since a model matches and answers whole texts (a true caption whose colour word is masked
        cannot be told from its colour-swapped negative)."""
        clean = copy.copy(self)
        clean.masking = dataclasses.replace(self.masking, token_prob=0.0, region_prob=0.0)
        return clean

    def example_images(self) -> list[str]:
        """The image id of each example (a streamed plan reads them in its own order)."""
        return [self.images[c] for c in self.image_code]


    def batch(self, indices: np.ndarray, epoch: int, store: Mapping[str, Any] | None = None) -> Batch:
        """Examples ``indices`` of ``epoch``, masked and paired.

        ``store``: where the examples' features are (default: the data's store). A streamed batch gives only its own
        images', so a swapped region then comes from another image of the batch (from any image of the data set
        otherwise); with one image in the batch, from that image.
        """
        indices = np.asarray(indices, dtype=np.int64)
        b = len(indices)
        cfg = self.masking
        rngs = [np.random.default_rng([self.seed, epoch, int(i)]) for i in indices]
        # --- pairing: a mismatched example takes the text of an example about a different image (of the same kind),
        # or (hard negative) its own text with one word of a group swapped; rows matching does not score keep theirs
        rows: list[np.ndarray] = []
        matched = np.ones(b, dtype=np.int64)
        kind = np.zeros(b, dtype=np.int64)  # Batch.match_kind: 0 true pair, 1 random, 2 + g word group g
        n = len(self)
        for r, (i, rng) in enumerate(zip(indices, rngs)):
            i = int(i)
            tokens = self.tokens[self.offsets[i]:self.offsets[i + 1]]
            if not self.scored[i]:
                matched[r] = IGNORE
            elif rng.random() < cfg.mismatch_prob:
                drawn = 0 if self.only_random else int(rng.choice(len(self.kind_p), p=self.kind_p))
                v = self._hard_negative(i, drawn - 1, rng) if drawn > 0 else None
                if v is not None:
                    tokens, matched[r], kind[r] = self.var_tokens.get(v), 0, 1 + drawn
                else:
                    for _ in range(32):
                        j = int(rng.integers(n))
                        if (self.is_question[j] == self.is_question[i]
                                and int(self.text_code[j]) not in self.own_texts[int(self.image_code[i])]):
                            tokens, matched[r], kind[r] = self.tokens[self.offsets[j]:self.offsets[j + 1]], 0, 1
                            break
            rows.append(tokens)
        # --- text: pad to the longest, mask tokens
        lens = np.array([len(x) for x in rows], dtype=np.int64)
        t = int(lens.max())
        ids = np.zeros((b, t), dtype=np.int64)
        u_tok = np.ones((b, t, 2), dtype=np.float32)
        rand_ids = np.zeros((b, t), dtype=np.int64)
        for r, (tokens, rng) in enumerate(zip(rows, rngs)):
            L = int(lens[r])
            ids[r, :L] = tokens
            u_tok[r, :L] = rng.random((L, 2), dtype=np.float32)
            rand_ids[r, :L] = rng.integers(self.first_word_id, self.vocab_size, L)
        attention = (np.arange(t)[None, :] < lens[:, None]).astype(np.int64)
        maskable = torch.from_numpy((attention == 1) & ~np.isin(ids, self.special))
        input_ids, mlm_labels = mask_tokens(torch.from_numpy(ids), maskable, torch.from_numpy(u_tok),
                                            torch.from_numpy(rand_ids), self.mask_id, cfg)
        if not cfg.mlm_mismatched:  # masked alike (an unmasked text would give its pair away), scored only if true
            mlm_labels[torch.from_numpy(matched == 0)] = IGNORE
        # --- regions: pad to the most regions, mask regions (donors from other images of the dataset)
        lookup = self.store if store is None else store
        samples = [(*regions_of(s), s["meta"])
                   for s in read_samples(lookup, [self.images[c] for c in self.image_code[indices]])]
        in_batch = np.unique(self.image_code[indices]) if store is not None else None
        feats, boxes, region_mask = pad_regions([(f, bx) for f, bx, _ in samples])
        k, d = feats.shape[1], feats.shape[2]
        donors = np.zeros((b, k, d), dtype=np.float32)
        u_reg = np.ones((b, k, 2), dtype=np.float32)
        obj = np.zeros((b, k), dtype=np.int64)
        obj_conf = np.zeros((b, k), dtype=np.float32)
        attr = np.zeros((b, k), dtype=np.int64)
        attr_conf = np.zeros((b, k), dtype=np.float32)
        labels = "objects_id" in samples[0][2]
        attrs = "attrs_id" in samples[0][2]
        for r, ((f, _, meta), rng, i) in enumerate(zip(samples, rngs, indices)):
            kk = f.shape[0]
            u_reg[r, :kk] = rng.random((kk, 2), dtype=np.float32)
            swap = (u_reg[r, :kk, 0] < cfg.region_prob) & (u_reg[r, :kk, 1] >= cfg.region_zero) & (
                u_reg[r, :kk, 1] < cfg.region_zero + cfg.region_swap)
            for slot in np.flatnonzero(swap):  # ~1.5% of regions: read one foreign region each
                if in_batch is None:
                    other = int(rng.integers(len(self.images)))
                    if other == self.image_code[i]:
                        other = (other + 1) % len(self.images)
                else:
                    pick = int(rng.integers(len(in_batch)))
                    if in_batch[pick] == self.image_code[i] and len(in_batch) > 1:
                        pick = (pick + 1) % len(in_batch)
                    other = int(in_batch[pick])
                of, _ = regions_of(lookup[self.images[other]])
                donors[r, slot] = of[int(rng.integers(of.shape[0]))]
            if labels:
                obj[r, :kk] = meta["objects_id"][:kk]
                obj_conf[r, :kk] = meta["objects_conf"][:kk]
            if attrs:
                attr[r, :kk] = meta["attrs_id"][:kk]
                attr_conf[r, :kk] = meta["attrs_conf"][:kk]
        feats_t = torch.from_numpy(feats)
        masked_feats, selected = mask_regions(feats_t, torch.from_numpy(region_mask), torch.from_numpy(u_reg),
                                              torch.from_numpy(donors), cfg)
        region_labels = {"mask": selected, "feat": feats_t}
        if labels:
            region_labels.update(obj=torch.from_numpy(obj), obj_conf=torch.from_numpy(obj_conf))
        if attrs:
            region_labels.update(attr=torch.from_numpy(attr), attr_conf=torch.from_numpy(attr_conf))
        # --- QA targets: matched pairs whose text is a question with answers in the table
        answer_targets = has_answer = None
        if self.answers:
            answer_targets = torch.zeros(b, len(self.answers))
            has = np.zeros(b, dtype=bool)
            for r, i in enumerate(indices):
                row = self.answer_rows[i]
                if matched[r] != 0 and row:  # its own text (scored as a true pair, or not scored)
                    has[r] = True
                    for a, s in row.items():
                        answer_targets[r, a] = s
            has_answer = torch.from_numpy(has)
        return Batch(input_ids=input_ids, attention_mask=torch.from_numpy(attention),
                     token_type_ids=torch.zeros(b, t, dtype=torch.long), region_feats=masked_feats,
                     region_boxes=torch.from_numpy(boxes), region_mask=torch.from_numpy(region_mask),
                     mlm_labels=mlm_labels, region_labels=region_labels, matched=torch.from_numpy(matched),
                     match_kind=torch.from_numpy(kind),
                     answer_targets=answer_targets, has_answer=has_answer)

    def label_info(self) -> dict[str, int]:
        """Classes of the detector labels in the store (``{}`` when it has none)."""
        sample = self.store[self.images[0]]["meta"]
        out = {}
        manifest = getattr(self.store, "manifest", {}) or {}
        if "objects_id" in sample:
            names = manifest.get("label_names") or manifest.get("extractor", {}).get("label_names")
            out["obj"] = len(names) if names else 1600
        if "attrs_id" in sample:
            out["attr"] = 400
        return out
