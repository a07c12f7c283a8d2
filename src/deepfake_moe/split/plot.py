"""The cluster map: a 2-D embedding of a sample of images, as in the winners' figure.

Left panel: coloured by cluster. Right panel: one split's training vs validation rows. Marker
shape tells real (circle) from fake (cross) and unknown (triangle) in both.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.io import atomic_path

EMBEDDINGS = ("auto", "tsne", "umap")
MARKERS = {0: ("o", "real"), 1: ("x", "fake"), -1: ("^", "unknown")}


@dataclass
class PlotConfig:
    split: int = 0  # which split's train/validation the right panel shows
    sample: int = 3000  # points embedded (Barnes-Hut t-SNE: about a minute for 3000 on 2 busy cores)
    method: str = "auto"  # auto (UMAP when installed, else t-SNE) | tsne | umap
    seed: int = 0

    def __post_init__(self):
        if self.method not in EMBEDDINGS:
            raise ValueError(f"embedding method must be one of {EMBEDDINGS}, got {self.method!r}")
        if self.sample < 10:
            raise ValueError("sample must be >= 10 points")


def embed_2d(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) embedding and the method used; PCA to 50 dims first keeps t-SNE fast."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    use_umap = method == "umap" or (method == "auto" and importlib.util.find_spec("umap") is not None)
    if use_umap:
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def sample_rows(df: pd.DataFrame, ok: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices to plot: encoded rows only, an even share per cluster so small clusters show."""
    clusters = df["cluster"].to_numpy()
    candidates = np.flatnonzero(np.asarray(ok) & (clusters >= 0))
    if len(candidates) <= n:
        return candidates
    rng = np.random.default_rng(seed)
    per_cluster = max(1, n // len(np.unique(clusters[candidates])))
    picked = []
    for c in np.unique(clusters[candidates]):
        members = candidates[clusters[candidates] == c]
        picked.append(rng.choice(members, min(len(members), per_cluster), replace=False))
    return np.sort(np.concatenate(picked))


def plot_cluster_map(
    features: np.ndarray,
    df: pd.DataFrame,
    ok: np.ndarray,
    out_png: str | os.PathLike,
    cfg: PlotConfig,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """Write the two-panel PNG; `transform` maps raw features as clustering saw them (L2, PCA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.reset_index(drop=True)
    rows = sample_rows(df, ok, cfg.sample, cfg.seed)
    if len(rows) < 3:
        raise ValueError("fewer than 3 encoded images: nothing to map")
    sampled = np.asarray(features[rows], dtype=np.float32)
    xy, method = embed_2d(transform(sampled) if transform else sampled, cfg.method, cfg.seed)
    clusters = df["cluster"].to_numpy()[rows]
    labels = df["label"].to_numpy()[rows]
    split_col = f"split_{cfg.split}"
    if split_col not in df.columns:
        raise ValueError(f"no split {cfg.split}: the manifest has splits 0..{int(df['cluster'].max())}")
    in_val = df[split_col].to_numpy()[rows]

    fig, axes = plt.subplots(1, 2, figsize=(15, 7), constrained_layout=True)
    cmap = plt.get_cmap("tab10" if clusters.max() < 10 else "tab20")
    k = int(clusters.max()) + 1
    for label, (marker, name) in MARKERS.items():
        m = labels == label
        if not m.any():
            continue
        axes[0].scatter(xy[m, 0], xy[m, 1], c=cmap(clusters[m] % cmap.N), marker=marker, s=12, alpha=0.7, linewidths=0.8)
        for is_val, color, where in ((False, "#b0b0b0", "train"), (True, "#d62728", "validation")):
            mm = m & (in_val == is_val)
            axes[1].scatter(xy[mm, 0], xy[mm, 1], c=color, marker=marker, s=12, alpha=0.7, linewidths=0.8,
                            label=f"{where} {name} ({mm.sum()})")
    handles = [plt.Line2D([], [], ls="", marker="s", color=cmap(c % cmap.N), label=f"cluster {c}") for c in range(k)]
    handles += [plt.Line2D([], [], ls="", marker=mk, color="black", label=name)
                for lab, (mk, name) in MARKERS.items() if (labels == lab).any()]
    axes[0].legend(handles=handles, loc="best", fontsize=8, markerscale=1.2)
    axes[0].set_title(f"{k} clusters ({method} of {len(rows)} images)")
    axes[1].legend(loc="best", fontsize=8, markerscale=1.5)
    axes[1].set_title(f"split {cfg.split}: validation = cluster {cfg.split}, training = the rest")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
