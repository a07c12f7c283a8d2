"""ONNX export of a mixture: input a preprocessed batch, output the fake probability per image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from deepfake_moe.io import atomic_path
from deepfake_moe.model.checkpoint import ModelConfig
from deepfake_moe.model.mixture import Mixture


def export_onnx(model: Mixture, config: ModelConfig, out: str | os.PathLike, opset: int = 18, check: bool = True) -> dict:
    """Export with a dynamic batch axis; check it against PyTorch with onnxruntime when installed."""
    model = model.eval().cpu()
    size = config.preprocess.input_size
    example = torch.randn(2, 3, size, size)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["p_fake"],
            dynamic_axes={"image": {0: "batch"}, "p_fake": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    report = {"path": str(out), "checked": 0, "max_abs_diff": float("nan")}
    if check:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, size, size)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        report.update(checked=len(x), max_abs_diff=float(np.abs(ref - got).max()))
    return report
