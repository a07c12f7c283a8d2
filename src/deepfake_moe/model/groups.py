"""Expert groups: experts that know different kinds of fake, joined so that no group outvotes another.

The method's mixture is the mean of its experts' P(fake), and that is how experts of one kind (trained on
the same fakes, each on its own split) stay joined within a group. Between groups the mean fails: experts
trained on edits score a generated face low and confidently, and their mean drowns the generator experts'
"fake" (docs/model-card.md). So a grouped mixture answers with the first group's mean, unless another
group is surer that the image is fake than it is of nearly any real: above its `floor` (its validation
reals' (1 - target FPR) quantile, fitted by `calibrate`), such a group speaks, its logit shifted so that
its floor lands where the first group's reals' same quantile lies, and the most fake voice wins. Below
their floors the other groups stay silent, so the first group's ranking of ordinary images, and what it
catches, are kept; an image is fake if any kind of expert is confident that it is. Without groups a model
is the method's plain mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit, logit

from deepfake_moe.errors import InputError

PROB_EPS = 1e-6  # keeps logit() finite for saturated experts
SILENT = -1e4  # the logit of a group below its floor: it takes no part in the maximum


@dataclass
class ExpertGroup:
    experts: list[int]
    """The experts (indices into the model's list) whose mean P(fake) is this group's."""
    name: str = ""
    floor: float | None = None
    """The logit (of the group's mean P(fake)) this group must pass to speak; None: always (the first group)."""
    shift: float = 0.0
    """Added to the group's logit where it speaks, so that its floor lands on the first group's scale."""

    def __post_init__(self):
        if not self.experts:
            raise InputError("an expert group needs at least one expert")


def check_groups(groups: Sequence[ExpertGroup], n_experts: int) -> None:
    """Every expert in exactly one group."""
    members = sorted(i for g in groups for i in g.experts)
    if members != list(range(n_experts)):
        raise InputError(f"expert groups {[g.experts for g in groups]} must hold each of the {n_experts} experts "
                         "exactly once")


def join(expert_probs, groups: Sequence[ExpertGroup] | None):
    """(..., n_experts) P(fake) -> (...): their mean without groups, else the most fake group that speaks.

    NumPy arrays or torch tensors (the same rule in every runtime: `Mixture.forward`, the predictor on
    exported experts, calibration).
    """
    if not groups:
        return expert_probs.mean(-1)
    if isinstance(expert_probs, torch.Tensor):
        z = [_voice(torch.logit(expert_probs[..., g.experts].mean(-1), eps=PROB_EPS), g, torch.where) for g in groups]
        return torch.sigmoid(torch.stack(z, -1).amax(-1))
    return expit(voices(expert_probs, groups).max(axis=-1))


def voices(expert_probs: np.ndarray, groups: Sequence[ExpertGroup]) -> np.ndarray:
    """(..., n_experts) P(fake) -> (..., n_groups): each group's shifted logit, `SILENT` below its floor.
    The mixture answers with the largest; its argmax is the group that answers."""
    p = np.asarray(expert_probs, dtype=np.float64)
    z = [_voice(logit(np.clip(p[..., g.experts].mean(-1), PROB_EPS, 1 - PROB_EPS)), g, np.where) for g in groups]
    return np.stack(z, -1)


def _voice(z, group: ExpertGroup, where):
    return z + group.shift if group.floor is None else where(z > group.floor, z + group.shift, SILENT)


def fit_alignment(real_probs: np.ndarray, groups: Sequence[ExpertGroup], target_fpr: float = 0.01,
                  anchor: float | None = None, strata: Sequence | None = None) -> list[ExpertGroup]:
    """The groups with floors and shifts fitted on (N, n_experts) P(fake) of reals: every group after the
    first speaks above its reals' (1 - target_fpr) quantile, shifted onto the first group's, or onto
    `anchor` (a logit: the decision threshold a model keeps). With `strata` (one key per real: its source,
    say), the quantile is taken within each stratum and the highest counts, so that no kind of real is
    flagged more often than the target."""
    if not 0.0 < target_fpr < 1.0:
        raise InputError(f"the target FPR must be in (0, 1), got {target_fpr}")
    p = np.clip(np.asarray(real_probs, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    if len(p) < 2:
        raise InputError("aligning expert groups needs the probabilities of at least two reals")
    keys = np.zeros(len(p)) if strata is None else np.asarray(strata)
    if len(keys) != len(p):
        raise InputError(f"{len(keys)} strata for {len(p)} reals")
    masks = [keys == k for k in np.unique(keys)]
    masks = [m for m in masks if m.sum() >= 2] or [np.ones(len(p), dtype=bool)]
    q = [max(float(np.quantile(logit(p[m][:, g.experts].mean(axis=1)), 1 - target_fpr)) for m in masks)
         for g in groups]
    onto = q[0] if anchor is None else float(anchor)
    return [ExpertGroup(groups[0].experts, groups[0].name)] + [
        ExpertGroup(g.experts, g.name, floor=qg, shift=onto - qg) for g, qg in zip(groups[1:], q[1:])]
