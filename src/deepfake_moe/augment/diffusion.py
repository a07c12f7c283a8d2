"""Stable Diffusion fakes through `diffusers`, from a local model folder the user names.

Families (all label 1): `sd_img2img` (the real re-imagined at a random strength), `sd_inpaint`
(a region of the real, the face when one is found, repainted; the rest pasted back so the mask is
exact), `sd_txt2img` (a face generated from a prompt at the real's size; only the size and the
seed come from the real) and `vae_roundtrip` (the real encoded and decoded by the pipeline's VAE,
as in "Aligned Datasets", ICLR 2025: every pixel from the decoder, the content the real's).

Options (the family's `options` in the prepare config):
  model:     folder of a diffusers Stable Diffusion pipeline (model_index.json inside), required
  device:    "cuda", "cpu", ... (default: cuda when available)
  steps:     denoising steps (default 30); guidance: classifier-free guidance scale (default 7.5)
  prompts:   list of prompts drawn from at random (default: PROMPTS below)
  strength:  [low, high] for img2img / inpaint (defaults [0.3, 0.7] / [0.75, 1.0])
No weights ship with the project: nothing of the kind is in any package registry.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np

from deepfake_moe.augment.faces import detect_faces
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register

SD_EXTRA_HINT = 'pip install "deepfake-moe[sd]"'
PROMPTS = (
    "a photo of a person's face, natural light",
    "a close-up portrait photograph of a face",
    "a news photograph of a person, head and shoulders",
    "a candid photo of a smiling person",
)
NEGATIVE_PROMPT = "drawing, painting, cartoon, text, watermark"


class ModelFolderError(ValueError):
    """The `model` option is missing or does not name a diffusers pipeline folder."""


def check_model_folder(options: dict, family: str) -> Path:
    model = options.get("model")
    if not model:
        raise ModelFolderError(
            f"{family} needs a local Stable Diffusion model: set options.model to a diffusers folder "
            "(one holding model_index.json, as written by save_pretrained or `hf download`)"
        )
    path = Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelFolderError(f"{family}: {path} is not a diffusers model folder (no model_index.json in it)")
    return path


def _diffusers(name: str, device: str):
    """A diffusers class and the dtype to run it in on `device` (fp16 on CUDA)."""
    try:
        import diffusers
        import torch
    except ImportError as e:
        raise ImportError(f"Stable Diffusion families need diffusers and transformers: {SD_EXTRA_HINT}") from e
    return getattr(diffusers, name), torch.float16 if device.startswith("cuda") else torch.float32


@functools.lru_cache(maxsize=2)
def _base_pipeline(model: str, device: str):
    cls, dtype = _diffusers("StableDiffusionPipeline", device)
    pipe = cls.from_pretrained(model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@functools.lru_cache(maxsize=6)
def _pipeline(kind: str, model: str, device: str):
    """One loaded model shared by the three pipeline kinds (same components, different call)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    base = _base_pipeline(model, device)
    classes = {"txt2img": None, "img2img": StableDiffusionImg2ImgPipeline, "inpaint": StableDiffusionInpaintPipeline}
    if classes[kind] is None:
        return base
    pipe = classes[kind](**base.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _device(options: dict) -> str:
    import torch

    return options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")


def _setup(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext, family: str, kind: str):
    import torch

    model = str(check_model_folder(ctx.options, family))
    device = _device(ctx.options)
    pipe = _pipeline(kind, model, device)
    h, w = rgb.shape[:2]
    # SD works on multiples of 8 (the VAE's stride); the result is resized back to the real's size.
    size = (max(64, w // 8 * 8), max(64, h // 8 * 8))
    prompts = list(ctx.options.get("prompts") or PROMPTS)
    prompt = prompts[int(rng.integers(len(prompts)))]
    seed = int(rng.integers(2**62))
    common = {
        "prompt": prompt,
        "negative_prompt": NEGATIVE_PROMPT,
        "num_inference_steps": int(ctx.options.get("steps", 30)),
        "guidance_scale": float(ctx.options.get("guidance", 7.5)),
        "generator": torch.Generator(device=device).manual_seed(seed),
        "output_type": "np",
    }
    params = {"model": Path(model).name, "prompt": prompt, "seed": seed, "steps": common["num_inference_steps"]}
    return pipe, size, common, params


def _to_uint8(images: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    img = (np.asarray(images[0]).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)
    if img.shape[1::-1] != size_wh:
        img = cv2.resize(img, size_wh, interpolation=cv2.INTER_AREA if img.shape[1] > size_wh[0] else cv2.INTER_CUBIC)
    return img


def _strength(rng: np.random.Generator, options: dict, default: tuple[float, float], common: dict) -> float:
    lo, hi = options.get("strength", default)
    strength = round(float(rng.uniform(lo, hi)), 3)
    # diffusers runs int(steps * strength) steps: at least one, or it decodes an empty batch.
    common["num_inference_steps"] = max(common["num_inference_steps"], math.ceil(1.0 / strength))
    return strength


def _pil(rgb: np.ndarray, size_wh: tuple[int, int]):
    from PIL import Image

    return Image.fromarray(cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA))


@register("sd_img2img", label=1, kind="generative")
def sd_img2img(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Stable Diffusion img2img of the real (needs options.model, a local diffusers folder)."""
    pipe, size, common, params = _setup(rgb, rng, ctx, "sd_img2img", "img2img")
    strength = _strength(rng, ctx.options, (0.3, 0.7), common)
    out = pipe(image=_pil(rgb, size), strength=strength, **common).images
    params = {**params, "strength": strength, "steps": common["num_inference_steps"]}
    return AugmentResult(_to_uint8(out, rgb.shape[1::-1]), params)


def _inpaint_mask(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The largest face's box grown a little, or a random ellipse when there is no face."""
    h, w = rgb.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    faces = detect_faces(rgb)
    if faces:
        x, y, bw, bh = faces[0]
        cx, cy = x + bw / 2, y + bh / 2
        ax, ay = bw * rng.uniform(0.35, 0.6), bh * rng.uniform(0.45, 0.7)
        region = "face"
    else:
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        ax, ay = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
        region = "ellipse"
    cv2.ellipse(mask, (int(cx), int(cy)), (max(2, int(ax)), max(2, int(ay))), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return mask, region


@register("sd_inpaint", label=1, kind="generative")
def sd_inpaint(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Stable Diffusion inpainting of the face (or a random ellipse); the rest of the real kept."""
    pipe, size, common, params = _setup(rgb, rng, ctx, "sd_inpaint", "inpaint")
    mask, region = _inpaint_mask(rgb, rng)
    strength = _strength(rng, ctx.options, (0.75, 1.0), common)
    out = pipe(image=_pil(rgb, size), mask_image=_pil(np.dstack([mask] * 3), size), strength=strength, **common).images
    painted = _to_uint8(out, rgb.shape[1::-1])
    # The VAE round trip alters every pixel; paste the untouched real back outside a feathered mask.
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (9, 9), 0)[..., None]
    image = (painted * alpha + rgb * (1.0 - alpha) + 0.5).astype(np.uint8)
    params = {**params, "strength": strength, "steps": common["num_inference_steps"], "region": region}
    return AugmentResult(image, params, alpha[..., 0] > 1.0 / 512)


@register("sd_txt2img", label=1, kind="generative")
def sd_txt2img(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Stable Diffusion text-to-image face at the real's size (the real gives only size and seed)."""
    pipe, size, common, params = _setup(rgb, rng, ctx, "sd_txt2img", "txt2img")
    out = pipe(width=size[0], height=size[1], **common).images
    return AugmentResult(_to_uint8(out, rgb.shape[1::-1]), params)


@functools.lru_cache(maxsize=2)
def _vae(model: str, device: str):
    cls, dtype = _diffusers("AutoencoderKL", device)
    return cls.from_pretrained(model, subfolder="vae", torch_dtype=dtype).to(device).eval()


@register("vae_roundtrip", label=1, kind="generative")
def vae_roundtrip(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """The real encoded and decoded by the Stable Diffusion VAE: every pixel from its decoder (needs options.model)."""
    import torch

    vae = _vae(str(check_model_folder(ctx.options, "vae_roundtrip")), _device(ctx.options))
    h, w = rgb.shape[:2]
    # The VAE works on multiples of 8: crop (never resize, which would blur its traces) to fit.
    ch, cw = h // 8 * 8, w // 8 * 8
    if min(ch, cw) < 8:
        raise ValueError(f"image {w}x{h} too small for the VAE (needs 8 px a side)")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    x = torch.from_numpy(np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw].transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0)
    seed = int(rng.integers(2**62))
    sample = bool(ctx.options.get("sample", True))  # a posterior sample, as in a diffusion pipeline's encode
    with torch.inference_mode():
        x = x[None].to(vae.device, vae.dtype)
        posterior = vae.encode(x).latent_dist
        latents = posterior.sample(torch.Generator(device=vae.device).manual_seed(seed)) if sample else posterior.mode()
        out = vae.decode(latents).sample[0].float().cpu()
    image = ((out.permute(1, 2, 0).numpy() + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
    params = {"model": Path(ctx.options["model"]).name, "seed": seed, "sample": sample, "crop": [x0, y0, cw, ch]}
    return AugmentResult(image, params)
