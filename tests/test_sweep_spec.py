"""Sweep files: W&B schema, config keys and values, command macros and the param file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from _util import TRAIN_CMD, sweep_doc
from hrnet_sweep.errors import ConfigError
from hrnet_sweep.sweep.command import command_args, expand_command, format_value, read_param_file, write_param_file
from hrnet_sweep.sweep.spec import HyperbandSpec, ParamSpec
from hrnet_sweep.sweep.sweepfile import load_sweep, parse_sweep

pytestmark = pytest.mark.unit

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _params(**extra) -> dict:
    return {"preset": {"value": "hrnet_w18_small_cpu"}, **extra}


# ----------------------------------------------------------------------------- the shipped plan


def test_user_plan_parses():
    s = load_sweep(SWEEPS / "hrnet_w44_1280.yaml")
    assert (s.method, s.metric_name, s.metric_goal) == ("bayes", "val/hmean", "maximize")
    lr = s.parameters["models.optimizer.lr"]
    assert lr.kind == "distribution" and lr.distribution == "log_uniform_values" and lr.log
    assert lr.bounds() == (1e-5, 2e-4)  # the user's range, kept as planned
    assert s.parameters["models.optimizer.weight_decay"].bounds() == (6.1e-6, 1.23e-4)
    assert s.parameters["models.scheduler.eta_min"].bounds() == (2.2e-6, 4.5e-5)
    assert s.parameters["models.scheduler.T_max"].values == (15, 18, 20, 25)
    assert s.fixed() == {
        "preset": "hrnet_w44_1280",
        "trainer.max_epochs": 20,
        "data.fold": 0,
        "callbacks.early_stopping.patience": 7,
    }
    assert s.presets == ["hrnet_w44_1280"]
    # Hyperband as benchmarks/sweep_replay.py chose it (one band, at 8, on the best so far)
    assert s.early_terminate == HyperbandSpec(min_iter=8, max_iter=None, s=None, eta=3.0, strict=False)
    assert s.command == TRAIN_CMD


# ----------------------------------------------------------------------------- schema errors


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"methd": "bayes"}, "unknown sweep key 'methd'"),
        ({"controller": {"type": "local"}}, "'controller' is a W&B key"),
        ({"method": "hyperopt"}, "method 'hyperopt'"),
        ({"metric": {"name": "val/hmean", "goal": "maximize", "mode": "max"}}, "unknown metric key 'mode'"),
        ({"metric": {"name": "val/hmean", "goal": "up"}}, "metric.goal 'up'"),
        ({"metric": None}, "bayes needs a metric"),
        ({"parameters": {}}, "non-empty mapping"),
        ({"parameters": _params(**{"models.optimizer.lrr": {"value": 1e-3}})}, "did you mean 'models.optimizer.lr'"),
        ({"parameters": _params(**{"models.optimizer.betas.0": {"values": [0.9, 0.95]}})}, "list position"),
        ({"parameters": _params(**{"models.optimizer.betas[0]": {"values": [0.9, 0.95]}})}, "list position"),
        ({"parameters": _params(models={"parameters": {"optimizer": {"value": 1}}})}, "nested 'parameters'"),
        (
            {"parameters": _params(**{"models.optimizer.lr": {"distribution": "loguniform", "min": 1, "max": 2}})},
            "unknown distribution 'loguniform'",
        ),
        (
            {"parameters": _params(**{"data.batch_size": {"distribution": "int_uniform", "min": 1.0, "max": 4.0}})},
            "int_uniform needs integer min and max",
        ),
        ({"parameters": _params(**{"models.optimizer.lr": {"min": 1e-3, "max": 1e-4}})}, "is not less than max"),
        (
            {
                "parameters": _params(
                    **{"models.optimizer.lr": {"distribution": "log_uniform_values", "min": 0.0, "max": 1e-3}}
                )
            },
            "needs min > 0",
        ),
        (
            {
                "parameters": _params(
                    **{"models.optimizer.lr": {"distribution": "log_uniform_values", "min": "1e-5", "max": 1e-3}}
                )
            },
            "write 1.0e-5",
        ),
        (
            {
                "parameters": _params(
                    **{"models.optimizer.lr": {"distribution": "uniform", "min": 1e-4, "max": 1e-3, "q": 1}}
                )
            },
            "not allowed with distribution uniform",
        ),
        (
            {
                "parameters": _params(
                    **{"models.scheduler.name": {"values": ["cosine", "plateau"], "probabilities": [0.5, 0.6]}}
                )
            },
            "sum to",
        ),
        ({"parameters": _params(**{"data.batch_size": {"value": 0}})}, "data.batch_size"),
        ({"parameters": _params(**{"models.optimizer.lr": {"values": [1e-3, -1.0]}})}, "value -1.0"),
        (
            {"parameters": _params(**{"models.scheduler.T_max": {"distribution": "uniform", "min": 5.0, "max": 9.0}})},
            "samples non-integers",
        ),
        ({"parameters": {"preset": {"values": ["hrnet_w18_small_cpu", "no_such_preset"]}}}, "no_such_preset"),
        ({"parameters": _params(**{"data.fold": {"values": [0, 7]}})}, "num_folds"),
        ({"early_terminate": {"type": "envelope", "min_iter": 2}}, "supports only hyperband"),
        ({"early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 1}}, "eta must be a number > 1"),
        ({"early_terminate": {"type": "hyperband", "max_iter": 20}}, "needs s"),
        ({"early_terminate": {"type": "hyperband", "max_iter": 2, "s": 2, "eta": 3}}, "gives no band"),
        ({"early_terminate": {"type": "hyperband", "min_iter": 2, "patience": 3}}, "unknown early_terminate key"),
        ({"command": ["${env}", "${python}", "-m", "hrnet_sweep.train", "${args}"]}, "unknown command macro ${python}"),
        ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]}, "no program"),
        ({"command": None}, "no program"),  # W&B's default command needs a program
        ({"run_cap": 0}, "run_cap"),
    ],
)
def test_schema_errors(over, needle):
    with pytest.raises(ConfigError) as exc:
        parse_sweep(sweep_doc(**over), "test.yaml")
    assert needle in str(exc.value)
    assert str(exc.value).startswith("test.yaml")


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "s.yaml"
    text = yaml.safe_dump(sweep_doc(), sort_keys=False) + "bogus: 1\n"
    path.write_text(text)
    line = text.splitlines().index("bogus: 1") + 1
    with pytest.raises(ConfigError, match=rf"s\.yaml:{line}: unknown sweep key 'bogus'"):
        load_sweep(path)


@pytest.mark.parametrize(
    "text, line",
    [
        ("method: bayes\nparameters: {a: [1, 2}\n", 2),
        ("method: bayes\nparameters:\n  x: !!python/object:os.system {}\n", 3),
    ],
)
def test_yaml_refused_by_safe_load(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml:{line}: not valid YAML"):
        load_sweep(path)


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("method: bayes\nparameters:\n  data.fold: {value: 0}\n  data.fold: {value: 1}\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: duplicate key 'data.fold'"):
        load_sweep(path)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- method: bayes\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_sweep(path)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "body, dist, kind",
    [
        ({"min": 1, "max": 4}, "int_uniform", "distribution"),
        ({"min": 1e-4, "max": 1e-3}, "uniform", "distribution"),
        ({"values": [1, 2]}, "categorical", "values"),
        ({"values": [1, 2], "probabilities": [0.3, 0.7]}, "categorical_w_probabilities", "values"),
        ({"value": 2}, "constant", "value"),
    ],
)
def test_distribution_inferred_as_wandb_does(body, dist, kind):
    s = parse_sweep(
        sweep_doc(
            parameters=_params(
                **{
                    "data.batch_size"
                    if kind != "distribution" or dist == "int_uniform"
                    else "models.optimizer.lr": body
                }
            )
        ),
        "t.yaml",
    )
    p = [p for n, p in s.parameters.items() if n != "preset"][0]
    assert (p.distribution, p.kind) == (dist, kind)


def test_bounds_in_value_space():
    assert ParamSpec(
        "x", "distribution", distribution="log_uniform", min=math.log(1e-5), max=math.log(1e-3)
    ).bounds() == pytest.approx((1e-5, 1e-3))
    assert ParamSpec(
        "x", "distribution", distribution="inv_log_uniform", min=0.0, max=math.log(10)
    ).bounds() == pytest.approx((0.1, 1.0))
    q = ParamSpec("x", "distribution", distribution="q_uniform", min=3.2, max=9.7, q=1)
    assert q.integer and q.bounds() == (3, 10) and q.candidates() == [3, 10]
    assert ParamSpec("x", "distribution", distribution="normal", mu=0.0, sigma=1.0).bounds() == (-math.inf, math.inf)


def test_log_uniform_exponent_form_validated_in_value_space():
    body = {"distribution": "log_uniform", "min": math.log(3e-4), "max": math.log(3e-3)}
    s = parse_sweep(sweep_doc(parameters=_params(**{"models.optimizer.lr": body})), "t.yaml")
    assert s.parameters["models.optimizer.lr"].bounds() == pytest.approx((3e-4, 3e-3))
    with pytest.raises(ConfigError, match="pct_start' value 2.718"):  # exp(1) > 1 is out of range
        parse_sweep(
            sweep_doc(
                parameters=_params(
                    **{"models.scheduler.pct_start": {"distribution": "log_uniform", "min": -2.0, "max": 1.0}}
                )
            ),
            "t.yaml",
        )


def test_multi_preset_sweep_validates_each_preset():
    s = parse_sweep(
        sweep_doc(
            method="grid", early_terminate=None, parameters={"preset": {"values": ["hrnet_w18_small_cpu", "resnet18"]}}
        ),
        "t.yaml",
    )
    assert s.presets == ["hrnet_w18_small_cpu", "resnet18"]


# ----------------------------------------------------------------------------- command macros


PARAMS = {
    "models.optimizer.lr": 1e-05,
    "models.optimizer.weight_decay": 0.0001,
    "models.scheduler.eta_min": 4.5e-05,
    "models.scheduler.T_max": 20,
    "wandb": True,
    "models.pretrained": False,
    "models.optimizer.betas": [0.9, 0.99],
    "run_name": None,
    "preset": "hrnet_w44_1280",
}


def test_values_formatted_with_str_like_wandb():
    assert [format_value(v) for v in PARAMS.values()] == [
        "1e-05",
        "0.0001",
        "4.5e-05",
        "20",
        "True",
        "False",
        "[0.9, 0.99]",
        "None",
        "hrnet_w44_1280",
    ]
    np = pytest.importorskip("numpy")
    assert format_value(np.float64(1e-5)) == "1e-05" and format_value(np.int64(3)) == "3"
    assert format_value((0.9, 0.999)) == "[0.9, 0.999]"


def test_expand_args_no_hyphens():
    out = expand_command(
        TRAIN_CMD,
        {"models.optimizer.lr": 1e-05, "wandb": True},
        interpreter="/venv/bin/python",
        program=None,
        env={},
        windows=False,
    )
    assert out == [
        "/usr/bin/env",
        "/venv/bin/python",
        "-m",
        "hrnet_sweep.train",
        "models.optimizer.lr=1e-05",
        "wandb=True",
    ]


def test_expand_every_macro():
    p = {"a.b": 0.5, "flag": False, "on": True, "xs": [1, 2]}
    cmd = [
        "${env}",
        "${interpreter}",
        "${program}",
        "${args}",
        "|",
        "${args_no_boolean_flags}",
        "|",
        "${args_json}",
        "${args_json_file}",
        "--dir=${envvar:DATA}",
        "${envvar:MISSING}",
        "--cfg=${args}",
    ]
    out = expand_command(
        cmd, p, interpreter="py", program="train.py", env={"DATA": "/data"}, args_json_file="/tmp/a.json", windows=False
    )
    assert out == [
        "/usr/bin/env",
        "py",
        "train.py",
        "--a.b=0.5",
        "--flag=False",
        "--on=True",
        "--xs=[1, 2]",
        "|",
        "--a.b=0.5",
        "--on",
        "--xs=[1, 2]",
        "|",
        '{"a.b": 0.5, "flag": false, "on": true, "xs": [1, 2]}',
        "/tmp/a.json",
        "--dir=/data",
        "MISSING",
        "--cfg=${args}",
    ]
    assert json.loads(out[12]) == p


def test_default_command_and_windows():
    out = expand_command(None, {"x": 1}, interpreter="python", program="train.py", env={}, windows=True)
    assert out == ["python", "train.py", "--x=1"]  # ${env} is omitted on Windows


def test_expand_needs_program_and_json_path():
    with pytest.raises(ConfigError, match="program"):
        expand_command(["${program}"], {}, interpreter="py", program=None, env={})
    with pytest.raises(ConfigError, match="args_json_file"):
        expand_command(["${args_json_file}"], {}, interpreter="py", program=None, env={})


def test_matches_wandb_agent_argument_builder():
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    theirs = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in PARAMS.items()}})
    ours = command_args(PARAMS)
    for macro in (
        "args",
        "args_no_hyphens",
        "args_no_boolean_flags",
        "args_no_equals",
        "args_json",
        "args_append_hydra",
        "args_override_hydra",
    ):
        assert ours[macro] == theirs[macro], macro


# ----------------------------------------------------------------------------- WANDB_SWEEP_PARAM_PATH


def test_param_file(tmp_path):
    path = write_param_file(
        tmp_path / "wandb" / "sweep-x" / "config-r.yaml",
        {"models.optimizer.lr": 1e-05, "wandb": True, "models.optimizer.betas": (0.9, 0.99)},
    )
    assert path.read_text() == (
        "wandb_version: 1\n\n"
        "models.optimizer.lr:\n  value: 1.0e-05\n"
        "wandb:\n  value: true\n"
        "models.optimizer.betas:\n  value:\n  - 0.9\n  - 0.99\n"
    )
    assert read_param_file(path) == {"models.optimizer.lr": 1e-05, "wandb": True, "models.optimizer.betas": [0.9, 0.99]}
    assert write_param_file(tmp_path / "empty.yaml", {}).read_text() == "wandb_version: 1"


def test_param_file_matches_wandb(tmp_path):
    config_util = pytest.importorskip("wandb.sdk.lib.config_util")
    args = {k: {"value": v} for k, v in PARAMS.items()}
    config_util.save_config_file_from_dict(str(tmp_path / "theirs.yaml"), args)
    write_param_file(tmp_path / "ours.yaml", PARAMS)
    assert (tmp_path / "ours.yaml").read_text() == (tmp_path / "theirs.yaml").read_text()
