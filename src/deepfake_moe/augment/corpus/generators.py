"""The generators a corpus trains on its own reals before the families that use them run.

`autoencoder` and `stylegan_lite` need weights that only the corpus's reals can give. They are
trained (or found in the cache, keyed by their settings and the list of training images) and the
family's options get the folder, so the corpus stamp changes whenever the weights would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from deepfake_moe.augment.corpus.families import TRAINED, CorpusFamily
from deepfake_moe.augment.corpus.reals import stable_rank
from deepfake_moe.errors import ConfigError


def _settings(cls, overrides: dict, family: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"training settings of {family}: unknown {unknown}; known: {sorted(known)}")
    return cls(**overrides)


def training_images(reals_manifest: Path, faces_only: bool) -> list[str]:
    """Absolute paths of the reals in a stable order (LFW faces only for a face generator, when any)."""
    from deepfake_moe.data.manifest import read_manifest

    df = read_manifest(reals_manifest)
    if faces_only and "dataset" in df.columns and (df["dataset"] == "lfw").any():
        df = df[df["dataset"] == "lfw"]
    paths = df["path"].tolist()
    return sorted(paths, key=lambda p: stable_rank(Path(p).name))


def train_generators(plan: list[CorpusFamily], reals_manifest: Path, train: dict[str, dict], log: Callable[[str], None]) -> None:
    """Train what the planned families need; sets their options["weights"]."""
    from deepfake_moe.augment import autoencoder, stylegan

    unknown = sorted(set(train) - set(TRAINED))
    if unknown:
        raise ConfigError(f"no trained generator in {unknown}; the corpus trains {list(TRAINED)}")
    for fam in plan:
        if fam.name == "autoencoder":
            s = _settings(autoencoder.AESettings, train.get(fam.name, {}), fam.name)
            log(f"corpus: autoencoders ({s.steps} steps each, cached)")
            folder = autoencoder.train_autoencoders(training_images(reals_manifest, False), s, log=log)
        elif fam.name == "stylegan_lite":
            s = _settings(stylegan.StyleGANSettings, train.get(fam.name, {}), fam.name)
            log(f"corpus: StyleGAN-lite ({s.steps} steps at {s.size} px, cached)")
            folder = stylegan.train_stylegan(training_images(reals_manifest, True), s, log=log)
        else:
            continue
        fam.options = {**fam.options, "weights": str(folder)}
