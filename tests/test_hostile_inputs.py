"""Untrusted images: a small file must not cost gigabytes, seconds, or the rows of other files.

Every hostile file is built here (tests/hostile.py); memory is measured in child processes.
"""

import csv
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hostile
from deepfake_moe.data.decode_pool import DecodeBudget, DecodeFailure, DecodePool, from_wire, to_wire
from deepfake_moe.data.image_io import (
    ImageLimits,
    ImageReader,
    ImageReadError,
    parse_formats,
    read_image,
    read_image_bytes,
)
from helpers import tiny_checkpoint, write_image

EXPECTED = {
    "icns.icns": "unsupported format ICNS",
    "ico.ico": "unsupported format ICO",
    "tga.tga": "unsupported format TGA",
    "pcx.pcx": "unsupported format PCX",
    "dds.dds": "unsupported format DDS",
    "icns_as.png": "unsupported format ICNS",
    "huge_frame.ico": "unsupported format ICO",
    "huge_frame.icns": "unsupported format ICNS",
    "lying_bmp.bmp": "30000x30000 = 900,000,000 pixels, above the limit",
    "lying_png.png": "header that lies",
    "strip_1x60000.png": "1x60000",
    "zero_bomb.png": "10247x10247 = 105,001,009 pixels, above the limit",
    "frames_5000.gif": "more than 2,000 frames",
    "huge_tile.tif": "TIFF tile is 65536x65536",
    "truncated.jpg": "truncated",
}


@functools.cache
def _bytes(name: str) -> bytes:
    return hostile.HOSTILE[name]()


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    for name in hostile.HOSTILE:
        (root / name).write_bytes(_bytes(name))
    return root


@pytest.mark.parametrize("backend", ["pil", "opencv"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_hostile_file_is_a_clear_read_error(hostile_dir, name, backend):
    with pytest.raises(ImageReadError, match=EXPECTED[name]):
        read_image(hostile_dir / name, backend=backend)


def test_bytes_entry_point_has_the_same_guards():
    for name, reason in EXPECTED.items():
        with pytest.raises(ImageReadError, match=reason):
            read_image_bytes(_bytes(name), name)
    rgb = read_image_bytes(hostile.png(8, 6, color_type=2), "upload.png")
    assert rgb.shape == (6, 8, 3)
    # uploads through a decode pool, as a server would: same guards plus the memory cap
    uploads = [hostile.png(8, 6, color_type=2), _bytes("icns_as.png"), _bytes("zero_bomb.png")]
    out = list(DecodePool(ImageReader(), workers=1).map(uploads))
    assert out[0].shape == (6, 8, 3)
    assert "unsupported format ICNS" in out[1].reason and "above the limit" in out[2].reason


def test_formats_are_recognised_from_content_and_the_list_can_be_widened():
    wide = ImageLimits(formats=parse_formats("+ICO,ICNS,TGA"))
    assert read_image_bytes(_bytes("ico.ico"), limits=wide).shape == (32, 32, 3)
    assert read_image_bytes(_bytes("icns_as.png"), limits=wide).shape == (32, 32, 3)
    assert read_image_bytes(_bytes("tga.tga"), limits=wide).shape == (32, 32, 3)
    # a multi-size container whose small directory entry hides a huge frame
    with pytest.raises(ImageReadError, match="20000x20000|too large"):
        read_image_bytes(_bytes("huge_frame.ico"), limits=wide)
    with pytest.raises(ImageReadError, match="too large"):
        read_image_bytes(_bytes("huge_frame.icns"), limits=wide)
    only_png = ImageLimits(formats=parse_formats("png"))
    with pytest.raises(ImageReadError, match="unsupported format JPEG"):
        read_image_bytes(hostile.truncated_jpeg(), limits=only_png)
    with pytest.raises(ValueError, match="unknown image format"):
        parse_formats("JPEG,NOPE")


def test_guards_check_frames_and_aspect_not_only_pixels():
    limits = ImageLimits(max_frames=10)
    with pytest.raises(ImageReadError, match="more than 10 frames"):
        read_image_bytes(hostile.many_frames_gif(11), limits=limits)
    assert read_image_bytes(hostile.many_frames_gif(10), limits=limits).shape == (1, 1, 3)
    with pytest.raises(ImageReadError, match="aspect ratio"):
        read_image_bytes(hostile.png(4000, 20), limits=ImageLimits())
    assert read_image_bytes(hostile.png(1000, 20)).shape == (20, 1000, 3)  # 50:1 is allowed


def test_highly_compressible_honest_png_is_not_called_a_liar():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (3000, 3000)).save(buf, format="PNG", bits=1)  # 1 bit per pixel: ~2 kB for 9 MP
    assert read_image_bytes(buf.getvalue()).shape == (3000, 3000, 3)
    assert read_image_bytes(hostile.png(3000, 3000)).shape == (3000, 3000, 3)  # 8-bit zeros at ~1000:1


_CHILD = """
import resource, sys
sys.path[:0] = {paths!r}
from deepfake_moe.data.image_io import ImageReadError, read_image
errors = 0
for p in sys.argv[1:]:
    try:
        read_image(p)
    except ImageReadError:
        errors += 1
print(errors, peak_mb())
"""

_PEAK = """
import resource
def peak_mb():
    # VmHWM: this process's own peak since exec (ru_maxrss would include the forking parent's size)
    own = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def test_reading_every_hostile_file_stays_small_in_memory(hostile_dir):
    code = _PEAK + _CHILD.format(paths=[str(Path(__file__).parents[1] / "src")])
    files = [str(hostile_dir / n) for n in sorted(hostile.HOSTILE)]
    out = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120)
    errors, peak_mb = map(int, out.stdout.split())
    assert errors == len(files), out.stderr
    assert peak_mb < 250, f"peak RSS {peak_mb} MB reading {len(files)} hostile files"  # ICNS alone once took 8 GB


# Decode pool: the cap, the timeout and a crash each cost one row, never the run.


def _task(item):
    if item == "sleep":
        time.sleep(60)
    if item == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if item == "hog":
        return np.ones(1 << 30, np.uint8)
    return np.full(3, item, np.float32)


def test_pool_reports_memory_timeout_and_crash_as_rows_in_order():
    pool = DecodePool(_task, workers=2, budget=DecodeBudget(memory_mb=256, timeout_s=1.5))
    items = [1, "hog", 2, "sleep", 3, "segfault", 4, "sleep", 5]
    start = time.monotonic()
    out = list(pool.map(items))
    assert time.monotonic() - start < 20
    assert [float(r[0]) for r in out[::2]] == [1, 2, 3, 4, 5]
    assert "more memory than the decode budget" in out[1].reason
    assert "longer than 1.5 s" in out[3].reason and "longer than 1.5 s" in out[7].reason
    assert "SIGSEGV" in out[5].reason
    assert pool.replaced == 3  # two timeouts and a crash; the MemoryError left its worker alive


def test_real_decode_over_the_cap_is_an_error_row(tmp_path):
    write_image(tmp_path / "a.png", seed=1)
    (tmp_path / "big.png").write_bytes(hostile.png(6000, 6000))  # 36 MP of zeros: legal, but 250 MB to decode
    write_image(tmp_path / "b.jpg", seed=2)
    paths = [str(tmp_path / n) for n in ("a.png", "big.png", "b.jpg")]
    out = list(DecodePool(ImageReader(), workers=1, budget=DecodeBudget(memory_mb=96)).map(paths))
    assert out[0].shape == (32, 40, 3) and out[2].shape == (32, 40, 3)
    assert isinstance(out[1], DecodeFailure) and "memory" in out[1].reason
    assert list(DecodePool(ImageReader(), workers=1, budget=DecodeBudget(memory_mb=1024)).map(paths[1:2]))[0].shape \
        == (6000, 6000, 3)


def test_wire_format_refuses_malformed_results():
    value = {"image": np.arange(6, dtype=np.float32).reshape(2, 3), "label": 1, "error": "x"}
    back = from_wire(to_wire(value))
    assert np.array_equal(back["image"], value["image"]) and back["label"] == 1 and back["error"] == "x"
    frame = to_wire(np.zeros(4, np.uint8))
    with pytest.raises(ValueError):
        from_wire(frame[:-1])
    evil = frame.replace(b'"uint8"', b'"object"')
    with pytest.raises(ValueError):
        from_wire(evil)


def test_predict_over_hostile_folder_one_row_each_in_order_bounded_memory(hostile_dir, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    folder = tmp_path / "mixed"
    folder.mkdir()
    names = []
    for i, name in enumerate(sorted(hostile.HOSTILE)):
        write_image(folder / f"{i:02d}a_good.png", seed=i)
        (folder / f"{i:02d}b_{name}").write_bytes((hostile_dir / name).read_bytes())
        names += [f"{i:02d}a_good.png", f"{i:02d}b_{name}"]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder / n}\n" for n in names))
    out = tmp_path / "pred.csv"
    args = ["predict", str(listing), "--weights", str(ckpt), "--out", str(out), "--workers", "2", "--batch-size", "4", "--runtime", "torch",
            "--no-progress"]
    run = _PEAK + f"from deepfake_moe.cli import main\ncode = main({args!r})\nprint(code, peak_mb())"
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=300)
    code, peak_mb = map(int, proc.stdout.split()[-2:])
    assert code == 1, proc.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == names
    for r in rows:
        good = r["path"].endswith("_good.png")
        assert (r["error"] == "") == good and (r["probability"] != "") == good, r
    for r in rows[1::2]:
        assert EXPECTED[Path(r["path"]).name[4:]] in r["error"]
    # The predict process (torch and the model) and its workers; the ICNS file alone once took 8 GB.
    assert peak_mb < 1500


def test_training_loader_turns_a_stopped_decode_into_an_error_record(tmp_path):
    from deepfake_moe.data.dataset import ManifestDataset, PooledLoader, collate_skipping_errors, eval_batches
    from deepfake_moe.data.transforms import PreprocessConfig

    paths = [write_image(tmp_path / "a.png", seed=1), tmp_path / "big.png", write_image(tmp_path / "b.png", seed=2),
             tmp_path / "icns.png"]
    (tmp_path / "big.png").write_bytes(hostile.png(6000, 6000))
    (tmp_path / "icns.png").write_bytes(_bytes("icns_as.png"))
    dataset = ManifestDataset([str(p) for p in paths], [0, 1, 0, 1], PreprocessConfig(input_size=16, mode="fast"))
    loader = PooledLoader(dataset, eval_batches(4, 2), collate_skipping_errors, workers=2,
                          budget=DecodeBudget(memory_mb=192))
    batches = list(loader)
    assert [b["indices"].tolist() for b in batches] == [[0], [2]]
    assert batches[0]["images"].shape == (1, 3, 16, 16)
    assert "memory" in batches[0]["errors"][0] and "unsupported format ICNS" in batches[1]["errors"][0]
