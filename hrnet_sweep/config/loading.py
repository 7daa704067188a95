"""Presets and overrides into a validated `Config`.

A preset is a YAML file in `hrnet_sweep/presets/` (or any path). It may name a `base:`
preset and override part of it, so variants are a few lines, not copies. `key=value`
overrides go on top. Every key is a dotted path of the tree in `schema`; an unknown key,
a value of the wrong type or out of range is a `ConfigError` that names the key, the
value, what is allowed and the nearest key. Numbers are finite and of the key's type
whatever their source (`numeric`).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..numeric import number_problem, number_rule, number_text
from .schema import DEFAULT_PRESET, PRESET_DIR, Config

log = logging.getLogger("hrnet_sweep.config")


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
    siblings = sorted(k[len(parent) :].split(".")[0] for k in LEAF_KEYS if k.startswith(parent))
    close = difflib.get_close_matches(key, LEAF_KEYS, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    scope = f"under '{parent[:-1]}'" if parent and any(k.startswith(parent) for k in LEAF_KEYS) else "at the top level"
    allowed = (
        ", ".join(dict.fromkeys(siblings)) if siblings else ", ".join(dict.fromkeys(k.split(".")[0] for k in LEAF_KEYS))
    )
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
        from ..files import check_readable_file

        return check_readable_file(p, "preset")  # a folder or a FIFO is refused, not waited for
    shipped = PRESET_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"preset {name!r} not found; shipped presets: {', '.join(list_presets())}, or give a path to a YAML file"
    )


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _load_yaml(path: Path) -> dict:
    from ..files import read_text

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


def preset_files(name: str) -> list[Path]:
    """The files of a preset and of its `base:` chain, base first."""
    return [path for path, _ in _preset_chain(name)]


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


def config_from_dict(doc: Any, where: str) -> Config:
    """A whole config read back from a file we wrote (a run folder's `config.yaml`, a
    checkpoint's `hyper_parameters.config`), checked as a preset is: every key known,
    every number finite and of its type. A `ConfigError` on one line that starts with
    `where` (the file and the key it was read from)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys, found {type(doc).__name__}")
    flat = _flatten(doc)
    try:
        for key, value in flat.items():
            check_key(key, value, where=f"{where}: ")
            flat[key] = checked_number(key, value, where=f"{where}: ")
        return _build(flat, {})
    except ConfigError as err:
        text = str(err).replace("invalid config:\n  ", f"{where}: ").replace("\n  ", "; ")
        raise ConfigError(text) from None


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
    k: rule for k, info in LEAF_KEYS.items() if (rule := number_rule(info.annotation)) is not None
}
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


_SCHEDULER_KEYS = {
    "cosine": ("T_max", "eta_min", "warmup_epochs"),
    "onecycle": ("pct_start", "div_factor", "final_div_factor"),
    "plateau": ("factor", "patience"),
    "none": (),
}


def ignored_keys(cfg: Config, keys: Sequence[str]) -> list[str]:
    """Those of `keys` (given by the user) that `cfg` does not use, each with why:
    validation files in fold mode, fold settings in train/val mode, another optimizer's
    or scheduler's settings, compile settings without `trainer.compile`, the search's
    processes without tuned validation, early-stopping settings when it is off, and data
    worker settings without workers."""
    d, m, t = cfg.data, cfg.models, cfg.trainer
    rules: dict[str, str | None] = {
        "data.val_json": "fold mode validates on a fold of data.train_json" if d.fold is not None else None,
        "data.val_images": "fold mode validates on a fold of data.train_json" if d.fold is not None else None,
        "data.num_folds": "data.fold=null is train/val mode, without folds" if d.fold is None else None,
        "data.fold_seed": "data.fold=null is train/val mode, without folds" if d.fold is None else None,
        "data.prefetch_factor": "data.num_workers=0" if d.num_workers == 0 else None,
        "data.persistent_workers": "data.num_workers=0" if d.num_workers == 0 else None,
        "models.optimizer.momentum": f"models.optimizer.name={m.optimizer.name} (sgd only)"
        if m.optimizer.name != "sgd"
        else None,
        "models.optimizer.betas": "models.optimizer.name=sgd" if m.optimizer.name == "sgd" else None,
        "models.optimizer.eps": "models.optimizer.name=sgd" if m.optimizer.name == "sgd" else None,
        "models.postprocess.tune_workers": "models.postprocess.tune_on_val=false"
        if not m.postprocess.tune_on_val
        else None,
        "models.postprocess.tune_budget": "models.postprocess.tune_on_val=false"
        if not m.postprocess.tune_on_val
        else None,
        "trainer.compile_scope": "trainer.compile=false" if not t.compile else None,
        "trainer.compile_mode": "trainer.compile=false" if not t.compile else None,
        "trainer.compile_cache_dir": "trainer.compile=false" if not t.compile else None,
        "callbacks.early_stopping.patience": "callbacks.early_stopping.enabled=false"
        if not cfg.callbacks.early_stopping.enabled
        else None,
        "callbacks.early_stopping.min_delta": "callbacks.early_stopping.enabled=false"
        if not cfg.callbacks.early_stopping.enabled
        else None,
    }
    used = _SCHEDULER_KEYS[m.scheduler.name]
    for name in {k for keys_ in _SCHEDULER_KEYS.values() for k in keys_} - set(used):
        rules[f"models.scheduler.{name}"] = f"models.scheduler.name={m.scheduler.name}"
    return [f"{k}: ignored ({why})" for k in keys if (why := rules.get(k))]


def warn_ignored_keys(cfg: Config, keys: Sequence[str]) -> list[str]:
    """Warn once per key the user gave that `cfg` would ignore (`ignored_keys`)."""
    found = ignored_keys(cfg, list(keys))
    for line in found:
        log.warning("%s", line)
    return found


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new validated Config with dotted-key overrides applied on top of `cfg`."""
    return _build(_flatten(cfg.to_dict()), overrides)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically as YAML."""
    from ..files import atomic_write_text

    return atomic_write_text(path, cfg.to_yaml())
