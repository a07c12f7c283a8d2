"""`stylegan_lite`: a small StyleGAN2 generator the project trains on the corpus's reals (64-128 px).

The architecture of Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR
2020), scaled down: a mapping network (z -> w), a learnt 4x4 constant, modulated and demodulated
3x3 convolutions, per-pixel noise inputs, up-sampling by zero insertion and the [1, 3, 3, 1] FIR
filter (bilinear), and ToRGB outputs summed through up-sampled skips; a residual discriminator with
minibatch standard deviation; non-saturating logistic loss with lazy R1, Adam (0, 0.99), EMA of the
generator. Even an imperfect generator carries this architecture's fingerprint (the skips' and the
filtered up-sampling's spectrum), the closest offline relative of the StyleGAN faces people meet.

Weights: cache_dir("stylegan_lite")/<key>/generator.safetensors (the EMA generator) + .json,
made by `train_stylegan` (called by `corpus`; about 30 CPU minutes at 64 px with the defaults,
resumable; a GPU is not needed); the family reads them from options.weights (that folder).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfake_moe.augment import trained
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register
from deepfake_moe.paths import cache_dir

FIR = (1.0, 3.0, 3.0, 1.0)
SQRT2 = math.sqrt(2.0)


@dataclass
class StyleGANSettings:
    size: int = 64  # output side, a power of two >= 8
    z_dim: int = 128
    width: int = 64  # channels at 4..16 px; halved at each doubling above (never below 16)
    mapping_layers: int = 4
    batch: int = 8
    steps: int = 1800  # about 1 s a step on one free CPU core at 64 px: the ~30 minute budget
    lr: float = 2e-3
    r1_gamma: float = 0.1
    r1_every: int = 4
    ema_beta: float = 0.999
    train_images: int = 4000
    seed: int = 0


def channels(s: StyleGANSettings, res: int) -> int:
    return max(16, s.width // max(1, res // 16))


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time, not at init)."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), bias_init / lr_mul))
        self.scale, self.lr_mul = lr_mul / math.sqrt(cin), lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


def _fir_kernel(channels: int) -> torch.Tensor:
    f = torch.tensor(FIR)
    k = torch.outer(f, f)
    return (k / k.sum() * 4).expand(channels, 1, 4, 4).contiguous()  # gain 4: zero insertion keeps 1/4 of the samples


def upsample(x: torch.Tensor) -> torch.Tensor:
    """x2 by zero insertion and the [1, 3, 3, 1] filter: bilinear interpolation (align_corners=False)."""
    c = x.shape[1]
    return F.conv_transpose2d(x, _fir_kernel(c).to(x), stride=2, padding=1, groups=c)


def downsample(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), _fir_kernel(c).to(x) / 4, stride=2, groups=c)


class ModulatedConv(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, kernel: int = 3, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.modulation = EqualLinear(w_dim, cin, bias_init=1.0)
        self.scale, self.demodulate, self.up, self.pad = 1 / math.sqrt(cin * kernel * kernel), demodulate, up, kernel // 2

    def forward(self, x, w):
        # StyleGAN2's non-fused form (styles scale the activations, not per-sample weights):
        # the same result as the grouped convolution, and several times faster on CPUs.
        style = self.modulation(w)
        weight = self.scale * self.weight
        x = x * style[:, :, None, None]
        if self.up:
            x = upsample(x)
        out = F.conv2d(x, weight, padding=self.pad)
        if self.demodulate:
            demod = torch.rsqrt((weight[None].pow(2) * style[:, None, :, None, None].pow(2)).sum((2, 3, 4)) + 1e-8)
            out = out * demod[:, :, None, None]
        return out


class StyledLayer(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv(cin, cout, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, w, noise):
        x = self.conv(x, w)
        x = x + self.noise_strength * noise
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class ToRGB(nn.Module):
    def __init__(self, cin: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(cin, 3, w_dim, kernel=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x, w, skip):
        rgb = self.conv(x, w) + self.bias.view(1, -1, 1, 1)
        return rgb if skip is None else rgb + upsample(skip)


class Generator(nn.Module):
    def __init__(self, s: StyleGANSettings):
        super().__init__()
        if s.size < 8 or s.size & (s.size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {s.size}")
        layers = []  # z is pixel-normalised in map()
        for _ in range(s.mapping_layers):
            layers += [EqualLinear(s.z_dim, s.z_dim, lr_mul=0.01), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.const = nn.Parameter(torch.randn(1, channels(s, 4), 4, 4))
        self.resolutions = [2**i for i in range(2, int(math.log2(s.size)) + 1)]
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for res in self.resolutions:
            cin = channels(s, max(4, res // 2))
            if res > 4:
                self.convs.append(StyledLayer(cin, channels(s, res), s.z_dim, up=True))
            self.convs.append(StyledLayer(channels(s, res), channels(s, res), s.z_dim))
            self.to_rgbs.append(ToRGB(channels(s, res), s.z_dim))
        self.register_buffer("w_avg", torch.zeros(s.z_dim))
        self.z_dim = s.z_dim

    def map(self, z, psi: float = 1.0):
        w = self.mapping(z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8))
        return w if psi == 1.0 else self.w_avg + psi * (w - self.w_avg)

    def noises(self, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One noise map per styled layer (the first at 4 px, then two per resolution)."""
        sizes = [4] + [r for r in self.resolutions[1:] for _ in (0, 1)]
        return [torch.randn(batch, 1, r, r, generator=generator) for r in sizes]

    def forward(self, z, noises=None, psi: float = 1.0):
        w = self.map(z, psi)
        noises = noises or self.noises(z.shape[0])
        x = self.const.expand(z.shape[0], -1, -1, -1)
        rgb, layer = None, 0
        for i, _ in enumerate(self.resolutions):
            for _ in range(1 if i == 0 else 2):
                x = self.convs[layer](x, w, noises[layer])
                layer += 1
            rgb = self.to_rgbs[i](x, w, rgb)
        return rgb


class Discriminator(nn.Module):
    def __init__(self, s: StyleGANSettings):
        super().__init__()
        res = [2**i for i in range(int(math.log2(s.size)), 2, -1)]  # size .. 8
        self.from_rgb = nn.Conv2d(3, channels(s, s.size), 1)
        self.blocks = nn.ModuleList()
        for r in res:
            cin, cout = channels(s, r), channels(s, r // 2)
            self.blocks.append(nn.ModuleDict({"conv1": nn.Conv2d(cin, cin, 3, 1, 1), "conv2": nn.Conv2d(cin, cout, 3, 1, 1), "skip": nn.Conv2d(cin, cout, 1, bias=False)}))
        c4 = channels(s, 4)
        self.final_conv = nn.Conv2d(c4 + 1, c4, 3, 1, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c4 * 16, c4), nn.LeakyReLU(0.2), nn.Linear(c4, 1))

    def forward(self, x):
        x = F.leaky_relu(self.from_rgb(x), 0.2)
        for b in self.blocks:
            y = F.leaky_relu(b["conv1"](x), 0.2)
            y = F.leaky_relu(b["conv2"](downsample(y)), 0.2)
            x = (y + b["skip"](downsample(x))) / SQRT2
        group = min(4, x.shape[0])
        std = x.reshape(group, -1, *x.shape[1:]).std(0).mean((1, 2, 3)).repeat(group)  # minibatch std
        x = torch.cat([x, std.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])], 1)
        return self.head(F.leaky_relu(self.final_conv(x), 0.2))


def _r1(d: Discriminator, real: torch.Tensor) -> torch.Tensor:
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
    return grad.pow(2).sum((1, 2, 3)).mean()


def make_step(g, d, g_ema, opt_g, opt_d, images: list[np.ndarray], s: StyleGANSettings) -> Callable[[int], dict[str, float]]:
    """One training step (D then G), with all its randomness drawn from (seed, step)."""

    def step_fn(step: int) -> dict[str, float]:
        rng = trained.step_rng(s.seed, step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        real = torch.from_numpy(trained.random_crops(images, rng, s.batch, s.size))
        z = torch.randn(s.batch, s.z_dim, generator=gen)
        d_loss = F.softplus(d(g(z, g.noises(s.batch, gen)).detach())).mean() + F.softplus(-d(real)).mean()
        if step % s.r1_every == 0:
            d_loss = d_loss + s.r1_gamma / 2 * _r1(d, real) * s.r1_every
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        z = torch.randn(s.batch, s.z_dim, generator=gen)
        g_loss = F.softplus(-d(g(z, g.noises(s.batch, gen)))).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            for pe, p in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(p, 1 - s.ema_beta)
            g_ema.w_avg.lerp_(g.map(z).mean(0), 1 - 0.995)
        return {"d": float(d_loss.detach()), "g": float(g_loss.detach())}

    return step_fn


def train_stylegan(image_paths: list[str], s: StyleGANSettings, root: Path | None = None, log: Callable | None = None) -> Path:
    """Train (or finish, or find cached) a StyleGAN-lite; returns the folder of its EMA generator."""
    import copy

    folder = (root or cache_dir("stylegan_lite")) / trained.settings_key(asdict(s), image_paths)
    if (folder / "generator.safetensors").is_file():
        return folder
    torch.manual_seed(s.seed)
    g, d = Generator(s), Discriminator(s)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=s.lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=s.lr, betas=(0.0, 0.99))
    images = trained.load_training_images(image_paths, s.train_images)
    step_fn = make_step(g, d, g_ema, opt_g, opt_d, images, s)
    modules = {"g": g, "d": d, "g_ema": g_ema}
    history = trained.train_resumable(modules, {"g": opt_g, "d": opt_d}, step_fn, s.steps, folder / "checkpoint.pt", log)
    record = {"settings": asdict(s), "images": len(images), "final_losses": history[-1] if history else {}}
    trained.save_weights(g_ema, folder / "generator.safetensors", record)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return folder


@functools.lru_cache(maxsize=2)
def load_generator(folder: str) -> Generator:
    path = Path(folder) / "generator.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"StyleGAN-lite weights not found: {path}")
    s = StyleGANSettings(**trained.read_record(path)["settings"])
    return trained.load_weights(Generator(s), path)


def generate(folder: str, seed: int, psi: float) -> np.ndarray:
    g = load_generator(folder)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, g.z_dim, generator=gen)
    with torch.inference_mode():
        return trained.to_uint8(g(z, g.noises(1, gen), psi=psi)[0])


@register("stylegan_lite", label=1, kind="generative")
def stylegan_lite(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """A face from the project's StyleGAN-lite at its native size; the real gives only the seed."""
    if not ctx.options.get("weights"):
        raise FileNotFoundError("stylegan_lite needs options.weights: the folder `deepfake-moe corpus` trains it into")
    lo, hi = ctx.options.get("psi", (0.6, 1.0))
    seed, psi = int(rng.integers(2**62)), round(float(rng.uniform(lo, hi)), 3)
    image = generate(str(ctx.options["weights"]), seed, psi)
    return AugmentResult(image, {"seed": seed, "psi": psi, "weights": Path(ctx.options["weights"]).name, "size": image.shape[0]})
