"""Pretraining: masking, objectives, pretraining data, PretrainTask and pretrain() (DESIGN §3, §8)."""
