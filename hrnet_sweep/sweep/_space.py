"""A sweep's W&B parameters as an Optuna search space, and the sampler for its method.

value -> passed through; values -> categorical (lists as JSON strings); int_uniform,
uniform and the bounded log forms -> Optuna distributions; q_* -> sampled continuous,
then rounded as W&B does. bayes -> TPE, random -> random, grid -> a grid every agent
walks in the same order. What cannot map is rejected before a sweep is created.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..errors import UserError
from .spec import ParamSpec, SweepSpec

__all__ = ["SearchSpace", "build_search_space", "make_sampler", "tpe_sampler"]


@dataclass(frozen=True)
class SearchSpace:
    """A sweep's parameters as Optuna sees them.

    `distributions` are sampled (in `parameters:` order), `fixed` are passed through
    unchanged, `decoders` turn an Optuna value into the value the run gets (quantising,
    JSON-decoding list choices), `grid` is GridSampler's search space (method grid).
    """

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any]
    order: tuple[str, ...]
    decoders: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    grid: dict[str, list] | None = None

    def decode(self, optuna_params: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna's params of a trial -> every parameter of the run, in sweep order."""
        out: dict[str, Any] = {}
        for name in self.order:
            if name in self.fixed:
                out[name] = self.fixed[name]
            elif name in optuna_params:
                out[name] = self.decoders.get(name, _identity)(optuna_params[name])
        return out

    def grid_points(self) -> list[tuple]:
        assert self.grid is not None
        return list(itertools.product(*self.grid.values()))


def _identity(v: Any) -> Any:
    return v


def _quantize(q: float, integer: bool) -> Callable[[Any], Any]:
    def f(v: Any) -> Any:
        x = round(float(v) / q) * q
        return int(round(x)) if integer else x

    return f


def _choices(values: Sequence[Any]) -> tuple[tuple, Callable[[Any], Any] | None]:
    """Categorical choices; lists and mappings (e.g. betas) travel as JSON strings,
    because Optuna stores only None, bool, int, float and str."""
    if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        return tuple(values), None
    return tuple(json.dumps(v) for v in values), json.loads


def _unsupported(p: ParamSpec, why: str) -> UserError:
    return UserError(
        f"parameter '{p.name}': distribution {p.distribution} {why}. The embedded engine supports "
        "value, values, int_uniform, uniform, q_uniform, log_uniform, log_uniform_values, "
        "q_log_uniform, q_log_uniform_values, inv_log_uniform and inv_log_uniform_values; "
        "run this sweep on W&B (without --local) or use one of those"
    )


def _map_param(p: ParamSpec) -> tuple[BaseDistribution, Callable[[Any], Any] | None]:
    """One W&B parameter -> (Optuna distribution, decoder or None)."""
    if p.kind == "values":
        if p.probabilities is not None:
            raise _unsupported(p, "(values with probabilities) has no Optuna equivalent")
        choices, dec = _choices(p.values or ())
        return CategoricalDistribution(choices), dec
    d, lo, hi, q = p.distribution, p.min, p.max, p.q
    if d == "int_uniform":
        return IntDistribution(int(lo), int(hi)), None
    if d == "uniform":
        return FloatDistribution(float(lo), float(hi)), None
    if d == "q_uniform":  # W&B: round(U(min, max) / q) * q
        return FloatDistribution(float(lo), float(hi)), _quantize(q, p.integer)
    # log_uniform_values(min, max): log X ~ U(log min, log max). inv_log_uniform_values:
    # log(1/X) uniform over the same bounds -> the same law. The exponent forms take
    # min/max as exponents of e.
    if d in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
        low, high = lo, hi
    elif d in ("log_uniform", "q_log_uniform"):
        low, high = math.exp(lo), math.exp(hi)
    elif d == "inv_log_uniform":
        low, high = math.exp(-hi), math.exp(-lo)
    else:
        raise _unsupported(p, "is unbounded or not a range Optuna can sample (normal, log_normal, beta)")
    dec = _quantize(q, p.integer) if d.startswith("q_") and q else None
    return FloatDistribution(float(low), float(high), log=True), dec


def build_search_space(spec: SweepSpec) -> SearchSpace:
    """Map the sweep's W&B parameters to Optuna distributions; reject what cannot map.

    value -> passed through; values -> CategoricalDistribution; int_uniform ->
    IntDistribution; uniform -> FloatDistribution; log_uniform_values ->
    FloatDistribution(log=True); q_* -> sampled continuous then rounded to q as W&B does.
    For method grid every parameter becomes a list of grid values.
    """
    dists: dict[str, BaseDistribution] = {}
    decoders: dict[str, Callable[[Any], Any]] = {}
    fixed: dict[str, Any] = {}
    grid: dict[str, list] | None = {} if spec.method == "grid" else None
    for name, p in spec.parameters.items():
        if p.kind == "value":
            fixed[name] = p.value
            continue
        if grid is not None:
            if p.kind == "values":
                choices, dec = _choices(p.values or ())
            elif p.distribution == "int_uniform":
                choices, dec = tuple(range(int(p.min), int(p.max) + 1)), None
            elif p.distribution == "q_uniform":
                n = int(math.floor((p.max - p.min) / p.q + 1e-9))
                raw = [p.min + i * p.q for i in range(n + 1)]
                choices, dec = tuple(int(round(v)) if p.integer else v for v in raw), None
            else:
                raise _unsupported(p, "cannot be enumerated by a grid search")
            grid[name] = list(choices)
            dists[name] = CategoricalDistribution(choices)
        else:
            dists[name], dec = _map_param(p)
        if dec is not None:
            decoders[name] = dec
    return SearchSpace(dists, fixed, tuple(spec.parameters), decoders, grid)


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` at the end of the grid: that call is only
    legal inside `optimize`, and here the engine itself decides when the grid is done."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D102
        return None


def make_sampler(
    spec: SweepSpec, space: SearchSpace, *, sweep_id: str, run_cap: int | None = None, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """bayes -> TPESampler (multivariate, constant liar); random -> RandomSampler;
    grid -> GridSampler with a seed shared by every agent (its grid order must agree).

    TPE rather than GPSampler: it uses the intermediate values of pruned trials (with
    Hyperband most runs end pruned; GPSampler learns from completed ones only), the
    constant liar keeps parallel agents apart while their runs are still running, it
    handles categorical parameters (T_max in {15, 18, 20, 25}) natively, and a
    suggestion costs milliseconds without importing torch in the agent.

    The startup (run cap / 4, within 3-10) was measured against 3 startup runs by
    `benchmarks/sweep_replay.py` on recorded learning curves: 3 was faster with one agent
    and slower with four (parallel agents sampling on few results), so it stays.
    """
    if spec.method == "grid":
        assert space.grid is not None
        return _GridSampler(space.grid, seed=zlib.crc32(sweep_id.encode()))
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return tpe_sampler(10 if run_cap is None else max(3, min(10, run_cap // 4)), seed=seed)


def tpe_sampler(startup: int, *, seed: int | None = None) -> optuna.samplers.TPESampler:
    """The engine's TPE (multivariate, constant liar) with `startup` random runs first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(n_startup_trials=startup, multivariate=True, constant_liar=True, seed=seed)
