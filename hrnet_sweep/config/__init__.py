"""One typed config tree: presets, `key=value` overrides and validation.

`schema` holds the tree (every key a user can write, with its type, default and range);
`loading` turns presets and overrides into a validated `Config`. Everything a stage
needs is imported from here.
"""

from .loading import (
    LEAF_KEYS,
    NUMBER_KEYS,
    apply_overrides,
    check_key,
    checked_number,
    list_presets,
    load_config,
    parse_overrides,
    parse_value,
    preset_path,
    save_config,
)
from .schema import (
    DEFAULT_PRESET,
    PRESET_DIR,
    AugmentConfig,
    CallbacksConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    DecoderConfig,
    EarlyStoppingConfig,
    LoggingConfig,
    LossConfig,
    ModelsConfig,
    OptimizerConfig,
    PostprocessConfig,
    SchedulerConfig,
    TargetsConfig,
    TrainerConfig,
    timm_model_names,
)

__all__ = [
    "DEFAULT_PRESET",
    "LEAF_KEYS",
    "NUMBER_KEYS",
    "PRESET_DIR",
    "AugmentConfig",
    "CallbacksConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DecoderConfig",
    "EarlyStoppingConfig",
    "LoggingConfig",
    "LossConfig",
    "ModelsConfig",
    "OptimizerConfig",
    "PostprocessConfig",
    "SchedulerConfig",
    "TargetsConfig",
    "TrainerConfig",
    "apply_overrides",
    "check_key",
    "checked_number",
    "list_presets",
    "load_config",
    "parse_overrides",
    "parse_value",
    "preset_path",
    "save_config",
    "timm_model_names",
]
