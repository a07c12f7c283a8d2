"""A registry of augmentation families: named, seeded transforms of a real image.

A family makes either a fake (label 1) or a benign real variant (label 0) from one real image,
and records what it did (its parameters and, for edits, the mask of changed pixels), so every
generated image can be traced and every family can be tested on "changed where its mask says".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class AugmentResult:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    params: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable record of what was done
    mask: np.ndarray | None = None  # bool (H, W): pixels the family meant to change; None = whole image


class DonorSource(Protocol):
    """Gives families that need a second real image (splicing, face swap) one, reproducibly."""

    def __call__(self, rng: np.random.Generator) -> tuple[str, np.ndarray]: ...


@dataclass
class AugmentContext:
    donor: DonorSource | None = None
    options: dict[str, Any] = field(default_factory=dict)  # family-specific settings from the config


AugmentFn = Callable[[np.ndarray, np.random.Generator, AugmentContext], AugmentResult]


@dataclass(frozen=True)
class Family:
    name: str
    label: int  # 1 = makes a fake, 0 = benign real variant
    fn: AugmentFn
    kind: str  # "edit", "benign", "generative"
    description: str = ""


FAMILIES: dict[str, Family] = {}


def register(name: str, label: int, kind: str, description: str = "") -> Callable[[AugmentFn], AugmentFn]:
    if label not in (0, 1):
        raise ValueError("label must be 0 (benign real variant) or 1 (fake)")

    def deco(fn: AugmentFn) -> AugmentFn:
        if name in FAMILIES:
            raise ValueError(f"augmentation family {name!r} registered twice")
        FAMILIES[name] = Family(name, label, fn, kind, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def get_family(name: str) -> Family:
    _load_builtin()
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown augmentation family {name!r}; known: {sorted(FAMILIES)}") from None


def list_families() -> list[Family]:
    _load_builtin()
    return [FAMILIES[k] for k in sorted(FAMILIES)]


def _load_builtin() -> None:
    """Import the modules whose decorators fill the registry (optional ones may be absent)."""
    import importlib

    for module in ("edit", "benign", "gan", "faceswap", "diffusion", "dcgan", "autoencoder", "stylegan"):
        try:
            importlib.import_module(f"deepfake_moe.augment.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"deepfake_moe.augment.{module}":
                raise
