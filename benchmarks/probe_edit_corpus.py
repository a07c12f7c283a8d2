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
  colour: the old corpus's `real_*` families), through the output chain like every other image;
- with only the reals that edits were made from (and their re-encoded and shrunk variants);
- with 2,000 more LFW faces, of people the corpus never used, through the output chain (reals only:
  no fakes are made from them; listed as `real_reencode`).

It then scores the test manifest with each expert alone: AUC of each edit family and of the
held-out face swaps against all the test reals, then among faces alone (LFW fakes against LFW reals),
with the reals' mean P(fake).

What it decided (the candidate corpus's stratified split 0, 450 steps, test = 4,101 held-out images,
2026-11-28; one arm at a time with `--arms`, each about 13 minutes on 2 cores; training is deterministic,
the baseline repeats probe_generator_share.py's figures to the third decimal):

| training data | face swap (held out) | copy-move | inpaint | masked fill | retouch | self-blend | splice |
|---|---|---|---|---|---|---|---|
| the corpus as it is | 0.682 | 0.751 | 0.716 | 0.945 | 0.610 | 0.625 | 0.759 |
| no 64 px reals | 0.574 | 0.719 | 0.662 | 0.927 | 0.541 | 0.546 | 0.682 |
| edits without chain | 0.711 | 0.750 | 0.695 | 0.947 | 0.600 | 0.636 | 0.759 |
| plus benign reals | 0.718 | 0.723 | 0.683 | 0.922 | 0.570 | 0.594 | 0.738 |
| **paired reals only** | **0.732** | **0.769** | **0.724** | **0.964** | **0.629** | **0.660** | **0.806** |
| plus 2,000 LFW reals | 0.481 | 0.691 | 0.659 | 0.906 | 0.563 | 0.566 | 0.661 |

Among faces alone (LFW fakes against LFW reals; three of the arms):

| training data | face swap | splice | copy-move | self-blend | retouch | P(fake) of LFW / other reals |
|---|---|---|---|---|---|---|
| the corpus as it is | 0.667 | 0.673 | 0.804 | 0.585 | 0.591 | 0.31 / 0.29 |
| paired reals only | 0.748 | 0.738 | 0.832 | 0.674 | 0.634 | 0.43 / 0.43 |
| plus 2,000 LFW reals | 0.716 | 0.632 | 0.766 | 0.577 | 0.578 | 0.11 / 0.44 |

What helps is pairing, not the number of reals. Dropping the 38% of real rows that no edit was made
from raises every column, among faces too. 2,000 more reals with no fakes of
their own teach "an LFW face is real": the LFW reals' mean P(fake) falls to 0.11, against 0.44 for
the other photos, so that against all reals the face swaps drop to chance (among faces they gain).
A real beside its edited twin teaches what the edit changed. The 64 px reals are mostly (87%) shrunk
copies of edited reals, so they count as pairs (leaving them out hurts). The output chain costs 0.03 on face
swaps. Benign real-only variants trade edits for face swaps and put a transform on one label only.
Hence `paired_reals` in the expert config (train/config.py). It is a related filter, not this arm's:
it pairs by `origin` (a photo's crops count together) with the expert's own training fakes and keeps
every held-out real, where this arm pairs by the exact input image over the whole manifest; the
model card measures it in the full recipe.
"""

from __future__ import annotations

import copy
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.augment.prepare import FamilySpec, PrepareConfig, run_prepare
from deepfake_moe.data.manifest import write_manifest
from deepfake_moe.train.loop import train
from probe_generator_share import EDITS, family_aucs, probe_parser, probe_setup, score

BENIGN = ["real_jpeg", "real_resize", "real_blur", "real_noise", "real_color"]


def reals_folder(reals: pd.DataFrame) -> Path:
    """The corpus's reals/ folder (CORPUS/reals/<dataset>/...): every fake records its input relative to it."""
    return next(parent for parent in Path(reals["path"].iloc[0]).parents if parent.name == "reals")


def prepare_from(reals: pd.DataFrame, work: Path, families: list[str], output_chain: dict | None) -> pd.DataFrame:
    """`prepare` run on these reals into `work`: the images made, each with the `input` it was made from."""
    write_manifest(reals[["path", "label", "source", "origin"]], work / "inputs.parquet")
    made = run_prepare(PrepareConfig(input=str(work / "inputs.parquet"), out_dir=str(work / "made"),
                                     families=[FamilySpec(f) for f in families], include_inputs=False,
                                     output_chain=output_chain), progress=False)
    return made.assign(input=[json.loads(p)["input"] for p in made["params"]])


def chainless_edits(manifest: pd.DataFrame, work: Path) -> pd.DataFrame:
    """The manifest with each edit fake made again from its own real, without the output chain."""
    reals = manifest[manifest["source"] == "real"]
    root = reals_folder(reals)
    new = []
    for fam in EDITS:
        old = manifest[manifest["source"] == fam].copy()
        old["input"] = [str(root / json.loads(p)["input"]) for p in old["params"]]
        made = prepare_from(reals[reals["path"].isin(old["input"])], work / fam, [fam], output_chain=None)
        keep = old.drop(columns=["path", "params"]).drop_duplicates("input")
        new.append(made[["path", "input", "params"]].merge(keep, on="input").drop(columns="input"))
    return pd.concat([manifest[~manifest["source"].isin(EDITS)], *new], ignore_index=True)


def with_benign_reals(manifest: pd.DataFrame, work: Path) -> pd.DataFrame:
    """The manifest plus one benign variant of each real per benign family, through the output chain,
    each in its real's place in the split."""
    reals = manifest[manifest["source"] == "real"].reset_index(drop=True)
    made = prepare_from(reals, work, BENIGN, output_chain={})
    keep = reals.drop(columns=["params", "source"]).rename(columns={"path": "input"})
    made = made[["path", "input", "source", "params"]].merge(keep, on="input").drop(columns="input")
    return pd.concat([manifest, made], ignore_index=True)


def with_more_lfw(manifest: pd.DataFrame, work: Path, lfw: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """The manifest plus `n` LFW faces of people the corpus never used, through the output chain (no fakes
    made from them), spread over the clusters as the corpus's LFW reals are."""
    used = set(manifest.loc[manifest["dataset"] == "lfw", "identity"])
    with tarfile.open(lfw) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")
                   and f"lfw/{Path(m.name).stem.rsplit('_', 1)[0]}" not in used]
        rng = np.random.default_rng(seed)
        chosen = [members[i] for i in sorted(rng.choice(len(members), size=min(n, len(members)), replace=False))]
        (work / "lfw").mkdir(parents=True, exist_ok=True)
        for m in chosen:
            (work / "lfw" / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    stems = [Path(m.name).stem for m in chosen]
    inputs = pd.DataFrame({"path": [str(work / "lfw" / f"{s}.jpg") for s in stems], "label": 0, "source": "real",
                           "origin": [f"lfw/{s}" for s in stems]})
    made = prepare_from(inputs, work, ["real_reencode"], output_chain={}).drop(columns="input")
    lfw_reals = manifest[(manifest["dataset"] == "lfw") & (manifest["label"] == 0)]
    share = lfw_reals["cluster"].value_counts(normalize=True).sort_index()
    made = made.assign(dataset="lfw", identity=["lfw/" + o.split("/")[1].rsplit("_", 1)[0] for o in made["origin"]],
                       cluster=rng.choice(share.index.to_numpy(), size=len(made), p=share.to_numpy()))
    for col in [c for c in manifest.columns if c.startswith("split_")]:
        made[col] = made["cluster"] == int(col.removeprefix("split_"))
    return pd.concat([manifest, made], ignore_index=True)


def paired_reals_only(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest without the reals (and their re-encoded and shrunk variants) that no edit was made from."""
    root = reals_folder(manifest[manifest["source"] == "real"])
    inputs = [json.loads(p).get("input") for p in manifest["params"]]
    edited = {i for i, src in zip(inputs, manifest["source"]) if src in EDITS}
    own = [os.path.relpath(p, root) if src == "real" else i for p, src, i in zip(manifest["path"], manifest["source"], inputs)]
    unpaired = (manifest["label"] == 0) & ~pd.Series([o in edited for o in own], index=manifest.index)
    return manifest[~unpaired]


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--work", default=None, help="where the remade edits go (default: a temporary folder)")
    p.add_argument("--lfw", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw150.tar"))
    p.add_argument("--arms", nargs="+", help="which training sets to compare (default: all)")
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
            "paired reals only": lambda: paired_reals_only(manifest),
            "plus 2,000 LFW reals": lambda: with_more_lfw(manifest, work / "more_lfw", Path(args.lfw), 2000),
        }
        chosen = args.arms or list(arms)
        unknown = set(chosen) - set(arms)
        if unknown:
            p.error(f"unknown arm(s) {sorted(unknown)}; known: {list(arms)}")
        print(f"expert 0 ({base.experts[0].backbone}, split {base.experts[0].split}), edit fakes only, "
              f"{args.steps} steps; test {args.test}")
        print(f"{'training data':<22}" + "".join(f"{f:>13}" for f in families))
        for name in chosen:
            rows = arms[name]()
            cfg = copy.deepcopy(base)
            cfg.experts = [copy.deepcopy(base.experts[0])]
            cfg.experts[0].fake_sources = EDITS
            cfg.data.manifest = str(work / f"{name.replace(' ', '_')}.parquet")
            write_manifest(rows, cfg.data.manifest)
            train(cfg, work / name.replace(" ", "_"))
            prob = score(work / name.replace(" ", "_") / "model", test, work)
            print(f"{name:<22}" + "".join(f"{a:>13.3f}" for a in family_aucs(test, prob, families)), flush=True)
            faces = (test["dataset"] == "lfw").to_numpy()
            print(f"{'  among faces':<22}" + "".join(f"{a:>13.3f}" for a in family_aucs(test[faces], prob[faces], families))
                  + f"   mean P(fake) of LFW / other reals {prob[faces & (test['label'] == 0)].mean():.2f} / "
                  f"{prob[~faces & (test['label'] == 0)].mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
