"""Weight conversion between vlm and transformers / the original LXMERT release.

Import (:mod:`vlm.convert.importing`, :func:`from_transformers`) understands transformers ``LxmertModel`` /
``LxmertForPreTraining`` / ``LxmertForQuestionAnswering``, the original airsplay/lxmert checkpoints (config inferred
from the tensor shapes) and transformers ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining`` (into the
single-stream model). Export (:mod:`vlm.convert.exporting`, :func:`to_transformers`) turns an LXMERT model back into
the matching transformers class and refuses, with an :class:`ExportError` naming it, what no transformers class can
hold. Both directions read one table of key-mapping rules (:mod:`vlm.convert.rules`), so a model round-trips exactly.

Initialising the text side of a model from a BERT is model initialisation: :mod:`vlm.models.text_init`.
"""

from vlm.convert.exporting import HF_LAYER_NORM_EPS, ExportError, export_state_dict, to_transformers
from vlm.convert.importing import config_from_hf, config_from_state_dict, from_transformers, map_state_dict
from vlm.convert.rules import canonical_key

__all__ = [
    "HF_LAYER_NORM_EPS",
    "ExportError",
    "canonical_key",
    "config_from_hf",
    "config_from_state_dict",
    "export_state_dict",
    "from_transformers",
    "map_state_dict",
    "to_transformers",
]
