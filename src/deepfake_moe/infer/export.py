"""ONNX export of a mixture, and running it with ONNX Runtime.

The exported file is self-describing: its metadata holds the model's YAML (preprocessing,
threshold, experts), so `predict --weights model.onnx` needs nothing else. Input `image`: a
preprocessed (B, 3, S, S) batch; outputs `p_fake` (B,) and `p_experts` (B, n_experts), and for a
model with fitted uncertainty statistics `d_experts` (B, n_experts, 2): squared feature distances
to the training reals and fakes. A mixture
whose experts read different views takes one input per view instead, `image_0`, `image_1`, ...
in the order of `ModelConfig.views()`, each (B, 3, S, S) or (B, T, 3, S, S) for T native crops.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from deepfake_moe.config import from_dict, to_dict
from deepfake_moe.io import atomic_path
from deepfake_moe.model.checkpoint import CheckpointError, ModelConfig
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.paths import cache_dir

CONFIG_METADATA_KEY = "deepfake_moe_config"


CHECK_TOLERANCE = 1e-4  # largest |P(fake) difference| the export may show against PyTorch


class OnnxCheckError(CheckpointError):
    """The exported file does not give PyTorch's probabilities; it is not written."""


class _BothOutputs(nn.Module):
    def __init__(self, mixture: Mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, *views):
        if self.mixture.distances is None:
            p = self.mixture.expert_probabilities(*views)
            return p.mean(dim=1), p
        p, d = self.mixture.expert_outputs(*views)
        return p.mean(dim=1), p, d


def input_names(config: ModelConfig) -> list[str]:
    views = config.views()[0]
    return ["image"] if len(views) == 1 else [f"image_{k}" for k in range(len(views))]


def example_inputs(config: ModelConfig, batch: int) -> tuple[torch.Tensor, ...]:
    """Random inputs shaped like the preprocessed batches of each view."""
    return tuple(
        torch.randn(batch, *([v.crops] if v.crops > 1 else []), 3, v.input_size, v.input_size)
        for v in config.views()[0]
    )


def export_onnx(model: Mixture, config: ModelConfig, out: str | os.PathLike, opset: int = 18, check: bool = True) -> dict:
    """Export with a dynamic batch axis; with `check`, the file is written only if ONNX Runtime
    gives PyTorch's probabilities (within CHECK_TOLERANCE) on a few inputs."""
    import onnx

    model = model.cpu()
    was_training = model.training
    # export in eval mode (the wrapper's mode is the one the exporter restores afterwards)
    wrapper = _BothOutputs(model).eval()
    names = input_names(config)
    outputs = ["p_fake", "p_experts"] + ([] if model.distances is None else ["d_experts"])
    out = Path(out)
    report = {"path": str(out), "checked": 0, "max_abs_diff": float("nan")}
    try:
        with atomic_path(out) as tmp:
            torch.onnx.export(
                wrapper,
                example_inputs(config, 2),
                str(tmp),
                input_names=names,
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [*names, *outputs]},
                opset_version=opset,
                dynamo=False,
            )
            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = CONFIG_METADATA_KEY, yaml.safe_dump(to_dict(config), sort_keys=False)
            onnx.save(proto, str(tmp))
            if check:
                report.update(_check(model, config, tmp))
    finally:
        model.train(was_training)
    return report


def _check(model: Mixture, config: ModelConfig, path: Path) -> dict:
    xs = example_inputs(config, 4)
    with torch.inference_mode():
        ref = model.eval().expert_probabilities(*xs).numpy()
    diff = float(np.abs(ref - OnnxMixture(path).expert_probabilities(*xs).numpy()).max())
    n = len(xs[0])
    if not diff <= CHECK_TOLERANCE:
        raise OnnxCheckError(f"the ONNX export differs from PyTorch by up to {diff:.2e} in P(fake) on {n} "
                             f"inputs (tolerance {CHECK_TOLERANCE:.0e}); nothing written")
    return {"checked": n, "max_abs_diff": diff}


def weights_digest(model: Mixture, config: ModelConfig) -> str:
    import hashlib

    h = hashlib.sha256(yaml.safe_dump(to_dict(config), sort_keys=True).encode())
    heads = getattr(model, "distances", None) or []  # fitted uncertainty statistics are not in the state dict
    stats = {f"distances.{i}.{k}": v for i, head in enumerate(heads) for k, v in head.tensors().items()}
    for name, tensor in {**model.state_dict(), **stats}.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_onnx(model: Mixture, config: ModelConfig, threads: int | None = None) -> OnnxMixture:
    """The model exported once to the cache (keyed by its weights and config), run by ONNX Runtime."""
    path = cache_dir("onnx") / f"{weights_digest(model, config)}.onnx"
    if not path.is_file():
        export_onnx(model, config, path, check=False)
    return OnnxMixture(path, threads=threads)


class OnnxMixture:
    """An exported mixture run by ONNX Runtime, usable wherever the Predictor takes a model."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError('ONNX models need onnxruntime: pip install "deepfake-moe[onnx]"') from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=ort.get_available_providers())
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
            raise CheckpointError(f"{path}: not a loadable ONNX model: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_METADATA_KEY not in meta:
            raise CheckpointError(f"{path}: ONNX file has no deepfake-moe config (export it with `deepfake-moe export-onnx`)")
        self.config = from_dict(ModelConfig, yaml.safe_load(meta[CONFIG_METADATA_KEY]))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.has_distances = "d_experts" in {o.name for o in self.session.get_outputs()}
        if (self.config.uncertainty is not None) != self.has_distances:
            raise CheckpointError(f"{path}: its config and its outputs disagree about uncertainty statistics")

    def _run(self, outputs: list[str], views: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        if len(views) != len(self.input_names):
            raise ValueError(f"this ONNX model reads {len(self.input_names)} view(s) of each image, got {len(views)}")
        feed = {n: np.ascontiguousarray(x.detach().float().cpu().numpy()) for n, x in zip(self.input_names, views)}
        return self.session.run(outputs, feed)

    def expert_probabilities(self, *views: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(["p_experts"], views)[0])

    def expert_outputs(self, *views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, d = self._run(["p_experts", "d_experts"], views)
        return torch.from_numpy(p), torch.from_numpy(d)
