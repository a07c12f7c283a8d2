"""The published-format model on ONNX Runtime and OpenVINO: per-expert export, int8, bf16, plans chosen from the
machine, shards."""

import csv

import numpy as np
import pytest
import torch

from deepfake_moe import runtime
from deepfake_moe.cli import main
from deepfake_moe.errors import ConfigError
from deepfake_moe.infer import export, plan
from deepfake_moe.infer.openvino_runtime import openvino_available
from deepfake_moe.infer.quantize import calibration_batch, calibration_images
from deepfake_moe.model.published import load_published, published_config
from helpers import write_image
from test_published import write_published

TINY = ("test_efficientnet", "test_convnext")
SIZE = 64
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    write_published(folder, TINY)
    model, config = load_published(folder, backbones=TINY, input_size=SIZE)
    images = tmp_path_factory.mktemp("images")
    paths = [write_image(images / f"{i}.jpg", size=(70 + 9 * i, 50 + 4 * i), seed=i) for i in range(6)]
    return model, config, paths


def test_each_expert_exports_to_its_own_file_and_matches_pytorch(published, monkeypatch):
    model, config, _ = published
    runner = export.cached_onnx(model, config)
    files = export.cached_expert_files(model, config)
    assert len(set(files)) == len(TINY) == len(runner.sessions) and all(f.parent == export.cache_dir("onnx") for f in files)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        ref = model.expert_probabilities(x).numpy()
    got = runner.expert_probabilities(x).numpy()
    assert got.shape == (3, len(TINY)) and np.abs(got - ref).max() <= 1e-4
    # cached under the weights' digest: a second load exports nothing
    monkeypatch.setattr(export, "export_expert", lambda *a, **k: pytest.fail("re-exported a cached expert"))
    export.cached_onnx(model, config)


def test_openvino_runs_the_experts_exactly_in_fp32_and_near_in_bf16(tmp_path, capsys):
    pytest.importorskip("openvino")  # no wheels on some platforms (pyproject's marker)
    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", size=(40 + 6 * i, 36), seed=i)
    runs = {"torch": ["--runtime", "torch"], "fp32": ["--runtime", "openvino"]}
    if runtime.native_bf16("cpu"):
        runs["bf16"] = ["--runtime", "openvino", "--precision", "bf16"]
    out = {}
    for name, args in runs.items():
        out[name] = tmp_path / f"{name}.csv"
        assert main(["predict", str(tmp_path / "imgs"), "--weights", str(ckpt), "--device", "cpu", "--out",
                     str(out[name]), *args]) == 0
    assert "predict: openvino fp32 on cpu" in capsys.readouterr().err  # the plan line names what ran
    p = {name: np.array(_probabilities(f), dtype=float) for name, f in out.items()}
    assert len(p["fp32"]) == 3 and np.abs(p["fp32"] - p["torch"]).max() <= 1e-5
    if "bf16" in p:
        assert np.abs(p["bf16"] - p["torch"]).max() <= 0.05


def test_auto_falls_back_from_openvino_to_onnxruntime_with_a_note(published, monkeypatch, capsys):
    model, config, _ = published
    real = export.cached_onnx

    def no_openvino(*args, runtime="onnxruntime", **kwargs):
        if runtime == "openvino":
            raise RuntimeError("no CPU plugin")
        return real(*args, runtime=runtime, **kwargs)

    monkeypatch.setattr(export, "cached_onnx", no_openvino)
    p = plan.make_plan("cpu", "fp32", "auto", SIZE, openvino=True)
    runner, used = plan.runtime_model(model, config, p)
    assert (p.runtime, used.runtime, runner.runtime) == ("openvino", "onnxruntime", "onnxruntime")
    assert used.batch_size == plan.choose_batch_size(SIZE, CPU, "onnxruntime")
    p512 = plan.make_plan("cpu", "fp32", "auto", 512, openvino=True)  # at 512 px the two runtimes' batches differ
    assert (p512.batch_size, plan.with_runtime(p512, "onnxruntime", published_config(TINY, 512)).batch_size) == (1, 4)
    given = plan.make_plan("cpu", "fp32", "auto", SIZE, batch_size=3, openvino=True)
    assert plan.runtime_model(model, config, given)[1].batch_size == 3  # the user's, whatever runs
    assert "note: openvino unavailable (RuntimeError: no CPU plugin); using onnxruntime" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no CPU plugin"):  # asked for by name: no fallback
        plan.runtime_model(model, config, p, runtime="openvino")


def test_joined_export_file_matches_the_experts(published, tmp_path):
    model, config, _ = published
    report = export.export_onnx(model, config, tmp_path / "m.onnx")
    assert report["max_abs_diff"] <= 1e-4
    runner = export.OnnxMixture.load(tmp_path / "m.onnx")
    assert runner.config.backbones == list(TINY)


def test_int8_runs_and_stays_near_fp32(published):
    model, config, paths = published
    calib = calibration_batch(paths, config.preprocess, config.image_backend)
    assert len(calib) >= 8  # few images are stretched with mirrored and cropped views
    fp32 = export.cached_onnx(model, config)
    int8 = export.cached_onnx(model, config, precision="int8", calibration=[calib])
    x = torch.from_numpy(calib[:4])
    a, b = fp32.expert_probabilities(x).numpy(), int8.expert_probabilities(x).numpy()
    assert np.isfinite(b).all() and np.abs(a - b).max() <= 0.15
    stems = {f.stem for f in export.cached_expert_files(model, config)}
    assert len({f for f in export.cache_dir("onnx").glob("*.int8-*.onnx") if f.name.split(".")[0] in stems}) == len(TINY)
    if openvino_available():  # OpenVINO runs the same quantised files (`--precision int8 --runtime openvino`)
        ov = export.cached_onnx(model, config, precision="int8", calibration=[calib], runtime="openvino")
        assert ov.runtime == "openvino"
        assert np.abs(ov.expert_probabilities(x).numpy() - a).max() <= 0.15
        assert len({f for f in export.cache_dir("onnx").glob("*.int8-*.onnx") if f.name.split(".")[0] in stems}) == len(TINY)


def test_float_groups_find_the_sensitive_nodes(published):
    """The node groups a recipe keeps in float are found by the graph's structure, whatever the exporter named them."""
    import onnx

    from deepfake_moe.infer.quantize import FLOAT_GROUPS

    model, config, _ = published
    eff, cnx = (onnx.load(str(f)).graph for f in export.cached_expert_files(model, config))
    convs = [n for n in eff.node if n.op_type == "Conv"]
    assert FLOAT_GROUPS["stem"](eff) == [convs[0].name] and FLOAT_GROUPS["last_conv"](eff) == [convs[-1].name]
    se = FLOAT_GROUPS["squeeze_excite"](eff)
    assert se and len(se) % 2 == 0 and all("/se/" in name for name in se)  # each gate's reducing and expanding conv
    assert FLOAT_GROUPS["squeeze_excite"](cnx) == []
    ln = FLOAT_GROUPS["layer_norm_matmul"](cnx)
    assert ln and all("fc1" in name for name in ln) and all("fc2" in n for n in FLOAT_GROUPS["other_matmul"](cnx))


def test_a_recipe_keeps_its_groups_in_float(published, tmp_path):
    import onnx

    from deepfake_moe.infer.quantize import RECIPES, quantize_expert

    model, config, paths = published
    fp32 = export.cached_expert_files(model, config)[0]
    calib = calibration_batch(paths, config.preprocess, config.image_backend)
    q = onnx.load(str(quantize_expert(fp32, tmp_path / "q.onnx", calib, recipe=RECIPES["minmax-float-stem"])))
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    quantised_weight = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    # the stem reads its weights as stored (float); every later convolution reads dequantised int8 weights
    assert convs[0].input[1] not in quantised_weight and all(c.input[1] in quantised_weight for c in convs[1:])


def test_calibration_folder_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        calibration_images(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no images"):
        calibration_images(tmp_path)
    assert calibration_images() != []  # the shipped examples


@pytest.mark.parametrize("native", [False, True])
def test_auto_picks_bf16_only_where_native(native):
    assert plan.choose_precision("auto", CPU, native) == ("bf16" if native else "fp32")
    assert plan.choose_precision("auto", CUDA, native) == ("bf16" if native else "fp16")
    if not native:
        with pytest.raises(ConfigError, match="no native bf16"):
            plan.choose_precision("bf16", CPU, native)


def test_make_plan_reads_bf16_from_the_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu": False)
    assert plan.make_plan("cpu", "auto", input_size=512).precision == "fp32"
    monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu": True)
    p = plan.make_plan("cpu", "auto", input_size=512, openvino=True)
    assert (p.precision, p.runtime) == ("bf16", "openvino")
    assert plan.make_plan("cpu", "auto", input_size=512, openvino=False).runtime == "torch"


def test_runtime_auto_prefers_openvino_then_onnxruntime_on_the_cpu():
    assert plan.choose_runtime("auto", "fp32", CPU) == "openvino"  # whatever the model's size
    assert plan.choose_runtime("auto", "fp32", CPU, openvino=False) == "onnxruntime"
    assert plan.choose_runtime("auto", "int8", CPU) == "onnxruntime"  # the smaller AUC change
    assert plan.choose_runtime("openvino", "int8", CPU) == "openvino"
    assert plan.choose_runtime("auto", "bf16", CPU) == "openvino"
    assert plan.choose_runtime("auto", "bf16", CPU, openvino=False) == "torch"
    assert plan.choose_runtime("auto", "fp32", CUDA) == plan.choose_runtime("auto", "fp16", CUDA) == "torch"
    with pytest.raises(ConfigError, match="int8 needs OpenVINO or ONNX Runtime"):
        plan.choose_runtime("torch", "int8", CPU)
    with pytest.raises(ConfigError, match="openvino runs fp32, bf16 or int8 on the CPU"):
        plan.choose_runtime("openvino", "bf16", CUDA)
    with pytest.raises(ConfigError, match="pip install openvino"):
        plan.choose_runtime("openvino", "fp32", CPU, openvino=False)
    with pytest.raises(ConfigError, match=r"int8 runs on the CPU \(OpenVINO or ONNX Runtime\)"):
        plan.choose_precision("int8", CUDA, True)


def test_threads_workers_and_batch_follow_the_machine():
    small = plan.make_plan("cpu", "fp32", "onnxruntime", input_size=512, cores=2, bf16_native=False)
    # one decoder, so untrusted files are decoded under the memory cap, sharing a core with the model
    assert (small.workers, small.threads, small.batch_size) == (1, 2, 4)
    # OpenVINO: one 512 px image's worth (as fast, less memory)
    assert plan.make_plan("cpu", "fp32", "openvino", input_size=512, cores=2, openvino=True).batch_size == 1
    assert plan.make_plan("cpu", "fp32", "openvino", input_size=112, cores=2, openvino=True).batch_size == 20
    big = plan.make_plan("cpu", "fp32", input_size=112, cores=32, bf16_native=False, openvino=False)
    assert big.workers >= 1 and big.threads == 32 - (big.workers - 1) and big.batch_size > small.batch_size
    assert plan.choose_workers(16, CUDA) >= 4 and plan.choose_batch_size(512, CUDA) > small.batch_size
    assert not small.compile  # compiling is opt-in (--compile), CUDA only
    with pytest.raises(ConfigError, match="--compile is for CUDA"):
        plan.make_plan("cpu", "fp32", input_size=512, compile=True)


def test_predict_refuses_emulated_bf16(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu": False)
    write_image(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--precision", "bf16", "--device", "cpu"]) == 2
    assert "no native bf16" in capsys.readouterr().err


def _probabilities(path):
    return [r["probability"] for r in csv.DictReader(open(path))]


def test_shards_merge_to_the_unsharded_output(tmp_path):
    for i in range(7):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    whole = tmp_path / "whole.csv"
    assert main(["predict", str(tmp_path / "imgs"), "--out", str(whole), "--runtime", "torch"]) == 1
    parts = [tmp_path / f"part{k}.csv" for k in (1, 2, 3)]
    for k, part in enumerate(parts, 1):
        main(["predict", str(tmp_path / "imgs"), "--shard", f"{k}/3", "--out", str(part), "--runtime", "torch"])
    assert sum(len(_probabilities(p)) for p in parts) == 8
    merged = tmp_path / "merged.csv"
    assert main(["predict", "--merge", *map(str, reversed(parts)), "--out", str(merged)]) == 1  # the bad file's row
    assert merged.read_text() == whole.read_text()


def test_merge_refuses_missing_and_overlapping_parts(tmp_path, capsys):
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    parts = [tmp_path / f"part{k}.csv" for k in (1, 2)]
    for k, part in enumerate(parts, 1):
        assert main(["predict", str(tmp_path / "imgs"), "--shard", f"{k}/2", "--out", str(part), "--runtime", "torch"]) == 0
    assert main(["predict", "--merge", str(parts[0]), "--out", str(tmp_path / "m.csv")]) == 2
    assert "missing part(s) 2/2" in capsys.readouterr().err
    assert main(["predict", "--merge", str(parts[0]), str(parts[0]), str(parts[1]), "--out", str(tmp_path / "m.csv")]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
    assert main(["predict", str(tmp_path / "imgs"), "--shard", "3/2", "--out", str(tmp_path / "x.csv")]) == 2


@pytest.mark.parametrize("mode", ["published", "fast"])
def test_device_decoding_matches_the_cpu_preprocessing(tmp_path, mode):
    """The nvJPEG path's code, run on the CPU (libjpeg-turbo): the inputs the CPU path makes."""
    from deepfake_moe.data.image_io import read_image
    from deepfake_moe.data.transforms import PreprocessConfig, preprocess
    from deepfake_moe.infer.device_decode import decode_jpegs

    cfg = PreprocessConfig(input_size=48, mode=mode)
    import cv2

    paths = []
    for i in range(3):  # smooth content, like photographs (resize filters differ most on pixel noise)
        noise = np.random.default_rng(i).integers(0, 256, (7, 9, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.resize(noise, (90 + 10 * i, 70), interpolation=cv2.INTER_CUBIC))
    got = decode_jpegs(paths, cfg, "cpu")
    ref = torch.stack([preprocess(read_image(p, backend="opencv"), cfg) for p in paths])
    assert got.shape == ref.shape == (3, 3, 48, 48)
    assert (got - ref).abs().mean() < 0.005  # the same maths, up to one level of rounding in the area filter


def test_predict_int8_from_the_command_line(tmp_path):
    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.png", size=(40 + 6 * i, 36), seed=i)
    out = {}
    for precision in ("fp32", "int8"):
        out[precision] = tmp_path / f"{precision}.csv"
        assert main(["predict", str(tmp_path / "imgs"), "--weights", str(ckpt), "--precision", precision,
                     "--calibration-images", str(tmp_path / "imgs"), "--out", str(out[precision])]) == 0
    a, b = (np.array(_probabilities(out[p]), dtype=float) for p in ("fp32", "int8"))
    assert len(b) == 4 and np.abs(a - b).max() <= 0.15
    assert main(["predict", str(tmp_path / "imgs"), "--weights", str(ckpt), "--precision", "int8",
                 "--calibration-images", str(tmp_path / "none")]) == 2
