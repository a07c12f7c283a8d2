"""Face boxes and landmarks on real LFW faces, with dlib and with the OpenCV fallback."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from deepfake_moe.augment import faces
from deepfake_moe.data.image_io import read_image

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw150.tar"
needs_dlib = pytest.mark.skipif(not faces.has_landmarks(), reason='dlib not installed: pip install "deepfake-moe[faces]"')


@pytest.fixture(scope="module")
def lfw_faces(tmp_path_factory) -> list[np.ndarray]:
    if not LFW.is_file():
        pytest.skip(f"{LFW} not present")
    out = tmp_path_factory.mktemp("lfw")
    with tarfile.open(LFW) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        picked = members[:: len(members) // 10][:10]
        tar.extractall(out, members=picked, filter="data")
    return [read_image(str(p)) for p in sorted(out.rglob("*.jpg"))]


def _check_boxes(boxes, shape):
    h, w = shape[:2]
    areas = [bw * bh for _, _, bw, bh in boxes]
    assert areas == sorted(areas, reverse=True)
    for x, y, bw, bh in boxes:
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw > 0 and bh > 0


def test_detect_faces_finds_most_lfw_faces(lfw_faces):
    found = 0
    for rgb in lfw_faces:
        boxes = faces.detect_faces(rgb)
        _check_boxes(boxes, rgb.shape)
        if boxes:
            found += 1
            x, y, bw, bh = boxes[0]
            # LFW crops are centred on the face: the largest box covers the middle of the image.
            assert x < rgb.shape[1] / 2 < x + bw and y < rgb.shape[0] / 2 < y + bh
    assert found >= 0.8 * len(lfw_faces)


def test_no_face_in_flat_or_noise_images():
    assert faces.detect_faces(np.full((120, 160, 3), 128, np.uint8)) == []
    with pytest.raises(faces.FaceError if faces.has_landmarks() else ImportError):
        faces.require_landmarks(np.full((120, 160, 3), 128, np.uint8))


@needs_dlib
def test_landmarks68_lie_on_the_face(lfw_faces):
    checked = 0
    for rgb in lfw_faces:
        boxes = faces.detect_faces(rgb)
        if not boxes:
            continue
        pts = faces.landmarks68(rgb, boxes[0])
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        x, y, bw, bh = boxes[0]
        # eyes (36-47) above the mouth (48-67), nose tip (30) between them, all near the box
        assert pts[36:48, 1].mean() < pts[30, 1] < pts[48:68, 1].mean()
        assert (pts[:, 0] > x - bw * 0.3).all() and (pts[:, 0] < x + bw * 1.3).all()
        # left eye (36-41) is left of the right eye (42-47) in the image
        assert pts[36:42, 0].mean() < pts[42:48, 0].mean()
        checked += 1
    assert checked >= 5


def test_opencv_fallback_without_dlib(lfw_faces, monkeypatch):
    monkeypatch.setattr(faces, "_dlib_models", lambda: None)
    assert not faces.has_landmarks()
    found = 0
    for rgb in lfw_faces:
        boxes = faces.detect_faces(rgb)
        _check_boxes(boxes, rgb.shape)
        found += bool(boxes)
        if boxes:
            assert faces.landmarks68(rgb, boxes[0]) is None
    assert found >= 0.7 * len(lfw_faces)
    with pytest.raises(ImportError, match=r"deepfake-moe\[faces\]"):
        faces.require_landmarks(lfw_faces[0])
