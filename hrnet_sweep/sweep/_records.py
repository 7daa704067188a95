"""What the engine hands out and keeps per run, and the run's files on disk.

`Suggestion` (a run handed to an agent), `RunOutcome` (how it ended, from the agent) and
`RunInfo` (a run as `status`, `best` and Hyperband read it); a run's `status.json` and
its checkpoint files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["RUN_STATES", "RunInfo", "RunOutcome", "Suggestion", "checkpoint_files", "delete_files"]

RUN_STATES = ("running", "finished", "stopped", "failed", "crashed")


@dataclass(frozen=True)
class Suggestion:
    """A run handed to an agent."""

    run_id: str
    number: int
    params: dict[str, Any]
    control_dir: Path
    resume: bool = False
    """The run was stopped by the user: it continues, same id and folder, from its last.ckpt."""


@dataclass
class RunOutcome:
    """How a run ended, as the agent tells the engine."""

    state: str  # finished | stopped | failed | crashed
    value: float | None = None
    reason: str | None = None
    exit_code: int | None = None
    run_dir: str | None = None
    best_epoch: int | None = None
    best_ckpt: str | None = None
    last_ckpt: str | None = None
    freed_bytes: int = 0

    def __post_init__(self) -> None:
        if self.state not in RUN_STATES[1:]:
            raise ValueError(f"outcome state {self.state!r} must be one of {', '.join(RUN_STATES[1:])}")


@dataclass(frozen=True)
class RunInfo:
    """One run of a local sweep, as `status`, `best` and Hyperband read it."""

    run_id: str
    number: int
    state: str
    params: dict[str, Any]
    history: list[float]
    best: float | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    reason: str | None
    stop: dict | None
    run_dir: str | None
    control_dir: str
    agent: dict
    outcome: dict

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def host(self) -> str | None:
        """The machine whose disk holds the run's files (where its agent ran)."""
        return self.agent.get("host")

    def checkpoints(self) -> list[Path]:
        return checkpoint_files(self.run_dir, self.outcome.get("best_ckpt"), self.outcome.get("last_ckpt"))

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_files(run_dir: str | os.PathLike | None, *named: str | os.PathLike | None) -> list[Path]:
    """Checkpoint files of a run: the `named` ones (status.json's best_ckpt / last_ckpt)
    that exist, plus `run_dir/checkpoints/*.ckpt`, each once."""
    found: dict[str, Path] = {}
    for p in named:
        if p and Path(p).is_file():
            found[str(Path(p).resolve())] = Path(p)
    if run_dir and (Path(run_dir) / "checkpoints").is_dir():
        for p in sorted((Path(run_dir) / "checkpoints").glob("*.ckpt")):
            found.setdefault(str(p.resolve()), p)
    return list(found.values())


def delete_files(paths: Sequence[Path], *, dry_run: bool = False) -> int:
    """Delete files (never folders); return the bytes freed (or that would be)."""
    freed = 0
    for p in paths:
        try:
            size = p.stat().st_size
            if not dry_run:
                p.unlink()
            freed += size
        except FileNotFoundError:
            continue
    return freed
