"""The manifest: the one table that passes between stages.

Columns: `path` (see the path rule below), `label` (0 real, 1 fake, -1
unknown), `source` (`real` for reals, else the generator or edit family), `origin` (id of the
real image a derived image came from; an image's own id otherwise) and, once the split stage has
run, `cluster` and one boolean column per leave-one-cluster-out split, `split_<i>` (True = the
image is in split i's validation cluster). An optional `weight` (>= 0) makes training draw each row
in proportion to it. Parquet is the native format; CSV reads too.

The path rule, the same for every stage: a manifest file stores each path relative to its own
folder (absolute when the image lies outside that folder), so a data folder can be moved or
copied whole; `read_manifest` hands back absolute paths and `write_manifest` takes absolute (or
working-directory-relative) ones. Manifests written before this rule stored paths relative to
the working directory; `read_manifest` recognises them and says how to rewrite them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from deepfake_moe.data.image_io import is_image_path
from deepfake_moe.errors import InputError
from deepfake_moe.io import atomic_path

REQUIRED = ("path", "label")
CORE = ("path", "label", "source", "origin")
WEIGHT_COLUMN = "weight"
REAL, FAKE, UNKNOWN = 0, 1, -1
REAL_DIR_NAMES = {"real", "0_real", "reals", "original", "pristine"}
FAKE_DIR_NAMES = {"fake", "1_fake", "fakes", "manipulated", "generated"}
# Parquet schema metadata marking a manifest written under the path rule (CSV has no such place).
PATH_RULE_KEY, PATH_RULE = b"deepfake_moe.paths", b"relative-to-manifest"
CHECK_SAMPLE = 5000  # start-up checks look at every file up to this many, else at a random sample


class ManifestError(InputError, ValueError):
    """A manifest or label file is malformed; the message lists what is wrong."""


def normalize(df: pd.DataFrame, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Fill defaults, check types and values; paths become absolute when `root` is given."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest lacks column(s) {missing}; it has {list(df.columns)}")
    df = df.copy()
    df["path"] = df["path"].astype(str)
    if root is not None:
        df["path"] = resolve_paths(df["path"], root)
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df.loc[labels.isna() | ~labels.isin([REAL, FAKE, UNKNOWN]), "label"]
    if len(bad):
        raise ManifestError(
            f"{len(bad)} row(s) have a label other than 0 (real), 1 (fake) or -1 (unknown), "
            f"e.g. {bad.head(5).tolist()}"
        )
    df["label"] = labels.astype(np.int64)
    if "source" not in df.columns:
        df["source"] = np.where(df["label"] == REAL, "real", np.where(df["label"] == FAKE, "fake", "unknown"))
    df["source"] = df["source"].fillna("unknown").astype(str)
    if "origin" not in df.columns:
        df["origin"] = df["path"]
    df["origin"] = df["origin"].fillna(df["path"]).astype(str)
    dups = df["path"][df["path"].duplicated()]
    if len(dups):
        raise ManifestError(f"{len(dups)} duplicate path(s), e.g. {dups.head(5).tolist()}")
    cols = list(CORE) + [c for c in df.columns if c not in CORE]
    return df[cols].reset_index(drop=True)


def check_files(df: pd.DataFrame, what: str = "the manifest", sample: int | None = CHECK_SAMPLE,
                limit: int = 10, seed: int = 0) -> None:
    """Raise if listed files are missing, with their count and the first few (stages call it at start-up).

    Up to `sample` rows every file is checked; beyond that a random sample of `sample` rows is,
    which is enough to catch a wrong root or a moved folder in a million-image set.
    """
    paths = df["path"]
    checked = paths if sample is None or len(paths) <= sample else paths.sample(sample, random_state=seed)
    missing = [p for p in checked if not os.path.isfile(p)]
    if not missing:
        return
    scope = f"{len(missing)} of {len(paths)}" if len(checked) == len(paths) else (
        f"{len(missing)} of a random sample of {len(checked)} (out of {len(paths)})")
    shown = "\n  ".join(missing[:limit])
    more = f"\n  ... and {len(missing) - limit} more" if len(missing) > limit else ""
    raise ManifestError(
        f"{scope} file(s) listed in {what} do not exist:\n  {shown}{more}\n"
        "(a manifest's relative paths are relative to its own folder; check the folder was not moved)"
    )


def stored_paths(paths, folder: str | os.PathLike) -> list[str]:
    """Paths as a manifest in `folder` stores them: relative to it when inside it, else absolute."""
    folder = os.path.abspath(folder)
    out = []
    for p in paths:
        absolute = os.path.abspath(p)
        rel = os.path.relpath(absolute, folder)
        out.append(absolute if rel == ".." or rel.startswith(".." + os.sep) else Path(rel).as_posix())
    return out


def resolve_paths(paths, folder: str | os.PathLike) -> list[str]:
    """The reading side of the path rule: relative paths join `folder` (the manifest's own)."""
    return [p if os.path.isabs(p) else str(Path(folder) / p) for p in paths]


def _follows_path_rule(path: Path) -> bool:
    import pyarrow.parquet as pq

    return (pq.read_schema(path).metadata or {}).get(PATH_RULE_KEY) == PATH_RULE


def _legacy_base(paths: pd.Series, manifest: Path) -> Path:
    """The folder a manifest's relative paths resolve against: its own, or for a manifest written by
    an older deepfake-moe (paths relative to the working directory) the working directory, with a note."""
    folder = manifest.absolute().parent
    relative = paths[~paths.map(os.path.isabs)]
    if relative.empty or folder == Path.cwd():
        return folder
    sample = relative.sample(min(len(relative), 200), random_state=0)
    in_folder = sum((folder / p).is_file() for p in sample)
    if in_folder == len(sample) or sum(os.path.isfile(p) for p in sample) <= in_folder:
        return folder
    print(
        f"note: {manifest} stores paths relative to the working directory (written by an older deepfake-moe); "
        "reading them so. Paths in a manifest are now relative to its own folder: rewrite it once with "
        f"`deepfake-moe manifest {manifest} -o NEW.parquet`",
        file=sys.stderr,
    )
    return Path.cwd()


def read_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a manifest (Parquet or CSV); relative paths resolve against `root` or the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    marked = False
    if path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
        marked = _follows_path_rule(path)
    else:
        df = read_csv_table(path)
        if "path" not in df.columns and "img_name" in df.columns:
            return read_challenge_labels(path, root=root)
    if root is None and "path" in df.columns:
        root = path.absolute().parent if marked else _legacy_base(df["path"].astype(str), path)
    return normalize(df, root=root)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write under the path rule: `df`'s paths (absolute or relative to the working directory) are
    stored relative to the manifest's folder, absolute when outside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    df = df.assign(path=stored_paths(df["path"].astype(str), path.absolute().parent))
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".parquet":
            table = pa.Table.from_pandas(df, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), PATH_RULE_KEY: PATH_RULE})
            pq.write_table(table, tmp)
        else:
            df.to_csv(tmp, index=False)
    return path


def read_csv_table(path: str | os.PathLike) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"path": str, "img_name": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not a readable CSV: {e}") from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: empty file") from None


def read_challenge_labels(path: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The challenge's `img_name,target` label files (or a bare `img_name` list).

    Images resolve against `root`; without it, against a folder beside the label file named
    like it (`trainset_label.txt` -> `trainset/`), else the label file's own folder.
    """
    path = Path(path)
    df = read_csv_table(path)
    if "img_name" not in df.columns:
        raise ManifestError(f"{path}: a challenge label file needs an 'img_name' column; it has {list(df.columns)}")
    if root is None:
        guess = path.parent / path.stem.replace("_label", "")
        root = guess if guess.is_dir() else path.parent
    out = pd.DataFrame({"path": df["img_name"].astype(str)})
    out["label"] = df["target"] if "target" in df.columns else UNKNOWN
    return normalize(out, root=root)


def from_folder(root: str | os.PathLike, default_label: int | None = None) -> pd.DataFrame:
    """Folder layouts: `real/...` + `fake/<source>/...`, or `0_real/` + `1_fake/` at any depth.

    `default_label` (0 or 1) labels the images outside such folders, e.g. a plain folder of reals.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"not a folder: {root}")
    rows = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or not is_image_path(p):
            continue
        parts = [s.lower() for s in p.relative_to(root).parts[:-1]]
        label, source = UNKNOWN, "unknown"
        if default_label is not None:
            label, source = default_label, "real" if default_label == REAL else "fake"
        for i, part in enumerate(parts):
            if part in REAL_DIR_NAMES:
                label, source = REAL, "real"
                break
            if part in FAKE_DIR_NAMES:
                label = FAKE
                source = p.relative_to(root).parts[i + 1] if i + 1 < len(parts) else "fake"
                break
        rows.append({"path": str(p), "label": label, "source": source})
    if not rows:
        raise ManifestError(f"no images found under {root}")
    df = pd.DataFrame(rows)
    if (df["label"] == UNKNOWN).all():
        raise ManifestError(
            f"{root}: cannot tell reals from fakes; put images under real/ and fake/<source>/ "
            "(or 0_real/ and 1_fake/)"
        )
    return normalize(df)


def split_columns(df: pd.DataFrame) -> list[str]:
    """The per-split validation-membership columns, `split_0`, `split_1`, ... in order."""
    cols = [c for c in df.columns if c.startswith("split_") and c[6:].isdigit()]
    return sorted(cols, key=lambda c: int(c[6:]))


LABEL_WORDS = {"0": REAL, "1": FAKE, "-1": UNKNOWN, "real": REAL, "fake": FAKE, "unknown": UNKNOWN}


def from_csv(
    path: str | os.PathLike,
    path_column: str = "path",
    label_column: str = "label",
    source_column: str | None = None,
    origin_column: str | None = None,
    root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Any CSV with an image-path column and a label column (0/1/-1 or real/fake/unknown).

    Other columns are kept. Relative paths resolve against `root`, else the CSV's own folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"CSV file not found: {path}")
    df = read_csv_table(path)
    wanted = {path_column: "path", label_column: "label"}
    if source_column:
        wanted[source_column] = "source"
    if origin_column:
        wanted[origin_column] = "origin"
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: no column(s) {missing}; it has {list(df.columns)} (name them with the column options)")
    clashing = [new for old, new in wanted.items() if new in df.columns and old != new]
    df = df.drop(columns=clashing).rename(columns=wanted)
    df["path"] = df["path"].astype(str)
    words = df["label"].astype(str).str.strip().str.lower()
    mapped = words.map(LABEL_WORDS)
    numeric = pd.to_numeric(df["label"], errors="coerce")
    df["label"] = mapped.where(mapped.notna(), numeric)  # unknown words stay NaN: normalize lists them
    unreadable = df["label"].isna()
    if unreadable.any():
        raise ManifestError(
            f"{path}: {int(unreadable.sum())} row(s) have a label that is not 0/1/-1 or real/fake/unknown, "
            f"e.g. {words[unreadable].head(5).tolist()}"
        )
    return normalize(df, root=root if root is not None else path.parent)


def find_missing(df: pd.DataFrame) -> list[str]:
    """The listed paths that are not existing files, in manifest order."""
    return [p for p in df["path"] if not os.path.isfile(p)]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Image counts per label and source (rows: label, source; column: images)."""
    names = {REAL: "real", FAKE: "fake", UNKNOWN: "unknown"}
    counts = df.groupby(["label", "source"], sort=True).size().rename("images").reset_index()
    counts["label"] = counts["label"].map(names)
    return counts
