"""Probe: can weight averaging ("model soup") give one model both models' skills at one model's cost?

The first model (shipped) generalises to the held-out face swaps; the recipe's paired-reals model
catches the generator families. The mean of their six experts' probabilities does most of both, at
twice the cost, and distilling it into three experts did not carry the face swaps over
(`probe_distill.py`). Both models fine-tuned the same ImageNet EfficientNet-Lite0 briefly, with its
stem and first blocks frozen, so their weights stay close (cosine 0.99+ per backbone tensor): close
enough, perhaps, that the average of the weights behaves like the average of the outputs
(Wortsman et al., "Model soups", ICML 2022).

Arms, each scored with `predict --per-expert` on the validation and test manifests:
- `pair a`: expert i = (1 - a) * first model's expert i + a * the recipe's expert i, three experts;
- `one soup`: one expert, the uniform average of all six;
- the two models and their six-expert ensemble (from the same cached scores), for reference.
Soups run at the recipe's temperature (its model.yaml), the two models at their own.
Printed: AUC on validation (the selection) and test, per test family against all test reals, and the
share of held-out reals flagged at the 1%-FPR threshold of the validation reals.

What it decided (a: the shipped first model; b: the paired-reals recipe, `make default-model`; the
candidate corpus's validation (1,019 images) and test (4,101: face swap and the mate-backgrounds photos
never in training); 2026-11-28, about 12 minutes on 2 cores). AUC against all test reals:

| arm | val | test | reals flagged | face swap | splice | copy-move | inpaint | masked fill | DCGAN | StyleGAN-lite | ESRGAN |
|---|---|---|---|---|---|---|---|---|---|---|---|
| a (3 experts) | 0.610 | 0.697 | 1.4% | 0.823 | 0.838 | 0.771 | 0.723 | 0.968 | 0.685 | 0.173 | 0.637 |
| b (3 experts) | 0.833 | 0.751 | 2.3% | 0.738 | 0.769 | 0.727 | 0.680 | 0.929 | 0.988 | 1.000 | 0.768 |
| a + b ensemble (6) | 0.823 | 0.771 | 2.8% | 0.796 | 0.818 | 0.759 | 0.712 | 0.961 | 0.967 | 0.950 | 0.747 |
| pair 0.25 (3) | 0.700 | 0.722 | 2.1% | 0.801 | 0.829 | 0.757 | 0.711 | 0.968 | 0.756 | 0.509 | 0.697 |
| pair 0.5 (3) | 0.804 | 0.746 | 1.9% | 0.742 | 0.800 | 0.747 | 0.691 | 0.959 | 0.891 | 0.992 | 0.757 |
| pair 0.75 (3) | 0.826 | 0.746 | 1.8% | 0.722 | 0.779 | 0.735 | 0.684 | 0.946 | 0.968 | 1.000 | 0.773 |
| one soup (1) | 0.779 | 0.696 | 3.6% | 0.652 | 0.757 | 0.709 | 0.659 | 0.936 | 0.788 | 0.991 | 0.735 |

The soups are ensembles of neither kind: moving a from 0 to 1 trades one model's skill for the other's,
and no a keeps both, as the six-expert ensemble of outputs does (face swap 0.796 with StyleGAN-lite
0.950). At a = 0.5 the face swaps fall to the recipe's level (0.742) while the generators stay (0.891,
0.992); at a = 0.25 the face swaps stay (0.801) and the generators go. Averaging weights does not
give the default model both skills at its speed. (The ensemble itself is no way out either: see the
model card's "Both models' experts in one mixture".)

    python benchmarks/probe_soup.py --a default --b runs/default/train/model --alphas 0.25 0.5 0.75
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from deepfake_moe.infer.weights import default_model_dir
from deepfake_moe.model.checkpoint import ModelConfig, load_checkpoint, save_checkpoint
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.runtime import describe_cpu
from probe_distill import expert_probs
from probe_generator_share import ROOT, family

FAMILIES = ["faceswap", "splice", "copy_move", "inpaint", "masked_fill", "self_blend", "retouch",
            "dcgan_face", "stylegan_lite", "esrgan", "span_sr", "autoencoder"]


def model_dir(name: str) -> Path:
    return default_model_dir() if name == "default" else Path(name)


def soup(tensors: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted average of state dicts with the same keys; integer buffers come from the last."""
    out = {}
    for key, last in tensors[-1].items():
        if last.is_floating_point():
            out[key] = sum(w * t[key].float() for w, t in zip(weights, tensors)).contiguous()
        else:
            out[key] = last
    return out


def write_soup(model: Mixture, config: ModelConfig, states: list[dict[str, torch.Tensor]], out: Path) -> Path:
    """The model cut to len(states) experts holding those weights (its temperature kept, no uncertainty)."""
    experts = [copy.deepcopy(model.experts[i]) for i in range(len(states))]
    for expert, state in zip(experts, states):
        expert.load_state_dict(state)
    cut = dataclasses.replace(config, experts=config.experts[: len(states)], uncertainty=None, uncertainty_threshold=None)
    return save_checkpoint(Mixture(experts, temperature=model.temperature), cut, out)


def scores(model: Path, rows: dict[str, pd.DataFrame], work: Path, name: str) -> dict[str, np.ndarray]:
    """Per-expert probabilities of the model on each split, as an (images, experts) array."""
    out = {}
    for split, df in rows.items():
        table = expert_probs(model, df, work / f"{name}_{split}.csv").set_index("path").loc[df["path"]]
        out[split] = table[sorted(c for c in table if c.startswith("expert_"))].to_numpy(float)
    return out


def row(name: str, val: pd.DataFrame, test: pd.DataFrame, pv: np.ndarray, pt: np.ndarray) -> dict:
    threshold = np.quantile(pv[val["label"].to_numpy() == 0], 0.99)
    reals = test["label"].to_numpy() == 0
    r = {"arm": name, "val AUC": roc_auc_score(val["label"], pv), "test AUC": roc_auc_score(test["label"], pt),
         "reals flagged %": 100 * (pt[reals] >= threshold).mean()}
    for f in FAMILIES:
        keep = reals | (test["family"] == f).to_numpy()
        if (test["family"] == f).any():
            r[f] = roc_auc_score(test["label"][keep], pt[keep])
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="default", help="the first model (face swaps)")
    p.add_argument("--b", default=str(ROOT / "runs" / "default" / "train" / "model"), help="the second (generators)")
    p.add_argument("--val", default=str(ROOT / "runs" / "default" / "holdout" / "val.parquet"))
    p.add_argument("--test", default=str(ROOT / "runs" / "default" / "holdout" / "test.parquet"))
    p.add_argument("--alphas", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    p.add_argument("--out", default="runs/probe_soup", help="work folder (scores are cached here)")
    args = p.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    print(describe_cpu())

    rows = {s: pd.read_parquet(m) for s, m in (("val", args.val), ("test", args.test))}
    for df in rows.values():
        df["family"] = df["source"].map(family)
    a, b = model_dir(args.a), model_dir(args.b)
    (ma, ca), (mb, cb) = load_checkpoint(a), load_checkpoint(b)
    if ca.backbones != cb.backbones:
        sys.exit(f"soups need the same experts in both models, got {ca.backbones} and {cb.backbones}")
    n = len(ca.experts)
    ea, eb = [e.state_dict() for e in ma.experts], [e.state_dict() for e in mb.experts]

    pa, pb = scores(a, rows, work, "a"), scores(b, rows, work, "b")
    table = [row("a", rows["val"], rows["test"], pa["val"].mean(1), pa["test"].mean(1)),
             row("b", rows["val"], rows["test"], pb["val"].mean(1), pb["test"].mean(1)),
             row("a + b ensemble", rows["val"], rows["test"], np.hstack([pa["val"], pb["val"]]).mean(1),
                 np.hstack([pa["test"], pb["test"]]).mean(1))]
    arms = {f"pair {x:g}": [soup([ea[i], eb[i]], [1 - x, x]) for i in range(n)] for x in args.alphas}
    arms["one soup"] = [soup(ea + eb, [1 / (2 * n)] * (2 * n))]
    for name, experts in arms.items():
        folder = write_soup(mb, cb, experts, work / name.replace(" ", "_"))
        ps = scores(folder, rows, work, name.replace(" ", "_"))
        table.append(row(name, rows["val"], rows["test"], ps["val"].mean(1), ps["test"].mean(1)))
        shutil.rmtree(folder)
    pd.set_option("display.width", 300)
    print(pd.DataFrame(table).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
