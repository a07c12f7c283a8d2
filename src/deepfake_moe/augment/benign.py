"""Benign real variants (label 0): ordinary processing a real photo goes through.

They teach a detector that "processed" does not mean "fake". `real_reencode` changes nothing
itself: prepare's output encoder (the same one, same quality range, as for the fakes) is its
whole effect, so reals also exist with the encoder the fakes carry.
"""

from __future__ import annotations

import cv2
import numpy as np

from deepfake_moe.augment.edit import choose, color_shift
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def benign_options(ctx: AugmentContext, defaults: dict) -> dict:
    unknown = sorted(set(ctx.options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; this family takes {sorted(defaults)}")
    return {**defaults, **ctx.options}


@register("real_reencode", label=0, kind="benign")
def real_reencode(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """The real image as is, re-encoded only by the output encoder the fakes also go through."""
    benign_options(ctx, {})
    return AugmentResult(image=rgb.copy(), params={})


@register("real_jpeg", label=0, kind="benign")
def real_jpeg(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """JPEG re-compression, one to a few times, at random qualities (before the output encoding)."""
    opt = benign_options(ctx, {"quality": [30, 95], "times": [1, 3]})
    times = int(rng.integers(opt["times"][0], opt["times"][1] + 1))
    qualities = []
    out = rgb
    for _ in range(times):
        q = int(rng.integers(opt["quality"][0], opt["quality"][1] + 1))
        ok, buf = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
        qualities.append(q)
    return AugmentResult(image=np.ascontiguousarray(out), params={"qualities": qualities})


@register("real_resize", label=0, kind="benign")
def real_resize(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Down-scaled and scaled back up with ordinary (non-GAN) interpolations."""
    opt = benign_options(ctx, {"scale": [0.35, 0.9], "interpolations": list(INTERPOLATIONS)})
    h, w = rgb.shape[:2]
    s = float(rng.uniform(*opt["scale"]))
    down, up = choose(rng, opt["interpolations"]), choose(rng, opt["interpolations"])
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=INTERPOLATIONS[down])
    out = cv2.resize(small, (w, h), interpolation=INTERPOLATIONS[up])
    return AugmentResult(image=out, params={"scale": round(s, 4), "down": down, "up": up})


@register("real_blur", label=0, kind="benign")
def real_blur(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Gaussian or motion blur, as from focus or camera shake."""
    opt = benign_options(ctx, {"sigma": [0.4, 2.0], "motion": 0.3})
    if rng.random() < float(opt["motion"]):
        length = int(rng.integers(3, max(4, min(rgb.shape[:2]) // 12) + 1))
        angle = float(rng.uniform(0, 180))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        kernel /= max(float(kernel.sum()), 1e-6)
        out = cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        return AugmentResult(image=out, params={"kind": "motion", "length": length, "angle": round(angle, 2)})
    sigma = float(rng.uniform(*opt["sigma"]))
    return AugmentResult(image=cv2.GaussianBlur(rgb, (0, 0), sigma), params={"kind": "gaussian", "sigma": round(sigma, 4)})


@register("real_noise", label=0, kind="benign")
def real_noise(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Sensor-like noise: Gaussian (per channel or luminance only) or signal-dependent Poisson."""
    opt = benign_options(ctx, {"sigma": [2.0, 10.0], "kinds": ["gaussian", "luma", "poisson"]})
    kind = choose(rng, opt["kinds"])
    x = rgb.astype(np.float32)
    if kind == "gaussian":
        sigma = float(rng.uniform(*opt["sigma"]))
        out = x + rng.normal(0, sigma, x.shape)
    elif kind == "luma":
        sigma = float(rng.uniform(*opt["sigma"]))
        out = x + rng.normal(0, sigma, x.shape[:2])[:, :, None]
    elif kind == "poisson":
        sigma = float(rng.uniform(*opt["sigma"]))  # noise std at mid-grey
        photons = (128.0 / sigma) ** 2 / 128.0
        out = rng.poisson(x * photons) / photons
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return AugmentResult(image=np.clip(np.rint(out), 0, 255).astype(np.uint8), params={"kind": kind, "sigma": round(sigma, 4)})


@register("real_color", label=0, kind="benign")
def real_color(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Whole-image colour jitter (hue, saturation, brightness, contrast) and gamma."""
    opt = benign_options(ctx, {"strength": [0.05, 0.3], "gamma": [0.7, 1.4]})
    out, params = color_shift(rgb, rng, float(rng.uniform(*opt["strength"])))
    gamma = float(rng.uniform(*opt["gamma"]))
    lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    params["gamma"] = round(gamma, 4)
    return AugmentResult(image=cv2.LUT(out, lut), params=params)


@register("real_downscale", label=0, kind="benign")
def real_downscale(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """The real shrunk (never enlarged) to a fixed-size generator's side, so size never tells the label.

    Squares of a side drawn from `sizes` (64 px: DCGAN, StyleGAN-lite); a smaller real stays as it is."""
    opt = benign_options(ctx, {"sizes": [64], "interpolations": ["area", "linear", "cubic", "lanczos"]})
    h, w = rgb.shape[:2]
    target = int(choose(rng, [int(s) for s in opt["sizes"]]))
    interp = choose(rng, opt["interpolations"])
    # A centred square crop first: the generators' images are square.
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = rgb[y0 : y0 + side, x0 : x0 + side]
    if target >= side:
        return AugmentResult(image=np.ascontiguousarray(square), params={"size": side, "interp": None})
    out = cv2.resize(square, (target, target), interpolation=INTERPOLATIONS[interp])
    return AugmentResult(image=out, params={"size": target, "interp": interp})
