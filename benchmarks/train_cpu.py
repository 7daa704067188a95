"""Train a CPU preset from scratch (pretrained=false) and report what a user would ask:
the validation H-Mean per epoch (tuned at each validation epoch, and at the preset's fixed
post-processing), the epoch and validation times, and the post-processing thresholds
chosen on the validation probability maps.

    python benchmarks/train_cpu.py --data sroie      # ../shared/data/sroie-mini: train.json -> val.json
    python benchmarks/train_cpu.py --data sroie --fold 0   # train.json's fold 0 held out; val.json unseen
    python benchmarks/train_cpu.py --data sroie --size 512 --epochs 15   # another canvas / schedule
    python benchmarks/train_cpu.py --data synth      # synthetic receipts, scored on held-out test.json
    python benchmarks/train_cpu.py --data sroie --compare-tuning   # epochs alternate tuned / fixed validation

The recipe is the preset `hrnet_w18_small_cpu_receipts` (768 x 544 portrait canvas, batch
4, AdamW 1e-3, cosine over 11 epochs); `--size`, `--batch`, `--lr`, `--epochs` override it.
Targets: sroie-mini tuned val H-Mean >= 0.95 within 15 minutes of training on a 2-core
machine (issue 14; 0.90 at fixed post-processing, issue #2); held-out synthetic receipts
>= 0.85.
Epochs with tuned validation at most 25 % slower than without (`--compare-tuning`
measures both in one run; benchmarks/bench_validation.py does only that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_validation import Canvas, ValidationTimer, canvas, cpu_recipe, named  # noqa: E402

from hrnet_sweep.config import load_config  # noqa: E402
from hrnet_sweep.dbnet.inference import load_checkpoint, postprocess_map, probability_maps  # noqa: E402
from hrnet_sweep.dbnet.postprocess import to_uint8  # noqa: E402
from hrnet_sweep.dbnet.validation import Grid, tune_postprocess  # noqa: E402
from hrnet_sweep.formats import load_annotations  # noqa: E402
from hrnet_sweep.metric import evaluate  # noqa: E402
from hrnet_sweep.pipeline.train import data_split, run  # noqa: E402

SROIE = Path(os.environ.get("HRNET_SWEEP_SROIE", REPO.parent / "shared" / "data" / "sroie-mini"))


def prepare(kind: str, out: Path) -> tuple[Path, list[str], Path | None]:
    """Data root, the overrides that point training at it, and a held-out annotation file."""
    if kind == "sroie":
        if not (SROIE / "train.json").is_file():
            sys.exit(f"sroie-mini not found at {SROIE}; set HRNET_SWEEP_SROIE")
        return (
            SROIE,
            ["data.fold=null", "data.train_json=train.json", "data.val_json=val.json", "data.train_images=images"],
            None,
        )
    from hrnet_sweep.synth import generate

    root = out / "synth"
    if not (root / "test.json").is_file():
        generate(root, num_images=200, seed=11, progress=True, splits={"train": 140, "val": 30, "test": 30})
    return (
        root,
        ["data.fold=null", "data.train_json=train.json", "data.val_json=val.json", "data.train_images=images"],
        root / "test.json",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["sroie", "synth"], default="sroie")
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    ap.add_argument("--preset", default="hrnet_w18_small_cpu_receipts", help="the recipe (default: the receipts one)")
    ap.add_argument("--size", type=canvas, help="network input: 512 or HEIGHTxWIDTH (default: the preset's)")
    ap.add_argument("--batch", type=int, help="default: the preset's")
    ap.add_argument("--epochs", type=int, help="epochs = cosine length (the budget may stop earlier)")
    ap.add_argument("--lr", type=float, help="default: the preset's")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--fold",
        type=int,
        help="sroie: validate on this fold of train.json (5 folds) instead of val.json, so that "
        "val.json stays unseen while a recipe is chosen",
    )
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_train_cpu"))
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    ap.add_argument(
        "--compare-tuning",
        action="store_true",
        help="alternate tuned and fixed validation epochs and compare their times",
    )
    args = ap.parse_args()

    out = Path(args.out)
    root, data_overrides, held_out = prepare(args.data, out)
    cfg = load_config(
        [
            *cpu_recipe(root, data_overrides, args),
            f"output_dir={out}",
            *([] if args.fold is None else [f"data.fold={args.fold}"]),
            *args.set,
        ]
    )
    cfg = named(cfg, args.data)
    run_name, size = cfg.run_name, Canvas.of(cfg)
    print(
        f"training {cfg.models.name} from scratch at {size} px on {args.data} "
        f"(budget {args.minutes:.0f} min, {os.cpu_count()} cores)",
        flush=True,
    )
    t0 = time.time()
    timer = ValidationTimer(alternate=args.compare_tuning, budget_s=args.minutes * 60)
    result = run(cfg, extra_callbacks=[timer])
    train_s = time.time() - t0
    if result.state not in ("finished", "stopped") or not result.best_ckpt:
        print(f"training {result.state}: {result.reason}")
        return 1

    # Post-processing thresholds tuned again on full-resolution validation maps (a larger
    # grid than at validation) of the best checkpoint (best by the tuned val H-Mean) and of
    # the last one (end of the cosine schedule); the better of the two is reported. Before
    # validation was tuned, the preset's fixed thresholds ranked checkpoints poorly: on
    # three sroie-mini runs the last checkpoint, tuned, beat the "best" one by 0.011-0.041.
    split = data_split(cfg)
    gts = {n: split.val_ann[n].polygons() for n in split.val_names}
    t1 = time.time()
    tuned = {}
    for label, ckpt in (("best", result.best_ckpt), ("last", result.last_ckpt)):
        if ckpt is None or (label == "last" and result.best_epoch == result.epochs - 1):  # the same weights
            continue
        model = load_checkpoint(ckpt)
        maps = dict(probability_maps([model], split.val_images, split.val_names, progress=False))
        b, table = tune_postprocess(
            {n: to_uint8(m.prob) for n, m in maps.items()},
            gts,
            Grid(),
            image_sizes={n: m.image_size for n, m in maps.items()},
            workers=2,
        )
        tuned[label] = (b, len(table), ckpt, model)
        print(
            f"  {label} checkpoint ({Path(ckpt).name}), tuned post-processing: val H-Mean {b['hmean']:.4f}", flush=True
        )
    chosen = max(tuned, key=lambda k: tuned[k][0]["hmean"])
    best, n_settings, chosen_ckpt, model = tuned[chosen]
    tune_s = time.time() - t1
    summary = {
        "data": args.data,
        "size": str(size),
        "epochs_run": result.epochs,
        "train_minutes": round(train_s / 60, 2),
        "best_epoch": result.best_epoch,
        "val_hmean_best": result.best,
        "val_hmean_tuned": best["hmean"],
        "tuned_postprocess": {k: best[k] for k in ("thresh", "box_thresh", "unclip_ratio", "use_polygon")},
        "tuned_checkpoint": chosen_ckpt,
        "val_hmean_tuned_per_checkpoint": {k: v[0]["hmean"] for k, v in tuned.items()},
        "tune_seconds": round(tune_s, 1),
        "curve": [
            {
                "epoch": r["epoch"],
                "tuned": r["tuned"],
                "hmean": r["hmean"],
                "hmean_fixed": r["hmean_fixed"],
                "epoch_s": round(r["epoch_s"], 1),
                "val_s": round(r["val_s"] or 0.0, 1),
                "search_cpu_s": round(r.get("search_cpu_s") or 0.0, 1),
                "search_wait_s": round(r.get("search_wait_s") or 0.0, 1),
            }
            for r in timer.rows
        ],
        "timing": timer.summary(),
    }
    if held_out is not None:
        from hrnet_sweep.config import PostprocessConfig

        pp = PostprocessConfig(**{**cfg.models.postprocess.model_dump(), **summary["tuned_postprocess"]})
        test_ann = load_annotations(held_out)
        test_maps = probability_maps([model], root / cfg.data.train_images, list(test_ann), progress=False)
        preds = {n: postprocess_map(m, pp)[0] for n, m in test_maps}
        summary["held_out_hmean"] = evaluate({n: a.polygons() for n, a in test_ann.items()}, preds).hmean

    print(
        "\nvalidation H-Mean per epoch, tuned and at the preset's post-processing; epoch and validation s; "
        "s training waited for the search:"
    )
    for r in summary["curve"]:
        tuned, fixed = (r["hmean"], r["hmean_fixed"]) if r["tuned"] else (None, r["hmean"])
        print(
            f"  {r['epoch']:3d}  {'-' if tuned is None else f'{tuned:.4f}':>6}  "
            f"{'-' if fixed is None else f'{fixed:.4f}':>6}  {r['epoch_s']:6.1f}  {r['val_s']:5.1f}  "
            f"{r['search_wait_s']:5.1f}"
        )
    waits = [r["search_wait_s"] for r in summary["curve"]]
    if waits:
        worst = summary["curve"][max(range(len(waits)), key=waits.__getitem__)]
        print(
            f"longest wait for the search: {worst['search_wait_s']:.1f} s (epoch {worst['epoch']}); "
            f"all epochs: {sum(waits):.1f} s"
        )
    timing = summary["timing"]
    for kind in ("tuned", "fixed"):
        if kind in timing:
            print(
                f"{kind} validation epochs: {timing[kind]['epoch_s']:.1f} s per epoch, "
                f"{timing[kind]['val_s']:.1f} s per validation"
            )
    if "epoch_ratio" in timing:
        print(f"tuned / fixed epoch time: {timing['epoch_ratio']:.3f} (budget 1.25)")
    print(f"\ntrained {result.epochs} epochs in {summary['train_minutes']:.1f} min; best epoch {result.best_epoch}")
    how = "tuned at validation" if cfg.models.postprocess.tune_on_val else "preset post-processing"
    print(f"best val H-Mean ({how}): {result.best:.4f}")
    print(
        f"val H-Mean, tuned post-processing:  {best['hmean']:.4f}  with {summary['tuned_postprocess']}, "
        f"{chosen} checkpoint {Path(chosen_ckpt).name} (search {tune_s:.0f} s over {n_settings} settings each)"
    )
    if "held_out_hmean" in summary:
        print(f"held-out synthetic test H-Mean (tuned): {summary['held_out_hmean']:.4f}")
    (out / f"{run_name}.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / f'{run_name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
