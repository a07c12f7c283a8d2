"""One mixture from the experts of several: P(fake) is the mean over all the experts chosen.

The method's mixture is a mean of experts, so experts trained apart (on other data, by another recipe,
on other machines) join without retraining. Each keeps its own view of the image. What was fitted on a
mixture's output (threshold, temperature, uncertainty statistics and reference) does not carry over to
another mixture: the combined model starts uncalibrated, and `fit-uncertainty` and `calibrate` fit it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from deepfake_moe.errors import InputError
from deepfake_moe.model.checkpoint import ModelConfig
from deepfake_moe.model.mixture import Mixture


def parse_source(text: str) -> tuple[str, list[int] | None]:
    """`MODEL` (all its experts) or `MODEL:0,2` (those experts, in that order)."""
    match = re.fullmatch(r"(.+?):(\d+(?:,\d+)*)", text)
    if match is None:
        return text, None
    return match.group(1), [int(i) for i in match.group(2).split(",")]


def combine(
    sources: list[tuple[Mixture, ModelConfig, list[int] | None]], names: list[str], name: str
) -> tuple[Mixture, ModelConfig]:
    """The mixture of the chosen experts of each (model, config, expert indices or None: all) source."""
    if len(sources) < 2:
        raise InputError("combine needs at least two models (or one model twice with different experts)")
    experts, specs, views, info = [], [], [], []
    for (model, config, chosen), source in zip(sources, names):
        if not isinstance(model, Mixture):
            raise InputError(f"{source}: combine needs PyTorch weights (a checkpoint or published folder), not ONNX")
        n = len(config.experts)
        chosen = list(range(n)) if chosen is None else chosen
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise InputError(f"{source}: no expert {bad[0]} (it has {n}: 0..{n - 1})")
        for i in chosen:
            experts.append(model.experts[i])
            specs.append(config.experts[i])
            views.append(config.experts[i].preprocess or config.preprocess)
            info.append({"model": source, "model_name": config.name, "expert": i})
    configs = [config for _, config, _ in sources]
    for field in ("image_backend", "face_crops"):
        values = {getattr(c, field) for c in configs}
        if len(values) > 1:
            raise InputError(
                f"the models disagree on {field} ({', '.join(f'{n}: {getattr(c, field)}' for n, c in zip(names, configs))}):"
                " their experts were trained on differently read images and cannot share one pipeline"
            )
    combined = ModelConfig(
        experts=[s.model_spec(preprocess=None if v == views[0] else v) for s, v in zip(specs, views)],
        preprocess=views[0],
        name=name,
        image_backend=configs[0].image_backend,
        face_crops=configs[0].face_crops,
        info={"combined_from": info},
    )
    return Mixture(experts, view_index=combined.views()[1]), combined


def combine_folders(sources: list[str], out: str | os.PathLike, name: str | None = None, fp16: bool = False) -> Path:
    """`combine` on checkpoint or published folders (`PATH[:i,j]`), written as one checkpoint folder."""
    import torch

    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.model.checkpoint import save_checkpoint

    parsed = [parse_source(s) for s in sources]
    loaded = []
    for path, chosen in parsed:
        model, config = load_weights(None if path == "default" else path)
        loaded.append((model, config, chosen))
    names = [path for path, _ in parsed]
    model, config = combine(loaded, names, name or " + ".join(c.name for _, c, _ in loaded))
    return save_checkpoint(model, config, out, weights_dtype=torch.float16 if fp16 else None)
