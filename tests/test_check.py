"""`hrnet_sweep check` / `explain`: shipped sweeps pass, each lint fires on a small file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _util import sweep_doc
from hrnet_sweep import cli
from hrnet_sweep.constants import METRIC
from hrnet_sweep.sweep.check import check_sweep, explain_main, main
from hrnet_sweep.sweep.sweepfile import load_sweep

pytestmark = pytest.mark.unit

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SHIPPED = sorted(SWEEPS.glob("*.yaml"))


def _write(tmp_path: Path, params: dict | None = None, **over) -> Path:
    """`sweep_doc(params, **over)` written to tmp_path/sweep.yaml."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_doc(params, **over), sort_keys=False))
    return path


def _levels(findings, key=None):
    return [(f.level, f.key) for f in findings if key is None or f.key == key]


# ----------------------------------------------------------------------------- shipped files


def test_shipped_sweeps_exist():
    names = {p.stem for p in SHIPPED}
    assert {"hrnet_w44_1280", "scheduler_study", "backbone_study", "resolution_study", "cpu_demo"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_sweep_has_no_errors(path):
    errors = [f for f in check_sweep(path) if f.level == "error"]
    assert errors == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_metric_is_the_pipeline_metric(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["metric"]["name"] == METRIC
    assert doc["metric"]["goal"] == "maximize"
    assert "${interpreter}" in doc["command"] and "${args_no_hyphens}" in doc["command"]


def test_user_plan_lr_range_excludes_preset_lr_and_is_kept():
    path = SWEEPS / "hrnet_w44_1280.yaml"
    lr = load_sweep(path).parameters["models.optimizer.lr"]
    assert lr.bounds() == (1e-5, 2e-4)  # the user's plan, unchanged
    warnings = [f for f in check_sweep(path) if f.key == "models.optimizer.lr"]
    assert len(warnings) == 1 and warnings[0].level == "warning"
    assert "0.00045" in warnings[0].message and "excludes" in warnings[0].message


def test_cpu_demo_bands_fire_within_its_epochs():
    s = load_sweep(SWEEPS / "cpu_demo.yaml")
    assert s.fixed()["trainer.max_epochs"] == 10 and s.run_cap
    assert s.early_terminate.bands(upto=9) == [2, 6]  # judged at epochs 2 and 6, before the run ends


# ----------------------------------------------------------------------------- each lint


def test_clean_file_has_no_findings(tmp_path):
    assert check_sweep(_write(tmp_path)) == []


@pytest.mark.parametrize(
    "params, over, level, key, needle",
    [
        # schema / config
        ({}, {"methd": "grid"}, "error", "methd", "unknown sweep key"),
        ({"models.optimizer.lrr": {"value": 1e-3}}, {}, "error", "models.optimizer.lrr", "unknown key"),
        ({"data.batch_size": {"value": 0}}, {}, "error", "data.batch_size", "greater than or equal to 1"),
        (
            {"models.optimizer.betas.1": {"values": [0.99, 0.999]}},
            {},
            "error",
            "models.optimizer.betas.1",
            "list position",
        ),
        ({"run_name": {"values": [None, "a"]}}, {}, "error", "run_name", "training reads 'None'"),
        # preset value outside the searched space
        (
            {"models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 2e-4}},
            {},
            "warning",
            "models.optimizer.lr",
            "excludes the preset's current value 0.001",
        ),
        (
            {"models.scheduler.T_max": {"values": [4, 6]}},
            {},
            "warning",
            "models.scheduler.T_max",
            "exclude the preset's",
        ),
        # schedule
        (
            {"models.scheduler.eta_min": {"distribution": "log_uniform_values", "min": 1e-5, "max": 5e-4}},
            {},
            "warning",
            "models.scheduler.eta_min",
            "eta_min can exceed lr",
        ),
        (
            {"models.scheduler.T_max": {"values": [8, 12]}},
            {},
            "warning",
            "models.scheduler.T_max",
            "T_max can be 12 > max_epochs 8",
        ),
        # hyperband
        (
            {},
            {"early_terminate": {"type": "hyperband", "min_iter": 8, "eta": 3, "strict": True}},
            "warning",
            "early_terminate",
            "can never stop a run early",
        ),
        (
            {"trainer.max_epochs": {"value": 30}, "models.scheduler.T_max": {"value": 30}},
            {"early_terminate": {"type": "hyperband", "min_iter": 9, "eta": 3, "strict": True}},
            "warning",
            "early_terminate",
            "before Hyperband's first band",
        ),
        (
            {},
            {"early_terminate": {"type": "hyperband", "max_iter": 81, "s": 3, "eta": 3, "strict": True}},
            "warning",
            "early_terminate.max_iter",
            "[9, 27] lie past the last validation",
        ),
        ({}, {"early_terminate": {"type": "hyperband", "min_iter": 2}}, "warning", "early_terminate.strict", "not set"),
        # metric
        ({}, {"metric": {"name": "val/loss", "goal": "minimize"}}, "error", "metric.name", "never logs 'val/loss'"),
        ({}, {"metric": {"name": METRIC, "goal": "minimize"}}, "error", "metric.goal", "set goal: maximize"),
        ({}, {"metric": {"name": METRIC}}, "error", "metric.goal", "W&B then minimizes"),
        ({}, {"metric": {"name": "val/precision", "goal": "maximize"}}, "warning", "metric.name", "hrnet_sweep best"),
        # command
        (
            {},
            {"command": ["python", "-m", "hrnet_sweep.train", "${args_no_hyphens}"]},
            "warning",
            "command",
            "${interpreter}",
        ),
        (
            {},
            {"command": ["/usr/bin/python3", "-m", "hrnet_sweep.train", "${args}"]},
            "warning",
            "command",
            "${interpreter}",
        ),
        (
            {},
            {"command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train"]},
            "warning",
            "command",
            "no parameters",
        ),
        (
            {},
            {"command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "--cfg=${args_json_file}"]},
            "warning",
            "command",
            "whole argument",
        ),
        (
            {},
            {"command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_json}"]},
            "warning",
            "command",
            "key=value",
        ),
        ({}, {"method": "grid"}, "error", "models.optimizer.lr", "grid search cannot enumerate"),
    ],
)
def test_lint(tmp_path, params, over, level, key, needle):
    findings = check_sweep(_write(tmp_path, params, **over))
    hits = [f for f in findings if f.key == key and needle in f.message]
    assert hits, f"no {level} on {key} containing {needle!r} in {findings}"
    assert hits[0].level == level


def test_yaml_error_is_a_finding(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("method: bayes\nparameters: [\n")
    findings = check_sweep(path)
    assert len(findings) == 1 and findings[0].level == "error" and "broken.yaml:" in findings[0].message


# ----------------------------------------------------------------------------- CLI


def test_check_exit_codes(tmp_path, capsys):
    assert main([str(p) for p in SHIPPED]) == 0
    out = capsys.readouterr().out
    assert "0.00045" in out and "warning" in out
    assert main([str(SWEEPS / "hrnet_w44_1280.yaml"), "--strict"]) == 2
    bad = _write(tmp_path, metric={"name": "val/loss", "goal": "minimize"})
    assert main([str(bad)]) == 2
    assert "error" in capsys.readouterr().out


def test_check_and_explain_are_registered(capsys):
    assert cli.main(["check", str(SWEEPS / "cpu_demo.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main(["explain", str(SWEEPS / "hrnet_w44_1280.yaml")]) == 0
    out = capsys.readouterr().out
    assert "min_iter 8, eta 3, strict false" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:5] for r in rows] == [["1", "8", "8", "27", "10"]]  # one band: 24 > 20 epochs


def test_explain_without_early_terminate(capsys):
    assert explain_main([str(SWEEPS / "backbone_study.yaml")]) == 0
    assert "no early_terminate" in capsys.readouterr().out


# ----------------------------------------------------------------------------- numbers; the trainer in the command

LR = "models.optimizer.lr"
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    "params, over, key, needle",
    [
        (
            {LR: {"distribution": "log_uniform_values", "min": 1e-5, "max": INF}},
            {},
            LR,
            "max must be a finite number: inf",
        ),
        (
            {LR: {"distribution": "uniform", "min": True, "max": 0.1}},
            {},
            LR,
            "min must be a finite number: true is a boolean",
        ),
        (
            {LR: {"distribution": "q_uniform", "min": 0.1, "max": 0.2, "q": NAN}},
            {},
            LR,
            "q must be a finite number: nan",
        ),
        ({LR: {"distribution": "normal", "mu": INF, "sigma": 1}}, {}, LR, "mu must be a finite number"),
        ({LR: {"distribution": "log_uniform", "min": -10, "max": 1000}}, {}, LR, "exponents"),
        ({LR: {"values": ["1e-05", 1.0e-3]}}, {}, LR, "takes 1e-05 without a dot as text: write 1.0e-05"),
        ({LR: {"values": [NAN, 1.0e-3]}}, {}, LR, "nan is not a finite number"),
        ({LR: {"value": True}}, {}, LR, "true is a boolean"),
        ({"trainer.max_epochs": {"values": [4, 6.0]}}, {}, "trainer.max_epochs", "6.0 is not a whole number"),
        ({"seed": {"values": [1, 2], "probabilities": [NAN, 0.5]}}, {}, "seed", "probabilities must be 2 numbers"),
        (
            {},
            {"early_terminate": {"type": "hyperband", "min_iter": 2, "eta": INF, "strict": True}},
            "early_terminate.eta",
            "got inf",
        ),
        (
            {},
            {"early_terminate": {"type": "hyperband", "min_iter": True, "strict": True}},
            "early_terminate.min_iter",
            "got True",
        ),
        ({}, {"run_cap": True}, "run_cap", "got True"),
        ({}, {"metric": {"name": METRIC, "goal": "maximize", "target": INF}}, "metric.target", "got inf"),
    ],
)
def test_sweep_numbers_are_finite_and_of_their_type(tmp_path, params, over, key, needle):
    findings = check_sweep(_write(tmp_path, params, **over))
    hits = [f for f in findings if f.key == key and needle in f.message]
    assert hits and hits[0].level == "error", findings
    assert "sweep.yaml:" in hits[0].message  # the file and the line


def test_yaml11_exponent_value_has_one_consistent_message(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(sweep_doc(), sort_keys=False).replace(
            "distribution: log_uniform_values\n    min: 0.0003\n    max: 0.003", "values: [1e-05, 1.0e-3]"
        )
    )
    (finding,) = [f for f in check_sweep(path) if f.key == LR]
    assert "'1e-05' is text, not a number" in finding.message and "write 1.0e-05" in finding.message
    assert "training reads" not in finding.message


@pytest.mark.parametrize(
    "command, needle",
    [
        (
            ["${env}", "${interpreter}", "-m", "hrnet_sweep.trian", "${args_no_hyphens}"],
            "runs 'hrnet_sweep.trian', not the trainer (did you mean hrnet_sweep.train?)",
        ),
        (["${env}", "${interpreter}", "-c", "print(1)", "${args_no_hyphens}"], "does not run the trainer"),
        (["${env}", "${interpreter}", "tests/fake_train.py", "${args_no_hyphens}"], "runs 'tests/fake_train.py'"),
    ],
)
def test_a_command_that_does_not_run_the_trainer_warns(tmp_path, command, needle):
    findings = check_sweep(_write(tmp_path, command=command))
    hits = [f for f in findings if f.key == "command" and needle in f.message]
    assert hits and hits[0].level == "warning", findings


@pytest.mark.parametrize(
    "command, program",
    [
        (["${env}", "${interpreter}", "-m", "hrnet_sweep", "train", "${args_no_hyphens}"], None),
        (["${env}", "/venv/bin/hrnet_sweep", "train", "${args_no_hyphens}"], None),
        (["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"], "hrnet_sweep/train.py"),
        (["${env}", "${interpreter}", "-m", "hrnet_sweep.pipeline.train", "${args_no_hyphens}"], None),
    ],
)
def test_every_way_to_run_the_trainer_is_recognised(tmp_path, command, program):
    over = {"command": command, **({"program": program} if program else {})}
    assert not [f for f in check_sweep(_write(tmp_path, **over)) if "trainer" in f.message]


@pytest.mark.parametrize(
    "params, over",
    [
        ({LR: {"distribution": "log_uniform_values", "min": 1e-5, "max": INF}}, {}),
        ({LR: {"values": ["1e-05", 1.0e-3]}}, {}),
        ({}, {"metric": {"name": METRIC, "goal": "minimize"}}),
        ({}, {"metric": {"name": "val/loss", "goal": "maximize"}}),
        ({"run_name": {"values": ["1e-05", "b"]}}, {}),
    ],
    ids=["inf max", "yaml11 text", "goal minimize", "metric never logged", "text that reads as a number"],
)
def test_sweep_and_the_engine_refuse_what_check_refuses(tmp_path, params, over, capsys, monkeypatch):
    from hrnet_sweep.errors import ConfigError
    from hrnet_sweep.sweep.engine import LocalSweep

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, params, **over)
    assert main([str(path)]) == 2
    assert cli.main(["sweep", str(path), "--local", "--sweeps-root", "sweeps", "--create-only"]) == 2
    err = capsys.readouterr().err
    assert "hrnet_sweep sweep: error:" in err and str(path) in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    assert not (tmp_path / "sweeps").exists()
