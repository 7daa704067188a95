"""`Rules`, every threshold of the analysis, and the pure functions that apply them.

`box_geometry`, `image_flags`, `count_outliers` and `error_types` work on polygons and
counts only (no I/O), and are tested on constructed boxes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from ..constants import MAX_DETECTIONS


@dataclass(frozen=True)
class Rules:
    """Every threshold of the analysis; the report prints each rule next to its count.

    Box geometry comes from the minimum-area rectangle of the polygon: `width` is the side
    nearer the x axis, `height` the other one, so a horizontal word has aspect > 1 and a
    vertical column of text aspect < 1.
    """

    tiny_px: float = 10.0
    """Tiny: both sides of the min-area rectangle <= this (fits in a 10x10 px square)."""
    huge_area: float = 0.05
    """Huge: polygon area > this fraction of the image area ..."""
    huge_side: float = 0.5
    """... or the longer side > this fraction of the image's longer side (size known)."""
    aspect_max: float = 20.0
    """Extreme aspect: width / height > aspect_max or < aspect_min."""
    aspect_min: float = 0.1
    few_ratio: float = 0.25
    """Too few boxes: fewer than few_ratio x the median boxes per image."""
    many_ratio: float = 3.0
    """Too many boxes: more than many_ratio x the median boxes per image."""
    overlap: float = 0.1
    """Missed GT: detections cover < overlap of its area. False positive: < overlap of
    the detection lies on ground truth and it covers < overlap of every GT."""
    inside: float = 0.5
    """Split GT: 2+ detections each lie >= inside within it. Merged detection: 2+ GT each
    lie >= inside within it."""
    small_text_px: float = 16.0
    """Small text: GT height (short side of the min-area rectangle) < this."""

    def describe(self) -> dict[str, str]:
        """One line per rule, for the report and summary.json."""
        return {
            "tiny": f"both sides of the min-area rectangle <= {self.tiny_px:g} px",
            "huge": f"area > {self.huge_area:.0%} of the image, or longer side > {self.huge_side:.0%} "
            "of the image's longer side (only where the image size is known)",
            "extreme_aspect": f"width / height > {self.aspect_max:g} or < {self.aspect_min:g} "
            "(min-area rectangle, width = the side nearer horizontal)",
            "under_4_points": "polygons with fewer than 4 points (the scorer ignores them)",
            "over_cap": f"detections past the first {MAX_DETECTIONS} of an image (the scorer ignores them)",
            "few": f"fewer than {self.few_ratio:g} x the median boxes per image",
            "many": f"more than {self.many_ratio:g} x the median boxes per image",
            "missed": f"GT of which detections cover < {self.overlap:.0%}",
            "missed_small": f"missed GT with height (short side) < {self.small_text_px:g} px",
            "split": f"GT with 2+ detections each lying >= {self.inside:.0%} inside it",
            "merged": f"detection with 2+ GT each lying >= {self.inside:.0%} inside it",
            "false_positive": f"detection with < {self.overlap:.0%} of its area on GT and covering "
            f"< {self.overlap:.0%} of every GT",
        }


# ----------------------------------------------------------------------------- pure: geometry


def box_geometry(poly: np.ndarray) -> tuple[float, float, float]:
    """`(width, height, area)` of a polygon.

    Width and height are the sides of the minimum-area rectangle, width the side nearer
    the x axis; area is the polygon's own (shoelace) area.
    """
    pts = np.asarray(poly, dtype=np.float32).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0, 0.0, 0.0
    box = cv2.boxPoints(cv2.minAreaRect(pts))
    e0, e1 = box[1] - box[0], box[2] - box[1]
    l0, l1 = float(np.hypot(*e0)), float(np.hypot(*e1))
    width, height = (l0, l1) if abs(e0[0]) >= abs(e0[1]) else (l1, l0)
    x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return width, height, area


def _aspect(width: float, height: float) -> float:
    if height > 0:
        return width / height
    return math.inf if width > 0 else 1.0


def image_flags(polys: Sequence[np.ndarray], size: tuple[int, int] | None, rules: Rules) -> dict:
    """Per-box geometry and flags of one image's polygons.

    Returns a dict with the box count, the indices of tiny, huge, extreme-aspect and
    under-4-point polygons, the number past the scorer's cap, and the `width`, `height`,
    `aspect` of each polygon with 3+ points (`measured`: their indices), for the plots.
    `huge` is None when `size` is None.
    """
    out = {
        "boxes": len(polys),
        "tiny": [],
        "huge": [] if size else None,
        "extreme_aspect": [],
        "under_4_points": [],
        "over_cap": max(0, len(polys) - MAX_DETECTIONS),
        "measured": [],
        "width": [],
        "height": [],
        "aspect": [],
    }
    img_area = size[0] * size[1] if size else 0
    img_side = max(size) if size else 0
    for i, poly in enumerate(polys):
        if len(poly) < 4:
            out["under_4_points"].append(i)
        if len(poly) < 3:
            continue
        w, h, area = box_geometry(poly)
        ar = _aspect(w, h)
        out["measured"].append(i)
        out["width"].append(w)
        out["height"].append(h)
        out["aspect"].append(ar)
        if w <= rules.tiny_px and h <= rules.tiny_px:
            out["tiny"].append(i)
        if size and (area > rules.huge_area * img_area or max(w, h) > rules.huge_side * img_side):
            out["huge"].append(i)
        if ar > rules.aspect_max or ar < rules.aspect_min:
            out["extreme_aspect"].append(i)
    return out


def count_outliers(counts: Mapping[str, int], rules: Rules) -> dict:
    """Images with unusually few or many boxes, relative to the median count.

    The rule is a ratio to the median (`few_ratio`, `many_ratio`): it is robust to the
    long tail of dense receipts and reads plainly in a report ("fewer than a quarter of
    the median"), where median +- 3 MAD on ~70 words per image would flag nothing below.
    An empty image is always "few" when the median is at least 1.
    """
    values = np.asarray(list(counts.values()), dtype=np.float64)
    median = float(np.median(values)) if len(values) else 0.0
    low = rules.few_ratio * median
    high = rules.many_ratio * max(median, 1.0)
    return {
        "median": median,
        "few_below": low,
        "many_above": high,
        "few": sorted((n for n, c in counts.items() if c < low), key=lambda n: (counts[n], n)),
        "many": sorted((n for n, c in counts.items() if c > high), key=lambda n: (-counts[n], n)),
    }


def count_limits(few_below: float, many_above: float) -> tuple[str, str]:
    """The too-few / too-many limits of `count_outliers` in whole boxes, as a reader
    wants them: ("7 or fewer", "86 or more") rather than "< 7.125", "> 85.5"."""
    few = math.ceil(few_below) - 1
    return ("never" if few < 0 else f"{few} or fewer"), f"{math.floor(many_above) + 1} or more"


def _shape(poly: np.ndarray):
    geom = Polygon(np.asarray(poly, dtype=np.float64))
    if not geom.is_valid:  # self-intersecting polygons from polygon-mode post-processing
        geom = shapely.make_valid(geom)
    return geom


def error_types(gt: Sequence[np.ndarray], det: Sequence[np.ndarray], rules: Rules) -> dict[str, list[int]]:
    """Classify the errors of one image's detections against its ground truth.

    Returns index lists: `missed` and `missed_small` (GT indices), `split` (GT indices),
    `merged` and `false_positive` (detection indices). Thresholds: `Rules.overlap`,
    `Rules.inside`, `Rules.small_text_px`. Pass the detections the scorer sees.
    """
    g_geo = np.array([_shape(p) for p in gt], dtype=object)
    d_geo = np.array([_shape(p) for p in det], dtype=object)
    g_area, d_area = shapely.area(g_geo), shapely.area(d_geo)
    inter = np.zeros((len(g_geo), len(d_geo)))
    if len(g_geo) and len(d_geo):
        gi, di = shapely.STRtree(d_geo).query(g_geo, predicate="intersects")
        inter[gi, di] = shapely.area(shapely.intersection(g_geo[gi], d_geo[di]))
    with np.errstate(divide="ignore", invalid="ignore"):
        in_gt = np.where(g_area[:, None] > 0, inter / g_area[:, None], 0.0)  # share of GT i under det j
        in_det = np.where(d_area[None, :] > 0, inter / d_area[None, :], 0.0)  # share of det j on GT i

    def reaches(share: np.ndarray, geo, others) -> bool:
        # Whether the union of the overlapping boxes covers `overlap` of `geo`. The union,
        # not the sum: two overlapping detections must not cover a word twice. The largest
        # overlap and the sum bound the union, so it is computed only when they straddle.
        if share.max(initial=0.0) >= rules.overlap:
            return True
        if share.sum() < rules.overlap:
            return False
        return geo.intersection(shapely.union_all(others[np.flatnonzero(share)])).area / geo.area >= rules.overlap

    missed = [i for i in range(len(g_geo)) if not reaches(in_gt[i], g_geo[i], d_geo)]
    # A box over a whole receipt is mostly background, yet it is a merge, not a false positive.
    false_pos = [
        j
        for j in range(len(d_geo))
        if not reaches(in_det[:, j], d_geo[j], g_geo) and not (in_gt[:, j] >= rules.overlap).any()
    ]
    return {
        "missed": missed,
        "missed_small": [i for i in missed if min(box_geometry(gt[i])[:2]) < rules.small_text_px],
        "split": [i for i in range(len(g_geo)) if int((in_det[i] >= rules.inside).sum()) >= 2],
        "merged": [j for j in range(len(d_geo)) if int((in_gt[:, j] >= rules.inside).sum()) >= 2],
        "false_positive": false_pos,
    }
