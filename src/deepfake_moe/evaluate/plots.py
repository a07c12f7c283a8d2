"""Evaluation figures (matplotlib, Agg backend), each written atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from deepfake_moe.io import atomic_path

DPI = 120


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y == 1)) < len(y)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> Path:
    """ROC per curve, linear axes beside a log-FPR view of the low false-positive range."""
    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(12, 5.2))
    for name, (y, s) in curves.items():
        if not _two_classes(y):
            continue
        fpr, tpr, _ = roc_curve(y, s)
        style = {"color": "black", "lw": 2.2} if name == "all" else {"lw": 1.3}
        label = f"{name} (AUC {roc_auc_score(y, s):.3f}, n={len(y)})"
        ax.plot(fpr, tpr, label=label, **style)
        ax_log.plot(np.maximum(fpr, 1e-5), tpr, **style)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="false positive rate (reals called fake)", ylabel="true positive rate (fakes caught)",
           title="ROC: each fake source against all reals", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    ax_log.set_xscale("log")
    for x in (1e-3, 1e-2):
        ax_log.axvline(x, ls=":", color="grey", lw=1)
    ax_log.set(xlabel="false positive rate (log)", ylabel="true positive rate", title="low-FPR range",
               xlim=(1e-4, 1), ylim=(0, 1.01))
    for a in (ax, ax_log):
        a.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    for name, (y, s) in curves.items():
        if not _two_classes(y):
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        style = {"color": "black", "lw": 2.2} if name == "all" else {"lw": 1.3}
        ax.plot(recall, precision, label=f"{name} (fake share {np.mean(y):.2f})", drawstyle="steps-post", **style)
    ax.set(xlabel="recall (fakes caught)", ylabel="precision (called fake that are fake)",
           title="Precision-recall: each fake source against all reals", xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_score_histogram(y: np.ndarray, s: np.ndarray, threshold: float, path: str | os.PathLike) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bins = np.linspace(0, 1, 41)
    for label, name, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        sel = s[y == label]
        if len(sel):
            ax.hist(sel, bins=bins, alpha=0.55, color=color, label=f"{name} (n={len(sel)})",
                    weights=np.full(len(sel), 1.0 / len(sel)))
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="fake probability", ylabel="share of the class", title="Score distribution per class", xlim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed fake share, count) per equal-width probability bin (empty bins: nan)."""
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac = np.bincount(idx, weights=y.astype(float), minlength=n_bins) / count
    return conf, frac, count


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    conf, frac, count = reliability_bins(y, p, n_bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(conf[used] - frac[used])) / count.sum())


def plot_reliability(y: np.ndarray, curves: dict[str, np.ndarray], path: str | os.PathLike, n_bins: int = 10) -> Path:
    """Reliability diagram: observed fake share against predicted probability, one line per curve."""
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfectly calibrated")
    for name, p in curves.items():
        conf, frac, count = reliability_bins(y, p, n_bins)
        used = count > 0
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(conf[used], frac[used], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="predicted fake probability (bin mean)", ylabel="observed share of fakes",
           title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_metric_bars(names: list[str], values: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                     path: str | os.PathLike, ylabel: str = "AUC", title: str = "") -> Path:
    """One bar per condition with its 95% interval (nan bounds: no error bar)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    err = np.vstack([values - lows, highs - values])
    err = np.where(np.isfinite(err), err, 0.0)
    ax.bar(x, values, color="tab:blue", alpha=0.8)
    ax.errorbar(x, values, yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    for xi, v in zip(x, values):
        if np.isfinite(v):
            ax.text(xi, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    finite = values[np.isfinite(values)]
    bottom = min(0.5, float(np.nanmin(lows)) - 0.05) if len(finite) and np.isfinite(lows).any() else 0.0
    ax.set_ylim(max(0.0, bottom), 1.05)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_risk_coverage(coverage: np.ndarray, risk: np.ndarray, path: str | os.PathLike,
                       point: tuple[float, float] | None = None) -> Path:
    """Error rate of the answered images against the share answered, least uncertain first."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    ax.plot(coverage, risk, color="black", lw=1.8, label=f"answered least uncertain first (AURC {np.mean(risk):.3f})")
    if len(risk):
        ax.axhline(risk[-1], ls=":", color="grey", lw=1, label=f"answering everything: error {risk[-1]:.3f}")
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color="tab:red",
                label=f"uncertainty threshold: coverage {point[0]:.3f}, error {point[1]:.3f}")
    ax.set(xlabel="coverage (share answered real or fake)", ylabel="error rate among the answered",
           title="Risk-coverage", xlim=(0, 1), ylim=(0, max(0.05, float(np.max(risk)) * 1.05) if len(risk) else 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
