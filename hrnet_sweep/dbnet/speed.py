"""Training speed levers: backend settings, regional compilation with one compile cache
per sweep, and activation checkpointing of the HRNet backbone.

Training (`pipeline.train`) and the benchmark (`benchmarks/gpu_train.py`) call these same
functions, so the benchmark measures what training runs. Each lever is a config key:
`trainer.matmul_precision`, `trainer.compile` (+ `compile_scope`, `compile_mode`,
`compile_cache_dir`) and `trainer.activation_checkpointing`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_CACHE_ENV = "HRNET_SWEEP_COMPILE_CACHE"
"""Folder for compiled artifacts shared by every run of a sweep (set it in the agent's
environment); `trainer.compile_cache_dir` overrides it."""

RECOMPILE_LIMIT = 64
"""Every compiled region shares one code object (`forward` of the block's class), so
Dynamo's default limit of 8 compiled variants per code object is too low: HRNet-W44 has
about a dozen distinct regions. Past the limit a region silently runs eager."""


@dataclass(frozen=True)
class Backends:
    """What `configure_backends` set, for logs and the benchmark's header."""

    cuda: bool
    cudnn_benchmark: bool
    matmul_precision: str
    compile_cache: str | None


def configure_backends(cfg) -> Backends:
    """Process-wide settings for a training run; call before the model is compiled and the
    Trainer is built.

    - cuDNN autotuning (`cudnn.benchmark`) on CUDA unless `trainer.deterministic`: input
      shapes are fixed, so the first step's search pays for every later one.
    - `trainer.matmul_precision` on CUDA (`high` = TF32 for float32 matrix products). It
      does not touch convolutions: cuDNN already runs float32 convolutions in TF32 by
      PyTorch's default (`torch.backends.cudnn.allow_tf32`). The CPU keeps `highest`.
    - With `trainer.compile`: the compile cache folder and Dynamo's recompile limit.
    """
    t = cfg.trainer
    cuda = torch.cuda.is_available() and t.accelerator != "cpu"
    torch.backends.cudnn.benchmark = cuda and not t.deterministic
    torch.set_float32_matmul_precision(t.matmul_precision if cuda else "highest")
    cache = None
    if t.compile:
        cache = str(use_compile_cache(compile_cache_dir(cfg)))
        dyn = torch._dynamo.config
        name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"  # torch < 2.6
        setattr(dyn, name, max(getattr(dyn, name), RECOMPILE_LIMIT))
    return Backends(cuda, torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(), cache)


def compile_cache_dir(cfg) -> Path:
    """`trainer.compile_cache_dir`, else $HRNET_SWEEP_COMPILE_CACHE, else an already set
    $TORCHINDUCTOR_CACHE_DIR, else `<output_dir>/.compile_cache/<W&B sweep id or default>`:
    one folder per sweep, so every run after the first loads its kernels from it."""
    for value in (
        cfg.trainer.compile_cache_dir,
        os.environ.get(COMPILE_CACHE_ENV),
        os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
    ):
        if value:
            return Path(value).expanduser()
    return Path(cfg.output_dir) / ".compile_cache" / (os.environ.get("WANDB_SWEEP_ID") or "default")


def use_compile_cache(folder: str | os.PathLike) -> Path:
    """Point Inductor's on-disk caches (FX graph, AOTAutograd, autotuning) and Triton's
    kernel cache at `folder`. Must run before the first compilation in the process."""
    path = Path(folder).expanduser().resolve()
    (path / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    return path


# ----------------------------------------------------------------------------- regions


def _hrnet_blocks(backbone: nn.Module) -> list[nn.Module]:
    """HRNet's repeated blocks: the stage-1 bottlenecks and every multi-resolution module
    of stages 2-4 (each: parallel branches of residual blocks, then the fusion); [] for
    other backbones."""
    from timm.models.hrnet import HighResolutionModule

    modules = [m for m in backbone.modules() if isinstance(m, HighResolutionModule)]
    if not modules:
        return []
    return [*backbone.layer1, *modules]


def compile_regions(model: nn.Module) -> list[nn.Module]:
    """What `compile_scope=regional` compiles: HRNet's repeated blocks and its per-level
    `incre_modules` (any other backbone: the backbone as one region), the decoder and the
    two heads. Structurally equal blocks share one compiled graph, so compile time grows
    with the number of distinct blocks (about a dozen for HRNet-W44), not with depth."""
    backbone = model.backbone
    blocks = _hrnet_blocks(backbone)
    if blocks:
        blocks += list(getattr(backbone, "incre_modules", None) or [])
    else:
        blocks = [backbone]
    return [*blocks, model.decoder, model.prob_head, model.thresh_head]


def compile_model(
    model: nn.Module, *, scope: str = "regional", mode: str = "default", backend: str = "inductor", cuda: bool = True
) -> list[nn.Module]:
    """Compile `model` in place for training; return the compiled modules.

    `regional`: each of `compile_regions` is compiled while the model trains and runs
    eager in evaluation (validation needs no second set of graphs, nor a recompile for its
    last, smaller batch). `full`: the whole network, training and evaluation, as one graph
    (`nn.Module.compile`); slow to compile for HRNet-W44. Either way the state dict keys
    stay those of the eager model, so checkpoints load everywhere.

    `dynamic=False`: the input size is fixed and training drops the last partial batch,
    so every region has one shape; automatic dynamic shapes would instead turn the channel
    counts of blocks that share code into symbols. `mode` (`reduce-overhead` = CUDA
    graphs, `max-autotune-no-cudagraphs`) applies on CUDA only.
    """
    options = {"dynamic": False, "backend": backend}
    if cuda and mode != "default":
        options["mode"] = mode
    if scope == "full":
        model.compile(**options)
        return [model]
    regions = compile_regions(model)
    for region in regions:
        _compile_for_training(region, options)
    return regions


class _Forward:
    """A module's `forward`, replaced on the instance (so the state dict keeps its keys).

    A deep copy of the module (an EMA or SWA copy) gets the plain forward of the copy
    back instead of this object, whose calls would run the original module's weights.
    """

    def __init__(self, module: nn.Module, inner):
        self.module, self.inner = module, inner

    def __deepcopy__(self, memo):
        return copy.deepcopy(self.inner, memo)


class _CompiledForTraining(_Forward):
    def __init__(self, module: nn.Module, inner, options: dict):
        super().__init__(module, inner)
        self.compiled = torch.compile(inner, **options)

    def __call__(self, *args, **kwargs):
        return (self.compiled if self.module.training else self.inner)(*args, **kwargs)


def _compile_for_training(module: nn.Module, options: dict) -> None:
    module.forward = _CompiledForTraining(module, module.forward, options)


# ----------------------------------------------------------------------------- checkpointing


def apply_activation_checkpointing(model: nn.Module) -> list[nn.Module]:
    """Recompute the activations of each HRNet block in the backward pass instead of
    keeping them (torch.utils.checkpoint, non-reentrant); return the blocks.

    Gradients are unchanged. BatchNorm running statistics are restored after each
    recomputation, so they are updated once per step, as without checkpointing (plain
    `checkpoint` would update them twice: pytorch/pytorch#96136). Costs one more forward
    pass of the backbone per step (about a third more compute), saves most of its
    activation memory.
    """
    blocks = _hrnet_blocks(model.backbone)
    if not blocks:
        name = type(model.backbone).__name__
        raise ConfigError(
            f"trainer.activation_checkpointing=true is implemented for HRNet backbones "
            f"(models.name=hrnet_*); this backbone is {name}"
        )
    for block in blocks:
        _checkpoint_forward(block)
    return blocks


class _Checkpointed(_Forward):
    def _contexts(self):
        return contextlib.nullcontext(), _restore_batchnorm_stats(self.module)

    def __call__(self, x):
        from torch.utils.checkpoint import checkpoint

        if not (self.module.training and torch.is_grad_enabled()):
            return self.inner(x)
        # Traced by a whole-model compile, the recomputation is the graph's own (buffer
        # updates are not replayed), and Dynamo accepts no custom context_fn.
        kwargs = {} if torch.compiler.is_compiling() else {"context_fn": self._contexts}
        if isinstance(x, (list, tuple)):  # an HRNet module: one tensor per branch
            # a fresh list per call: HighResolutionModule.forward overwrites its input list,
            # and the recomputation must see the inputs, not the first pass's outputs
            return checkpoint(lambda *xs: self.inner(list(xs)), *x, use_reentrant=False, **kwargs)
        return checkpoint(self.inner, x, use_reentrant=False, **kwargs)


def _checkpoint_forward(module: nn.Module) -> None:
    module.forward = _Checkpointed(module, module.forward)


@contextlib.contextmanager
def _restore_batchnorm_stats(module: nn.Module):
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in zip(norms, saved):
                for buf, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), values):
                    buf.copy_(value)


# ----------------------------------------------------------------------------- all levers


def prepare_model(model: nn.Module, cfg, backends: Backends | None = None, *, backend: str = "inductor") -> nn.Module:
    """Apply the model levers of `cfg.trainer` in place, in the order that composes:
    compile each region first, then checkpoint around it (the recomputation reruns the
    compiled region)."""
    t = cfg.trainer
    cuda = backends.cuda if backends is not None else torch.cuda.is_available()
    if t.compile:
        regions = compile_model(model, scope=t.compile_scope, mode=t.compile_mode, backend=backend, cuda=cuda)
        log.info(
            "trainer.compile: %d %s region(s), mode %s, cache %s",
            len(regions),
            t.compile_scope,
            t.compile_mode,
            backends.compile_cache if backends else os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        )
    if t.activation_checkpointing:
        blocks = apply_activation_checkpointing(model)
        log.info("trainer.activation_checkpointing: %d backbone blocks recomputed in the backward pass", len(blocks))
    return model
