"""Split-stage speed: k-means on synthetic features, and encoding throughput.

k-means: synthetic float32 features (Gaussian blobs, 512 dims), origin groups of 4 rows (a real and
three derived images), our `cluster()` with MiniBatchKMeans; each size runs in a fresh process so
its peak memory (max RSS) is its own. Baseline in the same run: scikit-learn's full-batch KMeans
(Lloyd) on the 100k set, with the adjusted Rand index between the two as the quality check.

Encoding: images/s of the offline encoder (efficientnet_lite0, ImageNet weights from the package)
on 512 px JPEGs at 256 px input, through `encode()` (reading, DataLoader workers, cache writes),
against the network's forward pass alone on a preloaded batch.

    python benchmarks/cluster.py                      # 100k and 1M rows (the 1M run takes minutes)
    python benchmarks/cluster.py --rows 100000 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(rows: int, dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blobs with spread like pooled CNN features; built in chunks to keep the peak at one array."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, dim)).astype(np.float32)
    x = np.empty((rows, dim), np.float32)
    truth = rng.integers(0, k, rows // 4).repeat(4)[:rows]
    truth = np.concatenate([truth, np.zeros(rows - len(truth), np.int64)])
    for s in range(0, rows, 65536):
        e = min(rows, s + 65536)
        x[s:e] = centres[truth[s:e]] + rng.normal(0, 1.5, (e - s, dim)).astype(np.float32)
    origins = np.arange(rows) // 4
    labels = (np.arange(rows) % 4 != 0).astype(np.int64)
    return x, origins, labels, truth


def one_kmeans_run(rows: int, dim: int, k: int, method: str) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from deepfake_moe.split.cluster import ClusterConfig, cluster

    x, origins, labels, truth = synthetic(rows, dim, k)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    if method == "ours":
        pred = cluster(x, origins, labels, np.ones(rows, bool), ClusterConfig(k=k, backend="sklearn")).labels
    else:  # full-batch Lloyd k-means on the same prepared group means: the baseline
        from sklearn.cluster import KMeans

        from deepfake_moe.split.cluster import group_means, prepare

        means, counts = group_means(prepare(x, ClusterConfig(k=k)), origins, origins.max() + 1)
        group_pred = KMeans(k, n_init=3, random_state=0).fit(means, sample_weight=counts).labels_
        pred = group_pred[origins]
    seconds = time.perf_counter() - t
    return {
        "rows": rows, "dim": dim, "k": k, "method": method, "seconds": round(seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rss_after_data_gb": round(rss_data, 2), "data_gb": round(x.nbytes / 2**30, 2),
        "ari_vs_truth": round(float(adjusted_rand_score(truth, pred)), 4),
    }


def run_isolated(rows: int, dim: int, k: int, method: str) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{rows},{dim},{k},{method}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def make_jpegs(folder: Path, n: int) -> list[str]:
    import cv2

    try:
        from skimage import data

        sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:
        sources = [np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)]
    paths = []
    for i in range(n):
        img = cv2.resize(sources[i % len(sources)], (512, 512))
        img = np.roll(img, i * 11, axis=1)
        p = folder / f"{i}.jpg"
        cv2.imwrite(str(p), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(str(p))
    return paths


def encoding_throughput(n_images: int, size: int, workers: int, batch: int) -> dict:
    import torch

    from deepfake_moe.split.config import EncoderConfig
    from deepfake_moe.split.encode import build_encoder, encode

    cfg = EncoderConfig("efficientnet_lite0", "offline", size, batch_size=batch, num_workers=workers)
    encoder = build_encoder(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), n_images)
        encode(paths[:batch], cfg, Path(tmp) / "warm", progress=False, encoder=encoder)  # warm-up
        t = time.perf_counter()
        result = encode(paths, cfg, Path(tmp) / "cache", progress=False, encoder=encoder)
        pipeline = time.perf_counter() - t
        assert result.encoded == n_images and result.ok.all()
        t = time.perf_counter()
        again = encode(paths, cfg, Path(tmp) / "cache", progress=False, encoder=encoder)
        cached = time.perf_counter() - t
        assert again.encoded == 0
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        encoder.module(x)
        t = time.perf_counter()
        reps = max(1, n_images // batch)
        for _ in range(reps):
            encoder.module(x)
        forward = time.perf_counter() - t
    return {
        "images": n_images, "size": size, "workers": workers, "batch": batch,
        "encode_images_per_s": round(n_images / pipeline, 1),
        "forward_only_images_per_s": round(reps * batch / forward, 1),
        "cached_rerun_s": round(cached, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000], help="sizes (none: skip k-means)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true", help="skip full-batch KMeans at the smallest size")
    ap.add_argument("--images", type=int, default=128, help="images for the encoding benchmark (0 = skip)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        rows, dim, k, method = args.one.split(",")
        print(json.dumps(one_kmeans_run(int(rows), int(dim), int(k), method)))
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from deepfake_moe.runtime import describe_cpu  # here: each --one child measures its own memory without torch

    print(describe_cpu())
    print(f"cpu cores visible: {os.cpu_count()}, threads: {args.threads}, load average: {os.getloadavg()}")
    results = []
    if args.rows and not args.no_baseline:
        results.append(run_isolated(min(args.rows), args.dim, args.k, "full-kmeans"))
        print(json.dumps(results[-1]), flush=True)
    for rows in args.rows:
        results.append(run_isolated(rows, args.dim, args.k, "ours"))
        print(json.dumps(results[-1]), flush=True)
    if args.rows and not args.no_baseline:
        base = results[0]
        ours = next(r for r in results[1:] if r["rows"] == base["rows"])
        print(f"\nMiniBatchKMeans vs full KMeans at {base['rows']} rows: "
              f"{base['seconds'] / ours['seconds']:.1f}x faster, ARI {ours['ari_vs_truth']} vs {base['ari_vs_truth']}")
    if results:
        print("\nrows x dim      method   seconds  peak RSS GB  features GB  ARI vs truth")
    for r in results:
        print(f"{r['rows']:>8} x {r['dim']:<4} {r['method']:>11} {r['seconds']:>8} {r['peak_rss_gb']:>8} "
              f"{r['data_gb']:>14} {r['ari_vs_truth']:>12}")
    if args.images:
        import torch

        torch.set_num_threads(args.threads)
        enc = encoding_throughput(args.images, args.size, args.workers, args.batch_size)
        print("\n" + json.dumps(enc))
        print(f"encoding, efficientnet_lite0 offline at {enc['size']} px: {enc['encode_images_per_s']} images/s "
              f"through encode() vs {enc['forward_only_images_per_s']} images/s forward alone "
              f"({enc['encode_images_per_s'] / enc['forward_only_images_per_s']:.2f}x); "
              f"cached rerun {enc['cached_rerun_s']} s")


if __name__ == "__main__":
    main()
