"""Where deepfake-moe keeps files it can re-make: one cache root, one variable.

`DEEPFAKE_MOE_CACHE` (default `~/.cache/deepfake-moe`) holds a folder per kind: `onnx` (exported
models), `realesrgan`, `span`, `realcugan`, `waifu2x` (super-resolution nets fetched for their families), `debian` (photo packages unpacked by
`corpus --fetch`). Tests point the variable at a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DEEPFAKE_MOE_CACHE"


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "deepfake-moe"


def cache_dir(kind: str) -> Path:
    """The cache folder for one kind of file (not created: writers make it when they write)."""
    if not kind or Path(kind).is_absolute() or ".." in Path(kind).parts:
        raise ValueError(f"cache kind must be a relative folder name, got {kind!r}")
    return cache_root() / kind
