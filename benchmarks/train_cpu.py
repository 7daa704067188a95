"""Train the CPU preset from scratch (pretrained=false) and report what a user would ask:
the validation H-Mean per epoch, the time, and the post-processing thresholds chosen on
the validation probability maps.

    python benchmarks/train_cpu.py --data sroie      # ../shared/data/sroie-mini: train.json -> val.json
    python benchmarks/train_cpu.py --data synth      # synthetic receipts, scored on held-out test.json

Targets (issue #2): sroie-mini val H-Mean >= 0.90 within 15 minutes of training on a
2-core machine; held-out synthetic receipts >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hrnet_sweep.config import load_config  # noqa: E402
from hrnet_sweep.constants import METRIC  # noqa: E402
from hrnet_sweep.formats import load_annotations  # noqa: E402
from hrnet_sweep.metric import evaluate  # noqa: E402
from hrnet_sweep.dbnet.inference import load_checkpoint, postprocess_map, probability_maps  # noqa: E402
from hrnet_sweep.pipeline.train import run  # noqa: E402
from hrnet_sweep.pipeline.tune import Grid, tune_postprocess  # noqa: E402

SROIE = Path(os.environ.get("HRNET_SWEEP_SROIE", REPO.parent / "shared" / "data" / "sroie-mini"))


class Budget(pl.Callback):
    """Prints each epoch's row as it lands and stops before the time budget runs out."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.last = seconds, time.time(), time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.time()
        epoch_s, elapsed = now - self.last, now - self.start
        self.last = now
        hm = trainer.callback_metrics.get(METRIC)
        print(f"  epoch {trainer.current_epoch:2d}  val H-Mean {float(hm) if hm is not None else float('nan'):.4f}"
              f"  ({epoch_s:5.1f} s, {elapsed / 60:5.1f} min)", flush=True)
        if elapsed + epoch_s > self.seconds:
            print(f"  time budget of {self.seconds / 60:.0f} min reached: stopping", flush=True)
            trainer.should_stop = True


def prepare(kind: str, out: Path) -> tuple[Path, list[str], Path | None]:
    """Data root, the overrides that point training at it, and a held-out annotation file."""
    if kind == "sroie":
        if not (SROIE / "train.json").is_file():
            sys.exit(f"sroie-mini not found at {SROIE}; set HRNET_SWEEP_SROIE")
        return SROIE, ["data.fold=null", "data.train_json=train.json", "data.val_json=val.json",
                       "data.train_images=images"], None
    from hrnet_sweep.synth import generate

    root = out / "synth"
    if not (root / "test.json").is_file():
        generate(root, num_images=200, seed=11, progress=True, splits={"train": 140, "val": 30, "test": 30})
    return root, ["data.fold=null", "data.train_json=train.json", "data.val_json=val.json",
                  "data.train_images=images"], root / "test.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["sroie", "synth"], default="sroie")
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10, help="cosine schedule length (the budget may stop earlier)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_train_cpu"))
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    args = ap.parse_args()

    out = Path(args.out)
    root, data_overrides, held_out = prepare(args.data, out)
    run_name = f"{args.data}-{args.size}px-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_config([
        "preset=hrnet_w18_small_cpu", f"data.root={root}", *data_overrides,
        f"data.image_height={args.size}", f"data.image_width={args.size}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", f"models.optimizer.lr={args.lr}", f"trainer.max_epochs={args.epochs}",
        f"models.scheduler.T_max={args.epochs}", "callbacks.early_stopping.enabled=false",
        "trainer.progress_bar=false", f"output_dir={out}", f"run_name={run_name}", *args.set,
    ])
    print(f"training {cfg.models.name} from scratch at {args.size}px on {args.data} "
          f"(budget {args.minutes:.0f} min, {os.cpu_count()} cores)", flush=True)
    t0 = time.time()
    result = run(cfg, extra_callbacks=[Budget(args.minutes * 60)])
    train_s = time.time() - t0
    if result.state not in ("finished", "stopped") or not result.best_ckpt:
        print(f"training {result.state}: {result.reason}")
        return 1

    # Post-processing thresholds tuned on the validation maps of the best checkpoint (best
    # by val H-Mean at the preset's thresholds) and of the last one (end of the cosine
    # schedule); the better of the two is reported. The preset's fixed box threshold ranks
    # checkpoints poorly: on three sroie-mini runs the last checkpoint, tuned, beat the
    # "best" one, tuned, by 0.011-0.041.
    val_ann = load_annotations(root / str(cfg.data.val_json))
    gts = {n: a.polygons() for n, a in val_ann.items()}
    t1 = time.time()
    tuned = {}
    for label, ckpt in (("best", result.best_ckpt), ("last", result.last_ckpt)):
        if ckpt is None or (label == "last" and result.best_epoch == result.epochs - 1):  # the same weights
            continue
        model = load_checkpoint(ckpt)
        maps = dict(probability_maps([model], root / cfg.data.train_images, list(val_ann), progress=False))
        b, table = tune_postprocess(maps, gts, Grid(), workers=2)
        tuned[label] = (b, len(table), ckpt, model)
        print(f"  {label} checkpoint ({Path(ckpt).name}), tuned post-processing: val H-Mean {b['hmean']:.4f}",
              flush=True)
    chosen = max(tuned, key=lambda k: tuned[k][0]["hmean"])
    best, n_settings, chosen_ckpt, model = tuned[chosen]
    tune_s = time.time() - t1
    summary = {
        "data": args.data, "size": args.size, "epochs_run": result.epochs, "train_minutes": round(train_s / 60, 2),
        "best_epoch": result.best_epoch, "val_hmean_preset_postprocess": result.best,
        "val_hmean_tuned": best["hmean"], "tuned_postprocess": {k: best[k] for k in ("thresh", "box_thresh",
                                                                                    "unclip_ratio", "use_polygon")},
        "tuned_checkpoint": chosen_ckpt, "val_hmean_tuned_per_checkpoint": {k: v[0]["hmean"] for k, v in tuned.items()},
        "tune_seconds": round(tune_s, 1), "curve": [{"epoch": r["epoch"], METRIC: round(r[METRIC], 4)}
                                                     for r in result.history],
    }
    if held_out is not None:
        from hrnet_sweep.config import PostprocessConfig

        pp = PostprocessConfig(**{**cfg.models.postprocess.model_dump(), **summary["tuned_postprocess"]})
        test_ann = load_annotations(held_out)
        test_maps = probability_maps([model], root / cfg.data.train_images, list(test_ann), progress=False)
        preds = {n: postprocess_map(m, pp)[0] for n, m in test_maps}
        summary["held_out_hmean"] = evaluate({n: a.polygons() for n, a in test_ann.items()}, preds).hmean

    print("\nvalidation H-Mean per epoch (preset post-processing):")
    for r in summary["curve"]:
        print(f"  {r['epoch']:3d}  {r[METRIC]:.4f}")
    print(f"\ntrained {result.epochs} epochs in {summary['train_minutes']:.1f} min; best epoch {result.best_epoch}")
    print(f"val H-Mean, preset post-processing: {result.best:.4f}")
    print(f"val H-Mean, tuned post-processing:  {best['hmean']:.4f}  with {summary['tuned_postprocess']}, "
          f"{chosen} checkpoint {Path(chosen_ckpt).name} (search {tune_s:.0f} s over {n_settings} settings each)")
    if "held_out_hmean" in summary:
        print(f"held-out synthetic test H-Mean (tuned): {summary['held_out_hmean']:.4f}")
    (out / f"{run_name}.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / f'{run_name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
