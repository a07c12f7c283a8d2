"""An expert: any timm backbone with a 2-class head, giving logits and pooled features."""

from __future__ import annotations

import timm
import torch
from torch import nn


class Expert(nn.Module):
    """timm backbone created with num_classes=2; class 1 is "fake"."""

    def __init__(self, backbone: str, pretrained: bool = False, **timm_kwargs):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=2, **timm_kwargs)

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled features) from one pass: training needs both (L_ce and L_nce)."""
        feats = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return self.backbone.get_classifier()(feats), feats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def fake_probability(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).float().softmax(dim=1)[:, 1]
