"""`prepare`: deterministic, independent of worker count, resumable after SIGKILL, bad inputs listed and skipped."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from deepfake_moe.augment import commands
from deepfake_moe.augment.prepare import ERRORS, JOURNAL, MANIFEST, FamilySpec, PrepareConfig, run_prepare
from deepfake_moe.config import ConfigError, load_yaml, save_yaml
from deepfake_moe.data.manifest import ManifestError

GENERATED = ["path", "label", "source", "origin", "params"]

# Families defined outside the package run in-process (workers: 0); written to a module so that a
# killed subprocess and the test process register exactly the same code.
TEST_FAMILIES = textwrap.dedent(
    """
    import os
    import time
    from deepfake_moe.augment.edit import self_blend
    from deepfake_moe.augment.registry import FAMILIES, register

    def slow_blend(rgb, rng, ctx):
        time.sleep(0.15)  # long enough to kill the run midway
        return self_blend(rgb, rng, ctx)

    def fails_on_r2(rgb, rng, ctx):
        if rgb[0, 0, 0] == 2:  # the image made with marker 2
            raise RuntimeError("injected failure")
        return self_blend(rgb, rng, ctx)

    def crashes_on_r1(rgb, rng, ctx):
        if rgb[0, 0, 0] == 1:
            os._exit(3)  # the worker process dies, as in a segfault of a native library
        return self_blend(rgb, rng, ctx)

    for name, fn in [("test_slow_blend", slow_blend), ("test_fails_on_r2", fails_on_r2), ("test_crashes_on_r1", crashes_on_r1)]:
        if name not in FAMILIES:
            register(name, label=1, kind="edit")(fn)
    """
)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Four real images, one corrupt 'real' and one fake row, listed in a CSV manifest."""
    folder = tmp_path / "in"
    (folder / "imgs").mkdir(parents=True)
    rows = []
    for i in range(4):
        rng = np.random.default_rng(i)
        img = cv2.GaussianBlur((rng.random((40, 48, 3)) * 255).astype(np.uint8), (0, 0), 2)
        img[0, 0] = i  # a marker the failing test family looks for (PNG keeps it exact)
        cv2.imwrite(str(folder / "imgs" / f"r{i}.png"), img)
        rows.append((f"imgs/r{i}.png", 0, "real"))
    (folder / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
    rows.append(("imgs/broken.jpg", 0, "real"))
    cv2.imwrite(str(folder / "imgs" / "f0.png"), np.zeros((40, 48, 3), np.uint8))
    rows.append(("imgs/f0.png", 1, "somegan"))
    pd.DataFrame(rows, columns=["path", "label", "source"]).to_csv(folder / "manifest.csv", index=False)
    (tmp_path / "testfamilies.py").write_text(TEST_FAMILIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    import testfamilies  # noqa: F401 - registers the test families in this process

    return folder / "manifest.csv"


def config(inputs, out, families, workers=0):
    return PrepareConfig(input=str(inputs), out_dir=str(out), families=families, seed=3, workers=workers, jpeg_quality=[70, 90])


def generated_rows(out):
    m = pd.read_parquet(Path(out) / MANIFEST)
    return m[m["path"].str.startswith("images/")][GENERATED].reset_index(drop=True)


def assert_same_output(a, b, errors=True, skip_source=None):
    ra, rb = generated_rows(a), generated_rows(b)
    rb = rb[rb["source"] != skip_source].reset_index(drop=True)
    pd.testing.assert_frame_equal(ra, rb)
    for rel in ra["path"]:
        assert (Path(a) / rel).read_bytes() == (Path(b) / rel).read_bytes(), rel
    if errors:
        pd.testing.assert_frame_equal(pd.read_csv(Path(a) / ERRORS), pd.read_csv(Path(b) / ERRORS))


NO_FACES = {"faces": False}  # random-shape masks: no face models to load in every worker process
BUILTIN = [FamilySpec("self_blend", 2, NO_FACES), FamilySpec("splice", 1, NO_FACES), FamilySpec("real_jpeg"), FamilySpec("real_reencode")]


def test_output_manifest_worker_count_independence_and_worker_crash(inputs, tmp_path):
    m = run_prepare(config(inputs, tmp_path / "a", BUILTIN, workers=0), progress=False)
    # 4 readable reals x 5 outputs, plus the 5 input rows that can be read (the broken one is dropped)
    gen = m[m["path"].str.contains("/images/")]
    assert len(gen) == 20 and len(m) == 25
    assert gen.groupby("source").size().to_dict() == {"self_blend": 8, "splice": 4, "real_jpeg": 4, "real_reencode": 4}
    assert (gen["label"] == gen["source"].map({"self_blend": 1, "splice": 1, "real_jpeg": 0, "real_reencode": 0})).all()
    reals = m[m["source"] == "real"]
    assert set(gen["origin"]) == set(reals["origin"]) and not reals["path"].str.contains("broken").any()
    assert m[m["label"] == 1]["source"].tolist()[0] == "somegan"  # fake inputs pass through
    for path, params in zip(gen["path"], gen["params"]):
        p = json.loads(params)
        assert p["encoding"]["format"] == "jpg" and 70 <= p["encoding"]["quality"] <= 90  # one encoder for all
        assert cv2.imread(path) is not None
    splice = json.loads(gen[gen["source"] == "splice"]["params"].iloc[0])
    assert splice["family"]["donor"].startswith("imgs/r") and splice["family"]["donor"] != splice["input"]
    errors = pd.read_csv(tmp_path / "a" / ERRORS)
    assert len(errors) == 5 and errors["input"].str.endswith("broken.jpg").all()
    assert errors["error"].str.contains("ImageReadError").all()
    assert load_yaml(PrepareConfig, tmp_path / "a" / "prepare.yaml").families[0].variants == 2
    # A pool of 2 processes, tasks finishing in any order, gives byte-identical outputs; a family
    # whose worker process dies on one input (plugin module, so workers know it) loses only that task.
    crash = FamilySpec("test_crashes_on_r1", 1, NO_FACES)
    cfg = config(inputs, tmp_path / "b", BUILTIN + [crash], workers=2)
    cfg.plugins = ["testfamilies"]
    m = run_prepare(cfg, progress=False)
    assert_same_output(tmp_path / "a", tmp_path / "b", errors=False, skip_source="test_crashes_on_r1")
    assert (m["source"] == "test_crashes_on_r1").sum() == 3
    errors = pd.read_csv(tmp_path / "b" / ERRORS)
    died = errors[errors["error"].str.contains("worker process died")]
    assert died["input"].str.endswith("r1.png").tolist() == [True] and died["family"].tolist() == ["test_crashes_on_r1"]
    assert len(errors) == 5 + 1 + 1  # broken input x 6 families, the crash


def test_a_pool_that_breaks_between_submissions_loses_no_task(inputs, tmp_path, monkeypatch):
    """A worker can die while the run waits between two submissions: the next submit() raises, not a result()."""
    import concurrent.futures as cf
    from concurrent.futures.process import BrokenProcessPool

    class BreaksOnSecondSubmit(cf.ProcessPoolExecutor):
        broke = False

        def submit(self, fn, /, *args, **kwargs):
            if not BreaksOnSecondSubmit.broke and getattr(self, "submitted", 0) == 1:
                BreaksOnSecondSubmit.broke = True
                raise BrokenProcessPool("a worker died")
            self.submitted = getattr(self, "submitted", 0) + 1
            return super().submit(fn, *args, **kwargs)

    run_prepare(config(inputs, tmp_path / "a", BUILTIN, workers=0), progress=False)
    monkeypatch.setattr(cf, "ProcessPoolExecutor", BreaksOnSecondSubmit)
    run_prepare(config(inputs, tmp_path / "b", BUILTIN, workers=2), progress=False)
    assert BreaksOnSecondSubmit.broke
    assert_same_output(tmp_path / "a", tmp_path / "b")


def test_killed_run_resumes_to_the_same_output(inputs, tmp_path):
    families = [FamilySpec("test_slow_blend", 3, NO_FACES), FamilySpec("splice", 1, NO_FACES), FamilySpec("real_jpeg")]
    run_prepare(config(inputs, tmp_path / "clean", families), progress=False)

    killed = tmp_path / "killed"
    save_yaml(config(inputs, killed, families), tmp_path / "killed.yaml")
    script = (
        "import sys, testfamilies\n"
        "from deepfake_moe.augment.prepare import PrepareConfig, run_prepare\n"
        "from deepfake_moe.config import load_yaml\n"
        "run_prepare(load_yaml(PrepareConfig, sys.argv[1]), progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "killed.yaml")], env=env)
    journal = killed / JOURNAL
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = journal.read_text().count("\n")
    assert 6 <= finished < 25
    assert not (killed / MANIFEST).exists()
    with open(journal, "a") as f:
        f.write('{"key": "imgs/r3.png|test_slow')  # a line torn by the kill

    m = run_prepare(config(inputs, killed, families), progress=False)
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 25  # nothing redone twice, nothing lost
    assert_same_output(tmp_path / "clean", killed)
    assert len(m) == 20 + 5
    # running again once complete changes nothing
    run_prepare(config(inputs, killed, families), progress=False)
    assert_same_output(tmp_path / "clean", killed)


def test_failing_family_is_listed_and_skipped(inputs, tmp_path):
    families = [FamilySpec("test_fails_on_r2"), FamilySpec("real_noise")]
    m = run_prepare(config(inputs, tmp_path / "o", families), progress=False)
    errors = pd.read_csv(tmp_path / "o" / ERRORS)
    injected = errors[errors["error"].str.contains("injected failure")]
    assert injected["input"].str.endswith("r2.png").tolist() == [True]
    assert len(m[m["source"] == "test_fails_on_r2"]) == 3 and len(m[m["source"] == "real_noise"]) == 4
    # failures are final for a resumed run unless asked to retry
    journal_lines = (tmp_path / "o" / JOURNAL).read_text().count("\n")
    run_prepare(config(inputs, tmp_path / "o", families), progress=False)
    assert (tmp_path / "o" / JOURNAL).read_text().count("\n") == journal_lines
    run_prepare(config(inputs, tmp_path / "o", families), progress=False, retry_errors=True)
    assert len(pd.read_csv(tmp_path / "o" / ERRORS)) == len(errors)  # still failing, listed once


def test_resume_refuses_changed_config_or_inputs_and_remakes_deleted_outputs(inputs, tmp_path):
    run_prepare(config(inputs, tmp_path / "o", [FamilySpec("real_blur")]), progress=False)
    with pytest.raises(ConfigError, match="different config"):
        run_prepare(config(inputs, tmp_path / "o", [FamilySpec("real_blur", variants=2)]), progress=False)
    m = run_prepare(config(inputs, tmp_path / "o", [FamilySpec("real_blur")], workers=3), progress=False)  # fine
    # an output deleted after it was made is made again, identical
    victim = Path(m[m["source"] == "real_blur"]["path"].iloc[0])
    before = victim.read_bytes()
    victim.unlink()
    run_prepare(config(inputs, tmp_path / "o", [FamilySpec("real_blur")]), progress=False)
    assert victim.read_bytes() == before
    # a changed input list would give other donors and ids: refused too
    rows = pd.read_csv(inputs)
    rows.iloc[1:].to_csv(inputs, index=False)
    with pytest.raises(ConfigError, match="different list of real inputs"):
        run_prepare(config(inputs, tmp_path / "o", [FamilySpec("real_blur")]), progress=False)


def test_bad_configs_are_clear_errors(inputs, tmp_path):
    with pytest.raises(ConfigError, match="unknown augmentation family"):
        run_prepare(config(inputs, tmp_path / "o", [FamilySpec("no_such_family")]), progress=False)
    with pytest.raises(ConfigError, match="jpeg_quality"):
        cfg = config(inputs, tmp_path / "o", [FamilySpec("real_blur")])
        cfg.jpeg_quality = [90, 70]
        run_prepare(cfg, progress=False)
    # a listed input that does not exist stops the run before any task or output
    (inputs.parent / "imgs" / "r2.png").unlink()
    with pytest.raises(ManifestError, match=r"1 of 6 file\(s\) listed in .*manifest.csv do not exist:\n  .*r2.png"):
        run_prepare(config(inputs, tmp_path / "o", [FamilySpec("real_blur")]), progress=False)
    assert not (tmp_path / "o").exists()


def test_prepare_command(inputs, tmp_path, capsys):
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(
        f"input: {inputs}\nout_dir: {tmp_path / 'out'}\nimage_format: png\n"
        "families:\n  - name: masked_fill\n    options: {fills: [black]}\n  - name: real_resize\n"
    )
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", str(cfg), "--workers", "0", "--no-progress"])
    assert args.func(args) == 1  # the broken input makes it a partial success
    captured = capsys.readouterr()
    assert "masked_fill" in captured.out and "broken.jpg" not in captured.out and "errors.csv" in captured.err
    m = pd.read_parquet(tmp_path / "out" / MANIFEST)
    fills = m[m["source"] == "masked_fill"]
    assert fills["path"].str.endswith(".png").all()
    assert all(json.loads(p)["family"]["fill"] == "black" for p in fills["params"])
    args = parser.parse_args(["families"])
    assert args.func(args) == 0 and "self_blend" in capsys.readouterr().out


def test_max_side_and_webp_output(inputs, tmp_path):
    cfg = config(inputs, tmp_path / "o", [FamilySpec("real_reencode"), FamilySpec("retouch", 1, NO_FACES)])
    cfg.max_side, cfg.image_format, cfg.include_inputs = 24, "webp", False
    m = run_prepare(cfg, progress=False)
    assert len(m) == 8 and (m["label"] == m["source"].map({"real_reencode": 0, "retouch": 1})).all()
    for path, params in zip(m["path"], m["params"]):
        assert path.endswith(".webp")
        img = cv2.imread(path)
        assert img.shape[:2] == (20, 24)  # 40x48 shrunk to fit 24, aspect kept
        assert 70 <= json.loads(params)["encoding"]["quality"] <= 90


def test_output_chain_picks_format_and_size_per_image_and_resumes(inputs, tmp_path):
    cfg = config(inputs, tmp_path / "o", [FamilySpec("real_reencode", 6), FamilySpec("splice", 6, NO_FACES)])
    cfg.output_chain, cfg.include_inputs = {"min_side": 16, "downscale_p": 0.6, "encoders": {"pil_jpeg": 1, "cv2_jpeg": 1, "png": 1}}, False
    m = run_prepare(cfg, progress=False)
    encoders = set()
    for path, params in zip(m["path"], m["params"]):
        enc = json.loads(params)["encoding"]
        encoders.add(enc["encoder"])
        assert path.endswith(".png" if enc["encoder"] == "png" else ".jpg")
        img = cv2.imread(path)
        assert img.shape[1::-1] == tuple(enc["size"]) and img.shape[0] <= 40 and img.shape[1] <= 48
    assert encoders == {"pil_jpeg", "cv2_jpeg", "png"} and m["path"].map(lambda p: cv2.imread(p).shape).nunique() > 3
    again = run_prepare(cfg, progress=False)  # resumed from the journal: the files of the chosen formats
    pd.testing.assert_frame_equal(m, again)
    bad = config(inputs, tmp_path / "p", [FamilySpec("real_reencode")])
    bad.output_chain = {"scale": [0.5, 2.0]}
    with pytest.raises(ConfigError, match="downscales only"):
        run_prepare(bad, progress=False)
