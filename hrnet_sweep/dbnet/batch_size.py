"""The largest training batch that fits in GPU memory (`data.auto_batch_size`), found
with the optimizer step that the benchmark times: the real model, loss and optimizer on a
synthetic batch, under the precision, memory format and checkpointing of the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

AUTO_BATCH_LIMIT = 64
"""`data.auto_batch_size` looks no further: past a few dozen images per step throughput
stops growing, while the optimisation (steps per epoch, learning rate) keeps changing."""
HEADROOM = 0.10
"""Fraction of GPU memory left free: allocator fragmentation, cuDNN workspaces chosen at
run time, and compiled kernels that the eager probe does not run."""


def synthetic_batch(n: int, height: int, width: int, device: torch.device | str, seed: int = 0) -> dict:
    """A training batch as the data loader delivers it (uint8 NHWC image, float maps)."""
    g = torch.Generator().manual_seed(seed)
    gt = (torch.rand(n, height, width, generator=g) > 0.85).float()
    batch = {
        "image": torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=g),
        "prob_map": gt,
        "prob_mask": torch.ones_like(gt),
        "thresh_map": 0.3 + 0.4 * torch.rand(n, height, width, generator=g),
        "thresh_mask": torch.ones_like(gt),
    }
    return {k: v.to(device) for k, v in batch.items()}


def train_step(
    model, loss_fn, optimizer, *, precision: str, device_type: str, channels_last: bool
) -> Callable[[dict], torch.Tensor]:
    """One optimizer step as Lightning runs it for `trainer.precision`: autocast around
    forward and loss, gradients cleared after the forward (as Lightning's closure does, so
    the last step's gradients and this step's activations coexist), GradScaler for 16-mixed."""
    from .data import to_network_input

    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device_type, enabled=precision == "16-mixed")

    def step(batch: dict) -> torch.Tensor:
        x = to_network_input(batch["image"], channels_last)
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(x), batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def largest_batch(fits: Callable[[int], bool], *, start: int = 1, limit: int = AUTO_BATCH_LIMIT) -> int:
    """The largest n in [1, limit] with `fits(n)`, for a `fits` that holds up to some n
    and fails above it: doubles from `start` until a batch fails, then bisects.

    Raises:
        ValueError: not even a batch of 1 fits, or `start`/`limit` are not >= 1.
    """
    if start < 1 or limit < 1:
        raise ValueError(f"start={start} and limit={limit} must be >= 1")
    start = min(start, limit)
    if fits(start):
        lo, hi = start, None
        while hi is None:
            n = min(2 * lo, limit)
            if n == lo:
                return lo
            lo, hi = (n, None) if fits(n) else (lo, n)
    else:
        lo, hi = 0, start
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo == 0:
        raise ValueError("not even a batch of 1 image fits in GPU memory")
    return lo


def find_largest_batch(
    cfg, *, limit: int = AUTO_BATCH_LIMIT, headroom: float = HEADROOM, device: torch.device | str = "cuda"
) -> int:
    """Largest batch whose training step peaks under (1 - headroom) of the GPU's memory,
    for the model, precision, channels_last and activation checkpointing of `cfg`
    (eager: compiled regions use no more memory than eager ones)."""
    try:
        return _search(cfg, limit, headroom, torch.device(device))
    finally:  # the probe's model, optimizer state and batches are gone now
        torch.cuda.empty_cache()


def _search(cfg, limit: int, headroom: float, device: torch.device) -> int:
    from ..config import apply_overrides
    from .lit import build_optimizer
    from .loss import build_loss
    from .model import build_model
    from .speed import apply_activation_checkpointing, configure_backends

    configure_backends(cfg)  # cuDNN autotuning picks the algorithms (and workspaces) training will use
    t = cfg.trainer
    model = build_model(apply_overrides(cfg, {"models.pretrained": False})).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    opt = build_optimizer(model.parameters(), cfg.models.optimizer, cfg.models.optimizer.weight_decay)
    step = train_step(
        model, build_loss(cfg), opt, precision=t.precision, device_type=device.type, channels_last=t.channels_last
    )
    budget = (1 - headroom) * torch.cuda.get_device_properties(device).total_memory

    def fits(n: int) -> bool:
        ok = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            batch = synthetic_batch(n, cfg.data.image_height, cfg.data.image_width, device)
            for _ in range(2):  # the second step holds the first one's gradients and optimizer state
                step(batch)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            ok = False
        batch = None
        opt.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated(device)
        log.info(
            "batch %d: %s (peak %.1f GiB of %.1f GiB allowed)",
            n,
            "fits" if ok and peak <= budget else "too big",
            peak / 2**30,
            budget / 2**30,
        )
        return ok and peak <= budget

    return largest_batch(fits, start=cfg.data.batch_size, limit=limit)


def resolve_batch_size(cfg):
    """`cfg` with `data.batch_size` the largest that fits when `data.auto_batch_size` is
    set and a CUDA GPU is there (`auto_batch_size` then false: the saved config records
    the batch the run used, and an out-of-memory retry halves it); unchanged otherwise."""
    from ..config import apply_overrides

    if not cfg.data.auto_batch_size:
        return cfg
    if not torch.cuda.is_available() or cfg.trainer.accelerator == "cpu":
        log.info(
            "data.auto_batch_size: no CUDA GPU; training with the preset's data.batch_size=%d", cfg.data.batch_size
        )
        return cfg
    n = find_largest_batch(cfg)
    log.info("data.auto_batch_size: data.batch_size=%d (largest that fits, at most %d)", n, AUTO_BATCH_LIMIT)
    return apply_overrides(cfg, {"data.batch_size": n, "data.auto_batch_size": False})
