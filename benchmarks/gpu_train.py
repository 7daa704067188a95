"""Training throughput and peak memory of a preset across batch sizes and precisions.

    python benchmarks/gpu_train.py                                  # GPU: hrnet_w44 at 1280
    python benchmarks/gpu_train.py --preset hrnet_w18_small_cpu --size 256 --batches 2 4   # CPU check

For each (batch size, precision, channels_last, torch.compile) it runs warm-up steps and
then timed optimizer steps of the real model and loss (DBNet + DBLoss, AdamW) on
synthetic batches, and prints images/s, the ratio to the fp32 / contiguous / eager
baseline of the same batch size measured in the same run, and peak GPU memory
(`torch.cuda.max_memory_allocated`; on the CPU the process's peak RSS growth instead).
An out-of-memory configuration is reported as OOM and the sweep of settings goes on.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from hrnet_sweep.config import load_config  # noqa: E402
from hrnet_sweep.dbnet.data import to_network_input  # noqa: E402
from hrnet_sweep.dbnet.loss import build_loss  # noqa: E402
from hrnet_sweep.dbnet.model import build_model  # noqa: E402


def _batch(n: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(n, size, size, generator=g) > 0.85).float()
    # The image as the data loader delivers it (uint8 NHWC); normalised in the step.
    batch = {"image": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g), "prob_map": gt, "prob_mask": torch.ones_like(gt),
             "thresh_map": 0.3 + 0.4 * torch.rand(n, size, size, generator=g), "thresh_mask": torch.ones_like(gt)}
    return {k: v.to(device) for k, v in batch.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(cfg, batch_size: int, precision: str, channels_last: bool, compile_: bool, device: torch.device,
            warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg)
    step_model = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    batch = _batch(batch_size, cfg.data.image_height, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_mb()

    def step() -> None:
        x = to_network_input(batch["image"], channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(step_model(x), batch)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    mem = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else (_peak_rss_mb() - rss0)
    return {"images_per_s": batch_size * steps / dt, "peak_mb": mem}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="hrnet_w44_1280")
    ap.add_argument("--size", type=int, help="input size (default: the preset's)")
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--precisions", nargs="+", default=None, help="default: 32 16-mixed bf16-mixed on GPU, 32 bf16-mixed on CPU")
    ap.add_argument("--compile", choices=["off", "on", "both"], default=None, help="default: both on GPU, off on CPU")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = [f"preset={args.preset}", "models.pretrained=false"]
    if args.size:
        overrides += [f"data.image_height={args.size}", f"data.image_width={args.size}"]
    cfg = load_config(overrides)
    precisions = args.precisions or (["32", "16-mixed", "bf16-mixed"] if device.type == "cuda" else ["32", "bf16-mixed"])
    compile_opt = args.compile or ("both" if device.type == "cuda" else "off")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[compile_opt]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{cfg.models.name} at {cfg.data.image_height}px on {where}; {args.warmup} warm-up + {args.steps} timed steps")
    mem_col = "peak GPU MiB" if device.type == "cuda" else "peak RSS +MiB"
    print(f"| batch | precision | channels_last | compile | images/s | vs fp32 eager | {mem_col} |")
    print("|---:|---|---|---|---:|---:|---:|")
    for bs in args.batches:
        base = None
        for precision, cl, comp in itertools.product(precisions, [False, True], compiles):
            try:
                r = measure(cfg, bs, precision, cl, comp, device, args.warmup, args.steps)
            except torch.cuda.OutOfMemoryError:
                print(f"| {bs} | {precision} | {cl} | {comp} | OOM | - | - |")
                torch.cuda.empty_cache()
                continue
            except RuntimeError as err:  # e.g. a precision the device lacks
                print(f"| {bs} | {precision} | {cl} | {comp} | error: {str(err).splitlines()[0][:60]} | - | - |")
                continue
            if base is None:
                base = r["images_per_s"]
            print(f"| {bs} | {precision} | {cl} | {comp} | {r['images_per_s']:.2f} | "
                  f"{r['images_per_s'] / base:.2f}x | {r['peak_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
