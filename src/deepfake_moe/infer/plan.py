"""How a prediction runs on this machine: runtime, precision, threads, decoding workers, batch size.

Chosen from what the hardware reports at run time (cores in this process's affinity mask, native
bf16 from the CPU flags or the GPU's compute capability, whether OpenVINO is installed), never
assumed, so the same command is right on an AMX Xeon, an AVX2-only EPYC and a GPU. Pure functions of
their inputs: tests pass the machine in. `planned_model` / `runtime_model` then give the model in the
planned runtime (its cached ONNX export run by OpenVINO or ONNX Runtime, or PyTorch): `predict`,
`evaluate` and `serve` run models through them (`calibrate` runs PyTorch, for the features).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from deepfake_moe.errors import ConfigError

if TYPE_CHECKING:  # torch loads with the model, not with `--help`
    import torch

PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "auto")
RUNTIME_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
JPEG_DECODERS = ("cpu", "device")  # where predict decodes JPEGs (infer/device_decode.py)
# Pixels per CPU batch: about four 512 px images, which amortise ONNX Runtime's per-call cost on small inputs
# (the default model at 112 px: 95.7 images/s at batch 64, 80.3 at batch 20). OpenVINO runs best on one
# 512 px image's worth: at 112 px 124.6 images/s at batch 20 against 106.9 at 64, and on the published
# experts at 512 px batch 1 as fast as batch 4 within the noise, in 3.0 GB instead of 5.1
# (benchmarks/probe_batch_size.py).
CPU_BATCH_PIXELS = 4 * 512 * 512
OPENVINO_BATCH_PIXELS = 512 * 512
GPU_BATCH_PIXELS = 32 * 512 * 512
MAX_BATCH = 64
# One decoding process per this many cores on a CPU run: decoding a JPEG is ~1% of an expert's
# forward pass at 512 px, and every decoding process takes a core from the intra-op threads.
CORES_PER_CPU_DECODER = 8


@dataclass(frozen=True)
class Plan:
    device: torch.device
    runtime: str  # "torch", "onnxruntime" or "openvino"
    precision: str  # fp32, bf16 (autocast or OpenVINO), fp16 (autocast) or int8 (static quantisation, OpenVINO or ONNX Runtime)
    threads: int  # intra-op threads of the model
    workers: int  # decoding processes
    batch_size: int
    compile: bool = False  # CUDA: torch.compile with CUDA graphs (fixed-shape batches)
    batch_given: bool = False  # the user's --batch-size: kept when the runtime changes

    @property
    def predictor_precision(self) -> str:
        """What the Predictor applies: autocast for PyTorch; an exported model's precision is compiled in."""
        return self.precision if self.runtime == "torch" else "fp32"

    def describe(self) -> str:
        return (f"{self.runtime} {self.precision} on {self.device}, {self.threads} thread(s), "
                f"{self.workers} decoding worker(s), batch {self.batch_size}" + (", compiled" if self.compile else ""))


def choose_precision(precision: str, device: torch.device, bf16_native: bool) -> str:
    """`auto`: bf16 where the hardware computes it (fp16 on older GPUs), else fp32; bf16 is refused where emulated."""
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if bf16_native else "fp16"
        return "bf16" if device.type == "cpu" and bf16_native else "fp32"
    if precision == "bf16" and device.type == "cpu" and not bf16_native:
        raise ConfigError("--precision bf16: this CPU has no native bf16 (AMX or AVX512-BF16), so it would be "
                          "emulated and run slower than fp32; use --precision int8 for the fast mode here")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError("--precision int8 runs on the CPU (OpenVINO or ONNX Runtime); on a GPU use --precision bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is for GPUs; on the CPU use fp32, int8 or (with AMX/AVX512-BF16) bf16")
    return precision


def choose_runtime(runtime: str, precision: str, device: torch.device, openvino: bool = True) -> str:
    """`auto` on the CPU: OpenVINO for fp32 and bf16 where it is installed (the fastest of the three in both,
    benchmarks/probe_openvino.py), else ONNX Runtime for fp32; ONNX Runtime for int8 (OpenVINO runs the same
    int8 files faster but moved the default model's AUC more: benchmarks/predict_default.py, infer_published.py);
    PyTorch on GPUs. Each expert is exported alone, so any model size runs."""
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"runtime {runtime!r} is not one of {', '.join(RUNTIME_CHOICES)}")
    cpu = device.type == "cpu"
    onnx_ok = cpu and precision in ("fp32", "int8")
    openvino_ok = cpu and precision in ("fp32", "bf16", "int8")
    if runtime == "onnxruntime" and not onnx_ok:
        raise ConfigError("--runtime onnxruntime runs fp32 or int8 on the CPU: drop --device/--precision "
                          "or use --runtime torch")
    if runtime == "openvino" and not openvino_ok:
        raise ConfigError("--runtime openvino runs fp32, bf16 or int8 on the CPU: drop --device/--precision "
                          "or use --runtime torch")
    if runtime == "openvino" and not openvino:
        raise ConfigError("--runtime openvino needs OpenVINO: pip install openvino")
    if runtime == "torch" and precision == "int8":
        raise ConfigError("--precision int8 needs OpenVINO or ONNX Runtime: drop --runtime torch")
    if runtime == "auto":
        if openvino_ok and openvino and precision != "int8":
            return "openvino"
        return "onnxruntime" if onnx_ok else "torch"
    return runtime


def choose_batch_size(input_size: int, device: torch.device, runtime: str = "torch") -> int:
    budget = (GPU_BATCH_PIXELS if device.type == "cuda" else
              OPENVINO_BATCH_PIXELS if runtime == "openvino" else CPU_BATCH_PIXELS)
    return max(1, min(MAX_BATCH, budget // (input_size * input_size)))


def choose_workers(cores: int, device: torch.device) -> int:
    """Decoding processes: GPUs need the CPU to keep up; on a CPU run they compete with the model, but
    at least one always runs, so every decode stays under the decode pool's memory cap and timeout (with
    `--jpeg-decoder device`, ordinary JPEGs are only checked there: infer/device_decode.py)."""
    if device.type != "cpu":
        return min(8, max(1, cores - 1))
    return min(4, max(1, cores // CORES_PER_CPU_DECODER))


def make_plan(device: str = "auto", precision: str = "fp32", runtime: str = "auto", input_size: int = 224,
              cores: int | None = None, bf16_native: bool | None = None, batch_size: int | None = None,
              workers: int | None = None, compile: bool = False, openvino: bool | None = None) -> Plan:
    from deepfake_moe.infer.openvino_runtime import openvino_available
    from deepfake_moe.runtime import native_bf16, resolve_device, usable_cores

    dev = resolve_device(device)
    if compile and dev.type != "cuda":
        raise ConfigError(f"--compile is for CUDA devices (torch.compile with CUDA graphs); this run is on {dev.type}")
    if compile and not compile_available():
        raise ConfigError("--compile needs triton, torch.compile's GPU code generator: pip install triton")
    cores = usable_cores() if cores is None else cores
    bf16_native = native_bf16(dev) if bf16_native is None else bf16_native
    prec = choose_precision(precision, dev, bf16_native)
    rt = choose_runtime(runtime, prec, dev, openvino_available() if openvino is None else openvino)
    workers = choose_workers(cores, dev) if workers is None else workers
    # one decoder mostly waits on the model, so it shares a core with it; further ones take a core each
    threads = max(1, cores - max(0, workers - 1)) if dev.type == "cpu" else max(1, min(4, cores))
    return Plan(
        device=dev, runtime=rt, precision=prec, threads=threads, workers=workers,
        batch_size=batch_size or choose_batch_size(input_size, dev, rt),
        compile=compile, batch_given=batch_size is not None,
    )


def with_runtime(plan: Plan, runtime: str, config) -> Plan:
    """`plan` run by `runtime` instead, with that runtime's batch unless the user gave one."""
    batch = plan.batch_size if plan.batch_given else choose_batch_size(input_size(config), plan.device, runtime)
    return replace(plan, runtime=runtime, batch_size=batch)


def input_size(config) -> int:
    """The largest input size among the model's views (what batch sizes are planned for)."""
    return max(v.input_size for v in config.views()[0])


def planned_model(model, config, device: str = "auto", precision: str = "fp32", runtime: str = "auto",
                  weights: str | None = None, calibration_images: str | None = None) -> tuple[object, Plan]:
    """(model to score with, its plan), as `predict` would run it: PyTorch, or its cached ONNX export."""
    plan = make_plan(device, precision, runtime, input_size(config))
    return runtime_model(model, config, plan, runtime, weights, calibration_images)


def runtime_model(model, config, plan: Plan, runtime: str = "auto", weights: str | None = None,
                  calibration_images: str | None = None):
    """(model to run, the plan it runs under): the cached per-expert export where the plan says so.

    The plan returned names the runtime that runs: ONNX Runtime for an exported .onnx file, and the
    fallback's where `auto` fell back. `runtime` is what the user asked for (an explicit choice fails
    loudly instead of falling back); `weights` names the model in messages; `calibration_images` feed
    int8 quantisation.
    """
    import torch

    if not isinstance(model, torch.nn.Module):  # an exported .onnx file runs as it was exported
        if runtime in ("torch", "openvino"):
            raise ConfigError(f"--runtime {runtime}: {weights} is an ONNX file, which runs with ONNX Runtime; "
                              "give a checkpoint folder for PyTorch and OpenVINO")
        if plan.runtime not in ("onnxruntime", "openvino") or plan.precision != "fp32":
            raise ConfigError("an .onnx model runs fp32 on the CPU with ONNX Runtime: leave --device, --precision "
                              "and --runtime at their defaults")
        return model, with_runtime(plan, "onnxruntime", config)
    if plan.runtime == "torch":
        return model, plan
    calibration = None
    if plan.precision == "int8":
        from deepfake_moe.infer.quantize import calibration_batch
        from deepfake_moe.infer.quantize import calibration_images as find_images

        images = find_images(calibration_images)
        calibration = [calibration_batch(images, view, config.image_backend) for view in config.views()[0]]
    from deepfake_moe.infer.export import cached_onnx

    try:
        return cached_onnx(model, config, threads=torch.get_num_threads(), precision=plan.precision,
                           calibration=calibration, runtime=plan.runtime), plan
    except Exception as e:
        if runtime != "auto" or plan.precision == "int8":
            raise
        fallback = "onnxruntime" if plan.runtime == "openvino" and plan.precision == "fp32" else "torch"
        print(f"note: {plan.runtime} unavailable ({type(e).__name__}: {e}); using {fallback}", file=sys.stderr)
        return runtime_model(model, config, with_runtime(plan, fallback, config), runtime, weights, calibration_images)


def compile_available() -> bool:
    try:
        import triton  # noqa: F401 - torch.compile's GPU code generator
    except ImportError:
        return False
    return True
