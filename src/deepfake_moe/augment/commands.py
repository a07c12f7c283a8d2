"""`deepfake-moe prepare CONFIG.yaml` and `deepfake-moe families`."""

from __future__ import annotations

import argparse
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare_command)

    f = subparsers.add_parser("families", help="list the augmentation families prepare can run")
    f.set_defaults(func=run_families)


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
