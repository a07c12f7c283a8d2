"""The published-weight round trip: our import must match the winners' own inference loop."""

import cv2
import numpy as np
import pytest
import timm
import torch
from torch import nn
from torchvision import transforms

from deepfake_moe.cli import main
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.model.checkpoint import load_checkpoint
from deepfake_moe.model.published import PUBLISHED_BACKBONES, load_published
from helpers import write_image

TINY = ("test_efficientnet", "test_convnext", "test_efficientnet")


class PublishedExpert(nn.Module):
    """The shape of the winners' expert module: a timm model under `baseline_extractor`."""

    def __init__(self, name):
        super().__init__()
        self.baseline_extractor = timm.create_model(name, pretrained=False, num_classes=2)

    def forward(self, x):
        return self.baseline_extractor(x)


def write_published(folder, backbones, seed=0):
    """Random weights saved exactly as the winners did, EMA shadows differing from the raw weights."""
    torch.manual_seed(seed)
    experts = nn.ModuleList([PublishedExpert(b) for b in backbones])
    for m in experts.modules():  # non-trivial batch-norm statistics, so buffers matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(experts.state_dict(), folder / "weight.pth")
    ema = {
        i: {
            "decay": 0.995,
            "num_updates": 1234,
            "shadow_params": [p.detach() + 0.05 * torch.randn_like(p) for p in e.parameters()],
            "collected_params": None,
        }
        for i, e in enumerate(experts)
    }
    torch.save(ema, folder / "ema.state")
    return experts, ema


def reference_predict(experts, ema, path, size=512):
    """The published loop: one image at a time, EMA parameters swapped in and out per forward."""
    tf = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            transforms.Resize((size, size), antialias=True),
        ]
    )
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    x = tf(img)[None]
    probs = []
    with torch.no_grad():
        for i, expert in enumerate(experts):
            expert.eval()
            params = list(expert.parameters())
            stored = [p.clone() for p in params]
            for p, s in zip(params, ema[i]["shadow_params"]):
                p.copy_(s)
            probs.append(expert(x).softmax(1)[:, 1])
            for p, s in zip(params, stored):
                p.copy_(s)
    return torch.stack(probs).mean().item()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    experts, ema = write_published(folder, TINY)
    images = tmp_path_factory.mktemp("imgs")
    paths = [write_image(images / f"{i}.jpg", size=(60 + 7 * i, 45 + 3 * i), seed=i) for i in range(4)]
    paths.append(write_image(images / "p.png", size=(700, 520), seed=9))
    ref = [reference_predict(experts, ema, p) for p in paths]
    return folder, paths, ref


def test_import_matches_reference_loop(published):
    folder, paths, ref = published
    model, config = load_published(folder, backbones=TINY)
    rows = Predictor(model, config, batch_size=3, num_workers=0).predict(paths)
    got = np.array([r.probability for r in rows])
    assert not any(r.error for r in rows)
    assert np.abs(got - np.array(ref)).max() <= 1e-5
    assert len(set(np.round(ref, 4))) > 1  # the check is not vacuous: images score differently


def test_import_command_round_trip(published, tmp_path, monkeypatch):
    folder, paths, ref = published
    monkeypatch.setattr("deepfake_moe.model.published.PUBLISHED_BACKBONES", TINY)
    monkeypatch.setattr(load_published, "__defaults__", (TINY, True, 512))
    assert main(["import-published", str(folder), str(tmp_path / "ckpt")]) == 0
    model, config = load_checkpoint(tmp_path / "ckpt")
    assert config.preprocess.mode == "published" and config.image_backend == "opencv"
    rows = Predictor(model, config, batch_size=8, num_workers=0).predict(paths)
    assert np.abs(np.array([r.probability for r in rows]) - np.array(ref)).max() <= 1e-5


def test_ema_is_folded_not_raw(published):
    folder, paths, ref = published
    raw, _ = load_published(folder, backbones=TINY, use_ema=False)
    ema, _ = load_published(folder, backbones=TINY)
    p_raw = list(raw.experts[0].parameters())[0]
    p_ema = list(ema.experts[0].parameters())[0]
    assert not torch.equal(p_raw, p_ema)


def test_wrong_architecture_is_a_clear_error(published):
    from deepfake_moe.model.checkpoint import CheckpointError

    folder, _, _ = published
    with pytest.raises(CheckpointError, match="expert"):
        load_published(folder, backbones=("test_resnet",) * 3)


def test_published_architecture_keys():
    """The real 7-expert layout builds and its timm key names are those the published file uses."""
    from deepfake_moe.model.published import published_config

    config = published_config()
    assert config.backbones == list(PUBLISHED_BACKBONES) and len(config.backbones) == 7
    expert = timm.create_model("tf_efficientnet_b4_ns", pretrained=False, num_classes=2)
    ours = timm.create_model(PUBLISHED_BACKBONES[2], pretrained=False, num_classes=2)
    assert list(expert.state_dict()) == list(ours.state_dict())
