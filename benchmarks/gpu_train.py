"""Training speed of a preset on one device: images/s, TFLOP/s and MFU per setting against
the seed's setup, the largest batch that fits, and a run through the real data loader.

    python benchmarks/gpu_train.py                                  # GPU: hrnet_w44 at 1280
    python benchmarks/gpu_train.py --preset hrnet_w44_1280_fast --batches 8 16 32 --compile off regional
    python benchmarks/gpu_train.py --preset hrnet_w44_1280_fast --find-batch
    python benchmarks/gpu_train.py --preset hrnet_w44_1280_fast --e2e [--data DIR]
    python benchmarks/gpu_train.py --preset hrnet_w18_small_cpu --size 128 [--e2e]   # CPU check
    python benchmarks/gpu_train.py ... trainer.compile_cache_dir=/tmp/cold      # any config override

Synthetic table. The first row is always the seed's setup (batch 2, fp32, contiguous,
eager, `highest` matmul precision), measured in the same run; every row shows its ratio
to it. Each row is a config (`data.batch_size`, `trainer.precision`, `channels_last`,
`compile`, `activation_checkpointing`; the rest from the preset) set up with the
functions training calls (`speed.configure_backends`, `speed.prepare_model`), then timed
over warm-up and timed optimizer steps of the real model, loss and AdamW as Lightning runs
them (`batch_size.train_step`) on one synthetic batch. `first step s` is the first step
alone: for compiled rows, the compile time (the cache folder is printed: a warm cache
makes it short; pass `trainer.compile_cache_dir=<empty folder>` for a cold one).

FLOPs: counted once per batch size with `torch.utils.flop_counter.FlopCounterMode` on the
meta device (network forward and backward; loss and optimizer are negligible). The count
does not depend on precision, memory format or compilation, and the recomputation of
activation checkpointing is not counted (model FLOPs, as MFU is defined). MFU = achieved
TFLOP/s / the GPU's dense tensor-core peak for the row's precision (fp32 rows: TF32, as
cuDNN runs fp32 convolutions in TF32 by default) from `PEAK_TFLOPS`, or `--peak-tflops`.

`--e2e` trains with `pipeline.train.run` itself (Trainer, data loader, levers, validation)
on images on disk (`--data`, laid out as the preset says; default: synthetic receipts at
the input size made now) and reports, for the last epoch: training images/s, validation
images/s (inference + post-processing + metric), the fraction of training wall time spent
between steps (waiting for the next batch, its copy to the device, loop overhead: the GPU
is synchronised at each step end, so this is time the GPU idles) and peak memory.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_sweep.config import apply_overrides, load_config, parse_overrides  # noqa: E402
from hrnet_sweep.dbnet.batch_size import find_largest_batch, synthetic_batch, train_step  # noqa: E402
from hrnet_sweep.dbnet.lit import build_optimizer  # noqa: E402
from hrnet_sweep.dbnet.loss import build_loss  # noqa: E402
from hrnet_sweep.dbnet.model import build_model  # noqa: E402
from hrnet_sweep.dbnet.speed import compile_cache_dir, configure_backends, prepare_model  # noqa: E402

SEED_SETUP = {
    "data.batch_size": 2,
    "trainer.precision": "32",
    "trainer.channels_last": False,
    "trainer.compile": False,
    "trainer.activation_checkpointing": False,
    "trainer.matmul_precision": "highest",
}
"""The seed's training setup: the reference row of every table."""

PEAK_TFLOPS = {
    # dense tensor-core TFLOP/s from the vendors' data sheets: (bf16/fp16 with fp32 accumulate, tf32, fp32)
    "H200": (989.0, 494.7, 66.9),
    "H100 NVL": (835.0, 417.5, 60.0),
    "H100 PCIe": (756.5, 378.0, 51.2),
    "H100": (989.0, 494.7, 66.9),  # SXM
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.1, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
    "RTX 4090": (165.2, 82.6, 82.6),
    "RTX 3090": (71.0, 35.6, 35.6),
    "A10": (125.0, 62.5, 31.2),
}
"""Matched in this order against `torch.cuda.get_device_name()` (A100 before A10)."""


def peak_tflops(device_name: str, precision: str) -> float | None:
    for key, (half, tf32, fp32) in PEAK_TFLOPS.items():
        if key in device_name:
            if precision != "32":
                return half
            return tf32 if torch.backends.cudnn.allow_tf32 else fp32
    return None


def flops_per_image(cfg, batch_size: int) -> float:
    """Training FLOPs (forward + backward of the network) per image, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(cfg).train()
    x = torch.empty(batch_size, 3, cfg.data.image_height, cfg.data.image_width, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        sum(v.float().sum() for v in out.values()).backward()
    return counter.get_total_flops() / batch_size


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg, device: torch.device, warmup: int, steps: int, backend: str) -> dict:
    """Images/s, peak memory and first-step seconds of one setting (see the module doc)."""
    torch._dynamo.reset()  # each row compiles from scratch in this process (the disk cache stays)
    backends = configure_backends(cfg)
    t = cfg.trainer
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    prepare_model(model, cfg, backends, backend=backend)
    opt = build_optimizer(model.parameters(), cfg.models.optimizer, cfg.models.optimizer.weight_decay)
    step = train_step(
        model, build_loss(cfg), opt, precision=t.precision, device_type=device.type, channels_last=t.channels_last
    )
    n = cfg.data.batch_size
    batch = synthetic_batch(n, cfg.data.image_height, cfg.data.image_width, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    step(batch)
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step(batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch)
    _sync(device)
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb() - rss0
    return {"images_per_s": n * steps / dt, "peak_mb": mem, "first_s": first}


def _row_overrides(args, device: torch.device) -> list[dict]:
    cuda = device.type == "cuda"
    batches = args.batches or ([8, 16] if cuda else [2])
    precisions = args.precisions or (["32", "bf16-mixed"] if cuda else ["32", "bf16-mixed"])
    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last or ("on" if cuda else "both")]
    compiles = args.compile or (["off", "regional"] if cuda else ["off"])
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    rows = []
    for bs, prec, cl, comp, ckpt in itertools.product(batches, precisions, layouts, compiles, ckpts):
        row = {
            "data.batch_size": bs,
            "trainer.precision": prec,
            "trainer.channels_last": cl,
            "trainer.compile": comp != "off",
            "trainer.activation_checkpointing": ckpt,
        }
        if comp != "off":
            row["trainer.compile_scope"] = comp
        rows.append(row)
    return rows


def synthetic_table(cfg, args, device: torch.device) -> None:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [SEED_SETUP, *_row_overrides(args, device)]
    cache = compile_cache_dir(cfg) if any(r["trainer.compile"] for r in rows) else "-"
    print(
        f"{cfg.models.name} at {cfg.data.image_height}px on {where}; {args.warmup} warm-up + {args.steps} timed "
        f"steps; matmul precision {cfg.trainer.matmul_precision} on CUDA (seed setup: highest); "
        f"cudnn.benchmark {device.type == 'cuda' and not cfg.trainer.deterministic}; compile cache {cache}"
    )
    mem_col = "peak GPU MiB" if device.type == "cuda" else "peak RSS +MiB"
    print(
        f"| setting | batch | precision | channels_last | compile | checkpointing | images/s | vs seed setup "
        f"| TFLOP/s | MFU | {mem_col} | first step s |"
    )
    print("|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    flops: dict[int, float] = {}
    base = None
    for i, over in enumerate(rows):
        row_cfg = apply_overrides(cfg, over)
        bs, t = row_cfg.data.batch_size, row_cfg.trainer
        comp = t.compile_scope if t.compile else "off"
        head = (
            f"| {'seed setup' if i == 0 else 'grid'} | {bs} | {t.precision} | {t.channels_last} | {comp} | "
            f"{'on' if t.activation_checkpointing else 'off'} |"
        )
        try:
            r = measure(row_cfg, device, args.warmup, args.steps, args.backend)
        except torch.cuda.OutOfMemoryError:
            print(f"{head} OOM | - | - | - | - | - |", flush=True)
            torch.cuda.empty_cache()
            continue
        except RuntimeError as err:  # e.g. a precision the device lacks
            print(f"{head} error: {str(err).splitlines()[0][:60]} | - | - | - | - | - |", flush=True)
            continue
        if bs not in flops:
            flops[bs] = flops_per_image(row_cfg, bs)
        base = base or r["images_per_s"]
        tflops = r["images_per_s"] * flops[bs] / 1e12
        peak = args.peak_tflops or (peak_tflops(where, t.precision) if device.type == "cuda" else None)
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "-"
        print(
            f"{head} {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x | {tflops:.3g} | {mfu} | "
            f"{r['peak_mb']:.0f} | {r['first_s']:.1f} |",
            flush=True,
        )
    print(f"training FLOPs per image: {', '.join(f'{v / 1e12:.3g} TFLOP (batch {b})' for b, v in flops.items())}")


# ----------------------------------------------------------------------------- --e2e


def _timer_callback(device: torch.device):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Per training epoch: seconds inside steps, seconds between them, images; per
        validation: seconds and images."""

        def __init__(self):
            self.epochs: list[dict] = []
            self.validations: list[tuple[float, int]] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.epochs.append({"step": 0.0, "wait": 0.0, "images": 0})
            self._end = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._start = time.perf_counter()
            self.epochs[-1]["wait"] += self._start - self._end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            self._end = time.perf_counter()
            self.epochs[-1]["step"] += self._end - self._start
            self.epochs[-1]["images"] += len(batch["image"])

        def on_validation_start(self, trainer, pl_module):
            _sync(device)
            self._val = [time.perf_counter(), 0]

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self._val[1] += len(batch["image"])

        def on_validation_end(self, trainer, pl_module):
            self.validations.append((time.perf_counter() - self._val[0], self._val[1]))

    return StepTimer()


def _synthetic_data(folder: Path, size: int, images: int) -> dict:
    """Receipts at about the input size (never below the generator's default canvas) and
    the overrides that point a config at them (train/val mode)."""
    from hrnet_sweep.synth import generate

    n_val = max(2, images // 4)
    generate(
        folder,
        num_images=images + n_val,
        seed=0,
        width=max(3 * size // 4, 480),
        height=max(size, 640),
        splits={"train": images, "val": n_val},
        korean=False,
        progress=False,
    )
    return {
        "data.root": str(folder),
        "data.train_json": "train.json",
        "data.val_json": "val.json",
        "data.train_images": "images",
        "data.val_images": "images",
        "data.fold": None,
    }


def end_to_end(cfg, args, device: torch.device) -> None:
    from hrnet_sweep.pipeline.train import run

    with tempfile.TemporaryDirectory(prefix="gpu_train_e2e_") as tmp:
        tmp = Path(tmp)
        data = (
            {"data.root": args.data} if args.data else _synthetic_data(tmp / "data", cfg.data.image_height, args.images)
        )
        run_cfg = apply_overrides(
            cfg,
            {
                **data,
                "output_dir": str(tmp / "runs"),
                "run_name": "e2e",
                "trainer.max_epochs": args.epochs,
                "wandb": False,
                "logging.tensorboard": False,
                "trainer.progress_bar": False,
                "callbacks.early_stopping.enabled": False,
                "callbacks.model_checkpoint.save_top_k": 0,
                "callbacks.model_checkpoint.save_last": False,
                "resume_from_checkpoint": None,
            },
        )
        timer = _timer_callback(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = run(run_cfg, extra_callbacks=[timer])
    if result.state != "finished" or not timer.epochs:
        print(f"e2e run {result.state}: {result.reason}")
        return
    last = timer.epochs[-1]
    train_ips = last["images"] / (last["step"] + last["wait"])
    wait = last["wait"] / (last["step"] + last["wait"])
    val_s, val_n = timer.validations[-1] if timer.validations else (0.0, 0)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb()
    d, t = run_cfg.data, run_cfg.trainer
    print(
        f"\nend to end ({'data ' + args.data if args.data else f'{args.images} synthetic receipts'}; "
        f"epoch {len(timer.epochs)} of {args.epochs}; {d.num_workers} workers, prefetch {d.prefetch_factor}, "
        f"pin_memory {d.pin_memory and device.type == 'cuda'}, persistent {d.persistent_workers})"
    )
    print(
        f"| batch | precision | channels_last | compile | training images/s | validation images/s | data wait "
        f"| {'peak GPU MiB' if device.type == 'cuda' else 'peak RSS MiB'} |"
    )
    print("|---:|---|---|---|---:|---:|---:|---:|")
    print(
        f"| {d.batch_size} | {t.precision} | {t.channels_last} | {t.compile_scope if t.compile else 'off'} | "
        f"{train_ips:.2f} | {val_n / val_s if val_s else float('nan'):.2f} | {100 * wait:.1f}% | {mem:.0f} |"
    )


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    ap.add_argument("--preset", default="hrnet_w44_1280")
    ap.add_argument("--size", type=int, help="input size (default: the preset's)")
    ap.add_argument("--batches", type=int, nargs="+", help="default: 8 16 on GPU, 2 on CPU")
    ap.add_argument("--precisions", nargs="+", choices=["32", "16-mixed", "bf16-mixed"], help="default: 32 bf16-mixed")
    ap.add_argument("--channels-last", choices=["off", "on", "both"], help="default: on (GPU), both (CPU)")
    ap.add_argument(
        "--compile", nargs="+", choices=["off", "regional", "full"], help="default: off regional on GPU, off on CPU"
    )
    ap.add_argument("--checkpointing", choices=["off", "on", "both"], default="off", help="activation checkpointing")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generation)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: from the GPU's name)")
    ap.add_argument("--find-batch", action="store_true", help="print the largest batch that fits (CUDA)")
    ap.add_argument("--e2e", action="store_true", help="also train through the real data loader")
    ap.add_argument("--data", help="--e2e data root (default: synthetic receipts)")
    ap.add_argument("--images", type=int, default=64, help="--e2e synthetic training images")
    ap.add_argument("--epochs", type=int, default=2, help="--e2e epochs (the last is reported)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"preset": args.preset, "models.pretrained": False, **parse_overrides(args.overrides)}
    if args.size:
        overrides.update({"data.image_height": args.size, "data.image_width": args.size})
    cfg = load_config(overrides)
    synthetic_table(cfg, args, device)
    if args.find_batch:
        if device.type == "cuda":
            print(
                f"\nlargest batch that fits ({cfg.trainer.precision}, channels_last {cfg.trainer.channels_last}, "
                f"checkpointing {cfg.trainer.activation_checkpointing}): {find_largest_batch(cfg, limit=256)}"
            )
        else:
            print(f"\n--find-batch: no CUDA GPU; training uses the preset's data.batch_size={cfg.data.batch_size}")
    if args.e2e:
        end_to_end(cfg, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
