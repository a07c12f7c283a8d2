"""Probe: do a few real faces from outside LFW teach the generator expert that such faces are real?

The two-group candidate's generator expert (configs/default_generators.yaml) saw LFW as its only real
faces and calls real faces of other looks generated (probe_outside_faces.py). The package registries hold
about 30 other real faces. This probe trains that expert again with one group of them added to its
training reals and measures the other group, which it never saw: a leave-one-real-source-out check.

Each training face gives `--crops` jittered crops (the crop's side x0.85-1.3 and shifted up to 8% around
face mode's framing, shrunk to the corpus's 256 px at most) that leave through the corpus's output chain
(augment/chain.py) as every corpus image does; they join the split manifest's training rows as reals.
For each arm it prints, on the held-out group's face crops as face mode cuts them: the expert's mean
P(fake), how many are above 0.95, and how many are above the expert's own 99.5th percentile of the
test reals (where the candidate's generator group starts to speak); and the expert's AUC on each
generator family of the test set against the test reals.

What it decided (runs/default, 450 steps, 24 crops a face; face-api's 6 demo photos, 19 faces, against
face_recognition's and insightface's test images, 13 faces; 2026-11-29):

| held out | arm | faces: mean P(fake) | > 0.95 | > floor | esrgan | span_sr | autoencoder | dcgan_face | stylegan_lite |
|---|---|---|---|---|---|---|---|---|---|
| face-api (19) | without package faces | 0.659 | 5 | 6 | 0.848 | 0.681 | 0.715 | 0.984 | 1.000 |
| face-api (19) | with 312 crops of the 13 others | 0.589 | 2 | 2 | 0.845 | 0.672 | 0.692 | 0.986 | 1.000 |
| others (13) | without package faces | 0.418 | 1 | 1 | 0.848 | 0.681 | 0.715 | 0.984 | 1.000 |
| others (13) | with 456 crops of face-api's 19 | 0.377 | 0 | 2 | 0.845 | 0.677 | 0.703 | 0.979 | 1.000 |

A few other faces lower the scores of faces unlike them too, but the expert still speaks on 4 of the 32
held-out faces (7 without): thirty faces do not teach a whole-image expert what a real face looks like.
Reading small native patches instead did (probe_native_patches.py: 0 of 32), so the package faces did
not go into the corpus.

    python benchmarks/probe_package_faces.py --group face-api=/work/pkgfaces/face-api \
        --group other=/work/pkgfaces/face_recognition,/work/pkgfaces/insightface --baseline runs/repro_gen/model
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from deepfake_moe.augment.chain import OutputChain, finish
from deepfake_moe.augment.faces import crop_box, find_faces
from deepfake_moe.config import load_yaml
from deepfake_moe.data.image_io import read_image
from deepfake_moe.infer.faces import face_crops
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.infer.weights import load_weights
from deepfake_moe.train.config import TrainConfig
from deepfake_moe.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ["esrgan", "span_sr", "autoencoder", "dcgan_face", "stylegan_lite"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
HEADER = f"{'arm':<28} {'faces':>6} {'>0.95':>6} {'>floor':>8} {'reals':>7} {'floor':>7}" + "".join(f" {f[:9]:>9}" for f in GENERATORS)


def photos(folders: str) -> list[Path]:
    return sorted(p for d in folders.split(",") for p in Path(d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def jittered_crops(rgb: np.ndarray, n: int, rng: np.random.Generator, max_side: int = 256) -> list[np.ndarray]:
    """n crops around each face of `rgb`, each framed a little differently, never enlarged."""
    out = []
    h, w = rgb.shape[:2]
    for face in find_faces(rgb):
        x, y, side, _ = crop_box(face, rgb.shape)
        for _ in range(n):
            s = min(round(side * rng.uniform(0.85, 1.3)), h, w)
            cx = x + side / 2 + rng.uniform(-0.08, 0.08) * side
            cy = y + side / 2 + rng.uniform(-0.08, 0.08) * side
            x0 = int(np.clip(round(cx - s / 2), 0, w - s))
            y0 = int(np.clip(round(cy - s / 2), 0, h - s))
            crop = rgb[y0 : y0 + s, x0 : x0 + s]
            if s > max_side:
                crop = cv2.resize(crop, (max_side, max_side), interpolation=cv2.INTER_AREA)
            out.append(np.ascontiguousarray(crop))
    return out


def face_rows(name: str, folders: str, out: Path, n: int, seed: int) -> pd.DataFrame:
    """The group's jittered face crops written through the output chain, as manifest rows of reals."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for photo in photos(folders):
        for i, crop in enumerate(jittered_crops(read_image(photo), n, rng)):
            data, ext, _ = finish(crop, rng, OutputChain())
            path = out / f"{photo.stem}_{i:03d}.{ext}"
            path.write_bytes(data)
            rows.append({"path": str(path), "label": 0, "source": "real", "origin": f"{name}/{photo.stem}",
                         "dataset": f"package-faces-{name}", "identity": f"{name}/{photo.stem}",
                         "photo": photo.name, "params": "{}"})
    return pd.DataFrame(rows)


def held_out_faces(folders: str) -> list[np.ndarray]:
    """Face mode's crops of every face in the group's photos (photos without a face are skipped)."""
    out = []
    for photo in photos(folders):
        crops, faces = face_crops(read_image(photo))
        out += crops if faces else []
    return out


def generator_test(path: str) -> pd.DataFrame:
    """The test manifest's reals and generator fakes, each row with its family."""
    test = pd.read_parquet(path)
    test = test.assign(family=test["source"].str.split("/").str[0])
    return test[(test["label"] == 0) | test["family"].isin(GENERATORS)].reset_index(drop=True)


def report(name: str, model_dir: Path, faces: list[np.ndarray], test: pd.DataFrame, tiles: int | None = None) -> None:
    """One line: the expert (the model's last) on the held-out faces and on each generator family.
    `tiles`: score a native view with this many tiles a side instead of the model's own."""
    model, config = load_weights(model_dir)
    if tiles is not None:
        spec = config.experts[-1]
        spec.preprocess = dataclasses.replace(spec.preprocess or config.preprocess, tiles=tiles)
    predictor = Predictor(model, config, device="cpu", num_workers=0)
    p_faces = predictor.score_arrays(faces)[:, -1]
    p_test = predictor.score_arrays([read_image(p) for p in test["path"]])[:, -1]
    reals = test["label"].to_numpy() == 0
    floor = np.quantile(p_test[reals], 0.995)
    aucs = []
    for family in GENERATORS:
        rows = reals | (test["family"] == family).to_numpy()
        aucs.append(roc_auc_score(test["label"].to_numpy()[rows], p_test[rows]))
    print(f"{name:<28} {p_faces.mean():>6.3f} {int((p_faces > 0.95).sum()):>6d} {int((p_faces > floor).sum()):>8d} "
          f"{p_test[reals].mean():>7.3f} {floor:>7.3f}" + "".join(f" {a:>9.3f}" for a in aucs), flush=True)


def add_expert_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments every generator-expert probe takes: the recipe, its training manifest and the test."""
    ap.add_argument("--config", default=str(ROOT / "configs" / "default_generators.yaml"))
    ap.add_argument("--manifest", default=str(ROOT / "runs" / "default" / "split" / "manifest.parquet"))
    ap.add_argument("--test", default=str(ROOT / "runs" / "default" / "holdout" / "test.parquet"))


def load_recipe(args: argparse.Namespace) -> TrainConfig:
    """The recipe with `--manifest` as its data and no intermediate checkpoints."""
    cfg = load_yaml(TrainConfig, args.config)
    cfg.data.manifest = args.manifest
    cfg.checkpoint.every_steps = 0
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", required=True, help="NAME=FOLDER[,FOLDER...] of real photos")
    add_expert_arguments(ap)
    ap.add_argument("--baseline", help="the expert trained without package faces (a model folder)")
    ap.add_argument("--crops", type=int, default=24, help="jittered crops per training face")
    ap.add_argument("--work", default=None, help="keep crops and runs here (default: a temporary folder)")
    args = ap.parse_args()

    groups = dict(g.split("=", 1) for g in args.group)
    test = generator_test(args.test)
    base = load_recipe(args)
    manifest = pd.read_parquet(args.manifest)
    work = Path(args.work or tempfile.mkdtemp(prefix="probe_package_faces_"))
    print(HEADER)
    for held, folders in groups.items():
        faces = held_out_faces(folders)
        print(f"-- held out: {held} ({len(faces)} faces)")
        if args.baseline:
            report("without package faces", Path(args.baseline), faces, test)
        extra = pd.concat([face_rows(n, f, work / "crops" / n, args.crops, seed=i)
                           for i, (n, f) in enumerate(groups.items()) if n != held])
        split_cols = [c for c in manifest.columns if c.startswith("split_")]
        extra = extra.assign(cluster=-1, **{c: False for c in split_cols})
        path = work / f"manifest_without_{held}.parquet"
        pd.concat([manifest, extra], ignore_index=True).to_parquet(path)
        cfg = copy.deepcopy(base)
        cfg.data.manifest = str(path)
        train(cfg, work / f"run_without_{held}")
        report(f"with {len(extra)} crops of the others", work / f"run_without_{held}" / "model", faces, test)


if __name__ == "__main__":
    main()
