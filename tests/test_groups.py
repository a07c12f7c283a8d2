"""Expert groups: experts that know different fakes, joined so that one kind's "real" does not drown another's "fake"."""

import csv

import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy.special import expit, logit

from deepfake_moe.cli import main
from deepfake_moe.errors import EXIT_USAGE, InputError
from deepfake_moe.model.checkpoint import ModelConfig, load_checkpoint, load_config
from deepfake_moe.model.combine import combine_folders
from deepfake_moe.model.groups import ExpertGroup, fit_alignment, join
from deepfake_moe.model.spec import ExpertSpec
from deepfake_moe.model.uncertainty import disagreement
from helpers import labelled_images, tiny_checkpoint


def test_without_groups_the_mixture_is_the_methods_mean():
    p = np.random.default_rng(0).random((5, 3))
    np.testing.assert_allclose(join(p, None), p.mean(axis=1))
    assert torch.allclose(join(torch.from_numpy(p), None), torch.from_numpy(p).mean(dim=1))


def test_a_group_sure_that_an_image_is_fake_is_not_outvoted_and_is_silent_below_its_floor():
    # three edit experts sure it is real, one generator expert sure it is fake (a generated face)
    p = np.array([[0.05, 0.04, 0.06, 0.97], [0.30, 0.40, 0.35, 0.60], [0.30, 0.40, 0.35, 0.10]])
    groups = [ExpertGroup([0, 1, 2], "edits"), ExpertGroup([3], "generators", floor=0.0, shift=0.5)]
    got = join(p, groups)
    assert p[0].mean() < 0.5 and got[0] == pytest.approx(expit(logit(0.97) + 0.5))
    assert got[1] == pytest.approx(expit(logit(0.6) + 0.5))  # above its floor (logit 0): it speaks, shifted
    assert got[2] == pytest.approx(0.35)  # below its floor the generators are silent: the edit experts' mean
    np.testing.assert_allclose(join(torch.from_numpy(p), groups).numpy(), got, rtol=1e-12)


def test_fitted_groups_speak_on_the_target_share_of_reals_and_keep_the_first_groups_ranking():
    rng = np.random.default_rng(1)
    reals = np.stack([rng.beta(2, 8, 1000), rng.beta(2, 8, 1000), rng.beta(1, 30, 1000)], axis=1)
    groups = fit_alignment(reals, [ExpertGroup([0, 1], "edits"), ExpertGroup([2], "generators")], target_fpr=0.02)
    assert (groups[0].floor, groups[0].shift) == (None, 0.0)
    z0, z1 = logit(reals[:, :2].mean(axis=1)), logit(reals[:, 2])
    assert (z1 > groups[1].floor).mean() == pytest.approx(0.02, abs=0.002)
    assert groups[1].floor + groups[1].shift == pytest.approx(np.quantile(z0, 0.98))
    joined = join(reals, groups)
    quiet = z1 <= groups[1].floor
    np.testing.assert_allclose(joined[quiet], reals[quiet, :2].mean(axis=1))  # 98% of reals: the first group's
    with pytest.raises(InputError, match="target FPR"):
        fit_alignment(reals, groups, target_fpr=0.0)
    anchored = fit_alignment(reals, groups, target_fpr=0.02, anchor=2.0)  # a threshold kept from before
    assert anchored[1].floor == groups[1].floor and anchored[1].floor + anchored[1].shift == pytest.approx(2.0)


def test_a_floor_fitted_per_source_holds_the_target_fpr_for_every_kind_of_real():
    rng = np.random.default_rng(2)
    ordinary, shrunk = rng.beta(1, 30, (900, 2)), rng.beta(1, 8, (100, 2))  # the shrunk reals look more fake
    reals = np.concatenate([ordinary, shrunk])
    source = np.array(["real"] * 900 + ["real_downscale"] * 100)
    groups = [ExpertGroup([0], "edits"), ExpertGroup([1], "generators")]
    pooled = fit_alignment(reals, groups, target_fpr=0.02)[1]
    per_source = fit_alignment(reals, groups, target_fpr=0.02, strata=source)[1]
    z = logit(reals[:, 1])
    assert (z[source == "real_downscale"] > pooled.floor).mean() > 0.05  # pooled: one kind of real pays for all
    for kind in ("real", "real_downscale"):
        assert (z[source == kind] > per_source.floor).mean() <= 0.02
    anchored = fit_alignment(reals, groups, target_fpr=0.02, anchor=2.0, strata=source)[1]
    assert (anchored.floor, anchored.floor + anchored.shift) == (per_source.floor, pytest.approx(2.0))
    assert fit_alignment(reals, groups, 0.02, strata=np.full(1000, "real"))[1].floor == pooled.floor
    with pytest.raises(InputError, match="strata"):
        fit_alignment(reals, groups, 0.02, strata=source[:10])


def test_groups_must_hold_every_expert_exactly_once():
    experts = [ExpertSpec("a"), ExpertSpec("b"), ExpertSpec("c")]
    for bad in ([[0, 1]], [[0, 1], [1, 2]], [[0, 1], [2, 3]]):
        with pytest.raises(InputError, match="exactly once"):
            ModelConfig(experts=experts, groups=[ExpertGroup(g) for g in bad])
    with pytest.raises(InputError, match="at least one expert"):
        ExpertGroup([])


def test_experts_of_different_groups_are_meant_to_disagree():
    p = np.array([[0.02, 0.03, 0.97, 0.98]])
    groups = [ExpertGroup([0, 1]), ExpertGroup([2, 3])]
    assert disagreement(p)[0] > 0.7 and disagreement(p, groups)[0] < 0.01
    q = np.array([[0.02, 0.98, 0.97, 0.98]])  # one group split in itself
    assert disagreement(q, groups)[0] > 0.3


def test_combine_with_groups_makes_each_model_a_group_and_keeps_a_grouped_models_groups(tmp_path):
    a = tiny_checkpoint(tmp_path / "a", seed=1)
    b = tiny_checkpoint(tmp_path / "b", backbones=("test_convnext", "test_resnet"), size=48, seed=2)
    assert main(["combine", str(a), f"{b}:1", "--groups", "--out", str(tmp_path / "ab")]) == 0
    ab, config = load_checkpoint(tmp_path / "ab")
    assert [g.experts for g in config.groups] == [[0, 1], [2]]
    assert [(g.floor, g.shift) for g in config.groups] == [(None, 0.0)] * 2  # uncalibrated: both always speak
    x32, x48 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        p = ab.expert_probabilities(x32, x48)
        assert torch.allclose(ab(x32, x48), join(p, config.groups), atol=1e-6)
        assert torch.allclose(ab(x32, x48), torch.maximum(p[:, :2].mean(dim=1), p[:, 2]), atol=1e-5)
    c = tiny_checkpoint(tmp_path / "c", seed=3)
    assert main(["combine", f"{tmp_path / 'ab'}:2,0", str(c), "--groups", "--out", str(tmp_path / "abc")]) == 0
    # ab:2,0 puts its expert 2 first; its groups keep their order (the first is the alignment reference)
    assert [g.experts for g in load_config(tmp_path / "abc").groups] == [[1], [0], [2, 3]]
    assert main(["combine", str(a), str(c), "--out", str(tmp_path / "mean")]) == 0
    assert load_config(tmp_path / "mean").groups is None
    assert main(["combine", f"{a}:0", f"{a}:1", "--groups", "--out", str(tmp_path / "one")]) == 0
    with pytest.raises(InputError, match="two groups"):
        from deepfake_moe.model.combine import combine_folders

        combine_folders([str(a)], tmp_path / "single", groups=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return labelled_images(tmp_path_factory.mktemp("gcorpus"), 12, "gan", side=40, seed=700)


def test_calibrate_aligns_the_groups_and_every_runtime_follows_the_rule(tmp_path, corpus):
    a, b = tiny_checkpoint(tmp_path / "a", seed=4), tiny_checkpoint(tmp_path / "b", seed=5)
    ckpt = tmp_path / "ab"
    assert main(["combine", str(a), str(b), "--groups", "--out", str(ckpt)]) == 0
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--temperature",
                 "--no-progress"]) == 0
    config = load_config(ckpt)
    assert config.info["calibration"]["groups"][1]["floor"] == config.groups[1].floor is not None
    out = tmp_path / "p.csv"
    for runtime in ("torch", "onnxruntime", "openvino"):
        assert main(["predict", str(corpus / "real"), str(corpus / "fake"), "--weights", str(ckpt), "--per-expert",
                     "--runtime", runtime, "--out", str(out), "--no-progress"]) == 0
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        experts = np.array([[float(r[f"expert_{i}"]) for i in range(4)] for r in rows])
        np.testing.assert_allclose([float(r["probability"]) for r in rows], join(experts, config.groups), atol=2e-6)
        reals = experts[[("/real/" in r["path"]) for r in rows]]
        aligned = fit_alignment(reals, config.groups)  # the calibration's reals, at the fitted temperature
        assert aligned[1].floor == pytest.approx(config.groups[1].floor, abs=1e-4)
    assert main(["export-onnx", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["p_fake"], {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_first_group_taken_whole_keeps_its_models_calibration_and_only_the_later_groups_are_fitted(tmp_path, corpus):
    import yaml

    a, b = tiny_checkpoint(tmp_path / "a", seed=6), tiny_checkpoint(tmp_path / "b", seed=7)
    data = yaml.safe_load((a / "model.yaml").read_text())
    data.update(threshold=0.62, temperature=0.8)
    (a / "model.yaml").write_text(yaml.safe_dump(data))
    ckpt = tmp_path / "ab"
    assert main(["combine", str(a), str(b), "--groups", "--keep-calibration", "--out", str(ckpt)]) == 0
    model, config = load_checkpoint(ckpt)
    assert (config.threshold, config.temperature, model.temperature) == (0.62, 0.8, 0.8)
    first, _ = load_checkpoint(a)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():  # the first group answers as model a did, at a's temperature
        assert torch.allclose(model.expert_probabilities(x)[:, :2].mean(dim=1), first(x), atol=1e-3)
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--keep-threshold",
                 "--target-fpr", "0.1", "--no-progress"]) == 0
    config = load_config(ckpt)
    assert (config.threshold, config.temperature, config.info["calibration"]["method"]) == (0.62, 0.8, "kept")
    record = config.info["calibration"]
    assert record["nll_before"] == record["nll_after"]  # nothing but the floors was fitted, by the same rule
    later = config.groups[1]
    assert later.floor is not None and later.floor + later.shift == pytest.approx(logit(0.62))
    # rebuilt from the grouped model itself (what `make default-model` does once it is shipped): its first group
    assert main(["combine", f"{ckpt}:0,1", str(b), "--groups", "--keep-calibration", "--out", str(tmp_path / "re")]) == 0
    again = load_config(tmp_path / "re")
    assert ([g.experts for g in again.groups], again.threshold, again.temperature) == ([[0, 1], [2, 3]], 0.62, 0.8)
    for args, match in (([f"{a}:0", str(b)], "first group"), ([str(a), str(b)], "needs --groups")):
        with pytest.raises(InputError, match=match):
            combine_folders(args, tmp_path / "no", groups=match == "first group", keep_calibration=True)
    # --fpr-per-source: the floor holds for each source of reals in the manifest
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--keep-threshold",
                 "--target-fpr", "0.1", "--fpr-per-source", "--no-progress"]) == 0
    assert load_config(ckpt).info["calibration"]["fpr_per_source"] is True
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(a), "--fpr-per-source"]) == EXIT_USAGE
    # the threshold and temperature are kept, so nothing else may be fitted with them
    assert main(["calibrate", str(corpus / "manifest.csv"), "--weights", str(ckpt), "--keep-threshold",
                 "--temperature"]) == EXIT_USAGE
    assert load_config(ckpt).temperature == 0.8
