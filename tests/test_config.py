import pytest

from hrnet_sweep.config import LEAF_KEYS, apply_overrides, list_presets, load_config, parse_overrides
from hrnet_sweep.errors import ConfigError

pytestmark = pytest.mark.unit

SEED_COMMAND = (
    "preset=hrnet_w44_1280 models.optimizer.lr=0.00045 models.optimizer.weight_decay=0.00006 "
    "models.scheduler.T_max=20 models.scheduler.eta_min=0.000008 trainer.max_epochs=20 data.batch_size=2 wandb=true"
).split()


def test_seed_command_resolves():
    cfg = load_config(SEED_COMMAND)
    assert cfg.preset == "hrnet_w44_1280"
    assert cfg.models.name == "hrnet_w44"
    assert cfg.models.optimizer.lr == pytest.approx(4.5e-4)
    assert cfg.models.optimizer.weight_decay == pytest.approx(6e-5)
    assert cfg.models.scheduler.T_max == 20 and cfg.models.scheduler.eta_min == pytest.approx(8e-6)
    assert cfg.wandb is True and cfg.data.batch_size == 2 and cfg.data.image_height == 1280
    assert cfg.callbacks.early_stopping.monitor == "val/hmean"


def test_typo_names_key_value_and_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config(["models.optimizer.lrr=1"])
    msg = str(err.value)
    assert "models.optimizer.lrr" in msg and "models.optimizer.lr" in msg and "1" in msg
    assert "weight_decay" in msg  # the allowed keys are listed


@pytest.mark.parametrize(
    "override, words",
    [
        ("models.optimizer.name=adamx", ["models.optimizer.name", "adamx", "adamw"]),
        ("data.batch_size=0", ["data.batch_size", "0", ">= 1"]),
        ("trainer.precision=8", ["trainer.precision", "16-mixed"]),
        ("models.name=hrnet_w45", ["models.name", "hrnet_w45", "hrnet_w44"]),
        ("data.fold=5", ["fold=5", "num_folds=5"]),
        ("models.scheduler.T_max=abc", ["models.scheduler.T_max", "abc", "integer"]),
        ("preset=nope", ["nope", "hrnet_w44_1280"]),
        ("lr", ["key=value"]),
    ],
)
def test_bad_values_are_named(override, words):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    for w in words:
        assert w in str(err.value)


def test_numbers_in_exponent_form_and_lists():
    parsed = parse_overrides(["models.optimizer.lr=3e-4", "models.optimizer.betas=[0.9, 0.99]", "wandb=true"])
    assert parsed == {"models.optimizer.lr": 3e-4, "models.optimizer.betas": [0.9, 0.99], "wandb": True}
    cfg = load_config(["models.optimizer.lr=3e-4", "data.fold=null"])
    assert cfg.models.optimizer.lr == 3e-4 and cfg.data.fold is None


def test_every_shipped_preset_resolves_and_variants_are_overrides():
    names = list_presets()
    for required in ["hrnet_w44_1280", "hrnet_w44_960", "hrnet_w44_1024", "resnet18", "resnet34", "resnet50",
                     "efficientnet_b0", "efficientnet_b1", "convnext_tiny", "hrnet_w18_small_cpu"]:
        assert required in names
    for name in names:
        cfg = load_config([f"preset={name}"])
        assert cfg.preset == name
    assert load_config(["preset=hrnet_w44_960"]).data.image_height == 960
    assert load_config(["preset=resnet50"]).models.optimizer.lr == load_config(["preset=hrnet_w44_1280"]).models.optimizer.lr


def test_apply_overrides_and_roundtrip(tmp_path):
    cfg = load_config(["preset=hrnet_w18_small_cpu"])
    cfg2 = apply_overrides(cfg, {"data.batch_size": 1})
    assert cfg2.data.batch_size == 1 and cfg.data.batch_size == 4
    path = tmp_path / "p.yaml"
    path.write_text(cfg2.to_yaml())
    assert load_config([f"preset={path}"]).data.batch_size == 1
    assert all("." in k or k in {"preset", "base", "seed", "run_name", "output_dir", "wandb",
                                 "resume_from_checkpoint", "ckpt_path"} for k in LEAF_KEYS)


def test_yaml_tags_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("models: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config([f"preset={path}"])


def test_dry_run_prints_resolved_config(capsys):
    from hrnet_sweep.cli import main

    assert main(["train", "--dry-run", "preset=hrnet_w18_small_cpu", "models.optimizer.lr=0.002"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.002" in out and "hrnet_w18_small" in out
    assert main(["train", "--dry-run", "models.optimizer.lrr=1"]) == 2
