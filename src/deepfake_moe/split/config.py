"""Configuration of the split stage, saved as OUT/split.yaml (light imports: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepfake_moe.split.cluster import ClusterConfig
from deepfake_moe.split.plot import PlotConfig

EXPERT_CHOICES = ("0", "all")  # checkpoint encoders: features of expert 0, or all experts concatenated


@dataclass
class EncoderConfig:
    """Which network turns an image into a feature vector, and how the images are fed to it."""

    name: str = "efficientnet_lite0"  # a timm backbone, or one of our checkpoint folders
    pretrained: str = "offline"  # timm backbones: none | offline | timm | path to a weight file
    size: int | None = None  # input size; None: 224 for timm backbones, the checkpoint's own size
    expert: str = "0"  # checkpoints: "0" (first expert) or "all" (concatenated)
    batch_size: int = 64
    num_workers: int = 2
    device: str = "cpu"  # cpu | cuda | auto
    image_backend: str = "pil"

    def __post_init__(self):
        if self.expert not in EXPERT_CHOICES:
            raise ValueError(f"expert must be one of {EXPERT_CHOICES}, got {self.expert!r}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")



@dataclass
class SplitConfig:
    manifest: str
    out: str
    cache_dir: str = ""  # "" = OUT/features
    root: str = ""  # folder relative manifest paths resolve against; "" = the manifest's folder
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    make_plot: bool = True
