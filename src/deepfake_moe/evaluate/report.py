"""Evaluation of a scored table: overall, per fake source, per cluster; written as JSON and Markdown."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.data.manifest import FAKE, REAL
from deepfake_moe.evaluate.metrics import DEFAULT_BOOTSTRAP, DEFAULT_FPR_TARGETS, MetricError, binary_metrics
from deepfake_moe.io import atomic_write

MAX_LISTED_IN_MARKDOWN = 20


def scored_mask(table: pd.DataFrame) -> np.ndarray:
    """Rows that count in the metrics: labelled real/fake, with a usable probability."""
    return (table["label"].isin([REAL, FAKE]) & np.isfinite(table["probability"].to_numpy(float))).to_numpy()


def _group(y: np.ndarray, s: np.ndarray, threshold: float, n_bootstrap: int, seed: int, fpr_targets) -> dict:
    try:
        return binary_metrics(y, s, threshold, fpr_targets, n_bootstrap, seed).to_dict()
    except MetricError as e:
        return {"n": int(len(y)), "n_real": int((y == REAL).sum()), "n_fake": int((y == FAKE).sum()), "skipped": str(e)}


def summarize(
    table: pd.DataFrame,
    threshold: float,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    fpr_targets: tuple[float, ...] = DEFAULT_FPR_TARGETS,
) -> dict:
    """Metrics for a table with `label, source, probability, error` (and optionally `cluster`).

    Overall: every scored row (a MetricError here is the user's problem and propagates). Per fake
    source: that source's fakes against ALL reals. Per cluster: the rows of that cluster; a group
    holding one class only is reported with its counts and the reason, not dropped.
    """
    ok = scored_mask(table)
    failed = table[table["error"].astype(str) != ""]
    unlabelled = int((table["label"] == -1).sum())
    scored = table[ok]
    y, s = scored["label"].to_numpy(), scored["probability"].to_numpy(float)
    result = {
        "threshold": float(threshold),
        "counts": {
            "listed": int(len(table)),
            "scored": int(ok.sum()),
            "real": int((y == REAL).sum()),
            "fake": int((y == FAKE).sum()),
            "failed": int(len(failed)),
            "unlabelled": unlabelled,
        },
        "overall": binary_metrics(y, s, threshold, fpr_targets, n_bootstrap, seed).to_dict(),
        "per_source": {},
        "failed": [{"path": p, "error": e} for p, e in zip(failed["path"], failed["error"])],
    }
    reals = scored["label"].to_numpy() == REAL
    fake_sources = sorted(scored.loc[~reals, "source"].astype(str).unique())
    for src in fake_sources if len(fake_sources) > 1 else ():  # one source: its row would repeat "all"
        m = reals | (scored["source"].astype(str).to_numpy() == src)
        result["per_source"][src] = _group(y[m], s[m], threshold, n_bootstrap, seed, fpr_targets)
    if "cluster" in scored.columns:
        result["per_cluster"] = {}
        clusters = scored["cluster"].to_numpy()
        for c in sorted(pd.unique(clusters), key=str):
            m = clusters == c
            result["per_cluster"][str(c)] = _group(y[m], s[m], threshold, n_bootstrap, seed, fpr_targets)
    return result


def source_curves(table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) for `all` and for each fake source against all reals (the plotted curves)."""
    scored = table[scored_mask(table)]
    y, s = scored["label"].to_numpy(), scored["probability"].to_numpy(float)
    curves = {"all": (y, s)}
    reals = y == REAL
    sources = sorted(scored.loc[~reals, "source"].astype(str).unique())
    if not reals.any() or reals.all() or len(sources) < 2:
        return curves
    for src in sources:
        m = reals | (scored["source"].astype(str).to_numpy() == src)
        curves[src] = (y[m], s[m])
    return curves


def write_json(result: dict, path: str | os.PathLike) -> Path:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None  # JSON has no NaN/inf
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    with atomic_write(path) as f:
        json.dump(clean(result), f, indent=2)
        f.write("\n")
    return Path(path)


def _fmt(est: dict | None, percent: bool = False) -> str:
    if est is None or est.get("value") is None:
        return "-"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{est['value'] * scale:.{1 if percent else 4}f}{unit}"
    if est.get("ci95"):
        lo, hi = est["ci95"]
        text += f" [{lo * scale:.{1 if percent else 3}f}, {hi * scale:.{1 if percent else 3}f}]"
    return text


def metrics_table(groups: dict[str, dict], first_column: str) -> list[str]:
    """Markdown table rows, one per group; skipped groups show their counts and reason."""
    fpr_keys: list[str] = []
    for g in groups.values():
        for k in g.get("tpr_at_fpr", {}):
            if k not in fpr_keys:
                fpr_keys.append(k)
    head = [first_column, "n (real/fake)", "AUC", "AP", "EER", "accuracy", "F1"]
    head += [f"TPR@FPR={float(k) * 100:g}%" for k in fpr_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, g in groups.items():
        counts = f"{g['n']} ({g['n_real']}/{g['n_fake']})"
        if "skipped" in g:
            cells = [name, counts, f"not computed: {g['skipped']}"] + [""] * (len(head) - 3)
        else:
            cells = [name, counts, _fmt(g["auc"]), _fmt(g["ap"]), _fmt(g["eer"], True),
                     _fmt(g["accuracy"], True), _fmt(g["f1"])]
            cells += [_fmt(g["tpr_at_fpr"].get(k), True) for k in fpr_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def selective_table(selective: dict) -> list[str]:
    """Markdown rows: coverage, accuracy on the covered images and where the uncertain answers fell."""
    head = ["group", "n", "coverage", "accuracy covered", "accuracy at plain threshold", "uncertain",
            "wrong & confident", "wrong at plain threshold"]
    keys = ["coverage", "accuracy_covered", "accuracy_plain", "uncertain", "wrong_confident", "wrong_plain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = {"all": selective["overall"], **{f"label: {k}": v for k, v in selective.get("per_label", {}).items()}}
    for key, title in (("per_source", "source"), ("per_dataset", "dataset")):
        groups.update({f"{title}: {k}": v for k, v in selective.get(key, {}).items()})
    for name, g in groups.items():
        cells = [name, str(g["n"])] + ["-" if g[k] is None else f"{g[k] * 100:.1f}%" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


PLOTS = (("ROC curves", "roc.png"), ("Precision-recall curves", "pr.png"), ("Score histogram", "score_hist.png"))
RISK_COVERAGE_PLOT = ("Risk-coverage curve", "risk_coverage.png")  # written when the scores carry an uncertainty


def markdown_report(result: dict, title: str = "Evaluation", plots: tuple[tuple[str, str], ...] = ()) -> str:
    """The report as Markdown; `plots` (caption, file beside the report) are linked and shown."""
    c = result["counts"]
    overall = result["overall"]
    lines = [f"# {title}", ""]
    for key, label in (("labels", "Labels"), ("scores_from", "Scores from")):
        if result.get(key):
            lines.append(f"- {label}: `{result[key]}`")
    lines += [
        f"- Threshold: {result['threshold']:.4g} (fake when probability >= threshold); "
        f"EER threshold on this set: {overall['eer_threshold']:.4g}",
        f"- Images listed: {c['listed']}; scored: {c['scored']} ({c['real']} real, {c['fake']} fake); "
        f"failed or missing: {c['failed']}; unlabelled: {c['unlabelled']}",
        f"- Brackets: 95% bootstrap interval ({overall['n_bootstrap']} stratified resamples). "
        f"TPR at low FPR is interpolated on the ROC; one real image is {overall['fpr_resolution'] * 100:.3g}% FPR here.",
        "",
        "## Overall and per fake source (each source's fakes against all reals)",
        "",
    ]
    lines += metrics_table({"all": overall, **result["per_source"]}, "source")
    if result.get("per_cluster"):
        lines += ["", "## Per cluster", ""]
        lines += metrics_table(result["per_cluster"], "cluster")
    if result.get("selective"):
        sel = result["selective"]
        lines += ["", "## Coverage: answered real or fake, or uncertain", ""]
        tau = sel.get("uncertainty_threshold")
        lines.append(f"Uncertainty threshold: {tau:.4g}." if tau is not None else
                     "No uncertainty threshold (calibrate fits one): every image is answered; the curve in "
                     "risk_coverage.png shows what one would buy.")
        lines += ["", *selective_table(sel)]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"- [{caption}]({name})" for caption, name in plots]
        lines += [""] + [f"![{caption}]({name})" for caption, name in plots]
    if result.get("unmatched_predictions"):
        um = result["unmatched_predictions"]
        lines += ["", f"## Predictions matching no labelled image ({len(um)})", ""]
        lines += [f"- `{n}`" for n in um[:MAX_LISTED_IN_MARKDOWN]]
        if len(um) > MAX_LISTED_IN_MARKDOWN:
            lines.append(f"- ... {len(um) - MAX_LISTED_IN_MARKDOWN} more in metrics.json")
    if result["failed"]:
        lines += ["", f"## Images not scored ({len(result['failed'])}; listed in metrics.json and predictions.csv)", ""]
        lines += [f"- `{r['path']}`: {r['error']}" for r in result["failed"][:MAX_LISTED_IN_MARKDOWN]]
        if len(result["failed"]) > MAX_LISTED_IN_MARKDOWN:
            lines.append(f"- ... {len(result['failed']) - MAX_LISTED_IN_MARKDOWN} more")
    return "\n".join(lines) + "\n"


def write_markdown(text: str, path: str | os.PathLike) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
