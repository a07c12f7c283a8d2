"""JPEGs decoded on the model's device (`predict --jpeg-decoder device`), run here on the CPU: the same rows
as the decoding workers give, errors included, and the same model inputs up to decoder rounding."""

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_moe.data.image_io import ImageLimits, ImageReadError, read_image
from deepfake_moe.data.transforms import PreprocessConfig, preprocess, resize_uint8
from deepfake_moe.errors import ConfigError
from deepfake_moe.infer import device_decode, predictor
from deepfake_moe.infer.device_decode import ORIENT, device_jpeg, resize_uint8_on_device
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.model.checkpoint import load_checkpoint
from helpers import tiny_checkpoint


def photo(seed: int, size: tuple[int, int]) -> np.ndarray:
    """Smooth colour content, like a photograph, of (width, height), not symmetric (orientation shows)."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    return cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)


def save_jpeg(path, rgb: np.ndarray, orientation: int = 1, mode: str = "RGB"):
    img = Image.fromarray(rgb).convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize(("h", "w", "size"), [(150, 150, 112), (1000, 700, 112), (513, 777, 256), (60, 90, 112)])
def test_fast_resize_on_device_is_opencvs(h, w, size):
    """Area filter when shrinking, bilinear when enlarging: OpenCV's values up to one level of rounding."""
    rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = resize_uint8_on_device(torch.from_numpy(rgb).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
    diff = np.abs(got.astype(int) - resize_uint8(rgb, size).astype(int))
    assert got.shape == (size, size, 3) and diff.max() <= 1 and diff.mean() < 0.2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    path = save_jpeg(tmp_path / "o.jpg", photo(orientation, (48, 30)), orientation)
    item = device_jpeg(device_decode.jpeg_for_device(path.read_bytes(), str(path), ImageLimits()))
    assert item.orientation == orientation
    got = device_decode.decode_on_device([item], [PreprocessConfig(input_size=24, mode="fast")], torch.device("cpu"))[0]
    upright = read_image(path)  # Pillow, EXIF applied
    assert got[1] == upright.shape
    ref = preprocess(upright, PreprocessConfig(input_size=24, mode="fast"))
    assert (got[0][0][0] - ref).abs().max() < 0.05  # decoder rounding only


@pytest.fixture
def inputs(tmp_path):
    """Ordinary JPEGs (colour, grey, rotated), and files the device must not take or that fail everywhere."""
    folder = tmp_path / "in"
    folder.mkdir()
    save_jpeg(folder / "a_colour.jpg", photo(0, (90, 70)))
    save_jpeg(folder / "b_grey.jpg", photo(1, (64, 80)), mode="L")
    save_jpeg(folder / "c_rotated.jpg", photo(2, (120, 50)), orientation=6)
    save_jpeg(folder / "d_cmyk.jpg", photo(3, (70, 70)), mode="CMYK")
    Image.fromarray(photo(5, (60, 60))).save(folder / "d_progressive.jpg", progressive=True)
    Image.fromarray(photo(4, (50, 40))).save(folder / "e_png.png")
    whole = (folder / "a_colour.jpg").read_bytes()
    (folder / "f_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "g_empty.jpg").write_bytes(b"")
    (folder / "h_garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9")
    return sorted(str(p) for p in folder.iterdir())


@pytest.fixture
def model(tmp_path):
    return load_checkpoint(tiny_checkpoint(tmp_path / "ckpt", size=32))


def test_device_decoding_gives_the_workers_rows(inputs, model, monkeypatch):
    """Same scores (to decoder rounding), same error rows, in input order; only plain JPEGs reach the device."""
    taken = []
    real = predictor.decode_on_device
    monkeypatch.setattr(predictor, "decode_on_device", lambda items, *a: taken.extend(items) or real(items, *a))
    rows = {}
    for choice in ("cpu", "device"):
        p = Predictor(*model, device="cpu", jpeg_decoder=choice, num_workers=1, batch_size=3)
        rows[choice] = p.predict(inputs)
    assert [r.path for r in rows["device"]] == inputs
    assert [r.error for r in rows["device"]] == [r.error for r in rows["cpu"]]
    assert [bool(r.error) for r in rows["cpu"]] == [False] * 6 + [True] * 3
    for cpu, dev in zip(rows["cpu"], rows["device"]):
        if not cpu.error:
            assert abs(cpu.probability - dev.probability) < 1e-3
            assert cpu.verdict == dev.verdict
    assert [Path(p).read_bytes() for p in inputs[:3]] == [item.data.tobytes() for item in taken]  # the ordinary JPEGs


def test_a_jpeg_the_device_refuses_is_decoded_on_the_cpu(inputs, model, monkeypatch):
    monkeypatch.setattr(device_decode, "_decode", lambda data, device: [None] * len(data))
    rows = Predictor(*model, device="cpu", jpeg_decoder="device", num_workers=0).predict(inputs)
    reference = Predictor(*model, device="cpu", jpeg_decoder="cpu", num_workers=0).predict(inputs)
    assert [r.error for r in rows] == [r.error for r in reference]
    assert [round(r.probability, 6) for r in rows[:6]] == [round(r.probability, 6) for r in reference[:6]]


def test_one_file_the_device_decoder_refuses_does_not_lose_the_batch(inputs, model, monkeypatch):
    """A batch call that fails is retried file by file; the refused file goes to a capped worker."""
    import torchvision.io

    real, bad = torchvision.io.decode_jpeg, torch.from_numpy(np.fromfile(inputs[1], np.uint8))

    def decode(data, **kw):
        if isinstance(data, list) and len(data) > 1 or torch.equal(data if not isinstance(data, list) else data[0], bad):
            raise RuntimeError("nvJPEG says no")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)
    rows = Predictor(*model, device="cpu", jpeg_decoder="device", num_workers=1).predict(inputs)
    reference = Predictor(*model, device="cpu", jpeg_decoder="cpu", num_workers=1).predict(inputs)
    assert [r.error for r in rows] == [r.error for r in reference]
    assert max(abs(a.probability - b.probability) for a, b in zip(rows[:6], reference[:6])) < 1e-3


def jpeg_header(width: int, height: int, frame: int = 0xC0) -> bytes:
    """A JPEG's markers up to its frame header, declaring width x height (no image data: what a worker taken
    over by a file could send)."""
    sof = bytes([0xFF, frame, 0, 17, 8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes(10)
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x02" + bytes(100) + b"\xff\xd9"


def test_what_a_decoding_process_sends_for_the_device_is_checked_again(tmp_path):
    good = {"jpeg": np.frombuffer(jpeg_header(640, 480), np.uint8), "orientation": 6}
    assert device_jpeg(good).pixels == 640 * 480
    as_array = lambda b: np.frombuffer(b, np.uint8)  # noqa: E731
    for bad in ({**good, "orientation": 9}, {**good, "jpeg": good["jpeg"].astype(np.float32)},
                {**good, "jpeg": good["jpeg"].reshape(1, -1)}, {**good, "extra": 1}, {"jpeg": good["jpeg"]},
                {**good, "jpeg": as_array(jpeg_header(5000, 5000))},  # more pixels than the device takes
                {**good, "jpeg": as_array(jpeg_header(640, 480, frame=0xC2))},  # progressive
                {**good, "jpeg": as_array(jpeg_header(640, 480)[:-2])},  # no end marker
                {**good, "jpeg": as_array(jpeg_header(640, 480) + b"\xff\xda" * 5)},  # scans without end
                {**good, "jpeg": as_array(jpeg_header(9000, 100))}):  # a side longer than the device takes
        with pytest.raises(ValueError):
            device_jpeg(bad)
    # a marker libjpeg skips without a length must not hide a false frame header from the size check
    # (read as a length, "FF E1" jumps 65,507 bytes, into an APP1 segment holding a 16x16 frame header)
    fake_frame = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10" + bytes(10)
    app1 = b"\xff\xe1" + (65512).to_bytes(2, "big") + bytes(65501) + fake_frame
    for skipped in (b"\xff\xd0", b"\xff\x00", b"\xff\x01"):
        data = b"\xff\xd8" + skipped + app1 + jpeg_header(6000, 6000)[2:]
        assert data[2 + 2 + 0xFFE1 : 2 + 2 + 0xFFE1 + 2] == b"\xff\xc0"
        with pytest.raises(ValueError):
            device_jpeg({**good, "jpeg": as_array(data)})
    assert sorted(ORIENT) == list(range(1, 9))
    # without a device, such a result is an error row, not a crash
    failed = []
    predictor._add_decoded(0, good, [PreprocessConfig(input_size=32)], [], failed)
    assert "malformed" in failed[0][1]


def test_which_jpegs_a_decoding_process_passes_on(tmp_path):
    limits = ImageLimits()
    plain = save_jpeg(tmp_path / "p.jpg", photo(0, (40, 30))).read_bytes()
    assert device_decode.jpeg_for_device(plain, "p", limits)["orientation"] == 1
    Image.fromarray(photo(0, (40, 30))).save(tmp_path / "x.jpg", xmp=b"<x:xmpmeta/>")
    Image.fromarray(photo(0, (40, 30))).save(tmp_path / "g.jpg", progressive=True)
    for name in ("x.jpg", "g.jpg"):  # XMP (whose orientation OpenCV ignores), progressive
        assert device_decode.jpeg_for_device((tmp_path / name).read_bytes(), name, limits) is None
    with pytest.raises(ImageReadError, match="above the limit"):  # refused as the CPU path refuses it
        device_decode.jpeg_for_device(plain, "p", ImageLimits(max_pixels=100))
    rotated = save_jpeg(tmp_path / "r.jpg", photo(0, (40, 30)), orientation=6).read_bytes()
    assert device_decode.jpeg_for_device(rotated, "r", limits, "pil")["orientation"] == 6
    assert device_decode.jpeg_for_device(rotated, "r", limits, "opencv") is None  # OpenCV may read it otherwise
    # a file whose pixels are not the size its header declared is not scored from the device
    lying = device_decode.DeviceJpeg(np.frombuffer(plain, np.uint8), 1, (16, 16))
    assert device_decode.decode_on_device([lying], [PreprocessConfig(input_size=8)], torch.device("cpu")) == [None]


def test_where_jpegs_are_decoded(model):
    net, config = model
    assert Predictor(net, config, device="cpu").jpeg_device is None  # the workers, unless asked
    assert Predictor(net, config, device="cpu", jpeg_decoder="device").jpeg_device == torch.device("cpu")
    with pytest.raises(ConfigError, match="face mode"):
        Predictor(net, config, device="cpu", jpeg_decoder="device", faces=True)
    native = replace(config, preprocess=PreprocessConfig(input_size=32, mode="native"))
    with pytest.raises(ConfigError, match="native-resolution"):
        Predictor(net, native, device="cpu", jpeg_decoder="device")
    with pytest.raises(ConfigError, match="one of"):
        Predictor(net, config, device="cpu", jpeg_decoder="auto")
