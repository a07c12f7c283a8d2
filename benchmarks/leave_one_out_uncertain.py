"""How the `uncertain` verdict answers a generator family that training never saw (leave-one-generator-out).

For each fold of a finished `experiment leave-one-out` run (its generator expert trained without one family),
this builds the model the default one would be with that expert, as `make default-model` builds it:

1. `combine EDIT_EXPERTS FOLD/train/model --groups --keep-calibration` (the shipped edit experts by default);
2. `fit-uncertainty` on 1,200 of the fold's training rows;
3. `calibrate --keep-threshold --target-fpr 0.005 --fpr-per-source --target-coverage 0.95` on the fold's
   own validation rows: the origins its expert held out of training (`expert_rows`, as `train` drew them),
   which hold no image of the left-out family;
4. `evaluate` on the fold's test set: every fake of the left-out family against the held-out reals.

It prints, per fold, the left-out family's and the reals' shares answered wrongly with confidence, wrong at
the plain threshold, and uncertain (the same figures are in each fold's evaluate/report.md).

What it measured (configs/experiment_leave_one_out_patches.yaml's folds for `families: [stylegan_lite]`,
`[esrgan]`, `[dcgan_face]`, `[span_sr]` and `[autoencoder]`, the shipped edit experts, 2026-11-29, about 4 minutes a fold
on 2 cores): StyleGAN-lite left out, AUC 0.101; all 800 answered "real", none uncertain (wrong and
confident 100%, as at the plain threshold). Real-ESRGAN left out, AUC 0.689; wrong and confident 92.2%
against 95.8% at the plain threshold, 3.8% uncertain. DCGAN faces left out, AUC 0.664; 92.1% against
96.6%, 4.6% uncertain. SPAN left out, AUC 0.635; 89.6% against 92.1%, 2.8% uncertain. Autoencoders left
out, AUC 0.474; 94.4% against 98.1%, 3.8% uncertain. Reals: 0.5-0.7% answered fake (1.7% in the SPAN fold,
2.6% in the autoencoder fold), 4.8-5.0% uncertain. A generator the experts never saw looks
ordinary to them: "uncertain" does not find it.

    deepfake-moe experiment leave-one-out configs/experiment_leave_one_out_patches.yaml --out runs/default/loo_patches
    python benchmarks/leave_one_out_uncertain.py runs/default/loo_patches --out runs/default/loo_uncertain
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.cli import main as cli
from deepfake_moe.config import load_yaml
from deepfake_moe.data.dataset import expert_rows
from deepfake_moe.train.config import TrainConfig


def fold_validation(fold: Path, out: Path) -> tuple[Path, Path]:
    """The fold's pool split as its expert's training split it: (rows to fit on, held-out rows)."""
    config = load_yaml(TrainConfig, fold / "train" / "config.yaml")
    pool = pd.read_parquet(config.data.manifest)
    train, held = expert_rows(pool, config.split_of(0), config.data.val_fraction, config.data.random_split_seed)
    out.mkdir(parents=True, exist_ok=True)
    pool[train].reset_index(drop=True).to_parquet(out / "fit.parquet")
    pool[held].reset_index(drop=True).to_parquet(out / "val.parquet")
    return out / "fit.parquet", out / "val.parquet"


def run(args: list[str]) -> None:
    code = cli(args)
    if code != 0:
        raise SystemExit(f"deepfake-moe {' '.join(args)} exited with {code}")


def shares(evaluate: Path, family: str) -> str:
    """The left-out family's and the reals' shares: wrong and confident, wrong at the plain threshold, uncertain."""
    threshold = json.loads((evaluate / "metrics.json").read_text())["threshold"]
    t = pd.read_csv(evaluate / "predictions.csv")
    t = t[t["error"].isna()]
    parts = []
    for name, label, wrong in ((family, 1, "real"), ("reals", 0, "fake")):
        rows = t[t["label"] == label]
        plain = np.where(rows["probability"] >= threshold, "fake", "real")
        parts.append(f"{name}: wrong & confident {(rows['verdict'] == wrong).mean():.1%}, "
                     f"plain {(plain == wrong).mean():.1%}, uncertain {(rows['verdict'] == 'uncertain').mean():.1%}")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="a finished `experiment leave-one-out` folder (with folds/FAMILY/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--edit-experts", default="default:0,1,2")
    args = ap.parse_args()
    for fold in sorted((Path(args.experiment) / "folds").iterdir()):
        out = Path(args.out) / fold.name
        fit, val = fold_validation(fold, out)
        model = out / "model"
        run(["combine", args.edit_experts, str(fold / "train" / "model"), "--groups", "--keep-calibration",
             "--out", str(model)])
        run(["fit-uncertainty", str(fit), "--weights", str(model), "--max-images", "1200", "--no-progress"])
        run(["calibrate", str(val), "--weights", str(model), "--keep-threshold", "--target-fpr", "0.005",
             "--fpr-per-source", "--target-coverage", "0.95", "--out", str(out / "calibrate"), "--no-progress"])
        run(["evaluate", str(fold / "data" / "test.parquet"), "--weights", str(model), "--out", str(out / "evaluate"), "--no-progress"])
        print(f"{fold.name} left out: {shares(out / 'evaluate', fold.name)}", flush=True)


if __name__ == "__main__":
    main()
