"""Reliability (issue #7): bad inputs and faults never lose a run, a checkpoint or a sweep.

The README's "Reliability" table lists every fault tried here, what happens, what is kept
and the test that shows it; where an older test already covers a fault it is named there
and not repeated here.

Everything runs for real: the training (`hrnet_sweep.train.run`, `python -m
hrnet_sweep.train`), the embedded sweep engine and its agents, the real W&B client
(offline, or against a local stand-in server). Test doubles, only for what cannot run here:

- `OutOfMemoryDouble`: there is no GPU, so a callback raises `torch.cuda.OutOfMemoryError`
  at the batch sizes a small GPU could not hold;
- `StandInWandbServer`: the W&B server cannot be reached from a test; a local HTTP server
  that never answers, so the real `wandb` client meets a timeout.

Sizes are tiny (4 synthetic receipts at 64 px, a 16-channel decoder), so a training run
takes seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from hrnet_sweep import select
from hrnet_sweep.cli import main as cli
from hrnet_sweep.config import load_config, save_config
from hrnet_sweep.constants import CONTROL_DIR_ENV, METRIC
from hrnet_sweep.errors import ConfigError, DataError
from hrnet_sweep.io import atomic_path, atomic_write_text, write_submission
from hrnet_sweep.sweep.agent import classify_exit, run_agent
from hrnet_sweep.sweep.engine import LocalSweep

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
FAKE_KEY = "fakekey0do0not0leak0c0ffee0123456789abcd"  # 40 characters, like a real W&B key
assert len(FAKE_KEY) == 40

TINY = [  # the CPU preset shrunk to test size
    "preset=hrnet_w18_small_cpu", "data.image_height=64", "data.image_width=64", "data.batch_size=1",
    "data.num_workers=0", "models.decoder.inner_channels=16", "trainer.progress_bar=false",
    "logging.tensorboard=false", "callbacks.early_stopping.enabled=false", "trainer.max_epochs=1",
    "data.fold=0", "data.num_folds=2", "callbacks.model_checkpoint.save_top_k=0",
]


def tiny_cfg(root: Path, out: Path, *extra: str):
    return load_config([*TINY, f"data.root={root}", f"output_dir={out}", *extra])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Four small synthetic receipts (fold mode, 2 folds: 2 train + 2 validation images)."""
    from hrnet_sweep.synth import generate

    out = tmp_path_factory.mktemp("tiny")
    generate(out, num_images=4, seed=7, width=160, height=200, splits={"train": 4}, korean=False, progress=False)
    return out


def _ckpt(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(what: str, cond, timeout: float, poll: float = 0.1, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _training_pids(control_root: Path) -> dict[int, Path]:
    """pid -> control dir of every `hrnet_sweep.train` process whose control dir is under `control_root`."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if b"hrnet_sweep.train" not in (d / "cmdline").read_bytes():
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(CONTROL_DIR_ENV.encode() + b"="):
                control = Path(item.split(b"=", 1)[1].decode())
                if control_root in control.parents and _alive(int(d.name)):
                    out[int(d.name)] = control
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _files_holding(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                if needle.encode() in p.read_bytes():
                    hits.append(str(p))
    return hits


def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*.tmp")]


# =============================================================================== bad data
#
# One table, through the real training entry point `run(cfg)`. Cases that "work" are
# images of one small dataset trained once (train and validation both read every image);
# each case that "fails early" gets its own run, which must stop before the model is
# built, name the file (and the word), and leave status.json failed and no checkpoint.
# Unit tests of the pieces: tests/test_data.py (read_image formats, truncated files,
# missing files at construction, clamping, images without words).

W, H = 128, 96  # case images: a white receipt with one dark word
AGAIN = "#again"  # a key "K#again" is written as K once more: JSON text can hold a key twice, a dict cannot


def _word(x0, y0, x1, y1) -> dict:
    return {"points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}


GOOD_WORD = _word(10, 20, 60, 35)


def _receipt(size=(W, H)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    sx, sy = size[0] / W, size[1] / H
    ImageDraw.Draw(im).rectangle([10 * sx, 20 * sy, 60 * sx, 35 * sy], fill="black")
    return im


def _jpeg_bytes(size=(W, H)) -> bytes:
    import io

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A real 1-bit PNG of side x side pixels (400 MP: over twice PIL's limit), ~50 KB on disk."""
    row = b"\0" + b"\0" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _img_gray(d: Path) -> dict:
    _receipt().convert("L").save(d / "gray.png")
    return {"gray.png": {"words": {"0001": GOOD_WORD}}}


def _img_rgba(d: Path) -> dict:
    im = _receipt().convert("RGBA")
    im.putalpha(Image.new("L", im.size, 200))
    im.save(d / "rgba.png")
    return {"rgba.png": {"words": {"0001": GOOD_WORD}}}


def _img_16bit(d: Path) -> dict:
    cv2.imwrite(str(d / "deep.png"), np.asarray(_receipt().convert("L"), np.uint16) * 257)
    return {"deep.png": {"words": {"0001": GOOD_WORD}}}


def _img_huge(d: Path) -> dict:
    _receipt((6000, 4500)).save(d / "huge.jpg", quality=80)  # 27 MP
    return {"huge.jpg": {"words": {"0001": _word(469, 938, 2813, 1641)}}}


def _img_no_words(d: Path) -> dict:
    for name in ("blank.jpg", "blank2.jpg"):
        Image.new("RGB", (W, H), "white").save(d / name)
    return {"blank.jpg": {"words": {}}, "blank2.jpg": {}}  # empty words, no words key


def _img_truncated(d: Path) -> dict:
    data = _jpeg_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])  # header fine, content cut
    return {"cut.jpg": {"words": {"0001": GOOD_WORD}}}


def _with_bad_word(name: str, points, key: str = "0002") -> callable:
    def setup(d: Path) -> dict:
        _receipt().save(d / name)
        return {name: {"words": {"0001": GOOD_WORD, key: {"points": points}}}}

    return setup


def _img_far_outside(d: Path) -> dict:
    _receipt().save(d / "outside.jpg")
    return {"outside.jpg": {"words": {
        "0001": GOOD_WORD,
        "0002": {"points": [[-5e6, -40], [9e6, -40], [9e6, 30], [-5e6, 30]]},  # across and past the image
        "0003": {"points": [[-900, -900], [-800, -900], [-800, -800], [-900, -800]]},  # wholly outside
        "0004": {"points": [[70, 50], [1e39, 50], [1e39, 70], [70, 70]]},  # beyond float32: inf
    }}}


WORKS = {  # case -> (setup, substrings a warning must hold, or () for "no warning names it")
    "grayscale PNG": (_img_gray, ()),
    "RGBA PNG": (_img_rgba, ()),
    "16-bit PNG": (_img_16bit, ()),
    "huge image (27 MP)": (_img_huge, ()),
    "image with no words": (_img_no_words, ()),
    "truncated JPEG (header readable)": (_img_truncated, ("cut.jpg", "cannot read image", "next readable image")),
    "polygon with 2 points": (_with_bad_word("two.jpg", [[10, 10], [40, 10]]),
                              ("two.jpg", "word '0002'", "2 points, a polygon needs at least 3")),
    "zero-area polygon": (_with_bad_word("flat.jpg", [[10, 10], [30, 10], [50, 10], [70, 10]]),
                          ("flat.jpg", "word '0002'", "zero area")),
    "self-intersecting polygon": (_with_bad_word("bowtie.jpg", [[10, 40], [60, 70], [60, 40], [10, 60]]), ()),
    "NaN coordinates": (_with_bad_word("nan.jpg", [[10, 10], [float("nan"), 10], [40, 30], [10, 30]]),
                        ("nan.jpg", "word '0002'", "NaN or infinity")),
    "string coordinates": (_with_bad_word("text.jpg", [["ten", 10], [40, 10], [40, 30], [10, 30]]),
                           ("text.jpg", "word '0002'", "not all numbers")),
    "points far outside the image": (_img_far_outside, ()),
    "duplicate word keys": (_with_bad_word("again.jpg", [[70, 50], [110, 50], [110, 70], [70, 70]], key="0001" + AGAIN),
                            ("again.jpg", "word '0001'", "listed more than once", "last entry is kept")),
}


def _annotation_text(images: dict) -> str:
    text = json.dumps({"images": images}, indent=1)
    return text.replace(AGAIN + '"', '"')


def _fail_malformed_json(d: Path) -> tuple[dict, str | None]:
    good = _annotation_text({"good.jpg": {"words": {"0001": GOOD_WORD}}})
    return {}, good.replace('"0001"', '"0001",', 1)  # a stray comma between a key and its value


def _fail_missing(d: Path):
    return {"gone.jpg": {"words": {"0001": GOOD_WORD}}}, None


def _fail_not_image(d: Path):
    (d / "notes.jpg").write_text("these are notes, not a JPEG")
    return {"notes.jpg": {"words": {"0001": GOOD_WORD}}}, None


def _fail_empty(d: Path):
    (d / "empty.jpg").write_bytes(b"")
    return {"empty.jpg": {"words": {"0001": GOOD_WORD}}}, None


def _fail_bomb(d: Path):
    _bomb_png(d / "bomb.png")
    return {"bomb.png": {"words": {"0001": GOOD_WORD}}}, None


def _fail_duplicate_image(d: Path):
    _receipt().save(d / "twice.jpg")
    one = json.dumps({"words": {"0001": GOOD_WORD}})
    two = json.dumps({"words": {"0001": _word(70, 20, 110, 35)}})
    good = json.dumps({"words": {"0001": GOOD_WORD}})
    return {}, f'{{"images": {{"good.jpg": {good}, "twice.jpg": {one}, "twice.jpg": {two}}}}}'


FAILS = {  # case -> (setup returning (extra images, raw train.json text or None), substrings of the error)
    "malformed JSON": (_fail_malformed_json, ("train.json", "malformed JSON at line 5 column 11")),
    "missing image file": (_fail_missing, ("gone.jpg", "not found")),
    "not an image": (_fail_not_image, ("notes.jpg", "UnidentifiedImageError")),
    "empty image file": (_fail_empty, ("empty.jpg", "UnidentifiedImageError")),
    "decompression bomb (400 MP)": (_fail_bomb, ("bomb.png", "DecompressionBombError")),
    "duplicate file names": (_fail_duplicate_image, ("train.json", "'twice.jpg'", "more than once")),
}


def _dataset(root: Path, images: dict, raw_json: str | None = None) -> Path:
    """root/images/good.jpg plus `images`; train.json lists them all (or is `raw_json`)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    _receipt().save(root / "images" / "good.jpg")
    doc = {"good.jpg": {"words": {"0001": GOOD_WORD}}, **images}
    (root / "train.json").write_text(raw_json if raw_json is not None else _annotation_text(doc))
    return root


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def works_run(tmp_path_factory):
    """Every "works" case in one dataset, trained for one epoch; its result and warnings."""
    from hrnet_sweep.train import run

    root = tmp_path_factory.mktemp("bad_data_works")
    (root / "images").mkdir()
    images, names = {}, {}
    for case, (setup, _) in WORKS.items():
        entries = setup(root / "images")
        names[case] = list(entries)
        images.update(entries)
    _dataset(root, images)
    (root / "train.json").replace(root / "all.json")
    # train/val mode: both splits read every image, and a batch holds them all (no dropped tail)
    n = len(images) + 1
    cfg = tiny_cfg(root, root / "out", "run_name=works", "data.fold=null", "data.train_json=all.json",
                   "data.val_json=all.json", f"data.batch_size={n}", "callbacks.model_checkpoint.save_last=false")
    handler = _Records()
    logging.getLogger("hrnet_sweep").addHandler(handler)
    try:
        result = run(cfg)
    finally:
        logging.getLogger("hrnet_sweep").removeHandler(handler)
    return result, handler.messages, names


@pytest.mark.integration
@pytest.mark.parametrize("case", list(WORKS))
def test_bad_data_that_works(case, works_run):
    result, warnings, names = works_run
    assert result.state == "finished" and result.epochs == 1, result.reason
    assert result.history[0]["epoch"] == 0 and np.isfinite(result.history[0][METRIC])
    _, needles = WORKS[case]
    if needles:  # the word (or image) is skipped, and the log says which
        hits = [m for m in warnings if all(s in m for s in needles)]
        assert hits, f"no warning holding {needles} in {warnings}"
    else:  # used as it is: nothing to say about it
        assert not [m for m in warnings if any(f"'{n}'" in m or f"/{n}:" in m for n in names[case])], warnings


@pytest.mark.unit
@pytest.mark.parametrize("case", list(FAILS))
def test_bad_data_fails_early_naming_file_and_word(case, tmp_path):
    from hrnet_sweep.train import run

    setup, needles = FAILS[case]
    (tmp_path / "images").mkdir()
    images, raw = setup(tmp_path / "images")
    _dataset(tmp_path, images, raw)
    cfg = tiny_cfg(tmp_path, tmp_path / "out", "run_name=bad")
    t0 = time.monotonic()
    with pytest.raises(DataError) as err:
        run(cfg)
    msg = str(err.value)
    assert all(s in msg for s in needles), msg
    run_dir = tmp_path / "out" / "bad"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == msg
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    assert time.monotonic() - t0 < 30, "must fail before any training"


# =============================================================================== bad config and sweep files
#
# Every bad key or value is a one-line error naming the file (where there is one), the key,
# the value and what is allowed; the CLI prints it without a traceback and exits 2.
# More value cases: tests/test_config.py (test_bad_values_are_named, test_yaml_tags_refused),
# tests/test_check.py (lints).

PAYLOAD = "!!python/object/apply:os.system ['touch {marker}']"

PRESET_FILES = {  # case -> (preset text, substrings of the error)
    "YAML tag that safe_load refuses": ("models: " + PAYLOAD + "\n", ["evil.yaml", "not valid YAML for safe_load"]),
    "unknown key": ("models:\n  optimizer: {lrr: 0.001}\n",
                    ["evil.yaml", "models.optimizer.lrr", "0.001", "did you mean 'models.optimizer.lr'"]),
    "wrong type": ("data: {batch_size: [1, 2]}\n", ["data.batch_size=[1, 2]", "an integer >= 1"]),
    "YAML syntax error": ("models: {name: [hrnet\n", ["evil.yaml", "not valid YAML"]),
    "not a mapping": ("- models\n- data\n", ["evil.yaml", "must be a mapping"]),
    "base preset missing": ("base: hrnet_w99\n", ["hrnet_w99", "not found", "hrnet_w44_1280"]),
}

OVERRIDES = {  # case -> (overrides, substrings of the error)
    "unknown key": (["models.optimizer.lrr=1"], ["models.optimizer.lrr", "(value 1)", "did you mean", "weight_decay"]),
    "wrong type": (["data.batch_size=two"], ["data.batch_size='two'", "allowed: an integer >= 1"]),
    "wrong choice": (["models.scheduler.name=cosin"], ["models.scheduler.name='cosin'", "'cosine'"]),
    "impossible range": (["models.postprocess.thresh=1.5"], ["models.postprocess.thresh=1.5", "< 1"]),
    "impossible combination": (["data.fold=7"], ["fold=7 must be < num_folds=5"]),
    "missing preset": (["preset=hrnet_w99"], ["preset 'hrnet_w99' not found", "hrnet_w44_1280"]),
    "not key=value": (["lr"], ["'lr' is not of the form key=value"]),
}

SWEEP_FILES = {  # case -> (edit of a valid sweep document, substrings of the finding)
    "unknown parameter key": (lambda d: d["parameters"].update({"models.optimizer.lrr": {"value": 1}}),
                              ["models.optimizer.lrr", "did you mean 'models.optimizer.lr'"]),
    "unknown top-level key": (lambda d: d.update({"metrc": {"name": METRIC}}), ["unknown sweep key 'metrc'"]),
    "wrong type": (lambda d: d["parameters"].update({"data.batch_size": {"values": ["two"]}}),
                   ["data.batch_size", "'two'", "an integer >= 1"]),
    "impossible range (min > max)": (lambda d: d["parameters"]["models.optimizer.lr"].update({"min": 1e-2}),
                                     ["models.optimizer.lr", "min 0.01 is not less than max 0.001"]),
    "impossible range (log of 0)": (lambda d: d["parameters"]["models.optimizer.lr"].update({"min": 0}),
                                    ["log_uniform_values needs min > 0"]),
    "missing preset": (lambda d: d["parameters"]["preset"].update({"value": "hrnet_w99"}),
                       ["preset 'hrnet_w99' not found"]),
    "null value (reaches training as 'None')": (lambda d: d["parameters"].update({"data.fold": {"value": None}}),
                                                ["data.fold", "training reads 'None'"]),
}


def _sweep_doc() -> dict:
    return {"method": "bayes", "metric": {"name": METRIC, "goal": "maximize"},
            "parameters": {"preset": {"value": "hrnet_w18_small_cpu"},
                           "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-3}},
            "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"]}


def _one_line_error(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"hrnet_sweep {command}: error:")]
    assert len(lines) == 1, err
    return err


@pytest.mark.unit
@pytest.mark.parametrize("case", list(OVERRIDES))
def test_bad_override_exits_2_naming_key_value_and_allowed(case, capsys):
    overrides, needles = OVERRIDES[case]
    assert cli(["train", *overrides]) == 2
    err = _one_line_error(capsys.readouterr().err, "train")
    assert all(s in err for s in needles), err


@pytest.mark.unit
@pytest.mark.parametrize("case", list(PRESET_FILES))
def test_bad_preset_file_exits_2_naming_file_and_key(case, tmp_path, capsys):
    text, needles = PRESET_FILES[case]
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.yaml"
    path.write_text(text.format(marker=marker))
    assert cli(["train", f"preset={path}", "--dry-run"]) == 2
    err = _one_line_error(capsys.readouterr().err, "train")
    assert all(s in err for s in needles), err
    assert not marker.exists(), "a YAML tag ran code"


@pytest.mark.unit
@pytest.mark.parametrize("case", list(SWEEP_FILES))
def test_bad_sweep_file_exits_2_from_check_and_from_sweep(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edit, needles = SWEEP_FILES[case]
    doc = _sweep_doc()
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli(["check", str(path)]) == 2
    out = capsys.readouterr().out
    errors = [ln for ln in out.splitlines() if ln.strip().startswith("error")]
    assert any(all(s in ln for s in needles) for ln in errors), out
    # the engine refuses it too, before creating anything
    code = cli(["sweep", str(path), "--local", "--sweeps-root", str(tmp_path / "sweeps"), "--create-only"])
    if case.startswith("null value"):  # a lint of `check` only: the value itself is a valid config value
        assert code == 0
    else:
        assert code == 2 and not (tmp_path / "sweeps").exists()
        _one_line_error(capsys.readouterr().err, "sweep")


@pytest.mark.unit
def test_sweep_file_with_yaml_tag_or_missing(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("method: bayes\nparameters: " + PAYLOAD.format(marker=marker) + "\n")
    assert cli(["check", str(tagged), str(tmp_path / "missing.yaml")]) == 2
    out = capsys.readouterr().out
    assert "tagged.yaml:2: not valid YAML for yaml.safe_load" in out and "python/object/apply" in out
    assert "missing.yaml: cannot read sweep file" in out
    assert not marker.exists()
    assert cli(["agent", str(tmp_path / "no-such-sweep")]) == 2
    _one_line_error(capsys.readouterr().err, "agent")


@pytest.mark.unit
def test_bad_paths_at_run_time_exit_2_before_training(tmp_path, capsys):
    out = f"output_dir={tmp_path / 'out'}"
    assert cli(["train", *TINY, out, "run_name=a", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere/train.json: file not found" in _one_line_error(capsys.readouterr().err, "train")
    assert json.loads((tmp_path / "out" / "a" / "status.json").read_text())["state"] == "failed"
    assert cli(["train", *TINY, out, "run_name=b", "resume_from_checkpoint=/nope/last.ckpt"]) == 2
    assert "resume_from_checkpoint='/nope/last.ckpt': file not found" in _one_line_error(capsys.readouterr().err, "train")


@pytest.mark.unit
def test_real_entry_points_exit_2(tmp_path):
    """The console script and `python -m hrnet_sweep.train` (what an agent runs), as processes."""
    marker = tmp_path / "payload-ran"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("method: bayes\nparameters: " + PAYLOAD.format(marker=marker) + "\n")
    script = str(Path(PY).parent / "hrnet_sweep")
    commands = {
        "hrnet_sweep train": [script, "train", "models.optimizer.lrr=1"],
        "python -m hrnet_sweep.train": [PY, "-m", "hrnet_sweep.train", "data.batch_size=0"],
        "hrnet_sweep check": [script, "check", str(tagged)],
    }
    procs = {k: subprocess.Popen(c, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    results = {k: (p.wait(timeout=300), *p.communicate()) for k, p in procs.items()}
    for name, (rc, out, err) in results.items():
        assert rc == 2, (name, out, err)
        assert "Traceback" not in out + err, (name, err)
    assert "unknown key 'models.optimizer.lrr'" in results["hrnet_sweep train"][2]
    assert "data.batch_size=0" in results["python -m hrnet_sweep.train"][2]
    assert "not valid YAML for yaml.safe_load" in results["hrnet_sweep check"][1]
    assert not marker.exists()
