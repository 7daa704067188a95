"""The DB paper's target algorithm written plainly, polygon by polygon and edge by edge,
over the whole bounding box in float64, the way its public code does it (MhLiao/DB:
make_seg_detection_data.py, make_border_map.py), polygons clamped and those
counter-clockwise on screen reversed first, as its `validate_polygons` does: the oracle
for `hrnet_sweep.dbnet.targets.make_targets`. The benchmarks import it too, so tests
and benchmarks compare against the same reference.

`receipt_words` makes the receipt-like inputs both use.
"""

from __future__ import annotations

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

IMAGE_SIZE = 1280
WORDS = 72

# ----------------------------------------------------------------------------- reference


def reference_targets(
    polygons, height, width, *, ignore=None, shrink_ratio=0.4, thresh_min=0.3, thresh_max=0.7, min_text_size=8
):
    """The paper's targets, straightforwardly: returns the same dict as `make_targets`."""
    polys = [np.clip(np.array(p, np.float64), 0, [width - 1, height - 1]) for p in polygons]
    skip = [False] * len(polys) if ignore is None else list(ignore)
    for i, poly in enumerate(polys):
        x, y = poly[:, 0], poly[:, 1]
        signed = 0.5 * np.sum((np.roll(x, -1) - x) * (np.roll(y, -1) + y))
        if abs(signed) < 1:
            skip[i] = True
        if signed > 0:  # counter-clockwise on screen: the paper reverses the points
            polys[i] = poly[::-1]

    # shrink map (make_seg_detection_data.py)
    prob_map = np.zeros((height, width), np.float32)
    prob_mask = np.ones((height, width), np.float32)
    for i, poly in enumerate(polys):
        span = min(np.ptp(poly[:, 0]), np.ptp(poly[:, 1]))
        if skip[i] or span < min_text_size:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0)
            skip[i] = True
            continue
        shape = Polygon(poly)
        distance = shape.area * (1 - shrink_ratio**2) / shape.length
        offset = pyclipper.PyclipperOffset()
        offset.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        shrunk = offset.Execute(-distance)
        if not shrunk:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0)
            skip[i] = True
            continue
        cv2.fillPoly(prob_map, [np.array(shrunk[0]).astype(np.int32)], 1)

    # border map (make_border_map.py)
    canvas = np.zeros((height, width), np.float32)
    thresh_mask = np.zeros((height, width), np.float32)
    for i, poly in enumerate(polys):
        if not skip[i]:
            _reference_border(poly, canvas, thresh_mask, shrink_ratio)
    thresh_map = canvas * (thresh_max - thresh_min) + thresh_min
    return {"prob_map": prob_map, "prob_mask": prob_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}


def _reference_border(poly, canvas, mask, shrink_ratio):
    shape = Polygon(poly)
    if shape.area <= 0:
        return
    distance = shape.area * (1 - shrink_ratio**2) / shape.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    dilated = np.array(offset.Execute(distance)[0])
    cv2.fillPoly(mask, [dilated.astype(np.int32)], 1.0)

    xmin, ymin = dilated.min(axis=0)
    xmax, ymax = dilated.max(axis=0)
    w, h = xmax - xmin + 1, ymax - ymin + 1
    local = poly - [xmin, ymin]
    xs = np.broadcast_to(np.linspace(0, w - 1, num=w).reshape(1, w), (h, w))
    ys = np.broadcast_to(np.linspace(0, h - 1, num=h).reshape(h, 1), (h, w))
    per_edge = np.zeros((len(local), h, w), np.float32)
    for i in range(len(local)):
        j = (i + 1) % len(local)
        per_edge[i] = np.clip(_reference_edge_distance(xs, ys, local[i], local[j]) / distance, 0, 1)
    nearest = per_edge.min(axis=0)

    # Clip the bounding box to the canvas. The public code ends its slice of the distance
    # map at xmax_valid - xmax + width (and the same in y), which is x1 - xmin + 1 here.
    x0, x1 = min(max(0, xmin), canvas.shape[1] - 1), min(max(0, xmax), canvas.shape[1] - 1)
    y0, y1 = min(max(0, ymin), canvas.shape[0] - 1), min(max(0, ymax), canvas.shape[0] - 1)
    region = canvas[y0 : y1 + 1, x0 : x1 + 1]
    region[...] = np.fmax(1 - nearest[y0 - ymin : y1 - ymin + 1, x0 - xmin : x1 - xmin + 1], region)


def _reference_edge_distance(xs, ys, p1, p2):
    """The public code's pixel-to-edge distance: the height of the triangle (pixel, p1,
    p2) over the edge, or the nearer endpoint's distance where the angle at the pixel is
    acute (its cosine, by the law of cosines, is negative below)."""
    d1 = np.square(xs - p1[0]) + np.square(ys - p1[1])
    d2 = np.square(xs - p2[0]) + np.square(ys - p2[1])
    edge = np.square(p1[0] - p2[0]) + np.square(p1[1] - p2[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = (edge - d1 - d2) / (2 * np.sqrt(d1 * d2))
        sine_sq = np.nan_to_num(1 - np.square(cosine))
        result = np.sqrt(d1 * d2 * sine_sq / edge)
    acute = cosine < 0
    result[acute] = np.sqrt(np.fmin(d1, d2))[acute]
    return result


# ----------------------------------------------------------------------------- data


def receipt_words(count: int, size: int = IMAGE_SIZE, seed: int = 0) -> list[np.ndarray]:
    """`count` receipt-like word quads on a `size` x `size` image, deterministic per seed.

    Lines of 1 to 5 words on a receipt about 62% of the image wide, word height 22-32 px
    at 72 words and 1280 px (for more words, words are smaller by sqrt(72 / count) and
    lines longer, so that they still fit), the page rotated by up to 3 degrees and every
    corner jittered a little.
    """
    rng = np.random.default_rng(seed)
    fit = min(1.0, (WORDS / count) ** 0.5)
    scale = fit * size / IMAGE_SIZE
    left, right = 0.19 * size, 0.81 * size
    words, y = [], 0.06 * size
    while len(words) < count:
        h = rng.uniform(22, 32) * scale
        x = left + rng.uniform(0, 40) * scale
        for _ in range(int(rng.integers(1, 1 + round(5 / fit)))):
            w = rng.integers(2, 13) * 0.55 * h
            if x + w > right or len(words) >= count:
                break
            top = y + rng.uniform(-1, 1) * scale
            quad = np.array([[x, top], [x + w, top], [x + w, top + h], [x, top + h]])
            words.append(quad + rng.normal(0, 0.6 * scale, (4, 2)))
            x += w + rng.uniform(0.6, 2.5) * h
        y += h + rng.uniform(4, 14) * scale
        if y > 0.97 * size:  # (not reached up to 500 words) wrap rather than fall off the page
            y, left, right = 0.06 * size, left + 3, right + 3
    angle = np.deg2rad(rng.uniform(-3, 3))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([size / 2, size / 2])
    return [((q - centre) @ rot.T + centre).astype(np.float32) for q in words]
