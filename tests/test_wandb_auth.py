"""One W&B rule in three places: training (`wandb=true`), the launcher (W&B or the
embedded engine) and `best` (reading a sweep through the API) give the same answer for a
cloud login, a self-hosted login (`wandb login --host`), `WANDB_API_KEY` and offline mode.

The W&B server cannot be reached here: `wandb.sweep` and `wandb.Api` are test doubles;
what is tested is the decision each place makes before it would talk to the server.
"""

from __future__ import annotations

import pytest

from _util import REPO
from hrnet_sweep.errors import ConfigError, UserError
from hrnet_sweep.pipeline import best as best_cmd
from hrnet_sweep.pipeline.train import check_wandb_access
from hrnet_sweep.sweep import launcher
from hrnet_sweep.wandb_auth import base_url, credentials, is_sweep_path

CASES = {
    # name: (files to write, environment, credentials expected)
    "cloud login": ({"netrc": "machine api.wandb.ai\n  login user\n  password k1\n"}, {}, True),
    "self-hosted login": (
        {
            "netrc": "machine wandb.example.org\n  login user\n  password k2\n",
            "cfg/settings": "[default]\nbase_url = https://wandb.example.org\n",
        },
        {},
        True,
    ),
    "WANDB_API_KEY": ({}, {"WANDB_API_KEY": "k3"}, True),
    "offline": ({"netrc": "machine api.wandb.ai\n  login user\n  password k1\n"}, {"WANDB_MODE": "offline"}, False),
    "nothing": ({}, {}, False),
}


@pytest.fixture(params=list(CASES))
def case(request, tmp_path, monkeypatch):
    files, env, expected = CASES[request.param]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return request.param, expected


def _training_can_log(name: str) -> bool:
    try:
        check_wandb_access()
        return True
    except ConfigError:
        return False


def _launcher_uses_wandb(monkeypatch) -> bool:
    seen = {}

    def fake_create(config, *, project, entity):  # test double of wandb.sweep
        seen["created"] = True
        return "me/p/s1", "https://example.org/me/p/sweeps/s1"

    monkeypatch.setattr(launcher, "create_wandb_sweep", fake_create)
    assert launcher.main([str(REPO / "sweeps" / "hrnet_w44_1280.yaml"), "--create-only", "--run-cap", "2"]) == 0
    return bool(seen)


def _best_reads_wandb(monkeypatch) -> bool:
    import wandb

    monkeypatch.setattr(wandb, "Api", lambda timeout: "api")  # test double: no server here
    try:
        return best_cmd._default_api(5.0) == "api"
    except UserError:
        return False


@pytest.mark.unit
def test_the_same_answer_in_training_launcher_and_best(case, monkeypatch):
    name, expected = case
    assert (credentials() is not None) == expected
    assert _launcher_uses_wandb(monkeypatch) == expected
    assert _best_reads_wandb(monkeypatch) == expected
    # training needs no server to log offline; otherwise it needs what the others need
    assert _training_can_log(name) == (expected or name == "offline")


@pytest.mark.unit
def test_self_hosted_login_names_its_server(tmp_path, monkeypatch):
    (tmp_path / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    env = {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path), "NETRC": str(tmp_path / "netrc")}
    assert base_url(env) == "https://wandb.example.org"
    assert base_url({**env, "WANDB_BASE_URL": "https://other.example.org"}) == "https://other.example.org"
    monkeypatch.setattr("os.environ", env)
    with pytest.raises(ConfigError, match="wandb.example.org"):
        check_wandb_access()


@pytest.mark.unit
def test_one_rule_for_sweep_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_sweep_path("me/project/abc123")
    assert not is_sweep_path("outputs/sweeps")  # two parts
    assert not is_sweep_path("a/b/c/d")
    assert not is_sweep_path("me/project/ab c")
    (tmp_path / "me" / "project" / "abc123").mkdir(parents=True)
    assert not is_sweep_path("me/project/abc123")  # a local folder of that name wins
