"""Where and how tensors run: device resolution, precision, autocast and CPU threads.

Shared by prediction (`infer/predictor.py`), training (`train/loop.py`) and serving, so that
`device: auto` and `precision: bf16` mean the same everywhere. Hardware is probed at run time,
never assumed: the same code runs on AMX Xeons, AVX2-only EPYCs, CUDA and Apple GPUs.
"""

from __future__ import annotations

import contextlib
import functools
import os
from contextlib import AbstractContextManager

import torch

from deepfake_moe.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precision names -> the autocast dtype (None: plain float32, no autocast)."""
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# /proc/cpuinfo flags of CPUs that compute bfloat16 in hardware (AMX tiles, AVX512-BF16 dot
# products; "bf16" on Arm). Without them, bf16 matmuls are emulated and usually slower than fp32.
NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """`auto` -> CUDA (this process's GPU under torchrun), else Apple MPS, else the CPU.

    A plain `cuda` gets an index: `local_rank` when given (one GPU per process), else the current GPU.
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not one of {', '.join(DEVICES)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} asked for, but MPS is not available")
    return dev


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Mixed precision for `precision` on `device`'s type; fp32 runs as it is."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: containers and taskset limit it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(threads: int | None = None, processes: int = 1) -> int:
    """Intra-op threads: `threads` if given, else this process's share of the usable cores.

    Without `threads` the count is only ever lowered: PyTorch's default can count the host's cores
    rather than the container's, but a lower count set on purpose (tests, a shared server) stays.
    """
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        n = threads
    else:
        n = min(torch.get_num_threads(), max(1, usable_cores() // max(1, processes)))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


# Instruction-set names -> the /proc/cpuinfo flags that show them (any one suffices).
INSTRUCTION_SETS = {"AVX2": {"avx2"}, "AVX-512": {"avx512f"}, "AVX512-BF16": {"avx512_bf16"}, "AMX": {"amx_tile"},
                    "AMX-BF16": {"amx_bf16"}, "AMX-INT8": {"amx_int8"}, "VNNI": {"avx512_vnni", "avx_vnni"}}


def describe_cpu() -> str:
    """One line naming this CPU, its usable cores and the instruction sets it has: the benchmarks print
    it beside their speed figures, so that figures from different machines can be read side by side."""
    flags = cpu_flags()
    found = [name for name, need in INSTRUCTION_SETS.items() if flags & need]
    model = "unknown model"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return (f"CPU: {model}; {usable_cores()} usable cores; instruction sets: "
            f"{', '.join(found) or 'none of ' + ', '.join(INSTRUCTION_SETS)}; native bf16: {native_bf16('cpu')}; "
            f"torch {torch.__version__}")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` computes bfloat16 in hardware, so that bf16 autocast is worth choosing.

    CUDA: compute capability 8.0 (Ampere) or later. CPU: AMX or AVX512-BF16 (x86), BF16 (Arm), read
    from /proc/cpuinfo at run time (PyTorch's `get_cpu_capability()` stops at "AVX512", which does not
    tell); False where the flags cannot be read.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)
