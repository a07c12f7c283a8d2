"""Probe: OpenVINO int8 quantised by NNCF (OpenVINO's own post-training quantiser) against OpenVINO bf16.

Per backbone (random weights, exported to ONNX): OpenVINO fp32, bf16 (where native) and the NNCF int8
model (calibrated on random inputs: speed only), its unquantised layers in f32 and in bf16, the runtimes
taking turns on one batch (`probe_openvino.in_turns`). Needs `pip install nncf`, which the project does not
depend on: this probe is why.

What it decided (2 cores of an AMX Xeon, 2026-11-28, 512 px, batch 4): NNCF int8 is no fast mode on the
published experts. tf_efficientnet_b4: fp32 165 ms/image, bf16 103, int8 187 (224 with bf16 rest);
convnextv2_tiny: fp32 400, bf16 171, int8 210 (204). AMX-int8 does not beat AMX-bf16 here, and
EfficientNet's depthwise convolutions gain nothing from int8, so bf16 stays the CPU fast mode.

    pip install nncf && python benchmarks/probe_nncf_int8.py
    python benchmarks/probe_nncf_int8.py --backbones test_efficientnet --size 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepfake_moe.runtime import describe_cpu, native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_openvino import export_backbones, in_turns, print_rows


class Compiled:
    """An OpenVINO model (ONNX file or IR) compiled for the CPU at one inference precision."""

    def __init__(self, core, path: str, precision: str, threads: int):
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        self.request = core.compile_model(path, "CPU", config).create_infer_request()

    def run(self, outputs: list[str], feeds: dict) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        return [np.array(result[name]) for name in outputs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="tf_efficientnet_b4,convnextv2_tiny")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        import nncf
    except ImportError:
        sys.exit("this probe needs NNCF: pip install nncf")
    import openvino as ov

    print(describe_cpu())
    core = ov.Core()
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (args.batch, 3, args.size, args.size)).astype(np.float32)
    calibration = [rng.uniform(-2, 2, (1, 3, args.size, args.size)).astype(np.float32) for _ in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones.split(","):
            (fp32,) = map(str, export_backbones([name], args.size, Path(tmp)))
            start = time.perf_counter()
            quantised = nncf.quantize(core.read_model(fp32), nncf.Dataset(calibration), subset_size=len(calibration),
                                      fast_bias_correction=True)
            quantise_s = time.perf_counter() - start
            int8 = str(Path(tmp) / f"{name}.int8.xml")
            ov.save_model(quantised, int8)
            runs = {"openvino fp32": Compiled(core, fp32, "f32", args.threads),
                    "nncf int8, rest f32": Compiled(core, int8, "f32", args.threads)}
            if native_bf16("cpu"):
                runs["openvino bf16"] = Compiled(core, fp32, "bf16", args.threads)
                runs["nncf int8, rest bf16"] = Compiled(core, int8, "bf16", args.threads)
            ms = in_turns(runs, x, args.rounds, block=2)
            print(f"\n{name} at {args.size} px, batch {args.batch}, {args.threads} threads (quantised in {quantise_s:.0f} s)")
            print_rows(runs, x, ms, "openvino bf16" if "openvino bf16" in runs else "openvino fp32")


if __name__ == "__main__":
    main()
