"""Where a local sweep lives: one folder (the default), or a PostgreSQL database.

The engine (`engine.LocalSweep`) keeps W&B's sweep semantics and talks to a `SweepStore`;
nothing above the engine knows which store a sweep uses. A store holds what every agent
of the sweep must agree on, and says how agents agree:

| | `FolderStore` (one machine, a shared disk) | `DatabaseStore` (`_database`) |
|---|---|---|
| sweep spec and metadata | `sweep.yaml`, `sweep.json` | the study's user attributes |
| runs, outcomes, metric values | `optuna.journal` (`JournalFileBackend`) | Optuna `RDBStorage` tables |
| one suggestion at a time | `flock` on `engine.lock` | a PostgreSQL advisory lock |
| is a run's agent alive | same host: its pid; else heartbeat file age | heartbeat age, server's clock |
| run folders | `<folder>/runs/<run_id>/` | the same, on each agent's own disk |

Either way `root` is this machine's folder of the sweep (run control dirs, W&B parameter
files, agent logs). `open_store` / `create_store` pick the store from the `storage`
argument: None (the folder's journal), an Optuna storage object (the replay's in-memory
study, metadata in the folder) or a database URL (text).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..files import atomic_write_json, atomic_write_text, open_append, read_json
from ..numeric import number_problem
from ._liveness import agent_alive

__all__ = [
    "JOURNAL_FILE",
    "STALE_AFTER_S",
    "FolderStore",
    "SweepStore",
    "create_store",
    "is_database_url",
    "open_store",
]

JOURNAL_FILE = "optuna.journal"
STALE_AFTER_S = 300.0
"""Folder store: a running run whose agent is on another host counts as crashed when its
heartbeat file is older than this (same host: checked exactly, by pid, start time and boot id)."""

T = TypeVar("T")


def is_database_url(storage: Any) -> bool:
    """True for a database URL (text with a scheme), the only text `storage` takes."""
    return isinstance(storage, str) and "://" in storage


class SweepStore:
    """What the engine needs from the place a sweep lives (see the module's table)."""

    kind = "folder"
    root: Path
    sweep_id: str
    meta: dict
    storage: optuna.storages.BaseStorage

    @property
    def location(self) -> str:
        """Where the sweep lives, for messages (never with a password)."""
        return str(self.root)

    def sweep_doc(self) -> tuple[dict, dict | None, str]:
        """The sweep file as a document, its key lines (or None) and its name in messages."""
        raise NotImplementedError

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One agent at a time: count runs, check the cap, pick a grid point, ask, reap."""
        raise NotImplementedError
        yield

    def set_run_cap(self, cap: int | None) -> None:
        raise NotImplementedError

    def run_started(self, trial_id: int, control_dir: Path) -> None:
        """A run was handed to this process: start its heartbeat."""

    def run_ended(self, trial_id: int) -> None:
        """This process closed the run: stop its heartbeat."""

    def dead(self, trials: Sequence[FrozenTrial], stale_after_s: float | None) -> list[FrozenTrial]:
        """The running trials whose agent is gone (called under `lock`)."""
        raise NotImplementedError

    def retrying(self, fn: Callable[[], T]) -> T:
        """`fn()`, run again after a lost connection where the store has one."""
        return fn()

    def is_here(self, run: dict) -> bool:
        """Are the files of the run with this record on this machine's disk?"""
        return True

    def agent_args(self) -> tuple[str, list[str], dict[str, str]]:
        """How an agent process joins this sweep: its positional argument, its flags and
        extra environment (the database password travels there, never in argv)."""
        return str(self.root), [], {}

    def ref_args(self) -> list[str]:
        """How a command names this sweep: `hrnet_sweep status <ref_args>`."""
        return [str(self.root)]

    def private_env(self) -> tuple[str, ...]:
        """Environment variables that carry the store's credentials: runs never get them."""
        return ()

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- the folder


def read_folder_meta(root: Path) -> dict:
    """`sweep.json`, checked: a JSON object with a string `sweep_id` and a whole `run_cap`."""
    path = root / "sweep.json"
    meta = read_json(path)  # missing, not UTF-8, not JSON: a DataError naming the file
    if not isinstance(meta, dict):
        raise UserError(f"sweep folder {root}: {path.name} must be a JSON object, found {type(meta).__name__}")
    check_meta(meta, f"sweep folder {root}: {path.name}")
    return meta


def check_meta(meta: dict, where: str) -> None:
    sweep_id, cap = meta.get("sweep_id"), meta.get("run_cap")
    if not isinstance(sweep_id, str) or not sweep_id:
        raise UserError(f"{where} has no sweep_id string (got {sweep_id!r})")
    if not re.fullmatch(r"[\w.-]+", sweep_id) or sweep_id in (".", ".."):
        # it becomes part of paths (wandb/sweep-<id>/, outputs/sweeps/<id>/)
        raise UserError(f"{where} sweep_id={sweep_id!r} must be a plain name (letters, digits, '_', '.', '-')")
    if cap is not None and (number_problem(cap, int) is not None or cap < 1):
        raise UserError(f"{where} run_cap={cap!r} must be an integer >= 1 or null")


class FolderStore(SweepStore):
    """A sweep in one folder: `sweep.json`, `sweep.yaml`, `optuna.journal`, `engine.lock`,
    `runs/`. With `optuna_storage` (the replay) the study lives there instead of the journal."""

    def __init__(self, root: str | os.PathLike, optuna_storage: optuna.storages.BaseStorage | None = None):
        self.root = Path(root).resolve()
        self.meta = read_folder_meta(self.root)
        self.sweep_id = self.meta["sweep_id"]
        self.storage = optuna_storage if optuna_storage is not None else self._journal()

    def _journal(self) -> optuna.storages.BaseStorage:
        """The study's journal; a missing or damaged one is a UserError naming the folder
        (never an empty journal created in its place)."""
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        journal = self.root / JOURNAL_FILE
        if not journal.is_file():
            raise UserError(
                f"sweep folder {self.root}: {JOURNAL_FILE} is missing (or not a file); it holds every "
                "run of the sweep and cannot be rebuilt: restore it from a backup, or start a new sweep"
            )
        try:
            storage = JournalStorage(JournalFileBackend(str(journal)))  # replays the whole journal
            names = {s.study_name for s in storage.get_all_studies()}
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
        return storage

    @classmethod
    def create(
        cls,
        root: Path,
        meta: dict,
        spec_text: str,
        direction: str,
        optuna_storage: optuna.storages.BaseStorage | None = None,
    ) -> FolderStore:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        root.mkdir(parents=True, exist_ok=True)
        (root / "runs").mkdir(exist_ok=True)
        atomic_write_text(root / "sweep.yaml", spec_text)
        storage = optuna_storage or JournalStorage(JournalFileBackend(str(root / JOURNAL_FILE)))
        storage.create_new_study([optuna.study.StudyDirection[direction.upper()]], study_name=meta["sweep_id"])
        atomic_write_json(root / "sweep.json", {**meta, "journal": JOURNAL_FILE}, indent=2)
        return cls(root, optuna_storage)

    def sweep_doc(self) -> tuple[dict, dict | None, str]:
        from .sweepfile import read_sweep_doc

        doc, lines = read_sweep_doc(self.root / "sweep.yaml")
        return doc, lines, str(self.root / "sweep.yaml")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """`flock` on `engine.lock`: serialises suggestions across agents (and hosts on a
        shared filesystem). The journal itself is safe for concurrent appends."""
        with open_append(self.root / "engine.lock", "engine lock") as fh:  # never through a planted link
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def set_run_cap(self, cap: int | None) -> None:
        self.meta["run_cap"] = cap
        atomic_write_json(self.root / "sweep.json", self.meta, indent=2)

    def run_started(self, trial_id: int, control_dir: Path) -> None:
        (control_dir / "heartbeat").touch()  # the agent touches it while the run lives

    def dead(self, trials: Sequence[FrozenTrial], stale_after_s: float | None) -> list[FrozenTrial]:
        now = time.time()
        stale = STALE_AFTER_S if stale_after_s is None else stale_after_s
        return [
            t
            for t in trials
            if t.state == TrialState.RUNNING and not agent_alive(t.user_attrs.get("run"), now=now, stale_after_s=stale)
        ]


# ----------------------------------------------------------------------------- choosing


def open_store(root: str | os.PathLike, storage: Any = None, *, sweep_id: str | None = None) -> SweepStore:
    """The store of an existing sweep: its folder (`storage` None or an Optuna storage
    object), or the database at URL `storage` with this machine's folder `root`."""
    if is_database_url(storage):
        from ._database import DatabaseStore

        return DatabaseStore.open(storage, root, sweep_id or Path(root).name)
    if isinstance(storage, str):
        raise UserError(f"--storage {storage!r} is not a database URL (e.g. postgresql://user@host/db)")
    return FolderStore(root, storage)


def create_store(root: Path, meta: dict, spec_text: str, direction: str, storage: Any = None) -> SweepStore:
    """Create the sweep `meta['sweep_id']` in its store (see `open_store`)."""
    if is_database_url(storage):
        from ._database import DatabaseStore

        return DatabaseStore.create(storage, root, meta, spec_text, direction)
    return FolderStore.create(root, meta, spec_text, direction, storage)
