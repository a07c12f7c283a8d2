"""int8 experts: ONNX Runtime static quantisation, per channel, calibrated on real images.

Convolutions, matrix products and their ReLU/ReLU6 get int8 weights (one scale per output channel) and uint8
activations whose ranges come from calibration images run through the fp32 expert; the classifier
head and the softmax stay in float, so the probability is not rounded to 1/255 steps. Without VNNI
(AVX-512 VNNI, AVX-VNNI or AMX int8), the uint8 x int8 products of AVX2 can saturate, so weights are
quantised to 7 bits there (`reduce_range`), chosen at run time from the CPU flags.

A recipe (`Int8Recipe`) names the calibration method and the node groups left in float; `DEFAULT_RECIPE`
is the one used and `benchmarks/probe_int8.py` measures every recipe against fp32. Measured
(trained efficientnet_lite0 expert of the default model, 8 LFW faces; the published architectures only
with random weights, where deep networks amplify any rounding): the calibration images decide most of
the error (max |dp| 0.024 calibrated on the two shipped examples, 0.017 on 15 other faces), while
Percentile calibration (0.019 / 0.046) and a float stem (0.033), last convolution (0.024) or depthwise
convolutions (0.28) do not help, so MinMax on all quantisable nodes stays the choice: calibrate on images
like those you score.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfake_moe.data.decode_pool import decoded_image, read_images
from deepfake_moe.data.image_io import is_image_path
from deepfake_moe.data.transforms import PreprocessConfig, preprocess
from deepfake_moe.errors import ConfigError
from deepfake_moe.io import atomic_path
from deepfake_moe.runtime import cpu_flags

VNNI_CPU_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Clip/Relu with the convolutions: their outputs are quantised after the activation (ReLU6 keeps 0..6),
# not over the convolution's full pre-activation range (a 10x coarser step: mean |dp| 0.09 -> 0.02 measured).
QUANTIZED_OPS = ["Conv", "MatMul", "Clip", "Relu"]
CALIBRATION_MAX_IMAGES = 64
QUANTIZE_SETTINGS = "qdq-u8s8-per-channel"  # with the recipe's key: part of the cache key
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"


def int8_reduce_range() -> bool:
    """7-bit weights where the CPU has no VNNI dot products (avoids uint8 x int8 saturation)."""
    return not (cpu_flags() & VNNI_CPU_FLAGS)


def _producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def _stem(graph) -> list[str]:
    """The first convolution: it reads the normalised pixels, whose fine differences carry the traces."""
    return [n.name for n in graph.node if n.op_type == "Conv"][:1]


def _last_conv(graph) -> list[str]:
    return [n.name for n in graph.node if n.op_type == "Conv"][-1:]


def _squeeze_excite(graph) -> list[str]:
    """Convolutions on pooled (1x1) maps, the squeeze-excite gates: cheap, and their error scales whole channels."""
    prod = _producers(graph)
    pooled = {o for n in graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool") for o in n.output}
    names = []
    for n in graph.node:  # graph order: a gate's reducing conv comes before its expanding conv
        if n.op_type != "Conv":
            continue
        src = prod.get(n.input[0])
        # the expanding conv reads the reducing conv through its activation (Sigmoid/Mul, Relu, ...)
        feeds = [n.input[0]] + ([i for i in src.input] if src is not None and src.op_type != "Conv" else [])
        if any(i in pooled for i in feeds):
            pooled.update(n.output)
            names.append(n.name)
    return names


def _layer_norm_matmuls(graph) -> list[str]:
    """Matrix products reading a LayerNorm's output (ConvNeXt's first MLP layer): a few channels carry
    outliers, so one scale for the tensor leaves the rest a handful of levels."""
    prod = _producers(graph)
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Conv")
            and getattr(prod.get(n.input[0]), "op_type", "") == "LayerNormalization"]


def _other_matmuls(graph) -> list[str]:
    """Matrix products not reading a LayerNorm (ConvNeXt's second MLP layer, after GELU and GRN)."""
    prod = _producers(graph)
    return [n.name for n in graph.node if n.op_type == "MatMul"
            and getattr(prod.get(n.input[0]), "op_type", "") != "LayerNormalization"]


def _depthwise(graph) -> list[str]:
    return [n.name for n in graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


# node groups a recipe can keep in float, by what they are in the graph (names differ between exporters)
FLOAT_GROUPS = {
    "stem": _stem,
    "last_conv": _last_conv,
    "squeeze_excite": _squeeze_excite,
    "layer_norm_matmul": _layer_norm_matmuls,
    "other_matmul": _other_matmuls,
    "depthwise": _depthwise,
}


@dataclass(frozen=True)
class Int8Recipe:
    """How an expert is quantised: the calibration method and the node groups left in float."""

    name: str
    calibrate: str = "minmax"  # minmax, percentile or entropy (onnxruntime's calibrators)
    keep_float: tuple[str, ...] = ()
    percentile: float = 99.999
    op_types: tuple[str, ...] = tuple(QUANTIZED_OPS)

    def float_nodes(self, graph) -> list[str]:
        return sorted({name for g in self.keep_float for name in FLOAT_GROUPS[g](graph)})

    def calibration_args(self) -> dict:
        from onnxruntime.quantization import CalibrationMethod

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.calibrate]
        extra = {}
        if self.calibrate != "minmax":  # histograms of full activations: one image's at a time
            extra = {"CalibStridedMinMax": 1, "CalibPercentile": self.percentile}
        return {"calibrate_method": method, "extra_options": extra}

    def key(self) -> str:
        return f"{self.calibrate}{self.percentile if self.calibrate == 'percentile' else ''}:" \
               f"{'+'.join(self.keep_float)}:{','.join(self.op_types)}"


RECIPES = {r.name: r for r in [
    Int8Recipe("minmax"),
    Int8Recipe("percentile", "percentile"),
    Int8Recipe("entropy", "entropy"),
    Int8Recipe("minmax-float-stem", keep_float=("stem",)),
    Int8Recipe("minmax-float-se", keep_float=("squeeze_excite",)),
    Int8Recipe("minmax-float-last", keep_float=("last_conv",)),
    Int8Recipe("minmax-float-ln-matmul", keep_float=("layer_norm_matmul",)),
    Int8Recipe("minmax-float-other-matmul", keep_float=("other_matmul",)),
    Int8Recipe("minmax-float-depthwise", keep_float=("depthwise",)),
    Int8Recipe("minmax-float-stem-se-last", keep_float=("stem", "squeeze_excite", "last_conv")),
    Int8Recipe("percentile-float-stem-se-last", "percentile", keep_float=("stem", "squeeze_excite", "last_conv")),
]}


DEFAULT_RECIPE = RECIPES["minmax"]  # the measured best (module docstring) for every architecture probed so far


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
    paths = [str(p) for p in paths]
    images = [decoded_image(rgb, p) for p, rgb in zip(paths, read_images(paths, backend=backend))]
    if len(images) < min_inputs:
        images = [v for img in images for v in _views(img)]
    return np.stack([preprocess(img, cfg).numpy() for img in images]).astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a batch of inputs, one image per run; `set_range`
    lets the histogram calibrators take the inputs in slices (memory: one image's activations at a time)."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs
        self.start, self.end = 0, len(inputs)
        self.i = 0

    def __len__(self):
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int):
        self.start, self.end, self.i = start_index, min(end_index, len(self.inputs)), start_index

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return {"image": self.inputs[self.i - 1 : self.i]}

    def rewind(self):
        self.i = self.start


def quantize_expert(fp32: str | os.PathLike, out: str | os.PathLike, calibration: np.ndarray,
                    reduce_range: bool | None = None, recipe: Int8Recipe | None = None) -> Path:
    """Static int8 quantisation (QDQ, per channel) of one exported expert, written atomically; `recipe`:
    the calibration and the nodes kept in float (default: `DEFAULT_RECIPE`)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    with atomic_path(out) as tmp:
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            recipe = recipe or DEFAULT_RECIPE
            # the histogram calibrators print their bins on stdout, where predict may be writing its table
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                quantize_static(
                    str(prepared), str(tmp), _Reader(calibration),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(recipe.op_types), per_channel=True,
                    reduce_range=int8_reduce_range() if reduce_range is None else reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=recipe.float_nodes(graph), **recipe.calibration_args(),
                )
        finally:
            prepared.unlink(missing_ok=True)
    return out


def cached_int8_files(fp32_files: Sequence[Path], calibration: Sequence[np.ndarray]) -> list[Path]:
    """int8 versions of the cached fp32 experts (calibration: each expert's inputs), keyed by the
    calibration inputs, the expert's recipe and the CPU's VNNI."""
    reduce_range = int8_reduce_range()
    out = []
    for f, calib in zip(fp32_files, calibration):
        h = hashlib.sha256(f"{QUANTIZE_SETTINGS}:{DEFAULT_RECIPE.key()}".encode() + np.ascontiguousarray(calib).tobytes())
        q = f.with_name(f"{f.stem}.int8-{h.hexdigest()[:16]}{'-rr' if reduce_range else ''}.onnx")
        if not q.is_file():
            quantize_expert(f, q, calib, reduce_range)
        out.append(q)
    return out
