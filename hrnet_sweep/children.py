"""Child processes: how every stage that starts another Python process does it.

The embedded sweep agent starts training runs, the launcher starts agents, `kfold`
starts one training process per fold and the demo starts agents. Each child:

* runs in its own process group (so a signal to the group reaches the child and every
  DataLoader worker it forked, and a Ctrl-C in the terminal reaches only the parent,
  which decides how to stop its children);
* dies with its parent on Linux (`PR_SET_PDEATHSIG`), so a SIGKILLed agent or launcher
  leaves no training behind holding a GPU;
* imports this package as the parent does (`PYTHONPATH` names the folder that holds
  it, whatever the child's working directory), with unbuffered output for its log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

__all__ = ["child_env", "kill_group", "start"]

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
"""The folder that holds `hrnet_sweep/`: a child's PYTHONPATH starts with it."""


def child_env(base: Mapping[str, str] | None = None, *, gpu: str | None = None,
              threads: int | None = None) -> dict[str, str]:
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
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != PACKAGE_PARENT]
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, *parts])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: the child gets SIGTERM when this process dies (Linux only)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm


def start(cmd: Sequence[str], *, env: Mapping[str, str], log: IO[bytes], cwd: str | os.PathLike | None = None
          ) -> subprocess.Popen:
    """Start `cmd` in a new process group that dies with this process; stdout and stderr
    go to `log`, stdin is closed. `env` is used as given (build it with `child_env`)."""
    return subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent())


def kill_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (a child from `start`); a group that
    is already gone is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
