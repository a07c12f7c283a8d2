"""Edit fake families: fakes made from one real image by local image editing.

Each family changes a region (a face-landmark hull when a face is found, a random shape
otherwise, see `masks.region_mask`) and leaves the rest of the image untouched, returns the
alpha mask of that region and records what it drew. Options come from the prepare config
(`ctx.options`); unknown option names are an error, so a typo cannot pass silently.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from deepfake_moe.augment.masks import region_mask, stroke_mask
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register

MASK_OPTIONS = {"faces": True, "face_parts": None, "area": [0.05, 0.3], "shape": None, "feather": 0.08}


def options(ctx: AugmentContext, defaults: dict[str, Any]) -> dict[str, Any]:
    """The family's options: `defaults` (mask options included) overridden by the config's."""
    allowed = {**MASK_OPTIONS, **defaults}
    unknown = sorted(set(ctx.options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; this family takes {sorted(allowed)}")
    return {**allowed, **ctx.options}


def composite(base: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend `layer` over `base`; pixels where alpha is 0 stay exactly as they were."""
    a = alpha[:, :, None]
    out = base.astype(np.float32) * (1.0 - a) + layer.astype(np.float32) * a
    return np.where(a > 0, np.clip(np.rint(out), 0, 255), base).astype(np.uint8)


def result(base: np.ndarray, layer: np.ndarray, alpha: np.ndarray, params: dict[str, Any]) -> AugmentResult:
    return AugmentResult(image=composite(base, layer, alpha), params=params, mask=alpha > 0)


def choose(rng: np.random.Generator, values: Any) -> Any:
    """One of `values` (a single value, e.g. `blend: poisson` in a config, is a list of one)."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return values[int(rng.integers(len(values)))]


def color_shift(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, dict]:
    """Shift hue, saturation, brightness and contrast by up to `strength` (0..1) of their range."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hue = float(rng.uniform(-1, 1) * strength * 20)  # OpenCV hue is 0..180
    sat = float(1 + rng.uniform(-1, 1) * strength)
    val = float(1 + rng.uniform(-1, 1) * strength)
    hsv[:, :, 0] = (hsv[:, :, 0] + hue) % 180
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * sat, 0, 255)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] * val, 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    contrast = float(1 + rng.uniform(-1, 1) * strength * 0.5)
    out = (out - out.mean()) * contrast + out.mean()
    params = {"hue": round(hue, 3), "saturation": round(sat, 4), "brightness": round(val, 4), "contrast": round(contrast, 4)}
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), params


def affine_jitter(rgb: np.ndarray, rng: np.random.Generator, shift: float, scale: float, rotate: float) -> tuple[np.ndarray, dict]:
    """A small random scale, rotation and translation of the whole image (borders replicated)."""
    h, w = rgb.shape[:2]
    s = float(1 + rng.uniform(-scale, scale))
    angle = float(rng.uniform(-rotate, rotate))
    dx, dy = float(rng.uniform(-shift, shift) * w), float(rng.uniform(-shift, shift) * h)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[:, 2] += (dx, dy)
    out = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, {"scale": round(s, 4), "angle": round(angle, 3), "shift": [round(dx, 2), round(dy, 2)]}


def poisson(base: np.ndarray, layer: np.ndarray, alpha: np.ndarray, mixed: bool) -> np.ndarray:
    """`cv2.seamlessClone` of `layer` into `base` over the mask's own position."""
    hard = (alpha > 0).astype(np.uint8) * 255
    hard[[0, -1], :] = 0  # seamlessClone fails on masks touching the border
    hard[:, [0, -1]] = 0
    if not hard.any():
        return layer
    x, y, w, h = cv2.boundingRect(hard)
    center = (x + w // 2, y + h // 2)  # OpenCV places the ROI at center - size//2: no shift
    flag = cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE
    out = cv2.seamlessClone(layer[:, :, ::-1].copy(), base[:, :, ::-1].copy(), hard, center, flag)
    return out[:, :, ::-1]


def blend(base: np.ndarray, layer: np.ndarray, alpha: np.ndarray, how: str) -> np.ndarray:
    """"alpha": feathered alpha blend; "poisson"/"mixed": gradient-domain clone, then feathered in.

    The Poisson result is composited with the same alpha, so even its spill-over past the mask
    (seamlessClone changes a few pixels around it) is cut off: only masked pixels change.
    """
    if how == "alpha":
        return layer
    if how in ("poisson", "mixed"):
        return poisson(base, layer, alpha, mixed=how == "mixed")
    raise ValueError(f"unknown blend {how!r}; use alpha, poisson or mixed")


@register("self_blend", label=1, kind="edit")
def self_blend(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """A region blended with a colour- and geometry-shifted copy of the same image (self-blended images)."""
    opt = options(ctx, {"color": 0.15, "shift": 0.03, "scale": 0.05, "rotate": 3.0, "blur": 0.5, "ratio": [0.5, 1.0]})
    alpha, mparams = region_mask(rgb, rng, opt)
    source, cparams = color_shift(rgb, rng, float(opt["color"]))
    source, gparams = affine_jitter(source, rng, float(opt["shift"]), float(opt["scale"]), float(opt["rotate"]))
    sigma = 0.0
    if rng.random() < float(opt["blur"]):
        sigma = float(rng.uniform(0.3, 1.5))
        source = cv2.GaussianBlur(source, (0, 0), sigma)
    ratio = float(rng.uniform(*opt["ratio"]))
    params = {"mask": mparams, "color": cparams, "geometry": gparams, "blur_sigma": round(sigma, 3), "ratio": round(ratio, 4)}
    return result(rgb, source, alpha * ratio, params)


@register("splice", label=1, kind="edit")
def splice(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """A region taken from another real image, alpha- or Poisson-blended in."""
    opt = options(ctx, {"blend": ["alpha", "poisson", "mixed"], "same_position": 0.5})
    if ctx.donor is None:
        raise ValueError("splice needs a donor image (another real input); none was given")
    donor_id, donor = ctx.donor(rng)
    h, w = rgb.shape[:2]
    alpha, mparams = region_mask(rgb, rng, opt)
    # Cover the target with the donor (scaled to at least its size), then pick the donor window.
    k = max(h / donor.shape[0], w / donor.shape[1]) * float(rng.uniform(1.0, 1.5))
    donor = cv2.resize(donor, (max(w, int(np.ceil(donor.shape[1] * k))), max(h, int(np.ceil(donor.shape[0] * k)))), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    if rng.random() < float(opt["same_position"]):  # faces in aligned crops: like for like
        oy, ox = (donor.shape[0] - h) // 2, (donor.shape[1] - w) // 2
    else:
        oy, ox = int(rng.integers(donor.shape[0] - h + 1)), int(rng.integers(donor.shape[1] - w + 1))
    layer = np.ascontiguousarray(donor[oy : oy + h, ox : ox + w])
    how = choose(rng, opt["blend"])
    layer = blend(rgb, layer, alpha, how)
    params = {"donor": donor_id, "donor_scale": round(k, 4), "donor_offset": [ox, oy], "blend": how, "mask": mparams}
    return result(rgb, layer, alpha, params)


@register("copy_move", label=1, kind="edit")
def copy_move(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """A region of the image copied onto another place of the same image (optionally scaled/rotated)."""
    opt = options(ctx, {"blend": ["alpha", "poisson"], "scale": 0.1, "rotate": 10.0, "min_shift": 0.1})
    h, w = rgb.shape[:2]
    alpha, mparams = region_mask(rgb, rng, opt)
    # Move the image content by a clear offset so the pasted region shows somewhere else.
    min_shift = float(opt["min_shift"])
    dx = float(rng.uniform(min_shift, 0.5) * w * choose(rng, [-1, 1]))
    dy = float(rng.uniform(min_shift, 0.5) * h * choose(rng, [-1, 1]))
    s = float(1 + rng.uniform(-1, 1) * float(opt["scale"]))
    angle = float(rng.uniform(-1, 1) * float(opt["rotate"]))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[:, 2] += (dx, dy)
    layer = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    how = choose(rng, opt["blend"])
    layer = blend(rgb, layer, alpha, how)
    params = {"offset": [round(dx, 2), round(dy, 2)], "scale": round(s, 4), "angle": round(angle, 3), "blend": how, "mask": mparams}
    return result(rgb, layer, alpha, params)


@register("inpaint", label=1, kind="edit")
def inpaint(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """A region filled in from its surroundings by `cv2.inpaint` (Telea or Navier-Stokes)."""
    opt = options(ctx, {"method": ["telea", "ns"], "radius": [2, 8], "strokes": 0.4, "area": [0.03, 0.15]})
    h, w = rgb.shape[:2]
    if rng.random() < float(opt["strokes"]):
        hard, mparams = stroke_mask((h, w), rng)
    else:
        alpha, mparams = region_mask(rgb, rng, {**opt, "feather": 0.0})
        hard = (alpha > 0).astype(np.uint8) * 255
    method = choose(rng, opt["method"])
    radius = int(rng.integers(opt["radius"][0], opt["radius"][1] + 1))
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    out = cv2.inpaint(np.ascontiguousarray(rgb[:, :, ::-1]), hard, radius, flag)[:, :, ::-1]
    mparams["area"] = round(float((hard > 0).mean()), 4)
    params = {"method": method, "radius": radius, "mask": mparams}
    return AugmentResult(image=np.ascontiguousarray(out), params=params, mask=hard > 0)


RETOUCH_OPS = ("smooth", "sharpen", "color")


@register("retouch", label=1, kind="edit")
def retouch(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Local retouching inside a mask: skin-style smoothing, sharpening or a colour shift."""
    opt = options(ctx, {"ops": list(RETOUCH_OPS), "strength": [0.3, 1.0]})
    alpha, mparams = region_mask(rgb, rng, opt)
    op = choose(rng, opt["ops"])
    strength = float(rng.uniform(*opt["strength"]))
    size = min(rgb.shape[:2])
    if op == "smooth":
        d = max(3, int(round(size * 0.04 * strength)) | 1)
        layer = cv2.bilateralFilter(rgb, d, 20 + 60 * strength, d)
        detail = {"diameter": d}
    elif op == "sharpen":
        sigma = 0.5 + 1.5 * strength
        blurred = cv2.GaussianBlur(rgb, (0, 0), sigma).astype(np.float32)
        amount = 0.5 + 1.5 * strength
        layer = np.clip(np.rint(rgb + amount * (rgb.astype(np.float32) - blurred)), 0, 255).astype(np.uint8)
        detail = {"sigma": round(sigma, 3), "amount": round(amount, 3)}
    elif op == "color":
        layer, detail = color_shift(rgb, rng, 0.1 + 0.3 * strength)
    else:
        raise ValueError(f"unknown retouch op {op!r}; use some of {RETOUCH_OPS}")
    params = {"op": op, "strength": round(strength, 4), **detail, "mask": mparams}
    return result(rgb, layer, alpha, params)


FILLS = ("mean", "random", "black", "white", "gray")


@register("masked_fill", label=1, kind="edit")
def masked_fill(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """A region painted over with one flat colour (hard or soft edged)."""
    opt = options(ctx, {"fills": list(FILLS), "soft": 0.5})
    if rng.random() >= float(opt["soft"]):
        opt = {**opt, "feather": 0.0}
    alpha, mparams = region_mask(rgb, rng, opt)
    fill = choose(rng, opt["fills"])
    inside = alpha > 0
    colours = {
        "mean": lambda: rgb[inside].mean(0),
        "random": lambda: rng.integers(0, 256, 3),
        "black": lambda: np.zeros(3),
        "white": lambda: np.full(3, 255.0),
        "gray": lambda: np.full(3, 128.0),
    }
    if fill not in colours:
        raise ValueError(f"unknown fill {fill!r}; use some of {FILLS}")
    colour = np.rint(np.asarray(colours[fill](), dtype=np.float64)).astype(np.uint8)
    layer = np.broadcast_to(colour, rgb.shape)
    params = {"fill": fill, "color": colour.tolist(), "mask": mparams}
    return result(rgb, layer, alpha, params)

