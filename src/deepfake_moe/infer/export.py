"""ONNX export, one file per expert, and running the experts with ONNX Runtime.

Each expert is traced on its own (peak memory: one expert, not the whole mixture, which took over
20 GB for the published seven) into a graph `image` (B, 3, S, S), or (B, T, 3, S, S) for a view of
T native crops, -> `p_fake` (B,): the expert's fake probability after the mixture's temperature,
and for a model with fitted uncertainty statistics `d` (B, 2): squared feature distances to the
training reals and fakes.
The cache holds one file per expert, named by a digest of its weights, view and temperature, so
re-exports happen only when those change. `export_onnx` joins the expert graphs into one
self-describing file (the model's YAML in its metadata; outputs `p_fake` (B,) and `p_experts`
(B, n_experts), and `d_experts` (B, n_experts, 2) with uncertainty statistics) for
`predict --weights model.onnx`; its input is `image`, or `image_0`, `image_1`,
... (one per view, in the order of `ModelConfig.views()`) when the experts see the image differently.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from deepfake_moe.config import from_dict, to_dict
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.io import atomic_path
from deepfake_moe.model.checkpoint import CheckpointError, ModelConfig
from deepfake_moe.model.groups import PROB_EPS, SILENT, ExpertGroup
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.paths import cache_dir

CONFIG_METADATA_KEY = "deepfake_moe_config"
EXPORT_FORMAT = 2  # bump when the exported graphs change, so cached files are re-made
DEFAULT_OPSET = 18
CHECK_TOLERANCE = 1e-4  # largest |P(fake) difference| the export may show against PyTorch


class OnnxCheckError(CheckpointError):
    """The exported file does not give PyTorch's probabilities; it is not written."""


class _ExpertProbability(nn.Module):
    def __init__(self, expert: nn.Module, temperature: float, head: nn.Module | None = None):
        super().__init__()
        self.expert = expert
        self.temperature = temperature
        self.head = head

    def forward(self, x):
        if self.head is None:
            return self.expert.fake_probability(x, self.temperature)
        p, feats = self.expert.probability_and_features(x, self.temperature)
        return p, self.head(feats)


def view_shape(view: PreprocessConfig) -> tuple[int, ...]:
    """One preprocessed image of the view: (3, S, S), or (T, 3, S, S) for T native crops."""
    return (*([view.crops] if view.crops > 1 else []), 3, view.input_size, view.input_size)


def example_input(view: PreprocessConfig, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *view_shape(view))


def input_names(config: ModelConfig) -> list[str]:
    views = config.views()[0]
    return ["image"] if len(views) == 1 else [f"image_{k}" for k in range(len(views))]


def export_expert(expert: nn.Module, view: PreprocessConfig, out: str | os.PathLike, temperature: float = 1.0,
                  opset: int = DEFAULT_OPSET, head: nn.Module | None = None) -> Path:
    """Trace one expert (batch 1, dynamic batch axis) on its view into `out`, written atomically;
    with `head` (its fitted feature distance) the graph also outputs `d`."""
    out = Path(out)
    # The exporter restores the traced module's training flag afterwards, recursively: the wrapper
    # must be in eval mode, or the expert would come back in training mode (batch-norm on batch statistics).
    wrapper = _ExpertProbability(expert.cpu(), temperature, head).eval()
    outputs = ["p_fake"] + ([] if head is None else ["d"])
    with atomic_path(out) as tmp, torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example_input(view),),
            str(tmp),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
            opset_version=opset,
            dynamo=False,
        )
    return out


def expert_digest(expert: nn.Module, view: PreprocessConfig, temperature: float, head=None) -> str:
    h = hashlib.sha256(f"{EXPORT_FORMAT}:{view.input_size}:{view.crops}:{temperature!r}:{torch.__version__}".encode())
    # fitted uncertainty statistics are not in the expert's state dict
    stats = {} if head is None else {f"distance.{k}": v for k, v in head.tensors().items()}
    for name, tensor in {**expert.state_dict(), **stats}.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_expert_files(model: Mixture, config: ModelConfig) -> list[Path]:
    """Each expert's fp32 ONNX file in the cache, exported now where it is missing."""
    views, index = config.views()
    paths = []
    for expert, v, head in zip(model.experts, index, _heads(model)):
        path = cache_dir("onnx") / f"{expert_digest(expert, views[v], model.temperature, head)}.onnx"
        if not path.is_file():
            export_expert(expert, views[v], path, model.temperature, head=head)
        paths.append(path)
    return paths


def _heads(model: Mixture) -> list:
    """Each expert's fitted feature distance, or None for each when the model has none."""
    heads = getattr(model, "distances", None)
    return list(heads) if heads is not None else [None] * len(model.experts)


def cached_onnx(model: Mixture, config: ModelConfig, threads: int | None = None,
                precision: str = "fp32", calibration: list[np.ndarray] | None = None,
                runtime: str = "onnxruntime") -> OnnxMixture:
    """The model's experts exported once to the cache, run by ONNX Runtime or OpenVINO.

    Both: fp32, or int8 with `calibration` (one batch of preprocessed inputs per view, `config.views()`;
    the same quantised files for both). OpenVINO also bf16 (the caller checks that the CPU computes it natively).
    """
    if runtime not in ("onnxruntime", "openvino"):
        raise ValueError(f"exported experts run with onnxruntime or openvino, not {runtime!r}")
    if runtime == "onnxruntime" and precision not in ("fp32", "int8"):
        raise ValueError(f"ONNX Runtime runs fp32 or int8, not {precision!r}")
    files = cached_expert_files(model, config)
    index = config.views()[1]
    outputs = ["p_fake"] + ([] if getattr(model, "distances", None) is None else ["d"])
    if precision == "int8":
        from deepfake_moe.infer.quantize import cached_int8_files

        if calibration is None:
            raise ValueError("int8 needs calibration inputs")
        files = cached_int8_files(files, [calibration[v] for v in index])
    if runtime == "openvino":
        from deepfake_moe.infer.openvino_runtime import OpenVinoSession

        threads = threads or torch.get_num_threads()
        return OnnxMixture([OpenVinoSession(f, threads, precision) for f in files], config, outputs, index, "openvino")
    return OnnxMixture([_session(f, threads) for f in files], config, outputs=outputs, view_index=index)


def _session(path: str | os.PathLike, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("ONNX models need onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()  # runtime.set_threads matched it to the cores
    # The arena keeps every expert's largest activations alive between runs; without it the experts of
    # a big mixture take turns with the same memory (peak = one expert's activations, not the sum).
    opts.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
        raise CheckpointError(f"{path}: not a loadable ONNX model: {e}") from None


class OnnxMixture:
    """Experts exported to ONNX, run by ONNX Runtime or OpenVINO, usable wherever the Predictor takes a model.

    Either one exported mixture file (`OnnxMixture.load`: every view goes to its one session) or one
    session per expert (the cache: expert i reads view `view_index[i]`). `outputs`: the probability
    output's name, then the distances' where the model has uncertainty statistics.
    """

    def __init__(self, sessions: list, config: ModelConfig, outputs: list[str], view_index: list[int] | None = None,
                 runtime: str = "onnxruntime"):
        self.sessions = sessions
        self.runtime = runtime
        self.config = config
        self.outputs = outputs
        self.view_index = view_index
        self.has_distances = len(outputs) == 2

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> OnnxMixture:
        session = _session(path, threads)
        meta = session.get_modelmeta().custom_metadata_map
        if CONFIG_METADATA_KEY not in meta:
            raise CheckpointError(f"{path}: ONNX file has no deepfake-moe config (export it with `deepfake-moe export-onnx`)")
        config = from_dict(ModelConfig, yaml.safe_load(meta[CONFIG_METADATA_KEY]))
        has_distances = "d_experts" in {o.name for o in session.get_outputs()}
        if (config.uncertainty is not None) != has_distances:
            raise CheckpointError(f"{path}: its config and its outputs disagree about uncertainty statistics")
        return cls([session], config, ["p_experts"] + (["d_experts"] if has_distances else []))

    def expert_probabilities(self, *views: torch.Tensor) -> torch.Tensor:
        """(B, n_experts) fake probabilities from one preprocessed batch per view."""
        return self._run(views, self.outputs[:1])[0]

    def expert_outputs(self, *views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_experts) fake probabilities and (B, n_experts, 2) squared feature distances."""
        if not self.has_distances:
            raise ValueError("this model has no fitted feature statistics (deepfake-moe fit-uncertainty)")
        return self._run(views, self.outputs)

    def _run(self, views: tuple[torch.Tensor, ...], outputs: list[str]) -> tuple[torch.Tensor, ...]:
        arrays = [np.ascontiguousarray(x.detach().float().cpu().numpy()) for x in views]
        if self.view_index is None:  # one joined file: all views in one run
            names = [i.name for i in self.sessions[0].get_inputs()]
            if len(names) != len(arrays):
                raise ValueError(f"this ONNX model reads {len(names)} view(s) of each image, got {len(arrays)}")
            feeds = [dict(zip(names, arrays))]
        else:
            if len(arrays) != max(self.view_index) + 1:
                raise ValueError(f"these experts read {max(self.view_index) + 1} view(s) of each image, got {len(arrays)}")
            feeds = [{"image": arrays[v]} for v in self.view_index]
        runs = [s.run(outputs, f) for s, f in zip(self.sessions, feeds)]
        # per-expert files give (B,) and (B, 2); one joined file gives (B, E) and (B, E, 2)
        shapes = [(len(arrays[0]), -1), (len(arrays[0]), -1, 2)]
        return tuple(torch.from_numpy(np.concatenate([r[k].reshape(shapes[k]) for r in runs], axis=1)
                                      .astype(np.float32, copy=False)) for k in range(len(outputs)))


def join_experts(files: list[str | os.PathLike], config: ModelConfig, out: str | os.PathLike) -> Path:
    """One ONNX file from per-expert graphs: shared input `image`, outputs `p_fake` and `p_experts`,
    and `d_experts` when the expert graphs output distances."""
    import onnx
    from onnx import helper

    views, index = config.views()
    names = input_names(config)
    nodes, inits, probs, dists, opset = [], [], [], [], DEFAULT_OPSET
    for i, f in enumerate(files):
        m = onnx.compose.add_prefix(onnx.load(str(f)), f"e{i}/")
        opset = max([opset] + [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")])
        g = m.graph
        nodes.append(helper.make_node("Identity", [names[index[i]]], [g.input[0].name]))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        probs.append(f"p{i}")
        nodes.append(helper.make_node("Unsqueeze", [g.output[0].name, "axis1"], [f"p{i}"]))
        if len(g.output) > 1:
            dists.append(f"d{i}")
            nodes.append(helper.make_node("Unsqueeze", [g.output[1].name, "axis1"], [f"d{i}"]))
    if dists and len(dists) != len(files):
        raise ValueError("either every expert graph outputs distances or none does")
    inits.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    nodes.append(helper.make_node("Concat", probs, ["p_experts"], axis=1))
    if config.groups:
        _join_groups(config.groups, nodes, inits)
    else:
        nodes.append(helper.make_node("ReduceMean", ["p_experts", "axis1"], ["p_fake"], keepdims=0))
    outputs = [helper.make_tensor_value_info("p_fake", onnx.TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("p_experts", onnx.TensorProto.FLOAT, ["batch", len(files)])]
    if dists:
        nodes.append(helper.make_node("Concat", dists, ["d_experts"], axis=1))
        outputs.append(helper.make_tensor_value_info("d_experts", onnx.TensorProto.FLOAT, ["batch", len(files), 2]))
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", *view_shape(v)])
              for n, v in zip(names, views)]
    graph = helper.make_graph(
        nodes, "deepfake_moe", inputs, outputs, initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    entry = model.metadata_props.add()
    entry.key, entry.value = CONFIG_METADATA_KEY, yaml.safe_dump(to_dict(config), sort_keys=False)
    out = Path(out)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def _join_groups(groups: list[ExpertGroup], nodes: list, inits: list) -> None:
    """`p_fake` from `p_experts` by model/groups.py's rule: each group's mean logit, shifted where it passes the
    group's floor (silent below), the largest."""
    from onnx import helper, numpy_helper

    def const(name: str, value, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    low, high = const("g_eps", PROB_EPS), const("g_high", 1 - PROB_EPS)
    one, silent, aligned = const("g_one", 1.0), const("g_silent", SILENT), []
    for k, g in enumerate(groups):
        x = f"g{k}"
        nodes += [
            helper.make_node("Gather", ["p_experts", const(f"{x}_idx", g.experts, np.int64)], [f"{x}_p"], axis=1),
            helper.make_node("ReduceMean", [f"{x}_p", "axis1"], [f"{x}_m"], keepdims=1),
            helper.make_node("Clip", [f"{x}_m", low, high], [f"{x}_c"]),
            helper.make_node("Sub", [one, f"{x}_c"], [f"{x}_q"]),
            helper.make_node("Log", [f"{x}_c"], [f"{x}_lc"]),
            helper.make_node("Log", [f"{x}_q"], [f"{x}_lq"]),
            helper.make_node("Sub", [f"{x}_lc", f"{x}_lq"], [f"{x}_logit"]),
            helper.make_node("Add", [f"{x}_logit", const(f"{x}_shift", g.shift)], [f"{x}_z"]),
        ]
        if g.floor is not None:
            nodes += [helper.make_node("Greater", [f"{x}_logit", const(f"{x}_floor", g.floor)], [f"{x}_speaks"]),
                      helper.make_node("Where", [f"{x}_speaks", f"{x}_z", silent], [f"{x}_v"])]
        aligned.append(f"{x}_z" if g.floor is None else f"{x}_v")
    nodes += [helper.make_node("Concat", aligned, ["g_z"], axis=1),
              helper.make_node("ReduceMax", ["g_z", "axis1"], ["g_top"], keepdims=0),
              helper.make_node("Sigmoid", ["g_top"], ["p_fake"])]


def export_onnx(model: Mixture, config: ModelConfig, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                check: bool = True) -> dict:
    """Export expert by expert and join them into `out`; with `check`, the file is written only if
    ONNX Runtime gives PyTorch's probabilities (within CHECK_TOLERANCE) on a few inputs."""
    import tempfile

    model = model.cpu()
    was_training = model.training
    views, index = config.views()
    report = {"path": str(out), "checked": 0, "max_abs_diff": float("nan")}
    try:
        with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as joined:
            files = [export_expert(e, views[v], Path(tmp) / f"{i}.onnx", model.temperature, opset, head)
                     for i, (e, v, head) in enumerate(zip(model.experts, index, _heads(model)))]
            join_experts(files, config, joined)
            if check:
                report.update(_check(model.eval(), views, joined))
    finally:
        model.train(was_training)
    return report


def _check(model: Mixture, views: list[PreprocessConfig], path: Path) -> dict:
    xs = [example_input(v, batch=4) for v in views]
    with torch.inference_mode():
        ref = model.expert_probabilities(*xs).numpy()
    diff = float(np.abs(ref - OnnxMixture.load(path).expert_probabilities(*xs).numpy()).max())
    n = len(xs[0])
    if not diff <= CHECK_TOLERANCE:
        raise OnnxCheckError(f"the ONNX export differs from PyTorch by up to {diff:.2e} in P(fake) on {n} "
                             f"inputs (tolerance {CHECK_TOLERANCE:.0e}); nothing written")
    return {"checked": n, "max_abs_diff": diff}
