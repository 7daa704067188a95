"""Training: `run(cfg) -> TrainResult` is a plain function; `main(argv)` and
`python -m hrnet_sweep.train key=value ...` (what a W&B agent runs) are thin wrappers.

Outputs go to `outputs/<run name>/`: `config.yaml` (resolved), `checkpoints/`
(`best-EE.ckpt`, `last.ckpt`), `metrics.jsonl`, `status.json`, `folds.json` (fold mode),
`logs/` (TensorBoard) and `wandb/`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from ..config import Config, apply_overrides, load_config, save_config
from ..constants import CONTROL_DIR_ENV, METRIC, VAL_PRECISION, VAL_RECALL
from ..errors import ConfigError, UserError
from ..formats import load_annotations
from ..runfolder import MANIFEST_FILE, best_row, read_history, write_status
from ..wandb_auth import offline, require_credentials

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a training run ended. `state`: finished, stopped (asked to by the sweep
    engine), failed (NaN loss, out of memory twice, an error) or interrupted (signal)."""

    state: str
    run_dir: str
    reason: str | None = None
    best: float | None = None
    best_epoch: int | None = None
    best_ckpt: str | None = None
    last_ckpt: str | None = None
    epochs: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "stopped": 0, "interrupted": 130}.get(self.state, 1)


# ----------------------------------------------------------------------------- data


class DataSplit(NamedTuple):
    """A run's training and validation images: annotations, names and image folders, and
    in fold mode the fold of each image and its word count (for the manifest)."""

    train_ann: dict
    train_names: list[str]
    train_images: Path
    val_ann: dict
    val_names: list[str]
    val_images: Path
    assignment: dict[str, int] | None = None
    word_counts: dict[str, int] | None = None


def data_split(cfg: Config) -> DataSplit:
    """Fold mode (a split of `train_json`) or the baseline train/val mode (`data.fold=null`:
    `train_json` -> `val_json`)."""
    from ..folds import fold_assignment

    d = cfg.data
    root = d.resolved_root()
    train_ann = load_annotations(root / d.train_json)
    train_images = root / d.train_images
    if d.fold is None:
        val_ann = load_annotations(root / str(d.val_json))
        val_images = root / (d.val_images or d.train_images)
        return DataSplit(train_ann, list(train_ann), train_images, val_ann, list(val_ann), val_images)
    assignment, counts = fold_assignment(train_ann, d.num_folds, d.fold_seed)
    train_names = [n for n in train_ann if assignment[n] != d.fold]
    val_names = [n for n in train_ann if assignment[n] == d.fold]
    return DataSplit(train_ann, train_names, train_images, train_ann, val_names, train_images, assignment, counts)


def build_datasets(cfg: Config, run_dir: Path | None = None):
    """Train and validation datasets of the run's `data_split`; in fold mode the fold
    manifest is written into `run_dir`."""
    from ..dbnet.data import DetectionDataset, build_transforms
    from ..folds import write_manifest

    d = cfg.data
    split = data_split(cfg)
    tp = d.targets.model_dump()
    train_tf = build_transforms(d.augment, d.image_height, d.image_width, train=True)
    eval_tf = build_transforms(d.augment, d.image_height, d.image_width, train=False)
    if split.assignment is not None and run_dir is not None:
        write_manifest(
            run_dir / MANIFEST_FILE,
            d.resolved_root() / d.train_json,
            split.assignment,
            d.num_folds,
            d.fold_seed,
            word_counts_by_name=split.word_counts,
        )
    train_ds = DetectionDataset(split.train_images, split.train_ann, split.train_names, train_tf, **tp)
    val_ds = DetectionDataset(split.val_images, split.val_ann, split.val_names, eval_tf, **tp)
    return train_ds, val_ds


def _one_opencv_thread() -> None:
    """One OpenCV thread in this process, set before DataLoader workers fork from it.

    Workers are the parallelism; nested OpenCV pools in each would oversubscribe the
    cores and starve the training process. It must be set here, in the parent: a forked
    worker that calls `cv2.setNumThreads` while the parent's OpenCV pool has threads
    hangs for ever (measured: 10 of 10 forks after `hrnet_sweep synth` had run in the
    same process). A worker inherits the setting. The parent's own OpenCV use (validation
    post-processing) is per-image work that does not use the pool.
    """
    import cv2

    cv2.setNumThreads(1)


def _loader(ds, cfg: Config, *, shuffle: bool, batch_size: int):
    import torch

    from ..dbnet.data import collate

    d = cfg.data
    workers = d.num_workers
    if workers > 0:
        _one_opencv_thread()
    # Pinned batches let Lightning's copy to the GPU (non_blocking on CUDA) overlap compute;
    # drop_last keeps every training batch one shape (compiled regions, CUDA graphs).
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=d.pin_memory and torch.cuda.is_available(),
        persistent_workers=d.persistent_workers and workers > 0,
        prefetch_factor=d.prefetch_factor if workers > 0 else None,
        drop_last=shuffle and len(ds) > batch_size,
    )


# ----------------------------------------------------------------------------- run control


# ----------------------------------------------------------------------------- loggers


def _wandb_wanted(cfg: Config) -> bool:
    return cfg.wandb or bool(os.environ.get("WANDB_SWEEP_ID"))


def check_wandb_access() -> None:
    """Before the run starts: W&B logging needs credentials unless it logs offline."""
    if not offline():
        require_credentials(
            "wandb=true (or a run of a W&B sweep)",
            hint="; or log offline with WANDB_MODE=offline (sync later with `wandb sync`)",
        )


def build_loggers(cfg: Config, run_dir: Path, run_name: str) -> list:
    loggers = []
    if cfg.logging.tensorboard:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version=""))
    if _wandb_wanted(cfg):
        check_wandb_access()
        from pytorch_lightning.loggers import WandbLogger

        lg = cfg.logging
        wl = WandbLogger(
            project=lg.project,
            entity=lg.entity,
            group=lg.group,
            tags=list(lg.tags) or None,
            name=run_name,
            save_dir=str(run_dir),
            id=os.environ.get("WANDB_RUN_ID"),
            config=cfg.to_dict(),
        )
        wl.experiment.define_metric(METRIC, summary="max")
        for key in (VAL_PRECISION, VAL_RECALL):
            wl.experiment.define_metric(key, summary="max")
        loggers.append(wl)
    return loggers


def _finish_wandb(exit_code: int) -> None:
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


# ----------------------------------------------------------------------------- run


def _effective_precision(cfg: Config) -> Config:
    import torch

    if cfg.trainer.precision == "16-mixed" and not torch.cuda.is_available():
        log.warning("trainer.precision=16-mixed needs a CUDA GPU; this run uses precision 32 on the CPU")
        return apply_overrides(cfg, {"trainer.precision": "32"})
    return cfg


def resolve_run_dir(cfg: Config) -> tuple[str, Path]:
    name = cfg.run_name or os.environ.get("WANDB_RUN_ID") or f"{Path(cfg.preset).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    return name, Path(cfg.output_dir) / name


def _resume_path(cfg: Config, run_dir: Path) -> str | None:
    r = cfg.resume_from_checkpoint
    last = run_dir / "checkpoints" / "last.ckpt"
    if r is None:
        if last.exists():
            raise ConfigError(
                f"{run_dir} already holds a run (checkpoints/last.ckpt); pass resume_from_checkpoint=auto to "
                f"resume it, or choose another run_name"
            )
        return None
    if r in ("auto", "last"):
        return str(last) if last.exists() else None
    if not Path(r).is_file():
        raise ConfigError(f"resume_from_checkpoint={r!r}: file not found")
    return r


def _write_status(result: TrainResult, control_dir: Path | None) -> None:
    doc = asdict(result)
    doc.pop("history")
    for folder in filter(None, (Path(result.run_dir), control_dir)):
        write_status(folder, doc)


def run(cfg: Config, *, extra_callbacks: Sequence = ()) -> TrainResult:
    """Train one model from a resolved config and report how it ended.

    A NaN loss, or running out of GPU memory twice, ends the run as `failed` with a
    reason; a first out-of-memory retries once with half the batch and twice the
    gradient accumulation (recorded in the saved config).
    """
    import torch

    from ..dbnet.batch_size import resolve_batch_size

    run_name, run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    control = os.environ.get(CONTROL_DIR_ENV)
    control_dir = Path(control) if control else None
    if control_dir:
        control_dir.mkdir(parents=True, exist_ok=True)
    cfg = _effective_precision(cfg)
    cfg = resolve_batch_size(cfg)  # data.auto_batch_size: before the retry below can halve it
    result = TrainResult(state="failed", run_dir=str(run_dir))
    exit_code = 1
    try:
        for attempt in (1, 2):
            try:
                result = _fit(cfg, run_name, run_dir, control_dir, extra_callbacks)
                break
            except torch.cuda.OutOfMemoryError as err:
                bs, acc = cfg.data.batch_size, cfg.trainer.accumulate_grad_batches
                if attempt == 2 or bs == 1:
                    result = TrainResult(
                        state="failed",
                        run_dir=str(run_dir),
                        reason=f"out of GPU memory at data.batch_size={bs}: {err}".splitlines()[0],
                    )
                    break
                log.warning(
                    "out of GPU memory at data.batch_size=%d; retrying once with batch %d and "
                    "accumulate_grad_batches %d",
                    bs,
                    bs // 2,
                    acc * 2,
                )
                _finish_wandb(1)
                torch.cuda.empty_cache()
                cfg = apply_overrides(
                    cfg,
                    {
                        "data.batch_size": bs // 2,
                        "trainer.accumulate_grad_batches": acc * 2,
                        "resume_from_checkpoint": "auto",
                    },
                )
        exit_code = result.exit_code
        return result
    except BaseException as err:  # recorded, then re-raised: the caller decides the exit code
        if isinstance(err, UserError):
            result.reason = str(err)
        elif not result.reason:
            result.reason = f"{type(err).__name__}: {err}"
        raise
    finally:
        _finish_wandb(exit_code)
        _write_status(result, control_dir)


def _fit(cfg: Config, run_name: str, run_dir: Path, control_dir: Path | None, extra_callbacks: Sequence) -> TrainResult:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor

    from ..dbnet.lit import DBNetModule, NonFiniteLossError
    from ..dbnet.loss import build_loss
    from ..dbnet.model import build_model
    from ..dbnet.speed import configure_backends, prepare_model
    from .callbacks import RunControl, selection_callbacks

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = _resume_path(cfg, run_dir)
    save_config(cfg, run_dir / "config.yaml")
    train_ds, val_ds = build_datasets(cfg, run_dir)
    log.info("run %s: %d training and %d validation images -> %s", run_name, len(train_ds), len(val_ds), run_dir)

    backends = configure_backends(cfg)  # before the Trainer is built; the benchmark calls it too
    model = build_model(cfg)
    if cfg.ckpt_path:
        load_weights(model, cfg.ckpt_path)
    model = prepare_model(model, cfg, backends)  # regional compile, activation checkpointing
    module = DBNetModule.from_config(model, build_loss(cfg), cfg)

    ckpt, callbacks = selection_callbacks(cfg, run_dir)
    control = RunControl(run_dir, control_dir)
    callbacks = [ckpt, control, *extra_callbacks, *callbacks]
    loggers = build_loggers(cfg, run_dir, run_name)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = _trainer(cfg, run_dir, callbacks, loggers, backends.cudnn_benchmark)
    train_dl = _loader(train_ds, cfg, shuffle=True, batch_size=cfg.data.batch_size)
    val_dl = _loader(val_ds, cfg, shuffle=False, batch_size=cfg.data.batch_size)
    previous_term = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=resume)
    except NonFiniteLossError as err:
        return _result(cfg, "failed", run_dir, ckpt, control, reason=str(err))
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    if trainer.interrupted:
        return _result(cfg, "interrupted", run_dir, ckpt, control, reason="interrupted by a signal")
    if control.stop_requested:
        return _result(cfg, "stopped", run_dir, ckpt, control, reason="stopped by the sweep engine (Hyperband)")
    return _result(cfg, "finished", run_dir, ckpt, control)


def _trainer(cfg: Config, run_dir: Path, callbacks: list, loggers: list, cudnn_benchmark: bool):
    """The Lightning Trainer of a run, from `trainer.*` (progress: plain lines in a log file)."""
    import pytorch_lightning as pl

    from ..progress import lightning_progress
    from .callbacks import atomic_checkpoint_io

    t = cfg.trainer
    show_bar, progress_callbacks = lightning_progress(t.progress_bar)
    return pl.Trainer(
        max_epochs=t.max_epochs,
        accelerator="gpu" if t.accelerator == "cuda" else t.accelerator,
        devices=t.devices,
        precision=t.precision if t.precision != "32" else "32-true",
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=show_bar,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, *progress_callbacks],
        logger=loggers or False,
        default_root_dir=str(run_dir),
        plugins=[atomic_checkpoint_io()],
        benchmark=cudnn_benchmark,
        enable_model_summary=False,
    )


def _sigterm_to_interrupt(signum, frame):
    # Lightning turns KeyboardInterrupt into a graceful shutdown (loggers closed, state kept).
    raise KeyboardInterrupt(f"signal {signum}")


def _result(cfg: Config, state: str, run_dir: Path, ckpt, control, reason: str | None = None) -> TrainResult:
    history = read_history(run_dir)
    best = best_row(history, METRIC)
    last = run_dir / "checkpoints" / "last.ckpt"
    return TrainResult(
        state=state,
        run_dir=str(run_dir),
        reason=reason,
        best=None if best is None else float(best[METRIC]),
        best_epoch=None if best is None else int(best["epoch"]),
        best_ckpt=ckpt.best_model_path or None,
        last_ckpt=str(last) if last.exists() else None,
        epochs=len(history),
        history=history,
    )


def load_weights(model, path: str) -> None:
    """Initialise `model` from a Lightning checkpoint or a plain state dict."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ckpt_path={path!r}: file not found")
    state = torch.load(p, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    state = {k.removeprefix("model."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ConfigError(f"ckpt_path={path!r}: {len(missing)} weights missing for this model, e.g. {missing[:3]}")


# ----------------------------------------------------------------------------- CLI


USAGE = """usage: python -m hrnet_sweep.train [--dry-run] [preset=NAME] [key=value ...]

Train one DBNet. Examples:
  python -m hrnet_sweep.train preset=hrnet_w44_1280 models.optimizer.lr=0.00045 wandb=true
  python -m hrnet_sweep.train preset=hrnet_w18_small_cpu data.root=data --dry-run
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    dry = "--dry-run" in argv
    cfg = load_config([a for a in argv if a != "--dry-run"])
    if dry:
        print(cfg.to_yaml(), end="")
        return 0
    result = run(cfg)
    best = "n/a" if result.best is None else f"{result.best:.4f} (epoch {result.best_epoch})"
    print(
        f"run {result.state}: best {METRIC} {best}; outputs in {result.run_dir}"
        + (f"; reason: {result.reason}" if result.reason else "")
    )
    return result.exit_code
