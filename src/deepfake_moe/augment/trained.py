"""Generators the project trains itself on the corpus's reals (autoencoders, StyleGAN-lite).

Their weights are derived data: cached under cache_dir(kind)/<key>, where the key hashes the
training settings and the list of training images, so a corpus rebuilds them only when either
changes. Training is resumable: a checkpoint (model + optimiser state, loaded with
weights_only=True) is written atomically every few steps, and every step draws its randomness
from (seed, step), so a resumed run ends with the weights an uninterrupted one would have.
Finished weights are safetensors files with a JSON record beside them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepfake_moe.io import atomic_path, atomic_write

CHECKPOINT_EVERY = 100


def settings_key(settings: dict, image_paths: list[str]) -> str:
    text = json.dumps(settings, sort_keys=True) + "\n" + "\n".join(image_paths)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_training_images(paths: list[str], limit: int | None) -> list[np.ndarray]:
    """RGB uint8 images of the first `limit` readable paths (callers pass a stable order)."""
    from deepfake_moe.data.decode_pool import DecodeFailure, read_images

    images = []
    decoded = read_images(paths)  # capped workers; stopping early ends them
    for rgb in decoded:
        if not isinstance(rgb, DecodeFailure):  # an unreadable real is simply not trained on
            images.append(rgb)
        if limit is not None and len(images) >= limit:
            decoded.close()
            break
    if not images:
        raise ValueError("no readable training images")
    return images


def random_crops(images: list[np.ndarray], rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """A float32 NCHW batch in [-1, 1] of random size x size crops (images smaller than `size` are
    shrunk to fit first), randomly mirrored."""
    import cv2

    out = np.empty((batch, 3, size, size), np.float32)
    for i in range(batch):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        if min(h, w) < size:
            s = size / min(h, w)
            img = cv2.resize(img, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_AREA)
            h, w = img.shape[:2]
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        crop = img[y : y + size, x : x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop.transpose(2, 0, 1) / 127.5 - 1.0
    return out


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def train_resumable(
    modules: dict,
    optimizers: dict,
    step_fn: Callable[[int], dict[str, float]],
    steps: int,
    checkpoint: Path,
    log: Callable[[str], None] | None = None,
    every: int | None = None,
) -> list[dict[str, float]]:
    """Run step_fn(step) for every step not yet done, checkpointing `modules` and `optimizers`."""
    import torch

    every = every or CHECKPOINT_EVERY

    start = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        start = int(state["step"])
    history, t0 = [], time.monotonic()
    for step in range(start, steps):
        losses = step_fn(step)
        history.append(losses)
        done = step + 1
        if done % every == 0 or done == steps:
            state = {
                "step": done,
                "modules": {k: m.state_dict() for k, m in modules.items()},
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            }
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
            if log:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                log(f"{checkpoint.parent.name}/{checkpoint.stem}: step {done}/{steps}, {shown} ({time.monotonic() - t0:.0f} s)")
    return history


def save_weights(module, path: Path, record: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    with atomic_write(path.with_suffix(".json")) as f:
        json.dump(record, f, indent=1, sort_keys=True)


def load_weights(module, path: Path):
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"generator weights not found: {path}")
    module.load_state_dict(load_file(str(path)))
    return module.eval()


def read_record(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def to_uint8(t) -> np.ndarray:
    """A (3, H, W) tensor in [-1, 1] -> RGB uint8 (H, W, 3)."""
    return ((t.detach().permute(1, 2, 0).float().numpy() + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
