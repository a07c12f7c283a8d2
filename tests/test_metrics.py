"""Metrics, threshold choice and temperature fitting against hand-computed values."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from deepfake_moe.evaluate.metrics import (
    MetricError,
    _resample_counts,
    binary_metrics,
    bootstrap_intervals,
    roc_points,
    tpr_at_fpr,
    weighted_curve_metrics,
)
from deepfake_moe.evaluate.threshold import choose_threshold, fit_temperature, mixture_probability

# Example A (no ties): ROC vertices (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
Y_A = np.array([0, 0, 1, 1])
S_A = np.array([0.1, 0.4, 0.35, 0.8])
# Example B (tied scores across classes): vertices (0,0) (0,1/3) (1/3,2/3) (2/3,1) (1,1).
Y_B = np.array([0, 1, 0, 1, 1, 0])
S_B = np.array([0.2, 0.2, 0.6, 0.6, 0.9, 0.1])


def test_hand_values_without_ties():
    m = binary_metrics(Y_A, S_A, threshold=0.5, n_bootstrap=0)
    assert m.auc.value == pytest.approx(0.75)  # 3 of 4 (fake, real) pairs ordered right
    assert m.ap.value == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m.eer.value == pytest.approx(0.5)  # FPR = FNR = 0.5 exactly at vertex (.5, .5)
    assert m.eer_threshold == pytest.approx(0.4)
    assert m.accuracy.value == pytest.approx(0.75)  # only 0.35 (fake) is called real
    assert m.f1.value == pytest.approx(2 / 3)  # tp 1, fp 0, fn 1
    assert m.tpr_at_fpr[0.01].value == pytest.approx(0.5)  # flat segment from (0,.5) to (.5,.5)
    assert (m.n, m.n_real, m.n_fake) == (4, 2, 2)
    assert m.auc.ci95 is None


def test_hand_values_with_ties():
    m = binary_metrics(Y_B, S_B, threshold=0.6, fpr_targets=(0.1, 0.5), n_bootstrap=0)
    # Pairs: fake .2 vs reals (.2 tie=.5, .6 0, .1 1) = 1.5; fake .6: 1 + .5 + 1; fake .9: 3 -> 7/9.
    assert m.auc.value == pytest.approx(7 / 9)
    assert m.ap.value == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert m.eer.value == pytest.approx(1 / 3)
    assert m.eer_threshold == pytest.approx(0.6)
    # Linear between (0, 1/3) and (1/3, 2/3), then between (1/3, 2/3) and (2/3, 1).
    assert m.tpr_at_fpr[0.1].value == pytest.approx(1 / 3 + 0.1)
    assert m.tpr_at_fpr[0.5].value == pytest.approx(2 / 3 + (0.5 - 1 / 3))
    # Called fake at >= 0.6: the two tied 0.6 images (one real, one fake) and 0.9.
    assert m.accuracy.value == pytest.approx(4 / 6)
    assert m.f1.value == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_eer_interpolates_between_vertices():
    # Vertices (0,0) (0,.5) (.5,.5) (.5,1)... with 2 reals; shift: 3 reals, 2 fakes.
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    # ROC: (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1). FPR - FNR is -1/6 at (1/3,.5) and 1/3 at
    # (1/3,1): it crosses zero on that vertical segment, where FPR = FNR = 1/3.
    m = binary_metrics(y, s, n_bootstrap=0)
    assert m.eer.value == pytest.approx(1 / 3)
    y2 = np.array([1, 0, 0, 1, 0])
    s2 = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    # ROC: (0,.5) -> (1/3,.5) -> (2/3,.5) -> (2/3,1): d = -.5, -1/6, 1/6 between vertices 2 and 3:
    # interpolated FPR = 1/3 + 0.5 * 1/3 = 0.5, the point where FPR = FNR = 0.5.
    m2 = binary_metrics(y2, s2, n_bootstrap=0)
    assert m2.eer.value == pytest.approx(0.5)
    assert m2.eer_threshold in (0.8, 0.7)


def test_tpr_at_fpr_on_vertical_segments_takes_the_highest_tpr():
    fpr, tpr, _ = roc_points(Y_A, S_A)
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(0.5)
    assert tpr_at_fpr(fpr, tpr, 0.5) == pytest.approx(1.0)
    assert tpr_at_fpr(fpr, tpr, 0.75) == pytest.approx(1.0)


def test_one_class_and_nan_are_clear_errors():
    with pytest.raises(MetricError, match="all 3 image.s. are real"):
        binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="are fake"):
        binary_metrics([1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="NaN"):
        binary_metrics([0, 1, 1], [0.1, float("nan"), 0.3])
    with pytest.raises(MetricError, match="0 \\(real\\) or 1"):
        binary_metrics([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="equal length"):
        binary_metrics([0, 1], [0.1, 0.2, 0.3])


def test_weighted_metrics_equal_sklearn_on_the_expanded_resample():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.6 + 0.3 * y, 2)  # many ties
    y[:2] = [0, 1]
    w = np.ones((1, len(y)))
    ones = weighted_curve_metrics(y, s, w, 0.5, (0.01, 0.1))
    point = binary_metrics(y, s, 0.5, (0.01, 0.1), n_bootstrap=0)
    assert ones["auc"][0] == pytest.approx(point.auc.value)
    assert ones["ap"][0] == pytest.approx(point.ap.value)
    assert ones["eer"][0] == pytest.approx(point.eer.value)
    assert ones["f1"][0] == pytest.approx(point.f1.value)
    assert ones["tpr@0.1"][0] == pytest.approx(point.tpr_at_fpr[0.1].value)
    # A bootstrap resample as counts must give what sklearn gives on the repeated images.
    counts = _resample_counts(rng, 3, len(y), np.flatnonzero(y == 1)) + _resample_counts(
        rng, 3, len(y), np.flatnonzero(y == 0)
    )
    got = weighted_curve_metrics(y, s, counts, 0.5, (0.1,))
    for r in range(3):
        rep = np.repeat(np.arange(len(y)), counts[r].astype(int))
        assert counts[r].sum() == len(y)
        assert got["auc"][r] == pytest.approx(roc_auc_score(y[rep], s[rep]))
        assert got["ap"][r] == pytest.approx(average_precision_score(y[rep], s[rep]))
        assert got["tpr@0.1"][r] == pytest.approx(binary_metrics(y[rep], s[rep], 0.5, (0.1,), 0).tpr_at_fpr[0.1].value)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.random(400) + 0.5 * y
    a = bootstrap_intervals(y, s, 0.5, n_bootstrap=300, seed=7)
    b = bootstrap_intervals(y, s, 0.5, n_bootstrap=300, seed=7)
    c = bootstrap_intervals(y, s, 0.5, n_bootstrap=300, seed=8)
    assert a == b and a != c
    m = binary_metrics(y, s, 0.5, n_bootstrap=300, seed=7)
    for est in (m.auc, m.ap, m.eer, m.accuracy, m.f1, *m.tpr_at_fpr.values()):
        lo, hi = est.ci95
        assert lo <= est.value <= hi and lo < hi
    # Width shrinks like 1/sqrt(n): 16x the data, about a quarter of the width.
    y16, s16 = np.tile(y, 16), np.tile(s, 16)
    wide = m.auc.ci95[1] - m.auc.ci95[0]
    lo, hi = binary_metrics(y16, s16, 0.5, n_bootstrap=300).auc.ci95
    assert 0.15 < (hi - lo) / wide < 0.4


def test_threshold_choices_on_hand_example():
    # Scores: reals .1 .3 .5 .7, fakes .4 .6 .8 .9
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.3, 0.5, 0.7, 0.4, 0.6, 0.8, 0.9])
    zero = choose_threshold(y, s, "target-fpr", 0.0)
    assert 0.7 < zero.threshold <= 0.8  # above every real, still catching .8 and .9
    assert (zero.fpr, zero.tpr) == (0.0, 0.5)
    quarter = choose_threshold(y, s, "target-fpr", 0.25)
    # Calling .6 and up fake: one real (.7) of four, three fakes of four.
    assert 0.5 < quarter.threshold <= 0.6 and quarter.fpr == 0.25 and quarter.tpr == 0.75
    half = choose_threshold(y, s, "target-fpr", 0.5)
    assert 0.3 < half.threshold <= 0.4 and half.fpr == 0.5 and half.tpr == 1.0
    f1 = choose_threshold(y, s, "max-f1")
    # Best F1 is calling all of .4 and up fake: tp 4, fp 2 -> 8/10.
    assert 0.3 < f1.threshold <= 0.4 and f1.f1 == pytest.approx(0.8)
    eer = choose_threshold(y, s, "eer")
    assert eer.fpr == pytest.approx(1 - eer.tpr)
    with pytest.raises(ValueError, match="method"):
        choose_threshold(y, s, "youden")


def test_temperature_fit_recovers_the_generating_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, (20000, 1))
    y = (rng.random(20000) < 1 / (1 + np.exp(-z[:, 0] / 2.5))).astype(int)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.08)
    # Two experts: the mixture mean of sigmoids at T is what is fitted; T = 1 data gives T near 1.
    z2 = np.hstack([z, z + rng.normal(0, 0.1, z.shape)])
    y2 = (rng.random(20000) < mixture_probability(z2, 1.0)).astype(int)
    assert fit_temperature(z2, y2) == pytest.approx(1.0, rel=0.08)
    assert math.isclose(mixture_probability(np.array([[0.0, 2.0]]), 2.0)[0], (0.5 + 1 / (1 + math.e**-1)) / 2)
