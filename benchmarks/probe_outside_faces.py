"""Probe: how often does a model call a real face from outside its corpus fake?

Every real face of the offline corpora is an LFW news photo, so a held-out test of those corpora cannot
see a detector that learnt "a face that does not look like LFW is generated". This probe takes real
photos from package registries that no corpus uses, cuts every face as face mode does
(`infer/faces.face_crops`), scores the crops with each model given, and prints the share called fake at
the model's threshold, with each expert's mean P(fake) and how many crops it scores above 0.95.

    npm pack @vladmandic/face-api && tar xzf vladmandic-face-api-*.tgz     # its demo photos sample1-6.jpg
    pip download --no-deps --no-binary :all: face-recognition==1.3.0        # its test images obama*.jpg, biden.jpg
    pip download --no-deps insightface && unzip insightface-*.whl            # its images t1.jpg, Tom_Hanks_54745.png
    python benchmarks/probe_outside_faces.py PHOTO... --weights default --weights runs/default/model

What it decided (2026-11-28; the 12 photos above, 30 faces): the two-group candidate with a generator
expert (`make default-model`) calls 5 of the 30 faces fake, against 0 for the shipped first model, its edit
experts alone. The generator expert, trained with LFW as its only real faces beside generated faces, scores
these real faces 0.59 on average (6 above 0.95; LFW test reals: 0.21), so the candidate was not shipped
(docs/model-card.md). The model shipped since (2026-11-29), whose generator expert reads native 64 px patches
(probe_native_patches.py), calls none of them fake; its generator expert scores them 0.43 (0 above 0.95).
"""

from __future__ import annotations

import argparse

from deepfake_moe.data.image_io import read_image
from deepfake_moe.infer.faces import face_crops
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.infer.weights import load_weights
from deepfake_moe.model.groups import join


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="+", help="real photos holding faces")
    ap.add_argument("--weights", action="append", required=True, help="a model folder, or `default`")
    ap.add_argument("--max-faces", type=int, default=16)
    args = ap.parse_args()

    crops = [c for path in args.photos for c in face_crops(read_image(path), args.max_faces)[0]]
    print(f"{len(crops)} face crops from {len(args.photos)} photos")
    for weights in args.weights:
        model, config = load_weights(None if weights == "default" else weights)
        probs = Predictor(model, config, device="cpu", num_workers=0).score_arrays(crops)
        p = join(probs, config.groups)
        experts = ", ".join(f"{m:.2f} ({n} > 0.95)" for m, n in zip(probs.mean(axis=0), (probs > 0.95).sum(axis=0)))
        print(f"{weights}: {int((p >= config.threshold).sum())} of {len(p)} called fake at threshold "
              f"{config.threshold:.4f}; mean P(fake) {p.mean():.3f}; experts' mean P(fake): {experts}")


if __name__ == "__main__":
    main()
