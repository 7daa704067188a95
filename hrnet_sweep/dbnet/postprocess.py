"""DB post-processing: a probability map -> text polygons with scores, in original pixels.

The algorithm is the DB paper's public code (MhLiao/DB, `seg_detector_representer.py`):
binarize at `thresh`, take the contours of the binary map, and per contour

* box mode: minimum-area rectangle (dropped if its short side < `min_size`), score =
  mean probability inside it, unclip it by D = A * unclip_ratio / L with pyclipper
  (round joins), minimum-area rectangle of that (dropped if short side < min_size + 2);
* polygon mode: the contour simplified by approxPolyDP (epsilon = `epsilon_ratio` *
  perimeter; fewer than 4 points dropped), score = mean probability inside it, unclip
  it the same way (dropped unless that gives exactly one polygon, or if its
  minimum-area rectangle's short side < min_size + 2), the unclipped polygon kept.

Candidates scoring below `box_thresh` are dropped. Coordinates are mapped from the
content region of the map (letterbox: resized longest side, padding at the bottom and
right) to the original image with x * W0 / w, as the public code does, and clamped to
the image. Where the public code spends its time (shapely polygons per candidate,
numpy on 4-point arrays) this module uses the closed forms of the rectangle and cv2
calls on a crop of the map; the results are the same (benchmarks/bench_postprocess.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyclipper

__all__ = ["postprocess", "resize_prob_to_image"]


def postprocess(
    prob: np.ndarray,
    *,
    thresh: float = 0.3,
    box_thresh: float = 0.7,
    unclip_ratio: float = 1.5,
    use_polygon: bool = False,
    max_candidates: int = 1000,
    min_size: float = 3,
    content_size: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
    epsilon_ratio: float = 0.002,
) -> tuple[list[np.ndarray], list[float]]:
    """Detect text in one probability map.

    Args:
        prob: (H, W) probability map of the network input.
        thresh: binarization threshold of the map.
        box_thresh: minimum mean probability inside a candidate.
        unclip_ratio: expansion D = area * unclip_ratio / perimeter of each candidate.
        use_polygon: keep polygons rather than minimum-area rectangles.
        max_candidates: at most this many contours are examined, in cv2's order.
        min_size: candidates whose rectangle is thinner than this are dropped (and
            thinner than min_size + 2 after unclipping).
        content_size: (h, w) of the image content at the top left of the map; the rest
            is letterbox padding. Default: the whole map.
        image_size: (H0, W0) of the original image the coordinates are mapped to.
            Default: the content size (no scaling).
        epsilon_ratio: approxPolyDP tolerance in polygon mode, times the perimeter.

    Returns:
        polygons, float32 (K, 2) x, y in original image pixels (K = 4 in box mode), and
        their scores.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty (H, W) map, got shape {list(prob.shape)}")
    height, width = prob.shape
    ch, cw = _size(content_size, "content_size", (height, width))
    if ch > height or cw > width:
        raise ValueError(f"content_size {(ch, cw)} is larger than the map {(height, width)}")
    ih, iw = _size(image_size, "image_size", (ch, cw))
    if unclip_ratio <= 0:
        raise ValueError(f"unclip_ratio must be > 0, got {unclip_ratio}")

    pred = prob[:ch, :cw]
    if pred.dtype not in (np.float32, np.float64):
        pred = pred.astype(np.float32)
    bitmap = np.greater(pred, thresh).view(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)

    candidates = contours[: max(int(max_candidates), 0)]
    if use_polygon:
        found = [_polygon_candidate(pred, c, box_thresh, unclip_ratio, min_size, epsilon_ratio) for c in candidates]
    else:
        found = [_box_candidate(pred, c, box_thresh, unclip_ratio, min_size) for c in candidates]
    found = [f for f in found if f is not None]
    if not found:
        return [], []
    shapes, scores = zip(*found)
    points = np.concatenate(shapes).astype(np.float64)
    if not use_polygon:
        points = _clockwise_from_left(points.reshape(-1, 4, 2)).reshape(-1, 2)
    points *= (iw / cw, ih / ch)
    np.clip(points, 0.0, (iw - 1, ih - 1), out=points)
    stops = np.cumsum([len(p) for p in shapes])
    return np.split(points.astype(np.float32), stops[:-1]), list(scores)


def resize_prob_to_image(prob: np.ndarray, content_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Crop the content region of a letterboxed map and resize it to the original image.

    Maps of different input sizes (folds, test-time scales) become comparable this way:
    the ensemble averages them in original-image pixels, and `postprocess` takes the
    result directly (its defaults read the whole map at the image's size).

    Returns:
        float32 (H0, W0) map.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty (H, W) map, got shape {list(prob.shape)}")
    ch, cw = _size(content_size, "content_size", None)
    if ch > prob.shape[0] or cw > prob.shape[1]:
        raise ValueError(f"content_size {(ch, cw)} is larger than the map {tuple(prob.shape)}")
    ih, iw = _size(image_size, "image_size", None)
    crop = prob[:ch, :cw].astype(np.float32, copy=False)
    if (ch, cw) == (ih, iw):
        return crop.copy()
    return cv2.resize(crop, (iw, ih), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------- candidates


def _box_candidate(pred, contour, box_thresh, unclip_ratio, min_size):
    rect = cv2.minAreaRect(contour)
    (w, h) = rect[1]
    if min(w, h) < min_size:
        return None
    box = cv2.boxPoints(rect)
    score = _mean_inside(pred, box)
    if not score >= box_thresh:  # also drops NaN
        return None
    # The rectangle's area and perimeter in closed form (the public code builds a
    # shapely polygon of its corners for these two numbers).
    expanded = _offset(box.tolist(), w * h * unclip_ratio / (2.0 * (w + h)))
    if not expanded:
        return None
    rect = cv2.minAreaRect(np.array(expanded[0], np.int32))
    if min(rect[1]) < min_size + 2:
        return None
    return cv2.boxPoints(rect), score


def _polygon_candidate(pred, contour, box_thresh, unclip_ratio, min_size, epsilon_ratio):
    approx = cv2.approxPolyDP(contour, epsilon_ratio * cv2.arcLength(contour, True), True)
    if len(approx) < 4:
        return None
    points = approx.reshape(-1, 2)
    score = _mean_inside(pred, points)
    if not score >= box_thresh:
        return None
    perimeter = cv2.arcLength(approx, True)
    area = abs(cv2.contourArea(approx))
    if area <= 0 or perimeter <= 0:
        return None
    expanded = _offset(points.tolist(), area * unclip_ratio / perimeter)
    if len(expanded) != 1:
        return None
    poly = np.array(expanded[0], np.int32)
    if min(cv2.minAreaRect(poly)[1]) < min_size + 2:
        return None
    return poly.astype(np.float64), score


def _mean_inside(pred: np.ndarray, points: np.ndarray) -> float:
    """Mean of `pred` over the polygon `points` (truncated to integers, as the public
    code does), computed on the polygon's bounding-box crop only."""
    height, width = pred.shape
    if points.dtype == np.int32:  # contour points: the bounding box in one call
        x, y, w, h = cv2.boundingRect(points)
        left, top, right, bottom = x, y, x + w - 1, y + h - 1
    else:
        xs, ys = points[:, 0].tolist(), points[:, 1].tolist()
        left, top, right, bottom = math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys))
    x0, x1 = min(max(left, 0), width - 1), min(max(right, 0), width - 1)
    y0, y1 = min(max(top, 0), height - 1), min(max(bottom, 0), height - 1)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [points.astype(np.int32, copy=False)], 1, offset=(-x0, -y0))
    return cv2.mean(pred[y0 : y1 + 1, x0 : x1 + 1], mask)[0]


def _offset(path: list, delta: float) -> list:
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(path, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(delta)


def _clockwise_from_left(boxes: np.ndarray) -> np.ndarray:
    """Order the corners of (N, 4, 2) rectangles as the public code does: of the two
    leftmost corners the upper one first, then the upper right, the lower right and
    the lower left."""
    order = np.argsort(boxes[:, :, 0], axis=1, kind="stable")
    pts = np.take_along_axis(boxes, order[:, :, None], axis=1)
    swap_left = pts[:, 1, 1] <= pts[:, 0, 1]  # the second-leftmost is the upper one
    swap_right = pts[:, 3, 1] <= pts[:, 2, 1]
    first = np.where(swap_left, 1, 0)
    second = np.where(swap_right, 3, 2)
    rows = np.stack([first, second, 5 - second, 1 - first], axis=1)
    return np.take_along_axis(pts, rows[:, :, None], axis=1)


def _size(value, name: str, default) -> tuple[int, int]:
    if value is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return default
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w
