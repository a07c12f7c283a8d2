"""Probe: which "uncertain" rule answers fewer held-out images wrongly with confidence?

Reads `predict` outputs (probability, threshold, uncertainty) for a validation and a test manifest and
compares, at each target coverage of the validation images (the share answered real or fake):

- `uncertainty`: the model's own signal (expert disagreement and feature distance), its threshold
  set on validation as `calibrate --target-coverage` sets it;
- `band`: a reject option around the decision threshold (Chow 1970): uncertain when the probability
  lies in [t - w, t + w), w the widest that keeps the coverage;
- `either`: both rules, each given half the validation budget;
- `real_only`: the model's own signal, but only where the verdict would be "real": a "fake" above the
  threshold (fitted at a low FPR) is never withdrawn.

For every held-out group (fake families named with --held-out-sources, real datasets with
--held-out-datasets) it prints the share answered wrongly and confidently, against the plain threshold,
and the in-distribution coverage and accuracy on the test.

What it decided (the shipped model on the candidate corpus's test, 4,101 images, 2026-11-27): no rule
halves the held-out face swaps' wrong confident answers (98.8% at the plain threshold). At 90%
validation coverage the model's own signal leaves 97.0%, the band 92.1%, both 96.2%. The face swaps
sit far below the threshold, where the experts agree and the features look ordinary: "uncertain"
cannot stand in for a detector that sees them.

`real_only` (the shipped model of 2026-11-29's second build; this probe's in-distribution set, 2,708
test images): at 95% validation coverage, accuracy on covered images 46.1% against 45.7% at the plain
threshold (the model's own rule: 45.0%); held-out face swaps 97.5% wrong and confident (own rule 97.7%).
Fake verdicts stay: the DCGAN faces caught stay caught (73.2%, against 53.0% and 24% uncertain with the
model's rule); but no real called fake can become uncertain any more (5 test reals called fake, against 3).
Not adopted: it buys 0.4 point of accuracy, and a real source the model never saw, whose photos it calls
fake, could no longer be answered "uncertain" (the issue asks that those wrong answers halve too).

  python benchmarks/probe_reject_band.py --val val.csv --val-manifest runs/default/holdout/val.parquet \\
      --test test.csv --test-manifest runs/default/holdout/test.parquet \\
      --held-out-sources faceswap --held-out-datasets mate-backgrounds
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def joined(predictions: str, manifest: str) -> pd.DataFrame:
    meta = pd.read_parquet(manifest) if manifest.endswith(".parquet") else pd.read_csv(manifest)
    pred = pd.read_csv(predictions)
    df = meta.merge(pred[["path", "probability", "threshold", "uncertainty", "error"]], on="path")
    df = df[df["error"].isna() & df["label"].isin([0, 1])].reset_index(drop=True)
    return df.assign(family=df["source"].astype(str).str.split("/").str[0])


def rules(val: pd.DataFrame, coverage: float) -> dict:
    """Each rule as a function of a frame -> uncertain mask, fitted on validation to `coverage`."""
    t = float(val["threshold"].iloc[0])
    p, u = val["probability"].to_numpy(), val["uncertainty"].to_numpy()

    def band_width(budget: float) -> float:
        widths = np.sort(np.abs(p - t))
        return float(widths[max(0, int(np.floor(budget * len(p))) - 1)]) if budget > 0 else 0.0

    def u_threshold(budget: float) -> float:
        return float(np.quantile(u, 1 - budget)) if np.isfinite(u).all() else np.inf

    w, w_half, ut, ut_half = band_width(1 - coverage), band_width((1 - coverage) / 2), u_threshold(1 - coverage), \
        u_threshold((1 - coverage) / 2)
    below = p < t
    u_real = np.where(below, u, 0.0)  # a fake verdict is never uncertain: it counts as covered
    ut_real = float(np.quantile(u_real, coverage)) if np.isfinite(u).all() else np.inf
    return {
        "uncertainty": lambda d: d["uncertainty"].to_numpy() >= ut,
        "band": lambda d: np.abs(d["probability"].to_numpy() - t) < w,
        "either": lambda d: (d["uncertainty"].to_numpy() >= ut_half) | (np.abs(d["probability"].to_numpy() - t) < w_half),
        "real_only": lambda d: (d["uncertainty"].to_numpy() >= ut_real) & (d["probability"].to_numpy() < t),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", required=True, help="predict output on the validation manifest")
    ap.add_argument("--val-manifest", required=True)
    ap.add_argument("--test", required=True, help="predict output on the test manifest")
    ap.add_argument("--test-manifest", required=True)
    ap.add_argument("--held-out-sources", default="", help="fake families never in training (comma-separated)")
    ap.add_argument("--held-out-datasets", default="", help="real datasets never in training (comma-separated)")
    args = ap.parse_args()

    val, test = joined(args.val, args.val_manifest), joined(args.test, args.test_manifest)
    t = float(test["threshold"].iloc[0])
    groups = {f: (test["family"] == f).to_numpy() for f in filter(None, args.held_out_sources.split(","))}
    groups |= {d: ((test["dataset"] == d) & (test["label"] == 0)).to_numpy()
               for d in filter(None, args.held_out_datasets.split(","))}
    indist = ~np.logical_or.reduce(list(groups.values())) if groups else np.ones(len(test), bool)
    y, fake = test["label"].to_numpy(), test["probability"].to_numpy() >= t
    wrong = fake != y.astype(bool)
    print(f"threshold {t:.4f}; test: {len(test)} images, {int(indist.sum())} in distribution")
    header = f"{'rule':<12}{'val cov':>8}{'test cov':>9}{'acc all':>8}{'acc cov':>8}" + "".join(
        f"{g[:14]:>16}" for g in groups)
    print(header + "   (held-out: wrong & confident)")
    print(f"{'plain':<12}{1.0:>8.3f}{1.0:>9.3f}{(~wrong[indist]).mean():>8.3f}{(~wrong[indist]).mean():>8.3f}" + "".join(
        f"{100 * wrong[m].mean():>15.1f}%" for m in groups.values()))
    for coverage in (0.95, 0.90):
        for name, rule in rules(val, coverage).items():
            unc_v, unc = rule(val), rule(test)
            covered = indist & ~unc
            print(f"{name:<12}{1 - unc_v.mean():>8.3f}{1 - unc[indist].mean():>9.3f}{(~wrong[indist]).mean():>8.3f}"
                  f"{(~wrong[covered]).mean():>8.3f}" + "".join(
                      f"{100 * (wrong[m] & ~unc[m]).mean():>15.1f}%" for m in groups.values()))


if __name__ == "__main__":
    main()
