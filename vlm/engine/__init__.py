"""The training engine shared by pretraining, fine-tuning and the ablation (DESIGN §5)."""
