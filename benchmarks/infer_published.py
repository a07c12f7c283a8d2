"""Inference on the published 7-expert architecture: our paths against the published loop, in one run.

Prints the instruction sets found (figures from different CPUs read side by side) and the ceiling: the
experts' GFLOP per image (PyTorch's FLOP counter) against what this CPU's fp32 GEMM reaches on the
same threads, so that every path's s/image reads as a share of the machine; then:

1. Speed and |dp| (random weights written in the published format, JPEGs made from the examples):
   (c) the published loop (one image at a time, EMA swapped in per forward) in this process, and each
   of our paths end to end from the JPEG files (decoding included) in its own process, so that its
   peak RSS is its own, the per-expert export and int8 quantisation included (one cache, cold at the
   start, so the first path pays the export and the first int8 path the quantisation):
   exact = OpenVINO fp32 (what `predict` runs) and ONNX Runtime fp32, fast = OpenVINO bf16 and
   PyTorch bf16 channels_last (only where the CPU has native bf16) and static int8 (calibrated on the
   shipped examples) in ONNX Runtime (what `predict --precision int8` runs) and OpenVINO, and PyTorch
   fp32 (what `predict` ran on big models before).
   Every path is timed warm, after one image (the loop) or one batch (ours) of the same size: a long
   job's speed, not its start-up (each runtime builds kernels and buffers for an input shape once).
2. The AUC change of the fast modes on a labelled set. Random weights make AUC meaningless, so this
   uses the shipped default model, on the holdout test set when it exists (--labelled), else on 128 LFW
   faces (../shared/data/lfw150.tar; crops of the shipped examples without it) plus one edit-family fake
   made from each.
3. With --device cuda: the decode floor (CPU decoding against nvJPEG), then images/s of the network in
   fp32, bf16/fp16 channels_last, and bf16 compiled with CUDA graphs (`predict --compile`; its warm-up,
   minutes for seven experts, is printed too).

    python benchmarks/infer_published.py --images 8          # 7 experts at 512 px: ~15 min on 2 cores
    python benchmarks/infer_published.py --images 4 --backbones test_efficientnet,test_convnext --size 64
    python benchmarks/infer_published.py --device cuda --images 256
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
import torch

from deepfake_moe.infer.plan import compile_available, make_plan
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.model.published import PUBLISHED_BACKBONES, load_published
from deepfake_moe.runtime import describe_cpu, native_bf16, set_threads, usable_cores

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test_published: the published loop and weight writer

LABELLED = Path("/work/runs/default/holdout/test.parquet")
LFW = ROOT.parent / "shared" / "data" / "lfw150.tar"
# name -> (runtime, precision) of the child processes
PATHS = {"exact: openvino fp32": ("openvino", "fp32"), "exact: onnxruntime fp32": ("onnxruntime", "fp32"),
         "fast: openvino bf16": ("openvino", "bf16"), "fast: openvino int8": ("openvino", "int8"),
         "fast: onnxruntime int8": ("onnxruntime", "int8"),
         "fast: torch bf16 channels_last": ("torch", "bf16"), "torch fp32 channels_last": ("torch", "fp32")}


def make_images(folder: Path, n: int, size: int = 600) -> list[str]:
    import cv2

    sources = [cv2.imread(str(p)) for p in sorted((ROOT / "examples").glob("*.jpg"))]
    paths = []
    for i in range(n):
        img = np.roll(sources[i % len(sources)], i * 37, axis=1)
        p = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(p), cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(str(p))
    return paths


def child(args) -> None:
    """One of our paths in a fresh process: export/quantise (cold cache), warm-up on one batch, timed pass; JSON out."""
    from deepfake_moe.infer.export import cached_onnx
    from deepfake_moe.infer.quantize import calibration_batch, calibration_images

    runtime, precision = PATHS[args.child]
    paths = json.loads(Path(args.paths_file).read_text())
    model, config = load_published(args.folder, backbones=tuple(args.backbones.split(",")), input_size=args.size)
    plan = make_plan("cpu", precision, runtime, args.size)
    set_threads(min(torch.get_num_threads(), plan.threads))
    t = time.perf_counter()
    if runtime != "torch":
        calib = None
        if precision == "int8":
            calib = [calibration_batch(calibration_images(args.calibration), v, config.image_backend)
                     for v in config.views()[0]]
        model = cached_onnx(model, config, precision=precision, calibration=calib, runtime=runtime)
    prepare_s = time.perf_counter() - t
    pred = Predictor(model, config, device="cpu", precision=precision if runtime == "torch" else "fp32",
                     batch_size=plan.batch_size, num_workers=plan.workers)
    # Warm-up on a whole batch: the runtimes build kernels and buffers for each new input shape, and the
    # first batch of a shape cost OpenVINO about 1.5x a warm one on the published experts.
    pred.predict(paths[: plan.batch_size])
    t = time.perf_counter()
    rows = pred.predict(paths)
    print(json.dumps({"s": time.perf_counter() - t, "prepare_s": prepare_s, "plan": plan.describe(),
                      "probs": [r.probability for r in rows]}))


def ceiling(args) -> tuple[float, float]:
    """(GFLOP per image of the experts at --size, fp32 GEMM GFLOP/s on this process's threads), printed."""
    from torch.utils.flop_counter import FlopCounterMode

    from deepfake_moe.model.expert import Expert

    set_threads()
    per_expert = {}
    for name in dict.fromkeys(args.backbones.split(",")):
        expert = Expert(name).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            expert(torch.zeros(1, 3, args.size, args.size))
        per_expert[name] = counter.get_total_flops() / 1e9
        del expert
    gflop = sum(per_expert[b] for b in args.backbones.split(","))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(5))
    gemm = 2 * 2048**3 / best / 1e9
    print(f"\n0. ceiling: {gflop:.1f} GFLOP per image at {args.size} px (" +
          ", ".join(f"{b} {g:.1f}" for b, g in per_expert.items()) + f"); fp32 GEMM on {torch.get_num_threads()} "
          f"thread(s): {gemm:.0f} GFLOP/s, so {gflop / gemm:.2f} s/image if every FLOP ran at GEMM speed")
    return gflop, gemm


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_child(name: str, args, folder: Path, paths_file: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--folder", str(folder), "--paths-file", str(paths_file),
           "--backbones", args.backbones, "--size", str(args.size)] + (["--calibration", args.calibration] if args.calibration else [])
    env = {**os.environ, "DEEPFAKE_MOE_CACHE": str(cache)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed (status {status})")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_gb": usage.ru_maxrss / 2**20}


def speed(args, gflop: float, gemm: float) -> None:
    from test_published import reference_predict, write_published

    backbones = tuple(args.backbones.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        experts, ema = write_published(tmp, backbones)
        paths = make_images(tmp, args.images)
        (tmp / "paths.json").write_text(json.dumps(paths))
        reference_predict(experts, ema, paths[0], size=args.size)  # warm-up, as for our paths
        t = time.perf_counter()
        ref = np.array([reference_predict(experts, ema, p, size=args.size) for p in paths])
        t_ref = time.perf_counter() - t
        del experts, ema
        results = {}
        for name, (_, precision) in PATHS.items():
            if precision == "bf16" and not native_bf16("cpu"):
                print(f"{name}: skipped (no native bf16 on this CPU)")
                continue
            results[name] = run_child(name, args, tmp, tmp / "paths.json", tmp / "cache")
    print(f"\n1. speed: {len(backbones)} experts ({', '.join(backbones)}) at {args.size} px, {args.images} JPEGs "
          f"({usable_cores()} cores, shared: timings are noisy, ratios are within this run)")
    print(f"{'path':32s} {'s/image':>8s} {'vs (c)':>7s} {'GFLOP/s':>8s} {'of GEMM':>8s} {'max|dp|':>9s} {'mean|dp|':>9s} "
          f"{'prepare s':>9s} {'peak RSS':>9s}  plan")

    def rate(seconds: float) -> str:
        return f"{gflop / seconds:8.1f} {100 * gflop / seconds / gemm:7.0f}%"

    t_loop = t_ref / args.images
    print(f"{'(c) published loop':32s} {t_loop:8.3f} {1:6.2f}x {rate(t_loop)} {0:9.1e} {0:9.1e} {'':9s} {'':9s}  "
          "1 image at a time")
    for name, r in results.items():
        dp = np.abs(np.array(r["probs"]) - ref)
        print(f"{name:32s} {r['s'] / args.images:8.3f} {t_ref / r['s']:6.2f}x {rate(r['s'] / args.images)} {dp.max():9.1e} "
              f"{dp.mean():9.1e} {r['prepare_s']:9.1f} {r['rss_gb']:7.2f}GB  {r['plan']}")
    print("prepare s: export to ONNX, OpenVINO's compilation, int8 calibration + quantisation; the paths share one "
          "cache, cold at the start: the first path pays the export, the first int8 path the quantisation; peak RSS "
          "includes them")
    for target in (3, 6):
        print(f"{target}x the published loop: {t_loop / target:.3f} s/image, {rate(t_loop / target).split()[0]} GFLOP/s "
              f"({100 * gflop * target / t_loop / gemm:.0f}% of this CPU's fp32 GEMM rate)")


def labelled_set(args, folder: Path) -> tuple[list[str], np.ndarray, str]:
    import pandas as pd

    if args.labelled and Path(args.labelled).is_file():
        df = pd.read_parquet(args.labelled)
        if args.auc_images and args.auc_images < len(df):
            df = df.sample(n=args.auc_images, random_state=0)
        return df["path"].astype(str).tolist(), df["label"].to_numpy(), f"{args.labelled} ({len(df)} images)"
    from PIL import Image

    from deepfake_moe.augment.registry import AugmentContext, list_families

    rng = np.random.default_rng(0)
    reals, what = real_images(folder / "reals", 128)
    edits = [f for f in list_families() if f.kind == "edit" and f.label == 1]
    context = AugmentContext(donor=lambda r: (str(j := int(r.integers(len(reals)))), reals[j]))
    paths, labels = [], []
    for i, real in enumerate(reals):
        fake = edits[i % len(edits)].fn(real, rng, context).image  # each real also gives one fake
        for label, img in ((0, real), (1, fake)):
            p = folder / f"{i:03d}_{label}.jpg"
            Image.fromarray(img).save(p, quality=90)
            paths.append(str(p))
            labels.append(label)
    return paths, np.array(labels), f"{what} + as many edit-family fakes made from them ({len(paths)} images)"


def lfw_faces(folder: Path, n: int) -> list[Path]:
    """n faces spread over ../shared/data/lfw150.tar (every k-th), extracted into `folder`."""
    import tarfile

    with tarfile.open(LFW) as tar:
        faces = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
        tar.extractall(folder, members=faces[:: max(1, len(faces) // n)][:n], filter="data")
    return sorted(folder.rglob("*.jpg"))


def real_images(folder: Path, n: int) -> tuple[list[np.ndarray], str]:
    """n real faces from ../shared/data/lfw150.tar where it exists, else 256 px crops of the shipped examples."""
    from deepfake_moe.data.image_io import read_image

    if LFW.is_file():
        faces = lfw_faces(folder, n)
        return [read_image(p) for p in faces], f"{len(faces)} LFW faces"
    rng = np.random.default_rng(1)
    crops = []
    for src in sorted((ROOT / "examples").glob("*.jpg")) * (n // 2):
        rgb = read_image(src)
        y, x = rng.integers(0, rgb.shape[0] - 256), rng.integers(0, rgb.shape[1] - 256)
        crops.append(np.ascontiguousarray(rgb[y : y + 256, x : x + 256]))
    return crops, f"{len(crops)} crops of examples/"


def auc_change(args) -> None:
    from sklearn.metrics import roc_auc_score

    from deepfake_moe.infer.export import cached_onnx
    from deepfake_moe.infer.quantize import calibration_batch, calibration_images
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(None)
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels, what = labelled_set(args, Path(tmp))
        calib = [calibration_batch(calibration_images(args.calibration), v, config.image_backend) for v in config.views()[0]]
        runners = {"exact: onnxruntime fp32": (cached_onnx(model, config), "fp32"),
                   "exact: openvino fp32": (cached_onnx(model, config, runtime="openvino"), "fp32"),
                   "fast: openvino int8": (cached_onnx(model, config, precision="int8", calibration=calib,
                                                       runtime="openvino"), "fp32"),
                   "fast: onnxruntime int8": (cached_onnx(model, config, precision="int8", calibration=calib), "fp32")}
        if native_bf16("cpu"):
            runners["fast: openvino bf16"] = (cached_onnx(model, config, precision="bf16", runtime="openvino"), "fp32")
            runners["fast: torch bf16"] = (model, "bf16")
        probs = {name: np.array([r.probability for r in Predictor(m, config, device="cpu", precision=p).predict(paths)])
                 for name, (m, p) in runners.items()}
    ok = ~np.isnan(probs["exact: onnxruntime fp32"])
    base = roc_auc_score(labels[ok], probs["exact: onnxruntime fp32"][ok])
    print(f"\n2. AUC change: {config.name} on {what}; int8 calibrated on {args.calibration or 'the shipped examples/'}")
    print(f"{'path':32s} {'AUC':>7s} {'dAUC':>8s} {'max|dp|':>8s} {'mean|dp|':>9s}")
    for name, p in probs.items():
        dp = np.abs(p[ok] - probs["exact: onnxruntime fp32"][ok])
        print(f"{name:32s} {roc_auc_score(labels[ok], p[ok]):7.4f} {roc_auc_score(labels[ok], p[ok]) - base:+8.4f} "
              f"{dp.max():8.4f} {dp.mean():9.5f}")


def cuda(args) -> None:
    from deepfake_moe.data.image_io import read_image
    from deepfake_moe.data.transforms import preprocess
    from deepfake_moe.infer.device_decode import decode_jpegs
    from test_published import write_published

    backbones = tuple(args.backbones.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_published(tmp, backbones)
        paths = make_images(tmp, args.images)
        model, config = load_published(tmp, backbones=backbones, input_size=args.size)
        t = time.perf_counter()
        for p in paths:
            preprocess(read_image(p, backend=config.image_backend), config.preprocess)
        print(f"decode floor, CPU (1 process): {len(paths) / (time.perf_counter() - t):8.1f} images/s")
        decode_jpegs(paths[:8], config.preprocess, "cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        for s in range(0, len(paths), 64):
            decode_jpegs(paths[s : s + 64], config.preprocess, "cuda")
        torch.cuda.synchronize()
        print(f"decode floor, nvJPEG on the GPU:  {len(paths) / (time.perf_counter() - t):8.1f} images/s")
        batch = decode_jpegs(paths[:8], config.preprocess, "cuda")
        baseline = None
        # eager fp32 is the baseline; compilation (minutes for seven experts) comes last
        for precision, compiled in (("fp32", False), ("auto", False), ("auto", True)):
            if compiled and not compile_available():
                print("compiled: skipped (torch.compile needs triton)")
                continue
            plan = make_plan("cuda", precision, "torch", args.size, compile=compiled)
            pred = Predictor(model, config, device="cuda", precision=plan.precision, batch_size=plan.batch_size,
                             compile=plan.compile)
            x = batch[:1].expand(plan.batch_size, -1, -1, -1).contiguous()
            t = time.perf_counter()
            for _ in range(3):
                pred.score_tensor(x)  # warm-up (compilation, CUDA graph capture)
            torch.cuda.synchronize()
            warm = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(args.repeats):
                pred.score_tensor(x)
            torch.cuda.synchronize()
            rate = args.repeats * plan.batch_size / (time.perf_counter() - t)
            baseline = baseline or rate
            print(f"network, {plan.precision} batch {plan.batch_size}{', compiled' if compiled else ''}: "
                  f"{rate:8.1f} images/s ({rate / baseline:.2f}x eager fp32; warm-up {warm:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="JPEGs timed per path, after the warm-up")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--backbones", default=",".join(PUBLISHED_BACKBONES))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--labelled", default=str(LABELLED), help="parquet manifest (path, label) for the AUC change")
    ap.add_argument("--calibration", help="int8 calibration images (folder; default: the shipped examples/)")
    ap.add_argument("--auc-images", type=int, default=0, help="score a random subset of the labelled set (0: all)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: speed (and its ceiling), auc")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--paths-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    print(describe_cpu())
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA GPU here")
        return cuda(args)
    if "speed" not in args.skip:
        speed(args, *ceiling(args))
    if "auc" not in args.skip:
        auc_change(args)
    print(f"\npeak RSS of this process (published loop, AUC runs): {peak_rss_gb():.2f} GB")


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()
