"""Training: `run(cfg) -> TrainResult` is a plain function; `main(argv)` and
`python -m hrnet_sweep.train key=value ...` (what a W&B agent runs) are thin wrappers.

Outputs go to `outputs/<run name>/`: `config.yaml` (resolved), `checkpoints/`
(`best-EE.ckpt`, `last.ckpt`), `metrics.jsonl`, `status.json`, `folds.json` (fold mode),
`logs/` (TensorBoard) and `wandb/`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from ..children import DATA_WORKER_TIMEOUT_S, helper_failure
from ..config import Config, apply_overrides, load_config, save_config, warn_ignored_keys
from ..constants import CONTROL_DIR_ENV, DATA_ROOT_ENV, METRIC
from ..errors import ConfigError, UserError
from ..files import image_size
from ..formats import load_annotations
from ..runfolder import (
    MANIFEST_FILE,
    RESUME_ENV,
    USER_STOP,
    best_row,
    previous_run,
    read_history,
    rewrite_history,
    write_status,
)
from ..wandb_auth import key_problem, offline, server_problem
from .loggers import WANDB_INIT_TIMEOUT_S, check_wandb_access, finish_wandb, wandb_wanted

log = logging.getLogger(__name__)

__all__ = [
    "WANDB_INIT_TIMEOUT_S",
    "WANDB_PROBE_TIMEOUT_S",
    "DataSplit",
    "Preflight",
    "StopRequested",
    "TrainResult",
    "build_datasets",
    "check_path_keys",
    "check_wandb_access",
    "data_split",
    "initial_weights",
    "load_weights",
    "main",
    "preflight",
    "resolve_run_dir",
    "run",
    "small_text_problem",
]

WANDB_PROBE_TIMEOUT_S = 10.0
"""Seconds a W&B server has to answer (any HTTP status) before the run logs offline."""
MOST_WORDS = 0.5
"""`small_text_problem` speaks up when more than this share of training words is lost."""


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


_TEXT_SAMPLE = 256  # images looked at by `small_text_problem`: a second on any dataset


def small_text_problem(cfg: Config, split: DataSplit) -> str | None:
    """One line naming the numbers when most training words are thinner than
    `data.targets.min_text_size` at the configured canvas (they are left out of the
    targets, so the network never learns them: val/hmean stays near 0, silently); None
    otherwise. A word's size is the smaller side of its bounding box after the letterbox
    (`dbnet.data.letterbox_size`, as the targets see it, before augmentation); up to
    `_TEXT_SAMPLE` images, evenly spread, are looked at."""
    import numpy as np

    from ..dbnet.data import letterbox_size

    d = cfg.data
    names = split.train_names
    step = max(1, len(names) // _TEXT_SAMPLE)
    spans = []
    for name in names[::step][:_TEXT_SAMPLE]:
        ann = split.train_ann[name]
        shown = (ann.width, ann.height) if ann.height and ann.width else image_size(split.train_images / name)
        size = None if shown is None else (shown[1], shown[0])  # (height, width)
        if size is None or not ann.words:
            continue
        scale, _ = letterbox_size(size[0], size[1], d.image_height, d.image_width)
        for w in ann.words:
            pts = np.asarray(w.points, dtype=np.float64)
            spans.append(float((pts.max(axis=0) - pts.min(axis=0)).min()) * scale)
    if not spans:
        return None
    floor = d.targets.min_text_size
    small = sum(s < floor for s in spans) / len(spans)
    if small <= MOST_WORDS:
        return None
    median = float(np.median(spans))
    need = 1.5 * floor / max(median, 1e-6)  # the median word at 1.5x the floor: most words above it
    height, width = (-(-int(v * need) // 32) * 32 for v in (d.image_height, d.image_width))
    return (
        f"{small:.0%} of the training words ({len(spans)} looked at) are under data.targets.min_text_size="
        f"{floor} px at the {d.image_height}x{d.image_width} canvas (median {median:.1f} px): the targets leave "
        f"them out and the network will not learn to find them (val/hmean stays near 0). Raise "
        f"data.image_height and data.image_width (data.image_height={height} data.image_width={width} keeps "
        f"most words above it), or lower data.targets.min_text_size"
    )


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
    from ..machine import cap_count

    d = cfg.data
    batches = max(1, -(-len(ds) // batch_size))
    workers = cap_count(d.num_workers, "data.num_workers", work=batches, work_name="batches") if d.num_workers else 0
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
        timeout=DATA_WORKER_TIMEOUT_S if workers > 0 else 0,  # a hung worker ends in an error, not a wait
    )


# ----------------------------------------------------------------------------- run


def _effective_precision(cfg: Config) -> Config:
    import torch

    if cfg.trainer.precision == "16-mixed" and not torch.cuda.is_available():
        log.warning("trainer.precision=16-mixed needs a CUDA GPU; this run uses precision 32 on the CPU")
        return apply_overrides(cfg, {"trainer.precision": "32"})
    return cfg


def resolve_run_dir(cfg: Config) -> tuple[str, Path]:
    """The run's name and folder: `run_name`, else the W&B run id, else preset and time;
    the name stays inside `output_dir` (`files.child_path`)."""
    from ..files import child_path

    name = cfg.run_name or os.environ.get("WANDB_RUN_ID") or f"{Path(cfg.preset).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    what = "run_name" if cfg.run_name else "WANDB_RUN_ID" if os.environ.get("WANDB_RUN_ID") else "run name"
    return name, child_path(cfg.output_dir, name, what=what)


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


# ----------------------------------------------------------------------------- before the run folder


_SPLIT_KEYS = ("fold", "num_folds", "fold_seed", "train_json", "val_json")


@dataclass
class Preflight:
    """What `preflight` found: the run's name and folder, the checkpoint to resume from,
    the checked initial weights (`ckpt_path`), and the config with its resource settings
    bounded and W&B set to offline where its server cannot be reached."""

    cfg: Config
    run_name: str
    run_dir: Path
    resume: str | None
    weights: dict | None = None


def preflight(cfg: Config) -> Preflight:
    """Every input a run names, checked before its run folder is made, so a bad one exits
    2 with nothing written: the run name (inside `output_dir`), every path key
    (`output_dir`, `trainer.compile_cache_dir`, the control folder, `models.pretrained`,
    `ckpt_path`, `resume_from_checkpoint`), the checkpoints they name (read as data by
    `dbnet.checkpoint`, weights against this model), a folder holding a finished run, a
    resume under another data split, the W&B key and server, and worker counts."""
    run_name, run_dir = resolve_run_dir(cfg)
    check_path_keys(cfg)
    if cfg.resume_from_checkpoint is None and os.environ.get(RESUME_ENV) == "auto":
        cfg = apply_overrides(cfg, {"resume_from_checkpoint": "auto"})  # a sweep run stopped by the user, again
    resume = _resume_path(cfg, run_dir)
    if resume is None:
        held = previous_run(run_dir)
        if held:
            raise ConfigError(
                f"{run_dir} holds {held} and no checkpoints/last.ckpt to continue from; a new run there would "
                "overwrite it: choose another run_name"
            )
    else:
        from ..dbnet.checkpoint import scan_checkpoint
        from ..errors import CheckpointError

        _check_resume_split(cfg, run_dir, resume)
        try:
            scan_checkpoint(resume)  # what Lightning will unpickle: our allow-list, before it does
        except CheckpointError as err:
            raise CheckpointError(f"resume_from_checkpoint: {err}") from None
        if cfg.ckpt_path:
            log.warning(
                "ckpt_path=%s is ignored: the run resumes from %s (weights and optimizer)", cfg.ckpt_path, resume
            )
    weights = None
    if cfg.ckpt_path and resume is None:
        weights = initial_weights(cfg, cfg.ckpt_path)
    cfg = _bounded(cfg)
    cfg = _wandb_mode(cfg)
    return Preflight(cfg, run_name, run_dir, resume, weights)


def check_path_keys(cfg: Config) -> None:
    """The folders and files a config names, before anything is made: `output_dir`,
    `trainer.compile_cache_dir` and the control folder can be created and written,
    `models.pretrained` (a weights file) and `ckpt_path` can be read. `train` and `kfold`
    (for every fold at once) call it."""
    from ..files import check_folder_writable, check_readable_file

    check_folder_writable(cfg.output_dir, what="output_dir")
    if cfg.trainer.compile_cache_dir:
        check_folder_writable(cfg.trainer.compile_cache_dir, what="trainer.compile_cache_dir")
    control = os.environ.get(CONTROL_DIR_ENV)
    if control:
        check_folder_writable(control, what=CONTROL_DIR_ENV)
    if isinstance(cfg.models.pretrained, str):
        check_readable_file(Path(cfg.models.pretrained).expanduser(), "models.pretrained weights file")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).expanduser().is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}: file not found")


def _bounded(cfg: Config) -> Config:
    """Worker and process counts bounded by the machine (a warning names each one capped)."""
    from ..machine import cap_count

    d, pp = cfg.data, cfg.models.postprocess
    changes = {
        "data.num_workers": cap_count(d.num_workers, "data.num_workers"),
        "models.postprocess.tune_workers": cap_count(pp.tune_workers, "models.postprocess.tune_workers"),
    }
    changes = {k: v for k, v in changes.items() if v != cfg.get(k)}
    return apply_overrides(cfg, changes) if changes else cfg


def _wandb_mode(cfg: Config) -> Config:
    """With W&B online: a malformed key is one line naming W&B (exit 2); a server that does
    not accept a connection within seconds gets offline logging, said in a warning."""
    if not wandb_wanted(cfg) or offline():
        return cfg
    check_wandb_access()
    problem = key_problem()
    if problem:
        raise ConfigError(f"W&B: {problem}; run `wandb login` again, or log offline with WANDB_MODE=offline")
    problem = server_problem(timeout=WANDB_PROBE_TIMEOUT_S)
    if problem:
        log.warning("W&B: %s; this run logs offline into its run folder (upload it later with `wandb sync`)", problem)
        os.environ["WANDB_MODE"] = "offline"
    return cfg


def initial_weights(cfg: Config, path: str) -> dict:
    """The weights `ckpt_path` names, read as data and checked against the model of `cfg`
    (built on the meta device: shapes only, no memory), before the run folder is made."""
    import torch

    from ..dbnet.checkpoint import Checkpoint, check_weights
    from ..dbnet.model import build_model
    from ..errors import CheckpointError

    if not Path(path).expanduser().is_file():
        raise ConfigError(f"ckpt_path={path!r}: file not found")
    try:
        ckpt = Checkpoint.read(Path(path).expanduser())
        state = ckpt.model_state()
        meta_cfg = apply_overrides(cfg, {"models.pretrained": False})
        with torch.device("meta"):
            model = build_model(meta_cfg)
        extra = check_weights(state, model, ckpt.path, describe=f" (models.name={cfg.models.name})")
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path: {err}") from None
    if extra:
        log.warning(
            "ckpt_path=%s: %d weights this model does not have are not used, e.g. %s", path, len(extra), extra[0]
        )
    return {k: v for k, v in state.items() if k not in extra}


def _check_resume_split(cfg: Config, run_dir: Path, resume: str) -> None:
    """A run resumes on the data split it was trained on: the saved config's split keys
    (or the checkpoint's, for a checkpoint from elsewhere) and, in fold mode, the fold
    manifest against this run's; else a `ConfigError` naming both."""
    from ..config import config_from_dict
    from ..files import read_text

    saved_cfg = run_dir / "config.yaml"
    here = Path(resume).resolve().is_relative_to(run_dir.resolve())
    if here and saved_cfg.is_file():
        import yaml

        try:
            doc = yaml.safe_load(read_text(saved_cfg))
        except yaml.YAMLError as err:
            raise ConfigError(f"{saved_cfg}: not valid YAML ({str(err).splitlines()[0]})") from None
        before, where = config_from_dict(doc, str(saved_cfg)).data, str(saved_cfg)
        read_history(run_dir, strict=True)  # the rows the resumed run keeps: checked for shape
    elif not here:
        from ..dbnet.checkpoint import Checkpoint

        before, where = Checkpoint.read(resume).config().data, f"{resume} (its config)"
    else:
        return
    now = cfg.data
    diff = [
        f"data.{k}={getattr(before, k)!r} there, {getattr(now, k)!r} now"
        for k in _SPLIT_KEYS
        if getattr(before, k) != getattr(now, k) and not (k == "val_json" and now.fold is not None)
    ]
    if diff:
        raise ConfigError(
            f"resume_from_checkpoint={cfg.resume_from_checkpoint}: the run was trained on another data split "
            f"({where}: {'; '.join(diff)}); resume it with its own split, or start a new run_name"
        )
    manifest = run_dir / MANIFEST_FILE
    if here and now.fold is not None and manifest.is_file():
        from ..folds import fold_assignment, read_manifest

        old = read_manifest(manifest)
        train_json = now.resolved_root() / now.train_json
        if not old.matches(train_json, now.num_folds, now.fold_seed):
            assignment, _ = fold_assignment(load_annotations(train_json), now.num_folds, now.fold_seed)
            if assignment != old.assignment:
                moved = sorted(set(assignment) ^ set(old.assignment)) or sorted(
                    n for n in assignment if assignment[n] != old.assignment.get(n)
                )
                raise ConfigError(
                    f"resume_from_checkpoint={cfg.resume_from_checkpoint}: {train_json} changed since the run "
                    f"began ({manifest}: sha256 {old.sha256[:12]}, {len(old.assignment)} images; now "
                    f"{len(assignment)} images, {len(moved)} in other folds or gone, e.g. {moved[0]!r}); "
                    "resume it on its own data, or start a new run_name"
                )


def _write_status(result: TrainResult, control_dir: Path | None) -> None:
    doc = asdict(result)
    doc.pop("history")
    for folder in filter(None, (Path(result.run_dir), control_dir)):
        write_status(folder, doc)


class DataWorkerFailure(RuntimeError):
    """A DataLoader worker died or stopped answering (`children.helper_failure` says how)."""


class StopRequested(BaseException):
    """SIGTERM or SIGINT reached the training process: the run stops as the user asked.

    Not a `KeyboardInterrupt`: Lightning turns that into `sys.exit(1)`, which would read as a
    failure; this one passes through `Trainer.fit` after its teardown, as any error does."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_KILLED_BY_STOP = re.compile(r"killed by signal: (Terminated|Interrupt)\b")


def _child_ended(signum: int, frame) -> None:
    """SIGCHLD once the run is stopping: nothing to do (see `_StopOnSignals.quiet_children`)."""


class _StopOnSignals:
    """SIGTERM / SIGINT raise `StopRequested` once in the main thread; a second signal
    while the run winds down is noted, not raised again, so the cleanup (status.json,
    W&B) is never cut short by it."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self.closing = False  # the run has ended and is being recorded: a signal now changes nothing

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; its own handlers stay
        for sig in _STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            # a process forked from this one (a DataLoader worker) inherited the handler: it
            # ends by the signal, quietly, as it would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signal is None:
            self.signal = signum
            self.quiet_children()
            if not self.closing:
                raise StopRequested(signal.Signals(signum).name)

    @staticmethod
    def quiet_children() -> None:
        """No more word about child processes that end. The stop's signal ends the DataLoader
        workers (and W&B's service process); PyTorch's SIGCHLD handler would raise about each
        of them wherever the main thread is then (W&B's exit hook, say). Called again once the
        run is over: Lightning's teardown puts back the handlers it found when `fit` began.
        A Python no-op, not SIG_DFL: a SIGCHLD already pending when the handler changes would
        find no Python handler, and Python prints `Signal 17 ignored due to race condition`
        with a traceback."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, _child_ended)

    def explains(self, err: BaseException) -> bool:
        """Whether `err` is the stop: our own exception, or a DataLoader worker that the same
        signal (sent to the whole process group) ended first."""
        if isinstance(err, StopRequested):
            return True
        text = str(err)
        return isinstance(err, (RuntimeError, DataWorkerFailure)) and (
            self.signal is not None or bool(_KILLED_BY_STOP.search(text))
        )


def run(cfg: Config, *, extra_callbacks: Sequence = ()) -> TrainResult:
    """Train one model from a resolved config and report how it ended.

    A NaN loss, or running out of GPU memory twice, ends the run as `failed` with a
    reason; a first out-of-memory retries once with half the batch and twice the
    gradient accumulation (recorded in the saved config). A DataLoader worker that dies
    or hangs (`DATA_WORKER_TIMEOUT_S`) is said in one line and the run goes on from its
    last finished epoch with `data.num_workers=0`. SIGTERM or SIGINT (Ctrl-C, a sweep
    agent's or the launcher's stop) ends it `interrupted` with the reason `USER_STOP`,
    exit code 130, keeping `last.ckpt` of its last finished epoch. Whatever the end,
    status.json holds the epochs and checkpoints on disk, as absolute paths.
    """
    control = os.environ.get(CONTROL_DIR_ENV)
    control_dir = Path(control).absolute() if control else None
    try:
        pre = preflight(cfg)  # before the run folder is made: a bad input leaves nothing behind
    except UserError as err:
        if control_dir:  # the agent reads why from its control folder
            control_dir.mkdir(parents=True, exist_ok=True)
            write_status(control_dir, {"state": "failed", "reason": str(err), "run_dir": None, "epochs": 0})
        raise
    run_name, run_dir = pre.run_name, pre.run_dir.absolute()
    cfg = as_run(pre.cfg, run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if control_dir:
        control_dir.mkdir(parents=True, exist_ok=True)
    result = TrainResult(state="failed", run_dir=str(run_dir))
    exit_code = 1
    with _StopOnSignals() as stop:
        try:
            result = _attempts(cfg, run_name, run_dir, control_dir, extra_callbacks, pre.weights, stop)
            exit_code = result.exit_code
            return result
        except BaseException as err:  # recorded, then re-raised: the caller decides the exit code
            # from here on a signal is noted, not raised: a DataLoader worker ended by the stop's
            # signal can surface before the main thread's own handler has run
            stop.closing = True
            if stop.explains(err):
                stop.quiet_children()
                why = f"{USER_STOP} ({signal.Signals(stop.signal).name})" if stop.signal else USER_STOP
                log.warning("run %s: %s; its last finished epoch is kept (checkpoints/last.ckpt)", run_name, why)
                _drop_unsaved_epochs(run_dir, control_dir)
                result = _from_disk("interrupted", run_dir, reason=USER_STOP)
                exit_code = result.exit_code
                return result
            reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            result = _from_disk("failed", run_dir, reason=result.reason or reason)
            raise
        finally:
            stop.closing = True
            _write_status(result, control_dir)  # first: a kill while W&B closes must not lose it
            finish_wandb(exit_code)


def _drop_unsaved_epochs(run_dir: Path, control_dir: Path | None) -> None:
    """After a stop: drop the metrics.jsonl rows of epochs that `last.ckpt` does not hold.

    A row is written when its validation ends, `last.ckpt` when the epoch ends, after it;
    a stop in between leaves a row the resume will train again (and drop then). Dropped
    now, in the run folder and the control folder, status.json counts the epochs the run
    goes on from, and the agent that continues the run reads each epoch once. A row newer
    than the file (its `time` after the file's mtime) is such a row. Without a last.ckpt
    (`callbacks.model_checkpoint.save_last=false`) nothing is dropped."""
    try:
        saved_at = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime
    except OSError:
        return
    dropped = None
    for folder in filter(None, (run_dir, control_dir)):
        rows = read_history(folder)
        keep = [r for r in rows if not (isinstance(r.get("time"), (int, float)) and r["time"] > saved_at + 0.001)]
        if len(keep) != len(rows):
            dropped = rows[len(keep)].get("epoch")
            rewrite_history(folder, keep)
    if dropped is not None:
        log.info("epoch %s was validated, not saved in last.ckpt: it is trained again on resume", dropped)


def as_run(cfg: Config, run_name: str) -> Config:
    """The config as the run uses it, so that config.yaml, the checkpoint and W&B say what
    is true: its name, `wandb` on where it logs to W&B (a sweep's runs do), and the data
    root it reads (`data.root`, else `$HRNET_SWEEP_DATA`, else ./data) as an absolute path."""
    root = str(cfg.data.resolved_root().absolute())
    changes = {"run_name": run_name, "wandb": wandb_wanted(cfg), "data.root": root}
    changes = {k: v for k, v in changes.items() if cfg.get(k) != v}
    return apply_overrides(cfg, changes) if changes else cfg


def _attempts(
    cfg: Config,
    run_name: str,
    run_dir: Path,
    control_dir: Path | None,
    extra_callbacks: Sequence,
    weights: dict | None,
    stop: _StopOnSignals,
) -> TrainResult:
    """`_fit`, and its one retry after a dead DataLoader worker or a first out-of-memory."""
    import torch

    from ..dbnet.batch_size import resolve_batch_size

    cfg = _effective_precision(cfg)
    cfg = resolve_batch_size(cfg)  # data.auto_batch_size: before the retry below can halve it
    for attempt in (1, 2):
        try:
            return _fit(cfg, run_name, run_dir, control_dir, extra_callbacks, weights)
        except DataWorkerFailure as err:
            if stop.explains(err):
                raise
            if attempt == 2 or cfg.data.num_workers == 0:
                return _from_disk("failed", run_dir, reason=str(err))
            log.warning(
                "%s; going on from the last finished epoch (last.ckpt) with data.num_workers=0: "
                "batches are made in the training process from now on",
                err,
            )
            finish_wandb(1)
            cfg = apply_overrides(cfg, {"data.num_workers": 0, "resume_from_checkpoint": "auto"})
        except torch.cuda.OutOfMemoryError as err:
            bs, acc = cfg.data.batch_size, cfg.trainer.accumulate_grad_batches
            if attempt == 2 or bs == 1:
                reason = f"out of GPU memory at data.batch_size={bs}: {err}".splitlines()[0]
                return _from_disk("failed", run_dir, reason=reason)
            log.warning(
                "out of GPU memory at data.batch_size=%d; retrying once with batch %d and accumulate_grad_batches %d",
                bs,
                bs // 2,
                acc * 2,
            )
            finish_wandb(1)
            torch.cuda.empty_cache()
            cfg = apply_overrides(
                cfg,
                {
                    "data.batch_size": bs // 2,
                    "trainer.accumulate_grad_batches": acc * 2,
                    "resume_from_checkpoint": "auto",
                },
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _fit(
    cfg: Config,
    run_name: str,
    run_dir: Path,
    control_dir: Path | None,
    extra_callbacks: Sequence,
    weights: dict | None = None,
) -> TrainResult:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor

    from ..dbnet.lit import DBNetModule, NonFiniteLossError
    from ..dbnet.loss import build_loss
    from ..dbnet.model import build_model
    from ..dbnet.speed import configure_backends, prepare_model
    from .callbacks import RunControl, selection_callbacks
    from .loggers import build_loggers, quiet_lightning

    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = _resume_path(cfg, run_dir)
    save_config(cfg, run_dir / "config.yaml")
    train_ds, val_ds = build_datasets(cfg, run_dir)
    log.info("run %s: %d training and %d validation images -> %s", run_name, len(train_ds), len(val_ds), run_dir)
    if resume is None:
        problem = small_text_problem(cfg, data_split(cfg))
        if problem:
            log.warning("%s", problem)

    backends = configure_backends(cfg)  # before the Trainer is built; the benchmark calls it too
    model = build_model(cfg)
    if weights is not None:  # ckpt_path, read and checked by preflight
        model.load_state_dict(weights, strict=True)
    model = prepare_model(model, cfg, backends)  # regional compile, activation checkpointing
    module = DBNetModule.from_config(model, build_loss(cfg), cfg)

    ckpt, callbacks = selection_callbacks(cfg, run_dir)
    control = RunControl(run_dir, control_dir)
    callbacks = [ckpt, control, *extra_callbacks, *callbacks]
    loggers = build_loggers(cfg, run_dir, run_name, resumed=resume is not None)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    train_dl = _loader(train_ds, cfg, shuffle=True, batch_size=cfg.data.batch_size)
    val_dl = _loader(val_ds, cfg, shuffle=False, batch_size=cfg.data.batch_size)
    trainer = _trainer(cfg, run_dir, callbacks, loggers, backends.cudnn_benchmark, _steps_per_epoch(cfg, train_dl))
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=resume, weights_only=True)  # scanned by preflight
    except NonFiniteLossError as err:
        return _from_disk("failed", run_dir, ckpt, reason=str(err))
    except RuntimeError as err:  # a DataLoader worker that died or hung: `run` goes on without workers
        why = helper_failure(err)
        if why is None:
            raise
        raise DataWorkerFailure(why) from None
    if control.stop_requested:
        return _from_disk("stopped", run_dir, ckpt, reason="stopped by the sweep engine (Hyperband)")
    return _from_disk("finished", run_dir, ckpt)


def _steps_per_epoch(cfg: Config, train_dl) -> int:
    """Training batches per epoch, after `trainer.limit_train_batches`."""
    n = len(train_dl)
    limit = cfg.trainer.limit_train_batches
    if isinstance(limit, float) and limit < 1.0:
        n = int(n * limit)
    elif isinstance(limit, int) and not isinstance(limit, bool):
        n = min(n, limit)
    return max(1, n)


def _trainer(
    cfg: Config, run_dir: Path, callbacks: list, loggers: list, cudnn_benchmark: bool, steps_per_epoch: int = 0
):
    """The Lightning Trainer of a run, from `trainer.*` (progress: plain lines in a log file).

    `limit_*_batches` of 1.0 (all) goes to Lightning as its own default, which it does not
    comment on; per-step values are logged every `trainer.log_every_n_steps` steps, at
    least once per epoch (an epoch shorter than that would log none)."""
    import pytorch_lightning as pl

    from ..progress import lightning_progress
    from .callbacks import atomic_checkpoint_io

    t = cfg.trainer
    show_bar, progress_callbacks = lightning_progress(t.progress_bar)
    every = min(t.log_every_n_steps, steps_per_epoch) if steps_per_epoch else t.log_every_n_steps
    return pl.Trainer(
        max_epochs=t.max_epochs,
        accelerator="gpu" if t.accelerator == "cuda" else t.accelerator,
        devices=t.devices,
        precision=t.precision if t.precision != "32" else "32-true",
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=None if t.limit_train_batches == 1.0 else t.limit_train_batches,
        limit_val_batches=None if t.limit_val_batches == 1.0 else t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=max(1, every),
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


def _from_disk(state: str, run_dir: Path, ckpt=None, reason: str | None = None) -> TrainResult:
    """How a run ended, with what its folder holds: the epochs of metrics.jsonl, the best of
    them, the best checkpoint (the checkpoint callback's, else the file of the best epoch)
    and `last.ckpt`, as absolute paths. Whatever the end (finished, failed, stopped), so
    status.json never says `epochs: 0` beside a history and checkpoints on disk."""
    run_dir = Path(run_dir).absolute()
    history = read_history(run_dir)
    best = best_row(history, METRIC)
    best_epoch = None if best is None else int(best["epoch"])
    best_ckpt = getattr(ckpt, "best_model_path", None) or None
    if best_ckpt is None and best_epoch is not None:
        found = run_dir / "checkpoints" / f"best-{best_epoch:02d}.ckpt"
        best_ckpt = str(found) if found.is_file() else None
    last = run_dir / "checkpoints" / "last.ckpt"
    return TrainResult(
        state=state,
        run_dir=str(run_dir),
        reason=reason,
        best=None if best is None else float(best[METRIC]),
        best_epoch=best_epoch,
        best_ckpt=None if best_ckpt is None else str(Path(best_ckpt).absolute()),
        last_ckpt=str(last) if last.exists() else None,
        epochs=len(history),
        history=history,
    )


def load_weights(model, path: str) -> None:
    """Initialise `model` from a Lightning checkpoint or a plain state dict, read as data
    and checked against the model (`dbnet.checkpoint`)."""
    from ..dbnet.checkpoint import Checkpoint, check_weights
    from ..errors import CheckpointError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"ckpt_path={path!r}: file not found")
    try:
        state = Checkpoint.read(p).model_state()
        extra = check_weights(state, model, p)
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path: {err}") from None
    model.load_state_dict({k: v for k, v in state.items() if k not in extra}, strict=True)


# ----------------------------------------------------------------------------- CLI


USAGE = """usage: hrnet_sweep train [-h] [--dry-run] [preset=NAME|PATH.yaml] [key=value ...]
       python -m hrnet_sweep.train <the same>      (what every sweep file runs)

Train one DBNet from a preset and key=value overrides; outputs go to
<output_dir>/<run name>/ (config.yaml, checkpoints/, metrics.jsonl, status.json, logs/, wandb/).

options:
  -h, --help     show this help and exit
  --dry-run      print the resolved config (the data root resolved too) and exit
  preset=NAME    a shipped preset (hrnet_sweep presets) or a preset YAML (default hrnet_w18_small_cpu)
  key=value      any config key, e.g. models.optimizer.lr=3e-4 data.batch_size=2 trainer.max_epochs=20
                 data.root=DIR (else $HRNET_SWEEP_DATA, else ./data) wandb=true run_name=NAME
                 resume_from_checkpoint=auto|PATH.ckpt ckpt_path=PATH.ckpt

Examples:
  hrnet_sweep train preset=hrnet_w44_1280 models.optimizer.lr=0.00045 wandb=true
  hrnet_sweep train preset=hrnet_w18_small_cpu data.root=data --dry-run

Exit codes: 0 finished (or stopped by the sweep engine), 1 failed, 2 bad input, 130 stopped
by the user (SIGTERM, Ctrl-C; resume with resume_from_checkpoint=auto).
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    dry = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    cfg = load_config(args)
    warn_ignored_keys(cfg, [a.removeprefix("--").partition("=")[0].strip() for a in args])
    if dry:
        root = cfg.data.resolved_root().absolute()
        where = "data.root" if cfg.data.root else DATA_ROOT_ENV if os.environ.get(DATA_ROOT_ENV) else "./data"
        resolved = apply_overrides(cfg, {"data.root": str(root)})
        print(f"# data root {root} (from {where})" + ("" if root.is_dir() else ": no such folder"))
        print(resolved.to_yaml(), end="")
        return 0
    result = run(cfg)
    best = "n/a" if result.best is None else f"{result.best:.4f} (epoch {result.best_epoch})"
    print(
        f"run {result.state}: best {METRIC} {best}; outputs in {result.run_dir}"
        + (f"; reason: {result.reason}" if result.reason else "")
    )
    return result.exit_code
