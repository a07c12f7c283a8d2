"""`deepfake-moe manifest`: build one manifest from label files, folder layouts or CSVs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deepfake_moe.errors import EXIT_OK, EXIT_PARTIAL, ConfigError

INPUT_FORMATS = ("auto", "challenge", "folder", "csv")
OUTPUT_SUFFIXES = (".parquet", ".csv")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "manifest",
        help="build a manifest (path,label,source,origin) from label files, folders or CSVs",
        description="Build a manifest from any of: the challenge layout (trainset_label.txt with "
        "img_name,target beside trainset/), a folder layout (real/ + fake/<source>/, or 0_real/ + "
        "1_fake/), or a CSV with path and label columns. Several inputs are concatenated. The result "
        "is validated (missing files, unknown labels, duplicate paths), counted per label and source, "
        "and written as Parquet or CSV by the output's suffix, with paths relative to the output's folder "
        "(absolute for images outside it), as every stage reads them.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="label file, CSV or folder")
    p.add_argument("-o", "--output", required=True, help="output manifest (.parquet or .csv)")
    p.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                   help="input kind (auto: folder for a directory, challenge for a file with an img_name column, else csv)")
    p.add_argument("--label", choices=("real", "fake"),
                   help="for folder inputs: label of the images outside real/ and fake/ folders (e.g. a folder of reals)")
    p.add_argument("--root", help="folder that relative image paths resolve against (default: beside the input)")
    p.add_argument("--path-column", default="path", help="CSV column with image paths (default: path)")
    p.add_argument("--label-column", default="label", help="CSV column with labels: 0/1/-1 or real/fake/unknown (default: label)")
    p.add_argument("--source-column", help="CSV column naming the generator or edit family")
    p.add_argument("--origin-column", help="CSV column with the id of the real image each row came from")
    p.add_argument("--drop-missing", action="store_true",
                   help="drop rows whose file does not exist, or with --verify-images cannot be read "
                   "(listed on stderr; exit code 1) instead of failing")
    p.add_argument("--verify-images", action="store_true", help="decode every image and list those that cannot be read")
    add_decode_options(p)
    p.add_argument("--no-check-files", action="store_true", help="do not check that the listed files exist")
    p.add_argument("--faces", metavar="DIR", help="crop every image to its largest face into DIR (framed as `predict "
                   "--faces` frames faces) and list the crops; images without a face are dropped (DIR/no_face.csv)")
    p.set_defaults(func=run_manifest)

    h = subparsers.add_parser(
        "holdout",
        help="partition a manifest into pool/val/test by identity or origin, holding out whole fake families",
        description="Writes OUT/pool.parquet (for split and train), OUT/val.parquet (threshold fitting) and "
        "OUT/test.parquet: every image of a random share of identities (or origins), plus every image of the "
        "held-out fake families, which never reach pool or val.",
    )
    h.add_argument("manifest", help="manifest (Parquet or CSV)")
    h.add_argument("--out", required=True, help="output folder")
    h.add_argument("--holdout-source", action="append", default=[], metavar="SOURCE",
                   help="fake family kept out of pool and val entirely (repeatable)")
    h.add_argument("--holdout-dataset", action="append", default=[], metavar="DATASET",
                   help="real photo source (the manifest's dataset column, e.g. a corpus's opencv-doc) kept out of "
                        "pool and val entirely, with the fakes made from it: the test of a camera/source never seen (repeatable)")
    h.add_argument("--test-fraction", type=float, default=0.15)
    h.add_argument("--val-fraction", type=float, default=0.1)
    h.add_argument("--seed", type=int, default=0)
    h.set_defaults(func=run_holdout)

    register_balance(subparsers)

    s = subparsers.add_parser(
        "synthetic-data",
        help="write a small made-up labelled dataset (challenge layout) for smoke tests",
        description="Write FOLDER/ with made-up PNGs (half real: smooth colour fields; half fake: the same "
        "with a faint periodic trace) and FOLDER_label.txt (img_name,target) beside it, so that every "
        "stage can be tried end to end in a minute (README, 'Train your own'). Not data to judge a detector by.",
    )
    s.add_argument("folder", help="image folder to write (the label file goes beside it)")
    s.add_argument("--images", type=int, default=64, help="number of images, half of them fake (default 64)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_synthetic)


def register_balance(subparsers) -> None:
    b = subparsers.add_parser(
        "balance",
        help="weight a manifest's rows so that reals and fakes look alike in size and fine detail",
        description="Measures each image's shorter side and fine detail at the model's input size, cuts the "
        "manifest into strata (detail quantiles within each size class) and writes it with a `weight` column "
        "under which both labels are drawn from every stratum alike, plus `detail` and `short_side`. Training "
        "draws rows in proportion to `weight`, so that neither the amount of detail nor the image size tells "
        "the label (see data/balance.py). For a split manifest, set `data.balance_bins` in the training config "
        "instead: each expert's own training rows (its held-out cluster left out) are then weighted alike.",
    )
    b.add_argument("manifest", help="manifest (Parquet or CSV), e.g. the split stage's")
    b.add_argument("-o", "--output", required=True, help="output manifest (.parquet or .csv)")
    b.add_argument("--input-size", type=int, default=112,
                   help="the side at which the experts see the images, where detail is measured (default 112)")
    b.add_argument("--bins", type=int, default=10, help="detail quantiles within each size class (default 10)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=run_balance)


def read_input(path: str, args: argparse.Namespace):
    from deepfake_moe.data import manifest as mf

    kind = args.format
    if kind == "auto":
        kind = detect_format(path)
    if kind == "folder":
        if args.root:
            raise ConfigError("--root does not apply to a folder input")
        try:
            return mf.from_folder(path, default_label=None if args.label is None else mf.LABEL_WORDS[args.label])
        except mf.ManifestError as e:
            labels = sorted(Path(path).glob("*_label.txt")) if Path(path).is_dir() else []
            hint = (
                f"; for the challenge layout give the label file, e.g. {labels[0]}"
                if labels
                else "; or give --label real (or fake) for a folder of one kind"
            )
            raise mf.ManifestError(f"{e}{hint}") from None
    if kind == "challenge":
        return mf.read_challenge_labels(path, root=args.root)
    return mf.from_csv(
        path,
        path_column=args.path_column,
        label_column=args.label_column,
        source_column=args.source_column,
        origin_column=args.origin_column,
        root=args.root,
    )


def detect_format(path: str) -> str:
    from deepfake_moe.data.manifest import ManifestError, read_csv_table

    if os.path.isdir(path):
        return "folder"
    if not os.path.isfile(path):
        raise ManifestError(f"input not found: {path}")
    if Path(path).suffix.lower() == ".parquet":
        return "parquet"
    columns = read_csv_table(path).columns
    return "challenge" if "img_name" in columns and "path" not in columns else "csv"


def listing(items: list[str], limit: int = 20) -> str:
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n  ".join(items[:limit]) + more


def add_decode_options(p: argparse.ArgumentParser, pool: bool = True, formats: bool = True) -> None:
    """The options of every command that decodes images: which formats, and what a decode may cost
    (`formats=False`: the command has its own --formats and --max-pixels, as `serve` does)."""
    from deepfake_moe.data.limits import DecodeBudget, ImageLimits

    image, budget = ImageLimits(), DecodeBudget()
    g = p.add_argument_group("decoding untrusted images")
    if formats:
        g.add_argument("--formats", metavar="LIST",
                       help="image formats to decode, recognised from the content: comma-separated Pillow names "
                       "(default JPEG,PNG,WEBP,BMP,TIFF,GIF); '+ICO,TGA' adds to the default; 'all' for everything")
        g.add_argument("--max-pixels", type=int,
                       help=f"refuse larger images before decoding (default {image.max_pixels:,})")
    g.add_argument("--max-side", type=int, metavar="PX",
                   help=f"refuse images (and tiles, frames) with a longer side (default {image.max_side:,})")
    g.add_argument("--max-aspect", type=float, metavar="R",
                   help=f"refuse images whose long side is more than R times the short one (default {image.max_aspect:g})")
    g.add_argument("--max-frames", type=int, metavar="N",
                   help=f"refuse animations with more frames (default {image.max_frames:,})")
    if pool:
        g.add_argument("--decode-memory", type=int, metavar="MB",
                       help="memory all decoding processes may use together, above their own size "
                       f"(default {budget.memory_mb}); a file that needs more is an error row")
        g.add_argument("--decode-timeout", type=float, metavar="S",
                       help=f"stop decoding a file (a video: a frame) after this many seconds (default {budget.timeout_s:g})")


def decode_options(args: argparse.Namespace):
    """(ImageLimits, DecodeBudget) from `add_decode_options`' options (missing ones: defaults).

    A bad value is a ConfigError (exit code 2)."""
    from dataclasses import replace

    from deepfake_moe.data.decode_pool import DecodeBudget
    from deepfake_moe.data.image_io import ImageLimits

    given = {o: getattr(args, o, None) for o in ("max_pixels", "max_side", "max_aspect", "max_frames")}
    limits = replace(ImageLimits(), **{o: v for o, v in given.items() if v is not None})  # checked there
    limits = limits.with_formats(getattr(args, "formats", None))
    budget = DecodeBudget()
    if getattr(args, "decode_memory", None) is not None:
        budget = replace(budget, memory_mb=args.decode_memory)
    if getattr(args, "decode_timeout", None) is not None:
        budget = replace(budget, timeout_s=args.decode_timeout)
    return limits, budget


class _Verify:
    """Pool task: decode one image and keep only its size (nothing big crosses back)."""

    def __init__(self, limits):
        self.limits = limits

    def __call__(self, path: str):
        from deepfake_moe.data.image_io import read_image

        return list(read_image(path, limits=self.limits).shape)


def unreadable_images(paths, limits=None, budget=None, workers: int | None = None) -> dict[str, str]:
    """{path: reason} for every image that does not decode, in capped worker processes (progress on stderr)."""
    from tqdm import tqdm

    from deepfake_moe.data.decode_pool import DecodeFailure, DecodePool, default_workers
    from deepfake_moe.data.image_io import ImageLimits

    paths = list(paths)
    pool = DecodePool(_Verify(limits or ImageLimits()), default_workers() if workers is None else workers, budget)
    bad = {}
    results = pool.map(paths)
    for path, result in tqdm(zip(paths, results), total=len(paths), desc="verify", unit="img", file=sys.stderr,
                             disable=None):
        if isinstance(result, DecodeFailure):
            bad[path] = result.reason
    return bad


def run_manifest(args: argparse.Namespace) -> int:
    import pandas as pd

    from deepfake_moe.data import manifest as mf

    out = Path(args.output)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"output must end in {' or '.join(OUTPUT_SUFFIXES)}: {out}")
    frames = []
    for path in args.inputs:
        if args.format == "auto" and detect_format(path) == "parquet":
            frames.append(mf.read_manifest(path, root=args.root))
        else:
            frames.append(read_input(path, args))
    df = mf.normalize(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0]

    code = EXIT_OK
    if not args.no_check_files:
        missing = mf.find_missing(df)
        if missing and not args.drop_missing:
            mf.check_files(df, what="the inputs", sample=None, limit=20)
        if missing:
            print(f"dropped {len(missing)} row(s) whose file does not exist:\n  {listing(missing)}", file=sys.stderr)
            df = df[~df["path"].isin(set(missing))].reset_index(drop=True)
            code = EXIT_PARTIAL
    if args.verify_images:
        limits, budget = decode_options(args)
        bad = unreadable_images(df["path"], limits, budget)
        lines = [f"{path}: {reason}" for path, reason in bad.items()]
        if bad and not args.drop_missing:
            raise mf.ManifestError(f"{len(bad)} image(s) cannot be read:\n  {listing(lines)}")
        if bad:
            print(f"dropped {len(bad)} image(s) that cannot be read:\n  {listing(lines)}", file=sys.stderr)
            df = df[~df["path"].isin(set(bad))].reset_index(drop=True)
            code = EXIT_PARTIAL
    if args.faces:
        df, code = _crop_faces(df, Path(args.faces), code)
    if df.empty:
        raise mf.ManifestError("no rows left to write")
    mf.write_manifest(df, out)
    counts = mf.summarize(df)
    print(counts.to_string(index=False))
    print(f"{len(df)} image(s) -> {out}")
    return code


def _crop_faces(df, folder: Path, code: int):
    """The manifest of `df`'s face crops (absolute paths into `folder`) and the exit code."""
    from deepfake_moe.data.face_crops import FAILURES, crop_manifest
    from deepfake_moe.data.manifest import read_manifest

    crops_manifest, failures = crop_manifest(df, folder)
    if len(failures):
        lines = [f"{p}: {e}" for p, e in zip(failures["path"], failures["error"])]
        print(f"dropped {len(failures)} image(s) without a usable face (listed in {folder / FAILURES}):\n  "
              f"{listing(lines)}", file=sys.stderr)
        code = EXIT_PARTIAL
    return read_manifest(crops_manifest), code


def run_holdout(args: argparse.Namespace) -> int:
    from deepfake_moe.data.holdout import group_column, holdout
    from deepfake_moe.data.manifest import read_manifest, write_manifest

    df = read_manifest(args.manifest)
    parts = holdout(df, args.holdout_source, args.test_fraction, args.val_fraction, args.seed, args.holdout_dataset)
    out = Path(args.out)
    for name, part in parts.items():
        write_manifest(part, out / f"{name}.parquet")
        counts = part.groupby("label").size().to_dict()
        print(f"{name}: {len(part)} images ({counts.get(0, 0)} real, {counts.get(1, 0)} fake) -> {out / name}.parquet")
    print(f"grouped by {group_column(df)}; held out: {args.holdout_source or 'no family'}, datasets {args.holdout_dataset or 'none'}", file=sys.stderr)
    return EXIT_OK


def run_balance(args: argparse.Namespace) -> int:
    import numpy as np

    from deepfake_moe.data.balance import balance_manifest, weighted_auc
    from deepfake_moe.data.manifest import WEIGHT_COLUMN, read_manifest, write_manifest

    if Path(args.output).suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output must end in one of {OUTPUT_SUFFIXES}: {args.output}")
    if args.input_size < 8:
        raise ConfigError(f"--input-size must be at least 8 px, got {args.input_size}")
    try:
        df = balance_manifest(read_manifest(args.manifest), args.input_size, args.bins, progress=not args.no_progress)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    write_manifest(df, args.output)
    labels, w = df["label"].to_numpy(), df[WEIGHT_COLUMN].to_numpy()
    unread = int(df["detail"].isna().sum())
    for column in ("detail", "short_side"):  # weighted_auc leaves out unlabelled and unmeasured rows
        print(f"{column}: AUC for the label {weighted_auc(labels, df[column], np.ones(len(df))):.3f} as drawn "
              f"before, {weighted_auc(labels, df[column], w):.3f} under the weights")
    print(f"{int((w == 0).sum())} of {len(df)} row(s) never drawn (unlabelled, in a stratum of one label"
          f"{'' if not unread else f', or {unread} unreadable image(s)'}) -> {args.output}")
    return EXIT_PARTIAL if unread else EXIT_OK


def run_synthetic(args: argparse.Namespace) -> int:
    from deepfake_moe.data.synthetic import write_dataset

    try:
        labels = write_dataset(args.folder, images=args.images, size=args.size, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"{args.images} image(s) in {args.folder}/, labels in {labels}")
    return EXIT_OK
