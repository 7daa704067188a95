"""End to end: the CPU demo sweep (sweeps/cpu_demo.yaml, shrunk to test size) on the
embedded engine with two parallel agents and the real training on synthetic receipts.

Checks: the sweep completes its run cap; runs are stopped by Hyperband at the first band;
a training killed with SIGKILL becomes a crashed run and the sweep still completes;
`status` shows it; every run has an offline W&B run folder; stopped runs' checkpoints
are dropped; `clean` keeps the best run's.

Tiny untrained models score val/hmean 0.0 in every run, and W&B's Hyperband keeps ties,
so two strong finished runs of an "earlier session" are recorded first through the
engine API (as a resumed sweep holds them): they set the bar at band 1, and the first
real runs to reach it are stopped deterministically.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_engine import REPO

from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEST_SIZE = {  # fixed values replacing the demo's, so a run takes seconds on a CPU
    "data.image_height": 64,
    "data.image_width": 64,
    "models.decoder.inner_channels": 16,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "data.num_folds": 4,
    "trainer.max_epochs": 3,
    "models.scheduler.T_max": 3,
    "trainer.limit_train_batches": 2,
    "trainer.progress_bar": False,
    "logging.tensorboard": False,
    "callbacks.early_stopping.enabled": False,
}
REAL_RUNS = 6  # one of them is killed
EARLIER = 2


def _training_pids(sweep_root: Path) -> dict[int, Path]:
    """pid -> control dir of every training process of this sweep (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hrnet_sweep.train" not in cmdline:
            continue
        for item in env:
            if item.startswith(b"HRNET_SWEEP_CONTROL_DIR="):
                control = Path(item.split(b"=", 1)[1].decode())
                if sweep_root in control.parents:
                    out[int(d.name)] = control
    return out


def _kill_one_training_after_its_first_value(sweep_root: Path, agents: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agents.poll() is None:
        for pid, control in _training_pids(sweep_root).items():
            metrics = control / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().count("\n") >= 1 and not (control / "status.json").exists():
                os.kill(pid, signal.SIGKILL)
                return control
        time.sleep(0.2)
    raise AssertionError("no training reached its first validation in time")


@pytest.mark.skipif(not (REPO / "hrnet_sweep" / "train.py").is_file(), reason="training not available")
def test_cpu_demo_sweep_with_two_agents(synth_data, tmp_path):
    t0 = time.monotonic()
    doc = yaml.safe_load((REPO / "sweeps" / "cpu_demo.yaml").read_text())
    for key, value in {**TEST_SIZE, "data.root": str(synth_data)}.items():
        doc["parameters"][key] = {"value": value}
    doc["early_terminate"]["min_iter"] = 1  # band 1 = the first validation
    doc["run_cap"] = EARLIER + REAL_RUNS
    path = tmp_path / "cpu_demo_test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sweep = LocalSweep.create(path, sweep_dir=tmp_path / "sweep")
    earlier = []
    for _ in range(EARLIER):
        s = sweep.suggest(agent="earlier-session")
        sweep.report(s.number, [0.9, 0.92, 0.93], 0)
        sweep.finish(s.number, RunOutcome("finished", value=0.93, exit_code=0))
        earlier.append(s.run_id)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WANDB_MODE", None)
    agents = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hrnet_sweep",
            "sweep",
            "--resume",
            str(sweep.root),
            "--gpus",
            "cpu",
            "--agents",
            "2",
            "--stagger",
            "2",
            "--max-restarts",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = _kill_one_training_after_its_first_value(sweep.root, agents, timeout=240)
    out, _ = agents.communicate(timeout=420)
    assert agents.returncode == 0, out
    elapsed = time.monotonic() - t0

    runs = [r for r in LocalSweep(sweep.root).runs() if r.run_id not in earlier]
    by_state: dict[str, list] = {}
    for r in runs:
        by_state.setdefault(r.state, []).append(r)
    summary = {s: len(v) for s, v in by_state.items()}
    print(f"\ncpu demo sweep: {summary} in {elapsed:.0f}s\n{out[-3000:]}")
    assert len(runs) == REAL_RUNS, summary
    assert "running" not in by_state
    # the killed training: a crashed run, and the sweep went on to its cap
    (crashed,) = by_state["crashed"]
    assert crashed.control_dir == str(killed) and crashed.reason == "killed by SIGKILL", crashed
    assert len(by_state.get("finished", [])) + len(by_state.get("stopped", [])) == REAL_RUNS - 1, summary
    # Hyperband stopped runs at their first band; their checkpoints were dropped
    stopped = by_state.get("stopped", [])
    assert stopped and all(r.stop["band"] == 1 for r in stopped), summary
    for r in stopped:
        assert Path(r.control_dir, "STOP").is_file() and r.epochs < 3
        assert not list(Path(r.run_dir, "checkpoints").glob("*.ckpt"))
    for r in by_state.get("finished", []):
        assert r.epochs == 3 and list(Path(r.run_dir, "checkpoints").glob("*.ckpt"))
    # every run logged to W&B offline, in its own run folder, under its run id
    for r in runs:
        assert list((tmp_path / "outputs" / r.run_id / "wandb").glob(f"offline-run-*-{r.run_id}")), r.run_id

    status = subprocess.run(
        [sys.executable, "-m", "hrnet_sweep", "status", str(sweep.root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert crashed.run_id in status and "crashed" in status and "killed by SIGKILL" in status
    assert "stopped" in status and "hyperband: band 1" in status
    doc = json.loads(
        subprocess.run(
            [sys.executable, "-m", "hrnet_sweep", "status", str(sweep.root), "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert doc["sweep"]["done"] == f"run cap {EARLIER + REAL_RUNS} reached"
    assert doc["sweep"]["counts"]["crashed"] == 1

    clean = subprocess.run(
        [sys.executable, "-m", "hrnet_sweep", "clean", str(sweep.root), "--keep-top", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "freed" in clean
    print(status)
