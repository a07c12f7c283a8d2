"""Untrusted files wherever the project decodes: face mode, videos, explain, serve, prepare and corpus all
decode in the capped decode pool; every refusal has a kind; the limits are options.

Hostile files are built here (tests/hostile.py); memory is measured in child processes.
"""

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import hostile
from deepfake_moe.cli import build_parser, main
from deepfake_moe.data.decode_pool import DecodeBudget, DecodeFailure, DecodePool, SharedDecoders, from_wire, to_wire
from deepfake_moe.data.image_io import Failure, ImageLimits, ImageReadError, read_image_bytes
from deepfake_moe.errors import ConfigError
from helpers import tiny_checkpoint, write_image

SRC = str(Path(__file__).parents[1] / "src")
COSTLY = 9000  # a 9000 x 9000 PNG of zeros: legal (81 MP), a 120 kB file, about 600 MB to decode in-process

KINDS = {
    "icns_as.png": Failure.UNSUPPORTED_FORMAT,
    "tga.tga": Failure.UNSUPPORTED_FORMAT,
    "lying_bmp.bmp": Failure.TOO_LARGE,
    "strip_1x60000.png": Failure.TOO_LARGE,
    "zero_bomb.png": Failure.TOO_LARGE,
    "frames_5000.gif": Failure.TOO_LARGE,
    "huge_tile.tif": Failure.TOO_LARGE,
    "lying_png.png": Failure.TRUNCATED,
    "truncated.jpg": Failure.TRUNCATED,
}


@pytest.mark.parametrize("backend", ["pil", "opencv"])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_refusal_has_its_kind(name, backend):
    with pytest.raises(ImageReadError) as e:
        read_image_bytes(hostile.HOSTILE[name](), name, backend)
    assert e.value.kind is KINDS[name]
    with pytest.raises(ImageReadError) as e:
        read_image_bytes(b"", "empty.png")
    assert e.value.kind is Failure.EMPTY
    with pytest.raises(ImageReadError) as e:
        read_image_bytes(b"plain text, not an image", "notes.png")
    assert e.value.kind is Failure.NOT_AN_IMAGE


def test_failure_kinds_cross_the_wire_and_an_unknown_kind_is_a_crash():
    back = from_wire(to_wire(DecodeFailure("frame too large", Failure.TOO_LARGE)))
    assert back == DecodeFailure("frame too large", Failure.TOO_LARGE)
    forged = to_wire(DecodeFailure("x", Failure.MEMORY)).replace(b'"memory"', b'"rm -rf"')
    assert from_wire(forged).kind is Failure.CRASHED


def _frames(item):
    """A streaming task: `n` parts, then a stall, a crash or the end."""
    n, then = item
    for i in range(n):
        yield np.full(2, i, np.int64)
    if then == "sleep":
        time.sleep(60)
    if then == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if then == "raise":
        raise ImageReadError("clip.mp4", "no frame", Failure.TRUNCATED)


def test_stream_yields_parts_and_ends_a_stalled_or_crashed_item_with_its_failure():
    pool = DecodePool(_frames, workers=1, budget=DecodeBudget(timeout_s=1.0))
    with pool:
        assert [int(p[0]) for p in pool.stream((3, None))] == [0, 1, 2]
        *parts, last = pool.stream((2, "sleep"))
        assert len(parts) == 2 and last.kind is Failure.TIMEOUT and "longer than 1 s" in last.reason
        *parts, last = pool.stream((1, "segfault"))
        assert len(parts) == 1 and last.kind is Failure.CRASHED and "SIGSEGV" in last.reason
        *parts, last = pool.stream((2, "raise"))
        assert len(parts) == 2 and last == DecodeFailure("no frame", Failure.TRUNCATED)
        abandoned = pool.stream((1000, None))
        next(abandoned)
        abandoned.close()  # the worker still producing is ended, the pool goes on
        assert [int(p[0]) for p in pool.stream((2, None))] == [0, 1]
    assert [int(p[0]) for p in DecodePool(_frames, workers=0).stream((2, None))] == [0, 1]


def _pid(_item):
    return os.getpid()


def test_shared_decoders_keep_their_workers_and_split_the_budget():
    decoders = SharedDecoders(_pid, 2, DecodeBudget(memory_mb=512))
    try:
        pids = {decoders(i) for i in range(6)}
        assert len(pids) == 2 and os.getpid() not in pids  # six calls, two workers kept between them
        assert decoders._pools.queue[0].cap_bytes == 256 << 20
    finally:
        decoders.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """good, costly (legal but 600 MB to decode), ICNS as .png, good: in this order."""
    root = tmp_path_factory.mktemp("mixed")
    write_image(root / "a_good.png", seed=1)
    (root / "b_costly.png").write_bytes(hostile.png(COSTLY, COSTLY))
    (root / "c_icns.png").write_bytes(hostile.HOSTILE["icns_as.png"]())
    write_image(root / "d_good.jpg", seed=2)
    return [str(root / n) for n in ("a_good.png", "b_costly.png", "c_icns.png", "d_good.jpg")]


_GROWTH = """
import sys
sys.path[:0] = {paths!r}
def rss(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) // 1024
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.infer.weights import load_weights
from deepfake_moe.data.decode_pool import DecodeBudget
model, config = load_weights({ckpt!r})
predictor = Predictor(model, config, num_workers=1, faces={faces!r}, decode_budget=DecodeBudget(memory_mb=128))
predictor.predict([{warm!r}])  # the model's own memory, before the baseline
base = rss("VmRSS")
rows = predictor.predict({paths_in!r})
import resource
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(repr([r.error for r in rows]))
print(max(rss("VmHWM"), children) - base)
"""


@pytest.mark.parametrize("faces", [True, False])
def test_predict_and_face_mode_decode_under_the_cap_in_order(ckpt, mixed, faces):
    code = _GROWTH.format(paths=[SRC, str(Path(__file__).parent)], ckpt=str(ckpt), faces=faces, warm=mixed[0],
                          paths_in=mixed)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    errors, growth = proc.stdout.strip().splitlines()[-2:]
    errors = ast.literal_eval(errors)
    assert errors[0] == "" and errors[3] == ""
    assert "more memory than the decode budget" in errors[1] and "unsupported format ICNS" in errors[2]
    # Decoding the costly file in this process would take about 600 MB; its worker stopped at the cap.
    assert int(growth) < 350, f"predict grew by {growth} MB"


def _video(path: Path, size=(4000, 3000), frames=3) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()
    return str(path)


def test_video_frames_decode_under_the_cap_and_the_timeout(tmp_path, ckpt):
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.weights import load_weights

    big, small = _video(tmp_path / "big.mp4"), _video(tmp_path / "small.mp4", size=(64, 48))
    model, config = load_weights(str(ckpt))
    capped = Predictor(model, config, num_workers=1, decode_budget=DecodeBudget(memory_mb=64))
    rows = capped.predict([big, small])
    # FFmpeg's frame allocation fails at the cap: a MemoryError, or OpenCV's read() giving no frame
    assert "more memory than the decode budget" in rows[0].error or "no frame could be decoded" in rows[0].error
    assert rows[1].error == "" and len(rows[1].frames) == 3
    hurried = Predictor(model, config, num_workers=1, decode_budget=DecodeBudget(timeout_s=0.001))
    assert "longer than 0.001 s" in hurried.predict([big])[0].error
    assert Predictor(model, config, num_workers=1).predict([big])[0].error == ""


def test_explain_reports_a_stopped_decode_and_explains_the_others(tmp_path, ckpt, mixed, capsys):
    out = tmp_path / "png"
    code = main(["explain", *mixed, "--weights", str(ckpt), "--out", str(out), "--decode-memory", "96", "--no-faces"])
    assert code == 1
    err = capsys.readouterr().err
    assert "more memory than the decode budget" in err and "unsupported format ICNS" in err
    assert sorted(p.name for p in out.iterdir()) == ["00000_a_good.png", "00003_d_good.png"]


def test_limits_are_options_of_predict_explain_and_serve(tmp_path, ckpt, capsys):
    image = write_image(tmp_path / "a.png", size=(40, 32))
    assert main(["predict", str(image), "--weights", str(ckpt), "--max-side", "36", "--no-progress"]) == 1
    assert "a side above the limit of 36" in capsys.readouterr().out
    assert main(["predict", str(image), "--weights", str(ckpt), "--max-aspect", "1.1", "--no-progress"]) == 1
    assert "aspect ratio above the limit of 1.1" in capsys.readouterr().out
    gif = tmp_path / "anim.gif"
    gif.write_bytes(hostile.many_frames_gif(12))
    assert main(["predict", str(gif), "--weights", str(ckpt), "--max-frames", "10", "--no-progress"]) == 1
    assert "more than 10 frames" in capsys.readouterr().out
    assert main(["predict", str(image), "--max-side", "0"]) == 2  # a usage error
    assert "(--max-side) must be > 0" in capsys.readouterr().err
    from deepfake_moe.serve.commands import limits_from_args

    args = build_parser().parse_args(["serve", "--max-side", "100", "--max-aspect", "3", "--max-frames", "7",
                                      "--decode-memory", "512", "--decode-timeout", "2.5", "--max-pixels", "5000"])
    limits = limits_from_args(args)
    image_limits = limits.image_limits()
    assert (image_limits.max_side, image_limits.max_aspect, image_limits.max_frames, image_limits.max_pixels) == (
        100, 3.0, 7, 5000)
    assert (limits.decode.memory_mb, limits.decode.timeout_s) == (512, 2.5)
    # serve reads --formats as predict does: aliases, "+" to widen the defaults
    assert limits_from_args(build_parser().parse_args(["serve", "--formats", "jpg,png"])).formats == ("JPEG", "PNG")
    wider = limits_from_args(build_parser().parse_args(["serve", "--formats", "+ICO"])).formats
    assert "ICO" in wider and "JPEG" in wider
    for bad in (dict(max_aspect=0.5), dict(max_aspect=float("nan")), dict(max_side=None)):  # the API checks too
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ImageLimits(**bad)
    for command in ("predict", "explain", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(option in text for option in ("--max-side", "--max-aspect", "--max-frames", "--decode-memory",
                                                  "--decode-timeout")), command


def test_serve_decodes_uploads_in_capped_processes_and_answers_by_kind(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("fastapi_offline")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.serve.app import create_app
    from deepfake_moe.serve.limits import ServeLimits
    from deepfake_moe.serve.service import Service

    model, config = load_weights(str(tiny_checkpoint(tmp_path / "ckpt")))
    limits = ServeLimits(decode_threads=1, decode=DecodeBudget(memory_mb=96))
    good = write_image(tmp_path / "a.png", seed=1).read_bytes()
    sent = [("a.png", good), ("costly.png", hostile.png(6000, 6000)), ("icns.png", hostile.HOSTILE["icns_as.png"]()),
            ("cut.jpg", hostile.truncated_jpeg()), ("b.png", good)]
    with TestClient(create_app(Service(Predictor(model, config, num_workers=0), limits, explainer=model))) as client:
        r = client.post("/v1/predict", files=[("file", (n, d, "application/octet-stream")) for n, d in sent])
        results = r.json()["results"]
        assert [x["status"] for x in results] == [200, 413, 415, 422, 200]
        assert "more memory than the decode budget" in results[1]["error"]
        assert results[0]["probability"] == pytest.approx(results[4]["probability"])
        r = client.post("/v1/explain", files=[("file", ("costly.png", hostile.png(6000, 6000), "image/png"))])
        assert r.status_code == 413
        assert client.get("/v1/model").json()["limits"]["decode"]["memory_mb"] == 96


def test_prepare_and_corpus_readers_turn_a_stopped_decode_into_a_skip(tmp_path, mixed, capsys):
    from deepfake_moe.augment.corpus.reals import gather_photos
    from deepfake_moe.augment.corpus.sources import PHOTO_SOURCES
    from deepfake_moe.augment.prepare import _decoder, _read_input
    from deepfake_moe.data.decode_pool import read_images

    results = list(read_images(mixed, budget=DecodeBudget(memory_mb=96), workers=1))
    assert results[0].shape == (32, 40, 3) and results[3].shape == (32, 40, 3)
    assert results[1].kind is Failure.MEMORY and results[2].kind is Failure.UNSUPPORTED_FORMAT
    with pytest.raises(ImageReadError) as e:
        _read_input(mixed[2], None)
    assert e.value.kind is Failure.UNSUPPORTED_FORMAT
    assert _read_input(mixed[0], None).shape == (32, 40, 3)
    _decoder().close()
    rows = gather_photos(PHOTO_SOURCES[0], [Path(mixed[2]), Path(mixed[3])], tmp_path / "reals", 16)
    assert "skipped" in capsys.readouterr().err and all("c_icns" not in r["photo"] for r in rows)


_ORPHAN = """
import sys, time
sys.path[:0] = {paths!r}
from test_hostile_stages import _pid
from deepfake_moe.data.decode_pool import DecodePool
pool = DecodePool(_pid, 1)
print(pool.call(0), flush=True)
time.sleep(600)
"""


def _ended(pid: int) -> bool:
    try:
        state = next(line for line in open(f"/proc/{pid}/status") if line.startswith("State:"))
    except (OSError, StopIteration):
        return True
    return "Z" in state.split()[1]


def test_a_worker_whose_parent_is_killed_ends():
    code = _ORPHAN.format(paths=[SRC, str(Path(__file__).parent)])
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert not _ended(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while not _ended(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ended(worker), "the decoding worker outlived its killed parent"
