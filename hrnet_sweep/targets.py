"""DBNet training targets: the shrink (probability) map and the threshold (border) map.

The definition is the DB paper's, as its public code computes it (MhLiao/DB,
`make_seg_detection_data.py` and `make_border_map.py`), so that a model trained here
sees the same targets as one trained there:

* polygons are clamped into the image; one with area < 1, a min(bbox height, bbox
  width) below `min_text_size`, an ignore flag, or an empty shrink is *ignored*:
  `prob_mask` is 0 over it and it adds nothing else;
* shrink and dilation offset D = A (1 - r^2) / L (area, perimeter), done with pyclipper
  (round joins) on the polygon's points, which pyclipper truncates to integers;
* the border value of a pixel is 1 - min(dist / D, 1), where dist is the smallest
  distance to the polygon's edges, taken as a max over polygons, over the bounding box
  of the dilated polygon; `thresh_mask` is 1 inside the dilated polygons; the map is
  then scaled into [thresh_min, thresh_max].

The public code's point-to-edge distance has a quirk that is kept here on purpose (the
targets are compared with that code): where the angle that an edge subtends at the
pixel is acute, it takes the distance to the nearer endpoint instead of the distance to
the segment. The two differ only near the ends of an edge, outside the polygon, by
less than 1e-3 on the map for word-sized quadrilaterals; more for polygons with edges
shorter than about 2 D.

Speed: the public code evaluates the distance in float64 over the whole bounding box,
one edge at a time, with about twenty full-size temporaries per edge. Here each edge's
distance is written in the edge's own frame, where both coordinates are sums of a
per-column and a per-row term, so all edges of a polygon are done together in a few
float32 passes over the window, and the map is scaled only inside the windows (the
background already holds thresh_min). See benchmarks/bench_targets.py.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import pyclipper

__all__ = ["make_targets", "shrink_distance"]


def shrink_distance(area: float, perimeter: float, shrink_ratio: float) -> float:
    """The DB offset D = A (1 - r^2) / L used to shrink and to dilate a polygon."""
    return area * (1.0 - shrink_ratio * shrink_ratio) / perimeter


def make_targets(
    polygons: Sequence[np.ndarray],
    height: int,
    width: int,
    *,
    ignore: Sequence[bool] | None = None,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_text_size: int = 8,
) -> dict[str, np.ndarray]:
    """Build the four DBNet target maps for one image.

    Args:
        polygons: (K, 2) arrays of x, y pixels in the network input, K >= 3; points
            outside the image are clamped into it.
        height, width: size of the maps (the network input).
        ignore: one flag per polygon; flagged polygons are masked out of the loss.
        shrink_ratio: r in D = A (1 - r^2) / L.
        thresh_min, thresh_max: range the border map is scaled into.
        min_text_size: polygons whose bounding box is thinner than this are ignored.

    Returns:
        float32 (height, width) maps `prob_map` (1 inside shrunk polygons), `prob_mask`
        (0 over ignored polygons, 1 elsewhere), `thresh_map` (border map scaled into
        [thresh_min, thresh_max]) and `thresh_mask` (1 inside dilated polygons).
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if not 0.0 < shrink_ratio < 1.0:
        raise ValueError(f"shrink_ratio must be in (0, 1), got {shrink_ratio}")
    if not thresh_min < thresh_max:
        raise ValueError(f"thresh_min must be below thresh_max, got {thresh_min} and {thresh_max}")
    flags = [False] * len(polygons) if ignore is None else [bool(f) for f in ignore]
    if len(flags) != len(polygons):
        raise ValueError(f"ignore has {len(flags)} flags for {len(polygons)} polygons")

    prob_map = np.zeros((height, width), np.float32)
    prob_mask = np.ones((height, width), np.float32)
    thresh_map = np.full((height, width), thresh_min, np.float32)
    thresh_mask = np.zeros((height, width), np.float32)

    for index, (raw, flagged) in enumerate(zip(polygons, flags)):
        poly = _clamped(raw, index, width, height)
        area = abs(cv2.contourArea(poly))
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        if flagged or area < 1.0 or min(hi - lo) < min_text_size:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0.0)
            continue
        distance = shrink_distance(area, cv2.arcLength(poly, True), shrink_ratio)
        points = poly.tolist()
        shrunk = _offset(points, -distance)
        if not shrunk:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0.0)
            continue
        cv2.fillPoly(prob_map, [np.array(shrunk[0], np.int32)], 1.0)
        dilated = np.array(_offset(points, distance)[0], np.int32)
        cv2.fillPoly(thresh_mask, [dilated], 1.0)
        _draw_border(thresh_map, poly, dilated, distance, thresh_min, thresh_max)

    return {"prob_map": prob_map, "prob_mask": prob_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}


def _clamped(raw: np.ndarray, index: int, width: int, height: int) -> np.ndarray:
    poly = np.array(raw, dtype=np.float32)  # a copy: the caller's polygon is not modified
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise ValueError(f"polygon {index} has shape {list(poly.shape)}, expected [K, 2] with K >= 3")
    if not np.isfinite(poly).all():
        raise ValueError(f"polygon {index} has NaN or infinite coordinates")
    np.clip(poly[:, 0], 0, width - 1, out=poly[:, 0])
    np.clip(poly[:, 1], 0, height - 1, out=poly[:, 1])
    return poly


def _offset(points: list, delta: float) -> list:
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(points, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(delta)


def _draw_border(canvas: np.ndarray, poly: np.ndarray, dilated: np.ndarray, distance: float, lo: float, hi: float) -> None:
    """canvas = max(canvas, hi - (hi - lo) * dist / D) over the dilated polygon's bounding box.

    Values below `lo` never win because the canvas starts at `lo`; this equals scaling
    max(0, 1 - dist / D) into [lo, hi] after the max over polygons.
    """
    x0, y0 = np.maximum(dilated.min(axis=0), 0)
    x1 = min(int(dilated[:, 0].max()), canvas.shape[1] - 1)
    y1 = min(int(dilated[:, 1].max()), canvas.shape[0] - 1)
    if x1 < x0 or y1 < y0:
        return
    sq = _edge_distance_sq(poly.astype(np.float64) - (x0, y0), y1 - y0 + 1, x1 - x0 + 1)
    dist = np.sqrt(sq, out=sq)
    dist *= np.float32(-(hi - lo) / distance)
    dist += np.float32(hi)
    view = canvas[y0 : y1 + 1, x0 : x1 + 1]
    np.maximum(view, dist, out=view)


def _edge_distance_sq(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Squared distance of every pixel of an (h, w) window to the nearest edge of `poly`.

    In the frame of an edge (origin at its midpoint, unit vector u along it, half length
    a) a pixel has coordinates s = (p - m).u and c = (p - m) x u, each a per-column plus
    a per-row term. The public code's distance is |c| where s^2 + c^2 <= a^2 (the edge
    subtends a right or obtuse angle) and the distance to the nearer endpoint,
    sqrt(c^2 + (|s| - a)^2), elsewhere.
    """
    start = poly
    end = np.roll(poly, -1, axis=0)
    vec = end - start
    length = np.hypot(vec[:, 0], vec[:, 1])
    degenerate = length == 0  # repeated point: the distance to that point
    ux = np.where(degenerate, 1.0, vec[:, 0] / np.where(degenerate, 1.0, length))
    uy = np.where(degenerate, 0.0, vec[:, 1] / np.where(degenerate, 1.0, length))
    mid = (start + end) / 2
    half = (length / 2).astype(np.float32)[:, None, None]

    dx = np.arange(w, dtype=np.float64)[None, :] - mid[:, 0:1]  # (K, w)
    dy = np.arange(h, dtype=np.float64)[None, :] - mid[:, 1:2]  # (K, h)
    s = (dx * ux[:, None]).astype(np.float32)[:, None, :] + (dy * uy[:, None]).astype(np.float32)[:, :, None]
    c = (dx * uy[:, None]).astype(np.float32)[:, None, :] - (dy * ux[:, None]).astype(np.float32)[:, :, None]

    c *= c  # c^2
    outside = s * s
    outside += c
    outside = outside > half * half
    np.abs(s, out=s)
    s -= half
    s *= s
    s += c  # squared distance to the nearer endpoint
    np.copyto(c, s, where=outside)
    return c.min(axis=0)
