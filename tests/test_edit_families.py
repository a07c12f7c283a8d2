"""Edit fake families change the image where their mask says (and only there); benign ones keep label 0."""

import json

import cv2
import numpy as np
import pytest

from deepfake_moe.augment import masks
from deepfake_moe.augment.registry import AugmentContext, get_family, list_families

EDITS = ["self_blend", "splice", "copy_move", "inpaint", "retouch", "masked_fill"]
BENIGN = ["real_reencode", "real_jpeg", "real_resize", "real_blur", "real_noise", "real_color"]
SEEDS = [0, 1, 2]


def textured(h=64, w=72, seed=0):
    """A smooth colour gradient with texture: every edit leaves a visible difference."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (h + w) * 120 + 60], -1)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(base + noise + 20, 0, 255).astype(np.uint8)


def donor_source(colour=(250, 10, 10)):
    def donor(rng):
        img = np.empty((50, 40, 3), np.uint8)
        img[:] = colour
        return "donor-1", img

    return donor


def run(name, seed, **options):
    img = textured()
    ctx = AugmentContext(donor=donor_source(), options=options)
    return img, get_family(name).fn(img.copy(), np.random.default_rng(seed), ctx)


def test_registry_lists_every_family_with_its_label_and_kind():
    families = {f.name: f for f in list_families()}
    for name in EDITS:
        assert families[name].label == 1 and families[name].kind == "edit"
    for name in BENIGN:
        assert families[name].label == 0 and families[name].kind == "benign"
    assert all(families[n].description for n in EDITS + BENIGN)


@pytest.mark.parametrize("name", EDITS)
def test_edit_changes_image_inside_its_mask_only(name):
    for seed in SEEDS:
        img, res = run(name, seed)
        assert res.image.shape == img.shape and res.image.dtype == np.uint8
        mask = res.mask
        assert mask.dtype == bool and mask.shape == img.shape[:2]
        assert 0.005 < mask.mean() < 0.8, f"{name} seed {seed}: mask covers {mask.mean():.3f}"
        diff = np.abs(res.image.astype(int) - img.astype(int)).max(2)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert diff[~near].max(initial=0) == 0, f"{name} changed pixels away from its mask"
        changed = (diff[mask] > 2).mean()
        assert changed > 0.2, f"{name} seed {seed}: only {changed:.2f} of the masked pixels changed"


@pytest.mark.parametrize("name", EDITS + BENIGN)
def test_family_is_deterministic_for_a_seed_and_records_params(name):
    _, a = run(name, 7)
    _, b = run(name, 7)
    assert np.array_equal(a.image, b.image)
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)  # plain JSON types
    if name != "real_reencode":
        outputs = {run(name, s)[1].image.tobytes() for s in range(4)}
        assert len(outputs) > 1, f"{name} ignores its rng"
        assert a.params


@pytest.mark.parametrize("name", BENIGN)
def test_benign_variants_keep_the_whole_image_real(name):
    img, res = run(name, 3)
    assert get_family(name).label == 0
    assert res.mask is None and res.image.shape == img.shape and res.image.dtype == np.uint8
    diff = np.abs(res.image.astype(int) - img.astype(int))
    if name == "real_reencode":
        assert diff.max() == 0  # the output encoder is its whole effect
    else:
        assert diff.mean() > 0.3
        # global processing: not a local edit, the change is spread over the image
        assert (diff.max(2) > 0).mean() > 0.5


def test_splice_takes_its_region_from_the_donor():
    img, res = run("splice", 0, blend="alpha", feather=0.0)
    assert res.params["donor"] == "donor-1" and res.params["blend"] == "alpha"
    inside = res.image[res.mask].astype(float)
    assert np.abs(inside - [250, 10, 10]).max() <= 1  # donor colour, hard edge
    assert np.array_equal(res.image[~res.mask], img[~res.mask])


def test_splice_poisson_blends_donor_gradients():
    img, res = run("splice", 1, blend="poisson")
    assert res.params["blend"] == "poisson"
    assert np.array_equal(res.image[~res.mask], img[~res.mask])
    assert np.abs(res.image[res.mask].astype(int) - img[res.mask]).mean() > 1


def test_splice_without_a_donor_is_a_clear_error():
    with pytest.raises(ValueError, match="donor"):
        get_family("splice").fn(textured(), np.random.default_rng(0), AugmentContext())


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="unknown option"):
        run("self_blend", 0, colour=0.3)
    with pytest.raises(ValueError, match="unknown option"):
        run("real_blur", 0, sigmaa=[1, 2])


def test_inpaint_fills_the_region_from_its_surroundings():
    img, res = run("inpaint", 4, strokes=0.0, area=[0.1, 0.15])
    assert res.params["method"] in ("telea", "ns")
    assert np.array_equal(res.image[~res.mask], img[~res.mask])
    # inpainted content is smoother than the textured original
    def lap(x):
        return np.abs(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_32F))

    inner = cv2.erode(res.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert lap(res.image)[inner].mean() < lap(img)[inner].mean()


def test_face_landmarks_shape_the_mask_when_a_face_is_found(monkeypatch):
    # 68 synthetic landmarks on an oval "face" in the middle of the image
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    points = np.stack([36 + 14 * np.cos(t), 32 + 18 * np.sin(t)], 1).astype(np.float32)
    monkeypatch.setattr(masks, "face_landmarks", lambda rgb: ((20, 12, 32, 40), points))
    img, res = run("self_blend", 5, face_parts=["face"], feather=0.0)
    assert res.params["mask"]["shape"] == "face_hull" and res.params["mask"]["part"] == "face"
    ys, xs = np.nonzero(res.mask)
    assert xs.min() >= 14 and xs.max() <= 58 and ys.min() >= 6 and ys.max() <= 58
    # without a face the random-shape fallback is used
    monkeypatch.setattr(masks, "face_landmarks", lambda rgb: None)
    _, res = run("self_blend", 5)
    assert res.params["mask"]["shape"] in masks.SHAPES


def test_feathered_mask_stays_inside_the_drawn_region():
    hard = np.zeros((48, 48), np.uint8)
    cv2.circle(hard, (24, 24), 14, 255, -1)
    soft, params = masks.feather(hard, np.random.default_rng(0), max_frac=0.3)
    assert params["feather_px"] >= 1
    assert soft[hard == 0].max() == 0 and soft.max() == 1.0
    assert 0 < soft[hard > 0].min() < 1  # a soft edge, not a hard one
