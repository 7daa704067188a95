"""W&B sweep files: parse, validate against W&B's schema and our config, expand commands.

A sweep file here is an ordinary W&B sweep YAML (the same file goes to `wandb sweep` and
to the embedded engine). This module is pure apart from reading the file: it turns the
YAML into a typed `SweepSpec`, checks every key against W&B's sweep schema
(wandb/sweeps `config/schema.json`) and every parameter against `hrnet_sweep.config`,
and reproduces what `wandb agent` does when it launches a run: command macros
(`${env} ${interpreter} ${program} ${args} ...`), values formatted with `str()`, and the
`WANDB_SWEEP_PARAM_PATH` YAML file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

import yaml

from ..config import DEFAULT_PRESET, LEAF_KEYS, check_key, load_config
from ..errors import ConfigError

__all__ = [
    "DEFAULT_COMMAND",
    "DISTRIBUTIONS",
    "STRICT_DEFAULT",
    "HyperbandSpec",
    "ParamSpec",
    "SweepSpec",
    "command_args",
    "expand_command",
    "format_value",
    "load_sweep",
    "parse_sweep",
    "read_param_file",
    "read_sweep_doc",
    "uses_args_json_file",
    "validate_sweep",
    "write_args_json_file",
    "write_param_file",
]

DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")
"""What `wandb agent` runs when the sweep has no `command`."""

ARG_MACROS = ("args", "args_no_hyphens", "args_no_boolean_flags", "args_no_equals",
              "args_append_hydra", "args_override_hydra", "args_json", "args_json_file")
"""Macros that carry the parameters (as `wandb agent` builds them)."""
MACROS = ("env", "interpreter", "program") + ARG_MACROS
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # W&B's own pattern (upper case only)

STRICT_DEFAULT = True
"""Hyperband `strict` when the file does not say. W&B's docs say false, but its engine
fills the schema default (`"strict": {"default": true}` in wandb/sweeps
config/schema.json, applied by `fill_validate_early_terminate`), so a sweep without
`strict` runs strict on W&B. We follow the engine; `check` asks the user to be explicit."""

# W&B top-level keys this project accepts. Others that W&B knows (controller, job,
# image_uri, scheduler, metrics, apiVersion, kind) have no meaning for the embedded engine.
_TOP_KEYS = ("method", "metric", "parameters", "early_terminate", "command", "program", "name",
             "description", "run_cap", "entity", "project")
_WANDB_ONLY_KEYS = ("controller", "job", "image_uri", "scheduler", "metrics", "apiVersion", "kind")
_METRIC_KEYS = ("name", "goal", "target")
_HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")

# distribution -> (required keys, optional keys with W&B's defaults)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform": (("min", "max"), {"q": 1.0}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "inv_log_uniform": (("min", "max"), {}),
    "inv_log_uniform_values": (("min", "max"), {}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}
_UNBOUNDED = ("normal", "q_normal", "log_normal", "q_log_normal")
_POSITIVE_MIN = ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")
_LIST_POSITION = re.compile(r"(^|\.)\d+(\.|$)|\[\d+\]")


# ----------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ParamSpec:
    """One entry of `parameters:`; `name` is a dotted config key.

    `kind` is `value` (constant), `values` (categorical, optionally with
    `probabilities`) or `distribution` (everything with `min`/`max`/`mu`/...).
    `distribution` is always filled in, inferred the way W&B infers it.
    """

    name: str
    kind: Literal["value", "values", "distribution"]
    value: Any = None
    values: tuple[Any, ...] | None = None
    distribution: str = "constant"
    min: float | None = None
    max: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    probabilities: tuple[float, ...] | None = None
    a: float | None = None
    b: float | None = None

    @property
    def integer(self) -> bool:
        """True when every sample is an int (W&B returns ints for an int `q`)."""
        if self.distribution == "int_uniform":
            return True
        return self.distribution.startswith("q_") and isinstance(self.q, int) and not isinstance(self.q, bool)

    @property
    def log(self) -> bool:
        return "log" in self.distribution

    def bounds(self) -> tuple[float, float] | None:
        """Smallest and largest value a sample can take (value space, after exp / q).

        None for `value`/`values`; (-inf, inf) style bounds for the normal family.
        """
        if self.kind != "distribution":
            return None
        d, lo, hi = self.distribution, self.min, self.max
        if d in ("normal", "q_normal"):
            return (-math.inf, math.inf)
        if d in ("log_normal", "q_log_normal"):
            return (0.0, math.inf)
        if d in ("beta", "q_beta"):
            lo, hi = 0.0, 1.0
        elif d in ("log_uniform", "q_log_uniform"):
            lo, hi = math.exp(lo), math.exp(hi)
        elif d == "inv_log_uniform":
            lo, hi = math.exp(-hi), math.exp(-lo)
        assert lo is not None and hi is not None
        if d.startswith("q_") and self.q:
            lo, hi = round(lo / self.q) * self.q, round(hi / self.q) * self.q
        return (lo, hi)

    def candidates(self) -> list[Any]:
        """Representative values to validate: the value, every listed value, or the range
        ends (the mean for unbounded distributions), typed as the sampler returns them."""
        if self.kind == "value":
            return [self.value]
        if self.kind == "values":
            return list(self.values or ())
        if self.distribution in ("normal", "q_normal"):
            ends = [self.mu]
        elif self.distribution in ("log_normal", "q_log_normal"):
            ends = [math.exp(self.mu or 0.0)]
        else:
            ends = list(self.bounds() or ())
        if self.integer:
            return [int(round(v)) for v in ends]
        return [float(v) for v in ends]


@dataclass(frozen=True)
class HyperbandSpec:
    """`early_terminate: {type: hyperband, ...}` with W&B's defaults filled in."""

    min_iter: int | None = None
    max_iter: int | None = None
    s: int | None = None
    eta: float = 3.0
    strict: bool = STRICT_DEFAULT

    def bands(self, upto: int | None = None) -> list[int]:
        """Band positions (the N-th logged metric value), computed exactly as wandb/sweeps.

        `max_iter` wins over `min_iter` when both are given (as in W&B). With `min_iter`
        the schedule is open ended; `upto` cuts it at that many logged values (W&B
        computes 100 bands; only those a run can reach ever matter).
        """
        bands: list[int] = []
        if self.max_iter is not None:
            band: float = self.max_iter
            for _ in range(int(self.s or 0)):
                band /= self.eta
                if band < 1:
                    break
                bands.append(int(band))
            bands.sort()
            return bands if upto is None else [b for b in bands if b <= upto]
        assert self.min_iter is not None
        band = self.min_iter
        for _ in range(100):
            if upto is not None and int(band) > upto:
                break
            bands.append(int(band))
            band *= self.eta
        return bands


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. `raw` is the document as read (what `wandb.sweep` gets)."""

    name: str
    method: Literal["bayes", "random", "grid"]
    metric_name: str | None
    metric_goal: Literal["maximize", "minimize"]
    parameters: dict[str, ParamSpec]
    early_terminate: HyperbandSpec | None
    command: list[str]
    run_cap: int | None
    source: str
    program: str | None = None
    description: str | None = None
    metric_target: float | None = None
    entity: str | None = None
    project: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def presets(self) -> list[str]:
        """The preset(s) the runs start from: the `preset` parameter, or the default."""
        p = self.parameters.get("preset")
        if p is None:
            return [DEFAULT_PRESET]
        return [str(v) for v in p.candidates()]

    def fixed(self) -> dict[str, Any]:
        """Parameters with a single value (`value:`), preset included."""
        return {k: p.value for k, p in self.parameters.items() if p.kind == "value"}

    def searched(self) -> dict[str, ParamSpec]:
        return {k: p for k, p in self.parameters.items() if p.kind != "value"}


# ----------------------------------------------------------------------------- loading


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
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read sweep file: {err.strerror or err}") from None
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


# ----------------------------------------------------------------------------- validation


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


def validate_sweep(doc: Mapping[str, Any], source: str, *, lines: Mapping[tuple, int] | None = None,
                   check_values: bool = True) -> tuple[SweepSpec | None, list[tuple[str, str]]]:
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

    params = _parameters(doc.get("parameters"), err)
    if method == "grid":
        for p in params.values():
            if p.kind == "distribution" and p.distribution not in ("int_uniform", "q_uniform"):
                err.add(("parameters", p.name), f"grid search cannot enumerate distribution '{p.distribution}'; "
                        "use values: [...] (W&B allows only value, values, int_uniform and q_uniform in a grid)")
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
        name=str(doc.get("name") or Path(source).stem), method=method, metric_name=metric_name,
        metric_goal=goal, parameters=params, early_terminate=hyperband, command=command,
        run_cap=run_cap, source=source, program=program, description=doc.get("description"),
        metric_target=target, entity=doc.get("entity"), project=doc.get("project"), raw=dict(doc),
    )
    if check_values:
        _check_values(spec, err)
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
    if target is not None and not _is_number(target):
        err.add(("metric", "target"), f"metric.target must be a number, got {target!r}")
    return name, goal, target


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parameters(params: Any, err: _Errors) -> dict[str, ParamSpec]:
    out: dict[str, ParamSpec] = {}
    if not isinstance(params, Mapping) or not params:
        err.add(("parameters",), "parameters must be a non-empty mapping of config keys, "
                "e.g. models.optimizer.lr: {distribution: log_uniform_values, min: 1.0e-5, max: 2.0e-4}")
        return out
    for name, body in params.items():
        path = ("parameters", name)
        name = str(name)
        if _LIST_POSITION.search(name):
            err.add(path, f"parameter '{name}' names a list position; sweep a whole field "
                    "(e.g. models.optimizer.betas: {values: [[0.9, 0.999], [0.95, 0.999]]}), never an index")
            continue
        if isinstance(body, Mapping) and "parameters" in body:
            err.add(path, f"nested 'parameters' under '{name}' is not supported; name the leaf key with dots "
                    "(models.optimizer.lr), so the run gets key=value overrides")
            continue
        try:
            check_key(name, body)
        except ConfigError as e:
            err.add(path, f"parameter {e}")
            continue
        if not isinstance(body, Mapping):
            err.add(path, f"parameter '{name}' must be a mapping such as {{value: ...}} or {{values: [...]}}, got {body!r}")
            continue
        p = _param(name, body, path, err)
        if p is not None:
            out[name] = p
    return out


def _param(name: str, body: Mapping[str, Any], path: tuple, err: _Errors) -> ParamSpec | None:
    dist = body.get("distribution")
    if dist is None:  # W&B's inference
        if "value" in body:
            dist = "constant"
        elif "values" in body:
            dist = "categorical_w_probabilities" if "probabilities" in body else "categorical"
        elif "min" in body and "max" in body:
            dist = "int_uniform" if _is_int(body["min"]) and _is_int(body["max"]) else "uniform"
        else:
            err.add(path, f"parameter '{name}' needs value, values, or distribution/min/max; got keys {sorted(body)}")
            return None
    if dist == "categorical" and "probabilities" in body:
        dist = "categorical_w_probabilities"
    if dist not in DISTRIBUTIONS:
        err.add(path + ("distribution",), f"'{name}': unknown distribution {dist!r}; W&B knows {', '.join(DISTRIBUTIONS)}")
        return None
    required, optional = DISTRIBUTIONS[dist]
    allowed = set(required) | set(optional) | {"distribution"}
    bad = [k for k in body if k not in allowed]
    if bad:
        err.add(path + (bad[0],), f"'{name}': key(s) {', '.join(map(str, bad))} not allowed with distribution "
                f"{dist}; allowed: {', '.join(sorted(allowed))}")
        return None
    missing = [k for k in required if k not in body]
    if missing:
        err.add(path, f"'{name}': distribution {dist} needs {', '.join(missing)}")
        return None
    vals = {**optional, **{k: v for k, v in body.items() if k != "distribution"}}
    n_before = len(err.items)
    for k in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if k in vals and not _is_number(vals[k]):
            hint = (" (PyYAML reads 1e-5 as text: write 1.0e-5 or !!float 1e-5)"
                    if isinstance(vals[k], str) and _looks_numeric(vals[k]) else "")
            err.add(path + (k,), f"'{name}': {k} must be a number, got {vals[k]!r}{hint}")
    if len(err.items) > n_before:
        return None
    if dist == "int_uniform" and not (_is_int(vals["min"]) and _is_int(vals["max"])):
        err.add(path, f"'{name}': int_uniform needs integer min and max, got {vals['min']!r}, {vals['max']!r}")
        return None
    if "min" in vals and "max" in vals and not vals["min"] < vals["max"]:
        err.add(path, f"'{name}': min {vals['min']} is not less than max {vals['max']}")
        return None
    if dist in _POSITIVE_MIN and vals["min"] <= 0:
        err.add(path + ("min",), f"'{name}': {dist} needs min > 0, got {vals['min']}")
        return None
    if "q" in vals and vals["q"] <= 0:
        err.add(path + ("q",), f"'{name}': q must be > 0, got {vals['q']}")
        return None
    if vals.get("sigma", 0) < 0 or vals.get("a", 0) < 0 or vals.get("b", 0) < 0:
        err.add(path, f"'{name}': sigma, a and b must be >= 0")
        return None
    if "values" in vals:
        values = vals["values"]
        if not isinstance(values, list) or not values:
            err.add(path + ("values",), f"'{name}': values must be a non-empty list, got {values!r}")
            return None
        probs = vals.get("probabilities")
        if probs is not None:
            if (not isinstance(probs, list) or len(probs) != len(values)
                    or not all(_is_number(x) and x >= 0 for x in probs)):
                err.add(path + ("probabilities",), f"'{name}': probabilities must be {len(values)} numbers >= 0")
                return None
            if not math.isclose(sum(probs), 1.0, rel_tol=0, abs_tol=1e-6):
                err.add(path + ("probabilities",), f"'{name}': probabilities sum to {sum(probs)}, not 1")
                return None
        return ParamSpec(name, "values", values=tuple(values), distribution=dist,
                         probabilities=tuple(probs) if probs is not None else None)
    if dist == "constant":
        return ParamSpec(name, "value", value=vals["value"], distribution=dist)
    return ParamSpec(name, "distribution", distribution=dist, min=vals.get("min"), max=vals.get("max"),
                     q=vals.get("q"), mu=vals.get("mu"), sigma=vals.get("sigma"), a=vals.get("a"), b=vals.get("b"))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _hyperband(et: Any, err: _Errors) -> HyperbandSpec | None:
    if et is None:
        return None
    path = ("early_terminate",)
    if not isinstance(et, Mapping):
        err.add(path, f"early_terminate must be a mapping, got {et!r}")
        return None
    bad = [k for k in et if k not in _HYPERBAND_KEYS]
    if bad:
        err.add(path + (bad[0],), f"unknown early_terminate key(s) {', '.join(map(str, bad))}; "
                f"allowed: {', '.join(_HYPERBAND_KEYS)}")
    if et.get("type") != "hyperband":
        err.add(path + ("type",), f"early_terminate.type {et.get('type')!r}: W&B supports only hyperband")
        return None
    eta = et.get("eta", 3)
    if not _is_number(eta) or eta <= 1:
        err.add(path + ("eta",), f"eta must be a number > 1, got {eta!r}")
        return None
    strict = et.get("strict", STRICT_DEFAULT)
    if not isinstance(strict, bool):
        err.add(path + ("strict",), f"strict must be true or false, got {strict!r}")
        return None
    min_iter, max_iter, s = et.get("min_iter"), et.get("max_iter"), et.get("s")
    if min_iter is not None and (not _is_int(min_iter) or min_iter < 1):
        err.add(path + ("min_iter",), f"min_iter must be an integer >= 1, got {min_iter!r}")
        return None
    if max_iter is not None and not _is_int(max_iter):
        err.add(path + ("max_iter",), f"max_iter must be an integer, got {max_iter!r}")
        return None
    if s is not None and not (_is_number(s) and float(s).is_integer() and s >= 1):
        err.add(path + ("s",), f"s must be a whole number >= 1, got {s!r}")
        return None
    if max_iter is None and min_iter is None:
        err.add(path, "hyperband needs min_iter, or max_iter and s")
        return None
    if max_iter is not None and s is None:
        err.add(path, "hyperband with max_iter needs s (the number of bands); or give min_iter instead")
        return None
    spec = HyperbandSpec(min_iter=min_iter, max_iter=max_iter, s=int(s) if s is not None else None,
                         eta=float(eta), strict=strict)
    if not spec.bands():
        err.add(path, f"hyperband max_iter={max_iter}, s={s}, eta={eta} gives no band "
                "(max_iter/eta < 1); increase max_iter or s, or decrease eta")
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
        if item.startswith("${") and item.endswith("}") and not _ENVVAR.fullmatch(item):
            macro = item[2:-1]
            if macro not in MACROS:
                err.add(("command",), f"unknown command macro {item}; W&B knows "
                        + " ".join("${" + m + "}" for m in MACROS) + " and ${envvar:NAME}")
            elif macro == "program" and not program:
                err.add(("command",), "command uses ${program} but the sweep has no program; "
                        "use: [${env}, ${interpreter}, -m, hrnet_sweep.train, ${args_no_hyphens}]")
    return cmd


# ----------------------------------------------------------------------------- values against the config


def _check_values(spec: SweepSpec, err: _Errors) -> None:
    """Every value a run can get must load: per preset, each candidate on its own, then
    all range minima together and all maxima together (cross-field rules)."""
    preset_param = spec.parameters.get("preset")
    if preset_param is not None and preset_param.kind == "distribution":
        err.add(("parameters", "preset"), "preset must be value: NAME or values: [NAME, ...]")
        return
    for name, p in spec.parameters.items():
        if name == "preset":
            continue
        ann = LEAF_KEYS[name].annotation
        if p.kind == "distribution" and ann in (int, Optional[int]) and not p.integer:
            err.add(("parameters", name), f"'{name}' is an integer but distribution {p.distribution} samples "
                    "non-integers; use int_uniform, values: [...], or an integer q (q: 1)")
    fixed = {k: v for k, v in spec.fixed().items() if k != "preset"}
    searched = {k: p for k, p in spec.searched().items() if k != "preset"}
    for preset in spec.presets:
        where = f" (preset {preset})" if len(spec.presets) > 1 else ""
        try:
            load_config({"preset": preset, **fixed})
        except ConfigError as e:
            alone = False  # name the key when one value is wrong by itself
            for name, v in fixed.items():
                try:
                    load_config({"preset": preset, name: v})
                except ConfigError as e1:
                    err.add(("parameters", name), f"'{name}' value {v!r}{where} is not allowed: {_short(e1)}")
                    alone = True
            if not alone:
                err.add(("parameters",), f"the fixed values together{where} do not load: {_short(e)}")
            continue
        bad = False
        for name, p in searched.items():
            for v in p.candidates():
                try:
                    load_config({"preset": preset, **fixed, name: v})
                except ConfigError as e:
                    err.add(("parameters", name), f"'{name}' value {v!r}{where} is not allowed: {_short(e)}")
                    bad = True
                    break
        if bad or not searched:
            continue
        for pick, label in ((min, "smallest"), (max, "largest")):
            combo = {}
            for name, p in searched.items():
                cands = p.candidates()
                try:
                    combo[name] = pick(cands)
                except TypeError:
                    combo[name] = cands[0]
            try:
                load_config({"preset": preset, **fixed, **combo})
            except ConfigError as e:
                err.add(("parameters",), f"the {label} value of every range together{where} does not load: {_short(e)}")


def _short(e: ConfigError) -> str:
    return str(e).replace("invalid config:\n  ", "").replace("\n  ", "; ")


# ----------------------------------------------------------------------------- what `wandb agent` does


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


def expand_command(command: Sequence[str] | None, params: Mapping[str, Any], *, interpreter: str,
                   program: str | None, env: Mapping[str, str], args_json_file: str | None = None,
                   windows: bool | None = None) -> list[str]:
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
        item = _ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), str(item))
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
    from ..io import atomic_write_text

    return atomic_write_text(path, command_args(params)["args_json"][0])


def write_param_file(path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Write the `WANDB_SWEEP_PARAM_PATH` file exactly as `wandb agent` does:
    `wandb_version: 1`, a blank line, then `{key: {value: v}}` as block YAML in order."""
    from ..io import atomic_write_text

    text = "wandb_version: 1"
    if params:
        body = {k: {"value": _plain(v)} for k, v in params.items()}
        text += "\n\n" + yaml.dump(body, Dumper=yaml.SafeDumper, default_flow_style=False,
                                   allow_unicode=True, sort_keys=False)
    return atomic_write_text(path, text)


def read_param_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `WANDB_SWEEP_PARAM_PATH` file back into `{key: value}`."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {k: v["value"] for k, v in doc.items() if k != "wandb_version" and isinstance(v, dict) and "value" in v}
