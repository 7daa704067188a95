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
    for required in [
        "hrnet_w44_1280",
        "hrnet_w44_960",
        "hrnet_w44_1024",
        "resnet18",
        "resnet34",
        "resnet50",
        "efficientnet_b0",
        "efficientnet_b1",
        "convnext_tiny",
        "hrnet_w18_small_cpu",
    ]:
        assert required in names
    for name in names:
        cfg = load_config([f"preset={name}"])
        assert cfg.preset == name
    assert load_config(["preset=hrnet_w44_960"]).data.image_height == 960
    assert (
        load_config(["preset=resnet50"]).models.optimizer.lr
        == load_config(["preset=hrnet_w44_1280"]).models.optimizer.lr
    )


def test_apply_overrides_and_roundtrip(tmp_path):
    cfg = load_config(["preset=hrnet_w18_small_cpu"])
    cfg2 = apply_overrides(cfg, {"data.batch_size": 1})
    assert cfg2.data.batch_size == 1 and cfg.data.batch_size == 4
    path = tmp_path / "p.yaml"
    path.write_text(cfg2.to_yaml())
    assert load_config([f"preset={path}"]).data.batch_size == 1
    assert all(
        "." in k
        or k in {"preset", "base", "seed", "run_name", "output_dir", "wandb", "resume_from_checkpoint", "ckpt_path"}
        for k in LEAF_KEYS
    )


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


# ----------------------------------------------------------------------------- numbers: finite and of the key's type


@pytest.mark.parametrize(
    "override, shown",
    [
        ("models.optimizer.lr=true", "True"),
        ("models.optimizer.lr=.inf", "'.inf'"),
        ("models.optimizer.lr=nan", "'nan'"),
        ("models.optimizer.lr=-.inf", "'-.inf'"),
        ("models.optimizer.lr=1_000", "'1_000'"),
        ("models.optimizer.lr=١", "'١'"),
        ("models.optimizer.lr=1e999", "'1e999'"),
        ("seed=0x10", "'0x10'"),
        ("seed=1:30", "'1:30'"),
        ("trainer.max_epochs=3.0", "3.0"),
        ("data.fold=true", "True"),
        ("trainer.devices=true", "True"),
        ("trainer.limit_train_batches=.inf", "'.inf'"),
        ("models.optimizer.betas=[0.9, .nan]", "nan"),
        ("models.out_indices=[1, 2.5]", "2.5"),
        ("trainer.gradient_clip_val=.nan", "'.nan'"),
    ],
)
def test_override_numbers_are_finite_and_of_the_keys_type(override, shown):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert f"{key}=" in str(err.value) and shown in str(err.value)


def test_plain_decimals_still_read_as_numbers_and_text_keys_keep_their_text():
    cfg = load_config(
        [
            "models.optimizer.lr=1e-3",
            "seed=+7",
            "trainer.limit_train_batches=.5",
            "run_name=1_000",
            "trainer.devices=auto",
            "models.optimizer.betas=[0.9, 1.0e-1]",
        ]
    )
    assert cfg.models.optimizer.lr == 1e-3 and cfg.seed == 7 and cfg.trainer.limit_train_batches == 0.5
    assert cfg.run_name == "1_000" and cfg.trainer.devices == "auto" and cfg.models.optimizer.betas == (0.9, 0.1)


def test_preset_file_numbers_are_checked_naming_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base: hrnet_w18_small_cpu\nmodels:\n  optimizer:\n    lr: .inf\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: models\.optimizer\.lr=inf: inf is not a finite number"):
        load_config([f"preset={path}"])
    path.write_text("base: hrnet_w18_small_cpu\nmodels:\n  optimizer:\n    lr: 2e-4\n")  # YAML 1.1 text: read
    assert load_config([f"preset={path}"]).models.optimizer.lr == 2e-4


def test_a_key_given_twice_warns_and_the_last_wins(caplog):
    with caplog.at_level("WARNING"):
        parsed = parse_overrides(["models.optimizer.lr=1", "seed=3", "--models.optimizer.lr=2"])
    assert parsed == {"models.optimizer.lr": 2, "seed": 3}
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "models.optimizer.lr given twice (1, then 2)" in record.getMessage()
