"""Pure preprocessing functions: RGB uint8 array -> normalised CHW float tensor."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("published", "fast", "native")


@dataclass
class PreprocessConfig:
    """How an image becomes a model input.

    mode "published": ToTensor, Normalize, then bilinear antialiased resize of the float tensor,
    exactly as the winners' inference script (the order is theirs; resizing after normalising
    is also what their weights saw). mode "fast": resize the uint8 image with OpenCV (area
    filter when shrinking), then normalise: the same maths up to rounding, several times cheaper
    on large images. mode "native": never resample; the model sees input_size crops of the image's
    own pixels (random crops in training, `tiles` x `tiles` crops at inference), for experts whose
    evidence is at the pixel scale (a downscale erases up-sampling traces). An image smaller than
    a crop is padded with the mean colour (0 after normalisation), never enlarged.
    """

    input_size: int = 512
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    mode: str = "published"
    tiles: int = 1
    """mode "native" at inference: 1 = the centre crop (the default: cheapest, and in
    benchmarks/probe_npr.py it carried over to an unseen generator better than a 3x3 grid, which
    helped only on the family trained on); n = an evenly spaced n x n grid of crops, the expert's
    probability being the mean over them (a generated image carries its trace everywhere; a max
    would let one odd patch of a real photo decide)."""

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess mode {self.mode!r} is not one of {PREPROCESS_MODES}")
        if self.input_size < 8:
            raise ValueError(f"input_size {self.input_size} is too small")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each (RGB)")
        if self.tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {self.tiles}")

    @property
    def crops(self) -> int:
        """Crops per image at inference: 1, or tiles**2 for a native view (batches are then 5-D)."""
        return self.tiles**2 if self.mode == "native" else 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What `preprocess` gives at inference: (3, S, S), or (T, 3, S, S) for a tiled native view."""
        s = (3, self.input_size, self.input_size)
        return s if self.crops == 1 else (self.crops, *s)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in 0..1 (torchvision's ToTensor)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return normalize_(x.clone(), mean, std)


def normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std in place: the same values as out of place, without two more float copies
    of a full-size image (the published order normalises before resizing)."""
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return x.sub_(m).div_(s)


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


def crop_offsets(length: int, size: int, n: int) -> list[int]:
    """Starts of n crops of `size` spread evenly over `length` (the centre for n = 1; 0 if too short)."""
    if length <= size:
        return [0] * n
    if n == 1:
        return [(length - size) // 2]
    return [int(v) for v in np.linspace(0, length - size, n).round()]


def native_crop(rgb: np.ndarray, top: int, left: int, cfg: PreprocessConfig) -> torch.Tensor:
    """The input_size crop at (top, left), normalised; a smaller image is padded with the mean colour."""
    size = cfg.input_size
    x = normalize(to_tensor(rgb[top : top + size, left : left + size]), cfg.mean, cfg.std)
    ph, pw = size - x.shape[1], size - x.shape[2]
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x


def random_native_crop(rgb: np.ndarray, cfg: PreprocessConfig, rng: np.random.Generator) -> torch.Tensor:
    h, w = rgb.shape[:2]
    top = int(rng.integers(0, max(h - cfg.input_size, 0) + 1))
    left = int(rng.integers(0, max(w - cfg.input_size, 0) + 1))
    return native_crop(rgb, top, left, cfg)


def native_tiles(rgb: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """(3, S, S) centre crop for tiles = 1, else (tiles**2, 3, S, S) grid crops."""
    h, w = rgb.shape[:2]
    tops, lefts = crop_offsets(h, cfg.input_size, cfg.tiles), crop_offsets(w, cfg.input_size, cfg.tiles)
    crops = [native_crop(rgb, t, left, cfg) for t in tops for left in lefts]
    return crops[0] if len(crops) == 1 else torch.stack(crops)


def preprocess(rgb: np.ndarray, cfg: PreprocessConfig, rng: np.random.Generator | None = None) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, S, S) as the model expects ((T, 3, S, S) for tiles).

    `rng` (training) draws a random crop for a native view; the other modes do not use it.
    """
    if cfg.mode == "native":
        return native_tiles(rgb, cfg) if rng is None else random_native_crop(rgb, cfg, rng)
    if cfg.mode == "published":
        return resize_tensor(normalize_(to_tensor(rgb), cfg.mean, cfg.std), cfg.input_size)
    return normalize_(to_tensor(resize_uint8(rgb, cfg.input_size)), cfg.mean, cfg.std)


def preprocess_views(rgb: np.ndarray, views: list[PreprocessConfig]) -> tuple[torch.Tensor, ...]:
    """One model input per view (a mixture's experts may each see the image their own way)."""
    return tuple(preprocess(rgb, v) for v in views)
