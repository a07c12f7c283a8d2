"""Leave-one-cluster-out splits in the manifest, and the per-cluster report.

Split i validates on cluster i and trains on every other cluster: `split_<i>` is True for the
rows of cluster i. Rows whose image could not be encoded get cluster -1 and are in no split's
validation set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.data.manifest import FAKE, REAL, split_columns
from deepfake_moe.io import atomic_write

SPLIT_PREFIX = "split_"


class LeakError(AssertionError):
    """An origin group straddles two clusters: a split would validate on near copies of training images."""


def assign_splits(df: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """A copy of `df` with `cluster` and one `split_<i>` column per cluster (old ones replaced)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(df):
        raise ValueError(f"{len(labels)} cluster labels for {len(df)} manifest rows")
    out = df.drop(columns=["cluster", *split_columns(df)], errors="ignore").copy()
    out["cluster"] = labels
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    for i in range(k):
        out[f"{SPLIT_PREFIX}{i}"] = labels == i
    check_no_leak(out)
    return out


def check_no_leak(df: pd.DataFrame) -> None:
    """Raise LeakError if any origin's rows sit in more than one cluster."""
    assigned = df[df["cluster"] >= 0]
    spread = assigned.groupby("origin")["cluster"].nunique()
    leaking = spread[spread > 1]
    if len(leaking):
        raise LeakError(f"{len(leaking)} origin group(s) span several clusters, e.g. {leaking.index[:5].tolist()}")


def cluster_report(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster: image counts (all, real, fake, unknown), origin groups, and per-source counts."""
    counts = pd.crosstab(df["cluster"], df["source"])
    counts.columns = [f"source:{c}" for c in counts.columns]
    label = df["label"]
    summary = pd.DataFrame(
        {
            "images": df.groupby("cluster").size(),
            "real": (label == REAL).groupby(df["cluster"]).sum(),
            "fake": (label == FAKE).groupby(df["cluster"]).sum(),
            "unknown": (~label.isin([REAL, FAKE])).groupby(df["cluster"]).sum(),
            "origins": df.groupby("cluster")["origin"].nunique(),
        }
    )
    report = summary.join(counts).fillna(0).astype(np.int64).reset_index()
    report["usable"] = (report["real"] > 0) & (report["fake"] > 0) & (report["cluster"] >= 0)
    return report


def degenerate_warnings(report: pd.DataFrame) -> list[str]:
    """One line per cluster whose split cannot give an AUC, naming the fixes."""
    lines = []
    for row in report[(report["cluster"] >= 0) & ~report["usable"]].itertuples():
        lacks = "real" if row.real == 0 else "fake"
        lines.append(
            f"cluster {row.cluster} has no {lacks} images ({row.images} images): split {row.cluster} "
            "cannot give an AUC. Fix: rerun with --merge-degenerate (merge it into its nearest cluster) "
            "or --per-label (cluster reals and fakes apart, then pair the clusters)."
        )
    return lines


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def write_report(report: pd.DataFrame, out_dir: str | os.PathLike, warnings: list[str], notes: list[str] = ()) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "clusters.csv", out_dir / "clusters.md"
    with atomic_write(csv_path) as f:
        report.to_csv(f, index=False)
    k = int((report["cluster"] >= 0).sum())
    text = [
        "# Clusters and leave-one-cluster-out splits",
        "",
        f"{k} clusters. Split i validates on cluster i and trains on all others. "
        "Cluster -1 holds images that could not be encoded (in no validation set).",
        "",
        _markdown_table(report),
        "",
    ]
    for title, items in (("Notes", notes), ("Warnings", warnings)):
        if items:
            text += [f"## {title}", "", *[f"- {w}" for w in items], ""]
    with atomic_write(md_path) as f:
        f.write("\n".join(text))
    return csv_path, md_path
