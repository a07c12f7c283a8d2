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
    cl.add_argument("--stratify", default="", metavar="COLUMN",
                    help="cluster within each value of this manifest column (e.g. dataset) and pair the clusters "
                    "across values, so that every split holds out part of each and no small dataset is held "
                    "out of an expert entirely")
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
                              stratify=args.stratify,
                              merge_degenerate=args.merge_degenerate, backend=args.backend),
        plot=PlotConfig(split=args.plot_split, sample=args.plot_sample, method=args.embedding, seed=args.seed),
        make_plot=not args.no_plot,
    )


def run_split_command(args: argparse.Namespace) -> int:
    from deepfake_moe.errors import EXIT_OK, EXIT_PARTIAL, ConfigError
    from deepfake_moe.split.run import make_splits

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    result = make_splits(cfg, progress=not args.quiet)
    print(result["summary"])
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    if result["unreadable"]:
        print(f"{result['unreadable']} image(s) could not be read; listed in {Path(cfg.out) / 'unreadable.csv'}",
              file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK
