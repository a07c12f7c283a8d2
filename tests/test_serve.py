"""`deepfake-moe serve`: the API's answers, its error statuses, its limits and its batching across requests."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("fastapi_offline")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from deepfake_moe.cli import main  # noqa: E402
from deepfake_moe.data.transforms import PreprocessConfig  # noqa: E402
from deepfake_moe.infer.predictor import Predictor  # noqa: E402
from deepfake_moe.model.checkpoint import ExpertSpec, ModelConfig, build_model, load_checkpoint  # noqa: E402
from deepfake_moe.serve.app import create_app  # noqa: E402
from deepfake_moe.serve.batcher import MicroBatcher  # noqa: E402
from deepfake_moe.serve.limits import ServeLimits  # noqa: E402
from deepfake_moe.serve.service import Service  # noqa: E402
from helpers import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model():
    """Two tiny experts, the second with its own view (48 px): each image is preprocessed once per view."""
    import torch

    torch.manual_seed(0)
    config = ModelConfig(
        experts=[ExpertSpec("test_efficientnet"), ExpertSpec("test_resnet", preprocess=PreprocessConfig(48, mode="fast"))],
        preprocess=PreprocessConfig(input_size=32, mode="fast"),
    )
    return build_model(config).eval(), config


def make_service(tiny_model, **limits) -> Service:
    model, config = tiny_model
    predictor = Predictor(model, config, num_workers=0, batch_size=8)
    return Service(predictor, ServeLimits(**limits), explainer=model)


@pytest.fixture()
def client(tiny_model):
    with TestClient(create_app(make_service(tiny_model))) as c:
        yield c


def image_bytes(fmt="JPEG", size=(48, 40), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def files(*named: tuple[str, bytes]):
    return [("file", (name, data, "application/octet-stream")) for name, data in named]


def test_predict_answers_one_result_per_file_in_order_with_the_cli_numbers(client, tiny_model, tmp_path):
    images = [(f"img{i}.{fmt.lower()}", image_bytes(fmt, seed=i)) for i, fmt in enumerate(["JPEG", "PNG", "WEBP"])]
    sent = [images[0], ("broken.jpg", images[0][1][:200]), images[1], images[2]]
    r = client.post("/v1/predict", files=files(*sent))
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["name"] for x in results] == [name for name, _ in sent]
    assert results[1]["status"] == 422 and results[1]["probability"] is None and results[1]["error"]
    paths = []
    for name, data in images:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    model, config = tiny_model
    expected = Predictor(model, config, num_workers=0).predict(paths)
    for got, want in zip([results[0], results[2], results[3]], expected):
        assert got["status"] == 200 and got["error"] == ""
        assert got["probability"] == pytest.approx(want.probability, abs=1e-5)
        assert got["expert_probabilities"] == pytest.approx(list(want.expert_probabilities), abs=1e-5)
        assert got["verdict"] == want.verdict and got["threshold"] == config.threshold


@pytest.mark.parametrize(
    "name,data,status,reason",
    [
        ("empty.jpg", b"", 422, "empty"),
        ("notes.txt", b"just some text, not an image", 415, "format"),
        ("cut.png", image_bytes("PNG", size=(64, 64))[:300], 422, "truncated|decode|corrupt"),
    ],
)
def test_a_bad_file_alone_gets_its_status_and_a_reason(client, name, data, status, reason):
    r = client.post("/v1/predict", files=files((name, data)))
    assert r.status_code == status
    body = r.json()
    assert re.search(reason, body["reason"]) and body["results"][0]["status"] == status


def test_limits_refuse_with_413_and_415(tiny_model):
    limits = dict(max_upload_bytes=4000, max_request_bytes=20_000, max_files=3, max_pixels=64 * 64, formats=("PNG",))
    with TestClient(create_app(make_service(tiny_model, **limits))) as c:
        small_png = image_bytes("PNG", size=(16, 16))

        def status(*named):
            return c.post("/v1/predict", files=files(*named)).status_code

        assert status(("ok.png", small_png)) == 200
        assert status(("big.png", image_bytes("PNG", size=(60, 60)))) == 413  # > 4000 bytes
        assert status(("wide.png", _blank_png(200, 30))) == 413  # 6000 pixels > 4096, tiny file
        assert status(("photo.jpg", image_bytes("JPEG", size=(16, 16)))) == 415  # JPEG is not whitelisted
        assert status(*[(f"{i}.png", small_png) for i in range(4)]) == 413  # more than max_files
        r = c.post("/v1/predict", files=files(("a.png", small_png), ("b.png", b"\0" * 30_000)))
        assert r.status_code == 413 and "request body" in r.json()["reason"]


def _blank_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_requests_that_are_not_multipart_image_uploads_are_refused(client):
    r = client.post("/v1/predict", content=b"raw bytes", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 415 and "multipart" in r.json()["reason"]
    r = client.post("/v1/predict", files=[("other", ("a.jpg", image_bytes(), "image/jpeg"))])
    assert r.status_code == 400 and "field 'file'" in r.json()["reason"]
    r = client.post("/v1/predict", content=b"--xx\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 400
    assert client.get("/v1/predict").status_code == 405 and client.get("/nowhere").json()["reason"] == "Not Found"


def test_uploads_never_touch_the_disk(client, monkeypatch):
    import tempfile

    import starlette.formparsers

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")

    for module, name in [(tempfile, "SpooledTemporaryFile"), (tempfile, "NamedTemporaryFile"),
                         (tempfile, "TemporaryFile"), (tempfile, "mkstemp"),
                         (starlette.formparsers, "SpooledTemporaryFile")]:
        monkeypatch.setattr(module, name, refuse)
    big = image_bytes("PNG", size=(900, 900))  # > 2 MB: Starlette's parser would spool it to disk
    assert len(big) > 2 * 2**20
    r = client.post("/v1/predict", files=files(("big.png", big)))
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 200


def test_explain_returns_the_overlay_png_with_the_probability(client):
    data = image_bytes(size=(64, 48))
    p = client.post("/v1/predict", files=files(("a.jpg", data))).json()["results"][0]["probability"]
    r = client.post("/v1/explain", files=files(("a.jpg", data)))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert float(r.headers["x-probability"]) == pytest.approx(p, abs=1e-4)
    assert Image.open(io.BytesIO(r.content)).size[0] > 300
    assert client.post("/v1/explain", files=files(("a.jpg", data), ("b.jpg", data))).status_code == 400
    assert client.post("/v1/explain", files=files(("x.txt", b"text"))).status_code == 415


def test_explain_without_pytorch_weights_is_501(tiny_model):
    service = make_service(tiny_model)
    service.explainer = None
    with TestClient(create_app(service)) as c:
        r = c.post("/v1/explain", files=files(("a.jpg", image_bytes())))
        assert r.status_code == 501 and "ONNX" in r.json()["reason"]


def test_model_health_docs_and_page(client, tiny_model):
    _, config = tiny_model
    m = client.get("/v1/model").json()
    assert [e["backbone"] for e in m["experts"]] == config.backbones
    assert m["input_size"] == 32 and m["threshold"] == config.threshold and m["explain"] is True
    assert [e["input_size"] for e in m["experts"]] == [32, 48]
    assert m["limits"]["max_upload_bytes"] == 20 * 2**20 and "JPEG" in m["limits"]["formats"]
    assert "info" in m and m["runtime"] == "torch"
    assert client.get("/healthz").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    for page in ("/docs", "/redoc", "/"):
        html = client.get(page).text
        assert not re.findall(r"(?:src|href)=[\"']https?://", html), f"{page} loads something from the network"
        assets = re.findall(r"(?:src|href)=[\"'](/[^\"']+)", html)
        assert assets
        for asset in assets:
            if not asset.startswith("/docs") and asset != "/v1/model":
                got = client.get(asset)
                assert got.status_code == 200 and got.content, asset


class GatedScore:
    """A model call that blocks its first batch until released, so requests pile up behind it."""

    def __init__(self, score):
        self.score = score
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, *views):
        self.calls += 1
        if self.calls == 1:
            assert self.release.wait(30)
        return self.score(*views)


async def _wait_until(condition, timeout=20.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def gated_service(tiny_model, **limits) -> tuple[Service, GatedScore]:
    service = make_service(tiny_model, **limits)
    gate = GatedScore(service.batcher.score)
    service.batcher.score = gate
    return service, gate


def run_concurrently(service: Service, scenario):
    """Run `scenario(client)` against the app in one event loop (its requests truly concurrent), then stop."""

    async def run():
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
            return await scenario(c)

    try:
        return asyncio.run(run())
    finally:
        service.close()


def test_concurrent_requests_are_scored_in_one_batch(tiny_model):
    service, gate = gated_service(tiny_model, max_batch=16, max_wait_ms=0)

    async def scenario(c):
        def post(i):
            return c.post("/v1/predict", files=files((f"{i}.png", image_bytes("PNG", seed=i))))

        first = asyncio.create_task(post(0))
        await _wait_until(lambda: gate.calls == 1)  # the first image is being scored, alone
        rest = [asyncio.create_task(post(i)) for i in range(1, 7)]
        await _wait_until(lambda: service.batcher.waiting == 6)
        gate.release.set()
        return [await first] + [await t for t in rest]

    responses = run_concurrently(service, scenario)
    assert [r.status_code for r in responses] == [200] * 7
    assert [r.json()["results"][0]["name"] for r in responses] == [f"{i}.png" for i in range(7)]
    assert list(service.batcher.batch_sizes) == [1, 6]


def test_a_micro_batch_reaches_the_model_in_slices_of_the_predictor_batch(tiny_model):
    """The micro-batcher may gather --max-batch images; the model sees at most the plan's batch per call."""
    import torch

    service = make_service(tiny_model)
    service.predictor.batch_size = 2
    calls = []
    score = service.predictor.score_batch
    service.predictor.score_batch = lambda *views: calls.append(len(views[0])) or score(*views)
    views = (torch.randn(5, 3, 32, 32), torch.randn(5, 3, 48, 48))
    got = service._score(*views)
    assert calls == [2, 2, 1] and got.shape == (5, 3)
    probs, unc = score(*views)
    np.testing.assert_allclose(got[:, :2], probs, atol=1e-6)
    service.close()


def test_a_full_queue_answers_503_and_a_slow_answer_times_out(tiny_model):
    service, gate = gated_service(tiny_model, queue_length=2, timeout_s=1.0)

    async def scenario(c):
        one = files(("a.png", image_bytes("PNG")))
        two = files(("a.png", image_bytes("PNG")), ("b.png", image_bytes("PNG")))
        blocked = asyncio.create_task(c.post("/v1/predict", files=two))
        await _wait_until(lambda: gate.calls == 1)
        full = await c.post("/v1/predict", files=one)
        timed_out = await blocked
        gate.release.set()
        return full, timed_out, await c.post("/v1/predict", files=one)

    full, timed_out, after = run_concurrently(service, scenario)
    assert full.status_code == 503 and full.headers["retry-after"] and "busy" in full.json()["reason"]
    assert timed_out.status_code == 503 and "timeout" in timed_out.json()["reason"]
    assert after.status_code == 200


def test_micro_batcher_keeps_order_and_reports_errors():
    import torch

    seen = []

    def score(first, second):  # a model with two views: one stacked batch for each
        seen.append(len(first))
        if (first < 0).any():
            raise RuntimeError("model failure")
        return torch.cat([first * 2, second], dim=1)

    batcher = MicroBatcher(score, max_batch=4, max_wait_s=0.05)
    futures = [batcher.submit((torch.full((1,), float(i)), torch.full((1,), -float(i)))) for i in range(10)]
    assert [list(f.result(10)) for f in futures] == [[2.0 * i, -float(i)] for i in range(10)]
    assert all(n <= 4 for n in seen) and sum(seen) == 10
    with pytest.raises(RuntimeError, match="model failure"):
        batcher.submit((torch.full((1,), -1.0), torch.zeros(1))).result(10)
    batcher.close()
    assert not batcher.alive


def test_serve_command_checks_its_limits(capsys):
    assert main(["serve", "--formats", "JPEG,NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert main(["serve", "--queue-length", "0"]) == 2


def test_a_model_failure_is_a_json_500_and_the_server_goes_on(tiny_model):
    service = make_service(tiny_model)
    score = service.batcher.score

    def broken(*views):
        raise RuntimeError("out of memory")

    service.batcher.score = broken
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", files=files(("a.png", image_bytes("PNG"))))
        assert r.status_code == 500 and "out of memory" in r.json()["reason"]
        service.batcher.score = score
        assert c.post("/v1/predict", files=files(("a.png", image_bytes("PNG")))).status_code == 200


def test_serve_runs_the_model_as_predict_does(tmp_path, monkeypatch):
    """`--runtime auto` on a CPU: the cached export in OpenVINO (ONNX Runtime, PyTorch by name), the PyTorch mixture
    kept for Grad-CAM; an .onnx file as weights: ONNX Runtime, no explanations."""
    from deepfake_moe import runtime as machine

    monkeypatch.setattr(machine, "native_bf16", lambda device="cpu": True)  # where it is not, bf16 is refused
    from deepfake_moe.cli import build_parser
    from deepfake_moe.infer.export import export_onnx
    from deepfake_moe.infer.openvino_runtime import openvino_available
    from deepfake_moe.serve.commands import build_service, limits_from_args

    ckpt = tiny_checkpoint(tmp_path / "ckpt", size=32)
    export_onnx(*load_checkpoint(ckpt), tmp_path / "model.onnx")
    auto = "openvino" if openvino_available() else "onnxruntime"
    for weights, runtime, explain, extra in [(ckpt, auto, True, []),
                                             (ckpt, "onnxruntime", True, ["--runtime", "onnxruntime"]),
                                             (ckpt, "torch", True, ["--precision", "bf16", "--runtime", "torch"]),
                                             (tmp_path / "model.onnx", "onnxruntime", False, [])]:
        args = build_parser().parse_args(["serve", "--weights", str(weights), *extra])
        service = build_service(args, limits_from_args(args))
        with TestClient(create_app(service)) as c:
            info = c.get("/v1/model").json()
            assert (info["runtime"], info["explain"]) == (runtime, explain)
            assert c.post("/v1/predict", files=files(("a.png", image_bytes("PNG")))).status_code == 200


def test_served_results_carry_the_uncertainty_and_the_uncertain_verdict(tiny_model, tmp_path):
    import copy

    from deepfake_moe.model.uncertainty import UncertaintyConfig, fit_feature_distance

    model, config = copy.deepcopy(tiny_model)
    rng = np.random.default_rng(0)
    model.attach_distances([fit_feature_distance(rng.normal(size=(40, e.num_features)), np.arange(40) % 2, 4)
                            for e in model.experts])  # two experts, two views
    config.uncertainty, config.uncertainty_threshold = UncertaintyConfig(components=4), 0.0  # all uncertain
    (tmp_path / "a.png").write_bytes(image_bytes("PNG"))
    want = Predictor(model, config, num_workers=0).predict([str(tmp_path / "a.png")])[0]
    with TestClient(create_app(make_service((model, config)))) as c:
        got = c.post("/v1/predict", files=files(("a.png", image_bytes("PNG")))).json()["results"][0]
    assert want.verdict == got["verdict"] == "uncertain" and 0 <= want.uncertainty <= 1
    assert got["uncertainty"] == pytest.approx(want.uncertainty, abs=1e-5)


def test_serve_faces_scores_face_crops_as_predict_faces_does(tiny_model, tmp_path):
    """--faces: each face's crop is scored (batched with other requests), the most fake face decides, the result
    lists every face's box, detector score and probability, and a photo without a face is scored whole."""
    skimage_data = pytest.importorskip("skimage.data")
    from deepfake_moe.cli import build_parser
    from deepfake_moe.serve.commands import build_service, limits_from_args

    buf = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buf, format="PNG")  # a real photo with one face
    photo = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (90, 120, 150)).save(buf, format="PNG")  # no face anywhere
    flat = buf.getvalue()
    (tmp_path / "photo.png").write_bytes(photo)
    (tmp_path / "flat.png").write_bytes(flat)
    model, config = tiny_model
    want = Predictor(model, config, num_workers=0, faces=True).predict([str(tmp_path / "photo.png"),
                                                                        str(tmp_path / "flat.png")])
    service = Service(Predictor(model, config, num_workers=0, batch_size=8, faces=True), ServeLimits(), explainer=model)
    with TestClient(create_app(service)) as c:
        assert c.get("/v1/model").json()["faces"] is True
        got = c.post("/v1/predict", files=files(("photo.png", photo), ("flat.png", flat))).json()["results"]
        assert c.post("/v1/explain", files=files(("photo.png", photo))).status_code == 200
    assert want[0].faces, "the astronaut's face was not found"
    assert got[0]["probability"] == pytest.approx(want[0].probability, abs=1e-5)
    assert got[0]["probability"] == pytest.approx(max(f["probability"] for f in got[0]["faces"]), abs=1e-6)
    assert [f["box"] for f in got[0]["faces"]] == [list(f.box) for f in want[0].faces]
    assert [f["crop"] for f in got[0]["faces"]] == [list(f.crop) for f in want[0].faces]
    assert got[0]["faces"][0]["detector_score"] == pytest.approx(want[0].faces[0].detector_score)
    assert got[0]["side"] == want[0].side == want[0].faces[0].crop[2]
    assert got[1]["faces"] == [] and got[1]["probability"] == pytest.approx(want[1].probability, abs=1e-5)

    ckpt = tiny_checkpoint(tmp_path / "ckpt", size=32)
    for flags, faces in ([], False), (["--faces", "--max-faces", "2"], True):
        args = build_parser().parse_args(["serve", "--weights", str(ckpt), "--runtime", "torch", *flags])
        predictor = build_service(args, limits_from_args(args)).predictor
        assert predictor.faces is faces and predictor.max_faces == (2 if faces else 8)
