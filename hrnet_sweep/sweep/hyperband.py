"""W&B's Hyperband early-termination rule, as a pure function over plain run records.

Re-implemented from wandb/sweeps `hyperband_stop_runs` (no I/O, no clock):

- A band is a count of logged metric values (not epochs, not steps): band b is reached
  by a run whose history holds at least b valid values; its value there is the b-th.
  Invalid entries (NaN, inf, None, bools, text) are dropped first, as W&B does.
- Bands are `int(min_iter * eta**k)`, or `int(max_iter / eta**k)` for k = 1..s
  (see `HyperbandSpec.bands`).
- For every band, the threshold is taken over all runs, whatever their state, that
  reached it: with the values oriented so that lower is better (negated for maximize)
  and sorted, threshold = values[int(n / eta)], i.e. the top-1/eta cut.
- Only running runs are judged, at the last band they have reached. A run is stopped
  when its value is strictly worse than the threshold (ties survive). `strict: true`
  compares the value at that band; `strict: false` compares the run's best value so far
  (over its whole history), which stops fewer runs.
- A lone run is never stopped (it is its own threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Number
from typing import Any, Literal

from .spec import HyperbandSpec

__all__ = [
    "BandInfo",
    "RunRecord",
    "StopDecision",
    "band_thresholds",
    "explain_bands",
    "hyperband_stop",
    "runs_to_stop",
    "valid_history",
]

Goal = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class RunRecord:
    """A run as Hyperband sees it: id, state (`running`, `finished`, `failed`, `stopped`,
    `crashed`, `killed`, `pending`) and the metric's logged values in order."""

    run_id: str
    state: str
    history: Sequence[Any]


@dataclass(frozen=True)
class StopDecision:
    """Why a running run is stopped or kept. Values are in the metric's own orientation.

    `band` is None when the run has not reached the first band yet (then `value` and
    `threshold` are None too).
    """

    run_id: str
    stop: bool
    band: int | None
    value: float | None
    threshold: float | None
    reason: str


def valid_history(history: Sequence[Any]) -> list[float]:
    """Finite numbers only, in order (W&B's `metric_history(filter_invalid=True)`)."""
    out = []
    for x in history:
        if isinstance(x, bool) or not isinstance(x, Number):
            continue
        try:
            f = float(x)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _oriented(history: Sequence[Any], goal: Goal) -> list[float]:
    h = valid_history(history)
    return [-x for x in h] if goal == "maximize" else h


def _check_goal(goal: str) -> None:
    if goal not in ("maximize", "minimize"):
        raise ValueError(f"goal must be 'maximize' or 'minimize', got {goal!r}")


def band_thresholds(
    runs: Sequence[RunRecord], spec: HyperbandSpec, *, goal: Goal
) -> list[tuple[int, float | None, int]]:
    """(band, threshold in the metric's orientation or None, runs that reached it) for
    every band some run has reached."""
    _check_goal(goal)
    histories = [h for h in (_oriented(r.history, goal) for r in runs) if h]
    longest = max((len(h) for h in histories), default=0)
    out = []
    for band in spec.bands(upto=longest):
        t, n = _threshold(histories, band, spec.eta)
        out.append((band, None if t is None else _unorient(t, goal), n))
    return out


def _threshold(histories: list[list[float]], band: int, eta: float) -> tuple[float | None, int]:
    reached = sorted(h[band - 1] for h in histories if len(h) >= band)
    if not reached:
        return None, 0
    return reached[int((1.0 / eta) * len(reached))], len(reached)


def _unorient(x: float, goal: Goal) -> float:
    return -x if goal == "maximize" else x


def hyperband_stop(runs: Sequence[RunRecord], spec: HyperbandSpec, *, goal: Goal) -> dict[str, StopDecision]:
    """Decide, for every running run, whether Hyperband stops it now.

    Args:
        runs: every run of the sweep, all states (finished and stopped runs set the
            thresholds too).
        spec: the sweep's Hyperband settings.
        goal: the sweep metric's goal.

    Returns:
        run_id -> StopDecision for each run in state `running`.
    """
    _check_goal(goal)
    histories = [h for h in (_oriented(r.history, goal) for r in runs) if h]
    longest = max((len(h) for h in histories), default=0)
    bands = spec.bands(upto=longest)
    thresholds = {b: _threshold(histories, b, spec.eta) for b in bands}
    mode = "value at the band" if spec.strict else "best value so far"

    decisions: dict[str, StopDecision] = {}
    for run in runs:
        if run.state != "running":
            continue
        h = _oriented(run.history, goal)
        reached = [b for b in bands if b <= len(h)]
        if not reached:
            first = bands[0] if bands else spec.bands(upto=None)[0]
            decisions[run.run_id] = StopDecision(
                run.run_id, False, None, None, None, f"{len(h)} value(s) logged; first band at {first}"
            )
            continue
        band = reached[-1]
        threshold, n = thresholds[band]
        assert threshold is not None  # the run itself reached the band
        value = h[band - 1] if spec.strict else min(h)
        stop = value > threshold
        v, t = _unorient(value, goal), _unorient(threshold, goal)
        cmp = ("<" if goal == "maximize" else ">") if stop else (">=" if goal == "maximize" else "<=")
        verdict = "stop" if stop else "keep"
        reason = (
            f"{verdict}: band {band} ({mode} {v:.6g} {cmp} threshold {t:.6g}, "
            f"top 1/{spec.eta:g} of {n} run(s) at the band)"
        )
        decisions[run.run_id] = StopDecision(run.run_id, stop, band, v, t, reason)
    return decisions


def runs_to_stop(runs: Sequence[RunRecord], spec: HyperbandSpec, *, goal: Goal) -> list[str]:
    """The ids of the running runs to stop now, in input order."""
    return [rid for rid, d in hyperband_stop(runs, spec, goal=goal).items() if d.stop]


# ----------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class BandInfo:
    """One band in training terms, for `hrnet_sweep explain` and `check`."""

    band: int
    """the N-th logged value of the metric"""
    epoch: int
    """the epoch (1-based) at whose validation the band is judged"""
    fires: bool
    """True when the band comes before the run's last validation (so stopping saves epochs)"""
    reached: int
    """runs reaching the band, out of `runs_per_band` reaching the first one"""
    kept: int
    """of those, how many survive (strict rule, distinct values, all runs in step)"""
    note: str = ""


def explain_bands(
    spec: HyperbandSpec,
    max_epochs: int,
    patience: int | None,
    runs_per_band: int = 27,
    *,
    check_val_every_n_epoch: int = 1,
) -> list[BandInfo]:
    """The bands a run of `max_epochs` can reach, in epochs, and how many runs each keeps.

    Training logs the metric once per validation, i.e. at epochs n, 2n, ... for
    `check_val_every_n_epoch` n, so band b is judged at epoch b * n. A band at the last
    validation (or beyond) cannot save anything. With early stopping of `patience`
    validations, a run that never improves after its first validation ends at validation
    `patience + 1`; bands after that only see runs that are still improving.

    The survivor counts follow W&B's threshold (index int(n/eta) of the sorted values,
    which keeps int(n/eta) + 1 runs when values are distinct) with every run reaching
    every band together; on a live sweep runs arrive one by one, so early runs face fewer
    rivals and more survive.
    """
    if max_epochs < 1 or check_val_every_n_epoch < 1:
        raise ValueError("max_epochs and check_val_every_n_epoch must be >= 1")
    n_vals = max_epochs // check_val_every_n_epoch
    bands = spec.bands(upto=max(n_vals, 1)) if spec.max_iter is None else spec.bands()
    out: list[BandInfo] = []
    alive = runs_per_band
    for band in bands:
        epoch = band * check_val_every_n_epoch
        fires = band < n_vals
        notes = []
        if band > n_vals:
            notes.append(f"never reached: a run logs {n_vals} value(s) in {max_epochs} epochs")
        elif band == n_vals:
            notes.append("at the last validation: stopping here saves nothing")
        if patience is not None and band > patience + 1 and band <= n_vals:
            notes.append(f"early stopping (patience {patience}) may end a stalled run first")
        reached = alive if band <= n_vals else 0
        kept = min(reached, int((1.0 / spec.eta) * reached) + 1) if reached else 0
        out.append(BandInfo(band, epoch, fires, reached, kept, "; ".join(notes)))
        alive = kept
    return out
