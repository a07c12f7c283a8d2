"""Probe: how should a mixture join experts that know different fakes?

Reads `predict --per-expert` outputs of one or more models ("groups": e.g. edit experts and generator
experts) on a validation and a test manifest, and compares rules that turn the experts' fake
probabilities into one score:

- `mean`: the method's rule, the mean of every expert's P(fake);
- `mean_logit`: the mean of their logits;
- `group_max`: each group's mean P(fake), then the largest;
- `groups`: `model/groups.py`'s rule, what `combine --groups` ships: the first group's mean, unless
  another group's mean passes its floor (its validation reals' 1 - --fpr quantile); such a group speaks,
  its logit shifted onto the first group's same quantile, and the most fake voice wins;
- `NAME alone`: each group's mean by itself.

Each rule's threshold is set on the validation reals at --fpr, as `calibrate --target-fpr` sets it. For
each test fake family it prints the AUC against all test reals and the share caught at that threshold,
then the share of test reals flagged (and of each --held-out-datasets source).

What it decided (the first model's three edit experts and three generator experts of
configs/default_generators.yaml, one per split, on the generator corpus's test, 4,101 images,
2026-11-28): every rule that lets the generator experts move every score loses the held-out face swaps
(the mean of six 0.595, the maximum of the group means 0.733, against 0.823 for the edit experts
alone), because the generator experts rank face swaps below the reals (0.363). `groups` keeps 0.816
and every edit family within 0.007 while catching StyleGAN-lite (1.000) and the DCGAN faces (0.977):
the two-group candidate joins its experts so (docs/model-card.md, "Joining experts that know different fakes").

  python benchmarks/probe_group_rule.py --val-manifest runs/default/holdout/val.parquet \\
      --test-manifest runs/default/holdout/test.parquet \\
      --group edits=first_val.csv,first_test.csv --group generators=gen_val.csv,gen_test.csv \\
      --held-out-datasets mate-backgrounds
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.metrics import roc_auc_score

from deepfake_moe.model.groups import PROB_EPS, ExpertGroup, fit_alignment, join


def load(manifest: str, groups: dict[str, tuple[str, list[int] | None]], which: int) -> tuple[pd.DataFrame, dict]:
    """The manifest's labelled rows that every group scored, and each group's (N, experts) P(fake)."""
    meta = pd.read_parquet(manifest) if manifest.endswith(".parquet") else pd.read_csv(manifest)
    meta = meta[meta["label"].isin([0, 1])]
    probs = {}
    for name, (files, chosen) in groups.items():
        pred = pd.read_csv(files.split(",")[which])
        pred = pred[pred["error"].isna()]
        cols = [c for c in pred.columns if c.startswith("expert_")]
        cols = cols if chosen is None else [cols[i] for i in chosen]
        meta = meta.merge(pred[["path"] + cols].rename(columns={c: f"{name}:{c}" for c in cols}), on="path")
    for name in groups:
        probs[name] = meta[[c for c in meta.columns if c.startswith(f"{name}:")]].to_numpy(float)
    return meta.reset_index(drop=True), probs


def scores(probs: dict[str, np.ndarray], val_reals: dict[str, np.ndarray], fpr: float) -> dict[str, np.ndarray]:
    every = np.concatenate(list(probs.values()), axis=1)
    sizes = np.cumsum([0] + [p.shape[1] for p in probs.values()])
    groups = [ExpertGroup(list(range(a, b)), g) for g, a, b in zip(probs, sizes[:-1], sizes[1:])]
    groups = fit_alignment(np.concatenate(list(val_reals.values()), axis=1), groups, fpr)
    return {
        "mean": every.mean(axis=1),
        "mean_logit": logit(np.clip(every, PROB_EPS, 1 - PROB_EPS)).mean(axis=1),
        "group_max": np.stack([p.mean(axis=1) for p in probs.values()], axis=1).max(axis=1),
        "groups": join(every, groups),
        **{f"{g} alone": p.mean(axis=1) for g, p in probs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val-manifest", required=True)
    ap.add_argument("--test-manifest", required=True)
    ap.add_argument("--group", action="append", required=True,
                    help="NAME[:i,j]=VAL_CSV,TEST_CSV: predict --per-expert outputs of one model (those experts)")
    ap.add_argument("--held-out-datasets", default="", help="comma-separated real datasets never in training")
    ap.add_argument("--fpr", type=float, default=0.01)
    args = ap.parse_args()

    groups = {}
    for spec in args.group:
        name, files = spec.split("=", 1)
        name, _, chosen = name.partition(":")
        groups[name] = (files, [int(i) for i in chosen.split(",")] if chosen else None)
    val, val_probs = load(args.val_manifest, groups, 0)
    test, test_probs = load(args.test_manifest, groups, 1)
    val_reals = {g: p[val["label"].to_numpy() == 0] for g, p in val_probs.items()}
    s_val, s_test = scores(val_probs, val_reals, args.fpr), scores(test_probs, val_reals, args.fpr)
    thresholds = {r: float(np.quantile(s[val["label"].to_numpy() == 0], 1 - args.fpr)) for r, s in s_val.items()}

    y = test["label"].to_numpy()
    family = test["source"].astype(str).str.split("/").str[0].to_numpy()
    rules = list(s_test)
    print(f"groups: {', '.join(f'{g} ({p.shape[1]} experts)' for g, p in test_probs.items())}; "
          f"{len(val)} validation and {len(test)} test images; thresholds at {args.fpr:.0%} FPR on validation reals")
    print(f"{'test fakes (n)':<24}" + "".join(f"{r:>22}" for r in rules))
    print(f"{'':<24}" + "".join(f"{'AUC   caught':>22}" for _ in rules))
    for fam in sorted(set(family[y == 1])):
        m = (y == 0) | (family == fam)
        cells = []
        for r in rules:
            auc = roc_auc_score(y[m], s_test[r][m])
            caught = float((s_test[r][family == fam] >= thresholds[r]).mean())
            cells.append(f"{auc:.3f} {caught:6.1%}")
        print(f"{fam + f' ({int((family == fam).sum())})':<24}" + "".join(f"{c:>22}" for c in cells))
    print(f"{'all':<24}" + "".join(f"{roc_auc_score(y, s_test[r]):>15.3f}       " for r in rules))
    print(f"{'test reals flagged':<24}" + "".join(f"{(s_test[r][y == 0] >= thresholds[r]).mean():>22.1%}" for r in rules))
    for ds in filter(None, args.held_out_datasets.split(",")):
        m = (y == 0) & (test["dataset"].astype(str).to_numpy() == ds)
        print(f"{ds + f' ({int(m.sum())})':<24}" + "".join(f"{(s_test[r][m] >= thresholds[r]).mean():>22.1%}" for r in rules))


if __name__ == "__main__":
    main()
