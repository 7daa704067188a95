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

Files read back are checked for shape (`read_status(strict=True)`, `read_history(strict=True)`:
a key of the wrong type is a `DataError` naming the file and the key); appends never
follow a link planted in the folder (`files.open_append`); `previous_run` says what a
folder already holds, so a finished run is never overwritten by a new one of its name.

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

from .errors import DataError
from .files import atomic_write_json, atomic_write_text, open_append

__all__ = [
    "METRICS_FILE",
    "MANIFEST_FILE",
    "STATUS_FILE",
    "STATES",
    "RESUME_ENV",
    "STOP_FILE",
    "USER_STOP",
    "HistoryTail",
    "append_history",
    "best_in_history",
    "best_row",
    "clear_status",
    "finite",
    "history_is_cut",
    "metric_values",
    "previous_run",
    "read_history",
    "read_status",
    "request_stop",
    "rewrite_history",
    "status_problem",
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


_READ_LIMIT = 64 << 20  # a metrics.jsonl holds a row per epoch; more than this is no history of ours


def _row_problem(row: Any) -> str | None:
    """Why a parsed metrics.jsonl line is no row of ours (the key and its value), or None."""
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not an object"
    epoch = row.get("epoch")
    if "epoch" in row and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        return f"key epoch is {epoch!r}, not an epoch number"
    for key in ("step",):
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            return f"key {key} is {v!r}, not an integer"
    for key, v in row.items():
        if key.startswith("val/") and v is not None and (isinstance(v, bool) or not isinstance(v, Real)):
            return f"key {key} is {v!r}, not a number"
    return None


def _rows(data: bytes, path: Path | None = None) -> list[dict]:
    """The rows of complete lines; with `path` (strict), a line of the wrong shape is a
    `DataError` naming the file, the line and the key; without, it is skipped."""
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            if path is not None and line.strip():
                raise DataError(f"{path}: line {n} is not JSON") from None
            continue  # a foreign or damaged line: the others are still good
        problem = _row_problem(row)
        if problem is None:
            rows.append(row)
        elif path is not None:
            raise DataError(f"{path}: line {n}: {problem}")
    return rows


def read_history(folder: str | os.PathLike, *, strict: bool = False) -> list[dict]:
    """The complete rows of `folder/metrics.jsonl`, in order ([] when there is none).

    Rows of the wrong shape (an epoch that is no number, a metric that is text) are
    skipped; with `strict` (a run about to be resumed) they are a `DataError` naming the
    file, the line and the key.
    """
    path = Path(folder) / METRICS_FILE
    try:
        with open(path, "rb") as fh:
            data = fh.read(_READ_LIMIT + 1)
    except OSError:  # missing, or damaged (a folder in its place, unreadable): no rows to trust
        return []
    if len(data) > _READ_LIMIT:
        if strict:
            raise DataError(f"{path}: larger than {_READ_LIMIT >> 20} MiB; not a metrics history of ours")
        data = data[:_READ_LIMIT]
    return _rows(data[: data.rfind(b"\n") + 1], path if strict else None)


def append_history(folder: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row (one validation epoch) to `folder/metrics.jsonl`."""
    with open_append(Path(folder) / METRICS_FILE, "metrics history") as fh:
        fh.write((json.dumps(dict(row)) + "\n").encode("utf-8"))


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
                data = fh.read(_READ_LIMIT)  # bounded: a run that writes more is read over several calls
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


STATES = ("finished", "failed", "stopped", "interrupted")
RESUME_ENV = "HRNET_SWEEP_RESUME"
"""Set (to `auto`) by the sweep agent when it runs a run stopped by the user again: the
training continues from the run folder's `last.ckpt` (`resume_from_checkpoint=auto`)
instead of refusing a folder that holds a run."""
USER_STOP = "stopped by the user"
"""The reason of a run that a signal stopped (SIGTERM, Ctrl-C, the launcher's or an agent's
stop): status.json says `interrupted` with it, the sweep engine records the run `crashed`
with it and runs the point again from its `last.ckpt`."""
_STATUS_KEYS: dict[str, tuple[type, ...]] = {
    "reason": (str,),
    "best": (Real,),
    "best_epoch": (int,),
    "run_dir": (str,),
    "best_ckpt": (str,),
    "last_ckpt": (str,),
    "epochs": (int,),
}


def status_problem(doc: Any) -> str | None:
    """Why a parsed status.json is not one we write (the key and its value), or None."""
    if not isinstance(doc, dict):
        return f"a {type(doc).__name__}, not an object"
    if doc.get("state") not in STATES:
        return f"key state is {doc.get('state')!r}; expected one of {', '.join(STATES)}"
    for key, kinds in _STATUS_KEYS.items():
        v = doc.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, kinds) or (key == "best" and finite(v) is None):
            return f"key {key} is {v!r}, not {'a finite number' if key == 'best' else kinds[0].__name__}"
    return None


def read_status(folder: str | os.PathLike, *, strict: bool = False) -> dict | None:
    """A run's status.json, or None when it is missing or unreadable (a killed run).

    A file of the wrong shape (not an object, an unknown state, a key of the wrong type)
    reads as None too, the run's state being unknown; with `strict` it is a `DataError`
    naming the file and the key.
    """
    path = Path(folder) / STATUS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        if strict and path.exists():
            raise DataError(f"{path}: unreadable status ({type(err).__name__}: {err})") from None
        return None
    problem = status_problem(doc)
    if problem is None:
        return doc
    if strict:
        raise DataError(f"{path}: {problem}")
    return None


def previous_run(folder: str | os.PathLike) -> str | None:
    """What `folder` holds of a completed run (finished, or stopped by the sweep engine),
    in words, or None: such a folder is never the folder of a new run."""
    doc = read_status(folder)
    if not doc or doc.get("state") not in ("finished", "stopped"):
        return None
    best = finite(doc.get("best"))
    rows = len(read_history(folder))
    return (
        f"a {doc['state']} run (status.json"
        + (f", best {best:.4f} at epoch {doc.get('best_epoch')}" if best is not None else "")
        + f"; {rows} epoch(s) in {METRICS_FILE})"
    )


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
