"""Preset files the workflow writes and edits: `best --export` writes one from a sweep's
winning run, `tune-postprocess` writes its tuned post-processing into it, and `kfold` /
`predict` refer to it by an absolute path.

A written preset is `base:` (the preset the sweep ran on) plus the winning parameters
nested by config path, as plain numbers. What the config cannot hold goes into YAML
comments at the top, so any preset loader reads the file: the provenance block
(`# provenance (hrnet_sweep best):` then `#   key: value` lines) and the tuning note
(`# tuned post-processing: ...`). Every write is atomic and is loaded through the config
first: no preset that fails to load is ever written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UserError
from ..files import atomic_write_text, check_writable

__all__ = [
    "PROVENANCE_MARK",
    "TUNED_MARK",
    "base_ref",
    "check_loads",
    "nest",
    "preset_ref",
    "preset_text",
    "read_provenance",
    "write_postprocess",
    "write_preset",
]

PROVENANCE_MARK = "# provenance (hrnet_sweep best):"
TUNED_MARK = "# tuned post-processing"


def preset_ref(preset: str) -> str:
    """How a stage passes a preset on: a YAML path becomes absolute (children run from
    anywhere), a shipped preset name stays a name."""
    p = Path(preset).expanduser()
    return str(p.resolve()) if p.suffix in (".yaml", ".yml") and p.is_file() else preset


def base_ref(preset: str) -> str:
    """The `base:` of a written preset: a shipped preset stays a name, a file path becomes
    absolute, so the written preset loads from any working directory."""
    from ..config import PRESET_DIR, preset_path

    path = preset_path(preset)
    return path.stem if path.parent.resolve() == PRESET_DIR.resolve() else str(path.resolve())


def nest(flat: Mapping[str, Any]) -> dict:
    """Dotted keys -> a nested mapping (`a.b: 1` -> `a: {b: 1}`)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def preset_text(base: str, params: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    """A preset: the provenance as a commented YAML block, then `base:` and `params`
    nested by config path."""
    prov = yaml.safe_dump(dict(provenance), sort_keys=False, default_flow_style=False, allow_unicode=True)
    header = [PROVENANCE_MARK] + [f"#   {line}" for line in prov.rstrip("\n").splitlines()]
    header.append("# Train it: hrnet_sweep train preset=<this file>; retrain every fold: hrnet_sweep kfold <this file>")
    body = yaml.safe_dump({"base": base, **nest(params)}, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def read_provenance(path: str | os.PathLike) -> dict:
    """The provenance block of a written preset ({} when it has none)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index(PROVENANCE_MARK) + 1
    except ValueError:
        return {}
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    try:
        doc = yaml.safe_load("\n".join(block))
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def check_loads(text: str) -> None:
    """Load a preset text through the config; a `UserError` when it would not load."""
    from ..config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preset.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(preset=str(path))
        except ConfigError as err:
            raise UserError(f"the preset would not load: {err}") from None


def write_preset(out: str | os.PathLike, text: str, *, force: bool = False) -> Path:
    """Write a preset text atomically after checking that it loads (and that `out` is a
    writable file path; an existing file only with `force`)."""
    path = check_writable(out, what="preset", overwrite=force)
    check_loads(text)
    return atomic_write_text(path, text, overwrite=force)


def write_postprocess(path: str | os.PathLike, values: Mapping[str, Any], note: str) -> Path:
    """Set `models.postprocess.*` in a preset YAML, keeping its comment header (the
    provenance) and replacing an older tuning note with `note`."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith(TUNED_MARK):
            header.append(line)
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a preset must be a mapping")
    for key in list(doc):  # dotted spellings of the same keys would shadow the nested ones
        if key == "models.postprocess" or any(key == f"models.postprocess.{k}" for k in values):
            del doc[key]
    pp = doc.setdefault("models", {}).setdefault("postprocess", {})
    for k, v in values.items():
        pp[k] = bool(v) if k == "use_polygon" else float(v)
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    out = "\n".join(header + [f"{TUNED_MARK}: {note}"]) + "\n" + body
    return write_preset(path, out, force=True)
