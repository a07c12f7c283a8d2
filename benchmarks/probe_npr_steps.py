"""Probe: is the upsampling-artefact (NPR) expert short of training, or short of generator families?

The leave-one-generator-out table (docs/model-card.md) trains its NPR expert for 400 steps of 32 native
64 px crops, about 13,000 crops. NPR's authors train theirs for far longer on one real GAN. If the held-out
families' AUC still climbs with training, the fix is compute (a `DEVICE=cuda` recipe); if it stays flat,
or falls as the expert fits the families it sees, the corpus's generator families are what is missing.

For each held-out family, leave-one-out's partition (`holdout_partition`: the same pool and test reals as
the model card's table), one NPR expert (`npr_resnet50_l2`, from scratch) trained on the pool's reals and
its other generator families' fakes (the recipe's `fake_sources`), random native crops, labels balanced
per batch, AdamW at a constant learning rate after a short warm-up (so that a longer run is the same run,
only longer), L_ce alone, an EMA of the weights. Every --every steps the EMA weights score the held-out
family's fakes against the test reals (centre crop, as `predict` reads a native view). Images are decoded
once into memory.

What it decided (runs/default/corpus, 2,000 steps, 2026-11-28, about 15 min a family on 2 cores):

| held-out family | 250 | 500 | 750 | 1000 | 1250 | 1500 | 1750 | 2000 |
|---|---|---|---|---|---|---|---|---|
| stylegan_lite | 0.484 | 0.495 | 0.538 | 0.692 | 0.606 | 0.507 | 0.657 | 0.656 |
| dcgan_face | 0.360 | 0.343 | 0.439 | 0.396 | 0.417 | 0.422 | 0.336 | 0.408 |
| esrgan | 0.656 | 0.652 | 0.658 | 0.637 | 0.705 | 0.724 | 0.697 | 0.710 |
| training loss (esrgan fold) | 0.596 | 0.528 | 0.499 | 0.468 | 0.439 | 0.442 | 0.417 | 0.412 |

Five times the recipe's training lowers the loss on the families it sees and leaves the unseen face
generators where they were: StyleGAN-lite swings between 0.48 and 0.69 from one checkpoint to the next,
the DCGAN faces stay below chance, and TPR at 1% FPR stays at 0 for both. Only Real-ESRGAN, whose sibling
SPAN is trained on, gains (0.66 to 0.71; TPR 2% to 10%). Compute is not what the expert lacks here; a
longer or GPU-sized run of the same recipe would not catch an unseen generator.

    python benchmarks/probe_npr_steps.py --steps 2000 --every 250
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from deepfake_moe.data.image_io import read_image
from deepfake_moe.data.manifest import read_manifest
from deepfake_moe.data.transforms import PreprocessConfig, preprocess, random_native_crop
from deepfake_moe.evaluate.experiment import holdout_partition
from deepfake_moe.evaluate.leave_one_out import load_config
from deepfake_moe.evaluate.metrics import roc_points, tpr_at_fpr
from deepfake_moe.model.expert import Expert
from deepfake_moe.train.ema import ExpertEma
from probe_npr_recipe import GENERATED

ROOT = Path(__file__).resolve().parents[1]


def decode_all(paths: list[str]) -> dict[str, np.ndarray]:
    t0 = time.perf_counter()
    images = {p: read_image(p) for p in paths}
    print(f"decoded {len(images)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    return images


def batch(images: dict[str, np.ndarray], paths: np.ndarray, view: PreprocessConfig,
          rng: np.random.Generator | None) -> torch.Tensor:
    if rng is None:
        return torch.stack([preprocess(images[p], view) for p in paths])
    return torch.stack([random_native_crop(images[p], view, rng) for p in paths])


@torch.no_grad()
def scores(model: torch.nn.Module, images: dict[str, np.ndarray], paths: np.ndarray, view: PreprocessConfig) -> np.ndarray:
    model.eval()
    out = [model(batch(images, paths[i:i + 256], view, None)).float().softmax(1)[:, 1].numpy()
           for i in range(0, len(paths), 256)]
    return np.concatenate(out)


def run_family(family: str, pool: pd.DataFrame, test: pd.DataFrame, images: dict[str, np.ndarray],
               args: argparse.Namespace) -> list[tuple[int, float, float, float]]:
    view = PreprocessConfig(input_size=args.crop, mode="native")
    sources = [s for s in GENERATED if s != family]
    train_rows = pool[(pool["label"] == 0) | pool["source"].isin(sources)]
    reals = train_rows.loc[train_rows["label"] == 0, "path"].to_numpy()
    fakes = train_rows.loc[train_rows["label"] == 1, "path"].to_numpy()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Expert("npr_resnet50_l2")
    ema = ExpertEma(model, decay=args.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    y = test["label"].to_numpy()
    test_paths = test["path"].to_numpy()
    half = args.batch // 2
    labels = torch.tensor([0] * half + [1] * half)
    rows, running, t0 = [], [], time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / args.warmup)
        model.train()
        x = batch(images, np.concatenate([rng.choice(reals, half), rng.choice(fakes, half)]), view, rng)
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        running.append(loss.item())
        if step % args.every == 0:
            scored = Expert("npr_resnet50_l2")
            scored.load_state_dict(ema.state_for(model))
            s = scores(scored, images, test_paths, view)
            fpr, tpr, _ = roc_points(y, s)
            rows.append((step, float(np.mean(running[-args.every:])), roc_auc_score(y, s), tpr_at_fpr(fpr, tpr, 0.01)))
            print(f"  {family:<14} step {step:>5}: train loss {rows[-1][1]:.3f}, held-out AUC {rows[-1][2]:.3f}, "
                  f"TPR@1%FPR {rows[-1][3]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "experiment_leave_one_out.yaml"))
    p.add_argument("--families", default="stylegan_lite,dcgan_face,esrgan")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)

    cfg = load_config(args.config)
    corpus = read_manifest(cfg.manifest, root=cfg.root)
    labelled = corpus[corpus["label"].isin([0, 1]) & ((corpus["label"] == 0) | corpus["source"].isin(GENERATED))]
    images = decode_all(labelled["path"].astype(str).drop_duplicates().tolist())
    table = {}
    for family in args.families.split(","):
        pool, test = holdout_partition(corpus, family, cfg.test_real_fraction, cfg.seed)
        pool, test = pool[pool["path"].isin(images)], test[test["path"].isin(images)]
        print(f"{family} held out: {int((test['label'] == 1).sum())} fakes, {int((test['label'] == 0).sum())} "
              f"test reals", flush=True)
        table[family] = run_family(family, pool, test, images, args)
    steps = [r[0] for r in next(iter(table.values()))]
    print("\nheld-out AUC (TPR@1%FPR) by training step\n| family | " + " | ".join(map(str, steps)) + " |")
    print("|---|" + "---|" * len(steps))
    for family, rows in table.items():
        print(f"| {family} | " + " | ".join(f"{auc:.3f} ({tpr:.2f})" for _, _, auc, tpr in rows) + " |")


if __name__ == "__main__":
    main()
