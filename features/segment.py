"""Class-agnostic object proposals from graph-based segmentation: where the objects of any image are, without weights.

As R-CNN's regions came from selective search (Uijlings et al. 2013), :class:`SegmentProposer` starts from the
graph-based segmentation of Felzenszwalb & Huttenlocher (2004, "Efficient Graph-Based Image Segmentation"), the initial
segmentation that selective search groups, run at several scales:

1. the image is area-resized so that its longest side is at most ``segment_size`` pixels (the working image);
2. at each scale ``k`` of ``scales``, :func:`skimage.segmentation.felzenszwalb` cuts it into segments (larger ``k``,
   larger segments). A blurred or resampled edge is a colour ramp that felzenszwalb cuts into thin strips and halos
   of their own, so *slivers* (segments almost nowhere more than :data:`SLIVER_DEPTH` pixels wide) are handed to the
   nearest proper segment, and a nearest-mean pass moves boundary pixels to the neighbouring segment of the closest
   mean colour; a box then ends where the colour is halfway between object and background;
3. each segment's bounding box is a candidate. With ``grouping``, so is the box of the union of each pair of adjacent
   segments at every scale (an object of two colours), and, for the first (finest) scale, the box of every region
   that selective search's greedy grouping makes (:func:`_hierarchy`: the most similar adjacent regions merged, one
   pair at a time, until one is left: a face with its glasses and hair);
4. candidates whose box covers less than ``min_area`` or more than ``max_area`` of the image, or is more than
   :data:`MAX_ASPECT` times longer than wide, are dropped;
5. every candidate is scored (:data:`SCORES`), duplicates are removed by NMS (:func:`torchvision.ops.nms`: a box
   overlapping a better one by more than ``nms_thresh`` IoU goes) and the ``num_boxes`` best are kept, padded to
   ``num_boxes`` with the whole-image box (:func:`features.proposers.pad_proposals`; ``num_valid`` counts the real
   ones, 0 for a flat image).

**The score** ``"contrast"`` (the default) is the colour-contrast objectness cue of Alexe et al. (2012, "Measuring the
objectness of image windows"): an object differs in colour from its immediate surroundings. It is the chi-square
distance ``0.5 * sum((p - q)^2 / (p + q))``, in [0, 1], between the joint RGB histogram (:data:`COLOUR_BINS` bins per
channel) of the candidate's own pixels ``p`` (its segment, or the two segments of a union) and that of the ring
around its box ``q`` (the box grown by :data:`RING` of its width and height on each side, minus the box, clipped to
the image), multiplied by ``1 - border_penalty * f`` with ``f`` the share of the box's perimeter that lies on the
image border: background (sky, floor, walls) runs along whole sides of the frame, an object rarely does, and an object
cut by the frame (a person's body at the bottom edge) loses only part of its score. ``"area"`` ranks by the
candidate's share of the image's pixels instead, times the same border factor (a baseline: larger segments first).
Equal scores are ordered by box coordinates, so the ranking never depends on a sort's tie handling.

**Why scikit-image, not OpenCV's selective search.** ``opencv-contrib-python(-headless)``'s
``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`` gives the whole of selective search, but measured
here (5.1.0, grace_hopper.jpg at 192 px, 2 shared cores) its fast mode took 120 ms for 523 unranked boxes, two runs
on the same image returned different box lists, and its wheel is 73 MB (201 MB installed; it also clashes with a
plain ``opencv-python`` over the ``cv2`` module), for a module (``ximgproc``) that lives in the contributed-code tree
outside OpenCV's main one. scikit-image's wheel is 14 MB on numpy and scipy, the project is actively maintained, its
felzenszwalb is deterministic and is the first stage of selective search itself, and the grouping and ranking used
here (the greedy grouping, a documented score) take a few dozen lines: ~120 ms per image all told.

**Cost.** Felzenszwalb's graph is sorted by edge weight, so its time grows a little faster than the pixel count: one
scale took ~10 ms at 128 px, ~25 ms at 192 px, ~45 ms at 256 px and ~250 ms at 512 px on the shared 2-core test
machine. The default working size (192 px) and three scales keep the whole proposer near 120 ms per image, on one core
(felzenszwalb ~70 ms, the rest: boundary clean-up, grouping, scores, NMS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from features.errors import FeaturesError
from features.proposers import Proposals, pad_proposals

__all__ = ["COLOUR_BINS", "MAX_ASPECT", "REFINE_PASSES", "RING", "SCORES", "SEGMENT_DEFAULTS", "SLIVER",
           "SLIVER_DEPTH", "SegmentProposer"]

#: Bins per RGB channel of the colour histograms of the contrast score (4**3 = 64 joint bins).
COLOUR_BINS = 4
#: The ring around a box reaches this share of the box's width (height) beyond its left and right (top and bottom)
#: sides, at least 2 pixels of the working image.
RING = 0.25
#: Candidates whose box is more than this many times longer than wide (or wider than long) are dropped: thin strips
#: along edges and shadows, not objects.
MAX_ASPECT = 6.0
#: A segment with less than this share of its pixels at least :data:`SLIVER_DEPTH` pixels inside it is a sliver
#: (a strip or halo along an edge), given to its neighbours.
SLIVER = 0.2
#: Depth, in pixels, at which a pixel counts as inside its segment for :data:`SLIVER`.
SLIVER_DEPTH = 2
#: Passes of the nearest-mean refinement of segment boundaries (each can move a boundary by one pixel).
REFINE_PASSES = 2
#: Scores a proposer can rank by (module docstring).
SCORES = ("contrast", "area")

#: Default settings of :class:`SegmentProposer` (and of the ``proposals`` backend).
SEGMENT_DEFAULTS: dict[str, Any] = {"num_boxes": 36, "scales": (100, 300, 900), "sigma": 0.0, "segment_size": 192,
                                    "min_area": 0.002, "max_area": 0.9, "nms_thresh": 0.5, "score": "contrast",
                                    "border_penalty": 1.0, "grouping": True}


class SegmentProposer:
    """Class-agnostic boxes of one image from multi-scale Felzenszwalb segmentation (module docstring).

    Args:
        num_boxes: K, boxes returned per image (padded with the whole-image box).
        scales: Felzenszwalb's scale ``k`` at each level (larger: larger segments), for the working image.
        sigma: Width of the Gaussian smoothing before segmenting, in working-image pixels.
        segment_size: Longest side of the working image the segmentation runs on (a larger image is area-resized).
        min_area: Smallest box kept, as a share of the image area.
        max_area: Largest box kept, as a share of the image area.
        nms_thresh: IoU above which the lower-scored of two boxes is dropped.
        score: How candidates are ranked, one of :data:`SCORES`.
        border_penalty: Weight of the image-border factor of the score (0: none; 1: a box whose whole perimeter is on
            the border scores 0).
        grouping: Add the union of each pair of adjacent segments, and the regions of the greedy grouping of the
            first scale's segments, as candidates.

    Raises:
        FeaturesError: On an option out of range, naming it.
    """

    def __init__(self, num_boxes: int = SEGMENT_DEFAULTS["num_boxes"],
                 scales: Sequence[float] = SEGMENT_DEFAULTS["scales"], sigma: float = SEGMENT_DEFAULTS["sigma"],
                 segment_size: int = SEGMENT_DEFAULTS["segment_size"], min_area: float = SEGMENT_DEFAULTS["min_area"],
                 max_area: float = SEGMENT_DEFAULTS["max_area"], nms_thresh: float = SEGMENT_DEFAULTS["nms_thresh"],
                 score: str = SEGMENT_DEFAULTS["score"], border_penalty: float = SEGMENT_DEFAULTS["border_penalty"],
                 grouping: bool = SEGMENT_DEFAULTS["grouping"]) -> None:
        what = "backend 'proposals'"
        if isinstance(num_boxes, bool) or not isinstance(num_boxes, int) or num_boxes < 1:
            raise FeaturesError(f"{what}: num_boxes ({num_boxes!r}) must be a positive integer")
        if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
            raise FeaturesError(f"{what}: scales ({scales!r}) must be a non-empty list of positive numbers, e.g. "
                                f"{list(SEGMENT_DEFAULTS['scales'])}")
        if not all(_positive(s) for s in scales):
            raise FeaturesError(f"{what}: scales ({list(scales)!r}) must all be positive finite numbers")
        if score not in SCORES:
            raise FeaturesError(f"{what}: score {score!r} is unknown; expected one of {', '.join(SCORES)}")
        if not (_finite(sigma) and sigma >= 0):
            raise FeaturesError(f"{what}: sigma ({sigma!r}) must be a finite number >= 0")
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 16:
            raise FeaturesError(f"{what}: segment_size ({segment_size!r}) must be an integer of at least 16 pixels")
        if not (_finite(min_area) and _finite(max_area) and 0 <= min_area < max_area <= 1):
            raise FeaturesError(f"{what}: min_area ({min_area!r}) and max_area ({max_area!r}) must be shares of the "
                                "image with 0 <= min_area < max_area <= 1")
        if not (_finite(nms_thresh) and 0 < nms_thresh <= 1):
            raise FeaturesError(f"{what}: nms_thresh ({nms_thresh!r}) must be an IoU in (0, 1]")
        if not (_finite(border_penalty) and 0 <= border_penalty <= 1):
            raise FeaturesError(f"{what}: border_penalty ({border_penalty!r}) must be in [0, 1]")
        self.num_boxes, self.scales, self.sigma = num_boxes, tuple(float(s) for s in scales), float(sigma)
        self.segment_size, self.min_area, self.max_area = segment_size, float(min_area), float(max_area)
        self.nms_thresh, self.score, self.border_penalty = float(nms_thresh), score, float(border_penalty)
        self.grouping = bool(grouping)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that determine the boxes (JSON-serialisable)."""
        return {"num_boxes": self.num_boxes, "scales": list(self.scales), "sigma": self.sigma,
                "segment_size": self.segment_size, "min_area": self.min_area, "max_area": self.max_area,
                "nms_thresh": self.nms_thresh, "score": self.score, "border_penalty": self.border_penalty,
                "grouping": self.grouping}

    def __call__(self, image: np.ndarray) -> Proposals:
        """Propose boxes for one uint8 RGB image ``[H, W, 3]``.

        Returns:
            :class:`~features.proposers.Proposals` in pixels of ``image``, best first: labels 0 (object) for the
            ``num_valid`` real proposals, -1 for the whole-image padding; scores in [0, 1].
        """
        height, width = image.shape[:2]
        work = _working_image(image, self.segment_size)
        boxes, scores = self.candidates(work)
        if len(boxes):
            keep = _nms_deterministic(boxes, scores, self.nms_thresh)
            boxes, scores = boxes[keep], scores[keep]
            boxes = boxes * np.array([width / work.shape[1], height / work.shape[0]] * 2, dtype=np.float32)
        labels = torch.zeros(len(boxes), dtype=torch.long)
        return pad_proposals(torch.from_numpy(boxes.astype(np.float32)), labels,
                             torch.from_numpy(scores.astype(np.float32)), self.num_boxes, (height, width))

    def candidates(self, work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every scored candidate of a working image, before NMS: ``(boxes [N, 4] pixels, scores [N])``."""
        from skimage.segmentation import felzenszwalb

        height, width = work.shape[:2]
        area = float(height * width)
        code = _colour_code(work)  # (H, W) joint colour bin of each pixel
        ring = _IntegralHistogram(code)
        min_size = max(2, int(0.5 * self.min_area * area))  # felzenszwalb merges smaller components
        all_boxes, all_scores = [], []
        for level, scale in enumerate(self.scales):
            labels = felzenszwalb(work, scale=scale, sigma=self.sigma, min_size=min_size)
            labels = _refine_boundaries(_absorb_slivers(labels), work)
            boxes, hists = _segments(labels, code)
            if self.grouping:
                pairs = _adjacent_pairs(labels)
                if len(pairs):
                    a, b = pairs[:, 0], pairs[:, 1]
                    union = np.concatenate([np.minimum(boxes[a, :2], boxes[b, :2]),
                                            np.maximum(boxes[a, 2:], boxes[b, 2:])], axis=1)
                    grouped = [(union, hists[a] + hists[b])]
                    if level == 0:
                        grouped.append(_hierarchy(boxes, hists, pairs, area))
                    boxes = np.concatenate([boxes, *(g[0] for g in grouped)])
                    hists = np.concatenate([hists, *(g[1] for g in grouped)])
            keep = self._plausible(boxes, height, width)
            boxes, hists = boxes[keep], hists[keep]
            if len(boxes):
                all_boxes.append(boxes)
                all_scores.append(self._score(boxes, hists, ring, height, width))
        if not all_boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32)

    def _plausible(self, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """Mask of the boxes within the area and aspect limits."""
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        share = w * h / float(height * width)
        aspect = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
        return (share >= self.min_area) & (share <= self.max_area) & (aspect <= MAX_ASPECT)

    def _score(self, boxes: np.ndarray, hists: np.ndarray, ring: _IntegralHistogram, height: int,
               width: int) -> np.ndarray:
        """Score of each candidate (module docstring); ``hists`` are the candidates' own pixel histograms."""
        x1, y1, x2, y2 = boxes.T.astype(np.float64)
        on_border = ((x1 <= 0) * (y2 - y1) + (x2 >= width) * (y2 - y1) + (y1 <= 0) * (x2 - x1)
                     + (y2 >= height) * (x2 - x1))
        border = 1.0 - self.border_penalty * on_border / (2.0 * ((x2 - x1) + (y2 - y1)))
        counts = hists.sum(axis=1)
        if self.score == "area":
            return border * counts / float(height * width)
        grow_x = np.maximum(2.0, RING * (x2 - x1))
        grow_y = np.maximum(2.0, RING * (y2 - y1))
        outer = np.stack([x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y], axis=1)
        around = ring.counts(outer) - ring.counts(boxes)  # (N, Q) colour counts of the ring
        p = hists / np.maximum(counts, 1)[:, None]
        total = around.sum(axis=1)
        q = around / np.maximum(total, 1)[:, None]
        both = p + q
        chi2 = 0.5 * np.where(both > 0, (p - q) ** 2 / np.where(both > 0, both, 1), 0).sum(axis=1)
        return np.where(total > 0, chi2, 0.0) * border


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def _working_image(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` area-resized so that its longest side is at most ``size`` (unchanged when already small enough)."""
    height, width = image.shape[:2]
    factor = size / max(height, width)
    if factor >= 1:
        return np.ascontiguousarray(image)
    new = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(new, Image.BOX))


def _colour_code(image: np.ndarray) -> np.ndarray:
    """The joint RGB bin of each pixel, ``r * B^2 + g * B + b`` with each channel cut into B equal ranges."""
    cells = image.astype(np.int32) * COLOUR_BINS // 256  # (H, W, 3)
    return cells[..., 0] * COLOUR_BINS ** 2 + cells[..., 1] * COLOUR_BINS + cells[..., 2]


def _absorb_slivers(labels: np.ndarray) -> np.ndarray:
    """Give the pixels of boundary slivers to the nearest proper segment; labels renumbered 0..n-1.

    A blurred or resampled edge is a colour ramp a few pixels wide, which felzenszwalb cuts into thin strips and halos
    of their own around the object. A segment with less than :data:`SLIVER` of its pixels at least
    :data:`SLIVER_DEPTH` pixels inside it (away from any other label, 4-neighbourhood) is such a sliver: each of its
    pixels joins the segment of the nearest pixel that is not in a sliver, which splits a ramp at its middle, where
    the edge is.
    """
    from scipy import ndimage

    inside = np.ones(labels.shape, dtype=bool)  # pixels whose 4 neighbours (inside the image) share their label
    inside[1:] &= labels[1:] == labels[:-1]
    inside[:-1] &= labels[:-1] == labels[1:]
    inside[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    inside[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    for _ in range(SLIVER_DEPTH - 1):  # erode: inside at depth d+1 = inside at depth d with 4 neighbours inside too
        inside = ndimage.binary_erosion(inside, border_value=1)
    n = int(labels.max()) + 1
    sliver = np.bincount(labels[inside], minlength=n) < SLIVER * np.bincount(labels.ravel(), minlength=n)
    in_sliver = sliver[labels]
    if in_sliver.any() and not in_sliver.all():
        _, (rows, cols) = ndimage.distance_transform_edt(in_sliver, return_indices=True)
        labels = labels[rows, cols]
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(in_sliver.shape)


def _refine_boundaries(labels: np.ndarray, image: np.ndarray, passes: int = REFINE_PASSES) -> np.ndarray:
    """Move each pixel on a segment boundary to the neighbouring segment whose mean colour is nearest to its own.

    Felzenszwalb's merge order decides which side of an edge the pixels of a colour ramp join, which can shift a
    boundary by a pixel or two from the edge's middle; a nearest-mean pass over the boundary pixels (each pixel
    choosing among its own segment and those of its four neighbours, as in SLIC's local k-means) puts the boundary
    where the colour is halfway between the two sides. Labels renumbered 0..n-1.
    """
    colour = image.reshape(-1, 3).astype(np.float64)
    height, width = labels.shape
    for _ in range(passes):
        n = int(labels.max()) + 1
        flat = labels.ravel()
        size = np.maximum(np.bincount(flat, minlength=n), 1)
        means = np.stack([np.bincount(flat, colour[:, c], minlength=n) for c in range(3)], axis=1) / size[:, None]
        padded = np.pad(labels, 1, mode="edge")
        candidates = np.stack([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        on_edge = (candidates != labels).any(axis=0)
        if not on_edge.any():
            break
        cand = candidates[:, on_edge]  # (5, P) labels a boundary pixel may take
        pixels = colour[on_edge.ravel()]  # (P, 3)
        distance = ((means[cand] - pixels[None]) ** 2).sum(axis=-1)  # (5, P); ties keep the own label (index 0)
        labels = labels.copy()
        labels[on_edge] = cand[distance.argmin(axis=0), np.arange(cand.shape[1])]
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(height, width)


def _segments(labels: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box ``(x1, y1, x2, y2)`` (pixel edges) and colour histogram of each segment of a label map."""
    from scipy import ndimage

    n = int(labels.max()) + 1
    slices = ndimage.find_objects(labels + 1, max_label=n)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] if s is not None else [0, 0, 0, 0]
                      for s in slices], dtype=np.float64).reshape(n, 4)
    bins = COLOUR_BINS ** 3
    hists = np.bincount((labels * bins + code).ravel(), minlength=n * bins).reshape(n, bins).astype(np.float64)
    return boxes, hists


def _hierarchy(boxes: np.ndarray, hists: np.ndarray, pairs: np.ndarray,
               area: float) -> tuple[np.ndarray, np.ndarray]:
    """Selective search's grouping: merge the most similar adjacent regions until one is left; every merged region.

    Similarity (Uijlings et al. 2013, without the texture term): colour-histogram intersection + size (small regions
    merge first) + fill (regions whose union fills its box merge first), each in [0, 1].

    Returns:
        ``(boxes [M, 4], hists [M, bins])`` of the ``M`` merged regions.
    """
    import heapq

    boxes, hists = [b for b in boxes], [h for h in hists]
    sizes = [float(h.sum()) for h in hists]
    neighbours: dict[int, set[int]] = {i: set() for i in range(len(boxes))}
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)

    def similarity(a: int, b: int) -> float:
        colour = float(np.minimum(hists[a] / sizes[a], hists[b] / sizes[b]).sum())
        box = np.concatenate([np.minimum(boxes[a][:2], boxes[b][:2]), np.maximum(boxes[a][2:], boxes[b][2:])])
        fill = (box[2] - box[0]) * (box[3] - box[1]) - sizes[a] - sizes[b]
        return colour + (1.0 - (sizes[a] + sizes[b]) / area) + (1.0 - fill / area)

    heap = [(-similarity(a, b), a, b) for a, b in pairs.tolist()]
    heapq.heapify(heap)
    alive = set(range(len(boxes)))
    first = len(boxes)
    while heap:
        _, a, b = heapq.heappop(heap)
        if a not in alive or b not in alive:
            continue  # one side was merged already: a stale pair
        new = len(boxes)
        boxes.append(np.concatenate([np.minimum(boxes[a][:2], boxes[b][:2]), np.maximum(boxes[a][2:], boxes[b][2:])]))
        hists.append(hists[a] + hists[b])
        sizes.append(sizes[a] + sizes[b])
        alive -= {a, b}
        neighbours[new] = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
        for c in neighbours[new]:
            neighbours[c] -= {a, b}
            neighbours[c].add(new)
            heapq.heappush(heap, (-similarity(new, c), c, new))
        alive.add(new)
    if len(boxes) == first:  # a single segment: nothing to merge
        return np.zeros((0, 4)), np.zeros((0, COLOUR_BINS ** 3))
    return np.stack(boxes[first:]), np.stack(hists[first:])


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """``[P, 2]`` the pairs ``(a < b)`` of segments that touch (4-neighbourhood), each once."""
    n = int(labels.max()) + 1
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    pairs = np.unique(lo * n + hi)
    return np.stack([pairs // n, pairs % n], axis=1)


class _IntegralHistogram:
    """Colour counts of any axis-aligned box in O(bins), from a summed-area table of one-hot colour codes.

    Counted on every second pixel of each axis (a ring's colour distribution needs no more), which makes the table
    4x cheaper to build.
    """

    step = 2

    def __init__(self, code: np.ndarray) -> None:
        sub = code[::self.step, ::self.step]
        h, w = sub.shape
        bins = COLOUR_BINS ** 3
        onehot = np.zeros((h, w, bins), dtype=np.int32)
        np.put_along_axis(onehot, sub[..., None], 1, axis=2)
        self.table = np.zeros((h + 1, w + 1, bins), dtype=np.int32)
        self.table[1:, 1:] = onehot.cumsum(0).cumsum(1)
        self.shape = (h, w)

    def counts(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, bins]`` colour counts inside pixel boxes ``(x1, y1, x2, y2)`` (clipped to the image)."""
        h, w = self.shape
        x1 = np.clip(np.ceil(boxes[:, 0] / self.step), 0, w).astype(np.int64)
        y1 = np.clip(np.ceil(boxes[:, 1] / self.step), 0, h).astype(np.int64)
        x2 = np.clip(np.ceil(boxes[:, 2] / self.step), 0, w).astype(np.int64)
        y2 = np.clip(np.ceil(boxes[:, 3] / self.step), 0, h).astype(np.int64)
        t = self.table
        return (t[y2, x2] - t[y1, x2] - t[y2, x1] + t[y1, x1]).astype(np.float64)


def _nms_deterministic(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by NMS, best first; equal scores are ordered by box coordinates, so the result never depends on
    the sort's tie handling (torchvision's NMS sees ranks, not the raw scores)."""
    from torchvision.ops import nms

    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores.astype(np.float64)))
    ranks = torch.arange(len(order), 0, -1, dtype=torch.float32)  # strictly decreasing in `order`
    kept = nms(torch.from_numpy(boxes[order].astype(np.float32)), ranks, iou)
    return order[kept.numpy()]
