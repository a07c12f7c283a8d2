"""The NPR expert type and experts that each read their own view of the image."""

import numpy as np
import pytest
import torch

from deepfake_moe.cli import main
from deepfake_moe.data.transforms import PreprocessConfig, normalize, preprocess, to_tensor
from deepfake_moe.errors import ConfigError
from deepfake_moe.evaluate.threshold import collect_margins, mixture_probability
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.model.backbones import create_backbone, is_backbone, needs_native_resolution
from deepfake_moe.model.checkpoint import ExpertSpec, ModelConfig, build_model, load_checkpoint, save_checkpoint
from deepfake_moe.model.expert import Expert
from deepfake_moe.model.npr import neighbouring_pixel_residual
from helpers import write_image

RESIZED = PreprocessConfig(input_size=32, mode="fast")
NATIVE = PreprocessConfig(input_size=24, mode="native", tiles=2)


def test_residual_vanishes_on_nearest_upsampled_images_only():
    small = torch.rand(1, 3, 16, 16)
    upsampled = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert neighbouring_pixel_residual(upsampled).abs().max() == 0
    assert neighbouring_pixel_residual(torch.rand(1, 3, 32, 32)).abs().mean() > 0.1
    assert neighbouring_pixel_residual(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7, 9)  # odd sizes


def test_npr_backbone_is_the_papers_size_and_trains_from_scratch():
    assert is_backbone("npr_resnet50_l2") and is_backbone("test_resnet") and not is_backbone("nope_net")
    assert needs_native_resolution("npr_resnet50_l2") and not needs_native_resolution("resnet50")
    expert = Expert("npr_resnet50_l2")
    assert 1.3e6 < sum(p.numel() for p in expert.parameters()) < 1.5e6
    logits, feats = expert.forward_with_features(torch.randn(2, 3, 40, 40))
    assert logits.shape == (2, 2) and feats.shape == (2, expert.num_features) == (2, 512)
    with pytest.raises(ValueError, match="from scratch"):
        create_backbone("npr_test", pretrained=True)


def test_native_view_crops_pixels_and_never_resizes():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    full = normalize(to_tensor(rgb), NATIVE.mean, NATIVE.std)
    tiles = preprocess(rgb, NATIVE)
    assert tiles.shape == (4, 3, 24, 24)
    assert torch.equal(tiles[0], full[:, :24, :24]) and torch.equal(tiles[3], full[:, 26:, 46:])
    centre = preprocess(rgb, PreprocessConfig(input_size=24, mode="native"))
    assert torch.equal(centre, full[:, 13:37, 23:47])
    crop = preprocess(rgb, NATIVE, rng=np.random.default_rng(1))
    assert crop.shape == (3, 24, 24)
    windows = full.unfold(1, 24, 1).unfold(2, 24, 1)  # every 24x24 window of the image
    assert (windows == crop[:, None, None]).flatten(3).all(-1).all(0).any()
    small = preprocess(rgb[:10, :20], PreprocessConfig(input_size=24, mode="native"))
    assert small.shape == (3, 24, 24) and torch.equal(small[:, 7:17, 2:22], full[:, :10, :20])
    assert small[:, :7].abs().max() == 0  # padded with the mean colour, not enlarged


def _two_view_model(folder):
    torch.manual_seed(0)
    cfg = ModelConfig(
        experts=[ExpertSpec("test_efficientnet"), ExpertSpec("npr_test", preprocess=NATIVE), ExpertSpec("npr_test")],
        preprocess=RESIZED,
    )
    assert cfg.views() == ([RESIZED, NATIVE], [0, 1, 0])
    return save_checkpoint(build_model(cfg), cfg, folder)


def test_each_expert_reads_its_own_view_end_to_end(tmp_path):
    model, config = load_checkpoint(_two_view_model(tmp_path / "ckpt"))
    assert model.view_index == [0, 1, 0]
    paths = [write_image(tmp_path / f"{i}.png", size=(40 + 9 * i, 30 + 5 * i), seed=i) for i in range(4)]
    rows = Predictor(model, config, num_workers=0, batch_size=3).predict([str(p) for p in paths] + ["missing.png"])
    assert rows[-1].error and all(not r.error for r in rows[:4])
    from deepfake_moe.data.image_io import read_image

    with torch.inference_mode():
        for row, path in zip(rows, paths):
            rgb = read_image(path)
            x, tiles = preprocess(rgb, RESIZED)[None], preprocess(rgb, NATIVE)
            expected = [model.experts[0].fake_probability(x).item(),
                        model.experts[1](tiles).softmax(1)[:, 1].mean().item(),
                        model.experts[2].fake_probability(x).item()]
            assert np.allclose(row.expert_probabilities, expected, atol=1e-6)
            assert row.probability == pytest.approx(np.mean(expected), abs=1e-6)
    # Calibration reads the same probabilities from per-crop logit margins.
    margins, errors = collect_margins(model, config, [str(p) for p in paths], device="cpu", progress=False)
    assert margins.shape == (4, 3, 4) and np.isnan(margins[:, 0, 1:]).all() and not any(errors)
    assert np.allclose(mixture_probability(margins), [r.probability for r in rows[:4]], atol=1e-6)


def test_two_view_model_exports_to_onnx_and_predicts_alike(tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = _two_view_model(tmp_path / "ckpt")
    onnx_file = tmp_path / "m.onnx"
    assert main(["export-onnx", "--weights", str(ckpt), "--out", str(onnx_file)]) == 0
    write_image(tmp_path / "imgs" / "a.png", size=(45, 38))
    write_image(tmp_path / "imgs" / "b.png", size=(20, 60), seed=1)
    outs = {}
    for name, args in {"torch": ["--weights", str(ckpt), "--runtime", "torch"],
                       "onnx": ["--weights", str(onnx_file)],
                       "onnxruntime": ["--weights", str(ckpt), "--runtime", "onnxruntime"],
                       "auto": ["--weights", str(ckpt), "--runtime", "auto"]}.items():
        out = tmp_path / f"{name}.csv"
        assert main(["predict", str(tmp_path / "imgs"), *args, "--out", str(out)]) == 0
        import pandas as pd

        outs[name] = pd.read_csv(out)
    for name in ("onnx", "onnxruntime", "auto"):
        assert np.allclose(outs[name]["probability"], outs["torch"]["probability"], atol=1e-5)


def test_explain_maps_a_two_view_model(tmp_path):
    ckpt = _two_view_model(tmp_path / "ckpt")
    write_image(tmp_path / "imgs" / "a.jpg", size=(50, 44))
    assert main(["explain", str(tmp_path / "imgs"), "--weights", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_training_gives_each_expert_its_view_and_the_checkpoint_keeps_them(tmp_path):
    from deepfake_moe.train.config import ExpertConfig
    from deepfake_moe.train.loop import load_training_state, train
    from test_train import make_split_manifest, tiny_config

    cfg = tiny_config(make_split_manifest(tmp_path / "data"), max_steps=2)
    cfg.data.num_workers = 0
    assert ExpertConfig("npr_test").view(cfg.data, [0.5] * 3, [0.5] * 3) == PreprocessConfig(
        input_size=cfg.data.input_size, mode="native")  # NPR defaults to native crops, trained from scratch
    crops = PreprocessConfig(input_size=32, mode="native", tiles=2)
    cfg.experts = [ExpertConfig("test_efficientnet", split=0),
                   ExpertConfig("npr_test", split=1, preprocess=crops, optim={"max_steps": 3, "lr": 0.01}, loss={"noise_std": 0.01})]
    assert cfg.loss_of(1).noise_std == 0.01 and cfg.loss_of(0).noise_std == cfg.loss.noise_std
    model, mcfg = load_checkpoint(train(cfg, tmp_path / "run"))
    steps = [load_training_state(tmp_path / "run" / "experts" / f"expert_{i}" / "last.pt")["state"]["step"] for i in (0, 1)]
    assert steps == [2, 3]  # the NPR expert's own schedule over the run's
    with pytest.raises(ConfigError, match="cannot differ per expert"):
        ExpertConfig("npr_test", optim={"batch_size": 4})
    with pytest.raises(ConfigError, match="unknown loss key"):
        ExpertConfig("npr_test", loss={"noise_sigma": 0.01})
    assert mcfg.views() == ([PreprocessConfig(input_size=64, mode="fast"), crops], [0, 1])
    assert mcfg.experts[0].preprocess is None and mcfg.experts[1].preprocess == crops
    paths = sorted(str(p) for p in (tmp_path / "data").glob("*.png"))[:3]
    rows = Predictor(model, mcfg, num_workers=0).predict(paths)
    assert all(not r.error and len(r.expert_probabilities) == 2 for r in rows)
