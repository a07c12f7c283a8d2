"""`evaluate` and `calibrate` end to end on tiny images and a tiny random checkpoint."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_moe.cli import main
from deepfake_moe.data.manifest import ManifestError
from deepfake_moe.evaluate.predictions import NO_PREDICTION, match_predictions, read_predictions
from deepfake_moe.evaluate.robustness import PERTURBATIONS
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.model.checkpoint import load_checkpoint, load_config
from helpers import tiny_checkpoint, write_image

PNGS = ("roc.png", "pr.png", "score_hist.png")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 reals, 6 fakes each from two sources, two clusters, one unreadable image; paths relative."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i in range(12):
        rows.append((f"real/r{i}.png", 0, "real", i % 2))
    for src in ("blend", "gan"):
        for i in range(6):
            rows.append((f"fake/{src}/f{i}.png", 1, src, i % 2))
    for k, (rel, *_rest) in enumerate(rows):
        write_image(root / rel, size=(36, 36), seed=100 + k)
    (root / "fake" / "gan" / "broken.png").write_bytes(b"\x89PNG truncated")
    rows.append(("fake/gan/broken.png", 1, "gan", 1))
    df = pd.DataFrame(rows, columns=["path", "label", "source", "cluster"])
    df.to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), threshold=0.5)


def _png_ok(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_evaluate_with_model_writes_json_table_pngs_and_reports_failures(corpus, ckpt, tmp_path):
    out = tmp_path / "eval"
    code = main(["evaluate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--out", str(out),
                 "--bootstrap", "50", "--no-progress"])
    assert code == 1  # one image failed: partial
    result = json.loads((out / "metrics.json").read_text())
    assert result["counts"] == {"listed": 25, "scored": 24, "real": 12, "fake": 12, "failed": 1, "unlabelled": 0}
    assert [f["path"].endswith("broken.png") for f in result["failed"]] == [True]
    overall = result["overall"]
    assert 0.0 <= overall["auc"]["value"] <= 1.0 and len(overall["auc"]["ci95"]) == 2
    assert set(overall["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert result["threshold"] == 0.5
    assert set(result["per_source"]) == {"blend", "gan"}
    assert result["per_source"]["gan"]["n"] == 12 + 6 and result["per_source"]["blend"]["n_real"] == 12
    assert set(result["per_cluster"]) == {"0", "1"}
    md = (out / "report.md").read_text()
    assert "| source | n (real/fake) | AUC |" in md and "| gan | 18 (12/6) |" in md and "## Per cluster" in md
    assert "broken.png" in md
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(preds) == 25
    broken = preds[preds["path"].str.endswith("broken.png")].iloc[0]
    assert broken["error"] != "" and broken["verdict"] == "" and broken["probability"] == ""
    ok = preds[preds["error"] == ""]
    assert ((ok["probability"].astype(float) >= 0.5) == (ok["verdict"] == "fake")).all()
    for name in PNGS:
        _png_ok(out / name)


def test_evaluate_predictions_csv_challenge_format_matches_by_name(tmp_path):
    root = tmp_path / "valset"
    root.mkdir()
    labels = tmp_path / "valset_label.txt"
    names = [f"img_{i}.jpg" for i in range(6)]
    labels.write_text("img_name,target\n" + "".join(f"{n},{int(i >= 3)}\n" for i, n in enumerate(names)))
    # Reals img_0..2 score .1 .6 .3, fakes img_3..4 score .5 .8; img_5 has no prediction and
    # zzz.jpg matches no labelled image.
    scores = [0.1, 0.6, 0.3, 0.5, 0.8]
    pred = tmp_path / "submission.csv"
    pred.write_text("img_name,y_pred\n" + "".join(f"{n},{p}\n" for n, p in zip(names, scores)) + "zzz.jpg,0.5\n")
    out = tmp_path / "out"
    code = main(["evaluate", str(labels), "--predictions", str(pred), "--out", str(out), "--bootstrap", "0"])
    assert code == 1
    result = json.loads((out / "metrics.json").read_text())
    # .5 beats reals .1 and .3, .8 beats all three: 5 of 6 (fake, real) pairs.
    assert result["overall"]["auc"]["value"] == pytest.approx(5 / 6)
    assert result["counts"]["failed"] == 1 and result["failed"][0]["error"] == NO_PREDICTION
    assert result["unmatched_predictions"] == ["zzz.jpg"]
    assert result["overall"]["accuracy"]["value"] == pytest.approx(4 / 5)  # .6 real called fake
    assert "zzz.jpg" in (out / "report.md").read_text()
    for name in PNGS:
        _png_ok(out / name)


def test_prediction_matching_by_trailing_components_and_ambiguity(tmp_path):
    labels = pd.DataFrame({"path": ["/d/a/x.jpg", "/d/b/x.jpg", "/d/b/y.jpg", "/d/c/z.jpg"], "label": [0, 1, 1, 0]})
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("path,probability,error\nb/x.jpg,0.9,\ny.jpg,0.2,\nx.jpg,0.3,\n/d/c/z.jpg,,unreadable\n")
    table, unmatched = match_predictions(labels, read_predictions(csv_path))
    assert table["probability"].tolist()[1:3] == [0.9, 0.2]
    assert np.isnan(table["probability"].iloc[0]) and table["error"].iloc[0] == NO_PREDICTION
    assert table["error"].iloc[3] == "unreadable"
    assert unmatched == ["x.jpg (fits 2 labelled images)"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\na.jpg,0.1\n")
    with pytest.raises(ManifestError, match="img_name,y_pred"):
        read_predictions(bad)
    bad.write_text("img_name,y_pred\na.jpg,3.5\n")
    with pytest.raises(ManifestError, match="outside"):
        read_predictions(bad)


def test_one_class_labels_give_a_clear_error(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("img_name,target\na.jpg,1\nb.jpg,1\n")
    pred = tmp_path / "pred.csv"
    pred.write_text("img_name,y_pred\na.jpg,0.3\nb.jpg,0.6\n")
    assert main(["evaluate", str(labels), "--predictions", str(pred), "--out", str(tmp_path / "o")]) == 2
    assert "all 2 image(s) are fake" in capsys.readouterr().err


def test_perturbations_keep_images_valid_and_degrade():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    expected = {"none", "jpeg_q90", "jpeg_q70", "jpeg_q50", "downscale_0.5", "downscale_0.25",
                "blur_sigma1.5", "noise_sigma8", "webp_q80"}
    assert expected <= set(PERTURBATIONS)
    for name, fn in PERTURBATIONS.items():
        out = fn(rgb)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
    assert PERTURBATIONS["downscale_0.5"](rgb).shape == (32, 24, 3)
    assert PERTURBATIONS["downscale_0.25"](rgb).shape == (16, 12, 3)
    assert np.array_equal(PERTURBATIONS["noise_sigma8"](rgb), PERTURBATIONS["noise_sigma8"](rgb))
    err = {n: np.abs(PERTURBATIONS[n](rgb).astype(int) - rgb).mean() for n in ("jpeg_q90", "jpeg_q50")}
    assert 0 < err["jpeg_q90"] < err["jpeg_q50"]


def test_evaluate_robustness_sweep_writes_table_and_plot(corpus, ckpt, tmp_path):
    out = tmp_path / "rob"
    code = main(["evaluate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--out", str(out),
                 "--bootstrap", "20", "--robustness", "--perturbations", "none,jpeg_q50,downscale_0.5",
                 "--no-progress"])
    assert code == 1
    table = pd.read_csv(out / "robustness.csv")
    assert table["perturbation"].tolist() == ["none", "jpeg_q50", "downscale_0.5"]
    assert (table["n"] == 24).all()
    assert table["auc_change"].iloc[0] == 0
    # The unperturbed sweep scores what `evaluate` scored.
    result = json.loads((out / "metrics.json").read_text())
    assert table["auc"].iloc[0] == pytest.approx(result["overall"]["auc"]["value"], abs=1e-6)
    assert "| jpeg_q50 | 24 |" in (out / "robustness.md").read_text()
    _png_ok(out / "robustness.png")


def test_calibrate_writes_threshold_and_predict_verdicts_follow(corpus, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", threshold=0.0)  # everything "fake" before calibration
    manifest = corpus / "manifest.csv"
    code = main(["calibrate", str(manifest), "--weights", str(ckpt), "--target-fpr", "0", "--temperature",
                 "--no-progress"])
    assert code == 1  # the broken image is reported
    cfg = load_config(ckpt)
    info = cfg.info["calibration"]
    assert info["method"] == "target-fpr" and info["fpr"] == 0.0 and info["n_failed"] == 1
    assert info["previous_threshold"] == 0.0 and cfg.threshold == info["threshold"] > 0.0
    assert cfg.temperature == pytest.approx(info["temperature"]) and info["temperature_fitted"]
    assert info["nll_after"] <= info["nll_before"] + 1e-9
    _png_ok(ckpt / "calibration" / "reliability.png")
    # predict now follows the fitted threshold (and temperature): no real is called fake.
    model, config = load_checkpoint(ckpt)
    df = pd.read_csv(manifest)
    rows = Predictor(model, config, device="cpu", num_workers=0).predict([str(corpus / p) for p in df["path"]])
    verdicts = {r.path.split("/")[-1]: r.verdict for r in rows if not r.error}
    assert all(verdicts[p.split("/")[-1]] == "real" for p in df.loc[df["label"] == 0, "path"])
    out = tmp_path / "pred.csv"
    assert main(["predict", str(corpus / "real"), "--weights", str(ckpt), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        assert {r["verdict"] for r in csv.DictReader(f)} == {"real"}


def test_evaluate_follows_the_predictions_threshold_links_plots_and_keeps_one_source_once(tmp_path, capsys):
    """`predict --out` then `evaluate --predictions`: verdicts at the model's threshold, not 0.5; a challenge
    label file (fakes have no source) gets no per-source row repeating "all"; report.md links its plots."""
    labels = tmp_path / "valset_label.txt"
    names = [f"img_{i}.jpg" for i in range(6)]
    labels.write_text("img_name,target\n" + "".join(f"{n},{int(i >= 3)}\n" for i, n in enumerate(names)))
    scores = [0.1, 0.6, 0.3, 0.7, 0.95, 0.9]
    pred = tmp_path / "pred.csv"
    pred.write_text("path,probability,verdict,threshold,error\n"
                    + "".join(f"{n},{p},{'fake' if p >= 0.65 else 'real'},0.65,\n" for n, p in zip(names, scores)))
    out = tmp_path / "out"
    assert main(["evaluate", str(labels), "--predictions", str(pred), "--out", str(out), "--bootstrap", "0"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["threshold"] == 0.65 and result["overall"]["accuracy"]["value"] == 1.0
    assert "threshold 0.65 from the predictions' threshold column" in capsys.readouterr().err
    assert result["per_source"] == {}
    md = (out / "report.md").read_text()
    assert "| fake |" not in md
    for name in PNGS:
        assert f"({name})" in md
    # only a verdict column: the threshold is the lowest probability called fake
    pred.write_text("path,probability,verdict\n"
                    + "".join(f"{n},{p},{'fake' if p >= 0.65 else 'real'}\n" for n, p in zip(names, scores)))
    assert main(["evaluate", str(labels), "--predictions", str(pred), "--out", str(out), "--bootstrap", "0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.7
    # an image answered 'uncertain' says nothing about the threshold, whatever its probability
    said = ["real", "uncertain", "real", "fake", "fake", "uncertain"]
    pred.write_text("path,probability,verdict\n" + "".join(f"{n},{p},{v}\n" for n, p, v in zip(names, scores, said)))
    assert main(["evaluate", str(labels), "--predictions", str(pred), "--out", str(out), "--bootstrap", "0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.7


def test_evaluate_runs_the_model_exported(corpus, ckpt, tmp_path, monkeypatch):
    """fp32 and bf16 run exported on the CPU (OpenVINO; without it, ONNX Runtime for fp32 and PyTorch's
    autocast for bf16)."""
    from deepfake_moe import runtime as machine
    from deepfake_moe.infer import export
    from deepfake_moe.infer.openvino_runtime import openvino_available

    exported = []
    real = export.cached_onnx
    monkeypatch.setattr(export, "cached_onnx", lambda *a, **k: exported.append(k.get("precision")) or real(*a, **k))
    monkeypatch.setattr(machine, "native_bf16", lambda device="cpu": True)  # where it is not, bf16 is refused
    scores = {}
    for runtime, precision in (("torch", "fp32"), ("auto", "fp32"), ("auto", "bf16")):
        out = tmp_path / f"{runtime}-{precision}"
        assert main(["evaluate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--out", str(out), "--bootstrap",
                     "0", "--no-progress", "--runtime", runtime, "--precision", precision, "--device", "cpu"]) == 1
        scores[precision if runtime == "auto" else runtime] = pd.read_csv(out / "predictions.csv")["probability"].to_numpy(float)
    assert exported == (["fp32", "bf16"] if openvino_available() else ["fp32"])
    np.testing.assert_allclose(scores["torch"], scores["fp32"], atol=1e-5)
    np.testing.assert_allclose(scores["torch"], scores["bf16"], atol=0.05)
