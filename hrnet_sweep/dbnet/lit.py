"""The LightningModule: training and validation of a DBNet.

It gets its network, loss, optimiser, scheduler and post-processing settings as arguments
(`DBNetModule.from_config` unpacks a resolved `Config` into them); the full config is
only stored in the checkpoint, so `predict` can rebuild the model without the preset.

Validation logs once per validation epoch (W&B Hyperband counts logged values, not
epochs), and puts the same values in `last_val` for `metrics.jsonl`:

* `postprocess.tune_on_val` (default): each batch's maps (content region, uint8) go to
  `dbnet.validation.ValidationSearch`, which searches the post-processing in worker
  processes while the next batches run; `val/hmean`, `val/precision`, `val/recall` are
  those of the best setting, `val/hmean_fixed` the configured setting's, `val/pp_*` the
  chosen setting, which every checkpoint then holds (`validation.CHECKPOINT_KEY`) for
  `predict`. Training waits for the search at most `postprocess.tune_budget` times that
  epoch's training time; a search cut by it, or whose worker died, is logged and gives
  the best setting it scored (never less than the configured one);
* otherwise the configured setting, in this process: `val/hmean`, `val/precision`,
  `val/recall`.

Either way the first `val_images` validation images are drawn with their detections (at
the setting logged) over the ground truth, for TensorBoard and W&B.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from ..config import OptimizerConfig, PostprocessConfig, SchedulerConfig
from ..constants import METRIC, VAL_PRECISION, VAL_RECALL

VAL_HMEAN_FIXED = "val/hmean_fixed"
VAL_PP_KEYS = {
    "thresh": "val/pp_thresh",
    "box_thresh": "val/pp_box_thresh",
    "unclip_ratio": "val/pp_unclip_ratio",
    "use_polygon": "val/pp_polygon",
}
"""Logged with tune_on_val: the chosen setting (use_polygon as 1.0 / 0.0)."""
LOSS_PARTS = ("prob", "thresh", "binary")
EPOCH_SUFFIX = "_epoch"
"""`train/loss` is logged per step, `train/loss_epoch` once per epoch (its mean); the same
for `train/loss_prob`, `train/loss_thresh`, `train/loss_binary`."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run ends as failed, never as finished."""


def build_optimizer(params, opt_cfg, weight_decay: float) -> torch.optim.Optimizer:
    if opt_cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=opt_cfg.lr, weight_decay=weight_decay, betas=opt_cfg.betas, eps=opt_cfg.eps)
    if opt_cfg.name == "adam":
        return torch.optim.Adam(params, lr=opt_cfg.lr, weight_decay=weight_decay, betas=opt_cfg.betas, eps=opt_cfg.eps)
    return torch.optim.SGD(params, lr=opt_cfg.lr, weight_decay=weight_decay, momentum=opt_cfg.momentum, nesterov=True)


def build_scheduler(optimizer, sch_cfg, lr: float, total_steps: int) -> dict | None:
    """Lightning's lr_scheduler dict for cosine (per epoch), one-cycle (per step) or plateau."""
    if sch_cfg.name == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=sch_cfg.T_max, eta_min=sch_cfg.eta_min)
        if sch_cfg.warmup_epochs:
            warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=sch_cfg.warmup_epochs)
            cosine = torch.optim.lr_scheduler.SequentialLR(
                optimizer, [warm, cosine], milestones=[sch_cfg.warmup_epochs]
            )
        return {"scheduler": cosine, "interval": "epoch"}
    if sch_cfg.name == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=max(total_steps, 2),
            pct_start=sch_cfg.pct_start,
            div_factor=sch_cfg.div_factor,
            final_div_factor=sch_cfg.final_div_factor,
        )
        return {"scheduler": sched, "interval": "step"}
    if sch_cfg.name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=sch_cfg.factor, patience=sch_cfg.patience
        )
        return {"scheduler": sched, "interval": "epoch", "monitor": METRIC}
    return None


class DBNetModule(pl.LightningModule):
    """Training and validation of a DBNet.

    Args:
        model: the network (`hrnet_sweep.dbnet.model.DBNet`).
        loss: the loss module (`hrnet_sweep.dbnet.loss.DBLoss`).
        optimizer, scheduler: `models.optimizer`, `models.scheduler`.
        postprocess: `models.postprocess` (the fixed setting, and whether to tune on
            validation, in how many worker processes).
        batch_size, scale_wd_with_batch: `data.batch_size` and `data.scale_wd_with_batch`
            (weight_decay *= sqrt(batch_size / reference) when the reference is set).
        val_images: validation images drawn with their detections per epoch (`logging.val_images`).
        channels_last: use the channels_last memory format.
        config: the resolved config as a dict, stored in the checkpoint for `predict`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.Module,
        *,
        optimizer: OptimizerConfig,
        scheduler: SchedulerConfig,
        postprocess: PostprocessConfig,
        batch_size: int,
        scale_wd_with_batch: int | None = 0,
        val_images: int = 0,
        channels_last: bool = False,
        config: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_cfg, self.scheduler_cfg, self.pp = optimizer, scheduler, postprocess
        self.batch_size, self.scale_wd_with_batch = batch_size, scale_wd_with_batch
        self.val_images = val_images
        self.channels_last = channels_last
        self.tune_on_val = postprocess.tune_on_val  # read at each validation epoch's start
        if config is not None:
            # in the checkpoint only: the loggers get the config from pipeline.loggers, once
            self.save_hyperparameters({"config": config}, logger=False)
        self.last_val: dict[str, float] = {}
        self.tuned: dict[str, Any] | None = None  # the setting chosen at the last validation epoch
        self._search = None
        self._tuning = False
        self._val_preds: dict[str, list] = {}
        self._val_gts: dict[str, list] = {}
        self._shown: list[tuple] = []
        self._train_started: float | None = None  # this training epoch's start (perf_counter)
        self._train_s = 0.0  # its training seconds before validation: the search's budget
        self.val_stats: dict[str, float] = {}  # seconds of the last validation's post-processing (benchmarks)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, model: torch.nn.Module, loss: torch.nn.Module, cfg, **overrides) -> DBNetModule:
        """The module for a resolved `Config`: its sub-configs and numbers, and the config
        itself for the checkpoint; `overrides` replace any of the keyword arguments."""
        kwargs = dict(
            optimizer=cfg.models.optimizer,
            scheduler=cfg.models.scheduler,
            postprocess=cfg.models.postprocess,
            batch_size=cfg.data.batch_size,
            scale_wd_with_batch=cfg.data.scale_wd_with_batch,
            val_images=cfg.logging.val_images,
            channels_last=cfg.trainer.channels_last,
            config=cfg.to_dict(),
        )
        return cls(model, loss, **{**kwargs, **overrides})

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Batches arrive compact (uint8 image and masks, see `data.DetectionDataset`):
        normalise and widen them here, on the training device."""
        from .data import MAP_KEYS, to_network_input

        if batch["image"].dtype == torch.uint8:
            batch["image"] = to_network_input(batch["image"], self.channels_last)
        for key in MAP_KEYS:
            if key in batch:
                batch[key] = batch[key].float()
        return batch

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # ------------------------------------------------------------------ train

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        parts = self.loss(out, batch)
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {self.current_epoch} step {self.global_step} "
                f"(parts: {', '.join(f'{k}={v.item():.4g}' for k, v in parts.items())}); "
                f"lower models.optimizer.lr={self.optimizer_cfg.lr} or use trainer.precision=32"
            )
        bs = batch["image"].shape[0]
        # Each loss twice: per step (every trainer.log_every_n_steps) and as the epoch's mean
        # (`_epoch`, weighted by batch size), which the end-of-epoch console line shows.
        for name, value in (("train/loss", loss), *((f"train/loss_{k}", parts[k]) for k in LOSS_PARTS if k in parts)):
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=name == "train/loss", batch_size=bs)
            self.log(f"{name}{EPOCH_SUFFIX}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation

    def _searcher(self):
        from .validation import ValidationSearch

        if self._search is None:
            self._search = ValidationSearch(self.pp, workers=self.pp.tune_workers)
        return self._search

    def on_fit_start(self) -> None:
        if self.tune_on_val:
            self._searcher().start()  # the workers start up while the first epoch trains

    def teardown(self, stage: str) -> None:
        if self._search is not None:
            self._search.close()

    def on_train_epoch_start(self) -> None:
        self._train_started = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        if self._train_started is not None:
            self._train_s = time.perf_counter() - self._train_started
        self._val_preds, self._val_gts, self._shown = {}, {}, []
        self.val_stats = {"postprocess_s": 0.0}
        self._tuning = self.tune_on_val and not self.trainer.sanity_checking
        if self._tuning:
            self._searcher().begin_epoch()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from .postprocess import detect, to_uint8

        out = self(batch["image"])
        probs = torch.sigmoid(out["prob_logits"].float())[:, 0].cpu().numpy()
        start = time.process_time()
        items = []
        for i, name in enumerate(batch["name"]):
            image_size = tuple(int(v) for v in batch["image_size"][i])
            ch, cw = (int(v) for v in batch["content_size"][i])
            gt = batch["polygons"][i]
            self._val_gts[name] = gt
            prob = to_uint8(probs[i, :ch, :cw])  # what prediction post-processes too
            if self._tuning:
                items.append((prob, image_size, gt))
            else:
                self._val_preds[name] = detect(prob, self.pp, image_size=image_size)[0]
            if len(self._shown) < self.val_images:
                self._shown.append((name, _input_image(batch["image"][i], ch, cw), prob, image_size, gt))
        if items:
            self._searcher().add(items)
        self.val_stats["postprocess_s"] += time.process_time() - start

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_gts:
            return
        start = time.process_time()
        if self._tuning:
            result = self._searcher().finish(train_s=self._train_s)
            self.val_stats.update(self._searcher().stats)
            best = result.best
            values = {METRIC: best["hmean"], VAL_PRECISION: best["precision"], VAL_RECALL: best["recall"]}
            extra = {VAL_HMEAN_FIXED: result.fixed["hmean"], **{key: float(best[k]) for k, key in VAL_PP_KEYS.items()}}
            self.tuned = {**{k: best[k] for k in VAL_PP_KEYS}, "hmean": best["hmean"], "epoch": self.current_epoch}
            pp = result.postprocess(self.pp)
        else:
            from ..metric import evaluate

            res = evaluate(self._val_gts, self._val_preds)
            values, extra, pp = {METRIC: res.hmean, VAL_PRECISION: res.precision, VAL_RECALL: res.recall}, {}, self.pp
            self.tuned = None
        self.val_stats["postprocess_s"] += time.process_time() - start
        self.last_val = {k: float(v) for k, v in {**values, **extra}.items()}
        # Logged once per validation epoch: W&B Hyperband counts logged values, not epochs.
        self.log_dict(values, prog_bar=True)
        if extra:
            self.log_dict(extra)
        self._log_images(pp)

    def _log_images(self, pp: PostprocessConfig) -> None:
        """The kept validation images with their detections at `pp`, to TensorBoard / W&B."""
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        from .postprocess import detect
        from .validation import draw_detections

        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        if not self._shown or not loggers:
            return
        # the step Lightning logs this validation's scalars at (global_step is one ahead of it
        # at the end of an epoch), so the images sit beside their val/* values
        step = getattr(self.trainer.fit_loop.epoch_loop, "_batches_that_stepped", self.global_step)
        drawn = []
        for name, image, prob, image_size, gt in self._shown:
            polys, _ = detect(prob, pp, image_size=image_size)
            to_input = np.array([prob.shape[1] / image_size[1], prob.shape[0] / image_size[0]])
            drawn.append((name, draw_detections(image, [g * to_input for g in gt], [p * to_input for p in polys])))
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, img in drawn:
                    logger.experiment.add_image(f"val/predictions/{name}", img, step, dataformats="HWC")
            else:
                import wandb

                logger.experiment.log(
                    {
                        "val/predictions": [wandb.Image(img, caption=name) for name, img in drawn],
                        "trainer/global_step": step,
                    }
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from .validation import CHECKPOINT_KEY

        if self.tuned:
            checkpoint[CHECKPOINT_KEY] = dict(self.tuned)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from .validation import CHECKPOINT_KEY

        self.tuned = checkpoint.get(CHECKPOINT_KEY)

    # ------------------------------------------------------------------ optimiser

    def configure_optimizers(self):
        wd = self.optimizer_cfg.weight_decay
        ref = self.scale_wd_with_batch
        if ref:
            wd = wd * math.sqrt(self.batch_size / ref)
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on norms and biases
        optimizer = build_optimizer(
            [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
            self.optimizer_cfg,
            wd,
        )
        sched = build_scheduler(
            optimizer, self.scheduler_cfg, self.optimizer_cfg.lr, int(self.trainer.estimated_stepping_batches)
        )
        if sched is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": sched}


def _input_image(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """The content region of a normalised (3, H, W) network input as RGB uint8 (H, W, 3)."""
    from .data import IMAGENET_MEAN, IMAGENET_STD

    x = x[:, :height, :width].detach().float().cpu()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    return (x * std + mean).clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
