"""CLEval detection-only H-Mean, as the receipt competition scores it.

CLEval (Baek et al., 2020) scores detection at the character level. Without transcriptions
every ground-truth box gets a *pseudo* character count from its aspect ratio and that many
pseudo character centres (PCCs) spaced along it. A detection matches ground truth when it
holds PCCs and covers enough of itself with the box ("area precision" >= 0.3); splits and
merges are allowed and cost a granularity penalty of 1 per extra box. Per image:

    recall    = max(0, TP - split penalty) / (pseudo characters of all GT boxes)
    precision = max(0, TP - merge penalty) / (PCCs inside matched detections + FP characters)

with TP the number of distinct PCCs inside a matched detection, and an unmatched detection
counting `round(0.5 + 1 / aspect_ratio)` characters. An image with no GT characters has
recall 0, one with no detection characters precision 0, and H-Mean is 0 when both are 0
(so an image with neither GT nor detections scores 0, as in CLEval).

Two conventions, both exact:

* ``"competition"`` (default): the competition's own copy of CLEval (its baseline's
  ``ocr/metrics``), which takes polygons of 4 or more points. GT points are rounded to
  integers first, from float64 (its dataset does: x = 1000.50002 is 1001, where a
  float32 cast first would give 1000). Each box's aspect ratio comes from its minimum-area
  rectangle, found over the convex hull's edges in qhull's order (the first strict minimum
  wins): ``ar = min(100, h / (w + eps))`` with w along that edge and eps the float32
  epsilon. A GT box has ``min(round(0.5 + max(ar, 1 / (ar + eps))), cap)`` characters, an
  unmatched detection ``min(round(0.5 + 1 / (eps + ar)), cap)`` (so it depends on which
  side the rectangle lies along), ``cap`` = 100. PCCs are interpolated along the top
  (first half of the points) and the reversed bottom line with integer truncation; the
  vertical aspect-ratio threshold is not used. Hull edges tie exactly more often than one
  would think (whenever the same three vertices bound both rectangles); where a tie
  changes a count, the competition's own procedure runs with its arithmetic as NumPy 1.x
  evaluates it (float32 points, float64 projections), since only rounding breaks the tie.
* ``"cleval"``: the ``cleval`` package (PyPI, clovaai) on quadrilaterals:
  ``ar = (mean top/bottom side + 1e-5) / (mean left/right side + 1e-5)`` from the point
  order, ``min(round(0.5 + max(ar, 1 / ar)), cap)`` characters per GT box (the package
  caps at 10: pass ``pseudo_char_cap=10``), ``min(round(0.5 + 1 / (1e-5 + ar)), cap)`` per
  unmatched detection, PCCs evenly on the mid-line, and a box with ``ar`` below the vertical
  threshold is read rotated by one corner. (The package itself has no transcription-free
  mode; this is what it computes when each GT box is given its own pseudo count.)

In both, geometry is done as Polygon3 (the package's clipper) does it: vertices truncated
to integers, area by the shoelace formula, PCC containment by the even-odd crossing rule
with half-open edges. Detections past `max_detections` are dropped before polygons with
fewer than 4 points are skipped, as the competition does. Polygons of zero area are
scored, as there: a GT box on a line gets the cap of pseudo characters (its hull, and so
its rectangle, is empty); a detection on a line covers no area of any GT box, so it is
a false positive.

Speed: candidate GT/detection pairs come from a sorted bounding-box sweep; areas of
convex pairs are computed in NumPy (segment clipping + Green's theorem), other pairs with
shapely; PCC containment is one vectorised crossing test. Everything else is sparse over
the candidate pairs, so the cost grows linearly with the boxes per image.

Layout: `_results` (the result records), `_polygons` (options, polygon packing and ring
helpers), `_pseudo_chars` (pseudo character counts and centres), `_pairs` (candidate
pairs, intersection areas, PCC containment), `_image` (one image); `evaluate` and the
`hrnet_sweep eval` CLI are here.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from ..constants import MAX_DETECTIONS
from ..numeric import flag
from ._image import _evaluate_image, evaluate_image
from ._polygons import _CONVENTIONS, Convention, _Options
from ._pseudo_chars import pseudo_char_counts
from ._results import _COUNT_KEYS, EvalResult, ImageResult, _scores

__all__ = ["EvalResult", "ImageResult", "evaluate", "evaluate_image", "pseudo_char_counts", "main"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- many images


def evaluate(
    gt: Mapping[str, Sequence[np.ndarray]],
    pred: Mapping[str, Sequence[np.ndarray]],
    *,
    pseudo_char_cap: int = 100,
    area_precision_constraint: float = 0.3,
    granularity_penalty: float = 1.0,
    vertical_aspect_ratio_thresh: float = 0.5,
    max_detections: int | None = MAX_DETECTIONS,
    convention: Convention = "competition",
) -> EvalResult:
    """CLEval detection scores over the images of `gt`.

    An image of `gt` missing from `pred` has no detections (it scores 0, as in the
    competition); images only in `pred` are ignored (listed in `ignored_images`). The
    macro scores average the per-image scores; with no images they are 0.
    """
    opts = _Options.make(
        pseudo_char_cap=pseudo_char_cap,
        area_precision_constraint=area_precision_constraint,
        granularity_penalty=granularity_penalty,
        vertical_aspect_ratio_thresh=vertical_aspect_ratio_thresh,
        max_detections=max_detections,
        convention=convention,
    )
    per_image = {name: _evaluate_image(polys, pred.get(name, ()), opts).to_dict() for name, polys in gt.items()}
    ignored = [name for name in pred if name not in gt]
    if ignored:
        log.warning(
            "%d prediction image(s) not in the ground truth are ignored, e.g. %s",
            len(ignored),
            ", ".join(map(repr, ignored[:3])),
        )
    rows = list(per_image.values())
    macro = {key: float(np.mean([r[key] for r in rows])) if rows else 0.0 for key in ("precision", "recall", "hmean")}
    sums = {key: int(sum(r[key] for r in rows)) for key in _COUNT_KEYS}
    sums["gran_recall"] = float(sum(r["gran_recall"] for r in rows))
    sums["gran_precision"] = float(sum(r["gran_precision"] for r in rows))
    p, r, h = _scores(
        sums["num_char_tp"], sums["gran_recall"], sums["gran_precision"], sums["num_char_gt"], sums["num_char_det"]
    )
    micro = {"precision": p, "recall": r, "hmean": h, "num_images": len(rows), **sums}
    return EvalResult(macro["precision"], macro["recall"], macro["hmean"], micro, per_image, ignored)


# ----------------------------------------------------------------------------- CLI


def _table(result: EvalResult, worst: int = 5) -> str:
    m = result.micro
    lines = [
        f"images: {m['num_images']}"
        + (f" ({len(result.ignored_images)} prediction-only image(s) ignored)" if result.ignored_images else ""),
        f"{'':8}{'precision':>10}{'recall':>10}{'hmean':>10}",
        f"{'macro':8}{result.precision:10.4f}{result.recall:10.4f}{result.hmean:10.4f}",
        f"{'micro':8}{m['precision']:10.4f}{m['recall']:10.4f}{m['hmean']:10.4f}",
    ]
    ranked = sorted(result.per_image.items(), key=lambda kv: (kv[1]["hmean"], kv[0]))[:worst]
    if ranked:
        width = max(len(name) for name, _ in ranked)
        lines.append(f"worst {len(ranked)} image(s) by hmean:")
        lines.append(f"  {'image':<{width}}{'hmean':>8}{'prec':>8}{'recall':>8}{'gt':>6}{'det':>6}")
        for name, r in ranked:
            lines.append(
                f"  {name:<{width}}{r['hmean']:8.4f}{r['precision']:8.4f}{r['recall']:8.4f}"
                f"{r['num_gt']:6d}{r['num_det']:6d}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep eval --gt GT.json --pred PRED.json|submission.csv [--json] [--cap N]`.

    File errors raise `hrnet_sweep.errors.DataError` (the CLI prints them and exits 2).
    """
    from .. import formats

    parser = argparse.ArgumentParser(
        prog="hrnet_sweep eval", description="CLEval detection-only precision / recall / H-Mean."
    )
    parser.add_argument("--gt", required=True, help="ground-truth annotation JSON")
    parser.add_argument("--pred", required=True, help="prediction JSON or submission CSV")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument(
        "--cap",
        type=flag(int, ge=1),
        default=100,
        help="pseudo character cap (default 100; the cleval package uses 10)",
    )
    parser.add_argument(
        "--convention",
        choices=_CONVENTIONS,
        default="competition",
        help="'competition' (default) or the 'cleval' package's quadrilateral rules",
    )
    args = parser.parse_args(argv)
    if args.cap < 1:
        parser.error(f"--cap {args.cap}: must be an integer >= 1")
    gt = {name: img.polygons() for name, img in formats.load_annotations(args.gt).items()}
    pred = formats.load_predictions(args.pred)
    result = evaluate(gt, pred, pseudo_char_cap=args.cap, convention=args.convention)
    print(json.dumps(result.to_dict(), indent=2) if args.json else _table(result))
    return 0
