import numpy as np
import pandas as pd
import pytest
from PIL import Image

import hostile
from deepfake_moe.cli import main as cli_main
from deepfake_moe.data.balance import balance_weights, fine_detail, strata, weighted_auc
from deepfake_moe.data.manifest import read_manifest, write_manifest


def photo(rng: np.random.Generator, side: int, noise: float) -> np.ndarray:
    """A smooth colour field with Gaussian grain of std `noise` grey levels."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = np.stack([yy, xx, (yy + xx) / 2], -1) * 200 + 20
    return np.clip(base + rng.normal(0, noise, (side, side, 1)), 0, 255).astype(np.uint8)


def test_fine_detail_rises_with_grain_and_is_measured_at_the_view():
    rng = np.random.default_rng(0)
    values = [fine_detail(photo(rng, 96, n), 64) for n in (0, 2, 8, 32)]
    assert values == sorted(values) and values[-1] - values[0] > 2
    # the same grain at 256 px, shrunk to a 64 px view, averages away: detail is what the expert sees
    assert fine_detail(photo(rng, 256, 8), 64) < fine_detail(photo(rng, 64, 8), 64) - 0.5


def test_weights_draw_both_labels_alike_from_every_stratum():
    rng = np.random.default_rng(1)
    # fakes sharper than reals on average, and mostly large; the reals mostly small
    stats = pd.DataFrame({
        "detail": np.r_[rng.normal(0, 1, 600), rng.normal(1, 1, 400)],
        "short_side": np.r_[np.where(rng.random(600) < 0.7, 64, 200), np.where(rng.random(400) < 0.2, 64, 200)],
    })
    labels = np.r_[np.zeros(600, int), np.ones(400, int)]
    w = balance_weights(labels, strata(stats, bins=5))
    assert weighted_auc(labels, stats["detail"], np.ones(1000)) > 0.7
    assert abs(weighted_auc(labels, stats["detail"], w) - 0.5) < 0.03
    assert abs(weighted_auc(labels, stats["short_side"], w) - 0.5) < 0.01
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    # a stratum holding one label only is never drawn; an unmeasured image neither
    stats.loc[0, "detail"] = np.nan
    stats.loc[labels == 1, "short_side"] = np.where(stats.loc[labels == 1, "short_side"] == 64, 64, 700)
    w = balance_weights(labels, strata(stats, bins=5))
    assert w[0] == 0 and (w[labels == 1][stats.loc[labels == 1, "short_side"] == 700] == 0).all()
    with pytest.raises(ValueError, match="share no stratum"):
        balance_weights(labels, np.where(labels == 1, 0, 1))


def test_balance_command_writes_weights_training_can_use(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(60):
        label = i % 2
        noise = rng.uniform(0, 10) + 6 * label  # fakes grainier: detail alone would tell them
        path = tmp_path / f"{i}.png"
        Image.fromarray(photo(rng, int(rng.choice([48, 96])), noise)).save(path)
        rows.append({"path": str(path), "label": label, "source": "grain" if label else "real", "origin": str(i)})
    for name, data in (("broken.png", b"\x89PNG\r\n\x1a\n broken"), ("bomb.png", hostile.zero_bomb_png()),
                       ("lying.png", hostile.lying_png())):  # decoded in capped workers, refused, never fatal
        (tmp_path / name).write_bytes(data)
        rows.append({"path": str(tmp_path / name), "label": 0, "source": "real", "origin": name})
    write_manifest(pd.DataFrame(rows), tmp_path / "m.parquet")
    code = cli_main(["balance", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "b.parquet"), "--input-size", "32",
                     "--bins", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and "3 unreadable image(s)" in out  # the bad files are reported, the rest balanced
    df = read_manifest(tmp_path / "b.parquet")
    bad = df["origin"].str.endswith(".png")
    assert len(df) == 63 and (df.loc[bad, "weight"] == 0).all() and df.loc[bad, "detail"].isna().all()
    assert weighted_auc(df["label"], df["detail"], np.ones(63)) > 0.75
    assert abs(weighted_auc(df["label"], df["detail"], df["weight"]) - 0.5) < 0.1
    assert "under the weights" in out
