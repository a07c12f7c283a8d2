"""int8 experts: ONNX Runtime static quantisation, per channel, calibrated on real images.

Convolutions, matrix products and their ReLU/ReLU6 get int8 weights (one scale per output channel) and uint8
activations whose ranges come from calibration images run through the fp32 expert; the classifier
head and the softmax stay in float, so the probability is not rounded to 1/255 steps. Without VNNI
(AVX-512 VNNI, AVX-VNNI or AMX int8), the uint8 x int8 products of AVX2 can saturate, so weights are
quantised to 7 bits there (`reduce_range`), chosen at run time from the CPU flags.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepfake_moe.data.image_io import is_image_path, read_image
from deepfake_moe.data.transforms import PreprocessConfig, preprocess
from deepfake_moe.errors import ConfigError
from deepfake_moe.io import atomic_path
from deepfake_moe.runtime import cpu_flags

VNNI_CPU_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Clip/Relu with the convolutions: their outputs are quantised after the activation (ReLU6 keeps 0..6),
# not over the convolution's full pre-activation range (a 10x coarser step: mean |dp| 0.09 -> 0.02 measured).
QUANTIZED_OPS = ["Conv", "MatMul", "Clip", "Relu"]
CALIBRATION_MAX_IMAGES = 64
QUANTIZE_SETTINGS = f"qdq-u8s8-per-channel-minmax:{','.join(QUANTIZED_OPS)}"  # part of the cache key
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"


def int8_reduce_range() -> bool:
    """7-bit weights where the CPU has no VNNI dot products (avoids uint8 x int8 saturation)."""
    return not (cpu_flags() & VNNI_CPU_FLAGS)


def calibration_images(folder: str | os.PathLike | None = None) -> list[Path]:
    """The user's calibration images (a folder, searched recursively), else the shipped examples."""
    root = Path(folder) if folder is not None else EXAMPLES_DIR
    if not root.is_dir():
        hint = "" if folder is not None else " (the shipped examples/ folder is not installed)"
        raise ConfigError(f"int8 calibration needs a folder of images: {root} is not a folder{hint}; "
                          "pass --calibration-images DIR")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p))
    if not paths:
        raise ConfigError(f"int8 calibration: no images in {root}")
    return paths[:CALIBRATION_MAX_IMAGES]


def _views(rgb: np.ndarray) -> list[np.ndarray]:
    """The image, mirrored, and centre crops: more activation statistics from few images."""
    h, w = rgb.shape[:2]
    views = [rgb, rgb[:, ::-1]]
    for f in (0.75, 0.5):
        ch, cw = max(8, int(h * f)), max(8, int(w * f))
        y, x = (h - ch) // 2, (w - cw) // 2
        views.append(rgb[y : y + ch, x : x + cw])
    return [np.ascontiguousarray(v) for v in views]


def calibration_batch(paths: Sequence[str | os.PathLike], cfg: PreprocessConfig, backend: str = "pil",
                      min_inputs: int = 8) -> np.ndarray:
    """(N, 3, S, S) (or (N, T, 3, S, S) for a view of T crops) preprocessed calibration inputs of one view;
    few images are stretched with mirrored and cropped views."""
    images = [read_image(p, backend=backend) for p in paths]
    if len(images) < min_inputs:
        images = [v for img in images for v in _views(img)]
    return np.stack([preprocess(img, cfg).numpy() for img in images]).astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a batch of inputs, one image per run."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs
        self.i = 0

    def get_next(self):
        if self.i >= len(self.inputs):
            return None
        self.i += 1
        return {"image": self.inputs[self.i - 1 : self.i]}

    def rewind(self):
        self.i = 0


def quantize_expert(fp32: str | os.PathLike, out: str | os.PathLike, calibration: np.ndarray,
                    reduce_range: bool | None = None) -> Path:
    """Static int8 quantisation (QDQ, per channel) of one exported expert, written atomically."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    with atomic_path(out) as tmp:
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(tmp), _Reader(calibration),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                reduce_range=int8_reduce_range() if reduce_range is None else reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            prepared.unlink(missing_ok=True)
    return out


def cached_int8_files(fp32_files: Sequence[Path], calibration: Sequence[np.ndarray]) -> list[Path]:
    """int8 versions of the cached fp32 experts (calibration: each expert's inputs), keyed by the
    calibration inputs and the CPU's VNNI."""
    reduce_range = int8_reduce_range()
    out = []
    for f, calib in zip(fp32_files, calibration):
        h = hashlib.sha256(QUANTIZE_SETTINGS.encode() + np.ascontiguousarray(calib).tobytes())
        q = f.with_name(f"{f.stem}.int8-{h.hexdigest()[:16]}{'-rr' if reduce_range else ''}.onnx")
        if not q.is_file():
            quantize_expert(f, q, calib, reduce_range)
        out.append(q)
    return out
