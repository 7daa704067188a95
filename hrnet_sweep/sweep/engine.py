"""Embedded sweep engine: W&B sweep semantics on an Optuna study kept in a journal file.

A local sweep is one folder (default `outputs/sweeps/<sweep_id>/`):

    sweep.yaml        the sweep file, copied verbatim (the spec of record)
    sweep.json        id, creation time, method, metric, run cap, sampler
    optuna.journal    Optuna `JournalFileBackend`: append-only, fsync'd, replayed on open,
                      so the state survives a crash and several agents share it
    engine.lock       `flock` held while a run is suggested (run cap, grid, dead runs)
    runs/<run_id>/    control dir of each run: metrics.jsonl, status.json, STOP,
                      heartbeat, output.log (the run-control contract, ARCHITECTURE.md)
    wandb/sweep-<id>/ `WANDB_SWEEP_PARAM_PATH` files, where `wandb agent` puts them
    agents/           one log per agent (launcher)

Each run is one Optuna trial. Its record lives in three trial user attributes, written
once each so the journal stays small: `run` (run id, params, agent, start time),
`stop` (the Hyperband decision, when one was made) and `outcome` (state, reason, exit
code, end time, run dir, checkpoints). Metric values are the trial's intermediate
values, step = position in the run's history (W&B's Hyperband counts logged values).

State mapping: running = RUNNING, finished = COMPLETE (value = best metric), stopped =
PRUNED (Optuna then uses the last reported value), failed / crashed = FAIL with
`outcome.state` telling them apart.

Parts: the search space and sampler (`_space`), the run records and their files
(`_records`), whether an agent is still alive (`_liveness`); all re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..files import atomic_write_json, atomic_write_text, read_json
from ..numeric import number_problem
from ..runfolder import best_in_history, read_status
from ._liveness import agent_identity, boot_id, pid_alive
from ._records import RunInfo, RunOutcome, Suggestion, checkpoint_files, delete_files
from ._space import SearchSpace, build_search_space, make_sampler
from ._validate import validate_sweep
from .spec import SweepSpec
from .sweepfile import read_sweep_doc

__all__ = [
    "DEFAULT_SWEEPS_ROOT",
    "LocalSweep",
    "RunInfo",
    "RunOutcome",
    "SearchSpace",
    "Suggestion",
    "agent_identity",
    "build_search_space",
    "checkpoint_files",
    "delete_files",
    "make_sampler",
    "new_id",
    "resolve_sweep_dir",
]

DEFAULT_SWEEPS_ROOT = Path("outputs") / "sweeps"
STALE_AFTER_S = 300.0
"""A running run whose agent is on another host counts as crashed when its heartbeat
file is older than this (same host: checked exactly, by pid, start time and boot id)."""
JOURNAL_FILE = "optuna.journal"
GRID_CRASH_RETRIES = 1
"""A grid point whose run crashed (machine stop, OOM kill) is run again this many times."""

_ID_CHARS = string.ascii_lowercase + string.digits  # W&B's run and sweep id alphabet


def new_id(taken: Callable[[str], bool] = lambda _: False, length: int = 8) -> str:
    """A W&B-style id: 8 base-36 characters, not `taken`."""
    while True:
        candidate = "".join(secrets.choice(_ID_CHARS) for _ in range(length))
        if not taken(candidate):
            return candidate


# ----------------------------------------------------------------------------- the sweep


def resolve_sweep_dir(ref: str | os.PathLike, sweeps_root: str | os.PathLike = DEFAULT_SWEEPS_ROOT) -> Path:
    """A sweep folder from a path or a sweep id (looked up under `sweeps_root`)."""
    p = Path(ref).expanduser()
    for cand in (p, Path(sweeps_root) / str(ref)):
        if (cand / "sweep.json").is_file():
            return cand
    raise UserError(
        f"no local sweep at {p} or {Path(sweeps_root) / str(ref)} (a sweep folder holds sweep.json); "
        f"list them with: ls {sweeps_root}"
    )


def _read_meta(root: Path) -> dict:
    """`sweep.json`, checked: a JSON object with a string `sweep_id` and a whole `run_cap`."""
    path = root / "sweep.json"
    meta = read_json(path)  # missing, not UTF-8, not JSON: a DataError naming the file
    if not isinstance(meta, dict):
        raise UserError(f"sweep folder {root}: {path.name} must be a JSON object, found {type(meta).__name__}")
    sweep_id, cap = meta.get("sweep_id"), meta.get("run_cap")
    if not isinstance(sweep_id, str) or not sweep_id:
        raise UserError(f"sweep folder {root}: {path.name} has no sweep_id string (got {sweep_id!r})")
    if cap is not None and (number_problem(cap, int) is not None or cap < 1):
        raise UserError(f"sweep folder {root}: {path.name} run_cap={cap!r} must be an integer >= 1 or null")
    return meta


class LocalSweep:
    """A sweep on the embedded engine. Safe to open from several processes at once."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.meta = _read_meta(self.root)
        self.sweep_id: str = self.meta["sweep_id"]
        # The copy was validated against the config when the sweep was created; skip the
        # (slow: imports timm) value check on every open.
        doc, lines = read_sweep_doc(self.root / "sweep.yaml")
        spec, errors = validate_sweep(doc, str(self.root / "sweep.yaml"), lines=lines, check_values=False)
        if spec is None:
            raise UserError(f"{self.root / 'sweep.yaml'}: " + "; ".join(m for _, m in errors))
        self.spec: SweepSpec = spec
        self.run_cap: int | None = self.meta.get("run_cap")
        self.space = build_search_space(spec)
        self._open_study()

    def _open_study(self) -> None:
        """The Optuna study in `optuna.journal`; a missing or damaged journal is a UserError
        naming the folder (never an empty journal created in its place)."""
        journal = self.root / JOURNAL_FILE
        if not journal.is_file():
            raise UserError(
                f"sweep folder {self.root}: {JOURNAL_FILE} is missing (or not a file); it holds every "
                "run of the sweep and cannot be rebuilt: restore it from a backup, or start a new sweep"
            )
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        sampler = make_sampler(self.spec, self.space, sweep_id=self.sweep_id, run_cap=self.run_cap)
        try:
            self.storage = JournalStorage(JournalFileBackend(str(journal)))  # replays the whole journal
            names = {s.study_name for s in self.storage.get_all_studies()}
        except Exception as err:  # a damaged line makes Optuna's replay raise anything (KeyError, TypeError, ...)
            raise UserError(
                f"sweep folder {self.root}: {JOURNAL_FILE} is damaged and cannot be replayed "
                f"({type(err).__name__}: {err})"
            ) from None
        if self.sweep_id not in names:
            raise UserError(
                f"sweep folder {self.root}: {JOURNAL_FILE} holds no study {self.sweep_id!r} (the id in "
                "sweep.json); the journal is empty, damaged, or belongs to another sweep"
            )
        self.study = optuna.load_study(study_name=self.sweep_id, storage=self.storage, sampler=sampler)
        self.study_id = self.storage.get_study_id_from_name(self.sweep_id)

    # -- creation

    @classmethod
    def create(
        cls,
        spec_path: str | os.PathLike,
        *,
        sweeps_root: str | os.PathLike = DEFAULT_SWEEPS_ROOT,
        sweep_dir: str | os.PathLike | None = None,
        run_cap: int | None = None,
    ) -> LocalSweep:
        """Validate a sweep YAML and create its folder and study; return the opened sweep."""
        from .check import load_checked

        spec = load_checked(spec_path)
        space = build_search_space(spec)  # rejects what the engine cannot run, before any file
        if run_cap is not None and run_cap < 1:
            raise UserError(f"run cap {run_cap} must be >= 1")
        if sweep_dir is not None:
            root = Path(sweep_dir)
            sweep_id = new_id() if root.name in ("", ".") else root.name
            if root.exists() and any(root.iterdir()):
                raise UserError(
                    f"sweep folder {root} exists and is not empty; resume it with --resume {root}, "
                    "or choose another --sweep-dir"
                )
        else:
            sweep_id = new_id(lambda s: (Path(sweeps_root) / s).exists())
            root = Path(sweeps_root) / sweep_id
        root.mkdir(parents=True, exist_ok=True)
        (root / "runs").mkdir(exist_ok=True)
        atomic_write_text(root / "sweep.yaml", Path(spec_path).read_text(encoding="utf-8"))
        cap = run_cap if run_cap is not None else spec.run_cap
        sampler = make_sampler(spec, space, sweep_id=sweep_id, run_cap=cap)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        storage = JournalStorage(JournalFileBackend(str(root / JOURNAL_FILE)))
        direction = "maximize" if spec.metric_goal == "maximize" else "minimize"
        optuna.create_study(study_name=sweep_id, storage=storage, direction=direction, sampler=sampler)
        atomic_write_json(
            root / "sweep.json",
            {
                "sweep_id": sweep_id,
                "name": spec.name,
                "source": str(Path(spec_path).resolve()),
                "created_at": time.time(),
                "method": spec.method,
                "metric": spec.metric_name,
                "goal": spec.metric_goal,
                "run_cap": cap,
                "sampler": type(sampler).__name__,
                "optuna": optuna.__version__,
                "study": sweep_id,
                "journal": JOURNAL_FILE,
            },
            indent=2,
        )
        return cls(root)

    @classmethod
    def open(cls, ref: str | os.PathLike, *, sweeps_root: str | os.PathLike = DEFAULT_SWEEPS_ROOT) -> LocalSweep:
        return cls(resolve_sweep_dir(ref, sweeps_root))

    # -- helpers

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise suggestions across agents (and hosts on a shared filesystem).

        The journal itself is safe for concurrent appends; this lock makes "count runs,
        check the cap, pick a grid point, ask" one atomic step, so two agents that start
        at the same instant never get the same grid point or exceed the run cap.
        """
        with open(self.root / "engine.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _trials(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def control_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def param_path(self, run_id: str) -> Path:
        """Where `wandb agent` writes WANDB_SWEEP_PARAM_PATH: $WANDB_DIR/wandb/sweep-<id>/config-<run>.yaml."""
        return self.root / "wandb" / f"sweep-{self.sweep_id}" / f"config-{run_id}.yaml"

    @staticmethod
    def _state(t: FrozenTrial) -> str:
        if t.state == TrialState.RUNNING:
            return "running"
        if t.state == TrialState.COMPLETE:
            return "finished"
        if t.state == TrialState.PRUNED:
            return "stopped"
        if t.state == TrialState.FAIL:
            return (t.user_attrs.get("outcome") or {}).get("state", "crashed")
        return "queued"

    # -- suggesting runs

    def _grid_todo(self, trials: Sequence[FrozenTrial]) -> list[tuple]:
        """Grid points still to run: never run, or only crashed (up to the retry limit)."""
        assert self.space.grid is not None
        names = list(self.space.grid)
        done: set[tuple] = set()
        crashed: dict[tuple, int] = {}
        for t in trials:
            if not all(n in t.params for n in names):
                continue
            point = tuple(t.params[n] for n in names)
            if t.state == TrialState.WAITING or self._state(t) != "crashed":
                done.add(point)
            else:
                crashed[point] = crashed.get(point, 0) + 1
        done |= {p for p, n in crashed.items() if n > GRID_CRASH_RETRIES}
        return [p for p in self.space.grid_points() if p not in done]

    def exhausted(self) -> str | None:
        """Why no further run will be suggested (run cap reached, grid done), or None."""
        trials = [t for t in self._trials() if t.state != TrialState.WAITING]
        if self.run_cap is not None and len(trials) >= self.run_cap:
            return f"run cap {self.run_cap} reached"
        if self.space.grid is not None and not self._grid_todo(trials):
            return f"grid of {len(self.space.grid_points())} points done"
        return None

    def suggest(self, *, agent: str = "") -> Suggestion | None:
        """Start a run: parameters from the sampler, a new run id, a control dir.

        Returns None when the sweep is done (run cap reached or grid exhausted).
        """
        with self._lock():
            self._reap_dead_runs()
            if self.exhausted():
                return None
            trials = self._trials()
            if self.space.grid is not None and len(trials) >= len(self.space.grid_points()):
                # GridSampler hands out each point once, by trial number; a crashed point is
                # queued again explicitly (GridSampler would otherwise pick a random repeat).
                point = self._grid_todo(trials)[0]
                self.study.enqueue_trial(dict(zip(self.space.grid, point)))
            trial = self.study.ask(self.space.distributions)
            taken = {(t.user_attrs.get("run") or {}).get("run_id") for t in trials}
            run_id = new_id(lambda r: r in taken or self.control_dir(r).exists())
            control = self.control_dir(run_id)
            control.mkdir(parents=True)
            (control / "heartbeat").touch()
            params = self.space.decode(trial.params)
            trial.set_user_attr(
                "run",
                {
                    "run_id": run_id,
                    "params": params,
                    "started_at": time.time(),
                    "control_dir": str(control),
                    **agent_identity(agent),
                },
            )
            return Suggestion(run_id, trial.number, params, control)

    # -- during a run

    def report(self, number: int, values: Sequence[float], start_step: int) -> None:
        """Record metric values `start_step, start_step+1, ...` of a run."""
        trial_id = self._trial_id(number)
        for i, v in enumerate(values):
            self.storage.set_trial_intermediate_value(trial_id, start_step + i, float(v))

    def record_stop(self, number: int, decision: Mapping[str, Any]) -> None:
        """Record the Hyperband decision that stopped a run."""
        self._set_attr(number, "stop", {**decision, "at": time.time()})

    def _set_attr(self, number: int, key: str, value: Any) -> bool:
        try:
            self.storage.set_trial_user_attr(self._trial_id(number), key, value)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # already closed, e.g. marked crashed by another agent

    def finish(self, number: int, outcome: RunOutcome) -> bool:
        """Close a run; returns False when it was already closed elsewhere."""
        doc = {**asdict(outcome), "ended_at": time.time()}
        if not self._set_attr(number, "outcome", doc):
            return False
        if outcome.state == "finished":
            self.study.tell(number, outcome.value, skip_if_finished=True)
        elif outcome.state == "stopped":
            self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        return True

    # -- dead agents

    def _agent_alive(self, t: FrozenTrial, now: float, stale_after_s: float) -> bool:
        run = t.user_attrs.get("run")
        if not run:
            return False  # its agent died between asking and recording (both happen under the lock)
        if run.get("host") == socket.gethostname():
            boot = boot_id()
            if run.get("boot_id") and boot and run["boot_id"] != boot:
                return False  # the machine restarted since
            return pid_alive(int(run["pid"]), run.get("pid_start"))
        beat = Path(run["control_dir"]) / "heartbeat"
        last = beat.stat().st_mtime if beat.exists() else run.get("started_at", 0)
        return now - last < stale_after_s

    def _reap_dead_runs(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        now, reaped = time.time(), []
        for t in self._trials():
            if t.state != TrialState.RUNNING or self._agent_alive(t, now, stale_after_s):
                continue
            run = t.user_attrs.get("run") or {}
            status = read_status(Path(run["control_dir"])) if run else None
            reason = f"its agent ({run.get('agent', '?')}) is gone" if run else "its agent died while starting it"
            outcome = RunOutcome("crashed", reason=reason, run_dir=(status or {}).get("run_dir"))
            if self.finish(t.number, outcome):
                reaped.append(run.get("run_id", f"trial {t.number}"))
        return reaped

    def reap_dead_runs(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Mark runs whose agent is gone as crashed; return their run ids."""
        with self._lock():
            return self._reap_dead_runs(stale_after_s)

    # -- reading

    def runs(self) -> list[RunInfo]:
        """Every run, in start order."""
        goal = self.spec.metric_goal
        out = []
        for t in self._trials():
            run = t.user_attrs.get("run")
            if t.state == TrialState.WAITING:
                continue
            run = run or {}
            outcome = t.user_attrs.get("outcome") or {}
            history = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
            state = self._state(t)
            found = best_in_history(history, goal)
            best = t.value if state == "finished" else None if found is None else found[1]
            run_dir = outcome.get("run_dir")
            out.append(
                RunInfo(
                    run_id=run.get("run_id", f"trial-{t.number}"),
                    number=t.number,
                    state=state,
                    params=run.get("params") or self.space.decode(t.params),
                    history=history,
                    best=best,
                    started_at=run.get("started_at"),
                    ended_at=outcome.get("ended_at"),
                    exit_code=outcome.get("exit_code"),
                    reason=outcome.get("reason"),
                    stop=t.user_attrs.get("stop"),
                    run_dir=run_dir,
                    control_dir=run.get("control_dir", ""),
                    agent={k: run.get(k) for k in ("agent", "host", "pid")},
                    outcome=outcome,
                )
            )
        return out
