"""JPEG decoding and preprocessing on the model's device (nvJPEG on CUDA), so decoding does not cap a GPU.

A GPU scores a 512 px batch faster than a few CPU cores decode its JPEGs. `torchvision.io.decode_jpeg`
decodes a list of files on the GPU in one call; resizing and normalising follow there too, with the
same maths as `data.transforms.preprocess` ("published": normalise, then antialiased bilinear resize
of the float image; "fast": resize then normalise, antialiased bilinear where OpenCV uses its area filter: close on
photographs, not equal on pixel noise). On the CPU the same code runs with
libjpeg-turbo, which is how it is tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deepfake_moe.data.transforms import PreprocessConfig


def preprocess_on_device(rgb: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(3, H, W) uint8 on any device -> (3, S, S) float32 normalised, on that device."""
    if cfg.mode not in ("published", "fast"):
        raise ValueError(f"preprocess mode {cfg.mode!r} is decoded on the CPU (data.transforms.preprocess)")
    mean = torch.tensor(cfg.mean, device=rgb.device).view(3, 1, 1)
    std = torch.tensor(cfg.std, device=rgb.device).view(3, 1, 1)
    x = rgb.float().div_(255.0)
    size = (cfg.input_size, cfg.input_size)
    if cfg.mode == "published":
        x = (x - mean) / std
    if x.shape[-2:] != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return x if cfg.mode == "published" else (x - mean) / std


def decode_jpegs(paths: Sequence[str | os.PathLike], cfg: PreprocessConfig, device: torch.device | str) -> torch.Tensor:
    """(B, 3, S, S) model inputs from JPEG files, decoded and preprocessed on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    data = [read_file(str(p)) for p in paths]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    return torch.stack([preprocess_on_device(img, cfg) for img in images])
