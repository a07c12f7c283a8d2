"""The corpus's reals: LFW faces and package photos, cut, encoded like every generated image, listed.

OUT/reals/<dataset>/*.jpg and OUT/reals/manifest.parquet (`origin` = the photo a crop came from,
`dataset`, `identity` = LFW person or photo, for identity-wise splits). Reals are never enlarged:
LFW faces keep their native 150 px (or are shrunk to a smaller --size), photos are shrunk or cut at
native resolution. Reals leave through the same output chain (augment/chain.py: downscales, colour
work, Pillow/OpenCV JPEG or PNG) as every generated image, so neither can mean "real".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np

from deepfake_moe.augment.corpus.crops import MIN_DETAIL, crops_of, detail, native_or_shrunk
from deepfake_moe.augment.corpus.sources import LFW_ENV, PHOTO_SOURCES, PhotoSource, debian_roots

OUTPUT_CHAIN: dict = {}  # augment/chain.py's defaults, for reals and generated images alike


def stable_rank(key: str) -> str:
    """A stable pseudo-random order (for choosing a subset of reals) that needs no rng state."""
    return hashlib.sha1(key.encode()).hexdigest()


def write_real(rgb: np.ndarray, out: Path, rel_stem: str) -> str:
    """Write a real through the output chain (its draw seeded by the path); returns its path
    relative to `out` (the chain picks the extension). An existing one is kept: gathering resumes."""
    from deepfake_moe.augment.chain import OutputChain, finish
    from deepfake_moe.io import atomic_write

    done = existing_real(out, rel_stem)
    if done:
        return done
    seed = np.random.SeedSequence(int(stable_rank(rel_stem)[:16], 16))
    data, ext, _ = finish(np.ascontiguousarray(rgb), np.random.default_rng(seed), OutputChain.from_dict(OUTPUT_CHAIN))
    with atomic_write(out / f"{rel_stem}.{ext}", "wb") as f:
        f.write(data)
    return f"{rel_stem}.{ext}"


def existing_real(out: Path, rel_stem: str) -> str | None:
    for ext in ("jpg", "png"):
        if (out / f"{rel_stem}.{ext}").exists():
            return f"{rel_stem}.{ext}"
    return None


def chain_copies(manifest_path: Path, out_dir: Path) -> Path:
    """Each image of a manifest through the output chain into `out_dir` (resumable), with its manifest:
    face crops (lossless PNGs) become reals that left through the chain like the fakes made from them."""
    import pandas as pd

    from deepfake_moe.data.decode_pool import decoded_image, read_images
    from deepfake_moe.data.manifest import read_manifest, write_manifest

    df = read_manifest(manifest_path)
    records = df.to_dict("records")
    done = [existing_real(out_dir, Path(r["path"]).stem) for r in records]
    decoded = read_images([r["path"] for r, rel in zip(records, done) if rel is None])  # in capped workers, in order
    rows = []
    for row, rel in zip(records, done):
        if rel is None:
            rel = write_real(decoded_image(next(decoded), row["path"]), out_dir, Path(row["path"]).stem)
        rows.append({**row, "path": str(out_dir / rel)})
    return write_manifest(pd.DataFrame(rows, columns=df.columns), out_dir / "manifest.parquet")


def gather_lfw(tar_path: Path, out: Path, size: int, limit: int | None, progress: bool) -> list[dict]:
    import cv2
    from tqdm import tqdm

    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")]
        members.sort(key=lambda m: stable_rank(os.path.basename(m.name)))
        if limit is not None:
            members = members[:limit]
        rows = []
        for m in tqdm(members, desc="reals: lfw", unit="img", disable=not progress, file=sys.stderr):
            stem = Path(m.name).stem
            rel = existing_real(out, f"lfw/{stem}")
            if rel is None:
                buf = np.frombuffer(tar.extractfile(m).read(), np.uint8)
                bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                if bgr is None:
                    continue
                rel = write_real(native_or_shrunk(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size), out, f"lfw/{stem}")
            person = re.sub(r"_\d+$", "", stem)
            rows.append({"path": rel, "origin": f"lfw/{stem}", "dataset": "lfw", "identity": f"lfw/{person}", "photo": m.name})
    return rows


def gather_photos(source: PhotoSource, files: list[Path], out: Path, size: int) -> list[dict]:
    from deepfake_moe.data.decode_pool import DecodeFailure, read_images

    rows = []
    for path, rgb in zip(files, read_images([str(p) for p in files])):
        if isinstance(rgb, DecodeFailure):
            print(f"corpus: skipped {path}: {rgb.reason}", file=sys.stderr)
            continue
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)
        for tile, crop in crops_of(rgb, size):
            if detail(crop) < MIN_DETAIL:
                continue
            rel = write_real(crop, out, f"{source.dataset}/{stem}-{tile}")
            origin = f"{source.dataset}/{stem}"
            rows.append({"path": rel, "origin": origin, "dataset": source.dataset, "identity": origin, "photo": str(path)})
    return rows


def gather_reals(
    out_dir: Path, size: int, limit_reals: int | None, lfw: Path | None, sources: tuple[PhotoSource, ...] = PHOTO_SOURCES, progress: bool = True
) -> tuple[Path, dict]:
    """Write the real crops and their manifest; cached by the settings and the files found."""
    import pandas as pd

    from deepfake_moe.data.manifest import write_manifest
    from deepfake_moe.io import atomic_write

    reals_dir = out_dir / "reals"
    roots = debian_roots()
    found = {s.dataset: s.files(roots) for s in sources}
    settings = {
        "size": size,
        "limit_reals": limit_reals,
        "lfw": str(lfw) if lfw else None,
        "min_detail": MIN_DETAIL,
        "never_enlarged": True,  # reals of corpora built before were enlarged: gathered again
        "output_chain": OUTPUT_CHAIN,
        "photos": {k: [str(p) for p in v] for k, v in found.items()},
    }
    stamp, manifest_path = reals_dir / "gather.json", reals_dir / "manifest.parquet"
    if stamp.exists() and manifest_path.exists() and json.loads(stamp.read_text()) == settings:
        return manifest_path, settings
    if stamp.exists():  # gathered with other settings: its files must not be resumed from
        shutil.rmtree(reals_dir)
    rows = gather_lfw(lfw, reals_dir, size, limit_reals, progress) if lfw else []
    for source in sources:
        rows += gather_photos(source, found[source.dataset], reals_dir, size)
    if not rows:
        raise FileNotFoundError(f"no real photos found: no LFW archive (set ${LFW_ENV} or --lfw) and no package photos")
    df = pd.DataFrame(rows)
    df["path"] = [str(reals_dir / p) for p in df["path"]]
    df.insert(1, "label", 0)
    df.insert(2, "source", "real")
    write_manifest(df, manifest_path)
    with atomic_write(stamp) as f:
        json.dump(settings, f, indent=1)
    return manifest_path, settings
