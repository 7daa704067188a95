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
* Before a run logs online: `key_problem` (a `WANDB_API_KEY` that W&B itself would
  refuse, said without showing the key) and `server_problem` (the server does not
  answer a connection within seconds): training says so in one line naming W&B, and
  falls back to offline logging for an unreachable server, instead of a traceback or
  minutes of retries.
"""

from __future__ import annotations

import configparser
import netrc
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError

__all__ = [
    "CLOUD_URL",
    "SWEEP_NAME_ENV",
    "base_url",
    "credentials",
    "is_sweep_path",
    "key_problem",
    "offline",
    "require_credentials",
    "server_problem",
    "sweep_labels",
]

CLOUD_URL = "https://api.wandb.ai"
_OFFLINE_MODES = ("offline", "dryrun", "disabled")
_SWEEP_PATH = re.compile(r"^[\w.-]+/[\w.-]+/[\w-]+$")
SWEEP_NAME_ENV = "HRNET_SWEEP_NAME"
"""Set by the embedded engine's agent beside `WANDB_SWEEP_ID`: the sweep's `name`, for the
W&B group and tags of its runs (`sweep_labels`)."""
_TAG_LIMIT = 64  # W&B refuses longer tags


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


_JWT = re.compile(r"[\w-]+\.[\w-]+\.[\w-]+")


def key_problem(env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with `WANDB_API_KEY` by W&B's own format rule (a JWT, or an optional
    `prefix-` and 40 or more letters, digits and underscores), or None; the key itself is
    never part of the text."""
    key = _env(env).get("WANDB_API_KEY")
    if key is None or offline(env):
        return None
    if key != key.strip():
        return "WANDB_API_KEY starts or ends with whitespace"
    if not key:
        return "WANDB_API_KEY is empty"
    if _JWT.fullmatch(key):
        return None
    secret = key.split("-", 1)[-1]
    if not re.fullmatch(r"[\w-]+", secret):
        return "WANDB_API_KEY is malformed: a W&B API key holds only letters, digits and underscores"
    if len(secret) < 40:
        return f"WANDB_API_KEY is malformed: a W&B API key has 40 or more characters, this one {len(secret)}"
    return None


def server_problem(env: Mapping[str, str] | None = None, *, timeout: float = 10.0) -> str | None:
    """Why the W&B server (`base_url`) cannot be reached: no HTTP answer (any status counts
    as one) within `timeout` seconds, a refused connection, a name that does not resolve;
    None when it answers. Proxies are honoured as W&B honours them (`HTTPS_PROXY`, ...)."""
    import urllib.error
    import urllib.request

    url = base_url(env)
    if urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
        return f"W&B server {url!r} is not an http(s) URL"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: the status is W&B's business, not reachability
    except TimeoutError:
        return f"W&B server {url} does not answer (nothing within {timeout:g} s)"
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"W&B server {url} does not answer (nothing within {timeout:g} s)"
        return f"W&B server {url} cannot be reached ({getattr(reason, 'strerror', None) or reason})"
    except (OSError, ValueError) as err:
        return f"W&B server {url} cannot be reached ({err})"


def sweep_labels(sweep_id: str, name: str | None = None) -> tuple[str, list[str]]:
    """The W&B group and tags of a sweep's runs: group `<name>-<id>` (`sweep-<id>` when
    the sweep has no name), tags the name and the id; the same for a W&B sweep and a local
    one, so `wandb sync`ed local runs group like W&B's."""
    name = (name or "").strip()
    group = f"{name}-{sweep_id}" if name else f"sweep-{sweep_id}"
    tags = [t[:_TAG_LIMIT] for t in (name, sweep_id) if t]
    return group[:128], list(dict.fromkeys(tags))
