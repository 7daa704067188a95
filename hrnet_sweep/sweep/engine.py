"""Embedded sweep engine: W&B sweep semantics on an Optuna study.

A local sweep lives in a folder (the default, `outputs/sweeps/<sweep_id>/`) or in a
PostgreSQL database (`--storage postgresql://user@host/db`); `storage` holds both
(`FolderStore`, `_database.DatabaseStore`) behind one interface, and nothing above this
module knows which one a sweep uses. The folder:

    sweep.yaml        the sweep file, copied verbatim (the spec of record)
    sweep.json        id, creation time, method, metric, run cap, sampler
    optuna.journal    Optuna `JournalFileBackend`: append-only, fsync'd, replayed on open,
                      so the state survives a crash and several agents share it
    engine.lock       `flock` held while a run is suggested (run cap, grid, dead runs)
    runs/<run_id>/    control dir of each run: metrics.jsonl, status.json, STOP,
                      heartbeat, output.log (the run-control contract, ARCHITECTURE.md)
    wandb/sweep-<id>/ `WANDB_SWEEP_PARAM_PATH` files, where `wandb agent` puts them
    agents/           one log per agent (launcher)

With a database, the spec, metadata, runs, lock and heartbeats are in the database, and
each machine keeps `runs/`, `wandb/` and `agents/` in its own folder of the sweep; a run
record names the host and the folder of its files.

Each run is one Optuna trial. Its record lives in three trial user attributes, written
once each so the study stays small: `run` (run id, params, agent, host, start time,
control dir), `stop` (the Hyperband decision, when one was made) and `outcome` (state,
reason, exit code, end time, run dir, checkpoints). Metric values are the trial's
intermediate values, step = position in the run's history (W&B's Hyperband counts
logged values).

State mapping: running = RUNNING, finished = COMPLETE (value = best metric), stopped =
PRUNED (Optuna then uses the last reported value), failed / crashed = FAIL with
`outcome.state` telling them apart.

A run stopped by the user (SIGTERM, Ctrl-C, the launcher's stop: `crashed` with reason
`runfolder.USER_STOP`) is not over: the next agent on its machine continues it as a new
trial with the same parameters, run id and folder (`run.continues` names the old trial;
the training resumes from its last.ckpt), before any new run. The old trial is no longer
listed by `runs()`, and the pair counts once against the run cap.

Parts: the search space and sampler (`_space`), the run records and their files
(`_records`), where the sweep lives and whether an agent is still alive (`storage`,
`_database`, `_liveness`); the public names are re-exported here.
"""

from __future__ import annotations

import argparse
import os
import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..files import child_path
from ..runfolder import USER_STOP, best_in_history, read_status
from ._liveness import agent_identity
from ._records import RunInfo, RunOutcome, Suggestion, checkpoint_files, delete_files
from ._space import SearchSpace, build_search_space, make_sampler
from ._validate import validate_sweep
from .spec import SweepSpec
from .storage import JOURNAL_FILE, STALE_AFTER_S, SweepStore, create_store, is_database_url, open_store

__all__ = [
    "DEFAULT_SWEEPS_ROOT",
    "JOURNAL_FILE",
    "STALE_AFTER_S",
    "LocalSweep",
    "RunInfo",
    "RunOutcome",
    "SearchSpace",
    "Suggestion",
    "agent_identity",
    "build_search_space",
    "checkpoint_files",
    "add_sweep_flags",
    "delete_files",
    "make_sampler",
    "open_sweep",
    "new_id",
    "resolve_sweep_dir",
]

DEFAULT_SWEEPS_ROOT = Path("outputs") / "sweeps"
STORAGE_HELP = (
    "the database of a sweep across machines (postgresql://user@host/db; the password from PGPASSWORD "
    "or ~/.pgpass); SWEEP is then its id"
)


def add_sweep_flags(ap: argparse.ArgumentParser) -> None:
    """The flags every command that opens an existing sweep takes (`--storage`, `--sweep-dir`,
    `--sweeps-root`); `open_sweep` reads them back."""
    ap.add_argument("--storage", metavar="URL", help=STORAGE_HELP)
    ap.add_argument(
        "--sweep-dir", help="with --storage: this machine's folder of the sweep (default <sweeps-root>/<id>)"
    )
    ap.add_argument("--sweeps-root", default=str(DEFAULT_SWEEPS_ROOT), help="where local sweep ids are looked up")


def open_sweep(args: argparse.Namespace) -> LocalSweep:
    """The sweep named by a command's `sweep` argument and `add_sweep_flags`' flags."""
    if args.sweep is None:
        raise UserError("give the sweep: a sweep folder or local sweep id (with --storage URL: the sweep id)")
    return LocalSweep.open(args.sweep, sweeps_root=args.sweeps_root, storage=args.storage, sweep_dir=args.sweep_dir)


GRID_CRASH_RETRIES = 1
"""A grid point whose run crashed (machine stop, OOM kill) is run again this many times."""

_ID_CHARS = string.ascii_lowercase + string.digits  # W&B's run and sweep id alphabet


def new_id(taken: Callable[[str], bool] = lambda _: False, length: int = 8) -> str:
    """A W&B-style id: 8 base-36 characters, not `taken`."""
    while True:
        candidate = "".join(secrets.choice(_ID_CHARS) for _ in range(length))
        if not taken(candidate):
            return candidate


# ----------------------------------------------------------------------------- runs stopped by the user


def _user_stopped(t: FrozenTrial) -> bool:
    """A run stopped by SIGTERM / Ctrl-C (the agent records it `crashed` with `USER_STOP`):
    it continues from its last.ckpt as a new trial of the same run id, and counts once
    against the run cap."""
    outcome = t.user_attrs.get("outcome") or {}
    return t.state == TrialState.FAIL and outcome.get("state") == "crashed" and outcome.get("reason") == USER_STOP


def _continued(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a later trial continues (`run.continues`)."""
    return {n for t in trials if isinstance(n := (t.user_attrs.get("run") or {}).get("continues"), int)}


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


class LocalSweep:
    """A sweep on the embedded engine. Safe to open from several processes (and, with a
    database, several machines) at once."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        storage: optuna.storages.BaseStorage | str | None = None,
        sampler_seed: int | None = None,
        sweep_id: str | None = None,
    ):
        """Open the sweep in folder `root`.

        Args:
            root: the sweep folder; with a database, this machine's folder of the sweep
                (its runs' control dirs), made when missing.
            storage: where the study lives: None, the folder's `optuna.journal`; an
                Optuna storage object (the replay, `sweep.replay`, passes an in-memory
                one shared by its simulated agents, so that they run this class's code
                unchanged), the metadata staying in the folder; or a PostgreSQL URL,
                where the whole sweep lives.
            sampler_seed: seed of this process's sampler (default: unseeded, as agents run).
            sweep_id: with a database URL, the sweep's id (default: the folder's name).
        """
        self._init(open_store(root, storage, sweep_id=sweep_id), storage, sampler_seed)

    def _init(self, store: SweepStore, storage: Any, sampler_seed: int | None) -> None:
        self._store, self._storage_arg, self._sampler_seed = store, storage, sampler_seed
        self.root: Path = store.root
        self.meta: dict = store.meta
        self.sweep_id: str = store.sweep_id
        # The copy was validated against the config when the sweep was created; skip the
        # (slow: imports timm) value check on every open.
        doc, lines, source = store.sweep_doc()
        spec, errors = validate_sweep(doc, source, lines=lines, check_values=False)
        if spec is None:
            raise UserError(f"{source}: " + "; ".join(m for _, m in errors))
        self.spec: SweepSpec = spec
        self.run_cap: int | None = self.meta.get("run_cap")
        self.space = build_search_space(spec)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        sampler = make_sampler(spec, self.space, sweep_id=self.sweep_id, run_cap=self.run_cap, seed=sampler_seed)
        self.storage = store.storage
        self.study = optuna.load_study(study_name=self.sweep_id, storage=self.storage, sampler=sampler)
        self.study_id = self.storage.get_study_id_from_name(self.sweep_id)

    @classmethod
    def _from_store(cls, store: SweepStore, storage: Any, sampler_seed: int | None) -> LocalSweep:
        sweep = cls.__new__(cls)
        sweep._init(store, storage, sampler_seed)
        return sweep

    # -- creation

    @classmethod
    def create(
        cls,
        spec_path: str | os.PathLike,
        *,
        sweeps_root: str | os.PathLike = DEFAULT_SWEEPS_ROOT,
        sweep_dir: str | os.PathLike | None = None,
        run_cap: int | None = None,
        storage: optuna.storages.BaseStorage | str | None = None,
        sampler_seed: int | None = None,
        heartbeat_s: float | None = None,
        grace_s: float | None = None,
    ) -> LocalSweep:
        """Validate a sweep YAML and create its folder and study; return the opened sweep.

        `storage`, `sampler_seed`: as for `LocalSweep`. With a database, `heartbeat_s` and
        `grace_s` set how often a running run's agent beats and after how long without a
        beat it counts as dead (defaults `_database.HEARTBEAT_S`, `GRACE_S`).
        """
        from .check import load_checked

        database = is_database_url(storage)
        if database:
            from ._database import DatabaseURL

            DatabaseURL(storage)  # a bad URL fails before the sweep file is even read
        spec = load_checked(spec_path)
        space = build_search_space(spec)  # rejects what the engine cannot run, before any file
        if run_cap is not None and run_cap < 1:
            raise UserError(f"run cap {run_cap} must be >= 1")
        if heartbeat_s is not None and grace_s is not None and not 0 < 2 * heartbeat_s <= grace_s:
            raise UserError(f"heartbeat every {heartbeat_s} s needs a grace of at least twice that (got {grace_s} s)")
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
        cap = run_cap if run_cap is not None else spec.run_cap
        sampler = make_sampler(spec, space, sweep_id=sweep_id, run_cap=cap)
        meta = {
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
        }
        if database:
            meta.update(heartbeat_s=heartbeat_s, grace_s=grace_s)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        direction = "maximize" if spec.metric_goal == "maximize" else "minimize"
        text = Path(spec_path).read_text(encoding="utf-8")
        store = create_store(root, meta, text, direction, storage)
        return cls._from_store(store, storage, sampler_seed)

    @classmethod
    def open(
        cls,
        ref: str | os.PathLike,
        *,
        sweeps_root: str | os.PathLike = DEFAULT_SWEEPS_ROOT,
        storage: str | None = None,
        sweep_dir: str | os.PathLike | None = None,
    ) -> LocalSweep:
        """A sweep by folder or id; with a database URL `storage`, `ref` is the sweep id (or
        this machine's folder of it) and `sweep_dir` this machine's folder (default
        `<sweeps_root>/<id>`)."""
        if storage is None:
            return cls(resolve_sweep_dir(ref, sweeps_root))
        if not is_database_url(storage):
            raise UserError(f"--storage {storage!r} is not a database URL (e.g. postgresql://user@host/db)")
        text = str(ref)
        if sweep_dir is not None:
            return cls(sweep_dir, storage=storage, sweep_id=Path(text).name)
        if os.sep in text:  # a folder of the sweep on this machine: its name is the id
            return cls(text, storage=storage, sweep_id=Path(text).name)
        return cls(Path(sweeps_root) / text, storage=storage, sweep_id=text)

    def reopen(self) -> LocalSweep:
        """The same sweep opened afresh (metadata and sampler read again)."""
        if is_database_url(self._storage_arg):
            self.close()
        return LocalSweep(self.root, storage=self._storage_arg, sampler_seed=self._sampler_seed, sweep_id=self.sweep_id)

    def close(self) -> None:
        """Stop this process's heartbeats and close its database connections, if any."""
        self._store.close()

    # -- where it lives

    @property
    def location(self) -> str:
        """The folder, or the database URL without its password: for messages."""
        return self._store.location

    @property
    def in_database(self) -> bool:
        return self._store.kind == "database"

    def agent_args(self) -> tuple[str, list[str], dict[str, str]]:
        """How another agent process joins: (positional argument, flags, extra environment)."""
        return self._store.agent_args()

    def ref_args(self) -> list[str]:
        """How a command names this sweep (`hrnet_sweep status <ref_args>`, `sweep --resume
        <ref_args>`): its folder, or its id and the URL without the password."""
        return self._store.ref_args()

    def private_env(self) -> tuple[str, ...]:
        """Environment variables carrying the sweep's credentials, which runs never get."""
        return self._store.private_env()

    def is_here(self, run: RunInfo) -> bool:
        """Are the run's files on this machine's disk (always, for a folder sweep)?"""
        return self._store.is_here(run.agent)

    def set_run_cap(self, cap: int | None) -> None:
        """Change the run cap of the sweep (`sweep --resume --run-cap N`); reopen to use it."""
        if cap is not None and cap < 1:
            raise UserError(f"run cap {cap} must be >= 1")

        def change() -> None:
            with self._store.lock():
                self._store.set_run_cap(cap)

        self._store.retrying(change)

    # -- helpers

    def _trials(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def control_dir(self, run_id: str) -> Path:
        """`runs/<run_id>/`; a run id read back from the journal or the database never
        leads outside the sweep folder (`files.child_path`)."""
        return child_path(self.root / "runs", run_id, what="run id")

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
        return self._store.retrying(self._exhausted)

    def _exhausted(self, trials: Sequence[FrozenTrial] | None = None) -> str | None:
        trials = [t for t in (self._trials() if trials is None else trials) if t.state != TrialState.WAITING]
        # a run the user stopped continues as a later trial of the same run id: one run of the cap
        counted = [t for t in trials if not _user_stopped(t)]
        if self.run_cap is not None and len(counted) >= self.run_cap:
            return f"run cap {self.run_cap} reached"
        if self._to_continue(trials):
            return None  # under the cap with a stopped run to continue: not done, whatever the grid says
        if self.space.grid is not None and not self._grid_todo(trials):
            return f"grid of {len(self.space.grid_points())} points done"
        return None

    def suggest(self, *, agent: str = "") -> Suggestion | None:
        """Start a run: parameters from the sampler, a new run id, a control dir.

        Returns None when the sweep is done (run cap reached or grid exhausted).
        """
        return self._store.retrying(lambda: self._suggest(agent))

    def _to_continue(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        """Runs stopped by the user (`runfolder.USER_STOP`) that no later trial continues yet,
        whose files are on this machine, oldest first."""
        later = _continued(trials)
        return [
            t
            for t in trials
            if _user_stopped(t) and t.number not in later and self._store.is_here(t.user_attrs.get("run") or {})
        ]

    def _continue(self, stopped: FrozenTrial, agent: str) -> Suggestion:
        """A new trial for a run the user stopped: its parameters, its run id and folder (the
        training goes on from its last.ckpt there); the old trial stays as it ended."""
        run_id = (stopped.user_attrs.get("run") or {})["run_id"]
        self.study.enqueue_trial(dict(stopped.params))
        trial = self.study.ask(self.space.distributions)
        control = self.control_dir(run_id)  # the journal's path is never followed as is
        control.mkdir(parents=True, exist_ok=True)
        return self._hand_out(trial, run_id, control, agent, continues=stopped.number)

    def _hand_out(
        self, trial: optuna.Trial, run_id: str, control: Path, agent: str, continues: int | None = None
    ) -> Suggestion:
        """Record `trial` as run `run_id` of `agent` (its decoded parameters, its folder; with
        `continues`, the trial number of the stopped run it goes on from) and return it as a
        suggestion; the trial's running mark is undone if that fails."""
        trial_id = self._trial_id(trial.number)
        self._store.run_started(trial_id, control)
        try:
            params = self.space.decode(trial.params)
            trial.set_user_attr(
                "run",
                {
                    "run_id": run_id,
                    "params": params,
                    "started_at": time.time(),
                    "control_dir": str(control),
                    **({} if continues is None else {"continues": continues}),
                    **agent_identity(agent),
                },
            )
        except BaseException:
            self._store.run_ended(trial_id)
            raise
        return Suggestion(run_id, trial.number, params, control, resume=continues is not None)

    def _suggest(self, agent: str) -> Suggestion | None:
        # One step under the lock: count runs, check the cap, pick a grid point, ask. Two
        # agents that start at the same instant never get the same grid point or pass the cap.
        with self._store.lock():
            trials = self._trials()
            if self._reap_dead_runs(None, trials):
                trials = self._trials()
            if self._exhausted(trials):
                return None
            waiting = self._to_continue([t for t in trials if t.state != TrialState.WAITING])
            if waiting:  # a run the user stopped goes on first, where it stopped
                return self._continue(waiting[0], agent)
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
            return self._hand_out(trial, run_id, control, agent)

    # -- during a run

    def report(self, number: int, values: Sequence[float], start_step: int) -> bool:
        """Record metric values `start_step, start_step+1, ...` of a run; False when the run
        was closed meanwhile (marked crashed by another agent)."""

        def write() -> bool:
            trial_id = self._trial_id(number)
            try:
                for i, v in enumerate(values):
                    self.storage.set_trial_intermediate_value(trial_id, start_step + i, float(v))
            except optuna.exceptions.UpdateFinishedTrialError:
                return False
            return True

        return self._store.retrying(write)

    def record_stop(self, number: int, decision: Mapping[str, Any]) -> None:
        """Record the Hyperband decision that stopped a run."""
        doc = {**decision, "at": time.time()}
        self._store.retrying(lambda: self._set_attr(number, "stop", doc))

    def _set_attr(self, number: int, key: str, value: Any) -> bool:
        try:
            self.storage.set_trial_user_attr(self._trial_id(number), key, value)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # already closed, e.g. marked crashed by another agent

    def finish(self, number: int, outcome: RunOutcome) -> bool:
        """Close a run; returns False when it was already closed elsewhere."""
        doc = {**asdict(outcome), "ended_at": time.time()}

        def close() -> bool:
            with self._store.lock():  # never at once with an agent that reaps it
                return self._close(number, outcome, doc)

        return self._store.retrying(close)

    def _close(self, number: int, outcome: RunOutcome, doc: dict) -> bool:
        trial_id = self._trial_id(number)
        self._store.run_ended(trial_id)
        trial = self.storage.get_trial(trial_id)
        if trial.state.is_finished():
            # closed by another agent, or by this very call before a lost connection
            return trial.user_attrs.get("outcome") == doc
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

    def _reap_dead_runs(self, stale_after_s: float | None, trials: Sequence[FrozenTrial] | None = None) -> list[str]:
        reaped = []
        for t in self._store.dead(self._trials() if trials is None else trials, stale_after_s):
            run = t.user_attrs.get("run") or {}
            here = run and self._store.is_here(run)
            status = read_status(self.control_dir(Path(run["control_dir"]).name)) if here else None
            reason = f"its agent ({run.get('agent', '?')}) is gone" if run else "its agent died while starting it"
            outcome = RunOutcome("crashed", reason=reason, run_dir=(status or {}).get("run_dir"))
            if self._close(t.number, outcome, {**asdict(outcome), "ended_at": time.time()}):
                reaped.append(run.get("run_id", f"trial {t.number}"))
        return reaped

    def reap_dead_runs(self, stale_after_s: float | None = None) -> list[str]:
        """Mark runs whose agent is gone as crashed; return their run ids.

        `stale_after_s`: the heartbeat age past which an agent counts as gone (default:
        the store's; a folder's `STALE_AFTER_S` for agents on other hosts)."""

        def reap() -> list[str]:
            with self._store.lock():
                return self._reap_dead_runs(stale_after_s)

        return self._store.retrying(reap)

    # -- reading

    def runs(self) -> list[RunInfo]:
        """Every run, in start order."""
        return self._store.retrying(self._runs)

    def _runs(self) -> list[RunInfo]:
        goal = self.spec.metric_goal
        out = []
        trials = self._trials()
        continued = _continued(trials)
        for t in trials:
            run = t.user_attrs.get("run")
            if t.state == TrialState.WAITING or t.number in continued:
                continue  # a run stopped by the user that goes on as a later trial: shown once, there
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
