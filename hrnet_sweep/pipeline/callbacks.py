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
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..formats import atomic_path
from ..runfolder import append_history, history_is_cut, read_history, rewrite_history, stop_requested

__all__ = ["AtomicCheckpointIO", "RunControl", "atomic_checkpoint_io"]

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
