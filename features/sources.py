"""Image sources: where the images to extract come from.

Three kinds of source are understood, each named by one string (the ``--source`` argument of ``vlm extract``):

* ``easy-vqa:train`` / ``easy-vqa:test`` — the images shipped with the ``easy-vqa`` PyPI package. The two splits
  number their images from 0 each, so the ids overlap and the split must be named; a bare ``easy-vqa`` is refused. The
  image id is the original integer id written as a decimal string (``"0"``, ``"17"``, ...), the join key with the
  easy-VQA question files.
* a directory — searched recursively for images with a common extension (see :data:`IMAGE_EXTENSIONS`), following
  symlinks but entering each real folder once (a symlink loop is skipped and reported, not walked 40 times). The image
  id is the path relative to the directory, with ``/`` separators and without the extension; for a flat folder of COCO
  images that is the file stem (``COCO_val2014_000000000042``), the id used by LXMERT's annotation files.
* a list file — UTF-8 text, one ``image_id<TAB>path`` per line; relative paths are resolved against the list file's
  folder; blank lines and lines starting with ``#`` are ignored. Ids are kept exactly as written.

Ids must be unique and non-empty; duplicates are an error naming both occurrences. Records come in a deterministic
order (sorted for easy-VQA and folders, file order for list files), which the extractor relies on to cut the same
shards on every run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from features.errors import SourceError

__all__ = ["IMAGE_EXTENSIONS", "ImageRecord", "describe_source", "list_file_records", "folder_records",
           "easy_vqa_records", "resolve_source"]

logger = logging.getLogger(__name__)

#: File extensions (lower case) recognised as images when a folder is scanned.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

EASY_VQA_SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image to extract.

    Attributes:
        image_id: The id stored with the features (the join key with annotations), kept exactly.
        path: Path of the image file.
    """

    image_id: str
    path: str


def easy_vqa_records(split: str) -> list[ImageRecord]:
    """Return the easy-VQA images of one split, sorted by their integer id.

    Args:
        split: ``"train"`` or ``"test"``.

    Raises:
        SourceError: If the split is unknown or the ``easy_vqa`` package is not installed.
    """
    if split not in EASY_VQA_SPLITS:
        raise SourceError(f"unknown easy-vqa split {split!r}: expected one of {', '.join(EASY_VQA_SPLITS)}")
    try:
        import easy_vqa
    except ImportError as exc:  # pragma: no cover - easy-vqa is a dependency of vlm
        raise SourceError("source 'easy-vqa' needs the easy-vqa package: pip install easy-vqa") from exc
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    return [ImageRecord(str(image_id), str(paths[image_id])) for image_id in sorted(paths)]


def folder_records(root: str | os.PathLike[str], skipped: list[dict[str, str]] | None = None) -> list[ImageRecord]:
    """Return the images under a folder (recursive, following symlinks), sorted by relative path.

    Every real folder is visited once: a symlink back to a folder above it (a loop) or to a folder already visited
    under another name is not entered, and neither is a folder that cannot be listed. Each of those is logged and,
    when ``skipped`` is given, appended to it as ``{"path", "reason"}`` (``extract`` records them in the manifest).

    Args:
        root: The folder to scan.
        skipped: A list to receive the folders left out.

    Raises:
        SourceError: If the folder holds no images, or two files map to the same id (``a.jpg`` and ``a.png``).
    """
    root = Path(root)
    found: dict[str, str] = {}
    left_out: list[dict[str, str]] = []
    visited = {os.path.realpath(root): "."}  # real folder -> the relative path it was first visited under

    def unreadable(error: OSError) -> None:
        where = Path(error.filename).relative_to(root).as_posix() if error.filename else "?"
        left_out.append({"path": where, "reason": f"cannot be listed: {error.strerror or error}"})

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        dirnames.sort(key=lambda name: (os.path.islink(os.path.join(dirpath, name)), name))  # real folders first
        here = os.path.realpath(dirpath)
        for name in list(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if real not in visited:
                visited[real] = (Path(dirpath) / name).relative_to(root).as_posix()
                continue
            dirnames.remove(name)
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            loop = here == real or here.startswith(real.rstrip(os.sep) + os.sep)
            reason = (f"symlink loop: points back to {visited[real]!r}, a folder above it" if loop
                      else f"same folder as {visited[real]!r} (a symlink), visited once")
            left_out.append({"path": rel, "reason": reason})
        for name in sorted(filenames):
            suffix = os.path.splitext(name)[1]
            if suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                continue
            path = Path(dirpath) / name
            image_id = path.relative_to(root).with_suffix("").as_posix()
            if image_id in found:
                raise SourceError(
                    f"folder {root}: files {found[image_id]} and {path} both give image id {image_id!r}; "
                    "rename one of them or use a list file (image_id<TAB>path) to choose the ids"
                )
            found[image_id] = str(path)
    for item in left_out:
        logger.warning("folder %s: skipped %s: %s", root, item["path"], item["reason"])
    if skipped is not None:
        skipped.extend(left_out)
    if not found:
        raise SourceError(
            f"folder {root} contains no images (looked recursively for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [ImageRecord(image_id, found[image_id]) for image_id in sorted(found)]


def list_file_records(list_path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Read a list file of ``image_id<TAB>path`` lines.

    Args:
        list_path: The list file.

    Raises:
        SourceError: On a line without exactly one tab, an empty id or path, or a duplicate id (naming the lines).
    """
    list_path = Path(list_path)
    base = list_path.parent
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    try:
        with open(list_path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                line = _text_line(raw, list_path, line_no)
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                fields = line.split("\t")
                if len(fields) != 2 or not fields[0] or not fields[1].strip():
                    raise SourceError(
                        f"{list_path}, line {line_no}: expected 'image_id<TAB>path' (two non-empty fields separated "
                        f"by one tab), got {line[:120]!r}"
                    )
                image_id, path = fields[0], fields[1].strip()
                if image_id in seen:
                    raise SourceError(
                        f"{list_path}, line {line_no}: image id {image_id!r} already used on line {seen[image_id]}"
                    )
                seen[image_id] = line_no
                resolved = Path(path) if os.path.isabs(path) else base / path
                records.append(ImageRecord(image_id, str(resolved)))
    except OSError as exc:
        raise SourceError(f"list file {list_path} cannot be read: {exc.strerror or exc}") from None
    if not records:
        raise SourceError(f"list file {list_path} lists no images (expected lines 'image_id<TAB>path')")
    return records


def _text_line(raw: bytes, list_path: Path, line_no: int) -> str:
    """One line of a list file as text, or a :class:`SourceError` naming the line of a binary file."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{list_path}, line {line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "expected a list file of 'image_id<TAB>path' lines (is it an image or another binary file?)"
        ) from None
    if "\0" in line:
        raise SourceError(f"{list_path}, line {line_no}: holds a NUL byte; expected a list file of "
                          "'image_id<TAB>path' lines (is it a binary file?)")
    return line


def resolve_source(spec: str, skipped: list[dict[str, str]] | None = None) -> list[ImageRecord]:
    """Turn a source string into image records.

    Args:
        spec: ``easy-vqa:train``, ``easy-vqa:test``, a folder, or a list file (see the module docstring).
        skipped: A list to receive the folders a folder walk left out (see :func:`folder_records`).

    Raises:
        SourceError: If the source does not exist or cannot be read.
    """
    if spec == "easy-vqa":
        raise SourceError(
            "source 'easy-vqa' is ambiguous: the train and test images share ids, so name the split: "
            "--source easy-vqa:train or --source easy-vqa:test"
        )
    if spec.startswith("easy-vqa:"):
        return easy_vqa_records(spec.split(":", 1)[1])
    path = Path(spec)
    if path.is_dir():
        return folder_records(path, skipped)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise SourceError(
                f"source {spec} is a single image; pass its folder or a list file (image_id<TAB>path) instead"
            )
        return list_file_records(path)
    raise SourceError(
        f"source {spec!r} not found: expected easy-vqa:train, easy-vqa:test, an existing folder of images, "
        "or a list file of 'image_id<TAB>path' lines"
    )


def describe_source(spec: str) -> dict[str, str]:
    """Return a JSON-friendly description of a source for the manifest.

    Args:
        spec: The source string given to :func:`resolve_source`.
    """
    if spec.startswith("easy-vqa"):
        return {"kind": "easy-vqa", "spec": spec}
    kind = "folder" if Path(spec).is_dir() else "list"
    return {"kind": kind, "spec": spec, "path": str(Path(spec).resolve())}
