"""Probe: what does learning the generator families cost an EfficientNet expert on edits and face swaps?

Trains the training config's first expert (an EfficientNet-Lite0 on its split) twice, on the same
split manifest, seeds and steps: once on every fake source, once on the edit families only
(`fake_sources`). It then scores a test manifest with each expert alone and prints the AUC of
each edit family and of any held-out family (the face swaps), each against all the test reals.

What it decided (the candidate corpus's stratified split 0, 450 steps, test = 4,101 held-out
images, 2026-11-27):

| trained on | face swap (held out) | splice | copy-move | inpaint | self-blend | retouch | masked fill |
|---|---|---|---|---|---|---|---|
| every fake source | 0.592 | 0.739 | 0.729 | 0.694 | 0.591 | 0.587 | 0.925 |
| edit families only | 0.682 | 0.759 | 0.751 | 0.716 | 0.625 | 0.610 | 0.945 |

(For comparison, the first model's expert 0, trained on the old corpus: face swap 0.771, splice 0.788.)
Learning the generators costs the expert 0.09 AUC on the unseen face swaps and 0.02-0.03 on every
edit family. The rest of the gap to the first model lies elsewhere (most likely the new corpus and
its output chain; not separated yet).

  python benchmarks/probe_generator_share.py --manifest runs/default/split/manifest.parquet \\
      --test runs/default/holdout/test.parquet --steps 450
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from deepfake_moe.config import load_yaml
from deepfake_moe.train.config import TrainConfig
from deepfake_moe.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
EDITS = ["self_blend", "splice", "copy_move", "inpaint", "retouch", "masked_fill"]


def family(source: str) -> str:
    return str(source).split("/")[0]


def score(model: Path, test: pd.DataFrame, tmp: Path, column: str = "probability") -> pd.Series:
    """`predict` on the test rows: the mixture's probability per row, or one expert's (`expert_N`)."""
    paths, out = tmp / "paths.csv", tmp / "scores.csv"
    test[["path"]].to_csv(paths, index=False)
    subprocess.run([sys.executable, "-m", "deepfake_moe.cli", "predict", str(paths), "--weights", str(model),
                    "--out", str(out), "--no-progress", "--per-expert"], check=True, stderr=subprocess.DEVNULL)
    return test[["path"]].merge(pd.read_csv(out)[["path", column]], on="path")[column]


def family_aucs(test: pd.DataFrame, prob: pd.Series, families: list[str]) -> list[float]:
    """AUC of each fake family against all the test reals."""
    aucs = []
    for f in families:
        rows = (test["label"] == 0) | (test["family"] == f)
        aucs.append(roc_auc_score(test.loc[rows, "label"], prob[rows]))
    return aucs


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The options every training probe takes: the split manifest, the test manifest, the training config."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(ROOT / "runs" / "default" / "split" / "manifest.parquet"))
    p.add_argument("--test", default=str(ROOT / "runs" / "default" / "holdout" / "test.parquet"))
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    return p


def probe_setup(args) -> tuple[TrainConfig, pd.DataFrame]:
    """The training config on the split manifest (no checkpoints), and the test rows with their family."""
    base = load_yaml(TrainConfig, args.config)
    base.data.manifest = args.manifest
    base.checkpoint.every_steps = 0
    for expert in base.experts:  # the probes' tables were measured before the recipe paired its reals
        expert.paired_reals = False
    test = pd.read_parquet(args.test)
    return base, test.assign(family=test["source"].map(family)).reset_index(drop=True)


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--steps", type=int, default=450)
    args = p.parse_args()

    base, test = probe_setup(args)
    base.optim.max_steps = args.steps
    base.eval.every_steps = args.steps
    families = [f for f in sorted(test.loc[test["label"] == 1, "family"].unique()) if f in EDITS or f == "faceswap"]
    print(f"expert 0 ({base.experts[0].backbone}, split {base.experts[0].split}), {args.steps} steps; test {args.test}")
    print(f"{'trained on':<20}" + "".join(f"{f:>13}" for f in families))
    for name, sources in {"every fake source": [], "edit families only": EDITS}.items():
        cfg = copy.deepcopy(base)
        cfg.experts = [copy.deepcopy(base.experts[0])]
        cfg.experts[0].fake_sources = sources
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, Path(tmp) / "run")
            prob = score(Path(tmp) / "run" / "model", test, Path(tmp))
        aucs = family_aucs(test, prob, families)
        print(f"{name:<20}" + "".join(f"{a:>13.3f}" for a in aucs), flush=True)


if __name__ == "__main__":
    main()
