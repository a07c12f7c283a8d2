import csv

import numpy as np

from deepfake_moe.cli import main
from helpers import tiny_checkpoint, write_image


def test_exported_onnx_predicts_like_pytorch(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", threshold=0.4)
    onnx_file = tmp_path / "model.onnx"
    assert main(["export-onnx", "--weights", str(ckpt), "--out", str(onnx_file)]) == 0
    for i in range(5):
        write_image(tmp_path / "imgs" / f"{i}.jpg", size=(30 + 5 * i, 36), seed=i)
    scores = []
    for weights in (ckpt, onnx_file):
        out = tmp_path / f"{weights.name}.csv"
        assert main(["predict", str(tmp_path / "imgs"), "--weights", str(weights), "--out", str(out), "--batch-size", "2"]) == 0
        rows = list(csv.DictReader(open(out)))
        scores.append(np.array([float(r["probability"]) for r in rows]))
        # the threshold travels inside the ONNX file
        assert all(r["verdict"] == ("fake" if float(r["probability"]) >= 0.4 else "real") for r in rows)
    assert np.abs(scores[0] - scores[1]).max() < 1e-5
    # an ONNX file cannot run in PyTorch: asking for it is an error, not silently ignored
    assert main(["predict", str(tmp_path / "imgs"), "--weights", str(onnx_file), "--runtime", "torch"]) == 2


def test_onnx_without_our_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    write_image(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "other.onnx")]) == 2


def test_predict_runtimes_agree_and_export_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFAKE_MOE_CACHE", str(tmp_path / "cache"))
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    scores = {}
    for runtime in ("torch", "onnxruntime", "auto"):
        out = tmp_path / f"{runtime}.csv"
        assert main(["predict", str(tmp_path / "imgs"), "--weights", str(ckpt), "--runtime", runtime, "--out", str(out)]) == 0
        scores[runtime] = np.array([float(r["probability"]) for r in csv.DictReader(open(out))])
    for runtime in ("onnxruntime", "auto"):
        assert np.abs(scores["torch"] - scores[runtime]).max() < 1e-5
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2  # one file per expert, reused by auto


def test_export_self_check_runs_in_eval_mode_and_fails_loudly(tmp_path, capsys, monkeypatch):
    """The check once ran PyTorch in training mode (batch statistics) and printed 0.70 for the default
    model while exiting 0; a trained model's batch-norm statistics are far from a batch's own."""
    import torch

    from deepfake_moe.infer import export
    from deepfake_moe.model.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(tiny_checkpoint(tmp_path / "ckpt"))
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.2, 4)
    save_checkpoint(model, config, tmp_path / "trained")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = export.export_onnx(model, config, tmp_path / "m.onnx")
    assert report["checked"] > 0 and report["max_abs_diff"] < 1e-5
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert main(["export-onnx", "--weights", str(tmp_path / "trained"), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert "agrees with PyTorch within" in capsys.readouterr().err
    # a wrong export is refused and not written
    monkeypatch.setattr(export.OnnxMixture, "expert_probabilities", lambda self, *views: torch.full((len(views[0]), 2), 0.9))
    assert main(["export-onnx", "--weights", str(tmp_path / "trained"), "--out", str(tmp_path / "bad.onnx")]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
