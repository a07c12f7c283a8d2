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

from deepfake_moe.data.decode_pool import DecodeBudget, DecodePool, decoded_image
from deepfake_moe.data.image_io import ImageLimits, ImageReader
from deepfake_moe.data.transforms import PreprocessConfig, normalize, preprocess, preprocess_views, to_tensor
from deepfake_moe.model.checkpoint import ModelConfig
from deepfake_moe.model.groups import join
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.model.uncertainty import uncertainty, verdicts


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
    return torch.stack(maps).mean(0).cpu().numpy(), np.array(probs)


DISPLAY_MAX_SIDE = 768  # face mode shows the whole image, shrunk to this side


def _resize(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()
    out = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return np.asarray(out[0].permute(1, 2, 0).clamp(0, 255).byte())


def heatmap(model: Mixture, config: ModelConfig, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Grad-CAM heatmap of the image, the per-expert probabilities `predict` gives it)."""
    views = config.views()[0]
    device = next(model.parameters()).device  # the server may hold the model on a GPU
    model.zero_grad(set_to_none=True)
    inputs = [_explain_input(rgb, v)[None].to(device) for v in views]
    size = next((tuple(x.shape[-2:]) for x, v in zip(inputs, views) if v.mode != "native"), rgb.shape[:2])
    heat, _ = gradcam(model, *inputs, size=size)
    with torch.inference_mode():  # the probabilities `predict` gives (native views: over their crops)
        probs = model.expert_probabilities(*(x[None].to(device) for x in preprocess_views(rgb, views)))[0].cpu().numpy()
    return heat, probs


def _whole_image(model: Mixture, config: ModelConfig, rgb: np.ndarray, max_faces: int = 0):
    """(shown image, heatmap, expert probabilities, no face boxes) for the whole image."""
    heat, probs = heatmap(model, config, rgb)
    return _resize(rgb, heat.shape), heat, probs, []


def _face_crops(model: Mixture, config: ModelConfig, rgb: np.ndarray, max_faces: int):
    """Grad-CAM of every face crop pasted into a heatmap of the whole image; the image's expert
    probabilities are those of its most fake face, as `predict --faces` scores it."""
    from deepfake_moe.augment.faces import crop_box
    from deepfake_moe.infer.faces import face_crops

    crops, faces = face_crops(rgb, max_faces)
    if not faces:
        return _whole_image(model, config, rgb)
    h, w = rgb.shape[:2]
    s = min(1.0, DISPLAY_MAX_SIDE / max(h, w))
    shown = _resize(rgb, (max(1, round(h * s)), max(1, round(w * s))))
    canvas = np.zeros(shown.shape[:2], np.float32)
    results = []
    for crop, face in zip(crops, faces):
        heat, probs = heatmap(model, config, crop)
        x, y, side, _ = crop_box(face, rgb.shape)
        x0, y0 = round(x * s), round(y * s)
        x1, y1 = min(canvas.shape[1], round((x + side) * s)), min(canvas.shape[0], round((y + side) * s))
        if x1 > x0 and y1 > y0:
            patch = F.interpolate(torch.from_numpy(heat)[None, None], size=(y1 - y0, x1 - x0), mode="bilinear")[0, 0]
            canvas[y0:y1, x0:x1] = np.maximum(canvas[y0:y1, x0:x1], patch.numpy())
        results.append((face, probs))
    _, best = max(results, key=lambda r: join(r[1], config.groups))
    boxes = [(tuple(round(v * s) for v in face.box), float(join(probs, config.groups))) for face, probs in results]
    return shown, canvas, best, boxes


def explain_image(model: Mixture, config: ModelConfig, path: str | os.PathLike, out_png: str | os.PathLike,
                  faces: bool = False, max_faces: int = 8, limits: ImageLimits | None = None,
                  budget: DecodeBudget | None = None) -> float:
    """Write a side-by-side PNG (image | heatmap overlay) and return the mixture's fake probability.

    `faces`: explain each face's crop (as `predict --faces` scores it) and draw the face boxes with their
    probabilities over the heatmap; the whole image is explained when no face is found. The file is decoded
    in a capped decode-pool worker under `limits` and `budget`, as `predict` decodes it.
    """
    rgb = decode_capped(ImageReader(config.image_backend, limits or ImageLimits()), str(path), budget)
    return explain_rgb(model, config, rgb, Path(path).name, out_png, faces, max_faces)


def explain_video(model: Mixture, config: ModelConfig, path: str | os.PathLike, out_png: str | os.PathLike,
                  faces: bool = False, max_faces: int = 8, video=None, limits: ImageLimits | None = None,
                  budget: DecodeBudget | None = None) -> float:
    """Explain a video's most fake sampled frame (scored as `predict` scores the video, decoded in capped
    workers)."""
    from deepfake_moe.data.video_io import VideoReadError
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.video import ReadFrame

    predictor = Predictor(model, config, num_workers=1, faces=faces, max_faces=max_faces, video=video,
                          limits=limits, decode_budget=budget)
    row = predictor.predict([str(path)])[0]
    if row.error:
        raise VideoReadError(path, row.error)
    best = max(row.frames, key=lambda f: f.probability)
    rgb = decode_capped(ReadFrame(predictor.max_pixels), (str(path), best.index), budget)
    title = f"{Path(path).name} @ {best.time:.2f} s (frame {best.index}; video P(fake) {row.probability:.3f})"
    return explain_rgb(model, config, rgb, title, out_png, faces, max_faces)


def decode_capped(task, item, budget: DecodeBudget | None = None) -> np.ndarray:
    """`task(item)`, an RGB uint8 array, decoded in one capped worker; a failure is an ImageReadError of its kind."""
    with DecodePool(task, 1, budget) as pool:
        return decoded_image(pool.call(item), item if isinstance(item, str) else item[0])


def explain_rgb(model: Mixture, config: ModelConfig, rgb: np.ndarray, title: str, out_png: str | os.PathLike,
                faces: bool = False, max_faces: int = 8) -> float:
    """Write the explanation PNG of an RGB image (atomically) and return the mixture's fake probability."""
    from deepfake_moe.io import atomic_write

    png, p = explanation_png(model, config, rgb, title, faces, max_faces)
    with atomic_write(out_png, "wb") as f:
        f.write(png)
    return p


def explanation_png(model: Mixture, config: ModelConfig, rgb: np.ndarray, title: str,
                    faces: bool = False, max_faces: int = 8) -> tuple[bytes, float]:
    """A side-by-side PNG (image | heatmap overlay) and the mixture's fake probability.

    Draws on its own matplotlib Figure (no pyplot state), so several threads may call it (the server does).
    """
    import io

    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    model.eval()
    shown, heat, probs, boxes = (_face_crops if faces else _whole_image)(model, config, rgb, max_faces)
    p = float(join(probs, config.groups))
    verdict, unc = verdict_of(model, config, None if faces else rgb, probs)
    if not np.isnan(unc):
        verdict = f"{verdict}, uncertainty {unc:.2f}"
    fig = Figure(figsize=(8, 4.3))
    axes = fig.subplots(1, 2)
    axes[0].imshow(shown)
    axes[0].set_title(title, fontsize=9)
    axes[1].imshow(shown)
    im = axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for (x, y, w, h), q in boxes:
        colour = "red" if q >= config.threshold else "lime"
        axes[1].add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1.5))
        axes[1].text(x, y - 2, f"{q:.2f}", color=colour, fontsize=8, va="bottom", weight="bold")
    axes[1].set_title(f"P(fake) = {p:.3f} ({verdict}); experts: " + ", ".join(f"{q:.2f}" for q in probs), fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label="Grad-CAM (fake evidence)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    return buf.getvalue(), p


def verdict_of(model: Mixture, config: ModelConfig, rgb: np.ndarray | None, probs: np.ndarray) -> tuple[str, float]:
    """The predictor's verdict and uncertainty for an image scored whole (nan without fitted statistics,
    or for `rgb=None`: face crops, whose uncertainty is not computed here)."""
    unc = np.full(1, np.nan)
    if model.distances is not None and rgb is not None:
        device = next(model.parameters()).device
        with torch.inference_mode():
            _, d = model.expert_outputs(*(x[None].to(device) for x in preprocess_views(rgb, config.views()[0])))
        unc = uncertainty(probs[None], d.float().cpu().numpy(), config.uncertainty.reference, config.groups)
    verdict = verdicts(np.array([join(probs, config.groups)]), unc, config.threshold, config.uncertainty_threshold)[0]
    return str(verdict), float(unc[0])


def _explain_input(rgb: np.ndarray, view: PreprocessConfig) -> torch.Tensor:
    """The view's input, except that a native view reads the whole image (its network is convolutional)."""
    if view.mode == "native":
        return normalize(to_tensor(rgb), view.mean, view.std)
    return preprocess(rgb, view)
