"""Probe: can one fast expert learn what a slower mixture knows (knowledge distillation)?

The first model (shipped) generalises to the held-out face swaps; the recipe's paired-reals model
catches the generator families. The mean of their six experts does most of both, at half the speed.
This probe scores the training pool with such a teacher mixture (`--teachers`: the mean of all their
experts' fake probabilities), then trains the training config's first expert (its split, paired reals,
`--steps`) with `loss.distill_weight` w: L_ce = (1 - w) * CE(label) + w * CE(teacher). It scores the
test manifest with each expert alone and prints the AUC of every fake family against all test reals,
beside the teachers' own. w = 0 is the recipe's own expert 0 (training is deterministic).

What it decided (teachers: the shipped first model + the paired-reals recipe's model, six experts; the
candidate corpus's stratified split 0, 450 steps; test = 4,101 held-out images; 2026-11-28, about
4 minutes of teacher scoring and 11 minutes per arm on 2 cores). AUC against all test reals:

| | all | face swap (held out) | splice | copy-move | inpaint | masked fill | self-blend | retouch | DCGAN | StyleGAN-lite | ESRGAN |
|---|---|---|---|---|---|---|---|---|---|---|---|
| teacher mixture (6 experts) | 0.771 | 0.796 | 0.818 | 0.759 | 0.712 | 0.961 | 0.635 | 0.607 | 0.967 | 0.950 | 0.747 |
| expert 0, labels (w = 0: the recipe's) | 0.741 | 0.731 | 0.756 | 0.691 | 0.670 | 0.909 | 0.612 | 0.595 | 0.986 | 1.000 | 0.746 |
| expert 0, w = 0.5 | 0.738 | 0.735 | 0.748 | 0.699 | 0.665 | 0.931 | 0.608 | 0.599 | 0.964 | 0.987 | 0.737 |
| expert 0, w = 1 | 0.728 | 0.716 | 0.774 | 0.700 | 0.662 | 0.939 | 0.604 | 0.588 | 0.954 | 0.963 | 0.743 |
| the first model's expert 0 | 0.668 | 0.771 | 0.788 | 0.689 | 0.657 | 0.919 | 0.598 | 0.570 | 0.778 | 0.271 | 0.562 |

The teacher's face-swap skill does not pass to the student: distilled on the corpus's images, expert 0
scores the held-out face swaps 0.716-0.735, where the teacher scores 0.796 and the student's own
labels give 0.731. Distillation can only teach the teacher's answers on the images it is shown, and the
first model's hold on face swaps shows on none of them. So distilling the six experts into three does
not give the default model both skills at its speed; the students only gain on masked fill (+0.03).

    python benchmarks/probe_distill.py --manifest runs/default/split/manifest.parquet \\
        --teachers default runs/default/train/model --weights 0 1 0.5 --out runs/probe_distill
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.data.manifest import read_csv_table, read_manifest, write_manifest
from deepfake_moe.infer.weights import default_model_dir
from deepfake_moe.runtime import describe_cpu
from deepfake_moe.train.loop import train
from deepfake_moe.train.teacher import teacher_probabilities
from probe_generator_share import family_aucs, probe_parser, probe_setup


def expert_probs(weights: Path, rows: pd.DataFrame, out: Path) -> pd.DataFrame:
    """`predict --per-expert` on the rows into `out` (kept as a cache): its table of scores."""
    if not out.is_file():
        paths = out.with_suffix(".paths.csv")
        rows[["path"]].to_csv(paths, index=False)
        subprocess.run([sys.executable, "-m", "deepfake_moe.cli", "predict", str(paths), "--weights", str(weights),
                        "--out", str(out), "--no-progress", "--per-expert"], check=True, stderr=subprocess.DEVNULL)
    return read_csv_table(out)


def mixture_probs(teachers: list[Path], rows: pd.DataFrame, work: Path, name: str) -> np.ndarray:
    """The teacher mixture's probability (the mean of all the teachers' experts) on every row."""
    outs = [work / f"{name}_{i}.csv" for i in range(len(teachers))]
    tables = [expert_probs(t, rows, out) for t, out in zip(teachers, outs)]
    probs = teacher_probabilities(rows, tables, [str(o) for o in outs]).to_numpy()
    if np.isnan(probs).any():
        sys.exit(f"{np.isnan(probs).sum()} images could not be scored by the teachers")
    return probs


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--teachers", nargs="+", default=["default", "runs/default/train/model"])
    p.add_argument("--weights", nargs="+", type=float, default=[1.0, 0.5], help="distill_weight of each arm")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--out", default="runs/probe_distill", help="work folder (teacher scores are cached here)")
    args = p.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)

    base, test = probe_setup(args)
    teachers = [default_model_dir() if t == "default" else Path(t) for t in args.teachers]
    manifest = read_manifest(args.manifest)
    manifest["teacher"] = mixture_probs(teachers, manifest, work, "teacher_pool")
    base.data.manifest = str(write_manifest(manifest, work / "manifest.parquet"))
    base.optim.max_steps = args.steps
    base.eval.every_steps = args.steps
    expert = copy.deepcopy(base.experts[0])
    expert.paired_reals = True
    families = sorted(test.loc[test["label"] == 1, "family"].unique())
    print(describe_cpu())
    print(f"expert 0 ({expert.backbone}, split {expert.split}, paired reals), {args.steps} steps; teachers "
          f"{' + '.join(args.teachers)}; test {args.test}")
    print(f"{'':<22}" + "".join(f"{f[:11]:>12}" for f in ["all", *families]))

    def report(name: str, prob: pd.Series) -> None:
        from sklearn.metrics import roc_auc_score

        aucs = [roc_auc_score(test["label"], prob), *family_aucs(test, prob, families)]
        print(f"{name:<22}" + "".join(f"{a:>12.3f}" for a in aucs), flush=True)

    report("teacher mixture", pd.Series(mixture_probs(teachers, test, work, "teacher_test")))
    for w in args.weights:
        cfg = copy.deepcopy(base)
        cfg.experts = [copy.deepcopy(expert)]
        cfg.loss.distill_weight = w
        run = work / f"w{w:g}"
        if not (run / "model" / "model.yaml").is_file():
            train(cfg, run)
        student = expert_probs(run / "model", test, run / "test_scores.csv")
        report(f"expert 0, w = {w:g}", teacher_probabilities(test, [student], ["student"]))


if __name__ == "__main__":
    main()
