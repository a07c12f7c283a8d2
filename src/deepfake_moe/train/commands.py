"""`deepfake-moe train`, `deepfake-moe merge-experts` and `deepfake-moe teacher`."""

from __future__ import annotations

import argparse
import sys

from deepfake_moe.errors import EXIT_OK, ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the mixture of experts from a YAML config (also under torchrun)",
        description="Train each expert on its split F_i of a split manifest (L_ce + L_nce + L_kl, EMA), "
        "select it by held-out AUC and write one mixture checkpoint to OUT/model/. "
        "Multi-GPU/CPU: torchrun --nproc_per_node N -m deepfake_moe.cli train CONFIG.yaml ...",
    )
    p.add_argument("config", help="training config (YAML; see configs/tiny.yaml)")
    p.add_argument("--out", help="run folder (default: the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the run folder")
    p.add_argument(
        "--expert", type=int, action="append", metavar="I",
        help="train only expert I (repeatable); merge with `merge-experts OUT` once all are done",
    )
    p.add_argument("--no-uncertainty", action="store_true", help="skip fitting the uncertainty statistics on the "
                   "training manifest (one more pass over it; `fit-uncertainty` does it later)")
    p.set_defaults(func=run_train)

    m = subparsers.add_parser(
        "merge-experts",
        help="fold the experts trained in a run folder into one mixture checkpoint (OUT/model)",
        description="After experts were trained separately (`train --expert I`, e.g. one per machine into "
        "the same run folder), fold each expert's best EMA weights (by held-out AUC) into the mixture "
        "checkpoint OUT/model that predict loads. Fails, naming them, if some experts are not finished.",
    )
    m.add_argument("out", help="run folder written by `train`")
    m.add_argument("--no-uncertainty", action="store_true", help="skip fitting the uncertainty statistics")
    m.set_defaults(func=run_merge)

    t = subparsers.add_parser(
        "teacher",
        help="add a teacher's fake probabilities to a manifest, for knowledge distillation",
        description="Join the `predict --per-expert` scores of one or more trained models (the teacher: the mean "
        "of all their experts' probabilities) onto a manifest as a column, for training with "
        "loss.distill_weight > 0 (a fast model learning what a slow mixture knows). Score the manifest first: "
        "`deepfake-moe predict MANIFEST.parquet --weights W --per-expert --out W.csv`. Rows that any score file "
        "lacks, or could not score, are left out of OUT and listed (exit code 1).",
    )
    t.add_argument("manifest", help="the training manifest (a split manifest: the one train reads)")
    t.add_argument("scores", nargs="+", help="`predict --per-expert` CSVs of the manifest's images, one per model")
    t.add_argument("--out", required=True, help="the manifest with the teacher column (Parquet)")
    t.add_argument("--column", default="teacher", help="column name (the training config's loss.distill_column)")
    t.add_argument("--root", help="folder the manifest's relative paths resolve against (the config's data.root)")
    t.set_defaults(func=run_teacher)


def run_train(args: argparse.Namespace) -> int:
    from deepfake_moe.config import load_yaml
    from deepfake_moe.train.config import TrainConfig
    from deepfake_moe.train.loop import train

    config = load_yaml(TrainConfig, args.config)
    out = args.out or config.out_dir
    if not out:
        raise ConfigError("give the run folder with --out or set out_dir in the config")
    if not config.data.manifest:
        raise ConfigError(f"{args.config}: data.manifest is not set")
    model_dir = train(config, out, resume=args.resume, experts=args.expert)
    if model_dir is None:
        print(f"experts {args.expert} trained in {out}; run `deepfake-moe merge-experts {out}` "
              "when every expert is done", file=sys.stderr)
    elif _is_main_process():
        if not args.no_uncertainty:
            fit_uncertainty(model_dir, config)
        print(model_dir)
    return EXIT_OK


def run_merge(args: argparse.Namespace) -> int:
    from deepfake_moe.config import load_yaml
    from deepfake_moe.runtime import set_threads
    from deepfake_moe.train.config import TrainConfig
    from deepfake_moe.train.loop import merge_experts

    model_dir = merge_experts(args.out)
    if not args.no_uncertainty:
        config = load_yaml(TrainConfig, f"{args.out}/config.yaml")
        set_threads(config.optim.threads or None)  # as training ran (train() sets them itself)
        fit_uncertainty(model_dir, config)
    print(model_dir)
    return EXIT_OK


def run_teacher(args: argparse.Namespace) -> int:
    from deepfake_moe.data.manifest import read_csv_table, read_manifest, write_manifest
    from deepfake_moe.train.teacher import teacher_probabilities

    manifest = read_manifest(args.manifest, root=args.root)
    tables = [read_csv_table(s) for s in args.scores]
    manifest[args.column] = teacher_probabilities(manifest, tables, args.scores)
    missing = manifest[args.column].isna()
    print(write_manifest(manifest[~missing], args.out))
    if missing.any():
        shown = "\n  ".join(manifest.loc[missing, "path"].head(5))
        print(f"{missing.sum()} of {len(manifest)} rows have no teacher probability (unreadable, or not in every "
              f"score file) and were left out:\n  {shown}", file=sys.stderr)
        return 1
    return EXIT_OK


def fit_uncertainty(model_dir, config) -> None:
    """Fit the model's feature statistics on its own training manifest (see `fit-uncertainty`)."""
    from deepfake_moe.data.manifest import read_manifest
    from deepfake_moe.evaluate.uncertainty import fit_statistics
    from deepfake_moe.model.checkpoint import load_checkpoint, save_uncertainty
    model, model_config = load_checkpoint(model_dir)
    labels = read_manifest(config.data.manifest, root=config.data.root)
    record = fit_statistics(model, model_config, labels, str(config.data.manifest), batch_size=config.eval.batch_size,
                            device=config.optim.device, workers=config.data.num_workers)
    save_uncertainty(model, model_config, model_dir)
    print(f"uncertainty statistics fitted on {record['n_images']} training images "
          f"({record['n_failed']} unreadable); calibrate fits the threshold", file=sys.stderr)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
