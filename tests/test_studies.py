"""Study sweeps (`sweeps/*_study.yaml`) and their quick modes, and the weight-decay rule
for batch changes (`data.scale_wd_with_batch`) as the optimizer applies it.

A study is a grid sweep over presets or values; its quick mode is `*_study_quick.yaml`,
the same file with `trainer.max_epochs: 15` and cosine `T_max: 15` (W&B sweep files have
no include and `hrnet_sweep sweep` no override of a fixed parameter, so the variant is a
file, and this test keeps it in step with its study).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from hrnet_sweep.config import list_presets, load_config, parse_overrides
from hrnet_sweep.dbnet.lit import DBNetModule
from hrnet_sweep.sweep.check import check_sweep
from hrnet_sweep.sweep.command import expand_command
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome, build_search_space
from hrnet_sweep.sweep.sweepfile import load_sweep

pytestmark = pytest.mark.unit

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
STUDIES = sorted(SWEEPS.glob("*_study.yaml"))
QUICK = sorted(SWEEPS.glob("*_study_quick.yaml"))
QUICK_EPOCHS = 15
# What each study compares: the set of grid points, as {key: value} per run.
EXPECTED_GRIDS = {
    "backbone_study": {
        "preset": ["hrnet_w44_1280", "resnet34", "resnet50", "efficientnet_b0", "efficientnet_b1", "convnext_tiny"]
    },
    "scheduler_study": {"models.scheduler.name": ["cosine", "onecycle", "plateau"]},
    "resolution_study": {"preset": ["hrnet_w44_896", "hrnet_w44_960", "hrnet_w44_1024", "hrnet_w44_1280"]},
    "wd_batch_study": {"data.batch_size": [2, 4, 8], "data.scale_wd_with_batch": [0, 2]},
}


def _grid_runs(path: Path) -> list[dict]:
    """Every run of a grid sweep: fixed values plus one grid point, as the agent passes them."""
    spec = load_sweep(path)
    space = build_search_space(spec)
    assert space.grid is not None, f"{path.name} is not a grid"
    names = list(space.grid)
    return [{**spec.fixed(), **dict(zip(names, point))} for point in space.grid_points()]


def _config_of(params: dict):
    """The config a run trains with: its command line, parsed as `python -m hrnet_sweep.train` does."""
    argv = expand_command(["${args_no_hyphens}"], params, interpreter="python", program=None, env={})
    return load_config(parse_overrides(argv))


def _weight_decays(cfg) -> list[float]:
    """Weight decay of each optimizer parameter group that `configure_optimizers` builds."""
    module = DBNetModule.from_config(torch.nn.Conv2d(3, 4, 3), torch.nn.Identity(), cfg)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)  # one-cycle needs the step count
    out = module.configure_optimizers()
    optimizer = out["optimizer"] if isinstance(out, dict) else out
    return [g["weight_decay"] for g in optimizer.param_groups]


# ----------------------------------------------------------------------------- the study files


def test_every_study_of_the_plan_ships_with_a_quick_mode():
    assert {p.stem for p in STUDIES} == set(EXPECTED_GRIDS)
    assert {p.stem for p in QUICK} == {f"{s}_quick" for s in EXPECTED_GRIDS}


@pytest.mark.parametrize("path", STUDIES + QUICK, ids=lambda p: p.stem)
def test_study_is_clean_under_strict_check(path):
    assert check_sweep(path) == []


@pytest.mark.parametrize("name", sorted(EXPECTED_GRIDS))
def test_study_grid_is_the_planned_comparison(name):
    runs = _grid_runs(SWEEPS / f"{name}.yaml")
    expected = EXPECTED_GRIDS[name]
    points = sorted(tuple(r[k] for k in expected) for r in runs)
    keys = list(expected)
    want = sorted(tuple(combo) for combo in _product(*(expected[k] for k in keys)))
    assert points == want


def _product(*lists):
    out = [()]
    for values in lists:
        out = [o + (v,) for o in out for v in values]
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED_GRIDS))
def test_quick_mode_differs_only_in_epochs_and_t_max(name):
    full = yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())
    quick = yaml.safe_load((SWEEPS / f"{name}_quick.yaml").read_text())
    assert quick["name"] == f"{name}_quick"
    assert quick["parameters"].pop("trainer.max_epochs") == {"value": QUICK_EPOCHS}
    assert quick["parameters"].pop("models.scheduler.T_max") == {"value": QUICK_EPOCHS}
    assert full["parameters"].pop("trainer.max_epochs") == {"value": 20}
    for doc in (full, quick):
        doc.pop("name"), doc.pop("description")
    assert quick == full


@pytest.mark.parametrize("path", STUDIES + QUICK, ids=lambda p: p.stem)
def test_every_run_of_a_study_loads_and_fits_its_schedule(path):
    quick = path.stem.endswith("_quick")
    runs = _grid_runs(path)
    for params in runs:
        cfg = _config_of(params)
        assert cfg.trainer.max_epochs == (QUICK_EPOCHS if quick else 20)
        assert cfg.data.fold == 0 and cfg.models.optimizer.lr == 4.5e-4
        if cfg.models.scheduler.name == "cosine":
            assert cfg.models.scheduler.T_max <= cfg.trainer.max_epochs


def test_backbone_and_resolution_presets_are_what_they_say():
    names = {p: load_config([f"preset={p}"]).models.name for p in EXPECTED_GRIDS["backbone_study"]["preset"]}
    assert names == {
        "hrnet_w44_1280": "hrnet_w44",
        "resnet34": "resnet34",
        "resnet50": "resnet50",
        "efficientnet_b0": "efficientnet_b0",
        "efficientnet_b1": "efficientnet_b1",
        "convnext_tiny": "convnext_tiny",
    }
    for preset in EXPECTED_GRIDS["resolution_study"]["preset"]:
        assert preset in list_presets()
        cfg = load_config([f"preset={preset}"])
        size = int(preset.rsplit("_", 1)[1])
        assert (cfg.data.image_height, cfg.data.image_width) == (size, size)
        assert cfg.models.name == "hrnet_w44" and cfg.data.batch_size == 2


@pytest.mark.model
@pytest.mark.parametrize("preset", EXPECTED_GRIDS["backbone_study"]["preset"])
def test_every_study_backbone_builds_a_dbnet_at_strides_4_to_32(preset):
    from hrnet_sweep.dbnet.model import build_model

    cfg = load_config([f"preset={preset}", "models.pretrained=false", "models.decoder.inner_channels=16"])
    model = build_model(cfg).eval()
    red = model.backbone.feature_info.reduction()
    assert [red[i] for i in model.feature_pos] == [4, 8, 16, 32]
    with torch.no_grad():
        prob = model.predict_prob(torch.rand(1, 3, 64, 64))
    assert prob.shape == (1, 64, 64)


@pytest.mark.parametrize("name", ["wd_batch_study", "resolution_study_quick"])
def test_embedded_engine_hands_out_each_grid_point_once(tmp_path, name):
    path = SWEEPS / f"{name}.yaml"
    sweep = LocalSweep.create(path, sweep_dir=tmp_path / "sw")
    seen = []
    while (s := sweep.suggest(agent="test")) is not None:
        seen.append(s.params)
        sweep.report(s.number, [0.5], 0)
        sweep.finish(s.number, RunOutcome("finished", value=0.5, exit_code=0))
        assert len(seen) <= 24
    key = lambda p: sorted((k, str(v)) for k, v in p.items())  # noqa: E731
    assert sorted(map(key, seen)) == sorted(map(key, _grid_runs(path)))
    assert sweep.exhausted() is not None


# ----------------------------------------------------------------------------- weight decay and batch size


def test_weight_decay_rule_is_off_by_default():
    assert load_config([]).data.scale_wd_with_batch == 0
    for preset in list_presets():
        assert not load_config([f"preset={preset}"]).data.scale_wd_with_batch, preset
    for batch in (1, 2, 8):
        cfg = load_config(["preset=hrnet_w44_1280", f"data.batch_size={batch}"])
        assert _weight_decays(cfg) == [pytest.approx(6e-5, rel=1e-12), 0.0]


@pytest.mark.parametrize("off", ["0", "null"])
def test_weight_decay_rule_zero_and_null_mean_off(off):
    cfg = load_config(["preset=hrnet_w44_1280", "data.batch_size=8", f"data.scale_wd_with_batch={off}"])
    assert _weight_decays(cfg)[0] == pytest.approx(6e-5, rel=1e-12)


@pytest.mark.parametrize("batch, ref", [(1, 2), (2, 2), (4, 2), (8, 2), (16, 4), (3, 1)])
def test_weight_decay_scales_with_the_square_root_of_the_batch_ratio(batch, ref):
    cfg = load_config(["preset=hrnet_w44_1280", f"data.batch_size={batch}", f"data.scale_wd_with_batch={ref}"])
    decay, no_decay = _weight_decays(cfg)
    assert decay == pytest.approx(6e-5 * math.sqrt(batch / ref), rel=1e-12)
    assert no_decay == 0.0  # norms and biases never decay
    assert cfg.models.optimizer.weight_decay == 6e-5  # the config keeps the value as written


def test_weight_decay_rule_applies_to_every_optimizer():
    for name in ("adamw", "adam", "sgd"):
        cfg = load_config(
            [
                "preset=hrnet_w44_1280",
                f"models.optimizer.name={name}",
                "data.batch_size=8",
                "data.scale_wd_with_batch=2",
            ]
        )
        assert _weight_decays(cfg)[0] == pytest.approx(1.2e-4, rel=1e-12)


def test_wd_batch_study_runs_get_the_weight_decay_its_comment_promises():
    got = {}
    for params in _grid_runs(SWEEPS / "wd_batch_study.yaml"):
        cfg = _config_of(params)
        got[(cfg.data.batch_size, cfg.data.scale_wd_with_batch)] = _weight_decays(cfg)[0]
    want = {(2, 0): 6e-5, (4, 0): 6e-5, (8, 0): 6e-5, (2, 2): 6e-5, (4, 2): 6e-5 * math.sqrt(2), (8, 2): 1.2e-4}
    assert got == pytest.approx(want, rel=1e-12)


def test_a_null_in_a_sweep_would_not_reach_training_as_null(tmp_path):
    """Why the study writes 0 for off: `check` rejects null (wandb agent passes 'None')."""
    doc = yaml.safe_load((SWEEPS / "wd_batch_study.yaml").read_text())
    doc["parameters"]["data.scale_wd_with_batch"]["values"] = [None, 2]
    path = tmp_path / "null.yaml"
    path.write_text(yaml.safe_dump(doc))
    errors = [f for f in check_sweep(path) if f.level == "error"]
    assert [f.key for f in errors] == ["data.scale_wd_with_batch"] and "None" in errors[0].message
