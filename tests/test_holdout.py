import pandas as pd
import pytest

from deepfake_moe.cli import main
from deepfake_moe.data.holdout import holdout
from deepfake_moe.data.manifest import ManifestError, read_manifest, write_manifest


def corpus_table(n_people=20):
    rows = []
    for person in range(n_people):
        for photo in range(2):
            origin = f"p{person}_{photo}"
            rows.append({"path": f"{origin}.jpg", "label": 0, "source": "real", "origin": origin, "identity": f"p{person}"})
            for fam in ("splice", "faceswap"):
                rows.append({"path": f"{origin}_{fam}.jpg", "label": 1, "source": fam, "origin": origin, "identity": f"p{person}"})
    return pd.DataFrame(rows)


def test_partitions_are_disjoint_by_identity_and_family_is_held_out():
    parts = holdout(corpus_table(), ["faceswap"], test_fraction=0.2, val_fraction=0.1, seed=1)
    ids = {k: set(v["identity"][v["source"] != "faceswap"]) for k, v in parts.items()}
    assert not ids["pool"] & ids["test"] and not ids["pool"] & ids["val"] and not ids["val"] & ids["test"]
    assert (parts["test"]["source"] == "faceswap").sum() == 40  # every faceswap image, whatever its identity
    assert "faceswap" not in set(parts["pool"]["source"]) | set(parts["val"]["source"])
    assert sum(len(p) for p in parts.values()) == len(corpus_table())
    again = holdout(corpus_table(), ["faceswap"], test_fraction=0.2, val_fraction=0.1, seed=1)
    assert all(parts[k]["path"].tolist() == again[k]["path"].tolist() for k in parts)


def test_bad_requests_are_clear():
    with pytest.raises(ManifestError, match="not fake sources"):
        holdout(corpus_table(), ["gan"])
    with pytest.raises(ManifestError, match="nothing to train"):
        holdout(corpus_table(), ["splice", "faceswap"])


def test_holdout_command(tmp_path):
    df = corpus_table()
    for p in df["path"]:
        (tmp_path / p).write_bytes(b"x")
    write_manifest(df, tmp_path / "m.parquet")
    assert main(["holdout", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "h"), "--holdout-source", "faceswap"]) == 0
    sizes = {k: len(read_manifest(tmp_path / "h" / f"{k}.parquet")) for k in ("pool", "val", "test")}
    assert sum(sizes.values()) == len(df) and min(sizes.values()) > 0


def test_a_real_dataset_is_held_out_with_the_fakes_made_from_it():
    df = corpus_table().assign(dataset=lambda d: ["wallpapers" if int(i.split("_")[0][1:]) < 4 else "lfw" for i in d["origin"]])
    parts = holdout(df, ["faceswap"], test_fraction=0.2, val_fraction=0.1, seed=1, holdout_datasets=["wallpapers"])
    assert (parts["test"]["dataset"] == "wallpapers").sum() == (df["dataset"] == "wallpapers").sum() == 24
    assert "wallpapers" not in set(parts["pool"]["dataset"]) | set(parts["val"]["dataset"])
    assert sum(len(p) for p in parts.values()) == len(df)
    with pytest.raises(ManifestError, match="not in the manifest's dataset column"):
        holdout(df, [], holdout_datasets=["flickr"])
    with pytest.raises(ManifestError, match="no real image to train on"):
        holdout(df, [], holdout_datasets=["wallpapers", "lfw"])
