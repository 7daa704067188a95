"""`hrnet_sweep predict TARGET... --images DIR --out sub.csv`: the workflow's last step.

TARGET is what the user has at hand: the preset given to `kfold` (its retrain is found),
the retrain folder, its `kfold_summary.json` (every finished fold's best checkpoint, with
the post-processing that `tune-postprocess` chose), or one or more .ckpt files (an
ensemble of them, with the post-processing stored in the first). The maps, their average
and the post-processing are `dbnet.inference`; this module routes the arguments, writes
the prediction JSON and the CSV, checks the CSV and, with `--gt`, scores it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..dbnet import inference
from ..errors import UserError

__all__ = ["main"]


def _is_ckpt(arg: str) -> bool:
    return arg.endswith(".ckpt")


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep predict`: .ckpt files, or a preset / retrain (its folds) -> JSON + CSV."""
    argv = list(sys.argv[1:] if argv is None else argv)

    ap = argparse.ArgumentParser(prog="hrnet_sweep predict", description=(
        "Fold ensemble -> prediction JSON + submission CSV. TARGET is the preset given to kfold (its retrain is "
        "found), the retrain folder, its kfold_summary.json, or one or more .ckpt files."))
    ap.add_argument("targets", nargs="+", help="preset, retrain folder, kfold_summary.json, or .ckpt files")
    ap.add_argument("--images", required=True, help="folder of test images")
    ap.add_argument("--out", required=True, help="submission CSV to write")
    ap.add_argument("--json", help="prediction JSON to write (default: next to the CSV)")
    ap.add_argument("--tta", choices=["none", "flip"], default="none")
    ap.add_argument("--weights", type=float, nargs="+", help="one weight per checkpoint / fold")
    ap.add_argument("--folds", help="folds of the retrain to use, e.g. 0,2 (default: every finished fold)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--no-overwrite", action="store_true", help="refuse to replace existing outputs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="post-processing overrides, e.g. models.postprocess.box_thresh=0.5")
    ap.add_argument("--gt", help="annotation JSON of the test images: print the H-Mean")
    args = ap.parse_args(argv)
    from ..config import apply_overrides, parse_overrides
    from ..submission import validate_submission
    from .ensemble import resolve_retrain
    from .kfold import parse_folds

    if all(_is_ckpt(t) for t in args.targets):
        checkpoints = list(args.targets)
        if args.folds:
            raise UserError("--folds selects folds of a retrain; with .ckpt files, list the ones to use")
        cfg = inference.load_checkpoint(checkpoints[0]).cfg
        print(f"ensemble of {len(checkpoints)} checkpoint(s)" if len(checkpoints) > 1 else f"checkpoint {checkpoints[0]}")
    else:
        if len(args.targets) != 1:
            raise UserError("give one preset / retrain folder, or only .ckpt files")
        target = resolve_retrain(args.targets[0])
        cfg = target.cfg
        chosen = parse_folds(args.folds, cfg.data.num_folds) if args.folds else None
        folds = target.finished_folds(chosen)
        checkpoints = [str(c) for _, c, _ in folds]
        print(f"retrain {target.root}: folds {[k for k, _, _ in folds]} "
              f"(best {', '.join('-' if b is None else f'{b:.4f}' for _, _, b in folds)})")
        for note in target.notes:
            print(f"  {note}")
    if args.set:
        cfg = apply_overrides(cfg, parse_overrides(args.set))
    pp = cfg.models.postprocess
    print(f"post-processing: {'polygon' if pp.use_polygon else 'box'} mode, thresh {pp.thresh}, box_thresh "
          f"{pp.box_thresh}, unclip_ratio {pp.unclip_ratio}; TTA {args.tta}", flush=True)
    out_json = args.json or str(Path(args.out).with_suffix(".json"))
    preds = inference.predict(checkpoints, args.images, out_csv=args.out, out_json=out_json, postprocess=pp,
                             weights=args.weights, tta_flip=args.tta == "flip", device=args.device,
                             overwrite=not args.no_overwrite)
    n = sum(len(v) for v in preds.values())
    print(f"{len(preds)} images, {n} detections -> {args.out} and {out_json}")
    report = validate_submission(args.out, images=args.images)
    print(f"submission check: {'valid' if report.valid else 'INVALID'} ({len(report.errors)} errors, "
          f"{len(report.warnings)} warnings; details: hrnet_sweep validate-submission {args.out} --images "
          f"{args.images})")
    if args.gt:
        from ..formats import load_annotations, load_predictions
        from ..metric import evaluate

        # score the file as submitted (integer points), the number `hrnet_sweep eval` gives for it
        gt = {name: a.polygons() for name, a in load_annotations(args.gt).items()}
        res = evaluate(gt, load_predictions(args.out))
        print(f"H-Mean {res.hmean:.4f} (precision {res.precision:.4f}, recall {res.recall:.4f}) on {len(gt)} images")
    return 0 if report.valid else 2
