"""The whole corpus build: fetch, gather reals, one `prepare` run per family, the manifest and reports.

Every step is cached, so a second run with the same settings does nothing and a killed one resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deepfake_moe.augment.corpus.families import CorpusFamily, plan_families, subset_manifest
from deepfake_moe.augment.corpus.generators import train_generators
from deepfake_moe.augment.corpus.reals import OUTPUT_CHAIN, chain_copies, gather_reals
from deepfake_moe.augment.corpus.reports import write_contact_sheet, write_counts, write_licences
from deepfake_moe.augment.corpus.sources import PHOTO_SOURCES, PhotoSource, fetch_debian, require_lfw

STAMP = "corpus.json"


def build_corpus(
    out_dir: str | os.PathLike,
    crop_size: int = 256,
    limit_reals: int | None = None,
    families: list[str] | None = None,
    variants: dict[str, int] | None = None,
    max_reals: dict[str, int | None] | None = None,
    workers: int = 2,
    lfw: str | None = None,
    use_lfw: bool = True,
    fetch: bool = False,
    sd_model: str | None = None,
    train: dict[str, dict] | None = None,
    seed: int = 0,
    photo_sources: tuple[PhotoSource, ...] = PHOTO_SOURCES,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    faces: bool = False,
) -> dict:
    """Build (or finish, or find up to date) the corpus in `out_dir`; returns its summary.

    `faces`: every real is cut to its largest face (as `predict --faces` cuts faces) before the families
    run, so reals and fakes alike are face crops; reals without a face drop out.

    LFW faces come from `lfw` or else $DEEPFAKE_MOE_LFW (an error when `use_lfw` and neither is set).
    `train` overrides the settings of the generators the corpus trains, e.g. {"autoencoder": {"steps": 500}}.
    """
    from deepfake_moe.data.manifest import read_manifest
    from deepfake_moe.io import atomic_write

    if crop_size < 32:
        raise ValueError(f"crop size must be >= 32, got {crop_size}")
    out = Path(out_dir).resolve()
    start = time.monotonic()
    if fetch:
        fetch_downloads(photo_sources, log)
    lfw_path = require_lfw(lfw) if use_lfw else None
    train = train or {}
    sizes = {"stylegan_lite": int(train["stylegan_lite"]["size"])} if "size" in train.get("stylegan_lite", {}) else None
    plan = plan_families(families, variants or {}, max_reals or {}, sd_model, log, sizes)
    out.mkdir(parents=True, exist_ok=True)
    reals_manifest, settings = gather_reals(out, crop_size, limit_reals, lfw_path, photo_sources, progress)
    family_input = reals_manifest  # what the families make their images from
    if faces:  # the families work on the (lossless) face crops; the reals listed are those crops chained
        family_input = face_crop_reals(reals_manifest, progress)
        reals_manifest = chain_copies(family_input, family_input.parent / "chained")
    train_generators(plan, family_input, train, log)
    settings = {**settings, "seed": seed, "families": [vars(f) for f in plan], "faces": faces}

    stamp = out / STAMP
    if stamp.exists():
        previous = json.loads(stamp.read_text())
        if previous.get("settings") == settings and (out / "manifest.parquet").exists():
            log(f"corpus: {out} is up to date")
            return previous["summary"]
        drop_stale_prepared(out, previous.get("settings", {}), settings, log)

    made, errors = run_families(out, family_input, plan, seed, workers, progress, log)
    reals = read_manifest(reals_manifest)
    manifest = corpus_manifest(out, reals, made)
    counts = write_counts(manifest, out / "counts.csv")
    write_licences(out / "LICENSES.md", reals, settings, plan, photo_sources)
    write_contact_sheet(manifest, out, out / "contact_sheet.png")
    per_source = manifest.groupby("source").size().to_dict()
    summary = {
        "images": len(manifest),
        "reals": int((manifest["source"] == "real").sum()),
        "per_source": {k: int(v) for k, v in per_source.items()},
        "errors": errors,
        "seconds": round(time.monotonic() - start, 1),
    }
    with atomic_write(stamp) as f:
        json.dump({"settings": settings, "summary": summary}, f, indent=1)
    log(counts.to_string(index=False))
    return summary


def face_crop_reals(reals_manifest: Path, progress: bool) -> Path:
    """REALS/faces/: each real's largest face, and their manifest (paths relative to that folder)."""
    from deepfake_moe.data.face_crops import crop_manifest
    from deepfake_moe.data.manifest import read_manifest

    crops, _ = crop_manifest(read_manifest(reals_manifest), reals_manifest.parent / "faces", progress)
    return crops


def drop_stale_prepared(out: Path, previous: dict, settings: dict, log: Callable[[str], None]) -> None:
    """Fakes made from reals gathered with other settings (size, sources, chain) would be resumed
    from their journals as if current: remove them so that they are made again."""
    import shutil

    def reals_part(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("seed", "families")}

    if reals_part(previous) != reals_part(settings) and (out / "prepared").exists():
        log(f"corpus: the reals changed since {out} was built: its families' images are made again")
        shutil.rmtree(out / "prepared")


def fetch_downloads(photo_sources: tuple[PhotoSource, ...], log: Callable[[str], None]) -> None:
    """`--fetch`: the Debian photo packages, the SR nets' files and the DCGAN face weights, into the cache."""
    from deepfake_moe.augment.dcgan import fetch_dcgan_weights
    from deepfake_moe.augment.gan import fetch_sr_models

    fetch_debian([s.debian for s in photo_sources if s.debian], log)
    for what, fetch in (("the super-resolution nets", fetch_sr_models), ("the DCGAN face weights", fetch_dcgan_weights)):
        try:
            fetch()
        except OSError as e:  # WeightsUnavailable included: the families needing them are left out, and said so
            log(f"corpus: could not fetch {what}: {e}")


def run_families(
    out: Path, reals_manifest: Path, plan: list[CorpusFamily], seed: int, workers: int, progress: bool,
    log: Callable[[str], None],
) -> tuple[list, dict[str, int]]:
    """One `prepare` run per family into OUT/prepared/<family>/: (their manifests, failed tasks per family)."""
    import pandas as pd

    from deepfake_moe.augment.prepare import FamilySpec, PrepareConfig, run_prepare

    parts, errors = [], {}
    for fam in plan:
        log(f"corpus: family {fam.name} ({fam.variants} variant(s), {fam.max_reals or 'all'} reals)")
        cfg = PrepareConfig(
            input=str(subset_manifest(reals_manifest, fam.max_reals)),
            out_dir=str(out / "prepared" / fam.name),
            families=[FamilySpec(fam.name, fam.variants, fam.options)],
            seed=seed,
            workers=workers,
            include_inputs=False,
            output_chain=dict(OUTPUT_CHAIN),
        )
        made = run_prepare(cfg, progress=progress)
        errors[fam.name] = len(pd.read_csv(Path(cfg.out_dir) / "errors.csv"))
        parts.append(made.assign(path=[os.path.relpath(p, out) for p in made["path"]]))
    return parts, errors


def corpus_manifest(out: Path, reals, made: list):
    """OUT/manifest.parquet: the reals and every family's images, paths relative to OUT here, each row
    with the `dataset` and `identity` of the real it came from."""
    import pandas as pd

    from deepfake_moe.data.manifest import write_manifest

    reals = reals.assign(path=[os.path.relpath(p, out) for p in reals["path"]])
    manifest = pd.concat([reals.assign(params="{}"), *made], ignore_index=True)
    info = reals.set_index("origin")[["dataset", "identity"]]
    info = info[~info.index.duplicated()]
    manifest["dataset"] = manifest["origin"].map(info["dataset"])
    manifest["identity"] = manifest["origin"].map(info["identity"])
    write_manifest(manifest.assign(path=[str(out / p) for p in manifest["path"]]), out / "manifest.parquet")
    return manifest
