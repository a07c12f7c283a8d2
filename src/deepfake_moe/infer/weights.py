"""Which weights to use: our checkpoint folder, a published weight folder, or the built-in default."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from deepfake_moe.infer.export import OnnxMixture
from deepfake_moe.model.checkpoint import CONFIG_FILE, CheckpointError, ModelConfig, load_checkpoint
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.model.published import is_published_folder, load_published

DEFAULT_MODEL_ENV = "DEEPFAKE_MOE_DEFAULT_MODEL"


def default_model_dir() -> Path:
    """The model shipped inside the package (overridable with $DEEPFAKE_MOE_DEFAULT_MODEL)."""
    override = os.environ.get(DEFAULT_MODEL_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("deepfake_moe") / "weights" / "default"))


def load_weights(spec: str | os.PathLike | None = None) -> tuple[Mixture | OnnxMixture, ModelConfig]:
    """Our checkpoint (folder or model.yaml), an exported .onnx file, a published folder, or None: the default."""
    if spec is None:
        folder = default_model_dir()
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"no built-in default model is installed (looked in {folder}). Pass --weights with one of our "
                "checkpoint folders (model.yaml + model.safetensors, e.g. from `deepfake-moe train`) or the "
                "winners' published folder (weight.pth + ema.state)"
            )
        return load_checkpoint(folder)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"weights {spec}: no such file or folder")
    if path.is_dir() and is_published_folder(path):
        return load_published(path)
    if path.suffix.lower() == ".onnx":
        runner = OnnxMixture.load(path)
        return runner, runner.config
    return load_checkpoint(path)
