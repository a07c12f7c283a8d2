"""One expert as the model sees it: the description a checkpoint's model.yaml and a training config share.

`ExpertSpec` holds what building and running the expert needs (a checkpoint stores a list of them);
the training config's `ExpertConfig` extends it with what only training needs (initial weights, which
split, frozen layers) and hands the shared part to the checkpoint with `model_spec()`. A new per-expert field
the model needs (input size, preprocessing, expert type) goes here, so both sides get it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class ExpertSpec:
    backbone: str
    """timm model name of the expert's backbone."""
    note: str = ""
    """Free text kept with the checkpoint (e.g. the split it was trained on and its held-out AUC)."""

    def model_spec(self, **changes) -> ExpertSpec:
        """The model-facing fields only (what a checkpoint stores), with `changes` applied."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ExpertSpec)}
        return ExpertSpec(**{**shared, **changes})
