"""The config tree: every key a user can write is a field below, with its type, default
and allowed range (pydantic validates them; `loading` turns presets and overrides into a
`Config` and its errors into messages that name the key and the value)."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..constants import DATA_ROOT_ENV, METRIC

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
DEFAULT_PRESET = "hrnet_w18_small_cpu"


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- models.*


class OptimizerConfig(_Node):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(4.5e-4, gt=0)
    weight_decay: float = Field(6e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class SchedulerConfig(_Node):
    name: Literal["cosine", "onecycle", "plateau", "none"] = "cosine"
    T_max: int = Field(20, ge=1, description="cosine: epochs of one half-period")
    eta_min: float = Field(8e-6, ge=0, description="cosine: final learning rate")
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: warm-up fraction")
    div_factor: float = Field(25.0, gt=1, description="onecycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, gt=1, description="onecycle: final lr = initial lr / final_div_factor")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: lr multiplier")
    patience: int = Field(2, ge=0, description="plateau: epochs without improvement")
    warmup_epochs: int = Field(0, ge=0, description="cosine: linear warm-up epochs")


class PostprocessConfig(_Node):
    thresh: float = Field(0.3, gt=0, lt=1)
    box_thresh: float = Field(0.4, gt=0, lt=1)
    unclip_ratio: float = Field(1.5, gt=0)
    use_polygon: bool = True
    max_candidates: int = Field(500, ge=1)
    min_size: int = Field(3, ge=0, description="original-image pixels (see hrnet_sweep.dbnet.postprocess)")
    tune_on_val: bool = Field(
        True,
        description="search thresh, box_thresh, unclip_ratio and the mode at every "
        "validation epoch; val/hmean at the best, val/hmean_fixed at the values above",
    )
    tune_workers: int = Field(
        1, ge=0, description="processes running that search beside training; 0 = in the training process"
    )
    tune_budget: float = Field(
        0.25,
        gt=0,
        description="the longest that search may keep training waiting at a validation epoch, as a fraction "
        "of that epoch's training time (at least 2 s); a search cut short keeps the best setting found "
        "and says so in the log",
    )


class DecoderConfig(_Node):
    name: Literal["fpn", "asf"] = "fpn"
    inner_channels: int = Field(256, ge=8)
    k: float = Field(50.0, gt=0, description="steepness of the approximate binarization")


class LossConfig(_Node):
    prob_weight: float = Field(5.0, ge=0)
    thresh_weight: float = Field(10.0, ge=0)
    binary_weight: float = Field(1.0, ge=0)
    ohem_ratio: float = Field(3.0, gt=0)


class ModelsConfig(_Node):
    name: str = "hrnet_w44"
    pretrained: bool | str = True
    out_indices: tuple[int, ...] | None = None
    decoder: DecoderConfig = DecoderConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    postprocess: PostprocessConfig = PostprocessConfig()

    @field_validator("name")
    @classmethod
    def _known_timm_model(cls, v: str) -> str:
        names = timm_model_names()
        if v.split(".", 1)[0] not in names:  # `name.tag` names a pretrained tag of `name`
            close = difflib.get_close_matches(v, sorted(names), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"not a timm model{hint}")
        return v


@functools.lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """The model names timm registers, read from its sources (`@register_model` functions)
    without importing it: importing timm takes seconds, and `check` / `--dry-run` must
    answer at once. Falls back to timm's own list where the sources cannot be read."""
    spec = importlib.util.find_spec("timm")
    names: set[str] = set()
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in (Path(folder) / "models").rglob("*.py"):
            names.update(_REGISTERED.findall(path.read_text(encoding="utf-8", errors="ignore")))
    if not names:
        import timm

        names = set(timm.list_models())
    return frozenset(names)


_REGISTERED = re.compile(r"@register_model\s*\n\s*def\s+(\w+)\s*\(")


# ----------------------------------------------------------------------------- data.*


class AugmentConfig(_Node):
    hflip: float = Field(0.0, ge=0, le=1, description="probability; text is not mirror-symmetric")
    rotate: float = Field(5.0, ge=0, le=90, description="max rotation in degrees")
    rotate_p: float = Field(0.5, ge=0, le=1)
    scale: tuple[float, float] = (0.8, 1.2)
    affine_p: float = Field(0.5, ge=0, le=1)
    color_p: float = Field(0.5, ge=0, le=1)
    noise_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.2, ge=0, le=1)


class TargetsConfig(_Node):
    shrink_ratio: float = Field(0.4, gt=0, lt=1)
    thresh_min: float = Field(0.3, ge=0, le=1)
    thresh_max: float = Field(0.7, ge=0, le=1)
    min_text_size: int = Field(8, ge=0)


class DataConfig(_Node):
    root: str | None = Field(None, description=f"data root; default ${DATA_ROOT_ENV} or ./data")
    train_json: str = "train.json"
    val_json: str | None = "val.json"
    train_images: str = "images"
    val_images: str | None = None
    image_height: int = Field(1280, ge=32)
    image_width: int = Field(1280, ge=32)
    batch_size: int = Field(2, ge=1)
    auto_batch_size: bool = Field(
        False,
        description="on CUDA, replace batch_size at run start by the largest batch that fits "
        "(up to 64, 10% memory headroom); on the CPU batch_size stays",
    )
    num_workers: int = Field(4, ge=0)
    pin_memory: bool = Field(True, description="page-locked batches for asynchronous copies (CUDA only)")
    persistent_workers: bool = Field(True, description="keep data workers alive between epochs")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker prepares ahead")
    fold: int | None = Field(0, ge=0, description="validation fold; null = train_json -> val_json")
    num_folds: int = Field(5, ge=2)
    fold_seed: int = 42
    scale_wd_with_batch: int | None = Field(
        0,
        ge=0,
        description="reference batch: weight_decay *= (batch_size / ref) ** 0.5; "
        "0 (or null) = off; sweeps write 0, as wandb agent passes null on as the text 'None'",
    )
    augment: AugmentConfig = AugmentConfig()
    targets: TargetsConfig = TargetsConfig()

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.fold is not None and self.fold >= self.num_folds:
            raise ValueError(f"fold={self.fold} must be < num_folds={self.num_folds}")
        if self.image_height % 32 or self.image_width % 32:
            raise ValueError(
                f"image_height={self.image_height} and image_width={self.image_width} must be multiples of 32"
            )
        if self.fold is None and not self.val_json:
            raise ValueError("fold=null (train/val mode) needs data.val_json")
        if self.targets.thresh_min >= self.targets.thresh_max:
            raise ValueError("targets.thresh_min must be below targets.thresh_max")
        return self

    def resolved_root(self) -> Path:
        return Path(self.root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


# ----------------------------------------------------------------------------- trainer.*, callbacks.*


class TrainerConfig(_Node):
    max_epochs: int = Field(20, ge=1)
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | str = 1
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, ge=0)
    channels_last: bool = True
    compile: bool = False
    compile_scope: Literal["regional", "full"] = Field(
        "regional",
        description="with compile=true: HRNet's repeated blocks, decoder and heads, compiled for "
        "training (seconds); or the whole network as one graph (minutes for hrnet_w44)",
    )
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"] = Field(
        "default", description="torch.compile mode on CUDA; reduce-overhead = CUDA graphs (static shapes)"
    )
    compile_cache_dir: str | None = Field(
        None,
        description="compiled kernels, shared by the runs of a sweep; default $HRNET_SWEEP_COMPILE_CACHE "
        "or <output_dir>/.compile_cache/<sweep id>",
    )
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "high", description="float32 matrix products on CUDA: high = TF32 (convolutions use TF32 already)"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute HRNet block activations in backward: less memory, ~1/3 more compute"
    )
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    check_val_every_n_epoch: int = Field(1, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    deterministic: bool = False
    progress_bar: bool = True

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class EarlyStoppingConfig(_Node):
    enabled: bool = True
    patience: int = Field(5, ge=1)
    monitor: Literal["val/hmean"] = METRIC
    mode: Literal["max"] = "max"
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(_Node):
    monitor: Literal["val/hmean"] = METRIC
    save_top_k: int = Field(1, ge=0)
    save_last: bool = True


class CallbacksConfig(_Node):
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    model_checkpoint: CheckpointConfig = CheckpointConfig()


class LoggingConfig(_Node):
    project: str = "hrnet-sweep"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    tensorboard: bool = True
    val_images: int = Field(
        4,
        ge=0,
        description="validation images drawn with their detections each validation epoch (TensorBoard, W&B); 0 = none",
    )


# ----------------------------------------------------------------------------- root


class Config(_Node):
    preset: str = DEFAULT_PRESET
    base: str | None = Field(None, description="preset this one extends (presets only)")
    seed: int = 42
    run_name: str | None = None
    output_dir: str = "outputs"
    wandb: bool = False
    resume_from_checkpoint: str | None = None
    ckpt_path: str | None = Field(None, description="weights to start from (no optimizer state)")
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    logging: LoggingConfig = LoggingConfig()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def get(self, key: str) -> Any:
        """Value at a dotted key, e.g. `models.optimizer.lr`."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node
