"""The inputs of `analyze` / `compare`: prediction files (JSON or submission CSV), the
ground truth and the image sizes, checked before anything is read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import MAX_DETECTIONS
from ..errors import DataError
from ..files import image_size, read_json
from ..formats import load_annotations, read_submission


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
    the file really had: for JSON under 3 points or NaN (`load_annotations`),
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


def _image_sizes(names, images_dir, gt, preds: Sequence[_Loaded]) -> dict[str, tuple[int, int]]:
    """Sizes from the image files, else the GT's img_w/img_h, else the prediction JSON's."""
    sizes: dict[str, tuple[int, int]] = {}
    for loaded in preds:
        sizes.update(loaded.sizes)
    if gt:
        sizes.update({n: (a.width, a.height) for n, a in gt.items() if a.width and a.height})
    if images_dir is not None:
        for name in names:
            size = image_size(Path(images_dir) / name)
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
