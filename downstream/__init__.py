"""Downstream tasks: VQA, classification, evaluation, prediction and the modality ablation (DESIGN §3, §7)."""
