"""What `wandb agent` does when it launches a run, reproduced for the embedded agent.

Command macros (`${env} ${interpreter} ${program} ${args} ...` and `${envvar:NAME}`),
values formatted with `str()`, the `${args_json_file}` file and the
`WANDB_SWEEP_PARAM_PATH` YAML file. Pure apart from writing and reading those two files.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = [
    "ARG_MACROS",
    "DEFAULT_COMMAND",
    "ENVVAR_MACRO",
    "MACROS",
    "command_args",
    "expand_command",
    "format_value",
    "read_param_file",
    "uses_args_json_file",
    "write_args_json_file",
    "write_param_file",
]

DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")
"""What `wandb agent` runs when the sweep has no `command`."""

ARG_MACROS = (
    "args",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_no_equals",
    "args_append_hydra",
    "args_override_hydra",
    "args_json",
    "args_json_file",
)
"""Macros that carry the parameters (as `wandb agent` builds them)."""
MACROS = ("env", "interpreter", "program") + ARG_MACROS
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
"""`${envvar:NAME}`, W&B's own pattern (upper case only)."""


def _plain(v: Any) -> Any:
    """NumPy scalars -> Python, tuples -> lists (so str(), json and YAML see plain values)."""
    if hasattr(v, "item") and callable(v.item) and not isinstance(v, (list, tuple, dict)):
        try:
            return v.item()
        except (TypeError, ValueError):
            return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def format_value(value: Any) -> str:
    """A value as `wandb agent` puts it on the command line: Python's `str()`.

    So 1e-05 -> `1e-05`, True -> `True`, [15, 18] -> `[15, 18]`, None -> `None`.
    """
    return f"{_plain(value)}"


def command_args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument lists `wandb agent` builds from a run's parameters, by macro name."""
    params = {k: _plain(v) for k, v in params.items()}
    flags = [f"{k}={format_value(v)}" for k, v in params.items()]
    no_bool: list[str] = []
    no_equals: list[str] = []
    for k, v in params.items():
        if isinstance(v, bool):
            if v:
                no_bool.append(f"--{k}")
        else:
            no_bool.append(f"--{k}={format_value(v)}")
        no_equals += [f"--{k}", format_value(v)]
    return {
        "args": ["--" + f for f in flags],
        "args_no_hyphens": flags,
        "args_no_boolean_flags": no_bool,
        "args_no_equals": no_equals,
        "args_append_hydra": ["+" + f for f in flags],
        "args_override_hydra": ["++" + f for f in flags],
        "args_json": [json.dumps(params)],
    }


def expand_command(
    command: Sequence[str] | None,
    params: Mapping[str, Any],
    *,
    interpreter: str,
    program: str | None,
    env: Mapping[str, str],
    args_json_file: str | None = None,
    windows: bool | None = None,
) -> list[str]:
    """Expand a sweep `command` as `wandb agent` does.

    - `${envvar:NAME}` is replaced anywhere in an item by `env[NAME]` (the name itself
      when unset, as W&B does).
    - An item that is exactly `${macro}` becomes its arguments: `${env}` ->
      `/usr/bin/env` (nothing on Windows), `${interpreter}` -> `interpreter`,
      `${program}` -> `program`, `${args}` -> `--key=value` ..., `${args_no_hyphens}` ->
      `key=value` ..., `${args_json}` -> one JSON argument, `${args_json_file}` -> the
      path of that JSON (the caller writes it; see `write_args_json_file`).
    - A macro inside a longer item is left as written (W&B does not expand it).

    Values are formatted with `str()` (see `format_value`). No command means W&B's
    default `${env} ${interpreter} ${program} ${args}`.
    """
    windows = platform.system() == "Windows" if windows is None else windows
    vars_: dict[str, list[str]] = command_args(params)
    vars_["interpreter"] = [interpreter]
    vars_["env"] = [] if windows else ["/usr/bin/env"]
    out: list[str] = []
    for item in list(command or DEFAULT_COMMAND):
        item = ENVVAR_MACRO.sub(lambda m: env.get(m.group(1), m.group(1)), str(item))
        if item.startswith("${") and item.endswith("}"):
            macro = item[2:-1]
            if macro == "program":
                if not program:
                    raise ConfigError("command uses ${program} but the sweep has no program")
                out.append(program)
            elif macro == "args_json_file":
                if not args_json_file:
                    raise ConfigError("command uses ${args_json_file}: pass args_json_file=PATH")
                out.append(args_json_file)
            elif macro in vars_:
                out += vars_[macro]
            else:
                raise ConfigError(f"unknown command macro {item}")
        else:
            out.append(item)
    return out


def uses_args_json_file(command: Iterable[str]) -> bool:
    return "${args_json_file}" in list(command)


def write_args_json_file(path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """The `${args_json_file}` file: the parameters as one JSON object (as W&B writes it)."""
    from ..files import atomic_write_text

    return atomic_write_text(path, command_args(params)["args_json"][0])


def write_param_file(path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Write the `WANDB_SWEEP_PARAM_PATH` file exactly as `wandb agent` does:
    `wandb_version: 1`, a blank line, then `{key: {value: v}}` as block YAML in order."""
    from ..files import atomic_write_text

    text = "wandb_version: 1"
    if params:
        body = {k: {"value": _plain(v)} for k, v in params.items()}
        text += "\n\n" + yaml.dump(
            body, Dumper=yaml.SafeDumper, default_flow_style=False, allow_unicode=True, sort_keys=False
        )
    return atomic_write_text(path, text)


def read_param_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `WANDB_SWEEP_PARAM_PATH` file back into `{key: value}`."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {k: v["value"] for k, v in doc.items() if k != "wandb_version" and isinstance(v, dict) and "value" in v}
