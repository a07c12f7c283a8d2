"""Pooled-feature extraction for clustering, cached on disk and resumable.

The cache is a folder named by a hash of (image paths, encoder, preprocessing): `features.npy`
(a memory-mapped float32 array, one row per manifest row), `done.npy` (one byte per row, set once
the row's features are on disk), `errors.tsv` (rows that could not be read) and `meta.json`.
Rows are marked done only after their features are flushed, so a killed run continues where it
stopped and a finished one is never encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfake_moe.data.dataset import PooledLoader
from deepfake_moe.data.image_io import ImageReadError, read_image
from deepfake_moe.data.transforms import PreprocessConfig, preprocess
from deepfake_moe.errors import ConfigError
from deepfake_moe.io import atomic_path, atomic_write
from deepfake_moe.split.config import EncoderConfig

FEATURES_FILE, DONE_FILE, ERRORS_FILE, META_FILE = "features.npy", "done.npy", "errors.tsv", "meta.json"


@dataclass
class Encoder:
    module: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) -> (B, dim) pooled features
    network: torch.nn.Module  # what `module` runs: moved to the device, put in eval mode
    preprocess: PreprocessConfig
    dim: int
    identity: dict  # everything that changes the features; part of the cache key


@dataclass
class EncodedFeatures:
    features: np.ndarray  # (n, dim) float32, memory-mapped read-only; rows of unreadable images are 0
    ok: np.ndarray  # (n,) bool: the image was read and encoded
    errors: dict[int, str] = field(default_factory=dict)  # row -> why it could not be read
    cache_dir: Path = Path()
    encoded: int = 0  # rows encoded by this call (0: everything came from the cache)


def _is_checkpoint(name: str) -> bool:
    from deepfake_moe.model.checkpoint import CONFIG_FILE

    p = Path(name)
    return p.is_dir() and (p / CONFIG_FILE).is_file() or p.name == CONFIG_FILE and p.is_file()


def _file_fingerprint(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """A timm backbone (with ImageNet weights from `cfg.pretrained`) or one of our checkpoints."""
    if _is_checkpoint(cfg.name):
        return _checkpoint_encoder(cfg)
    return _timm_encoder(cfg)


def _timm_encoder(cfg: EncoderConfig) -> Encoder:
    import timm

    from deepfake_moe.model.expert import Expert
    from deepfake_moe.model.pretrained import init_backbone

    if not timm.is_model(cfg.name):
        raise ConfigError(f"encoder {cfg.name!r} is neither a timm model name nor a checkpoint folder")
    # A fixed seed makes a randomly initialised ("none") encoder the same network every run, so its
    # cached features stay valid.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expert = Expert(cfg.name).eval()
    report = init_backbone(expert, cfg.name, cfg.pretrained)
    source = cfg.pretrained
    if os.path.isfile(source):
        source = _file_fingerprint(source)
    pre = PreprocessConfig(input_size=cfg.size or 224, mean=list(report["mean"]), std=list(report["std"]), mode="fast")
    identity = {"kind": "timm", "name": cfg.name, "pretrained": source, "preprocess": asdict(pre),
                "image_backend": cfg.image_backend}
    return Encoder(expert.features, expert, pre, expert.num_features, identity)


def _checkpoint_encoder(cfg: EncoderConfig) -> Encoder:
    from deepfake_moe.model.checkpoint import WEIGHTS_FILE, load_checkpoint, resolve

    folder = resolve(cfg.name)
    model, mcfg = load_checkpoint(folder)
    chosen = list(range(len(model.experts))) if cfg.expert == "all" else [0]
    views, view_index = mcfg.views()
    used = {view_index[i] for i in chosen}
    if len(used) > 1:
        raise ConfigError(
            f"{folder}: its experts read the image through different views; encode with the first expert only"
        )
    view = views[used.pop()]
    # One crop per image: the features of a native view come from its centre crop.
    pre = PreprocessConfig(**{**asdict(view), "input_size": cfg.size or view.input_size, "tiles": 1})
    experts = [model.experts[i] for i in chosen]

    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e.features(x) for e in experts], dim=1)

    identity = {
        "kind": "checkpoint",
        "weights": _file_fingerprint(folder / WEIGHTS_FILE),
        "expert": cfg.expert,
        "preprocess": asdict(pre),
        "image_backend": cfg.image_backend,
    }
    return Encoder(features, model, pre, sum(e.num_features for e in experts), identity)


class ImageRows(Dataset):
    """Manifest rows as (row index, preprocessed image, error text); unreadable rows give zeros."""

    def __init__(self, paths: list[str], pre: PreprocessConfig, backend: str = "pil"):
        self.paths, self.pre, self.backend = paths, pre, backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            rgb = read_image(self.paths[i], backend=self.backend)
            return {"index": i, "image": preprocess(rgb, self.pre), "error": ""}
        except ImageReadError as e:
            return self.failed(i, e.reason or "unreadable")

    def failed(self, i: int, reason: str) -> dict:
        return {"index": i, "image": torch.zeros(3, self.pre.input_size, self.pre.input_size), "error": reason}


def collate_rows(items: list[dict]) -> dict:
    return {"indices": np.array([it["index"] for it in items]), "images": torch.stack([it["image"] for it in items]),
            "errors": [it["error"] for it in items]}


def cache_key(paths: list[str], identity: dict) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    h.update(json.dumps(identity, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _open_cache(folder: Path, n: int, dim: int, meta: dict) -> tuple[np.memmap, np.memmap]:
    """Create the cache files if absent (atomically), then open both read-write."""
    folder.mkdir(parents=True, exist_ok=True)
    feats_path, done_path = folder / FEATURES_FILE, folder / DONE_FILE
    if feats_path.is_file():
        feats = np.load(feats_path, mmap_mode="r+")
        if feats.shape != (n, dim) or feats.dtype != np.float32:
            raise RuntimeError(f"feature cache {feats_path} has shape {feats.shape}, expected {(n, dim)}; delete it")
    else:
        with atomic_path(feats_path) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim)).flush()
        # A new features file invalidates any stale progress marks.
        done_path.unlink(missing_ok=True)
        feats = np.load(feats_path, mmap_mode="r+")
    if not done_path.is_file():
        with atomic_path(done_path) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n,)).flush()
    done = np.load(done_path, mmap_mode="r+")
    if not (folder / META_FILE).is_file():
        with atomic_write(folder / META_FILE) as f:
            json.dump(meta, f, indent=2)
    return feats, done


def _read_errors(folder: Path) -> dict[int, str]:
    errors = {}
    path = folder / ERRORS_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            index, _, reason = line.partition("\t")
            if index.isdigit():
                errors[int(index)] = reason
    return errors


def encode(
    paths: list[str],
    cfg: EncoderConfig,
    cache_root: str | os.PathLike,
    progress: bool = True,
    encoder: Encoder | None = None,
) -> EncodedFeatures:
    """Features for every path, from the cache where present; new rows are written as they finish."""
    from tqdm import tqdm

    paths = [str(p) for p in paths]
    encoder = encoder or build_encoder(cfg)
    key = cache_key(paths, encoder.identity)
    folder = Path(cache_root) / f"features-{key}"
    meta = {"rows": len(paths), "dim": encoder.dim, "encoder": encoder.identity, "key": key}
    feats, done = _open_cache(folder, len(paths), encoder.dim, meta)
    pending = np.flatnonzero(done == 0)
    if len(pending):
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if cfg.device == "auto" else cfg.device)
        encoder.network.to(device).eval()
        todo = pending.tolist()
        batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
        loader = PooledLoader(ImageRows(paths, encoder.preprocess, cfg.image_backend), batches, collate_rows,
                              cfg.num_workers, pin_memory=device.type == "cuda")
        bar = tqdm(total=len(paths), initial=len(paths) - len(pending), desc="encode", unit="img",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
        with torch.inference_mode(), open(folder / ERRORS_FILE, "a", encoding="utf-8") as err_log:
            for batch in loader:
                rows, reasons = batch["indices"], batch["errors"]
                out = encoder.module(batch["images"].to(device)).float().cpu().numpy()
                bad = [j for j, r in enumerate(reasons) if r]
                out[bad] = 0.0
                feats[rows] = out
                feats.flush()
                for j in bad:
                    err_log.write(f"{rows[j]}\t{reasons[j].replace(chr(9), ' ').replace(chr(10), ' ')}\n")
                err_log.flush()
                done[rows] = 1
                done.flush()
                bar.update(len(rows))
        bar.close()
    errors = _read_errors(folder)
    ok = np.ones(len(paths), dtype=bool)
    ok[list(errors)] = False
    del feats, done
    return EncodedFeatures(np.load(folder / FEATURES_FILE, mmap_mode="r"), ok, errors, folder, len(pending))
