"""Fitting a model's uncertainty (feature statistics, reference, threshold) and reporting coverage.

The maths is in model/uncertainty.py; here it meets images: `fit_statistics` runs a labelled
manifest (the training data) through the experts once, `calibrate_uncertainty` chooses the
threshold on validation outputs, `selective_summary` measures what the verdicts cost and save.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch

from deepfake_moe.data.manifest import FAKE, REAL
from deepfake_moe.evaluate.threshold import expert_probabilities
from deepfake_moe.model import uncertainty as unc_math
from deepfake_moe.model.groups import join
from deepfake_moe.model.uncertainty import UncertaintyConfig, UncertaintyError


def sq_distances(model, features: list[np.ndarray]) -> np.ndarray:
    """Each expert's pooled features -> (N, E, 2) squared distances through the model's fitted statistics."""
    with torch.inference_mode():
        return np.stack([head(torch.from_numpy(f)).double().numpy() for head, f in zip(model.distances, features)],
                        axis=1)


def stratified_sample(labels: pd.DataFrame, max_images: int | None, seed: int = 0) -> pd.DataFrame:
    """At most `max_images` rows, the same share of every (label, source) group, drawn with `seed`."""
    if max_images is None or len(labels) <= max_images:
        return labels
    frac = max_images / len(labels)
    rng = np.random.default_rng(seed)
    keys = labels["label"].astype(str) + "/" + labels["source"].astype(str)
    picked = [rng.choice(idx, size=max(1, round(len(idx) * frac)), replace=False)
              for _, idx in sorted(keys.groupby(keys).groups.items())]
    return labels.loc[np.sort(np.concatenate(picked))]


def fit_statistics(model, config, labels: pd.DataFrame, source: str, components: int = unc_math.DEFAULT_COMPONENTS,
                   batch_size: int = 32, device: str = "auto", progress: bool = True,
                   max_images: int | None = None, limits=None, decode_budget=None, workers: int | None = None) -> dict:
    """Fit every expert's feature Gaussians on the labelled images of `labels` and attach them.

    `workers`: decoding processes (None: the decode pool's default; 0: in this process).
    Also sets a provisional reference (this same data) and clears any uncertainty threshold, which
    belonged to the old statistics: `calibrate` fits both on validation data. Returns the record
    written into model.yaml, with `failed` (path, error) pairs.
    """
    from deepfake_moe.evaluate.threshold import collect_outputs

    labelled = labels[labels["label"].isin([REAL, FAKE])]
    labels = stratified_sample(labelled, max_images).reset_index(drop=True)
    margins, feats, errors = collect_outputs(model, config, labels["path"].tolist(), batch_size, device, progress,
                                             features=True, desc="fit uncertainty", limits=limits,
                                             decode_budget=decode_budget, workers=workers,
                                             faces=config.scores_faces(None))  # as predict and calibrate see them
    ok = np.array([e == "" for e in errors], dtype=bool)
    y = labels["label"].to_numpy()[ok]
    heads = [unc_math.fit_feature_distance(f[ok], y, components) for f in feats]
    model.attach_distances(heads)
    probs = expert_probabilities(margins[ok], config.temperature)
    reference = unc_math.fit_reference(probs, sq_distances(model, [f[ok] for f in feats]), fitted_on="fit",
                                       groups=config.groups)
    record = {
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": source,
        "n_images": int(ok.sum()),
        "sampled_from": len(labelled),
        "n_real": int((y == REAL).sum()),
        "n_fake": int((y == FAKE).sum()),
        "n_failed": int((~ok).sum()),
        "components": [int(h.components.shape[0]) for h in heads],
        "feature_dims": [h.dim for h in heads],
    }
    config.uncertainty = UncertaintyConfig(components=components, reference=reference, info=record)
    config.uncertainty_threshold = None
    return {**record, "failed": [(p, e) for p, e in zip(labels["path"], errors) if e]}


def calibrate_uncertainty(model, config, y: np.ndarray, margins: np.ndarray, features: list[np.ndarray],
                          target_coverage: float, source: str) -> dict:
    """Refit the signals' reference on validation outputs and choose the threshold for `target_coverage`
    (at the config's current temperature and decision threshold); updates `config`, returns the record.

    In a grouped model the feature distance may come from every expert or from one group's: the one whose
    covered validation images are answered best counts (every expert's on a tie).
    """
    probs = expert_probabilities(margins, config.temperature)
    d2 = sq_distances(model, features)
    p = join(probs, config.groups)
    plain = (p >= config.threshold) == (y == FAKE)
    scopes = [None] + ([g.experts for g in config.groups] if config.groups and len(config.groups) > 1 else [])
    fits = [_fit_scope(probs, d2, p, y, config, scope, target_coverage, source) for scope in scopes]
    best = max(range(len(fits)), key=lambda i: (fits[i]["accuracy_covered"] or 0.0, -i))
    chosen = fits[best]
    config.uncertainty.reference = chosen.pop("reference")
    config.uncertainty_threshold = chosen["uncertainty_threshold"]
    record = {**chosen, "target_coverage": target_coverage, "accuracy_all": float(plain.mean())}
    if len(fits) > 1:
        record["distance_candidates"] = [{k: f[k] for k in ("distance_experts", "coverage", "accuracy_covered")}
                                         for f in fits]
    return record


def _fit_scope(probs, d2, p, y, config, scope, target_coverage: float, source: str) -> dict:
    reference = unc_math.fit_reference(probs, d2, fitted_on=f"calibrate: {source}", groups=config.groups,
                                       distance_experts=scope)
    u = unc_math.uncertainty(probs, d2, reference, config.groups)
    tau = unc_math.choose_uncertainty_threshold(u, target_coverage)
    said = unc_math.verdicts(p, u, config.threshold, tau)
    covered = said != "uncertain"
    correct = (said == "fake") == (y == FAKE)
    return {
        "reference": reference,
        "distance_experts": "all" if scope is None else list(scope),
        "uncertainty_threshold": tau,
        "coverage": float(covered.mean()),
        "accuracy_covered": float(correct[covered].mean()) if covered.any() else None,
    }


def selective_summary(table: pd.DataFrame, by: tuple[str, ...] = ("source",)) -> dict:
    """Coverage and its price for a scored table with `label, probability, verdict` (verdicts may be
    'uncertain'): overall, per label, and per value of each column in `by`.

    - coverage: share answered real or fake; accuracy_covered: correct among those;
    - accuracy_plain: correct at the plain threshold over all images (what the model said before);
    - uncertain: share answered uncertain; wrong_confident: share answered real/fake and wrong;
      wrong_plain: share wrong at the plain threshold.
    """
    t = table[table["label"].isin([REAL, FAKE]) & np.isfinite(table["probability"].to_numpy(float))]
    result = {"overall": _selective(t), "per_label": {}}
    for label, name in ((REAL, "real"), (FAKE, "fake")):
        if (t["label"] == label).any():
            result["per_label"][name] = _selective(t[t["label"] == label])
    for col in by:
        if col in t.columns:
            result[f"per_{col}"] = {str(k): _selective(g) for k, g in t.groupby(t[col].astype(str), sort=True)}
    return result


def _selective(t: pd.DataFrame) -> dict:
    is_fake = t["label"].to_numpy() == FAKE
    verdict = t["verdict"].to_numpy().astype(str)
    plain = t["verdict_plain"].to_numpy().astype(str) if "verdict_plain" in t.columns else verdict
    covered = verdict != "uncertain"
    right = (verdict == "fake") == is_fake
    n = len(t)
    return {
        "n": int(n),
        "coverage": float(covered.mean()) if n else None,
        "accuracy_covered": float(right[covered].mean()) if covered.any() else None,
        "accuracy_plain": float(((plain == "fake") == is_fake).mean()) if n else None,
        "uncertain": float((~covered).mean()) if n else None,
        "wrong_confident": float((covered & ~right).mean()) if n else None,
        "wrong_plain": float(((plain == "fake") != is_fake).mean()) if n else None,
    }


def risk_coverage(y: np.ndarray, verdict_plain: np.ndarray, unc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk): answering the k least uncertain images, the error rate of their plain verdicts."""
    order = np.argsort(np.asarray(unc, dtype=np.float64), kind="stable")
    wrong = ((np.asarray(verdict_plain) == "fake") != (np.asarray(y) == FAKE))[order]
    k = np.arange(1, len(order) + 1)
    return k / len(order), np.cumsum(wrong) / k


def check_fitted(config) -> None:
    if config.uncertainty is None:
        raise UncertaintyError("the model has no fitted uncertainty statistics: run "
                               "`deepfake-moe fit-uncertainty TRAINING_MANIFEST --weights MODEL` first")
