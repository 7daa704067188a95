"""One typed config tree: presets, `key=value` overrides and validation.

A preset is a YAML file in `hrnet_sweep/presets/` (or any path). It may name a `base:`
preset and override part of it, so variants are a few lines, not copies. Every key a
user can write is a field below; anything else is an error that names the key, the value
and what is allowed.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .constants import DATA_ROOT_ENV, METRIC
from .errors import ConfigError
from .numeric import number_problem, number_rule, number_text

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets"
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
    tune_on_val: bool = Field(True, description="search thresh, box_thresh, unclip_ratio and the mode at every "
                              "validation epoch; val/hmean at the best, val/hmean_fixed at the values above")
    tune_workers: int = Field(1, ge=0, description="processes running that search beside training; 0 = in the "
                              "training process")


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
    pretrained: Union[bool, str] = True
    out_indices: Union[tuple[int, ...], None] = None
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
    root: Union[str, None] = Field(None, description=f"data root; default ${DATA_ROOT_ENV} or ./data")
    train_json: str = "train.json"
    val_json: Union[str, None] = "val.json"
    train_images: str = "images"
    val_images: Union[str, None] = None
    image_height: int = Field(1280, ge=32)
    image_width: int = Field(1280, ge=32)
    batch_size: int = Field(2, ge=1)
    auto_batch_size: bool = Field(
        False, description="on CUDA, replace batch_size at run start by the largest batch that fits "
        "(up to 64, 10% memory headroom); on the CPU batch_size stays")
    num_workers: int = Field(4, ge=0)
    pin_memory: bool = Field(True, description="page-locked batches for asynchronous copies (CUDA only)")
    persistent_workers: bool = Field(True, description="keep data workers alive between epochs")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker prepares ahead")
    fold: Union[int, None] = Field(0, ge=0, description="validation fold; null = train_json -> val_json")
    num_folds: int = Field(5, ge=2)
    fold_seed: int = 42
    scale_wd_with_batch: Union[int, None] = Field(
        0, ge=0, description="reference batch: weight_decay *= (batch_size / ref) ** 0.5; "
        "0 (or null) = off; sweeps write 0, as wandb agent passes null on as the text 'None'"
    )
    augment: AugmentConfig = AugmentConfig()
    targets: TargetsConfig = TargetsConfig()

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
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
    devices: Union[int, str] = 1
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: Union[float, None] = Field(None, ge=0)
    channels_last: bool = True
    compile: bool = False
    compile_scope: Literal["regional", "full"] = Field(
        "regional", description="with compile=true: HRNet's repeated blocks, decoder and heads, compiled for "
        "training (seconds); or the whole network as one graph (minutes for hrnet_w44)")
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"] = Field(
        "default", description="torch.compile mode on CUDA; reduce-overhead = CUDA graphs (static shapes)")
    compile_cache_dir: Union[str, None] = Field(
        None, description="compiled kernels, shared by the runs of a sweep; default $HRNET_SWEEP_COMPILE_CACHE "
        "or <output_dir>/.compile_cache/<sweep id>")
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "high", description="float32 matrix products on CUDA: high = TF32 (convolutions use TF32 already)")
    activation_checkpointing: bool = Field(
        False, description="recompute HRNet block activations in backward: less memory, ~1/3 more compute")
    limit_train_batches: Union[int, float] = 1.0
    limit_val_batches: Union[int, float] = 1.0
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
    entity: Union[str, None] = None
    group: Union[str, None] = None
    tags: tuple[str, ...] = ()
    tensorboard: bool = True
    val_images: int = Field(4, ge=0, description="validation images drawn with their detections each validation "
                            "epoch (TensorBoard, W&B); 0 = none")


# ----------------------------------------------------------------------------- root


class Config(_Node):
    preset: str = DEFAULT_PRESET
    base: Union[str, None] = Field(None, description="preset this one extends (presets only)")
    seed: int = 42
    run_name: Union[str, None] = None
    output_dir: str = "outputs"
    wandb: bool = False
    resume_from_checkpoint: Union[str, None] = None
    ckpt_path: Union[str, None] = Field(None, description="weights to start from (no optimizer state)")
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


# ----------------------------------------------------------------------------- keys


def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_fields(ann, key + "."))
        else:
            out[key] = info
    return out


LEAF_KEYS: dict[str, Any] = _fields(Config)
"""Every settable dotted key -> its pydantic FieldInfo."""


def _unknown_key_message(key: str, value: Any, where: str) -> str:
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = sorted(k[len(parent):].split(".")[0] for k in LEAF_KEYS if k.startswith(parent))
    close = difflib.get_close_matches(key, LEAF_KEYS, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    scope = f"under '{parent[:-1]}'" if parent and any(k.startswith(parent) for k in LEAF_KEYS) else "at the top level"
    allowed = ", ".join(dict.fromkeys(siblings)) if siblings else ", ".join(
        dict.fromkeys(k.split(".")[0] for k in LEAF_KEYS))
    return f"{where}unknown key '{key}' (value {value!r}){hint} Allowed keys {scope}: {allowed}"


def check_key(key: str, value: Any = None, where: str = "") -> None:
    """Raise ConfigError if `key` is not a config key (a branch like `models` is not a leaf)."""
    if key not in LEAF_KEYS:
        raise ConfigError(_unknown_key_message(key, value, where))


# ----------------------------------------------------------------------------- loading


def parse_value(text: str) -> Any:
    """Parse the right-hand side of `key=value` as YAML (`true`, `3e-4`, `[0.9, 0.99]`).

    A number is a plain decimal (`numeric.number_text`): YAML 1.1 reads `3e-4` as text
    (users mean a number) and `1_000`, `0x10`, `1:30`, `.inf` as numbers (users do not);
    those stay text, which a number key then refuses by name.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        spelled = number_text(value)
        return value if spelled is None else spelled
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        spelled = number_text(text)
        return text.strip() if spelled is None else spelled
    return value


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "preset=x"]` -> {"a.b": 1, "preset": "x"}; leading `--` is accepted."""
    out: dict[str, Any] = {}
    for arg in args:
        arg = arg[2:] if arg.startswith("--") else arg
        if "=" not in arg:
            raise ConfigError(f"override {arg!r} is not of the form key=value (e.g. models.optimizer.lr=3e-4)")
        key, _, text = arg.partition("=")
        key, value = key.strip(), parse_value(text)
        if key in out:
            log.warning("override %s given twice (%r, then %r): the last one is used", key, out[key], value)
        out[key] = value
    return out


def preset_path(name: str) -> Path:
    """A preset name (shipped) or a path to a YAML file."""
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") and p.exists():
        from .formats import check_readable_file

        return check_readable_file(p, "preset")  # a folder or a FIFO is refused, not waited for
    shipped = PRESET_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"preset {name!r} not found; shipped presets: {', '.join(list_presets())}, or give a path to a YAML file")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _load_yaml(path: Path) -> dict:
    from .formats import read_text

    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML for safe_load: {err}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of keys, found {type(doc).__name__}")
    return doc


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in LEAF_KEYS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _preset_chain(name: str, seen: tuple[str, ...] = ()) -> list[tuple[Path, dict]]:
    path = preset_path(name)
    if str(path) in seen:
        raise ConfigError(f"{path}: preset 'base' chain loops: {' -> '.join(seen + (str(path),))}")
    doc = _flatten(_load_yaml(path))
    base = doc.pop("base", None)
    doc.pop("preset", None)
    chain = _preset_chain(str(base), seen + (str(path),)) if base else []
    return chain + [(path, doc)]


def load_config(overrides: Sequence[str] | Mapping[str, Any] = (), *, preset: str | None = None) -> Config:
    """Resolve a config: preset chain, then overrides, then validation.

    Args:
        overrides: `key=value` strings or an already parsed mapping. `preset=NAME` among
            them selects the preset.
        preset: preset name or YAML path, used when the overrides name none.
    """
    flat = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    name = str(flat.pop("preset", None) or preset or DEFAULT_PRESET)
    merged: dict[str, Any] = {}
    for path, doc in _preset_chain(name):
        for key, value in doc.items():
            check_key(key, value, where=f"{path}: ")
            merged[key] = checked_number(key, value, where=f"{path}: ")
    merged["preset"] = name
    return _build(merged, flat)


def _build(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Config:
    """Validate `base` flat keys with `overrides` checked and applied on top."""
    merged = dict(base)
    for key, value in overrides.items():
        check_key(key, value)
        merged[key] = checked_number(key, value)
    tree: dict = {}
    for key, value in merged.items():
        _set(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_validation_message(err, merged)) from None


NUMBER_KEYS: dict[str, tuple[type, bool, bool]] = {
    k: rule for k, info in LEAF_KEYS.items() if (rule := number_rule(info.annotation)) is not None}
"""Every key that holds numbers -> (int or float, also takes text, is a tuple)."""


def checked_number(key: str, value: Any, where: str = "") -> Any:
    """`value` for `key`, its plain decimal text read as a number; ConfigError naming
    `where`, the key and the value unless every number in it is finite and of the key's
    type (`numeric.number_problem`: no bool, NaN, infinity, `1_000`, 3.5 for an int)."""
    rule = NUMBER_KEYS.get(key)
    if rule is None or value is None:
        return value
    kind, takes_text, is_tuple = rule
    items = list(value) if is_tuple and isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, str) and not takes_text:
            spelled = number_text(item)
            item = item if spelled is None else spelled
        problem = None if isinstance(item, str) and takes_text else number_problem(item, kind)
        if problem is not None:
            raise ConfigError(f"{where}{key}={value!r}: {problem}; allowed: {_allowed(key)}")
        out.append(item)
    return out if is_tuple and isinstance(value, (list, tuple)) else out[0]


def _allowed(key: str) -> str:
    """What a key accepts, in words: `an integer >= 1`, `one of 'adamw', 'adam', 'sgd'`."""
    info = LEAF_KEYS.get(key)
    if info is None:
        return ""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    ann = info.annotation
    args = getattr(ann, "__args__", None)
    if getattr(ann, "__origin__", None) is Literal:
        text = "one of " + ", ".join(repr(a) for a in args)
    elif args and type(None) in args or getattr(ann, "__origin__", None) is Union:
        text = " or ".join(names.get(a, str(a).replace("typing.", "")) for a in args)
    else:
        text = names.get(ann, str(ann).replace("typing.", ""))
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    for m in info.metadata:
        for attr, sym in ops.items():
            if getattr(m, attr, None) is not None:
                text += f" {sym} {getattr(m, attr)}"
    return text


def _validation_message(err: ValidationError, given: Mapping[str, Any]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
        if key not in LEAF_KEYS and isinstance(e.get("loc"), tuple):
            # model-level validators report at the branch
            lines.append(f"{key or 'config'}: {e['msg'].removeprefix('Value error, ')}")
            continue
        value = given.get(key, e.get("input"))
        allowed = _allowed(key)
        lines.append(f"{key}={value!r}: {e['msg'].removeprefix('Value error, ')}; allowed: {allowed}")
    return "invalid config:\n  " + "\n  ".join(lines)


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new validated Config with dotted-key overrides applied on top of `cfg`."""
    return _build(_flatten(cfg.to_dict()), overrides)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically as YAML."""
    from .formats import atomic_write_text

    return atomic_write_text(path, cfg.to_yaml())
