"""Probe: does fine-tuning the first model's experts on the new corpus keep what they knew?

The first model (trained on the old corpus: edits and face swaps, no generators) generalises to the
held-out face swaps better than any expert trained from ImageNet weights on the new corpus, which
holds five generator families besides the edits. This probe trains the training config's first
expert on the same split three ways and scores each alone on a test manifest, family by family
(AUC of each fake family against all the test reals):

- `imagenet`: the recipe (ImageNet weights, the config's steps and learning rate);
- `fine-tune`: the first model's expert at the same position (`init_from: default`), fewer steps
  and a lower learning rate (`--tune-steps`, `--tune-lr`);
- `first model`: that expert as shipped, untrained here (the reference).

What it decided (the candidate corpus's stratified split 0, test = its 4,101 held-out images, each
fake family against all the test reals; 2026-11-27):

| expert 0 | face swap (held out) | splice | copy-move | StyleGAN-lite | DCGAN faces | Real-ESRGAN |
|---|---|---|---|---|---|---|
| first model, as shipped | 0.771 | 0.788 | 0.689 | 0.271 | 0.778 | 0.562 |
| fine-tuned, 150 steps, lr 2e-4, stem and blocks 0-2 frozen | 0.580 | 0.740 | 0.691 | 1.000 | 0.821 | 0.721 |
| fine-tuned, blocks 6 and head only | 0.523 | 0.703 | 0.659 | 0.999 | 0.711 | 0.676 |
| fine-tuned, head only (`--tune-freeze conv_stem,bn1,blocks,conv_head,bn2`) | 0.689 | 0.743 | 0.667 | 0.916 | 0.743 | 0.608 |
| ImageNet start, 450 steps (the recipe; probe_generator_share.py) | 0.592 | 0.739 | 0.729 | | | |

Fine-tuning learns the generators within 150 steps and loses the face swaps as fast, even when only
the head moves (frozen layers' BatchNorm statistics still follow the new data). What the first model knew of face swaps is not kept by any training on the new
corpus, so a fine-tuned model is no way around the candidate's face-swap loss: the cause lies in
what the new corpus's labels teach, not in the starting weights or in capacity.

  python benchmarks/probe_fine_tune.py --manifest runs/default/split/manifest.parquet \\
      --test runs/default/holdout/test.parquet
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from sklearn.metrics import roc_auc_score

from deepfake_moe.infer.weights import default_model_dir
from deepfake_moe.train.loop import train
from probe_generator_share import family_aucs, probe_parser, probe_setup, score


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--tune-steps", type=int, default=150)
    p.add_argument("--tune-lr", type=float, default=2e-4)
    p.add_argument("--tune-freeze", default="", help="parameter prefixes kept frozen in the fine-tune (comma-"
                   "separated; default: the config expert's `freeze`)")
    p.add_argument("--skip-imagenet", action="store_true", help="only the fine-tune and the reference")
    p.add_argument("--skip-reference", action="store_true", help="do not score the shipped expert again")
    args = p.parse_args()

    base, test = probe_setup(args)
    base.eval.every_steps = 0
    first = copy.deepcopy(base.experts[0])
    families = sorted(test.loc[test["label"] == 1, "family"].unique())

    tuned = copy.deepcopy(first)
    tuned.pretrained, tuned.init_from = "none", "default"
    tuned.optim = {**tuned.optim, "max_steps": args.tune_steps, "lr": args.tune_lr}
    if args.tune_freeze:
        tuned.freeze = args.tune_freeze.split(",")
    variants = {} if args.skip_reference else {"first model": None}
    variants[f"fine-tune ({args.tune_steps} steps, lr {args.tune_lr:g})"] = tuned
    if not args.skip_imagenet:
        variants[f"imagenet ({base.optim.max_steps} steps)"] = first
    print(f"expert 0 ({first.backbone}, split {first.split}); test {args.test}")
    print(f"{'':<34}" + "".join(f"{f[:11]:>12}" for f in ["all", *families]))
    for name, spec in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            if spec is None:
                prob = score(default_model_dir(), test, Path(tmp), column="expert_0")
            else:
                cfg = copy.deepcopy(base)
                cfg.experts = [spec]
                train(cfg, Path(tmp) / "run")
                prob = score(Path(tmp) / "run" / "model", test, Path(tmp))
        aucs = [roc_auc_score(test["label"], prob), *family_aucs(test, prob, families)]
        print(f"{name:<34}" + "".join(f"{a:>12.3f}" for a in aucs), flush=True)


if __name__ == "__main__":
    main()
