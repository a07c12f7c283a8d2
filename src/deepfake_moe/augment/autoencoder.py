"""`autoencoder`: reals reconstructed by small conv autoencoders the project trains (AutoGAN).

Zhang, Karaman and Chang, "Detecting and Simulating Artifacts in GAN Fake Images" (WIFS 2019):
a GAN's fingerprint is mostly its up-sampling; an autoencoder whose decoder up-samples the same
way reproduces it without training a GAN. Four decoders, as generators up-sample:
transposed convolution, nearest + conv, bilinear + conv, pixel shuffle (sub-pixel conv).
Every output pixel comes from the decoder; the reconstruction of a real is the fake.

Blur would be a cue of its own (an early probe's autoencoders reached L1-sharpness only), so the
encoder keeps a wide bottleneck at 1/4 resolution and the loss adds high-frequency terms (L1 of the
high-pass residual and of the log amplitude spectrum): reconstructions keep the reals' fine detail.
`benchmarks/generator_families.py` measures their high-frequency energy against the reals'.

Weights: cache_dir("autoencoder")/<key>/<upsampler>.safetensors, made by `train_autoencoders`
(called by `corpus`); the family reads them from options.weights (that folder).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deepfake_moe.augment import trained
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register
from deepfake_moe.paths import cache_dir

UPSAMPLERS = ("transposed", "nearest", "bilinear", "pixelshuffle")
STRIDE = 4  # two stride-2 stages


@dataclass
class AESettings:
    steps: int = 1000  # about 0.3 s a step on one free core: ~5 minutes per autoencoder
    batch: int = 16
    crop: int = 64
    width: int = 32
    lr: float = 2e-3
    hf_weight: float = 1.0  # L1 of the high-pass residual
    spectrum_weight: float = 0.1  # L1 of log(1 + |FFT|)
    train_images: int = 2000
    seed: int = 0


def _up(kind: str, cin: int, cout: int):
    from torch import nn

    if kind == "transposed":
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1)
    if kind == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, 1, 1), nn.PixelShuffle(2))
    mode = {"nearest": "nearest", "bilinear": "bilinear"}[kind]
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(cin, cout, 3, 1, 1))


def build_autoencoder(upsampler: str, width: int = 32):
    from torch import nn

    if upsampler not in UPSAMPLERS:
        raise ValueError(f"unknown upsampler {upsampler!r}; known: {UPSAMPLERS}")
    w = width
    act = functools.partial(nn.LeakyReLU, 0.2)
    return nn.Sequential(
        nn.Conv2d(3, w, 3, 1, 1), act(),
        nn.Conv2d(w, 2 * w, 4, 2, 1), act(),
        nn.Conv2d(2 * w, 4 * w, 4, 2, 1), act(),
        nn.Conv2d(4 * w, 4 * w, 3, 1, 1), act(),
        _up(upsampler, 4 * w, 2 * w), act(),
        _up(upsampler, 2 * w, w), act(),
        nn.Conv2d(w, 3, 3, 1, 1),
    )  # fmt: skip


def _high_pass(x):
    import torch.nn.functional as F

    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)


def reconstruction_loss(out, x, s: AESettings):
    import torch

    l1 = (out - x).abs().mean()
    hf = (_high_pass(out) - _high_pass(x)).abs().mean()
    spec = (torch.log1p(torch.fft.rfft2(out).abs()) - torch.log1p(torch.fft.rfft2(x).abs())).abs().mean()
    return l1 + s.hf_weight * hf + s.spectrum_weight * spec, {"l1": l1.item(), "hf": hf.item(), "spectrum": spec.item()}


def train_autoencoder(images: list[np.ndarray], upsampler: str, s: AESettings, checkpoint: Path, log: Callable | None = None):
    import torch

    torch.manual_seed(s.seed)
    model = build_autoencoder(upsampler, s.width)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = lambda step: s.lr * (0.1 ** (step / max(1, s.steps)))  # noqa: E731 - decays 10x over the run

    def step_fn(step: int) -> dict[str, float]:
        x = torch.from_numpy(trained.random_crops(images, trained.step_rng(s.seed, step), s.batch, s.crop))
        for group in opt.param_groups:
            group["lr"] = sched(step)
        loss, parts = reconstruction_loss(model(x), x, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return parts

    history = trained.train_resumable({"model": model}, {"opt": opt}, step_fn, s.steps, checkpoint, log)
    return model, history


def train_autoencoders(
    image_paths: list[str], s: AESettings, upsamplers: tuple[str, ...] = UPSAMPLERS, root: Path | None = None, log: Callable | None = None
) -> Path:
    """Train (or finish, or find cached) one autoencoder per upsampler; returns their folder."""
    settings = {**asdict(s), "upsamplers": list(upsamplers)}
    folder = (root or cache_dir("autoencoder")) / trained.settings_key(settings, image_paths)
    todo = [u for u in upsamplers if not (folder / f"{u}.safetensors").is_file()]
    if todo:
        images = trained.load_training_images(image_paths, s.train_images)
        for u in todo:
            model, history = train_autoencoder(images, u, s, folder / f"{u}.checkpoint.pt", log)
            last = history[-1] if history else {}
            record = {"upsampler": u, "settings": settings, "images": len(images), "final_losses": last}
            trained.save_weights(model, folder / f"{u}.safetensors", record)
            (folder / f"{u}.checkpoint.pt").unlink(missing_ok=True)
    return folder


@functools.lru_cache(maxsize=8)
def _load(path: str, upsampler: str):
    width = int(trained.read_record(Path(path))["settings"]["width"]) if Path(path).is_file() else AESettings.width
    return trained.load_weights(build_autoencoder(upsampler, width), Path(path))


def reconstruct(rgb: np.ndarray, folder: Path, upsampler: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    model = _load(str(folder / f"{upsampler}.safetensors"), upsampler)
    h, w = rgb.shape[:2]
    ph, pw = -h % STRIDE, -w % STRIDE
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0)[None]
    with torch.inference_mode():
        out = model(F.pad(x, (0, pw, 0, ph), mode="reflect"))[0, :, :h, :w]
    return trained.to_uint8(out)


def weights_folder(options: dict) -> Path:
    if not options.get("weights"):
        raise FileNotFoundError(
            "the autoencoder family needs options.weights: a folder of trained autoencoders "
            "(`deepfake-moe corpus` trains them on its reals; see augment/autoencoder.py)"
        )
    return Path(options["weights"])


@register("autoencoder", label=1, kind="generative")
def autoencoder(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """The real reconstructed by a trained conv autoencoder (transposed/nearest/bilinear/pixel-shuffle decoder)."""
    folder = weights_folder(ctx.options)
    upsamplers = list(ctx.options.get("upsamplers") or UPSAMPLERS)
    upsampler = upsamplers[int(rng.integers(len(upsamplers)))]
    return AugmentResult(reconstruct(rgb, folder, upsampler), {"upsampler": upsampler, "weights": folder.name})
