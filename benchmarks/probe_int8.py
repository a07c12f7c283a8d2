"""What int8 costs in accuracy, per expert architecture and quantisation recipe, against fp32 in the same run.

For each backbone: one expert with random weights written in the published format (no published or
ImageNet weights for these architectures ship offline), exported to ONNX fp32, then quantised with
each recipe of `deepfake_moe.infer.quantize.RECIPES` (calibration method, node groups kept in float),
calibrated on the shipped examples (the default) or on --calibration DIR. Each int8 file is scored on
the evaluation images (--eval DIR, default: LFW faces from ../shared/data/lfw150.tar, else JPEGs made
from the examples) and compared with the fp32 file: max and mean |dp|, max |d logit|, and s/image
with its ratio to fp32 measured in the same run.

    python benchmarks/probe_int8.py --backbones tf_efficientnet_b4.ns_jft_in1k --size 512 --images 16
    python benchmarks/probe_int8.py --weights default --backbones "" --images 64   # trained weights
    python benchmarks/probe_int8.py --recipes minmax,percentile --backbones test_efficientnet --size 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test_published: the published weight writer
sys.path.insert(0, str(ROOT / "benchmarks"))

from deepfake_moe.infer import export  # noqa: E402
from deepfake_moe.infer.quantize import (  # noqa: E402
    DEFAULT_RECIPE,
    RECIPES,
    calibration_batch,
    calibration_images,
    int8_reduce_range,
    quantize_expert,
)
from deepfake_moe.model.published import load_published  # noqa: E402
from deepfake_moe.runtime import describe_cpu  # noqa: E402
from infer_published import LFW, lfw_faces, make_images  # noqa: E402


def eval_images(folder: Path, n: int, source: str | None) -> tuple[list[Path], str]:
    if source:
        return calibration_images(source)[:n], source
    if LFW.is_file():
        faces = lfw_faces(folder, n)
        return faces, f"{len(faces)} LFW faces"
    return [Path(p) for p in make_images(folder, n)], f"{n} JPEGs made from examples/"


def score(path: Path, inputs: np.ndarray) -> tuple[np.ndarray, float]:
    session = export._session(path, None)
    session.run(None, {"image": inputs[:1]})  # warm-up
    t = time.perf_counter()
    p = np.concatenate([session.run(["p_fake"], {"image": inputs[i : i + 1]})[0] for i in range(len(inputs))])
    return p.astype(np.float64), (time.perf_counter() - t) / len(inputs)


@torch.no_grad()
def condition(expert, inputs: np.ndarray) -> None:
    """Random weights made to behave like trained ones on the evaluation images, where int8 error shows:
    batch-norm statistics re-estimated on them (as training on that kind of image would leave them;
    timm's random init lets activations grow with depth), and the head scaled so that the fake-vs-real
    logit has mean 0 and std 2 over them (a random head saturates P(fake) at 0 or 1, hiding any error).
    The int8 calibration images stay separate (the shipped examples by default)."""
    x = torch.from_numpy(inputs)
    norms = [m for m in expert.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    expert.train()
    for i in range(0, len(x), 2):
        expert(x[i : i + 2])
    expert.eval()
    head = expert.backbone.get_classifier()
    feats = torch.cat([expert.features(x[i : i + 2]) for i in range(0, len(x), 2)])
    w = head.weight[1] - head.weight[0]
    d = feats @ w
    w = w * (2 / d.std())
    head.weight.copy_(torch.stack([-w / 2, w / 2]))
    b = -(feats @ w).mean()
    head.bias.copy_(torch.stack([-b / 2, b / 2]))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def published_expert(backbone: str, args, folder: Path, evals: list[Path]):
    """(label, fp32 file, calibration inputs, evaluation inputs) of one conditioned random expert."""
    from test_published import write_published

    folder.mkdir()
    write_published(folder, (backbone,))
    model, config = load_published(folder, backbones=(backbone,), input_size=args.size, use_ema=False)
    calib = calibration_batch(calibration_images(args.calibration), config.preprocess, config.image_backend)
    x = calibration_batch(evals, config.preprocess, config.image_backend, min_inputs=1)
    condition(model.experts[0], x)
    fp32 = export.export_expert(model.experts[0], config.preprocess, folder / "fp32.onnx", model.temperature)
    return f"{backbone} at {args.size} px (random weights, conditioned)", fp32, calib, x, grey_level(config.preprocess)


def trained_experts(args, folder: Path, evals: list[Path]):
    """The same for each expert of a trained checkpoint (--weights; `default`: the shipped default model)."""
    from deepfake_moe.infer.weights import load_weights

    folder.mkdir()
    model, config = load_weights(None if args.weights == "default" else args.weights)
    views, index = config.views()
    calib_images = calibration_images(args.calibration)
    inputs = {}  # per view: the same images decode once for every expert that reads them
    for i, (expert, v) in list(enumerate(zip(model.experts, index)))[: args.experts or None]:
        if v not in inputs:
            inputs[v] = (calibration_batch(calib_images, views[v], config.image_backend),
                         calibration_batch(evals, views[v], config.image_backend, min_inputs=1))
        calib, x = inputs[v]
        fp32 = export.export_expert(expert, views[v], folder / f"{i}.fp32.onnx", model.temperature)
        yield (f"{config.name}: expert {i} ({config.backbones[i]}) at {views[v].input_size} px", fp32, calib, x,
               grey_level(views[v]))


def worst_tensors(fp32: Path, recipe: str, calib: np.ndarray, x: np.ndarray, n: int) -> None:
    """onnxruntime's QDQ debugging (qdq_loss_debug): the activations whose int8 rounding loses most
    (qdq SNR: the tensor against its own quantise-dequantise) and how far each has drifted from fp32
    (model SNR), on two evaluation images."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from deepfake_moe.infer.quantize import _Reader

    pre, q = fp32.with_name("pre.onnx"), fp32.with_name("debug.int8.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_expert(pre, q, calib, recipe=RECIPES[recipe])
    acts = {}
    for kind, path in (("float", pre), ("qdq", q)):
        aug = path.with_name(f"{kind}.aug.onnx")
        modify_model_output_intermediate_tensors(str(path), str(aug), op_types_for_saving=["Conv", "MatMul"])
        acts[kind] = collect_activations(str(aug), _Reader(x[:2]))
        aug.unlink()
    errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
    print(f"  {recipe}: the {n} activations with the lowest qdq SNR (dB), and their SNR against fp32")
    for name, e in sorted(errors.items(), key=lambda kv: kv[1]["qdq_err"])[:n]:
        print(f"    {e['qdq_err']:6.1f} {e.get('xmodel_err', float('nan')):6.1f}  {name}")
    for f in (pre, q):
        f.unlink()


def grey_level(view) -> float:
    """One grey level (1/255) in the network's normalised input units."""
    return 1 / 255 / float(np.mean(view.std))


def probe(label: str, fp32: Path, calib: np.ndarray, x: np.ndarray, level: float, recipes: list[str],
          worst: int = 0) -> None:

    ref, t32 = score(fp32, x)
    chosen = DEFAULT_RECIPE.name
    print(f"\n{label}: {len(calib)} calibration inputs, {len(x)} evaluation images; "
          f"fp32 p in [{ref.min():.3f}, {ref.max():.3f}], {t32:.3f} s/image; chosen recipe: {chosen}")
    print(f"{'recipe':34s} {'max|dp|':>8s} {'mean|dp|':>9s} {'max|dlogit|':>11s} {'s/image':>8s} {'vs fp32':>8s} {'quantise s':>10s}")
    # control: fp32 on the same images with half a grey level of noise, the rounding any 8-bit image carries;
    # a network that moves far on this (random deep nets amplify perturbations) overstates any int8 error
    noisy = x + np.random.default_rng(0).uniform(-level / 2, level / 2, x.shape).astype(np.float32)
    p, _ = score(fp32, noisy)
    dp = np.abs(p - ref)
    print(f"{'(fp32, input +-1/2 grey level)':34s} {dp.max():8.4f} {dp.mean():9.5f} {np.abs(logit(p) - logit(ref)).max():11.4f}")
    for name in recipes:
        t = time.perf_counter()
        q = quantize_expert(fp32, fp32.with_name(f"{name}.onnx"), calib, recipe=RECIPES[name])
        q_s = time.perf_counter() - t
        p, t8 = score(q, x)
        dp = np.abs(p - ref)
        print(f"{name + (' *' if name == chosen else ''):34s} {dp.max():8.4f} {dp.mean():9.5f} "
              f"{np.abs(logit(p) - logit(ref)).max():11.4f} {t8:8.3f} {t32 / t8:7.2f}x {q_s:10.1f}", flush=True)
        q.unlink()
    if worst:
        worst_tensors(fp32, recipes[0], calib, x, worst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="tf_efficientnet_b4.ns_jft_in1k,convnextv2_tiny.fcmae_ft_in1k")
    ap.add_argument("--weights", help="also probe each expert of this checkpoint folder ('default': the shipped one)")
    ap.add_argument("--experts", type=int, default=0, help="with --weights: probe only the first N experts (0: all)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=16, help="evaluation images")
    ap.add_argument("--eval", help="folder of evaluation images (default: LFW faces, else made from examples/)")
    ap.add_argument("--calibration", help="folder of calibration images (default: the shipped examples/)")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--worst", type=int, default=0, help="list the N activations int8 rounds worst (first recipe)")
    args = ap.parse_args()
    print(describe_cpu())
    print(f"int8 weights: {'7-bit (reduce_range, no VNNI)' if int8_reduce_range() else '8-bit (VNNI)'}; "
          f"calibration: {args.calibration or 'the shipped examples/'} (stretched with mirrored and cropped views)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "eval").mkdir()
        evals, what = eval_images(tmp / "eval", args.images, args.eval)
        print(f"evaluation: {what}; * = the recipe predict uses (DEFAULT_RECIPE)")
        recipes = args.recipes.split(",")
        if args.weights:
            for case in trained_experts(args, tmp / "trained", evals):
                probe(*case, recipes, args.worst)
        for i, backbone in enumerate(filter(None, args.backbones.split(","))):
            probe(*published_expert(backbone, args, tmp / f"published{i}", evals), recipes, args.worst)


if __name__ == "__main__":
    main()
