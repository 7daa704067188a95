"""Reading a sweep YAML into a `SweepSpec`: `load_sweep(path)`.

The file is read as YAML (errors and duplicate keys reported with their line; a folder or
a FIFO refused before it is opened) and validated (`_validate`: every key against W&B's
sweep schema, wandb/sweeps `config/schema.json`, every parameter against
`hrnet_sweep.config`). `check` reports the same findings one by one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..files import read_text
from ._validate import validate_sweep
from .spec import SweepSpec

__all__ = ["load_sweep", "parse_sweep", "read_sweep_doc"]


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML; raise `ConfigError` listing every problem."""
    doc, lines = _read(path)
    return parse_sweep(doc, str(path), _lines=lines)


def parse_sweep(doc: Mapping[str, Any], source: str, *, _lines: Mapping[tuple, int] | None = None) -> SweepSpec:
    """Validate an already loaded sweep document (`source` names it in messages)."""
    spec, errors = validate_sweep(doc, source, lines=_lines)
    if errors:
        raise ConfigError(f"{source}: invalid sweep file:\n  " + "\n  ".join(m for _, m in errors))
    assert spec is not None
    return spec


def read_sweep_doc(path: str | os.PathLike) -> tuple[dict, dict[tuple, int]]:
    """The YAML document and a map from key path (tuple) to its 1-based line."""
    return _read(path)


def _read(path: str | os.PathLike) -> tuple[dict, dict[tuple, int]]:
    p = Path(path)
    text = read_text(p, "sweep file")
    try:
        doc = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: not valid YAML for yaml.safe_load: {problem}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: a sweep file must be a mapping of W&B sweep keys, found {type(doc).__name__}")
    lines: dict[tuple, int] = {}
    dup = _key_lines(node, (), lines)
    if dup:
        key, line = dup
        raise ConfigError(f"{p}:{line}: duplicate key '{key}' (YAML would silently keep only the last one)")
    return doc, lines


def _key_lines(node: Any, prefix: tuple, out: dict[tuple, int]) -> tuple[str, int] | None:
    """Fill key path -> line; return the first duplicate key (name, line), if any."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                key = prefix + (k.value,)
                if key in out:
                    return k.value, k.start_mark.line + 1
                out[key] = k.start_mark.line + 1
                dup = _key_lines(v, key, out)
                if dup:
                    return dup
    return None
