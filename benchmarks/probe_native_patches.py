"""Probe: does a generator expert that reads small native patches stop calling real faces generated?

The two-group candidate's generator expert read the whole image shrunk to 112 px, and learnt in part
that a face unlike LFW's is generated (probe_outside_faces.py). Detectors that see only small patches
keep to local texture and away from a face's look (Chai et al., "What makes fake images detectable?
Understanding properties that generalize", ECCV 2020). This probe trains the same expert
(configs/default_generators.yaml) with a native view instead: random `--size` px crops of the image's
own pixels in training, never resized, and at inference the mean of a `tiles` x `tiles` grid of them.
One training is scored at each --tiles (an inference setting) with probe_package_faces's report: the
outside faces of the package registries (all of them here: none is trained on) and each generator
family of the test set against the test reals.

What it decided (runs/default/split + holdout, 450 steps, the 32 faces of face-api's demo photos and
face_recognition's and insightface's test images, 2026-11-29):

| expert (view) | faces: mean P(fake) | > 0.95 | > floor | floor | esrgan | span_sr | autoencoder | dcgan_face | stylegan_lite |
|---|---|---|---|---|---|---|---|---|---|
| whole image at 112 px (the earlier recipe) | 0.561 | 6 | 7 | 0.871 | 0.848 | 0.681 | 0.715 | 0.984 | 1.000 |
| native 64 px, centre crop | 0.397 | 0 | 0 | 0.833 | 0.763 | 0.640 | 0.637 | 0.938 | 1.000 |
| native 64 px, 2 x 2 tiles | 0.435 | 0 | 0 | 0.830 | 0.777 | 0.633 | 0.646 | 0.940 | 1.000 |
| native 64 px, 3 x 3 tiles | 0.407 | 0 | 0 | 0.830 | 0.800 | 0.650 | 0.666 | 0.941 | 1.000 |

(floor: the expert's 99.5th percentile on the test reals, where the candidate's generator group starts
to speak.) The patch expert speaks on none of the outside faces, against 7 of 32 for the whole-image
expert, and pays 0.04-0.05 AUC on the super-resolution and autoencoder families and 0.04 on the DCGAN
faces. Adding other real faces to the whole-image expert's training instead (probe_package_faces.py)
left 4 of 32 above its floor. The default recipe's generator expert reads 2 x 2 native 64 px tiles:
3 x 3 gained only Real-ESRGAN (+0.02) and halved the default model's speed (`benchmarks/predict_default.py`,
OpenVINO fp32: 88 images/s against 173 for the edit experts alone).

    python benchmarks/probe_native_patches.py --baseline runs/repro_gen/model \
        --faces /work/pkgfaces/face-api,/work/pkgfaces/face_recognition,/work/pkgfaces/insightface
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.train.loop import train
from probe_package_faces import HEADER, ROOT, add_expert_arguments, generator_test, held_out_faces, load_recipe, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", required=True, help="FOLDER[,FOLDER...] of real photos holding faces")
    add_expert_arguments(ap)
    ap.add_argument("--baseline", help="an expert to compare with (a model folder): the whole-image one")
    ap.add_argument("--size", type=int, default=64, help="native crop size")
    ap.add_argument("--tiles", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--work", default=str(ROOT / "runs" / "probe_native_patches"))
    args = ap.parse_args()

    test, faces = generator_test(args.test), held_out_faces(args.faces)
    cfg = load_recipe(args)
    cfg.experts[0].preprocess = PreprocessConfig(input_size=args.size, mode="native", tiles=max(args.tiles))
    run = Path(args.work) / f"native{args.size}"
    if not (run / "model").is_dir():
        train(cfg, run)
    print(f"{len(faces)} outside faces; {int((test['label'] == 0).sum())} test reals\n{HEADER}")
    if args.baseline:
        report("baseline (--baseline)", Path(args.baseline), faces, test)
    for tiles in args.tiles:
        report(f"native {args.size} px, {tiles}x{tiles} tiles", run / "model", faces, test, tiles=tiles)


if __name__ == "__main__":
    main()
