"""Inference speed on the published 7-expert architecture: our predictor against the published loop.

Random weights are written in the published format (weight.pth + ema.state), imported, and scored on
the same images by (c) the reference loop (one image at a time, EMA swapped in per forward, as the
winners' script), (a) our predictor in fp32, (b) our predictor with bf16 autocast, and (d) the ONNX
Runtime export (fp32). Prints images/s, ratios against (c) and max |dp| against (c).

    python benchmarks/infer_published.py                # 7 published experts at 512 px (slow: minutes)
    python benchmarks/infer_published.py --images 4 --backbones test_efficientnet,test_convnext
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from deepfake_moe.data.image_io import ImageLimits
from deepfake_moe.infer.export import export_onnx
from deepfake_moe.infer.predictor import DecodeAndPreprocess, Predictor
from deepfake_moe.model.published import PUBLISHED_BACKBONES, load_published
from test_published import reference_predict, write_published


def make_images(folder: Path, n: int) -> list[Path]:
    import cv2

    demo = sorted(Path(__file__).resolve().parents[2].glob("shared/demo/*.jpg"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if demo:
            img = cv2.imread(str(demo[i % len(demo)]))
            img = np.roll(img, i * 7, axis=1)
        else:
            img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        p = folder / f"{i}.jpg"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--backbones", default=",".join(PUBLISHED_BACKBONES))
    ap.add_argument("--onnx", action="store_true",
                    help="also time ONNX Runtime (its export of the 7-expert model needs over 20 GB of memory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backbones = tuple(args.backbones.split(","))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        experts, ema = write_published(tmp, backbones)
        paths = make_images(tmp, args.images)
        model, config = load_published(tmp, backbones=backbones)

        t_ref, ref = timed(lambda: np.array([reference_predict(experts, ema, p) for p in paths]))
        results = {"(c) reference loop": (t_ref, ref)}
        for name, precision in (("(a) predictor fp32", "fp32"), ("(b) predictor bf16", "bf16")):
            pred = Predictor(model, config, precision=precision, batch_size=args.batch_size, num_workers=0)
            pred.predict(paths[:1])  # warm-up (oneDNN primitive creation)
            t, rows = timed(lambda pred=pred: np.array([r.probability for r in pred.predict(paths)]))
            results[name] = (t, rows)

        if args.onnx:
            onnx_path = tmp / "model.onnx"
            export_onnx(model, config, onnx_path, check=False)
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            data = DecodeAndPreprocess(tuple(config.views()[0]), config.image_backend, ImageLimits(max_pixels=10**9))

            def run_ort():
                out = []
                for s in range(0, len(paths), args.batch_size):
                    batch = torch.stack([data(str(p))[0] for p in paths[s : s + args.batch_size]])
                    out.append(session.run(None, {"image": batch.numpy()})[0])
                return np.concatenate(out)

            run_ort()
            results["(d) onnxruntime fp32"] = timed(run_ort)

        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, config.preprocess.input_size, config.preprocess.input_size))
        gflops = counter.get_total_flops() / 1e9

    print(f"{len(backbones)} experts ({', '.join(backbones)}), {config.preprocess.input_size} px, "
          f"{args.images} images, {args.threads} threads, batch {args.batch_size}; {gflops:.1f} GFLOPs/image")
    print(f"{'path':28s} {'s/image':>9s} {'images/s':>9s} {'vs (c)':>7s} {'max|dp| vs (c)':>15s}")
    for name, (t, probs) in results.items():
        print(f"{name:28s} {t / args.images:9.3f} {args.images / t:9.2f} {t_ref / t:6.2f}x "
              f"{np.abs(np.asarray(probs) - ref).max():15.2e}")


if __name__ == "__main__":
    main()
