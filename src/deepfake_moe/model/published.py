"""Import of the winners' published weights (`weight.pth` + `ema.state`) into our mixture.

weight.pth: `nn.ModuleList.state_dict()` of the experts, keys `<i>.baseline_extractor.<timm key>`.
ema.state: `{i: {"decay", "num_updates", "shadow_params": [...], "collected_params"}}`, shadow
parameters in `expert.parameters()` order. The published script swapped the shadow parameters in on
every forward pass; we fold them in once: parameters from EMA, buffers (batch-norm statistics) from
weight.pth. Files are loaded with `weights_only=True` (they are plain tensors, lists and numbers).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from deepfake_moe.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from deepfake_moe.model.checkpoint import CheckpointError, ExpertSpec, ModelConfig, build_model
from deepfake_moe.model.mixture import Mixture

WEIGHT_FILE = "weight.pth"
EMA_FILE = "ema.state"
PUBLISHED_BACKBONES = (
    "convnextv2_tiny.fcmae_ft_in1k",
    "convnextv2_tiny.fcmae_ft_in1k",
    "tf_efficientnet_b4.ns_jft_in1k",
    "tf_efficientnet_b4.ns_jft_in1k",
    "tf_efficientnet_b5.ns_jft_in1k",
    "tf_efficientnet_b5.ns_jft_in1k",
    "tf_efficientnet_b6.ns_jft_in1k",
)
_KEY = re.compile(r"^(\d+)\.baseline_extractor\.(.+)$")


def is_published_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / WEIGHT_FILE).is_file()


def published_config(backbones: tuple[str, ...] | list[str] = PUBLISHED_BACKBONES, input_size: int = 512) -> ModelConfig:
    return ModelConfig(
        experts=[ExpertSpec(b, note="published MFF_MoE expert") for b in backbones],
        preprocess=PreprocessConfig(input_size=input_size, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), mode="published"),
        name="MFF_MoE (JTGroup, multi-ffdi 2024, 1st place)",
        image_backend="opencv",
        info={"source": "published weight.pth + ema.state", "licence": "see the winners' release"},
    )


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or hostile file is a user error, explained
        raise CheckpointError(f"cannot load {path} as plain tensors (weights_only=True): {e}") from None


def load_published(
    folder: str | os.PathLike,
    backbones: tuple[str, ...] | list[str] = PUBLISHED_BACKBONES,
    use_ema: bool = True,
    input_size: int = 512,
) -> tuple[Mixture, ModelConfig]:
    """Build the experts and fill them from a published weight folder; returns (model, config).

    `input_size` other than the published 512 px is for tests and benchmarks with tiny models.
    """
    folder = Path(folder)
    weight_path = folder / WEIGHT_FILE
    if not weight_path.is_file():
        raise CheckpointError(f"{folder} holds no {WEIGHT_FILE}: not a published weight folder")
    config = published_config(backbones, input_size)
    model = build_model(config)
    state = _load(weight_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{weight_path}: expected a state dict, got {type(state).__name__}")

    per_expert: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            raise CheckpointError(f"{weight_path}: unexpected key {key!r} (expected '<i>.baseline_extractor.<name>')")
        per_expert.setdefault(int(m.group(1)), {})[m.group(2)] = value
    if sorted(per_expert) != list(range(len(model.experts))):
        raise CheckpointError(
            f"{weight_path} holds experts {sorted(per_expert)}; the model has {len(model.experts)} ({list(backbones)})"
        )
    for i, expert in enumerate(model.experts):
        try:
            missing, unexpected = expert.backbone.load_state_dict(per_expert[i], strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f"{weight_path}: expert {i} ({backbones[i]}) does not match: {e}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{weight_path}: expert {i} ({backbones[i]}) does not match: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )

    ema_path = folder / EMA_FILE
    if use_ema and ema_path.is_file():
        _fold_ema(model, _load(ema_path), ema_path)
        config.info["ema"] = "folded from ema.state"
    else:
        config.info["ema"] = "not used" if not use_ema else "ema.state absent: raw weights"
    return model.eval(), config


def _fold_ema(model: Mixture, ema: dict, path: Path) -> None:
    if not isinstance(ema, dict):
        raise CheckpointError(f"{path}: expected a dict of per-expert EMA states")
    for i, expert in enumerate(model.experts):
        entry = ema.get(i, ema.get(str(i)))
        if entry is None:
            raise CheckpointError(f"{path}: no EMA state for expert {i}")
        shadow = entry["shadow_params"]
        params = list(expert.parameters())
        if len(shadow) != len(params):
            raise CheckpointError(f"{path}: expert {i} has {len(shadow)} shadow parameters, the model {len(params)}")
        with torch.no_grad():
            for j, (p, s) in enumerate(zip(params, shadow)):
                if p.shape != s.shape:
                    raise CheckpointError(f"{path}: expert {i} parameter {j}: shape {tuple(s.shape)} != {tuple(p.shape)}")
                p.copy_(s.to(dtype=p.dtype))
