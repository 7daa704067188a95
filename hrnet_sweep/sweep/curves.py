"""Recorded learning curves of real trainings: the curve file and the lookup that replays
a sweep on them (`sweep.replay`, `benchmarks/sweep_replay.py`).

The file (`benchmarks/data/sroie_curves.json`, written by `benchmarks/collect_curves.py`)
is one JSON object:

    format     "hrnet-sweep learning curves"
    version    1
    command    the command that regenerates it
    problem    what was trained (model, canvas, data, start), in words
    metric     "val/hmean" (tuned validation H-Mean; higher is better)
    epochs     E: validations per run (every run has exactly E)
    sweep      the W&B sweep document the configurations were drawn from; its searched
               `parameters` are the space (the replay keeps it, changing only `method`
               and `early_terminate`)
    runs       a list, one entry per training run:
        run_id       the run's id in the collecting sweep
        source       "random" (a configuration drawn by the sweep) or "repeat" (a
                     configuration of the random sweep trained again with another seed)
        seed         the training seed
        params       {parameter: value} for every searched parameter of `sweep`
        hmean        E values: `val/hmean` at each validation (tuned post-processing)
        hmean_fixed  E values: `val/hmean_fixed` (the preset's post-processing)
        epoch_s      E values: seconds from the run's start to its first validation, then
                     between consecutive validations (so value k is known at
                     sum(epoch_s[:k+1]) seconds)
        end_s        seconds from the last validation to the run's exit

A configuration is the `params` of a run; runs with equal `params` are seeds of one
configuration. `read_curves` checks all of the above (shape, lengths, finite numbers in
range, parameters inside the space) and names the file and the run on any problem.

`lookup(curves, params, rng)` is the replay's one rule for "what would this
configuration have done": the recorded configuration nearest to `params` in the
normalised space (each log-uniform parameter as its position between log min and log
max, a uniform one between min and max, a numeric categorical one between its smallest
and largest value, a text one 0 or 1), and one of its seeds, drawn with `rng`. Any
sampler can be replayed on the same curves through it: suggest `params`, take the curve,
feed its values at their times.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import atomic_path, read_json
from ._validate import validate_sweep
from .spec import ParamSpec

__all__ = [
    "CURVES_FORMAT",
    "Curve",
    "CurveSet",
    "leave_one_out",
    "lookup",
    "read_curves",
    "seed_noise",
    "write_curves",
]

CURVES_FORMAT = "hrnet-sweep learning curves"
CURVES_VERSION = 1


@dataclass(frozen=True)
class Curve:
    """One recorded training run (see the module docstring for the fields)."""

    run_id: str
    source: str
    seed: int
    params: dict[str, Any]
    hmean: tuple[float, ...]
    hmean_fixed: tuple[float, ...]
    epoch_s: tuple[float, ...]
    end_s: float

    @property
    def best(self) -> float:
        """The run's best `val/hmean`: what `hrnet_sweep best` ranks it by."""
        return max(self.hmean)

    @property
    def duration_s(self) -> float:
        return float(sum(self.epoch_s) + self.end_s)

    def arrival_s(self) -> list[float]:
        """Seconds after the run's start at which each value is known."""
        return [float(x) for x in np.cumsum(self.epoch_s)]


@dataclass
class CurveSet:
    """A curve file, read and checked: its sweep document, epochs and runs."""

    sweep: dict
    epochs: int
    runs: list[Curve]
    meta: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.space: dict[str, ParamSpec] = _space(self.sweep, self.source or "curve file")
        groups: dict[tuple, list[Curve]] = {}
        for run in self.runs:
            groups.setdefault(self.key(run.params), []).append(run)
        self.configs: list[list[Curve]] = list(groups.values())
        """The runs grouped by configuration (seeds of one configuration together)."""
        self._points = np.array([self.position(g[0].params) for g in self.configs], dtype=np.float64)
        self.typical_epoch_s: tuple[float, ...] = tuple(
            float(x) for x in np.median([c.epoch_s for c in self.runs], axis=0)
        )
        """Per epoch, the median over all runs of its recorded seconds (the replay's default clock)."""
        self.typical_end_s = float(np.median([c.end_s for c in self.runs]))

    def key(self, params: Mapping[str, Any]) -> tuple:
        return tuple((name, params[name]) for name in self.space)

    def position(self, params: Mapping[str, Any]) -> list[float]:
        """`params` as a point of the unit cube (see the module docstring)."""
        return [_unit(p, params[name]) for name, p in self.space.items()]

    def config_value(self, group: Sequence[Curve]) -> float:
        """A configuration's value: the mean over its seeds of each run's best `val/hmean`."""
        return float(np.mean([c.best for c in group]))

    def best_value(self) -> float:
        """The best configuration's value: the target a sweep tries to reach."""
        return max(self.config_value(g) for g in self.configs)

    def nearest(self, params: Mapping[str, Any], *, exclude: int | None = None) -> int:
        """Index in `configs` of the configuration nearest to `params` (ties: the first)."""
        d = np.sum((self._points - np.array(self.position(params))) ** 2, axis=1)
        if exclude is not None:
            d[exclude] = np.inf
        return int(np.argmin(d))


def lookup(curves: CurveSet, params: Mapping[str, Any], rng: np.random.Generator | None = None) -> Curve:
    """The recorded curve a replayed run of `params` gets: the nearest configuration's,
    one of its seeds drawn with `rng` (the first seed without one)."""
    missing = [n for n in curves.space if n not in params]
    if missing:
        raise KeyError(f"params lack the searched parameter(s) {', '.join(missing)}")
    group = curves.configs[curves.nearest(params)]
    return group[int(rng.integers(len(group)))] if rng is not None and len(group) > 1 else group[0]


def seed_noise(curves: CurveSet) -> dict[str, float]:
    """How much a configuration's curve moves between seeds, over the configurations with
    several: `best_sd` (sample sd of the run's best val/hmean), `best_mad` (mean absolute
    difference of two seeds' bests), `epoch_sd` (sd across seeds at each epoch, averaged)."""
    groups = [g for g in curves.configs if len(g) > 1]
    if not groups:
        return {"configs": 0, "seeds": 0, "best_sd": math.nan, "best_mad": math.nan, "epoch_sd": math.nan}
    bests = [np.array([c.best for c in g]) for g in groups]
    mads = [np.mean([abs(a - b) for i, a in enumerate(x) for b in x[i + 1 :]]) for x in bests]
    return {
        "configs": len(groups),
        "seeds": min(len(g) for g in groups),
        "best_sd": float(np.mean([np.std(x, ddof=1) for x in bests])),
        "best_mad": float(np.mean(mads)),
        "epoch_sd": float(np.mean([np.std([c.hmean for c in g], axis=0, ddof=1).mean() for g in groups])),
    }


def leave_one_out(curves: CurveSet) -> dict[str, float]:
    """The lookup's error on configurations it has not seen: each configuration looked up
    among the others, its value (`config_value`) against the nearest one's (`best_mae`,
    `best_median`: mean and median absolute error) and its mean curve against the nearest
    one's (`epoch_rmse`)."""
    if len(curves.configs) < 2:
        return {"best_mae": math.nan, "best_median": math.nan, "epoch_rmse": math.nan}
    errs, sq = [], []
    for i, group in enumerate(curves.configs):
        other = curves.configs[curves.nearest(group[0].params, exclude=i)]
        errs.append(abs(curves.config_value(other) - curves.config_value(group)))
        mine = np.mean([c.hmean for c in group], axis=0)
        theirs = np.mean([c.hmean for c in other], axis=0)
        sq.append(np.mean((mine - theirs) ** 2))
    return {
        "best_mae": float(np.mean(errs)),
        "best_median": float(np.median(errs)),
        "epoch_rmse": float(math.sqrt(np.mean(sq))),
    }


def _unit(p: ParamSpec, value: Any) -> float:
    if p.kind == "values":
        vals = list(p.values or ())
        if all(isinstance(v, Real) and not isinstance(v, bool) for v in vals):
            lo, hi = float(min(vals)), float(max(vals))
            return 0.0 if hi == lo else (float(value) - lo) / (hi - lo)
        return float(vals.index(value)) if value in vals else float(len(vals))
    lo, hi = p.bounds() or (0.0, 1.0)
    if p.log:
        return (math.log(float(value)) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (float(value) - lo) / (hi - lo)


# ----------------------------------------------------------------------------- the file


def read_curves(path: str | os.PathLike) -> CurveSet:
    """Read and check a curve file; any problem is a `DataError` naming the file and the run."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a curve file is a JSON object, found {type(doc).__name__}")
    if doc.get("format") != CURVES_FORMAT or doc.get("version") != CURVES_VERSION:
        raise DataError(
            f"{path}: not a curve file of version {CURVES_VERSION} (format {doc.get('format')!r}, "
            f"version {doc.get('version')!r})"
        )
    epochs = doc.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise DataError(f"{path}: 'epochs' must be a whole number >= 1, found {epochs!r}")
    sweep, runs = doc.get("sweep"), doc.get("runs")
    if not isinstance(sweep, dict):
        raise DataError(f"{path}: 'sweep' must be the sweep document (a JSON object)")
    if not isinstance(runs, list) or not runs:
        raise DataError(f"{path}: 'runs' must be a non-empty list")
    space = _space(sweep, str(path))
    curves = [_run(path, i, r, epochs, space) for i, r in enumerate(runs)]
    meta = {k: v for k, v in doc.items() if k not in ("sweep", "runs")}
    return CurveSet(sweep=sweep, epochs=epochs, runs=curves, meta=meta, source=str(path))


def _space(sweep: Mapping[str, Any], source: str) -> dict[str, ParamSpec]:
    """The searched parameters of a curve file's sweep document (its values are not
    checked against a preset: the file must read anywhere, whatever the working folder)."""
    spec, errors = validate_sweep(dict(sweep), f"{source}: sweep", check_values=False)
    if spec is None or errors:
        raise DataError(f"{source}: 'sweep' is no valid sweep: " + "; ".join(m for _, m in errors))
    return spec.searched()


def _run(path: Path, i: int, r: Any, epochs: int, space: Mapping[str, ParamSpec]) -> Curve:
    where = f"{path}: runs[{i}]"
    if not isinstance(r, dict):
        raise DataError(f"{where} must be a JSON object")
    run_id, source, seed, params = r.get("run_id"), r.get("source"), r.get("seed"), r.get("params")
    if not isinstance(run_id, str) or not run_id:
        raise DataError(f"{where}: 'run_id' must be a non-empty string")
    where = f"{path}: run {run_id}"
    if source not in ("random", "repeat"):
        raise DataError(f"{where}: 'source' must be 'random' or 'repeat', found {source!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{where}: 'seed' must be a whole number, found {seed!r}")
    if not isinstance(params, dict) or set(params) != set(space):
        raise DataError(f"{where}: 'params' must name exactly the searched parameters {sorted(space)}")
    for name, p in space.items():
        _check_param(where, name, p, params[name])
    series = {}
    for key, lo, hi in (("hmean", 0.0, 1.0), ("hmean_fixed", 0.0, 1.0), ("epoch_s", 0.0, math.inf)):
        vals = r.get(key)
        if not isinstance(vals, list) or len(vals) != epochs:
            raise DataError(f"{where}: '{key}' must be a list of {epochs} numbers")
        for k, v in enumerate(vals):
            if not _number_in(v, lo, hi) or (key == "epoch_s" and v <= 0):
                raise DataError(f"{where}: {key}[{k}] = {v!r} is not a finite number in [{lo}, {hi}]")
        series[key] = tuple(float(v) for v in vals)
    end_s = r.get("end_s")
    if not _number_in(end_s, 0.0, math.inf):
        raise DataError(f"{where}: 'end_s' = {end_s!r} is not a finite number >= 0")
    return Curve(run_id, source, seed, dict(params), end_s=float(end_s), **series)


def _number_in(v: Any, lo: float, hi: float) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _check_param(where: str, name: str, p: ParamSpec, value: Any) -> None:
    if p.kind == "values":
        if value not in (p.values or ()):
            raise DataError(f"{where}: params[{name!r}] = {value!r} is not one of {list(p.values or ())}")
        return
    lo, hi = p.bounds() or (-math.inf, math.inf)
    if not _number_in(value, lo * (1 - 1e-9), hi * (1 + 1e-9)) or (p.log and value <= 0):
        raise DataError(f"{where}: params[{name!r}] = {value!r} is outside the sweep's range [{lo:g}, {hi:g}]")


def write_curves(
    path: str | os.PathLike, *, sweep: Mapping, epochs: int, runs: Sequence[Curve], meta: Mapping[str, Any]
) -> Path:
    """Write a curve file atomically (compact: one line per run), then read it back, so a
    file that `read_curves` would refuse is never left behind."""
    doc = {"format": CURVES_FORMAT, "version": CURVES_VERSION, **meta, "epochs": epochs, "sweep": dict(sweep)}
    rows = [
        {
            "run_id": c.run_id,
            "source": c.source,
            "seed": c.seed,
            "params": c.params,
            "hmean": [round(v, 6) for v in c.hmean],
            "hmean_fixed": [round(v, 6) for v in c.hmean_fixed],
            "epoch_s": [round(v, 3) for v in c.epoch_s],
            "end_s": round(c.end_s, 3),
        }
        for c in runs
    ]
    head = json.dumps(doc, indent=1)[:-2]  # the object without its closing brace
    body = ",\n".join("  " + json.dumps(r) for r in rows)
    text = f'{head},\n "runs": [\n{body}\n ]\n}}\n'
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        read_curves(tmp)
    return path
