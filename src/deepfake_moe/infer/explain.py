"""Grad-CAM heatmaps: where in the image the experts see evidence of "fake".

For each expert, the gradient of (fake logit - real logit) with respect to the last feature map
weights its channels (Grad-CAM); the mixture's map is the mean of the experts' normalised maps.
Works for any timm backbone whose `forward_features` returns a (B, C, H, W) map (CNNs). An
expert with a native-resolution view is run on the whole image at its own pixels (its network is
convolutional), so its map covers the image rather than one crop.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepfake_moe.data.image_io import read_image
from deepfake_moe.data.transforms import PreprocessConfig, normalize, preprocess, preprocess_views, to_tensor
from deepfake_moe.model.checkpoint import ModelConfig
from deepfake_moe.model.mixture import Mixture


def gradcam(model: Mixture, *views: torch.Tensor, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One (1, 3, S, S) input per view. Returns (heatmap `size` (default: the first view's) in 0..1,
    per-expert fake probabilities on these inputs)."""
    size = tuple(size or views[0].shape[-2:])
    maps, probs = [], []
    for expert, v in zip(model.experts, model.view_index):
        x = views[v]
        backbone = expert.backbone
        with torch.enable_grad():
            feats = backbone.forward_features(x)
            if feats.ndim != 4:
                raise ValueError(f"{expert.backbone_name}: Grad-CAM needs a spatial feature map, got shape {tuple(feats.shape)}")
            feats.retain_grad()
            logits = backbone.forward_head(feats) / model.temperature
            (logits[0, 1] - logits[0, 0]).backward()
        weights = feats.grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feats).sum(dim=1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
        peak = cam.max()
        maps.append(cam / peak if peak > 0 else cam)
        probs.append(logits.detach().float().softmax(1)[0, 1].item())
    return torch.stack(maps).mean(0).numpy(), np.array(probs)


def explain_image(model: Mixture, config: ModelConfig, path: str | os.PathLike, out_png: str | os.PathLike) -> float:
    """Write a side-by-side PNG (image | heatmap overlay) and return the mixture's fake probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepfake_moe.io import atomic_path

    rgb = read_image(path, backend=config.image_backend)
    views = config.views()[0]
    model.eval().zero_grad(set_to_none=True)
    inputs = [_explain_input(rgb, v)[None] for v in views]
    size = next((tuple(x.shape[-2:]) for x, v in zip(inputs, views) if v.mode != "native"), rgb.shape[:2])
    heat, _ = gradcam(model, *inputs, size=size)
    with torch.inference_mode():  # the probabilities `predict` gives (native views: over their crops)
        probs = model.expert_probabilities(*(x[None] for x in preprocess_views(rgb, views)))[0].numpy()
    p = float(probs.mean())
    shown = np.asarray(
        F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=heat.shape, mode="bilinear",
                      antialias=True, align_corners=False)[0].permute(1, 2, 0).clamp(0, 255).byte()
    )
    verdict = "fake" if p >= config.threshold else "real"
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(shown)
    axes[0].set_title(Path(path).name, fontsize=9)
    axes[1].imshow(shown)
    im = axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title(f"P(fake) = {p:.3f} ({verdict}); experts: " + ", ".join(f"{q:.2f}" for q in probs), fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label="Grad-CAM (fake evidence)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return p


def _explain_input(rgb: np.ndarray, view: PreprocessConfig) -> torch.Tensor:
    """The view's input, except that a native view reads the whole image (its network is convolutional)."""
    if view.mode == "native":
        return normalize(to_tensor(rgb), view.mean, view.std)
    return preprocess(rgb, view)
