"""Pure preprocessing functions: RGB uint8 array -> normalised CHW float tensor."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("published", "fast")


@dataclass
class PreprocessConfig:
    """How an image becomes a model input.

    mode "published": ToTensor, Normalize, then bilinear antialiased resize of the float tensor,
    exactly as the winners' inference script (the order is theirs; resizing after normalising
    is also what their weights saw). mode "fast": resize the uint8 image with OpenCV (area
    filter when shrinking), then normalise: the same maths up to rounding, several times cheaper
    on large images.
    """

    input_size: int = 512
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    mode: str = "published"

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess mode {self.mode!r} is not one of {PREPROCESS_MODES}")
        if self.input_size < 8:
            raise ValueError(f"input_size {self.input_size} is too small")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each (RGB)")


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in 0..1 (torchvision's ToTensor)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize of a CHW float tensor to size x size (torchvision Resize)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def preprocess(rgb: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, S, S) as the model expects."""
    if cfg.mode == "published":
        return resize_tensor(normalize(to_tensor(rgb), cfg.mean, cfg.std), cfg.input_size)
    return normalize(to_tensor(resize_uint8(rgb, cfg.input_size)), cfg.mean, cfg.std)
