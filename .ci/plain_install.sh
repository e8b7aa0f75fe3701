#!/usr/bin/env bash
# A plain install runs every command to the end: the package installed non-editable with --no-deps over the test venv,
# the test and notebook extras removed (torch and the core dependencies stay), then a tiny vlm finetune -> vlm ablate
# run from outside the checkout, which must write its plot. Packages and data files are listed by hand in
# pyproject.toml; this is what proves the list complete.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
"$PY" -m pip uninstall -y -q pytest nbclient nbformat ipykernel psutil
"$PY" -m pip install -q --no-deps --force-reinstall "$ROOT"
WORK=$(mktemp -d)
cd "$WORK"  # nothing of the checkout on sys.path
export HF_HUB_OFFLINE=1 VLM_CACHE="$WORK/cache"
"$PY" - <<'PY'
import importlib.util, sys
for name in ("vlm", "vlm.data", "features", "pretraining", "downstream", "vlm._presets"):
    spec = importlib.util.find_spec(name)
    origin = spec.origin or next(iter(spec.submodule_search_locations))  # a folder without __init__.py: no origin
    assert "site-packages" in origin, f"{name} imported from {origin}, not the installed wheel"
for extra in ("pytest", "nbclient"):
    assert importlib.util.find_spec(extra) is None, f"{extra} is still installed"
from importlib.resources import files
for package, data in (("downstream.serve", "static/index.html"), ("downstream.serve", "static/app.js"),
                      ("vlm._presets", "model/lxmert-mini.yaml"), ("vlm._presets", "finetune/lxmert-vqa.yaml")):
    assert (files(package) / data).is_file(), f"package data {package}/{data} is not in the wheel"
print("installed:", importlib.util.find_spec("vlm").origin)
PY
VLM="$ROOT/.venv/bin/vlm"
TINY=(model.hidden_size=32 model.num_attention_heads=4 model.intermediate_size=64 model.l_layers=1 model.r_layers=1
      model.x_layers=1 model.text_init=null train.batch_size=8 train.precision=fp32 data.train_limit=64
      data.eval_limit=16)
"$VLM" extract --source easy-vqa:train --backend patches --limit 48 --out feats/train --no-progress
"$VLM" extract --source easy-vqa:test --backend patches --limit 16 --out feats/test --no-progress
"$VLM" finetune --task vqa --arch lxmert --data easy-vqa --features feats/train --eval-features feats/test \
    --out run --max-steps 3 --no-progress "${TINY[@]}"
"$VLM" ablate --task vqa --checkpoint run/model --features feats/train --eval-features feats/test --out ablate \
    --train-baselines --no-progress "${TINY[@]}" train.max_steps=2
test -s ablate/ablation.png && test -s ablate/results.json
echo "plain install: vlm finetune -> vlm ablate wrote $(du -h ablate/ablation.png | cut -f1) ablation.png"
rm -rf "$WORK"
