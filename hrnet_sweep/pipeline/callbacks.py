"""The Lightning callbacks and plugins that make a training run speak the run-folder
protocol (`hrnet_sweep.runfolder`): a `metrics.jsonl` row per validation epoch, a `STOP`
honoured at the epoch boundary, and checkpoints that are never half-written.

Kept apart from `pipeline.train` so that `train --dry-run` and the other light commands
never import Lightning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..constants import METRIC
from ..files import atomic_path
from ..runfolder import append_history, history_is_cut, read_history, rewrite_history, stop_requested

__all__ = ["AtomicCheckpointIO", "RunControl", "atomic_checkpoint_io", "selection_callbacks"]

log = logging.getLogger(__name__)


class RunControl(pl.Callback):
    """Appends a metrics.jsonl row per validation epoch and honours a `STOP` file from the
    sweep engine (stop at this epoch boundary; `last.ckpt` is still saved)."""

    def __init__(self, run_dir: Path, control_dir: Path | None):
        self.run_dir, self.control_dir = run_dir, control_dir
        self.stop_requested = False

    def on_train_start(self, trainer, pl_module) -> None:
        # After a resume, rows of epochs that are about to be re-run are dropped, so each
        # epoch appears once (the Hyperband rule counts logged values); a line cut by a
        # kill or a full disk goes too, or the next row appended to it would be lost with it.
        rows = read_history(self.run_dir)
        keep = [r for r in rows if r.get("epoch", -1) < trainer.current_epoch]
        if len(keep) != len(rows) or history_is_cut(self.run_dir):
            rewrite_history(self.run_dir, keep)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not pl_module.last_val:
            return
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            **pl_module.last_val,
            "time": round(time.time(), 3),
        }
        pl_module.last_val = {}
        for folder in filter(None, (self.run_dir, self.control_dir)):
            append_history(folder, row)
        if stop_requested(self.control_dir):
            log.info("STOP requested by the sweep engine: stopping after epoch %d", trainer.current_epoch)
            self.stop_requested = True
            trainer.should_stop = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: never half-written."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def atomic_checkpoint_io() -> AtomicCheckpointIO:
    return AtomicCheckpointIO()


def selection_callbacks(cfg, run_dir: Path) -> tuple[ModelCheckpoint, list]:
    """The best checkpoint by `val/hmean` (the tuned H-Mean when validation tunes), and the
    callbacks that go with it: `last.ckpt` at every epoch end and early stopping."""
    ckpt_cfg = cfg.callbacks.model_checkpoint
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-{epoch:02d}",
        monitor=METRIC,
        mode="max",
        save_top_k=ckpt_cfg.save_top_k,
        save_last=False,
        auto_insert_metric_name=False,
        # saved after the epoch ends, so a resume starts the next epoch instead of
        # re-running this one's validation
        save_on_train_epoch_end=True,
    )
    more = []
    if ckpt_cfg.save_last:
        # Lightning's save_last writes last.ckpt only when a best checkpoint is written, so after
        # epochs without a new best a kill would resume from the last best epoch. This one writes
        # last.ckpt at every epoch end, after `best` (whose state it then holds).
        more.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="last",
                monitor=None,
                save_top_k=1,
                enable_version_counter=False,
                save_on_train_epoch_end=True,
            )
        )
    es = cfg.callbacks.early_stopping
    if es.enabled:
        more.append(
            EarlyStopping(
                monitor=METRIC, mode="max", patience=es.patience, min_delta=es.min_delta, check_on_train_epoch_end=False
            )
        )
    return best, more
