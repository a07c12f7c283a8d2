"""Probe: what keeps the generator expert from learning the super-resolution and autoencoder families?

The default model's generator expert (configs/default_generators.yaml) trains on five generator families,
yet alone it scores two of them, SPAN and the autoencoders, only 0.63-0.65 AUC on the test (Real-ESRGAN 0.78).
Their trace is the finest detail of a 64 px patch, and three settings of the recipe, taken over from the
edit experts, act against exactly that:

- L_kl asks for the same answer under Gaussian noise of std 0.1 (in [-1, 1] units: 13 grey levels), which
  drowns a re-synthesised patch's detail;
- the stem and first blocks stay frozen at their ImageNet weights, while the finest detail is read there;
- 450 steps.

Each arm changes one more of them and trains the same expert on the same split; each is scored alone with
probe_package_faces's report (outside real faces, each generator family of the test against the test reals).

What it decided (runs/default/split + holdout, the 32 faces of face-api's demo photos and face_recognition's
and insightface's test images, 2026-11-29; about 45 minutes on 2 cores):

| arm | faces: mean P(fake) | > 0.95 | > floor | floor | esrgan | span_sr | autoencoder | dcgan_face | stylegan_lite |
|---|---|---|---|---|---|---|---|---|---|
| recipe (noise 0.1, frozen, 450 steps) | 0.435 | 0 | 0 | 0.830 | 0.777 | 0.633 | 0.646 | 0.940 | 1.000 |
| noise 0.01 | 0.393 | 0 | 0 | 0.823 | 0.786 | 0.654 | 0.682 | 0.928 | 1.000 |
| noise 0.01, nothing frozen | 0.430 | 0 | 0 | 0.760 | 0.822 | 0.686 | 0.692 | 0.950 | 1.000 |
| noise 0.01, nothing frozen, 1,500 steps | 0.389 | 0 | 0 | 0.926 | 0.863 | 0.727 | 0.785 | 0.969 | 1.000 |

(floor: the expert's 99.5th percentile on the test reals.) Each change helps; training every layer for
longer helps most (+0.09 Real-ESRGAN and SPAN, +0.14 autoencoders, +0.03 DCGAN faces), and the outside real
faces stay below the floor. The held-out cluster's AUC levels off after step 957 (0.919, the EMA weights
kept; the recipe: 0.845 at step 450), so more steps would buy little. The last arm is
configs/default_generators.yaml since (`make default-model`).

    python benchmarks/probe_generator_recipe.py --manifest runs/default/split/manifest.parquet \\
        --test runs/default/holdout/test.parquet \\
        --faces /work/pkgfaces/face-api,/work/pkgfaces/face_recognition,/work/pkgfaces/insightface
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from deepfake_moe.train.config import TrainConfig
from deepfake_moe.train.loop import train
from probe_package_faces import HEADER, ROOT, add_expert_arguments, generator_test, held_out_faces, load_recipe, report


def arms(base: TrainConfig, steps: int) -> dict[str, TrainConfig]:
    """Name -> config: each arm keeps the previous arm's changes and adds one."""
    out, cfg = {"recipe (noise 0.1, frozen, 450)": base}, copy.deepcopy(base)
    cfg.loss.noise_std = 0.01
    out["noise 0.01"] = cfg
    cfg = copy.deepcopy(cfg)
    cfg.experts[0].freeze = []
    out["noise 0.01, unfrozen"] = cfg
    cfg = copy.deepcopy(cfg)
    cfg.optim.max_steps = steps
    out[f"noise 0.01, unfrozen, {steps}"] = cfg
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", required=True, help="FOLDER[,FOLDER...] of real photos holding faces")
    add_expert_arguments(ap)
    ap.add_argument("--steps", type=int, default=1500, help="the last arm's training steps")
    ap.add_argument("--only", nargs="*", help="run only these arms (by index)", type=int)
    ap.add_argument("--work", default=str(ROOT / "runs" / "probe_generator_recipe"))
    args = ap.parse_args()

    test, faces = generator_test(args.test), held_out_faces(args.faces)
    base = load_recipe(args)
    print(f"{len(faces)} outside faces; {int((test['label'] == 0).sum())} test reals\n{HEADER}", flush=True)
    for i, (name, cfg) in enumerate(arms(base, args.steps).items()):
        if args.only and i not in args.only:
            continue
        run = Path(args.work) / f"arm{i}"
        if not (run / "model").is_dir():
            train(cfg, run)
        report(name, run / "model", faces, test)


if __name__ == "__main__":
    main()
