"""Turn the `predict` arguments (files, folders, globs, label/list files) into (name, path) items."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from deepfake_moe.data.image_io import is_image_path
from deepfake_moe.data.manifest import read_challenge_labels, read_csv_table, read_manifest
from deepfake_moe.data.video_io import is_video_path

LIST_SUFFIXES = {".txt", ".csv", ".parquet"}


@dataclass(frozen=True)
class InputItem:
    name: str  # how the image (or video) is named in challenge output: img_name, or the path relative to its folder
    path: str  # where it is read from
    error: str = ""  # set when the input yields no image at all (an empty folder): its row says so


def expand_inputs(args: list[str], root: str | None = None) -> list[InputItem]:
    items: list[InputItem] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and (is_image_path(f) or is_video_path(f)))
            items += [InputItem(f.relative_to(p).as_posix(), str(f)) for f in files]
            if not files:
                items.append(InputItem(arg, arg, "folder holds no image files"))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            items += read_list_file(p, root)
        elif p.exists() or not glob.has_magic(arg):
            # A missing file still yields a row: its error says "file not found".
            items.append(InputItem(arg, str(Path(root) / arg) if root and not os.path.isabs(arg) else arg))
        else:
            matches = sorted(m for m in glob.glob(arg, recursive=True) if os.path.isfile(m))
            items += [InputItem(m, m) for m in matches]
    return items


def read_list_file(path: Path, root: str | None) -> list[InputItem]:
    """Challenge label/list files (`img_name[,target]`), any CSV with a `path` column, or a manifest."""
    if path.suffix.lower() == ".parquet":
        return [InputItem(p, p) for p in read_manifest(path, root=root)["path"]]
    table = read_csv_table(path)
    if "img_name" in table.columns:
        names = table["img_name"].astype(str).tolist()
        manifest = read_challenge_labels(path, root=root)
        return [InputItem(n, p) for n, p in zip(names, manifest["path"])]
    if "path" in table.columns:
        base = Path(root) if root else path.parent
        return [InputItem(n, n if os.path.isabs(n) else str(base / n)) for n in table["path"].astype(str)]
    # A bare list of paths, one per line, no header.
    base = Path(root) if root else path.parent
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return [InputItem(n, n if os.path.isabs(n) else str(base / n)) for n in lines]
