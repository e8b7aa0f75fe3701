"""Bottom-up-attention TSV features: parse, validate and write the files (conversion to a store: features.tsv_import).

The bottom-up-attention features of Anderson et al. (2018) — the 36 x 2048 Faster R-CNN (Visual Genome) regions that
LXMERT, ViLBERT, UNITER and others publish — come as tab-separated text, one image per line, no header, arrays as
base64 of their raw little-endian buffers. Two layouts exist, told apart by the number of fields:

* 10 fields (LXMERT's files): ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
  features`` with ``objects_id``/``attrs_id`` int64 ``[num_boxes]``, ``objects_conf``/``attrs_conf`` float32
  ``[num_boxes]``, ``boxes`` float32 ``[num_boxes, 4]`` (pixels ``x1, y1, x2, y2``), ``features`` float32
  ``[num_boxes, D]``;
* 6 fields (the original ``generate_tsv.py``): ``image_id, image_w, image_h, num_boxes, boxes, features`` — note width
  before height.

:func:`read_tsv` yields the decoded rows (:class:`TSVRow`); :func:`encode_tsv_row` and :func:`write_tsv` write the same
encoding. :func:`features.tsv_import.import_tsv` converts a file to shards with the row parser of this module.

Every row is validated in one place (the row parser, shared by :func:`read_tsv` and
:func:`~features.tsv_import.import_tsv`): UTF-8 text, the field count, integers, base64, array sizes, and values —
features and confidences finite and within float16 (the store keeps float16), boxes finite, ``x1 <= x2`` and
``y1 <= y2``, and not entirely outside the image (a box that only overhangs the border is clipped). A malformed row
raises :class:`~features.errors.TSVFormatError` naming the row number, the field (and box) and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from features.errors import TSVFormatError

__all__ = ["LXMERT_FIELDS", "BUTD_FIELDS", "TSVRow", "encode_tsv_row", "read_tsv", "write_tsv"]

#: Field order of LXMERT's TSV files.
LXMERT_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
                 "boxes", "features")
#: Field order of the original bottom-up-attention ``generate_tsv.py`` (no labels or attributes).
BUTD_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")

#: Largest finite float16 (features are stored as float16).
_F16_MAX = float(np.finfo(np.float16).max)

_PER_BOX = {"objects_id": (np.int64, 8), "objects_conf": (np.float32, 4), "attrs_id": (np.int64, 8),
            "attrs_conf": (np.float32, 4)}


@dataclass
class TSVRow:
    """One decoded image.

    Attributes:
        image_id: The image id, kept exactly.
        height: Image height in pixels.
        width: Image width in pixels.
        boxes: float32 ``[K, 4]`` pixel boxes.
        features: float32 ``[K, D]``.
        labels: ``objects_id``, ``objects_conf``, ``attrs_id``, ``attrs_conf`` arrays (empty for the 6-field layout).
    """

    image_id: str
    height: int
    width: int
    boxes: np.ndarray
    features: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def _b64(value: str, where: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TSVFormatError(f"{where}: invalid base64 ({exc}); expected base64 of {what}") from None


def _int(value: str, where: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise TSVFormatError(f"{where}: expected an integer, got {value[:40]!r}") from None
    return number


class _RowParser:
    """Parses rows of one file; the layout and feature dim are fixed by the first row."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fields: tuple[str, ...] | None = None
        self.feature_dim: int | None = None

    def __call__(self, line: str, row: int) -> TSVRow:
        values = line.rstrip("\r\n").split("\t")
        if self.fields is None:
            if len(values) == len(LXMERT_FIELDS):
                self.fields = LXMERT_FIELDS
            elif len(values) == len(BUTD_FIELDS):
                self.fields = BUTD_FIELDS
            else:
                raise TSVFormatError(
                    f"{self.path}, row {row}: expected {len(LXMERT_FIELDS)} tab-separated fields "
                    f"({', '.join(LXMERT_FIELDS)}) or {len(BUTD_FIELDS)} ({', '.join(BUTD_FIELDS)}), got {len(values)}"
                )
        fields = self.fields
        if len(values) != len(fields):
            missing = ""
            if len(values) == len(fields) - 1:
                candidates = _missing_field_candidates(values, fields)
                if len(candidates) == 1:
                    missing = f": field '{candidates[0]}' is missing"
                elif candidates:
                    missing = f": one of the fields {', '.join(repr(c) for c in candidates)} is missing"
            raise TSVFormatError(f"{self.path}, row {row}: expected {len(fields)} tab-separated fields "
                                 f"({', '.join(fields)}) like row 1, got {len(values)}{missing}")
        item = dict(zip(fields, values))
        image_id = item[fields[0]]
        where = f"{self.path}, row {row} ({fields[0]} {image_id!r})"
        if not image_id:
            raise TSVFormatError(f"{self.path}, row {row}: field '{fields[0]}' is empty; expected the image id")
        h_name, w_name = ("img_h", "img_w") if fields is LXMERT_FIELDS else ("image_h", "image_w")
        height = _int(item[h_name], f"{where}: field '{h_name}'")
        width = _int(item[w_name], f"{where}: field '{w_name}'")
        if height <= 0 or width <= 0:
            raise TSVFormatError(f"{where}: fields '{h_name}'/'{w_name}' must be positive, got {height}/{width}")
        num_boxes = _int(item["num_boxes"], f"{where}: field 'num_boxes'")
        if num_boxes < 0:
            raise TSVFormatError(f"{where}: field 'num_boxes' must be >= 0, got {num_boxes}")
        raw_boxes = _b64(item["boxes"], f"{where}: field 'boxes'", f"float32 [num_boxes={num_boxes}, 4]")
        if len(raw_boxes) != num_boxes * 16:
            held = f"{len(raw_boxes) / 16:g} boxes" if len(raw_boxes) % 16 == 0 else "a partial box"
            raise TSVFormatError(f"{where}: field 'num_boxes' is {num_boxes} but field 'boxes' decodes to "
                                 f"{len(raw_boxes)} bytes ({held}); expected {num_boxes * 16} bytes = float32 "
                                 f"[{num_boxes}, 4]")
        boxes = np.frombuffer(raw_boxes, dtype="<f4").reshape(num_boxes, 4)
        raw_feats = _b64(item["features"], f"{where}: field 'features'", f"float32 [num_boxes={num_boxes}, D]")
        if self.feature_dim is not None:
            expected = num_boxes * self.feature_dim * 4
            if len(raw_feats) != expected:
                raise TSVFormatError(f"{where}: field 'features' decodes to {len(raw_feats)} bytes; expected {expected}"
                                     f" = float32 [num_boxes={num_boxes}, D={self.feature_dim}] (truncated?)")
        elif num_boxes == 0 or len(raw_feats) % (num_boxes * 4) or not raw_feats:
            raise TSVFormatError(f"{where}: field 'features' decodes to {len(raw_feats)} bytes, not a whole number of "
                                 f"float32 rows for num_boxes={num_boxes}")
        features = np.frombuffer(raw_feats, dtype="<f4").reshape(num_boxes, -1)
        if self.feature_dim is None:
            self.feature_dim = features.shape[1]
        labels: dict[str, np.ndarray] = {}
        for name in fields:
            if name in _PER_BOX:
                dtype, width_bytes = _PER_BOX[name]
                type_name = "int64" if dtype is np.int64 else "float32"
                raw = _b64(item[name], f"{where}: field '{name}'", f"{type_name} [num_boxes={num_boxes}]")
                if len(raw) != num_boxes * width_bytes:
                    raise TSVFormatError(f"{where}: field '{name}' decodes to {len(raw)} bytes; expected "
                                         f"{num_boxes * width_bytes} = {type_name} [num_boxes={num_boxes}]")
                labels[name] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
                if dtype is np.float32:
                    _check_finite(labels[name], f"{where}: field '{name}'")
        _check_finite(features, f"{where}: field 'features'")
        _check_float16(features, f"{where}: field 'features'")
        _check_boxes(boxes, width, height, f"{where}: field 'boxes'")
        return TSVRow(image_id, height, width, boxes, features, labels)


def _check_finite(values: np.ndarray, where: str) -> None:
    """Refuse NaN or Inf, naming the first box that holds one."""
    bad = ~np.isfinite(values)
    if bad.any():
        box = int(np.argwhere(bad)[0][0])
        kind = "NaN" if np.isnan(values[box]).any() else "Inf"
        raise TSVFormatError(f"{where}: box {box} holds {kind}; expected finite float32 values")


def _check_float16(features: np.ndarray, where: str) -> None:
    """Refuse features the store's float16 cannot hold (they would become Inf)."""
    too_big = np.abs(features) > _F16_MAX
    if too_big.any():
        box, column = (int(i) for i in np.argwhere(too_big)[0])
        raise TSVFormatError(f"{where}: value {float(features[box, column]):.6g} in box {box} is beyond the float16 "
                             f"range ±{_F16_MAX:g} the store keeps; expected smaller features")


def _check_boxes(boxes: np.ndarray, width: int, height: int, where: str) -> None:
    """Refuse boxes that are not finite, inverted (x2 < x1 or y2 < y1), or entirely outside the image."""
    _check_finite(boxes, where)
    x1, y1, x2, y2 = boxes.T
    inverted = (x2 < x1) | (y2 < y1)
    outside = (x1 >= width) | (y1 >= height) | (x2 <= 0) | (y2 <= 0)
    for bad, what in ((inverted, "is inverted; expected x1 <= x2 and y1 <= y2"),
                      (outside, f"lies entirely outside the {width}x{height} image; expected a box that overlaps it")):
        if bad.any():
            box = int(np.flatnonzero(bad)[0])
            corners = ", ".join(f"{v:g}" for v in boxes[box])
            raise TSVFormatError(f"{where}: box {box} (x1, y1, x2, y2) = ({corners}) {what}")


def _text_line(raw: bytes, path: str, row: int) -> str:
    """One row as text, or a :class:`TSVFormatError` naming the row of a binary (or wrongly encoded) file."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TSVFormatError(f"{path}, row {row}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                             f"{exc.start + 1}); expected tab-separated bottom-up-attention fields (is it a binary "
                             "file?)") from None
    if "\0" in line:
        raise TSVFormatError(f"{path}, row {row}: holds a NUL byte; expected tab-separated bottom-up-attention "
                             "fields (is it a binary file?)")
    return line


def _plausible(item: dict[str, str]) -> bool:
    """Whether the values fit their fields' types and sizes (used to tell which field a short row lacks)."""
    try:
        for name in ("img_h", "img_w", "image_h", "image_w", "num_boxes"):
            if name in item and not item[name].strip().isdigit():
                return False
        boxes = base64.b64decode(item["boxes"], validate=True) if "boxes" in item else None
        if "num_boxes" in item:
            k = int(item["num_boxes"])
        elif boxes is not None and len(boxes) % 16 == 0:
            k = len(boxes) // 16
        else:
            return False
        if boxes is not None and len(boxes) != 16 * k:
            return False
        for name, (_, width) in _PER_BOX.items():
            if name in item and len(base64.b64decode(item[name], validate=True)) != width * k:
                return False
        if "features" in item:
            feats = base64.b64decode(item["features"], validate=True)
            if not feats or len(feats) % (4 * max(k, 1)):
                return False
    except (binascii.Error, ValueError):
        return False
    return True


def _missing_field_candidates(values: list[str], fields: tuple[str, ...]) -> list[str]:
    """The fields whose absence would explain a row one field short."""
    found = []
    for gap in range(len(fields)):
        names = fields[:gap] + fields[gap + 1:]
        if _plausible(dict(zip(names, values))):
            found.append(fields[gap])
    return found


def _is_header(line: str) -> bool:
    return line.split("\t", 1)[0] in ("img_id", "image_id")


def read_tsv(path: str | os.PathLike[str]) -> Iterator[TSVRow]:
    """Yield the decoded rows of a bottom-up-attention TSV file (either layout).

    Raises:
        TSVFormatError: On the first malformed row.
    """
    parser = _RowParser(str(path))
    with _open_binary(Path(path)) as handle:
        for row, raw in enumerate(handle, start=1):
            line = _text_line(raw, str(path), row)
            if (row == 1 and _is_header(line)) or not line.strip():
                continue
            yield parser(line, row)


def encode_tsv_row(image_id: str, height: int, width: int, boxes: np.ndarray, features: np.ndarray,
                   labels: dict[str, np.ndarray] | None = None) -> str:
    """Encode one image in the bottom-up-attention layout (10 fields with ``labels``, else 6); no trailing newline.

    Args:
        image_id: The id.
        height: Image height.
        width: Image width.
        boxes: ``[K, 4]`` pixel boxes.
        features: ``[K, D]``.
        labels: ``objects_id``, ``objects_conf``, ``attrs_id``, ``attrs_conf`` (10-field layout).
    """
    def enc(array: np.ndarray, dtype: str) -> str:
        return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")

    k = len(boxes)
    if labels is None:
        values = [image_id, str(width), str(height), str(k), enc(boxes, "<f4"), enc(features, "<f4")]
    else:
        values = [image_id, str(height), str(width), enc(labels["objects_id"], "<i8"),
                  enc(labels["objects_conf"], "<f4"), enc(labels["attrs_id"], "<i8"), enc(labels["attrs_conf"], "<f4"),
                  str(k), enc(boxes, "<f4"), enc(features, "<f4")]
    return "\t".join(values)


def write_tsv(path: str | os.PathLike[str], rows: list[TSVRow]) -> None:
    """Write rows as a bottom-up-attention TSV (10 fields when the rows have labels, else 6)."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(encode_tsv_row(row.image_id, row.height, row.width, row.boxes, row.features,
                                        row.labels or None) + "\n")


def _open_binary(path: Path) -> BinaryIO:
    """Open a TSV file for reading rows as bytes (each decoded by :func:`_text_line`, so errors name the row)."""
    if not path.is_file():
        raise TSVFormatError(f"TSV file {path} " + ("is a folder; expected a .tsv file" if path.is_dir() else
                                                     "not found"))
    try:
        return open(path, "rb")
    except OSError as exc:
        raise TSVFormatError(f"TSV file {path} cannot be read: {exc.strerror or exc}") from None
