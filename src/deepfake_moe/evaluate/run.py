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
from deepfake_moe.evaluate.uncertainty import risk_coverage, selective_summary
from deepfake_moe.io import atomic_path
from deepfake_moe.model.uncertainty import verdicts

PREDICTION_COLUMNS = ["path", "label", "source", "origin", "cluster", "probability", "verdict", "uncertainty", "error"]
# Groups the coverage report breaks down by, where the table has them (`dataset`: the reals' source).
SELECTIVE_GROUPS = ("source", "dataset")


def evaluate_table(table: pd.DataFrame, out: str | os.PathLike, threshold: float, n_bootstrap: int = 1000,
                   seed: int = 0, meta: dict | None = None, uncertainty_threshold: float | None = None) -> dict:
    """Write metrics.json, report.md, roc/pr/score_hist PNGs and predictions.csv for a scored table.

    `table` has the manifest columns plus `probability` (nan when not scored) and `error`, and
    optionally `uncertainty`: then the coverage report and risk_coverage.png come too.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    prob = table["probability"].to_numpy(float)
    unc = table["uncertainty"].to_numpy(float) if "uncertainty" in table.columns else None
    table["verdict_plain"] = verdicts(prob, None, threshold, None)
    table["verdict"] = verdicts(prob, unc, threshold, uncertainty_threshold)
    columns = [c for c in PREDICTION_COLUMNS if c in table.columns]
    with atomic_path(out / "predictions.csv") as tmp:
        table[columns].to_csv(tmp, index=False)
    try:
        result = report.summarize(table, threshold, n_bootstrap=n_bootstrap, seed=seed)
    except MetricError as e:
        raise InputError(f"cannot evaluate: {e} (scores per image are in {out / 'predictions.csv'})") from None
    result.update(meta or {})
    if unc is not None and np.isfinite(unc).any():
        result["selective"] = _selective(table, uncertainty_threshold, out)
    report.write_json(result, out / "metrics.json")
    links = report.PLOTS + ((report.RISK_COVERAGE_PLOT,) if "selective" in result else ())
    report.write_markdown(report.markdown_report(result, plots=links), out / "report.md")
    curves = report.source_curves(table)
    plots.plot_roc(curves, out / "roc.png")
    plots.plot_pr(curves, out / "pr.png")
    y, s = curves["all"]
    plots.plot_score_histogram(y, s, threshold, out / "score_hist.png")
    return result


def _selective(table: pd.DataFrame, uncertainty_threshold: float | None, out: Path) -> dict:
    """Coverage figures and risk_coverage.png for a table with `uncertainty`, `verdict` and `verdict_plain`."""
    result = {"uncertainty_threshold": uncertainty_threshold, **selective_summary(table, SELECTIVE_GROUPS)}
    scored = table[report.scored_mask(table) & np.isfinite(table["uncertainty"].to_numpy(float))]
    coverage, risk = risk_coverage(scored["label"].to_numpy(), scored["verdict_plain"].to_numpy(),
                                   scored["uncertainty"].to_numpy(float))
    at = result["overall"]
    point = None if uncertainty_threshold is None else (at["coverage"], 1.0 - at["accuracy_covered"])
    result["aurc"] = float(np.mean(risk)) if len(risk) else None
    plots.plot_risk_coverage(coverage, risk, out / "risk_coverage.png", point)
    return result
