import csv
import io
import subprocess
import sys

import numpy as np
import pytest

from deepfake_moe.cli import main
from helpers import tiny_checkpoint, write_image


def _broken_folder(root):
    write_image(root / "good1.jpg", seed=1)
    write_image(root / "sub" / "good2.png", seed=2)
    write_image(root / "sub" / "cmyk.jpg", seed=3, mode="CMYK")
    jpg = (root / "good1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    (root / "readme.txt").write_text("ignored: not an image extension")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), threshold=0.5)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_with_broken_files_gives_one_row_each_and_exit_1(tmp_path, ckpt):
    folder = _broken_folder(tmp_path / "imgs")
    out = tmp_path / "pred.csv"
    code = main(["predict", str(folder), "--weights", str(ckpt), "--out", str(out), "--batch-size", "2", "--workers", "0"])
    assert code == 1
    rows = {r["path"].split("/")[-1]: r for r in _read(out)}
    assert set(rows) == {"good1.jpg", "good2.png", "cmyk.jpg", "truncated.jpg", "empty.jpg", "notes.jpg"}
    for name in ("good1.jpg", "good2.png", "cmyk.jpg"):
        p = float(rows[name]["probability"])
        assert 0.0 <= p <= 1.0 and rows[name]["error"] == ""
        assert rows[name]["verdict"] == ("fake" if p >= 0.5 else "real")
    assert "empty" in rows["empty.jpg"]["error"]
    assert "truncated" in rows["truncated.jpg"]["error"]
    assert "not an image" in rows["notes.jpg"]["error"]
    assert all(rows[n]["probability"] == "" for n in ("empty.jpg", "truncated.jpg", "notes.jpg"))
    assert not (tmp_path / "pred.csv.partial").exists()


def test_all_good_exits_0_and_same_scores_any_batch_size(tmp_path, ckpt):
    folder = tmp_path / "imgs"
    for i in range(5):
        write_image(folder / f"{i}.jpg", size=(30 + i, 40), seed=i)
    outs = []
    for bs in (1, 4):
        out = tmp_path / f"p{bs}.csv"
        assert main(["predict", str(folder), "--weights", str(ckpt), "--out", str(out), "--batch-size", str(bs)]) == 0
        outs.append(np.array([float(r["probability"]) for r in _read(out)]))
    assert np.abs(outs[0] - outs[1]).max() < 1e-5


def test_challenge_label_file_and_format(tmp_path, ckpt):
    root = tmp_path / "valset"
    write_image(root / "a.jpg", seed=1)
    write_image(root / "b.jpg", seed=2)
    labels = tmp_path / "valset_label.txt"
    labels.write_text("img_name,target\na.jpg,0\nb.jpg,1\nmissing.jpg,1\n")
    out = tmp_path / "sub.csv"
    code = main(["predict", str(labels), "--weights", str(ckpt), "--format", "challenge", "--out", str(out)])
    assert code == 1
    lines = out.read_text().splitlines()
    assert lines[0] == "img_name,y_pred"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["a.jpg", "b.jpg", "missing.jpg"]
    assert lines[3] == "missing.jpg,"
    # --root overrides where names resolve
    out2 = tmp_path / "sub2.csv"
    labels2 = tmp_path / "list.csv"
    labels2.write_text("img_name\na.jpg\n")
    assert main(["predict", str(labels2), "--root", str(root), "--weights", str(ckpt), "--format", "challenge", "--out", str(out2)]) == 0


def test_resume_keeps_rows_of_an_interrupted_run(tmp_path, ckpt):
    folder = tmp_path / "imgs"
    for i in range(4):
        write_image(folder / f"{i}.jpg", seed=i)
    out = tmp_path / "pred.csv"
    partial = tmp_path / "pred.csv.partial"
    # An interrupted run left two rows, one with a marker score no model would give.
    partial.write_text(f"key,path,probability,verdict,threshold,uncertainty,error\n"
                       f"{folder}/0.jpg,{folder}/0.jpg,0.123456,real,0.5,,\n")
    assert main(["predict", str(folder), "--weights", str(ckpt), "--out", str(out), "--resume"]) == 0
    rows = _read(out)
    assert [r["path"].split("/")[-1] for r in rows] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert rows[0]["probability"] == "0.123456"
    assert not partial.exists()


def test_per_expert_columns_average_to_probability(tmp_path, ckpt, capsys):
    write_image(tmp_path / "a.png", seed=5)
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(ckpt), "--per-expert"]) == 0
    row = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))[0]
    assert abs((float(row["expert_0"]) + float(row["expert_1"])) / 2 - float(row["probability"])) < 1e-5


def test_glob_and_missing_file(tmp_path, ckpt, capsys):
    for i in range(3):
        write_image(tmp_path / f"g{i}.png", seed=i)
    code = main(["predict", str(tmp_path / "g*.png"), str(tmp_path / "nope.jpg"), "--weights", str(ckpt)])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 1 and len(rows) == 4 and rows[-1]["error"] == "file not found"


def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "nothing")]) == 2
    assert "no such file" in capsys.readouterr().err
    monkeypatch.setenv("DEEPFAKE_MOE_DEFAULT_MODEL", str(tmp_path / "absent"))
    assert main(["predict", str(tmp_path / "a.png")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_interactive_prompt(tmp_path, ckpt, monkeypatch, capsys):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "tiny.png", size=(8, 8))
    answers = iter([str(tmp_path / "a.png"), str(tmp_path / "gone.png"), str(tmp_path / "tiny.png"), ""])
    monkeypatch.setattr("sys.stdin", type("TTY", (), {"isatty": lambda self: True})())
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["predict", "--weights", str(ckpt)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(tmp_path / "a.png") + ": ") and out[0].split()[-1] in ("real", "fake")
    assert "file not found" in out[1]
    assert "8 px, smaller than the model's input of 32 px" in out[2] and "smaller" not in out[0]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_images_smaller_than_the_model_input_are_warned_about_once(tmp_path, ckpt, capsys, workers):
    """The decoded size travels from the decoding worker (or this process) to one warning with a count."""
    write_image(tmp_path / "big.png", size=(64, 48), seed=1)
    write_image(tmp_path / "tiny.png", size=(8, 8), seed=2)
    write_image(tmp_path / "thin.png", size=(100, 20), seed=3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path), "--weights", str(ckpt), "--workers", workers, "--out", str(out),
                 "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("smaller than the model's input") == 1
    assert "2 of 4 input(s) are smaller than the model's input (32 px)" in err
    assert f"{tmp_path / 'tiny.png'}: 8 px" in err and f"{tmp_path / 'thin.png'}: 20 px" in err
    assert "big.png" not in err and len(_read(out)) == 4
    assert main(["predict", str(tmp_path / "big.png"), "--weights", str(ckpt), "--workers", workers]) == 0
    assert "smaller" not in capsys.readouterr().err


def test_console_script_reads_paths_from_stdin(tmp_path, ckpt):
    write_image(tmp_path / "a.png")
    proc = subprocess.run(
        [sys.executable, "-m", "deepfake_moe.cli", "predict", "--weights", str(ckpt), "--format", "challenge"],
        input=f"{tmp_path / 'a.png'}\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "img_name,y_pred" and len(proc.stdout.splitlines()) == 2


def test_threshold_column_progress_bar_and_warnings(tmp_path, ckpt, capsys):
    """Each row names the threshold its verdict was made at; an empty folder gets a row; the progress bar
    reaches the end when written to a file."""
    folder = tmp_path / "imgs"
    for i in range(9):
        write_image(folder / f"{i}.png", size=(40, 40), seed=i)
    write_image(folder / "tiny.png", size=(8, 8))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), str(tmp_path / "empty"), "--weights", str(ckpt), "--out", str(out),
                 "--batch-size", "3", "--workers", "0"]) == 1
    rows = _read(out)
    assert list(rows[0]) == ["path", "probability", "verdict", "threshold", "uncertainty", "error"]
    assert all(r["threshold"] == "0.500000" for r in rows[:10])
    assert rows[-1]["path"] == str(tmp_path / "empty") and rows[-1]["error"] == "folder holds no image files"
    assert rows[-1]["threshold"] == "" and rows[-1]["probability"] == ""
    err = capsys.readouterr().err
    assert "10/10" in err  # every scored image counted (once stopped at the last batch's start)
    assert "1 of 11 input(s) could not be scored" in err and "folder holds no image files" in err


def test_challenge_format_reports_failures_on_stderr(tmp_path, ckpt, capsys):
    write_image(tmp_path / "valset" / "a.jpg")
    labels = tmp_path / "valset_label.txt"
    labels.write_text("img_name,target\na.jpg,0\nb.jpg,1\nc.jpg,1\n")
    assert main(["predict", str(labels), "--root", str(tmp_path / "wrong"), "--weights", str(ckpt),
                 "--format", "challenge"]) == 1
    err = capsys.readouterr().err
    assert "3 of 3 input(s) could not be scored (their y_pred is left empty)" in err
    assert "a.jpg: file not found" in err and "error column" not in err


def test_resume_refuses_other_inputs_and_ctrl_c_names_the_partial_file(tmp_path, ckpt, capsys, monkeypatch):
    from deepfake_moe.infer.predictor import Predictor

    folder = tmp_path / "imgs"
    for i in range(4):
        write_image(folder / f"{i}.jpg", seed=i)
    out = tmp_path / "pred.csv"
    partial = tmp_path / "pred.csv.partial"
    partial.write_text("key,path,probability,verdict,threshold,uncertainty,error\n"
                       "/else/x.jpg,/else/x.jpg,0.1,real,0.5,,\n")
    assert main(["predict", str(folder), "--weights", str(ckpt), "--out", str(out), "--resume"]) == 2
    assert "1 of the 1 row(s) in" in capsys.readouterr().err and partial.exists()
    partial.write_text("key,path,probability,verdict,error\n")  # written by an older version: other columns
    assert main(["predict", str(folder), "--weights", str(ckpt), "--out", str(out), "--resume"]) == 2
    assert "has columns" in capsys.readouterr().err

    real_iter = Predictor.iter_predict

    def interrupted(self, paths):
        rows = real_iter(self, paths)
        yield next(rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "iter_predict", interrupted)
    assert main(["predict", str(folder), "--weights", str(ckpt), "--out", str(out), "--batch-size", "1",
                 "--per-expert", "--no-faces"]) == 130
    err = capsys.readouterr().err
    assert f"1 of 4 row(s) are kept in {partial}" in err
    command = err.split("to finish, run:\n")[1].splitlines()[0].strip()
    assert command.startswith("deepfake-moe predict ") and f"--weights {ckpt}" in command
    monkeypatch.setattr(Predictor, "iter_predict", real_iter)
    assert main(command.split()[1:]) == 0  # the per-expert columns match: the partial rows are kept
    assert "resuming: 1 of 4 row(s)" in capsys.readouterr().err
    rows = _read(out)
    assert len(rows) == 4 and all(r["expert_0"] for r in rows)


def test_resume_command_repeats_every_option_that_changes_rows():
    """Ctrl-C's hint parses back to the interrupted run's options: faces, videos, shard, format, decoding."""
    import shlex

    from deepfake_moe.cli import build_parser
    from deepfake_moe.infer.commands import _resume_command

    given = ["predict", "clips/a b.mp4", "imgs", "--out", "p.csv", "--faces", "--max-faces", "3", "--frames", "4",
             "--top-k", "2", "--shard", "1/2", "--per-expert", "--format", "challenge", "--root", "r",
             "--decode-timeout", "3.5", "--max-pixels", "1000", "--weights", "w", "--runtime", "torch",
             "--video-timeout", "9", "--no-progress"]
    parser = build_parser()
    args = parser.parse_args(given)
    command = _resume_command(args)
    assert command.startswith("deepfake-moe predict 'clips/a b.mp4' imgs --out p.csv --resume ")
    resumed = vars(parser.parse_args(shlex.split(command)[1:]))
    assert resumed.pop("resume") is True
    expected = vars(args)
    expected.pop("resume")
    assert resumed == expected
    off = parser.parse_args(["predict", "x.jpg", "--out", "p.csv", "--no-faces", "--every-seconds", "0.5"])
    assert _resume_command(off) == "deepfake-moe predict x.jpg --out p.csv --resume --no-faces --every-seconds 0.5"


def test_closed_pipe_exits_quietly(tmp_path, ckpt):
    for i in range(40):
        write_image(tmp_path / "imgs" / f"{i:02d}.png", size=(16, 16), seed=i)
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m deepfake_moe.cli predict {tmp_path / 'imgs'} --weights {ckpt} "
         "--batch-size 1 --workers 0 --no-progress | head -n 2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_files_follow_the_umask(tmp_path, ckpt):
    import os

    write_image(tmp_path / "a.png")
    old = os.umask(0o022)
    try:
        assert main(["predict", str(tmp_path / "a.png"), "--weights", str(ckpt), "--out", str(tmp_path / "p.csv")]) == 0
        os.umask(0o027)
        assert main(["predict", str(tmp_path / "a.png"), "--weights", str(ckpt), "--out", str(tmp_path / "q.csv")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "p.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "q.csv").stat().st_mode & 0o777 == 0o640
