"""Embedded agent with the fake training (tests/fake_train.py, a test double of
`python -m hrnet_sweep.train`): launch as `wandb agent` does, Hyperband STOP, failures
and killed runs recorded while the sweep goes on, an agent that gives up after failed
runs in a row (whatever ran before) and stops a run that stops answering, clean stop on
SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_engine import FAKE_TRAIN, REPO, make_sweep_yaml

from _util import pid_alive
from hrnet_sweep.sweep.agent import EXIT_GAVE_UP, GAVE_UP, MAX_CONSECUTIVE_FAILURES, classify_exit, run_agent
from hrnet_sweep.sweep.command import expand_command, read_param_file
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

HYPERBAND = {"type": "hyperband", "min_iter": 2, "eta": 3, "strict": True}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs write outputs/ under the agent's cwd: use a fresh one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "0.05")
    return tmp_path


def _quiet(lines: list[str]):
    return lines.append


# ----------------------------------------------------------------------------- pure


@pytest.mark.unit
@pytest.mark.parametrize(
    "rc,status,history,kw,expect",
    [
        (-9, None, [0.1], {}, ("crashed", None, "killed by SIGKILL")),
        (0, None, [], {}, ("crashed", None, "exited with code 0 without writing status.json")),
        (-15, None, [], {"interrupted": True}, ("crashed", None, "stopped by the user")),
        (0, {"state": "finished", "best": 0.7}, [0.5, 0.7, 0.6], {}, ("finished", 0.7, None)),
        (0, {"state": "finished", "best": None}, [0.5, 0.6], {}, ("finished", 0.6, None)),
        (0, {"state": "finished", "best": None}, [], {}, ("failed", None, "finished without a finite val/hmean")),
        (
            0,
            {"state": "stopped", "reason": "x"},
            [0.2, 0.3],
            {"stop_reason": "hyperband stop"},
            ("stopped", 0.3, "hyperband stop"),
        ),
        (1, {"state": "failed", "reason": "loss is NaN"}, [0.2], {}, ("failed", None, "loss is NaN")),
        (
            130,
            {"state": "interrupted", "reason": "interrupted by a signal"},
            [],
            {},
            ("crashed", None, "interrupted by a signal"),
        ),
    ],
)
def test_classify_exit(rc, status, history, kw, expect):
    o = classify_exit(rc, status, history, **kw)
    assert (o.state, o.value, o.reason) == expect and o.exit_code == rc


@pytest.mark.unit
def test_classify_exit_minimize_uses_the_lowest_value():
    o = classify_exit(0, {"state": "stopped"}, [0.5, 0.3, 0.4], goal="minimize")
    assert o.value == 0.3


# ----------------------------------------------------------------------------- launching


def test_run_is_launched_as_wandb_agent_does(in_tmp, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_RECORD", str(in_tmp / "record"))
    monkeypatch.setenv("WANDB_MODE", "online")  # the engine always logs offline
    path = make_sweep_yaml(
        in_tmp,
        {"seed": {"values": [3]}, "models.optimizer.lr": {"value": 3.0e-4}, "trainer.max_epochs": {"value": 2}},
        method="grid",
    )
    sweep = LocalSweep.create(path)
    result = run_agent(sweep, poll_s=0.05, out=_quiet([]))
    ((run_id, outcome),) = result.outcomes.items()
    assert outcome.state == "finished" and result.exit_code == 0
    rec = json.loads((in_tmp / "record" / f"{run_id}.json").read_text())
    run = sweep.runs()[0]
    expanded = expand_command(sweep.spec.command, run.params, interpreter=sys.executable, program=None, env=os.environ)
    assert expanded[:2] == ["/usr/bin/env", sys.executable]
    assert (
        rec["argv"]
        == expanded[2:]
        == [str(REPO / "tests" / "fake_train.py"), "seed=3", "models.optimizer.lr=0.0003", "trainer.max_epochs=2"]
    )
    assert rec["executable"] == sys.executable
    env = rec["env"]
    param_path = sweep.root / "wandb" / f"sweep-{sweep.sweep_id}" / f"config-{run_id}.yaml"
    assert env["WANDB_SWEEP_ID"] == sweep.sweep_id and env["WANDB_RUN_ID"] == run_id
    assert env["WANDB_SWEEP_PARAM_PATH"] == str(param_path)
    assert (
        read_param_file(param_path) == run.params == {"seed": 3, "models.optimizer.lr": 3e-4, "trainer.max_epochs": 2}
    )
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(sweep.root)
    assert env["HRNET_SWEEP_CONTROL_DIR"] == str(sweep.root / "runs" / run_id)
    assert rec["pgid"] == rec["pid"], "the run must lead its own process group"
    assert rec["cwd"] == str(in_tmp)
    assert run.history == pytest.approx([0.15, 0.225]) and run.run_dir == str(in_tmp / "outputs" / run_id)


# ----------------------------------------------------------------------------- hyperband


@pytest.mark.parametrize("keep", [False, True])
def test_hyperband_stop_is_honoured(in_tmp, monkeypatch, keep):
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "0.4")
    path = make_sweep_yaml(
        in_tmp,
        {
            "seed": {"value": 1},
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-3},
            "trainer.max_epochs": {"value": 6},
        },
        early_terminate=HYPERBAND,
    )
    sweep = LocalSweep.create(path)
    strong = sweep.suggest(agent="earlier")  # a strong run that finished before
    sweep.report(strong.number, [0.5, 0.7, 0.8, 0.85, 0.9, 0.9], 0)
    sweep.finish(strong.number, RunOutcome("finished", value=0.9, exit_code=0))
    lines: list[str] = []
    result = run_agent(sweep, count=1, poll_s=0.05, keep_stopped_checkpoints=keep, out=lines.append)
    ((run_id, outcome),) = result.outcomes.items()
    run = next(r for r in sweep.runs() if r.run_id == run_id)
    assert run.state == "stopped" and outcome.state == "stopped"
    assert run.stop["band"] == 2 and run.stop["value"] == pytest.approx(0.075)
    assert run.stop["threshold"] == pytest.approx(0.7)
    assert 2 <= run.epochs < 6, "training must stop at the epoch boundary after the band"
    assert run.control_dir and (Path(run.control_dir) / "STOP").is_file()
    assert json.loads((Path(run.control_dir) / "status.json").read_text())["state"] == "stopped"
    assert sweep.study.trials[run.number].state.name == "PRUNED"
    ckpts = list((in_tmp / "outputs" / run_id / "checkpoints").glob("*.ckpt"))
    if keep:
        assert len(ckpts) == 2 and outcome.freed_bytes == 0
    else:
        assert ckpts == [] and outcome.freed_bytes == 3000
        assert any("checkpoints dropped" in ln for ln in lines)
    assert any("STOP written" in ln and run_id in ln for ln in lines)


# ----------------------------------------------------------------------------- failures


def test_failed_run_is_recorded_and_the_sweep_goes_on(in_tmp, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL_SEEDS", "2")
    path = make_sweep_yaml(in_tmp, {"seed": {"values": [1, 2, 3]}, "trainer.max_epochs": {"value": 3}}, method="grid")
    sweep = LocalSweep.create(path)
    lines: list[str] = []
    result = run_agent(sweep, poll_s=0.05, out=lines.append)
    assert result.exit_code == 0 and result.ended == "sweep done: grid of 3 points done"
    by_seed = {r.params["seed"]: r for r in sweep.runs()}
    assert {s: r.state for s, r in by_seed.items()} == {1: "finished", 2: "failed", 3: "finished"}
    failed = by_seed[2]
    assert failed.reason == "loss is NaN at epoch 1 (fake)" and failed.exit_code == 1
    assert any(f"run {failed.run_id} failed (exit 1)" in ln for ln in lines)


def test_agent_gives_up_when_its_first_runs_all_fail(in_tmp, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL_SEEDS", "2")
    path = make_sweep_yaml(
        in_tmp,
        {
            "seed": {"value": 2},
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-3},
            "trainer.max_epochs": {"value": 3},
        },
        run_cap=20,
    )
    result = run_agent(LocalSweep.create(path), poll_s=0.05, out=_quiet([]))
    assert result.exit_code == EXIT_GAVE_UP == 1 and len(result.outcomes) == MAX_CONSECUTIVE_FAILURES == 3


def _failing_after(folder: Path, good_runs: int) -> Path:
    """A sweep command that trains (the fake training) `good_runs` times, then fails at
    once every time, as when the data folder went away: a wrapper that counts its calls."""
    wrapper = folder / "train_then_fail.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"calls = {str(folder / 'calls')!r}\n"
        "with open(calls, 'a') as fh:\n"
        "    fh.write('x')\n"
        f"if os.path.getsize(calls) > {good_runs}:\n"
        "    sys.exit('data root data/ not found')\n"
        f"sys.argv[0] = {FAKE_TRAIN!r}\n"
        f"runpy.run_path({FAKE_TRAIN!r}, run_name='__main__')\n"
    )
    path = make_sweep_yaml(
        folder,
        {
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-3},
            "trainer.max_epochs": {"value": 2},
        },
        run_cap=20,
    )
    doc = path.read_text().replace(FAKE_TRAIN, str(wrapper))
    path.write_text(doc)
    return path


def test_agent_gives_up_after_failed_runs_in_a_row_whatever_ran_before(in_tmp):
    # Two runs finish, then every run fails at once: the agent used to start a new failing
    # run every few seconds until the run cap (or for ever without one).
    sweep = LocalSweep.create(_failing_after(in_tmp, good_runs=2))
    agent = _agent_subprocess(sweep.root)
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 1, out
    states = [r.state for r in sweep.runs()]
    assert states == ["finished", "finished", "crashed", "crashed", "crashed"], out
    last = out.strip().splitlines()[-1]
    assert GAVE_UP + "its last 3 runs failed" in last, out
    assert f"({sweep.runs()[-1].run_id}) with: exited with code 1 without writing status.json" in last
    # a limit of its own (--max-failures), from the same history
    (in_tmp / "again").mkdir()
    sweep = LocalSweep.create(_failing_after(in_tmp / "again", good_runs=1))
    result = run_agent(sweep, poll_s=0.05, max_failures=1, out=_quiet([]))
    assert result.exit_code == EXIT_GAVE_UP and [o.state for o in result.outcomes.values()] == ["finished", "crashed"]


def test_a_run_that_stops_answering_is_stopped_and_recorded_crashed(in_tmp, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "60")  # silent for a minute: no output, no metrics
    path = make_sweep_yaml(in_tmp, {"seed": {"values": [1]}, "trainer.max_epochs": {"value": 2}}, method="grid")
    sweep = LocalSweep.create(path)
    lines: list[str] = []
    t = time.monotonic()
    result = run_agent(sweep, count=1, poll_s=0.05, stall_timeout_s=1.0, out=lines.append)
    assert time.monotonic() - t < 30
    ((run_id, outcome),) = result.outcomes.items()
    assert outcome.state == "crashed" and outcome.reason.startswith("stalled: no output for 1 s"), outcome
    (run,) = sweep.runs()
    assert run.state == "crashed" and run.reason == outcome.reason
    assert not pid_alive(int((Path(run.control_dir) / "fake_train.pid").read_text()))
    assert any(f"run {run_id}: stalled" in ln and "stopping it" in ln for ln in lines), lines


def _agent_subprocess(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hrnet_sweep", "agent", str(root), "--poll", "0.05", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_pid_file(root: Path, timeout: float = 60) -> tuple[Path, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in (root / "runs").glob("*/fake_train.pid"):
            text = f.read_text().strip()
            if text:
                return f.parent, int(text)
        time.sleep(0.05)
    raise AssertionError("no training started")


def test_sigkill_of_a_training_gives_a_crashed_run_and_the_sweep_continues(in_tmp, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "0.3")
    path = make_sweep_yaml(in_tmp, {"seed": {"values": [1, 2, 3]}, "trainer.max_epochs": {"value": 3}}, method="grid")
    sweep = LocalSweep.create(path)
    agent = _agent_subprocess(sweep.root)
    control, pid = _wait_for_pid_file(sweep.root)
    os.kill(pid, signal.SIGKILL)
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, out
    runs = sweep.runs()
    crashed = [r for r in runs if r.state == "crashed"]
    assert len(crashed) == 1 and crashed[0].control_dir == str(control)
    assert crashed[0].reason == "killed by SIGKILL" and crashed[0].exit_code == -signal.SIGKILL
    assert not (control / "status.json").exists()
    # the crashed grid point ran again; every point finished
    assert sorted(r.params["seed"] for r in runs if r.state == "finished") == [1, 2, 3]
    assert f"run {crashed[0].run_id} crashed" in out


def test_sigterm_to_the_agent_stops_its_run_and_leaves_no_process(in_tmp, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_EPOCH_S", "5")
    path = make_sweep_yaml(in_tmp, {"seed": {"values": [1, 2]}, "trainer.max_epochs": {"value": 50}}, method="grid")
    sweep = LocalSweep.create(path)
    agent = _agent_subprocess(sweep.root)
    control, pid = _wait_for_pid_file(sweep.root)
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=60)
    assert agent.returncode == 128 + signal.SIGTERM, out
    assert not pid_alive(pid)
    (run,) = sweep.runs()  # no further run was started
    assert run.state == "crashed" and run.reason == "stopped by the user"  # continued by `sweep --resume`
    assert json.loads((control / "status.json").read_text())["state"] == "interrupted"


# ----------------------------------------------------------------------------- status, clean


def test_status_and_clean_keep_the_best_runs_checkpoints(in_tmp, capsys):
    from hrnet_sweep.sweep.status import main_clean, main_status

    path = make_sweep_yaml(in_tmp, {"seed": {"values": [3, 9, 5]}, "trainer.max_epochs": {"value": 2}}, method="grid")
    sweep = LocalSweep.create(path)
    run_agent(sweep, poll_s=0.05, out=_quiet([]))
    runs = {r.params["seed"]: r for r in sweep.runs()}
    capsys.readouterr()
    assert main_status([str(sweep.root)]) == 0
    table = capsys.readouterr().out
    assert all(r.run_id in table for r in runs.values()) and f"best: run {runs[9].run_id}" in table
    assert main_status([sweep.sweep_id, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sweep"]["best"]["run_id"] == runs[9].run_id and len(doc["runs"]) == 3

    ckpts = {s: sorted(Path(r.run_dir, "checkpoints").glob("*.ckpt")) for s, r in runs.items()}
    assert all(len(v) == 2 for v in ckpts.values())
    assert main_clean([str(sweep.root), "--keep-top", "2", "--dry-run"]) == 0
    assert "would free 0.0 MB (3000 bytes)" in capsys.readouterr().out
    assert all(p.exists() for v in ckpts.values() for p in v)
    assert main_clean([str(sweep.root), "--keep-top", "0"]) == 0  # never the best run's
    assert "freed 0.0 MB (6000 bytes)" in capsys.readouterr().out
    assert all(p.exists() for p in ckpts[9]) and not any(p.exists() for p in ckpts[3] + ckpts[5])


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "sw", "--max-failures", "0"],
        ["agent", "sw", "--stall-timeout", "0"],
        ["agent", "sw", "--stall-timeout", "nan"],
        ["sweep", "s.yaml", "--max-failures", "0"],
    ],
    ids=lambda argv: f"{argv[0]} {argv[-2]} {argv[-1]}",
)
def test_failure_and_stall_limits_refuse_bad_numbers(argv, capsys):
    from hrnet_sweep.cli import main as cli

    with pytest.raises(SystemExit) as stop:  # argparse
        cli(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {argv[-2]}: " in err and "Traceback" not in err, err
