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

from hrnet_sweep.cli import main as cli
from hrnet_sweep.config import load_config
from hrnet_sweep.constants import CONTROL_DIR_ENV, METRIC
from hrnet_sweep.errors import DataError
from hrnet_sweep.files import atomic_path
from hrnet_sweep.formats import load_annotations
from hrnet_sweep.pipeline import best as best_cmd
from hrnet_sweep.pipeline.presets import read_provenance
from hrnet_sweep.ranking import RunRecord, rank_runs
from hrnet_sweep.sweep.agent import classify_exit, run_agent
from hrnet_sweep.sweep.engine import LocalSweep

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
FAKE_KEY = "fakekey0do0not0leak0c0ffee0123456789abcd"  # 40 characters, like a real W&B key
assert len(FAKE_KEY) == 40

TINY = [  # the CPU preset shrunk to test size
    "preset=hrnet_w18_small_cpu",
    "data.image_height=64",
    "data.image_width=64",
    "data.batch_size=1",
    "data.num_workers=0",
    "models.decoder.inner_channels=16",
    "trainer.progress_bar=false",
    "logging.tensorboard=false",
    "callbacks.early_stopping.enabled=false",
    "trainer.max_epochs=1",
    "data.fold=0",
    "data.num_folds=2",
    "callbacks.model_checkpoint.save_top_k=0",
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
    return {
        "outside.jpg": {
            "words": {
                "0001": GOOD_WORD,
                "0002": {"points": [[-5e6, -40], [9e6, -40], [9e6, 30], [-5e6, 30]]},  # across and past the image
                "0003": {"points": [[-900, -900], [-800, -900], [-800, -800], [-900, -800]]},  # wholly outside
                "0004": {"points": [[70, 50], [1e39, 50], [1e39, 70], [70, 70]]},  # beyond float32: inf
            }
        }
    }


WORKS = {  # case -> (setup, substrings a warning must hold, or () for "no warning names it")
    "grayscale PNG": (_img_gray, ()),
    "RGBA PNG": (_img_rgba, ()),
    "16-bit PNG": (_img_16bit, ()),
    "huge image (27 MP)": (_img_huge, ()),
    "image with no words": (_img_no_words, ()),
    "truncated JPEG (header readable)": (_img_truncated, ("cut.jpg", "cannot read image", "next readable image")),
    "polygon with 2 points": (
        _with_bad_word("two.jpg", [[10, 10], [40, 10]]),
        ("two.jpg", "word '0002'", "2 points, a polygon needs at least 3"),
    ),
    "zero-area polygon": (
        _with_bad_word("flat.jpg", [[10, 10], [30, 10], [50, 10], [70, 10]]),
        ("flat.jpg", "word '0002'", "zero area"),
    ),
    "self-intersecting polygon": (_with_bad_word("bowtie.jpg", [[10, 40], [60, 70], [60, 40], [10, 60]]), ()),
    "NaN coordinates": (
        _with_bad_word("nan.jpg", [[10, 10], [float("nan"), 10], [40, 30], [10, 30]]),
        ("nan.jpg", "word '0002'", "NaN or infinity"),
    ),
    "string coordinates": (
        _with_bad_word("text.jpg", [["ten", 10], [40, 10], [40, 30], [10, 30]]),
        ("text.jpg", "word '0002'", "not all numbers"),
    ),
    "points far outside the image": (_img_far_outside, ()),
    "duplicate word keys": (
        _with_bad_word("again.jpg", [[70, 50], [110, 50], [110, 70], [70, 70]], key="0001" + AGAIN),
        ("again.jpg", "word '0001'", "listed more than once", "last entry is kept"),
    ),
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
    from hrnet_sweep.pipeline.train import run

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
    cfg = tiny_cfg(
        root,
        root / "out",
        "run_name=works",
        "data.fold=null",
        "data.train_json=all.json",
        "data.val_json=all.json",
        f"data.batch_size={n}",
        "callbacks.model_checkpoint.save_last=false",
    )
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
    from hrnet_sweep.pipeline.train import run

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


@pytest.mark.unit
def test_duplicate_word_keys_keep_the_last_or_fail_when_strict(tmp_path, caplog):
    path = tmp_path / "gt.json"
    path.write_text(
        _annotation_text({"a.jpg": {"words": {"0001": _word(0, 0, 10, 10), "0001" + AGAIN: _word(20, 20, 40, 30)}}})
    )
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        (word,) = load_annotations(path)["a.jpg"].words
    assert word.points.tolist() == _word(20, 20, 40, 30)["points"]
    assert "gt.json: image 'a.jpg' word '0001' is listed more than once" in caplog.text
    with pytest.raises(DataError, match=r"gt.json: image 'a.jpg' word '0001' is listed more than once"):
        load_annotations(path, strict=True)


# =============================================================================== bad config and sweep files
#
# Every bad key or value is a one-line error naming the file (where there is one), the key,
# the value and what is allowed; the CLI prints it without a traceback and exits 2.
# More value cases: tests/test_config.py (test_bad_values_are_named, test_yaml_tags_refused),
# tests/test_check.py (lints).

PAYLOAD = "!!python/object/apply:os.system ['touch {marker}']"

PRESET_FILES = {  # case -> (preset text, substrings of the error)
    "YAML tag that safe_load refuses": ("models: " + PAYLOAD + "\n", ["evil.yaml", "not valid YAML for safe_load"]),
    "unknown key": (
        "models:\n  optimizer: {lrr: 0.001}\n",
        ["evil.yaml", "models.optimizer.lrr", "0.001", "did you mean 'models.optimizer.lr'"],
    ),
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
    "unknown parameter key": (
        lambda d: d["parameters"].update({"models.optimizer.lrr": {"value": 1}}),
        ["models.optimizer.lrr", "did you mean 'models.optimizer.lr'"],
    ),
    "unknown top-level key": (lambda d: d.update({"metrc": {"name": METRIC}}), ["unknown sweep key 'metrc'"]),
    "wrong type": (
        lambda d: d["parameters"].update({"data.batch_size": {"values": ["two"]}}),
        ["data.batch_size", "'two'", "an integer >= 1"],
    ),
    "impossible range (min > max)": (
        lambda d: d["parameters"]["models.optimizer.lr"].update({"min": 1e-2}),
        ["models.optimizer.lr", "min 0.01 is not less than max 0.001"],
    ),
    "impossible range (log of 0)": (
        lambda d: d["parameters"]["models.optimizer.lr"].update({"min": 0}),
        ["log_uniform_values needs min > 0"],
    ),
    "missing preset": (
        lambda d: d["parameters"]["preset"].update({"value": "hrnet_w99"}),
        ["preset 'hrnet_w99' not found"],
    ),
    "null value (reaches training as 'None')": (
        lambda d: d["parameters"].update({"data.fold": {"value": None}}),
        ["data.fold", "training reads 'None'"],
    ),
}


def _sweep_doc() -> dict:
    return {
        "method": "bayes",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {
            "preset": {"value": "hrnet_w18_small_cpu"},
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-3},
        },
        "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"],
    }


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
    path.write_text(text.replace("{marker}", str(marker)))
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
    assert "missing.yaml: sweep file not found" in out
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
    assert "resume_from_checkpoint='/nope/last.ckpt': file not found" in _one_line_error(
        capsys.readouterr().err, "train"
    )


@pytest.mark.integration
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
    procs = {
        k: subprocess.Popen(c, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k, c in commands.items()
    }
    results = {k: (p.wait(timeout=300), *p.communicate()) for k, p in procs.items()}
    for name, (rc, out, err) in results.items():
        assert rc == 2, (name, out, err)
        assert "Traceback" not in out + err, (name, err)
    assert "unknown key 'models.optimizer.lrr'" in results["hrnet_sweep train"][2]
    assert "data.batch_size=0" in results["python -m hrnet_sweep.train"][2]
    assert "not valid YAML for yaml.safe_load" in results["hrnet_sweep check"][1]
    assert not marker.exists()


# =============================================================================== writes that fail half way
#
# Every preset, CSV, manifest, status file and checkpoint is written through
# `io.atomic_path`: a temporary file next to the target, renamed over it at the end.
# Export of `best`: tests/test_best.py::test_export_never_leaves_a_partial_file.

_DISK_FULL_CHILD = r"""
import json, os, resource, sys
from pathlib import Path

import numpy as np
import torch

from hrnet_sweep.config import load_config, save_config
from hrnet_sweep.folds import assign_folds, write_manifest
from hrnet_sweep.formats import save_predictions, write_submission
from hrnet_sweep.dbnet.model import build_model
from hrnet_sweep.pipeline.callbacks import atomic_checkpoint_io

work = Path(sys.argv[1])
square = np.array([[10, 10], [90, 10], [90, 40], [10, 40]], np.float32)
preds = {f"receipt_{i:04d}.jpg": [square + j for j in range(40)] for i in range(30)}
names = [f"receipt_{i:04d}.jpg" for i in range(200)]
ann = work / "train.json"
ann.write_text(json.dumps({"images": {n: {"words": {"0001": {"points": square.tolist()}}} for n in names}}))
cfg = load_config(["preset=hrnet_w18_small_cpu", "models.decoder.inner_channels=16"])
model = build_model(cfg)
checkpoint = {"epoch": 3, "global_step": 120, "state_dict": model.state_dict(),
              "hyper_parameters": {"config": cfg.to_dict()}}
writers = {
    "submission CSV": lambda p: write_submission(p, preds),
    "prediction JSON": lambda p: save_predictions(p, {k: [(q, 0.9) for q in v] for k, v in preds.items()}),
    "resolved config (config.yaml)": lambda p: save_config(cfg, p),
    "fold manifest": lambda p: write_manifest(p, ann, assign_folds(names, [1] * len(names), 5, 42), 5, 42),
    "checkpoint (AtomicCheckpointIO)": lambda p: atomic_checkpoint_io().save_checkpoint(checkpoint, p),
}
report = {}
for name, write in writers.items():
    folder = work / name.split(" ")[0]
    folder.mkdir()
    write(folder / "full")  # how big the file is when the disk has room
    size = (folder / "full").stat().st_size
    (folder / "full").unlink()
    target = folder / "target"
    target.write_bytes(b"previous version\n")
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))  # the disk fills half way
    try:
        write(target)
        error = None
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report[name] = {"size": size, "error": error, "target": target.read_text(errors="replace"),
                    "files": sorted(p.name for p in folder.iterdir())}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def disk_full_report(tmp_path_factory) -> dict:
    """Each writer, in a child process whose file size limit (RLIMIT_FSIZE) stops the write half
    way: the kernel refuses the rest with EFBIG, as a full disk refuses it with ENOSPC."""
    work = tmp_path_factory.mktemp("disk_full")
    child = subprocess.run(
        [PY, "-c", "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n" + _DISK_FULL_CHILD, str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.parametrize(
    "writer",
    [
        "submission CSV",
        "prediction JSON",
        "resolved config (config.yaml)",
        "fold manifest",
        "checkpoint (AtomicCheckpointIO)",
    ],
)
def test_write_cut_half_way_keeps_the_previous_file(writer, disk_full_report):
    r = disk_full_report[writer]
    assert r["size"] > 64, r
    assert r["error"] and "File too large" in r["error"], r
    assert r["target"] == "previous version\n", "the target was touched"
    assert r["files"] == ["target"], f"temporary file left behind: {r['files']}"


@pytest.mark.unit
@pytest.mark.parametrize("where", ["inside the block", "at the rename"])
def test_atomic_path_failure_leaves_target_and_no_temp_file(where, tmp_path, monkeypatch):
    target = tmp_path / "preset.yaml"
    target.write_text("old: 1\n")
    if where == "at the rename":

        def refuse(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("hrnet_sweep.files.os.replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(target) as tmp:
            tmp.write_text("new: 2\nhalf")
            if where == "inside the block":
                raise OSError(28, "No space left on device")
    assert target.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.yaml"]
    # a new file that fails is not created at all
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.csv") as tmp:
            tmp.write_text("filename,polygons\n")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.yaml"]


@pytest.mark.unit
def test_sigkill_during_a_write_keeps_the_previous_file(tmp_path):
    """SIGKILL cannot be cleaned up after: the target stays whole, and the half-written
    temporary file is a hidden `.NAME.*.tmp` next to it (README: Reliability)."""
    target = tmp_path / "submission.csv"
    target.write_text("filename,polygons\nold.jpg,1 2 3 4 5 6 7 8\n")
    code = (
        "import sys, time\nfrom hrnet_sweep.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    fh = open(tmp, 'w'); fh.write('filename,polygons\\nnew.jpg,1 2'); fh.flush()\n"
        "    print('writing', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([PY, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=30)
    assert target.read_text() == "filename,polygons\nold.jpg,1 2 3 4 5 6 7 8\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".submission.csv.") and leftovers[0].endswith(".tmp")


# =============================================================================== training faults
#
# NaN loss through `run`: tests/test_train_e2e.py::test_nan_loss_fails_the_run_with_a_reason;
# through an agent and `best`: test_sweep_survives_nan_agent_kill_and_keeps_secrets below.

_PAUSE_CHILD = r'''
import pathlib, sys, time

import pytorch_lightning as pl

from hrnet_sweep.config import load_config
from hrnet_sweep.pipeline.train import run


class PauseMidEpoch(pl.Callback):
    """An observer, not a double: after the first optimizer step of epoch 2 it says so and
    waits, so the test's SIGKILL lands mid-epoch every time."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 0:
            self.marker.write_text(str(trainer.global_step))
            time.sleep(600)


run(load_config(sys.argv[2:]), extra_callbacks=[PauseMidEpoch(sys.argv[1])])
'''


@pytest.mark.integration
def test_sigkill_mid_epoch_then_resume_gives_the_same_optimizer_steps(tiny_data, tmp_path):
    from hrnet_sweep.pipeline.train import run

    # the shipped checkpoint policy: best (top 1) and last
    args = [
        *TINY,
        f"data.root={tiny_data}",
        f"output_dir={tmp_path}",
        "trainer.max_epochs=3",
        "callbacks.model_checkpoint.save_top_k=1",
    ]
    straight = run(load_config([*args, "run_name=straight"]))
    assert straight.state == "finished", straight.reason
    steps = _ckpt(tmp_path / "straight" / "checkpoints" / "last.ckpt")["global_step"]
    assert steps == 6  # 2 training images, batch 1, 3 epochs

    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        [PY, "-c", _PAUSE_CHILD, str(marker), *args, "run_name=killed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for("training to reach epoch 2", marker.exists, timeout=600, proc=proc)
    finally:
        proc.kill()  # SIGKILL: no handler, no finally, no status.json
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == "5", "killed after the first of epoch 2's two steps"
    run_dir = tmp_path / "killed"
    assert not (run_dir / "status.json").exists()
    # whole, loadable, and from the epoch just before the kill, new best or not (tiny models
    # score 0.0 in every epoch, so epoch 1 was not a new best)
    last = _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 4)
    assert _no_temp_files(run_dir) == []
    # A kill (or a full disk) can also cut metrics.jsonl mid-line; resume must not glue
    # the next row onto the cut one.
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "step": 5, "val/hm')

    resumed = run(load_config([*args, "run_name=killed", "resume_from_checkpoint=auto"]))
    assert resumed.state == "finished", resumed.reason
    assert _ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == steps
    assert [r["epoch"] for r in _metrics_rows(run_dir)] == [0, 1, 2]  # each epoch once, every line whole
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


class OutOfMemoryDouble:
    """Test double for a GPU running out of memory (there is no GPU here): raises what CUDA
    raises, `torch.cuda.OutOfMemoryError`, at every training batch larger than `max_batch`
    from epoch `from_epoch` on. A Lightning callback, passed with `run(cfg, extra_callbacks=...)`."""

    def __new__(cls, max_batch: int, from_epoch: int = 0):
        import pytorch_lightning as pl
        import torch

        class _Double(pl.Callback):
            def __init__(self):
                self.raised: list[tuple[int, int]] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                n = batch["image"].shape[0]
                if n > max_batch and trainer.current_epoch >= from_epoch:
                    self.raised.append((trainer.current_epoch, n))
                    raise torch.cuda.OutOfMemoryError(
                        f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {n}; test double)"
                    )

        return _Double()


@pytest.mark.integration
def test_out_of_memory_retries_with_half_batch_and_twice_the_accumulation(tiny_data, tmp_path, caplog):
    from hrnet_sweep.pipeline.train import run

    args = [*TINY, f"data.root={tiny_data}", f"output_dir={tmp_path}", "data.batch_size=2", "trainer.max_epochs=2"]
    double = OutOfMemoryDouble(max_batch=1, from_epoch=1)  # epoch 0 fits, epoch 1 does not
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.pipeline.train"):
        result = run(load_config([*args, "run_name=oom"]), extra_callbacks=[double])
    assert double.raised == [(1, 2)]
    assert result.state == "finished", result.reason
    assert any(
        "out of GPU memory at data.batch_size=2; retrying once with batch 1 and accumulate_grad_batches 2"
        in r.getMessage()
        for r in caplog.records
    )
    run_dir = tmp_path / "oom"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["data"]["batch_size"], saved["trainer"]["accumulate_grad_batches"]) == (1, 2)
    last = _ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert last["hyper_parameters"]["config"]["data"]["batch_size"] == 1
    # resumed from epoch 0's checkpoint; half the batch twice accumulated: one optimizer step
    # per epoch, as with batch 2
    assert last["global_step"] == 2 and [r["epoch"] for r in _metrics_rows(run_dir)] == [0, 1]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


@pytest.mark.integration
def test_out_of_memory_again_after_the_retry_fails_the_run(tiny_data, tmp_path, monkeypatch):
    from hrnet_sweep.pipeline.train import run

    control = tmp_path / "control"
    monkeypatch.setenv(CONTROL_DIR_ENV, str(control))  # as under a sweep agent
    double = OutOfMemoryDouble(max_batch=0)
    cfg = tiny_cfg(tiny_data, tmp_path, "run_name=oom2", "data.batch_size=2")
    result = run(cfg, extra_callbacks=[double])
    assert [n for _, n in double.raised] == [2, 1]  # tried once more, with half the batch
    assert result.state == "failed" and result.exit_code == 1
    assert result.reason.startswith("out of GPU memory at data.batch_size=1: CUDA out of memory")
    saved = yaml.safe_load((tmp_path / "oom2" / "config.yaml").read_text())
    assert (saved["data"]["batch_size"], saved["trainer"]["accumulate_grad_batches"]) == (1, 2)
    status = json.loads((control / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == result.reason
    # what the agent makes of it: a failed run (never selectable by `best`), and it goes on
    # to the next run (tests/test_agent.py::test_failed_run_is_recorded_and_the_sweep_goes_on)
    outcome = classify_exit(result.exit_code, status, [])
    assert outcome.state == "failed" and outcome.reason == result.reason
    assert rank_runs([RunRecord("oom2", outcome.state, history=[0.9])]).best is None


# =============================================================================== W&B errors and timeouts in `best`
#
# Function level (API double: transient errors retried, persistent ones a clear message, a
# stuck client cut by the deadline): tests/test_best.py::test_wandb_*.


class StandInWandbServer:
    """Test double for the W&B server (unreachable from a test): a local HTTP server that
    accepts every request and never answers, as an overloaded server or a dead proxy does."""

    def __init__(self):
        release = self.release = threading.Event()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.requests += 1
                release.wait(120)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.unit
def test_best_cli_retries_api_errors_then_exits_2(monkeypatch, capsys):
    calls, sleeps = [], []

    class FailingApi:  # test double of wandb.Api: every call times out
        def sweep(self, path):
            calls.append(path)
            raise TimeoutError("HTTPSConnectionPool(host='api.wandb.ai', port=443): Read timed out. (read timeout=1)")

    monkeypatch.setattr(best_cmd, "_default_api", lambda timeout: FailingApi())
    monkeypatch.setitem(best_cmd.wandb_runs.__kwdefaults__, "sleep", sleeps.append)
    assert cli(["best", "acme/receipts/abc123", "--retries", "2"]) == 2
    err = _one_line_error(capsys.readouterr().err, "best")
    assert "reading sweep acme/receipts/abc123 failed after 3 attempts" in err and "try again" in err
    assert len(calls) == 3 and sleeps == [2.0, 4.0]


@pytest.mark.integration
def test_best_with_the_real_wandb_client_and_a_server_that_never_answers(tmp_path):
    server = StandInWandbServer()
    env = {
        **os.environ,
        "WANDB_BASE_URL": server.url,
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_DIR": str(tmp_path),
    }
    env.pop("WANDB_MODE", None)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [str(Path(PY).parent / "hrnet_sweep"), "best", "acme/receipts/abc123", "--timeout", "1", "--retries", "1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.close()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = _one_line_error(proc.stderr, "best")
    assert "failed after 2 attempts" in err and "try again" in err, err  # a timeout: retried
    assert FAKE_KEY not in proc.stdout + proc.stderr
    assert _files_holding(tmp_path, FAKE_KEY) == []
    assert elapsed < 120, f"took {elapsed:.0f}s"


# =============================================================================== sweeps: kills, NaN, secrets
#
# Already covered elsewhere: a SIGKILLed training is a crashed run and the sweep completes
# (tests/test_agent.py::test_sigkill_of_a_training_gives_a_crashed_run_and_the_sweep_continues,
# tests/test_sweep_integration.py); an agent that died after taking a run (the run is marked
# crashed on resume: tests/test_engine.py::test_resume_marks_runs_of_dead_agents_crashed);
# SIGTERM to an agent (tests/test_agent.py::test_sigterm_to_the_agent_stops_its_run_and_leaves_no_process);
# two agents asking at the same instant (tests/test_engine.py::test_two_agents_at_the_same_instant_get_distinct_runs).


def _sweep_yaml(path: Path, data: Path, parameters: dict, **extra) -> Path:
    from hrnet_sweep.config import parse_overrides

    fixed = {k: {"value": v} for k, v in parse_overrides(TINY).items()}
    doc = {
        "method": "grid",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {**fixed, "data.root": {"value": str(data)}, **parameters},
        "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"],
        **extra,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _sweep_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        **extra,
    }
    env.pop("WANDB_MODE", None)  # the engine logs offline
    return env


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_survives_nan_agent_kill_and_keeps_secrets(tiny_data, tmp_path, monkeypatch, capsys):
    """One local sweep, real training, W&B offline, a (fake) W&B key in the environment:
    run 1 ends in a NaN loss; its agent is SIGKILLed during run 2; a new agent marks run 2
    crashed, runs its grid point again, and the sweep ends; `best` picks the one finished
    run; the key is nowhere on disk nor in any output."""
    env = _sweep_env(tmp_path, WANDB_API_KEY=FAKE_KEY)
    path = _sweep_yaml(
        tmp_path / "nan.yaml",
        tiny_data,
        {"models.optimizer.name": {"value": "sgd"}, "models.optimizer.lr": {"values": [1.0e30, 1.0e-3]}},
    )
    sweep = LocalSweep.create(path, sweep_dir=tmp_path / "sweep")
    agent = subprocess.Popen(
        [PY, "-m", "hrnet_sweep", "agent", str(sweep.root), "--poll", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def second_run_training() -> dict | None:
        runs = sweep.runs()
        if [r.state for r in runs] != ["failed", "running"]:
            return None
        return _training_pids(sweep.root) or None

    try:
        (training_pid,) = _wait_for(
            "run 2 to start after run 1 failed", second_run_training, 900, poll=0.25, proc=agent
        )
    except BaseException:
        agent.kill()
        raise
    agent.kill()  # SIGKILL: the agent cannot close its run
    agent_out = agent.communicate(timeout=60)[0]
    _wait_for("the orphaned training to stop", lambda: not _alive(training_pid), 120)  # parent-death signal

    for key, value in env.items():
        if key.startswith(("WANDB_", "PYTHONPATH")):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    result = run_agent(LocalSweep(sweep.root), poll_s=0.2, out=lines.append)
    assert result.exit_code == 0 and result.ended == "sweep done: grid of 2 points done", lines

    nan, killed, rerun = sweep.runs()
    assert nan.state == "failed" and nan.reason.startswith("loss is nan"), nan
    assert nan.params["models.optimizer.lr"] == 1e30
    assert killed.state == "crashed" and "is gone" in killed.reason, killed
    assert rerun.state == "finished" and rerun.params == killed.params
    assert any(f"marked 1 run(s) of dead agents as crashed: {killed.run_id}" in ln for ln in lines), lines

    capsys.readouterr()
    export = tmp_path / "best.yaml"
    assert cli(["best", str(sweep.root), "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert f"best: run {rerun.run_id}" in out and "1 crashed" in out and "1 failed" in out, out
    assert read_provenance(export)["run"] == rerun.run_id
    assert load_config([f"preset={export}"]).models.optimizer.lr == 1e-3
    assert cli(["status", str(sweep.root)]) == 0
    status_out = capsys.readouterr().out
    assert "loss is nan" in status_out

    # the key: not in any file (configs, status, metrics, checkpoints, W&B offline runs, engine
    # journal, logs, the exported preset), nor in anything printed
    assert list((tmp_path / "outputs").rglob("*.wandb")), "runs logged to W&B offline"
    for ckpt in (tmp_path / "outputs").rglob("*.ckpt"):
        assert FAKE_KEY not in repr(_ckpt(ckpt)["hyper_parameters"])
    assert _files_holding(tmp_path, FAKE_KEY) == []
    assert FAKE_KEY not in agent_out + "\n".join(lines) + out + status_out


@pytest.mark.integration
@pytest.mark.slow
def test_whole_sweep_killed_then_resumed_loses_and_repeats_no_run(tiny_data, tmp_path):
    """`hrnet_sweep sweep` with two agents started at the same instant; once one run has
    finished, the launcher, both agents and their trainings are SIGKILLed together (a power
    cut, the OOM killer). `sweep --resume` marks the runs that were running crashed, runs
    their grid points again and finishes: every point finished exactly once, the finished
    run kept as it was."""
    env = _sweep_env(tmp_path, WANDB_MODE="disabled")
    path = _sweep_yaml(tmp_path / "grid.yaml", tiny_data, {"seed": {"values": [1, 2, 3]}})
    root = tmp_path / "sweep"
    cmd = [PY, "-m", "hrnet_sweep", "sweep", "--gpus", "cpu", "--agents", "2", "--stagger", "0", "--max-restarts", "0"]
    launcher = subprocess.Popen(
        [*cmd, str(path), "--local", "--sweep-dir", str(root)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    opened: list[LocalSweep] = []

    def one_finished_one_training():
        if not opened:
            if not (root / "sweep.json").is_file():
                return None
            opened.append(LocalSweep(root))  # reads what the agents append to the journal since
        runs = opened[0].runs()
        done = [r for r in runs if r.state == "finished"]
        return runs if done and _training_pids(root) else None

    try:
        _wait_for("a finished run while another trains", one_finished_one_training, 900, poll=0.25, proc=launcher)
    finally:
        tree = _descendants(launcher.pid)  # launcher, agents, trainings (their own sessions and groups)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)  # freeze first: nobody gets to react to a sibling's death
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.communicate(timeout=60)
    assert len(tree) >= 4, tree  # the launcher, two agents, at least one training
    _wait_for("every process of the sweep to be gone", lambda: not any(_alive(p) for p in tree), 60)

    before = {r.run_id: r for r in LocalSweep(root).runs()}
    finished_before = {k: r for k, r in before.items() if r.state == "finished"}
    running_before = {k for k, r in before.items() if r.state == "running"}
    assert finished_before and running_before, {k: r.state for k, r in before.items()}

    resumed = subprocess.run(
        [*cmd, "--resume", str(root)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "marked crashed (agent gone)" in resumed.stdout

    runs = LocalSweep(root).runs()
    assert len({r.run_id for r in runs}) == len(runs)
    assert "running" not in {r.state for r in runs}
    finished = [r for r in runs if r.state == "finished"]
    assert sorted(r.params["seed"] for r in finished) == [1, 2, 3], [(r.run_id, r.state, r.params) for r in runs]
    for run_id, r in finished_before.items():  # kept, not run again
        now = next(x for x in runs if x.run_id == run_id)
        assert (now.state, now.best, now.history) == ("finished", r.best, r.history)
    crashed = {r.run_id: r for r in runs if r.state == "crashed"}
    assert set(crashed) == running_before, (set(crashed), running_before)
    # "its agent (...) is gone", or, killed between taking a trial and naming its run,
    # "its agent died while starting it"
    assert all("is gone" in r.reason or "died while starting it" in r.reason for r in crashed.values()), crashed
    logs = "".join(p.read_text(errors="replace") for p in (root / "agents").glob("*.log"))
    assert "Traceback" not in logs and "locked" not in logs.lower()


def _lifecycle(root: str, barrier, n: int, queue) -> None:
    """One agent's whole run lifecycle against the journal, as fast as it can go."""
    from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

    try:
        sweep = LocalSweep(root)
        barrier.wait()
        done = []
        for _ in range(n):
            s = sweep.suggest(agent=f"p{os.getpid()}")
            if s is None:
                break
            values = [s.params["seed"] / 100 + i / 1000 for i in range(4)]
            for i, v in enumerate(values):
                sweep.report(s.number, [v], i)
            sweep.finish(s.number, RunOutcome("finished", value=max(values), exit_code=0))
            done.append((s.run_id, s.params["seed"], values))
        queue.put(("ok", done))
    except BaseException as err:  # report it: the parent must not hang
        queue.put(("error", f"{type(err).__name__}: {err}"))


@pytest.mark.unit
def test_two_agents_at_the_same_instant_share_the_journal_without_errors(tmp_path):
    import multiprocessing as mp

    path = _sweep_yaml(tmp_path / "grid.yaml", tmp_path, {"seed": {"values": list(range(1, 13))}})
    sweep = LocalSweep.create(path, sweep_dir=tmp_path / "sweep")
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_lifecycle, args=(str(sweep.root), barrier, 12, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [kind for kind, _ in results] == ["ok", "ok"], results
    done = [x for _, got in results for x in got]
    assert sorted(seed for _, seed, _ in done) == list(range(1, 13))  # each grid point once
    runs = {r.run_id: r for r in LocalSweep(sweep.root).runs()}
    assert len(runs) == 12 and {r.state for r in runs.values()} == {"finished"}
    for run_id, _, values in done:  # every reported value landed, in order
        assert runs[run_id].history == values and runs[run_id].best == max(values)
