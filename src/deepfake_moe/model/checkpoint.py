"""Our checkpoint format: `model.safetensors` (weights) + `model.yaml` (everything else).

The YAML fully describes the mixture: backbones, preprocessing, threshold, calibration, so a
checkpoint folder is all `predict` needs. EMA weights are already folded in when saved. A model
whose uncertainty statistics were fitted also holds `uncertainty.safetensors` (a few tens of KB per
expert; model/uncertainty.py), described by the YAML's `uncertainty:` section.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deepfake_moe.config import from_dict, load_yaml, save_yaml
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.errors import InputError
from deepfake_moe.io import atomic_path
from deepfake_moe.model.groups import ExpertGroup, check_groups
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.model.spec import ExpertSpec
from deepfake_moe.model.uncertainty import STATS_FILE, UncertaintyConfig, UncertaintyError, load_stats, save_stats

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.yaml"
FORMAT_VERSION = 1


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete or does not match its description."""


@dataclass
class ModelConfig:
    experts: list[ExpertSpec]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    name: str = "deepfake-moe"
    threshold: float = 0.5
    # "uncertain" when the uncertainty reaches it; None: never (`calibrate` fits it on validation data)
    uncertainty_threshold: float | None = None
    temperature: float = 1.0
    image_backend: str = "pil"
    face_crops: bool = False
    """Trained on face crops (`prepare`/`corpus`/`manifest --faces`): `predict` then scores face crops by default."""
    format_version: int = FORMAT_VERSION
    info: dict[str, Any] = field(default_factory=dict)
    uncertainty: UncertaintyConfig | None = None  # set once feature statistics are fitted
    groups: list[ExpertGroup] | None = None
    """Experts of different kinds (model/groups.py): P(fake) is the most fake group's; None: the mean of all."""

    def __post_init__(self):
        if not self.experts:
            raise ValueError("a model needs at least one expert")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.uncertainty_threshold is not None and not 0.0 <= self.uncertainty_threshold <= 1.0:
            raise ValueError(f"uncertainty_threshold must be in [0, 1], got {self.uncertainty_threshold}")
        if self.groups is not None:
            check_groups(self.groups, len(self.experts))
        if self.image_backend not in ("pil", "opencv"):
            raise ValueError(f"image_backend must be 'pil' or 'opencv', got {self.image_backend!r}")

    def scores_faces(self, faces: bool | None) -> bool:
        """Whether inputs are scored through their face crops: as asked, else as the model was trained."""
        return self.face_crops if faces is None else faces

    @property
    def backbones(self) -> list[str]:
        return [e.backbone for e in self.experts]

    def views(self) -> tuple[list[PreprocessConfig], list[int]]:
        """The distinct views (an image is preprocessed once per view) and the view index of each expert."""
        unique: list[PreprocessConfig] = []
        index = []
        for spec in self.experts:
            view = spec.preprocess or self.preprocess
            if view not in unique:
                unique.append(view)
            index.append(unique.index(view))
        return unique, index


def build_model(config: ModelConfig, pretrained: bool = False) -> Mixture:
    return Mixture.from_backbones(config.backbones, pretrained=pretrained, temperature=config.temperature,
                                  view_index=config.views()[1], groups=config.groups)


def resolve(path: str | os.PathLike) -> Path:
    """Accept the checkpoint folder or its model.yaml; return the folder."""
    p = Path(path)
    if p.is_file() and p.name == CONFIG_FILE:
        p = p.parent
    if not p.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (p / name).is_file():
            raise CheckpointError(f"checkpoint {p} lacks {name}")
    return p


def save_checkpoint(
    model: Mixture, config: ModelConfig, out_dir: str | os.PathLike, weights_dtype: torch.dtype | None = None
) -> Path:
    """Write the folder; `weights_dtype=torch.float16` halves the file (floats are upcast again at load)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(model.experts) != len(config.experts):
        raise CheckpointError(f"model has {len(model.experts)} experts, config describes {len(config.experts)}")
    if model.view_index != config.views()[1]:
        raise CheckpointError(f"model reads views {model.view_index}, config describes {config.views()[1]}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if weights_dtype is not None:
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "deepfake-moe", "version": str(FORMAT_VERSION)})
    save_uncertainty(model, config, out)
    return out


def save_uncertainty(model: Mixture, config: ModelConfig, folder: str | os.PathLike) -> None:
    """Write the feature statistics (or remove stale ones) and model.yaml; the weights file is left alone."""
    folder = Path(folder)
    if (model.distances is None) != (config.uncertainty is None):
        raise CheckpointError("the model's feature statistics and its config's `uncertainty` section disagree")
    if model.distances is not None:
        save_stats(list(model.distances), folder)
    elif (folder / STATS_FILE).is_file():
        (folder / STATS_FILE).unlink()
    save_yaml(config, folder / CONFIG_FILE)


def load_config(path: str | os.PathLike) -> ModelConfig:
    return load_yaml(ModelConfig, resolve(path) / CONFIG_FILE)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Mixture, ModelConfig]:
    folder = resolve(path)
    config = load_config(folder)
    if config.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} has format version {config.format_version}; this deepfake-moe reads up to {FORMAT_VERSION}"
        )
    model = build_model(config)
    state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{folder}: weights do not match the described backbones: {e}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the described backbones "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    if config.uncertainty is not None:
        try:
            heads = load_stats(folder, len(config.experts))
        except UncertaintyError as e:
            raise CheckpointError(str(e)) from None
        bad = [i for i, (h, e) in enumerate(zip(heads, model.experts)) if h.dim != e.num_features]
        if bad:
            raise CheckpointError(f"{folder}: {STATS_FILE} does not fit expert(s) {bad} (feature sizes differ)")
        model.attach_distances(heads)
    return model.to(device).eval(), config


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    return from_dict(ModelConfig, data)
