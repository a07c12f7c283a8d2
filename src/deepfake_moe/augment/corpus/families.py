"""Which augmentation families the corpus runs, with how many variants and how many reals each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepfake_moe.augment.corpus.reals import stable_rank
from deepfake_moe.errors import ConfigError

DEFAULT_VARIANTS = 1
# Slow families get at most this many reals by default (seconds per image on one CPU core at 256 px:
# Real-ESRGAN ~2.5 s, face swap ~0.3 s against ~0.03 s for an edit).
DEFAULT_REAL_CAPS = {"esrgan": 300}


def _missing_esrgan(options: dict) -> str | None:
    import importlib.util

    from deepfake_moe.augment import gan

    if importlib.util.find_spec("ncnn") is None:
        return f"ncnn is not installed ({gan.GAN_EXTRA_HINT})"
    try:
        gan.find_model(options.get("model_dir"))
    except FileNotFoundError:
        return "Real-ESRGAN model files not found (run with --fetch)"
    return None


def _missing_dlib(options: dict) -> str | None:
    from deepfake_moe.augment import faces

    return None if faces.has_landmarks() else f"dlib is not installed ({faces.FACES_EXTRA_HINT})"


def _missing_sd(options: dict) -> str | None:
    return None if options.get("model") else "no Stable Diffusion model folder given (--sd-model)"


# Families that need something beyond the core install; the rest always run.
REQUIREMENTS: dict[str, Callable[[dict], str | None]] = {
    "esrgan": _missing_esrgan,
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
    names: list[str] | None, variants: dict[str, int], caps: dict[str, int | None], sd_model: str | None, log: Callable[[str], None]
) -> list[CorpusFamily]:
    from deepfake_moe.augment.registry import get_family, list_families

    chosen = names if names else [f.name for f in list_families()]
    plan = []
    for name in chosen:
        try:
            get_family(name)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        options = {"model": sd_model} if name.startswith("sd_") and sd_model else {}
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
    return plan


def subset_manifest(reals_manifest: Path, n: int | None) -> Path:
    """The reals manifest, or a stable subset of it for a capped family (same folder, so same ids)."""
    import pandas as pd

    from deepfake_moe.data.manifest import write_manifest

    if n is None:
        return reals_manifest
    path = reals_manifest.with_name(f"subset-{n}.parquet")
    if not path.exists():
        df = pd.read_parquet(reals_manifest)
        if n < len(df):
            df = df.iloc[sorted(range(len(df)), key=lambda i: stable_rank(df["path"].iloc[i]))[:n]]
        write_manifest(df.reset_index(drop=True), path)
    return path
