"""Choosing the decision threshold and fitting the temperature on a labelled validation set.

Scores here are computed from each expert's raw logit margin z = logit_fake - logit_real:
softmax(logits / T)[1] = sigmoid(z / T), and the mixture is the mean over experts, or the most fake of the
expert groups (model/groups.py), after an expert that reads several crops of an image gives the mean over
its crops: exactly what `Mixture` computes, so a threshold or temperature fitted here means the same thing to `predict`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.metrics import precision_recall_curve

from deepfake_moe.evaluate.metrics import check_scores, equal_error_rate, roc_points
from deepfake_moe.infer.media import DEFAULT_MAX_FACES
from deepfake_moe.model.groups import ExpertGroup, fit_alignment, join

THRESHOLD_METHODS = ("target-fpr", "max-f1", "eer")
TEMPERATURE_BOUNDS = (0.05, 20.0)
PROB_EPS = 1e-12


@dataclass
class ThresholdChoice:
    method: str
    threshold: float
    fpr: float  # on the fitting set, with `score >= threshold` called fake
    tpr: float
    f1: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "fpr": self.fpr, "tpr": self.tpr,
                "f1": self.f1, **self.details}


def _between(scores: np.ndarray, vertex: float) -> float:
    """A threshold calling exactly the scores >= vertex fake, halfway to the next lower score.

    Halfway rather than on the score itself, so float rounding in another code path (float32 in
    the predictor) cannot flip the images that sit exactly on the threshold.
    """
    lower = scores[scores < vertex]
    below = float(lower.max()) if len(lower) else 0.0
    return float(min(1.0, (vertex + below) / 2.0))


def _rates(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float]:
    called = s >= threshold
    tp = float(np.sum(called & (y == 1)))
    fp = float(np.sum(called & (y == 0)))
    fn = float(np.sum(~called & (y == 1)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return float(fp / np.sum(y == 0)), float(tp / np.sum(y == 1)), float(f1)


def kept_threshold(labels, scores, threshold: float, target_fpr: float) -> ThresholdChoice:
    """A threshold chosen before (`calibrate --keep-threshold`: only the expert groups were fitted, at
    `target_fpr`), with its rates on these scores."""
    y, s = check_scores(labels, scores)
    return ThresholdChoice("kept", float(threshold), *_rates(y, s, threshold), {"target_fpr": target_fpr})


def choose_threshold(labels, scores, method: str = "target-fpr", target_fpr: float = 0.01) -> ThresholdChoice:
    """The threshold for `method`: highest TPR with FPR <= target_fpr, the best F1, or the EER point."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}")
    y, s = check_scores(labels, scores)
    details: dict = {}
    if method == "target-fpr":
        if not 0.0 <= target_fpr < 1.0:
            raise ValueError(f"target FPR must be in [0, 1), got {target_fpr}")
        fpr, tpr, thr = roc_points(y, s)
        k = int(np.flatnonzero(fpr <= target_fpr)[-1])  # vertex 0 (FPR 0, threshold +inf) always qualifies
        if k == 0:
            # Even the single highest score holds reals beyond the target: call nothing fake on this set.
            threshold = float(min(1.0, (s.max() + 1.0) / 2.0))
            details["note"] = "no threshold reaches the target FPR on this set; threshold set above every score"
        else:
            threshold = _between(s, thr[k])
        details["target_fpr"] = target_fpr
        details["fpr_resolution"] = 1.0 / int(np.sum(y == 0))
    elif method == "max-f1":
        precision, recall, thr = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
        threshold = _between(s, thr[int(np.argmax(f1))])
    else:
        fpr, tpr, thr = roc_points(y, s)
        eer, vertex = equal_error_rate(fpr, tpr, thr)
        threshold = _between(s, vertex)
        details["eer"] = eer
    fpr_at, tpr_at, f1_at = _rates(y, s, threshold)
    return ThresholdChoice(method, threshold, fpr_at, tpr_at, f1_at, details)


def expert_probabilities(margins: np.ndarray, temperature: float) -> np.ndarray:
    """(N, E) raw logit margins, or (N, E, crops) padded with nan -> the (N, E) fake probabilities the
    mixture gives at `temperature` (an expert's mean over its crops)."""
    p = expit(np.asarray(margins, dtype=np.float64) / temperature)
    return np.nanmean(p, axis=2) if p.ndim == 3 else p


def mixture_probability(margins: np.ndarray, temperature: float = 1.0, groups: list[ExpertGroup] | None = None
                        ) -> np.ndarray:
    """(N, n_experts) logit margins, or (N, n_experts, crops) padded with nan -> (N,) at `temperature`."""
    return join(expert_probabilities(margins, temperature), groups)


def align_groups(margins: np.ndarray, labels, temperature: float, groups: list[ExpertGroup], target_fpr: float,
                 anchor: float | None = None, strata=None) -> list[ExpertGroup]:
    """The expert groups' floors and shifts fitted on the reals' outputs at `temperature` (model/groups.py);
    `strata`: one key per row (the reals' are used), each stratum of reals held to `target_fpr`."""
    real = np.asarray(labels) == 0
    return fit_alignment(expert_probabilities(margins, temperature)[real], groups, target_fpr, anchor,
                         None if strata is None else np.asarray(strata)[real])


def mixture_nll(margins: np.ndarray, labels: np.ndarray, temperature: float,
                groups: list[ExpertGroup] | None = None) -> float:
    p = np.clip(mixture_probability(margins, temperature, groups), PROB_EPS, 1 - PROB_EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_temperature(margins: np.ndarray, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    groups: list[ExpertGroup] | None = None, target_fpr: float = 0.01, strata=None) -> float:
    """The temperature minimising the mixture output's negative log-likelihood (1-D search on log T); expert
    groups are aligned anew at each temperature (`align_groups`), as `calibrate` then fits them."""
    y, _ = check_scores(labels, mixture_probability(margins))

    def nll(t: float) -> float:
        return mixture_nll(margins, y, t, groups and align_groups(margins, y, t, groups, target_fpr, strata=strata))

    res = minimize_scalar(
        lambda log_t: nll(math.exp(log_t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))


def collect_margins(
    model, config, paths: Sequence[str], batch_size: int = 32, device: str = "auto", progress: bool = True,
    limits=None, decode_budget=None, workers: int | None = None, faces: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Raw logit margins for `paths` and an error per path (rows of failed images are nan).

    (N, n_experts), or (N, n_experts, crops) when an expert reads several crops of each image (an
    expert with fewer crops is padded with nan). `faces`: those of each image's most fake face crop.
    """
    margins, _, errors = collect_outputs(model, config, paths, batch_size, device, progress, limits=limits,
                                         decode_budget=decode_budget, workers=workers, faces=faces)
    return margins, errors


def collect_outputs(
    model, config, paths: Sequence[str], batch_size: int = 32, device: str = "auto", progress: bool = True,
    features: bool = False, desc: str = "calibrate", limits=None, decode_budget=None, workers: int | None = None,
    faces: bool = False, max_faces: int = DEFAULT_MAX_FACES,
) -> tuple[np.ndarray, list[np.ndarray] | None, list[str]]:
    """Raw logit margins as `collect_margins` gives them, with `features` also each expert's pooled
    features (N, D_e) (the mean over its crops), from one pass per expert; an error per path.
    Images are decoded in a decode pool under `limits` and `decode_budget` (`workers=0`: in-process).
    `faces`: each image is scored as `predict --faces` scores it: through the crop of each face found (at
    most `max_faces`; the whole image when none is), the image's outputs being its most fake crop's."""
    import torch

    from deepfake_moe.data.decode_pool import default_workers
    from deepfake_moe.data.image_io import ImageLimits
    from deepfake_moe.infer.predictor import image_batches
    from deepfake_moe.runtime import resolve_device

    dev = resolve_device(device)
    model = model.eval().to(dev)
    paths = [str(p) for p in paths]
    crops = max(v.crops for v in config.views()[0])
    margins = np.full((len(paths), len(model.experts), crops), np.nan)
    feats = [np.full((len(paths), e.num_features), np.nan, dtype=np.float32) for e in model.experts] if features else None
    errors = [""] * len(paths)
    workers = default_workers() if workers is None else workers
    loader = image_batches(paths, config.views()[0], config.image_backend, limits or ImageLimits(), faces, max_faces,
                           batch_size, workers, decode_budget)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", file=sys.stderr, desc=desc)
    with torch.inference_mode():
        for ok_idx, batch, counts, _, failed in loader:
            if batch is not None:
                outputs = [_expert_outputs(expert, batch[v].to(dev), features)
                           for expert, v in zip(model.experts, model.view_index)]
                z = np.full((len(batch[0]), len(model.experts), crops), np.nan)
                for k, (zk, _) in enumerate(outputs):
                    z[:, k, : zk.shape[1]] = zk
                pick = most_fake_crops(z, counts, config.temperature)
                margins[ok_idx] = z[pick]
                for k, (_, f) in enumerate(outputs):
                    if feats is not None:
                        feats[k][ok_idx] = f[pick]
            for i, err in failed:
                errors[i] = err
            if bar is not None:
                bar.update(len(ok_idx) + len(failed))
    if bar is not None:
        bar.close()
    return (margins[..., 0] if crops == 1 else margins), feats, errors


def most_fake_crops(margins: np.ndarray, counts: Sequence[int], temperature: float) -> np.ndarray:
    """Index of each image's most fake crop among (n_crops, n_experts[, tiles]) margins grouped `counts` at a
    time: the crop `predict --faces` takes (the highest mixture probability; the first on a tie)."""
    p = mixture_probability(margins, temperature)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    return np.array([s + int(np.argmax(p[s : s + n])) for s, n in zip(starts, counts)], dtype=int)


def _expert_outputs(expert, x, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, crops) logit margins of one expert and, with `features`, its (B, D) pooled features (mean over crops)."""
    crops = x.shape[1] if x.dim() == 5 else 1
    if not features:
        logits, f = expert.crop_logits(x).float(), None
    else:
        logits, f = expert.forward_with_features(x.reshape(-1, *x.shape[-3:]))
        f = f.float().reshape(-1, crops, f.shape[-1]).mean(dim=1).cpu().numpy()
        logits = logits.float().reshape(-1, crops, 2)
    z = (logits[..., 1] - logits[..., 0]).cpu().numpy()
    return z.reshape(len(z), -1), f
