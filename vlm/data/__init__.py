"""What both task packages read: the data layer below ``pretraining`` and ``downstream``.

* :mod:`vlm.data.collate`: texts tokenised once, texts joined to a feature store (counted), region padding;
* :mod:`vlm.data.vqa`: the VQA example type, answer normalisation, :class:`~vlm.data.vqa.AnswerVocab` (one file
  format), soft scores (one rule for pretraining and fine-tuning), the VQA v2 and LXMERT json readers;
* :mod:`vlm.data.references`: the official VQA evaluation's normalisation tables;
* :mod:`vlm.data.builtin`: the built-in data by name (three worlds: easy-VQA, Sort-of-CLEVR, scenes),
  :func:`~vlm.data.builtin.is_builtin`, and where a world's images are;
* :mod:`vlm.data.easy_vqa`: the built-in easy-VQA data, its per-image attributes, captions and statements;
* :mod:`vlm.data.scenes`: the generated worlds (analytic drawing, balanced question families, captions, statements)
  and the reader of the CLEVR v1.0 layout they are written in;
* :mod:`vlm.data.classification`: the classification example type, class lists, JSONL and Hateful Memes readers;
* :mod:`vlm.data.texts`: the pretraining text example type, the COCO captions and text JSONL readers;
* :mod:`vlm.data.readers`: a ``--data`` spec to examples, for every command (VQA, classification, pretraining
  texts), with the one sniffing of a ``.json`` file's layout.

It imports torch, numpy, pillow (the generated worlds' PNGs), the stdlib, ``easy_vqa``, ``vlm.batch``, ``vlm.errors`` and ``vlm.io`` only: no models, no
engine, no ``features`` (tests/test_architecture.py enforces it).
"""
