"""GPU training-throughput check: tf_efficientnet_b4 at 512 px, bf16, batch 32, synthetic data.

Runs the project's full training step (L_ce + L_nce + L_kl with its perturbed second forward,
backward, AdamW, EMA) and prints images/s and peak GPU memory, with fp32 measured in the same
run as the baseline. Needs only torch and timm plus this repository's src/ (no install).

    python benchmarks/gpu_train_check.py                 # on a machine with a CUDA GPU
    python benchmarks/gpu_train_check.py --channels-last --compile
    python benchmarks/gpu_train_check.py --dry-run       # tiny model on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import run_case


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tf_efficientnet_b4")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    ap.add_argument("--no-baseline", action="store_true", help="skip the fp32 baseline")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, 64 px, batch 4, 2 steps on CPU")
    args = ap.parse_args()

    import torch

    if args.dry_run:
        args.backbone, args.size, args.batch, args.steps, args.warmup = "test_efficientnet", 64, 4, 2, 1
        device = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA GPU here; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    else:
        device = "cuda"
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{args.backbone} @ {args.size} px, batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, "
          f"channels_last={args.channels_last}, compile={args.compile}")
    results = {}
    for precision in (["bf16"] if args.no_baseline else ["fp32", "bf16"]):
        case = run_case(args.backbone, args.size, args.batch, precision, args.steps, args.warmup,
                        device, args.channels_last, args.compile)
        rate, peak = case["images_per_s"], case["peak_mib"] / 1024
        results[precision] = rate
        if device == "cuda":
            torch.cuda.empty_cache()  # the finished case's tensors are freed on return
        ratio = f"  ({rate / results['fp32']:.2f}x fp32)" if "fp32" in results and precision != "fp32" else ""
        print(f"{precision}: {rate:.1f} images/s, peak memory {peak:.1f} GiB{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
