"""The run-folder protocol: the files through which a training run tells the sweep engine,
`kfold`, `best` and `status` how it is doing, each with one reader and one writer here.

A training run writes into its run folder (`outputs/<run name>/`) and, when
`HRNET_SWEEP_CONTROL_DIR` is set (the embedded sweep agent sets it), into that control
folder too:

* `metrics.jsonl`: one JSON object per validation epoch, appended as the epoch ends:
  `{"epoch": e, "step": s, "val/hmean": h, "val/precision": p, "val/recall": r, ...}`.
  Readers take complete lines only: a line cut by a kill, or one still being written, is
  not a row yet.
* `status.json`: written once, atomically, when the run ends: `{"state": "finished" |
  "failed" | "stopped" | "interrupted", "reason", "best", "best_epoch", "run_dir",
  "best_ckpt", "last_ckpt", "epochs"}`. No status.json means the run crashed (or runs).
* `STOP`: written by the sweep engine (Hyperband); the run stops cleanly at the next
  validation epoch end, saving `last.ckpt`.
* `folds.json`: the fold manifest of a fold-mode run (its format: `hrnet_sweep.folds`).

`best_in_history` is the one rule for "the best of a run's history": the largest finite
value (the smallest when minimising), ties to the earlier epoch, which reached it in
fewer epochs. Training's own summary, the sweep engine, the agent, `best`, `status`,
`kfold` and the demo all use it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from .files import atomic_write_json, atomic_write_text

__all__ = [
    "METRICS_FILE",
    "MANIFEST_FILE",
    "STATUS_FILE",
    "STOP_FILE",
    "HistoryTail",
    "append_history",
    "best_in_history",
    "best_row",
    "clear_status",
    "finite",
    "history_is_cut",
    "metric_values",
    "read_history",
    "read_status",
    "request_stop",
    "rewrite_history",
    "stop_requested",
    "write_status",
]

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
STOP_FILE = "STOP"
MANIFEST_FILE = "folds.json"


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


# ----------------------------------------------------------------------------- metrics.jsonl


def _rows(data: bytes) -> list[dict]:
    rows = []
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a foreign or damaged line: the others are still good
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_history(folder: str | os.PathLike) -> list[dict]:
    """The complete rows of `folder/metrics.jsonl`, in order ([] when there is none)."""
    try:
        data = (Path(folder) / METRICS_FILE).read_bytes()
    except OSError:  # missing, or damaged (a folder in its place, unreadable): no rows to trust
        return []
    return _rows(data[: data.rfind(b"\n") + 1])


def append_history(folder: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row (one validation epoch) to `folder/metrics.jsonl`."""
    with open(Path(folder) / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(dict(row)) + "\n")


def rewrite_history(folder: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace `folder/metrics.jsonl` with `rows`, atomically (a resumed run drops the rows of
    the epochs it is about to re-run, and a line cut by a kill with them)."""
    atomic_write_text(Path(folder) / METRICS_FILE, "".join(json.dumps(dict(r)) + "\n" for r in rows))


def history_is_cut(folder: str | os.PathLike) -> bool:
    """Whether `metrics.jsonl` ends in the middle of a line (a kill or a full disk)."""
    path = Path(folder) / METRICS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


class HistoryTail:
    """The new complete rows of a growing `metrics.jsonl`, read incrementally.

    Args:
        folder: the run or control folder.
        skip_existing: start after the rows already in the file (a resumed run).
    """

    def __init__(self, folder: str | os.PathLike, *, skip_existing: bool = False):
        self.path = Path(folder) / METRICS_FILE
        self.offset = 0
        if skip_existing:
            self.read()

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return _rows(data[:end])


def metric_values(rows: Iterable[Mapping[str, Any]], metric: str) -> list[float]:
    """The finite values of `metric` in `rows`, in order. Rows without one (or with NaN)
    are not values: W&B's Hyperband drops invalid values and counts the valid ones."""
    return [v for v in (finite(r.get(metric)) for r in rows) if v is not None]


def best_in_history(values: Sequence[Any], goal: str = "maximize") -> tuple[int, float] | None:
    """(position, value) of the best finite value, or None when there is none.

    The largest value (smallest when `goal` is "minimize"); ties go to the earlier
    position. Non-finite and non-numeric entries are skipped, not counted as values.
    """
    sign = -1.0 if goal == "minimize" else 1.0
    best: tuple[int, float] | None = None
    for i, raw in enumerate(values):
        v = finite(raw)
        if v is not None and (best is None or sign * v > sign * best[1]):
            best = (i, v)
    return best


def best_row(rows: Sequence[Mapping[str, Any]], metric: str, goal: str = "maximize") -> Mapping[str, Any] | None:
    """The row holding the best value of `metric` (see `best_in_history`), or None."""
    found = best_in_history([r.get(metric) for r in rows], goal)
    return None if found is None else rows[found[0]]


# ----------------------------------------------------------------------------- status.json


def read_status(folder: str | os.PathLike) -> dict | None:
    """A run's status.json, or None when it is missing or unreadable (a killed run)."""
    try:
        doc = json.loads((Path(folder) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_status(folder: str | os.PathLike, doc: Mapping[str, Any]) -> None:
    """Write a run's status.json atomically."""
    atomic_write_json(Path(folder) / STATUS_FILE, dict(doc), indent=2)


def clear_status(folder: str | os.PathLike) -> None:
    """Remove an old status.json before a run is (re)started: a run killed before it writes
    a new one must read as crashed, not as its previous state."""
    (Path(folder) / STATUS_FILE).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- STOP


def request_stop(folder: str | os.PathLike, why: Mapping[str, Any]) -> None:
    """Ask the run whose control folder this is to stop at its next validation epoch end."""
    atomic_write_json(Path(folder) / STOP_FILE, dict(why))


def stop_requested(folder: str | os.PathLike | None) -> bool:
    return folder is not None and (Path(folder) / STOP_FILE).exists()
