"""Training the mixture end to end on a test-sized split manifest (tiny models, 64 px, CPU)."""

import csv
import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deepfake_moe.cli import main as cli_main
from deepfake_moe.config import load_yaml
from deepfake_moe.data.dataset import ManifestDataset, TrainAugmentConfig, TrainBatchSampler, expert_rows, train_augment
from deepfake_moe.data.manifest import ManifestError, read_manifest, write_manifest
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.model.checkpoint import load_checkpoint
from deepfake_moe.train import loop
from deepfake_moe.train.config import OptimConfig, TrainConfig
from deepfake_moe.train.ema import ExpertEma
from deepfake_moe.train.loop import RunExistsError, train

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def make_split_manifest(folder: Path, n_origins: int = 20, corrupt: bool = False) -> Path:
    """n_origins reals (smooth images) and one fake each (a high-frequency pattern added); two clusters."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for o in range(n_origins):
        cluster = int(o >= n_origins // 2)
        base = cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3)).astype(np.uint8), (0, 0), 4)
        base = np.clip(base.astype(int) + (60 if cluster else -30), 0, 255).astype(np.uint8)
        check = ((np.indices((48, 48)).sum(0) % 2) * 80 - 40)[..., None]
        fake = np.clip(base.astype(int) + check, 0, 255).astype(np.uint8)
        for label, img in ((0, base), (1, fake)):
            name = f"{'real' if label == 0 else 'fake'}_{o:02d}.png"
            cv2.imwrite(str(folder / name), img[:, :, ::-1])
            rows.append({"path": str(folder / name), "label": label, "source": "real" if label == 0 else "checker",
                         "origin": f"o{o}", "cluster": cluster})
    if corrupt:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        rows.append({"path": str(folder / "broken.png"), "label": 1, "source": "checker", "origin": "broken", "cluster": 1})
    df = pd.DataFrame(rows)
    df["split_0"] = df["cluster"] == 0
    df["split_1"] = df["cluster"] == 1
    return write_manifest(df, folder / "manifest.csv")


def tiny_config(manifest: Path, **optim) -> TrainConfig:
    cfg = load_yaml(TrainConfig, TINY_CONFIG)
    cfg.data.manifest = str(manifest)
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return cfg


def test_tiny_config_trains_end_to_end(tmp_path):
    manifest = make_split_manifest(tmp_path / "data", corrupt=True)
    out = tmp_path / "run"
    model_dir = train(tiny_config(manifest), out)
    assert model_dir == out / "model"
    mixture, mcfg = load_checkpoint(model_dir)
    assert [e.backbone for e in mcfg.experts] == ["test_efficientnet", "test_resnet"]
    assert mcfg.preprocess.input_size == 64 and mcfg.preprocess.mode == "fast"
    assert all(np.isfinite(a) and 0 <= a <= 1 for a in mcfg.info["held_out_auc"])
    # the mixture holds each expert's best EMA weights
    for i, expert in enumerate(mixture.experts):
        best = load_file(str(out / "experts" / f"expert_{i}" / "best.safetensors"))
        for k, v in expert.state_dict().items():
            assert torch.equal(v, best[k]), k
    with torch.no_grad():
        p = mixture(torch.randn(2, 3, 64, 64))
    assert p.shape == (2,) and torch.all((p >= 0) & (p <= 1))
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r["loss"]]
    assert {r["expert"] for r in train_rows} == {"0", "1"}
    assert all(float(r["loss_kl"]) >= 0 and float(r["loss_ce"]) > 0 for r in train_rows)
    assert any(r["val_auc"] for r in rows)
    # the corrupt image sits in split 1's cluster: expert 0 trains on it, skips it and counts it
    assert max(int(r["skipped_images"]) for r in train_rows if r["expert"] == "0") >= 1
    assert "skipped_images: 0" not in (out / "experts" / "expert_0" / "result.yaml").read_text()
    assert (out / "config.yaml").is_file() and (out / "git_revision.txt").read_text().strip()
    assert load_yaml(TrainConfig, out / "config.yaml").data.manifest == str(manifest)
    # a second run into the same folder without --resume is refused, nothing is overwritten
    with pytest.raises(RunExistsError):
        train(tiny_config(manifest), out)


def test_optim_threads_sets_the_training_threads(tmp_path, monkeypatch):
    """optim.threads: what PyTorch computes with during training (0: every usable core, shared under torchrun)."""
    from deepfake_moe.config import ConfigError

    assert load_yaml(TrainConfig, TINY_CONFIG).optim.threads == 1  # the README's smoke run: one thread
    assert OptimConfig().threads == 0
    with pytest.raises(ConfigError, match="optim.threads"):
        tiny_config(make_split_manifest(tmp_path / "bad", n_origins=4), threads=-1).optim.__post_init__()
    manifest = make_split_manifest(tmp_path / "data", n_origins=10)
    calls, real = [], loop.set_threads
    monkeypatch.setattr(loop, "set_threads", lambda threads=None, processes=1: calls.append((threads, processes))
                        or real(threads, processes))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(tiny_config(manifest, threads=1, max_steps=1), tmp_path / "one")
        assert calls == [(1, 1)] and torch.get_num_threads() == 1
        train(tiny_config(manifest, threads=0, max_steps=1), tmp_path / "all")
        assert calls[-1] == (None, 1)  # set_threads(None): this process's share of the usable cores
    finally:
        torch.set_num_threads(before)


def test_resume_reaches_the_same_weights(tmp_path, monkeypatch):
    manifest = make_split_manifest(tmp_path / "data")
    def config():
        cfg = tiny_config(manifest, batch_size=4, grad_accum=2, max_steps=5)
        cfg.experts = cfg.experts[:1]
        cfg.checkpoint.every_steps = 1
        cfg.loss.vat_steps = 1  # exercises every random draw: augmentation, noise, VAT
        return cfg

    train(config(), tmp_path / "straight")

    real_update = ExpertEma.update
    def crash_at_step_4(self, model):
        if self.num_updates == 3:
            raise RuntimeError("simulated crash")
        real_update(self, model)
    monkeypatch.setattr(ExpertEma, "update", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config(), tmp_path / "resumed")
    state = loop.load_training_state(tmp_path / "resumed" / "experts" / "expert_0" / "last.pt")
    assert state["state"]["step"] == 3 and state["state"]["step_in_epoch"] == 1  # mid-epoch
    monkeypatch.setattr(ExpertEma, "update", real_update)
    train(config(), tmp_path / "resumed", resume=True)

    a = loop.load_training_state(tmp_path / "straight" / "experts" / "expert_0" / "last.pt")
    b = loop.load_training_state(tmp_path / "resumed" / "experts" / "expert_0" / "last.pt")
    assert a["state"] == b["state"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for x, y in zip(a["ema"]["shadow"], b["ema"]["shadow"]):
        assert torch.equal(x, y)
    wa = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with open(tmp_path / "resumed" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["loss"]]
    assert steps == [1, 2, 3, 4, 5]  # rows logged after the checkpoint were dropped, then redone


def test_cli_one_expert_at_a_time_then_merge(tmp_path):
    manifest = make_split_manifest(tmp_path / "data")
    cfg = tiny_config(manifest, max_steps=1)
    cfg.loss.kl_weight = 0.0
    from deepfake_moe.config import save_yaml
    save_yaml(cfg, tmp_path / "cfg.yaml")
    out = tmp_path / "run"
    assert cli_main(["train", str(tmp_path / "cfg.yaml"), "--out", str(out), "--expert", "1"]) == 0
    assert not (out / "model").exists()
    assert cli_main(["merge-experts", str(out)]) == 2  # expert 0 not trained yet: a clear error
    assert cli_main(["train", str(tmp_path / "cfg.yaml"), "--out", str(out), "--expert", "0"]) == 0
    assert cli_main(["merge-experts", str(out)]) == 0
    mixture, mcfg = load_checkpoint(out / "model")
    assert len(mixture.experts) == 2 and mcfg.info["splits"] == [0, 1]
    # The merged model comes with its uncertainty statistics, fitted on its training manifest.
    assert mixture.distances is not None and mcfg.uncertainty.info["manifest"] == str(cfg.data.manifest)
    assert cli_main(["train", str(tmp_path / "cfg.yaml"), "--out", str(out), "--expert", "0"]) == 2


def test_expert_rows_from_split_columns_and_random_origins(tmp_path):
    df = pd.read_csv(make_split_manifest(tmp_path / "data"))
    tr, va = expert_rows(df, 1)
    assert va.sum() == 20 and (df["cluster"][va] == 1).all() and not (tr & va).any()
    plain = df.drop(columns=["split_0", "split_1"])
    tr, va = expert_rows(plain, 0, val_fraction=0.25, seed=3)
    assert va.sum() == 10  # 5 of 20 origins, with both of their images
    assert set(plain["origin"][va]).isdisjoint(set(plain["origin"][tr]))
    tr1, va1 = expert_rows(plain, 1, val_fraction=0.25, seed=3)
    assert not np.array_equal(va, va1)  # each expert holds out its own origins


def test_an_expert_can_learn_from_some_fake_sources_only(tmp_path):
    from deepfake_moe.train.config import ExpertConfig

    df = pd.read_csv(make_split_manifest(tmp_path / "data"))
    df.loc[df.index[df["label"] == 1][::2], "source"] = "splice"  # half the fakes are a local edit
    cfg = tiny_config(tmp_path / "data" / "manifest.csv")
    cfg.experts = [ExpertConfig("npr_test", split=0, fake_sources=["checker"])]
    tr, va = loop.expert_masks(df, cfg, 0)
    for mask in (tr, va):
        assert set(df["source"][mask]) == {"real", "checker"} and (df["label"][mask] == 0).any()
    assert (df["label"][tr | va] == 0).sum() == (df["label"] == 0).sum()  # every real stays
    cfg.experts[0].fake_sources = ["gan"]
    with pytest.raises(ManifestError, match="not fake sources"):
        loop.expert_masks(df, cfg, 0)


def test_paired_reals_keeps_only_the_reals_its_training_fakes_were_made_from(tmp_path):
    from deepfake_moe.train.config import ExpertConfig

    df = pd.read_csv(make_split_manifest(tmp_path / "data"))
    cfg = tiny_config(tmp_path / "data" / "manifest.csv")
    cfg.experts = [ExpertConfig("npr_test", split=0)]
    tr_all, va_all = loop.expert_masks(df, cfg, 0)
    fakes = df.index[tr_all & (df["label"] == 1)]
    df.loc[fakes[::2], "origin"] = "elsewhere"  # half the training fakes come from no real of the manifest
    cfg.experts[0].paired_reals = True
    tr, va = loop.expert_masks(df, cfg, 0)
    made_from = set(df.loc[tr & (df["label"] == 1), "origin"])
    reals = tr & (df["label"] == 0)
    assert reals.any() and set(df.loc[reals, "origin"]) <= made_from
    assert reals.sum() < (tr_all & (df["label"] == 0)).sum()  # the unpaired reals left training
    assert (tr & (df["label"] == 1)).sum() == (tr_all & (df["label"] == 1)).sum()  # every fake stays
    assert np.array_equal(va, va_all)  # model selection still sees every held-out real
    # pairing follows the fakes the expert trains on: a real whose only fake is of another source leaves
    df = pd.read_csv(make_split_manifest(tmp_path / "data"))
    edited = df.index[tr_all & (df["label"] == 1)][::2]
    df.loc[edited, "source"] = "splice"
    cfg.experts[0].fake_sources = ["checker"]
    tr, _ = loop.expert_masks(df, cfg, 0)
    kept = set(df.loc[tr & (df["label"] == 0), "origin"])
    assert kept == set(df.loc[tr_all & (df["source"] == "checker"), "origin"]) and kept


def test_distillation_reads_each_images_teacher_probability(tmp_path):
    manifest = make_split_manifest(tmp_path / "data")
    cfg = tiny_config(manifest)
    cfg.experts = cfg.experts[:1]
    cfg.loss.distill_weight = 1.0
    with pytest.raises(ManifestError, match="no 'teacher' column"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    df = read_manifest(manifest)
    df["teacher"] = np.where(df["label"] == 1, 0.5, np.nan)
    write_manifest(df, manifest)
    with pytest.raises(ManifestError, match=r"20 row\(s\) lack a teacher probability"):
        train(cfg, tmp_path / "run")
    # a teacher as sure as the labels trains the same weights as the labels: each image got its own value
    df["teacher"] = df["label"].astype(float)
    write_manifest(df, manifest)
    weights = {}
    for w in (1.0, 0.0):
        cfg.loss.distill_weight = w
        weights[w] = load_file(str(train(cfg, tmp_path / f"run_{w}") / "model.safetensors"))
    assert all(torch.allclose(weights[1.0][k], weights[0.0][k], atol=1e-5) for k in weights[0.0])
    # one expert's own loss settings: it distils, the run's default does not
    cfg.loss.distill_weight = 0.0
    cfg.experts[0].loss = {"distill_weight": 1.0}
    own = load_file(str(train(cfg, tmp_path / "own") / "model.safetensors"))
    assert all(torch.allclose(own[k], weights[1.0][k], atol=1e-5) for k in own)
    cfg.experts[0].loss = {}
    # a teacher that disagrees with the labels trains other weights
    df["teacher"] = 1.0 - df["label"]
    write_manifest(df, manifest)
    cfg.loss.distill_weight = 1.0
    inverted = load_file(str(train(cfg, tmp_path / "inverted") / "model.safetensors"))
    assert not all(torch.allclose(inverted[k], weights[0.0][k], atol=1e-3) for k in weights[0.0])


def test_teacher_joins_every_models_experts_onto_the_manifest(tmp_path, capsys):
    manifest = write_manifest(read_manifest(make_split_manifest(tmp_path / "data", n_origins=4)),
                              tmp_path / "data" / "split.parquet")
    assert cli_main(["predict", str(manifest), "--per-expert", "--out", str(tmp_path / "a.csv"), "--no-progress"]) == 0
    a = pd.read_csv(tmp_path / "a.csv")
    rows = read_manifest(manifest)
    assert sorted(a["path"]) == sorted(rows["path"])  # predict reads a manifest's images
    b = pd.DataFrame({"path": rows["path"][1:], "expert_0": 0.2})  # another model, which missed one image
    b.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "teacher.parquet"
    code = cli_main(["teacher", str(manifest), str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(out)])
    assert code == 1 and rows["path"][0] in capsys.readouterr().err
    taught = read_manifest(out)
    assert list(taught["path"]) == list(rows["path"][1:]) and "split_0" in taught.columns
    experts = a.set_index("path").filter(like="expert_")  # the built-in model's experts, however many
    expected = (experts.loc[taught["path"]].sum(axis=1).to_numpy() + 0.2) / (experts.shape[1] + 1)  # all alike
    assert np.allclose(taught["teacher"], expected, atol=1e-6)
    a.assign(path=[Path(p).name for p in a["path"]]).to_csv(tmp_path / "moved.csv", index=False)  # other paths
    assert cli_main(["teacher", str(manifest), str(tmp_path / "moved.csv"), "--out", str(out)]) == 2
    assert "only 0 of the manifest's 8 images are in it" in capsys.readouterr().err
    a[["path", "probability"]].to_csv(tmp_path / "plain.csv", index=False)  # scored without --per-expert
    assert cli_main(["teacher", str(manifest), str(tmp_path / "plain.csv"), "--out", str(out)]) == 2
    assert "--per-expert" in capsys.readouterr().err


def test_held_out_evaluation_at_epoch_ends_or_only_at_the_end(tmp_path):
    manifest = make_split_manifest(tmp_path / "data")
    counts = {}
    for at_epoch_end in (True, False):
        cfg = tiny_config(manifest, epochs=3)
        cfg.eval.at_epoch_end = at_epoch_end
        out = train(cfg, tmp_path / f"run_{at_epoch_end}")
        with open(out.parent / "metrics.csv") as f:
            evals = [r for r in csv.DictReader(f) if r["val_auc"]]
        counts[at_epoch_end] = {e: sum(r["expert"] == e for r in evals) for e in ("0", "1")}
        assert all(np.isfinite(a) for a in load_checkpoint(out)[1].info["held_out_auc"])
    assert counts == {True: {"0": 3, "1": 3}, False: {"0": 1, "1": 1}}


def test_sampler_shards_resumes_and_balances():
    labels = np.array([0] * 10 + [1] * 30)
    full = TrainBatchSampler(labels, 4, seed=1)
    full.set_epoch(2)
    batches = list(full)
    assert len(batches) == 10 and len({k[0] for b in batches for k in b}) == 40
    full.set_epoch(2, start_batch=3)
    assert list(full) == batches[3:]
    shards = [TrainBatchSampler(labels, 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(2)
    keys = [k for s in shards for b in s for k in b]
    assert len(keys) == 40 and len({k[2] for k in keys}) == 40  # disjoint positions, same order
    bal = TrainBatchSampler(labels, 8, seed=0, balanced=True)
    drawn = np.array([labels[k[0]] for b in bal for k in b])
    assert 0.3 < drawn.mean() < 0.7


def test_sampler_draws_rows_in_proportion_to_their_weights():
    labels = np.array([0] * 20 + [1] * 20)
    weights = np.r_[np.zeros(10), np.ones(10), np.full(10, 3.0), np.ones(10)]
    drawn = []
    for epoch in range(50):
        s = TrainBatchSampler(labels, 8, seed=0, balanced=True, weights=weights)
        s.set_epoch(epoch)
        drawn += [k[0] for b in s for k in b]
    counts = np.bincount(drawn, minlength=40)
    assert counts[:10].sum() == 0  # weight 0: never drawn
    assert 0.45 < (labels[drawn] == 1).mean() < 0.55  # balanced: the labels' totals equal
    assert 2.4 < counts[20:30].sum() / counts[30:].sum() < 3.6
    # the weighted draw is the same on a resume, like the plain one
    s = TrainBatchSampler(labels, 8, seed=0, weights=weights)
    s.set_epoch(3)
    batches = list(s)
    s.set_epoch(3, start_batch=2)
    assert list(s) == batches[2:]


def test_a_manifest_weight_column_is_checked_before_training(tmp_path):
    manifest = make_split_manifest(tmp_path / "data")
    cfg = tiny_config(manifest)
    df = read_manifest(manifest)
    for bad, message in ((np.where(df["label"] == 1, -1.0, 1.0), r"10 of expert 0's training rows have a 'weight' that is not a number"),
                         (np.where(df["label"] == 1, 0.0, 1.0), "every fake row of expert 0's training rows has weight 0")):
        df["weight"] = bad
        write_manifest(df, manifest)
        with pytest.raises(ManifestError, match=message):
            train(cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    # checked per expert: expert 0 could draw no fake, although the manifest's fakes have weight
    df["weight"] = np.where((df["label"] == 1) & ~df["split_0"].astype(bool), 0.0, 1.0)
    write_manifest(df, manifest)
    with pytest.raises(ManifestError, match="every fake row of expert 0's training rows has weight 0"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # valid weights reach the expert's sampler, row for row
    df["weight"] = np.arange(len(df), dtype=float)
    masks = loop.expert_masks(df, cfg, 0)
    data = loop.expert_data(cfg, 0, df, masks, PreprocessConfig(input_size=32), loop.setup_processes("cpu"))
    np.testing.assert_array_equal(data.sampler.weights, df["weight"].to_numpy()[masks[0]])


def test_balance_bins_draws_each_experts_reals_and_fakes_alike(tmp_path):
    from deepfake_moe.data.balance import strata, weighted_auc

    manifest = make_split_manifest(tmp_path / "data")
    cfg = tiny_config(manifest)
    cfg.data.balance_bins = 2
    with pytest.raises(ManifestError, match="deepfake-moe balance"):
        train(cfg, tmp_path / "run")
    # these fakes carry a pattern the reals lack, so their measured detail never overlaps: made-up numbers
    df = read_manifest(manifest)
    rng = np.random.default_rng(0)
    df["detail"], df["short_side"], df["detail_view"] = rng.normal(df["label"] * 0.8, 1.0), 64.0, 32
    write_manifest(df, manifest)
    with pytest.raises(ManifestError, match=r"measured at \[32\] px, but this run's images are 64 px"):
        train(cfg, tmp_path / "run")
    df["detail_view"] = cfg.data.input_size
    df["weight"] = 0.0  # replaced by the strata's weights, not multiplied
    write_manifest(df, manifest)
    for i in range(len(cfg.experts)):
        masks = loop.expert_masks(df, cfg, i)
        w = loop.expert_data(cfg, i, df, masks, PreprocessConfig(input_size=32), loop.setup_processes("cpu")).sampler.weights
        rows = df[masks[0]]
        assert w.sum() > 0 and w[rows["label"] == 0].sum() == pytest.approx(w[rows["label"] == 1].sum())
        stratum = strata(rows, 2)  # the expert's own rows are stratified, after its split's held-out cluster left
        for k in np.unique(stratum):
            share = [w[(stratum == k) & (rows["label"] == c).to_numpy()].sum() for c in (0, 1)]
            assert share[0] == pytest.approx(share[1])
        assert abs(weighted_auc(rows["label"], rows["detail"], w) - 0.5) < abs(
            weighted_auc(rows["label"], rows["detail"], np.ones(len(rows))) - 0.5)
    assert train(cfg, tmp_path / "run") == tmp_path / "run" / "model"


def test_augmentation_is_deterministic_per_sample(tmp_path):
    manifest = pd.read_csv(make_split_manifest(tmp_path / "data", n_origins=2))
    paths = [str(tmp_path / "data" / p) for p in manifest["path"]]
    cfg = TrainAugmentConfig(flip_p=1.0, color_p=1.0, resize_p=1.0, blur_p=1.0, jpeg_p=1.0)
    ds = ManifestDataset(paths, manifest["label"], PreprocessConfig(input_size=32, mode="fast"), cfg, seed=5)
    a, b, c = ds[(0, 1, 7)], ds[(0, 1, 7)], ds[(0, 2, 7)]
    assert a["image"].shape == (3, 32, 32) and torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    plain = ds[0]["image"]  # an int key (evaluation) is never augmented
    assert torch.equal(plain, ManifestDataset(paths, manifest["label"], PreprocessConfig(input_size=32, mode="fast"))[0]["image"])
    rgb = np.full((40, 30, 3), 128, np.uint8)
    out = train_augment(rgb, np.random.default_rng(0), cfg)
    assert out.dtype == np.uint8 and out.ndim == 3
    assert "error" in ManifestDataset([str(tmp_path / "nope.png")], [0], PreprocessConfig(input_size=32))[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_on_cpu(precision):
    from timm.optim import create_optimizer_v2

    from deepfake_moe.model.expert import Expert
    from deepfake_moe.train.config import LossConfig

    torch.manual_seed(0)
    expert = Expert("test_efficientnet")
    step = loop.ExpertTrainStep(expert, LossConfig(vat_steps=1)).train()
    optimizer = create_optimizer_v2(expert, "adamw", lr=1e-3)
    # a small initial scale: the default 2**16 overflows fp16 at once and skips the first step
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=precision == "fp16")
    before = [p.detach().clone() for p in expert.parameters()]
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with loop.autocast(precision, torch.device("cpu")):
        loss, parts = step(x, torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(loss) and parts.shape == (3,) and parts.dtype == torch.float32
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(a, b) for a, b in zip(before, expert.parameters()))


def test_early_stopping_keeps_the_best_evaluation(tmp_path, monkeypatch):
    manifest = make_split_manifest(tmp_path / "data")
    cfg = tiny_config(manifest, max_steps=20)
    cfg.experts = cfg.experts[:1]
    cfg.eval.every_steps = 1
    cfg.eval.patience = 2
    aucs = iter([0.9, 0.8, 0.85, 0.7, 0.99])
    monkeypatch.setattr(loop, "held_out_auc", lambda *a, **k: (next(aucs), 20, 0))
    train(cfg, tmp_path / "run")
    result = (tmp_path / "run" / "experts" / "expert_0" / "result.yaml").read_text()
    assert "best_step: 1\n" in result and "steps: 3\n" in result and "stopped_early: true" in result
    _, mcfg = load_checkpoint(tmp_path / "run" / "model")
    assert mcfg.info["held_out_auc"] == [0.9]


def test_pretrained_experts_start_fine_tuning_near_chance():
    """A fresh 2-class head on pretrained features must not start with huge logits (first loss near log 2)."""
    import torch.nn.functional as F

    from deepfake_moe.model.expert import Expert
    from deepfake_moe.train.config import ExpertConfig
    from deepfake_moe.train.loop import init_pretrained

    torch.manual_seed(0)
    expert = Expert("efficientnet_lite0")
    init_pretrained(expert, ExpertConfig("efficientnet_lite0", pretrained="offline"), 0)
    with torch.no_grad():
        logits = expert.eval()(torch.randn(8, 3, 64, 64))
    loss = F.cross_entropy(logits, torch.tensor([0, 1] * 4))
    assert abs(loss.item() - math.log(2)) < 0.1


def test_missing_images_stop_training_before_anything_is_written(tmp_path):
    manifest = make_split_manifest(tmp_path / "data", n_origins=4)
    for name in ("real_00.png", "fake_01.png"):
        (tmp_path / "data" / name).unlink()
    with pytest.raises(ManifestError, match=r"2 of 8 file\(s\) listed in .*manifest.csv do not exist") as e:
        train(tiny_config(manifest), tmp_path / "run")
    assert "real_00.png" in str(e.value) and not (tmp_path / "run").exists()


def test_a_run_that_failed_before_a_checkpoint_can_be_retried_with_a_fixed_config(tmp_path, monkeypatch, capsys):
    manifest = make_split_manifest(tmp_path / "data", n_origins=4)
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(loop, "train_expert", crash)
    with pytest.raises(RuntimeError):
        train(tiny_config(manifest, batch_size=4096), out)
    trained = []
    monkeypatch.setattr(loop, "train_expert", lambda config, out, i, *a: trained.append(i))
    fixed = tiny_config(manifest, batch_size=8)
    assert train(fixed, out) is None  # the fake train_expert finishes nothing
    assert trained == [0, 1] and "replacing its config" in capsys.readouterr().err
    assert load_yaml(TrainConfig, out / "config.yaml").optim.batch_size == 8
    # once an expert holds a checkpoint, another config is refused as before
    (out / "experts" / "expert_0").mkdir(parents=True)
    (out / "experts" / "expert_0" / "last.pt").write_bytes(b"state")
    with pytest.raises(RunExistsError):
        train(tiny_config(manifest, batch_size=16), out)


def test_an_expert_can_fine_tune_a_trained_detector(tmp_path):
    """init_from: an expert starts from a trained model's expert (head and input normalisation included)."""
    from deepfake_moe.errors import ConfigError
    from deepfake_moe.train.config import ExpertConfig
    from deepfake_moe.train.loop import build_expert

    manifest = make_split_manifest(tmp_path / "data")
    source_cfg_train = tiny_config(manifest, max_steps=4)
    source_dir = train(source_cfg_train, tmp_path / "source")
    source, source_cfg = load_checkpoint(source_dir)
    data = source_cfg_train.data
    expert, view, _ = build_expert(ExpertConfig("test_resnet", init_from=str(source_dir)), data, seed=5, position=1)
    for k, v in source.experts[1].state_dict().items():
        assert torch.equal(expert.state_dict()[k], v), k
    assert view == source_cfg.preprocess
    with pytest.raises(ConfigError, match="is a test_efficientnet, not a test_resnet"):
        build_expert(ExpertConfig("test_resnet", init_from=str(source_dir), init_expert=0), data, seed=5, position=1)
    with pytest.raises(ConfigError, match="no expert 2"):
        build_expert(ExpertConfig("test_resnet", init_from=str(source_dir)), data, seed=5, position=2)
    # it reads images as the source did, unless the expert is given its own view
    other = dataclasses.replace(data, input_size=96)
    with pytest.raises(ConfigError, match="reads 64 px images"):
        build_expert(ExpertConfig("test_resnet", init_from=str(source_dir)), other, seed=5, position=1)
    own = PreprocessConfig(input_size=96)
    _, view, _ = build_expert(ExpertConfig("test_resnet", init_from=str(source_dir), preprocess=own), other, 5, 1)
    assert view.input_size == 96 and view.mean == source_cfg.preprocess.mean
    with pytest.raises(ConfigError, match="not both"):
        ExpertConfig("efficientnet_lite0", pretrained="offline", init_from="default")
    with pytest.raises(ConfigError, match="init_expert needs init_from"):
        ExpertConfig("efficientnet_lite0", init_expert=1)
    # a whole run fine-tunes from it, and the result keeps the source's normalisation
    cfg = tiny_config(manifest, max_steps=2)
    for e in cfg.experts:
        e.init_from = str(source_dir)
    _, tuned_cfg = load_checkpoint(train(cfg, tmp_path / "tuned"))
    assert [v.mean for v in tuned_cfg.views()[0]] == [source_cfg.preprocess.mean]
