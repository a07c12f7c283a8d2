"""The winners' table in miniature: does training on cluster splits generalise to an unseen fake family?

`deepfake-moe experiment generalization CONFIG.yaml` on a corpus manifest (path, label, source, origin):
1. The unseen test: every fake of `holdout_source`, plus the reals of a seeded `test_real_fraction`
   of real origins. The training pool is everything else, minus the holdout family and minus every
   image derived from a test real (same origin), so nothing of the test leaks into training.
2. (a) one expert trained on a random split of the pool (held-out origins, "official-like");
   (b) the split stage clusters the pool and one expert is trained per leave-one-cluster-out split;
   (c) the mixture of the experts of (b);
   (d) with `random_mixture`, the control: a mixture of as many experts on random splits ((a) and
   K - 1 more), which separates what the clustering adds from what any ensemble adds.
   Every expert gets the same training settings.
3. AUC on the unseen test for each (with bootstrap 95% intervals), beside each expert's own
   held-out (in-domain) AUC, written as results.md / results.csv / results.json.

Run folder OUT: experiment.yaml, data/{pool,test}.parquet, split/ (the split stage's output),
a_random/, b_clusters/ and d_random/ (training runs, resumable: rerunning the command continues them),
unseen_scores.csv (every test image's score under every model), results.*, roc_unseen.png.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake_moe.config import ConfigError, from_dict, load_yaml, save_yaml
from deepfake_moe.split.cluster import ClusterConfig
from deepfake_moe.split.config import EncoderConfig

if TYPE_CHECKING:
    import pandas as pd

RESERVED_TRAIN_KEYS = ("experts", "out_dir")


@dataclass
class SplitSettings:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    make_plot: bool = True


@dataclass
class GeneralizationConfig:
    manifest: str
    """Corpus manifest: path, label, source, origin (relative paths resolve against `root`)."""
    holdout_source: str
    """The fake family held out entirely: the unseen test."""
    root: str | None = None
    out: str = ""
    """Run folder; `--out` overrides it."""
    test_real_fraction: float = 0.2
    """Share of real origins whose reals join the unseen test (their derived images leave training)."""
    seed: int = 0
    backbone: str = "test_efficientnet"
    pretrained: str = "none"
    expert: dict[str, Any] = field(default_factory=dict)
    """Further expert settings given to every expert (e.g. `freeze`, `preprocess`, `loss`)."""
    split: SplitSettings = field(default_factory=SplitSettings)
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig settings shared by every expert (data.*, optim.*, loss.*, ema.*, ...); the data
    manifest and the experts are set by the experiment."""
    n_bootstrap: int = 1000
    device: str = "auto"
    """Device for scoring the unseen test (training follows train.optim.device)."""
    random_mixture: bool = True
    """(d): also train K - 1 more experts on random splits and report the mixture of the K random-split
    experts, the same size as (c)'s."""

    def __post_init__(self):
        if not 0.0 < self.test_real_fraction < 1.0:
            raise ConfigError(f"test_real_fraction must be in (0, 1), got {self.test_real_fraction}")
        check_shared_train_settings(self.train)
        bad = [k for k in ("backbone", "pretrained", "split") if k in self.expert]
        if bad:
            raise ConfigError(f"expert: {bad} are set by the experiment (backbone and pretrained at the top level)")


def check_shared_train_settings(train: dict[str, Any]) -> None:
    """An experiment's `train:` mapping may not set what the experiment sets itself."""
    bad = [k for k in RESERVED_TRAIN_KEYS if k in train]
    if bad:
        raise ConfigError(f"train: {bad} are set by the experiment (give the experts and `out` at the top level)")
    if "manifest" in train.get("data", {}) or "root" in train.get("data", {}):
        raise ConfigError("train.data.manifest/root are set by the experiment; give `manifest` at the top level")


def shared_train_config(train: dict[str, Any], manifest: str | os.PathLike, experts: list[dict[str, Any]], name: str):
    """The TrainConfig for `experts` on `manifest`, with an experiment's shared training settings."""
    from deepfake_moe.train.config import TrainConfig

    mapping = {**train, "experts": experts, "name": name}
    mapping["data"] = {**train.get("data", {}), "manifest": str(manifest), "root": None}
    return from_dict(TrainConfig, mapping, where="train")


def train_config(cfg: GeneralizationConfig, manifest: str | os.PathLike, splits: list[int], name: str):
    """The TrainConfig for experts on `splits` of `manifest`, with the experiment's shared settings."""
    experts = [{**cfg.expert, "backbone": cfg.backbone, "pretrained": cfg.pretrained, "split": i} for i in splits]
    return shared_train_config(cfg.train, manifest, experts, name)


def load_config(path: str | os.PathLike) -> GeneralizationConfig:
    cfg = load_yaml(GeneralizationConfig, path)
    train_config(cfg, "check.parquet", [0], "check")  # the shared training settings must be valid now
    return cfg


def holdout_partition(df: pd.DataFrame, holdout_source: str, test_real_fraction: float, seed: int):
    """(pool, test) manifests: test = holdout fakes + reals of held-out origins; pool = the rest, leak-free."""
    from deepfake_moe.data.manifest import FAKE, REAL

    labelled = df[df["label"].isin([REAL, FAKE])]
    fake_sources = sorted(labelled.loc[labelled["label"] == FAKE, "source"].unique())
    if holdout_source not in fake_sources:
        raise ConfigError(f"holdout_source {holdout_source!r} is not a fake source of the manifest: {fake_sources}")
    if len(fake_sources) < 2:
        raise ConfigError("the manifest needs at least one fake source besides the held-out one to train on")
    real_origins = np.array(sorted(labelled.loc[labelled["label"] == REAL, "origin"].astype(str).unique()))
    n_test = max(1, round(len(real_origins) * test_real_fraction))
    if n_test >= len(real_origins):
        raise ConfigError(f"{len(real_origins)} real origin(s) are too few to hold out {test_real_fraction:.0%}")
    rng = np.random.default_rng(seed)
    test_origins = set(rng.choice(real_origins, size=n_test, replace=False).tolist())
    held_fake = (labelled["label"] == FAKE) & (labelled["source"] == holdout_source)
    in_test_origin = labelled["origin"].astype(str).isin(test_origins)
    test = labelled[held_fake | (in_test_origin & (labelled["label"] == REAL))]
    pool = labelled[~held_fake & ~in_test_origin]
    return pool.reset_index(drop=True), test.reset_index(drop=True)


def score_checkpoint(model_dir: Path, paths: list[str], device: str) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """(mixture probability (N,), expert probabilities (N, E), errors, model info) on the test images."""
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.model.checkpoint import load_checkpoint

    model, config = load_checkpoint(model_dir)
    rows = Predictor(model, config, device=device, progress=True).predict(paths)
    n_exp = len(config.experts)
    experts = np.array([r.expert_probabilities if not r.error else (np.nan,) * n_exp for r in rows], dtype=float)
    return np.array([r.probability for r in rows]), experts.reshape(len(rows), n_exp), [r.error for r in rows], config.info


def run_generalization(cfg: GeneralizationConfig, out: str | os.PathLike, progress: bool = True) -> pd.DataFrame:
    """The whole experiment; returns the results table (also written under `out`)."""
    from deepfake_moe.data.manifest import check_files, read_manifest
    from deepfake_moe.evaluate import plots
    from deepfake_moe.evaluate.report import write_json, write_markdown
    from deepfake_moe.io import atomic_path

    corpus = read_manifest(cfg.manifest, root=cfg.root)
    check_files(corpus, what=str(cfg.manifest))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "experiment.yaml")
    pool, test = _pool_and_test(cfg, corpus, out)
    models, n_splits = _train_models(cfg, out, progress)
    scores, n_experts, held_out = _unseen_scores(models, test, cfg.device)
    with atomic_path(out / "unseen_scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    table, curves = _results_table(cfg, scores, n_experts, held_out)

    with atomic_path(out / "results.csv") as tmp:
        table.to_csv(tmp, index=False)
    ok = scores["error"] == ""
    y = scores["label"].to_numpy()
    summary = {
        "holdout_source": cfg.holdout_source,
        "test": {"fake": int((y[ok] == 1).sum()), "real": int((y[ok] == 0).sum()), "failed": int((~ok).sum())},
        "pool": {"images": len(pool), "real": int((pool["label"] == 0).sum()),
                 "sources": sorted(pool.loc[pool["label"] == 1, "source"].unique().tolist())},
        "splits": n_splits,
        "mean_single_cluster_expert_auc": float(table.loc[table["kind"] == "b", "unseen_auc"].mean()),
        "mean_single_random_expert_auc": float(table.loc[table["kind"].isin(["a", "d"]), "unseen_auc"].mean()),
        "results": table.to_dict("records"),
    }
    write_json(summary, out / "results.json")
    write_markdown(results_markdown(summary, cfg), out / "results.md")
    plots.plot_roc(curves, out / "roc_unseen.png")
    return table


def _pool_and_test(cfg: GeneralizationConfig, corpus: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """OUT/data/{pool,test}.parquet: the leak-free training pool (no old split columns) and the unseen test."""
    from deepfake_moe.data.manifest import split_columns, write_manifest

    pool, test = holdout_partition(corpus, cfg.holdout_source, cfg.test_real_fraction, cfg.seed)
    pool = pool.drop(columns=[c for c in pool.columns if c == "cluster" or c in split_columns(pool)])
    write_manifest(pool, out / "data" / "pool.parquet")
    write_manifest(test, out / "data" / "test.parquet")
    print(f"unseen test: {int((test['label'] == 1).sum())} {cfg.holdout_source} fakes + "
          f"{int((test['label'] == 0).sum())} reals; training pool: {len(pool)} images "
          f"({int((pool['label'] == 0).sum())} real)", file=sys.stderr)
    return pool, test


def _train_models(cfg: GeneralizationConfig, out: Path, progress: bool) -> tuple[dict[str, Path], int]:
    """Split the pool, then train (a) one expert on a random split and (b) one per cluster split (resumable).

    Returns ({run name: its mixture checkpoint folder}, number of cluster splits).
    """
    from deepfake_moe.data.manifest import split_columns
    from deepfake_moe.split.config import SplitConfig
    from deepfake_moe.split.run import make_splits
    from deepfake_moe.train.loop import train

    split_cfg = SplitConfig(manifest=str(out / "data" / "pool.parquet"), out=str(out / "split"),
                            encoder=cfg.split.encoder, cluster=cfg.split.cluster, make_plot=cfg.split.make_plot)
    split_df = make_splits(split_cfg, progress=progress)["manifest"]
    n_splits = len(split_columns(split_df))

    runs = {
        "a_random": train_config(cfg, out / "data" / "pool.parquet", [0], "random-split"),
        "b_clusters": train_config(cfg, out / "split" / "manifest.parquet", list(range(n_splits)), "cluster-splits"),
    }
    if cfg.random_mixture:  # (a) is the random split 0; these are splits 1..K-1 (another seed each)
        runs["d_random"] = train_config(cfg, out / "data" / "pool.parquet", list(range(1, n_splits)), "random-splits")
    models = {}
    for name, tcfg in runs.items():
        try:
            models[name] = train(tcfg, out / name, resume=True)
        except ValueError as e:  # e.g. a cluster split too small for one batch
            raise ConfigError(f"training {out / name}: {e}") from None
        if models[name] is None:
            raise ConfigError(f"{out / name}: training did not finish every expert")
    return models, n_splits


def _unseen_scores(models: dict[str, Path], test: pd.DataFrame, device: str) -> tuple[pd.DataFrame, int, dict]:
    """Every test image's score under (a), each expert of (b) and (c); with the number of (b)'s
    experts and each run's in-domain held-out AUCs ({"a": [...], "b": [...]})."""
    import pandas as pd

    paths = test["path"].tolist()
    scores = pd.DataFrame({"path": paths, "label": test["label"].to_numpy(), "source": test["source"]})
    prob_a, _, err_a, info_a = score_checkpoint(models["a_random"], paths, device)
    prob_c, experts_b, err_b, info_b = score_checkpoint(models["b_clusters"], paths, device)
    scores["a_random"] = prob_a
    for i in range(experts_b.shape[1]):
        scores[f"b_expert_{i}"] = experts_b[:, i]
    scores["c_mixture"] = prob_c
    errors = [ea or eb for ea, eb in zip(err_a, err_b)]
    held_out = {
        "a": info_a.get("held_out_auc", [None]),
        "b": info_b.get("held_out_auc", [None] * experts_b.shape[1]),
    }
    if "d_random" in models:
        _, experts_d, err_d, info_d = score_checkpoint(models["d_random"], paths, device)
        for i in range(experts_d.shape[1]):
            scores[f"d_expert_{i + 1}"] = experts_d[:, i]
        scores["d_mixture"] = np.column_stack([prob_a, experts_d]).mean(axis=1)
        errors = [e or ed for e, ed in zip(errors, err_d)]
        held_out["d"] = info_d.get("held_out_auc", [None] * experts_d.shape[1])
    scores["error"] = errors
    return scores, experts_b.shape[1], held_out


def _results_table(
    cfg: GeneralizationConfig, scores: pd.DataFrame, n_experts: int, held_out: dict
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One row per model (unseen AUC with its bootstrap interval, AP, TPR@1% FPR, in-domain AUC); ROC curves."""
    import pandas as pd

    from deepfake_moe.evaluate.metrics import binary_metrics

    ok = (scores["error"] == "").to_numpy()
    y = scores["label"].to_numpy()
    rows, curves = [], {}

    def add(label: str, column: str, kind: str, held_out_auc: float | None) -> None:
        s = scores.loc[ok, column].to_numpy(float)
        m = binary_metrics(y[ok], s, 0.5, (0.01,), cfg.n_bootstrap, cfg.seed)
        rows.append({"model": label, "kind": kind, "unseen_auc": m.auc.value, "auc_low": m.auc.ci95[0] if m.auc.ci95 else np.nan,
                     "auc_high": m.auc.ci95[1] if m.auc.ci95 else np.nan, "unseen_ap": m.ap.value,
                     "unseen_tpr_at_fpr_1pct": m.tpr_at_fpr[0.01].value,
                     "in_domain_held_out_auc": np.nan if held_out_auc is None else held_out_auc})
        curves[label] = (y[ok], s)

    add("(a) random split, one expert", "a_random", "a", held_out["a"][0])
    for i in range(n_experts):
        add(f"(b) cluster split {i}, one expert", f"b_expert_{i}", "b", held_out["b"][i])
    add(f"(c) mixture of the {n_experts} experts of (b)", "c_mixture", "c", None)
    if "d" in held_out:
        for i, auc in enumerate(held_out["d"], start=1):
            add(f"(d) random split {i}, one expert", f"d_expert_{i}", "d", auc)
        add(f"(d) mixture of (a) and these {len(held_out['d'])} random-split experts", "d_mixture", "d_mix", None)
    return pd.DataFrame(rows), curves


def results_markdown(summary: dict, cfg: GeneralizationConfig) -> str:
    t, p = summary["test"], summary["pool"]
    lines = [
        f"# Generalisation to an unseen fake family: `{summary['holdout_source']}`",
        "",
        f"- Unseen test: {t['fake']} `{summary['holdout_source']}` fakes + {t['real']} reals of held-out origins"
        f" ({t['failed']} unreadable, excluded).",
        f"- Training pool: {p['images']} images ({p['real']} real; fake sources {', '.join(p['sources'])}),"
        f" {summary['splits']} cluster splits; backbone `{cfg.backbone}` (pretrained: {cfg.pretrained}),"
        " the same training settings for every expert.",
        "- In-domain AUC: each expert on its own held-out part of the pool (random origins for (a) and (d),"
        " its cluster for (b)). Unseen AUC: on the test above. Brackets: 95% bootstrap interval.",
        "",
        "| model | unseen AUC [95% CI] | unseen AP | unseen TPR@FPR=1% | in-domain held-out AUC |",
        "|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        ci = f" [{r['auc_low']:.3f}, {r['auc_high']:.3f}]" if np.isfinite(r["auc_low"]) else ""
        held = f"{r['in_domain_held_out_auc']:.4f}" if np.isfinite(r["in_domain_held_out_auc"]) else "-"
        lines.append(f"| {r['model']} | {r['unseen_auc']:.4f}{ci} | {r['unseen_ap']:.4f} | "
                     f"{r['unseen_tpr_at_fpr_1pct'] * 100:.1f}% | {held} |")
    lines += ["", f"Mean unseen AUC of the single cluster-split experts: {summary['mean_single_cluster_expert_auc']:.4f};"
              f" of the single random-split experts: {summary['mean_single_random_expert_auc']:.4f}."
              " The winners reported 0.877 (official split) / 0.968, 0.964 (cluster-split experts) / 0.980 (mixture)"
              " on their data."]
    return "\n".join(lines) + "\n"


def register(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="reproducible experiments (the winners' table in miniature)")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True
    g = sub.add_parser(
        "generalization",
        help="random split vs cluster splits vs their mixture, AUC on a held-out fake family",
        description="Hold one fake family out as the unseen test, train one expert on a random split, one per "
        "cluster split and their mixture, and write the unseen-family AUC of each (results.md).",
    )
    g.add_argument("config", help="experiment YAML (see configs/experiment_generalization.yaml)")
    g.add_argument("--out", help="run folder (default: the config's `out`)")
    g.add_argument("--quiet", action="store_true", help="no progress bars from the split stage")
    g.set_defaults(func=run_generalization_command)
    from deepfake_moe.evaluate import leave_one_out

    leave_one_out.register(sub)


def run_generalization_command(args) -> int:
    return run_experiment(args, load_config, lambda cfg, out: run_generalization(cfg, out, progress=not args.quiet))


def run_experiment(args, load, run) -> int:
    """Load the experiment's config, run it into --out (or the config's `out`), print results.md."""
    from deepfake_moe.errors import EXIT_OK, EXIT_PARTIAL

    try:
        cfg = load(args.config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = args.out or cfg.out
    if not out:
        raise ConfigError("give --out or set `out` in the config")
    table = run(cfg, out)
    print((Path(out) / "results.md").read_text())
    return EXIT_OK if len(table) else EXIT_PARTIAL
