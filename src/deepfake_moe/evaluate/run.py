"""The evaluate stage as a library call: metrics, report, plots and per-image predictions for a scored table.

`evaluate_table` is what `deepfake-moe evaluate` runs once the images are scored (by a model or from a
predictions file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.errors import InputError
from deepfake_moe.evaluate import plots, report
from deepfake_moe.evaluate.metrics import MetricError
from deepfake_moe.io import atomic_path

PREDICTION_COLUMNS = ["path", "label", "source", "origin", "cluster", "probability", "verdict", "error"]


def evaluate_table(table: pd.DataFrame, out: str | os.PathLike, threshold: float, n_bootstrap: int = 1000,
                   seed: int = 0, meta: dict | None = None) -> dict:
    """Write metrics.json, report.md, roc/pr/score_hist PNGs and predictions.csv for a scored table.

    `table` has the manifest columns plus `probability` (nan when not scored) and `error`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    prob = table["probability"].to_numpy(float)
    table["verdict"] = np.where(np.isfinite(prob), np.where(prob >= threshold, "fake", "real"), "")
    columns = [c for c in PREDICTION_COLUMNS if c in table.columns]
    with atomic_path(out / "predictions.csv") as tmp:
        table[columns].to_csv(tmp, index=False)
    try:
        result = report.summarize(table, threshold, n_bootstrap=n_bootstrap, seed=seed)
    except MetricError as e:
        raise InputError(f"cannot evaluate: {e} (scores per image are in {out / 'predictions.csv'})") from None
    result.update(meta or {})
    report.write_json(result, out / "metrics.json")
    report.write_markdown(report.markdown_report(result, plots=report.PLOTS), out / "report.md")
    curves = report.source_curves(table)
    plots.plot_roc(curves, out / "roc.png")
    plots.plot_pr(curves, out / "pr.png")
    y, s = curves["all"]
    plots.plot_score_histogram(y, s, threshold, out / "score_hist.png")
    return result
