"""DB post-processing: a probability map -> text polygons with scores, in original pixels.

One entry point, `detect(prob, pp, content_size=..., image_size=...)`, with its parameters
from `PostprocessConfig`, serves validation (`dbnet.lit`), tuning (`dbnet.validation`, on
validation maps and on cached out-of-fold maps) and prediction (`dbnet.inference`). All
of them post-process the same representation, as the public code does: the content
region of the network's map at the network's resolution, as uint8 (`to_uint8`), with the
original image's size to scale the polygons to. A setting tuned at validation therefore
gives the same polygons at prediction (measured before this rule, with prediction on
maps resized to the original image: a checkpoint tuned to 0.9375 at validation scored
0.9287 at prediction on the same 26 receipts). The parameters are defined so that they
would also mean the same on maps of another size:

* `thresh`, `box_thresh`: probabilities (a uint8 map is read as value / 255);
  `unclip_ratio` and the polygon tolerance are relative to each candidate's own size;
  `max_candidates` is a count;
* `min_size` is in original-image pixels: on a map at scale s (map pixels per image
  pixel, the geometric mean of the two axes) the filters are `min_size * s` before and
  `(min_size + 2) * s` after unclipping (on a map at the image's size, s = 1, that is
  the public code);
* polygons come back in original-image pixels.

The algorithm is the DB paper's public code (MhLiao/DB, `seg_detector_representer.py`):
binarize at `thresh`, take the contours of the binary map (`find_contours`), and per
contour (`score_candidates`, then `unclip_candidates`)

* box mode: minimum-area rectangle (dropped if its short side < min_size), score = mean
  probability inside it, unclip it by D = A * unclip_ratio / L with pyclipper (round
  joins), minimum-area rectangle of that (dropped if short side < min_size + 2);
* polygon mode: the contour simplified by approxPolyDP (epsilon = `EPSILON_RATIO` *
  perimeter; fewer than 4 points dropped), score = mean probability inside it, unclip it
  the same way (dropped unless that gives exactly one polygon, or if its minimum-area
  rectangle's short side < min_size + 2), the unclipped polygon kept.

Candidates scoring below `box_thresh` are dropped. The score does not depend on the
unclip, so the stages can be shared: contours once per `thresh`, scores once per mode,
and `box_thresh` a filter on the scores (what the search in `dbnet.validation` reuses).
Coordinates are mapped from the content region of the map (letterbox: resized longest
side, padding at the bottom and right) to the original image with x * W0 / w, as the
public code does, and clamped to [0, W0] x [0, H0], as it does. Where the public code
spends its time (shapely polygons per candidate, numpy on 4-point arrays) this module
uses the closed forms of the rectangle and cv2 calls on a crop of the map; the results
are the same (benchmarks/bench_postprocess.py).

Deviations from the public code, on purpose:

* `min_size` in original pixels, not map pixels (see above): the public code's filter
  would drop 3 px at the 1280 px network input but 3 px of a 4000 px photo at
  prediction, so validation, tuning and prediction would disagree.
* Points are not rounded to integers (the public code rounds after scaling): the
  submission writer rounds where the format needs it, and the metric truncates.
* Polygon mode uses epsilon 0.002 * perimeter and the configured `unclip_ratio`, where
  the repository's polygon mode hard-codes 0.01 and 2.0: 0.01 of a long receipt line's
  perimeter is several pixels, enough to cut its corners (PaddleOCR's DB uses 0.002), and
  a fixed ratio could not be tuned. Box mode unclips by D = A * r / L (the paper, eq. 10),
  not by the repository's later `is_rect` formula (shrink ratio 0.4 solved back, minus 2
  px), for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import pyclipper

from ..config import PostprocessConfig

__all__ = [
    "EPSILON_RATIO",
    "MapFrame",
    "detect",
    "find_contours",
    "map_frame",
    "postprocess",
    "score_candidates",
    "to_image",
    "to_uint8",
    "unclip_candidates",
]

EPSILON_RATIO = 0.002
"""approxPolyDP tolerance in polygon mode, times the contour's perimeter."""

_PP = PostprocessConfig()  # the defaults of `postprocess`: one place, the config


def detect(
    prob: np.ndarray,
    pp: PostprocessConfig,
    *,
    content_size: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """Detect text in one probability map with the settings of `pp`.

    Args:
        prob: (H, W) probability map, float 0..1 or uint8 0..255.
        pp: the post-processing settings (`models.postprocess`).
        content_size: (h, w) of the image content at the top left of the map; the rest
            is letterbox padding. Default: the whole map.
        image_size: (H0, W0) of the original image the coordinates are mapped to (and
            `min_size` is measured in). Default: the content size (no scaling).

    Returns:
        polygons, float32 (K, 2) x, y in original image pixels (K = 4 in box mode), and
        their scores.
    """
    return postprocess(
        prob,
        thresh=pp.thresh,
        box_thresh=pp.box_thresh,
        unclip_ratio=pp.unclip_ratio,
        use_polygon=pp.use_polygon,
        max_candidates=pp.max_candidates,
        min_size=pp.min_size,
        content_size=content_size,
        image_size=image_size,
    )


def postprocess(
    prob: np.ndarray,
    *,
    thresh: float = _PP.thresh,
    box_thresh: float = _PP.box_thresh,
    unclip_ratio: float = _PP.unclip_ratio,
    use_polygon: bool = _PP.use_polygon,
    max_candidates: int = _PP.max_candidates,
    min_size: float = _PP.min_size,
    content_size: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """`detect` with the settings as keywords; the defaults are `PostprocessConfig`'s.

    `min_size`: candidates whose rectangle is thinner than this many original-image
    pixels are dropped (and thinner than min_size + 2 after unclipping).
    """
    if unclip_ratio <= 0:
        raise ValueError(f"unclip_ratio must be > 0, got {unclip_ratio}")
    frame = map_frame(prob, content_size, image_size)
    before, after = frame.min_sides(min_size)
    contours = find_contours(frame.pred, thresh, max_candidates)
    cands = score_candidates(frame.pred, contours, use_polygon=use_polygon, min_side=before)
    cands = [c for c in cands if c[1] >= box_thresh]
    found = unclip_candidates(cands, unclip_ratio=unclip_ratio, min_side=after, use_polygon=use_polygon)
    return to_image(found, frame, use_polygon=use_polygon)


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """A float 0..1 map as uint8 0..255 (rounded): how validation hands its maps to the
    search, how out-of-fold maps are cached and what prediction post-processes, so a
    setting tuned on one of them gives the same polygons on the others."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class MapFrame:
    """A map's content as float32 0..1, and how it sits on the original image."""

    pred: np.ndarray  # (h, w) content region
    image_size: tuple[int, int]  # (H0, W0)

    @property
    def scale(self) -> float:
        """Map pixels per image pixel (geometric mean of the two axes)."""
        h, w = self.pred.shape
        return math.sqrt(h / self.image_size[0] * w / self.image_size[1])

    def min_sides(self, min_size: float) -> tuple[float, float]:
        """`min_size` (original pixels) as the two map-pixel filters: before and after unclipping."""
        return min_size * self.scale, (min_size + 2) * self.scale


def map_frame(
    prob: np.ndarray, content_size: tuple[int, int] | None = None, image_size: tuple[int, int] | None = None
) -> MapFrame:
    """Check the sizes, crop the content and read the map as float32 probabilities."""
    prob = _check_map(prob)
    height, width = prob.shape
    ch, cw = _size(content_size, "content_size", (height, width))
    if ch > height or cw > width:
        raise ValueError(f"content_size {(ch, cw)} is larger than the map {(height, width)}")
    ih, iw = _size(image_size, "image_size", (ch, cw))
    pred = prob[:ch, :cw]
    if pred.dtype == np.uint8:
        pred = pred.astype(np.float32) * np.float32(1 / 255)
    elif pred.dtype not in (np.float32, np.float64):
        pred = pred.astype(np.float32)
    return MapFrame(pred, (ih, iw))


def find_contours(pred: np.ndarray, thresh: float, max_candidates: int) -> list[np.ndarray]:
    """The first `max_candidates` contours of the map binarized at `thresh`, in cv2's order."""
    bitmap = np.greater(pred, thresh).view(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    return list(contours[: max(int(max_candidates), 0)])


def score_candidates(
    pred: np.ndarray, contours, *, use_polygon: bool, min_side: float
) -> list[tuple[np.ndarray, float, float]]:
    """(shape to unclip, score, its area / perimeter) per contour that passes the filters
    before the unclip; `min_side` in map pixels (box mode only, as in the public code)."""
    out = []
    for contour in contours:
        if use_polygon:
            approx = cv2.approxPolyDP(contour, EPSILON_RATIO * cv2.arcLength(contour, True), True)
            if len(approx) < 4:
                continue
            perimeter, area = cv2.arcLength(approx, True), abs(cv2.contourArea(approx))
            if area <= 0 or perimeter <= 0:
                continue
            shape, ratio = approx.reshape(-1, 2), area / perimeter
        else:
            rect = cv2.minAreaRect(contour)
            w, h = rect[1]
            if min(w, h) < min_side or w + h <= 0:
                continue
            # the rectangle's area and perimeter in closed form (the public code builds a
            # shapely polygon of its corners for these two numbers)
            shape, ratio = cv2.boxPoints(rect), w * h / (2.0 * (w + h))
        score = _mean_inside(pred, shape)
        if score >= 0:  # drops NaN
            out.append((shape, score, ratio))
    return out


def unclip_candidates(
    cands, *, unclip_ratio: float, min_side: float, use_polygon: bool
) -> list[tuple[np.ndarray, float]]:
    """(expanded shape, score) of each candidate offset by D = A * unclip_ratio / L that
    passes the filters after the unclip; `min_side` in map pixels."""
    out = []
    for shape, score, ratio in cands:
        expanded = _offset(shape.tolist(), ratio * unclip_ratio)
        if use_polygon:
            if len(expanded) != 1:
                continue
            poly = np.array(expanded[0], np.int32)
            if min(cv2.minAreaRect(poly)[1]) < min_side:
                continue
            out.append((poly.astype(np.float64), score))
        elif expanded:
            rect = cv2.minAreaRect(np.array(expanded[0], np.int32))
            if min(rect[1]) >= min_side:
                out.append((cv2.boxPoints(rect), score))
    return out


def to_image(found, frame: MapFrame, *, use_polygon: bool) -> tuple[list[np.ndarray], list[float]]:
    """Map-pixel shapes -> float32 polygons in original pixels, clamped to [0, W0] x [0, H0]."""
    if not found:
        return [], []
    shapes, scores = zip(*found)
    points = np.concatenate(shapes).astype(np.float64)
    if not use_polygon:
        points = _clockwise_from_left(points.reshape(-1, 4, 2)).reshape(-1, 2)
    ch, cw = frame.pred.shape
    ih, iw = frame.image_size
    points *= (iw / cw, ih / ch)
    np.clip(points, 0.0, (iw, ih), out=points)
    stops = np.cumsum([len(p) for p in shapes])
    return np.split(points.astype(np.float32), stops[:-1]), list(scores)


# ----------------------------------------------------------------------------- helpers


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


def _check_map(prob) -> np.ndarray:
    prob = np.asarray(prob)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty (H, W) map, got shape {list(prob.shape)}")
    return prob


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
