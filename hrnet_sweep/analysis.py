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
from typing import TYPE_CHECKING, Mapping, Sequence

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from .constants import MAX_DETECTIONS
from .errors import DataError, UserError
from .io import atomic_write_json, atomic_write_text, load_annotations, read_json, read_submission

if TYPE_CHECKING:
    from .plots import Panel

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
    out = {"boxes": len(polys), "tiny": [], "huge": [] if size else None, "extreme_aspect": [],
           "under_4_points": [], "over_cap": max(0, len(polys) - MAX_DETECTIONS),
           "measured": [], "width": [], "height": [], "aspect": []}
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
    false_pos = [j for j in range(len(d_geo))
                 if not reaches(in_det[:, j], d_geo[j], g_geo) and not (in_gt[:, j] >= rules.overlap).any()]
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

    Words the loader skips are counted as `unreadable`, so the report can say how many
    the file really had: for JSON under 3 points, NaN or zero area (`load_annotations`),
    for CSV NaN or infinite coordinates (the scorer skips them too).
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        polys, unreadable = {}, {}
        for name, raw in read_submission(path).items():
            polys[name] = [p for p in raw if np.isfinite(p).all()]
            if len(polys[name]) < len(raw):
                unreadable[name] = len(raw) - len(polys[name])
        return _Loaded(path, polys, unreadable=unreadable)
    anns = load_annotations(path)
    raw = read_json(path)["images"]
    unreadable = {}
    for name, ann in anns.items():
        words = raw[name].get("words") or {}
        if len(words) > len(ann.words):
            unreadable[name] = len(words) - len(ann.words)
    sizes = {n: (a.width, a.height) for n, a in anns.items() if a.width and a.height}
    return _Loaded(path, {n: a.polygons() for n, a in anns.items()}, sizes, unreadable)


def _load_gt(path) -> dict | None:
    if path is None:
        return None
    gt = load_annotations(path)
    if not gt:
        raise DataError(f"{path}: the ground truth has no images")
    return gt


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
    """The detections the scorer sees: the first MAX_DETECTIONS, then those of 4+ points
    (that order, as `metric` and the competition do)."""
    return [p for p in list(polys)[:MAX_DETECTIONS] if len(p) >= 4]


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
    names = list(gt) if gt is not None else []
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
        rec.update(in_predictions=img in loaded.polys, in_gt=gt is not None and img in gt,
                   size=list(size) if size else None, unreadable=loaded.unreadable.get(img, 0))
        images[img] = rec
    outliers = count_outliers({n: r["boxes"] for n, r in images.items()}, rules)
    metric_summary = None
    if gt is not None:
        from . import metric

        gt_polys = {n: a.polygons() for n, a in gt.items()}
        result = metric.evaluate(gt_polys, {n: loaded.polys.get(n, []) for n in gt})
        metric_summary = {"precision": float(result.precision), "recall": float(result.recall),
                          "hmean": float(result.hmean), "micro": dict(result.micro)}
        for img in gt:
            per = result.per_image[img]
            images[img]["metric"] = {k: per[k] for k in ("precision", "recall", "hmean", "num_gt", "num_det")}
            images[img]["errors"] = error_types(gt_polys[img], _scored(loaded.polys.get(img, [])), rules)
    return _Model(name, loaded, images, outliers, metric_summary)


# ----------------------------------------------------------------------------- overlays


def _read_gray(images_dir, name: str) -> np.ndarray | None:
    """The image as grey uint8, EXIF orientation applied; None (and a note) if unreadable.

    Not `data.read_image`: overlays are drawn on grey anyway, and `data` imports torch
    (seconds) for a command that needs none of it.
    """
    if images_dir is None:
        return None
    from PIL import Image, ImageOps

    try:
        with Image.open(Path(images_dir) / name) as im:
            return np.asarray((ImageOps.exif_transpose(im) or im).convert("L"))
    except (OSError, SyntaxError, ValueError):
        return None


def _canvas_size(size, *poly_lists) -> tuple[int, int]:
    """The image size, else the extent of the polygons (a blank canvas that holds them)."""
    if size:
        return int(size[0]), int(size[1])
    pts = [np.asarray(p).reshape(-1, 2) for polys in poly_lists for p in polys if len(p)]
    if not pts:
        return 640, 640
    top = np.concatenate(pts).max(axis=0)
    return max(64, int(top[0]) + 16), max(64, int(top[1]) + 16)


def _error_line(rec: dict) -> str:
    m, e = rec["metric"], rec["errors"]
    return (f"H-Mean {m['hmean']:.3f} (P {m['precision']:.3f}, R {m['recall']:.3f})\n"
            f"missed {len(e['missed'])} (small {len(e['missed_small'])}) · split {len(e['split'])} · "
            f"merged {len(e['merged'])} · false pos. {len(e['false_positive'])}")


def _model_panel(model: _Model, name: str, gt, title: str) -> Panel:
    from .plots import Panel

    rec = model.images[name]
    polys = model.loaded.polys.get(name, [])
    if gt is not None and rec.get("errors") is not None:
        det = _scored(polys)
        err = rec["errors"]
        return Panel(title, gt=gt[name].polygons(), det=det, gt_fill=err["missed"], det_fill=err["false_positive"],
                     gt_split=err["split"], det_merged=err["merged"])
    flagged = {f: rec[f] for f in ("tiny", "huge", "extreme_aspect") if rec[f]}
    return Panel(title, det=polys, det_flagged=flagged)


def _draw(png: Path, panels, name: str, images_dir, sizes, title: str) -> Path:
    """One overlay PNG: on the image when `images_dir` has it, else on a blank canvas."""
    from .plots import overlay

    image = _read_gray(images_dir, name)
    if image is not None:
        size = (image.shape[1], image.shape[0])
    else:
        size = _canvas_size(sizes.get(name), *(p.gt for p in panels), *(p.det for p in panels))
        if images_dir is not None:
            title += "  ·  image not found: blank canvas"
    return overlay(png, panels, size=size, image=image, title=title)


def _clean_stale(out_dir: Path, prefix: str, keep: set[Path]) -> None:
    """Remove overlays of an earlier run (`worst_09_*.png` when this run drew 8)."""
    for old in out_dir.glob(f"{prefix}_[0-9][0-9]_*.png"):
        if old not in keep:
            old.unlink()


# ----------------------------------------------------------------------------- analyze


@dataclass
class AnalysisReport:
    """What `analyze` found: `summary` is what summary.json holds; `files` what it wrote."""

    out_dir: Path
    summary: dict
    files: list[Path]

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def per_image(self) -> dict[str, dict]:
        return self.summary["per_image"]

    @property
    def worst(self) -> list[str]:
        return [w["image"] for w in self.summary["worst"]]


def _worst(model: _Model, k: int) -> list[str]:
    """With GT the lowest per-image H-Mean; without, the images with the most flags."""
    recs = model.images
    if model.metric is not None:
        ranked = sorted((n for n, r in recs.items() if r.get("metric")), key=lambda n: (recs[n]["metric"]["hmean"], n))
        return ranked[:k]
    odd = set(model.outliers["few"]) | set(model.outliers["many"])

    def flagged(n):
        return sum(len(recs[n][f] or ()) for f in ("tiny", "huge", "extreme_aspect", "under_4_points"))

    ranked = sorted((n for n in recs if n in odd or flagged(n)), key=lambda n: (n not in odd, -flagged(n), n))
    return ranked[:k]


def _analysis_plots(model: _Model, gt, rules: Rules, out_dir: Path, worst: list[str]) -> dict[str, Path]:
    from . import plots

    files = {}
    counts = model.counts()
    box = model.box_summary()
    gt_counts = [len(gt[n].words) for n in gt] if gt is not None else None
    edges = _int_histogram(list(counts.values()) + (gt_counts or []))[1]  # one set of bins for both
    files["boxes_per_image"] = plots.boxes_per_image(
        out_dir / "boxes_per_image.png", list(counts.values()), edges,
        median=box["median"], few_below=model.outliers["few_below"], many_above=model.outliers["many_above"],
        gt_counts=gt_counts)
    width = [w for r in model.images.values() for w in r["width"]]
    height = [h for r in model.images.values() for h in r["height"]]
    masks: dict[str, list[bool]] = {f: [] for f in ("tiny", "huge", "extreme_aspect")}
    for r in model.images.values():  # flags as masks aligned with width / height
        for f, mask in masks.items():
            hit = set(r[f] or ())
            mask += [k in hit for k in r["measured"]]
    gt_geo = np.array([box_geometry(p)[:2] for a in (gt or {}).values() for p in a.polygons()]).reshape(-1, 2)
    files["box_geometry"] = plots.box_geometry(
        out_dir / "box_geometry.png", width, height, {f: np.array(m, bool) for f, m in masks.items()},
        tiny_px=rules.tiny_px, aspect_min=rules.aspect_min, aspect_max=rules.aspect_max,
        gt_width=gt_geo[:, 0] if gt is not None else None, gt_height=gt_geo[:, 1] if gt is not None else None)
    if model.metric is not None:
        scored = [n for n in model.images if model.images[n].get("metric")]
        ms = [model.images[n]["metric"] for n in scored]
        labels = {scored.index(n): n for n in worst[:5]}
        files["hmean_per_image"] = plots.hmean_per_image(
            out_dir / "hmean_per_image.png", [m["precision"] for m in ms], [m["recall"] for m in ms],
            [m["hmean"] for m in ms], macro=model.metric["hmean"], labels=labels)
    return files


def analyze(pred_path: str | Path, *, gt_path: str | Path | None = None, images_dir: str | Path | None = None,
            out_dir: str | Path, worst: int = 8, rules: Rules | None = None, plots: bool = True) -> AnalysisReport:
    """Analyse one prediction JSON or submission CSV and write the report into `out_dir`.

    Args:
        pred_path: prediction JSON (annotation schema) or submission CSV.
        gt_path: ground-truth annotation JSON; adds per-image CLEval and error types.
        images_dir: the images, for sizes (huge boxes) and overlay backgrounds.
        out_dir: where report.md, summary.json and the PNGs go (created).
        worst: how many worst images to draw (with GT: lowest H-Mean; without: most flags).
        rules: thresholds; `Rules()` by default.
        plots: False writes report.md and summary.json only (the PNGs take most of the time).

    Raises:
        DataError: a missing or unreadable input. UserError: a bad argument.
    """
    if worst < 0:
        raise UserError(f"worst={worst}: need a count >= 0")
    _check_inputs([pred_path], gt_path, images_dir)
    rules = rules or Rules()
    loaded = _load_predictions(pred_path)
    gt = _load_gt(gt_path)
    names = _image_names([loaded], gt)
    if not names:
        raise DataError(f"{pred_path}: no images in the file")
    sizes = _image_sizes(names, images_dir, gt, [loaded])
    model = _analyse_model(Path(pred_path).name, loaded, names, sizes, gt, rules)
    out_dir = Path(out_dir)
    worst_names = _worst(model, worst)
    files = _analysis_plots(model, gt, rules, out_dir, worst_names) if plots else {}

    prefix = "worst" if gt is not None else "flagged"
    for rank, name in enumerate(worst_names if plots else [], start=1):
        rec = model.images[name]
        if gt is not None:
            head = (f"worst {rank}/{len(worst_names)}: {name}  ·  GT {len(gt[name].words)}  ·  "
                    f"detections {rec['boxes']}")
            panel = _model_panel(model, name, gt, _error_line(rec))
        else:
            head = (f"flagged {rank}/{len(worst_names)}: {name}  ·  {rec['boxes']} boxes "
                    f"(median {model.outliers['median']:g})")
            panel = _model_panel(model, name, None, ", ".join(
                f"{f.replace('_', ' ')} {len(rec[f])}" for f in ("tiny", "huge", "extreme_aspect") if rec[f]) or " ")
        png = out_dir / f"{prefix}_{rank:02d}_{_safe(name)}.png"
        files[f"{prefix}_{rank:02d}"] = _draw(png, [panel], name, images_dir, sizes, head)
    if plots:
        _clean_stale(out_dir, prefix, set(files.values()))

    summary = {
        "inputs": {"predictions": str(pred_path), "ground_truth": None if gt_path is None else str(gt_path),
                   "images": None if images_dir is None else str(images_dir)},
        "images": {
            "total": len(names),
            "in_predictions": sum(n in loaded.polys for n in names),
            "missing_from_predictions": [n for n in names if n not in loaded.polys],
            "not_in_ground_truth": [n for n in names if gt is not None and n not in gt],
            "size_known": sum(n in sizes for n in names),
        },
        **model.summary(),
        "worst": [dict(model.image_record(n), rank=i, image=n, overlay=_name(files.get(f"{prefix}_{i:02d}")))
                  for i, n in enumerate(worst_names, start=1)],
        "worst_by": "hmean" if gt is not None else "flags",
        "rules": {"values": asdict(rules), "definitions": rules.describe()},
        "per_image": {n: model.image_record(n) for n in names},
    }
    md = _analysis_markdown(summary, files)
    summary["files"] = sorted(p.name for p in files.values()) + ["report.md", "summary.json"]
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_json(out_dir / "summary.json", summary, indent=1)
    return AnalysisReport(out_dir, summary, [out_dir / f for f in summary["files"]])


# ----------------------------------------------------------------------------- markdown


def _md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _name(path: Path | None) -> str | None:
    return None if path is None else path.name


def _img(alt: str, path: Path | None) -> list[str]:
    return [f"![{alt}]({path.name})", ""] if path is not None else []


def _link(name: str | None) -> str:
    return f"[{name}]({name})" if name else "-"


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _top(entry: dict) -> str:
    return ", ".join(f"`{n}` ({k})" for n, k in entry["top"][:3]) or "-"


def _metric_line(m: Mapping) -> str:
    return f"**{_f(m.get('hmean'))}** (precision {_f(m.get('precision'))}, recall {_f(m.get('recall'))})"


def _names(names: Sequence[str], counts: Mapping[str, dict], limit: int = 12) -> str:
    shown = ", ".join(f"`{n}` ({counts[n]['boxes']})" for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) if names else "none"


def _analysis_markdown(s: dict, files: Mapping[str, Path]) -> str:
    img, box, out, rules = s["images"], s["boxes"], s["count_outliers"], s["rules"]["definitions"]
    inputs = s["inputs"]
    head = [f"# Analysis of `{Path(inputs['predictions']).name}`", "",
            " · ".join(f"{k.replace('_', ' ')}: `{v}`" for k, v in inputs.items() if v), ""]
    images = str(img["total"])
    if inputs["ground_truth"]:
        images += (f" ({len(img['missing_from_predictions'])} of the ground truth missing from the predictions: "
                   f"scored 0; {len(img['not_in_ground_truth'])} predicted images not in the ground truth: not scored)")
    rows = [
        ["images", images],
        ["boxes", f"{box['total']:,} in all; per image mean {box['mean']:.1f}, median {box['median']:g}, "
                  f"min {box['min']}, max {box['max']}"],
    ]
    if s["metric"]:
        rows.append(["H-Mean, macro over images", _metric_line(s["metric"])])
        if s["metric"].get("micro"):
            rows.append(["H-Mean, micro over all boxes", _metric_line(s["metric"]["micro"])])
    rows.append(["images with too few / too many boxes", f"{len(out['few'])} / {len(out['many'])}"])
    flagged = ", ".join(f"{s['flags'][f]['boxes']} {f.replace('_', ' ')}" for f in ("tiny", "huge", "extreme_aspect"))
    rows.append(["flagged boxes", flagged])
    body = head + [_md_table(["", ""], rows), ""]
    if s["unreadable"]:
        body += [f"{s['unreadable']} polygons of the file were unreadable (NaN; in JSON also under 3 points or zero "
                 "area) and are not counted.", ""]

    body += ["## Boxes per image", "", *_img("boxes per image", files.get("boxes_per_image")),
             f"- Too few ({rules['few']}, i.e. < {out['few_below']:g}): {_names(out['few'], s['per_image'])}",
             f"- Too many ({rules['many']}, i.e. > {out['many_above']:g}): {_names(out['many'], s['per_image'])}", ""]

    flag_rows = [[f.replace("_", " "), s["flags"][f]["boxes"], s["flags"][f]["images"], _top(s["flags"][f]), rules[f]]
                 for f in ("tiny", "huge", "extreme_aspect", "under_4_points", "over_cap")]
    body += ["## Box flags", "", _md_table(["flag", "boxes", "images", "most in", "rule"], flag_rows), ""]
    unsized = img["total"] - s["flags"]["huge"]["images_checked"]
    if unsized:
        body += [f"The image size of {unsized} of {img['total']} images is unknown, so they are not checked for huge "
                 "boxes: pass `--images` or `--gt`.", ""]
    body += _img("box geometry", files.get("box_geometry"))

    if s["errors"]:
        err_rows = [[e.replace("_", " "), s["errors"][e]["total"], s["errors"][e]["images"], _top(s["errors"][e]),
                     rules[e]] for e in _ERRORS]
        body += ["## Errors against the ground truth", "",
                 _md_table(["error", "count", "images", "most in", "rule"], err_rows), "",
                 *_img("per-image H-Mean", files.get("hmean_per_image"))]

    if s["worst"]:
        if s["worst_by"] == "hmean":
            body += ["## Worst images (lowest H-Mean)", "",
                     "Green: ground truth (filled: missed); red: predictions (filled: false positive).", ""]
            cols = ["#", "image", "H-Mean", "P", "R", "GT", "det", "missed", "split", "merged", "false pos.", "overlay"]
            wrows = [[w["rank"], f"`{w['image']}`", _f(w["hmean"], 3), _f(w["precision"], 3), _f(w["recall"], 3),
                      w.get("num_gt", "-"), w["boxes"], w["missed"], w["split"], w["merged"], w["false_positive"],
                      _link(w["overlay"])] for w in s["worst"]]
        else:
            body += ["## Most flagged images", "", "Without ground truth: images with too few / too many boxes first, "
                     "then by flagged boxes (thick outlines).", ""]
            cols = ["#", "image", "boxes", "tiny", "huge", "extreme aspect", "under 4 points", "overlay"]
            wrows = [[w["rank"], f"`{w['image']}`", w["boxes"], w["tiny"], "-" if w["huge"] is None else w["huge"],
                      w["extreme_aspect"], w["under_4_points"], _link(w["overlay"])] for w in s["worst"]]
        body += [_md_table(cols, wrows), ""]
    body += ["All numbers, per image: [summary.json](summary.json).", ""]
    return "\n".join(body)


# ----------------------------------------------------------------------------- compare


@dataclass
class CompareReport:
    """What `compare` found: `summary` is what summary.json holds; `files` what it wrote."""

    out_dir: Path
    summary: dict
    files: list[Path]

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def most_disagreeing(self) -> list[str]:
        return [d["image"] for d in self.summary["most_disagreeing"]]


def _model_names(paths: Sequence[str | Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(paths):
            raise UserError(f"{len(names)} names for {len(paths)} prediction files")
        if len(set(names)) != len(names):
            raise UserError(f"model names must be unique, got {names}")
        return names
    out = [Path(p).stem for p in paths]
    if len(set(out)) != len(out):  # two submission.csv: name them by their folders
        out = [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]
    if len(set(out)) != len(out):
        out = [f"{i + 1}:{n}" for i, n in enumerate(out)]
    return out


def _agreement(a: _Model, b: _Model, images: Sequence[str]) -> dict[str, float]:
    """Per image, CLEval H-Mean of b's detections scored against a's as if a were GT.

    Two empty images agree fully (CLEval alone would score them 0).
    """
    from . import metric

    pa = {n: _scored(a.loaded.polys.get(n, [])) for n in images}
    pb = {n: _scored(b.loaded.polys.get(n, [])) for n in images}
    result = metric.evaluate(pa, pb)
    return {n: 1.0 if not pa[n] and not pb[n] else float(result.per_image[n]["hmean"]) for n in images}


def compare(paths: Sequence[str | Path], *, gt_path: str | Path | None = None, images_dir: str | Path | None = None,
            names: Sequence[str] | None = None, out_dir: str | Path, top: int = 8,
            rules: Rules | None = None, plots: bool = True) -> CompareReport:
    """Compare two or more prediction files image by image; the first is the reference.

    Per image: boxes and their difference to the reference, and with GT the H-Mean and its
    difference. Disagreement with GT is the spread of the H-Mean between the models
    (max - min); without GT it is 1 - the agreement, the CLEval H-Mean of one model
    scored against the other (worst pair). The `top` most disagreeing images are drawn
    side by side. `plots=False` writes report.md and summary.json only.
    """
    if len(paths) < 2:
        raise UserError(f"compare needs two or more prediction files, got {len(paths)}")
    if top < 0:
        raise UserError(f"top={top}: need a count >= 0")
    _check_inputs(paths, gt_path, images_dir)
    rules = rules or Rules()
    model_names = _model_names(paths, names)
    loaded = [_load_predictions(p) for p in paths]
    gt = _load_gt(gt_path)
    images = _image_names(loaded, gt)
    if not images:
        raise DataError("no images in any of the prediction files")
    sizes = _image_sizes(images, images_dir, gt, loaded)
    models = [_analyse_model(n, ld, images, sizes, gt, rules) for n, ld in zip(model_names, loaded)]
    ref = models[0]
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    agreement = {f"{a.name} ~ {b.name}": _agreement(a, b, images) for a, b in pairs}

    per_image = {}
    for img in images:
        boxes = {m.name: m.images[img]["boxes"] for m in models}
        rec = {"boxes": boxes, "box_diff": {m.name: boxes[m.name] - boxes[ref.name] for m in models[1:]},
               "agreement": {k: v[img] for k, v in agreement.items()}}
        rec["disagreement"] = 1.0 - min(rec["agreement"].values())
        if gt is not None and img in gt:
            h = {m.name: m.images[img]["metric"]["hmean"] for m in models}
            rec["hmean"] = h
            rec["hmean_diff"] = {m.name: h[m.name] - h[ref.name] for m in models[1:]}
            rec["disagreement"] = max(h.values()) - min(h.values())
        rec["models"] = {m.name: m.image_record(img) for m in models}
        per_image[img] = rec
    candidates = [n for n in images if gt is None or n in gt]
    ranked = sorted(candidates, key=lambda n: (-per_image[n]["disagreement"],
                                               -(1.0 - min(per_image[n]["agreement"].values())),
                                               -max(abs(d) for d in per_image[n]["box_diff"].values()), n))[:top]

    out_dir = Path(out_dir)
    files = _compare_plots(models, gt, images, per_image, ranked, out_dir) if plots else {}
    for rank, img in enumerate(ranked if plots else [], start=1):
        rec = per_image[img]
        panels = []
        for m in models:
            r = m.images[img]
            if gt is not None:
                title = f"{m.name}: {r['boxes']} boxes\n" + _error_line(r)
            else:
                title = f"{m.name}: {r['boxes']} boxes"
            panels.append(_model_panel(m, img, gt, title))
        what = "H-Mean spread" if "hmean" in rec else "disagreement (1 - agreement)"
        head = f"disagreement {rank}/{len(ranked)}: {img}  ·  {what} {rec['disagreement']:.3f}"
        if gt is not None:
            head += f"  ·  GT {len(gt[img].words)}"
        png = out_dir / f"disagree_{rank:02d}_{_safe(img)}.png"
        files[f"disagree_{rank:02d}"] = _draw(png, panels, img, images_dir, sizes, head)
    if plots:
        _clean_stale(out_dir, "disagree", set(files.values()))

    summary = {
        "inputs": {"predictions": [str(p) for p in paths], "names": model_names,
                   "ground_truth": None if gt_path is None else str(gt_path),
                   "images": None if images_dir is None else str(images_dir)},
        "reference": ref.name,
        "images": len(images),
        "models": {m.name: m.summary() for m in models},
        "differences": _differences(models, per_image, gt),
        "most_disagreeing": [{"rank": i, "image": n, "disagreement": per_image[n]["disagreement"],
                              "boxes": per_image[n]["boxes"], "hmean": per_image[n].get("hmean"),
                              "agreement": per_image[n]["agreement"],
                              "overlay": _name(files.get(f"disagree_{i:02d}"))}
                             for i, n in enumerate(ranked, start=1)],
        "disagreement_by": "hmean_spread" if gt is not None else "agreement",
        "rules": {"values": asdict(rules), "definitions": rules.describe()},
        "per_image": per_image,
    }
    md = _compare_markdown(summary, files)
    summary["files"] = sorted(p.name for p in files.values()) + ["report.md", "summary.json"]
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_json(out_dir / "summary.json", summary, indent=1)
    return CompareReport(out_dir, summary, [out_dir / f for f in summary["files"]])


def _differences(models: Sequence[_Model], per_image: Mapping[str, dict], gt) -> dict[str, dict]:
    """Per other model against the reference: how many images gain or lose boxes / H-Mean."""
    out = {}
    for m in models[1:]:
        diffs = np.array([r["box_diff"][m.name] for r in per_image.values()], dtype=np.float64)
        d = {"more_boxes": int((diffs > 0).sum()), "fewer_boxes": int((diffs < 0).sum()),
             "same_boxes": int((diffs == 0).sum()), "mean_box_diff": float(diffs.mean()),
             "mean_abs_box_diff": float(np.abs(diffs).mean())}
        if gt is not None:
            hd = np.array([r["hmean_diff"][m.name] for r in per_image.values() if "hmean_diff" in r])
            d.update(better=int((hd > 1e-9).sum()), worse=int((hd < -1e-9).sum()), same=int((abs(hd) <= 1e-9).sum()),
                     mean_hmean_diff=float(hd.mean()) if len(hd) else 0.0)
        out[m.name] = d
    return out


def _compare_plots(models, gt, images, per_image, ranked, out_dir: Path) -> dict[str, Path]:
    from . import plots

    counts = {m.name: [m.images[n]["boxes"] for n in images] for m in models}
    gt_counts = [len(gt[n].words) for n in gt] if gt is not None else None
    edges = _int_histogram([c for cs in counts.values() for c in cs] + (gt_counts or []))[1]
    files = {"compare_boxes": plots.compare_boxes(out_dir / "compare_boxes_per_image.png", counts, edges,
                                                  gt_counts=gt_counts)}
    scored = [n for n in images if gt is None or n in gt]
    hmeans = ({m.name: [per_image[n]["hmean"][m.name] for n in scored] for m in models}
              if gt is not None else None)
    labels = {scored.index(n): n for n in ranked[:5]}
    files["compare_per_image"] = plots.compare_per_image(
        out_dir / "compare_per_image.png", models[0].name,
        {m.name: [m.images[n]["boxes"] for n in scored] for m in models}, hmeans, labels)
    return files


def _compare_markdown(s: dict, files: Mapping[str, Path]) -> str:
    names = s["inputs"]["names"]
    body = [f"# Comparison: {' vs '.join(f'`{n}`' for n in names)}", "",
            f"{s['images']} images; reference (differences are against it): `{s['reference']}`."
            + (f" Ground truth: `{s['inputs']['ground_truth']}`." if s["inputs"]["ground_truth"] else ""), ""]
    has_gt = s["inputs"]["ground_truth"] is not None
    cols = ["model", "file", "boxes", "per image (median)", "too few / many", "tiny", "huge", "extreme aspect",
            "under 4 points"] + (["precision", "recall", "H-Mean", "H-Mean micro"] if has_gt else [])
    rows = []
    for n in names:
        m = s["models"][n]
        row = [f"`{n}`", f"`{Path(m['file']).name}`", f"{m['boxes']['total']:,}", f"{m['boxes']['median']:g}",
               f"{len(m['count_outliers']['few'])} / {len(m['count_outliers']['many'])}",
               m["flags"]["tiny"]["boxes"], m["flags"]["huge"]["boxes"], m["flags"]["extreme_aspect"]["boxes"],
               m["flags"]["under_4_points"]["boxes"]]
        if has_gt:
            met = m["metric"]
            row += [_f(met["precision"]), _f(met["recall"]), f"**{_f(met['hmean'])}**",
                    _f((met.get("micro") or {}).get("hmean"))]
        rows.append(row)
    body += ["## Models", "", _md_table(cols, rows), ""]
    body += ["## Per-image differences", ""]
    for n, d in s["differences"].items():
        line = (f"- `{n}` vs `{s['reference']}`: more boxes on {d['more_boxes']} images, fewer on {d['fewer_boxes']}, "
                f"the same on {d['same_boxes']} (mean difference {d['mean_box_diff']:+.1f}, "
                f"mean absolute {d['mean_abs_box_diff']:.1f})")
        if has_gt:
            line += (f"; H-Mean better on {d['better']} images, worse on {d['worse']}, equal on {d['same']} "
                     f"(mean difference {d['mean_hmean_diff']:+.4f})")
        body.append(line + ".")
    body += ["", *_img("boxes per image", files.get("compare_boxes")),
             *_img("per image", files.get("compare_per_image"))]
    if s["most_disagreeing"]:
        how = ("H-Mean spread between the models (max - min)" if s["disagreement_by"] == "hmean_spread"
               else "1 - agreement, the CLEval H-Mean of one model's boxes scored against the other's")
        body += ["## Where the models disagree most", "", f"Ranked by {how}.", ""]
        cols = ["#", "image", "disagreement", "boxes"] + (["H-Mean"] if has_gt else []) + ["overlay"]
        rows = []
        for d in s["most_disagreeing"]:
            row = [d["rank"], f"`{d['image']}`", f"{d['disagreement']:.3f}",
                   " / ".join(str(d["boxes"][n]) for n in names)]
            if has_gt:
                row.append(" / ".join(_f(d["hmean"][n], 3) for n in names))
            rows.append(row + [_link(d["overlay"])])
        body += [f"Boxes{' and H-Mean' if has_gt else ''} are listed in model order: "
                 + " / ".join(f"`{n}`" for n in names) + ".", "", _md_table(cols, rows), ""]
    body += ["All numbers, per image: [summary.json](summary.json).", ""]
    return "\n".join(body)


# ----------------------------------------------------------------------------- CLI


def _print_analysis(report: AnalysisReport) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.summary
    box, out = s["boxes"], s["count_outliers"]
    table = Table(title=f"hrnet_sweep analyze: {Path(s['inputs']['predictions']).name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", str(s["images"]["total"]))
    table.add_row("boxes", f"{box['total']:,} (per image mean {box['mean']:.1f}, median {box['median']:g}, "
                           f"min {box['min']}, max {box['max']})")
    table.add_row("too few / too many", f"{len(out['few'])} / {len(out['many'])} images")
    for f in _FLAGS:
        table.add_row(f.replace("_", " "), f"{s['flags'][f]['boxes']} boxes in {s['flags'][f]['images']} images")
    if s["metric"]:
        m = s["metric"]
        table.add_row("H-Mean (macro)", f"{m['hmean']:.4f} (P {m['precision']:.4f}, R {m['recall']:.4f})")
        for e in _ERRORS:
            table.add_row(e.replace("_", " "), f"{s['errors'][e]['total']} in {s['errors'][e]['images']} images")
    if s["worst"]:
        label = "worst images" if s["worst_by"] == "hmean" else "most flagged"
        table.add_row(label, ", ".join(w["image"] + (f" ({w['hmean']:.3f})" if "hmean" in w else "")
                                       for w in s["worst"][:5]))
    console = Console()
    console.print(table)
    console.print(f"report: {report.report_path}")


def _print_compare(report: CompareReport) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.summary
    names = s["inputs"]["names"]
    # Models as columns: a few models fit an 80-column terminal, ten statistics would not.
    table = Table(title=f"hrnet_sweep compare ({s['images']} images)")
    table.add_column("", style="bold")
    for n in names:
        table.add_column(n, justify="right")
    models = [s["models"][n] for n in names]
    table.add_row("boxes", *(f"{m['boxes']['total']:,}" for m in models))
    table.add_row("median per image", *(f"{m['boxes']['median']:g}" for m in models))
    table.add_row("too few / many", *(f"{len(m['count_outliers']['few'])} / {len(m['count_outliers']['many'])}"
                                      for m in models))
    for f in ("tiny", "huge", "extreme_aspect", "under_4_points"):
        table.add_row(f.replace("_", " "), *(str(m["flags"][f]["boxes"]) for m in models))
    if s["inputs"]["ground_truth"] is not None:
        for k in ("precision", "recall", "hmean"):
            table.add_row(k if k != "hmean" else "H-Mean", *(f"{m['metric'][k]:.4f}" for m in models))
    console = Console()
    console.print(table)
    if s["most_disagreeing"]:
        console.print("most disagreeing: " + ", ".join(
            f"{d['image']} ({d['disagreement']:.3f})" for d in s["most_disagreeing"][:5]))
    console.print(f"report: {report.report_path}")


def _common_args(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--gt", metavar="GT.json", help="ground-truth annotation JSON: adds per-image H-Mean and errors")
    p.add_argument("--images", metavar="DIR", help="the images: sizes for huge boxes, backgrounds for overlays")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default: {out_default})")
    p.add_argument("--no-plots", action="store_true", help="write report.md and summary.json only (fast)")


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep analyze PRED.json|submission.csv [--gt GT.json] [--images DIR] [--out DIR]`."""
    p = argparse.ArgumentParser(prog="hrnet_sweep analyze", description="Statistics, flags, per-image H-Mean and "
                                "overlays of the worst images for a prediction JSON or a submission CSV.")
    p.add_argument("pred", metavar="PRED", help="prediction JSON or submission CSV")
    _common_args(p, "<PRED without extension>_analysis, next to PRED")
    p.add_argument("--worst", type=int, default=8, metavar="N", help="overlays of the N worst images (default 8)")
    args = p.parse_args(argv)
    pred = Path(args.pred)
    out = Path(args.out) if args.out else pred.with_name(f"{pred.stem}_analysis")
    report = analyze(pred, gt_path=args.gt, images_dir=args.images, out_dir=out, worst=args.worst,
                     plots=not args.no_plots)
    _print_analysis(report)
    return 0


def main_compare(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep compare A B [...] [--gt GT.json] [--images DIR] [--out DIR] [--names a,b]`."""
    p = argparse.ArgumentParser(prog="hrnet_sweep compare", description="Compare two or more prediction JSONs or "
                                "submission CSVs image by image; the first is the reference.")
    p.add_argument("preds", nargs="+", metavar="PRED", help="prediction JSONs or submission CSVs (two or more)")
    _common_args(p, "compare_<A>_vs_<B>, next to the first PRED")
    p.add_argument("--names", metavar="A,B,...", help="model names, comma-separated (default: the file names)")
    p.add_argument("--top", type=int, default=8, metavar="N", help="overlays of the N most disagreeing images")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if len(args.preds) < 2:
        raise UserError(f"compare needs two or more prediction files, got {len(args.preds)}")
    first = Path(args.preds[0])
    out = Path(args.out) if args.out else first.with_name(
        "compare_" + "_vs_".join(_safe(Path(x).name) for x in args.preds[:3]))
    report = compare(args.preds, gt_path=args.gt, images_dir=args.images, names=names, out_dir=out, top=args.top,
                     plots=not args.no_plots)
    _print_compare(report)
    return 0
