"""The model folder: the one module that reads and writes what a model folder holds, and builds models from it.

A model folder (``vlm finetune``'s and ``vlm pretrain``'s ``<run>/model``, every ``checkpoints/step-N``) holds::

    config.json         {"format": "vlm/2", "task": ..., "model": {ModelConfig fields}, "max_text_len": N}
    model.safetensors   the weights (no pickle)
    answers.json        the answer table of a QA head, in row order (vqa; pretraining with a QA head)
    classes.json        the class names of a classifier, in row order (classification)
    features.json       how the training features were made (backend, settings, width, regions)

``max_text_len`` is the text length the model was trained with: inference truncates questions to it, as training
did (transformers keeps ``model_max_length`` with the tokenizer for the same reason). Folders written before it was
recorded (format ``vlm/1``) load with a warning naming the length used: the run's config beside the folder when there
is one, else ``data.max_text_len``'s default.

Task names: folders store the model task (``encoder``, ``pretraining``, ``vqa``, ``classification``); the command
line says ``classify`` for ``classification`` (:func:`model_task`, :func:`command_task`).
"""

from vlm.models.folder.build import (
                                     LoadedModel,
                                     build_model,
                                     count_parameters,
                                     create_model,
                                     from_pretrained,
                                     load_model_folder,
                                     load_weights,
)
from vlm.models.folder.files import (
                                     ANSWERING_TASKS,
                                     ANSWERS_NAME,
                                     CLASSES_NAME,
                                     CONFIG_NAME,
                                     FEATURES_NAME,
                                     FORMAT,
                                     WEIGHTS_NAME,
                                     FolderInfo,
                                     arch_of,
                                     check_folder,
                                     command_task,
                                     describe,
                                     is_model_folder,
                                     model_task,
                                     read_features,
                                     read_labels,
                                     resolve_folder,
                                     save_model_folder,
                                     text_len_of,
                                     write_model_files,
)

__all__ = ["ANSWERING_TASKS", "ANSWERS_NAME", "CLASSES_NAME", "CONFIG_NAME", "FEATURES_NAME", "FORMAT", "WEIGHTS_NAME",
           "FolderInfo", "LoadedModel", "arch_of", "build_model", "check_folder", "command_task", "count_parameters",
           "create_model", "describe", "from_pretrained", "is_model_folder", "load_model_folder", "load_weights",
           "model_task", "read_features", "read_labels", "resolve_folder", "save_model_folder", "text_len_of",
           "write_model_files"]
