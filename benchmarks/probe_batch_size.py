"""Probe: the CPU batch size at 512 px, per runtime: warm s/image and peak memory of the published experts.

Each expert (random weights) is exported once to ONNX; each (runtime, batch) pair then runs in a process of
its own, so that its peak RSS is its own: it compiles one session per expert, as `predict` does, runs one
batch to warm up (kernels and buffers are built per input shape) and times the rest. Ratios are against
batch 4 of the same runtime, measured in the same run.

What it decided (2 cores of an AMX Xeon, 2026-11-28): OpenVINO's batch is one 512 px image's worth
(`plan.OPENVINO_BATCH_PIXELS`), ONNX Runtime's stays four (`CPU_BATCH_PIXELS`). Batch 1 against 4 on the seven
experts: OpenVINO fp32 1.53 against 1.69 s/image with 3.0 GB peak against 5.1; OpenVINO bf16 0.84 against 0.93
with 2.5 GB against 3.4; ONNX Runtime (predict's settings, no memory arena) 2.52 against 2.53 with 2.0 GB
against 2.5. The pairs run one after the other, not in turns, on a shared machine: an earlier run had
OpenVINO fp32 at batch 4 ahead (1.78 against 2.10 s/image), so read differences under 15% as noise. At 112 px
(the default model, `predict_default.py`'s JPEGs, three interleaved runs) OpenVINO ran 124.6 images/s at batch
20 against 106.9 at 64, and ONNX Runtime 80.3 against 95.7: its per-call cost wants the larger batch.

    python benchmarks/probe_batch_size.py                               # 7 published experts, ~10 min
    python benchmarks/probe_batch_size.py --backbones test_efficientnet --size 64 --batches 1,4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepfake_moe.model.published import PUBLISHED_BACKBONES
from deepfake_moe.runtime import describe_cpu, native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_openvino import export_backbones


def child(runtime: str, precision: str, batch: int, images: int, threads: int, files: list[str], size: int) -> None:
    if runtime == "openvino":
        from deepfake_moe.infer.openvino_runtime import OpenVinoSession

        sessions = [OpenVinoSession(f, threads, precision) for f in files]
    else:
        from deepfake_moe.infer.export import _session  # predict's ONNX Runtime settings (no memory arena)

        sessions = [_session(f, threads) for f in files]
    x = np.random.default_rng(0).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32)

    def one_batch() -> None:
        for s in sessions:
            s.run(["p_fake"], {"image": x})

    one_batch()  # warm-up
    rounds = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(rounds):
        one_batch()
    print(json.dumps({"s_per_image": (time.perf_counter() - start) / (rounds * batch)}))


def run(pair: tuple[str, str], batch: int, args, files: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([*pair, batch, files]), "--images", str(args.images),
           "--threads", str(args.threads), "--size", str(args.size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{pair} batch {batch} failed (status {status})")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_gb": usage.ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default=",".join(PUBLISHED_BACKBONES))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--images", type=int, default=4, help="images timed per (runtime, batch), after the warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        runtime, precision, batch, files = json.loads(args.child)
        child(runtime, precision, batch, args.images, args.threads, files, args.size)
        return
    batches = [int(b) for b in args.batches.split(",")]
    pairs = [("openvino", "fp32"), ("onnxruntime", "fp32")] + ([("openvino", "bf16")] if native_bf16("cpu") else [])
    print(describe_cpu())
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in export_backbones(args.backbones.split(","), args.size, Path(tmp))]
        results = {(pair, b): run(pair, b, args, files) for pair in pairs for b in batches}
    base = 4 if 4 in batches else batches[-1]
    print(f"\n{len(files)} experts at {args.size} px, {args.threads} threads, {args.images} images timed warm")
    for (pair, b), r in results.items():
        ratio = results[(pair, base)]["s_per_image"] / r["s_per_image"]
        print(f"  {' '.join(pair):18s} batch {b:2d}  {r['s_per_image']:7.3f} s/image  {ratio:5.2f}x batch {base}"
              f"  peak RSS {r['rss_gb']:5.2f} GB")


if __name__ == "__main__":
    main()
