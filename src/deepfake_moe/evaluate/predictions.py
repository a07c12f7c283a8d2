"""Predictions from a file (challenge `img_name,y_pred` or our `path,probability`), matched to labels by name."""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from deepfake_moe.data.manifest import ManifestError, read_csv_table

# Accepted column pairs (name column, probability column), first match wins.
PREDICTION_COLUMNS = (("img_name", "y_pred"), ("path", "probability"))
NO_PREDICTION = "no prediction for this image in the predictions file"


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Columns `name, probability, error`; an empty or non-numeric probability becomes an error row."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"predictions file not found: {path}")
    table = read_csv_table(path)
    for name_col, prob_col in PREDICTION_COLUMNS:
        if name_col in table.columns and prob_col in table.columns:
            break
    else:
        raise ManifestError(
            f"{path}: a predictions file needs columns 'img_name,y_pred' (challenge) or 'path,probability'; "
            f"it has {list(table.columns)}"
        )
    prob = pd.to_numeric(table[prob_col], errors="coerce")
    error = pd.Series("", index=table.index)
    if "error" in table.columns:  # an all-empty column reads as float nan
        error = table["error"].astype(str).where(table["error"].notna(), "")
    raw = table[prob_col].astype(str)
    error = error.where(prob.notna() | (error != ""), "no usable probability in the predictions file: " + raw)
    out_of_range = prob.notna() & ((prob < 0) | (prob > 1))
    if out_of_range.any():
        raise ManifestError(
            f"{path}: {int(out_of_range.sum())} probabilit(y/ies) outside [0, 1], "
            f"e.g. {prob[out_of_range].head(3).tolist()}; scores must be fake probabilities"
        )
    names = table[name_col].astype(str)
    dups = names[names.duplicated()]
    if len(dups):
        raise ManifestError(f"{path}: {len(dups)} image(s) listed more than once, e.g. {dups.head(5).tolist()}")
    out = pd.DataFrame({"name": names, "probability": prob.astype(float), "error": error})
    for col in ("verdict", "threshold"):  # what `predict --format full` decided, when the file says
        if col in table.columns:
            out[col] = table[col]
    if "uncertainty" in table.columns:  # written by `predict` for models with fitted statistics
        out["uncertainty"] = pd.to_numeric(table["uncertainty"], errors="coerce").astype(float)
    return out


def decided_threshold(predictions: pd.DataFrame) -> tuple[float, str] | None:
    """The threshold the predictions' own verdicts were made at: their `threshold` column, else the
    lowest probability called fake (when the real verdicts agree with it; an 'uncertain' verdict says
    nothing about the threshold); None when the file has neither."""
    scored = predictions[predictions["probability"].notna()]
    if "threshold" in scored.columns:
        values = pd.to_numeric(scored["threshold"], errors="coerce").dropna().unique()
        if len(values) == 1:
            return float(values[0]), "the predictions' threshold column"
        if len(values) > 1:
            raise ManifestError(f"the predictions were made at {len(values)} different thresholds "
                                f"{sorted(values)[:5]}; give one with --threshold")
    if "verdict" not in scored.columns:
        return None
    fake = scored["verdict"].astype(str) == "fake"
    if not fake.any():
        return None
    t = float(scored.loc[fake, "probability"].min())
    real = scored["verdict"].astype(str) == "real"
    if (scored.loc[real, "probability"] >= t).any():
        raise ManifestError("the predictions' verdict column does not follow one threshold; give one with --threshold")
    return t, "the predictions' verdict column (lowest probability called fake)"


def _parts(name: str) -> tuple[str, ...]:
    return PurePosixPath(os.path.normpath(name).replace("\\", "/")).parts


def match_predictions(labels: pd.DataFrame, predictions: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Attach `probability, error` to every label row; returns (table, prediction names matching no label).

    A prediction name matches the label whose path ends with the same path components: an
    absolute path must match in full, `img_name` or a relative path matches on its trailing
    components (so `a.jpg` finds `/data/valset/a.jpg`). A name that fits several labels is
    reported as unmatched, never guessed. Label rows without a prediction keep an error saying so.
    """
    index: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(labels["path"]):
        parts = _parts(p)
        for k in range(1, len(parts) + 1):
            index.setdefault(parts[-k:], []).append(i)
    n = len(labels)
    prob = np.full(n, math.nan)
    unc = np.full(n, math.nan)
    error = np.full(n, NO_PREDICTION, dtype=object)
    taken = np.full(n, -1)
    unmatched = []
    has_unc = "uncertainty" in predictions.columns
    for j, (name, p, err) in enumerate(predictions[["name", "probability", "error"]].itertuples(index=False)):
        hits = index.get(_parts(name), [])
        if len(hits) != 1:
            unmatched.append(name if not hits else f"{name} (fits {len(hits)} labelled images)")
            continue
        i = hits[0]
        if taken[i] >= 0:
            raise ManifestError(
                f"predictions {predictions['name'].iloc[taken[i]]!r} and {name!r} both name {labels['path'].iloc[i]}"
            )
        taken[i] = j
        prob[i], error[i] = p, err
        if has_unc:
            unc[i] = predictions["uncertainty"].iloc[j]
    out = labels.copy()
    out["probability"] = prob
    if has_unc:
        out["uncertainty"] = unc
    out["error"] = error.astype(str)
    return out, unmatched
