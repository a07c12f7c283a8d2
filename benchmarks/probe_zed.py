"""Probe: does a model of real images alone, with no fake at all, flag generators it never saw?

Every supervised arm tried on this corpus learnt its training families' direction of fine detail and read
an unseen generator upside down (leave-one-out: DCGAN faces 0.33, StyleGAN-lite 0.42). ZED (Cozzolino et
al., "Zero-Shot Detection of AI-Generated Images", ECCV 2024) trains no detector: a lossless coder learns
real images only, and an image is suspect when its actual coding cost departs from the cost the coder
expected, D = NLL - H. A real image surprises the model as much as it expects to be surprised; a generated
one does not, in either direction.

The coder is a small multi-resolution predictor in ZED's manner (SReC's structure, without its arithmetic
coder): level l+1 is the 2x2 average of level l, and level l is predicted from it, as a Gaussian per pixel
and channel (mean and log scale), on dequantised values (uniform noise of width 1, fixed seed when
scoring). Two coders (`--coder`):
- `coarse`: one net predicts every pixel from the nearest-neighbour up-sampling of level l+1 alone;
- `subpixel` (SReC's order): of each 2 x 2 block, the top-left pixel from level l+1, the top-right from that
  and every top-left, the bottom-left from those and every top-right; the bottom-right follows from the
  block's mean. A sharper model of the reals, so that its expectation H is tighter.
Per level, NLL_l = mean -log p(x) and H_l = mean entropy of the predicted Gaussians, in nats per value;
D_l = NLL_l - H_l. The coder is trained on random 64 x 64 crops of the pool's reals at native resolution
(never resized), levels 0 and 1 of each crop.

Scores (every family is unseen by construction, so there is no leave-one-out to run):
- `-D0`: ZED's statistic, fake when the image is more predictable than expected;
- `|D0|`: two-sided (distance of D0 from the pool reals' median);
- `mahalanobis`: distance of (D0, D1, D2, D0 - D1, H0) to the pool reals (Ledoit-Wolf);
- `supervised, held out`: a logistic regression on the same five numbers, trained on the pool's reals and
  its other generator families (the held-out family's column), to see whether the features carry over
  once fakes are used.
- `size-matched`: the Mahalanobis distance to the pool reals of the image's own size class (shorter side
  up to 96 px, the 64 px face generators and the reals shrunk to match them, or larger).
Each column is the AUC of the family's test fakes against all test reals; TPR@1% is the share of them above
the pool reals' 99th percentile, where the flagged share of the test reals and of the held-out real source
(mate-backgrounds, never in the pool) is printed too.

What it decided (`make corpus` + `make holdout`: each coder trained on the pool's 3,032 reals, 1,500 steps
of 32 crops, 6-8 min on 2 cores; scored on the test's 1,076 reals and 198 fakes per generator family;
2026-11-28; the coarse coder gave the same figures in two runs). AUC against all test reals; no fake was
trained on, except in the last column:

| coder | family | -D0 | abs(D0) | mahalanobis | size-matched | size-matched TPR@1% | supervised, held out |
|---|---|---|---|---|---|---|---|
| coarse (3.0 nats/value) | autoencoder | 0.721 | 0.551 | 0.532 | 0.529 | 0.5% | 0.633 |
| | esrgan | 0.608 | 0.472 | 0.537 | 0.555 | 2.0% | 0.589 |
| | span_sr | 0.593 | 0.573 | 0.572 | 0.590 | 4.5% | 0.551 |
| | dcgan_face | 0.483 | 0.367 | 0.401 | 0.410 | 0.5% | 0.373 |
| | stylegan_lite | 0.253 | 0.418 | 0.485 | 0.691 | 0.0% | 0.197 |
| | faceswap | 0.438 | 0.362 | 0.250 | 0.280 | 0.2% | |
| subpixel (2.6 nats/value) | autoencoder | 0.689 | 0.542 | 0.561 | 0.564 | 2.0% | 0.552 |
| | esrgan | 0.545 | 0.505 | 0.552 | 0.578 | 5.6% | 0.612 |
| | span_sr | 0.599 | 0.572 | 0.587 | 0.603 | 6.6% | 0.540 |
| | dcgan_face | 0.469 | 0.451 | 0.396 | 0.413 | 0.0% | 0.355 |
| | stylegan_lite | 0.054 | 0.944 | 0.872 | 0.891 | 0.5% | 0.093 |
| | faceswap | 0.407 | 0.365 | 0.273 | 0.298 | 0.1% | |

No generator family but StyleGAN-lite is caught, and the edit families sit at 0.43-0.57 with either coder.
The sharper coder finds StyleGAN-lite two-sidedly (0.94), but in the direction opposite to ZED's premise:
its faces are *less* predictable than the coder expects (median D0 +0.27 against -0.05 for the 64 px test
reals). The statistic also moves with an image's size more than with its label: with the coarse coder,
median D0 is -0.195 for the 256 px test reals and -0.076 for the 64 px ones. Within a size class the
signed statistics give the other families 0.38-0.66 at every level (the last table printed). At the pool
reals' 99th percentile the two-sided scores flag 1.5-3.4% of the test reals and 0.7-2.9% of the held-out
mate-backgrounds photos. Every image here leaves through the output chain's JPEG, shrinking and blurring,
whose quantisation dominates the fine residual of both labels (ZED's own results weaken under
compression). Not built into the model.

    python benchmarks/probe_zed.py --coder subpixel --pool runs/default/holdout/pool.parquet \
        --test runs/default/holdout/test.parquet --features runs/zed_subpixel
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from deepfake_moe.data.image_io import read_image

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ["esrgan", "span_sr", "autoencoder", "dcgan_face", "stylegan_lite"]
LEVELS = 3
CROP = 64
FEATURES = ["D0", "D1", "D2", "slope01", "H0"]
SMALL = 96
"""Shorter sides up to this are the 64 px size class (the face generators and the reals shrunk to match)."""
LOG_2PI_E = math.log(2 * math.pi * math.e)


def gaussian_head(width: int, depth: int, inputs: int) -> nn.Sequential:
    """A plain conv net whose 6 outputs are a Gaussian's mean offset and log scale per channel."""
    layers, c = [], inputs
    for _ in range(depth - 1):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
        c = width
    layers.append(nn.Conv2d(c, 6, 3, padding=1))
    nn.init.constant_(layers[-1].bias[3:], 1.5)  # start at a scale of 4.5 grey levels, near a photo's residuals
    return nn.Sequential(*layers)


def gaussian_cost(target: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per value: -log p(target) and the entropy of the predicted Gaussian, in nats."""
    log_scale = log_scale.clamp(-4, 6)
    z = (target - mean) * torch.exp(-log_scale)
    return 0.5 * z**2 + log_scale + 0.5 * math.log(2 * math.pi), log_scale + 0.5 * LOG_2PI_E


class CoarseCoder(nn.Module):
    """Every pixel of a level from the nearest-neighbour up-sampling of the level below alone."""

    def __init__(self, width: int = 32, depth: int = 5):
        super().__init__()
        self.net = gaussian_head(width, depth, 3)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context = F.interpolate(coarse, scale_factor=2, mode="nearest")
        out = self.net(context / 255 - 0.5)
        nll, entropy = gaussian_cost(fine + noise, context + 16 * out[:, :3], out[:, 3:])
        return nll.flatten(1).mean(1), entropy.flatten(1).mean(1)


class SubpixelCoder(nn.Module):
    """SReC's order: of each 2 x 2 block, the top-left pixel from the level below, the top-right from that and
    every top-left, the bottom-left from those and every top-right; the bottom-right follows from the block's
    mean, so it costs nothing. Each stage's net works on the coarse grid and sees whole maps of what is known."""

    def __init__(self, width: int = 32, depth: int = 5):
        super().__init__()
        self.stages = nn.ModuleList(gaussian_head(width, depth, 3 * (k + 1)) for k in range(3))

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known, nlls, entropies = [coarse], [], []
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0))):
            out = self.stages[k](torch.cat(known, 1) / 255 - 0.5)
            target = fine[:, :, dy::2, dx::2]
            nll, entropy = gaussian_cost(target + noise[:, :, dy::2, dx::2], coarse + 16 * out[:, :3], out[:, 3:])
            nlls.append(nll.flatten(1).mean(1))
            entropies.append(entropy.flatten(1).mean(1))
            known.append(target)
        return torch.stack(nlls).mean(0), torch.stack(entropies).mean(0)


CODERS = {"coarse": CoarseCoder, "subpixel": SubpixelCoder}


def pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    out = [x]
    for _ in range(levels):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


def load(path: str) -> torch.Tensor:
    """uint8, channels first: the pool's reals stay in memory while the predictor trains."""
    return torch.from_numpy(read_image(path).copy()).permute(2, 0, 1)


def train(reals: list[str], coder: str, steps: int, batch: int, seed: int) -> nn.Module:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    images = [x for x in (load(p) for p in reals) if min(x.shape[1:]) >= CROP]
    model = CODERS[coder]()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    start = time.perf_counter()
    for step in range(steps):
        crops = []
        for i in rng.integers(len(images), size=batch):
            x = images[i]
            top, left = rng.integers(x.shape[1] - CROP + 1), rng.integers(x.shape[2] - CROP + 1)
            crops.append(x[:, top:top + CROP, left:left + CROP])
        levels = pyramid(torch.stack(crops).float(), 2)
        loss = sum(model(levels[k], levels[k + 1], torch.rand_like(levels[k]) - 0.5)[0].mean() for k in range(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"step {step}: nll {loss.item() / 2:.3f} nats/value ({time.perf_counter() - start:.0f} s)", flush=True)
    return model.eval()


@torch.no_grad()
def features(model: nn.Module, path: str, seed: int) -> np.ndarray | None:
    x = load(path).float()
    side = 2 ** (LEVELS + 1)
    h, w = x.shape[1] // side * side, x.shape[2] // side * side
    if min(h, w) < 32:
        return None
    levels = pyramid(x[None, :, :h, :w], LEVELS)
    gen = torch.Generator().manual_seed(seed)
    d, h = [], []
    for level in range(LEVELS):
        fine = levels[level]
        nll, entropy = model(fine, levels[level + 1], torch.rand(fine.shape, generator=gen) - 0.5)
        d.append((nll - entropy).item())
        h.append(entropy.item())
    return np.array([d[0], d[1], d[2], d[0] - d[1], h[0], min(x.shape[1:])])


def table(manifest: str, model: nn.Module, limit: int | None, seed: int) -> pd.DataFrame:
    df = pd.read_parquet(manifest)
    df["family"] = df["source"].str.split("/").str[0]
    if limit:
        df = df.sample(frac=1.0, random_state=seed).groupby("family").head(limit)
    start = time.perf_counter()
    rows = [features(model, p, i) for i, p in enumerate(df["path"])]
    keep = np.array([r is not None for r in rows])
    print(f"{manifest}: features of {keep.sum()} images in {time.perf_counter() - start:.0f} s ({(~keep).sum()} under 32 px left out)")
    df = df[keep].reset_index(drop=True)
    return pd.concat([df, pd.DataFrame(np.stack([r for r in rows if r is not None]), columns=FEATURES + ["side"])], axis=1)


def tpr_at(scores_real: np.ndarray, scores_fake: np.ndarray, fpr: float = 0.01) -> float:
    return float((scores_fake > np.quantile(scores_real, 1 - fpr)).mean())


def report(pool: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    real_pool = pool[pool["label"] == 0]
    median = real_pool["D0"].median()
    cov = LedoitWolf().fit(real_pool[FEATURES].to_numpy())
    small = real_pool["side"] <= SMALL
    by_size = {k: LedoitWolf().fit(real_pool.loc[small == k, FEATURES].to_numpy()) for k in (True, False)}

    def size_matched(df: pd.DataFrame) -> np.ndarray:
        """Distance to the pool reals of the image's own size class."""
        out = np.empty(len(df))
        for k, fit in by_size.items():
            m = (df["side"] <= SMALL).to_numpy() == k
            if m.any():
                out[m] = fit.mahalanobis(df.loc[m, FEATURES].to_numpy())
        return out

    scorers = {
        "-D0": lambda df: -df["D0"].to_numpy(),
        "|D0|": lambda df: (df["D0"] - median).abs().to_numpy(),
        "mahalanobis": lambda df: cov.mahalanobis(df[FEATURES].to_numpy()),
        "size-matched": size_matched,
    }
    reals = test[test["label"] == 0]
    held_real = reals["dataset"] == "mate-backgrounds" if "dataset" in reals else np.zeros(len(reals), bool)
    rows = []
    for family in sorted(test.loc[test["label"] == 1, "family"].unique()):
        fakes = test[test["family"] == family]
        row = {"family": family, "n": len(fakes)}
        for name, score in scorers.items():
            r, f = score(reals), score(fakes)
            row[name] = roc_auc_score(np.r_[np.zeros(len(r)), np.ones(len(f))], np.r_[r, f])
            row[name + " TPR@1%"] = tpr_at(score(real_pool), f)
        if family in GENERATORS:
            train_rows = pool[(pool["label"] == 0) | (pool["family"].isin(GENERATORS) & (pool["family"] != family))]
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            clf.fit(train_rows[FEATURES], train_rows["label"])
            r, f = clf.decision_function(reals[FEATURES]), clf.decision_function(fakes[FEATURES])
            row["supervised, held out"] = roc_auc_score(np.r_[np.zeros(len(r)), np.ones(len(f))], np.r_[r, f])
        rows.append(row)
    for name, score in scorers.items():
        threshold = np.quantile(score(real_pool), 0.99)
        flagged = score(reals) > threshold
        print(f"{name}: test reals flagged at the pool reals' 99th percentile {flagged.mean():.1%}, "
              f"held-out mate-backgrounds {flagged[np.asarray(held_real)].mean():.1%}")
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", default=str(ROOT / "runs" / "default" / "holdout" / "pool.parquet"))
    p.add_argument("--test", default=str(ROOT / "runs" / "default" / "holdout" / "test.parquet"))
    p.add_argument("--coder", choices=sorted(CODERS), default="subpixel")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per family in pool and test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default=None, help="a folder: reuse the pool's and test's features there, or save them")
    args = p.parse_args()
    saved = Path(args.features) if args.features else None
    if saved and (saved / "test.parquet").exists():
        pool, test = pd.read_parquet(saved / "pool.parquet"), pd.read_parquet(saved / "test.parquet")
    else:
        pool_all = pd.read_parquet(args.pool)
        model = train(pool_all.loc[pool_all["label"] == 0, "path"].tolist(), args.coder, args.steps, args.batch, args.seed)
        pool = table(args.pool, model, args.limit, args.seed)
        test = table(args.test, model, args.limit, args.seed + 1)
        if saved:
            saved.mkdir(parents=True, exist_ok=True)
            pool.to_parquet(saved / "pool.parquet")
            test.to_parquet(saved / "test.parquet")
    pd.set_option("display.width", 250)
    print(report(pool, test).round(3).to_string(index=False))
    print(test.groupby("family")[FEATURES].median().round(4).to_string())
    print("AUC of each signed statistic (minus its value), fakes against the test reals of their own size class:")
    print(within_size(test).round(3).to_string())


def within_size(test: pd.DataFrame) -> pd.DataFrame:
    reals = test[test["label"] == 0]
    rows = {}
    for family in GENERATORS:
        fakes = test[test["family"] == family]
        same = reals[(reals["side"] <= SMALL) == (fakes["side"].median() <= SMALL)]
        y = np.r_[np.zeros(len(same)), np.ones(len(fakes))]
        rows[family] = {f: roc_auc_score(y, -np.r_[same[f], fakes[f]]) for f in ["D0", "D1", "D2", "slope01"]}
    return pd.DataFrame(rows).T


if __name__ == "__main__":
    main()
