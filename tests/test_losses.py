"""Stage II losses and the EMA formula, against values computed by hand."""

import math

import pytest
import torch
from torch import nn

from deepfake_moe.train.ema import ExpertEma, warmup_decay
from deepfake_moe.train.losses import (
    ce_loss,
    consistency_loss,
    frozen_batchnorm_stats,
    kl_to_clean,
    real_contrastive_loss,
    sample_noise,
)


def test_ce_loss_matches_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert ce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_mixes_the_label_and_the_teachers_probability():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    hard = ce_loss(logits, labels)
    # a teacher sure of the labels is the labels
    assert ce_loss(logits, labels, torch.tensor([0.0, 1.0]), 1.0).item() == pytest.approx(hard.item(), rel=1e-6)
    # a teacher at 0.5: -log of each row's two class probabilities, halved
    log_p = torch.log_softmax(logits, dim=1)
    undecided = -(0.5 * log_p).sum(dim=1).mean()
    teacher = torch.tensor([0.5, 0.5])
    assert ce_loss(logits, labels, teacher, 1.0).item() == pytest.approx(undecided.item(), rel=1e-6)
    assert ce_loss(logits, labels, teacher, 0.25).item() == pytest.approx(
        0.75 * hard.item() + 0.25 * undecided.item(), rel=1e-6)
    assert ce_loss(logits, labels, teacher, 0.0).item() == hard.item()


def test_nce_two_identical_reals_and_one_fake():
    # s_ab = 1/T, s_ac = 0: each real anchor gives -log(e^(1/T) / (e^(1/T) + 1)).
    feats = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # unnormalised on purpose
    labels = torch.tensor([0, 0, 1])
    assert real_contrastive_loss(feats, labels, temperature=1.0).item() == pytest.approx(
        math.log(1 + math.exp(-1)), rel=1e-6
    )
    assert real_contrastive_loss(feats, labels, temperature=0.5).item() == pytest.approx(
        math.log(1 + math.exp(-2)), rel=1e-6
    )


def test_nce_three_reals_one_fake():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    d = math.exp(0) + math.exp(1) + math.exp(-1)
    # anchors 0 and 2: positives s=0 and s=1 over denominator d; anchor 1: all similarities 0.
    expected = (2 * (math.log(d) - 0.5) + math.log(3)) / 3
    assert real_contrastive_loss(feats, labels, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_nce_does_not_pull_fakes_together():
    reals = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.cat([reals, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])])
    together = torch.cat([reals, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])])
    assert real_contrastive_loss(apart, labels).item() == pytest.approx(
        real_contrastive_loss(together, labels).item(), rel=1e-6
    )
    # but moving a fake towards the reals raises the loss (real-fake pairs are negatives)
    closer = torch.cat([reals, torch.tensor([[0.7, 0.7, 0.0], [0.0, 0.0, 1.0]])])
    assert real_contrastive_loss(closer, labels).item() > real_contrastive_loss(apart, labels).item()


def test_nce_without_two_reals_is_zero_with_a_graph():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = real_contrastive_loss(feats, torch.tensor([0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert feats.grad is not None and torch.all(feats.grad == 0)


def test_kl_hand_computed_and_clean_side_detached():
    clean = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # p = (1/4, 3/4)
    pert = torch.tensor([[0.0, 0.0]], requires_grad=True)  # q = (1/2, 1/2)
    kl = kl_to_clean(clean, pert)
    assert kl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    kl.backward()
    assert clean.grad is None and pert.grad is not None


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_has_the_configured_std(kind):
    torch.manual_seed(0)
    x = torch.empty(200_000)
    r = sample_noise(x.shape, kind, 0.3, x)
    assert r.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(r.mean().item()) < 0.01
    if kind == "uniform":
        assert r.abs().max().item() <= 0.3 * math.sqrt(3) + 1e-6


def test_consistency_loss_zero_without_noise_and_vat_beats_random_noise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(16, 3, 2, 2)
    clean = model(x)
    assert consistency_loss(model, x, clean, noise_std=0.0).item() == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(1)
    random_kl = consistency_loss(model, x, clean, noise_std=0.5, vat_steps=0)
    torch.manual_seed(1)
    vat_kl = consistency_loss(model, x, clean, noise_std=0.5, vat_steps=1, vat_xi=1e-3)
    assert random_kl.item() > 0
    assert vat_kl.item() > 2 * random_kl.item()  # same norm, adversarial direction
    vat_kl.backward()
    assert model[1].weight.grad is not None


def test_frozen_batchnorm_stats_keeps_running_statistics():
    bn = nn.BatchNorm2d(3).train()
    bn(torch.randn(4, 3, 5, 5) + 2)
    before = bn.running_mean.clone()
    with frozen_batchnorm_stats(bn):
        bn(torch.randn(4, 3, 5, 5) - 5)
    assert torch.equal(bn.running_mean, before)
    assert bn.momentum == 0.1


def test_ema_warmup_formula():
    assert warmup_decay(0.995, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.995, 100) == pytest.approx(101 / 110)
    assert warmup_decay(0.995, 10_000) == 0.995


def test_ema_updates_by_hand():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ExpertEma(model, decay=0.995)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n=1: decay 2/11, shadow = 0 + (9/11)(1 - 0)
    assert ema.shadow[0].item() == pytest.approx(9 / 11)
    ema.update(model)  # n=2: decay 3/12
    assert ema.shadow[0].item() == pytest.approx(9 / 11 + 0.75 * (1 - 9 / 11))
    state = ema.state_for(model)
    assert state["weight"].item() == pytest.approx(9 / 11 + 0.75 * (2 / 11))
    assert model.weight.item() == 1.0  # live weights untouched
    other = ExpertEma(model)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2 and torch.equal(other.shadow[0], ema.shadow[0])
