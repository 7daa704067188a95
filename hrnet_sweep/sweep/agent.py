"""The embedded agent: `wandb agent` for a local sweep.

Loop: ask the engine for a run, write the `WANDB_SWEEP_PARAM_PATH` file, expand the
sweep `command` exactly as `wandb agent` does, launch it in its own process group with
the W&B environment (`WANDB_SWEEP_ID`, `WANDB_RUN_ID`, `WANDB_SWEEP_PARAM_PATH`,
`WANDB_MODE=offline`, `WANDB_DIR`) plus `HRNET_SWEEP_CONTROL_DIR`, follow
`metrics.jsonl`, report each value, apply W&B's Hyperband rule over all runs of the sweep
and write `STOP` when it says stop; at exit read `status.json` and close the run.
One failing run never stops the sweep; an agent whose last `max_failures` runs (3 by
default) all failed gives up, whatever ran before (the command is wrong, the data went
away, the disk is full: a new run would fail the same way), exits 1 and says why in its
last line (`wandb agent --max-consecutive-failed-runs`). A run whose output and metrics
stay still for `stall_timeout_s` (an hour by default) is stopped and recorded `crashed`:
no wait on a training is unbounded.

Differences from `wandb agent`, on purpose: `${interpreter}` is this Python
(`sys.executable`) rather than `python` from PATH, so an agent started without an
activated venv still runs the venv's training; a run's output goes to
`runs/<run_id>/output.log` rather than the agent's terminal, so parallel agents do not
interleave; a Hyperband stop is a `STOP` file (training stops at the next epoch
boundary and keeps `last.ckpt`) rather than SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..children import STALL_TIMEOUT_S, OutputWatch, child_env, kill_group, start
from ..constants import CONTROL_DIR_ENV
from ..errors import UserError
from ..files import open_append, read_tail
from ..numeric import flag
from ..runfolder import (
    RESUME_ENV,
    USER_STOP,
    HistoryTail,
    best_in_history,
    clear_status,
    finite,
    metric_values,
    read_status,
    request_stop,
)
from ..wandb_auth import SWEEP_NAME_ENV, is_sweep_path
from .command import expand_command, uses_args_json_file, write_args_json_file, write_param_file
from .engine import (
    DEFAULT_SWEEPS_ROOT,
    LocalSweep,
    RunOutcome,
    Suggestion,
    add_sweep_flags,
    checkpoint_files,
    delete_files,
)
from .hyperband import RunRecord, hyperband_stop

__all__ = [
    "EXIT_GAVE_UP",
    "EXIT_RUNS_FAILED",
    "GAVE_UP",
    "MAX_CONSECUTIVE_FAILURES",
    "STALL_TIMEOUT_S",
    "AgentResult",
    "check_hyperband",
    "classify_exit",
    "launch_run",
    "main",
    "run_agent",
    "wandb_failure_args",
]

EXIT_GAVE_UP = 1
"""Agent exit code when its last `max_failures` runs all failed: it stopped, with the
cause in its last line (`GAVE_UP`); restarting it would fail the same way."""
GAVE_UP = "gave up: "
"""What the agent's last line says when it gives up, before the cause: the launcher looks
for it in the agent's log (its exit code 1 is also that of a crash)."""
EXIT_RUNS_FAILED = 4
"""Agent exit code when it ended normally (sweep done, count reached) but every run it
started failed or crashed: not a success, and not a reason to restart it."""
MAX_CONSECUTIVE_FAILURES = 3
"""Runs in a row that fail before an agent gives up (`--max-failures`)."""
KILL_DELAY_S = 30.0  # SIGTERM -> SIGKILL, as wandb agent (WANDB_AGENT_KILL_DELAY)
HYPERBAND_EVERY_S = 5.0
HEARTBEAT_S = 10.0  # engine.STALE_AFTER_S is much longer


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def wandb_failure_args(max_failures: int) -> list[str]:
    """`wandb agent`'s flag for our `max_failures`, where the installed wandb has it
    (`--max-consecutive-failed-runs`, new in 2025-26; older agents give up only when
    their first runs fail). Read from wandb's sources: importing wandb takes seconds."""
    import importlib.util

    spec = importlib.util.find_spec("wandb")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / "cli" / "cli.py").read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        if "--max-consecutive-failed-runs" in text:
            return ["--max-consecutive-failed-runs", str(max_failures)]
    return []


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------- launching


def launch_run(
    sweep: LocalSweep, sug: Suggestion, *, base_env: Mapping[str, str] | None = None, interpreter: str = sys.executable
) -> tuple[subprocess.Popen, list[str]]:
    """Start one run as `wandb agent` would; return the process and its command."""
    env = child_env(base_env)
    for key in sweep.private_env():  # the sweep database's password: the run never needs it
        env.pop(key, None)
    param_path = sweep.param_path(sug.run_id)
    write_param_file(param_path, sug.params)
    env.update(
        {
            "WANDB_SWEEP_ID": sweep.sweep_id,
            "WANDB_RUN_ID": sug.run_id,
            "WANDB_SWEEP_PARAM_PATH": str(param_path),
            "WANDB_MODE": "disabled" if env.get("WANDB_MODE") == "disabled" else "offline",
            "WANDB_DIR": str(sweep.root),
            SWEEP_NAME_ENV: sweep.spec.name or "",  # the W&B group and tags of the sweep's runs
            CONTROL_DIR_ENV: str(sug.control_dir),
        }
    )
    env.pop(RESUME_ENV, None)
    if sug.resume:  # a run stopped by the user: on from its last.ckpt, its old end forgotten
        env[RESUME_ENV] = "auto"
        clear_status(sug.control_dir)
    json_file = None
    if uses_args_json_file(sweep.spec.command):
        json_file = str(param_path.with_suffix(".json"))
        write_args_json_file(json_file, sug.params)
    cmd = expand_command(
        sweep.spec.command,
        sug.params,
        interpreter=interpreter,
        program=sweep.spec.program,
        env=env,
        args_json_file=json_file,
    )
    log = open_append(sug.control_dir / "output.log", "run log")  # never through a planted link
    try:
        proc = start(cmd, env=env, log=log)
    except OSError as err:
        log.write(f"cannot start {cmd[0]!r}: {err}\n".encode())
        raise
    finally:
        log.close()
    return proc, cmd


# ----------------------------------------------------------------------------- run outcome


def classify_exit(
    returncode: int,
    status: Mapping[str, Any] | None,
    history: Sequence[float],
    *,
    goal: str = "maximize",
    metric: str = "val/hmean",
    stop_reason: str | None = None,
    interrupted: bool = False,
    stalled: str | None = None,
) -> RunOutcome:
    """How a run ended, from its exit code, its status.json and its metric history.

    No status.json means crashed (killed by a signal, or exited without writing it).
    `finished` needs a finite metric; `stopped` after our STOP is a Hyperband stop.
    `stalled`: the agent stopped the run because it stopped answering (the reason).
    """
    if stalled is not None:
        return RunOutcome("crashed", reason=stalled, exit_code=returncode, run_dir=(status or {}).get("run_dir"))
    if status is None:
        if interrupted:
            reason = USER_STOP  # the agent's stop reached the run before it could say so itself
        elif returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            reason = f"killed by {name}"
        else:
            reason = f"exited with code {returncode} without writing status.json"
        return RunOutcome("crashed", reason=reason, exit_code=returncode)
    common = {
        "exit_code": returncode,
        "run_dir": status.get("run_dir"),
        "best_epoch": status.get("best_epoch"),
        "best_ckpt": status.get("best_ckpt"),
        "last_ckpt": status.get("last_ckpt"),
    }
    found = best_in_history(history, goal)
    hist_best = None if found is None else found[1]
    state = status.get("state")
    if state == "finished":
        best = status.get("best")
        value = finite(best) if finite(best) is not None else hist_best
        if value is None:
            return RunOutcome("failed", reason=f"finished without a finite {metric}", **common)
        return RunOutcome("finished", value=value, reason=status.get("reason"), **common)
    if state == "stopped":
        return RunOutcome("stopped", value=hist_best, reason=stop_reason or status.get("reason") or "stopped", **common)
    if state == "failed":
        return RunOutcome("failed", reason=status.get("reason") or f"failed with exit code {returncode}", **common)
    if state == "interrupted":  # SIGTERM / Ctrl-C: stopped by the user; continued on `sweep --resume`
        why = USER_STOP if interrupted else (status.get("reason") or USER_STOP)
        return RunOutcome("crashed", reason=why, **common)
    return RunOutcome("failed", reason=f"status.json has unknown state {state!r}", **common)


def check_hyperband(sweep: LocalSweep, sug: Suggestion) -> str | None:
    """Apply W&B's Hyperband rule, over every run of the sweep, to the running run `sug`:
    when it says stop, write the run's `STOP` file and record the decision; return its
    reason (None: keep the run, or the sweep has no `early_terminate`).

    What an agent does whenever its run logs a value (and every few seconds, as thresholds
    move when other runs reach a band); `sweep.replay` calls the same function.
    """
    spec = sweep.spec.early_terminate
    if spec is None:
        return None
    records = [RunRecord(r.run_id, r.state, r.history) for r in sweep.runs()]
    decision = hyperband_stop(records, spec, goal=sweep.spec.metric_goal).get(sug.run_id)
    if decision is None or not decision.stop:
        return None
    reason = f"hyperband {decision.reason}"
    request_stop(
        sug.control_dir,
        {"reason": reason, "band": decision.band, "value": decision.value, "threshold": decision.threshold},
    )
    sweep.record_stop(
        sug.number,
        {"band": decision.band, "value": decision.value, "threshold": decision.threshold, "reason": reason},
    )
    return reason


# ----------------------------------------------------------------------------- the agent


@dataclass
class AgentResult:
    """What an agent did: outcome per run id, why it ended, its exit code."""

    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    ended: str = ""
    exit_code: int = 0


class _Agent:
    def __init__(
        self,
        sweep: LocalSweep,
        *,
        count: int | None,
        poll_s: float,
        keep_stopped_checkpoints: bool,
        name: str,
        out: Callable[[str], None],
        kill_delay_s: float,
        max_failures: int,
        stall_timeout_s: float,
    ):
        self.sweep, self.count, self.poll_s = sweep, count, poll_s
        self.max_failures, self.stall_timeout_s = max_failures, stall_timeout_s
        self.keep_stopped = keep_stopped_checkpoints
        self.name, self.out, self.kill_delay_s = name, out, kill_delay_s
        self.signal: int | None = None
        self.result = AgentResult()
        spec = sweep.spec
        self.metric = spec.metric_name or "val/hmean"
        self.goal = spec.metric_goal

    def log(self, msg: str) -> None:
        self.out(f"[{_now()}] {msg}")

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: no more waiting
            self.kill_delay_s = 0.0
        self.signal = signum

    def run(self) -> AgentResult:
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            return self._loop()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _loop(self) -> AgentResult:
        sw = self.sweep
        reaped = sw.reap_dead_runs()
        if reaped:
            self.log(f"marked {len(reaped)} run(s) of dead agents as crashed: {', '.join(reaped)}")
        self.log(
            f"agent {self.name} on sweep {sw.sweep_id} ({sw.spec.method}, {self.goal} {self.metric}), folder {sw.root}"
            + ("" if sw.location == str(sw.root) else f", stored in {sw.location}")
        )
        started = succeeded = in_a_row = 0
        while self.signal is None:
            if self.count is not None and started >= self.count:
                self.result.ended = f"count {self.count} reached"
                break
            sug = sw.suggest(agent=self.name)
            if sug is None:
                self.result.ended = f"sweep done: {sw.exhausted() or 'no more runs'}"
                break
            started += 1
            outcome = self._run(sug, started)
            self.result.outcomes[sug.run_id] = outcome
            if outcome.state in ("finished", "stopped"):
                succeeded += 1
                in_a_row = 0
            elif outcome.state in ("failed", "crashed") and self.signal is None:
                in_a_row += 1
                if in_a_row >= self.max_failures:
                    self.result.ended = (
                        f"{GAVE_UP}its last {in_a_row} runs failed, the last one ({sug.run_id}) with: "
                        f"{_first_line(outcome.reason) or outcome.state}; check the sweep command, the data "
                        f"and the disk, and the logs in {sw.root / 'runs'}"
                    )
                    self.result.exit_code = EXIT_GAVE_UP
                    break
        if self.signal is not None:
            self.result.ended = f"stopped by {signal.Signals(self.signal).name}"
            self.result.exit_code = 128 + self.signal
        states = [o.state for o in self.result.outcomes.values()]
        summary = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) or "no runs"
        if self.result.exit_code == 0 and states and succeeded == 0:
            self.result.exit_code = EXIT_RUNS_FAILED
            summary += f"; none finished (exit {EXIT_RUNS_FAILED}), see the logs in {sw.root / 'runs'}"
        if self.result.exit_code == EXIT_GAVE_UP:  # the cause last, on a line of its own
            self.log(f"agent {self.name} done; {len(states)} run(s): {summary}")
            self.log(f"agent {self.name} {self.result.ended}")
        else:
            self.log(f"agent {self.name} done ({self.result.ended}); {len(states)} run(s): {summary}")
        return self.result

    def _run(self, sug: Suggestion, index: int) -> RunOutcome:
        sw = self.sweep
        params = " ".join(f"{k}={_fmt(v)}" for k, v in sug.params.items())
        of = f"/{self.count}" if self.count else ""
        try:
            proc, cmd = launch_run(sw, sug)
        except (OSError, UserError) as err:
            outcome = RunOutcome("failed", reason=f"could not start the command: {err}")
            sw.finish(sug.number, outcome)
            self.log(f"run {sug.run_id} failed to start: {err}")
            return outcome
        how = "continues from its last.ckpt (it was stopped by the user)" if sug.resume else "started"
        self.log(f"run {sug.run_id} ({index}{of}) {how}, pid {proc.pid}: {params}")
        self.log(f"  log: {sug.control_dir / 'output.log'}")
        tail = HistoryTail(sug.control_dir)
        history: list[float] = []
        stop_reason: str | None = None
        last_beat = last_hb = time.monotonic()
        term_at: float | None = None
        beat = sug.control_dir / "heartbeat"
        activity = OutputWatch([sug.control_dir / "output.log", sug.control_dir / "metrics.jsonl"])
        stalled: str | None = None
        while True:
            rc = proc.poll()
            new = metric_values(tail.read(), self.metric)
            if new:
                sw.report(sug.number, new, len(history))
                history += new
            # thresholds move as other runs reach a band: re-check now and then, not only on new values
            if (
                stop_reason is None
                and sw.spec.early_terminate is not None
                and rc is None
                and (new or time.monotonic() - last_hb > HYPERBAND_EVERY_S)
            ):
                stop_reason = self._hyperband(sug)
                last_hb = time.monotonic()
            if time.monotonic() - last_beat > HEARTBEAT_S:
                beat.touch()
                last_beat = time.monotonic()
            if rc is not None:
                break
            if stalled is None and activity.still_for() > self.stall_timeout_s:
                stalled = (
                    f"stalled: no output for {self.stall_timeout_s:g} s (output.log and metrics.jsonl unchanged; "
                    "--stall-timeout)"
                )
                self.log(f"run {sug.run_id}: {stalled}; stopping it")
            if self.signal is not None or stalled is not None:
                if term_at is None:
                    if self.signal is not None:
                        self.log(f"run {sug.run_id}: stopping it ({signal.Signals(self.signal).name} received)")
                    kill_group(proc.pid, signal.SIGTERM)
                    term_at = time.monotonic()
                elif time.monotonic() - term_at > self.kill_delay_s:
                    kill_group(proc.pid, signal.SIGKILL)
            try:  # returns as soon as the run exits
                proc.wait(timeout=self.poll_s)
            except subprocess.TimeoutExpired:
                pass
        kill_group(proc.pid, signal.SIGKILL)  # whatever the run left in its group (e.g. loader workers)
        status = read_status(sug.control_dir)
        outcome = classify_exit(
            rc,
            status,
            history,
            goal=self.goal,
            metric=self.metric,
            stop_reason=stop_reason,
            interrupted=self.signal is not None,
            stalled=stalled,
        )
        for key in ("run_dir", "best_ckpt", "last_ckpt"):  # training writes them relative to our cwd
            if getattr(outcome, key):
                setattr(outcome, key, os.path.abspath(getattr(outcome, key)))
        if outcome.state == "stopped" and stop_reason is not None and not self.keep_stopped:
            outcome.freed_bytes = delete_files(checkpoint_files(outcome.run_dir, outcome.best_ckpt, outcome.last_ckpt))
        if not sw.finish(sug.number, outcome):
            self.log(f"run {sug.run_id}: already closed by another agent (it looked dead to it)")
        self._report_end(sug, outcome, history, proc.pid)
        return outcome

    def _hyperband(self, sug: Suggestion) -> str | None:
        reason = check_hyperband(self.sweep, sug)
        if reason is not None:
            self.log(f"run {sug.run_id}: STOP written ({reason})")
        return reason

    def _report_end(self, sug: Suggestion, o: RunOutcome, history: list[float], pid: int) -> None:
        best = "n/a" if o.value is None else f"{o.value:.4f}"
        line = f"run {sug.run_id} {o.state} (exit {o.exit_code}): {len(history)} value(s), best {self.metric} {best}"
        if o.reason and o.state != "finished":
            line += f"; {o.reason}"
        if o.freed_bytes:
            line += f"; checkpoints dropped ({_fmt_bytes(o.freed_bytes)})"
        self.log(line)
        if o.state in ("failed", "crashed"):
            for ln in read_tail(sug.control_dir / "output.log", 16 * 1024).splitlines()[-10:]:
                self.out(f"    | {ln}")


def run_agent(
    sweep: LocalSweep | str | os.PathLike,
    *,
    count: int | None = None,
    poll_s: float = 1.0,
    keep_stopped_checkpoints: bool = False,
    name: str = "",
    out: Callable[[str], None] | None = None,
    kill_delay_s: float = KILL_DELAY_S,
    sweeps_root: str | os.PathLike = DEFAULT_SWEEPS_ROOT,
    max_failures: int = MAX_CONSECUTIVE_FAILURES,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    storage: str | None = None,
    sweep_dir: str | os.PathLike | None = None,
) -> AgentResult:
    """Run one agent on a local sweep until `count` runs, the end of the sweep, `max_failures`
    failed runs in a row (exit code `EXIT_GAVE_UP`), or a signal.

    Args:
        sweep: an opened sweep, a sweep folder, or a sweep id under `sweeps_root`.
        count: runs this agent starts at most (None: until the sweep is done).
        poll_s: how often metrics.jsonl and the process are checked.
        keep_stopped_checkpoints: keep the checkpoints of runs Hyperband stopped.
        name: agent name in the run records (default host:pid).
        out: where progress lines go (default: stdout, flushed).
        max_failures: failed runs in a row after which the agent gives up.
        stall_timeout_s: a run whose output.log and metrics.jsonl stay unchanged this
            long is stopped and recorded crashed.
        storage: a database URL: `sweep` is then the id of a sweep in that database, and
            `sweep_dir` (default `<sweeps_root>/<id>`) this machine's folder of it.
    """
    if count is not None and count < 1:
        raise UserError(f"--count {count} must be >= 1")
    if max_failures < 1:
        raise UserError(f"--max-failures {max_failures} must be >= 1")
    if not stall_timeout_s > 0:
        raise UserError(f"--stall-timeout {stall_timeout_s} must be > 0 seconds")
    opened = not isinstance(sweep, LocalSweep)
    sw = LocalSweep.open(sweep, sweeps_root=sweeps_root, storage=storage, sweep_dir=sweep_dir) if opened else sweep
    printer = out or (lambda s: print(s, flush=True))
    agent = _Agent(
        sw,
        count=count,
        poll_s=poll_s,
        keep_stopped_checkpoints=keep_stopped_checkpoints,
        name=name or f"{os.uname().nodename}:{os.getpid()}",
        out=printer,
        kill_delay_s=kill_delay_s,
        max_failures=max_failures,
        stall_timeout_s=stall_timeout_s,
    )
    try:
        return agent.run()
    finally:
        if opened:
            sw.close()  # its heartbeats, its database connections


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep agent",
        description=(
            "Run one agent: a local sweep (folder or id under --sweeps-root) on the embedded engine, "
            "or ENTITY/PROJECT/SWEEP_ID on W&B (runs `wandb agent`)."
        ),
    )
    ap.add_argument("sweep", help="sweep folder, local sweep id, or entity/project/sweep_id")
    ap.add_argument("--count", type=flag(int, ge=1), help="runs this agent starts at most")
    add_sweep_flags(ap)
    ap.add_argument(
        "--keep-stopped-checkpoints",
        action="store_true",
        help="keep checkpoints of runs stopped early by Hyperband (dropped by default)",
    )
    ap.add_argument("--poll", type=flag(float, gt=0), default=1.0, help="seconds between checks of a running run")
    ap.add_argument(
        "--max-failures",
        type=flag(int, ge=1),
        default=MAX_CONSECUTIVE_FAILURES,
        help=f"give up (exit 1) after this many failed runs in a row (default {MAX_CONSECUTIVE_FAILURES})",
    )
    ap.add_argument(
        "--stall-timeout",
        type=flag(float, gt=0),
        default=STALL_TIMEOUT_S,
        help=f"stop a run whose output and metrics stay unchanged this many seconds (default {STALL_TIMEOUT_S:g})",
    )
    args = ap.parse_args(list(argv or []))
    if is_sweep_path(args.sweep) and args.storage is None:
        cmd = ["wandb", "agent", *wandb_failure_args(args.max_failures)]
        cmd += (["--count", str(args.count)] if args.count else []) + [args.sweep]
        print(f"W&B sweep {args.sweep}: exec {' '.join(cmd)}", flush=True)
        try:
            os.execvp(cmd[0], cmd)
        except FileNotFoundError:
            raise UserError("`wandb` is not on PATH; pip install wandb") from None
    result = run_agent(
        args.sweep,
        count=args.count,
        poll_s=args.poll,
        keep_stopped_checkpoints=args.keep_stopped_checkpoints,
        sweeps_root=args.sweeps_root,
        max_failures=args.max_failures,
        stall_timeout_s=args.stall_timeout,
        storage=args.storage,
        sweep_dir=args.sweep_dir,
    )
    return result.exit_code
