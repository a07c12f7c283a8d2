"""Detection metrics for fake-probability scores, with stratified bootstrap 95% intervals.

Conventions (the same everywhere in deepfake-moe):
- label 1 = fake = the positive class; an image is called fake when `score >= threshold`
  (the `predict` verdict rule, and scikit-learn's ROC rule).
- ROC points are scikit-learn's `roc_curve(..., drop_intermediate=False)`: one vertex per distinct
  score, tied scores move together.
- TPR at a target FPR is read off the ROC curve interpolated *linearly between adjacent
  vertices*: a point on such a segment is reached by randomising between the two thresholds, so
  this is the best TPR any (randomised) threshold rule achieves at exactly that FPR. On a vertical
  segment (a tie, or FPR exactly at a vertex) the highest TPR at that FPR is taken. With fewer than
  1/FPR real images the value lies below the ROC's resolution and is mostly interpolation:
  `fpr_resolution` (= 1 / number of reals) is reported beside it.
- EER is where FPR = FNR on that same piecewise-linear curve (linear interpolation across the
  crossing). Its threshold is the score of the ROC vertex nearest to the crossing (ties: the
  higher score), a threshold that really exists.
- Bootstrap intervals resample fakes and reals separately (stratified, so every resample holds
  both classes and class counts stay fixed) and give percentile 2.5-97.5 % bounds. The resamples
  are drawn as multinomial counts per image and all metrics of all resamples are computed at once
  from cumulative counts over the score-sorted images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

DEFAULT_FPR_TARGETS = (0.01, 0.001)
DEFAULT_BOOTSTRAP = 1000
BOOTSTRAP_CELLS = 4_000_000  # resamples x distinct scores held in memory at once


class MetricError(ValueError):
    """Scores and labels cannot give a meaningful metric (one class only, NaN scores, bad labels)."""


@dataclass
class Estimate:
    value: float
    ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": list(self.ci95) if self.ci95 is not None else None}


@dataclass
class BinaryMetrics:
    n: int
    n_real: int
    n_fake: int
    threshold: float
    auc: Estimate
    ap: Estimate
    eer: Estimate
    eer_threshold: float
    accuracy: Estimate
    f1: Estimate
    tpr_at_fpr: dict[float, Estimate] = field(default_factory=dict)
    n_bootstrap: int = 0

    @property
    def fpr_resolution(self) -> float:
        return 1.0 / self.n_real

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "threshold": self.threshold,
            "auc": self.auc.to_dict(),
            "ap": self.ap.to_dict(),
            "eer": self.eer.to_dict(),
            "eer_threshold": self.eer_threshold,
            "accuracy": self.accuracy.to_dict(),
            "f1": self.f1.to_dict(),
            "tpr_at_fpr": {f"{k:g}": v.to_dict() for k, v in self.tpr_at_fpr.items()},
            "fpr_resolution": self.fpr_resolution,
            "n_bootstrap": self.n_bootstrap,
        }


def check_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels int 0/1, scores float64) arrays, or a MetricError saying what is wrong."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise MetricError(f"labels and scores must be 1-D of equal length, got shapes {y.shape} and {s.shape}")
    if len(y) == 0:
        raise MetricError("no scored images")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise MetricError(f"labels must be 0 (real) or 1 (fake); got {np.unique(y[bad])[:5].tolist()}")
    nan = ~np.isfinite(s)
    if nan.any():
        raise MetricError(
            f"{int(nan.sum())} score(s) are NaN or infinite (e.g. at positions {np.flatnonzero(nan)[:5].tolist()}); "
            "drop or fix the images that failed before computing metrics"
        )
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == len(y):
        only = "real" if n_fake == 0 else "fake"
        raise MetricError(
            f"all {len(y)} image(s) are {only}: AUC, AP, EER and TPR at FPR need both real and fake images"
        )
    return y.astype(np.int64), s


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with every distinct score a vertex; thresholds[0] is +inf."""
    return roc_curve(labels, scores, drop_intermediate=False)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TPR on the piecewise-linear ROC at FPR = target (see the module docstring)."""
    return float(_tpr_at_fpr_rows(fpr[None, :], tpr[None, :], target)[0])


def _tpr_at_fpr_rows(fpr: np.ndarray, tpr: np.ndarray, target: float) -> np.ndarray:
    """Row-wise version over (R, V) curves with non-decreasing rows starting at (0, 0)."""
    rows = np.arange(fpr.shape[0])
    last = fpr.shape[1] - 1
    # The last vertex with FPR <= target holds the highest TPR reached at or below the target.
    i = (fpr <= target).sum(axis=1) - 1
    j = np.minimum(i + 1, last)
    f0, f1, t0, t1 = fpr[rows, i], fpr[rows, j], tpr[rows, i], tpr[rows, j]
    span = f1 - f0
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(span > 0, (t1 - t0) / np.where(span > 0, span, 1.0), 0.0)
    return t0 + (target - f0) * slope


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[float, float]:
    """(EER, threshold of the vertex nearest the FPR = FNR crossing); threshold nan without thresholds."""
    eer, k = _eer_rows(fpr[None, :], tpr[None, :])
    if thresholds is None:
        return float(eer[0]), float("nan")
    return float(eer[0]), float(thresholds[k[0]])


def _eer_rows(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(fpr.shape[0])
    d = fpr - (1.0 - tpr)  # FPR - FNR: -1 at the first vertex, +1 at the last, non-decreasing
    j = np.argmax(d >= 0, axis=1)
    i = np.maximum(j - 1, 0)
    d0, d1 = d[rows, i], d[rows, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(d1 > d0, -d0 / np.where(d1 > d0, d1 - d0, 1.0), 0.0)
    eer = fpr[rows, i] + t * (fpr[rows, j] - fpr[rows, i])
    # Nearest vertex to the crossing; vertex 0 is the "+inf" threshold, never a usable one.
    nearest = np.where((np.abs(d0) <= np.abs(d1)) & (i > 0), i, np.maximum(j, 1))
    return eer, nearest


def binary_metrics(
    labels,
    scores,
    threshold: float = 0.5,
    fpr_targets: tuple[float, ...] = DEFAULT_FPR_TARGETS,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> BinaryMetrics:
    """All metrics for one set of (label, score) pairs; point values from scikit-learn."""
    y, s = check_scores(labels, scores)
    fpr, tpr, thr = roc_points(y, s)
    eer, eer_thr = equal_error_rate(fpr, tpr, thr)
    pred = (s >= threshold).astype(np.int64)
    point = {
        "auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "eer": eer,
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
    }
    point.update({f"tpr@{t:g}": tpr_at_fpr(fpr, tpr, t) for t in fpr_targets})
    ci = bootstrap_intervals(y, s, threshold, fpr_targets, n_bootstrap, seed) if n_bootstrap > 0 else {}

    def est(name: str) -> Estimate:
        return Estimate(point[name], ci.get(name))

    return BinaryMetrics(
        n=len(y),
        n_real=int((y == 0).sum()),
        n_fake=int(y.sum()),
        threshold=float(threshold),
        auc=est("auc"),
        ap=est("ap"),
        eer=est("eer"),
        eer_threshold=eer_thr,
        accuracy=est("accuracy"),
        f1=est("f1"),
        tpr_at_fpr={t: est(f"tpr@{t:g}") for t in fpr_targets},
        n_bootstrap=int(n_bootstrap),
    )


def weighted_curve_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray,
    threshold: float,
    fpr_targets: tuple[float, ...] = DEFAULT_FPR_TARGETS,
) -> dict[str, np.ndarray]:
    """Metrics for R weightings (R, N) of the same images at once (bootstrap resamples as counts).

    With all weights 1 this equals scikit-learn's values; the tests hold it to that.
    """
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    pos = labels[order] == 1
    w = weights[:, order]
    # Last index of every group of tied scores: the ROC vertices.
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(w * pos, axis=1)[:, ends].astype(np.float64)
    fp = np.cumsum(w, axis=1)[:, ends].astype(np.float64) - tp
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    zeros = np.zeros((w.shape[0], 1))
    tpr = np.hstack([zeros, tp / n_pos])
    fpr = np.hstack([zeros, fp / n_neg])
    out = {"auc": np.trapezoid(tpr, fpr, axis=1)}
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall_step = np.diff(tpr, axis=1)
    out["ap"] = np.nansum(recall_step * precision, axis=1)
    out["eer"] = _eer_rows(fpr, tpr)[0]
    called = s_sorted >= threshold
    tp_t = (w * (pos & called)).sum(axis=1)
    fp_t = (w * (~pos & called)).sum(axis=1)
    total = w.sum(axis=1)
    tn_t = n_neg[:, 0] - fp_t
    out["accuracy"] = (tp_t + tn_t) / total
    denom = 2 * tp_t + fp_t + (n_pos[:, 0] - tp_t)
    out["f1"] = np.where(denom > 0, 2 * tp_t / np.where(denom > 0, denom, 1.0), 0.0)
    for t in fpr_targets:
        out[f"tpr@{t:g}"] = _tpr_at_fpr_rows(fpr, tpr, t)
    return out


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    fpr_targets: tuple[float, ...] = DEFAULT_FPR_TARGETS,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals from a stratified bootstrap (same seed, same intervals)."""
    y, s = check_scores(labels, scores)
    rng = np.random.default_rng(seed)
    fake_idx, real_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_distinct = len(np.unique(s))
    chunk = max(1, min(n_bootstrap, BOOTSTRAP_CELLS // max(n_distinct, len(y))))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_bootstrap, chunk):
        r = min(chunk, n_bootstrap - start)
        w = _resample_counts(rng, r, len(y), fake_idx) + _resample_counts(rng, r, len(y), real_idx)
        for k, v in weighted_curve_metrics(y, s, w, threshold, fpr_targets).items():
            parts.setdefault(k, []).append(v)
    result = {}
    for k, v in parts.items():
        lo, hi = np.percentile(np.concatenate(v), [2.5, 97.5])
        result[k] = (float(lo), float(hi))
    return result


def _resample_counts(rng: np.random.Generator, r: int, n: int, members: np.ndarray) -> np.ndarray:
    """(r, n) float32 counts: each row draws len(members) of `members` with replacement."""
    draws = members[rng.integers(0, len(members), size=(r, len(members)))]
    flat = (np.arange(r)[:, None] * n + draws).ravel()
    # Counts stay exact in float32 up to 2**24 images.
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float32)
