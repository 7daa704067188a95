"""What tuned validation costs: validation and epoch times with and without the
post-processing search (`models.postprocess.tune_on_val`), measured in the same run.

The CPU preset trains on sroie-mini (train.json -> val.json) or synthetic receipts;
epochs alternate between tuned and fixed validation (tuned first), so both see the same
machine, data workers and stage of training. Per epoch it prints the training and
validation seconds and both H-Means; at the end the mean validation and epoch time of
each kind and their ratio (the budget: tuned epochs at most 25 % slower).

    python benchmarks/bench_validation.py --data sroie --epochs 6
    python benchmarks/bench_validation.py --data synth --size 256 --epochs 4 --limit-train 10

`ValidationTimer` is also what `benchmarks/train_cpu.py` prints its epochs with.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hrnet_sweep.constants import METRIC  # noqa: E402
from hrnet_sweep.dbnet.lit import VAL_HMEAN_FIXED  # noqa: E402

SROIE = Path(os.environ.get("HRNET_SWEEP_SROIE", REPO.parent / "shared" / "data" / "sroie-mini"))


class ValidationTimer(pl.Callback):
    """Times each epoch's training and validation and records its H-Means and the module's
    `val_stats` (CPU seconds of post-processing in the training process, of the search in
    its workers, and the seconds validation waited for the search); with `alternate`,
    validation is tuned on even epochs and fixed on odd ones. `budget_s` stops training
    before the next epoch would pass it."""

    def __init__(self, *, alternate: bool = False, budget_s: float | None = None, echo: bool = True):
        self.alternate, self.budget_s, self.echo = alternate, budget_s, echo
        self.rows: list[dict] = []
        self.start = time.perf_counter()
        self._t: dict[str, float] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.alternate:
            pl_module.tune_on_val = trainer.current_epoch % 2 == 0
        self._t = {"epoch": time.perf_counter()}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._t["val"] = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if "val" in self._t:
            self._t["val_s"] = time.perf_counter() - self._t["val"]
            metrics = trainer.callback_metrics
            self._t["row"] = {k: float(metrics[k]) for k in (METRIC, VAL_HMEAN_FIXED) if k in metrics}
            self._t["stats"] = dict(pl_module.val_stats)
            self._t["tuned"] = pl_module.tune_on_val

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        row = self._t.get("row", {})
        rec = {
            "epoch": trainer.current_epoch,
            "tuned": self._t.get("tuned"),
            "epoch_s": now - self._t["epoch"],
            "val_s": self._t.get("val_s"),
            "hmean": row.get(METRIC),
            "hmean_fixed": row.get(VAL_HMEAN_FIXED),
            **self._t.get("stats", {}),
        }
        self.rows.append(rec)
        elapsed = now - self.start
        if self.echo:
            print(
                f"  epoch {rec['epoch']:2d} {'tuned' if rec['tuned'] else 'fixed'}  val H-Mean {_f(rec['hmean'])}"
                f"  fixed-setting H-Mean {_f(rec['hmean_fixed'] if rec['tuned'] else rec['hmean'])}"
                f"  epoch {rec['epoch_s']:5.1f} s  validation {_f(rec['val_s'], 5, 1)} s"
                f" (post-processing {_f(rec.get('postprocess_s'), 4, 1)} s CPU here"
                + (
                    f", search {rec['search_cpu_s']:.1f} s CPU, waited {rec['search_wait_s']:.1f} s"
                    if rec.get("search_cpu_s") is not None
                    else ""
                )
                + f")  ({elapsed / 60:5.1f} min)",
                flush=True,
            )
        if self.budget_s is not None and elapsed + rec["epoch_s"] > self.budget_s:
            print(f"  time budget of {self.budget_s / 60:.0f} min reached: stopping", flush=True)
            trainer.should_stop = True

    def summary(self) -> dict:
        """Mean seconds of tuned and fixed epochs (the first epoch left out when both kinds
        have later ones: it pays the start-up of workers and caches)."""
        out = {}
        for kind, tuned in (("tuned", True), ("fixed", False)):
            rows = [r for r in self.rows if r["tuned"] is tuned and r["val_s"] is not None]
            if len(rows) > 1 and rows[0]["epoch"] == 0:
                rows = rows[1:]
            if rows:
                out[kind] = {
                    "epochs": [r["epoch"] for r in rows],
                    **{
                        k: statistics.mean(r.get(k) or 0.0 for r in rows)
                        for k in ("val_s", "epoch_s", "postprocess_s", "search_cpu_s", "search_wait_s")
                    },
                }
        if len(out) == 2:
            out["epoch_ratio"] = out["tuned"]["epoch_s"] / out["fixed"]["epoch_s"]
        return out


def _f(v, width: int = 6, digits: int = 4) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else "-".rjust(width)


def main(argv=None) -> int:
    from hrnet_sweep.config import load_config
    from hrnet_sweep.pipeline.train import run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["sroie", "synth"], default="sroie")
    ap.add_argument("--preset", default="hrnet_w18_small_cpu")
    ap.add_argument("--size", type=canvas, help="network input: 512 or HEIGHTxWIDTH (default: the preset's)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, help="default: the preset's")
    ap.add_argument("--lr", type=float, help="default: the preset's")
    ap.add_argument("--workers", type=int, default=1, help="data workers")
    ap.add_argument("--tune-workers", type=int, default=1, help="search processes")
    ap.add_argument("--limit-train", type=float, default=1.0, help="trainer.limit_train_batches")
    ap.add_argument("--init", help="weights to start from (a checkpoint of a trained run: realistic maps at once)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_validation"))
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    args = ap.parse_args(argv)

    root, data = _data(args.data, Path(args.out))
    limit = int(args.limit_train) if args.limit_train > 1 else args.limit_train
    cfg = load_config(
        [
            *cpu_recipe(root, data, args),
            f"trainer.limit_train_batches={limit}",
            f"models.postprocess.tune_workers={args.tune_workers}",
            "logging.tensorboard=false",
            f"output_dir={args.out}",
            *([f"ckpt_path={args.init}"] if args.init else []),
            *args.set,
        ]
    )
    cfg = named(cfg, args.data)
    print(
        f"{cfg.models.name} at {Canvas.of(cfg)} px on {args.data}, {os.cpu_count()} cores, {args.tune_workers} search "
        f"process(es); epochs alternate tuned / fixed validation",
        flush=True,
    )
    timer = ValidationTimer(alternate=True)
    result = run(cfg, extra_callbacks=[timer])
    if result.state not in ("finished", "stopped"):
        print(f"training {result.state}: {result.reason}")
        return 1
    s = timer.summary()
    for kind in ("tuned", "fixed"):
        if kind in s:
            k = s[kind]
            print(
                f"{kind} validation: {k['val_s']:.1f} s per validation, {k['epoch_s']:.1f} s per epoch "
                f"(epochs {k['epochs']}); CPU s per validation: post-processing here {k['postprocess_s']:.1f}, "
                f"search workers {k['search_cpu_s']:.1f}; waited for the search {k['search_wait_s']:.1f} s"
            )
    if "epoch_ratio" in s:
        print(f"tuned / fixed epoch time: {s['epoch_ratio']:.3f} (budget 1.25)")
    return 0


def cpu_recipe(root: Path, data: list[str], args) -> list[str]:
    """`args.preset` from scratch on `root` with `args.workers` data workers, no early
    stopping, and what `args` sets of the recipe: `size` (a `Canvas`), `batch`, `lr`, and
    `epochs` (the cosine's length too). The overrides this benchmark and `train_cpu.py`
    share."""
    out = [
        f"preset={args.preset}",
        f"data.root={root}",
        *data,
        f"data.num_workers={args.workers}",
        "callbacks.early_stopping.enabled=false",
        "trainer.progress_bar=false",
    ]
    if args.size is not None:
        out += [f"data.image_height={args.size.height}", f"data.image_width={args.size.width}"]
    if args.batch is not None:
        out.append(f"data.batch_size={args.batch}")
    if args.lr is not None:
        out.append(f"models.optimizer.lr={args.lr}")
    if args.epochs is not None:
        out += [f"trainer.max_epochs={args.epochs}", f"models.scheduler.T_max={args.epochs}"]
    return out


class Canvas(NamedTuple):
    """The network input size; receipts are about twice as tall as wide (sroie-mini: median
    height / width 2.0), so a tall canvas spends its pixels on the receipt, not on padding."""

    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}" if self.height != self.width else str(self.height)

    @classmethod
    def of(cls, cfg) -> Canvas:
        """The canvas a resolved config trains at."""
        return cls(cfg.data.image_height, cfg.data.image_width)


def named(cfg, prefix: str):
    """`cfg` with `run_name` `<prefix>-<canvas>-<time>` unless the overrides named the run."""
    if cfg.run_name:
        return cfg
    return cfg.model_copy(update={"run_name": f"{prefix}-{Canvas.of(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"})


def canvas(text: str) -> Canvas:
    """`512` (square) or `768x384` (height x width), multiples of 32."""
    h, sep, w = text.lower().partition("x")
    try:
        size = Canvas(int(h), int(w if sep else h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 512 or HEIGHTxWIDTH such as 768x384") from None
    if min(size) < 32 or size.height % 32 or size.width % 32:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be multiples of 32")
    return size


def _data(kind: str, out: Path) -> tuple[Path, list[str]]:
    overrides = ["data.fold=null", "data.train_json=train.json", "data.val_json=val.json", "data.train_images=images"]
    if kind == "sroie":
        if not (SROIE / "train.json").is_file():
            sys.exit(f"sroie-mini not found at {SROIE}; set HRNET_SWEEP_SROIE")
        return SROIE, overrides
    from hrnet_sweep.synth import generate

    root = out / "synth"
    if not (root / "val.json").is_file():
        generate(root, num_images=80, seed=11, progress=False, splits={"train": 60, "val": 20})
    return root, overrides


if __name__ == "__main__":
    sys.exit(main())
