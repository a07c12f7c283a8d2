import numpy as np
import torch

from deepfake_moe.cli import main
from deepfake_moe.infer.explain import gradcam
from deepfake_moe.model.checkpoint import load_checkpoint
from helpers import tiny_checkpoint, write_image


def test_gradcam_map_shape_range_and_probabilities(tmp_path):
    model, config = load_checkpoint(tiny_checkpoint(tmp_path / "c", size=64))
    x = torch.randn(1, 3, 64, 64)
    heat, probs = gradcam(model.eval(), x)
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1
    with torch.no_grad():
        assert np.allclose(probs, model.expert_probabilities(x)[0].numpy(), atol=1e-5)


def test_explain_command_writes_pngs_and_reports_bad_files(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "c", size=64)
    write_image(tmp_path / "imgs" / "a.jpg", size=(80, 60))
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"")
    assert main(["explain", str(tmp_path / "imgs"), "--weights", str(ckpt), "--out", str(tmp_path / "out")]) == 1
    pngs = list((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
