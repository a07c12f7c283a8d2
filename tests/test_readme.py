"""The README's "Train your own" block, run as written, line by line, in a temporary folder.

The commands are read from README.md, so the documentation and this test cannot drift apart. A
line ending in `# readme-test: skip (reason)` is not run (it needs hardware or data a CI machine
lacks); `VAR=value ...` lines set variables for the lines after them.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"#\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*$")
ASSIGNMENTS = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s*)+$")


def readme_block(title: str = "## Train your own") -> list[str]:
    """The lines of the first ```bash block under `title`."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(title):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block under {title!r}"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def plan(lines: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(variables, commands to run, skipped lines) from the block's lines."""
    variables, run, skipped = {}, [], []
    for line in lines:
        code = line.split(" #", 1)[0].strip()
        if SKIP.search(line):
            skipped.append(line)
        elif ASSIGNMENTS.match(code):
            variables.update(word.split("=", 1) for word in code.split())
        else:
            run.append(code)
    return variables, run, skipped


def test_skip_convention():
    variables, run, skipped = plan([
        "A=1 B=x/y.yaml   # settings",
        "deepfake-moe train $B --out r   # comment",
        "torchrun --nproc_per_node 8 -m deepfake_moe.cli train $B  # readme-test: skip (8 GPUs)",
    ])
    assert variables == {"A": "1", "B": "x/y.yaml"}
    assert run == ["deepfake-moe train $B --out r"]
    assert len(skipped) == 1
    # the README skips only what a CI machine cannot run, each with its reason
    _, run, skipped = plan(readme_block())
    assert [SKIP.search(s).group("reason") for s in skipped] == ["8 GPUs, DDP", "offline corpus"]
    assert any(c.startswith("deepfake-moe train ") for c in run)
    assert any(c.startswith("deepfake-moe predict ") for c in run)


@pytest.mark.slow
def test_train_your_own_block_runs_as_written(tmp_path):
    variables, commands, _ = plan(readme_block())
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    bin_dir = tmp_path / "bin"  # `deepfake-moe` runs this checkout's code, whatever is installed
    bin_dir.mkdir()
    shim = bin_dir / "deepfake-moe"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m deepfake_moe.cli "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, **variables, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}  # 1 thread: tests share 2 cores
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"README line failed ({done.returncode}): {command}\n{done.stderr[-3000:]}"

    # train read every image of the split manifest: none skipped, none missing
    run = tmp_path / "runs" / "mine"
    for result in sorted((run / "experts").glob("expert_*/result.yaml")):
        assert yaml.safe_load(result.read_text())["skipped_images"] == 0, result
    with open(run / "metrics.csv") as f:
        assert {r["skipped_images"] for r in csv.DictReader(f) if r["loss"]} == {"0"}
    # predict with the result scored every image, with the threshold calibrate fitted
    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list((tmp_path / "trainset").glob("*.png"))) > 0
    assert all(r["error"] == "" and r["verdict"] in ("real", "fake", "uncertain") for r in rows)
    model_yaml = yaml.safe_load((run / "model" / "model.yaml").read_text())
    threshold = model_yaml["threshold"]
    assert all(abs(float(r["threshold"]) - threshold) < 1e-6 for r in rows)
    # train fitted the uncertainty statistics and calibrate the uncertainty threshold: 'uncertain' exactly there
    tau = model_yaml["uncertainty_threshold"]
    assert tau is not None
    for r in rows:
        u = float(r["uncertainty"])
        if abs(u - tau) > 1e-6:  # the CSV rounds to 6 decimals
            assert (r["verdict"] == "uncertain") == (u >= tau), r
    assert (tmp_path / "reports" / "test" / "report.md").is_file()
