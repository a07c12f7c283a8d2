"""The offline corpus: gathering reals (LFW + package photos), one prepare run per family, the files beside it."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_moe.augment.corpus import build, crops, families, sources
from deepfake_moe.cli import main
from deepfake_moe.data.image_io import read_image
from deepfake_moe.errors import ConfigError

# The library has no default LFW path: the tests take $DEEPFAKE_MOE_LFW, else the shared folder's copy.
LFW = Path(os.environ.get(sources.LFW_ENV) or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw150.tar")


@pytest.fixture(scope="module")
def small_lfw(tmp_path_factory) -> Path:
    """A tar of 6 LFW photos (4 people's worth of names) in the layout of lfw150.tar."""
    if not LFW.is_file():
        pytest.skip(f"{LFW} not present")
    tmp = tmp_path_factory.mktemp("lfw")
    out = tmp / "small.tar"
    with tarfile.open(LFW) as src, tarfile.open(out, "w") as dst:
        members = [m for m in src.getmembers() if m.isfile() and m.name.endswith(".jpg")][:6]
        for m in members:
            dst.addfile(m, src.extractfile(m))
    return out


@pytest.fixture()
def one_photo(tmp_path) -> tuple[sources.PhotoSource, ...]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:200]
    arr = np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8) + rng.integers(0, 20, (150, 200, 3), dtype=np.uint8)
    path = tmp_path / "photos" / "street.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    return (sources.PhotoSource("testphotos", "a test folder", "CC0 (made by the test)", lambda roots: [path]),)


def test_crops_of_cuts_a_centred_grid():
    rgb = np.zeros((100, 330, 3), np.uint8)
    tiles = crops.crops_of(rgb, 50)
    assert [name for name, _ in tiles] == [f"{r}-{c}" for r in range(2) for c in range(6)]
    assert all(c.shape == (50, 50, 3) for _, c in tiles)
    # a large photo is shrunk so its shorter side holds at most MAX_TILES_PER_SIDE crops
    assert len(crops.crops_of(np.zeros((1000, 1000, 3), np.uint8), 50)) == crops.MAX_TILES_PER_SIDE**2
    # flat crops have no detail; photos do
    assert crops.detail(np.full((50, 50, 3), 90, np.uint8)) < crops.MIN_DETAIL
    assert crops.detail(np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8)) > crops.MIN_DETAIL
    # a small one gives one square at native resolution: reals are never enlarged
    small = crops.crops_of(np.zeros((20, 30, 3), np.uint8), 50)
    assert len(small) == 1 and small[0][1].shape == (20, 20, 3)
    assert crops.native_or_shrunk(np.zeros((150, 150, 3), np.uint8), 256).shape == (150, 150, 3)
    assert crops.native_or_shrunk(np.zeros((150, 100, 3), np.uint8), 75).shape == (75, 50, 3)
    with pytest.raises(ValueError, match="enlarge"):
        crops.shrink(np.zeros((20, 30, 3), np.uint8), (60, 40))


def test_build_corpus_then_cached(tmp_path, small_lfw, one_photo):
    out = tmp_path / "corpus"
    logs: list[str] = []
    summary = build.build_corpus(
        out, crop_size=48, families=["real_jpeg", "splice"], variants={"splice": 2}, workers=1, lfw=str(small_lfw),
        photo_sources=one_photo, progress=False, log=logs.append,
    )  # fmt: skip
    m = pd.read_parquet(out / "manifest.parquet")
    reals = m[m["source"] == "real"]
    # 6 LFW faces + a 150x200 photo cut into 48 px crops (3 rows x 4 columns)
    assert (reals["dataset"] == "lfw").sum() == 6 and (reals["dataset"] == "testphotos").sum() == 12
    assert summary["per_source"] == {"real": 18, "real_jpeg": 18, "splice": 36}
    assert set(m.loc[m["source"] == "splice", "label"]) == {1} and set(m.loc[m["source"] == "real_jpeg", "label"]) == {0}
    assert set(reals["label"]) == {0}
    # every derived image points at a real it came from; crops of one photo share its origin
    assert set(m["origin"]) == set(reals["origin"])
    assert reals.loc[reals["dataset"] == "testphotos", "origin"].nunique() == 1
    assert reals.loc[reals["dataset"] == "lfw", "identity"].str.startswith("lfw/").all()
    for rel in m["path"]:
        assert not Path(rel).is_absolute()
    sizes = {read_image(str(out / p)).shape for p in m["path"]}
    assert sizes == {(48, 48, 3)}  # the output chain never shrinks below its min_side (48)
    assert {Path(p).suffix for p in m["path"]} <= {".jpg", ".png"}
    counts = pd.read_csv(out / "counts.csv")
    assert counts.loc[counts["source"] == "TOTAL", "images"].item() == len(m) == 72
    assert counts.loc[(counts["source"] == "splice") & (counts["dataset"] == "lfw"), "images"].item() == 12
    licences = (out / "LICENSES.md").read_text()
    assert "research use" in licences and "testphotos" in licences and "CC0 (made by the test)" in licences
    sheet = read_image(str(out / "contact_sheet.png"))
    assert sheet.shape[0] > 200 and sheet.shape[1] > 200

    # A second run with the same settings finds it up to date and rewrites nothing.
    stamp_time = (out / "manifest.parquet").stat().st_mtime_ns
    again = build.build_corpus(
        out, crop_size=48, families=["real_jpeg", "splice"], variants={"splice": 2}, workers=1, lfw=str(small_lfw),
        photo_sources=one_photo, progress=False, log=logs.append,
    )  # fmt: skip
    assert again == summary and any("up to date" in line for line in logs)
    assert (out / "manifest.parquet").stat().st_mtime_ns == stamp_time


def test_capped_family_and_missing_requirements(tmp_path, small_lfw, one_photo):
    out = tmp_path / "corpus"
    logs: list[str] = []
    plan = families.plan_families(None, {"*": 2, "splice": 1}, {"masked_fill": 5}, None, logs.append)
    names = {f.name: f for f in plan}
    assert not any(n.startswith("sd_") for n in names)  # no model folder: left out, and said so
    assert any("sd_txt2img left out" in line for line in logs)
    assert names["splice"].variants == 1 and names["masked_fill"].variants == 2 and names["masked_fill"].max_reals == 5
    assert names["real_jpeg"].max_reals is None
    if "dcgan_face" in names:  # weights present: real_downscale pairs its 64 px faces with as many 64 px reals
        assert names["real_downscale"].options == {"sizes": [64]}
    fixed = families.match_fixed_sizes(
        [families.CorpusFamily("dcgan_face", 2, 100, {}), families.CorpusFamily("stylegan_lite", 1, 100, {})],
        {"dcgan_face": 64, "stylegan_lite": 128}, logs.append,
    )  # fmt: skip
    assert vars(fixed[-1]) == {"name": "real_downscale", "variants": 3, "max_reals": 100, "options": {"sizes": [64, 128]}}
    with pytest.raises(ConfigError, match="Stable Diffusion model"):
        families.plan_families(["sd_img2img"], {}, {}, None, logs.append)
    with pytest.raises(ConfigError, match="unknown augmentation family"):
        families.plan_families(["no_such_family"], {}, {}, None, logs.append)

    # A capped family gets a stable subset of the reals.
    build.build_corpus(
        out, crop_size=48, families=["masked_fill"], max_reals={"masked_fill": 5}, workers=1, lfw=str(small_lfw),
        photo_sources=one_photo, progress=False, log=logs.append,
    )  # fmt: skip
    m = pd.read_parquet(out / "manifest.parquet")
    assert (m["source"] == "masked_fill").sum() == 5 and (m["source"] == "real").sum() == 18

    # Another crop size: the reals are gathered again and the fakes made again from them, none resumed.
    build.build_corpus(
        out, crop_size=40, families=["masked_fill"], max_reals={"masked_fill": 5}, workers=1, lfw=str(small_lfw),
        photo_sources=one_photo, progress=False, log=logs.append,
    )  # fmt: skip
    m = pd.read_parquet(out / "manifest.parquet")
    assert {read_image(str(out / p)).shape for p in m["path"]} == {(40, 40, 3)}
    assert any("made again" in line for line in logs)


def test_corpus_cli_usage_errors(tmp_path, capsys):
    assert main(["corpus", str(tmp_path / "c"), "--variants", "splice=many"]) == 2
    assert "expected N or FAMILY=N" in capsys.readouterr().err
    assert main(["corpus", str(tmp_path / "c"), "--families", "nope", "--lfw", str(tmp_path / "missing.tar")]) == 2
    assert "not found" in capsys.readouterr().err


def test_find_lfw_explicit_then_env(tmp_path, monkeypatch):
    fake = tmp_path / "lfw150.tar"
    fake.write_bytes(b"")
    monkeypatch.setenv(sources.LFW_ENV, str(fake))
    assert sources.find_lfw() == fake.resolve()
    other = tmp_path / "other.tar"
    other.write_bytes(b"")
    assert sources.find_lfw(str(other)) == other.resolve()
    with pytest.raises(FileNotFoundError):
        sources.find_lfw(str(tmp_path / "missing.tar"))


def test_lfw_comes_from_the_option_or_the_environment_only(tmp_path, monkeypatch, capsys, one_photo):
    monkeypatch.delenv(sources.LFW_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert sources.find_lfw() is None
    with pytest.raises(ConfigError, match=f"--lfw PATH.*{sources.LFW_ENV}"):
        build.build_corpus(tmp_path / "c", families=["real_jpeg"], photo_sources=one_photo, progress=False)
    assert main(["corpus", str(tmp_path / "c"), "--families", "real_jpeg"]) == 2
    err = capsys.readouterr().err
    assert "--lfw" in err and sources.LFW_ENV in err
    monkeypatch.setenv(sources.LFW_ENV, str(tmp_path / "gone.tar"))
    with pytest.raises(FileNotFoundError, match=sources.LFW_ENV):
        sources.find_lfw()
    # Without LFW on request: package photos only.
    monkeypatch.delenv(sources.LFW_ENV)
    summary = build.build_corpus(
        tmp_path / "c", crop_size=48, families=["real_jpeg"], workers=1, use_lfw=False, photo_sources=one_photo,
        progress=False, log=lambda m: None,
    )  # fmt: skip
    assert summary["per_source"] == {"real": 12, "real_jpeg": 12}


# ---------------------------------------------------------------- generator families and the output chain


@pytest.fixture(scope="module")
def lfw40(tmp_path_factory) -> Path:
    """A tar of 40 LFW photos in the layout of lfw150.tar."""
    if not LFW.is_file():
        pytest.skip(f"{LFW} not present")
    out = tmp_path_factory.mktemp("lfw40") / "lfw40.tar"
    with tarfile.open(LFW) as src, tarfile.open(out, "w") as dst:
        for m in [m for m in src.getmembers() if m.isfile() and m.name.endswith(".jpg")][:40]:
            dst.addfile(m, src.extractfile(m))
    return out


TINY_TRAIN = {
    "autoencoder": {"steps": 2, "batch": 2, "crop": 32, "width": 4, "train_images": 8},
    "stylegan_lite": {"steps": 2, "batch": 2, "size": 16, "z_dim": 16, "width": 16, "mapping_layers": 2, "r1_every": 2, "train_images": 8},
}


def test_corpus_trains_its_generators_and_matches_fixed_sizes(tmp_path, small_lfw, one_photo):
    from deepfake_moe.augment.corpus.generators import train_generators

    out = tmp_path / "corpus"
    logs: list[str] = []
    build.build_corpus(
        out, crop_size=150, families=["autoencoder", "stylegan_lite"], workers=1, lfw=str(small_lfw),
        photo_sources=one_photo, train=TINY_TRAIN, progress=False, log=logs.append,
    )  # fmt: skip
    m = pd.read_parquet(out / "manifest.parquet")
    reals = m[m["source"] == "real"]
    lfw_shapes = {read_image(str(out / p)).shape[:2] for p in reals.loc[reals["dataset"] == "lfw", "path"]}
    assert max(max(s) for s in lfw_shapes) <= 150  # LFW's 150 px faces never enlarged (the chain may shrink)
    assert (m["source"] == "autoencoder").sum() == len(reals) and set(m.loc[m["source"] == "autoencoder", "label"]) == {1}
    # stylegan_lite makes 16 px faces (this tiny one): as many reals are shrunk to 16 px, labelled real
    sg, small = m[m["source"] == "stylegan_lite"], m[m["source"] == "real_downscale"]
    assert len(sg) == len(small) == len(reals) and set(small["label"]) == {0}
    assert {read_image(str(out / p)).shape for p in sg["path"]} == {read_image(str(out / p)).shape for p in small["path"]} == {(16, 16, 3)}
    assert any("real_downscale gets" in line for line in logs)
    params = [json.loads(p)["family"] for p in m.loc[m["source"] == "autoencoder", "params"]]
    assert {p["upsampler"] for p in params} <= set(("transposed", "nearest", "bilinear", "pixelshuffle"))
    manifest = out / "reals" / "manifest.parquet"
    with pytest.raises(ConfigError, match="unknown"):
        train_generators([families.CorpusFamily("autoencoder", 1, None, {})], manifest, {"autoencoder": {"stepz": 1}}, logs.append)
    with pytest.raises(ConfigError, match="no trained generator"):
        train_generators([], manifest, {"esrgan": {"steps": 1}}, logs.append)


def _jpeg_quality_proxy(path: Path) -> float | None:
    with Image.open(path) as img:
        if img.format != "JPEG":
            return None
        return float(np.mean(img.quantization[0]))  # the luminance table: one number per quality and encoder


def test_labels_share_encoders_quantisation_tables_and_sizes(tmp_path, lfw40):
    from scipy.stats import ks_2samp

    out = tmp_path / "corpus"
    build.build_corpus(
        out, crop_size=150, families=["real_reencode", "autoencoder"], workers=1, lfw=str(lfw40), photo_sources=(),
        train=TINY_TRAIN, variants={"*": 2}, progress=False, log=lambda m: None,
    )  # fmt: skip
    m = pd.read_parquet(out / "manifest.parquet")
    stats = {}
    for label in (0, 1):
        paths = [out / p for p in m.loc[m["label"] == label, "path"]]
        q = [_jpeg_quality_proxy(p) for p in paths]
        stats[label] = {
            "png": float(np.mean([v is None for v in q])),
            "tables": [v for v in q if v is not None],
            "sides": [min(read_image(str(p)).shape[:2]) for p in paths],
        }
    assert len(stats[0]["sides"]) == 120 and len(stats[1]["sides"]) == 80  # 40 reals + 80 re-encoded; 80 fakes
    # same encoders, same quality tables, same sizes: tests that would reject on a label-dependent chain
    assert abs(stats[0]["png"] - stats[1]["png"]) < 0.15
    assert ks_2samp(stats[0]["tables"], stats[1]["tables"]).pvalue > 0.01
    assert ks_2samp(stats[0]["sides"], stats[1]["sides"]).pvalue > 0.01
    assert len(set(stats[0]["tables"])) > 5 and len(set(stats[0]["sides"])) > 5


def test_face_mode_reals_leave_through_the_chain_too(tmp_path, small_lfw):
    out = tmp_path / "corpus"
    build.build_corpus(
        out, crop_size=150, families=["real_reencode"], workers=1, lfw=str(small_lfw), photo_sources=(), faces=True,
        progress=False, log=lambda m: None,
    )  # fmt: skip
    m = pd.read_parquet(out / "manifest.parquet")
    reals = m[m["source"] == "real"]
    if reals.empty:
        pytest.skip("no face found in the LFW sample by this face detector")
    # the listed reals are the face crops after the output chain (not the lossless crops: PNG would mean real)
    assert reals["path"].str.startswith("reals/faces/chained/").all()
    assert {Path(p).suffix for p in reals["path"]} != {".png"}
    encoded = m[m["source"] == "real_reencode"]
    assert len(encoded) == len(reals) and set(encoded["origin"]) == set(reals["origin"])
