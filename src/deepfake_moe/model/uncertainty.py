"""Knowing when the mixture does not know: expert disagreement and distance to the training data.

Two signals, both cheap at prediction time:
- disagreement: the mutual information between the experts' verdicts and which expert gave them,
  H(mean p) - mean H(p_e), in bits (0: the experts agree; 1: half say 0, half say 1);
- distance: per expert, the squared Mahalanobis distance of its pooled features to the training
  reals and to the training fakes, the nearer class counting. Each expert's class-conditional
  Gaussians share one covariance, estimated as probabilistic PCA (Tipping & Bishop 1999): the top
  `k` principal axes of the within-class scatter with their own variances, plus one isotropic
  variance for the rest. That is a shrinkage estimate that needs a few tens of KB per expert
  instead of a full D x D matrix, and the distance stays defined in every direction (a novel
  image that moves off the principal subspace is still far).

Each signal is standardised against in-distribution data (median and MAD of its logarithm), and the
two are combined as Stouffer's z, (z_a + z_b) / sqrt(2), mapped to [0, 1] by the normal CDF: about
0.5 for a typical in-distribution image, near 1 far outside. `calibrate` chooses the threshold and,
in a grouped model, whose distance counts: every expert's, or one group's. An expert's features can
grow with its own confidence (the generator expert's are largest on the generated faces it catches
best), and then its distance says "fake" rather than "unfamiliar".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr
from torch import nn

from deepfake_moe.errors import InputError
from deepfake_moe.model.groups import ExpertGroup

STATS_FILE = "uncertainty.safetensors"
DEFAULT_COMPONENTS = 16
LOG_EPS = 1e-6  # floor inside log(): an exact 0 (experts in full agreement) must not give -inf
MAD_TO_SIGMA = 1.4826
MIN_SCALE = 1e-6
VERDICTS = ("real", "fake", "uncertain")


class UncertaintyError(InputError, ValueError):
    """Statistics that cannot be fitted on the data given, or do not fit the model."""


@dataclass
class SignalReference:
    """Where in-distribution data sits on each signal's log scale (median, robust sigma)."""

    disagreement_loc: float = 0.0
    disagreement_scale: float = 1.0
    distance_loc: float = 0.0
    distance_scale: float = 1.0
    fitted_on: str = ""  # which data: "fit" (the statistics' own data) or "calibrate" (validation)
    distance_experts: list[int] | None = None
    """The experts whose feature distance counts (None: all); `calibrate` chooses on validation."""


@dataclass
class UncertaintyConfig:
    """model.yaml's `uncertainty:` section: what was fitted, on what, and the signals' reference."""

    components: int = DEFAULT_COMPONENTS
    reference: SignalReference = field(default_factory=SignalReference)
    info: dict[str, Any] = field(default_factory=dict)


class FeatureDistance(nn.Module):
    """One expert's fitted Gaussians: pooled features (B, D) -> squared Mahalanobis distances (B, C).

    One column per class: for the model's statistics, column 0 is the distance to the training reals,
    column 1 to the training fakes. The buffers are not part of the mixture's state dict: they live in
    their own file beside the weights.
    """

    def __init__(self, means: torch.Tensor, components: torch.Tensor, variances: torch.Tensor,
                 residual_variance: torch.Tensor):
        super().__init__()
        if means.ndim != 2 or components.shape[1:] != means.shape[1:]:
            raise UncertaintyError(f"statistics of mismatched shapes: means {tuple(means.shape)}, "
                                   f"components {tuple(components.shape)}")
        if variances.shape != components.shape[:1] or residual_variance.numel() != 1:
            raise UncertaintyError("one variance per component and one residual variance are needed")
        for name, t in (("means", means), ("components", components), ("variances", variances),
                        ("residual_variance", residual_variance.reshape(()))):
            self.register_buffer(name, t.float(), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        r = features.float()[:, None, :] - self.means[None]  # (B, 2, D)
        proj = r @ self.components.T  # (B, 2, k)
        inside = (proj.square() / self.variances).sum(-1)
        outside = (r.square().sum(-1) - proj.square().sum(-1)).clamp_min(0) / self.residual_variance
        return inside + outside

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"means": self.means, "components": self.components, "variances": self.variances,
                "residual_variance": self.residual_variance}


def fit_feature_distance(features: np.ndarray, labels: np.ndarray, components: int = DEFAULT_COMPONENTS,
                         classes: Sequence = (0, 1)) -> FeatureDistance:
    """Each class's mean (the model's: reals, then fakes) and a shared probabilistic-PCA covariance of the
    within-class residuals."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise UncertaintyError(f"features must be (N, D) with one label each, got {x.shape} and {len(y)} labels")
    members = np.stack([y == c for c in classes])  # (C, N)
    if not members.any(axis=0).all():
        raise UncertaintyError(f"every label must be one of the classes {list(classes)}")
    counts = members.sum(axis=1).tolist()
    if min(counts) < 2:
        need = "2 reals and 2 fakes" if tuple(classes) == (0, 1) else f"2 images of each class {list(classes)}"
        raise UncertaintyError(f"fitting needs at least {need}, got {counts}")
    n, d = x.shape
    k = min(components, d - 1, n - len(classes) - 1)
    if k < 1:
        raise UncertaintyError(f"too few images ({n}) or feature dimensions ({d}) for {components} component(s)")
    means = np.stack([x[m].mean(axis=0) for m in members])
    resid = x - means[members.argmax(axis=0)]
    cov = resid.T @ resid / (n - len(classes))
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    eigval = np.clip(eigval[::-1], 0.0, None)
    eigvec = eigvec[:, ::-1]
    rest = eigval[k:].sum() / (d - k)
    floor = max(MIN_SCALE, 1e-6 * float(eigval[0]))  # a flat remainder (N < D) must not divide by 0
    residual = max(float(rest), floor)
    variances = np.maximum(eigval[:k], residual)
    return FeatureDistance(torch.from_numpy(means), torch.from_numpy(eigvec[:, :k].T.copy()),
                           torch.from_numpy(variances), torch.tensor(residual, dtype=torch.float64))


def disagreement(expert_probs: np.ndarray, groups: Sequence[ExpertGroup] | None = None) -> np.ndarray:
    """(N, E) fake probabilities -> (N,) mutual information in bits, in [0, 1]; with expert groups, the
    mean over groups of each group's own (experts of different kinds are meant to disagree)."""
    p = np.clip(np.asarray(expert_probs, dtype=np.float64), 0.0, 1.0)
    if groups:
        return np.mean([disagreement(p[:, g.experts]) for g in groups], axis=0)
    return np.clip(_entropy_bits(p.mean(axis=1)) - _entropy_bits(p).mean(axis=1), 0.0, 1.0)


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(q > 0, q * np.log2(q), 0.0))
    return h


def distance(sq_distances: np.ndarray, experts: Sequence[int] | None = None) -> np.ndarray:
    """(N, E, 2) squared distances -> (N,) mean over `experts` (None: all) of log(squared distance to the
    nearer class).

    (Dividing by each expert's feature size would only shift the log by a constant, which the
    standardisation removes.)
    """
    d2 = np.asarray(sq_distances, dtype=np.float64).min(axis=2)
    if experts is not None:
        d2 = d2[:, list(experts)]
    return np.log(np.maximum(d2, LOG_EPS)).mean(axis=1)


def signals(expert_probs: np.ndarray, sq_distances: np.ndarray, groups: Sequence[ExpertGroup] | None = None,
            distance_experts: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two raw signals on their log scales: (log disagreement, log distance)."""
    return np.log(disagreement(expert_probs, groups) + LOG_EPS), distance(sq_distances, distance_experts)


def fit_reference(expert_probs: np.ndarray, sq_distances: np.ndarray, fitted_on: str,
                  groups: Sequence[ExpertGroup] | None = None,
                  distance_experts: Sequence[int] | None = None) -> SignalReference:
    a, b = signals(expert_probs, sq_distances, groups, distance_experts)
    (a_loc, a_scale), (b_loc, b_scale) = _robust(a), _robust(b)
    experts = None if distance_experts is None else [int(e) for e in distance_experts]
    return SignalReference(a_loc, a_scale, b_loc, b_scale, fitted_on, experts)


def _robust(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if not len(v):
        raise UncertaintyError("no scored images to fit the uncertainty reference on")
    loc = float(np.median(v))
    return loc, max(MIN_SCALE, MAD_TO_SIGMA * float(np.median(np.abs(v - loc))))


def uncertainty(expert_probs: np.ndarray, sq_distances: np.ndarray, ref: SignalReference,
                groups: Sequence[ExpertGroup] | None = None) -> np.ndarray:
    """(N,) uncertainty in [0, 1]: the normal CDF of the Stouffer combination of both standardised signals."""
    a, b = signals(expert_probs, sq_distances, groups, ref.distance_experts)
    z = ((a - ref.disagreement_loc) / ref.disagreement_scale + (b - ref.distance_loc) / ref.distance_scale)
    return ndtr(z / math.sqrt(2.0))


def verdicts(prob: np.ndarray, unc: np.ndarray | None, threshold: float,
             uncertainty_threshold: float | None) -> np.ndarray:
    """'fake' at or above the decision threshold, else 'real'; 'uncertain' overrides both when
    the uncertainty reaches its threshold; '' where the image was not scored."""
    prob = np.asarray(prob, dtype=np.float64)
    out = np.where(prob >= threshold, "fake", "real").astype(object)
    if unc is not None and uncertainty_threshold is not None:
        out[np.asarray(unc, dtype=np.float64) >= uncertainty_threshold] = "uncertain"
    out[~np.isfinite(prob)] = ""
    return out


def choose_uncertainty_threshold(unc: np.ndarray, target_coverage: float) -> float:
    """The lowest threshold leaving at most (1 - target_coverage) of these images uncertain.

    Set halfway between the last value that must stay covered and the next one up, so float
    rounding elsewhere cannot flip the images on the boundary.
    """
    if not 0.0 < target_coverage <= 1.0:
        raise UncertaintyError(f"target coverage must be in (0, 1], got {target_coverage}")
    u = np.sort(np.asarray(unc, dtype=np.float64)[np.isfinite(unc)])
    if not len(u):
        raise UncertaintyError("no scored images to choose the uncertainty threshold on")
    allowed = math.floor((1.0 - target_coverage) * len(u) + 1e-9)
    keep = u[len(u) - allowed - 1]  # the highest uncertainty that must still be answered
    above = u[u > keep]
    return float(min(1.0, (keep + above[0]) / 2.0 if len(above) else np.nextafter(keep, np.inf)))


def save_stats(heads: list[FeatureDistance], folder: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    from deepfake_moe.io import atomic_path

    tensors = {f"expert_{i}.{k}": v.detach().cpu().contiguous() for i, h in enumerate(heads)
               for k, v in h.tensors().items()}
    path = Path(folder) / STATS_FILE
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "deepfake-moe-uncertainty"})
    return path


def load_stats(folder: str | os.PathLike, n_experts: int) -> list[FeatureDistance]:
    from safetensors.torch import load_file

    path = Path(folder) / STATS_FILE
    if not path.is_file():
        raise UncertaintyError(f"{folder}: model.yaml describes uncertainty statistics but {STATS_FILE} is missing "
                               "(refit them: deepfake-moe fit-uncertainty MANIFEST --weights FOLDER)")
    t = load_file(str(path), device="cpu")
    try:
        return [FeatureDistance(*(t[f"expert_{i}.{k}"] for k in ("means", "components", "variances",
                                                                   "residual_variance")))
                for i in range(n_experts)]
    except KeyError as e:
        raise UncertaintyError(f"{path}: no statistics for {e.args[0]} (the model has {n_experts} experts)") from None
