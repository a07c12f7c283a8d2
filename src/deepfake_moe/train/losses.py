"""The three training losses of Stage II (docs/method.md): L_ce, L_nce, L_kl.

The paper names them and says what each is for; the exact forms below are ours and are all
configurable (`LossConfig`). Every function takes logits/features already computed, except
`consistency_loss`, which needs the model to score perturbed inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

NOISE_KINDS = ("gaussian", "uniform")


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None,
            distill_weight: float = 0.0) -> torch.Tensor:
    """L_ce: cross-entropy of the 2-class head against the label (1 = fake), mixed with the cross-entropy
    against a teacher's fake probabilities (knowledge distillation) when `distill_weight` > 0."""
    hard = F.cross_entropy(logits.float(), labels)
    if not distill_weight:
        return hard
    if teacher is None:
        raise ValueError("distill_weight > 0 needs the teacher's probabilities")
    soft = torch.stack([1.0 - teacher, teacher], dim=1).float()
    return (1.0 - distill_weight) * hard + distill_weight * F.cross_entropy(logits.float(), soft)


def real_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """L_nce: supervised contrastive loss (Khosla et al. 2020) whose anchors are the reals only.

    With z = L2-normalised features and s_ij = z_i . z_j / temperature, for every real anchor i
    that has at least one other real in the batch:

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )

    where P(i) = the other reals (positives) and the denominator runs over every other sample,
    reals and fakes (fakes are the negatives). L_nce = mean of l_i over those anchors; 0 when the
    batch has fewer than two reals. Fakes are never anchors, so no term pulls two fakes
    together: fakes are only pushed away from reals (they are varied; docs/method.md observation 2).
    """
    z = F.normalize(features.float(), dim=1)
    real = labels == 0
    n = z.shape[0]
    if int(real.sum()) < 2:
        return z.sum() * 0.0  # keeps the graph (DDP expects every parameter to get a gradient)
    sim = z @ z.T / temperature
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    positives = real[:, None] & real[None, :] & not_self
    per_anchor = -(log_prob * positives).sum(dim=1)[real] / positives.sum(dim=1)[real]
    return per_anchor.mean()


def sample_noise(shape: torch.Size, kind: str, std: float, like: torch.Tensor) -> torch.Tensor:
    """Input-space noise with standard deviation `std`; uniform noise is U(-a, a) with a = std*sqrt(3)."""
    if kind == "gaussian":
        return torch.randn(shape, device=like.device, dtype=like.dtype) * std
    if kind == "uniform":
        a = std * math.sqrt(3.0)
        return (torch.rand(shape, device=like.device, dtype=like.dtype) * 2 - 1) * a
    raise ValueError(f"noise kind {kind!r} is not one of {NOISE_KINDS}")


def kl_to_clean(clean_logits: torch.Tensor, perturbed_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_perturbed), mean over the batch; p_clean is detached (as in VAT)."""
    p_clean = clean_logits.detach().float().softmax(dim=1)
    log_p_clean = clean_logits.detach().float().log_softmax(dim=1)
    log_p_pert = perturbed_logits.float().log_softmax(dim=1)
    return (p_clean * (log_p_clean - log_p_pert)).sum(dim=1).mean()


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Perturbed passes must not move the batch-norm running statistics (momentum 0 = unchanged)."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum


def _per_sample_unit(d: torch.Tensor) -> torch.Tensor:
    flat = d.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(d)


def consistency_loss(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    clean_logits: torch.Tensor,
    noise: str = "gaussian",
    noise_std: float = 0.1,
    vat_steps: int = 0,
    vat_xi: float = 1e-6,
) -> torch.Tensor:
    """L_kl: KL between the prediction on the clean input and on a randomly perturbed one.

    `vat_steps` = 0: the perturbation is random noise (`noise`, `noise_std`, in the normalised
    input space). `vat_steps` >= 1: that noise is the starting direction of virtual-adversarial
    power iterations (Miyato et al. 2018); the final perturbation has, per sample, the L2 norm of
    the random noise it started from (eps = noise_std * sqrt(C*H*W)), pointed where the KL grows
    fastest. `forward` scores a batch; batch-norm statistics should be frozen around it.
    """
    r = sample_noise(images.shape, noise, noise_std, images)
    if vat_steps > 0:
        eps = noise_std * math.sqrt(images[0].numel())
        d = _per_sample_unit(r)
        for _ in range(vat_steps):
            d = (vat_xi * d).requires_grad_(True)
            adv_kl = kl_to_clean(clean_logits, forward(images.detach() + d))
            (grad,) = torch.autograd.grad(adv_kl, d)
            d = _per_sample_unit(grad.detach())
        r = eps * d
    return kl_to_clean(clean_logits, forward(images + r))
