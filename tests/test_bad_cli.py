"""Bad input, round 2, through the command line: every number flag of every command is a
finite number of its type, output paths are checked before any work, a damaged local
sweep folder is a one-line error, and progress is a few plain lines in a log file.
Each refusal exits 2 and names the flag (or file), the key and the value."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_engine import REPO

from hrnet_sweep import cli
from hrnet_sweep.numeric import flag, number_problem, number_text, with_dot

pytestmark = pytest.mark.unit


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `hrnet_sweep ARGV` in this process (argparse exits via SystemExit)."""
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


# ----------------------------------------------------------------------------- the number rule


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("-2", -2),
        ("+7", 7),
        ("0.5", 0.5),
        (".5", 0.5),
        ("3e-4", 3e-4),
        ("1.0e-05", 1e-5),
        (" 4 ", 4),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        (".inf", None),
        ("1_000", None),
        ("0x10", None),
        ("1:30", None),
        ("١٠", None),
        ("½", None),
        ("1e999", None),
        ("true", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_number_text_reads_plain_ascii_decimals_only(text, value):
    assert number_text(text) == value and type(number_text(text)) is type(value)


@pytest.mark.parametrize(
    "value, kind, words",
    [
        (True, float, "boolean"),
        (False, int, "boolean"),
        (float("nan"), float, "not a finite number"),
        (float("inf"), float, "not a finite number"),
        (3.0, int, "not a whole number"),
        ("3e-4", float, "is text"),
        ("abc", float, "not a plain decimal"),
        ([1], float, "not a number"),
        (np.float64("nan"), float, "finite"),
    ],
)
def test_number_problem_names_the_value(value, kind, words):
    assert words in number_problem(value, kind)


@pytest.mark.parametrize(
    "value, kind", [(3, int), (3, float), (0.5, float), (np.int64(4), int), (np.float32(2), float)]
)
def test_number_problem_accepts_finite_numbers_of_the_type(value, kind):
    assert number_problem(value, kind) is None


def test_with_dot_spells_a_yaml11_float():
    assert with_dot("1e-05") == "1.0e-05" and with_dot("-3E4") == "-3.0E4" and with_dot("1.5e-3") == "1.5e-3"


def test_flag_checks_type_and_range():
    import argparse

    assert flag(int, ge=1)("4") == 4 and flag(float, gt=0)("2") == 2.0
    for kind, text in [(int, "2.5"), (int, "nan"), (float, "inf"), (float, "1_0")]:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            flag(kind)(text)
    with pytest.raises(argparse.ArgumentTypeError, match="below 0"):
        flag(float, ge=0)("-1")


# ----------------------------------------------------------------------------- every number flag of every command

NUMBER_FLAGS = [  # (command and its positionals, flag, int or float)
    (["best", "sw"], "--top", int),
    (["best", "sw"], "--timeout", float),
    (["best", "sw"], "--retries", int),
    (["sweep", "s.yaml"], "--per-gpu", int),
    (["sweep", "s.yaml"], "--agents", int),
    (["sweep", "s.yaml"], "--count", int),
    (["sweep", "s.yaml"], "--run-cap", int),
    (["sweep", "s.yaml"], "--stagger", float),
    (["sweep", "s.yaml"], "--max-restarts", int),
    (["agent", "sw"], "--count", int),
    (["agent", "sw"], "--poll", float),
    (["explain", "s.yaml"], "--runs", int),
    (["clean", "sw"], "--keep-top", int),
    (["predict", "a.ckpt", "--images", "i", "--out", "o.csv"], "--weights", float),
    (["kfold", "p"], "--cpu-jobs", int),
    (["tune-postprocess", "r"], "--workers", int),
    (["tune-postprocess", "r"], "--top", int),
    (["synth", "--out", "o"], "--num", int),
    (["synth", "--out", "o"], "--seed", int),
    (["synth", "--out", "o"], "--text-scale", float),
    (["eval", "g.json", "p.json"], "--cap", int),
    (["analyze", "p.json"], "--worst", int),
    (["compare", "a.json", "b.json"], "--top", int),
    (["validate-submission", "s.csv"], "--max-messages", int),
    (["demo"], "--seed", int),
]
NOT_NUMBERS = ["nan", "inf", "1_000", "١٠", "true", "0x10", "1e999"]
FLAG_CASES = [
    pytest.param(argv, name, value, id=f"{argv[0]} {name} {value}")
    for argv, name, kind in NUMBER_FLAGS
    for value in NOT_NUMBERS + (["2.5"] if kind is int else [])
]


@pytest.mark.parametrize("argv, name, value", FLAG_CASES)
def test_number_flags_refuse_what_float_and_int_accept(argv, name, value, capsys):
    code, err = run_cli([*argv, name, value], capsys)
    assert code == 2
    assert f"hrnet_sweep {argv[0]}: error: argument {name}: " in err and repr(value) in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["best", "sw", "--top", "0"],
        ["best", "sw", "--timeout", "0"],
        ["best", "sw", "--retries", "-1"],
        ["agent", "sw", "--poll", "0"],
        ["sweep", "s.yaml", "--stagger", "-1"],
        ["sweep", "s.yaml", "--run-cap", "0"],
        ["predict", "a.ckpt", "--images", "i", "--out", "o.csv", "--weights", "-0.5"],
        ["clean", "sw", "--keep-top", "-1"],
    ],
    ids=lambda argv: f"{argv[0]} {argv[-2]} {argv[-1]}",
)
def test_number_flags_keep_their_ranges(argv, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and f"argument {argv[-2]}: {argv[-1]!r}" in err, err


# ----------------------------------------------------------------------------- best --export, before the sweep


@pytest.fixture
def sweep_never_read(monkeypatch):
    from hrnet_sweep.pipeline import best

    def fail(*a, **kw):
        raise AssertionError("the sweep was read before --export was checked")

    monkeypatch.setattr(best, "load_runs", fail)


@pytest.mark.parametrize(
    "case", ["read-only /proc", "read-only /sys", "under a regular file", "a directory with --force", "empty"]
)
def test_best_export_path_fails_before_the_sweep_is_read(case, tmp_path, sweep_never_read, capsys):
    (tmp_path / "file.txt").write_text("x")
    export, needle = {
        "read-only /proc": ("/proc/self/best.yaml", "cannot write there"),
        "read-only /sys": ("/sys/best.yaml", "cannot write there"),
        "under a regular file": (str(tmp_path / "file.txt" / "best.yaml"), "is a file, not a folder"),
        "a directory with --force": (str(tmp_path), "is a directory"),
        "empty": ("", "empty"),
    }[case]
    code, err = run_cli(["best", "acme/receipts/abc123", "--export", export, "--force"], capsys)
    assert code == 2 and f"hrnet_sweep best: error: --export {export}".rstrip() in err and needle in err, err


# ----------------------------------------------------------------------------- best on a damaged local sweep folder


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

    sweep = LocalSweep.create(REPO / "sweeps" / "cpu_demo.yaml", sweep_dir=tmp_path_factory.mktemp("s") / "sw")
    for history in ([0.2, 0.6], [0.1, 0.4]):
        sug = sweep.suggest(agent="test")
        sweep.report(sug.number, history, 0)
        sweep.finish(sug.number, RunOutcome("finished", value=max(history)))
    return sweep.root


def _damage_journal_missing(root: Path) -> str:
    (root / "optuna.journal").unlink()
    return "optuna.journal is missing"


def _damage_journal_garbage(root: Path) -> str:
    with open(root / "optuna.journal", "ab") as fh:
        fh.write(b'{"op_code": 99}\n')
    return "optuna.journal is damaged"


def _damage_sweep_json(text: str, needle: str):
    def damage(root: Path) -> str:
        (root / "sweep.json").write_text(text)
        return needle

    return damage


DAMAGE = {
    "journal missing": _damage_journal_missing,
    "journal not replayable": _damage_journal_garbage,
    "journal empty": lambda root: ((root / "optuna.journal").write_text(""), "holds no study")[1],
    "sweep.json not JSON": _damage_sweep_json("{oops", "malformed JSON"),
    "sweep.json a list": _damage_sweep_json("[1, 2]", "must be a JSON object"),
    "sweep.json without sweep_id": _damage_sweep_json("{}", "no sweep_id"),
    "sweep.json run_cap nan": _damage_sweep_json('{"sweep_id": "sw", "run_cap": NaN}', "run_cap=nan"),
    "sweep.yaml missing": lambda root: ((root / "sweep.yaml").unlink(), "sweep file not found")[1],
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_best_on_a_damaged_sweep_folder_names_folder_and_file(case, finished_sweep, tmp_path, capsys):
    root = tmp_path / "sw"
    shutil.copytree(finished_sweep, root)
    needle = DAMAGE[case](root)
    code, err = run_cli(["best", str(root)], capsys)
    assert code == 2 and needle in err and str(root) in err, err
    assert case != "journal missing" or not (root / "optuna.journal").exists(), "an empty journal was made"


def test_best_survives_damaged_run_folders(finished_sweep, tmp_path, capsys):
    root = tmp_path / "sw"
    shutil.copytree(finished_sweep, root)
    for run in (root / "runs").iterdir():
        (run / "metrics.jsonl").mkdir()
        (run / "status.json").write_text("{oops")
    assert cli.main(["best", str(root)]) == 0
    assert "best: run" in capsys.readouterr().out


# ----------------------------------------------------------------------------- predict: outputs before checkpoints


@pytest.fixture
def no_checkpoint_loaded(monkeypatch):
    from hrnet_sweep.dbnet import inference

    calls = []

    def load(path, *a, **kw):
        calls.append(path)
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr(inference, "load_checkpoint", load)
    return calls


@pytest.mark.parametrize(
    "outputs, needle",
    [
        pytest.param(
            ["--out", "/proc/self/sub.csv"], "--out /proc/self/sub.csv: cannot write there", id="out read-only /proc"
        ),
        pytest.param(["--out", "/sys/sub.csv"], "--out /sys/sub.csv: cannot write there", id="out read-only /sys"),
        pytest.param(["--out", ""], "--out: the path is empty", id="out empty"),
        pytest.param(["--out", "{tmp}/file.txt/sub.csv"], "is a file, not a folder", id="out under a file"),
        pytest.param(["--out", "{tmp}"], "is a directory", id="out a directory"),
        pytest.param(
            ["--out", "{tmp}/sub.csv", "--json", "/proc/self/p.json"],
            "--json /proc/self/p.json: cannot write there",
            id="json read-only",
        ),
        pytest.param(["--out", "{tmp}/sub.csv", "--json", "{tmp}/sub.csv"], "name the same file", id="json is out"),
        pytest.param(["--out", "{tmp}/sub.csv", "--weights", "1", "2"], "need 1 weight(s)", id="weights count"),
        pytest.param(["--out", "{tmp}/sub.csv", "--weights", "nan"], "argument --weights: 'nan'", id="weights nan"),
    ],
)
def test_predict_checks_outputs_and_weights_before_loading_checkpoints(
    outputs, needle, tmp_path, no_checkpoint_loaded, capsys
):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "images").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in outputs]
    code, err = run_cli(["predict", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "images"), *args], capsys)
    assert code == 2 and needle.replace("{tmp}", str(tmp_path)) in err, err
    assert no_checkpoint_loaded == []


def test_predict_with_good_outputs_goes_on_to_load_the_checkpoint(tmp_path, no_checkpoint_loaded, capsys):
    (tmp_path / "images").mkdir()
    with pytest.raises(AssertionError, match="a checkpoint was loaded"):
        cli.main(
            [
                "predict",
                str(tmp_path / "m.ckpt"),
                "--images",
                str(tmp_path / "images"),
                "--out",
                str(tmp_path / "out" / "sub.csv"),
            ]
        )
    assert no_checkpoint_loaded == [str(tmp_path / "m.ckpt")]


# ----------------------------------------------------------------------------- progress in log files


def test_progress_in_a_log_file_is_a_few_plain_lines():
    from hrnet_sweep.progress import track

    log = io.StringIO()  # not a terminal
    assert sum(1 for _ in track(range(1000), desc="predict", unit="img", stream=log)) == 1000
    text = log.getvalue()
    assert "\r" not in text and 10 <= len(text.splitlines()) <= 11
    assert text.splitlines()[-1].startswith("predict: 100% (1000/1000 img")
    quiet = io.StringIO()
    assert list(track(range(5), stream=quiet, enabled=False)) == list(range(5)) and quiet.getvalue() == ""


def test_progress_on_a_terminal_is_tqdms_bar():
    from hrnet_sweep.progress import lightning_progress, track

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    list(track(range(50), desc="predict", stream=term))
    assert "\r" in term.getvalue()
    assert lightning_progress(True, stream=Terminal()) == (True, [])
    assert lightning_progress(False, stream=io.StringIO()) == (False, [])


def test_training_progress_in_a_log_file_is_the_sparse_callback():
    from types import SimpleNamespace

    import torch

    from hrnet_sweep.progress import lightning_progress

    log = io.StringIO()
    bar, callbacks = lightning_progress(True, stream=log)
    assert bar is False and len(callbacks) == 1
    cb = callbacks[0]
    trainer = SimpleNamespace(
        is_global_zero=True,
        num_training_batches=500,
        num_val_batches=[40],
        current_epoch=3,
        sanity_checking=False,
        callback_metrics={"val/hmean": torch.tensor(0.8125), "train/loss": torch.tensor(1.5)},
    )
    cb.on_train_epoch_start(trainer, None)
    for _ in range(500):
        cb.on_train_batch_end(trainer, None, None, None, 0)
        if _ == 250:  # validation runs inside the training epoch
            cb.on_validation_epoch_start(trainer, None)
            for _v in range(40):
                cb.on_validation_batch_end(trainer, None, None, None, 0)
            cb.on_validation_end(trainer, None)
    cb.on_train_epoch_end(trainer, None)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) <= 24
    assert any(ln.startswith("epoch 3 validation: ") and "val/hmean 0.8125" in ln for ln in lines)
    assert lines[-1].startswith("epoch 3: ") and "train/loss 1.5" in lines[-1]


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv",
    [
        lambda p: ["check", str(p)],
        lambda p: ["train", f"preset={p}", "--dry-run"],
    ],
)
def test_a_sweep_or_preset_file_that_is_a_fifo_is_refused_not_waited_for(argv, tmp_path, capsys):
    import os
    import threading

    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", cli.main(argv(fifo))), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # release the reader so the suite goes on, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("the reader blocked on a FIFO")
    out = capsys.readouterr()
    assert result["rc"] == 2 and "named pipe" in out.out + out.err


@pytest.mark.unit
@pytest.mark.parametrize("value", ["nan", "inf", "-0.3", "1_0", "١", "true"])
def test_tune_grid_values_are_finite_positive_numbers(value):
    from hrnet_sweep.errors import UserError
    from hrnet_sweep.pipeline.tune import parse_grid

    with pytest.raises(UserError, match=f"thresh=0.2,{value}"):
        parse_grid([f"thresh=0.2,{value}"])
    assert parse_grid(["thresh=0.2,.3"]).thresh == (0.2, 0.3)
