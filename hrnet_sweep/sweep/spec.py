"""W&B sweep files as types: `SweepSpec`, its parameters (`ParamSpec`) and Hyperband
settings (`HyperbandSpec`).

A sweep file here is an ordinary W&B sweep YAML (the same file goes to `wandb sweep` and
to the embedded engine). `sweepfile.load_sweep` reads one into these types; what `wandb
agent` does with a run's parameters lives in `command`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import DEFAULT_PRESET

__all__ = [
    "STRICT_DEFAULT",
    "HyperbandSpec",
    "ParamSpec",
    "SweepSpec",
]

STRICT_DEFAULT = True
"""Hyperband `strict` when the file does not say. W&B's docs say false, but its engine
fills the schema default (`"strict": {"default": true}` in wandb/sweeps
config/schema.json, applied by `fill_validate_early_terminate`), so a sweep without
`strict` runs strict on W&B. We follow the engine; `check` asks the user to be explicit."""


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
