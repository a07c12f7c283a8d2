"""One expert as the model sees it: the description a checkpoint's model.yaml and a training config share.

`ExpertSpec` holds what building and running the expert needs (a checkpoint stores a list of them);
the training config's `ExpertConfig` extends it with what only training needs (initial weights, which
split, frozen layers) and hands the shared part to the checkpoint with `model_spec()`. A new per-expert field
the model needs (input size, preprocessing, expert type) goes here, so both sides get it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deepfake_moe.data.transforms import PreprocessConfig


@dataclass
class ExpertSpec:
    backbone: str
    """The expert's backbone: a timm model name or one of model/backbones.py (e.g. `npr_resnet50_l2`)."""
    note: str = ""
    """Free text kept with the checkpoint (e.g. the split it was trained on and its held-out AUC)."""
    preprocess: PreprocessConfig | None = None
    """This expert's own view of the image (input size; resized, or native-resolution crops); None: the
    model's `preprocess` (in training: data.input_size / data.preprocess_mode, native crops for a
    backbone that needs them)."""

    def model_spec(self, **changes) -> ExpertSpec:
        """The model-facing fields only (what a checkpoint stores), with `changes` applied."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ExpertSpec)}
        return ExpertSpec(**{**shared, **changes})
