"""What a training run shows its user: the W&B run, the TensorBoard logs and the console.

W&B, the same way in every mode (a plain run, a fold of `kfold`, a run of a W&B sweep, a
run of a local sweep):

* the run goes to `logging.project` / `logging.entity`. A run of a W&B sweep belongs to
  the sweep's project (W&B's rule; `hrnet_sweep sweep` creates the sweep in the same
  project), so none is passed there. A local sweep's id means nothing to a W&B server:
  W&B would put the run in project `uncategorized` and drop our run id, so the training
  process hides `WANDB_SWEEP_ID` and `WANDB_SWEEP_PARAM_PATH` from W&B while it starts.
* its config is the resolved tree, nested, once, with the values the run used (`wandb:
  true`, the run name, the data root). A W&B sweep's own controller reads the swept keys
  flat (`models.optimizer.lr`), as W&B writes them: they are left out of the tree.
* runs of a sweep are grouped by sweep (`wandb_auth.sweep_labels`: group `<name>-<id>`,
  the name and id as tags); a fold of `kfold` by its retrain (`logging.group`).
* the console shows the run link (online) or one line naming the offline run folder and
  its `wandb sync` command, and W&B's warnings and errors; no banner, no summary.

TensorBoard (`logs/` in the run folder): scalars and validation images at the same step,
and one HParams entry per run with the knobs of `HPARAM_KEYS` (and a sweep's own
parameters) against `val/hmean` and `val/hmean_fixed`.

Lightning's console lines that say nothing to this user (the GPU / TPU inventory, its
adverts, the `limit_*_batches` notes, a deprecation inside Lightning) are filtered here
(`quiet_lightning`); its warnings that do say something stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import Config
from ..constants import CONTROL_DIR_ENV, METRIC, VAL_PRECISION, VAL_RECALL
from ..errors import ConfigError
from ..wandb_auth import SWEEP_NAME_ENV, base_url, offline, require_credentials, sweep_labels

__all__ = [
    "HPARAM_KEYS",
    "VAL_HMEAN_FIXED",
    "WANDB_INIT_TIMEOUT_S",
    "build_loggers",
    "check_wandb_access",
    "finish_wandb",
    "hparams",
    "quiet_lightning",
    "sweep_params",
    "wandb_config",
    "wandb_wanted",
]

log = logging.getLogger("hrnet_sweep.pipeline.train")

WANDB_INIT_TIMEOUT_S = 30.0
"""Seconds W&B has to start a run online before the run fails with one line naming W&B."""
VAL_HMEAN_FIXED = "val/hmean_fixed"  # dbnet.lit's name; not imported from there (it imports torch)
HPARAM_KEYS = (
    "preset",
    "models.name",
    "models.optimizer.name",
    "models.optimizer.lr",
    "models.optimizer.weight_decay",
    "models.scheduler.name",
    "models.scheduler.T_max",
    "models.scheduler.eta_min",
    "data.image_height",
    "data.image_width",
    "data.batch_size",
    "data.fold",
    "trainer.max_epochs",
    "trainer.precision",
)
"""The knobs every run's TensorBoard HParams entry shows (plus its sweep's parameters)."""
_SWEEP_ENV = ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")


# ----------------------------------------------------------------------------- W&B


def wandb_wanted(cfg: Config) -> bool:
    """`wandb=true`, or a run of a sweep (W&B's or the embedded engine's)."""
    return cfg.wandb or bool(os.environ.get("WANDB_SWEEP_ID"))


def check_wandb_access() -> None:
    """Before the run starts: W&B logging needs credentials unless it logs offline."""
    if not offline():
        require_credentials(
            "wandb=true (or a run of a W&B sweep)",
            hint="; or log offline with WANDB_MODE=offline (sync later with `wandb sync`)",
        )


def _local_sweep(env: Mapping[str, str]) -> bool:
    """A run of the embedded engine (its agent sets the control folder; `wandb agent` does not)."""
    return bool(env.get("WANDB_SWEEP_ID")) and bool(env.get(CONTROL_DIR_ENV))


def sweep_params(env: Mapping[str, str] | None = None) -> list[str]:
    """The parameter keys of this run's sweep, from its `WANDB_SWEEP_PARAM_PATH` file
    (`{key: {value: v}}`, as `wandb agent` writes it); [] outside a sweep."""
    import yaml

    path = (os.environ if env is None else env).get("WANDB_SWEEP_PARAM_PATH")
    if not path:
        return []
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return [k for k in doc if isinstance(k, str) and not k.startswith("wandb")] if isinstance(doc, dict) else []


def _drop(tree: dict, key: str) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def wandb_config(cfg: Config, env: Mapping[str, str] | None = None) -> dict:
    """The run's config for W&B: the nested tree once. In a W&B sweep, W&B writes the swept
    keys flat (its controller reads them so): they are dropped from the tree."""
    env = os.environ if env is None else env
    tree = cfg.to_dict()
    if env.get("WANDB_SWEEP_ID") and not _local_sweep(env):
        for key in sweep_params(env):
            _drop(tree, key)
    return tree


def _labels(cfg: Config, env: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """(group, tags): `logging.group` / `logging.tags`, and a sweep's group and tags."""
    group, tags = cfg.logging.group, list(cfg.logging.tags)
    sweep_id = env.get("WANDB_SWEEP_ID")
    if sweep_id:
        sweep_group, sweep_tags = sweep_labels(sweep_id, env.get(SWEEP_NAME_ENV))
        group = group or sweep_group
        tags += [t for t in sweep_tags if t not in tags]
    return group, tags


@contextlib.contextmanager
def _hidden_from_wandb(names: tuple[str, ...]) -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _wandb_run(cfg: Config, run_dir: Path, run_name: str):
    """Start the W&B run (its failure: one line naming W&B, exit 2)."""
    import wandb

    env = dict(os.environ)
    local = _local_sweep(env)
    in_wandb_sweep = bool(env.get("WANDB_SWEEP_ID")) and not local
    group, tags = _labels(cfg, env)
    online = not offline()
    # W&B's console: the run link (online), warnings and errors; the terminal settings are
    # global to the process, so they are set with wandb.setup, before the run starts.
    try:
        with _hidden_from_wandb(_SWEEP_ENV if local else ()):  # W&B reads its environment at setup
            wandb.setup(settings=wandb.Settings(quiet=True, show_info=online))
            run = wandb.init(
                project=None if in_wandb_sweep else cfg.logging.project,
                entity=None if in_wandb_sweep else cfg.logging.entity,
                group=group,
                tags=tags or None,
                name=run_name,
                id=env.get("WANDB_RUN_ID"),
                dir=str(run_dir),
                config=wandb_config(cfg, env),
                resume="allow",
                settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, quiet=True, show_info=online),
            )
    except Exception as err:  # W&B raises its own CommError, UsageError, AuthenticationError, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"W&B: the run could not start on {base_url()} ({type(err).__name__}: {first[:200]}); check the "
            "key (wandb login) and the server, or log offline with WANDB_MODE=offline"
        ) from None
    if not online and getattr(run, "settings", None) is not None and os.environ.get("WANDB_MODE") != "disabled":
        sync_dir = run.settings.sync_dir
        log.info(
            "W&B (offline): run %s of project %s%s in %s; upload it with: wandb sync %s",
            run.id,
            run.project,
            f", group {group}" if group else "",
            sync_dir,
            sync_dir,
        )
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    for key in (METRIC, VAL_PRECISION, VAL_RECALL):
        run.define_metric(key, summary="max")
    return run


def finish_wandb(exit_code: int) -> None:
    """Close this process's W&B run, if any, with `exit_code` (0: finished)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


# ----------------------------------------------------------------------------- TensorBoard


def _hparam_value(value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, float, str)):
        return value
    return "null" if value is None else str(list(value) if isinstance(value, tuple) else value)


def hparams(cfg: Config, extra_keys: list[str] = ()) -> dict[str, Any]:
    """The HParams entry of a run: `HPARAM_KEYS` plus `extra_keys` (a sweep's parameters)."""
    from ..config import LEAF_KEYS

    keys = list(dict.fromkeys([*HPARAM_KEYS, *(k for k in extra_keys if k in LEAF_KEYS)]))
    return {k: _hparam_value(cfg.get(k)) for k in keys}


def _write_hparams(logger, cfg: Config, metrics: list[str]) -> None:
    """One HParams session in the TensorBoard run (no scalar written: the metrics' values
    are the run's own `val/*` scalars)."""
    try:
        from torch.utils.tensorboard.summary import hparams as hparams_summary
    except ImportError:  # pragma: no cover - Lightning then writes with tensorboardX
        from tensorboardX.summary import hparams as hparams_summary

    exp, ssi, sei = hparams_summary(hparams(cfg, sweep_params()), {m: 0.0 for m in metrics})
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)
    writer.flush()


def _tensorboard(cfg: Config, run_dir: Path, resumed: bool):
    from pytorch_lightning.loggers import TensorBoardLogger

    tb = TensorBoardLogger(save_dir=str(run_dir), name="logs", version="", default_hp_metric=False)
    if not resumed:  # one entry per run: a resumed run has its entry already
        metrics = [METRIC] + ([VAL_HMEAN_FIXED] if cfg.models.postprocess.tune_on_val else [])
        _write_hparams(tb, cfg, metrics)
    return tb


# ----------------------------------------------------------------------------- loggers


def build_loggers(cfg: Config, run_dir: Path, run_name: str, *, resumed: bool = False) -> list:
    """The run's Lightning loggers: TensorBoard (`logging.tensorboard`) and W&B (when wanted)."""
    loggers = []
    if cfg.logging.tensorboard:
        loggers.append(_tensorboard(cfg, run_dir, resumed))
    if wandb_wanted(cfg):
        check_wandb_access()
        from pytorch_lightning.loggers import WandbLogger

        run = _wandb_run(cfg, run_dir, run_name)
        loggers.append(WandbLogger(experiment=run, name=run_name, save_dir=str(run_dir), log_model=False))
    return loggers


# ----------------------------------------------------------------------------- console


_NOISE = re.compile(
    r"^\s*("
    r"(GPU|TPU|HPU|IPU) available: "  # the accelerator inventory (the run's own line says where it trains)
    r"|💡 Tip: "  # adverts
    r"|`Trainer\(limit_\w+_batches=1(\.0)?\)` was configured"
    r"|Loading `\w+_dataloader` to estimate number of stepping batches"
    r"|(\[rank: \d+\] )?Received SIGTERM"  # the run's own line says it was stopped, and by what
    r")"
)
_LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.trainer.connectors.signal_connector",
    "lightning.pytorch.trainer.connectors.signal_connector",
)


class _LightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not _NOISE.match(record.getMessage())
        except Exception:  # a record that does not format: keep it
            return True


_FILTER = _LightningNoise()


def quiet_lightning() -> None:
    """Filter Lightning's console lines that say nothing to the user (idempotent)."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # raised inside Lightning by the torch it runs on; nothing the user can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
