"""Probe: which part of the new corpus keeps an edits-trained expert from catching face swaps?

The first model's expert 0, trained on the old corpus, scores the held-out face swaps 0.771; the
same expert trained on the new corpus's edit families scores 0.682 (probe_generator_share.py). This
probe trains the training config's first expert on the edit families only, with one change to its
training data at a time, on the same split, seeds and steps:

- the corpus as it is (the baseline);
- without the reals shrunk to 64 px (`real_downscale`): a third of the real class, blurrier than
  any fake edit once resized to the input size;
- with every edit made again from the same reals and donors, without the output chain (one JPEG at
  quality 75-98, as the old corpus wrote them), each new fake taking its old one's place in the split;
- with benign variants of every real (JPEG re-compression, down-and-up resizing, blur, noise,
  colour: the old corpus's `real_*` families), through the output chain like every other image.

It then scores the test manifest with each expert alone: AUC of each edit family and of the
held-out face swaps against all the test reals.

    python benchmarks/probe_edit_corpus.py --manifest runs/default/split/manifest.parquet \\
        --test runs/default/holdout/test.parquet --steps 450 --work /tmp/probe_edit_corpus
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from deepfake_moe.augment.prepare import FamilySpec, PrepareConfig, run_prepare
from deepfake_moe.data.manifest import write_manifest
from deepfake_moe.train.loop import train
from probe_generator_share import EDITS, family_aucs, probe_parser, probe_setup, score

BENIGN = ["real_jpeg", "real_resize", "real_blur", "real_noise", "real_color"]


def chainless_edits(manifest: pd.DataFrame, work: Path) -> pd.DataFrame:
    """The manifest with each edit fake made again from its own real, without the output chain."""
    reals = manifest[manifest["source"] == "real"]
    root = Path(os.path.commonpath(list(reals["path"])))  # the corpus's reals/: fakes record their input under it
    new = []
    for fam in EDITS:
        old = manifest[manifest["source"] == fam].copy()
        old["input"] = [str(root / json.loads(p)["input"]) for p in old["params"]]
        inputs = reals[reals["path"].isin(old["input"])]
        write_manifest(inputs[["path", "label", "source", "origin"]], work / f"{fam}_reals.parquet")
        made = run_prepare(PrepareConfig(input=str(work / f"{fam}_reals.parquet"), out_dir=str(work / fam),
                                         families=[FamilySpec(fam)], include_inputs=False), progress=False)
        made["input"] = [json.loads(p)["input"] for p in made["params"]]
        keep = old.drop(columns=["path", "params"]).drop_duplicates("input")
        new.append(made[["path", "input", "params"]].merge(keep, on="input").drop(columns="input"))
    return pd.concat([manifest[~manifest["source"].isin(EDITS)], *new], ignore_index=True)


def with_benign_reals(manifest: pd.DataFrame, work: Path) -> pd.DataFrame:
    """The manifest plus one benign variant of each real per benign family, through the output chain,
    each in its real's place in the split."""
    reals = manifest[manifest["source"] == "real"].reset_index(drop=True)
    write_manifest(reals[["path", "label", "source", "origin"]], work / "reals.parquet")
    made = run_prepare(PrepareConfig(input=str(work / "reals.parquet"), out_dir=str(work / "benign"),
                                     families=[FamilySpec(f) for f in BENIGN], include_inputs=False,
                                     output_chain={}), progress=False)
    made["input"] = [json.loads(p)["input"] for p in made["params"]]
    keep = reals.drop(columns=["params", "source"]).rename(columns={"path": "input"})
    made = made[["path", "input", "source", "params"]].merge(keep, on="input").drop(columns="input")
    return pd.concat([manifest, made], ignore_index=True)


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--work", default=None, help="where the remade edits go (default: a temporary folder)")
    p.add_argument("--arms", nargs="+", default=["the corpus as it is", "no 64 px reals", "edits without chain",
                                                 "plus benign reals"], help="which training sets to compare")
    args = p.parse_args()

    base, test = probe_setup(args)
    base.optim.max_steps = args.steps
    base.eval.every_steps = args.steps
    manifest = pd.read_parquet(base.data.manifest)
    families = [f for f in sorted(test.loc[test["label"] == 1, "family"].unique()) if f in EDITS or f == "faceswap"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        arms = {
            "the corpus as it is": lambda: manifest,
            "no 64 px reals": lambda: manifest[manifest["source"] != "real_downscale"],
            "edits without chain": lambda: chainless_edits(manifest, work / "chainless"),
            "plus benign reals": lambda: with_benign_reals(manifest, work / "benign"),
        }
        unknown = set(args.arms) - set(arms)
        if unknown:
            p.error(f"unknown arm(s) {sorted(unknown)}; known: {list(arms)}")
        print(f"expert 0 ({base.experts[0].backbone}, split {base.experts[0].split}), edit fakes only, "
              f"{args.steps} steps; test {args.test}")
        print(f"{'training data':<22}" + "".join(f"{f:>13}" for f in families))
        for name in args.arms:
            rows = arms[name]()
            cfg = copy.deepcopy(base)
            cfg.experts = [copy.deepcopy(base.experts[0])]
            cfg.experts[0].fake_sources = EDITS
            cfg.data.manifest = str(work / f"{name.replace(' ', '_')}.parquet")
            write_manifest(rows, cfg.data.manifest)
            train(cfg, work / name.replace(" ", "_"))
            prob = score(work / name.replace(" ", "_") / "model", test, work)
            print(f"{name:<22}" + "".join(f"{a:>13.3f}" for a in family_aucs(test, prob, families)), flush=True)


if __name__ == "__main__":
    main()
