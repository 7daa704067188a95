"""Child processes: how every stage that starts another Python process does it.

The embedded sweep agent starts training runs, the launcher starts agents, `kfold`
starts one training process per fold and the demo starts agents. Each child:

* runs in its own process group (so a signal to the group reaches the child and every
  DataLoader worker it forked, and a Ctrl-C in the terminal reaches only the parent,
  which decides how to stop its children);
* dies with its parent on Linux (`PR_SET_PDEATHSIG`), so a SIGKILLed agent or launcher
  leaves no training behind holding a GPU;
* imports this package as the parent does (`PYTHONPATH` names the folder that holds
  it, whatever the child's working directory), with unbuffered output for its log;
* starts its own W&B service if it logs (`WANDB_SERVICE` of this process is not passed
  on: a child waiting on a service that belongs to another run can hang at exit).

A child that stops answering is noticed too: `OutputWatch` says how long its log (and
metrics) have stayed unchanged, and a parent stops a child silent for `STALL_TIMEOUT_S`.
Helper processes that work for a run rather than run it (the post-processing search
workers, DataLoader workers) fail in ways that `helper_failure` names in one line, so a
caller can go on without them (or end the run with that line) instead of a traceback.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "DATA_WORKER_TIMEOUT_S",
    "STALL_TIMEOUT_S",
    "OutputWatch",
    "child_env",
    "die_with_parent",
    "helper_failure",
    "kill_group",
    "one_line",
    "start",
]

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
"""The folder that holds `hrnet_sweep/`: a child's PYTHONPATH starts with it."""

STALL_TIMEOUT_S = 3600.0
"""A training child whose log and metrics stay unchanged this long is taken as hung and
stopped (the agent's `--stall-timeout`): training prints a progress line every 10 % of an
epoch and a metrics row per validation, so an hour of silence is no slow epoch."""

DATA_WORKER_TIMEOUT_S = 600.0
"""The longest a training waits for one batch from a DataLoader worker (its `timeout`):
a worker stuck that long (a deadlock, a hung file system) ends the wait with an error
that `helper_failure` names, where the default waits for ever. Far above any real batch,
the first one included (worker start, dataset set-up)."""


def child_env(
    base: Mapping[str, str] | None = None, *, gpu: str | None = None, threads: int | None = None
) -> dict[str, str]:
    """The environment of a child: `base` (default this process's) plus the package path.

    Args:
        base: the environment to start from.
        gpu: pin the child to this GPU (`CUDA_VISIBLE_DEVICES`).
        threads: CPU threads of the child's math libraries, for children sharing the
            cores (their thread pools would otherwise fight); an explicit setting in
            `base` wins.
    """
    env = dict(os.environ if base is None else base)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("MKL_NUM_THREADS", str(threads))
    env.pop("WANDB_SERVICE", None)  # a child starts its own W&B service, never waits on this process's
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != PACKAGE_PARENT]
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, *parts])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()


def die_with_parent(parent: int, prctl=_PRCTL) -> None:
    """Called in a child (a `preexec_fn`, a process pool's initializer): the child gets
    SIGTERM when its parent dies (Linux), and exits now if `parent` is already gone.
    `prctl` is looked up once, in the parent: a child between fork and exec should not
    load libraries."""
    if prctl is None:
        return
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def start(
    cmd: Sequence[str], *, env: Mapping[str, str], log: IO[bytes], cwd: str | os.PathLike | None = None
) -> subprocess.Popen:
    """Start `cmd` in a new process group that dies with this process; stdout and stderr
    go to `log`, stdin is closed. `env` is used as given (build it with `child_env`)."""
    return subprocess.Popen(
        list(cmd),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
    )


class OutputWatch:
    """How long a child has shown no life: no change in size or time of any of `files`
    (its log, its metrics; stat only, never read; a missing file counts as unchanged)."""

    def __init__(self, files: Sequence[str | os.PathLike]):
        self.files = [Path(f) for f in files]
        self.seen: list = []
        self.since = time.monotonic()

    def still_for(self) -> float:
        """Seconds since the last change seen (or since this watch began)."""
        now = []
        for f in self.files:
            try:
                st = f.stat()
                now.append((st.st_size, st.st_mtime_ns))
            except OSError:
                now.append(None)
        if now != self.seen:
            self.seen, self.since = now, time.monotonic()
        return time.monotonic() - self.since


def kill_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (a child from `start`); a group that
    is already gone is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def helper_failure(err: BaseException) -> str | None:
    """One line saying which helper process failed and how, when `err` is such a failure:
    a process pool whose worker died (`BrokenProcessPool`), a DataLoader worker that died
    or did not answer within its timeout; None for any other error."""
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(err, BrokenProcessPool):
        return f"a worker process died ({one_line(err)})"
    if isinstance(err, RuntimeError):
        text = str(err)
        if text.startswith("DataLoader worker"):  # "(pid(s) N) exited unexpectedly", "... is killed by signal"
            return f"a DataLoader worker died ({one_line(err)}); data.num_workers=0 loads in the training process"
        if text.startswith("DataLoader timed out"):
            return f"a DataLoader worker did not answer ({one_line(err)})"
    return None
