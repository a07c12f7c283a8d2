"""Expert backbones by name: the project's own (registered here), and every timm model.

A backbone has timm's interface (forward_features, forward_head(pre_logits=...), get_classifier,
num_features) and a 2-class head. Each registered type also says how it must look at an image:
`native_resolution` backbones see crops of the image's own pixels (never a resized image),
because what they detect lives at the pixel scale and any resampling erases it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import timm
from torch import nn

from deepfake_moe.model.npr import NprResNet


@dataclass(frozen=True)
class BackboneType:
    build: Callable[[], nn.Module]
    native_resolution: bool = False
    """True: the expert's default view is native-resolution crops (PreprocessConfig mode "native")."""
    summary: str = ""


BACKBONES: dict[str, BackboneType] = {
    "npr_resnet50_l2": BackboneType(
        partial(NprResNet, layers=(3, 4), width=64), native_resolution=True,
        summary="NPR (Tan et al. 2024): ResNet-50 cut after layer2 on x - up(down(x)), 1.4M parameters",
    ),
    "npr_test": BackboneType(
        partial(NprResNet, layers=(1, 1), width=8), native_resolution=True,
        summary="a tiny NPR network for tests (8k parameters)",
    ),
}


def is_backbone(name: str) -> bool:
    return name in BACKBONES or timm.is_model(name)


def needs_native_resolution(name: str) -> bool:
    entry = BACKBONES.get(name)
    return entry is not None and entry.native_resolution


def create_backbone(name: str, pretrained: bool = False, **timm_kwargs) -> nn.Module:
    """The backbone `name` with a 2-class head: one of BACKBONES, else timm.create_model(name)."""
    entry = BACKBONES.get(name)
    if entry is None:
        return timm.create_model(name, pretrained=pretrained, num_classes=2, **timm_kwargs)
    if pretrained or timm_kwargs:
        raise ValueError(f"{name} is trained from scratch: it has no pretrained weights or timm options")
    return entry.build()
