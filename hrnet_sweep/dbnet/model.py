"""DBNet: a timm backbone, an FPN decoder (optionally DBNet++ adaptive scale fusion) and
the DB head with probability, threshold and approximate binary maps.

Nothing here hard-codes a channel count: the backbone's `feature_info` gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

STRIDES = (4, 8, 16, 32)


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def create_backbone(
    name: str, pretrained: bool | str, out_indices: Sequence[int] | None = None
) -> tuple[nn.Module, list[int], list[int]]:
    """A timm `features_only` backbone and the indices of its stride 4, 8, 16, 32 features.

    Args:
        name: any timm model that supports `features_only`.
        pretrained: True (timm hub), False, or the path of a local weights file for
            machines without internet.
        out_indices: feature indices to use; default: the last feature at each of the
            strides 4, 8, 16, 32 (for HRNet that is (1, 2, 3, 4)).

    Returns:
        (backbone, selected feature positions, their channels).
    """
    kwargs: dict = {"features_only": True}
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"models.pretrained={pretrained!r}: weights file not found")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        kwargs["pretrained"] = bool(pretrained)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    try:
        backbone = timm.create_model(name, **kwargs)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(f"models.name={name!r}: timm cannot build it with features_only: {err}") from None
    reductions = backbone.feature_info.reduction()
    channels = backbone.feature_info.channels()
    if out_indices is not None:
        if len(reductions) != 4:
            raise ConfigError(
                f"models.out_indices={list(out_indices)}: DBNet needs 4 feature levels, got {len(reductions)}"
            )
        return backbone, list(range(4)), list(channels)
    picked = []
    for stride in STRIDES:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ConfigError(
                f"models.name={name!r}: no feature at stride {stride} (strides {reductions}); set models.out_indices"
            )
        picked.append(matches[-1])
    return backbone, picked, [channels[i] for i in picked]


class FPNDecoder(nn.Module):
    """DBNet's FPN: lateral 1x1, top-down sum, 3x3 smoothing to C/4 each, upsample, concat."""

    def __init__(self, in_channels: Sequence[int], inner: int = 256, asf: bool = False):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False)) for _ in in_channels
        )
        self.asf = AdaptiveScaleFusion(inner, len(in_channels)) if asf else None
        self.out_channels = inner

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):  # top-down
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        size = lat[0].shape[-2:]
        outs = [
            F.interpolate(s(x), size=size, mode="nearest") if i else s(x)
            for i, (s, x) in enumerate(zip(self.smooth, lat))
        ]
        fused = torch.cat(outs[::-1], dim=1)  # deepest first, as in DBNet
        if self.asf is not None:
            fused = self.asf(fused, n=len(outs))
        return fused


class AdaptiveScaleFusion(nn.Module):
    """DBNet++ adaptive scale fusion: spatial attention over the concatenated scales
    produces one weight map per scale, which rescales that scale's channels."""

    def __init__(self, channels: int, num_scales: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 4, 3, padding=1)
        self.spatial = nn.Sequential(
            nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(1, 1, 1), nn.Sigmoid()
        )
        self.scale_weights = nn.Sequential(nn.Conv2d(channels // 4, num_scales, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        s = self.conv(x)
        attn = self.spatial(s.mean(dim=1, keepdim=True)) + s  # broadcast spatial attention
        w = self.scale_weights(attn)  # (N, n, H, W)
        chunks = x.chunk(n, dim=1)
        return torch.cat([c * w[:, i : i + 1] for i, c in enumerate(chunks)], dim=1)


def _head(cin: int) -> nn.Sequential:
    """3x3 conv, then two stride-2 transposed convs back to input resolution."""
    mid = cin // 4
    return nn.Sequential(
        _conv_bn_relu(cin, mid),
        nn.ConvTranspose2d(mid, mid, 2, stride=2, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, 1, 2, stride=2),
    )


class DBNet(nn.Module):
    """DBNet with a timm backbone.

    `forward` returns, at input resolution: `prob_logits` always; in training also
    `thresh` (sigmoid) and `binary` (approximate binarization 1 / (1 + e^{-k(P - T)})).
    """

    def __init__(
        self,
        backbone: str = "hrnet_w44",
        *,
        pretrained: bool | str = False,
        out_indices: Sequence[int] | None = None,
        decoder: str = "fpn",
        inner_channels: int = 256,
        k: float = 50.0,
    ):
        super().__init__()
        self.backbone, self.feature_pos, channels = create_backbone(backbone, pretrained, out_indices)
        self.decoder = FPNDecoder(channels, inner_channels, asf=(decoder == "asf"))
        self.prob_head = _head(inner_channels)
        self.thresh_head = _head(inner_channels)
        self.k = k
        # Bias the probability logits towards background so early training is stable.
        nn.init.constant_(self.prob_head[-1].bias, -2.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        feats = [feats[i] for i in self.feature_pos]
        fused = self.decoder(feats)
        prob_logits = self.prob_head(fused)
        out = {"prob_logits": prob_logits}
        if self.training:
            thresh = torch.sigmoid(self.thresh_head(fused))
            out["thresh"] = thresh
            out["binary"] = torch.sigmoid(self.k * (torch.sigmoid(prob_logits) - thresh))
        return out

    @torch.no_grad()
    def predict_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) probability maps in float32."""
        return torch.sigmoid(self(x)["prob_logits"].float())[:, 0]


def build_model(cfg) -> DBNet:
    """DBNet from `cfg.models` (a `hrnet_sweep.config.Config`)."""
    m = cfg.models
    return DBNet(
        m.name,
        pretrained=m.pretrained,
        out_indices=m.out_indices,
        decoder=m.decoder.name,
        inner_channels=m.decoder.inner_channels,
        k=m.decoder.k,
    )
