"""The DB paper's post-processing written plainly, candidate by candidate, the way its
public code does it (MhLiao/DB: seg_detector_representer.py): shapely polygons for areas
and perimeters, numpy on every 4-point box, sorted corner lists, points clamped to
[0, W] x [0, H] as the paper clamps them: the oracle for `hrnet_sweep.dbnet.postprocess`.
The benchmarks import it too, so tests and benchmarks compare against the same reference.

`receipt_prob_map` makes the receipt-like probability maps both use.
"""

from __future__ import annotations

import cv2
import numpy as np
import pyclipper
from reference_targets import IMAGE_SIZE, WORDS, receipt_words
from shapely.geometry import Polygon

from hrnet_sweep.dbnet.targets import make_targets

# ----------------------------------------------------------------------------- reference


def reference_postprocess(
    prob,
    *,
    thresh=0.3,
    box_thresh=0.7,
    unclip_ratio=1.5,
    use_polygon=False,
    max_candidates=1000,
    min_size=3,
    image_size=None,
    epsilon_ratio=0.002,
):
    """The paper's post-processing of a whole map (no letterbox): (polygons, scores)."""
    height, width = prob.shape
    dest_h, dest_w = image_size or (height, width)
    bitmap = ((prob > thresh) * 255).astype(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    polygons, scores = [], []
    for contour in contours[:max_candidates]:
        if use_polygon:
            approx = cv2.approxPolyDP(contour, epsilon_ratio * cv2.arcLength(contour, True), True)
            points = approx.reshape(-1, 2)
            if len(points) < 4:
                continue
            score = _box_score(prob, points)
            if score < box_thresh:
                continue
            expanded = _unclip(points, unclip_ratio)
            if len(expanded) != 1:
                continue
            box = np.array(expanded[0], np.int32)
            if _mini_box(box.reshape(-1, 1, 2))[1] < min_size + 2:
                continue
            box = box.astype(np.float64)
        else:
            points, short = _mini_box(contour)
            if short < min_size:
                continue
            points = np.array(points)
            score = _box_score(prob, points)
            if score < box_thresh:
                continue
            expanded = np.array(_unclip(points, unclip_ratio), np.int32).reshape(-1, 1, 2)
            box, short = _mini_box(expanded)
            if short < min_size + 2:
                continue
            box = np.array(box, np.float64)
        box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_w), 0, dest_w)
        box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_h), 0, dest_h)
        polygons.append(box.astype(np.float32))
        scores.append(score)
    return polygons, scores


def _mini_box(contour):
    rect = cv2.minAreaRect(contour)
    points = sorted(list(cv2.boxPoints(rect)), key=lambda p: p[0])
    first, fourth = (0, 1) if points[1][1] > points[0][1] else (1, 0)
    second, third = (2, 3) if points[3][1] > points[2][1] else (3, 2)
    return [points[first], points[second], points[third], points[fourth]], min(rect[1])


def _box_score(prob, points):
    height, width = prob.shape
    box = np.array(points, np.float64)
    xmin = np.clip(np.floor(box[:, 0].min()).astype(int), 0, width - 1)
    xmax = np.clip(np.ceil(box[:, 0].max()).astype(int), 0, width - 1)
    ymin = np.clip(np.floor(box[:, 1].min()).astype(int), 0, height - 1)
    ymax = np.clip(np.ceil(box[:, 1].max()).astype(int), 0, height - 1)
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), np.uint8)
    box[:, 0] -= xmin
    box[:, 1] -= ymin
    cv2.fillPoly(mask, box.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0]


def _unclip(points, unclip_ratio):
    shape = Polygon(points)
    distance = shape.area * unclip_ratio / shape.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([tuple(p) for p in points], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(distance)


# ----------------------------------------------------------------------------- data


def receipt_prob_map(count: int, size: int = IMAGE_SIZE, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A network-like probability map of `count` receipt words: the shrink targets of
    `receipt_words`, blurred (in proportion to the word size) so that scores and borders
    vary. Returns (map, words)."""
    words = receipt_words(count, size, seed)
    target = make_targets(words, size, size)["prob_map"]
    sigma = 1.5 * min(1.0, (WORDS / count) ** 0.5) * size / IMAGE_SIZE
    return cv2.GaussianBlur(target, (0, 0), sigma), words


def max_polygon_diff(a: list, b: list, size: tuple[int, int] | None = None) -> float:
    """Largest coordinate difference between matched polygons `a` (ours) and `b` (the
    reference); inf if they do not pair up. With `size` = (H, W), a coordinate of `b` on
    the far border (W or H, where the paper clamps) matches W - 1 / H - 1 in `a`: the
    one documented difference of clamping conventions (`border_clamped` counts them)."""
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b)):
        return float("inf")
    return max((float(np.abs(p - _clamp_like(p, q, size)).max()) for p, q in zip(a, b)), default=0.0)


def border_clamped(a: list, b: list, size: tuple[int, int]) -> int:
    """Coordinates the reference has on the far border and ours one pixel inside it."""
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b)):
        return 0
    return sum(int((_clamp_like(p, q, size) != q).sum()) for p, q in zip(a, b))


def _clamp_like(ours: np.ndarray, ref: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """`ref` with W (H) replaced by W - 1 (H - 1) wherever `ours` has W - 1 (H - 1) there."""
    if size is None:
        return ref
    far = np.array([size[1], size[0]], ref.dtype)
    return np.where((ref == far) & (ours == far - 1), far - 1, ref)
