"""The `uncertain` verdict: its maths, its statistics in the checkpoint, and the commands that fit and report it."""

import csv
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_moe.cli import main
from deepfake_moe.data.image_io import read_image
from deepfake_moe.data.transforms import preprocess_views
from deepfake_moe.model import uncertainty as U
from deepfake_moe.model.checkpoint import STATS_FILE, load_checkpoint, load_config, save_checkpoint
from helpers import labelled_images, tiny_checkpoint


# ----------------------------------------------------------------------------- maths
def _head_for(cov: np.ndarray, means: np.ndarray, k: int) -> U.FeatureDistance:
    """The statistics of a known covariance: its top-k axes exactly, the rest's mean variance."""
    val, vec = np.linalg.eigh(cov)
    val, vec = val[::-1], vec[:, ::-1]
    return U.FeatureDistance(torch.from_numpy(means), torch.from_numpy(vec[:, :k].T.copy()),
                             torch.from_numpy(val[:k].copy()), torch.tensor(val[k:].mean()))


def test_mahalanobis_matches_the_inverse_of_a_known_covariance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.5 * np.eye(6)
    means = rng.normal(size=(2, 6))
    x = rng.normal(size=(5, 6)) * 3
    head = _head_for(cov, means, k=5)  # all but one axis kept: the covariance is exact
    got = head(torch.from_numpy(x)).double().numpy()
    inv = np.linalg.inv(cov)
    want = np.stack([np.einsum("nd,de,ne->n", x - m, inv, x - m) for m in means], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_low_rank_distance_is_the_mahalanobis_distance_of_the_ppca_covariance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8))
    cov = a @ a.T
    head = _head_for(cov, np.zeros((2, 8)), k=3)
    u, lam, s2 = head.components.double().numpy().T, head.variances.double().numpy(), float(head.residual_variance)
    ppca = u @ np.diag(lam) @ u.T + s2 * (np.eye(8) - u @ u.T)
    x = rng.normal(size=(4, 8))
    want = np.einsum("nd,de,ne->n", x, np.linalg.inv(ppca), x)
    np.testing.assert_allclose(head(torch.from_numpy(x))[:, 0].double().numpy(), want, rtol=1e-4)


def test_fitted_statistics_recover_the_generating_gaussians():
    rng = np.random.default_rng(2)
    cov = np.diag([9.0, 4.0, 1.0, 1.0, 1.0])
    means = np.array([[0, 0, 0, 0, 0], [5, 0, 0, 0, 0]], dtype=float)
    y = np.repeat([0, 1], 20000)
    x = rng.multivariate_normal(np.zeros(5), cov, size=len(y)) + means[y]
    head = U.fit_feature_distance(x, y, components=2)
    np.testing.assert_allclose(head.means.numpy(), means, atol=0.06)
    np.testing.assert_allclose(sorted(head.variances.numpy()), [4.0, 9.0], rtol=0.05)
    assert float(head.residual_variance) == pytest.approx(1.0, rel=0.05)
    probe = np.array([[0.0, 0, 0, 3, 0]])  # 3 sigma off the reals' mean along a small axis
    assert head(torch.from_numpy(probe))[0, 0].item() == pytest.approx(9.0, rel=0.1)


def test_fitting_needs_both_classes():
    with pytest.raises(U.UncertaintyError, match="2 reals and 2 fakes"):
        U.fit_feature_distance(np.zeros((5, 3)), np.zeros(5))


def test_disagreement_is_the_mutual_information_in_bits():
    p = np.array([[0.9, 0.9, 0.9], [0.0, 1.0, 0.5], [0.5, 0.5, 0.5], [0.9, 0.1, 0.5]])
    mi = U.disagreement(p)
    def h(q):
        return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))

    assert mi[0] == pytest.approx(0.0, abs=1e-12)  # agreement, however confident
    assert mi[2] == pytest.approx(0.0, abs=1e-12)  # all unsure alike: no disagreement
    assert mi[1] == pytest.approx(1.0 - 1.0 / 3)  # H(0.5) - mean(0, 0, 1)
    assert mi[3] == pytest.approx(1.0 - (2 * h(0.9) + 1.0) / 3)
    assert np.all((mi >= 0) & (mi <= 1))


def test_uncertainty_rises_with_distance_and_disagreement_and_stays_in_0_1():
    agree, split = np.array([[0.2, 0.25]]), np.array([[0.05, 0.95]])
    near, far = np.array([[[10.0, 30.0]]]), np.array([[[1e4, 3e4]]])
    ref = U.fit_reference(np.array([[0.2, 0.25], [0.3, 0.2], [0.1, 0.15]]),
                          np.array([[[10.0, 40]], [[12.0, 30]], [[9.0, 50]]]), fitted_on="test")
    base = U.uncertainty(agree, near, ref)[0]
    assert U.uncertainty(agree, far, ref)[0] > base
    assert U.uncertainty(split, near, ref)[0] > base
    assert 0.0 <= base <= 1.0 and U.uncertainty(split, far, ref)[0] <= 1.0


def test_only_the_chosen_experts_distances_count():
    probs = np.array([[0.2, 0.25], [0.3, 0.2], [0.1, 0.15]])
    d2 = np.array([[[10.0, 40], [5.0, 9]], [[12.0, 30], [6.0, 8]], [[9.0, 50], [4.0, 7]]])
    ref = U.fit_reference(probs, d2, fitted_on="test", distance_experts=[0])
    moved = d2.copy()
    moved[:, 1] *= 1e3  # expert 1 finds every image far: ignored
    np.testing.assert_array_equal(U.uncertainty(probs, moved, ref), U.uncertainty(probs, d2, ref))
    moved[:, 0] *= 1e3
    assert (U.uncertainty(probs, moved, ref) > U.uncertainty(probs, d2, ref)).all()
    assert U.fit_reference(probs, d2, fitted_on="test").distance_experts is None  # every expert's


def test_calibrate_leaves_out_a_group_whose_distance_grows_with_its_confidence():
    """A generator expert's features grow on the fakes it catches: its distance would withdraw those right
    answers, so validation picks the first group's distance."""
    from types import SimpleNamespace

    from deepfake_moe.evaluate.uncertainty import calibrate_uncertainty
    from deepfake_moe.model.groups import ExpertGroup

    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat([0, 1], n // 2)
    caught = (y == 1) & (rng.random(n) < 0.5)  # half the fakes, which the generator expert is sure of
    margins = np.stack([rng.normal(-1, 1, n), rng.normal(-1, 1, n), np.where(caught, 6.0, -3.0)], axis=1)
    feats = [rng.normal(0, 1, (n, 8)) for _ in range(3)]
    feats[2][caught] *= 4.0  # far from everything, though the answer is right
    heads = [U.fit_feature_distance(f, y) for f in feats]
    groups = [ExpertGroup([0, 1], "edits"), ExpertGroup([2], "generators", floor=2.0, shift=0.0)]
    config = SimpleNamespace(threshold=0.8, temperature=1.0, groups=groups, uncertainty=U.UncertaintyConfig(),
                             uncertainty_threshold=None)
    record = calibrate_uncertainty(SimpleNamespace(distances=heads), config, y, margins, feats, 0.9, "val")
    tried = {str(c["distance_experts"]): c["accuracy_covered"] for c in record["distance_candidates"]}
    assert set(tried) == {"all", "[0, 1]", "[2]"}
    assert record["distance_experts"] == [0, 1] and tried["[0, 1]"] > tried["all"] > tried["[2]"]
    assert config.uncertainty.reference.distance_experts == [0, 1]
    assert record["accuracy_covered"] > record["accuracy_all"] and record["coverage"] >= 0.9


def test_verdicts_uncertain_overrides_and_errors_stay_empty():
    said = U.verdicts(np.array([0.9, 0.1, 0.9, np.nan]), np.array([0.1, 0.2, 0.99, np.nan]), 0.5, 0.95)
    assert said.tolist() == ["fake", "real", "uncertain", ""]
    assert U.verdicts(np.array([0.9, 0.1]), np.array([1.0, 1.0]), 0.5, None).tolist() == ["fake", "real"]


@pytest.mark.parametrize("target", [0.95, 0.9, 0.8, 1.0])
def test_uncertainty_threshold_meets_the_target_coverage(target):
    u = np.random.default_rng(3).random(200)
    tau = U.choose_uncertainty_threshold(u, target)
    assert np.mean(u >= tau) == pytest.approx(round((1 - target) * 200) / 200)
    ties = np.array([0.1] * 10 + [0.7] * 10)  # can never flag only part of a tie
    assert np.mean(ties >= U.choose_uncertainty_threshold(ties, 0.75)) == 0.0


def test_stratified_sample_keeps_every_group_in_proportion():
    from deepfake_moe.evaluate.uncertainty import stratified_sample

    t = pd.DataFrame({"label": [0] * 60 + [1] * 30 + [1] * 10,
                      "source": ["real"] * 60 + ["blend"] * 30 + ["gan"] * 10, "path": [f"{i}" for i in range(100)]})
    s = stratified_sample(t, 50)
    assert s["source"].value_counts().to_dict() == {"real": 30, "blend": 15, "gan": 5}
    assert s.equals(stratified_sample(t, 50)) and stratified_sample(t, 500) is t


# ----------------------------------------------------------------------------- checkpoint and commands
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return labelled_images(tmp_path_factory.mktemp("ucorpus"), 16, "blend", side=36, seed=300)


def _fitted(tmp_path, corpus):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["fit-uncertainty", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--components", "4",
                 "--no-progress"]) == 0
    return ckpt


def _predict_csv(paths, ckpt, out, *extra):
    code = main(["predict", *map(str, paths), "--weights", str(ckpt), "--out", str(out), "--no-progress", *extra])
    with open(out, newline="") as f:
        return code, list(csv.DictReader(f))


def test_fitting_adds_a_statistics_file_and_leaves_the_weights_alone(tmp_path, corpus):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    before = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert main(["fit-uncertainty", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--no-progress"]) == 0
    assert hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest() == before
    cfg = load_config(ckpt)
    assert cfg.uncertainty.info["n_real"] == 16 and cfg.uncertainty.info["n_fake"] == 16
    assert cfg.uncertainty_threshold is None  # calibrate chooses it
    model, _ = load_checkpoint(ckpt)
    assert [h.dim for h in model.distances] == [e.num_features for e in model.experts]


def test_checkpoint_round_trip_keeps_the_statistics(tmp_path, corpus):
    model, cfg = load_checkpoint(_fitted(tmp_path, corpus))
    again, cfg2 = load_checkpoint(save_checkpoint(model, cfg, tmp_path / "copy", weights_dtype=torch.float16))
    for a, b in zip(model.distances, again.distances):
        for k, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[k]) and b.tensors()[k].dtype == torch.float32
    assert cfg2.uncertainty == cfg.uncertainty
    (tmp_path / "copy" / STATS_FILE).unlink()
    with pytest.raises(Exception, match="fit-uncertainty"):
        load_checkpoint(tmp_path / "copy")


def test_a_model_without_statistics_predicts_as_before(tmp_path, corpus):
    ckpt = tiny_checkpoint(tmp_path / "plain", threshold=0.48)
    yaml_text = (ckpt / "model.yaml").read_text()  # as written before uncertainty existed
    (ckpt / "model.yaml").write_text("".join(ln for ln in yaml_text.splitlines(True) if "uncertainty" not in ln))
    model, cfg = load_checkpoint(ckpt)
    assert model.distances is None and cfg.uncertainty is None and cfg.uncertainty_threshold is None
    paths = sorted((corpus / "real").glob("*.png"))
    code, rows = _predict_csv(paths, ckpt, tmp_path / "p.csv", "--runtime", "torch")
    with torch.inference_mode():
        want = model(torch.stack([preprocess_views(read_image(p), cfg.views()[0])[0] for p in paths])).numpy()
    assert code == 0 and [r["uncertainty"] for r in rows] == [""] * len(paths)
    np.testing.assert_allclose([float(r["probability"]) for r in rows], want, atol=2e-6)
    assert [r["verdict"] for r in rows] == ["fake" if p >= 0.48 else "real" for p in want]


def test_calibrate_fits_the_uncertainty_threshold_to_the_target_coverage(tmp_path, corpus):
    ckpt = _fitted(tmp_path, corpus)
    before = load_config(ckpt)
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--uncertainty-only",
                 "--target-coverage", "0.75", "--no-progress"]) == 0
    cfg = load_config(ckpt)
    assert (cfg.threshold, cfg.temperature) == (before.threshold, before.temperature)
    rec = cfg.info["calibration"]["uncertainty"]
    assert cfg.uncertainty_threshold == rec["uncertainty_threshold"] and rec["coverage"] == 0.75  # 24 of 32
    assert cfg.uncertainty.reference.fitted_on.startswith("calibrate")
    _, rows = _predict_csv([corpus / "real", corpus / "fake"], ckpt, tmp_path / "p.csv")
    assert sum(r["verdict"] == "uncertain" for r in rows) == 8
    assert all(0 <= float(r["uncertainty"]) <= 1 for r in rows)
    # A full calibrate fits the decision threshold too and records the uncertainty beside it.
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--max-f1", "--no-progress"]) == 0
    cfg = load_config(ckpt)
    assert cfg.info["calibration"]["method"] == "max-f1" and cfg.info["calibration"]["uncertainty"]["coverage"] >= 0.95


def test_uncertainty_only_needs_statistics(tmp_path, corpus):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--uncertainty-only"]) == 2


def test_predict_csv_columns_and_challenge_format(tmp_path, corpus):
    ckpt = _fitted(tmp_path, corpus)
    paths = sorted((corpus / "real").glob("*.png"))[:3]
    _, rows = _predict_csv(paths, ckpt, tmp_path / "full.csv")
    assert list(rows[0]) == ["path", "probability", "verdict", "threshold", "uncertainty", "error"]
    cfg = load_config(ckpt)
    cfg.uncertainty_threshold = 0.0  # everything is uncertain
    from deepfake_moe.config import save_yaml
    save_yaml(cfg, ckpt / "model.yaml")
    _, rows = _predict_csv(paths, ckpt, tmp_path / "full.csv")
    assert {r["verdict"] for r in rows} == {"uncertain"}
    _, rows = _predict_csv(paths, ckpt, tmp_path / "ch.csv", "--format", "challenge")
    assert list(rows[0]) == ["img_name", "y_pred"]


def test_onnx_runtime_gives_the_same_uncertainty(tmp_path, corpus):
    pytest.importorskip("onnxruntime")
    ckpt = _fitted(tmp_path, corpus)
    paths = sorted((corpus / "fake").glob("*.png"))[:4]
    _, torch_rows = _predict_csv(paths, ckpt, tmp_path / "t.csv", "--runtime", "torch")
    _, onnx_rows = _predict_csv(paths, ckpt, tmp_path / "o.csv", "--runtime", "onnxruntime")
    # the per-expert graphs joined into one file carry the distances too
    assert main(["export-onnx", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    _, file_rows = _predict_csv(paths, tmp_path / "m.onnx", tmp_path / "f.csv")
    assert len(torch_rows) == len(onnx_rows) == len(file_rows) == len(paths)
    for a, *others in zip(torch_rows, onnx_rows, file_rows):
        for b in others:
            assert float(a["uncertainty"]) == pytest.approx(float(b["uncertainty"]), abs=1e-3)
            assert b["verdict"] == a["verdict"]


def test_evaluate_reports_coverage_and_the_risk_coverage_curve(tmp_path, corpus):
    ckpt = _fitted(tmp_path, corpus)
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--uncertainty-only",
                 "--target-coverage", "0.75", "--no-progress"]) == 0
    out = tmp_path / "ev"
    assert main(["evaluate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--out", str(out),
                 "--bootstrap", "0", "--no-progress"]) == 0
    sel = json.loads((out / "metrics.json").read_text())["selective"]
    pred = pd.read_csv(out / "predictions.csv")
    covered = pred["verdict"] != "uncertain"
    assert sel["overall"]["coverage"] == pytest.approx(covered.mean()) == 0.75
    right = (pred["verdict"] == "fake") == (pred["label"] == 1)
    assert sel["overall"]["accuracy_covered"] == pytest.approx(right[covered].mean())
    fakes = pred[pred["source"] == "blend"]
    assert sel["per_source"]["blend"]["uncertain"] == pytest.approx((fakes["verdict"] == "uncertain").mean())
    assert sel["overall"]["uncertain"] + sel["overall"]["coverage"] == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "## Coverage" in md and "- [Risk-coverage curve](risk_coverage.png)" in md.split("## Plots")[1]
    assert (out / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
