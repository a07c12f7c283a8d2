"""Face mode and videos: crops framed like the training faces, videos written with cv2.VideoWriter."""

from __future__ import annotations

import csv
import io
import itertools
import tarfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfake_moe.augment import faces
from deepfake_moe.cli import main
from deepfake_moe.data import video_io
from deepfake_moe.data.image_io import read_image
from helpers import tiny_checkpoint, write_image

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw150.tar"


def _astronaut_face() -> np.ndarray:
    """scikit-image's astronaut (a real photo that ships in the package), cut to her face like an LFW crop."""
    skimage_data = pytest.importorskip("skimage.data")
    rgb = skimage_data.astronaut()
    return np.ascontiguousarray(faces.crop_face(rgb, faces.find_faces(rgb)[0]))


@pytest.fixture(scope="module")
def face_photos(tmp_path_factory) -> list[np.ndarray]:
    """Real face photos framed like the training crops: LFW when shipped, else the astronaut's face."""
    if not LFW.is_file():
        return [_astronaut_face()]
    out = tmp_path_factory.mktemp("lfw")
    with tarfile.open(LFW) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")][::700][:8]
        tar.extractall(out, members=members, filter="data")
    return [read_image(str(p)) for p in sorted(out.rglob("*.jpg"))]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), threshold=0.5)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "mp4v") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix} with {fourcc}"
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    return path


def on_canvas(face: np.ndarray, size=(320, 240), at=(80, 40), grey=90) -> np.ndarray:
    canvas = np.full((size[1], size[0], 3), grey, np.uint8)
    face = cv2.resize(face, (150, 150))
    canvas[at[1] : at[1] + 150, at[0] : at[0] + 150] = face
    return canvas


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------- video reading


def test_sample_indices_are_uniform_and_inside_the_video():
    info = video_io.VideoInfo(frame_count=100, fps=25.0, width=64, height=48)
    assert video_io.sample_indices(info, frames=4) == [12, 37, 62, 87]
    assert video_io.sample_indices(info, frames=500) == list(range(100))
    assert video_io.sample_indices(info, every_seconds=1.0) == [0, 25, 50, 75]
    assert len(video_io.sample_indices(info)) == video_io.DEFAULT_FRAMES
    with pytest.raises(ValueError):
        video_io.sample_indices(info, frames=4, every_seconds=1.0)


@pytest.mark.parametrize(("suffix", "fourcc"), [(".mp4", "mp4v"), (".avi", "MJPG"), (".mkv", "MJPG")])
def test_frames_stream_in_order_with_their_times(tmp_path, suffix, fourcc):
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(20)]
    path = write_video(tmp_path / f"v{suffix}", frames, fps=10, fourcc=fourcc)
    info = video_io.probe(path)
    assert (info.frame_count, info.width, info.height) == (20, 64, 48) and info.fps == pytest.approx(10)
    got = list(video_io.iter_frames(path, [2, 9, 15]))
    assert [f.index for f in got] == [2, 9, 15] and [f.time for f in got] == pytest.approx([0.2, 0.9, 1.5])
    # each frame is the one written there (grey level 10 * index, up to the codec's loss)
    assert [abs(float(f.rgb.mean()) - 10 * f.index) < 6 for f in got] == [True] * 3


def test_broken_videos_raise_a_reason(tmp_path):
    good = write_video(tmp_path / "good.mp4", [np.zeros((48, 64, 3), np.uint8)] * 10)
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "noise.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "empty.webm").write_bytes(b"")
    expected = {"truncated.mp4": "not a video", "noise.avi": "not a video", "empty.webm": "empty",
                "missing.mkv": "not found"}
    for name, reason in expected.items():
        with pytest.raises(video_io.VideoReadError, match=reason):
            list(video_io.sampled_frames(tmp_path / name)[2])
    with pytest.raises(video_io.VideoReadError, match="above the limit"):
        video_io.probe(good, max_pixels=1000)


def test_prefetch_runs_ahead_keeps_order_raises_the_producers_error_and_stops_when_abandoned():
    from deepfake_moe.data.decode_pool import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise video_io.VideoReadError("v.mp4", "corrupt frame")

    with pytest.raises(video_io.VideoReadError, match="corrupt frame"):
        list(prefetch(failing(), depth=2))
    produced, ahead, closed = [], threading.Event(), threading.Event()

    def endless():
        try:
            while True:
                produced.append(1)
                if len(produced) == 3:
                    ahead.set()
                yield len(produced)
        finally:
            closed.set()

    stream = prefetch(endless(), depth=2)
    assert next(stream) == 1
    assert ahead.wait(10)  # items 2 and 3 were made while the consumer held item 1 (predict: the next batches)
    stream.close()  # the consumer gives up: the producer thread must end, not fill memory
    assert closed.wait(10)  # and it closes what it read (a decoding pool ends its workers)
    assert len(produced) <= 5


# ---------------------------------------------------------------- predict on videos


def test_predict_video_one_row_with_probability_and_error_rows(tmp_path, ckpt, capsys, face_photos):
    repeat = max(3, 12 // len(face_photos))  # at least 12 frames, with the astronaut alone too
    clip = write_video(tmp_path / "clip.mp4", [on_canvas(f) for f in face_photos for _ in range(repeat)])
    (tmp_path / "broken.mp4").write_bytes(clip.read_bytes()[:1000])
    write_image(tmp_path / "still.png", seed=1)
    frames_out = tmp_path / "frames.csv"
    code = main(["predict", str(tmp_path), "--weights", str(ckpt), "--faces", "--frames", "4",
                 "--frames-out", str(frames_out), "--faces-out", str(tmp_path / "faces.csv"), "--top-k", "2"])
    rows = {Path(r["path"]).name: r for r in _rows(capsys.readouterr().out)}
    assert code == 1 and set(rows) == {"clip.mp4", "broken.mp4", "still.png"}
    assert rows["broken.mp4"]["probability"] == "" and "not a video" in rows["broken.mp4"]["error"]
    assert rows["still.png"]["error"] == "" and rows["still.png"]["faces"] == "0"
    clip_row = rows["clip.mp4"]
    assert clip_row["error"] == "" and int(clip_row["faces"]) >= 3  # a face in (nearly) every sampled frame
    frame_rows = [r for r in csv.DictReader(open(frames_out)) if r["path"].endswith("clip.mp4")]
    assert len(frame_rows) == 4
    top2 = sorted((float(r["probability"]) for r in frame_rows), reverse=True)[:2]
    assert float(clip_row["probability"]) == pytest.approx(np.mean(top2), abs=2e-6)
    face_rows = list(csv.DictReader(open(tmp_path / "faces.csv")))
    assert len(face_rows) == int(clip_row["faces"]) and all(r["frame"] != "" for r in face_rows)


def test_video_probability_matches_its_frames_scored_as_images(tmp_path, ckpt, capsys):
    """Whole-frame mode: a video of N distinct frames scores like those frames as PNGs (top-k = all)."""
    frames = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(3)]
    write_video(tmp_path / "v.avi", [f for f in frames for _ in range(2)], fourcc="MJPG")
    decoded = [f.rgb for f in video_io.iter_frames(tmp_path / "v.avi", [0, 2, 4])]
    for i, rgb in enumerate(decoded):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), rgb[:, :, ::-1])
    args = ["--weights", str(ckpt), "--runtime", "torch", "--no-faces"]
    assert main(["predict", str(tmp_path / "v.avi"), "--every-seconds", "0.2", "--top-k", "0", *args]) == 0
    video_p = float(_rows(capsys.readouterr().out)[0]["probability"])
    assert main(["predict", *[str(tmp_path / f"f{i}.png") for i in range(3)], *args]) == 0
    image_p = [float(r["probability"]) for r in _rows(capsys.readouterr().out)]
    assert video_p == pytest.approx(np.mean(image_p), abs=1e-5)


def test_a_video_that_decodes_too_long_gets_an_error_row_and_the_rest_go_on(tmp_path, ckpt, capsys, monkeypatch):
    """--video-timeout: a video whose decoder hangs (stood in for by a frame stream that blocks) is stopped."""
    import threading

    from deepfake_moe.infer import video

    frames = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(4)]
    write_video(tmp_path / "a_hangs.avi", frames, fourcc="MJPG")
    write_video(tmp_path / "b_fine.avi", frames, fourcc="MJPG")
    write_image(tmp_path / "c_still.png", seed=1)
    release = threading.Event()
    real = video.sampled_frames

    def hanging(path, *args):
        info, indices, stream = real(path, *args)
        if "hangs" not in str(path):
            return info, indices, stream

        def stuck():
            yield next(stream)
            release.wait(60)  # the decoder never returns (until the test ends)
            yield from stream
        return info, indices, stuck()

    monkeypatch.setattr(video, "sampled_frames", hanging)
    try:
        code = main(["predict", str(tmp_path), "--weights", str(ckpt), "--no-faces", "--runtime", "torch",
                     "--video-timeout", "1", "--frames", "3"])
    finally:
        release.set()
    rows = {Path(r["path"]).name: r for r in _rows(capsys.readouterr().out)}
    assert code == 1 and set(rows) == {"a_hangs.avi", "b_fine.avi", "c_still.png"}
    assert rows["a_hangs.avi"]["probability"] == ""
    assert "decoding took longer than 1 s" in rows["a_hangs.avi"]["error"]
    assert "--video-timeout" in rows["a_hangs.avi"]["error"]
    assert rows["b_fine.avi"]["error"] == "" and rows["c_still.png"]["error"] == ""
    assert main(["predict", str(tmp_path), "--weights", str(ckpt), "--video-timeout", "0"]) == 2
    assert "--video-timeout must be > 0" in capsys.readouterr().err


def test_prefetch_times_out_on_a_stuck_producer_and_leaves_it_behind():
    import threading

    from deepfake_moe.data.decode_pool import prefetch

    release = threading.Event()

    def stuck():
        yield 1
        release.wait(60)
        yield 2

    stream = prefetch(stuck(), depth=2, timeout_s=0.5)
    assert next(stream) == 1
    with pytest.raises(TimeoutError):
        next(stream)
    release.set()
    assert list(prefetch(iter(range(5)), depth=2, timeout_s=30)) == list(range(5))


# ---------------------------------------------------------------- face mode


def test_face_crop_is_framed_like_the_training_crops(face_photos):
    """On an LFW-framed face pasted at another scale, the crop predict scores is the LFW frame again."""
    face = face_photos[0]
    big = np.full((600, 800, 3), 120, np.uint8)
    big[100:400, 300:600] = cv2.resize(face, (300, 300))
    found = faces.find_faces(big)
    assert found, "no face found in a pasted LFW face"
    x, y, side, _ = faces.crop_box(found[0], big.shape)
    inter = max(0, min(x + side, 600) - max(x, 300)) * max(0, min(y + side, 400) - max(y, 100))
    assert inter / (side * side + 300 * 300 - inter) > 0.75  # IoU with the pasted training-style frame


def test_image_without_a_face_is_scored_whole(tmp_path, ckpt, capsys):
    write_image(tmp_path / "flat.png", size=(200, 150), seed=3)
    args = [str(tmp_path / "flat.png"), "--weights", str(ckpt), "--runtime", "torch"]
    assert main(["predict", *args, "--faces", "--faces-out", str(tmp_path / "faces.csv")]) == 0
    with_faces = _rows(capsys.readouterr().out)[0]
    assert main(["predict", *args]) == 0
    whole = _rows(capsys.readouterr().out)[0]
    assert with_faces["faces"] == "0" and "faces" not in whole
    assert with_faces["probability"] == whole["probability"]
    assert (tmp_path / "faces.csv").read_text().splitlines() == [",".join(
        ["path", "frame", "time", "face", "x", "y", "width", "height", "detector_score", "probability",
         "crop_x", "crop_y", "crop_size"])]


def test_small_face_crops_and_video_frames_are_warned_about(tmp_path, capsys, face_photos):
    """Face mode warns about the scored crop's size, not the photo's; videos about their frames' size."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt256", size=256)
    photo = on_canvas(face_photos[0], size=(640, 480), at=(240, 160))
    cv2.imwrite(str(tmp_path / "photo.png"), photo[:, :, ::-1])
    faces_csv = tmp_path / "faces.csv"
    args = [str(tmp_path / "photo.png"), "--weights", str(ckpt), "--runtime", "torch"]
    assert main(["predict", *args, "--faces", "--faces-out", str(faces_csv)]) == 0
    err = capsys.readouterr().err
    found = list(csv.DictReader(open(faces_csv)))
    assert found, "the pasted face was not found"
    side = int(max(found, key=lambda r: float(r["probability"]))["crop_size"])
    assert side < 256 and f"photo.png: {side} px" in err and "1 of 1 input(s) are smaller" in err
    assert main(["predict", *args, "--no-faces"]) == 0  # the whole 640x480 photo is larger than 256 px
    assert "smaller than the model's input" not in capsys.readouterr().err
    frames = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(4)]
    write_video(tmp_path / "v.avi", frames, fourcc="MJPG")
    assert main(["predict", str(tmp_path / "v.avi"), "--weights", str(ckpt), "--no-faces", "--frames", "2"]) == 0
    assert "v.avi: 40 px" in capsys.readouterr().err


def test_face_detection_from_many_threads_finds_what_it_finds_alone(face_photos):
    """The web server detects faces in its decoding threads: the shared detector must not be run by two at once
    (dlib's corrupted its heap, or returned garbage boxes)."""
    from concurrent.futures import ThreadPoolExecutor

    images = [on_canvas(face_photos[0], size=(400, 300)), np.full((90, 120, 3), 100, np.uint8)] * 4
    alone = [faces.find_faces(rgb) for rgb in images]
    assert alone[0] and not alone[1]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(faces.find_faces, images)) == alone


def test_scored_side_is_the_most_fake_face_crop_or_the_whole_image():
    from deepfake_moe.infer.faces import FaceScore, scored_side

    faces_ = (FaceScore((0, 0, 50, 50), 1.0, 0.2, (0, 0, 70, 70)), FaceScore((90, 0, 20, 20), 0.5, 0.9, (85, 0, 30, 30)))
    assert scored_side(faces_, (300, 400, 3)) == 30
    assert scored_side((), (300, 400, 3)) == 300


def test_model_trained_on_face_crops_turns_face_mode_on(tmp_path, capsys, face_photos):
    from deepfake_moe.model.checkpoint import CONFIG_FILE, load_config

    folder = tiny_checkpoint(tmp_path / "ckpt")
    text = (folder / CONFIG_FILE).read_text().replace("face_crops: false", "face_crops: true")
    (folder / CONFIG_FILE).write_text(text)
    assert load_config(folder).face_crops
    cv2.imwrite(str(tmp_path / "photo.png"), on_canvas(face_photos[0], size=(600, 400))[:, :, ::-1])
    assert main(["predict", str(tmp_path / "photo.png"), "--weights", str(folder)]) == 0
    assert _rows(capsys.readouterr().out)[0]["faces"] == "1"
    assert main(["predict", str(tmp_path / "photo.png"), "--weights", str(folder), "--no-faces"]) == 0
    assert "faces" not in _rows(capsys.readouterr().out)[0]


def test_explain_faces_matches_predict_and_draws_a_png(tmp_path, ckpt, capsys, face_photos):
    cv2.imwrite(str(tmp_path / "photo.png"), on_canvas(face_photos[0], size=(600, 400))[:, :, ::-1])
    common = [str(tmp_path / "photo.png"), "--weights", str(ckpt), "--faces"]
    assert main(["predict", *common, "--runtime", "torch"]) == 0
    predicted = float(_rows(capsys.readouterr().out)[0]["probability"])
    assert main(["explain", *common, "--out", str(tmp_path / "ex")]) == 0
    line = capsys.readouterr().out.strip()
    assert float(line.split("P(fake)=")[1].split()[0]) == pytest.approx(predicted, abs=1e-3)
    assert (tmp_path / "ex" / "00000_photo.png").stat().st_size > 1000


@pytest.mark.slow
def test_face_mode_finds_a_manipulated_face_in_a_large_photo(face_photos):
    """The shipped default model, a 2000 px photo and one face edited by a corpus fake family (masked_fill):
    scoring the face's crop gives a higher fake probability than scoring the diluted whole photo."""
    from deepfake_moe.augment.registry import AugmentContext, get_family
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(None)
    whole = Predictor(model, config, num_workers=0, faces=False)
    face_mode = Predictor(model, config, num_workers=0, faces=True)
    skimage_data = pytest.importorskip("skimage.data")
    coffee = skimage_data.coffee()  # 400 x 600: mirrored out to 2000 x 1333, never resampled (an enlarged
    background = np.pad(coffee, ((0, 1333 - 400), (0, 2000 - 600), (0, 0)), mode="symmetric")  # photo looks generated)
    compared = []
    for k, real in enumerate(face_photos):
        fake = get_family("masked_fill").fn(real, np.random.default_rng(k), AugmentContext()).image  # native size
        h, w = fake.shape[:2]
        photo = background.copy()
        photo[500 : 500 + h, 900 : 900 + w] = fake
        scored = face_mode.predict_image(photo)
        if not scored.faces:  # the fill may cover the face beyond recognition: nothing to compare
            continue
        x, y, w, h = scored.faces[0].box
        assert 900 <= x + w / 2 <= 900 + fake.shape[1] and 500 <= y + h / 2 <= 500 + fake.shape[0]  # the pasted face
        compared.append((whole.predict_image(photo).probability, scored.probability))
        if len(compared) == 3:
            break
    assert compared, "no edited face was detected"
    for whole_p, face_p in compared:
        assert face_p > whole_p


# ---------------------------------------------------------------- training data on face crops


def test_manifest_and_prepare_crop_faces_like_predict(tmp_path, face_photos):
    """`manifest --faces` and `prepare` with `faces: true` train on the crops `predict --faces` scores."""
    import pandas as pd

    from deepfake_moe.data.manifest import read_manifest

    reals = tmp_path / "photos" / "real"
    reals.mkdir(parents=True)
    photos = (face_photos * 4)[:4]  # four photos, with LFW or with the astronaut alone
    for i, face in enumerate(photos):
        cv2.imwrite(str(reals / f"p{i}.png"), on_canvas(face, size=(500 + 40 * i, 400), at=(100 + 30 * i, 80))[:, :, ::-1])
    write_image(reals / "noface.png", size=(300, 200), seed=4)
    out = tmp_path / "crops.parquet"
    code = main(["manifest", str(tmp_path / "photos"), "-o", str(out), "--faces", str(tmp_path / "crops")])
    table = read_manifest(out)
    assert code == 1 and len(table) == len(photos) == 4  # the image without a face is dropped and listed
    assert "noface" in (tmp_path / "crops" / "no_face.csv").read_text()
    photo = read_image(str(reals / "p1.png"))
    expected = faces.crop_face(photo, faces.find_faces(photo)[0])
    crop = read_image(table["path"][table["path"].str.contains("p1-")].iloc[0])
    assert crop.shape == expected.shape and np.array_equal(crop, expected)  # lossless, the same square

    cfg = tmp_path / "prepare.yaml"
    manifest_in = tmp_path / "in.csv"
    pd.DataFrame({"path": [str(p) for p in sorted(reals.glob("*.png"))], "label": 0}).to_csv(manifest_in, index=False)
    cfg.write_text(f"input: {manifest_in}\nout_dir: {tmp_path / 'prep'}\nfamilies: [{{name: real_jpeg}}]\nworkers: 0\n")
    assert main(["prepare", str(cfg), "--faces", "--no-progress"]) == 0
    made = read_manifest(tmp_path / "prep" / "manifest.parquet")
    assert len(made) == 8 and set(made["label"]) == {0}  # 4 face crops + 4 variants; no face, no row
    sides = {read_image(p).shape[:2] for p in made["path"]}
    assert all(h == w and h < 400 for h, w in sides)  # every image is a square face crop


def test_evaluate_scores_videos_and_faces_like_predict(tmp_path, ckpt, capsys, face_photos):
    import pandas as pd

    clip = write_video(tmp_path / "clip.mp4", [on_canvas(f) for f in face_photos[:2] for _ in range(4)])
    cv2.imwrite(str(tmp_path / "real.png"), on_canvas(face_photos[-1], size=(500, 400))[:, :, ::-1])
    pd.DataFrame({"path": [str(clip), str(tmp_path / "real.png")], "label": [1, 0]}).to_csv(tmp_path / "m.csv", index=False)
    common = ["--weights", str(ckpt), "--faces", "--frames", "4"]
    assert main(["evaluate", str(tmp_path / "m.csv"), "--out", str(tmp_path / "ev"), "--bootstrap", "0",
                 "--no-progress", *common]) == 0
    evaluated = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    capsys.readouterr()
    assert main(["predict", str(clip), str(tmp_path / "real.png"), "--runtime", "torch", *common]) == 0
    predicted = [float(r["probability"]) for r in _rows(capsys.readouterr().out)]
    assert evaluated["probability"].tolist() == pytest.approx(predicted, abs=1e-5)


def test_calibrate_scores_face_crops_as_predict_faces_does(tmp_path, capsys, face_photos):
    """A face-crop model is calibrated on what predict will score: each photo's most fake face crop."""
    import json

    import pandas as pd

    from deepfake_moe.evaluate.threshold import choose_threshold
    from deepfake_moe.model.checkpoint import CONFIG_FILE, load_config

    paths = []
    for i in range(6):
        photo = on_canvas(face_photos[i % len(face_photos)], size=(400, 300), at=(40 + 30 * i, 20 + 15 * i),
                          grey=50 + 25 * i)
        paths.append(str(tmp_path / f"p{i}.png"))
        cv2.imwrite(paths[-1], photo[:, :, ::-1])
    labels = [0, 1, 0, 1, 1, 0]
    pd.DataFrame({"path": paths, "label": labels}).to_csv(tmp_path / "val.csv", index=False)

    def scores(*flags):
        assert main(["predict", *paths, "--weights", str(ckpt), "--runtime", "torch", *flags]) == 0
        return [float(r["probability"]) for r in _rows(capsys.readouterr().out)]

    ckpt = tiny_checkpoint(tmp_path / "ckpt", seed=3)
    on_faces, whole = scores("--faces"), scores("--no-faces")
    fitted = {}
    for name, flags, model_faces in [("flag", ["--faces"], False), ("model", [], True), ("off", [], False)]:
        text = (ckpt / CONFIG_FILE).read_text()
        (ckpt / CONFIG_FILE).write_text(text.replace(f"face_crops: {str(not model_faces).lower()}",
                                                     f"face_crops: {str(model_faces).lower()}"))
        assert main(["calibrate", str(tmp_path / "val.csv"), "--weights", str(ckpt), "--max-f1", "--no-progress",
                     "--out", str(tmp_path / name), *flags]) == 0
        fitted[name] = (load_config(ckpt).threshold,
                        json.loads((tmp_path / name / "calibration.json").read_text())["face_crops"])
    want_faces = choose_threshold(labels, on_faces, "max-f1").threshold
    want_whole = choose_threshold(labels, whole, "max-f1").threshold
    assert want_faces != want_whole  # the test can tell the two apart
    assert fitted["flag"] == pytest.approx((want_faces, True), abs=1e-6)
    assert fitted["model"] == pytest.approx((want_faces, True), abs=1e-6)  # face_crops: true turns it on
    assert fitted["off"] == pytest.approx((want_whole, False), abs=1e-6)


def test_corpus_faces_cuts_every_real_to_its_face(tmp_path):
    if not LFW.is_file():
        pytest.skip(f"{LFW} not present")
    import pandas as pd

    from deepfake_moe.augment.corpus import build, sources

    small = tmp_path / "small.tar"
    with tarfile.open(LFW) as src, tarfile.open(small, "w") as dst:
        for m in [m for m in src.getmembers() if m.isfile() and m.name.endswith(".jpg")][:4]:
            dst.addfile(m, src.extractfile(m))
    flat = tmp_path / "flat.png"
    write_image(flat, size=(300, 300), seed=2)  # a "photo" with no face: it drops out
    photos = (sources.PhotoSource("noise", "a test image", "CC0", lambda roots: [flat]),)
    out = tmp_path / "corpus"
    build.build_corpus(out, crop_size=150, families=["real_jpeg"], workers=0, lfw=str(small), photo_sources=photos,
                       progress=False, log=lambda m: None, faces=True)
    m = pd.read_parquet(out / "manifest.parquet")
    reals = m[m["source"] == "real"]
    assert len(reals) >= 3 and set(reals["dataset"]) == {"lfw"}
    assert all(p.startswith("reals/faces/") for p in reals["path"])
    assert (m["source"] == "real_jpeg").sum() == len(reals)
    for p in m["path"]:
        h, w = read_image(str(out / p)).shape[:2]
        assert h == w <= 150  # the face's square: about the whole LFW crop, whose framing it copies


def test_a_malformed_decoder_result_is_an_error_row_and_the_others_are_scored(tmp_path, ckpt, monkeypatch):
    """What a decoding process sends back is checked once (`decode_crops`) for predict, calibrate and serve."""
    from deepfake_moe.infer import faces as face_mode
    from deepfake_moe.infer.predictor import image_batches
    from deepfake_moe.model.checkpoint import load_config

    config = load_config(ckpt)
    views = config.views()[0]
    good = face_mode.prepare_crops(np.zeros((40, 50, 3), np.uint8), views, faces=False)
    assert face_mode.decode_crops(good, views)[2] == (40, 50, 3)
    bad = {**good, "view_0": good["view_0"][:, :, :5]}  # a wrongly sized model input
    with pytest.raises(ValueError, match="model input of shape"):
        face_mode.decode_crops(bad, views)
    with pytest.raises(ValueError, match="incomplete"):
        face_mode.decode_crops({k: v for k, v in good.items() if k != "shape"}, views)
    with pytest.raises(ValueError, match="do not fit"):
        face_mode.decode_crops({**good, "detectors": "yunet"}, views)  # a face without its box
    for bad_part in ({"shape": np.array([np.inf, 1, 3])}, {"shape": np.array([40, 50])}, {"shape": "40,50,3"},
                     {"boxes": np.full((1, 4), np.inf), "scores": np.ones(1), "detectors": "yunet"}):
        with pytest.raises(ValueError):  # never anything that would end the run
            face_mode.decode_crops({**good, **bad_part}, views)

    paths = [str(write_image(tmp_path / f"{i}.png", size=(32, 32))) for i in range(3)]
    calls, real_prepare = itertools.count(), face_mode.prepare_crops
    monkeypatch.setattr(face_mode, "prepare_crops", lambda *a, **k: bad if next(calls) == 1 else real_prepare(*a, **k))
    ((ok, batch, counts, _, failed),) = image_batches(paths, views, "pil", face_mode.ImageLimits(), False, 1, 8, 0)
    assert ok == [0, 2] and counts == [1, 1] and len(batch[0]) == 2
    assert [i for i, _ in failed] == [1] and "malformed result" in failed[0][1]
