"""Image sources: ids kept exactly, deterministic order, named errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from features.errors import SourceError
from features.sources import resolve_source


def test_folder_ids_are_relative_paths_without_extension(tmp_path: Path, easy_train_paths: dict[int, str]) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(easy_train_paths[0], tmp_path / "COCO_val2014_000000000042.png")
    shutil.copy(easy_train_paths[1], tmp_path / "sub" / "b.JPG")  # extension case does not matter
    shutil.copy(easy_train_paths[2], tmp_path / "sub" / "deeper" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    records = resolve_source(str(tmp_path))
    assert [r.image_id for r in records] == ["COCO_val2014_000000000042", "sub/b", "sub/deeper/c"]
    assert records[2].path == str(tmp_path / "sub" / "deeper" / "c.png")


def test_folder_with_two_files_for_one_id_is_an_error(tmp_path: Path, easy_train_paths: dict[int, str]) -> None:
    shutil.copy(easy_train_paths[0], tmp_path / "a.png")
    shutil.copy(easy_train_paths[0], tmp_path / "a.jpg")
    with pytest.raises(SourceError, match="both give image id 'a'"):
        resolve_source(str(tmp_path))


def test_list_file_keeps_ids_and_resolves_relative_paths(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nimg 007.v2\tpics/a.png\n\n42\t/abs/b.png\n", encoding="utf-8")
    records = resolve_source(str(listing))
    assert [(r.image_id, r.path) for r in records] == [("img 007.v2", str(tmp_path / "pics" / "a.png")),
                                                        ("42", "/abs/b.png")]


@pytest.mark.parametrize(("content", "message"), [
    ("a\tx.png\nb x.png\n", r"line 2: expected 'image_id<TAB>path'"),
    ("a\tx.png\na\ty.png\n", r"line 2: image id 'a' already used on line 1"),
    ("\tx.png\n", r"line 1: expected"),
])
def test_list_file_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(content, encoding="utf-8")
    with pytest.raises(SourceError, match=message):
        resolve_source(str(listing))


def test_easy_vqa_split_must_be_named_and_ids_are_original_integers() -> None:
    with pytest.raises(SourceError, match="easy-vqa:train or --source easy-vqa:test"):
        resolve_source("easy-vqa")
    with pytest.raises(SourceError, match="unknown easy-vqa split 'val'"):
        resolve_source("easy-vqa:val")
    test = resolve_source("easy-vqa:test")
    assert len(test) == 1000
    assert [r.image_id for r in test[:3]] == ["0", "1", "2"]
    assert test[0].path.endswith("test/images/0.png")


def test_missing_source_names_the_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found: expected easy-vqa:train"):
        resolve_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="contains no images"):
        resolve_source(str(tmp_path / "empty"))
