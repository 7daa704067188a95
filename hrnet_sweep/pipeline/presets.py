"""Preset files the workflow writes and edits: `best --export` writes one from a sweep's
winning run, `tune-postprocess` writes its tuned post-processing into it, and `kfold` /
`predict` refer to it by an absolute path.

A written preset is `base:` (the preset the sweep ran on) plus the winning parameters
nested by config path, as plain numbers. What the config cannot hold goes into YAML
comments at the top, so any preset loader reads the file: the provenance block
(`# provenance (hrnet_sweep best):` then `#   key: value` lines) and the tuning note
(`# tuned post-processing: ...`). Every write is atomic and is loaded through the config
first: no preset that fails to load is ever written.

A user's file is never destroyed: a written preset never replaces a file it derives from
(its `base:` chain) nor a shipped preset, and rewriting a preset that holds comments of
the user's (beyond the header this module manages) first keeps a dated copy of it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UserError
from ..files import atomic_write_text, backup_copy, check_writable

log = logging.getLogger(__name__)

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


def check_not_a_source(out: str | os.PathLike, derives_from: Sequence[str] = ()) -> None:
    """Refuse to write a preset over a shipped preset or over a file it derives from (the
    presets of the `base:` chain of each of `derives_from`), naming both."""
    from ..config import PRESET_DIR, preset_files

    target = Path(out).expanduser().resolve()
    if target.parent == PRESET_DIR.resolve():
        raise UserError(f"preset {out}: is a shipped preset; write the new preset to a file of your own")
    for ref in derives_from:
        for source in preset_files(str(ref)):
            if source.resolve() == target:
                raise UserError(
                    f"preset {out}: the new preset derives from this file ({ref}); writing it there would destroy "
                    "its own base: choose another path"
                )


def write_preset(out: str | os.PathLike, text: str, *, force: bool = False, derives_from: Sequence[str] = ()) -> Path:
    """Write a preset text atomically after checking that it loads, that `out` is a
    writable file path (an existing file only with `force`) and that it is neither a
    shipped preset nor a file the preset derives from (`check_not_a_source`)."""
    path = check_writable(out, what="preset", overwrite=force)
    check_not_a_source(path, derives_from)
    check_loads(text)
    return atomic_write_text(path, text, overwrite=force)


def _user_comments(text: str) -> list[str]:
    """Comment lines and trailing comments after the leading header: what a rewrite through
    `yaml.safe_dump` drops (a `#` inside a quoted value counts too: a backup too many,
    never one too few)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), len(lines))
    return [line for line in lines[start:] if "#" in line]


def write_postprocess(
    path: str | os.PathLike, values: Mapping[str, Any], note: str, *, backup: bool = True
) -> list[Path]:
    """Set `models.postprocess.*` in a preset YAML, keeping its comment header (the
    provenance) and replacing an older tuning note with `note`. Comments further down
    (which the rewrite drops) are kept in a dated copy first (`files.backup_copy`),
    unless `backup` is false. Returns the files written: the preset, then the copy."""
    from ..files import read_text

    path = Path(path)
    text = read_text(path, "preset")
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
    check_not_a_source(path)
    check_loads(out)
    written = []
    lost = _user_comments(text)
    if lost and backup:
        copy = backup_copy(path)
        log.warning(
            "%s: the rewrite drops %d comment line(s) of yours (e.g. %r); the file as it was is kept in %s",
            path,
            len(lost),
            lost[0].strip()[:60],
            copy,
        )
        written.append(copy)
    return [write_preset(path, out, force=True), *written]
