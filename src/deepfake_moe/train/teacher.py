"""A teacher's fake probabilities for knowledge distillation (`loss.distill_weight`).

The teacher is one or more trained models, each scored on the training manifest's images by `predict
MANIFEST --per-expert` (with its resume and GPU options; a sharded run's parts joined by `predict
--merge` first): its probability for an image is the mean over all their experts, each weighted
alike, as if they were one mixture.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from deepfake_moe.data.manifest import ManifestError


def teacher_probabilities(manifest: pd.DataFrame, scores: list[pd.DataFrame], names: list[str]) -> pd.Series:
    """Per manifest row, the mean of every expert column (`expert_<i>`) of every score table; NaN where a
    table lacks the image or could not score it. `names` name the tables in errors."""
    keys = manifest["path"].map(os.path.abspath)
    columns = []
    for table, name in zip(scores, names):
        experts = [c for c in table.columns if c.startswith("expert_")]
        if "path" not in table.columns or not experts:
            raise ManifestError(f"{name}: no path and expert_<i> columns; score the manifest with "
                                "`deepfake-moe predict MANIFEST --per-expert --out FILE.csv`")
        by_path = table.assign(path=table["path"].map(os.path.abspath)).drop_duplicates("path").set_index("path")
        found = keys.isin(by_path.index)
        if found.mean() < 0.5:  # paths written in another form, or the scores of another manifest
            raise ManifestError(
                f"{name}: only {found.sum()} of the manifest's {len(keys)} images are in it (e.g. the manifest's "
                f"{keys.iloc[0]} against its {by_path.index[0] if len(by_path) else 'nothing'}); relative paths are "
                "read against the working directory, so score the manifest itself: `predict MANIFEST --per-expert`")
        columns.append(by_path[experts].reindex(keys).to_numpy(dtype=np.float64))
    return pd.Series(np.concatenate(columns, axis=1).mean(axis=1), index=manifest.index)
