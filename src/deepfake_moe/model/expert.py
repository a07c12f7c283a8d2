"""An expert: a backbone with a 2-class head, giving logits and pooled features.

The backbone is any timm model or one of the project's own (model/backbones.py). An expert looks
at the image through its own view (data/transforms.py: PreprocessConfig): a batch is (B, 3, S, S),
or (B, T, 3, S, S) when the view takes T crops of each image; then the expert's fake probability
for an image is the mean over its crops.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfake_moe.model.backbones import create_backbone


class Expert(nn.Module):
    """Backbone created with num_classes=2; class 1 is "fake"."""

    def __init__(self, backbone: str, pretrained: bool = False, **timm_kwargs):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained, **timm_kwargs)

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

    def crop_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2) logits for a (B, 3, S, S) batch; (B, T, 2) for T crops per image (B, T, 3, S, S)."""
        if x.dim() == 4:
            return self.forward(x)
        crops = x.shape[1]
        return self.forward(x.reshape(-1, *x.shape[2:])).reshape(-1, crops, 2)

    def probability_and_features(self, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) P(fake) as `fake_probability` gives it and (B, D) pooled features (the mean over crops)."""
        crops = x.shape[1] if x.dim() == 5 else 1
        logits, feats = self.forward_with_features(x.reshape(-1, *x.shape[-3:]))
        p = (logits.float() / temperature).softmax(dim=-1)[:, 1].reshape(-1, crops).mean(dim=1)
        return p, feats.float().reshape(-1, crops, feats.shape[-1]).mean(dim=1)

    def fake_probability(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(B,) P(fake), softmax in float32 whatever the autocast; the mean over crops for a 5-D batch."""
        p = (self.crop_logits(x).float() / temperature).softmax(dim=-1)[..., 1]
        return p if p.dim() == 1 else p.mean(dim=1)
