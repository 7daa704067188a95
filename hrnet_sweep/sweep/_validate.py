"""Validate a sweep document against W&B's sweep schema and our config.

`validate_sweep` checks every key the way wandb/sweeps `config/schema.json` does (top
level, metric, Hyperband, command macros), hands `parameters:` to `_params`, and
collects every problem as a `(key, "file:line: message")` finding instead of stopping
at the first. `sweepfile.parse_sweep` raises on any finding; `check` reports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._params import check_config_values, is_int, is_number, parse_parameters
from .command import DEFAULT_COMMAND, ENVVAR_MACRO, MACROS
from .spec import STRICT_DEFAULT, HyperbandSpec, SweepSpec

__all__ = ["validate_sweep"]

# W&B top-level keys this project accepts. Others that W&B knows (controller, job,
# image_uri, scheduler, metrics, apiVersion, kind) have no meaning for the embedded engine.
_TOP_KEYS = (
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "command",
    "program",
    "name",
    "description",
    "run_cap",
    "entity",
    "project",
)
_WANDB_ONLY_KEYS = ("controller", "job", "image_uri", "scheduler", "metrics", "apiVersion", "kind")
_METRIC_KEYS = ("name", "goal", "target")
_HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")


class _Errors:
    """Collects (key, message) pairs; messages start with `file:line:` where known."""

    def __init__(self, source: str, lines: Mapping[tuple, int] | None):
        self.source, self.lines, self.items = source, lines or {}, []

    def add(self, path: tuple, message: str) -> None:
        line = None
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                break
        where = f"{self.source}:{line}" if line else self.source
        # findings name the config key for parameters, the dotted sweep key otherwise
        key = str(path[1]) if len(path) > 1 and path[0] == "parameters" else ".".join(map(str, path))
        self.items.append((key, f"{where}: {message}"))


def validate_sweep(
    doc: Mapping[str, Any], source: str, *, lines: Mapping[tuple, int] | None = None, check_values: bool = True
) -> tuple[SweepSpec | None, list[tuple[str, str]]]:
    """Validate a sweep document; return (spec or None, [(key, message), ...]).

    `parse_sweep` raises on any message; `check` reports them as findings. With
    `check_values`, every value a run can get is resolved against the config.
    """
    err = _Errors(source, lines)
    if not isinstance(doc, Mapping):
        err.add((), f"a sweep file must be a mapping, found {type(doc).__name__}")
        return None, err.items
    for key in doc:
        if key in _WANDB_ONLY_KEYS:
            err.add((key,), f"'{key}' is a W&B key that hrnet-sweep does not support; remove it")
        elif key not in _TOP_KEYS:
            err.add((key,), f"unknown sweep key '{key}'; allowed: {', '.join(_TOP_KEYS)}")

    method = doc.get("method")
    if method not in ("bayes", "random", "grid"):
        err.add(("method",), f"method {method!r} must be one of bayes, random, grid")

    metric_name, goal, target = _metric(doc.get("metric"), err)
    if doc.get("metric") is None and method == "bayes":
        err.add(("metric",), "method bayes needs a metric: {name: val/hmean, goal: maximize}")

    params = parse_parameters(doc.get("parameters"), err)
    if method == "grid":
        for p in params.values():
            if p.kind == "distribution" and p.distribution not in ("int_uniform", "q_uniform"):
                err.add(
                    ("parameters", p.name),
                    f"grid search cannot enumerate distribution '{p.distribution}'; "
                    "use values: [...] (W&B allows only value, values, int_uniform and q_uniform in a grid)",
                )
            if p.probabilities is not None:
                err.add(("parameters", p.name), "grid search does not allow probabilities")

    hyperband = _hyperband(doc.get("early_terminate"), err)
    if hyperband is not None and metric_name is None:
        err.add(("early_terminate",), "Hyperband needs a metric section")

    program = doc.get("program")
    if program is not None and not isinstance(program, str):
        err.add(("program",), f"program must be a string, got {program!r}")
    command = _command(doc.get("command"), program, err)

    run_cap = doc.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        err.add(("run_cap",), f"run_cap must be an integer >= 1, got {run_cap!r}")
    for key in ("name", "description", "entity", "project"):
        if doc.get(key) is not None and not isinstance(doc.get(key), str):
            err.add((key,), f"{key} must be a string, got {doc.get(key)!r}")

    if err.items:
        return None, err.items
    spec = SweepSpec(
        name=str(doc.get("name") or Path(source).stem),
        method=method,
        metric_name=metric_name,
        metric_goal=goal,
        parameters=params,
        early_terminate=hyperband,
        command=command,
        run_cap=run_cap,
        source=source,
        program=program,
        description=doc.get("description"),
        metric_target=target,
        entity=doc.get("entity"),
        project=doc.get("project"),
        raw=dict(doc),
    )
    if check_values:
        check_config_values(spec, err)
    return (None if err.items else spec), err.items


def _metric(m: Any, err: _Errors) -> tuple[str | None, str, float | None]:
    if m is None:
        return None, "minimize", None
    if not isinstance(m, Mapping):
        err.add(("metric",), f"metric must be a mapping {{name, goal}}, got {m!r}")
        return None, "minimize", None
    for key in m:
        if key not in _METRIC_KEYS:
            err.add(("metric", key), f"unknown metric key '{key}'; allowed: {', '.join(_METRIC_KEYS)}")
    name = m.get("name")
    if not isinstance(name, str) or not name:
        err.add(("metric", "name"), f"metric.name must be a string, got {name!r}")
        name = None
    goal = m.get("goal", "minimize")  # W&B's default
    if goal not in ("maximize", "minimize"):
        err.add(("metric", "goal"), f"metric.goal {goal!r} must be maximize or minimize")
        goal = "minimize"
    target = m.get("target")
    if target is not None and not is_number(target):
        err.add(("metric", "target"), f"metric.target must be a number, got {target!r}")
    return name, goal, target


def _hyperband(et: Any, err: _Errors) -> HyperbandSpec | None:
    if et is None:
        return None
    path = ("early_terminate",)
    if not isinstance(et, Mapping):
        err.add(path, f"early_terminate must be a mapping, got {et!r}")
        return None
    bad = [k for k in et if k not in _HYPERBAND_KEYS]
    if bad:
        err.add(
            path + (bad[0],),
            f"unknown early_terminate key(s) {', '.join(map(str, bad))}; allowed: {', '.join(_HYPERBAND_KEYS)}",
        )
    if et.get("type") != "hyperband":
        err.add(path + ("type",), f"early_terminate.type {et.get('type')!r}: W&B supports only hyperband")
        return None
    eta = et.get("eta", 3)
    if not is_number(eta) or eta <= 1:
        err.add(path + ("eta",), f"eta must be a number > 1, got {eta!r}")
        return None
    strict = et.get("strict", STRICT_DEFAULT)
    if not isinstance(strict, bool):
        err.add(path + ("strict",), f"strict must be true or false, got {strict!r}")
        return None
    min_iter, max_iter, s = et.get("min_iter"), et.get("max_iter"), et.get("s")
    if min_iter is not None and (not is_int(min_iter) or min_iter < 1):
        err.add(path + ("min_iter",), f"min_iter must be an integer >= 1, got {min_iter!r}")
        return None
    if max_iter is not None and not is_int(max_iter):
        err.add(path + ("max_iter",), f"max_iter must be an integer, got {max_iter!r}")
        return None
    if s is not None and not (is_number(s) and float(s).is_integer() and s >= 1):
        err.add(path + ("s",), f"s must be a whole number >= 1, got {s!r}")
        return None
    if max_iter is None and min_iter is None:
        err.add(path, "hyperband needs min_iter, or max_iter and s")
        return None
    if max_iter is not None and s is None:
        err.add(path, "hyperband with max_iter needs s (the number of bands); or give min_iter instead")
        return None
    spec = HyperbandSpec(
        min_iter=min_iter, max_iter=max_iter, s=int(s) if s is not None else None, eta=float(eta), strict=strict
    )
    if not spec.bands():
        err.add(
            path,
            f"hyperband max_iter={max_iter}, s={s}, eta={eta} gives no band "
            "(max_iter/eta < 1); increase max_iter or s, or decrease eta",
        )
        return None
    return spec


def _command(command: Any, program: Any, err: _Errors) -> list[str]:
    if command is None:
        cmd = list(DEFAULT_COMMAND)
    elif not isinstance(command, list) or not command:
        err.add(("command",), f"command must be a non-empty list of arguments, got {command!r}")
        return []
    else:
        cmd = []
        for item in command:
            if isinstance(item, (Mapping, list)) or item is None:
                err.add(("command",), f"command item {item!r} must be a string")
                return []
            cmd.append(str(item))
    for item in cmd:
        if item.startswith("${") and item.endswith("}") and not ENVVAR_MACRO.fullmatch(item):
            macro = item[2:-1]
            if macro not in MACROS:
                err.add(
                    ("command",),
                    f"unknown command macro {item}; W&B knows "
                    + " ".join("${" + m + "}" for m in MACROS)
                    + " and ${envvar:NAME}",
                )
            elif macro == "program" and not program:
                err.add(
                    ("command",),
                    "command uses ${program} but the sweep has no program; "
                    "use: [${env}, ${interpreter}, -m, hrnet_sweep.train, ${args_no_hyphens}]",
                )
    return cmd
