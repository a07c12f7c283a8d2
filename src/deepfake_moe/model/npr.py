"""NPR: the upsampling-artefact detector of Tan et al., CVPR 2024 ("Rethinking the Up-Sampling
Operations in CNN-based Generative Network for Generalizable Deepfake Detection").

A generator's decoder makes its output by up-sampling (nearest, transposed convolution, pixel
shuffle), so neighbouring pixels in every 2x2 block are correlated in a way a camera's pixels are
not. NPR exposes that: the input is x - up(down(x)) with nearest-neighbour resampling by 2, the
Neighbouring Pixel Relationships, fed to a ResNet-50 cut after layer2 (about 1.4M parameters,
trained from scratch, no pretrained weights). The trace lives at the pixel scale, so the network
must see native-resolution pixels: resizing the image first erases it (see model/backbones.py:
NPR experts get a native-resolution crop view).

The network follows the authors' code (networks/resnet.py of chuangchuangtan/NPR-DeepfakeDetection):
3x3 stride-2 stem on NPR * 2/3, max-pool, Bottleneck layer1 (64) and layer2 (128, stride 2),
global average pool, linear head. It exposes timm's interface (forward_features, forward_head,
get_classifier, num_features) so an Expert wraps it like any timm backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.resnet import Bottleneck
from torch import nn


def neighbouring_pixel_residual(x: torch.Tensor) -> torch.Tensor:
    """x - up(down(x)): nearest-neighbour down-sampling by 2 (keep the even pixels) and back up.

    Zero wherever the 2x2 block repeats its top-left pixel (what nearest up-sampling makes). Odd
    sizes are fine: the up-sampled map is cut to x's size.
    """
    h, w = x.shape[-2:]
    up = F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
    return x - up[..., :h, :w]


def _bottleneck_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    out = planes * Bottleneck.expansion
    down = None
    if stride != 1 or inplanes != out:
        down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    layers = [Bottleneck(inplanes, planes, stride=stride, downsample=down)]
    layers += [Bottleneck(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class NprResNet(nn.Module):
    """ResNet (Bottleneck blocks) cut after layer2, on the neighbouring-pixel residual."""

    def __init__(self, layers: Sequence[int] = (3, 4), width: int = 64, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _bottleneck_layer(width, width, layers[0], stride=1)
        self.layer2 = _bottleneck_layer(width * Bottleneck.expansion, width * 2, layers[1], stride=2)
        self.num_features = width * 2 * Bottleneck.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():  # torchvision's / the authors' initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(neighbouring_pixel_residual(x) * (2.0 / 3.0))
        x = self.maxpool(self.act1(self.bn1(x)))
        return self.layer2(self.layer1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
