"""What the commands say and leave behind: `best --export` prints next commands that work
as printed (or name what to add) and its path check leaves no folder; every command's
`--help` says what it does and lists its options; `train --dry-run` shows the data root it
would read; a closed pipe (`| head -1`) ends quietly; `--gpus cpu` says nothing of
nvidia-smi."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _util import REPO
from hrnet_sweep import cli
from hrnet_sweep.constants import DATA_ROOT_ENV
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

SPEC = {
    "method": "random",
    "metric": {"name": "val/hmean", "goal": "maximize"},
    "parameters": {
        "preset": {"value": "hrnet_w18_small_cpu"},
        "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 3e-4, "max": 2e-3},
    },
    "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"],
}


def _sweep(tmp_path: Path, *, finished: bool = True, data_root: Path | None = None) -> LocalSweep:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    s = sweep.suggest(agent="a")
    run_dir = tmp_path / "outputs" / s.run_id
    run_dir.mkdir(parents=True)
    if data_root is not None:  # what training writes: the resolved config, data.root absolute
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(data_root)}}))
    sweep.report(s.number, [0.5, 0.7], 0)
    outcome = RunOutcome("finished", value=0.7, run_dir=str(run_dir)) if finished else RunOutcome("failed")
    sweep.finish(s.number, outcome)
    return sweep


def _printed_args(out: str, what: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.strip().startswith(what))
    command = line.split(": ", 1)[1].split("  (")[0]
    return shlex.split(command)


@pytest.mark.unit
def test_best_export_prints_a_train_command_that_finds_the_data(tmp_path, monkeypatch, capsys):
    data = tmp_path / "my data"
    data.mkdir()
    (data / "train.json").write_text('{"images": {}}')
    sweep = _sweep(tmp_path, data_root=data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./data here
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert cli.main(["best", str(sweep.root), "--export", "p.yaml"]) == 0
    out = capsys.readouterr().out
    args = _printed_args(out, "train it:")
    assert args[:2] == ["hrnet_sweep", "train"] and f"data.root={data}" in args
    assert Path(args[2].removeprefix("preset=")).is_file()
    # as printed, it reads the run's data: the dry run names that root, and it exists
    assert cli.main([*args[1:], "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert f"# data root {data} (from data.root)" in shown and "no such folder" not in shown
    assert f"data.root={data}" in _printed_args(out, "retrain every fold:")


@pytest.mark.unit
def test_best_export_names_what_to_add_when_the_data_root_is_unknown(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path)  # a run folder without config.yaml (an older run)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert cli.main(["best", str(sweep.root), "--export", "p.yaml"]) == 0
    out = capsys.readouterr().out
    assert "data.root=DIR" in out and "the folder of train.json" in out


@pytest.mark.unit
def test_best_export_check_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path, finished=False)  # nothing to export: best exits 2
    monkeypatch.chdir(tmp_path)
    assert cli.main(["best", str(sweep.root), "--export", "export_check/deep/p.yaml"]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert not (tmp_path / "export_check").exists()


@pytest.mark.unit
def test_train_help_lists_its_options_and_dry_run_the_data_root(tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "options:" in text and "--dry-run" in text and "data.root=DIR" in text and "Train one DBNet" in text
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"# data root {tmp_path} (from {DATA_ROOT_ENV})" in text and f"root: {tmp_path}" in text
    assert "root: null" not in text


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_help_says_what_the_command_does_and_lists_its_options(name, capsys):
    try:
        code = cli.main([name, "--help"])
    except SystemExit as done:  # argparse's --help
        code = done.code
    assert code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith("usage: hrnet_sweep") and name in usage
    description = rest.split("\n\n")[0]
    assert len(description.split()) >= 5 and not description.startswith("options"), description
    assert "options:" in text and "-h, --help" in text


@pytest.mark.unit
@pytest.mark.parametrize("argv", [["presets"], ["status", "SWEEP", "--json"]], ids=["presets", "status"])
def test_a_closed_pipe_ends_quietly(argv, tmp_path):
    if "SWEEP" in argv:
        sweep = _sweep(tmp_path)
        argv = [str(sweep.root) if a == "SWEEP" else a for a in argv]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hrnet_sweep", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == cli.EXIT_SIGPIPE and err == "", err


@pytest.mark.unit
def test_gpus_cpu_says_nothing_of_nvidia_smi(tmp_path, monkeypatch):
    from hrnet_sweep.sweep import launcher

    monkeypatch.setattr(launcher._Supervisor, "run", lambda self: launcher.LaunchResult(self.slots, None))
    monkeypatch.setattr(launcher, "detect_gpus", lambda: [])
    for gpus, said in ((launcher.parse_gpus("cpu"), False), (None, True)):
        lines: list[str] = []
        launcher.run_agents(str(tmp_path), gpus=gpus, mode="local", log_dir=tmp_path, out=lines.append)
        assert any("nvidia-smi" in line for line in lines) is said, lines
