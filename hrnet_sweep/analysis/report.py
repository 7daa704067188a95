"""`analyze(...) -> AnalysisReport`: one prediction file, its statistics, flags, per-image
H-Mean and the overlays of its worst images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, UserError
from ..files import atomic_write_json, atomic_write_text
from ._load import _check_inputs, _image_sizes, _load_gt, _load_predictions, _Loaded, _safe
from ._markdown import _analysis_markdown, _name
from ._model import _analyse_model, _image_names, _int_histogram, _Model
from ._overlays import _clean_stale, _draw, _error_line, _model_panel
from ._rules import Rules, box_geometry


@dataclass
class _Report:
    """An output folder: `summary` is what summary.json holds; `files` what was written."""

    out_dir: Path
    summary: dict
    files: list[Path]

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"


@dataclass
class AnalysisReport(_Report):
    """What `analyze` found: `summary` is what summary.json holds; `files` what it wrote."""

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
        out_dir / "boxes_per_image.png",
        list(counts.values()),
        edges,
        median=box["median"],
        few_below=model.outliers["few_below"],
        many_above=model.outliers["many_above"],
        gt_counts=gt_counts,
    )
    width = [w for r in model.images.values() for w in r["width"]]
    height = [h for r in model.images.values() for h in r["height"]]
    masks: dict[str, list[bool]] = {f: [] for f in ("tiny", "huge", "extreme_aspect")}
    for r in model.images.values():  # flags as masks aligned with width / height
        for f, mask in masks.items():
            hit = set(r[f] or ())
            mask += [k in hit for k in r["measured"]]
    gt_geo = np.array([box_geometry(p)[:2] for a in (gt or {}).values() for p in a.polygons()]).reshape(-1, 2)
    files["box_geometry"] = plots.box_geometry(
        out_dir / "box_geometry.png",
        width,
        height,
        {f: np.array(m, bool) for f, m in masks.items()},
        tiny_px=rules.tiny_px,
        aspect_min=rules.aspect_min,
        aspect_max=rules.aspect_max,
        gt_width=gt_geo[:, 0] if gt is not None else None,
        gt_height=gt_geo[:, 1] if gt is not None else None,
    )
    if model.metric is not None:
        scored = [n for n in model.images if model.images[n].get("metric")]
        ms = [model.images[n]["metric"] for n in scored]
        labels = {scored.index(n): n for n in worst[:5]}
        files["hmean_per_image"] = plots.hmean_per_image(
            out_dir / "hmean_per_image.png",
            [m["precision"] for m in ms],
            [m["recall"] for m in ms],
            [m["hmean"] for m in ms],
            macro=model.metric["hmean"],
            labels=labels,
        )
    return files


def analyze(
    pred_path: str | Path,
    *,
    gt_path: str | Path | None = None,
    images_dir: str | Path | None = None,
    out_dir: str | Path,
    worst: int = 8,
    rules: Rules | None = None,
    plots: bool = True,
) -> AnalysisReport:
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
    prefix = "worst" if gt is not None else "flagged"
    files: dict[str, Path] = {}
    if plots:
        files = _analysis_plots(model, gt, rules, out_dir, worst_names)
        files.update(_draw_worst(model, gt, worst_names, prefix, out_dir, images_dir, sizes))
        _clean_stale(out_dir, prefix, set(files.values()))

    summary = {
        "inputs": {
            "predictions": str(pred_path),
            "ground_truth": None if gt_path is None else str(gt_path),
            "images": None if images_dir is None else str(images_dir),
        },
        "images": _image_counts(names, loaded, gt, sizes),
        **model.summary(),
        "worst": [
            dict(model.image_record(n), rank=i, image=n, overlay=_name(files.get(f"{prefix}_{i:02d}")))
            for i, n in enumerate(worst_names, start=1)
        ],
        "worst_by": "hmean" if gt is not None else "flags",
        "rules": {"values": asdict(rules), "definitions": rules.describe()},
        "per_image": {n: model.image_record(n) for n in names},
    }
    md = _analysis_markdown(summary, files)
    return AnalysisReport(out_dir, summary, _write_report(out_dir, summary, files, md))


def _draw_worst(
    model: _Model,
    gt,
    worst_names: list[str],
    prefix: str,
    out_dir: Path,
    images_dir: str | Path | None,
    sizes: dict[str, tuple[int, int]],
) -> dict[str, Path]:
    """One overlay per worst image (`prefix` "worst", with GT) or most flagged one ("flagged")."""
    files = {}
    for rank, name in enumerate(worst_names, start=1):
        rec = model.images[name]
        if gt is not None:
            head = f"worst {rank}/{len(worst_names)}: {name}  ·  GT {len(gt[name].words)}  ·  detections {rec['boxes']}"
            panel = _model_panel(model, name, gt, _error_line(rec))
        else:
            head = (
                f"flagged {rank}/{len(worst_names)}: {name}  ·  {rec['boxes']} boxes "
                f"(median {model.outliers['median']:g})"
            )
            panel = _model_panel(
                model,
                name,
                None,
                ", ".join(f"{f.replace('_', ' ')} {len(rec[f])}" for f in ("tiny", "huge", "extreme_aspect") if rec[f])
                or " ",
            )
        png = out_dir / f"{prefix}_{rank:02d}_{_safe(name)}.png"
        files[f"{prefix}_{rank:02d}"] = _draw(png, [panel], name, images_dir, sizes, head)
    return files


def _image_counts(names: list[str], loaded: _Loaded, gt, sizes: dict[str, tuple[int, int]]) -> dict:
    """summary["images"]: which images the predictions, the ground truth and the sizes cover."""
    return {
        "total": len(names),
        "in_predictions": sum(n in loaded.polys for n in names),
        "missing_from_predictions": [n for n in names if n not in loaded.polys],
        "not_in_ground_truth": [n for n in names if gt is not None and n not in gt],
        "size_known": sum(n in sizes for n in names),
    }


def _write_report(out_dir: Path, summary: dict, files: dict[str, Path], md: str) -> list[Path]:
    """Write report.md and summary.json; return every file of the report.

    `md` is rendered from `summary` before this adds `summary["files"]`: report.md links the
    files itself, so only summary.json lists them.
    """
    summary["files"] = sorted(p.name for p in files.values()) + ["report.md", "summary.json"]
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_json(out_dir / "summary.json", summary, indent=1)
    return [out_dir / f for f in summary["files"]]
