"""Manifests: every reader (challenge labels, folder layouts, any CSV, Parquet) and the `manifest` command."""

import argparse

import cv2
import numpy as np
import pandas as pd
import pytest

from deepfake_moe.data import commands
from deepfake_moe.data import manifest as mf

CORE = ["path", "label", "source", "origin"]


def write_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def cli(*argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["manifest", *map(str, argv)])
    return args.func(args)


def same(a, b):
    pd.testing.assert_frame_equal(
        a[CORE].sort_values("path").reset_index(drop=True), b[CORE].sort_values("path").reset_index(drop=True)
    )


@pytest.fixture
def folder_layout(tmp_path):
    root = tmp_path / "data"
    write_image(root / "real" / "a.jpg", 0)
    write_image(root / "real" / "sub" / "b.png", 1)
    write_image(root / "fake" / "stylegan" / "c.jpg", 2)
    write_image(root / "fake" / "faceswap" / "x" / "d.jpg", 3)
    (root / "fake" / "notes.txt").write_text("not an image")
    return root


def test_folder_layout_real_and_fake_sources(folder_layout):
    df = mf.from_folder(folder_layout)
    by_name = {p.split("/")[-1]: (lab, src) for p, lab, src in zip(df["path"], df["label"], df["source"])}
    assert by_name == {"a.jpg": (0, "real"), "b.png": (0, "real"), "c.jpg": (1, "stylegan"), "d.jpg": (1, "faceswap")}
    assert (df["origin"] == df["path"]).all()


def test_folder_layout_0_real_1_fake(tmp_path):
    write_image(tmp_path / "train" / "0_real" / "a.jpg")
    write_image(tmp_path / "train" / "1_fake" / "b.jpg")
    df = mf.from_folder(tmp_path)
    assert sorted(zip(df["label"], df["source"])) == [(0, "real"), (1, "fake")]


def test_challenge_layout(tmp_path):
    for i, name in enumerate(["img1.jpg", "img2.jpg", "img3.jpg"]):
        write_image(tmp_path / "trainset" / name, i)
    (tmp_path / "trainset_label.txt").write_text("img_name,target\nimg1.jpg,0\nimg2.jpg,1\nimg3.jpg,1\n")
    df = mf.read_challenge_labels(tmp_path / "trainset_label.txt")
    assert df["label"].tolist() == [0, 1, 1]
    assert df["path"].tolist() == [str(tmp_path / "trainset" / n) for n in ["img1.jpg", "img2.jpg", "img3.jpg"]]
    mf.check_files(df)


def test_csv_with_named_columns_and_word_labels(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "imgs" / "b.jpg", 1)
    (tmp_path / "list.csv").write_text("file,is_fake,method,extra\nimgs/a.jpg,Real,,1\nimgs/b.jpg,fake,sd15,2\n")
    df = mf.from_csv(tmp_path / "list.csv", path_column="file", label_column="is_fake", source_column="method")
    assert df["label"].tolist() == [0, 1]
    assert df["path"].tolist() == [str(tmp_path / "imgs" / "a.jpg"), str(tmp_path / "imgs" / "b.jpg")]
    assert df["source"].tolist()[1] == "sd15" and df["extra"].tolist() == [1, 2]
    with pytest.raises(mf.ManifestError, match="no column"):
        mf.from_csv(tmp_path / "list.csv")


def test_round_trip_through_every_reader(folder_layout, tmp_path):
    """A manifest written in each format reads back identical through the matching reader."""
    original = mf.from_folder(folder_layout)
    for suffix in (".parquet", ".csv"):
        out = mf.write_manifest(original, tmp_path / f"m{suffix}")
        same(mf.read_manifest(out), original)
    # any CSV, with other column names
    renamed = original.rename(columns={"path": "file", "label": "y", "source": "gen", "origin": "orig"})
    renamed.to_csv(tmp_path / "other.csv", index=False)
    same(mf.from_csv(tmp_path / "other.csv", "file", "y", "gen", "orig"), original)
    # challenge label file: names relative to the image folder (sources are not part of that format)
    names = [p[len(str(folder_layout)) + 1 :] for p in original["path"]]
    pd.DataFrame({"img_name": names, "target": original["label"]}).to_csv(tmp_path / "x_label.txt", index=False)
    back = mf.read_challenge_labels(tmp_path / "x_label.txt", root=folder_layout)
    assert back["path"].tolist() == original["path"].tolist() and back["label"].tolist() == original["label"].tolist()
    # the command, from each kind of input, writes what the reader gives
    for source in (folder_layout, tmp_path / "m.csv", tmp_path / "m.parquet"):
        assert cli(source, "-o", tmp_path / "cmd.parquet") == 0
        same(mf.read_manifest(tmp_path / "cmd.parquet"), original)
    assert cli(tmp_path / "other.csv", "--path-column", "file", "--label-column", "y", "--source-column", "gen",
               "--origin-column", "orig", "-o", tmp_path / "cmd.csv") == 0
    same(mf.read_manifest(tmp_path / "cmd.csv"), original)
    # paths are stored relative to the manifest's folder, so it reads the same wherever it is read from
    assert cli(folder_layout, "-o", folder_layout / "rel.csv") == 0
    assert not pd.read_csv(folder_layout / "rel.csv")["path"].str.startswith("/").any()
    same(mf.read_manifest(folder_layout / "rel.csv"), original)


def test_command_on_challenge_layout_prints_counts(tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / "trainset" / f"{i}.jpg", i)
    (tmp_path / "trainset_label.txt").write_text("img_name,target\n0.jpg,0\n1.jpg,1\n2.jpg,1\n")
    assert cli(tmp_path / "trainset_label.txt", "-o", tmp_path / "m.parquet") == 0
    out = capsys.readouterr().out
    assert "real" in out and "fake" in out and "3 image(s)" in out
    counts = mf.summarize(mf.read_manifest(tmp_path / "m.parquet"))
    assert dict(zip(counts["label"], counts["images"])) == {"real": 1, "fake": 2}


def test_missing_files_are_listed(tmp_path, capsys):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "l.csv").write_text("path,label\na.jpg,0\ngone1.jpg,1\ngone2.jpg,1\n")
    with pytest.raises(mf.ManifestError, match=r"2 of 3 file\(s\)") as e:
        cli(tmp_path / "l.csv", "-o", tmp_path / "m.parquet")
    assert "gone1.jpg" in str(e.value) and "gone2.jpg" in str(e.value)
    assert not (tmp_path / "m.parquet").exists()
    assert cli(tmp_path / "l.csv", "--drop-missing", "-o", tmp_path / "m.parquet") == 1
    assert "gone2.jpg" in capsys.readouterr().err
    assert mf.read_manifest(tmp_path / "m.parquet")["path"].tolist() == [str(tmp_path / "a.jpg")]


def test_unknown_labels_and_duplicates_are_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("path,label\na.jpg,0\nb.jpg,maybe\nc.jpg,2\n")
    with pytest.raises(mf.ManifestError, match="label"):
        mf.from_csv(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("path,label\na.jpg,0\na.jpg,1\n")
    with pytest.raises(mf.ManifestError, match="duplicate"):
        mf.from_csv(tmp_path / "dup.csv")
    write_image(tmp_path / "real" / "a.jpg")
    with pytest.raises(mf.ManifestError, match="duplicate"):  # the same images given twice
        cli(tmp_path, tmp_path, "-o", tmp_path / "m.parquet")


def test_folder_without_labels_points_to_the_label_file(tmp_path):
    write_image(tmp_path / "trainset" / "1.jpg")
    (tmp_path / "trainset_label.txt").write_text("img_name,target\n1.jpg,0\n")
    with pytest.raises(mf.ManifestError, match="trainset_label.txt"):
        cli(tmp_path, "-o", tmp_path / "m.parquet")


def test_output_suffix_is_checked(folder_layout, tmp_path):
    from deepfake_moe.errors import ConfigError

    with pytest.raises(ConfigError, match="parquet"):
        cli(folder_layout, "-o", tmp_path / "m.txt")


def test_unreadable_images_are_listed_when_verified(tmp_path, capsys):
    write_image(tmp_path / "real" / "ok.jpg")
    (tmp_path / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert cli(tmp_path, "-o", tmp_path / "m.parquet") == 0  # existence alone is not checked deeper
    with pytest.raises(mf.ManifestError, match="(?s)1 image.*broken.jpg"):
        cli(tmp_path, "--verify-images", "-o", tmp_path / "m.parquet")
    assert cli(tmp_path, "--verify-images", "--drop-missing", "-o", tmp_path / "m.parquet") == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert [p.split("/")[-1] for p in mf.read_manifest(tmp_path / "m.parquet")["path"]] == ["ok.jpg"]


def test_plain_folder_of_reals_with_label_option(tmp_path):
    write_image(tmp_path / "photos" / "a.jpg")
    write_image(tmp_path / "photos" / "x" / "b.jpg", 1)
    write_image(tmp_path / "photos" / "fake" / "sd" / "c.jpg", 2)
    with pytest.raises(mf.ManifestError, match="--label real"):
        cli(tmp_path / "photos" / "x", "-o", tmp_path / "m.parquet")
    assert cli(tmp_path / "photos", "--label", "real", "-o", tmp_path / "m.parquet") == 0
    df = mf.read_manifest(tmp_path / "m.parquet")
    assert sorted(zip([p.split("/")[-1] for p in df["path"]], df["label"], df["source"])) == [
        ("a.jpg", 0, "real"), ("b.jpg", 0, "real"), ("c.jpg", 1, "sd")]


def test_one_path_rule_relative_to_the_manifest_folder(tmp_path, monkeypatch):
    """`manifest data/reals -o data/train.parquet` run from the project folder: stored relative to data/,
    read back absolute from any working directory; images outside the folder stay absolute."""
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "data" / "reals" / "a.jpg")
    write_image(tmp_path / "elsewhere" / "real" / "b.jpg", 1)
    assert cli("data/reals", "--label", "real", "-o", "data/train.parquet") == 0
    assert pd.read_parquet(tmp_path / "data" / "train.parquet")["path"].tolist() == ["reals/a.jpg"]
    df = pd.concat([mf.read_manifest("data/train.parquet"), mf.from_folder(tmp_path / "elsewhere")])
    mf.write_manifest(df, "data/both.csv")
    stored = pd.read_csv(tmp_path / "data" / "both.csv")["path"].tolist()
    assert stored == ["reals/a.jpg", str(tmp_path / "elsewhere" / "real" / "b.jpg")]
    monkeypatch.chdir(tmp_path / "elsewhere")
    for name in ("train.parquet", "both.csv"):
        back = mf.read_manifest(tmp_path / "data" / name)
        assert back["path"].iloc[0] == str(tmp_path / "data" / "reals" / "a.jpg")
        mf.check_files(back)


def test_old_working_directory_relative_manifest_reads_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "data" / "reals" / "a.jpg")
    pd.DataFrame({"path": ["data/reals/a.jpg"], "label": [0]}).to_parquet(tmp_path / "data" / "old.parquet")
    df = mf.read_manifest("data/old.parquet")
    assert df["path"].tolist() == [str(tmp_path / "data" / "reals" / "a.jpg")]
    note = capsys.readouterr().err
    assert "relative to the working directory" in note and "deepfake-moe manifest data/old.parquet -o" in note
    # the suggested fix rewrites it under the rule, and it then reads from anywhere without a note
    assert cli("data/old.parquet", "-o", "data/new.parquet") == 0
    monkeypatch.chdir(tmp_path / "data")
    capsys.readouterr()
    assert mf.read_manifest("new.parquet")["path"].tolist() == df["path"].tolist()
    assert "note" not in capsys.readouterr().err


def test_start_up_check_counts_missing_files_and_samples_huge_sets(tmp_path):
    write_image(tmp_path / "a.jpg")
    df = mf.normalize(pd.DataFrame({"path": [str(tmp_path / "a.jpg")] + [f"/nowhere/{i}.jpg" for i in range(30)],
                                    "label": 0}))
    with pytest.raises(mf.ManifestError, match=r"30 of 31 file\(s\) listed in train.parquet do not exist") as e:
        mf.check_files(df, what="train.parquet")
    assert "/nowhere/0.jpg" in str(e.value) and "and 20 more" in str(e.value)
    with pytest.raises(mf.ManifestError, match="of a random sample of 10 .out of 31."):
        mf.check_files(df, sample=10)
    mf.check_files(df.iloc[:1])
