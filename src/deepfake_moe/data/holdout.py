"""Held-out partitions of a manifest for honest evaluation.

`test` gets every image of a random share of groups (reals, their benign variants and the fakes made
from them) plus every image of the held-out fake families and of the held-out real datasets (the
manifest's `dataset` column: a photo source the model never trains on, with the fakes made from it); `val` likewise for another share of groups
(minus the held-out families); `pool` keeps the rest for the split and training stages. Groups are
`identity` when the manifest has it (no person in two partitions), else `origin`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepfake_moe.data.manifest import FAKE, ManifestError


def group_column(df: pd.DataFrame) -> str:
    return "identity" if "identity" in df.columns and df["identity"].notna().all() else "origin"


def holdout(
    df: pd.DataFrame,
    holdout_sources: list[str],
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    seed: int = 0,
    holdout_datasets: list[str] | None = None,
) -> dict[str, pd.DataFrame]:
    if not 0.0 < test_fraction < 1.0 or not 0.0 <= val_fraction < 1.0 or test_fraction + val_fraction >= 1.0:
        raise ManifestError(f"fractions must be in (0, 1) and sum below 1, got test {test_fraction}, val {val_fraction}")
    fake_sources = set(df.loc[df["label"] == FAKE, "source"])
    unknown = sorted(set(holdout_sources) - fake_sources)
    if unknown:
        raise ManifestError(f"held-out source(s) {unknown} are not fake sources of the manifest: {sorted(fake_sources)}")
    if not fake_sources - set(holdout_sources):
        raise ManifestError("holding out every fake source leaves nothing to train on")

    held = df["source"].isin(holdout_sources)
    if holdout_datasets:
        known = set(df["dataset"].dropna()) if "dataset" in df.columns else set()
        unknown = sorted(set(holdout_datasets) - known)
        if unknown:
            raise ManifestError(f"held-out dataset(s) {unknown} are not in the manifest's dataset column: {sorted(known)}")
        held |= df["dataset"].isin(holdout_datasets)
        if (df.loc[~held, "label"] != FAKE).all():
            raise ManifestError("holding out these datasets leaves no real image to train on")

    col = group_column(df)
    groups = np.array(sorted(df[col].astype(str).unique()))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    n_test = max(1, round(len(groups) * test_fraction))
    n_val = round(len(groups) * val_fraction)
    if n_test + n_val >= len(groups):
        raise ManifestError(f"{len(groups)} {col} group(s) are too few for these fractions")
    test_groups = set(groups[order[:n_test]])
    val_groups = set(groups[order[n_test : n_test + n_val]])

    g = df[col].astype(str)
    test = df[held | g.isin(test_groups)]
    val = df[~held & g.isin(val_groups)]
    pool = df[~held & ~g.isin(test_groups | val_groups)]
    return {name: part.reset_index(drop=True) for name, part in (("pool", pool), ("val", val), ("test", test))}
