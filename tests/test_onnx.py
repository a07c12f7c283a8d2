import csv

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

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
    assert np.abs(scores["torch"] - scores["onnxruntime"]).max() < 1e-5
    assert np.abs(scores["torch"] - scores["auto"]).max() < 1e-5
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1  # exported once, reused by auto
