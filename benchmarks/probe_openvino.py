"""Probe: the network alone (no decoding), per exported expert, in ONNX Runtime and OpenVINO.

Times each expert's ONNX file on one random batch, the runtimes taking turns: ONNX Runtime fp32 and
int8 (the project's QDQ quantisation, calibrated on random inputs: speed only), OpenVINO fp32, bf16
(where the CPU has it natively) and the same int8 file. Prints ms/image and each row's ratio to ONNX Runtime fp32, measured
in the same run.

What it decided (2 cores of an AMX Xeon, 2026-11-28, 3 rounds):
- `--runtime auto` runs fp32 and bf16 through OpenVINO. In fp32 it is level with ONNX Runtime or
  ahead (|dp| <= 4e-7): 1.09x-1.13x on the default model's EfficientNet-Lite0 experts (112 px, batch
  64), 0.99x on EfficientNet-B4, 1.17x on B6 and 1.30x on ConvNeXt-V2 (512 px, batch 4). In bf16:
  about 2x on EfficientNet-Lite0, 1.79x on B4, 2.20x on B6, 2.92x on ConvNeXt-V2.
- int8 stays on ONNX Runtime unless asked. OpenVINO ran the same int8 files 1.1x-1.7x faster than ONNX
  Runtime did, but slower than its own bf16 on the published experts; on CPUs without native bf16 (AVX2
  only) it may be the faster int8 path: not measured. Since 2026-11-29 `--runtime openvino --precision
  int8` runs them (the default model end to end: 206 against 148 images/s, but an AUC change of -0.0075
  against -0.0029: benchmarks/predict_default.py, infer_published.py).
- `predict` keeps one infer request on all threads (OpenVINO's latency mode). Throughput mode, one stream
  per core with the batch split between them ("2 streams" rows; 2026-11-29), ran the default model's
  experts 0.98x-1.12x as fast as latency mode in fp32 and 0.89x-1.04x in bf16 (batch 64, 3 rounds), and
  EfficientNet-B4 at 512 px (batch 2) 1.13x in fp32 and 1.06x in bf16: too little, and too uneven, to split
  every batch between two requests.

    python benchmarks/probe_openvino.py                                   # the built-in default model
    python benchmarks/probe_openvino.py --backbones tf_efficientnet_b4,convnextv2_tiny --size 512 --batch 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfake_moe.runtime import describe_cpu, native_bf16


def expert_files(args, folder: Path) -> list[tuple[str, Path]]:
    from deepfake_moe.infer.export import cached_expert_files
    from deepfake_moe.infer.weights import load_weights

    if not args.backbones:
        model, config = load_weights(args.weights)
        return [(s.backbone, f) for s, f in zip(config.experts, cached_expert_files(model, config))]
    names = args.backbones.split(",")
    return list(zip(names, export_backbones(names, args.size, folder)))


def export_backbones(backbones: list[str], size: int, folder: Path) -> list[Path]:
    """One ONNX file per expert with random weights (seeded; duplicates share a file, as cached exports of
    equal weights would)."""
    from deepfake_moe.data.transforms import PreprocessConfig
    from deepfake_moe.infer.export import export_expert
    from deepfake_moe.model.expert import Expert

    files = {}
    for name in dict.fromkeys(backbones):
        torch.manual_seed(0)
        files[name] = export_expert(Expert(name).eval(), PreprocessConfig(input_size=size), folder / f"{name}.onnx")
    return [files[b] for b in backbones]


class StreamsSession:
    """OpenVINO's throughput mode: `streams` infer requests, each on its share of the threads, the batch
    split between them (the alternative to one request on all threads, which `predict` runs)."""

    def __init__(self, path: Path, threads: int, streams: int, precision: str = "f32"):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams, "ENABLE_CPU_PINNING": False}
        self.queue = ov.AsyncInferQueue(ov.Core().compile_model(str(path), "CPU", config), streams)
        self.streams = streams

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (name, x), = feeds.items()
        chunks = np.array_split(x, self.streams)
        results = [None] * len(chunks)

        def keep(request, i):
            results[i] = [np.array(request.get_tensor(o).data) for o in outputs]

        self.queue.set_callback(keep)
        for i, chunk in enumerate(chunks):
            self.queue.start_async({name: chunk}, i)
        self.queue.wait_all()
        return [np.concatenate([r[k] for r in results]) for k in range(len(outputs))]


def in_turns(runs: dict, x: np.ndarray, rounds: int, block: int = 4) -> dict[str, float]:
    """Median ms per image of each session: blocks of `block` calls, the sessions taking turns for `rounds`
    rounds (a shared machine's speed drifts within a minute). Each block's first call is not counted: ONNX
    Runtime's threads keep spinning after a run and would slow whichever runtime comes next."""
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, session in runs.items():
            for i in range(block + 1):
                start = time.perf_counter()
                session.run(["p_fake"], {"image": x})
                if i:
                    times[label].append(time.perf_counter() - start)
    return {label: 1000 * float(np.median(t)) / len(x) for label, t in times.items()}


def print_rows(runs: dict, x: np.ndarray, ms: dict[str, float], base: str) -> None:
    """Each session's ms/image, its ratio to `base`'s and its max |dp| against `base` on `x`."""
    ref = runs[base].run(["p_fake"], {"image": x})[0]
    for label, session in runs.items():
        dp = np.abs(session.run(["p_fake"], {"image": x})[0] - ref).max()
        print(f"  {label:22s} {ms[label]:8.2f} ms/image  {ms[base] / ms[label]:5.2f}x {base}  max|dp| {dp:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="a checkpoint folder (default: the built-in model)")
    ap.add_argument("--backbones", default="", help="timm backbones with random weights instead of --weights")
    ap.add_argument("--size", type=int, default=512, help="input size of --backbones")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import onnxruntime as ort

    from deepfake_moe.infer.openvino_runtime import OpenVinoSession
    from deepfake_moe.infer.quantize import quantize_expert

    torch.set_num_threads(args.threads)
    print(describe_cpu())
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fp32 in expert_files(args, Path(tmp)):
            ort_fp32 = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
            shape = ort_fp32.get_inputs()[0].shape[1:]  # (3, S, S), or (T, 3, S, S) for a tiled native view
            size = shape[-1]
            x = rng.uniform(-2, 2, (args.batch, *shape)).astype(np.float32)
            int8 = quantize_expert(fp32, Path(tmp) / f"{fp32.stem}.int8.onnx", x[:8])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            runs = {"onnxruntime fp32": ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"]),
                    "onnxruntime int8": ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"]),
                    "openvino fp32": OpenVinoSession(fp32, args.threads),
                    "openvino int8 file": OpenVinoSession(int8, args.threads, "int8")}
            if args.threads > 1:
                runs[f"openvino fp32 {args.threads} streams"] = StreamsSession(fp32, args.threads, args.threads)
            if native_bf16("cpu"):
                runs["openvino bf16"] = OpenVinoSession(fp32, args.threads, "bf16")
                if args.threads > 1:
                    runs[f"openvino bf16 {args.threads} streams"] = StreamsSession(fp32, args.threads, args.threads, "bf16")
            ms = in_turns(runs, x, args.rounds)
            print(f"\n{name} at {size} px, batch {args.batch}, {args.threads} threads, {args.rounds} rounds")
            print_rows(runs, x, ms, "onnxruntime fp32")


if __name__ == "__main__":
    main()
