"""k-fold retrain: fold parsing, the GPU queue (with a fake training executable as test
double), split checks against the sweep, and real tiny trainings for idempotence (a
second call skips finished folds) and resume (an interrupted fold continues from
last.ckpt)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from hrnet_sweep.errors import UserError
from hrnet_sweep.pipeline import kfold
from hrnet_sweep.pipeline.retrain import SUMMARY_FILE

TINY = [
    "data.image_height=64",
    "data.image_width=64",
    "models.decoder.inner_channels=16",
    "data.num_workers=0",
    "data.batch_size=4",
    "data.num_folds=2",
    "trainer.progress_bar=false",
    "logging.tensorboard=false",
    "callbacks.early_stopping.enabled=false",
]


# ----------------------------------------------------------------------------- unit


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, expected",
    [
        ("0-4", [0, 1, 2, 3, 4]),
        ("0,2,3", [0, 2, 3]),
        ("1", [1]),
        (None, [0, 1, 2, 3, 4]),
        ("all", [0, 1, 2, 3, 4]),
        ("3,0-1", [0, 1, 3]),
    ],
)
def test_parse_folds(text, expected):
    assert kfold.parse_folds(text, 5) == expected


@pytest.mark.unit
@pytest.mark.parametrize("text", ["0-5", "x", "3-1", "-1", ""])
def test_parse_folds_rejects(text):
    with pytest.raises(UserError, match="--folds"):
        kfold.parse_folds(text, 5)


@pytest.mark.unit
def test_fold_command_is_what_an_agent_runs(tmp_path):
    cmd = kfold.fold_command("/p/best.yaml", 3, tmp_path / "best-kfold", ["trainer.max_epochs=2"], python="py")
    assert cmd == [
        "py",
        "-m",
        "hrnet_sweep.train",
        "preset=/p/best.yaml",
        "trainer.max_epochs=2",
        "data.fold=3",
        f"output_dir={tmp_path}",
        "run_name=best-kfold/fold3",
        "resume_from_checkpoint=auto",
        "logging.group=best-kfold",
    ]


@pytest.mark.unit
def test_kfold_refuses_keys_it_sets_itself(tmp_path):
    with pytest.raises(UserError, match="data.fold"):
        kfold.run_kfold("hrnet_w18_small_cpu", "0", extra=["data.fold=1"], out=tmp_path / "x", gpus=[])


def _annotations(root: Path, n: int = 12) -> None:
    images = {
        f"im{i:02d}.jpg": {
            "words": {f"{j:04d}": {"points": [[0, 0], [10, 0], [10, 5], [0, 5]]} for j in range(1 + i % 4)}
        }
        for i in range(n)
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps({"images": images}))


FAKE_TRAIN = """\
#!{python}
# Test double of `python -m hrnet_sweep.train`: records its GPU and time, writes status.json.
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run_dir = os.path.join(args["output_dir"], args["run_name"])
os.makedirs(run_dir, exist_ok=True)
start = time.time()
time.sleep(0.6)
with open(os.path.join(os.path.dirname(run_dir), "trace.jsonl"), "a") as fh:
    fh.write(json.dumps({{"fold": int(args["data.fold"]), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "start": start, "end": time.time()}}) + "\\n")
fold = int(args["data.fold"])
with open(os.path.join(run_dir, "metrics.jsonl"), "a") as fh:
    fh.write(json.dumps({{"epoch": 0, "val/hmean": 0.5 + fold / 10}}) + "\\n")
json.dump({{"state": "finished", "best": 0.5 + fold / 10, "best_epoch": 0, "run_dir": run_dir,
           "best_ckpt": os.path.join(run_dir, "checkpoints", "best-00.ckpt"), "last_ckpt": None}},
          open(os.path.join(run_dir, "status.json"), "w"))
"""


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TRAIN.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.unit
def test_one_fold_per_gpu_queued(tmp_path, fake_python, monkeypatch):
    data = tmp_path / "data"
    _annotations(data)
    lines = []
    doc = kfold.run_kfold(
        "hrnet_w18_small_cpu",
        "0-4",
        gpus=["0", "1"],
        out=tmp_path / "rt",
        extra=[f"data.root={data}"],
        python=fake_python,
        poll_s=0.05,
        printer=lines.append,
    )
    trace = [json.loads(x) for x in (tmp_path / "rt" / "trace.jsonl").read_text().splitlines()]
    assert sorted(t["fold"] for t in trace) == [0, 1, 2, 3, 4]
    assert {t["gpu"] for t in trace} == {"0", "1"}
    for gpu in ("0", "1"):  # never two folds on one GPU at once
        spans = sorted((t["start"], t["end"]) for t in trace if t["gpu"] == gpu)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # at most two folds at any instant (checked at each start; a long fold on one GPU may
    # overlap two short ones run one after the other on the other GPU)
    assert max(sum(1 for t in trace if t["start"] <= u["start"] < t["end"]) for u in trace) == 2
    assert [doc["folds"][str(k)]["state"] for k in range(5)] == ["finished"] * 5
    assert doc["mean_best"] == pytest.approx(0.7)
    assert json.loads((tmp_path / "rt" / SUMMARY_FILE).read_text())["folds"]["4"]["best"] == pytest.approx(0.9)
    assert any("fold 3 epoch 0: val/hmean 0.8000" in line for line in lines)


@pytest.mark.unit
def test_split_must_match_the_sweep_and_the_existing_retrain(tmp_path, fake_python):
    data = tmp_path / "data"
    _annotations(data)
    preset = tmp_path / "best.yaml"
    preset.write_text(
        "# provenance (hrnet_sweep best):\n#   sweep: a/b/c\n#   folds:\n#     num_folds: 5\n"
        "#     fold_seed: 42\n#     train_json: train.json\nbase: hrnet_w18_small_cpu\n"
    )
    with pytest.raises(UserError, match="data.num_folds=5 but this retrain uses 3"):
        kfold.run_kfold(
            str(preset),
            "0",
            gpus=[],
            out=tmp_path / "a",
            extra=[f"data.root={data}", "data.num_folds=3"],
            python=fake_python,
        )
    doc = kfold.run_kfold(
        str(preset),
        "0",
        gpus=[],
        out=tmp_path / "b",
        extra=[f"data.root={data}"],
        python=fake_python,
        poll_s=0.05,
        printer=lambda s: None,
    )
    assert "equal the sweep's" in doc["split"]
    with pytest.raises(UserError, match="another split"):
        kfold.run_kfold(
            str(preset),
            "1",
            gpus=[],
            out=tmp_path / "b",
            extra=[f"data.root={data}", "data.fold_seed=7"],
            python=fake_python,
        )


# ----------------------------------------------------------------------------- real tiny trainings


@pytest.mark.integration
def test_kfold_skips_finished_and_resumes_interrupted(tmp_path, synth_data):
    out = tmp_path / "retrain"
    extra = [f"data.root={synth_data}", *TINY, "trainer.max_epochs=1"]
    lines = []
    doc = kfold.run_kfold("hrnet_w18_small_cpu", "0-1", gpus=[], out=out, extra=extra, poll_s=0.2, printer=lines.append)
    assert [doc["folds"][k]["state"] for k in ("0", "1")] == ["finished", "finished"]
    for k in ("0", "1"):
        assert Path(doc["folds"][k]["best_ckpt"]).is_file() and doc["folds"][k]["manifest_ok"] is True
    mtime = (out / "fold1" / "status.json").stat().st_mtime_ns

    # idempotence: nothing to do the second time
    lines.clear()
    doc2 = kfold.run_kfold(
        "hrnet_w18_small_cpu", "0-1", gpus=[], out=out, extra=extra, poll_s=0.2, printer=lines.append
    )
    assert sum("already finished" in line for line in lines) == 2 and not any("started" in x for x in lines)
    assert (out / "fold1" / "status.json").stat().st_mtime_ns == mtime
    assert doc2["folds"]["0"]["best"] == doc["folds"]["0"]["best"]

    # resume: fold 0 was interrupted after its first epoch; a longer schedule continues it
    status = json.loads((out / "fold0" / "status.json").read_text())
    (out / "fold0" / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    lines.clear()
    extra2 = [f"data.root={synth_data}", *TINY, "trainer.max_epochs=2"]
    doc3 = kfold.run_kfold(
        "hrnet_w18_small_cpu", "0-1", gpus=[], out=out, extra=extra2, poll_s=0.2, printer=lines.append
    )
    assert any("fold 0: resuming from last.ckpt" in line for line in lines)
    assert any("fold 1: already finished" in line for line in lines)
    epochs = [json.loads(x)["epoch"] for x in (out / "fold0" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # epoch 0 was not trained again
    assert doc3["folds"]["0"]["state"] == "finished"
    assert "Restoring states from the checkpoint" in (out / "fold0.log").read_text()
    assert kfold.main(["hrnet_w18_small_cpu", "--folds", "0-1", "--gpus", "cpu", "--out", str(out), *extra2]) == 0
