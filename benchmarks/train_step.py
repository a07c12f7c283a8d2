"""Training throughput and peak memory of one expert's full training step.

A step = forward with features (L_ce, L_nce) + the noise-perturbed forward (L_kl) + backward +
AdamW + EMA update, on synthetic data (no image decoding), as `deepfake-moe train` runs it.
Each case runs in its own subprocess so its peak memory (max RSS on CPU, max allocated on
CUDA) is its own. bf16 is compared against fp32 measured in the same run.

    python benchmarks/train_step.py                   # tiny expert + efficientnet_b0 @ 256 px, fp32 vs bf16
    python benchmarks/train_step.py --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CASES = {
    "tiny": {"backbone": "test_efficientnet", "size": 64, "batch": 16},
    "efficientnet_b0@256": {"backbone": "efficientnet_b0", "size": 256, "batch": 16},
}


def run_case(backbone: str, size: int, batch: int, precision: str, steps: int, warmup: int, device: str,
             channels_last: bool = False, compile_model: bool = False) -> dict:
    import torch
    from timm.optim import create_optimizer_v2

    from deepfake_moe.model.expert import Expert
    from deepfake_moe.runtime import autocast
    from deepfake_moe.train.config import LossConfig
    from deepfake_moe.train.ema import ExpertEma
    from deepfake_moe.train.loop import ExpertTrainStep

    dev = torch.device(device)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    expert = Expert(backbone).to(dev, memory_format=fmt)
    step_model = ExpertTrainStep(expert, LossConfig()).train()
    if compile_model:
        step_model = torch.compile(step_model)
    optimizer = create_optimizer_v2(expert, "adamw", lr=1e-4, weight_decay=0.05)
    ema = ExpertEma(expert)
    images = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    labels = torch.arange(batch, device=dev) % 2

    def step():
        with autocast(precision, dev):
            loss, _ = step_model(images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(expert)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"images_per_s": steps * batch / seconds, "peak_mib": peak / 2**20, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        c = json.loads(args.child)
        print(json.dumps(run_case(**c)))
        return

    from deepfake_moe.runtime import describe_cpu

    print(describe_cpu())
    print(f"device {args.device}, {args.threads} thread(s), {os.cpu_count()} visible CPU(s); "
          f"{args.steps} timed steps after {args.warmup} warm-up; loss = ce + nce + kl (2 forwards)")
    print(f"{'case':<22}{'precision':<10}{'batch':>6}{'images/s':>11}{'peak MiB':>10}{'vs fp32':>9}")
    for name in args.cases:
        base = None
        for precision in args.precisions:
            spec = dict(CASES[name], precision=precision, steps=args.steps, warmup=args.warmup, device=args.device)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name:<22}{precision:<10} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            base = r["images_per_s"] if precision == "fp32" else base
            ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
            print(f"{name:<22}{precision:<10}{spec['batch']:>6}{r['images_per_s']:>11.1f}{r['peak_mib']:>10.0f}{ratio:>9}",
                  flush=True)


if __name__ == "__main__":
    main()
