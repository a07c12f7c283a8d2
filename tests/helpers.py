"""Shared test helpers: tiny images and tiny checkpoints made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.model.checkpoint import ExpertSpec, ModelConfig, build_model, save_checkpoint


def write_image(path: Path, size=(40, 32), seed=0, mode="RGB", fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def labelled_images(root: Path, n: int, fake_source: str, side: int, seed: int) -> Path:
    """n real and n fake random PNGs under root/real and root/fake, listed in root/manifest.csv."""
    import pandas as pd

    rows = [(f"real/r{i}.png", 0, "real") for i in range(n)] + [(f"fake/f{i}.png", 1, fake_source) for i in range(n)]
    for k, (rel, *_rest) in enumerate(rows):
        write_image(root / rel, size=(side, side), seed=seed + k)
    pd.DataFrame(rows, columns=["path", "label", "source"]).to_csv(root / "manifest.csv", index=False)
    return root


def tiny_checkpoint(folder: Path, backbones=("test_efficientnet", "test_resnet"), size=32, threshold=0.5, seed=0) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = ModelConfig(
        experts=[ExpertSpec(b) for b in backbones],
        preprocess=PreprocessConfig(input_size=size, mode="fast"),
        threshold=threshold,
    )
    return save_checkpoint(build_model(cfg), cfg, folder)
