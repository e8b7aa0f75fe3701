"""Encoders (LXMERT, single stream) and the task models built on them."""

from vlm.models.lxmert import LxmertEncoder
from vlm.models.single_stream import SingleStreamEncoder
from vlm.models.tasks import (
    TASKS,
    ClassificationOutput,
    PreTrainingOutput,
    QuestionAnsweringOutput,
    VLMEncoderModel,
    VLMForClassification,
    VLMForPreTraining,
    VLMForQuestionAnswering,
    VLMModel,
    build_encoder,
)

__all__ = [
    "TASKS",
    "ClassificationOutput",
    "LxmertEncoder",
    "PreTrainingOutput",
    "QuestionAnsweringOutput",
    "SingleStreamEncoder",
    "VLMEncoderModel",
    "VLMForClassification",
    "VLMForPreTraining",
    "VLMForQuestionAnswering",
    "VLMModel",
    "build_encoder",
]
