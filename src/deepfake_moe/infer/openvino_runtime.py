"""Exported experts compiled by OpenVINO for the CPU: fp32 (exact), bf16 where the CPU computes it natively, or
the int8 files quantised for them (infer/quantize.py).

On 2 cores of an AMX Xeon, the published 7 experts at 512 px ran 1.14x ONNX Runtime's speed in fp32 and
3.4x the published loop in bf16 (benchmarks/infer_published.py); the default model's network 1.1x in fp32
and 2x in bf16 (benchmarks/probe_openvino.py). What `--runtime auto` runs on a CPU where it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

from deepfake_moe.model.checkpoint import CheckpointError

# the plan's precision -> OpenVINO's inference precision (which it would otherwise pick itself: bf16 on AMX).
# An int8 file (infer/quantize.py) carries its int8 layers in its quantise/dequantise nodes; the rest runs f32.
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


class OpenVinoSession:
    """One exported expert compiled for the CPU, run like an ONNX Runtime session (`run(outputs, feeds)`)."""

    def __init__(self, path: str | os.PathLike, threads: int, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO runs fp32, bf16 or int8, not {precision!r}")
        try:
            import openvino as ov
        except ImportError:
            raise CheckpointError("--runtime openvino needs OpenVINO: pip install openvino") from None
        # No compiled-model cache (CACHE_DIR): OpenVINO writes its entries in place, unsafe for shards started
        # side by side, and compiling the published seven experts takes about 8 s.
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Pinning would bind every process to the same first cores of its affinity mask: shards run side
            # by side on one machine, or decoding workers, would then queue on them. It gained nothing measurable.
            "ENABLE_CPU_PINNING": False,
        }
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise CheckpointError(f"{path}: OpenVINO cannot compile it: {e}") from None
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request runs one call at a time, and serve calls from threads

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            result = self.request.infer(feeds)
            return [np.array(result[name]) for name in outputs]  # copies: the request reuses its output memory
