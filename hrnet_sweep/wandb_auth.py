"""W&B: whether this machine can talk to a W&B server, and what names a W&B sweep.

One rule for training (`wandb=true`), the launcher (W&B or the embedded engine) and `best`
(reading a sweep through the API), so the three never disagree:

* `WANDB_MODE=offline` (or `dryrun`, `disabled`) means no server: training logs offline,
  the launcher runs the embedded engine, `best` cannot read a W&B sweep.
* Otherwise credentials come from `WANDB_API_KEY`, or from a netrc entry (`NETRC`, else
  `~/.netrc`) for the W&B host: `WANDB_BASE_URL`, else the host that `wandb login --host
  URL` recorded in W&B's settings file (`$WANDB_CONFIG_DIR/settings`, else
  `~/.config/wandb/settings`), else the cloud (`api.wandb.ai`). So a team on a
  self-hosted server is recognised after `wandb login --host`, as `wandb` itself does.
"""

from __future__ import annotations

import configparser
import netrc
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError

__all__ = ["CLOUD_URL", "base_url", "credentials", "is_sweep_path", "offline", "require_credentials"]

CLOUD_URL = "https://api.wandb.ai"
_OFFLINE_MODES = ("offline", "dryrun", "disabled")
_SWEEP_PATH = re.compile(r"^[\w.-]+/[\w.-]+/[\w-]+$")


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def offline(env: Mapping[str, str] | None = None) -> bool:
    """Whether `WANDB_MODE` asks for no server (offline, dryrun or disabled)."""
    return _env(env).get("WANDB_MODE", "").strip().lower() in _OFFLINE_MODES


def base_url(env: Mapping[str, str] | None = None) -> str:
    """The W&B server: `WANDB_BASE_URL`, else the one `wandb login --host` recorded, else the cloud."""
    env = _env(env)
    if env.get("WANDB_BASE_URL"):
        return env["WANDB_BASE_URL"]
    settings = Path(env.get("WANDB_CONFIG_DIR") or Path(env.get("HOME") or Path.home()) / ".config" / "wandb")
    cp = configparser.ConfigParser()
    try:
        cp.read(settings / "settings")
        url = cp.get("default", "base_url", fallback=None)
    except configparser.Error:
        url = None
    return url or CLOUD_URL


def credentials(env: Mapping[str, str] | None = None) -> str | None:
    """Where the credentials for the W&B server come from (`WANDB_API_KEY`, or the netrc
    file), or None: none found, or `WANDB_MODE` asks for no server."""
    env = _env(env)
    if offline(env):
        return None
    if env.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    host = urlparse(base_url(env)).hostname
    path = Path(env.get("NETRC") or Path(env.get("HOME") or Path.home()) / ".netrc")
    try:
        if host and netrc.netrc(str(path)).authenticators(host):
            return str(path)
    except (OSError, netrc.NetrcParseError):
        pass
    return None


def require_credentials(what: str, env: Mapping[str, str] | None = None, *, hint: str = "") -> str:
    """`credentials()`, or a `ConfigError` that says how to get them (and, for training,
    that offline logging needs none)."""
    env = _env(env)
    found = credentials(env)
    if found is not None:
        return found
    if offline(env):
        raise ConfigError(
            f"{what} needs the W&B server, but WANDB_MODE={env.get('WANDB_MODE')} asks for none; unset WANDB_MODE"
        )
    raise ConfigError(
        f"{what} needs W&B credentials for {base_url(env)} and none were found: run `wandb login` (or `wandb "
        f"login --host URL` for a self-hosted server), or set WANDB_API_KEY{hint}"
    )


def is_sweep_path(ref: str) -> bool:
    """Whether `ref` names a W&B sweep (`entity/project/sweep_id`) rather than a local
    sweep folder: three plain names, and no such path on this machine."""
    return bool(_SWEEP_PATH.match(ref)) and not Path(ref).expanduser().exists()
