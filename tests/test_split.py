"""Cluster re-splitting: origin groups stay whole, splits are disjoint, runs repeat, the cache is reused."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_moe.config import load_yaml
from deepfake_moe.data.manifest import read_manifest, split_columns
from deepfake_moe.split.cluster import ClusterConfig, cluster
from deepfake_moe.split.config import EncoderConfig, SplitConfig
from deepfake_moe.split.encode import build_encoder, encode
from deepfake_moe.split.splits import (
    LeakError,
    assign_splits,
    check_no_leak,
    cluster_report,
    degenerate_warnings,
)

TINY = EncoderConfig("test_efficientnet", pretrained="none", size=32, batch_size=16, num_workers=0)


# ---- synthetic features: blobs of origin groups ------------------------------------------

def blobs(n_blobs=4, groups_per_blob=6, fakes_per_group=2, dim=16, fake_only_blob=False, seed=0):
    """Features in well-separated blobs; each group = one real + its derived fakes, near each other.

    With `fake_only_blob`, one more blob holds only fakes of their own origin (like text-to-image
    generations): left alone, k-means makes it a cluster whose split has no reals.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (n_blobs + 1, dim))
    feats, origins, labels = [], [], []
    for b in range(n_blobs):
        for g in range(groups_per_blob):
            base = centres[b] + rng.normal(0, 1, dim)
            for j in range(1 + fakes_per_group):
                feats.append(base + rng.normal(0, 0.3, dim))
                origins.append(f"b{b}g{g}")
                labels.append(0 if j == 0 else 1)
    if fake_only_blob:
        for g in range(groups_per_blob):
            feats.append(centres[-1] + rng.normal(0, 1, dim))
            origins.append(f"gen{g}")
            labels.append(1)
    return np.asarray(feats, np.float32), np.asarray(origins), np.asarray(labels)


def as_manifest(origins, labels):
    return pd.DataFrame({
        "path": [f"img{i}.png" for i in range(len(origins))],
        "label": labels,
        "source": np.where(labels == 0, "real", "edit"),
        "origin": origins,
    })


@pytest.mark.parametrize("group_by", ["mean", "majority"])
def test_origin_groups_stay_whole_and_splits_are_disjoint(group_by):
    # Groups spread wide (members far apart) so that a row-wise clustering would split them.
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(300, 8)).astype(np.float32)
    origins = np.repeat([f"o{i}" for i in range(60)], 5)
    labels = np.tile([0, 1, 1, 1, 1], 60)
    ok = np.ones(len(feats), bool)
    result = cluster(feats, origins, labels, ok, ClusterConfig(k=4, group_by=group_by, l2_normalize=False))
    df = assign_splits(as_manifest(origins, labels), result.labels)
    assert df.groupby("origin")["cluster"].nunique().max() == 1
    assert split_columns(df) == ["split_0", "split_1", "split_2", "split_3"]
    for col in split_columns(df):
        val, train = set(df.loc[df[col], "origin"]), set(df.loc[~df[col], "origin"])
        assert val and train and not (val & train)
    # every row is validation in exactly one split
    assert (df[split_columns(df)].sum(axis=1) == 1).all()


def test_leak_is_detected():
    df = as_manifest(np.array(["a", "a", "b"]), np.array([0, 1, 0]))
    df["cluster"] = [0, 1, 1]
    with pytest.raises(LeakError, match="1 origin group"):
        check_no_leak(df)


def test_same_seed_same_clusters():
    feats, origins, labels = blobs(n_blobs=5, dim=32)
    feats += np.random.default_rng(1).normal(0, 6, feats.shape).astype(np.float32)  # blur blobs: seed matters
    ok = np.ones(len(feats), bool)
    cfg = ClusterConfig(k=5, seed=7, pca=8, whiten=True)
    first = cluster(feats, origins, labels, ok, cfg).labels
    again = cluster(feats.copy(), origins, labels, ok, cfg).labels
    np.testing.assert_array_equal(first, again)
    sizes = np.bincount(first)
    assert (np.diff(sizes) <= 0).all()  # numbered largest first


def test_blobs_are_recovered():
    feats, origins, labels = blobs()
    result = cluster(feats, origins, labels, np.ones(len(feats), bool), ClusterConfig(k=4))
    blob_of_row = np.array([int(o[1]) for o in origins])
    # each blob maps to exactly one cluster and vice versa
    pairs = set(zip(blob_of_row, result.labels))
    assert len(pairs) == 4 and len({c for _, c in pairs}) == 4


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_each_backend_recovers_blobs_deterministically(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    feats, origins, labels = blobs(n_blobs=3, groups_per_blob=60)
    ok = np.ones(len(feats), bool)
    cfg = ClusterConfig(k=3, backend=backend, seed=2)
    result = cluster(feats, origins, labels, ok, cfg)
    np.testing.assert_array_equal(result.labels, cluster(feats, origins, labels, ok, cfg).labels)
    blob_of_row = np.array([int(o[1]) for o in origins])
    assert len(set(zip(blob_of_row, result.labels))) == 3


def test_degenerate_cluster_is_warned_and_both_fixes_work():
    feats, origins, labels = blobs(n_blobs=3, fake_only_blob=True)
    ok = np.ones(len(feats), bool)
    df = as_manifest(origins, labels)

    plain = assign_splits(df, cluster(feats, origins, labels, ok, ClusterConfig(k=4)).labels)
    warnings = degenerate_warnings(cluster_report(plain))
    assert len(warnings) == 1
    assert "no real images" in warnings[0] and "--merge-degenerate" in warnings[0] and "--per-label" in warnings[0]

    merged = cluster(feats, origins, labels, ok, ClusterConfig(k=4, merge_degenerate=True))
    assert len(merged.merged) == 1 and merged.labels.max() == 2
    merged_df = assign_splits(df, merged.labels)
    assert degenerate_warnings(cluster_report(merged_df)) == []
    assert merged_df.groupby("origin")["cluster"].nunique().max() == 1

    paired = assign_splits(df, cluster(feats, origins, labels, ok, ClusterConfig(k=3, per_label=True)).labels)
    report = cluster_report(paired)
    assert len(report) == 3 and report["usable"].all()
    assert paired.groupby("origin")["cluster"].nunique().max() == 1


@pytest.mark.parametrize("per_label", [False, True])
def test_stratified_clusters_hold_out_part_of_every_dataset(per_label):
    # a small dataset far from the rest: plain k-means makes it one cluster, so one expert never sees it
    feats, origins, labels = blobs(n_blobs=4, groups_per_blob=6)
    dataset = np.where(np.char.startswith(origins, "b3"), "photos", "faces")
    ok = np.ones(len(feats), bool)
    plain = cluster(feats, origins, labels, ok, ClusterConfig(k=3, per_label=per_label)).labels
    assert len(set(plain[dataset == "photos"])) == 1

    strat = cluster(feats, origins, labels, ok, ClusterConfig(k=3, per_label=per_label, stratify="dataset"),
                    strata=dataset).labels
    assert set(strat[dataset == "photos"]) == {0, 1, 2}
    df = assign_splits(as_manifest(origins, labels), strat)
    assert df.groupby("origin")["cluster"].nunique().max() == 1
    assert cluster_report(df)["usable"].all()
    for k in range(3):  # every split trains on both datasets
        train = df[~df[f"split_{k}"].astype(bool)]
        assert set(dataset[train.index]) == {"faces", "photos"}


def test_a_stratum_with_fewer_groups_than_k_spreads_its_groups():
    feats, origins, labels = blobs(n_blobs=3, groups_per_blob=6)
    dataset = np.where(np.isin(origins, ["b2g0", "b2g1"]), "tiny", "big")
    result = cluster(feats, origins, labels, np.ones(len(feats), bool), ClusterConfig(k=3, stratify="dataset"),
                     strata=dataset)
    assert len(set(result.labels[dataset == "tiny"])) == 2 and result.labels.max() == 2


def test_stratify_by_a_missing_column_is_an_error(tiny_manifest, tmp_path):
    from deepfake_moe.errors import ConfigError
    from deepfake_moe.split.run import make_splits

    cfg = SplitConfig(str(tiny_manifest), str(tmp_path), encoder=TINY, cluster=ClusterConfig(k=2, stratify="camera"))
    with pytest.raises(ConfigError, match="cannot stratify by 'camera'"):
        make_splits(cfg, progress=False)


def test_rows_without_features_follow_their_group_or_stay_unassigned():
    feats, origins, labels = blobs(n_blobs=2, groups_per_blob=4)
    ok = np.ones(len(feats), bool)
    ok[1] = False  # a fake of group b0g0: its real was encoded
    lonely = np.append(origins, "lost")  # a group with no encoded row at all
    result = cluster(np.vstack([feats, np.zeros((1, feats.shape[1]), np.float32)]), lonely,
                     np.append(labels, 1), np.append(ok, False), ClusterConfig(k=2))
    assert result.labels[1] == result.labels[0]
    assert result.labels[-1] == -1


def test_too_few_groups_is_an_error():
    feats, origins, labels = blobs(n_blobs=1, groups_per_blob=2)
    with pytest.raises(ValueError, match="cannot make 5 clusters from 2 groups"):
        cluster(feats, origins, labels, np.ones(len(feats), bool), ClusterConfig(k=5))


# ---- real images through a tiny timm encoder --------------------------------------------

@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    """4 colour families x 3 reals x 2 pasted-patch fakes, plus an unreadable file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for family, colour in enumerate([(200, 40, 40), (40, 180, 60), (40, 60, 200), (128, 128, 128)]):
        for r in range(3):
            real = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            name = f"f{family}_r{r}.png"
            Image.fromarray(real).save(root / name)
            rows.append((name, 0, "real", name))
            for f in range(2):
                fake = real.copy()
                fake[8:24, 8:24] = rng.integers(0, 255, 3)
                Image.fromarray(fake).save(root / f"f{family}_r{r}_fake{f}.png")
                rows.append((f"f{family}_r{r}_fake{f}.png", 1, "paste", name))
    (root / "broken.png").write_bytes(b"not an image")
    rows.append(("broken.png", 1, "paste", "broken.png"))
    path = root / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "source", "origin"]).to_csv(path, index=False)
    return path


def test_encoding_is_cached_and_resumes(tiny_manifest, tmp_path):
    paths = read_manifest(tiny_manifest)["path"].tolist()
    first = encode(paths, TINY, tmp_path, progress=False)
    assert first.encoded == len(paths) and first.features.shape[0] == len(paths)
    broken = paths.index(str(tiny_manifest.parent / "broken.png"))
    assert list(first.errors) == [broken] and not first.ok[broken] and first.ok.sum() == len(paths) - 1

    class NoEncoding:
        def __call__(self, x):
            raise AssertionError("the cache should have been used")

    cached_encoder = build_encoder(TINY)
    cached_encoder.module = NoEncoding()
    second = encode(paths, TINY, tmp_path, progress=False, encoder=cached_encoder)
    assert second.encoded == 0 and second.cache_dir == first.cache_dir
    np.testing.assert_array_equal(second.features, first.features)
    assert second.errors == first.errors

    # a run killed part way: rows 3..9 never marked done, their features garbage
    expected = np.array(first.features[3:10])
    done = np.load(first.cache_dir / "done.npy", mmap_mode="r+")
    done[3:10] = 0
    done.flush()
    feats = np.load(first.cache_dir / "features.npy", mmap_mode="r+")
    feats[3:10] = np.nan
    feats.flush()
    del done, feats
    resumed = encode(paths, TINY, tmp_path, progress=False)
    assert resumed.encoded == 7
    np.testing.assert_allclose(resumed.features[3:10], expected, rtol=1e-4, atol=1e-5)

    # another size is another cache
    other = encode(paths, EncoderConfig(**{**TINY.__dict__, "size": 40}), tmp_path, progress=False)
    assert other.cache_dir != first.cache_dir and other.encoded == len(paths)


def test_checkpoint_encoder_concatenates_experts(tmp_path):
    from deepfake_moe.data.transforms import PreprocessConfig
    from deepfake_moe.model.checkpoint import ExpertSpec, ModelConfig, build_model, save_checkpoint

    cfg = ModelConfig([ExpertSpec("test_resnet"), ExpertSpec("test_efficientnet")], PreprocessConfig(input_size=32))
    save_checkpoint(build_model(cfg), cfg, tmp_path / "ckpt")
    first = build_encoder(EncoderConfig(str(tmp_path / "ckpt"), expert="0"))
    both = build_encoder(EncoderConfig(str(tmp_path / "ckpt"), expert="all"))
    assert both.dim > first.dim and both.preprocess.input_size == 32
    import torch

    with torch.no_grad():
        assert both.module(torch.zeros(2, 3, 32, 32)).shape == (2, both.dim)


def test_split_command_end_to_end(tiny_manifest, tmp_path):
    import argparse

    from deepfake_moe.split.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "out"
    argv = ["split", str(tiny_manifest), "--k", "4", "--encoder", "test_efficientnet", "--pretrained", "none",
            "--size", "32", "--workers", "0", "--out", str(out), "--quiet"]
    args = parser.parse_args(argv)
    assert args.func(args) == 1  # one unreadable image: partial failure, everything else written
    for name in ("manifest.parquet", "clusters.csv", "clusters.md", "cluster_map.png", "split.yaml", "unreadable.csv"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "manifest.parquet")
    assert split_columns(df) == [f"split_{i}" for i in range(4)]
    assert df.groupby("origin")["cluster"].nunique().max() == 1
    assert df.loc[df["path"].str.endswith("broken.png"), "cluster"].item() == -1
    assert "broken.png" in (out / "unreadable.csv").read_text()
    with Image.open(out / "cluster_map.png") as im:
        assert im.format == "PNG" and im.width > 1.5 * im.height  # two panels side by side
    saved = load_yaml(SplitConfig, out / "split.yaml")
    assert saved.cluster.k == 4 and saved.encoder.name == "test_efficientnet"

    # re-cluster with another k: the features come from the cache
    args = parser.parse_args(argv[:3] + ["3"] + argv[4:])
    assert args.func(args) == 1
    assert "0 image(s) encoded now" in (out / "clusters.md").read_text()
    assert pd.read_parquet(out / "manifest.parquet")["cluster"].max() == 2


def test_split_command_rejects_k_above_group_count(tiny_manifest, tmp_path):
    from deepfake_moe.errors import ConfigError
    from deepfake_moe.split.run import make_splits

    cfg = SplitConfig(str(tiny_manifest), str(tmp_path), encoder=TINY, cluster=ClusterConfig(k=50))
    with pytest.raises(ConfigError, match="more than the 13 origin groups"):
        make_splits(cfg, progress=False)


def test_split_stops_before_encoding_when_listed_files_are_missing(tiny_manifest, tmp_path):
    from deepfake_moe.data.manifest import ManifestError
    from deepfake_moe.split.run import make_splits

    df = pd.read_csv(tiny_manifest)
    df["path"] = [str(tiny_manifest.parent / p) for p in df["path"]]
    df.loc[len(df)] = [str(tmp_path / "gone.png"), 1, "paste", "gone"]
    df.to_csv(tmp_path / "m.csv", index=False)
    cfg = SplitConfig(str(tmp_path / "m.csv"), str(tmp_path / "out"), encoder=TINY, cluster=ClusterConfig(k=2))
    with pytest.raises(ManifestError, match=r"1 of \d+ file\(s\) listed in .*m.csv do not exist:\n  .*gone.png"):
        make_splits(cfg, progress=False)
    assert not (tmp_path / "out").exists()
