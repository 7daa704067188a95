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
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["child_env", "die_with_parent", "kill_group", "start"]

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
"""The folder that holds `hrnet_sweep/`: a child's PYTHONPATH starts with it."""


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


def kill_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (a child from `start`); a group that
    is already gone is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
