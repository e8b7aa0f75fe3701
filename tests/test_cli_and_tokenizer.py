"""The `vlm` command in-process and as a real console script; the default tokenizer."""

import os
import shutil
import subprocess
import sys

import pytest

import vlm
from vlm.cli import main
from vlm.errors import CheckpointError


def test_vlm_models_lists_presets_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["preset", "arch"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == set(vlm.list_models())
    # counts come from the real modules: LXMERT-base encoder is ~208M parameters, vilbert-base ~111M
    assert rows["lxmert-base"][5] == "207.9M" and rows["vilbert-base"][5] == "111.1M"
    assert rows["lxmert-mini"][3] == "6L/2R/2X"


def test_vlm_models_bad_override_is_a_clear_error(capsys):
    assert main(["models", "model.x_layerz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.x_layerz'" in err and "x_layers" in err and "Traceback" not in err


def test_console_script_help():
    exe = shutil.which("vlm", path=os.path.dirname(sys.executable))
    assert exe, "the vlm console script is not installed (pip install -e .)"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("models", "extract", "features", "demo"):
        assert cmd in res.stdout


def test_default_tokenizer_is_bert_base_uncased_wordpiece():
    tok = vlm.load_tokenizer()
    assert tok.is_fast and tok.vocab_size == 30522
    enc = tok("What color is the Triangle?")
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", "what", "color", "is", "the", "triangle", "?",
                                                            "[SEP]"]
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id) == (101, 102, 0, 103)


def test_tokenizer_from_local_folder_and_offline_error(tmp_path):
    tok = vlm.load_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    again = vlm.load_tokenizer(tmp_path / "tok")
    assert again("a red circle")["input_ids"] == tok("a red circle")["input_ids"]
    with pytest.raises(CheckpointError, match="not a local folder and not loadable"):
        vlm.load_tokenizer("no-such-org/no-such-tokenizer")


def test_demo_runs_every_preset_on_real_easy_vqa(tmp_path, capsys):
    assert main(["demo", "--num-images", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 questions" in out and "17 regions x 768-d features" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in vlm.list_models()]
    assert [r[0] for r in rows] == vlm.list_models()
    assert {r[2] for r in rows if r[0].endswith("-mini")} == {"all-minilm-l6-v2"}


def test_vlm_extract_and_features_go_through_the_vlm_command(tmp_path):
    """`vlm extract ...` / `vlm features ...` reach the features CLI with every option intact (real console script)."""
    exe = shutil.which("vlm", path=os.path.dirname(sys.executable))
    out = tmp_path / "feats"
    res = subprocess.run([exe, "extract", "--source", "easy-vqa:test", "--backend", "patches", "--out", str(out),
                          "--limit", "5", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([exe, "features", "inspect", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "images       5 in 1 of 1 shards (complete)" in res.stdout and "1 ok, 0 bad" in res.stdout
    res = subprocess.run([exe, "extract", "--source", str(tmp_path / "missing"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([exe, "extract", "--help"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("usage: vlm extract")
