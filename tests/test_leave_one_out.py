"""`experiment leave-one-out` end to end on a tiny corpus: one model per held-out fake family."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from deepfake_moe.cli import main
from deepfake_moe.config import ConfigError
from deepfake_moe.evaluate.leave_one_out import load_config
from test_experiment import _corpus

TRAIN = {
    "data": {"input_size": 32, "num_workers": 0, "augment": {"enabled": False}},
    "optim": {"max_steps": 2, "batch_size": 4, "lr": 0.001, "device": "cpu"},
    "checkpoint": {"every_steps": 0},
    "eval": {"batch_size": 16},
}


def _config(tmp_path, **over):
    cfg = {"manifest": str(_corpus(tmp_path / "corpus")), "families": ["swap", "blur"], "test_real_fraction": 0.25,
           "experts": [{"backbone": "test_efficientnet"},  # a timm expert beside an NPR expert on native crops
                       {"backbone": "npr_test", "split": 1, "preprocess": {"input_size": 24, "mode": "native", "tiles": 2},
                        "fake_sources": ["swap", "blur"]}],  # each fold drops its held-out family from the list
           "n_bootstrap": 20, "device": "cpu", "train": TRAIN, **over}
    path = tmp_path / "loo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_each_family_is_scored_by_a_model_that_never_saw_it(tmp_path):
    out = tmp_path / "run"
    assert main(["experiment", "leave-one-out", str(_config(tmp_path)), "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [r["family"] for r in summary["results"]] == ["swap", "blur"]
    for r in summary["results"]:
        assert r["fakes"] == 16 and r["reals"] == 4 and 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["tpr_at_fpr_1pct"] <= 1.0
    for family in ("swap", "blur"):
        pool = pd.read_parquet(out / "folds" / family / "data" / "pool.parquet")
        assert family not in set(pool["source"])  # the model never saw the family it is scored on
        test_reals = pd.read_parquet(out / "folds" / family / "data" / "test.parquet").query("label == 0")
        assert not set(pool["origin"]) & set(test_reals["origin"])
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 40 and set(scores["held_out"]) == {"swap", "blur"}
    # The mixture's probability is the mean of its two experts.
    assert np.allclose(scores[["expert_0", "expert_1"]].mean(axis=1), scores["probability"], atol=1e-6)
    # The same test reals in every fold, so the rows compare.
    reals = scores[scores["label"] == 0].groupby("held_out")["path"].apply(frozenset)
    assert reals["swap"] == reals["blur"]
    assert "| swap | 16 | 4 |" in (out / "results.md").read_text()
    # Rerunning reuses the finished folds (no training: the experts' weights stay as they were).
    best = out / "folds" / "swap" / "train" / "experts" / "expert_0" / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    assert main(["experiment", "leave-one-out", str(_config(tmp_path)), "--out", str(out)]) == 0
    assert best.stat().st_mtime_ns == stamp


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not fake sources"):
        from deepfake_moe.data.manifest import read_manifest
        from deepfake_moe.evaluate.leave_one_out import families_of

        cfg = load_config(_config(tmp_path, families=["diffusion"]))
        families_of(read_manifest(cfg.manifest), cfg)
    with pytest.raises(ConfigError, match="set by the experiment"):
        load_config(_config(tmp_path, train={"experts": []}))
    with pytest.raises(ConfigError, match="lr2"):
        load_config(_config(tmp_path, train={"optim": {"lr2": 1}}))



def test_balanced_folds_train_on_a_measured_corpus(tmp_path, capsys):
    config = _config(tmp_path, families=["swap"], experts=[{"backbone": "test_efficientnet"}],
                     train={**TRAIN, "data": {**TRAIN["data"], "balance_bins": 2}})
    # an unmeasured corpus is refused before any training
    assert main(["experiment", "leave-one-out", str(config), "--out", str(tmp_path / "unmeasured")]) != 0
    assert "lacks ['detail', 'short_side', 'detail_view']; measure the images with `deepfake-moe balance" in capsys.readouterr().err
    assert not (tmp_path / "unmeasured" / "folds" / "swap" / "train" / "experts").exists()
    corpus = yaml.safe_load(config.read_text())["manifest"]
    assert main(["balance", corpus, "-o", corpus, "--input-size", "32", "--bins", "2", "--no-progress"]) == 0
    out = tmp_path / "run"
    assert main(["experiment", "leave-one-out", str(config), "--out", str(out)]) == 0
    pool = pd.read_parquet(out / "folds" / "swap" / "data" / "pool.parquet")
    assert "swap" not in set(pool["source"]) and pool["detail"].notna().all()
    assert "alike from every size and fine-detail stratum" in (out / "results.md").read_text()
