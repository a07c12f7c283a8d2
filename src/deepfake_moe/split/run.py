"""The split stage as a library call: encode, cluster and write leave-one-cluster-out splits.

`make_splits(SplitConfig)` is what `deepfake-moe split` and `experiment` run; see `split/commands.py`
for the files it writes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from deepfake_moe.config import save_yaml
from deepfake_moe.data.manifest import check_files, read_manifest, write_manifest
from deepfake_moe.errors import ConfigError
from deepfake_moe.io import atomic_write
from deepfake_moe.split import cluster as clustering
from deepfake_moe.split.config import SplitConfig
from deepfake_moe.split.encode import encode
from deepfake_moe.split.plot import plot_cluster_map
from deepfake_moe.split.splits import assign_splits, cluster_report, degenerate_warnings, write_report


def make_splits(cfg: SplitConfig, progress: bool = True) -> dict:
    """The whole stage for a SplitConfig; returns {"manifest", "report", "warnings", "unreadable", "summary"}."""
    out = Path(cfg.out)
    df = read_manifest(cfg.manifest, root=cfg.root or None)
    check_files(df, what=str(cfg.manifest))
    n_groups = df["origin"].nunique()
    if cfg.cluster.k > n_groups:
        raise ConfigError(f"cluster.k {cfg.cluster.k} is more than the {n_groups} origin groups in the manifest")
    if cfg.cluster.stratify and cfg.cluster.stratify not in df.columns:
        raise ConfigError(f"cannot stratify by {cfg.cluster.stratify!r}: the manifest has no such column "
                          f"(it has {', '.join(df.columns)})")
    if cfg.plot.split >= cfg.cluster.k:
        raise ConfigError(f"plot.split {cfg.plot.split} does not exist with cluster.k {cfg.cluster.k}")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "split.yaml")

    feats = encode(df["path"].tolist(), cfg.encoder, cfg.cache_dir or out / "features", progress=progress)
    try:
        strata = df[cfg.cluster.stratify].fillna("").astype(str).to_numpy() if cfg.cluster.stratify else None
        result = clustering.cluster(feats.features, df["origin"].to_numpy(), df["label"].to_numpy(), feats.ok,
                                    cfg.cluster, strata=strata)
    except ValueError as e:
        raise ConfigError(str(e)) from None
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
