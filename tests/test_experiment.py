"""`experiment generalization` end to end on a tiny corpus: split, three trainings, the unseen-family table."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deepfake_moe.cli import main
from deepfake_moe.config import ConfigError
from deepfake_moe.evaluate.experiment import GeneralizationConfig, holdout_partition, load_config, train_config


def _corpus(root):
    """16 reals in two looks (dark, bright); fakes derived from each: blurred, noisy, colour-swapped (held out)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        low = 0 if i % 2 else 128
        base = rng.integers(low, low + 128, (40, 40, 3), dtype=np.uint8)
        variants = {
            "real": base,
            "blur": np.asarray(Image.fromarray(base).resize((10, 10)).resize((40, 40))),
            "noise": np.clip(base.astype(int) + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8),
            "swap": base[:, :, ::-1],
        }
        for source, arr in variants.items():
            rel = f"{source}/{i}.png"
            (root / source).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(arr)).save(root / rel)
            rows.append({"path": rel, "label": int(source != "real"), "source": source, "origin": f"r{i}"})
    pd.DataFrame(rows).to_csv(root / "corpus.csv", index=False)
    return root / "corpus.csv"


CONFIG = {
    "holdout_source": "swap",
    "test_real_fraction": 0.25,
    "backbone": "test_efficientnet",
    "pretrained": "none",
    "n_bootstrap": 20,
    "device": "cpu",
    "split": {
        "encoder": {"name": "test_efficientnet", "pretrained": "none", "size": 32, "batch_size": 16,
                    "num_workers": 0, "device": "cpu"},
        "cluster": {"k": 2, "merge_degenerate": True},
        "make_plot": False,
    },
    "train": {
        "data": {"input_size": 32, "num_workers": 0, "augment": {"enabled": False}},
        "optim": {"max_steps": 2, "batch_size": 4, "lr": 0.001, "device": "cpu"},
        "checkpoint": {"every_steps": 0},
        "eval": {"batch_size": 16},
    },
}


def test_holdout_partition_keeps_the_test_out_of_training(tmp_path):
    from deepfake_moe.data.manifest import read_manifest

    df = read_manifest(_corpus(tmp_path))
    pool, test = holdout_partition(df, "swap", 0.25, seed=0)
    assert set(test["source"]) == {"swap", "real"} and (test["source"] == "swap").sum() == 16
    test_origins = set(test.loc[test["label"] == 0, "origin"])
    assert len(test_origins) == 4
    assert "swap" not in set(pool["source"]) and not set(pool["origin"]) & test_origins
    assert len(pool) == 12 * 3  # 12 remaining origins x (real, blur, noise)
    with pytest.raises(ConfigError, match="not a fake source"):
        holdout_partition(df, "diffusion", 0.25, seed=0)


def test_config_rejects_what_the_experiment_sets(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"manifest": "m.csv", "holdout_source": "x", "train": {"experts": []}}))
    with pytest.raises(ConfigError, match="set by the experiment"):
        load_config(path)
    path.write_text(yaml.safe_dump({"manifest": "m.csv", "holdout_source": "x", "train": {"optim": {"lr2": 1}}}))
    with pytest.raises(ConfigError, match="lr2"):
        load_config(path)
    path.write_text(yaml.safe_dump({"manifest": "m.csv", "holdout_source": "x", "expert": {"split": 2}}))
    with pytest.raises(ConfigError, match="set by the experiment"):
        load_config(path)


def test_expert_settings_reach_every_expert(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"manifest": "m.csv", "holdout_source": "x", "backbone": "test_efficientnet",
                                    "expert": {"freeze": ["conv_stem"]}}))
    tcfg = train_config(load_config(path), "m.parquet", [0, 1], "clusters")
    assert [(e.split, e.freeze) for e in tcfg.experts] == [(0, ["conv_stem"]), (1, ["conv_stem"])]


def test_generalization_runs_and_writes_the_table(tmp_path):
    manifest = _corpus(tmp_path / "corpus")
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump({"manifest": str(manifest), **CONFIG}))
    assert isinstance(load_config(cfg_path), GeneralizationConfig)
    out = tmp_path / "run"
    assert main(["experiment", "generalization", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "results.json").read_text())
    kinds = [r["kind"] for r in summary["results"]]
    k = summary["splits"]
    assert k >= 2 and kinds == ["a"] + ["b"] * k + ["c"] + ["d"] * (k - 1) + ["d_mix"]
    for r in summary["results"]:
        assert 0.0 <= r["unseen_auc"] <= 1.0
    assert summary["test"] == {"fake": 16, "real": 4, "failed": 0}
    scores = pd.read_csv(out / "unseen_scores.csv")
    assert len(scores) == 20
    # The mixture is the mean of its experts, image by image.
    b_cols = [c for c in scores.columns if c.startswith("b_expert_")]
    assert np.allclose(scores[b_cols].mean(axis=1), scores["c_mixture"], atol=1e-6)
    # The control (d) is as large a mixture, of (a) and experts on other random splits.
    d_cols = ["a_random"] + [c for c in scores.columns if c.startswith("d_expert_")]
    assert len(d_cols) == len(b_cols) and np.allclose(scores[d_cols].mean(axis=1), scores["d_mixture"], atol=1e-6)
    assert "| (c) mixture of the" in (out / "results.md").read_text()
    assert (out / "roc_unseen.png").stat().st_size > 1000
    # Rerunning continues the finished run instead of training again.
    assert main(["experiment", "generalization", str(cfg_path), "--out", str(out), "--quiet"]) == 0
