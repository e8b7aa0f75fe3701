# Two commands for a fresh machine: `make demo` and `make test` (each creates .venv and installs when needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vlm-installed
ARCH   := $(shell uname -m)
# torch: the CUDA build from this machine's disk on x86_64 (runs on CPU too); a CPU build on aarch64.
ifeq ($(ARCH),aarch64)
TORCH  ?= torch==2.9.1 torchvision==0.24.1
else
TORCH  ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole story on built-in data, quick profile: pretrain LXMERT-mini on easy-VQA, fine-tune it for VQA, then the
# modality ablation (test-time and trained unimodal baselines) with its table and plot.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vlm pretrain --arch lxmert --config lxmert-quick --out runs/demo/pretrain --overwrite --no-progress
	HF_HUB_OFFLINE=1 $(BIN)/vlm finetune --task vqa --config lxmert-vqa-quick --out runs/demo/finetune --overwrite --no-progress
	HF_HUB_OFFLINE=1 $(BIN)/vlm ablate --task vqa --config lxmert-vqa-quick --checkpoint runs/demo/finetune/model \
		--train-baselines --out runs/demo/ablate --overwrite --no-progress

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python bench/model_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
