"""`hrnet_sweep analyze` and `hrnet_sweep compare`: what is in a prediction file, and where
it goes wrong (DESIGN.md section 9).

The module has three layers, read top to bottom:

1. pure functions over polygons (`box_geometry`, `image_flags`, `count_outliers`,
   `error_types`), tested on constructed boxes;
2. `analyze(...) -> AnalysisReport` and `compare(...) -> CompareReport`, which load the
   files, score every image with `metric.evaluate` (the one CLEval of the project) and
   write `report.md`, `summary.json` and the PNGs of `plots.py` into `out_dir`;
3. `main` / `main_compare`, the thin CLI wrappers that also print a rich table.

Every threshold lives in `Rules`, so the report can print the rule next to each count.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from .constants import MAX_DETECTIONS
from .errors import DataError, UserError
from .io import atomic_write_json, atomic_write_text, load_annotations, read_json, read_submission

__all__ = [
    "AnalysisReport",
    "CompareReport",
    "Rules",
    "analyze",
    "box_geometry",
    "compare",
    "count_outliers",
    "error_types",
    "image_flags",
    "main",
    "main_compare",
]


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
    the detection lies on ground truth."""
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
            "false_positive": f"detection with < {self.overlap:.0%} of its area on any GT",
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
    under-4-point polygons, the number past the scorer's cap, and the per-box `width`,
    `height`, `aspect` lists (for plots). `huge` is None when `size` is None.
    """
    out = {"boxes": len(polys), "tiny": [], "huge": [] if size else None, "extreme_aspect": [],
           "under_4_points": [], "over_cap": max(0, len(polys) - MAX_DETECTIONS),
           "width": [], "height": [], "aspect": []}
    img_area = size[0] * size[1] if size else 0
    img_side = max(size) if size else 0
    for i, poly in enumerate(polys):
        if len(poly) < 4:
            out["under_4_points"].append(i)
        if len(poly) < 3:
            continue
        w, h, area = box_geometry(poly)
        ar = _aspect(w, h)
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
    g_geo = [_shape(p) for p in gt]
    d_geo = [_shape(p) for p in det]
    g_area = np.array([g.area for g in g_geo])
    d_area = np.array([d.area for d in d_geo])
    inter = np.zeros((len(g_geo), len(d_geo)))
    if g_geo and d_geo:
        tree = shapely.STRtree(d_geo)
        gi, di = tree.query(g_geo, predicate="intersects")
        for i, j in zip(gi, di):
            inter[i, j] = g_geo[i].intersection(d_geo[j]).area
    with np.errstate(divide="ignore", invalid="ignore"):
        in_gt = np.where(g_area[:, None] > 0, inter / g_area[:, None], 0.0)  # share of GT i under det j
        in_det = np.where(d_area[None, :] > 0, inter / d_area[None, :], 0.0)  # share of det j on GT i

    def covered(geo, others, idx) -> float:
        # Union, not sum: overlapping detections must not cover a word twice.
        if len(idx) == 0 or geo.area <= 0:
            return 0.0
        if len(idx) == 1:
            return geo.intersection(others[idx[0]]).area / geo.area
        return geo.intersection(shapely.union_all([others[k] for k in idx])).area / geo.area

    missed = [i for i, g in enumerate(g_geo) if covered(g, d_geo, np.flatnonzero(inter[i])) < rules.overlap]
    false_pos = [j for j, d in enumerate(d_geo) if covered(d, g_geo, np.flatnonzero(inter[:, j])) < rules.overlap]
    return {
        "missed": missed,
        "missed_small": [i for i in missed if min(box_geometry(gt[i])[:2]) < rules.small_text_px],
        "split": [i for i in range(len(g_geo)) if int((in_det[i] >= rules.inside).sum()) >= 2],
        "merged": [j for j in range(len(d_geo)) if int((in_gt[:, j] >= rules.inside).sum()) >= 2],
        "false_positive": false_pos,
    }


# ----------------------------------------------------------------------------- loading


@dataclass
class _Loaded:
    """A prediction file: polygons per image, image sizes it declares, words it lost."""

    path: Path
    polys: dict[str, list[np.ndarray]]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)


def _load_predictions(path: str | Path) -> _Loaded:
    """JSON (the annotation schema) or submission CSV, by extension.

    For JSON, words the loader skips (under 3 points, NaN, zero area) are counted as
    `unreadable`, so the report can say how many the file really had.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _Loaded(path, read_submission(path))
    anns = load_annotations(path)
    raw = read_json(path)["images"]
    unreadable = {}
    for name, ann in anns.items():
        words = raw[name].get("words") or {}
        if len(words) > len(ann.words):
            unreadable[name] = len(words) - len(ann.words)
    sizes = {n: (a.width, a.height) for n, a in anns.items() if a.width and a.height}
    return _Loaded(path, {n: a.polygons() for n, a in anns.items()}, sizes, unreadable)


_EXIF_ORIENTATION = 274
_EXIF_SWAPS_SIDES = {5, 6, 7, 8}  # the rotations by 90 or 270 degrees


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header only; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in _EXIF_SWAPS_SIDES:
                w, h = h, w
            return int(w), int(h)
    except (OSError, SyntaxError, ValueError):
        return None


def _image_sizes(names, images_dir, gt, preds: Sequence[_Loaded]) -> dict[str, tuple[int, int]]:
    """Sizes from the image files, else the GT's img_w/img_h, else the prediction JSON's."""
    sizes: dict[str, tuple[int, int]] = {}
    for loaded in preds:
        sizes.update(loaded.sizes)
    if gt:
        sizes.update({n: (a.width, a.height) for n, a in gt.items() if a.width and a.height})
    if images_dir is not None:
        for name in names:
            size = _image_size(Path(images_dir) / name)
            if size:
                sizes[name] = size
    return sizes


def _scored(polys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The detections the scorer sees: 4+ points, the first MAX_DETECTIONS."""
    return [p for p in polys if len(p) >= 4][:MAX_DETECTIONS]


def _check_inputs(pred_paths, gt_path, images_dir) -> None:
    for p in pred_paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: prediction file not found")
        if Path(p).suffix.lower() not in (".json", ".csv"):
            raise DataError(f"{p}: expected a prediction .json or a submission .csv")
    if gt_path is not None and not Path(gt_path).is_file():
        raise DataError(f"{gt_path}: ground-truth file not found")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise DataError(f"{images_dir}: image folder not found")


def _safe(name: str) -> str:
    """A file-name-safe stem of an image name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:80] or "image"


# ----------------------------------------------------------------------------- one model

_FLAGS = ("tiny", "huge", "extreme_aspect", "under_4_points", "over_cap")
_ERRORS = ("missed", "missed_small", "split", "merged", "false_positive")


def _as_dict(obj) -> dict:
    if obj is None or isinstance(obj, dict):
        return dict(obj or {})
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return asdict(obj)


def _int_histogram(values: Sequence[int], max_bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of counts with integer bin edges (at most `max_bins` bins)."""
    top = int(max(values, default=0)) + 1
    step = max(1, math.ceil(top / max_bins))
    edges = np.arange(0, top + step, step)
    return np.histogram(np.asarray(values, dtype=np.int64), bins=edges)[0], edges


@dataclass
class _Model:
    """One prediction file analysed over a list of images."""

    name: str
    loaded: _Loaded
    images: dict[str, dict]  # per image: counts, flags (index lists), metric, error index lists
    outliers: dict
    metric: dict | None  # precision, recall, hmean, micro

    def counts(self) -> dict[str, int]:
        return {n: r["boxes"] for n, r in self.images.items()}

    def flag_totals(self) -> dict[str, dict]:
        out = {}
        for flag in _FLAGS:
            per = {n: (r[flag] if isinstance(r[flag], int) else len(r[flag])) for n, r in self.images.items()
                   if r[flag] is not None}
            hit = sorted(((k, n) for n, k in per.items() if k), key=lambda kn: (-kn[0], kn[1]))
            out[flag] = {"boxes": int(sum(per.values())), "images": len(hit), "top": [[n, k] for k, n in hit[:5]],
                         "images_checked": len(per)}
        return out

    def error_totals(self) -> dict[str, dict] | None:
        if self.metric is None:
            return None
        out = {}
        for err in _ERRORS:
            per = {n: len(r["errors"][err]) for n, r in self.images.items() if r.get("errors")}
            hit = sorted(((k, n) for n, k in per.items() if k), key=lambda kn: (-kn[0], kn[1]))
            out[err] = {"total": int(sum(per.values())), "images": len(hit), "top": [[n, k] for k, n in hit[:5]]}
        return out

    def box_summary(self) -> dict:
        counts = list(self.counts().values())
        hist, edges = _int_histogram(counts)
        arr = np.asarray(counts, dtype=np.float64)
        return {
            "images": len(counts),
            "total": int(arr.sum()),
            "mean": float(arr.mean()) if len(arr) else 0.0,
            "median": float(np.median(arr)) if len(arr) else 0.0,
            "min": int(arr.min()) if len(arr) else 0,
            "max": int(arr.max()) if len(arr) else 0,
            "histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
        }

    def image_record(self, name: str) -> dict:
        """The JSON-able per-image record: counts, not index lists."""
        r = self.images[name]
        out = {k: r[k] for k in ("boxes", "in_predictions", "in_gt", "size", "unreadable")}
        out.update({f: (None if r[f] is None else r[f] if isinstance(r[f], int) else len(r[f])) for f in _FLAGS})
        if r.get("metric") is not None:
            out.update(r["metric"])
            out.update({e: len(v) for e, v in r["errors"].items()})
        return out

    def summary(self) -> dict:
        return {
            "file": str(self.loaded.path),
            "boxes": self.box_summary(),
            "flags": self.flag_totals(),
            "count_outliers": self.outliers,
            "unreadable": int(sum(self.loaded.unreadable.values())),
            "metric": self.metric,
            "errors": self.error_totals(),
        }


def _image_names(loaded: Sequence[_Loaded], gt) -> list[str]:
    """GT images in file order, then prediction-only images in first-seen order."""
    names = list(gt) if gt else []
    seen = set(names)
    for ld in loaded:
        for n in ld.polys:
            if n not in seen:
                seen.add(n)
                names.append(n)
    return names


def _analyse_model(name: str, loaded: _Loaded, names, sizes, gt, rules: Rules) -> _Model:
    images = {}
    for img in names:
        polys = loaded.polys.get(img, [])
        size = sizes.get(img)
        rec = image_flags(polys, size, rules)
        rec.update(in_predictions=img in loaded.polys, in_gt=bool(gt) and img in gt,
                   size=list(size) if size else None, unreadable=loaded.unreadable.get(img, 0))
        images[img] = rec
    outliers = count_outliers({n: r["boxes"] for n, r in images.items()}, rules)
    metric_summary = None
    if gt:
        from . import metric

        gt_polys = {n: a.polygons() for n, a in gt.items()}
        result = metric.evaluate(gt_polys, {n: loaded.polys.get(n, []) for n in gt})
        metric_summary = {"precision": float(result.precision), "recall": float(result.recall),
                          "hmean": float(result.hmean), "micro": _as_dict(result.micro)}
        for img in gt:
            per = _as_dict(result.per_image[img])
            images[img]["metric"] = {k: per[k] for k in ("precision", "recall", "hmean", "num_gt", "num_det") if k in per}
            images[img]["errors"] = error_types(gt_polys[img], _scored(loaded.polys.get(img, [])), rules)
    return _Model(name, loaded, images, outliers, metric_summary)
