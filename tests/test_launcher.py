"""Launcher with test doubles: a fake `wandb` executable on PATH (tests/fake_bin/wandb)
and fake GPU lists (`--gpus`, a fake `nvidia-smi`): one pinned agent per GPU, restart
of a crashed agent up to the cap, SIGTERM stopping everything (no orphans), an agent that
gives up on failing runs never restarted and the sweep's exit 1 naming why, and the
choice between W&B and the embedded engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_engine import REPO

from _util import pid_alive
from hrnet_sweep.errors import UserError
from hrnet_sweep.sweep import launcher
from hrnet_sweep.sweep.agent import wandb_failure_args
from hrnet_sweep.sweep.launcher import detect_gpus, parse_gpus, run_agents
from hrnet_sweep.wandb_auth import credentials as wandb_credentials

FAKE_BIN = REPO / "tests" / "fake_bin"


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    """The fake `wandb` first on PATH; returns a reader of its calls."""
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_WANDB_LOG", str(tmp_path / "fake_wandb"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def calls() -> list[dict]:
        f = tmp_path / "fake_wandb" / "calls.jsonl"
        return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []

    return calls


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc), across sessions and process groups."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


# ----------------------------------------------------------------------------- GPUs


@pytest.mark.unit
def test_parse_gpus():
    assert parse_gpus("0,1, 3") == ["0", "1", "3"]
    assert parse_gpus("cpu") == [] and parse_gpus("") == []
    with pytest.raises(UserError, match="twice"):
        parse_gpus("0,0")
    with pytest.raises(UserError, match="'x'"):
        parse_gpus("0,x")


def test_detect_gpus_with_a_fake_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"  # test double: two GPUs
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=index ] && printf '0\\n1\\n'\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # an allocation (e.g. SLURM) wins
    assert detect_gpus() == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert detect_gpus() == []


# ----------------------------------------------------------------------------- pinned agents, restarts


def test_one_pinned_agent_per_gpu(tmp_path, fake_wandb):
    lines: list[str] = []
    result = run_agents(
        "ent/proj/abc123",
        gpus=["0", "1", "2"],
        mode="wandb",
        count=2,
        stagger_s=0.05,
        log_dir=tmp_path / "logs",
        poll_s=0.05,
        out=lines.append,
    )
    assert result.exit_code == 0
    calls = fake_wandb()
    assert sorted(c["cuda"] for c in calls) == ["0", "1", "2"]
    flags = wandb_failure_args(3)  # `--max-consecutive-failed-runs 3` where this wandb has it
    assert all(c["argv"] == ["agent", *flags, "--count", "2", "ent/proj/abc123"] for c in calls)
    assert len({c["sid"] for c in calls}) == 3, "each agent in its own session"
    for i, gpu in enumerate("012"):
        log = (tmp_path / "logs" / f"agent-{i}-gpu{gpu}.log").read_text()
        assert f"on CUDA_VISIBLE_DEVICES={gpu}" in log


def test_per_gpu_and_total_agents(tmp_path, fake_wandb):
    run_agents(
        "e/p/s",
        gpus=["0", "1"],
        per_gpu=2,
        mode="wandb",
        stagger_s=0,
        log_dir=tmp_path / "a",
        poll_s=0.05,
        out=lambda s: None,
    )
    assert sorted(c["cuda"] for c in fake_wandb()) == ["0", "0", "1", "1"]


def test_no_gpu_means_one_cpu_agent_announced(tmp_path, fake_wandb, monkeypatch):
    import hrnet_sweep.sweep.launcher as launcher

    monkeypatch.setattr(launcher, "detect_gpus", lambda: [])  # looked for, none found: said
    lines: list[str] = []
    run_agents("e/p/s", gpus=None, mode="wandb", stagger_s=0, log_dir=tmp_path / "a", poll_s=0.05, out=lines.append)
    assert [c["cuda"] for c in fake_wandb()] == [None]
    assert any("no GPU found" in ln for ln in lines)
    lines.clear()  # `--gpus cpu` asked for the CPU: nothing to say about nvidia-smi
    run_agents("e/p/s", gpus=[], mode="wandb", stagger_s=0, log_dir=tmp_path / "b", poll_s=0.05, out=lines.append)
    assert not any("nvidia-smi" in ln for ln in lines)


def test_crashed_agent_is_restarted_up_to_the_cap(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("FAKE_WANDB_BEHAVIOR", "crash")
    result = run_agents(
        "e/p/s",
        gpus=["0", "1"],
        mode="wandb",
        stagger_s=0,
        max_restarts=2,
        restart_delay_s=0.05,
        log_dir=tmp_path / "a",
        poll_s=0.05,
        out=lambda s: None,
    )
    assert [s.restarts for s in result.slots] == [2, 2]
    assert [s.exit_codes for s in result.slots] == [[1, 1, 1], [1, 1, 1]]
    assert sorted(c["cuda"] for c in fake_wandb()) == ["0"] * 3 + ["1"] * 3
    assert result.exit_code == 1
    assert (tmp_path / "a" / "agent-0-gpu0.log").read_text().count("===") == 3  # one log, appended


def test_agent_that_crashes_once_is_restarted_and_finishes(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("FAKE_WANDB_BEHAVIOR", "crash_first")
    result = run_agents(
        "e/p/s",
        gpus=["0"],
        mode="wandb",
        stagger_s=0,
        max_restarts=3,
        restart_delay_s=0.05,
        log_dir=tmp_path / "a",
        poll_s=0.05,
        out=lambda s: None,
    )
    assert result.slots[0].exit_codes == [1, 0] and result.exit_code == 0


# ----------------------------------------------------------------------------- shutdown


def test_sigterm_stops_every_agent_and_run_without_orphans(tmp_path, fake_wandb):
    env = {**os.environ, "FAKE_WANDB_BEHAVIOR": "run", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hrnet_sweep",
            "sweep",
            "--resume",
            "ent/proj/abc123",
            "--gpus",
            "0,1",
            "--stagger",
            "0.1",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len([c for c in fake_wandb() if c["child"]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    calls = fake_wandb()
    assert len(calls) == 2, proc.stdout.read() if proc.poll() is not None else calls
    everything = _descendants(proc.pid)
    runs = {c["child"] for c in calls}
    assert runs <= everything and {c["pid"] for c in calls} <= everything
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM received: stopping 2 agent(s)" in out and "killing it" not in out  # graceful
    left = [p for p in everything if pid_alive(p)]
    assert left == [], f"orphans left behind: {left}"
    assert sorted(c["cuda"] for c in calls) == ["0", "1"]
    assert (tmp_path / "outputs" / "sweep-agents" / "abc123" / "agent-1-gpu1.log").is_file()


# ----------------------------------------------------------------------------- W&B or embedded


@pytest.mark.unit
def test_wandb_credentials(tmp_path):
    base = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "cfg")}
    assert wandb_credentials(base) is None
    assert wandb_credentials({**base, "WANDB_API_KEY": "k"}) == "WANDB_API_KEY"
    assert wandb_credentials({**base, "WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) is None
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_credentials(base) == str(tmp_path / "netrc")
    assert wandb_credentials({**base, "WANDB_BASE_URL": "https://wandb.example.org"}) is None


def test_sweep_goes_to_wandb_with_credentials(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(launcher, "credentials", lambda: "WANDB_API_KEY")

    def fake_create(config, *, project, entity):  # test double of wandb.sweep
        seen.update(config=config, project=project, entity=entity)
        return "me/hrnet-sweep/s1", "https://wandb.ai/me/hrnet-sweep/sweeps/s1"

    def fake_run_agents(sweep, **kw):
        seen.update(sweep=sweep, **kw)
        return launcher.LaunchResult([])

    monkeypatch.setattr(launcher, "create_wandb_sweep", fake_create)
    monkeypatch.setattr(launcher, "run_agents", fake_run_agents)
    monkeypatch.chdir(tmp_path)
    code = launcher.main(
        [str(REPO / "sweeps" / "hrnet_w44_1280.yaml"), "--gpus", "0,1", "--count", "4", "--run-cap", "30"]
    )
    assert code == 0
    assert seen["mode"] == "wandb" and seen["sweep"] == "me/hrnet-sweep/s1" and seen["gpus"] == ["0", "1"]
    assert seen["count"] == 4 and seen["config"]["run_cap"] == 30 and seen["project"] == "hrnet-sweep"
    assert seen["config"]["parameters"]["models.optimizer.lr"]["max"] == 2.0e-4


def test_sweep_without_credentials_runs_on_the_embedded_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launcher, "credentials", lambda: None)
    monkeypatch.chdir(tmp_path)
    code = launcher.main([str(REPO / "sweeps" / "hrnet_w44_1280.yaml"), "--create-only", "--run-cap", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "no W&B credentials" in out and "embedded engine" in out
    (folder,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert json.loads((folder / "sweep.json").read_text())["run_cap"] == 3
    # --resume raises the cap of an existing local sweep
    assert launcher.main(["--resume", str(folder), "--run-cap", "5", "--create-only"]) == 0
    assert json.loads((folder / "sweep.json").read_text())["run_cap"] == 5


def test_local_sweep_runs_pinned_agents_on_the_embedded_engine(tmp_path, monkeypatch):
    from test_engine import make_sweep_yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_TRAIN_RECORD", str(tmp_path / "record"))
    # Runs long enough (2 x 1 s) that the second agent, started 0.2 s later, always gets
    # work: with millisecond runs the first agent could drain the grid alone.
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "1.0")
    path = make_sweep_yaml(
        tmp_path, {"seed": {"values": [1, 2, 3, 4]}, "trainer.max_epochs": {"value": 2}}, method="grid"
    )
    code = launcher.main([str(path), "--local", "--gpus", "0,1", "--stagger", "0.2", "--sweep-dir", "sw"])
    assert code == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "record").glob("*.json")]
    assert len(records) == 4 and {r["env"]["CUDA_VISIBLE_DEVICES"] for r in records} == {"0", "1"}
    assert {r["env"]["WANDB_SWEEP_ID"] for r in records} == {"sw"}
    logs = sorted(p.name for p in (tmp_path / "sw" / "agents").iterdir())
    assert logs == ["agent-0-gpu0.log", "agent-1-gpu1.log"]


# ----------------------------------------------------------------------------- a sweep whose every run failed


def test_resume_of_a_sweep_whose_every_run_crashed_exits_1(tmp_path, monkeypatch, capsys):
    from test_engine import make_sweep_yaml

    from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

    monkeypatch.chdir(tmp_path)
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}}, run_cap=2)
    sweep = LocalSweep.create(path, sweep_dir=tmp_path / "sw")
    for _ in range(2):
        sug = sweep.suggest(agent="test")
        sweep.finish(sug.number, RunOutcome("crashed", reason="killed by SIGKILL"))
    assert launcher.main(["--resume", str(sweep.root), "--gpus", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "nothing to run: run cap 2 reached" in out and "every run of sweep sw failed or crashed (2 crashed)" in out


def test_agents_whose_runs_all_fail_make_the_sweep_exit_1(tmp_path, monkeypatch, capsys):
    from test_engine import make_sweep_yaml

    from hrnet_sweep.sweep.agent import EXIT_RUNS_FAILED, run_agent
    from hrnet_sweep.sweep.engine import LocalSweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_TRAIN_FAIL_SEEDS", "1,2,3")

    def grid(name: str, seeds: list[int]) -> Path:
        return make_sweep_yaml(
            tmp_path,
            {"seed": {"values": seeds}, "trainer.max_epochs": {"value": 2}},
            method="grid",
            name=f"{name}.yaml",
        )

    argv = [str(grid("failing", [1, 2])), "--local", "--gpus", "cpu", "--stagger", "0", "--sweep-dir", "sw"]
    code = launcher.main(argv)
    out = capsys.readouterr().out
    assert code == 1 and "every run it started failed" in out and "every run of sweep sw failed" in out
    # an agent on its own says so too; one good run among failed ones is a success
    mixed = LocalSweep.create(grid("mixed", [3, 4]), sweep_dir=tmp_path / "mixed")
    assert run_agent(mixed, out=lambda s: None).exit_code == 0
    bad = LocalSweep.create(grid("bad", [1]), sweep_dir=tmp_path / "bad")
    assert run_agent(bad, out=lambda s: None).exit_code == EXIT_RUNS_FAILED


# ----------------------------------------------------------------------------- agents that give up


def test_local_sweep_stops_with_exit_1_naming_the_cause_when_runs_keep_failing(tmp_path, monkeypatch, capsys):
    from test_agent import _failing_after

    from hrnet_sweep.sweep.engine import LocalSweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "0.05")
    path = _failing_after(tmp_path, good_runs=1)  # one run finishes, then every run fails at once
    code = launcher.main([str(path), "--local", "--gpus", "cpu", "--stagger", "0", "--sweep-dir", "sw"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert [r.state for r in LocalSweep(tmp_path / "sw").runs()] == ["finished", "crashed", "crashed", "crashed"]
    last = out.strip().splitlines()[-1]
    assert last.startswith("stopped: agent 0 (CPU) gave up: its last 3 runs failed, the last one ("), out
    assert last.endswith(f"and the logs in {tmp_path / 'sw' / 'runs'}") and "without writing status.json" in last
    assert (tmp_path / "sw" / "agents" / "agent-0-cpu.log").read_text().count("===") == 1  # not restarted


def _fake_wandb(folder: Path) -> Path:
    """A `wandb` executable (test double) whose `wandb agent` records its arguments, then
    does what $FAKE_WANDB_END says: `gave_up` prints W&B's line for
    --max-consecutive-failed-runs and exits 0 (as wandb 0.31 does); `crash` exits 1."""
    fake = folder / "bin" / "wandb"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(folder / 'calls.jsonl')!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if os.environ['FAKE_WANDB_END'] == 'crash':\n"
        "    sys.exit('Traceback (most recent call last): ...')\n"
        "print('wandb: ERROR Detected 3 consecutive failed runs, shutting down.', file=sys.stderr)\n"
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("end", ["gave_up", "crash"])
def test_a_wandb_agent_that_gives_up_is_not_restarted(tmp_path, monkeypatch, end):
    fake = _fake_wandb(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_WANDB_END", end)
    log = tmp_path / "logs" / "agent-0-gpu0.log"
    log.parent.mkdir()
    log.write_text("wandb: ERROR Detected 3 consecutive failed runs, shutting down.\n")  # an earlier launch's
    lines: list[str] = []
    result = run_agents(
        "e/p/s",
        gpus=["0"],
        mode="wandb",
        stagger_s=0,
        max_restarts=2,
        restart_delay_s=0.05,
        log_dir=tmp_path / "logs",
        poll_s=0.05,
        out=lines.append,
    )
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert all(c == ["agent", *wandb_failure_args(3), "e/p/s"] for c in calls)
    assert result.exit_code == 1
    if end == "gave_up":
        assert len(calls) == 1 and result.slots[0].restarts == 0
        assert result.gave_up == (
            "stopped: agent 0 (GPU 0) gave up: wandb: ERROR Detected 3 consecutive failed runs, shutting down."
        )
    else:  # a crash is restarted as before, whatever the log held before this launch
        assert len(calls) == 3 and result.gave_up is None
