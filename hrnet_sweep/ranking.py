"""Ranking a sweep's runs: the one rule that `hrnet_sweep best`, `hrnet_sweep status` and
`hrnet_sweep clean` share, a pure function over plain records (no I/O, no clock).

Only finished runs with a finite metric are ranked (`stopped` ones were cut short by
Hyperband, `failed` and `crashed` ones did not finish). A run counts with the best value
of its history (not its last, which early stopping and cosine tails make noisy; the best
of a history is `runfolder.best_in_history`). Ties go to the run that reached the value at
the earlier epoch, then to the smaller run id, so the order never depends on the order a
source lists the runs in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .constants import METRIC
from .runfolder import best_in_history, finite

__all__ = ["FINISHED", "RankedRun", "Ranking", "RunRecord", "order_runs", "rank_key", "rank_runs", "run_best"]

FINISHED = "finished"


@dataclass(frozen=True)
class RunRecord:
    """One sweep run as the ranking sees it.

    Args:
        id: run id.
        state: W&B / engine state (`finished`, `running`, `crashed`, `failed`, `killed`,
            `stopped`, ...); compared case-insensitively.
        config: the run's parameters, dotted config keys -> values.
        history: the metric's logged values, in order (may hold None / NaN).
        summary: the run summary (`val/hmean` may be a number or `{"max": x}`), used
            when there is no history.
        epochs: the epoch of each history entry; default its position.
        name: display name.
        run_dir: local output folder, where known.
    """

    id: str
    state: str
    config: Mapping[str, Any] = field(default_factory=dict)
    history: Sequence[Any] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    epochs: Sequence[int] | None = None
    name: str | None = None
    run_dir: str | None = None


@dataclass(frozen=True)
class RankedRun:
    run: RunRecord
    best: float
    epoch: int | None
    last: float | None


@dataclass(frozen=True)
class Ranking:
    """Ranked runs (best first) and the excluded ones by reason."""

    ranked: list[RankedRun]
    excluded: dict[str, list[str]]

    def counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.excluded.items()}

    @property
    def best(self) -> RankedRun | None:
        return self.ranked[0] if self.ranked else None


def _summary_best(summary: Mapping[str, Any], metric: str) -> float | None:
    v = summary.get(metric)
    if isinstance(v, Mapping):  # define_metric(summary="max") stores {"max": x}
        v = v.get("max", v.get("best"))
    return finite(v)


def run_best(run: RunRecord, metric: str = METRIC, goal: str = "maximize") -> RankedRun | None:
    """A run's best value and the epoch it was reached at (None: no finite value)."""
    found = best_in_history(run.history, goal)
    if found is not None:
        i, best = found
        epochs = list(run.epochs) if run.epochs is not None and len(run.epochs) == len(run.history) else None
        return RankedRun(run, best, epochs[i] if epochs else i, finite(run.history[-1]))
    best = _summary_best(run.summary, metric)
    return None if best is None else RankedRun(run, best, None, None)


def rank_key(best: float, epoch: int | None, run_id: str, goal: str = "maximize") -> tuple:
    """The sort key of a ranked run: best value first, then the earlier epoch, then the id."""
    return (-best if goal != "minimize" else best, math.inf if epoch is None else epoch, run_id)


def rank_runs(runs: Iterable[RunRecord], *, metric: str = METRIC, goal: str = "maximize") -> Ranking:
    """Rank finished runs by their best logged metric value.

    Excluded, by reason: every state other than finished (`crashed`, `failed`,
    `killed`, `running`, `stopped`, ...) and finished runs without a finite value
    (`no finite <metric>`, e.g. NaN).
    """
    ranked: list[RankedRun] = []
    excluded: dict[str, list[str]] = {}
    for run in runs:
        state = str(run.state or "unknown").lower()
        if state != FINISHED:
            excluded.setdefault(state, []).append(run.id)
            continue
        r = run_best(run, metric, goal)
        if r is None:
            excluded.setdefault(f"no finite {metric}", []).append(run.id)
            continue
        ranked.append(r)
    ranked.sort(key=lambda r: rank_key(r.best, r.epoch, r.run.id, goal))
    return Ranking(ranked, excluded)


_Run = TypeVar("_Run")


def order_runs(runs: Iterable[_Run], goal: str = "maximize") -> list[_Run]:
    """Runs of any state that have a finite best value (objects with `run_id`, `best` and
    `history`, such as the engine's `RunInfo`), in the order `rank_runs` would rank them:
    `hrnet_sweep status`, `clean` and the demo's progress lines show this order."""
    scored = []
    for r in runs:
        best = finite(r.best)
        if best is not None:
            found = best_in_history(r.history, goal)
            scored.append((rank_key(best, None if found is None else found[0], r.run_id, goal), r))
    return [r for _, r in sorted(scored, key=lambda kr: kr[0])]
