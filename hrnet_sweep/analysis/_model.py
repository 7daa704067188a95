"""One prediction file analysed over a list of images: flags, counts, and with ground
truth the per-image CLEval (`metric.evaluate`) and error types."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._load import _Loaded, _scored
from ._rules import Rules, count_outliers, error_types, image_flags

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
            per = {
                n: (r[flag] if isinstance(r[flag], int) else len(r[flag]))
                for n, r in self.images.items()
                if r[flag] is not None
            }
            hit = sorted(((k, n) for n, k in per.items() if k), key=lambda kn: (-kn[0], kn[1]))
            out[flag] = {
                "boxes": int(sum(per.values())),
                "images": len(hit),
                "top": [[n, k] for k, n in hit[:5]],
                "images_checked": len(per),
            }
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
        rec.update(
            in_predictions=img in loaded.polys,
            in_gt=gt is not None and img in gt,
            size=list(size) if size else None,
            unreadable=loaded.unreadable.get(img, 0),
        )
        images[img] = rec
    outliers = count_outliers({n: r["boxes"] for n, r in images.items()}, rules)
    metric_summary = None
    if gt is not None:
        from .. import metric

        gt_polys = {n: a.polygons() for n, a in gt.items()}
        result = metric.evaluate(gt_polys, {n: loaded.polys.get(n, []) for n in gt})
        metric_summary = {
            "precision": float(result.precision),
            "recall": float(result.recall),
            "hmean": float(result.hmean),
            "micro": dict(result.micro),
        }
        for img in gt:
            per = result.per_image[img]
            images[img]["metric"] = {k: per[k] for k in ("precision", "recall", "hmean", "num_gt", "num_det")}
            images[img]["errors"] = error_types(gt_polys[img], _scored(loaded.polys.get(img, [])), rules)
    return _Model(name, loaded, images, outliers, metric_summary)
