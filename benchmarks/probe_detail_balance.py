"""Probe: does a detector catch an unseen generator once the amount of fine detail cannot tell the label?

Leave-one-generator-out missed every held-out generator family (EfficientNet-Lite0 alone: DCGAN faces
0.386, StyleGAN-lite 0.195, autoencoders 0.445). The families disagree on the direction of fine detail
(super-resolution adds it, the face generators and autoencoders lack it), so a detector that learns "this
much detail = fake" from four families reads the fifth upside down. The generated-images issue asks for
exactly this: "measure each family's high-frequency energy against the reals' and match them, so that the
amount of detail never tells the label".

This probe matches it by sampling, not by rebuilding the corpus (data/balance.py, `deepfake-moe balance`).
Every image gets two numbers: its fine detail as the EfficientNet sees it (log10 of the mean square of
grey - GaussianBlur(grey, 1 px) on the 112 px view) and its shorter side (size classes <= 64, <= 128,
<= 256 px, ...). The pool is cut into strata (detail deciles within each size class) and each row gets a
manifest `weight` such that reals and fakes are drawn from every stratum in the same proportion. Then, for
each generator family, leave-one-out's fold (same pool, test reals and recipe) is trained with the
leave-one-out config's EfficientNet expert alone: `plain`, `balanced`, or `size_only` (one detail bin:
the size classes alone).

Printed per fold: the held-out family's AUC and TPR at 1% FPR against the test reals, for each arm; the
AUC of the detail number alone (what the confound predicts); the pool's detail AUC, plain and weighted
(0.5 when the balance holds); and the Spearman correlation of the test reals' scores with their detail.

What it decided (runs/default/corpus, 200 steps, the same 1,034 test reals in every fold; 2026-11-28;
the plain arm reproduced leave-one-out's EfficientNet column exactly on dcgan_face, 0.386, so the
other plain figures are that column's):

| held-out family | detail alone | plain AUC | size_only AUC | balanced AUC | balanced TPR@1% |
|---|---|---|---|---|---|
| dcgan_face | 0.216 | 0.386 | 0.471 | 0.731 | 1.9% |
| stylegan_lite | 0.030 | 0.195 | 0.356 | 0.494 | 0.0% |
| autoencoder | 0.477 | 0.445 | | 0.461 | 0.1% |
| esrgan | 0.652 | 0.676 | | 0.587 | 2.8% |
| span_sr | 0.660 | 0.614 | | 0.633 | 1.6% |

The pool's detail AUC is close to 0.5 even plain (0.46-0.52): the confound is within size classes.
With a face generator held out, the pool's small images are mostly reals: the 64 px reals shrunk to
match the two face generators stay, half of the 64 px fakes leave (37.5% of the pool's reals are <= 64 px
against 13.8% of its fakes, with dcgan_face out), and the expert learns "small = real". Balancing the
size classes alone lifts the face generators by 0.09-0.16, and the detail deciles within them lift them
out of inversion. It costs Real-ESRGAN 0.09, whose fakes the plain expert caught by their extra detail.
No held-out generator is caught: the unseen families sit at 0.46-0.73. (size_only was run on the two
face generators only.)

  python benchmarks/probe_detail_balance.py --work /work/runs/probe_detail
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from deepfake_moe.data.balance import STAT_COLUMNS, balance_weights, measure, strata, weighted_auc
from deepfake_moe.data.manifest import WEIGHT_COLUMN, read_manifest, write_manifest
from deepfake_moe.evaluate.experiment import holdout_partition, score_checkpoint
from deepfake_moe.evaluate.leave_one_out import fold_train_config, load_config
from deepfake_moe.evaluate.metrics import roc_points, tpr_at_fpr
from deepfake_moe.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def measured(corpus: pd.DataFrame, view: int, cache: Path) -> pd.DataFrame:
    """The corpus with `detail` and `short_side` (data/balance.py), measured once into `cache`."""
    if not cache.exists():
        pd.concat([corpus[["path"]].reset_index(drop=True), measure(corpus["path"], view)], axis=1).to_parquet(cache)
    stats = pd.read_parquet(cache).drop_duplicates("path")
    corpus = corpus.drop(columns=[c for c in STAT_COLUMNS if c in corpus.columns]).merge(stats, on="path")
    return corpus[corpus["detail"].notna()]  # an unreadable image has nothing to say


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "experiment_leave_one_out.yaml"))
    p.add_argument("--families", default="dcgan_face,stylegan_lite,autoencoder,esrgan,span_sr")
    p.add_argument("--arms", default="plain,balanced", help="plain, balanced (size and detail), size_only")
    p.add_argument("--work", default="runs/probe_detail")
    p.add_argument("--bins", type=int, default=10, help="detail quantile bins within each size class")
    args = p.parse_args()

    cfg = load_config(args.config)
    cfg.experts = [cfg.experts[0]]
    view = int(cfg.train.get("data", {}).get("input_size", 112))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = measured(read_manifest(cfg.manifest, root=cfg.root), view, work / f"stats_{view}.parquet")
    print(f"expert {cfg.experts[0]['backbone']}, {cfg.train['optim']['max_steps']} steps; detail at {view} px; "
          f"AUC / TPR@1%FPR of the held-out family against the test reals", flush=True)
    for family in args.families.split(","):
        pool, test = holdout_partition(corpus, family, cfg.test_real_fraction, cfg.seed)
        weights = balance_weights(pool["label"].to_numpy(), strata(pool, args.bins))
        arm_weights = {"plain": None, "balanced": weights,
                       "size_only": balance_weights(pool["label"].to_numpy(), strata(pool, 1))}
        y, d = test["label"].to_numpy(), test["detail"].to_numpy()
        line = (f"{family:<14} detail alone {roc_auc_score(y, d):.3f}; pool detail AUC plain "
                f"{roc_auc_score(pool['label'], pool['detail']):.3f}, weighted "
                f"{weighted_auc(pool['label'], pool['detail'], weights):.3f} ({(weights > 0).mean():.0%} of rows drawn)")
        for arm in [a for a in args.arms.split(",") if a]:
            folder = work / family / arm
            cached = folder / "scores.csv"
            if not cached.exists():
                w = arm_weights[arm]
                fold_pool = pool if w is None else pool.assign(**{WEIGHT_COLUMN: w})
                write_manifest(fold_pool.drop(columns=["detail", "short_side"]), folder / "pool.parquet")
                train_cfg = fold_train_config(copy.deepcopy(cfg), folder / "pool.parquet", f"{arm}-without-{family}",
                                              family)
                model = train(train_cfg, folder / "train", resume=True)
                prob = score_checkpoint(model, test["path"].tolist(), cfg.device)[0]
                pd.DataFrame({"path": test["path"], "probability": prob}).to_csv(cached, index=False)
            prob = pd.read_csv(cached)["probability"].to_numpy()
            fpr, tpr, _ = roc_points(y, prob)
            rho = spearmanr(prob[y == 0], d[y == 0]).statistic
            line += f"\n  {arm:<9} AUC {roc_auc_score(y, prob):.3f}  TPR@1% {tpr_at_fpr(fpr, tpr, 0.01):.3f}  " \
                    f"Spearman(real score, detail) {rho:+.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
