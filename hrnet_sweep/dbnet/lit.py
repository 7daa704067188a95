"""The LightningModule: gets its network, loss and optimiser settings as arguments, and
logs the validation metric exactly once per validation epoch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from ..constants import METRIC, VAL_PRECISION, VAL_RECALL


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
            cosine = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[sch_cfg.warmup_epochs])
        return {"scheduler": cosine, "interval": "epoch"}
    if sch_cfg.name == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(total_steps, 2), pct_start=sch_cfg.pct_start,
            div_factor=sch_cfg.div_factor, final_div_factor=sch_cfg.final_div_factor,
        )
        return {"scheduler": sched, "interval": "step"}
    if sch_cfg.name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=sch_cfg.factor, patience=sch_cfg.patience)
        return {"scheduler": sched, "interval": "epoch", "monitor": METRIC}
    return None


class DBNetModule(pl.LightningModule):
    """Training and validation of a DBNet.

    Args:
        model: the network (`hrnet_sweep.dbnet.model.DBNet`).
        loss: the loss module (`hrnet_sweep.dbnet.loss.DBLoss`).
        cfg: the resolved `Config`; stored in the checkpoint so `predict` can rebuild the
            model without the preset.
        channels_last: use the channels_last memory format.
        keep_val_maps: keep each validation image's probability map (uint8, original
            image size) of the last validation epoch, for post-processing tuning.
    """

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module, cfg, *, channels_last: bool = False,
                 keep_val_maps: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.cfg = cfg
        self.channels_last = channels_last
        self.keep_val_maps = keep_val_maps
        self.save_hyperparameters({"config": cfg.to_dict()})
        self._val_preds: dict[str, list] = {}
        self._val_gts: dict[str, list] = {}
        self.val_maps: dict[str, np.ndarray] = {}
        self.last_val: dict[str, float] = {}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

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
                f"lower models.optimizer.lr={self.cfg.models.optimizer.lr} or use trainer.precision=32"
            )
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k in ("prob", "thresh", "binary"):
            if k in parts:
                self.log(f"train/loss_{k}", parts[k], batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self) -> None:
        self._val_preds, self._val_gts = {}, {}
        if self.keep_val_maps:
            self.val_maps = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from .postprocess import postprocess, resize_prob_to_image

        out = self(batch["image"])
        probs = torch.sigmoid(out["prob_logits"].float())[:, 0].cpu().numpy()
        pp = self.cfg.models.postprocess
        for i, name in enumerate(batch["name"]):
            image_size = tuple(batch["image_size"][i])
            content_size = tuple(batch["content_size"][i])
            polys, _ = postprocess(
                probs[i], thresh=pp.thresh, box_thresh=pp.box_thresh, unclip_ratio=pp.unclip_ratio,
                use_polygon=pp.use_polygon, max_candidates=pp.max_candidates, min_size=pp.min_size,
                content_size=content_size, image_size=image_size,
            )
            self._val_preds[name] = polys
            self._val_gts[name] = batch["polygons"][i]
            if self.keep_val_maps:
                full = resize_prob_to_image(probs[i], content_size, image_size)
                self.val_maps[name] = np.round(full * 255).astype(np.uint8)

    def on_validation_epoch_end(self) -> None:
        from ..metric import evaluate

        if self.trainer.sanity_checking or not self._val_gts:
            return
        res = evaluate(self._val_gts, self._val_preds)
        values = {METRIC: res.hmean, VAL_PRECISION: res.precision, VAL_RECALL: res.recall}
        self.last_val = {k: float(v) for k, v in values.items()}
        # Logged once per validation epoch: W&B Hyperband counts logged values, not epochs.
        self.log_dict(values, prog_bar=True)

    # ------------------------------------------------------------------ optimiser

    def configure_optimizers(self):
        cfg = self.cfg
        wd = cfg.models.optimizer.weight_decay
        ref = cfg.data.scale_wd_with_batch
        if ref:
            wd = wd * math.sqrt(cfg.data.batch_size / ref)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on norms and biases
        optimizer = build_optimizer(
            [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
            cfg.models.optimizer, wd,
        )
        sched = build_scheduler(optimizer, cfg.models.scheduler, cfg.models.optimizer.lr,
                                int(self.trainer.estimated_stepping_batches))
        if sched is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": sched}
