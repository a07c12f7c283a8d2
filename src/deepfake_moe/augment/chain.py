"""The final output chain every image of a corpus leaves through, real or fake, drawn alike.

What a detector may learn from must be the content a generator made, not the way a file was
written: if only fakes were downscaled, sharpened or saved by one encoder, that would tell the
label. So each image, whatever its label, gets an independent draw of the same steps:
optional colour work and denoising, an optional downscale (never an upscale: area, linear,
cubic or Lanczos), an optional slight blur or unsharp masking, then one encoder: Pillow JPEG, OpenCV (libjpeg-turbo)
JPEG or PNG, with JPEG quality drawn from one range. The record of the draw goes into `params`.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

DOWN = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
ENCODERS = ("pil_jpeg", "cv2_jpeg", "png")


@dataclass
class OutputChain:
    downscale_p: float = 0.5
    scale: list[float] = field(default_factory=lambda: [0.5, 0.95])  # of each side, drawn uniformly
    min_side: int = 48  # never shrink the shorter side below this
    colour_p: float = 0.2  # gamma, saturation, white balance within ordinary camera/editing ranges
    denoise_p: float = 0.1
    blur_p: float = 0.15  # a slight Gaussian blur (soft lens, resampling): detail goes down as often as sharpening sends it up
    sharpen_p: float = 0.2
    encoders: dict[str, float] = field(default_factory=lambda: {"pil_jpeg": 0.45, "cv2_jpeg": 0.4, "png": 0.15})
    quality: list[int] = field(default_factory=lambda: [65, 98])

    def __post_init__(self) -> None:
        for name in ("downscale_p", "colour_p", "denoise_p", "blur_p", "sharpen_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"output_chain.{name} must be within [0, 1], got {getattr(self, name)}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"output_chain.scale must be [low, high] within (0, 1] (downscales only), got {self.scale}")
        unknown = sorted(set(self.encoders) - set(ENCODERS))
        if unknown or not self.encoders or min(self.encoders.values()) < 0 or sum(self.encoders.values()) <= 0:
            raise ValueError(f"output_chain.encoders must weight some of {ENCODERS}, got {self.encoders}")
        q = self.quality
        if len(q) != 2 or not 1 <= q[0] <= q[1] <= 100:
            raise ValueError(f"output_chain.quality must be [low, high] within 1..100, got {q}")

    @classmethod
    def from_dict(cls, d: dict | None) -> OutputChain:
        unknown = sorted(set(d or {}) - set(asdict(cls())))
        if unknown:
            raise ValueError(f"output_chain: unknown key(s) {unknown}; known: {sorted(asdict(cls()))}")
        return cls(**(d or {}))


def _colour(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    gamma = float(rng.uniform(0.85, 1.15))
    saturation = float(rng.uniform(0.85, 1.15))
    balance = rng.uniform(0.95, 1.05, 3)
    x = (rgb.astype(np.float32) / 255.0) ** gamma
    grey = x.mean(2, keepdims=True)
    x = (grey + (x - grey) * saturation) * balance
    out = (x.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)
    return out, {"gamma": round(gamma, 3), "saturation": round(saturation, 3), "balance": [round(float(b), 3) for b in balance]}


def _denoise(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    if rng.random() < 0.5:
        d, sigma = int(rng.choice([5, 7])), float(rng.uniform(20, 50))
        return cv2.bilateralFilter(rgb, d, sigma, sigma), {"denoise": "bilateral", "sigma": round(sigma, 1)}
    k = 3
    return cv2.medianBlur(rgb, k), {"denoise": "median", "kernel": k}


def _downscale(rgb: np.ndarray, rng: np.random.Generator, chain: OutputChain) -> tuple[np.ndarray, dict]:
    h, w = rgb.shape[:2]
    floor = min(1.0, chain.min_side / min(h, w))
    lo, hi = max(chain.scale[0], floor), max(chain.scale[1], floor)
    s = float(rng.uniform(lo, hi))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == (w, h):
        return rgb, {}
    name = list(DOWN)[int(rng.integers(len(DOWN)))]
    return cv2.resize(rgb, size, interpolation=DOWN[name]), {"downscale": round(s, 4), "interp": name}


def _blur(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    sigma = float(rng.uniform(0.3, 1.0))
    return cv2.GaussianBlur(rgb, (0, 0), sigma), {"blur_sigma": round(sigma, 3)}


def _sharpen(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    sigma, amount = float(rng.uniform(0.6, 1.6)), float(rng.uniform(0.3, 1.2))
    blur = cv2.GaussianBlur(rgb, (0, 0), sigma).astype(np.float32)
    out = (rgb.astype(np.float32) * (1 + amount) - blur * amount).clip(0, 255).round().astype(np.uint8)
    return out, {"sharpen_sigma": round(sigma, 3), "sharpen_amount": round(amount, 3)}


def encode_with(rgb: np.ndarray, encoder: str, quality: int | None) -> bytes:
    if encoder == "cv2_jpeg":
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("OpenCV JPEG encoding failed")
        return buf.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    if encoder == "png":
        Image.fromarray(rgb).save(buf, "PNG", compress_level=6)
    else:
        Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def finish(rgb: np.ndarray, rng: np.random.Generator, chain: OutputChain) -> tuple[bytes, str, dict[str, Any]]:
    """Run the chain on an RGB uint8 image: (file bytes, extension "jpg" | "png", record of the draw)."""
    record: dict[str, Any] = {}
    steps = (
        (chain.colour_p, lambda x: _colour(x, rng)),
        (chain.denoise_p, lambda x: _denoise(x, rng)),
        (chain.downscale_p, lambda x: _downscale(x, rng, chain)),
        (chain.blur_p, lambda x: _blur(x, rng)),
        (chain.sharpen_p, lambda x: _sharpen(x, rng)),
    )
    for p, step in steps:
        if rng.random() < p:
            rgb, done = step(rgb)
            record.update(done)
    names = list(chain.encoders)
    weights = np.array([chain.encoders[n] for n in names], dtype=float)
    encoder = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    quality = None if encoder == "png" else int(rng.integers(chain.quality[0], chain.quality[1] + 1))
    record.update(encoder=encoder, size=[int(rgb.shape[1]), int(rgb.shape[0])])
    if quality is not None:
        record["quality"] = quality
    return encode_with(np.ascontiguousarray(rgb), encoder, quality), "png" if encoder == "png" else "jpg", record
