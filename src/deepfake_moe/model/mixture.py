"""The mixture of experts: its output is the plain mean of the experts' fake probabilities."""

from __future__ import annotations

import torch
from torch import nn

from deepfake_moe.model.expert import Expert


class Mixture(nn.Module):
    def __init__(self, experts: list[Expert], temperature: float = 1.0):
        super().__init__()
        if not experts:
            raise ValueError("a mixture needs at least one expert")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.experts = nn.ModuleList(experts)
        # Calibration (temperature scaling) divides every expert's logits; 1.0 is the method as published.
        self.temperature = float(temperature)

    @classmethod
    def from_backbones(cls, backbones: list[str], pretrained: bool = False, temperature: float = 1.0) -> Mixture:
        return cls([Expert(b, pretrained=pretrained) for b in backbones], temperature=temperature)

    def expert_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_experts) fake probabilities, softmax in float32 whatever the autocast."""
        return torch.stack(
            [(e(x).float() / self.temperature).softmax(dim=1)[:, 1] for e in self.experts], dim=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expert_probabilities(x).mean(dim=1)
