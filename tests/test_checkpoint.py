import pytest
import torch
import yaml

from deepfake_moe.config import ConfigError
from deepfake_moe.model.checkpoint import CheckpointError, load_checkpoint, load_config, save_checkpoint
from helpers import tiny_checkpoint


def test_round_trip_gives_identical_outputs(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a", seed=3)
    model, config = load_checkpoint(folder)
    again, _ = load_checkpoint(folder / "model.yaml")  # the YAML path works too
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert config.backbones == ["test_efficientnet", "test_resnet"]


def test_fp16_storage_halves_the_file_and_keeps_outputs(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a", seed=1)
    model, config = load_checkpoint(folder)
    save_checkpoint(model, config, tmp_path / "half", weights_dtype=torch.float16)
    half, _ = load_checkpoint(tmp_path / "half")
    full_size = (folder / "model.safetensors").stat().st_size
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * full_size
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - half(x)).abs().max() < 1e-3


def test_convert_command_to_fp16(tmp_path):
    from deepfake_moe.cli import main

    folder = tiny_checkpoint(tmp_path / "a", seed=2)
    assert main(["convert", str(folder), str(tmp_path / "b"), "--fp16"]) == 0
    a, _ = load_checkpoint(folder)
    b, _ = load_checkpoint(tmp_path / "b")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() < 1e-3


def test_yaml_typo_is_a_clear_error(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a")
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["treshold"] = 0.3
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="treshold"):
        load_config(folder)


def test_weights_that_do_not_match_the_yaml(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a")
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["experts"][1]["backbone"] = "test_convnext"
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(folder)


def test_incomplete_folder(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks model.safetensors"):
        load_checkpoint(folder)


def test_one_expert_description_for_checkpoints_and_training():
    import dataclasses
    from importlib.resources import files

    from deepfake_moe.model.checkpoint import ExpertSpec, load_config
    from deepfake_moe.train.config import ExpertConfig

    # training extends the model's description: a field added to ExpertSpec reaches both sides
    assert issubclass(ExpertConfig, ExpertSpec)
    shared = {f.name for f in dataclasses.fields(ExpertSpec)}
    assert shared < {f.name for f in dataclasses.fields(ExpertConfig)}
    trained = ExpertConfig("test_resnet", pretrained="offline", split=2, freeze=["conv_stem"])
    spec = trained.model_spec(note="split 2")
    assert type(spec) is ExpertSpec and spec == ExpertSpec("test_resnet", note="split 2")
    # the checkpoint shipped before this change still loads
    cfg = load_config(files("deepfake_moe") / "weights" / "default")
    assert cfg.experts and all(type(e) is ExpertSpec for e in cfg.experts)


def test_combine_is_the_mean_of_the_chosen_experts_each_with_its_own_view_uncalibrated(tmp_path):
    from deepfake_moe.cli import main

    a = tiny_checkpoint(tmp_path / "a", size=32, threshold=0.8, seed=4)
    b = tiny_checkpoint(tmp_path / "b", backbones=("test_convnext", "test_resnet"), size=48, seed=5)
    data = yaml.safe_load((a / "model.yaml").read_text())
    data["temperature"] = 0.7
    (a / "model.yaml").write_text(yaml.safe_dump(data))
    assert main(["combine", str(a), f"{b}:1,0", "--out", str(tmp_path / "ab")]) == 0
    ma, _ = load_checkpoint(a)
    mb, _ = load_checkpoint(b)
    ab, config = load_checkpoint(tmp_path / "ab")
    assert config.backbones == ["test_efficientnet", "test_resnet", "test_resnet", "test_convnext"]
    assert [v.input_size for v in config.views()[0]] == [32, 48]
    assert (config.threshold, config.temperature, ab.temperature) == (0.5, 1.0, 1.0)
    assert [o["expert"] for o in config.info["combined_from"]] == [0, 1, 1, 0]
    ma.temperature = 1.0  # the combined mixture is uncalibrated: its experts' raw probabilities
    x32, x48 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        expected = torch.cat([ma.expert_probabilities(x32), mb.expert_probabilities(x48)[:, [1, 0]]], dim=1)
        assert torch.allclose(ab.expert_probabilities(x32, x48), expected, atol=1e-6)
        assert torch.allclose(ab(x32, x48), expected.mean(dim=1), atol=1e-6)


def test_combine_takes_the_default_model_experts_of_one_model_and_folders_named_like_a_choice(tmp_path, monkeypatch):
    from deepfake_moe.model.combine import combine_folders

    a = tiny_checkpoint(tmp_path / "a", backbones=("test_efficientnet", "test_resnet", "test_convnext"))
    monkeypatch.setenv("DEEPFAKE_MOE_DEFAULT_MODEL", str(a))
    _, config = combine_folders(["default:2,0"], tmp_path / "two")
    assert config.backbones == ["test_convnext", "test_efficientnet"]
    odd = tiny_checkpoint(tmp_path / "odd:1")  # a real folder whose name ends like an expert choice
    _, config = combine_folders([str(odd), f"{a}:1"], tmp_path / "three")
    assert config.backbones == ["test_efficientnet", "test_resnet", "test_resnet"]


def test_combine_refuses_missing_or_repeated_experts_and_models_that_read_images_differently(tmp_path):
    from deepfake_moe.errors import InputError
    from deepfake_moe.model.combine import combine_folders

    a = tiny_checkpoint(tmp_path / "a")
    with pytest.raises(InputError, match="no expert 2"):
        combine_folders([str(a), f"{a}:2"], tmp_path / "out")
    with pytest.raises(InputError, match="taken twice"):
        combine_folders([f"{a}:0", f"{tmp_path}/../{tmp_path.name}/a:0,1"], tmp_path / "out")
    with pytest.raises(InputError, match="at least two experts"):
        combine_folders([f"{a}:1"], tmp_path / "out")
    b = tiny_checkpoint(tmp_path / "b")
    data = yaml.safe_load((b / "model.yaml").read_text())
    data["image_backend"] = "opencv"
    (b / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="image_backend"):
        combine_folders([str(a), str(b)], tmp_path / "out")
    assert not (tmp_path / "out").exists()
