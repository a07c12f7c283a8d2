"""End-to-end speed of `predict` with the built-in default model, from JPEG files on this machine.

Measures, in one run: JPEG decoding + preprocessing alone (the floor), the predictor with PyTorch,
with its JPEGs decoded by the workers (`--jpeg-decoder cpu`) and on the model's device (`device`:
nvJPEG on CUDA, torchvision's libjpeg-turbo in the main process on a CPU), and on a CPU with OpenVINO
(what `predict` uses there: fp32, bf16 where the CPU has it natively, and int8 calibrated on the shipped
examples) and with ONNX Runtime (its choice where OpenVINO is not installed).
Images are 150x150 and 256x256 JPEGs made from the sample images.

    python benchmarks/predict_default.py [--images 512] [--workers N] [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from deepfake_moe.data.image_io import read_image
from deepfake_moe.data.transforms import preprocess_views
from deepfake_moe.infer.export import cached_onnx
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.infer.quantize import calibration_batch, calibration_images
from deepfake_moe.infer.weights import load_weights
from deepfake_moe.runtime import describe_cpu, native_bf16

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def make_jpegs(folder: Path, n: int) -> list[str]:
    sources = [cv2.imread(str(p)) for p in sorted(EXAMPLES.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        size = 150 if i % 2 else 256
        y, x = rng.integers(0, img.shape[0] - 300), rng.integers(0, img.shape[1] - 300)
        crop = cv2.resize(img[y : y + 300, x : x + 300], (size, size), interpolation=cv2.INTER_AREA)
        p = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(p), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(p))
    return paths


def rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: what predict picks)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: what predict picks")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each path; the median is reported")
    ap.add_argument("--weights", default=None, help="default: the built-in model")
    ap.add_argument("--device", default="cpu", help="cpu (2 threads) or cuda")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.device == "cpu":
        torch.set_num_threads(2)
    elif not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: no CUDA GPU here")
    model, config = load_weights(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        views = config.views()[0]
        runs = {"decode + preprocess only (1 process)":
                lambda: [preprocess_views(read_image(p, backend=config.image_backend), views) for p in paths]}
        paths_to = {"predictor, PyTorch fp32": (model, "cpu")}
        if all(v.mode != "native" for v in views):  # native crops are cut from the decoded image on the CPU
            paths_to["predictor, PyTorch fp32, JPEGs on the device"] = (model, "device")
        if args.device == "cpu":
            paths_to["predictor, ONNX Runtime fp32"] = (cached_onnx(model, config), "cpu")
            paths_to["predictor, OpenVINO fp32"] = (cached_onnx(model, config, runtime="openvino"), "cpu")
            if native_bf16("cpu"):
                paths_to["predictor, OpenVINO bf16"] = (cached_onnx(model, config, precision="bf16", runtime="openvino"), "cpu")
            calib = [calibration_batch(calibration_images(None), v, config.image_backend) for v in views]
            for runtime, name in (("openvino", "OpenVINO"), ("onnxruntime", "ONNX Runtime")):
                paths_to[f"predictor, {name} int8"] = (cached_onnx(model, config, precision="int8", calibration=calib,
                                                                   runtime=runtime), "cpu")
        probs, batches = {}, {}
        for name, (runner, decoder) in paths_to.items():
            pred = Predictor(runner, config, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                             jpeg_decoder=decoder)
            batches[name] = pred.batch_size
            probs[name] = np.array([r.probability for r in pred.predict(paths)])  # warm-up, and its answers
            runs[name] = lambda pred=pred: pred.predict(paths)
        # Interleaved repeats: a shared machine's speed drifts by tens of percent within a minute.
        rates = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                rates[name].append(rate(fn, len(paths)))
    dp = {name: float(np.abs(p - probs["predictor, PyTorch fp32"]).max()) for name, p in probs.items()}
    base = float(np.median(rates["predictor, PyTorch fp32"]))
    print(describe_cpu())
    print(f"{config.name}: {len(config.experts)} experts at {', '.join(f'{v.input_size} px {v.mode}' for v in views)}; "
          f"{args.images} JPEGs (150 and 256 px), {pred.num_workers} decoding workers, on {args.device}; "
          f"median of {args.repeats} interleaved runs [min, max]")
    for name, r in rates.items():
        med = float(np.median(r))
        diff = f"  max |dp| {dp[name]:.1e}  batch {batches[name]}" if name in dp else ""
        print(f"{name:46s} {med:8.1f} images/s [{min(r):6.1f}, {max(r):6.1f}]  ({med / base:4.2f}x PyTorch){diff}")


if __name__ == "__main__":
    main()
