"""A local sweep's runs as the ranking sees them: one home for the records that `hrnet_sweep
best` and `hrnet_sweep dashboard` rank, so the two always name the same winner.

Each run's metric history comes from the engine (one value per validation epoch); the
epoch of each value from the run's `metrics.jsonl` (`runfolder`), which is what breaks a
tie (the run that reached the value at the earlier epoch wins, then the smaller run id:
`ranking.rank_runs`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..constants import METRIC
from ..ranking import RankedRun, RunRecord, rank_runs
from ..runfolder import finite, read_history
from ._records import RunInfo

__all__ = ["run_epochs", "run_records", "winner"]


def run_epochs(control_dir: str | None, n: int) -> list[int] | None:
    """The epoch of each of a local run's `n` metric values (None unless they line up)."""
    if not control_dir:
        return None
    epochs = [r.get("epoch") for r in read_history(control_dir) if finite(r.get(METRIC)) is not None]
    return epochs if len(epochs) == n and all(isinstance(e, int) for e in epochs) else None


def run_records(runs: Sequence[RunInfo]) -> list[RunRecord]:
    """The engine's runs as `ranking.RunRecord`s (parameters, history, epochs, run folder)."""
    return [
        RunRecord(
            id=r.run_id,
            state=r.state,
            config=dict(r.params),
            history=list(r.history),
            epochs=run_epochs(r.control_dir, len(r.history)),
            run_dir=r.run_dir,
        )
        for r in runs
    ]


def winner(runs: Sequence[RunInfo], goal: str = "maximize") -> RankedRun | None:
    """The run `hrnet_sweep best` picks: the best finished run by `ranking.rank_runs`."""
    return rank_runs(run_records(runs), goal=goal).best
