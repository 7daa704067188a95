"""Start and watch sweep agents: one per GPU (times `per_gpu`), pinned with
`CUDA_VISIBLE_DEVICES`, staggered, a log file each, a crashed agent restarted up to a
cap, and SIGINT / SIGTERM stopping every agent's process group (no orphans).

Two kinds of agent process, one supervision:

- `mode="wandb"`: `wandb agent [--count N] entity/project/sweep_id` (W&B decides runs).
- `mode="local"`: `python -m hrnet_sweep agent <sweep dir> [--count N]` (embedded engine).

Each agent runs in its own session (so a Ctrl-C in the terminal reaches only this
launcher, which then stops the agents in order) and dies with the launcher (Linux
parent-death signal), so even a SIGKILLed launcher leaves nothing behind; each local
agent does the same for its training process.

An agent gives up after `max_failures` failed runs in a row (`--max-failures`, passed to
local agents and, where it has the flag, to `wandb agent` as
`--max-consecutive-failed-runs`); the launcher reads why from the end of its log, does not
restart it, and exits 1 with that cause as its last line. No endless loop of failing runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..children import child_env, kill_group, start
from ..errors import UserError
from ..files import open_append
from ..numeric import flag
from ..runfolder import USER_STOP
from ..wandb_auth import credentials, is_sweep_path
from .agent import EXIT_RUNS_FAILED, GAVE_UP, MAX_CONSECUTIVE_FAILURES, wandb_failure_args

__all__ = ["AgentSlot", "LaunchResult", "agent_command", "detect_gpus", "parse_gpus", "run_agents"]

Mode = Literal["wandb", "local"]

WANDB_GAVE_UP = "consecutive failed runs, shutting down"
"""`wandb agent`'s line when `--max-consecutive-failed-runs` stops it (it then exits 0)."""


def parse_gpus(text: str) -> list[str]:
    """`--gpus 0,1,3` -> ["0", "1", "3"]; `--gpus cpu` or `none` -> [] (CPU agents)."""
    text = text.strip()
    if text.lower() in ("", "cpu", "none"):
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    for g in gpus:
        if not ((g.isascii() and g.isdigit()) or g.startswith(("GPU-", "MIG-"))):
            raise UserError(f"--gpus {text!r}: {g!r} is not a GPU index or UUID (e.g. --gpus 0,1)")
    if len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus {text!r} names a GPU twice; use --per-gpu N for several agents per GPU")
    return gpus


def detect_gpus(nvidia_smi: str = "nvidia-smi") -> list[str]:
    """Visible GPUs from `nvidia-smi --query-gpu=index --format=csv,noheader`, honouring
    an existing CUDA_VISIBLE_DEVICES; [] when there is no nvidia-smi or no GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_gpus(visible) if visible.strip() not in ("", "-1") else []
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def agent_command(
    sweep: str,
    mode: Mode,
    *,
    count: int | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
    max_failures: int = MAX_CONSECUTIVE_FAILURES,
) -> list[str]:
    """The command of one agent process."""
    count_args = ["--count", str(count)] if count else []
    if mode == "wandb":
        return ["wandb", "agent", *wandb_failure_args(max_failures), *count_args, sweep]
    if mode == "local":
        return [python, "-m", "hrnet_sweep", "agent", sweep, *count_args, "--max-failures", str(max_failures), *extra]
    raise ValueError(f"mode {mode!r} must be 'wandb' or 'local'")


@dataclass
class AgentSlot:
    """One agent position: its GPU, its log, its current process and its history."""

    index: int
    gpu: str | None
    log_path: Path
    start_at: float
    proc: subprocess.Popen | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    done: bool = False
    log_offset: int = 0  # where the current process's output starts in the log
    gave_up: str | None = None  # the cause, when the agent gave up on failing runs

    @property
    def label(self) -> str:
        return f"agent {self.index} ({'GPU ' + self.gpu if self.gpu is not None else 'CPU'})"


@dataclass
class LaunchResult:
    slots: list[AgentSlot]
    interrupted: int | None = None  # the signal that stopped the agents, if any

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return 128 + self.interrupted
        if self.gave_up:
            return 1
        # an agent whose own runs all failed is judged with the whole sweep (`_on_engine`)
        return 0 if all(s.exit_codes and s.exit_codes[-1] in (0, EXIT_RUNS_FAILED) for s in self.slots) else 1

    @property
    def gave_up(self) -> str | None:
        """One line naming why the sweep stopped, when an agent gave up on failing runs."""
        slots = [s for s in self.slots if s.gave_up]
        if not slots:
            return None
        more = f" (and {len(slots) - 1} more agent(s))" if len(slots) > 1 else ""
        return f"stopped: {slots[-1].label} gave up{more}: {slots[-1].gave_up}"


class _Supervisor:
    def __init__(
        self,
        cmd: list[str],
        slots: list[AgentSlot],
        *,
        max_restarts: int,
        restart_delay_s: float,
        term_grace_s: float,
        poll_s: float,
        env: dict[str, str],
        cwd: str | None,
        out: Callable[[str], None],
    ):
        self.cmd, self.slots, self.max_restarts = cmd, slots, max_restarts
        self.restart_delay_s, self.term_grace_s, self.poll_s = restart_delay_s, term_grace_s, poll_s
        self.env, self.cwd, self.out = env, cwd, out
        self.signal: int | None = None

    def log(self, msg: str) -> None:
        self.out(f"[{time.strftime('%H:%M:%S')}] {msg}")

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None:
            self.term_grace_s = 0.0  # second Ctrl-C: kill now
        self.signal = signum

    def _start(self, slot: AgentSlot) -> None:
        env = child_env(self.env, gpu=slot.gpu)
        slot.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open_append(slot.log_path, "agent log") as log:
            head = (
                f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {slot.label}"
                + (f" restart {slot.restarts}" if slot.restarts else "")
                + f": {' '.join(self.cmd)}\n"
            )
            log.write(head.encode())
            log.flush()
            slot.log_offset = log.tell()
            try:
                slot.proc = start(self.cmd, env=env, log=log, cwd=self.cwd)
            except OSError as err:
                raise UserError(f"cannot start {self.cmd[0]!r}: {err}") from None
        self.log(f"{slot.label} started (pid {slot.proc.pid}), log {slot.log_path}")

    def _check(self, slot: AgentSlot) -> None:
        rc = slot.proc.poll() if slot.proc else None
        if slot.proc is None or rc is None:
            return
        slot.exit_codes.append(rc)
        slot.proc = None
        slot.gave_up = _gave_up(slot.log_path, slot.log_offset)
        if slot.gave_up:
            self.log(f"{slot.label} gave up, not restarted: {slot.gave_up}; see {slot.log_path}")
            slot.done = True
        elif rc == 0:
            self.log(f"{slot.label} finished")
            slot.done = True
        elif rc == EXIT_RUNS_FAILED:
            self.log(f"{slot.label} finished, but every run it started failed or crashed; see {slot.log_path}")
            slot.done = True
        elif slot.restarts >= self.max_restarts:
            self.log(
                f"{slot.label} exited with code {rc}; restart limit {self.max_restarts} reached, see {slot.log_path}"
            )
            slot.done = True
        else:
            slot.restarts += 1
            slot.start_at = time.monotonic() + self.restart_delay_s
            self.log(
                f"{slot.label} exited with code {rc}; restarting ({slot.restarts}/{self.max_restarts}) in "
                f"{self.restart_delay_s:g}s"
            )

    def _stop_all(self) -> None:
        alive = [s for s in self.slots if s.proc is not None]
        self.log(f"{signal.Signals(self.signal).name} received: stopping {len(alive)} agent(s) and their runs")
        for s in alive:
            kill_group(s.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.term_grace_s
        while any(s.proc.poll() is None for s in alive) and time.monotonic() < deadline:
            time.sleep(0.1)
        for s in alive:
            if s.proc.poll() is None:
                self.log(f"{s.label} did not stop in {self.term_grace_s:g}s: killing it")
            kill_group(s.proc.pid, signal.SIGKILL)  # also whatever it left in its group
            s.exit_codes.append(s.proc.wait())
            s.proc = None

    def run(self) -> LaunchResult:
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while self.signal is None:
                for slot in self.slots:
                    if slot.done:
                        continue
                    if slot.proc is None and time.monotonic() >= slot.start_at:
                        self._start(slot)
                    else:
                        self._check(slot)
                if all(s.done for s in self.slots):
                    break
                time.sleep(self.poll_s)
            if self.signal is not None:
                self._stop_all()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
        return LaunchResult(self.slots, self.signal)


def _gave_up(log_path: Path, offset: int, max_bytes: int = 16 * 1024) -> str | None:
    """The cause an agent gave for giving up, from the end of its log past `offset` (its
    own output): our agent's last line (`agent.GAVE_UP`), or `wandb agent`'s."""
    try:
        with open(log_path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - max_bytes))
            text = fh.read(max_bytes).decode("utf-8", errors="replace")
    except OSError:
        return None
    ours = re.compile(rf"^\[[0-9:]+\] agent \S+ {re.escape(GAVE_UP)}(.+)$")  # not a run's output quoted in the log
    for line in reversed(text.splitlines()[-20:]):
        found = ours.match(line)
        if found:
            return found.group(1).strip()
        if WANDB_GAVE_UP in line:
            return line.strip()
    return None


def run_agents(
    sweep: str,
    *,
    gpus: Sequence[str] | None = None,
    per_gpu: int = 1,
    agents: int | None = None,
    stagger_s: float = 10.0,
    max_restarts: int = 3,
    mode: Mode = "local",
    count: int | None = None,
    log_dir: str | os.PathLike = "agents-logs",
    agent_args: Sequence[str] = (),
    restart_delay_s: float = 5.0,
    term_grace_s: float = 60.0,
    poll_s: float = 0.5,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    out: Callable[[str], None] | None = None,
    max_failures: int = MAX_CONSECUTIVE_FAILURES,
) -> LaunchResult:
    """Run agents for a sweep and wait for them.

    Args:
        sweep: `entity/project/sweep_id` (mode wandb) or a local sweep folder (mode local).
        gpus: GPU indices; None detects them with nvidia-smi; [] means CPU (one agent
            unless `agents` says more).
        per_gpu: agents per GPU.
        agents: total number of agents, assigned round-robin over the GPUs (default
            len(gpus) * per_gpu, or 1 on CPU).
        stagger_s: delay between agent starts (data loading and model download spread out).
        max_restarts: restarts of each agent that exits with an error.
        count: runs per agent (`--count`).
        log_dir: one `agent-<i>-gpu<g>.log` per agent, appended across restarts.
        agent_args: extra arguments of a local agent.
        term_grace_s: after SIGTERM, how long agents get to stop their runs cleanly.
        max_failures: an agent gives up after this many failed runs in a row; it is not
            restarted, and the result's `gave_up` names the cause (exit code 1).
    """
    if per_gpu < 1:
        raise UserError(f"--per-gpu {per_gpu} must be >= 1")
    if agents is not None and agents < 1:
        raise UserError(f"--agents {agents} must be >= 1")
    if max_restarts < 0:
        raise UserError(f"--max-restarts {max_restarts} must be >= 0")
    if max_failures < 1:
        raise UserError(f"--max-failures {max_failures} must be >= 1")
    printer = out or (lambda s: print(s, flush=True))
    gpu_list = detect_gpus() if gpus is None else list(gpus)
    if gpu_list:
        positions: list[str | None] = [g for g in gpu_list for _ in range(per_gpu)]
    else:
        positions = [None]
        if gpus is None:  # looked for and none found; `--gpus cpu` asked for the CPU: nothing to say
            printer("no GPU found (nvidia-smi absent or none visible): running CPU agent(s)")
    n = agents if agents is not None else len(positions) if gpu_list else 1
    assigned = [positions[i % len(positions)] for i in range(n)]
    now = time.monotonic()
    slots = [
        AgentSlot(
            i, g, Path(log_dir) / f"agent-{i}-{'gpu' + g if g is not None else 'cpu'}.log", start_at=now + i * stagger_s
        )
        for i, g in enumerate(assigned)
    ]
    cmd = agent_command(sweep, mode, count=count, extra=agent_args, max_failures=max_failures)
    if mode == "wandb" and shutil.which("wandb", path=(env or os.environ).get("PATH")) is None:
        raise UserError("`wandb` is not on PATH; pip install wandb, or run on the embedded engine with --local")
    base_env = dict(os.environ if env is None else env)
    sup = _Supervisor(
        cmd,
        slots,
        max_restarts=max_restarts,
        restart_delay_s=restart_delay_s,
        term_grace_s=term_grace_s,
        poll_s=poll_s,
        env=base_env,
        cwd=cwd,
        out=printer,
    )
    return sup.run()


# ----------------------------------------------------------------------------- W&B


def create_wandb_sweep(config: dict, *, project: str, entity: str | None) -> tuple[str, str]:
    """Create a sweep on W&B; return (entity/project/sweep_id, URL)."""
    import wandb

    sweep_id = wandb.sweep(sweep=config, project=project, entity=entity)
    if entity is None:
        entity = wandb.Api().default_entity
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    app = base.replace("://api.", "://", 1)
    return f"{entity}/{project}/{sweep_id}", f"{app}/{entity}/{project}/sweeps/{sweep_id}"


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep sweep`: create a sweep (W&B, or the embedded engine) and run its agents."""
    import argparse

    from .engine import DEFAULT_SWEEPS_ROOT

    ap = argparse.ArgumentParser(
        prog="hrnet_sweep sweep",
        description=(
            "Create a sweep and run one agent per GPU until it is done. With W&B credentials the sweep "
            "lives on W&B (agents: wandb agent); without them, or with --local, the same YAML runs on the "
            "embedded engine (Optuna, state in the sweep folder, runs logged to W&B offline)."
        ),
    )
    ap.add_argument("yaml", nargs="?", help="sweep YAML (not needed with --resume)")
    ap.add_argument("--local", action="store_true", help="use the embedded engine even with W&B credentials")
    ap.add_argument("--project", help="W&B project (default: the YAML's, else hrnet-sweep)")
    ap.add_argument("--entity", help="W&B entity (default: the YAML's, else your default entity)")
    ap.add_argument("--gpus", help="GPU indices, e.g. 0,1 (default: nvidia-smi; 'cpu' for CPU agents)")
    ap.add_argument("--per-gpu", type=flag(int, ge=1), default=1, help="agents per GPU (default 1)")
    ap.add_argument("--agents", type=flag(int, ge=1), help="total agents, round-robin over the GPUs")
    ap.add_argument("--count", type=flag(int, ge=1), help="runs per agent")
    ap.add_argument("--run-cap", type=flag(int, ge=1), help="total runs of the sweep (overrides the YAML's run_cap)")
    ap.add_argument(
        "--sweep-dir",
        help="folder of a new local sweep (default <sweeps-root>/<sweep id>); with --storage, this machine's "
        "folder of the sweep (its runs)",
    )
    ap.add_argument("--sweeps-root", default=str(DEFAULT_SWEEPS_ROOT), help="where local sweeps live")
    ap.add_argument(
        "--storage",
        metavar="URL",
        help="keep the local sweep in this PostgreSQL database (postgresql://user@host/db; the password from "
        "~/.pgpass or PGPASSWORD), so that agents on other machines join it with --resume ID --storage URL; "
        "implies --local",
    )
    ap.add_argument(
        "--resume",
        metavar="SWEEP",
        help="run agents for an existing sweep: a local sweep id or "
        "folder (runs left running by dead agents are marked crashed), or entity/project/id",
    )
    ap.add_argument("--stagger", type=flag(float, ge=0), default=10.0, help="seconds between agent starts (default 10)")
    ap.add_argument("--max-restarts", type=flag(int, ge=0), default=3, help="restarts of a crashed agent (default 3)")
    ap.add_argument(
        "--max-failures",
        type=flag(int, ge=1),
        default=MAX_CONSECUTIVE_FAILURES,
        help="an agent gives up after this many failed runs in a row; the sweep then stops with exit 1 "
        f"(default {MAX_CONSECUTIVE_FAILURES})",
    )
    ap.add_argument(
        "--keep-stopped-checkpoints",
        action="store_true",
        help="keep checkpoints of runs stopped by Hyperband (local engine; dropped by default)",
    )
    ap.add_argument("--create-only", action="store_true", help="create the sweep, print its id, start no agent")
    args = ap.parse_args(list(argv or []))
    if not args.resume and not args.yaml:
        raise UserError("give a sweep YAML (e.g. sweeps/hrnet_w44_1280.yaml) or --resume SWEEP")
    gpus = parse_gpus(args.gpus) if args.gpus is not None else None
    launch = dict(
        gpus=gpus,
        per_gpu=args.per_gpu,
        agents=args.agents,
        stagger_s=args.stagger,
        max_restarts=args.max_restarts,
        count=args.count,
        max_failures=args.max_failures,
    )
    wandb_ref = args.resume if args.resume and is_sweep_path(args.resume) and not args.storage else None
    creds = None if args.local or args.storage or (args.resume and not wandb_ref) else credentials()
    if wandb_ref or (creds and not args.resume):
        return _on_wandb(args, wandb_ref, creds, launch)
    return _on_engine(args, launch)


def _on_wandb(args, wandb_ref: str | None, creds: str | None, launch: dict) -> int:
    """Create the sweep on W&B (unless resuming one) and run `wandb agent`s for it."""
    if wandb_ref is None:
        from .check import load_checked

        spec = load_checked(args.yaml)
        config = dict(spec.raw)
        if args.run_cap is not None:
            config["run_cap"] = args.run_cap
        project = args.project or spec.project or "hrnet-sweep"
        wandb_ref, url = create_wandb_sweep(config, project=project, entity=args.entity or spec.entity)
        print(f"W&B sweep created (credentials from {creds}): {wandb_ref}\n  {url}", flush=True)
    if args.create_only:
        print(f"start agents with: hrnet_sweep sweep --resume {wandb_ref}")
        return 0
    result = run_agents(
        wandb_ref, mode="wandb", log_dir=Path("outputs") / "sweep-agents" / wandb_ref.split("/")[-1], **launch
    )
    if result.gave_up:
        print(result.gave_up, flush=True)
    return result.exit_code


def _open_or_create(args):
    """The local sweep to run: the one to resume (dead agents' runs marked crashed), or a new one."""
    from .engine import LocalSweep

    if args.resume:
        sweep = LocalSweep.open(
            args.resume, sweeps_root=args.sweeps_root, storage=args.storage, sweep_dir=args.sweep_dir
        )
        if args.run_cap is not None:
            sweep.set_run_cap(args.run_cap)
            sweep = sweep.reopen()
        reaped = sweep.reap_dead_runs()
        runs = sweep.runs()
        stopped = [r.run_id for r in runs if r.state == "crashed" and r.reason == USER_STOP]
        print(
            f"resuming local sweep {sweep.sweep_id} ({sweep.location}): {len(runs)} run(s) so far"
            + (f"; marked crashed (agent gone): {', '.join(reaped)}" if reaped else "")
            + (
                f"; stopped by the user, continuing from their last.ckpt (no new run of the cap): {', '.join(stopped)}"
                if stopped
                else ""
            ),
            flush=True,
        )
        return sweep
    why = (
        "--local given"
        if args.local
        else "--storage given"
        if args.storage
        else "no W&B credentials (WANDB_API_KEY or ~/.netrc) found"
    )
    print(
        f"{why}: running the sweep on the embedded engine (no account, no network; runs log to W&B "
        "offline, sync them later with `wandb sync`)",
        flush=True,
    )
    sweep = LocalSweep.create(
        args.yaml, sweeps_root=args.sweeps_root, sweep_dir=args.sweep_dir, run_cap=args.run_cap, storage=args.storage
    )
    cap = f", run cap {sweep.run_cap}" if sweep.run_cap else ""
    print(f"local sweep created: {sweep.sweep_id} ({sweep.spec.method}{cap}) in {sweep.location}", flush=True)
    return sweep


def _on_engine(args, launch: dict) -> int:
    """Run local agents on the embedded engine until the sweep is done; print its table."""
    from .status import render_status

    sweep = _open_or_create(args)
    ref = " ".join(sweep.ref_args())
    print(f"  status: hrnet_sweep status {ref}\n  resume: hrnet_sweep sweep --resume {ref}", flush=True)
    if sweep.location != str(sweep.root):  # the sweep lives elsewhere: other machines can join
        print(
            f"  this machine's runs: {sweep.root / 'runs'}\n  join from another machine: "
            f"hrnet_sweep sweep --resume {ref} (one agent per GPU), or hrnet_sweep agent {ref}",
            flush=True,
        )
    if args.create_only:
        return 0
    done = sweep.exhausted()
    result = None
    if done:
        print(f"nothing to run: {done}")
    else:
        extra = ["--keep-stopped-checkpoints"] if args.keep_stopped_checkpoints else []
        # how an agent joins: the folder, or the sweep id and the database URL without its
        # password (which goes in the agents' environment, never on a command line or in a log)
        agent_ref, flags, agent_env = sweep.agent_args()
        result = run_agents(
            agent_ref,
            mode="local",
            log_dir=sweep.root / "agents",
            agent_args=[*flags, *extra],
            env={**os.environ, **agent_env} if agent_env else None,
            **launch,
        )
    sweep = sweep.reopen()
    render_status(sweep)
    if result is not None and result.gave_up:
        print(result.gave_up, flush=True)  # the cause, last
        return 1
    return max(0 if result is None else result.exit_code, _all_runs_failed(sweep))


def _all_runs_failed(sweep) -> int:
    """1 (and say so) when the sweep has runs and none of them finished or was stopped early."""
    runs = sweep.runs()
    states = [r.state for r in runs]
    if not runs or any(s in ("finished", "stopped", "running") for s in states):
        return 0
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    print(
        f"every run of sweep {sweep.sweep_id} failed or crashed ({counts}): nothing to rank; the last lines of "
        f"each run's log are in {sweep.root / 'agents'}, the whole logs in {sweep.root / 'runs'}/*/output.log",
        flush=True,
    )
    return 1
