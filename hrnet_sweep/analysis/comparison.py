"""`compare(...) -> CompareReport`: two or more prediction files image by image, and the
images where they disagree most.

Named `comparison`, not `compare`: a submodule `compare` would be shadowed by the
function `compare` that the package re-exports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, UserError
from ._load import _check_inputs, _image_sizes, _load_gt, _load_predictions, _safe, _scored
from ._markdown import _compare_markdown, _name
from ._model import _analyse_model, _image_names, _int_histogram, _Model
from ._overlays import _clean_stale, _draw, _error_line, _model_panel
from ._rules import Rules
from .report import _Report, _write_report


@dataclass
class CompareReport(_Report):
    """What `compare` found: `summary` is what summary.json holds; `files` what it wrote."""

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
    from .. import metric

    pa = {n: _scored(a.loaded.polys.get(n, [])) for n in images}
    pb = {n: _scored(b.loaded.polys.get(n, [])) for n in images}
    result = metric.evaluate(pa, pb)
    return {n: 1.0 if not pa[n] and not pb[n] else float(result.per_image[n]["hmean"]) for n in images}


def compare(
    paths: Sequence[str | Path],
    *,
    gt_path: str | Path | None = None,
    images_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
    out_dir: str | Path,
    top: int = 8,
    rules: Rules | None = None,
    plots: bool = True,
) -> CompareReport:
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
    per_image = _per_image(models, images, gt)
    ranked = _rank_disagreements(per_image, images, gt, top)

    out_dir = Path(out_dir)
    files: dict[str, Path] = {}
    if plots:
        files = _compare_plots(models, gt, images, per_image, ranked, out_dir)
        files.update(_draw_disagreements(models, gt, per_image, ranked, out_dir, images_dir, sizes))
        _clean_stale(out_dir, "disagree", set(files.values()))

    summary = {
        "inputs": {
            "predictions": [str(p) for p in paths],
            "names": model_names,
            "ground_truth": None if gt_path is None else str(gt_path),
            "images": None if images_dir is None else str(images_dir),
        },
        "reference": models[0].name,
        "images": len(images),
        "models": {m.name: m.summary() for m in models},
        "differences": _differences(models, per_image, gt),
        "most_disagreeing": [
            {
                "rank": i,
                "image": n,
                "disagreement": per_image[n]["disagreement"],
                "boxes": per_image[n]["boxes"],
                "hmean": per_image[n].get("hmean"),
                "agreement": per_image[n]["agreement"],
                "overlay": _name(files.get(f"disagree_{i:02d}")),
            }
            for i, n in enumerate(ranked, start=1)
        ],
        "disagreement_by": "hmean_spread" if gt is not None else "agreement",
        "rules": {"values": asdict(rules), "definitions": rules.describe()},
        "per_image": per_image,
    }
    md = _compare_markdown(summary, files)
    return CompareReport(out_dir, summary, _write_report(out_dir, summary, files, md))


def _per_image(models: Sequence[_Model], images: Sequence[str], gt) -> dict[str, dict]:
    """Per image: each model's boxes and (with GT) H-Mean, their differences to the reference
    (the first model), the agreement of each pair, and the disagreement images are ranked by."""
    ref = models[0]
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    agreement = {f"{a.name} ~ {b.name}": _agreement(a, b, images) for a, b in pairs}
    per_image = {}
    for img in images:
        boxes = {m.name: m.images[img]["boxes"] for m in models}
        rec = {
            "boxes": boxes,
            "box_diff": {m.name: boxes[m.name] - boxes[ref.name] for m in models[1:]},
            "agreement": {k: v[img] for k, v in agreement.items()},
        }
        rec["disagreement"] = 1.0 - min(rec["agreement"].values())
        if gt is not None and img in gt:
            h = {m.name: m.images[img]["metric"]["hmean"] for m in models}
            rec["hmean"] = h
            rec["hmean_diff"] = {m.name: h[m.name] - h[ref.name] for m in models[1:]}
            rec["disagreement"] = max(h.values()) - min(h.values())
        rec["models"] = {m.name: m.image_record(img) for m in models}
        per_image[img] = rec
    return per_image


def _rank_disagreements(per_image: Mapping[str, dict], images: Sequence[str], gt, top: int) -> list[str]:
    """The `top` images by disagreement; ties go to the lower worst-pair agreement, then the
    larger box count difference, then the name. With GT, only the images it covers."""
    candidates = [n for n in images if gt is None or n in gt]
    return sorted(
        candidates,
        key=lambda n: (
            -per_image[n]["disagreement"],
            -(1.0 - min(per_image[n]["agreement"].values())),
            -max(abs(d) for d in per_image[n]["box_diff"].values()),
            n,
        ),
    )[:top]


def _draw_disagreements(
    models: Sequence[_Model],
    gt,
    per_image: Mapping[str, dict],
    ranked: Sequence[str],
    out_dir: Path,
    images_dir: str | Path | None,
    sizes: Mapping[str, tuple[int, int]],
) -> dict[str, Path]:
    """One overlay per most disagreeing image: the models side by side."""
    files = {}
    for rank, img in enumerate(ranked, start=1):
        rec = per_image[img]
        panels = []
        for m in models:
            r = m.images[img]
            if gt is not None:
                title = f"{m.name}: {r['boxes']} boxes\n" + _error_line(r, narrow=len(models) > 1)
            else:
                title = f"{m.name}: {r['boxes']} boxes"
            panels.append(_model_panel(m, img, gt, title))
        what = "H-Mean spread" if "hmean" in rec else "disagreement (1 - agreement)"
        head = f"disagreement {rank}/{len(ranked)}: {img}  ·  {what} {rec['disagreement']:.3f}"
        if gt is not None:
            head += f"  ·  GT {len(gt[img].words)}"
        png = out_dir / f"disagree_{rank:02d}_{_safe(img)}.png"
        files[f"disagree_{rank:02d}"] = _draw(png, panels, img, images_dir, sizes, head)
    return files


def _differences(models: Sequence[_Model], per_image: Mapping[str, dict], gt) -> dict[str, dict]:
    """Per other model against the reference: how many images gain or lose boxes / H-Mean."""
    out = {}
    for m in models[1:]:
        diffs = np.array([r["box_diff"][m.name] for r in per_image.values()], dtype=np.float64)
        d = {
            "more_boxes": int((diffs > 0).sum()),
            "fewer_boxes": int((diffs < 0).sum()),
            "same_boxes": int((diffs == 0).sum()),
            "mean_box_diff": float(diffs.mean()),
            "mean_abs_box_diff": float(np.abs(diffs).mean()),
        }
        if gt is not None:
            hd = np.array([r["hmean_diff"][m.name] for r in per_image.values() if "hmean_diff" in r])
            d.update(
                better=int((hd > 1e-9).sum()),
                worse=int((hd < -1e-9).sum()),
                same=int((abs(hd) <= 1e-9).sum()),
                mean_hmean_diff=float(hd.mean()) if len(hd) else 0.0,
            )
        out[m.name] = d
    return out


def _compare_plots(models, gt, images, per_image, ranked, out_dir: Path) -> dict[str, Path]:
    from . import plots

    counts = {m.name: [m.images[n]["boxes"] for n in images] for m in models}
    gt_counts = [len(gt[n].words) for n in gt] if gt is not None else None
    edges = _int_histogram([c for cs in counts.values() for c in cs] + (gt_counts or []))[1]
    files = {
        "compare_boxes": plots.compare_boxes(
            out_dir / "compare_boxes_per_image.png", counts, edges, gt_counts=gt_counts
        )
    }
    scored = [n for n in images if gt is None or n in gt]
    hmeans = {m.name: [per_image[n]["hmean"][m.name] for n in scored] for m in models} if gt is not None else None
    labels = {scored.index(n): n for n in ranked[:5]}
    files["compare_per_image"] = plots.compare_per_image(
        out_dir / "compare_per_image.png",
        models[0].name,
        {m.name: [m.images[n]["boxes"] for n in scored] for m in models},
        hmeans,
        labels,
    )
    return files
