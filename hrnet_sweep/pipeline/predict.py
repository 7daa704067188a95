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
from collections.abc import Sequence
from pathlib import Path

from ..dbnet import inference
from ..errors import UserError
from ..files import check_writable
from ..numeric import flag

__all__ = ["main"]


_PREDICT_KEYS = ("thresh", "box_thresh", "unclip_ratio", "use_polygon", "max_candidates", "min_size")
_NOT_PREDICT = ("tune_on_val", "tune_workers", "tune_budget")  # validation's, not prediction's


def _is_ckpt(arg: str) -> bool:
    return arg.endswith(".ckpt")


def _check_outputs(args: argparse.Namespace) -> str:
    """Refuse `--images` that is no folder and `--out` / `--json` paths that cannot be
    written; return the JSON path."""
    if not Path(args.images).expanduser().is_dir():
        raise UserError(f"--images {args.images}: not a folder")
    check_writable(args.out, what="--out", overwrite=not args.no_overwrite)
    out_json = args.json if args.json is not None else str(Path(args.out).with_suffix(".json"))
    check_writable(out_json, what="--json", overwrite=not args.no_overwrite)
    if Path(out_json).expanduser().resolve() == Path(args.out).expanduser().resolve():
        raise UserError(f"--json {out_json} and --out {args.out} name the same file; give two paths")
    return out_json


def _check_weights(weights: Sequence[float] | None, n: int) -> None:
    if weights is not None:
        inference.normalized_weights(weights, n)  # the one rule: count, sign, a positive finite sum


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep predict",
        description=(
            "Fold ensemble -> prediction JSON + submission CSV. TARGET is the preset given to kfold (its retrain is "
            "found), the retrain folder, its kfold_summary.json, or one or more .ckpt files."
        ),
    )
    ap.add_argument("targets", nargs="+", help="preset, retrain folder, kfold_summary.json, or .ckpt files")
    ap.add_argument("--images", required=True, help="folder of test images")
    ap.add_argument("--out", required=True, help="submission CSV to write")
    ap.add_argument("--json", help="prediction JSON to write (default: next to the CSV)")
    ap.add_argument("--tta", choices=["none", "flip"], default="none")
    ap.add_argument("--weights", type=flag(float, ge=0), nargs="+", help="one weight per checkpoint / fold (>= 0)")
    ap.add_argument("--folds", help="folds of the retrain to use, e.g. 0,2 (default: every finished fold)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--no-overwrite", action="store_true", help="refuse to replace existing outputs")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="post-processing overrides, e.g. models.postprocess.box_thresh=0.5",
    )
    ap.add_argument("--gt", help="annotation JSON of the test images: print the H-Mean")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep predict`: .ckpt files, or a preset / retrain (its folds) -> JSON + CSV."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from ..config import apply_overrides, parse_overrides
    from ..submission import validate_submission
    from .ensemble import resolve_retrain
    from .kfold import parse_folds

    out_json = _check_outputs(args)  # before any checkpoint is read: a bad path fails at once
    overrides = parse_overrides(args.set)
    ignored = [k for k in overrides if k.rsplit(".", 1)[0] != "models.postprocess" or k.endswith(_NOT_PREDICT)]
    if ignored:
        raise UserError(
            f"--set {ignored[0]}={overrides[ignored[0]]}: predict would ignore it; it takes the post-processing "
            f"keys only ({', '.join(f'models.postprocess.{k}' for k in _PREDICT_KEYS)}), the rest comes from the "
            "checkpoints"
        )
    if all(_is_ckpt(t) for t in args.targets):
        checkpoints = list(args.targets)
        if args.folds:
            raise UserError("--folds selects folds of a retrain; with .ckpt files, list the ones to use")
        _check_weights(args.weights, len(checkpoints))
        cfg = inference.load_checkpoint(checkpoints[0]).cfg
        print(
            f"ensemble of {len(checkpoints)} checkpoint(s)" if len(checkpoints) > 1 else f"checkpoint {checkpoints[0]}"
        )
    else:
        if len(args.targets) != 1:
            raise UserError("give one preset / retrain folder, or only .ckpt files")
        target = resolve_retrain(args.targets[0])
        cfg = target.cfg
        chosen = parse_folds(args.folds, cfg.data.num_folds) if args.folds else None
        folds = target.finished_folds(chosen)
        checkpoints = [str(c) for _, c, _ in folds]
        _check_weights(args.weights, len(checkpoints))
        print(
            f"retrain {target.root}: folds {[k for k, _, _ in folds]} "
            f"(best {', '.join('-' if b is None else f'{b:.4f}' for _, _, b in folds)})"
        )
        for note in target.notes:
            print(f"  {note}")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    pp = cfg.models.postprocess
    print(
        f"post-processing: {'polygon' if pp.use_polygon else 'box'} mode, thresh {pp.thresh}, box_thresh "
        f"{pp.box_thresh}, unclip_ratio {pp.unclip_ratio}; TTA {args.tta}",
        flush=True,
    )
    preds = inference.predict(
        checkpoints,
        args.images,
        out_csv=args.out,
        out_json=out_json,
        postprocess=pp,
        weights=args.weights,
        tta_flip=args.tta == "flip",
        device=args.device,
        overwrite=not args.no_overwrite,
    )
    n = sum(len(v) for v in preds.values())
    print(f"{len(preds)} images, {n} detections -> {args.out} and {out_json}")
    report = validate_submission(args.out, images=args.images)
    print(
        f"submission check: {'valid' if report.valid else 'INVALID'} ({len(report.errors)} errors, "
        f"{len(report.warnings)} warnings; details: hrnet_sweep validate-submission {args.out} --images "
        f"{args.images})"
    )
    if args.gt:
        from ..formats import load_annotations, load_predictions
        from ..metric import evaluate

        # score the file as submitted (integer points), the number `hrnet_sweep eval` gives for it
        gt = {name: a.polygons() for name, a in load_annotations(args.gt).items()}
        res = evaluate(gt, load_predictions(args.out))
        print(f"H-Mean {res.hmean:.4f} (precision {res.precision:.4f}, recall {res.recall:.4f}) on {len(gt)} images")
    return 0 if report.valid else 2
