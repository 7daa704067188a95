"""Security and faults, round 3 (issue 20, part A): no code runs from a checkpoint, every
file read back is checked for shape, one retrain per folder, paths and numbers checked
before anything is made, nothing lost and nothing dropped silently, names that stay
inside their folders.

Everything runs for real (checkpoints are `torch.save` files, runs are `hrnet_sweep train`
through the CLI, retrains are folders as `kfold` leaves them); the one test double is the
fold training of the lock test (`tests/test_kfold.py`'s fake `python -m hrnet_sweep.train`),
so the lock is tested without minutes of training. The W&B server is a local port that
refuses connections: there is no network here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hrnet_sweep.cli import main as cli
from hrnet_sweep.config import load_config, save_config
from hrnet_sweep.errors import BusyError, CheckpointError, DataError, UserError

PY = sys.executable
TINY = [
    "preset=hrnet_w18_small_cpu",
    "data.image_height=64",
    "data.image_width=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "models.decoder.inner_channels=16",
    "trainer.progress_bar=false",
    "logging.tensorboard=false",
    "data.num_folds=2",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "models.postprocess.tune_workers=0",
]


class Payload:
    """What a hostile checkpoint holds: unpickling it runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    from hrnet_sweep.dbnet.model import build_model

    cfg = load_config([*TINY])
    model = build_model(cfg)
    torch.save(
        {
            "hyper_parameters": {"config": cfg.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "extra": Payload(marker),
        },
        path,
    )
    return path


def _tiny_checkpoint(path: Path, *extra: str, **entries) -> Path:
    """A checkpoint as training writes it (config + `model.` weights), from a random tiny DBNet."""
    from hrnet_sweep.dbnet.model import build_model

    cfg = load_config([*TINY, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "hyper_parameters": {"config": cfg.to_dict()},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    torch.save({**doc, **entries}, path)
    return path


def _one_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"hrnet_sweep {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def images(tmp_path) -> Path:
    import numpy as np
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(d / "a.png")
    return d


def _retrain(tmp_path: Path, data: Path) -> Path:
    from test_ensemble import fake_retrain

    return fake_retrain(tmp_path, data)


# =============================================================================== 1. one checkpoint reader


@pytest.mark.model
def test_crafted_checkpoint_never_runs_in_predict_train_kfold_tune(tmp_path, synth_data, images, capsys):
    marker = tmp_path / "payload-ran"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    out = tmp_path / "out"

    assert cli(["predict", str(evil), "--images", str(images), "--out", str(tmp_path / "s.csv")]) == 2
    assert f"{evil}: refused: it holds posix.system" in _one_line(capsys.readouterr().err, "predict")

    args = [*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=r", f"ckpt_path={evil}"]
    assert cli(["train", *args]) == 2
    assert str(evil) in _one_line(capsys.readouterr().err, "train")
    assert not (out / "r").exists()  # refused before the run folder is made

    # resuming: from a checkpoint named outright, or a last.ckpt planted in the run folder
    args = [*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=s", f"resume_from_checkpoint={evil}"]
    assert cli(["train", *args]) == 2
    assert f"{evil}: refused" in _one_line(capsys.readouterr().err, "train")
    assert not (out / "s").exists()
    planted = out / "p" / "checkpoints" / "last.ckpt"
    planted.parent.mkdir(parents=True)
    shutil.copy(evil, planted)
    args = [*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=p", "resume_from_checkpoint=auto"]
    assert cli(["train", *args]) == 2
    assert "resume_from_checkpoint: " in _one_line(capsys.readouterr().err, "train")
    assert sorted(p.name for p in (out / "p").rglob("*")) == ["checkpoints", "last.ckpt"]  # nothing written

    rt = tmp_path / "rt-kfold"  # a preset naming the checkpoint, given to kfold
    preset = tmp_path / "shared.yaml"
    preset.write_text(f"base: hrnet_w18_small_cpu\nckpt_path: {evil}\n")
    kf = ["kfold", str(preset), "--gpus", "cpu", "--out", str(rt)]
    assert cli([*kf, *TINY[1:], f"data.root={synth_data}"]) == 2
    assert str(evil) in _one_line(capsys.readouterr().err, "kfold")
    assert not rt.exists()

    # a retrain whose fold checkpoint was replaced: tune-postprocess and predict refuse it
    root = _retrain(tmp_path, synth_data)
    shutil.copy(evil, root / "fold1" / "checkpoints" / "best-00.ckpt")
    grid = ["--grid", "thresh=0.5", "box_thresh=0.5", "unclip_ratio=1.5", "mode=box", "--no-refine", "--workers", "1"]
    assert cli(["tune-postprocess", str(root), *grid]) == 2
    assert "fold1/checkpoints/best-00.ckpt: refused" in _one_line(capsys.readouterr().err, "tune-postprocess")
    assert cli(["predict", str(root), "--images", str(images), "--out", str(tmp_path / "e.csv")]) == 2
    assert "fold1/checkpoints/best-00.ckpt: refused" in _one_line(capsys.readouterr().err, "predict")
    assert not marker.exists()


@pytest.mark.model
def test_pickle_protocol_4_and_foreign_classes_are_refused_too(tmp_path):
    from hrnet_sweep.dbnet.checkpoint import read_checkpoint

    marker = tmp_path / "ran"
    torch.save({"x": Payload(marker)}, tmp_path / "p4.ckpt", pickle_protocol=4)
    torch.save({"args": argparse.Namespace(lr=1.0)}, tmp_path / "cls.ckpt")  # what timm's checkpoints hold
    for name, needle in (("p4.ckpt", "STACK_GLOBAL"), ("cls.ckpt", "argparse.Namespace")):
        with pytest.raises(CheckpointError, match=needle):
            read_checkpoint(tmp_path / name)
    assert not marker.exists()


@pytest.mark.model
def test_truncated_foreign_and_other_backbone_checkpoints_exit_2_before_the_run_folder(
    tmp_path, synth_data, images, capsys
):
    good = _tiny_checkpoint(tmp_path / "good.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    plain = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], plain)
    other = _tiny_checkpoint(tmp_path / "resnet.ckpt", "models.name=resnet18")
    # a checkpoint whose config names this backbone but whose weights are another's
    mixed = torch.load(other, weights_only=True)
    mixed["hyper_parameters"]["config"] = load_config(TINY).to_dict()
    torch.save(mixed, tmp_path / "mixed.ckpt")
    cases = {
        cut: "not a readable checkpoint",
        text: "not a readable checkpoint",
        plain: "holds a list, not a dict",
        tmp_path / "mixed.ckpt": "weights are missing",
    }
    out = tmp_path / "out"
    for i, (ckpt, needle) in enumerate(cases.items()):
        args = [*TINY, f"data.root={synth_data}", f"output_dir={out}", f"run_name=r{i}", f"ckpt_path={ckpt}"]
        assert cli(["train", *args]) == 2, ckpt
        line = _one_line(capsys.readouterr().err, "train")
        assert str(ckpt) in line and needle in line, line
        assert not (out / f"r{i}").exists()
        assert cli(["predict", str(ckpt), "--images", str(images), "--out", str(tmp_path / "s.csv")]) == 2
        line = _one_line(capsys.readouterr().err, "predict")
        assert str(ckpt) in line, line
    # a good checkpoint of another backbone predicts (its config describes it), but does not
    # initialise this run's model
    args = [*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=o", f"ckpt_path={other}"]
    assert cli(["train", *args]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert str(other) in line and "weights are missing" in line and not (out / "o").exists()
    # the same backbone with another decoder width: the weight and both shapes are named
    wide = _tiny_checkpoint(tmp_path / "wide.ckpt", "models.decoder.inner_channels=32")
    args = [*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=w", f"ckpt_path={wide}"]
    assert cli(["train", *args]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert "has shape" in line and "expects" in line and not (out / "w").exists()


@pytest.mark.model
def test_what_a_checkpoint_holds_is_validated_naming_the_key(tmp_path, images, capsys):
    from hrnet_sweep.dbnet.inference import load_checkpoint

    bad_tuned = _tiny_checkpoint(
        tmp_path / "t.ckpt", tuned_postprocess={"thresh": "0.3", "box_thresh": 0.5, "unclip_ratio": 1.5}
    )
    with pytest.raises(CheckpointError, match=r"t\.ckpt: tuned_postprocess\.thresh='0\.3'"):
        load_checkpoint(bad_tuned)
    out_of_range = _tiny_checkpoint(
        tmp_path / "r.ckpt",
        tuned_postprocess={"thresh": 3.0, "box_thresh": 0.5, "unclip_ratio": 1.5, "use_polygon": True},
    )
    with pytest.raises(CheckpointError, match=r"r\.ckpt: tuned_postprocess"):
        load_checkpoint(out_of_range)

    cfg = load_config(TINY).to_dict()
    cfg["models"]["name"] = "no_such_net"
    ckpt = torch.load(_tiny_checkpoint(tmp_path / "c.ckpt"), weights_only=True)
    ckpt["hyper_parameters"]["config"] = cfg
    torch.save(ckpt, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match=r"c\.ckpt: hyper_parameters\.config.*models\.name"):
        load_checkpoint(tmp_path / "c.ckpt")

    ckpt = torch.load(_tiny_checkpoint(tmp_path / "n.ckpt"), weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key][...] = float("nan")
    torch.save(ckpt, tmp_path / "n.ckpt")
    assert cli(["predict", str(tmp_path / "n.ckpt"), "--images", str(images), "--out", str(tmp_path / "s.csv")]) == 2
    assert f"weight {key.removeprefix('model.')} holds NaN" in _one_line(capsys.readouterr().err, "predict")


@pytest.mark.integration
def test_checkpoints_of_this_package_keep_loading(tmp_path, synth_data):
    """A checkpoint written by the current training (Lightning's full state: loops,
    callbacks, optimizer, scheduler, the tuned setting) passes the allow-list, predicts,
    and starts a new run through `ckpt_path=`."""
    from hrnet_sweep.dbnet.checkpoint import ALLOWED_GLOBALS, _globals_named
    from hrnet_sweep.dbnet.inference import load_checkpoint
    from hrnet_sweep.pipeline.train import run

    out = tmp_path / "out"
    res = run(load_config([*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=a"]))
    assert res.state == "finished", res.reason
    for ckpt in (res.best_ckpt, res.last_ckpt):
        assert _globals_named(Path(ckpt), "checkpoint") <= ALLOWED_GLOBALS
        lm = load_checkpoint(ckpt)
        assert lm.tuned_postprocess is not None and lm.cfg.models.decoder.inner_channels == 16
    # and it initialises a new run's model (`ckpt_path=`): read, checked and loaded
    from hrnet_sweep.dbnet.model import build_model
    from hrnet_sweep.pipeline.train import load_weights, preflight

    cfg = load_config(
        [*TINY, f"data.root={synth_data}", f"output_dir={out}", "run_name=b", f"ckpt_path={res.last_ckpt}"]
    )
    weights = preflight(cfg).weights
    model = build_model(cfg)
    load_weights(model, res.last_ckpt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert not (out / "b").exists()


# =============================================================================== 2. shape of what is read back


@pytest.mark.unit
@pytest.mark.parametrize(
    "content, needle",
    [
        ("[]", "expected an object"),
        ('{"preset": 3, "folds": {}}', "key preset is the number 3; expected text"),
        ('{"preset": "p", "folds": []}', "key folds is a list"),
        ('{"preset": "p", "folds": {"0": {"state": "finished", "best": "high"}}}', 'key folds.0.best is text "high"'),
        ('{"preset": "p", "folds": {"x": {}}}', "key folds.x is no fold number"),
        ('{"preset": "p", "postprocess": {"best": {"thresh": 0.3}}}', "key postprocess.best.box_thresh is missing"),
        ('{"preset": "p", "overrides": [1]}', "key overrides.0"),
    ],
)
def test_kfold_summary_of_the_wrong_shape_names_file_and_key(tmp_path, capsys, content, needle):
    root = tmp_path / "rt"
    root.mkdir()
    (root / "kfold_summary.json").write_text(content)
    assert cli(["tune-postprocess", str(root)]) == 2
    line = _one_line(capsys.readouterr().err, "tune-postprocess")
    assert "kfold_summary.json" in line and needle in line, line
    assert cli(["predict", str(root), "--images", str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
    assert needle in _one_line(capsys.readouterr().err, "predict")


@pytest.mark.unit
def test_status_and_metrics_of_the_wrong_shape(tmp_path):
    from hrnet_sweep import runfolder as rf

    (tmp_path / "status.json").write_text('{"state": "finished", "best": "0.9"}')
    assert rf.read_status(tmp_path) is None  # unknown state for the sweep engine and the agent
    with pytest.raises(DataError, match=r"status\.json: key best is '0\.9'"):
        rf.read_status(tmp_path, strict=True)
    (tmp_path / "status.json").write_text('{"state": "done"}')
    with pytest.raises(DataError, match="key state is 'done'"):
        rf.read_status(tmp_path, strict=True)

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "val/hmean": 0.5}\n{"epoch": "1", "val/hmean": 0.6}\n')
    assert [r["epoch"] for r in rf.read_history(tmp_path)] == [0]
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 2: key epoch is '1'"):
        rf.read_history(tmp_path, strict=True)


@pytest.mark.unit
def test_fold_manifest_of_the_wrong_shape_names_the_key(tmp_path):
    from hrnet_sweep.folds import read_manifest

    doc = {"version": 1, "annotations": "t.json", "sha256": "0", "num_folds": 2, "seed": 42}
    for folds, needle in (
        ([{"fold": 0, "num_words": 3, "names": "abc"}, {"fold": 1, "num_words": 0, "names": []}], "folds.0.names"),
        ([{"fold": "0", "num_words": 3, "names": []}, {"fold": 1, "num_words": 0, "names": []}], "folds.0.fold"),
        ({"0": []}, "key folds is an object"),
    ):
        (tmp_path / "folds.json").write_text(json.dumps({**doc, "folds": folds}))
        with pytest.raises(DataError, match=needle):
            read_manifest(tmp_path / "folds.json")


@pytest.mark.unit
def test_kfold_names_a_damaged_fold_status(tmp_path, capsys):
    from test_kfold import _annotations

    data = tmp_path / "data"
    _annotations(data)
    rt = tmp_path / "rt"
    (rt / "fold0").mkdir(parents=True)
    (rt / "fold0" / "status.json").write_text('{"state": "finished", "best_epoch": "two"}')
    args = ["kfold", "hrnet_w18_small_cpu", "--folds", "0", "--gpus", "cpu", "--out", str(rt), f"data.root={data}"]
    assert cli([*args, "data.num_folds=2"]) == 2
    assert "fold0/status.json: key best_epoch is 'two'" in _one_line(capsys.readouterr().err, "kfold")


@pytest.mark.model
def test_oof_index_of_the_wrong_shape_or_leading_outside_is_named(tmp_path, synth_data):
    from hrnet_sweep.pipeline import ensemble

    root = _retrain(tmp_path, synth_data)
    (root / "oof").mkdir()
    index = root / "oof" / "index.json"
    name = next(iter(json.loads((synth_data / "train.json").read_text())["images"]))
    target = ensemble.resolve_retrain(root)
    for doc, needle in (
        ([], "expected an object"),
        ({"images": {name: {"fold": 0, "size": [4, 4], "file": "../../../etc/passwd"}}}, "must stay inside"),
        ({"images": {name: {"fold": "0", "size": [4, 4], "file": "x.png"}}}, f"key images.{name}.fold"),
        ({"images": {name: {"fold": 0, "size": [4], "file": "x.png"}}}, "not [height, width]"),
    ):
        index.write_text(json.dumps(doc))
        with pytest.raises(DataError, match="delete .*oof to rebuild it") as err:
            ensemble.cache_oof_maps(target, progress=False)
        assert needle in str(err.value) and "index.json" in str(err.value)


@pytest.mark.model
def test_annotations_changed_since_the_retrain_are_named(tmp_path, synth_data, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    root = _retrain(tmp_path, data)
    doc = json.loads((data / "train.json").read_text())
    gone = sorted(doc["images"])[3]
    del doc["images"][gone]
    (data / "train.json").write_text(json.dumps(doc))
    assert cli(["tune-postprocess", str(root), "--workers", "1"]) == 2
    line = _one_line(capsys.readouterr().err, "tune-postprocess")
    assert "train.json changed since the retrain" in line and gone in line and "folds.json" in line


@pytest.mark.unit
def test_provenance_folds_of_the_wrong_shape_is_named(tmp_path):
    from hrnet_sweep.pipeline.retrain import check_sweep_split

    preset = tmp_path / "best.yaml"
    preset.write_text("# provenance (hrnet_sweep best):\n#   folds: [1, 2]\nbase: hrnet_w18_small_cpu\n")
    with pytest.raises(DataError, match="provenance key folds is a list"):
        check_sweep_split(str(preset), load_config([f"preset={preset}"]), tmp_path / "folds.json")


# =============================================================================== 5. one kfold per retrain folder


FAKE_TRAIN = """\
#!{python}
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run_dir = os.path.join(args["output_dir"], args["run_name"])
os.makedirs(run_dir, exist_ok=True)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.2")))
json.dump({{"state": "finished", "best": 0.5, "best_epoch": 0, "run_dir": run_dir}},
          open(os.path.join(run_dir, "status.json"), "w"))
"""


@pytest.mark.integration
def test_second_kfold_on_the_same_folder_exits_2_naming_the_holder_and_resume_after_a_kill_works(tmp_path):
    from test_kfold import _annotations

    data = tmp_path / "data"
    _annotations(data)
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAIN.format(python=PY))
    fake.chmod(0o755)
    rt = tmp_path / "rt"
    script = (
        "import sys\nfrom hrnet_sweep.pipeline.kfold import run_kfold\n"
        f"run_kfold('hrnet_w18_small_cpu', '0-1', gpus=[], out={str(rt)!r}, python={str(fake)!r}, poll_s=0.05, "
        f"extra=['data.root={data}', 'data.num_folds=2'])\n"
    )
    env = {**os.environ, "FAKE_SLEEP": "60"}
    first = subprocess.Popen([PY, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (rt / "fold0").is_dir():
            assert time.monotonic() < deadline and first.poll() is None, "the first kfold did not start its fold"
            time.sleep(0.1)
        second = subprocess.run(
            [
                PY,
                "-m",
                "hrnet_sweep",
                "kfold",
                "hrnet_w18_small_cpu",
                "--gpus",
                "cpu",
                "--out",
                str(rt),
                f"data.root={data}",
                "data.num_folds=2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        line = _one_line(second.stderr, "kfold")
        assert f"pid {first.pid}" in line and "is in use" in line
        assert not (rt / "fold1").exists()  # the second one touched nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole retrain dies at once, its fold with it
        first.wait()
    from hrnet_sweep.pipeline.kfold import run_kfold

    doc = run_kfold(
        "hrnet_w18_small_cpu",
        "0-1",
        gpus=[],
        out=rt,
        python=str(fake),
        poll_s=0.05,
        extra=[f"data.root={data}", "data.num_folds=2"],
        printer=lambda s: None,
    )
    assert [doc["folds"][k]["state"] for k in ("0", "1")] == ["finished", "finished"]


@pytest.mark.unit
def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    from hrnet_sweep.files import hold_lock

    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            f"from hrnet_sweep.files import hold_lock\nimport time\nwith hold_lock({str(lock)!r}, 'x'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError, match=f"x is in use by pid {holder.pid} on "):
        with hold_lock(lock, "x"):
            pass
    holder.kill()
    holder.wait()
    with hold_lock(lock, "x"):  # SIGKILL released it
        assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.unit
def test_a_retrain_folder_holds_one_presets_retrain(tmp_path, synth_data, capsys):
    root = _retrain(tmp_path, synth_data)
    preset = tmp_path / "other.yaml"
    preset.write_text("base: hrnet_w18_small_cpu\n")
    assert cli(["kfold", str(preset), "--gpus", "cpu", "--out", str(root), f"data.root={synth_data}"]) == 2
    line = _one_line(capsys.readouterr().err, "kfold")
    assert "holds the retrain of preset hrnet_w18_small_cpu" in line and str(preset) in line


# =============================================================================== 6. paths, numbers, resources, W&B


@pytest.mark.unit
def test_path_keys_are_checked_before_the_run_folder(tmp_path, synth_data, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = tmp_path / "out"
    base = [*TINY, f"data.root={synth_data}", "run_name=r"]
    cases = {
        "trainer.compile_cache_dir": [f"output_dir={out}", f"trainer.compile_cache_dir={afile}"],
        "output_dir": [f"output_dir={afile}/sub"],
        "ckpt_path": [f"output_dir={out}", f"ckpt_path={tmp_path / 'none.ckpt'}"],
        "models.pretrained": [f"output_dir={out}", f"models.pretrained={tmp_path / 'w.pth'}"],
    }
    for key, extra in cases.items():
        assert cli(["train", *base, *extra]) == 2, key
        assert key in _one_line(capsys.readouterr().err, "train")
        assert not out.exists(), key


@pytest.mark.model
def test_ensemble_weights_summing_to_infinity_are_refused(tmp_path, images, capsys):
    from hrnet_sweep.dbnet.inference import normalized_weights

    with pytest.raises(UserError, match="sum is infinite"):
        normalized_weights([1e308, 1e308], 2)
    a = _tiny_checkpoint(tmp_path / "a.ckpt")
    args = ["predict", str(a), str(a), "--images", str(images), "--out", str(tmp_path / "s.csv")]
    assert cli([*args, "--weights", "1e308", "1e308"]) == 2
    assert "their sum is infinite" in _one_line(capsys.readouterr().err, "predict")


@pytest.mark.unit
def test_worker_counts_are_bounded_by_the_machine_with_a_warning(tmp_path, synth_data, caplog):
    from hrnet_sweep.machine import cap_count, usable_cores
    from hrnet_sweep.pipeline.kfold import _slots
    from hrnet_sweep.pipeline.train import preflight

    cores = usable_cores()
    with caplog.at_level(logging.WARNING):
        cfg = load_config(
            [
                *TINY,
                f"data.root={synth_data}",
                f"output_dir={tmp_path}",
                "data.num_workers=512",
                "models.postprocess.tune_workers=512",
            ]
        )
        pre = preflight(cfg)
        assert pre.cfg.data.num_workers == cores and pre.cfg.models.postprocess.tune_workers == cores
        assert f"data.num_workers=512: capped at {cores}" in caplog.text
        slots, _, _ = _slots([], 64, 2)
        assert len(slots) == min(2, cores) and "--cpu-jobs=64: capped" in caplog.text
        assert cap_count(3, "--workers", work=1, work_name="settings", minimum=1) == 1


@pytest.fixture
def refused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections to it are refused


@pytest.mark.unit
def test_wandb_malformed_key_is_one_line_naming_wandb(tmp_path, synth_data, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    start = time.monotonic()
    assert cli(["train", *TINY, f"data.root={synth_data}", f"output_dir={tmp_path / 'o'}", "wandb=true"]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert "W&B: WANDB_API_KEY is malformed" in line and "not-a-key" not in line
    assert time.monotonic() - start < 30 and not (tmp_path / "o").exists()


@pytest.mark.integration
def test_wandb_server_that_refuses_falls_back_to_offline_saying_so(
    tmp_path, synth_data, caplog, monkeypatch, refused_port
):
    from hrnet_sweep.pipeline.train import run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{refused_port}")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        res = run(load_config([*TINY, f"data.root={synth_data}", f"output_dir={tmp_path}", "run_name=w", "wandb=true"]))
    assert res.state == "finished", res.reason
    assert f"W&B server http://127.0.0.1:{refused_port} cannot be reached" in caplog.text
    assert "logs offline" in caplog.text and os.environ["WANDB_MODE"] == "offline"
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert time.monotonic() - start < 120


# =============================================================================== 7. nothing lost, nothing unbounded


def _finished_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 0, "val/hmean": 0.9}\n')
    (folder / "status.json").write_text(json.dumps({"state": "finished", "best": 0.9, "best_epoch": 0}))


@pytest.mark.unit
@pytest.mark.parametrize("resume", [[], ["resume_from_checkpoint=auto"]])
def test_a_finished_run_is_never_overwritten_by_a_new_run_of_its_name(tmp_path, synth_data, capsys, resume):
    _finished_run(tmp_path / "r")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    assert cli(["train", *TINY, f"data.root={synth_data}", f"output_dir={tmp_path}", "run_name=r", *resume]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert "holds a finished run" in line and "best 0.9000" in line and "choose another run_name" in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before


@pytest.mark.unit
def test_appends_and_writes_never_follow_a_planted_link(tmp_path):
    from hrnet_sweep import runfolder as rf
    from hrnet_sweep.files import open_append

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(DataError, match="is a symbolic link"):
        rf.append_history(run, {"epoch": 0})
    (run / "fold0.log").symlink_to(victim)
    with pytest.raises(DataError, match="is a symbolic link"):
        open_append(run / "fold0.log", "fold log")
    (run / "status.json").symlink_to(victim)
    rf.write_status(run, {"state": "finished"})  # replaces the link, never writes through it
    assert victim.read_text() == "precious\n" and not (run / "status.json").is_symlink()


@pytest.mark.model
def test_a_finished_fold_whose_checkpoint_is_gone_is_never_left_out_silently(
    tmp_path, synth_data, images, capsys, caplog
):
    from hrnet_sweep.pipeline import ensemble

    root = _retrain(tmp_path, synth_data)
    (root / "fold1" / "checkpoints" / "best-00.ckpt").unlink()
    assert cli(["predict", str(root), "--images", str(images), "--out", str(tmp_path / "s.csv")]) == 2
    line = _one_line(capsys.readouterr().err, "predict")
    assert "fold 1" in line and "is gone" in line and "--folds 0" in line
    assert cli(["predict", str(root), "--images", str(images), "--out", str(tmp_path / "s.csv"), "--folds", "0"]) == 0
    target = ensemble.resolve_retrain(root)
    with caplog.at_level(logging.WARNING):
        assert [k for k, _, _ in target.finished_folds(missing="note")] == [0]
    assert any("left out: finished fold 1" in n for n in target.notes) and "left out" in caplog.text


@pytest.mark.unit
def test_logs_are_read_from_their_end(tmp_path):
    from hrnet_sweep.files import read_tail

    log = tmp_path / "big.log"
    with open(log, "w") as fh:
        for i in range(400_000):
            fh.write(f"line {i}\n")
    tail = read_tail(log, 4096)
    assert len(tail) <= 4096 and tail.splitlines()[-1] == "line 399999" and tail.startswith("line ")


# =============================================================================== 8. names, outputs, users' files


@pytest.mark.unit
@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "{tmp}/escaped"])
def test_run_names_stay_inside_the_output_folder(tmp_path, synth_data, capsys, name):
    out = tmp_path / "out"
    name = name.format(tmp=tmp_path)
    assert cli(["train", *TINY, f"data.root={synth_data}", f"output_dir={out}", f"run_name={name}"]) == 2
    assert "must stay inside" in _one_line(capsys.readouterr().err, "train")
    assert not (tmp_path / "escaped").exists() and not out.exists()


@pytest.mark.unit
def test_wandb_run_id_stays_inside_too(tmp_path, monkeypatch):
    from hrnet_sweep.pipeline.train import resolve_run_dir

    monkeypatch.setenv("WANDB_RUN_ID", "../../x")
    with pytest.raises(DataError, match="WANDB_RUN_ID '../../x': must stay inside"):
        resolve_run_dir(load_config([*TINY, f"output_dir={tmp_path}"]))


@pytest.mark.unit
def test_two_images_never_share_one_cache_file():
    from hrnet_sweep.pipeline.ensemble import map_file

    files = {map_file(0, n) for n in ("a.jpg", "a.png", "sub/a.jpg", "a.JPG", "../a.jpg")}
    assert len(files) == 5 and all(f.startswith("fold0/") and ".." not in f for f in files)


@pytest.mark.unit
def test_a_preset_never_replaces_what_it_derives_from(tmp_path):
    from hrnet_sweep.config import PRESET_DIR
    from hrnet_sweep.pipeline.presets import write_preset

    base = tmp_path / "base.yaml"
    base.write_text("base: hrnet_w18_small_cpu\n# mine\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {base}\n")
    for out, frm in ((base, [str(base)]), (base, [str(child)])):
        with pytest.raises(UserError, match="derives from this file"):
            write_preset(out, "base: hrnet_w18_small_cpu\n", force=True, derives_from=frm)
    assert base.read_text() == "base: hrnet_w18_small_cpu\n# mine\n"
    with pytest.raises(UserError, match="is a shipped preset"):
        write_preset(PRESET_DIR / "hrnet_w18_small_cpu.yaml", "base: resnet18\n", force=True)


@pytest.mark.unit
def test_tuning_keeps_a_copy_of_a_preset_whose_comments_it_drops(tmp_path, caplog):
    from hrnet_sweep.pipeline.presets import write_postprocess

    preset = tmp_path / "p.yaml"
    original = (
        "# my header\nbase: hrnet_w18_small_cpu\n# why lr is low: see run 12\n"
        "models:\n  optimizer: {lr: 0.0005}  # tuned\n"
    )
    preset.write_text(original)
    values = {"thresh": 0.4, "box_thresh": 0.5, "unclip_ratio": 1.7, "use_polygon": False}
    with caplog.at_level(logging.WARNING):
        written = write_postprocess(preset, values, "test")
    assert len(written) == 2 and written[1].read_text() == original
    assert "drops 2 comment line(s)" in caplog.text and str(written[1]) in caplog.text
    assert load_config([f"preset={preset}"]).models.postprocess.thresh == 0.4
    assert preset.read_text().startswith("# my header\n")
    assert write_postprocess(preset, values, "again") == [preset]  # nothing of the user's left to lose


@pytest.mark.unit
def test_keys_a_command_would_ignore_are_refused_or_warned(tmp_path, images, capsys, caplog):
    from hrnet_sweep.config import ignored_keys

    a = tmp_path / "a.ckpt"
    assert (
        cli(
            [
                "predict",
                str(a),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "s.csv"),
                "--set",
                "data.image_height=512",
            ]
        )
        == 2
    )
    assert "--set data.image_height=512: predict would ignore it" in _one_line(capsys.readouterr().err, "predict")
    cfg = load_config([*TINY, "models.scheduler.name=onecycle", "data.val_json=x.json"])
    found = ignored_keys(cfg, ["models.scheduler.T_max", "data.val_json", "models.optimizer.lr"])
    assert found == [
        "models.scheduler.T_max: ignored (models.scheduler.name=onecycle)",
        "data.val_json: ignored (fold mode validates on a fold of data.train_json)",
    ]
    with caplog.at_level(logging.WARNING):
        assert cli(["train", *TINY, "models.optimizer.momentum=0.5", "--dry-run"]) == 0
    assert "models.optimizer.momentum: ignored (models.optimizer.name=adamw (sgd only))" in caplog.text


@pytest.mark.unit
def test_resuming_under_another_data_split_is_refused_naming_both(tmp_path, synth_data, capsys):
    from hrnet_sweep.folds import fold_assignment, write_manifest
    from hrnet_sweep.formats import load_annotations

    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"never read: the split is compared first")
    cfg0 = load_config([*TINY, f"data.root={synth_data}", f"output_dir={tmp_path}", "run_name=r", "data.fold=0"])
    save_config(cfg0, run_dir / "config.yaml")
    args = [*TINY, f"data.root={synth_data}", f"output_dir={tmp_path}", "run_name=r", "resume_from_checkpoint=auto"]
    assert cli(["train", *args, "data.fold=1"]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert "another data split" in line and "data.fold=0 there, 1 now" in line and "config.yaml" in line

    # same keys, but train.json changed since the run began: its manifest is compared
    other = tmp_path / "other.json"
    doc = json.loads((synth_data / "train.json").read_text())
    doc["images"].pop(sorted(doc["images"])[0])
    other.write_text(json.dumps(doc))
    assignment, counts = fold_assignment(load_annotations(other), 2, 42)
    write_manifest(run_dir / "folds.json", other, assignment, 2, 42, word_counts_by_name=counts)
    assert cli(["train", *args, "data.fold=0"]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert "train.json changed since the run began" in line and "folds.json" in line

    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"fold": "zero"}}))
    assert cli(["train", *args]) == 2
    assert "config.yaml" in _one_line(capsys.readouterr().err, "train")
