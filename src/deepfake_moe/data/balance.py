"""Sampling weights under which reals and fakes look alike in size and fine detail.

A detector learns whatever tells the labels apart in its training data. If the fakes of a corpus
are mostly sharper than its reals (super-resolution), or smoother, or smaller (64 px face
generators), it learns "this much detail is fake" or "a small image is real", and reads a generator
it never saw by that rule. Leave-one-generator-out shows it: without this, the unseen DCGAN faces
scored AUC 0.39 (`benchmarks/probe_detail_balance.py`).

`balance` measures two numbers per image: its shorter side, and its fine detail as an expert sees
it (log10 of the mean square of grey - GaussianBlur(grey, 1 px), on the image resized to the input
size). It cuts the manifest into strata, detail quantiles within each size class, and gives every row a
`weight`. Both labels are then drawn from each stratum with the same probability, min(p(stratum |
real), p(stratum | fake)), shared equally by that label's rows there. A stratum that holds one label
only gets weight 0. Training draws rows in proportion to `weight` (the sampler in `data/dataset.py`), or,
with `data.balance_bins`, weights each expert's own training rows the same way (`train/loop.py`).
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from deepfake_moe.data.image_io import ImageLimits, read_image
from deepfake_moe.data.manifest import FAKE, REAL, WEIGHT_COLUMN
from deepfake_moe.data.transforms import resize_uint8

SIZE_EDGES = (64, 128, 256, 512)  # shorter side: <= 64, <= 128, ... px
STAT_COLUMNS = ("detail", "short_side")
VIEW_COLUMN = "detail_view"  # the side at which `detail` was measured


def fine_detail(rgb: np.ndarray, view: int) -> float:
    """log10 mean square of the grey image minus its 1 px Gaussian blur, at `view` x `view` px (0..255 scale)."""
    grey = cv2.cvtColor(resize_uint8(rgb, view), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.log10(((grey - cv2.GaussianBlur(grey, (0, 0), 1.0)) ** 2).mean() + 1e-3))


class _Measure:
    """A decode pool's task: an image's (detail, shorter side), decoded within `limits`."""

    def __init__(self, view: int, limits: ImageLimits):
        self.view, self.limits = view, limits

    def __call__(self, path: str) -> tuple[float, float]:
        rgb = read_image(path, limits=self.limits)
        return fine_detail(rgb, self.view), float(min(rgb.shape[:2]))


def measure(paths, view: int, progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """`detail` and `short_side` of every image, decoded in capped worker processes; NaN where unreadable."""
    from tqdm import tqdm

    from deepfake_moe.data.decode_pool import DecodeFailure, DecodePool, default_workers

    paths = [str(p) for p in paths]
    pool = DecodePool(_Measure(view, ImageLimits()), default_workers() if workers is None else workers)
    rows = [(np.nan, np.nan) if isinstance(r, DecodeFailure) else r
            for r in tqdm(pool.map(paths), total=len(paths), desc="measure", unit="img", disable=not progress)]
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def strata(stats: pd.DataFrame, bins: int) -> np.ndarray:
    """Stratum of each row: detail quantile (`bins` of them) within its size class; -1 where unmeasured."""
    out = np.full(len(stats), -1, dtype=np.int64)
    ok = stats[list(STAT_COLUMNS)].notna().all(axis=1).to_numpy()
    size = np.digitize(stats["short_side"].to_numpy(), SIZE_EDGES, right=True)
    detail = stats["detail"].to_numpy()
    for s in np.unique(size[ok]):
        rows = ok & (size == s)
        edges = np.quantile(detail[rows], np.linspace(0, 1, bins + 1)[1:-1])
        out[rows] = s * bins + np.digitize(detail[rows], edges)
    return out


def balance_weights(labels, stratum) -> np.ndarray:
    """Weights under which both labels are drawn from each stratum alike (module docstring); unlabelled rows 0."""
    labels, stratum = np.asarray(labels), np.asarray(stratum)
    totals = {c: int(((labels == c) & (stratum >= 0)).sum()) for c in (REAL, FAKE)}
    if min(totals.values()) == 0:
        raise ValueError(f"balancing needs measured reals and fakes, got {totals[REAL]} real / {totals[FAKE]} fake")
    weights = np.zeros(len(labels))
    for s in np.unique(stratum[stratum >= 0]):
        rows = {c: (stratum == s) & (labels == c) for c in (REAL, FAKE)}
        share = min(rows[c].sum() / totals[c] for c in (REAL, FAKE))
        for c in (REAL, FAKE):
            if rows[c].any():
                weights[rows[c]] = share / rows[c].sum()
    if not weights.any():
        raise ValueError("reals and fakes share no stratum (size class and detail quantile): the amount of detail "
                         "alone tells them apart, and no weighting can hide it; try fewer --bins")
    return weights


def weighted_auc(labels, score, weights) -> float:
    """AUC of `score` for the labels under the sampling weights: 0.5 when it no longer tells them apart."""
    from sklearn.metrics import roc_auc_score

    labels, score, weights = np.asarray(labels), np.asarray(score), np.asarray(weights, dtype=float)
    keep = (weights > 0) & np.isin(labels, (REAL, FAKE)) & np.isfinite(score)
    return float(roc_auc_score(labels[keep], score[keep], sample_weight=weights[keep]))


def balance_manifest(df: pd.DataFrame, view: int, bins: int = 10, progress: bool = True) -> pd.DataFrame:
    """The manifest with `detail`, `short_side`, `detail_view` and `weight` columns; images already
    measured at `view` are not measured again."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    labels = df["label"].to_numpy()
    if not ((labels == REAL).any() and (labels == FAKE).any()):
        raise ValueError(f"balancing needs reals and fakes, got {(labels == REAL).sum()} real / {(labels == FAKE).sum()} fake")
    df = df.reset_index(drop=True)
    columns = [*STAT_COLUMNS, VIEW_COLUMN]
    if not (set(columns) <= set(df.columns) and (df[VIEW_COLUMN] == view).all()):
        df = pd.concat([df.drop(columns=[c for c in columns if c in df.columns]),
                        measure(df["path"], view, progress).assign(**{VIEW_COLUMN: view})], axis=1)
    return df.assign(**{WEIGHT_COLUMN: balance_weights(df["label"].to_numpy(), strata(df, bins))})
