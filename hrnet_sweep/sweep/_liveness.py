"""Is the agent that started a run still alive? Answered exactly on the same host.

An agent records `agent_identity()` with each run: host, pid, the pid's start time
(guards against pid reuse) and the boot id (guards against a restart). Linux `/proc`;
where it is missing, only the pid is checked. `agent_alive` is a folder sweep's rule:
that check on the same host, the age of the run's heartbeat file elsewhere (a shared
disk). A sweep in a database uses the heartbeat rows' age instead (`_database`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["agent_alive", "agent_identity", "boot_id", "pid_alive"]


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (guards against pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_state(pid: int) -> str | None:
    """One-letter state of a process (R, S, Z, ...), or None when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _pid_state(pid) in ("Z", "X"):  # killed but not reaped yet: a container's PID 1 may take long, or never
        return False
    now_start = _pid_start(pid)
    return start is None or now_start is None or now_start == start


def agent_identity(agent: str = "") -> dict:
    """Who runs a trial: enough to tell later whether it is still alive."""
    pid = os.getpid()
    return {
        "agent": agent or f"{socket.gethostname()}:{pid}",
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _pid_start(pid),
        "boot_id": boot_id(),
    }


def agent_alive(run: dict[str, Any] | None, *, now: float, stale_after_s: float) -> bool:
    """Is the agent of the run with record `run` (None: never named) alive? Same host:
    its pid; another host: its heartbeat file touched within `stale_after_s`."""
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
