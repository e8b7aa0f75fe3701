"""Numbers users can trust and run folders nothing can damage: real commands on real files.

Run folders (refused without --resume/--overwrite, a refused command changes nothing, model folders published whole),
the command line's grammar (no flag swallows a KEY=VALUE override), values checked when loaded, truncation counted,
empty data named, soft scores outside [0, 1] refused, the class list taken from the checkpoint, and the last bare
KeyErrors of the store and the weight import.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import vlm
from vlm.cli import build_parser, main, split_overrides

from vlm_testing import TINY_MODEL

FIX = Path(__file__).parent / "downstream" / "fixtures"
TINY = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
FAST = ["--max-steps", "2", "--no-progress", "train.batch_size=4", "train.precision=fp32", "train.log_every=1",
        "data.train_limit=16", "data.eval_limit=8", "data.holdout_images=0", *TINY]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _finetune(stores, out: Path, *extra: str) -> int:
    return main(["finetune", "--task", "vqa", "--arch", "lxmert", "--data", "easy-vqa", "--features", stores[0],
                 "--eval-features", stores[1], "--out", str(out), *FAST, *extra])


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------- run folders


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(tmp_path, easy_vqa_stores, capsys):
    out = tmp_path / "run"
    assert _finetune(easy_vqa_stores, out) == 0
    before = _snapshot(out)
    assert _finetune(easy_vqa_stores, out, "train.lr=1e-3") == 2
    err = _err(capsys)
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before
    # --overwrite replaces the run: one metrics.jsonl of one run, the new config
    assert _finetune(easy_vqa_stores, out, "train.lr=1e-3", "--overwrite") == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(1) == 1
    assert "lr: 0.001" in (out / "config.yaml").read_text()


def test_out_may_be_new_empty_or_not_a_run_and_overwrite_deletes_only_runs(tmp_path, easy_vqa_stores, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _finetune(easy_vqa_stores, mine, "--overwrite") == 0  # not a run: nothing deleted, the run goes beside
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "config.yaml").is_file()
    file_out = tmp_path / "a-file"
    file_out.write_text("x")
    assert _finetune(easy_vqa_stores, file_out) == 2
    assert "is a file, not a run folder" in _err(capsys) and file_out.read_text() == "x"


def test_a_refused_resume_changes_nothing(tmp_path, easy_vqa_stores, capsys):
    out = tmp_path / "run"
    assert _finetune(easy_vqa_stores, out, "train.save_every=1") == 0
    before = _snapshot(out)
    # resuming the lxmert run with the single stream: one line naming both, not a list of weight names
    assert main(["finetune", "--task", "vqa", "--init", "vilbert-mini", "--data", "easy-vqa", "--features",
                 easy_vqa_stores[0], "--eval-features", easy_vqa_stores[1], "--out", str(out), *FAST,
                 "--resume", "train.max_steps=3"]) == 2
    err = _err(capsys)
    assert "this run is lxmert" in err and "vilbert" in err and len(err) < 400
    assert _snapshot(out) == before  # config.yaml not rewritten


def test_model_folder_is_published_whole(tmp_path):
    from vlm.io import published_dir

    final = tmp_path / "model"
    with published_dir(final) as tmp:
        (tmp / "a.json").write_text("1")
    with pytest.raises(RuntimeError):
        with published_dir(final) as tmp:
            (tmp / "a.json").write_text("2")
            raise RuntimeError("killed while writing")
    assert (final / "a.json").read_text() == "1"  # the old folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no half-written sibling left


# ------------------------------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("argv, resume, overrides", [
    (["pretrain", "--arch", "lxmert", "--resume", "train.lr=1e-4"], "latest", ["train.lr=1e-4"]),
    (["pretrain", "train.lr=1e-4", "--arch", "lxmert", "--resume", "runs/x", "model.x_layers=3"], "runs/x",
     ["train.lr=1e-4", "model.x_layers=3"]),
    (["finetune", "--task", "vqa", "--resume", "train.epochs=2", "--arch", "vilbert"], "latest", ["train.epochs=2"]),
    (["ablate", "pretrain.train.max_steps=3", "--arch", "lxmert", "train.lr=1e-5", "--train-baselines"], None,
     ["pretrain.train.max_steps=3", "train.lr=1e-5"]),
    (["models", "model.x_layers=3"], None, ["model.x_layers=3"]),
])
def test_no_flag_swallows_an_override_and_overrides_go_anywhere(argv, resume, overrides):
    parser = build_parser()
    rest, found = split_overrides(parser, argv)
    args = parser.parse_args(rest)
    assert found == overrides and getattr(args, "resume", None) == resume


def test_readme_command_lines_parse():
    """Every subcommand's README syntax line, with every flag given a value, parses into those values."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    parser = build_parser()
    cases = {
        "pretrain": ["--arch", "vilbert", "--config", "vilbert-quick", "--data", "easy-vqa", "--features", "f",
                     "--out", "o", "--max-steps", "5", "--resume", "r", "train.lr=1e-4"],
        "finetune": ["--task", "classify", "--arch", "lxmert", "--init", "i", "--data", "d", "--out", "o",
                     "--resume", "r", "train.lr=1e-4"],
        "evaluate": ["--checkpoint", "c", "--split", "test", "--data", "d", "--features", "f"],
        "predict": ["--checkpoint", "c", "--image", "i.png", "--question", "what?", "--top-k", "3", "--attention",
                    "a.png"],
        "ablate": ["--arch", "lxmert", "--checkpoint", "c", "--train-baselines", "--task", "vqa",
                   "--pretrain-config", "lxmert", "--out", "o", "train.lr=1e-4", "pretrain.train.lr=1e-4"],
    }
    for command, argv in cases.items():
        lines = readme.splitlines()
        start = next(n for n, line in enumerate(lines) if line.startswith(f"vlm {command} "))
        end = next(n for n in range(start + 1, len(lines)) if not lines[n].startswith(" "))
        line = " ".join(lines[start:end])  # the syntax line and its indented continuation
        for flag in (a for a in argv if a.startswith("--")):
            assert flag in line, f"README's vlm {command} line lacks {flag}"
        rest, overrides = split_overrides(parser, [command, *argv])
        args = parser.parse_args(rest)
        for flag, value in zip(argv, argv[1:]):
            if flag.startswith("--") and not value.startswith("--") and "=" not in value:
                got = getattr(args, flag[2:].replace("-", "_"))
                assert str(got) == value, (command, flag, got)
        assert overrides == [a for a in argv if "=" in a]


# ------------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--checkpoint", "c", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["predict", "--checkpoint", "c", "--image", "i", "--question", "q", "--top-k", "0"], "--top-k: expected an"),
    (["pretrain", "--arch", "lxmert", "--max-steps", "-5"], "--max-steps: expected an integer >= 1, got -5"),
])
def test_bad_numbers_on_the_command_line_are_refused(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("override, needle", [
    ("train.max_steps=-5", "train.max_steps: expected a number in [0, inf), got -5"),
    ("train.log_every=0", "train.log_every: expected a number in [1, inf), got 0"),
    ("data.max_text_len=1", "data.max_text_len: expected a number in [3, inf), got 1"),
])
def test_bad_config_values_are_refused_before_any_work(tmp_path, override, needle, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--arch", "lxmert", "--out", str(out), override]) == 2
    assert needle in _err(capsys) and not out.exists()


# ------------------------------------------------------------------------------------------------- data


def test_long_texts_are_truncated_and_counted(tmp_path, easy_vqa_stores, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert _finetune(easy_vqa_stores, out, "data.max_text_len=5") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["truncated"] > 0 and summary["train"]["max_text_len"] == 5
    assert summary["eval_data"]["truncated"] > 0
    assert "longer than max_text_len=5 tokens and were truncated" in caplog.text


def test_predict_says_when_the_question_is_truncated(tmp_path, easy_vqa_stores, capsys):
    import easy_vqa

    out = tmp_path / "run"
    assert _finetune(easy_vqa_stores, out) == 0
    capsys.readouterr()
    question = "what color is the shape " * 2000
    assert main(["predict", "--checkpoint", str(out / "model"), "--image", easy_vqa.get_test_image_paths()[0],
                 "--question", question, "--top-k", "2"]) == 0
    assert "the question was truncated to the 40 tokens the model was trained with" in capsys.readouterr().out


@pytest.mark.parametrize("name, text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n")])
def test_an_empty_data_file_is_named(tmp_path, easy_vqa_stores, name, text, capsys):
    path = tmp_path / name
    path.write_text(text)
    assert main(["finetune", "--task", "classify", "--arch", "vilbert", "--data", str(path), "--features",
                 easy_vqa_stores[0], "--out", str(tmp_path / "run"), *FAST]) == 2
    assert f"{path}: no examples in the data" in _err(capsys)
    assert main(["pretrain", "--arch", "lxmert", "--data", str(path), "--features", easy_vqa_stores[0],
                 "--out", str(tmp_path / "pre"), *FAST]) == 2
    assert f"{path}: no texts in the data" in _err(capsys)


def test_soft_scores_outside_zero_one_are_refused_naming_file_and_row(tmp_path):
    from vlm.data.vqa_formats import read_lxmert_json
    from vlm.errors import DataError

    rows = json.loads((FIX / "lxmert_vqa.json").read_text())
    rows[2]["label"] = {"yes": 5.0}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"bad\.json: row 2: field 'label': the score of answer 'yes' is 5\.0"):
        read_lxmert_json(path)


def _jsonl(path: Path, labels: list, images: list[str]) -> Path:
    path.write_text("".join(json.dumps({"image_id": i, "text": f"text {n}", "label": lab}) + "\n"
                            for n, (lab, i) in enumerate(zip(labels, images))))
    return path


def test_evaluation_takes_the_class_list_from_the_checkpoint(tmp_path, easy_vqa_stores, capsys):
    from features.store import FeatureStore

    images = sorted(FeatureStore(easy_vqa_stores[0]).ids(), key=int)[:16]
    train = _jsonl(tmp_path / "train.jsonl", [n % 2 for n in range(16)], images)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--arch", "vilbert", "--data", str(train), "--features",
                 easy_vqa_stores[0], "--out", str(out), *FAST]) == 0
    assert json.loads((out / "model" / "classes.json").read_text()) == {"classes": ["0", "1"]}
    only_ones = _jsonl(tmp_path / "ones.jsonl", [1] * 8, images[:8])
    assert main(["evaluate", "--checkpoint", str(out / "model"), "--data", str(only_ones), "--features",
                 easy_vqa_stores[0], "--out", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    preds = json.loads((tmp_path / "eval-predictions.json").read_text())
    truth = 100.0 * sum(p["label"] == 1 for p in preds) / len(preds)  # label 1 is class id 1 of the checkpoint
    assert metrics["accuracy"] == pytest.approx(truth)


def test_single_class_and_shifted_labels_are_named(tmp_path, easy_vqa_stores, caplog):
    from features.store import FeatureStore

    images = sorted(FeatureStore(easy_vqa_stores[0]).ids(), key=int)[:16]
    one = _jsonl(tmp_path / "one.jsonl", [1] * 16, images)
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "--task", "classify", "--arch", "vilbert", "--data", str(one), "--features",
                     easy_vqa_stores[0], "--out", str(tmp_path / "a"), *FAST]) == 0
    assert f"{one}: the training data has a single class (1)" in caplog.text
    assert "integer labels map to other class ids than their values (1→0)" in caplog.text
    caplog.clear()
    shifted = _jsonl(tmp_path / "shifted.jsonl", [1 + n % 2 for n in range(16)], images)
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "--task", "classify", "--arch", "vilbert", "--data", str(shifted), "--features",
                     easy_vqa_stores[0], "--out", str(tmp_path / "b"), *FAST]) == 0
    assert "(1→0, 2→1)" in caplog.text and "single class" not in caplog.text


# ------------------------------------------------------------------------------------------------- leftovers


def test_store_lookup_with_an_int_says_ids_are_strings(easy_vqa_stores):
    from features.store import FeatureStore

    store = FeatureStore(easy_vqa_stores[0])
    some = next(iter(store.ids()))
    with pytest.raises(KeyError, match=rf"image ids are strings, got the int {int(some)}; '{some}' is in the store"):
        store[int(some)]
    assert np.asarray(store[some]["feats"]).ndim == 2


def test_weight_import_names_a_missing_key():
    from transformers import BertConfig, BertModel

    from vlm.errors import WeightImportError

    sd = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64)).state_dict()
    sd.pop("embeddings.token_type_embeddings.weight")
    with pytest.raises(WeightImportError, match="has no 'embeddings.token_type_embeddings.weight'"):
        vlm.from_transformers(sd, visual_feat_dim=8)


# ------------------------------------------------------------------------------------------------- checkpoint vs command


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, easy_vqa_stores):
    out = tmp_path_factory.mktemp("vqa") / "run"
    assert _finetune(easy_vqa_stores, out) == 0
    return out


@pytest.fixture(scope="module")
def other_store(tmp_path_factory) -> str:
    """Patches of the same width (3 x 16 x 16) made another way: 32 px images instead of 64."""
    from features.extract import extract

    out = tmp_path_factory.mktemp("other") / "store"
    extract("easy-vqa:test", out, "patches", {"image_size": 32}, limit=8, part=(0, 1), device="cpu", progress=False,
            num_workers=0)
    return str(out)


def test_features_made_another_way_are_refused_naming_the_settings(vqa_run, other_store, tmp_path, capsys, caplog):
    model = vqa_run / "model"
    assert main(["evaluate", "--checkpoint", str(model), "--data", "easy-vqa", "--features", other_store,
                 "--out", str(tmp_path / "e.json")]) == 2
    err = _err(capsys)
    assert "made another way" in err and "settings.image_size: 64 vs 32" in err and "--allow-feature-mismatch" in err
    assert not (tmp_path / "e.json").exists()
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--checkpoint", str(model), "--data", "easy-vqa", "--features", other_store,
                     "--out", str(tmp_path / "e.json"), "--allow-feature-mismatch"]) == 0
    assert "settings.image_size: 64 vs 32" in caplog.text
    # fine-tuning from the checkpoint on such features: refused the same way
    assert main(["finetune", "--task", "vqa", "--init", str(model), "--data", "easy-vqa", "--features", other_store,
                 "--out", str(tmp_path / "ft"), *FAST]) == 2
    assert "settings.image_size: 64 vs 32" in _err(capsys)


def test_pretraining_checkpoints_record_their_features(tmp_path, easy_vqa_stores):
    out = tmp_path / "pre"
    assert main(["pretrain", "--arch", "lxmert", "--data", "easy-vqa", "--features", easy_vqa_stores[0],
                 "--out", str(out), *FAST]) == 0
    record = json.loads((out / "model" / "features.json").read_text())
    assert record["backend"] == "patches" and record["settings"]["image_size"] == 64


def test_an_older_checkpoint_without_a_record_is_warned_not_refused(vqa_run, tmp_path, easy_vqa_stores, caplog):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(vqa_run / "model", old)
    (old / "features.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--checkpoint", str(old), "--data", "easy-vqa", "--features", easy_vqa_stores[1],
                     "--out", str(tmp_path / "e.json")]) == 0
    assert "has no features.json (an older checkpoint)" in caplog.text


def test_ablate_names_a_checkpoint_that_disagrees(vqa_run, tmp_path, capsys):
    model = str(vqa_run / "model")
    assert main(["ablate", "--arch", "vilbert", "--checkpoint", model, "--out", str(tmp_path / "a")]) == 2
    assert f"--arch vilbert: the checkpoint {model} is a lxmert model" in _err(capsys)
    assert main(["ablate", "--task", "classify", "--checkpoint", model, "--out", str(tmp_path / "a")]) == 2
    err = _err(capsys)
    assert "is a vqa model; the model to ablate must already be a classification model" in err
    assert "vlm finetune --task classify --init" in err and not (tmp_path / "a").exists()


def test_init_accepts_a_run_folder(vqa_run, tmp_path, easy_vqa_stores, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "--task", "vqa", "--init", str(vqa_run), "--data", "easy-vqa", "--features",
                     easy_vqa_stores[0], "--out", str(tmp_path / "ft"), *FAST]) == 0
    assert "is a run folder: using its model" in caplog.text


def test_predict_names_an_answer_file_that_does_not_fit_the_head(vqa_run, tmp_path, capsys):
    import shutil

    import easy_vqa

    model = tmp_path / "model"
    shutil.copytree(vqa_run / "model", model)
    answers = json.loads((model / "answers.json").read_text())
    answers["answers"] = answers["answers"][:-1]
    (model / "answers.json").write_text(json.dumps(answers))
    assert main(["predict", "--checkpoint", str(model), "--image", easy_vqa.get_test_image_paths()[0],
                 "--question", "what shape?"]) == 2
    assert "answers for an answer head of" in _err(capsys)
