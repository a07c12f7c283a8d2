"""The mixture of experts: its output is the plain mean of the experts' fake probabilities (or, for
experts of different kinds in groups, the most fake group's: model/groups.py).

Each expert sees the image through its own view (input size, resize or native crops): the
mixture takes one preprocessed batch per distinct view, and `view_index[i]` says which one
expert i reads. A mixture whose experts share one view takes a single batch, as before.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfake_moe.model.expert import Expert
from deepfake_moe.model.groups import ExpertGroup, check_groups, join


class Mixture(nn.Module):
    def __init__(self, experts: list[Expert], temperature: float = 1.0, view_index: list[int] | None = None,
                 groups: list[ExpertGroup] | None = None):
        super().__init__()
        if not experts:
            raise ValueError("a mixture needs at least one expert")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        view_index = [0] * len(experts) if view_index is None else [int(v) for v in view_index]
        if len(view_index) != len(experts) or sorted(set(view_index)) != list(range(max(view_index) + 1)):
            raise ValueError(f"view_index {view_index} must give each of the {len(experts)} experts a view 0..n-1")
        self.experts = nn.ModuleList(experts)
        self.view_index = view_index
        if groups is not None:
            check_groups(groups, len(experts))
        self.groups = groups
        # Calibration (temperature scaling) divides every expert's logits; 1.0 is the method as published.
        self.temperature = float(temperature)
        # Fitted feature statistics for the distance signal (model/uncertainty.py); None: not fitted.
        self.distances: nn.ModuleList | None = None

    @classmethod
    def from_backbones(
        cls, backbones: list[str], pretrained: bool = False, temperature: float = 1.0, view_index: list[int] | None = None,
        groups: list[ExpertGroup] | None = None,
    ) -> Mixture:
        return cls([Expert(b, pretrained=pretrained) for b in backbones], temperature=temperature, view_index=view_index,
                   groups=groups)

    @property
    def n_views(self) -> int:
        return max(self.view_index) + 1

    def expert_probabilities(self, *views: torch.Tensor) -> torch.Tensor:
        """(batch, n_experts) fake probabilities, softmax in float32 whatever the autocast."""
        if len(views) != self.n_views:
            raise ValueError(f"this mixture reads {self.n_views} view(s) of each image, got {len(views)}")
        return torch.stack(
            [e.fake_probability(views[v], self.temperature) for e, v in zip(self.experts, self.view_index)], dim=1
        )

    def attach_distances(self, heads: list[nn.Module] | None) -> None:
        """Attach one fitted FeatureDistance per expert (or None to drop them)."""
        if heads is not None and len(heads) != len(self.experts):
            raise ValueError(f"{len(heads)} distance statistics for {len(self.experts)} experts")
        self.distances = None if heads is None else nn.ModuleList(heads)

    def expert_outputs(self, *views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, n_experts) fake probabilities and (batch, n_experts, 2) squared distances of the
        experts' pooled features (mean over an expert's crops) to the training reals and fakes,
        from one pass of each expert."""
        if self.distances is None:
            raise ValueError("this model has no fitted feature statistics (deepfake-moe fit-uncertainty)")
        if len(views) != self.n_views:
            raise ValueError(f"this mixture reads {self.n_views} view(s) of each image, got {len(views)}")
        probs, dists = [], []
        for expert, v, head in zip(self.experts, self.view_index, self.distances):
            p, feats = expert.probability_and_features(views[v], self.temperature)
            probs.append(p)
            dists.append(head(feats))
        return torch.stack(probs, dim=1), torch.stack(dists, dim=1)

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        return join(self.expert_probabilities(*views), self.groups)
