"""DBNet loss: balanced BCE with OHEM on the probability map, masked L1 on the threshold
map (only inside the dilated text border), Dice on the approximate binary map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-6


def balanced_bce_ohem(
    logits: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, ratio: float = 3.0, min_negatives: int = 512
) -> torch.Tensor:
    """BCE over all positives and the hardest `ratio` x as many negatives.

    On a batch with no text at all, the `min_negatives` hardest negatives still count, so
    empty receipts teach the model to stay quiet rather than contributing nothing.
    """
    positive = gt * mask
    negative = (1 - gt) * mask
    n_pos = int(positive.sum().item())
    n_neg_total = int(negative.sum().item())
    n_neg = min(n_neg_total, max(int(n_pos * ratio), 0 if n_pos else min_negatives))
    loss = F.binary_cross_entropy_with_logits(logits.float(), gt, reduction="none")
    pos_loss = (loss * positive).sum()
    if n_neg > 0:
        neg_loss = torch.topk((loss * negative).flatten(), n_neg, sorted=False).values.sum()
    else:
        neg_loss = loss.new_zeros(())
    return (pos_loss + neg_loss) / (n_pos + n_neg + _EPS)


def masked_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred.float() - gt).abs() * mask).sum() / (mask.sum() + _EPS)


def dice_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pred = pred.float()
    inter = (pred * gt * mask).sum()
    union = (pred * mask).sum() + (gt * mask).sum() + _EPS
    return 1 - 2 * inter / union


class DBLoss(nn.Module):
    """Weighted sum of the three DBNet terms; returns the total and each part."""

    def __init__(
        self, prob_weight: float = 5.0, thresh_weight: float = 10.0, binary_weight: float = 1.0, ohem_ratio: float = 3.0
    ):
        super().__init__()
        self.prob_weight = prob_weight
        self.thresh_weight = thresh_weight
        self.binary_weight = binary_weight
        self.ohem_ratio = ohem_ratio

    def forward(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prob_map, prob_mask = batch["prob_map"], batch["prob_mask"]
        logits = out["prob_logits"][:, 0]
        parts = {"prob": balanced_bce_ohem(logits, prob_map, prob_mask, self.ohem_ratio)}
        total = self.prob_weight * parts["prob"]
        if "thresh" in out:
            parts["thresh"] = masked_l1(out["thresh"][:, 0], batch["thresh_map"], batch["thresh_mask"])
            parts["binary"] = dice_loss(out["binary"][:, 0], prob_map, prob_mask)
            total = total + self.thresh_weight * parts["thresh"] + self.binary_weight * parts["binary"]
        parts["loss"] = total
        return parts


def build_loss(cfg) -> DBLoss:
    lc = cfg.models.loss
    return DBLoss(lc.prob_weight, lc.thresh_weight, lc.binary_weight, lc.ohem_ratio)
