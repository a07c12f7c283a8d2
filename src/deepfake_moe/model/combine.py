"""One mixture from the experts of several: P(fake) is the mean over all the experts chosen, or, with
`groups`, the most fake of the models' groups (model/groups.py).

The method's mixture is a mean of experts, so experts trained apart (on other data, by another recipe,
on other machines) join without retraining. Each keeps its own view of the image. Experts that know
different fakes (edits, generators) join as groups instead, so that one kind's "real" does not drown the
other's "fake": each source model is one group (or keeps its own groups). What was fitted on a
mixture's output (threshold, temperature, uncertainty statistics and reference) does not carry over to
another mixture: the combined model starts uncalibrated, and `fit-uncertainty` and `calibrate` fit it.
One exception, `keep_calibration`: when the first group is the first model's own (all its experts, or its
first group's), that group answers exactly as in that model, so its threshold and temperature (fitted on
its own, perhaps larger, validation set) carry over, and `calibrate --keep-threshold` fits only the later
groups.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from deepfake_moe.errors import InputError
from deepfake_moe.model.checkpoint import ModelConfig
from deepfake_moe.model.groups import ExpertGroup
from deepfake_moe.model.mixture import Mixture


@dataclass
class Source:
    """One model to take experts from: its name (as given), weights, config and chosen experts (None: all)."""

    name: str
    model: Mixture
    config: ModelConfig
    experts: list[int] | None = None


def parse_source(text: str) -> tuple[str, list[int] | None]:
    """`MODEL` (all its experts) or `MODEL:0,2` (those experts, in that order); an existing path is whole."""
    match = re.fullmatch(r"(.+?):(\d+(?:,\d+)*)", text)
    if match is None or Path(text).exists():
        return text, None
    return match.group(1), [int(i) for i in match.group(2).split(",")]


def combine(sources: list[Source], name: str, groups: bool = False, keep_calibration: bool = False
            ) -> tuple[Mixture, ModelConfig]:
    """The mixture of the chosen experts of every source, uncalibrated; with `groups`, one group per source
    (a source's own groups kept, on the experts chosen); with `keep_calibration` too, at the first source's
    threshold and temperature."""
    experts, specs, views, origin, seen, joined = [], [], [], [], set(), []
    for source in sources:
        first = len(experts)
        if not isinstance(source.model, Mixture):
            raise InputError(f"{source.name}: combine needs PyTorch weights (a checkpoint or published folder), not ONNX")
        n = len(source.config.experts)
        for i in range(n) if source.experts is None else source.experts:
            if not 0 <= i < n:
                raise InputError(f"{source.name}: no expert {i} (it has {n}: 0..{n - 1})")
            key = (_identity(source.name), i)
            if key in seen:
                raise InputError(f"{source.name}: expert {i} is taken twice; a mixture weighs each expert once")
            seen.add(key)
            experts.append(source.model.experts[i])
            specs.append(source.config.experts[i])
            views.append(source.config.experts[i].preprocess or source.config.preprocess)
            origin.append({"model": source.name, "model_name": source.config.name, "expert": i,
                           "git_revision": source.config.info.get("git_revision", "")})
        joined += _source_groups(source, first)
    if len(experts) < 2:
        raise InputError("combine needs at least two experts in all")
    for field in ("image_backend", "face_crops"):
        values = {getattr(s.config, field) for s in sources}
        if len(values) > 1:
            given = ", ".join(f"{s.name}: {getattr(s.config, field)}" for s in sources)
            raise InputError(f"the models disagree on {field} ({given}): their experts were trained on differently "
                             "read images and cannot share one pipeline")
    config = ModelConfig(
        experts=[s.model_spec(preprocess=None if v == views[0] else v) for s, v in zip(specs, views)],
        preprocess=views[0],
        name=name,
        image_backend=sources[0].config.image_backend,
        face_crops=sources[0].config.face_crops,
        info={"combined_from": origin},
        groups=joined if groups else None,
    )
    if groups and len(joined) < 2:
        raise InputError("combine --groups needs experts of at least two groups (two models, or a grouped one)")
    if keep_calibration:
        _keep_calibration(sources[0], config, groups)
    return Mixture(experts, temperature=config.temperature, view_index=config.views()[1], groups=config.groups), config


def _keep_calibration(first: Source, config: ModelConfig, groups: bool) -> None:
    """The first source's threshold and temperature, where the experts taken are its first group (all of an
    ungrouped model's), so that they answer as they did in it."""
    n = len(first.config.experts)
    own = first.config.groups[0].experts if first.config.groups else range(n)
    taken = range(n) if first.experts is None else first.experts
    if not groups or sorted(taken) != sorted(own):
        raise InputError(f"keeping {first.name}'s calibration needs --groups, and its first group's experts (all of an "
                         f"ungrouped model's: {sorted(own)}) taken from it: only then do they answer as they did")
    config.threshold, config.temperature = first.config.threshold, first.config.temperature
    config.info["calibration_from"] = {"model": first.name, "threshold": first.config.threshold,
                                       "temperature": first.config.temperature}


def _source_groups(source: Source, first: int) -> list[ExpertGroup]:
    """The source's groups (or the source as one), on its chosen experts, numbered from `first` on."""
    chosen = list(range(len(source.config.experts))) if source.experts is None else source.experts
    place = {i: first + k for k, i in enumerate(chosen)}
    own = source.config.groups or [ExpertGroup(chosen, source.config.name)]
    kept = [([place[i] for i in g.experts if i in place], g.name) for g in own]
    return [ExpertGroup(experts, name) for experts, name in kept if experts]


def _identity(name: str) -> str:
    """The same model however its path is spelled."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def combine_folders(
    specs: list[str], out: str | os.PathLike, name: str | None = None, fp16: bool = False, groups: bool = False,
    keep_calibration: bool = False,
) -> tuple[Path, ModelConfig]:
    """`combine` on checkpoint or published folders (`PATH[:i,j]`; `default`: the built-in model), written as
    one checkpoint folder (float32 unless `fp16`, whatever the sources' storage)."""
    import torch

    from deepfake_moe.infer.weights import default_model_dir, load_weights
    from deepfake_moe.model.checkpoint import save_checkpoint

    sources = []
    for spec in specs:
        path, chosen = parse_source(spec)
        model, config = load_weights(None if path == "default" else path)
        sources.append(Source(str(default_model_dir()) if path == "default" else path, model, config, chosen))
    model, config = combine(sources, name or " + ".join(s.config.name for s in sources), groups, keep_calibration)
    folder = save_checkpoint(model, config, out, weights_dtype=torch.float16 if fp16 else None)
    return folder, config
