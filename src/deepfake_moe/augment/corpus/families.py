"""Which augmentation families the corpus runs, with how many variants and how many reals each."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepfake_moe.augment.corpus.reals import stable_rank
from deepfake_moe.errors import ConfigError

DEFAULT_VARIANTS = 1
# Generative families get at most this many reals by default (mean time per 150 px image on one
# thread, benchmarks/generator_families.py on 2 cores shared with other jobs (load ~14): esrgan 1.1 s
# (x4plus 2.6 s, the animevideov3 nets 0.04-0.1 s), span_sr 0.17 s, autoencoder 0.4 s, dcgan_face
# and stylegan_lite 0.09 s; face swap ~0.3 s). 2,000 esrgan images: ~18 minutes with 2 workers there.
DEFAULT_REAL_CAPS = {
    "esrgan": 2000, "span_sr": 2000, "realcugan": 2000, "waifu2x": 2000, "autoencoder": 2000, "vae_roundtrip": 1000, "dcgan_face": 1000, "stylegan_lite": 1000,
}  # fmt: skip
# Families that make images of a fixed size, not the real's: the corpus adds as many reals shrunk to
# that size (`real_downscale`), so the size of an image never tells its label.
FIXED_SIZE = {"dcgan_face": 64, "stylegan_lite": 64}
# Families whose generator the corpus trains on its reals first (augment/trained.py).
TRAINED = ("autoencoder", "stylegan_lite")


def _missing_sr(family: str) -> Callable[[dict], str | None]:
    def missing(options: dict) -> str | None:
        from deepfake_moe.augment import gan

        return gan.missing_models(family, options)

    return missing


def _missing_dcgan(options: dict) -> str | None:
    from deepfake_moe.augment import dcgan

    try:
        dcgan.weights_path(options)
    except FileNotFoundError:
        return "DCGAN face weights not found (run with --fetch)"
    return None


def _missing_dlib(options: dict) -> str | None:
    from deepfake_moe.augment import faces

    return None if faces.has_landmarks() else f"dlib is not installed ({faces.FACES_EXTRA_HINT})"


def _missing_sd(options: dict) -> str | None:
    return None if options.get("model") else "no Stable Diffusion model folder given (--sd-model)"


# Families that need something beyond the core install; the rest always run.
REQUIREMENTS: dict[str, Callable[[dict], str | None]] = {
    "esrgan": _missing_sr("esrgan"),
    "span_sr": _missing_sr("span_sr"),
    "realcugan": _missing_sr("realcugan"),
    "waifu2x": _missing_sr("waifu2x"),
    "dcgan_face": _missing_dcgan,
    "vae_roundtrip": _missing_sd,
    "faceswap": _missing_dlib,
    "sd_img2img": _missing_sd,
    "sd_inpaint": _missing_sd,
    "sd_txt2img": _missing_sd,
}


@dataclass
class CorpusFamily:
    name: str
    variants: int
    max_reals: int | None  # None: every real
    options: dict


def plan_families(
    names: list[str] | None, variants: dict[str, int], caps: dict[str, int | None], sd_model: str | None, log: Callable[[str], None],
    fixed_sizes: dict[str, int] | None = None,
) -> list[CorpusFamily]:
    from deepfake_moe.augment.registry import get_family, list_families

    chosen = names if names else [f.name for f in list_families()]
    plan = []
    for name in chosen:
        try:
            get_family(name)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        options = {"model": sd_model} if (name.startswith("sd_") or name == "vae_roundtrip") and sd_model else {}
        missing = REQUIREMENTS.get(name, lambda o: None)(options)
        if missing:
            if names:
                raise ConfigError(f"family {name}: {missing}")
            log(f"corpus: family {name} left out: {missing}")
            continue
        cap = caps.get(name, DEFAULT_REAL_CAPS.get(name))
        plan.append(CorpusFamily(name, variants.get(name, variants.get("*", DEFAULT_VARIANTS)), cap, options))
    if not plan:
        raise ConfigError("no family can run")
    return match_fixed_sizes(plan, {**FIXED_SIZE, **(fixed_sizes or {})}, log)


def match_fixed_sizes(plan: list[CorpusFamily], fixed_sizes: dict[str, int], log: Callable[[str], None]) -> list[CorpusFamily]:
    """Give `real_downscale` as many reals, shrunk to the fixed sizes, as the fixed-size generators
    make images (added to the plan when missing): no size appears on one label alone."""
    fixed = [f for f in plan if f.name in fixed_sizes]
    if not fixed:
        return plan
    # As many variants per real as they make together, from as many reals as the largest cap
    # (exact when their caps are equal, as by default).
    cap = None if any(f.max_reals is None for f in fixed) else max(f.max_reals for f in fixed)
    variants = sum(f.variants for f in fixed)
    sizes = sorted({fixed_sizes[f.name] for f in fixed})
    plan = [f for f in plan if f.name != "real_downscale"]
    log(f"corpus: real_downscale gets {variants} x {cap or 'all'} reals shrunk to {sizes} px, to match {[f.name for f in fixed]}")
    return [*plan, CorpusFamily("real_downscale", variants, cap, {"sizes": sizes})]


def subset_manifest(reals_manifest: Path, n: int | None) -> Path:
    """The reals manifest, or a stable subset of it for a capped family (same folder, so same ids)."""
    from deepfake_moe.data.manifest import read_manifest, write_manifest

    if n is None:
        return reals_manifest
    path = reals_manifest.with_name(f"subset-{n}.parquet")
    if not path.exists():
        df = read_manifest(reals_manifest)
        if n < len(df):
            keys = [os.path.relpath(p, reals_manifest.parent) for p in df["path"]]  # ranks as before: by crop
            df = df.iloc[sorted(range(len(df)), key=lambda i: stable_rank(keys[i]))[:n]]
        write_manifest(df.reset_index(drop=True), path)
    return path
