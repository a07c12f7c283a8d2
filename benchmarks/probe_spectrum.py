"""Probe: do spectral features of a native-resolution crop tell an unseen generator from real photos?

The EfficientNet experts, held out of a generator family, score its images as more real than the reals
(`make leave-one-out`: DCGAN faces 0.33-0.41, StyleGAN-lite 0.04-0.42). Up-sampling leaves traces in
the spectrum that generators of one architecture share (Durall et al., CVPR 2020; Frank et al., ICML
2020). This probe asks, in minutes and without a network, whether such features carry over between
this corpus's generator families: for each family g, a logistic regression is trained on the pool's
reals and the pool's other generator families' fakes, and scored on the test set's g fakes against
its reals. The "in training" column trains on every family (the ceiling).

Features of the central 64 x 64 crop of the luminance at native resolution (no resize):
- `radial`: log power spectrum (Hann window), averaged over 32 rings: energy and shape;
- `shape`: the same less its mean, so that the overall amount of detail cannot tell the label;
- `npr`: log power spectrum of the NPR residual x - up(down(x)) (nearest, x2), pooled to 16 x 16 and
  less its mean: the periodic peaks that up-sampling leaves.

A third column, "reals only", trains on no fake at all: the Mahalanobis distance (Ledoit-Wolf) of the
features to the pool's reals, which flags a departure from real photos in either direction.

What it decided (the candidate corpus's pool, 4,523 images, and test, 1,644, of at least 64 px: the
output chain shrinks 22% of the 64 px faces and reals below it; 2026-11-28, 40 s on 2 cores). AUC of
each family's test fakes against all test reals:

| feature | arm | autoencoder | DCGAN | ESRGAN | span_sr | StyleGAN-lite |
|---|---|---|---|---|---|---|
| radial | held out | 0.576 | 0.376 | 0.588 | 0.512 | 0.171 |
| radial | in training | 0.700 | 0.627 | 0.604 | 0.541 | 0.861 |
| radial | reals only | 0.670 | 0.410 | 0.572 | 0.546 | 0.797 |
| shape | held out | 0.576 | 0.376 | 0.592 | 0.511 | 0.172 |
| npr | held out | 0.509 | 0.529 | 0.502 | 0.461 | 0.334 |
| npr | in training | 0.646 | 0.673 | 0.527 | 0.499 | 0.973 |

Spectral cues do not carry over between these families either, and fail the way the networks do: the
super-resolution families add fine detail and StyleGAN-lite lacks it, so "more high frequency = fake",
learnt from the others, scores the held-out StyleGAN-lite faces as the most real (0.17). Taking the
mean out (`shape`) changes nothing: the slope, not the level, carries it. The distance to the reals
alone is two-sided and does better on StyleGAN-lite (0.80) and the autoencoders (0.67), but the DCGAN
faces sit closer to the reals than the reals' own spread (0.41). No feature here reaches 0.7 on every
held-out family, so no spectral expert or uncertainty signal was built on them.

    python benchmarks/probe_spectrum.py --pool runs/default/holdout/pool.parquet --test runs/default/holdout/test.parquet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from deepfake_moe.data.image_io import read_image

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ["esrgan", "span_sr", "autoencoder", "dcgan_face", "stylegan_lite"]
REALS = ["real", "real_downscale", "real_reencode"]
CROP = 64
WINDOW = np.outer(np.hanning(CROP), np.hanning(CROP))
_yy, _xx = np.mgrid[:CROP, :CROP] - CROP // 2
RING = np.minimum((np.hypot(_yy, _xx) / (CROP // 2) * 32).astype(int), 31)


def luminance_crop(path: str) -> np.ndarray | None:
    """The central crop, or None for an image smaller than it (the output chain shrinks some)."""
    rgb = read_image(path).astype(np.float64) / 255
    y = rgb @ np.array([0.299, 0.587, 0.114])
    top, left = (y.shape[0] - CROP) // 2, (y.shape[1] - CROP) // 2
    return y[top:top + CROP, left:left + CROP] if top >= 0 and left >= 0 else None


def log_power(x: np.ndarray) -> np.ndarray:
    return np.log(np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean()))) ** 2 + 1e-12)


def features(path: str) -> dict[str, np.ndarray] | None:
    y = luminance_crop(path)
    if y is None:
        return None
    spectrum = log_power(y * WINDOW)
    radial = np.bincount(RING.ravel(), spectrum.ravel(), 32) / np.bincount(RING.ravel(), minlength=32)
    residual = y - np.repeat(np.repeat(y[::2, ::2], 2, 0), 2, 1)
    npr = log_power(residual).reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel()
    return {"radial": radial, "shape": radial - radial.mean(), "npr": npr - npr.mean()}


def table(manifest: str, limit: int | None, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    df = pd.read_parquet(manifest)
    df["family"] = df["source"].str.split("/").str[0]
    df = df[df["family"].isin(GENERATORS + REALS)]
    if limit:
        df = df.sample(frac=1.0, random_state=seed).groupby("family").head(limit)
    feats = [features(p) for p in df["path"]]
    small = np.array([f is None for f in feats])
    if any(small):
        print(f"{manifest}: {sum(small)} images under {CROP} px left out: {df[small]['family'].value_counts().to_dict()}")
    df = df[~small].reset_index(drop=True)
    feats = [f for f in feats if f is not None]
    return df, {k: np.stack([f[k] for f in feats]) for k in feats[0]}


def auc(train: pd.DataFrame, xtr: np.ndarray, test: pd.DataFrame, xte: np.ndarray, family: str, reals: pd.Series) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    clf.fit(xtr, train["label"])
    keep = (reals | (test["family"] == family)).to_numpy()
    return roc_auc_score(test["label"][keep], clf.predict_proba(xte[keep])[:, 1])


def one_class_auc(train: pd.DataFrame, xtr: np.ndarray, test: pd.DataFrame, xte: np.ndarray, family: str,
                  reals: pd.Series) -> float:
    """Mahalanobis distance to the training reals alone (Ledoit-Wolf covariance): no fake is trained on."""
    from sklearn.covariance import LedoitWolf

    real = (train["label"] == 0).to_numpy()
    fit = LedoitWolf().fit(xtr[real])
    keep = (reals | (test["family"] == family)).to_numpy()
    return roc_auc_score(test["label"][keep], fit.mahalanobis(xte[keep]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", default=str(ROOT / "runs" / "default" / "holdout" / "pool.parquet"))
    p.add_argument("--test", default=str(ROOT / "runs" / "default" / "holdout" / "test.parquet"))
    p.add_argument("--limit", type=int, default=None, help="at most this many images per family and split")
    args = p.parse_args()
    start = time.perf_counter()
    pool, fpool = table(args.pool, args.limit, 0)
    test, ftest = table(args.test, args.limit, 1)
    print(f"features of {len(pool)} pool and {len(test)} test images in {time.perf_counter() - start:.0f} s")
    rows = []
    for feature in fpool:
        for family in GENERATORS:
            for against, reals in (("all reals", test["label"] == 0), ("64 px reals", test["family"] == "real_downscale")):
                held = pool["family"] != family
                rows.append({"feature": feature, "family": family, "against": against,
                             "held out": auc(pool[held], fpool[feature][held.to_numpy()], test, ftest[feature], family, reals),
                             "in training": auc(pool, fpool[feature], test, ftest[feature], family, reals),
                             "reals only": one_class_auc(pool, fpool[feature], test, ftest[feature], family, reals)})
    out = pd.DataFrame(rows).pivot_table(index=["feature", "against"], columns="family", values=["held out", "in training", "reals only"])
    pd.set_option("display.width", 250)
    print(out.round(3).to_string())


if __name__ == "__main__":
    main()
