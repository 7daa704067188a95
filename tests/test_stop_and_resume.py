"""Ctrl-C / SIGTERM is not a failure: a run stopped by the user is recorded `crashed`,
"stopped by the user", with its real epochs and checkpoints; `sweep --resume` continues it
from its last.ckpt (same run id, same folder) without spending another run of the cap;
`clean` handles it like any other run.

The engine's part is tested with its own calls; the whole path with a real local sweep
(launcher, agent, training) stopped by SIGINT, as Ctrl-C in a terminal reaches it.
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

from _util import REPO
from hrnet_sweep.runfolder import USER_STOP, read_history, read_status
from hrnet_sweep.sweep.agent import classify_exit
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome


def _spec(tmp_path: Path, run_cap: int, **params) -> Path:
    doc = {
        "name": "stop_me",
        "method": "random",
        "metric": {"name": "val/hmean", "goal": "maximize"},
        "run_cap": run_cap,
        "parameters": {
            "preset": {"value": "hrnet_w18_small_cpu"},
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 3e-4, "max": 2e-3},
            **{k: {"value": v} for k, v in params.items()},
        },
        "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"],
    }
    path = tmp_path / "stop_me.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.unit
def test_the_agent_records_a_signal_as_stopped_by_the_user():
    status = {"state": "interrupted", "reason": USER_STOP, "run_dir": "/r", "last_ckpt": "/r/last.ckpt", "epochs": 2}
    for interrupted in (True, False):
        o = classify_exit(130, status, [0.1, 0.2], interrupted=interrupted)
        assert (o.state, o.reason, o.last_ckpt) == ("crashed", USER_STOP, "/r/last.ckpt")
    # killed before it could write status.json, by the agent's own stop
    assert classify_exit(-15, None, [], interrupted=True).reason == USER_STOP


@pytest.mark.unit
def test_a_run_stopped_by_the_user_continues_and_counts_once(tmp_path):
    sweep = LocalSweep.create(_spec(tmp_path, run_cap=2), sweeps_root=tmp_path / "sweeps")
    first = sweep.suggest(agent="a")
    sweep.report(first.number, [0.1, 0.3], 0)
    sweep.finish(first.number, RunOutcome("crashed", reason=USER_STOP, run_dir=str(tmp_path / "o" / first.run_id)))
    assert sweep.exhausted() is None
    (shown,) = sweep.runs()
    assert shown.state == "crashed" and shown.reason == USER_STOP  # until it continues

    again = sweep.suggest(agent="a")  # before any new point: the stopped run, where it was
    assert again.resume and again.run_id == first.run_id and again.control_dir == first.control_dir
    assert again.params == first.params and again.number != first.number
    (shown,) = sweep.runs()  # one run: the continuation
    assert shown.number == again.number and shown.state == "running"
    sweep.report(again.number, [0.1, 0.3, 0.5], 0)
    sweep.finish(again.number, RunOutcome("finished", value=0.5))

    new = sweep.suggest(agent="a")  # the cap of 2 has room for one more run
    assert new is not None and not new.resume and new.run_id != first.run_id
    sweep.finish(new.number, RunOutcome("finished", value=0.2))
    assert sweep.suggest(agent="a") is None and sweep.exhausted() == "run cap 2 reached"
    assert [r.run_id for r in sweep.runs()] == [first.run_id, new.run_id]
    assert sweep.runs()[0].history == [0.1, 0.3, 0.5]


@pytest.mark.unit
def test_a_stop_between_validation_and_last_ckpt_drops_that_epochs_row(tmp_path):
    """Validated, then stopped before the epoch's last.ckpt was written: its row goes (the
    resume trains that epoch again), in the run folder and the control folder alike, so
    status.json and the continuing agent count each epoch once."""
    from hrnet_sweep.pipeline.train import _drop_unsaved_epochs
    from hrnet_sweep.runfolder import append_history

    run_dir, control = tmp_path / "run", tmp_path / "control"
    (run_dir / "checkpoints").mkdir(parents=True)
    control.mkdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"epoch 1")
    os.utime(last, (1000.0, 1000.0))  # written after epoch 1's row, before epoch 2's
    for folder in (run_dir, control):
        for epoch, t in enumerate((900.0, 999.5, 1100.0)):
            append_history(folder, {"epoch": epoch, "val/hmean": 0.1 * epoch, "time": t})
    _drop_unsaved_epochs(run_dir, control)
    assert [r["epoch"] for r in read_history(run_dir)] == [r["epoch"] for r in read_history(control)] == [0, 1]
    last.unlink()  # no last.ckpt (save_last=false): nothing to compare with, nothing dropped
    append_history(run_dir, {"epoch": 2, "val/hmean": 0.2, "time": 1100.0})
    _drop_unsaved_epochs(run_dir, None)
    assert [r["epoch"] for r in read_history(run_dir)] == [0, 1, 2]


# ----------------------------------------------------------------------------- a real local sweep


def _env(tmp_path: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "HRNET_SWEEP_DATA": str(data),
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        }
    )
    return env


def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hrnet_sweep", "sweep", *args, "--gpus", "cpu", "--stagger", "0"]


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_of_a_local_sweep_then_resume(synth_data, tmp_path):
    spec = _spec(
        tmp_path,
        run_cap=1,
        **{
            "data.image_height": 64,
            "data.image_width": 64,
            "data.batch_size": 2,
            "data.num_workers": 1,
            "data.num_folds": 2,
            "models.decoder.inner_channels": 16,
            "trainer.limit_train_batches": 3,
            "trainer.max_epochs": 4,
            "models.scheduler.T_max": 4,
            "models.postprocess.tune_workers": 0,
            "callbacks.early_stopping.enabled": False,
        },
    )
    env = _env(tmp_path, synth_data)
    folder = tmp_path / "sw"
    launcher = subprocess.Popen(
        _sweep_cmd("--local", str(spec), "--sweep-dir", str(folder)),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 900  # a loaded machine: the first epoch may take minutes
    runs_dir = folder / "runs"
    try:
        while time.monotonic() < deadline and launcher.poll() is None:
            controls = list(runs_dir.glob("*")) if runs_dir.is_dir() else []
            if controls and read_history(controls[0]):
                break
            time.sleep(0.2)
        assert launcher.poll() is None, launcher.stdout.read()
        assert any(read_history(c) for c in runs_dir.glob("*")), "no epoch ended within the deadline"
    finally:
        launcher.send_signal(signal.SIGINT)  # Ctrl-C in the terminal reaches the launcher
        out, _ = launcher.communicate(timeout=300)
    (control,) = runs_dir.glob("*")
    run_id = control.name
    log = (control / "output.log").read_text()
    assert "Traceback" not in log and "DataLoader worker" not in log, log[-3000:]

    sweep = LocalSweep(folder)
    (run,) = sweep.runs()
    assert run.state == "crashed" and run.reason == USER_STOP, out
    status = read_status(control, strict=True)
    epochs = len(read_history(control))
    assert status["state"] == "interrupted" and status["epochs"] == epochs >= 1
    assert Path(status["last_ckpt"]).is_file() and run.outcome["last_ckpt"] == status["last_ckpt"]
    assert run.checkpoints()  # what `clean` would free: it sees them like any other run's
    dry = subprocess.run(
        [sys.executable, "-m", "hrnet_sweep", "clean", str(folder), "--keep-top", "0", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0 and f"{run_id} (crashed" in dry.stdout and "last.ckpt" in dry.stdout, dry.stdout

    # `sweep --resume`: the same run goes on from its last.ckpt; the cap of 1 is not spent again
    resumed = subprocess.run(
        _sweep_cmd("--resume", str(folder)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"stopped by the user, continuing from their last.ckpt (no new run of the cap): {run_id}" in resumed.stdout
    agent_log = "".join(p.read_text() for p in (folder / "agents").glob("*.log"))
    assert f"run {run_id} (1) continues from its last.ckpt" in agent_log
    sweep = LocalSweep(folder)
    (run,) = sweep.runs()
    assert run.run_id == run_id and run.state == "finished" and run.epochs == 4
    assert [r["epoch"] for r in read_history(control)] == [0, 1, 2, 3]  # each epoch once
    assert "Restored all states from the checkpoint" in (control / "output.log").read_text()
    assert sweep.exhausted() == "run cap 1 reached"
    assert len(sweep.storage.get_all_trials(sweep.study_id)) == 2  # the stop, and its continuation
    assert json.loads((control / "status.json").read_text())["state"] == "finished"
