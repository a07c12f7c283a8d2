"""`deepfake-moe split`: encode, cluster, and write leave-one-cluster-out splits into the manifest.

OUT receives manifest.parquet (with `cluster` and `split_<i>`), clusters.csv / clusters.md (the
per-cluster report), cluster_map.png, split.yaml (this run's configuration), unreadable.csv
(images that could not be read, if any) and, unless --cache says elsewhere, features/ (the
feature cache, so re-clustering with other options never re-encodes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "split",
        help="cluster images by features and write leave-one-cluster-out splits",
        description="Encode every image, cluster the features with k-means (origin groups kept together) "
        "and write split_<i> columns (validation = cluster i) into a new manifest, with a report and a map.",
    )
    p.add_argument("manifest", help="manifest (Parquet or CSV) or challenge label file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--root", default="", help="folder relative image paths resolve against")
    p.add_argument("--k", type=int, default=5, help="number of clusters = number of splits (default 5)")
    enc = p.add_argument_group("encoder")
    enc.add_argument("--encoder", default="efficientnet_lite0",
                     help="timm backbone name or a deepfake-moe checkpoint folder (default efficientnet_lite0)")
    enc.add_argument("--pretrained", default="offline",
                     help="timm encoders: none | offline (weights shipped in a package) | timm (hub) | weight file")
    enc.add_argument("--size", type=int, default=None, help="input size (default 224; checkpoints: their own)")
    enc.add_argument("--expert", default="0", choices=("0", "all"), help="checkpoints: first expert or all concatenated")
    enc.add_argument("--batch-size", type=int, default=64)
    enc.add_argument("--workers", type=int, default=2, help="DataLoader workers reading images")
    enc.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    enc.add_argument("--cache", default="", help="feature cache folder (default OUT/features)")
    cl = p.add_argument_group("clustering")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument("--pca", type=int, default=0, help="PCA components before k-means (0 = none)")
    cl.add_argument("--whiten", action="store_true", help="whiten the PCA components")
    cl.add_argument("--no-l2", action="store_true", help="do not L2-normalise features before clustering")
    cl.add_argument("--group-by", default="mean", choices=("mean", "majority"),
                    help="place an origin group by its mean feature or by the majority of its rows")
    cl.add_argument("--per-label", action="store_true",
                    help="cluster real-anchored and fake-only groups apart, then pair clusters so each has both")
    cl.add_argument("--merge-degenerate", action="store_true",
                    help="merge clusters lacking reals or fakes into their nearest cluster")
    cl.add_argument("--backend", default="auto", choices=("auto", "sklearn", "faiss"))
    pl = p.add_argument_group("cluster map")
    pl.add_argument("--plot-split", type=int, default=0, help="split shown as train vs validation")
    pl.add_argument("--plot-sample", type=int, default=3000, help="images in the map")
    pl.add_argument("--embedding", default="auto", choices=("auto", "tsne", "umap"))
    pl.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_split_command)


def config_from_args(args: argparse.Namespace):
    from deepfake_moe.split.cluster import ClusterConfig
    from deepfake_moe.split.config import EncoderConfig, SplitConfig
    from deepfake_moe.split.plot import PlotConfig

    return SplitConfig(
        manifest=str(args.manifest),
        out=str(args.out),
        cache_dir=args.cache,
        root=args.root,
        encoder=EncoderConfig(args.encoder, args.pretrained, args.size, args.expert, args.batch_size,
                              args.workers, args.device),
        cluster=ClusterConfig(k=args.k, seed=args.seed, l2_normalize=not args.no_l2, pca=args.pca,
                              whiten=args.whiten, group_by=args.group_by, per_label=args.per_label,
                              merge_degenerate=args.merge_degenerate, backend=args.backend),
        plot=PlotConfig(split=args.plot_split, sample=args.plot_sample, method=args.embedding, seed=args.seed),
        make_plot=not args.no_plot,
    )


def run_split_command(args: argparse.Namespace) -> int:
    from deepfake_moe.cli import UsageError

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    result = make_splits(cfg, progress=not args.quiet)
    print(result["summary"])
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    if result["unreadable"]:
        print(f"{result['unreadable']} image(s) could not be read; listed in {Path(cfg.out) / 'unreadable.csv'}",
              file=sys.stderr)
        return 1
    return 0


def make_splits(cfg, progress: bool = True) -> dict:
    """The whole stage for a SplitConfig; returns {"manifest", "report", "warnings", "unreadable", "summary"}."""
    import pandas as pd

    from deepfake_moe.cli import UsageError
    from deepfake_moe.config import save_yaml
    from deepfake_moe.data.manifest import read_manifest, write_manifest
    from deepfake_moe.io import atomic_write
    from deepfake_moe.split import cluster as clustering
    from deepfake_moe.split.encode import encode
    from deepfake_moe.split.plot import plot_cluster_map
    from deepfake_moe.split.splits import assign_splits, cluster_report, degenerate_warnings, write_report

    out = Path(cfg.out)
    df = read_manifest(cfg.manifest, root=cfg.root or None)
    n_groups = df["origin"].nunique()
    if cfg.cluster.k > n_groups:
        raise UsageError(f"--k {cfg.cluster.k} is more than the {n_groups} origin groups in the manifest")
    if cfg.plot.split >= cfg.cluster.k:
        raise UsageError(f"--plot-split {cfg.plot.split} does not exist with --k {cfg.cluster.k}")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "split.yaml")

    feats = encode(df["path"].tolist(), cfg.encoder, cfg.cache_dir or out / "features", progress=progress)
    try:
        result = clustering.cluster(feats.features, df["origin"].to_numpy(), df["label"].to_numpy(), feats.ok, cfg.cluster)
    except ValueError as e:
        raise UsageError(str(e)) from None
    split_df = assign_splits(df, result.labels)
    write_manifest(split_df, out / "manifest.parquet")

    report = cluster_report(split_df)
    warnings = degenerate_warnings(report)
    notes = [f"encoder: {feats.cache_dir.name} ({cfg.encoder.name}, pretrained {cfg.encoder.pretrained}); "
             f"{feats.encoded} image(s) encoded now, {len(df) - feats.encoded} from the cache"]
    notes += [f"cluster {a} (no reals or no fakes) merged into cluster {b} (numbering before merging)" for a, b in result.merged]
    if result.merged:
        notes.append(f"{len(result.centers)} clusters remain after merging, so {len(result.centers)} splits")
    if feats.errors:
        notes.append(f"{len(feats.errors)} image(s) could not be read: see unreadable.csv")
        with atomic_write(out / "unreadable.csv") as f:
            pd.DataFrame({"path": df["path"].to_numpy()[list(feats.errors)], "error": list(feats.errors.values())}).to_csv(f, index=False)
    else:
        (out / "unreadable.csv").unlink(missing_ok=True)
    write_report(report, out, warnings, notes)

    if cfg.make_plot:
        plot_cfg = cfg.plot
        n_splits = int(result.labels.max()) + 1
        if plot_cfg.split >= n_splits:  # merging removed it
            plot_cfg = type(plot_cfg)(**{**plot_cfg.__dict__, "split": 0})
        no_pca = type(cfg.cluster)(**{**cfg.cluster.__dict__, "pca": 0, "whiten": False})
        plot_cluster_map(feats.features, split_df, feats.ok, out / "cluster_map.png", plot_cfg,
                         transform=lambda x: clustering.prepare(x, no_pca))
    summary = report[["cluster", "images", "real", "fake", "origins", "usable"]].to_string(index=False)
    return {"manifest": split_df, "report": report, "warnings": warnings, "unreadable": len(feats.errors),
            "summary": summary}
