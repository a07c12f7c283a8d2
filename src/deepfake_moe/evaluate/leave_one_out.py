"""Leave-one-generator-out: how well does the model catch a fake family it never saw in training?

`deepfake-moe experiment leave-one-out CONFIG.yaml`, on a corpus manifest (path, label, source, origin):
for every fake family F listed (default: every fake source), the same model recipe (the config's
experts and training settings) is trained on the corpus without F and without the test reals'
origins, then scored on every fake of F against the test reals. The test reals (a seeded share
of real origins) are the same for every family, so the rows of the table are comparable.

Run folder OUT: experiment.yaml, folds/<family>/{data/pool.parquet, data/test.parquet, train/},
scores.csv (every test image under the model that did not see its family), results.md/csv/json.
Training is resumable: rerunning the command continues unfinished folds and reuses finished ones.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake_moe.config import ConfigError, load_yaml, save_yaml

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LeaveOneOutConfig:
    manifest: str
    """Corpus manifest: path, label, source, origin (relative paths resolve against `root`)."""
    families: list[str] = field(default_factory=list)
    """Fake sources to hold out, one model each; empty: every fake source of the manifest."""
    root: str | None = None
    out: str = ""
    """Run folder; `--out` overrides it."""
    test_real_fraction: float = 0.2
    """Share of real origins whose reals form the test reals (and leave every training pool)."""
    seed: int = 0
    experts: list[dict[str, Any]] = field(default_factory=lambda: [{"backbone": "test_efficientnet"}])
    """The model recipe: train.experts entries (backbone, pretrained, split, ...), timm or own backbones."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig settings shared by every fold (data.*, optim.*, loss.*, ...); the experiment sets
    the data manifest and the experts."""
    n_bootstrap: int = 1000
    device: str = "auto"
    """Device for scoring the test images (training follows train.optim.device)."""

    def __post_init__(self):
        from deepfake_moe.evaluate.experiment import check_shared_train_settings

        if not 0.0 < self.test_real_fraction < 1.0:
            raise ConfigError(f"test_real_fraction must be in (0, 1), got {self.test_real_fraction}")
        if not self.experts:
            raise ConfigError("experts: list at least one expert")
        check_shared_train_settings(self.train)


def fold_train_config(cfg: LeaveOneOutConfig, manifest: str | os.PathLike, name: str, held_out: str | None = None):
    """The fold's TrainConfig; an expert limited to some fake sources (`fake_sources`) loses the held-out one."""
    from deepfake_moe.evaluate.experiment import shared_train_config

    experts = [
        {**e, "fake_sources": [s for s in e["fake_sources"] if s != held_out]} if e.get("fake_sources") else e
        for e in cfg.experts
    ]
    return shared_train_config(cfg.train, manifest, experts, name)


def load_config(path: str | os.PathLike) -> LeaveOneOutConfig:
    cfg = load_yaml(LeaveOneOutConfig, path)
    fold_train_config(cfg, "check.parquet", "check")  # the training settings must be valid now
    return cfg


def families_of(df: pd.DataFrame, cfg: LeaveOneOutConfig) -> list[str]:
    from deepfake_moe.data.manifest import FAKE

    sources = sorted(df.loc[df["label"] == FAKE, "source"].astype(str).unique())
    families = cfg.families or sources
    unknown = sorted(set(families) - set(sources))
    if unknown:
        raise ConfigError(f"families {unknown} are not fake sources of {cfg.manifest}: {sources}")
    if len(sources) < 2:
        raise ConfigError("the manifest needs at least two fake sources: one to hold out, one to train on")
    return list(families)


def run_fold(cfg: LeaveOneOutConfig, corpus: pd.DataFrame, family: str, folder: Path) -> pd.DataFrame:
    """Train without `family` (resumable) and score its test; returns the fold's scored test rows."""
    from deepfake_moe.data.manifest import write_manifest
    from deepfake_moe.evaluate.experiment import holdout_partition, score_checkpoint
    from deepfake_moe.train.loop import train

    pool, test = holdout_partition(corpus, family, cfg.test_real_fraction, cfg.seed)
    write_manifest(pool, folder / "data" / "pool.parquet")
    write_manifest(test, folder / "data" / "test.parquet")
    print(f"fold {family}: training on {len(pool)} images (fake sources "
          f"{', '.join(sorted(pool.loc[pool['label'] == 1, 'source'].unique()))}); testing on "
          f"{int((test['label'] == 1).sum())} {family} fakes + {int((test['label'] == 0).sum())} reals", file=sys.stderr)
    try:
        model_dir = train(fold_train_config(cfg, folder / "data" / "pool.parquet", f"without-{family}", family),
                          folder / "train", resume=True)
    except ValueError as e:  # e.g. a pool too small for one batch
        raise ConfigError(f"training {folder / 'train'}: {e}") from None
    if model_dir is None:
        raise ConfigError(f"{folder / 'train'}: training did not finish every expert")
    prob, experts, errors, _ = score_checkpoint(model_dir, test["path"].tolist(), cfg.device)
    scored = test[["path", "label", "source", "origin"]].copy()
    scored.insert(0, "held_out", family)
    scored["probability"] = prob
    for i in range(experts.shape[1]):
        scored[f"expert_{i}"] = experts[:, i]
    scored["error"] = errors
    return scored


def family_row(family: str, scored: pd.DataFrame, cfg: LeaveOneOutConfig) -> dict[str, Any]:
    from deepfake_moe.evaluate.metrics import binary_metrics

    ok = scored["error"] == ""
    y, s = scored.loc[ok, "label"].to_numpy(), scored.loc[ok, "probability"].to_numpy(float)
    m = binary_metrics(y, s, 0.5, (0.01,), cfg.n_bootstrap, cfg.seed)
    ci = m.auc.ci95 or (np.nan, np.nan)
    return {"family": family, "fakes": int((y == 1).sum()), "reals": int((y == 0).sum()), "failed": int((~ok).sum()),
            "auc": m.auc.value, "auc_low": ci[0], "auc_high": ci[1], "ap": m.ap.value,
            "tpr_at_fpr_1pct": m.tpr_at_fpr[0.01].value,
            "mean_p_fake": float(s[y == 1].mean()), "mean_p_real": float(s[y == 0].mean())}


def run_leave_one_out(cfg: LeaveOneOutConfig, out: str | os.PathLike) -> pd.DataFrame:
    """Every fold, then the table (results.md/csv/json) and every test score (scores.csv)."""
    import pandas as pd

    from deepfake_moe.data.manifest import read_manifest
    from deepfake_moe.evaluate.report import write_json, write_markdown
    from deepfake_moe.io import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "experiment.yaml")
    corpus = read_manifest(cfg.manifest, root=cfg.root)
    families = families_of(corpus, cfg)
    folds = {f: run_fold(cfg, corpus, f, out / "folds" / f) for f in families}
    scores = pd.concat(folds.values(), ignore_index=True)
    with atomic_path(out / "scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    table = pd.DataFrame([family_row(f, s, cfg) for f, s in folds.items()])
    with atomic_path(out / "results.csv") as tmp:
        table.to_csv(tmp, index=False)
    summary = {"manifest": str(cfg.manifest), "experts": cfg.experts, "test_real_fraction": cfg.test_real_fraction,
               "results": table.to_dict("records")}
    write_json(summary, out / "results.json")
    write_markdown(results_markdown(table, cfg), out / "results.md")
    return table


def results_markdown(table: pd.DataFrame, cfg: LeaveOneOutConfig) -> str:
    experts = ", ".join(f"`{e['backbone']}`" for e in cfg.experts)
    lines = [
        "# Leave one generator out",
        "",
        f"Each row: the model ({len(cfg.experts)} expert(s): {experts}) trained on the corpus without that"
        " fake family, scored on all of that family's fakes against the same test reals (real origins held out"
        " of every training)"
        + (", drawing reals and fakes alike from every size and fine-detail stratum (`data.balance_bins`)"
           if cfg.train.get("data", {}).get("balance_bins") else "") + ". Brackets: 95% bootstrap interval.",
        "",
        "| held-out family | fakes | reals | AUC [95% CI] | AP | TPR@FPR=1% | mean P(fake): fakes / reals |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        ci = f" [{r['auc_low']:.3f}, {r['auc_high']:.3f}]" if np.isfinite(r["auc_low"]) else ""
        lines.append(f"| {r['family']} | {r['fakes']} | {r['reals']} | {r['auc']:.4f}{ci} | {r['ap']:.4f} | "
                     f"{r['tpr_at_fpr_1pct'] * 100:.1f}% | {r['mean_p_fake']:.3f} / {r['mean_p_real']:.3f} |")
    return "\n".join(lines) + "\n"


def register(sub) -> None:
    p = sub.add_parser(
        "leave-one-out",
        help="AUC and TPR@1%%FPR on each fake family, by a model trained without it",
        description="For each fake family of the corpus, train the config's model recipe without that family and "
        "score the family's fakes against held-out reals; writes results.md/csv/json and scores.csv.",
    )
    p.add_argument("config", help="experiment YAML (see configs/experiment_leave_one_out.yaml)")
    p.add_argument("--out", help="run folder (default: the config's `out`)")
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    from deepfake_moe.evaluate.experiment import run_experiment

    return run_experiment(args, load_config, run_leave_one_out)
