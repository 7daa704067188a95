"""What a user sees of a training run, read back from the real files: W&B's own offline
run (through `wandb leet inspect --json`, W&B's reader of its transaction log),
TensorBoard's event files (its own EventAccumulator), the run's console log, and
status.json after a SIGTERM or Ctrl-C.

The trainings here run as a sweep agent runs them: `python -m hrnet_sweep.train` in its
own process group, output to a file (not a terminal), with the W&B environment of a
local sweep (`WANDB_SWEEP_ID`, `WANDB_RUN_ID`, `WANDB_SWEEP_PARAM_PATH`, offline) and
the control folder.
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
from hrnet_sweep.config import load_config
from hrnet_sweep.constants import CONTROL_DIR_ENV, METRIC
from hrnet_sweep.runfolder import USER_STOP, read_history, read_status
from hrnet_sweep.wandb_auth import SWEEP_NAME_ENV, sweep_labels

TINY = [
    "preset=hrnet_w18_small_cpu",
    "data.image_height=64",
    "data.image_width=64",
    "data.batch_size=2",
    "models.decoder.inner_channels=16",
    "data.num_folds=2",
    "trainer.limit_train_batches=3",
    "trainer.log_every_n_steps=1",
    "logging.val_images=1",
    "models.postprocess.tune_workers=0",
    "callbacks.early_stopping.enabled=false",
]
SWEPT = {"models.optimizer.lr": 0.002, "trainer.max_epochs": 2}


def _sweep_env(tmp_path: Path, run_id: str = "run00001") -> dict[str, str]:
    """The environment the embedded agent gives a run (agent.launch_run), offline."""
    params = tmp_path / "sweep" / "wandb" / "sweep-abc12345" / f"config-{run_id}.yaml"
    params.parent.mkdir(parents=True)
    params.write_text(yaml.safe_dump({k: {"value": v} for k, v in SWEPT.items()}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "WANDB_SWEEP_ID": "abc12345",
            "WANDB_RUN_ID": run_id,
            "WANDB_SWEEP_PARAM_PATH": str(params),
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(tmp_path / "sweep"),
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
            SWEEP_NAME_ENV: "tiny_sweep",
            CONTROL_DIR_ENV: str(tmp_path / "sweep" / "runs" / run_id),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def _train(tmp_path: Path, synth_data: Path, *extra: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "output.log"
    args = [*TINY, *(f"{k}={v}" for k, v in SWEPT.items()), f"data.root={synth_data}", f"output_dir={tmp_path / 'o'}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hrnet_sweep.train", *args, *extra],
            env=env,
            cwd=tmp_path,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as the agent starts it
        )
    return proc, log


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the run's offline W&B transaction log, as W&B's own reader prints them."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- W&B, TensorBoard, console


@pytest.mark.integration
def test_a_sweep_run_in_wandb_tensorboard_and_its_log(synth_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from hrnet_sweep.pipeline.loggers import HPARAM_KEYS

    proc, log = _train(tmp_path, synth_data, env=_sweep_env(tmp_path))
    try:
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run_dir = tmp_path / "o" / "run00001"
    text = log.read_text()

    # -- W&B: the configured project, our run id, grouped by sweep, the nested config once
    records = wandb_records(run_dir)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["project"] == "hrnet-sweep" and run["run_id"] == "run00001" and run["display_name"] == "run00001"
    group, tags = sweep_labels("abc12345", "tiny_sweep")
    assert run["run_group"] == group == "tiny_sweep-abc12345" and set(run["tags"]) == set(tags)
    assert "sweep_id" not in run  # a local sweep's id means nothing to a W&B server
    config = dict(run["config"]["update"])
    config.pop("_wandb", None)
    assert set(config) == set(load_config([]).to_dict())  # the tree once: no flat keys, no `config` copy
    assert config["wandb"] is True and config["run_name"] == "run00001"
    assert config["data"]["root"] == str(synth_data) and config["models"]["optimizer"]["lr"] == 0.002
    for r in records:  # nothing logged the tree again later (Lightning's hyperparameters)
        assert r["type"] != "config" or "config" not in r["config"]["update"]
    metric = [r["metric"] for r in records if r["type"] == "metric" and r["metric"].get("name") == METRIC]
    assert metric and metric[0]["summary"] == {"max": True}
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps = [h for h in history if "train/loss" in h]
    means = [h for h in history if "train/loss_epoch" in h]
    vals = [h for h in history if METRIC in h]
    images = [h for h in history if "val/predictions._type" in h]
    assert len(steps) == 6 and len(means) == 2 and len(vals) == 2  # per step (3 a epoch), per epoch, per validation
    assert [h["trainer/global_step"] for h in images] == [h["trainer/global_step"] for h in vals]

    # -- the console: the epoch's mean loss, one W&B line, none of the noise
    last_mean = means[-1]["train/loss_epoch"]
    assert f"epoch 1: train/loss {last_mean:.4g} " in text and "(epoch mean)" in text
    assert "W&B (offline): run run00001 of project hrnet-sweep, group tiny_sweep-abc12345" in text
    assert "wandb sync " in text
    for noise in (
        "wandb: WARNING",
        "anonymous",
        "Ignoring project",
        "Run history",
        "Run summary",
        "Tip:",
        "GPU available",
        "TPU available",
        "was configured so",
        "LeafSpec",
        "to estimate number of stepping batches",
        "smaller than the logging interval",
        "Traceback",
    ):
        assert noise not in text, noise
    assert sum(line.startswith("wandb:") for line in text.splitlines()) == 0

    # -- TensorBoard: images at the validation step; HParams with val/hmean, one entry
    events = EventAccumulator(str(run_dir / "logs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    val_steps = [e.step for e in events.Scalars(METRIC)]
    image_tags = [t for t in events.Tags()["images"] if t.startswith("val/predictions/")]
    assert image_tags and all([e.step for e in events.Images(t)] == val_steps for t in image_tags)
    assert "hp_metric" not in events.Tags()["scalars"]
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {METRIC, "val/hmean_fixed"}
    assert {h.name for h in experiment.hparam_infos} == set(HPARAM_KEYS) | set(SWEPT)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["models.optimizer.lr"].number_value == pytest.approx(0.002)

    # -- status.json: absolute paths, in the run folder and the control folder alike
    for folder in (run_dir, tmp_path / "sweep" / "runs" / "run00001"):
        status = read_status(folder, strict=True)
        assert status["state"] == "finished" and status["epochs"] == 2
        for key in ("run_dir", "best_ckpt", "last_ckpt"):
            assert Path(status[key]).is_absolute() and Path(status[key]).exists(), key


@pytest.mark.integration
def test_a_fold_retrain_in_wandb_grouped_by_its_retrain(synth_data, tmp_path):
    """`kfold PRESET wandb=true`: each fold is a plain training run (no sweep), in the
    configured project and entity, its run named after the fold, grouped by the retrain."""
    from hrnet_sweep.pipeline import kfold

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "WANDB_MODE": "offline",
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        }
    )
    extra = [
        *(a for a in TINY if not a.startswith(("preset=", "trainer.limit_train", "logging.val_images"))),
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "data.num_workers=0",
        "logging.tensorboard=false",
        f"data.root={synth_data}",
        "wandb=true",
        "logging.project=receipts",
        "logging.entity=acme",
    ]
    lines: list[str] = []
    out = tmp_path / "best-kfold"
    doc = kfold.run_kfold(
        "hrnet_w18_small_cpu", "0", gpus=[], out=out, extra=extra, poll_s=0.2, printer=lines.append, env=env
    )
    assert doc["folds"]["0"]["state"] == "finished", (out / "fold0.log").read_text()[-3000:]
    assert any("W&B: every fold logs to project receipts, group best-kfold" in line for line in lines), lines
    (run,) = [r["run"] for r in wandb_records(out / "fold0") if r["type"] == "run"]
    assert run["project"] == "receipts" and run["entity"] == "acme" and run["run_group"] == "best-kfold"
    assert run["display_name"] == "best-kfold/fold0" and "sweep_id" not in run
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert set(config) == set(load_config([]).to_dict()) and config["data"]["fold"] == 0
    assert config["wandb"] is True and config["logging"]["group"] == "best-kfold"


@pytest.mark.unit
def test_wandb_config_is_the_tree_once_in_every_mode(tmp_path):
    from hrnet_sweep.pipeline.loggers import sweep_params, wandb_config

    cfg = load_config(["models.optimizer.lr=0.002"])
    params = tmp_path / "config-r.yaml"
    params.write_text(yaml.safe_dump({"wandb_version": 1, "models.optimizer.lr": {"value": 0.002}}))
    assert sweep_params({"WANDB_SWEEP_PARAM_PATH": str(params)}) == ["models.optimizer.lr"]
    plain = wandb_config(cfg, {})
    local = wandb_config(cfg, {"WANDB_SWEEP_ID": "s", "WANDB_SWEEP_PARAM_PATH": str(params), CONTROL_DIR_ENV: "c"})
    assert plain == local == cfg.to_dict()  # a local sweep: W&B never sees the flat keys, the tree keeps them
    # a W&B sweep: W&B writes the swept keys flat (its controller reads them); the tree leaves them out
    remote = wandb_config(cfg, {"WANDB_SWEEP_ID": "s", "WANDB_SWEEP_PARAM_PATH": str(params)})
    assert "lr" not in remote["models"]["optimizer"] and remote["models"]["optimizer"]["weight_decay"]
    assert sweep_labels("abc") == ("sweep-abc", ["abc"])
    assert sweep_labels("abc", "x" * 100)[1][0] == "x" * 64  # W&B's tag limit


# ----------------------------------------------------------------------------- stopping


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_as_the_user_asked(synth_data, tmp_path, sig):
    """SIGTERM (an agent's or the launcher's stop) or SIGINT (Ctrl-C) to the whole process
    group, DataLoader worker included: `interrupted`, stopped by the user, exit 130, the
    epochs and checkpoints on disk in status.json, no traceback."""
    env = _sweep_env(tmp_path)
    control = Path(env[CONTROL_DIR_ENV])
    proc, log = _train(
        tmp_path, synth_data, "trainer.max_epochs=200", "data.num_workers=1", "data.persistent_workers=true", env=env
    )
    deadline = time.monotonic() + 600
    try:
        while len(read_history(control)) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert read_history(control), "no epoch ended within the deadline"
        time.sleep(0.5)  # into the next epoch: its DataLoader worker is busy
    finally:
        os.killpg(proc.pid, sig)
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "DataLoader worker" not in text, text[-3000:]
    assert "Received SIGTERM" not in text and f"{USER_STOP} ({sig.name})" in text
    status = read_status(control, strict=True)
    assert status["state"] == "interrupted" and status["reason"] == USER_STOP
    epochs = len(read_history(control))
    assert status["epochs"] == epochs >= 1
    assert Path(status["last_ckpt"]).is_file() and Path(status["best_ckpt"]).is_file()
    assert Path(status["run_dir"]).is_absolute()
    assert read_status(status["run_dir"]) == status


# ----------------------------------------------------------------------------- text too small to learn


def _split(tmp_path, size, **synth):
    from hrnet_sweep.pipeline.train import data_split
    from hrnet_sweep.synth import generate

    generate(tmp_path, num_images=6, seed=1, progress=False, korean=False, splits={"train": 6}, **synth)
    cfg = load_config(
        [
            "preset=hrnet_w18_small_cpu",
            f"data.root={tmp_path}",
            f"data.image_height={size[0]}",
            f"data.image_width={size[1]}",
            "data.num_folds=2",
        ]
    )
    return cfg, data_split(cfg)


@pytest.mark.unit
def test_most_words_under_min_text_size_is_said_with_the_numbers(tmp_path):
    from hrnet_sweep.pipeline.train import small_text_problem

    cfg, split = _split(tmp_path, (256, 256))  # `synth` defaults: 480x640 receipts, words ~15 px
    problem = small_text_problem(cfg, split)
    assert problem is not None
    assert "data.targets.min_text_size=8" in problem and "256x256" in problem and "median" in problem
    assert "data.image_height=" in problem and "data.image_width=" in problem  # which keys to change
    shares = [int(w[:-1]) for w in problem.split() if w.endswith("%")]
    assert shares and shares[0] > 50
    bigger = load_config(
        [
            "preset=hrnet_w18_small_cpu",
            f"data.root={tmp_path}",
            "data.num_folds=2",
            *problem.split("(")[-1].split(" keeps")[0].split(),  # the canvas the message suggests
        ]
    )
    assert small_text_problem(bigger, split) is None


@pytest.mark.unit
def test_the_shipped_cpu_sweep_learns_on_synth_defaults(tmp_path):
    """`hrnet_sweep synth` + `sweeps/cpu_demo.yaml`: most words are targets at its canvas,
    and the copy inside the package is the same file."""
    from hrnet_sweep.pipeline.train import small_text_problem
    from hrnet_sweep.synth import DEFAULT_SIZE

    shipped = REPO / "sweeps" / "cpu_demo.yaml"
    assert shipped.read_text() == (REPO / "hrnet_sweep" / "sweeps" / "cpu_demo.yaml").read_text()
    params = yaml.safe_load(shipped.read_text())["parameters"]
    size = (params["data.image_height"]["value"], params["data.image_width"]["value"])
    cfg, split = _split(tmp_path, size, width=DEFAULT_SIZE[0], height=DEFAULT_SIZE[1])
    assert small_text_problem(cfg, split) is None
