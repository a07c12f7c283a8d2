"""Probe: should the uncertainty's feature distance measure to each training source, not to each label?

The `uncertain` verdict's distance signal (model/uncertainty.py) fits one Gaussian per label: every
expert's pooled features of the training reals and of the training fakes, each around its own mean, with
one shared covariance. The fakes are many families, though, and a trained family far from the mean of
all fakes (the 64 px DCGAN faces) may then look unfamiliar. This probe fits both on the same pool sample
and compares them as `calibrate` and `evaluate` would use them:

  label   one mean per label (what ships);
  source  one mean per training source (each fake family, each kind of real), the same shared
          probabilistic-PCA covariance of the residuals around them; the nearest mean counts.

With one mean per label it also scores each signal alone (disagreement, distance), to see which of the
two answers "uncertain" where.

For each arm the signals' reference and the uncertainty threshold (95% coverage) are fitted on the
validation set, then the test set is read: in-distribution coverage and accuracy on covered images
against all at the plain threshold, and for each group the share answered wrongly with confidence.

What it decided (the shipped model; the generator corpus's pool, 1,203 images fitted, its validation and
test sets; 2026-11-29). Per group: wrong & confident / wrong at the plain threshold / uncertain.

| arm, signal | in-dist coverage | acc covered | acc plain | face swap (held out) | mate-backgrounds reals (held out) | DCGAN faces (trained) | Real-ESRGAN (trained) |
|---|---|---|---|---|---|---|---|
| label, both (what ships) | 95.8% | 49.9% | 50.5% | 97.9 / 98.8 / 0.9 | 0.2 / 0.5 / 1.7 | 27.3 / 32.3 / 23.2 | 96.0 / 96.5 / 0.5 |
| label, disagreement alone | 93.2% | 51.0% | 50.5% | 96.8 / 98.8 / 2.0 | 0.5 / 0.5 / 2.5 | 28.3 / 32.3 / 11.1 | 91.9 / 96.5 / 5.1 |
| label, distance alone | 94.3% | 48.4% | 50.5% | 98.7 / 98.8 / 0.1 | 0.2 / 0.5 / 6.4 | 29.3 / 32.3 / 27.8 | 96.5 / 96.5 / 0.0 |
| source, both | 95.8% | 49.9% | 50.5% | 97.9 / 98.8 / 0.9 | 0.2 / 0.5 / 2.0 | 27.3 / 32.3 / 24.2 | 96.0 / 96.5 / 0.5 |

The label arm reproduces `evaluate`'s figures exactly. Per-source means change nothing: the DCGAN faces
are far from every training mean, their own family's included, so one Gaussian per label is not what
sends them to "uncertain". The distance does (27.8% of them alone), and it is also what flags the
unseen real source (6.4%). The disagreement alone raises accuracy on covered images above the plain
threshold's (51.0% against 50.5%) and answers "uncertain" on twice as many held-out face swaps, still
far from half of them. Weighing the two signals on the validation set instead of adding them equally
was tried next (the disagreement's weight in {0.25, 0.5, 0.75}, the one whose covered validation images
are answered best; 0 and 1 left out, since validation data holds nothing unseen for the distance to
find): validation chose 0.75 (accuracy on covered 51.5% against 51.0% at 0.5, 52.2% on all), and the
test's in-distribution accuracy on covered images rose only to 50.1% (50.5% on all), with one more real
answered fake. Too little to change what ships; it was taken out again.

    python benchmarks/probe_source_distance.py --pool runs/default/holdout/pool.parquet \
        --val runs/default/holdout/val.parquet --test runs/default/holdout/test.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtr

from deepfake_moe.evaluate.threshold import collect_outputs, expert_probabilities
from deepfake_moe.evaluate.uncertainty import stratified_sample
from deepfake_moe.infer.weights import load_weights
from deepfake_moe.model import uncertainty as unc
from deepfake_moe.model.groups import join


def sq_distances(heads: list, feats: list[np.ndarray]) -> np.ndarray:
    """Each expert's (N, D) features -> (N, experts, classes) squared distances to its fitted Gaussians."""
    with torch.no_grad():
        return np.stack([h(torch.from_numpy(f)).numpy() for h, f in zip(heads, feats)], axis=1)


def outputs(model, config, rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    margins, feats, errors = collect_outputs(model, config, rows["path"].tolist(), 32, "cpu", progress=False,
                                             features=True)
    if any(errors):
        raise SystemExit(f"{sum(bool(e) for e in errors)} images failed to decode")
    return expert_probabilities(margins, config.temperature), feats


def score(probs: np.ndarray, d2: np.ndarray, ref, groups, signal: str) -> np.ndarray:
    """The model's uncertainty from both signals, or from one of them alone (its standardised normal CDF)."""
    if signal == "both":
        return unc.uncertainty(probs, d2, ref, groups)
    a, b = unc.signals(probs, d2, groups)
    z = ((a - ref.disagreement_loc) / ref.disagreement_scale if signal == "disagreement"
         else (b - ref.distance_loc) / ref.distance_scale)
    return ndtr(z)


def family(source: str) -> str:
    return str(source).split("/")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--weights", default=None, help="default: the built-in model")
    ap.add_argument("--fit-images", type=int, default=1200)
    ap.add_argument("--coverage", type=float, default=0.95)
    ap.add_argument("--held-out-sources", nargs="*", default=["faceswap"])
    ap.add_argument("--held-out-datasets", nargs="*", default=["mate-backgrounds"])
    ap.add_argument("--show-sources", nargs="*", default=["dcgan_face", "stylegan_lite", "esrgan"])
    args = ap.parse_args()

    model, config = load_weights(args.weights)
    pool = stratified_sample(pd.read_parquet(args.pool), args.fit_images).reset_index(drop=True)
    val, test = pd.read_parquet(args.val), pd.read_parquet(args.test)
    (_, f_pool), (p_val, f_val), (p_test, f_test) = (outputs(model, config, d) for d in (pool, val, test))
    keys = {"label": pool["label"].to_numpy(), "source": pool["source"].map(family).to_numpy()}
    fam = test["source"].map(family)
    groups = {f"held out: {s}": fam == s for s in args.held_out_sources}
    groups |= {f"held-out reals: {d}": (test["dataset"] == d) & (test["label"] == 0) for d in args.held_out_datasets}
    groups |= {f"trained: {s}": fam == s for s in args.show_sources}
    ind = ~(fam.isin(args.held_out_sources) | test["dataset"].isin(args.held_out_datasets))
    p_test_joined, y = join(p_test, config.groups), test["label"].to_numpy()
    plain = (p_test_joined >= config.threshold).astype(int)
    print(f"{len(pool)} pool images fitted, {len(val)} validation, {len(test)} test; plain threshold {config.threshold:.4f}")
    print(f"{'arm, signal':<20} {'in-dist coverage':>16} {'acc covered':>11} {'acc plain':>9}  "
          + "  ".join(f"{g} (wrong&conf / plain / uncertain)" for g in groups))
    arms = [(arm, key, signal) for arm, key in keys.items() for signal in ("both", "disagreement", "distance")
            if arm == "label" or signal == "both"]
    for arm, key, signal in arms:
        # one Gaussian per class of `key`, with one shared covariance, as fit-uncertainty fits reals and fakes
        heads = [unc.fit_feature_distance(f, key, classes=np.unique(key).tolist()) for f in f_pool]
        d_val, d_test = sq_distances(heads, f_val), sq_distances(heads, f_test)
        ref = unc.fit_reference(p_val, d_val, fitted_on=arm, groups=config.groups)
        tau = unc.choose_uncertainty_threshold(score(p_val, d_val, ref, config.groups, signal), args.coverage)
        said = unc.verdicts(p_test_joined, score(p_test, d_test, ref, config.groups, signal), config.threshold, tau)
        covered, pred = said != "uncertain", (said == "fake").astype(int)
        m = ind.to_numpy() & covered
        cells = []
        for mask in groups.values():
            mask = mask.to_numpy()
            cells.append(f"{np.mean(covered[mask] & (pred[mask] != y[mask])):.1%} / {np.mean(plain[mask] != y[mask]):.1%}"
                         f" / {np.mean(~covered[mask]):.1%}")
        print(f"{arm + ', ' + signal:<20} {covered[ind.to_numpy()].mean():>16.1%} {np.mean(pred[m] == y[m]):>11.1%} "
              f"{np.mean(plain[ind.to_numpy()] == y[ind.to_numpy()]):>9.1%}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
