"""The same `train` command under torchrun: 2 CPU processes (gloo) end with identical weights."""

import os
import subprocess
import sys

import yaml

from deepfake_moe.config import save_yaml
from deepfake_moe.model.checkpoint import load_checkpoint
from test_train import make_split_manifest, tiny_config


def test_torchrun_two_gloo_processes(tmp_path):
    manifest = make_split_manifest(tmp_path / "data")
    cfg = tiny_config(manifest, batch_size=4, grad_accum=2, max_steps=2)
    cfg.experts = cfg.experts[:1]
    cfg.checkpoint.every_steps = 1
    save_yaml(cfg, tmp_path / "cfg.yaml")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "deepfake_moe.cli", "train", str(tmp_path / "cfg.yaml"), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((out / "experts" / "expert_0" / "result.yaml").read_text())
    assert result["replicas_identical"] is True
    assert result["steps"] == 2
    mixture, mcfg = load_checkpoint(out / "model")
    assert len(mixture.experts) == 1
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len([ln for ln in lines[1:] if ln.split(",")[4]]) == 2  # one row per step, rank 0 only
