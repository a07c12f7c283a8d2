"""Face-crop datasets: every image of a manifest cut to its largest face, framed like `predict --faces`.

`manifest --faces DIR`, `prepare` (config `faces: true` or `--faces`) and `corpus --faces` all go
through `crop_manifest`, and `predict --faces` crops with the same `augment.faces.crop_box`, so a
model trained on these crops is scored on the same framing. Crops are written losslessly (PNG): the
only encoder traces are those the source image already had.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import pandas as pd

from deepfake_moe.io import atomic_write

MANIFEST = "manifest.parquet"
FAILURES = "no_face.csv"


def crop_name(path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)[:60]
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}.png"


def _write_crop(item: tuple[str, str]) -> str:
    """'' when the crop of `src`'s largest face is at `dst` (made now or by an earlier run), else why not:
    the task of a capped decode-pool worker, (src, dst) -> reason."""
    src, dst = item[0], Path(item[1])
    from PIL import Image

    from deepfake_moe.augment.faces import crop_face, find_faces
    from deepfake_moe.data.image_io import ImageReadError, read_image

    if dst.is_file():
        return ""
    try:
        rgb = read_image(src)
    except ImageReadError as e:
        return e.reason
    found = find_faces(rgb)
    if not found:
        return "no face found"
    with atomic_write(dst, "wb") as f:
        Image.fromarray(crop_face(rgb, found[0])).save(f, "PNG")
    return ""


def crop_manifest(table: pd.DataFrame, out_dir: str | os.PathLike, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Crop every row's image (absolute `path`s) into `out_dir`; returns (the crops' manifest, written in
    `out_dir` with paths relative to it; the rows left out with their reason, also in `no_face.csv`).

    Resumable: crops already in `out_dir` are kept. Other columns (label, source, origin...) are kept.
    """
    from tqdm import tqdm

    from deepfake_moe.augment.faces import load_detector
    from deepfake_moe.data.decode_pool import DecodeFailure, DecodePool, default_workers
    from deepfake_moe.data.manifest import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept, failed = [], []
    rows = table.to_dict("records")
    load_detector()  # once, here: the forked decoding workers share it
    items = [(str(row["path"]), str(out / crop_name(str(row["path"])))) for row in rows]
    results = DecodePool(_write_crop, default_workers()).map(items)
    for row, (_, crop_path), result in tqdm(zip(rows, items, results), total=len(rows), desc="face crops",
                                            unit="img", disable=not progress, file=sys.stderr):
        reason = result.reason if isinstance(result, DecodeFailure) else str(result)
        if reason:
            failed.append({"path": row["path"], "error": reason})
        else:
            kept.append({**row, "path": crop_path})
    crops = pd.DataFrame(kept, columns=list(table.columns))
    failures = pd.DataFrame(failed, columns=["path", "error"])
    with atomic_write(out / FAILURES, newline="") as f:
        failures.to_csv(f, index=False)
    return write_manifest(crops, out / MANIFEST), failures
