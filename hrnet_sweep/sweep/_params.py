"""Each entry of a sweep's `parameters:`: W&B's schema, then the values against our config.

`parse_parameters` turns the entries into `ParamSpec`s, inferring the distribution the
way W&B does; `check_config_values` loads every value a run can get through
`hrnet_sweep.config`. Both report into the validator's `_Errors` (see `_validate`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ..config import LEAF_KEYS, NUMBER_KEYS, check_key, checked_number, load_config
from ..errors import ConfigError
from ..numeric import number_problem, number_text, with_dot
from .spec import ParamSpec, SweepSpec

if TYPE_CHECKING:
    from ._validate import _Errors

__all__ = ["DISTRIBUTIONS", "check_config_values", "is_int", "is_number", "parse_parameters"]

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
_POSITIVE_MIN = ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")
_EXPONENTS = ("log_uniform", "q_log_uniform", "inv_log_uniform")
_MAX_EXPONENT = 700.0  # exp(709.8) is the largest finite float
_LIST_POSITION = re.compile(r"(^|\.)\d+(\.|$)|\[\d+\]")


# ----------------------------------------------------------------------------- each entry against W&B's schema


def is_number(x: Any) -> bool:
    """A finite int or float, not a bool (`numeric.number_problem`)."""
    return number_problem(x) is None


def is_int(x: Any) -> bool:
    return number_problem(x, int) is None


def yaml11_hint(value: Any) -> str:
    """For text YAML 1.1 did not read as a number (`1e-05`): why, and how to write it."""
    if not isinstance(value, str) or number_text(value) is None:
        return ""
    return (
        f" (YAML 1.1, which PyYAML and W&B read, takes {value.strip()} without a dot as text: write {with_dot(value)})"
    )


def parse_parameters(params: Any, err: _Errors) -> dict[str, ParamSpec]:
    out: dict[str, ParamSpec] = {}
    if not isinstance(params, Mapping) or not params:
        err.add(
            ("parameters",),
            "parameters must be a non-empty mapping of config keys, "
            "e.g. models.optimizer.lr: {distribution: log_uniform_values, min: 1.0e-5, max: 2.0e-4}",
        )
        return out
    for name, body in params.items():
        path = ("parameters", name)
        name = str(name)
        if _LIST_POSITION.search(name):
            err.add(
                path,
                f"parameter '{name}' names a list position; sweep a whole field "
                "(e.g. models.optimizer.betas: {values: [[0.9, 0.999], [0.95, 0.999]]}), never an index",
            )
            continue
        if isinstance(body, Mapping) and "parameters" in body:
            err.add(
                path,
                f"nested 'parameters' under '{name}' is not supported; name the leaf key with dots "
                "(models.optimizer.lr), so the run gets key=value overrides",
            )
            continue
        try:
            check_key(name, body)
        except ConfigError as e:
            err.add(path, f"parameter {e}")
            continue
        if not isinstance(body, Mapping):
            err.add(
                path, f"parameter '{name}' must be a mapping such as {{value: ...}} or {{values: [...]}}, got {body!r}"
            )
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
            dist = "int_uniform" if is_int(body["min"]) and is_int(body["max"]) else "uniform"
        else:
            err.add(path, f"parameter '{name}' needs value, values, or distribution/min/max; got keys {sorted(body)}")
            return None
    if dist == "categorical" and "probabilities" in body:
        dist = "categorical_w_probabilities"
    if dist not in DISTRIBUTIONS:
        err.add(
            path + ("distribution",), f"'{name}': unknown distribution {dist!r}; W&B knows {', '.join(DISTRIBUTIONS)}"
        )
        return None
    required, optional = DISTRIBUTIONS[dist]
    allowed = set(required) | set(optional) | {"distribution"}
    bad = [k for k in body if k not in allowed]
    if bad:
        err.add(
            path + (bad[0],),
            f"'{name}': key(s) {', '.join(map(str, bad))} not allowed with distribution "
            f"{dist}; allowed: {', '.join(sorted(allowed))}",
        )
        return None
    missing = [k for k in required if k not in body]
    if missing:
        err.add(path, f"'{name}': distribution {dist} needs {', '.join(missing)}")
        return None
    vals = {**optional, **{k: v for k, v in body.items() if k != "distribution"}}
    if not _numbers_of_distribution(name, dist, vals, path, err):
        return None
    if dist == "int_uniform" and not (is_int(vals["min"]) and is_int(vals["max"])):
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
            if (
                not isinstance(probs, list)
                or len(probs) != len(values)
                or not all(is_number(x) and x >= 0 for x in probs)
            ):
                err.add(path + ("probabilities",), f"'{name}': probabilities must be {len(values)} numbers >= 0")
                return None
            if not math.isclose(sum(probs), 1.0, rel_tol=0, abs_tol=1e-6):
                err.add(path + ("probabilities",), f"'{name}': probabilities sum to {sum(probs)}, not 1")
                return None
        if not _numbers_ok(name, values, path + ("values",), err):
            return None
        return ParamSpec(
            name,
            "values",
            values=tuple(values),
            distribution=dist,
            probabilities=tuple(probs) if probs is not None else None,
        )
    if dist == "constant":
        if not _numbers_ok(name, [vals["value"]], path + ("value",), err):
            return None
        return ParamSpec(name, "value", value=vals["value"], distribution=dist)
    return ParamSpec(
        name,
        "distribution",
        distribution=dist,
        min=vals.get("min"),
        max=vals.get("max"),
        q=vals.get("q"),
        mu=vals.get("mu"),
        sigma=vals.get("sigma"),
        a=vals.get("a"),
        b=vals.get("b"),
    )


def _numbers_of_distribution(name: str, dist: str, vals: Mapping[str, Any], path: tuple, err: _Errors) -> bool:
    """min, max, q, mu, sigma, a, b are finite numbers, and exp() of log-space ones is too."""
    n_before = len(err.items)
    for k in ("min", "max", "q", "mu", "sigma", "a", "b"):
        problem = number_problem(vals[k]) if k in vals else None
        if problem is not None:
            err.add(path + (k,), f"'{name}': {k} must be a finite number: {problem}{yaml11_hint(vals[k])}")
    if len(err.items) > n_before:
        return False
    if dist in _EXPONENTS and max(abs(vals["min"]), abs(vals["max"])) > _MAX_EXPONENT:
        err.add(
            path,
            f"'{name}': {dist} takes min and max as natural-log exponents; exp of {vals['min']!r} .. "
            f"{vals['max']!r} overflows (did you mean {dist}_values, which takes the values themselves?)",
        )
        return False
    if dist in ("log_normal", "q_log_normal") and abs(vals["mu"]) > _MAX_EXPONENT:
        err.add(path + ("mu",), f"'{name}': {dist} takes mu as a natural-log exponent; exp({vals['mu']!r}) overflows")
        return False
    return True


def _numbers_ok(name: str, values: list, path: tuple, err: _Errors) -> bool:
    """Each value of a number key is a finite number of its type, and not text: the value
    reaches the sampler (and W&B) as written, so `1e-05` would be a string there."""
    if name not in NUMBER_KEYS:
        return True
    for i, v in enumerate(values):
        where = f"'{name}': {path[-1]}[{i}]" if path[-1] == "values" else f"'{name}': value"
        if isinstance(v, str) and number_text(v) is not None and not NUMBER_KEYS[name][1]:
            err.add(path, f"{where} {v!r} is text, not a number{yaml11_hint(v)}")
            return False
        try:
            checked_number(name, v)
        except ConfigError as e:
            err.add(path, f"{where} is refused: {e}")
            return False
    return True


# ----------------------------------------------------------------------------- values against the config


def check_config_values(spec: SweepSpec, err: _Errors) -> None:
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
        if p.kind == "distribution" and ann in (int, Optional[int]) and not p.integer:  # noqa: UP045 - compared with the field's annotation
            err.add(
                ("parameters", name),
                f"'{name}' is an integer but distribution {p.distribution} samples "
                "non-integers; use int_uniform, values: [...], or an integer q (q: 1)",
            )
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
