"""End to end on a few synthetic receipts: train -> checkpoint -> resume -> predict -> eval."""

import json
import math

import pytest

from hrnet_sweep.cli import main as cli
from hrnet_sweep.config import load_config
from hrnet_sweep.constants import CONTROL_DIR_ENV, METRIC
from hrnet_sweep.pipeline.train import run

pytestmark = pytest.mark.integration

TINY = [
    "preset=hrnet_w18_small_cpu",
    "data.image_height=128",
    "data.image_width=128",
    "data.batch_size=4",
    "data.num_workers=0",
    "models.decoder.inner_channels=32",
    "trainer.progress_bar=false",
    "logging.tensorboard=false",
    "data.num_folds=4",
    "data.fold=0",
]


def tiny(synth_data, tmp_path, *extra):
    return load_config([*TINY, f"data.root={synth_data}", f"output_dir={tmp_path}", *extra])


def test_train_checkpoint_resume_predict_eval(synth_data, tmp_path, capsys):
    cfg = tiny(synth_data, tmp_path, "run_name=r1", "trainer.max_epochs=2")
    res = run(cfg)
    assert res.state == "finished", res.reason
    assert res.epochs == 2 and len(res.history) == 2
    run_dir = tmp_path / "r1"
    for f in ["config.yaml", "metrics.jsonl", "status.json", "folds.json", "checkpoints/last.ckpt"]:
        assert (run_dir / f).exists(), f
    assert res.best_ckpt and res.best == max(r[METRIC] for r in res.history)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # exactly one row per validation epoch
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"

    # a second run with the same name refuses to overwrite; resume continues to epoch 3
    with pytest.raises(Exception, match="resume_from_checkpoint=auto"):
        run(cfg)
    res2 = run(tiny(synth_data, tmp_path, "run_name=r1", "trainer.max_epochs=3", "resume_from_checkpoint=auto"))
    assert res2.state == "finished" and res2.epochs == 3

    # predict with the best checkpoint, then score against the ground truth of the val split
    out_csv = tmp_path / "sub.csv"
    assert cli(["predict", res2.best_ckpt, "--images", str(synth_data / "images"), "--out", str(out_csv)]) == 0
    assert out_csv.read_text().startswith("filename,polygons\n")
    pred_json = out_csv.with_suffix(".json")
    capsys.readouterr()
    assert cli(["eval", "--gt", str(synth_data / "val.json"), "--pred", str(pred_json), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"precision", "recall", "hmean", "micro", "per_image"} <= set(doc)
    assert math.isfinite(doc["hmean"])


def test_nan_loss_fails_the_run_with_a_reason(synth_data, tmp_path, monkeypatch):
    control = tmp_path / "control"
    monkeypatch.setenv(CONTROL_DIR_ENV, str(control))
    cfg = tiny(
        synth_data,
        tmp_path,
        "run_name=nan",
        "trainer.max_epochs=1",
        "models.optimizer.lr=1e30",
        "models.optimizer.name=sgd",
        "callbacks.early_stopping.enabled=false",
    )
    res = run(cfg)
    assert res.state == "failed" and "loss is" in res.reason
    assert res.exit_code == 1
    status = json.loads((control / "status.json").read_text())
    assert status["state"] == "failed" and "loss is" in status["reason"]


def test_stop_file_stops_at_epoch_boundary_and_keeps_last(synth_data, tmp_path, monkeypatch):
    control = tmp_path / "control"
    control.mkdir()
    (control / "STOP").write_text("hyperband")
    monkeypatch.setenv(CONTROL_DIR_ENV, str(control))
    res = run(tiny(synth_data, tmp_path, "run_name=stopped", "trainer.max_epochs=3"))
    assert res.state == "stopped" and res.epochs == 1
    assert (tmp_path / "stopped" / "checkpoints" / "last.ckpt").exists()
    assert len((control / "metrics.jsonl").read_text().splitlines()) == 1


def test_data_workers_start_after_opencv_work_in_the_same_process(tmp_path):
    # `benchmarks/train_cpu.py --data synth` generated receipts (OpenCV's thread pool busy
    # in this process), then forked a data worker that hung for ever in
    # cv2.setNumThreads. A subprocess with a deadline, since the failure is a hang.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from hrnet_sweep.config import load_config
        from hrnet_sweep.synth import generate
        from hrnet_sweep.pipeline.train import _loader, build_datasets
        root = {str(tmp_path / "data")!r}
        generate(root, num_images=12, seed=3, progress=False, splits={{"train": 8, "val": 4}})
        cfg = load_config({TINY!r} + ["data.root=" + root, "data.num_workers=1"])
        train_ds, _ = build_datasets(cfg)
        batch = next(iter(_loader(train_ds, cfg, shuffle=True, batch_size=2)))
        print("batch", tuple(batch["image"].shape))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "batch (2, 128, 128, 3)" in proc.stdout
