"""Device, precision, threads and caches: one implementation shared by predict, train and serve."""

import pytest
import torch

from deepfake_moe import paths, runtime
from deepfake_moe.errors import ConfigError


def test_devices_resolve_to_what_this_machine_has():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    auto = runtime.resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if torch.cuda.is_available():
        assert runtime.resolve_device("cuda").index is not None  # a plain "cuda" gets this process's GPU
    else:
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            runtime.resolve_device("cuda")
    with pytest.raises(ConfigError, match="not one of"):
        runtime.resolve_device("gpu0")


def test_predictor_and_training_share_one_device_and_autocast():
    from deepfake_moe.infer import predictor
    from deepfake_moe.train import loop

    assert loop.resolve_device is runtime.resolve_device and predictor.resolve_device is runtime.resolve_device
    assert loop.autocast is runtime.autocast and predictor.autocast is runtime.autocast


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_runs_matmuls_in_the_chosen_precision(precision, dtype):
    a = torch.randn(4, 4)
    with runtime.autocast(precision, torch.device("cpu")):
        assert (a @ a).dtype == dtype


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        runtime.autocast("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision"):
        from deepfake_moe.infer.predictor import Predictor

        Predictor(torch.nn.Identity(), None, device="cpu", precision="half")


def test_threads_follow_the_cores_and_never_rise_unasked():
    before = torch.get_num_threads()
    try:
        cores = runtime.usable_cores()
        assert 1 <= cores
        torch.set_num_threads(1)
        assert runtime.set_threads() == 1  # a count set lower on purpose stays
        assert runtime.set_threads(2) == 2 == torch.get_num_threads()
        assert runtime.set_threads(processes=cores * 4) == 1  # each process's share of the cores
        with pytest.raises(ConfigError):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "flags, native",
    [
        ({"avx2", "fma"}, False),  # AVX2-only EPYC: bf16 is emulated
        ({"avx512f", "avx512bw"}, False),  # AVX-512 without the BF16 extension
        ({"avx512f", "avx512_bf16"}, True),  # Cooper Lake, Zen 4
        ({"amx_tile", "amx_bf16"}, True),  # Sapphire Rapids and later
        ({"fp", "asimd", "bf16"}, True),  # Arm (Neoverse V1, Apple via Linux)
        (set(), False),  # flags unreadable
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    assert runtime.native_bf16("cpu") is native


@pytest.mark.parametrize(
    "flags, named, absent",
    [
        ({"avx2", "fma"}, "instruction sets: AVX2;", ["AVX-512", "AMX"]),  # an AVX2-only EPYC
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"},
         "instruction sets: AVX2, AVX-512, AVX512-BF16, AMX, AMX-BF16, AMX-INT8, VNNI;", []),
        (set(), "instruction sets: none of AVX2", []),
    ],
)
def test_benchmarks_name_the_instruction_sets_they_ran_on(monkeypatch, flags, named, absent):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    line = runtime.describe_cpu()
    assert named in line
    assert f"native bf16: {bool(flags & runtime.NATIVE_BF16_CPU_FLAGS)}" in line
    assert not any(name in line.split("instruction sets:")[1].split(";")[0] for name in absent)


def test_native_bf16_matches_this_cpu():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    expected = any(flag in text.split() for flag in ("amx_bf16", "avx512_bf16", "bf16"))
    assert runtime.native_bf16("cpu") is expected


def test_every_cache_lives_under_one_variable(monkeypatch, tmp_path):
    from deepfake_moe.augment import dcgan, gan
    from deepfake_moe.augment.corpus import sources as corpus_sources
    from deepfake_moe.infer import export

    monkeypatch.setenv("DEEPFAKE_MOE_CACHE", str(tmp_path))
    assert paths.cache_dir("onnx") == tmp_path / "onnx"
    assert tmp_path / "realesrgan" in gan._candidate_dirs(gan.REALESRGAN, None)
    assert tmp_path / "span" in gan._candidate_dirs(gan.SPAN, None)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "dcgan")):
        dcgan.weights_path()
    assert tmp_path / "debian" / "root" in corpus_sources.debian_roots()
    monkeypatch.setattr(export, "export_expert", lambda expert, view, path, temperature, **_: pytest.fail(str(path)))
    with pytest.raises(pytest.fail.Exception, match=str(tmp_path / "onnx")):
        export.cached_onnx(_tiny_model(), _tiny_config())
    monkeypatch.delenv("DEEPFAKE_MOE_CACHE")
    assert paths.cache_dir("onnx") == paths.Path.home() / ".cache" / "deepfake-moe" / "onnx"
    with pytest.raises(ValueError):
        paths.cache_dir("../elsewhere")


def _tiny_model():
    from deepfake_moe.model.mixture import Mixture

    return Mixture.from_backbones(["test_resnet"])


def _tiny_config():
    from deepfake_moe.model.checkpoint import ExpertSpec, ModelConfig

    return ModelConfig([ExpertSpec("test_resnet")])


def test_tests_never_write_to_the_users_cache():
    # conftest points the variable at a temporary folder for the whole session
    assert paths.cache_root() != paths.Path.home() / ".cache" / "deepfake-moe"
