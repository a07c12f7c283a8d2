"""Edit/benign families and the prepare engine: time per image, and a pool of workers against one.

Per family: mean milliseconds per call on the same images (face detection and landmarks included
when dlib is installed, since edit masks follow faces). Then `run_prepare` over all of them with
workers=1 (the baseline, in-process) and workers=N (process pool), timed in this run on the same
inputs; the two output manifests are compared (they must be identical).

    python benchmarks/prepare.py [--images DIR] [--n 24] [--workers 2]

--images: a folder of real photos (e.g. LFW crops from lfw150.tar, the archive `deepfake-moe corpus --lfw` reads);
without it, 150x150 synthetic images are used (no faces: random-shape masks).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from deepfake_moe.augment.masks import clear_face_cache
from deepfake_moe.augment.prepare import FamilySpec, PrepareConfig, run_prepare
from deepfake_moe.augment.registry import AugmentContext, list_families
from deepfake_moe.data.image_io import is_image_path, read_image
from deepfake_moe.runtime import describe_cpu


def synthetic(n: int, folder: Path) -> list[Path]:
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = cv2.GaussianBlur((rng.random((150, 150, 3)) * 255).astype(np.uint8), (0, 0), 3)
        paths.append(folder / f"s{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", help="folder of real photos")
    parser.add_argument("--n", type=int, default=24, help="number of images")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    if args.images:
        paths = sorted(p for p in Path(args.images).rglob("*") if is_image_path(p))[: args.n]
    else:
        paths = synthetic(args.n, tmp)
    images = [read_image(p) for p in paths]
    families = [f for f in list_families() if f.kind in ("edit", "benign")]

    print(describe_cpu())
    print(f"{len(images)} images, {images[0].shape[1]}x{images[0].shape[0]} px (first)")
    print(f"{'family':16s} {'ms/image':>9s}")
    for fam in families:
        ctx = AugmentContext(donor=lambda rng: ("donor", images[int(rng.integers(len(images)))]))
        fam.fn(images[0], np.random.default_rng(0), ctx)  # warm-up: face models load once
        clear_face_cache()  # each family pays its own face detection here (prepare shares it)
        start = time.perf_counter()
        for i, img in enumerate(images):
            fam.fn(img, np.random.default_rng(i), ctx)
        print(f"{fam.name:16s} {(time.perf_counter() - start) / len(images) * 1000:9.1f}")

    pd.DataFrame({"path": [str(p) for p in paths], "label": 0}).to_csv(tmp / "in.csv", index=False)
    specs = [FamilySpec(f.name) for f in families]
    times, manifests = {}, {}
    for workers in (1, args.workers):
        cfg = PrepareConfig(input=str(tmp / "in.csv"), out_dir=str(tmp / f"out{workers}"), families=specs, workers=workers)
        start = time.perf_counter()
        run_prepare(cfg, progress=False)
        times[workers] = time.perf_counter() - start
        manifests[workers] = pd.read_parquet(tmp / f"out{workers}" / "manifest.parquet")
    outputs = len(images) * len(specs)
    for workers, seconds in times.items():
        print(f"prepare workers={workers}: {seconds:6.2f} s for {outputs} outputs = {outputs / seconds:6.1f} img/s (pool start included)")
    print("(a pool start includes its forkserver loading the face models once per process)")
    print(f"speed-up workers={args.workers} vs 1: {times[1] / times[args.workers]:.2f}x")
    same = manifests[1].drop(columns="path").equals(manifests[args.workers].drop(columns="path"))
    print(f"identical output manifests: {same}")


if __name__ == "__main__":
    main()
