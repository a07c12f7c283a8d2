"""Training the mixture (docs/method.md Stage II), top to bottom.

`train(config, out_dir)` trains every expert in turn (expert i on split F_i, selected by AUC on
its held-out cluster), then `merge_experts(out_dir)` folds each expert's best EMA weights into
one mixture checkpoint (`OUT/model/`) that `predict` loads. The same code runs as one process
or under `torchrun --nproc_per_node N` (DistributedDataParallel: NCCL on GPUs, gloo on CPU).

Run folder:
    OUT/config.yaml, OUT/git_revision.txt, OUT/metrics.csv, OUT/tensorboard/ (if installed)
    OUT/experts/expert_<i>/last.pt           training state (resume), saved atomically
    OUT/experts/expert_<i>/best.safetensors  best EMA weights by held-out AUC
    OUT/experts/expert_<i>/result.yaml       written when the expert is finished
    OUT/model/                               the mixture checkpoint (model.safetensors + model.yaml)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from deepfake_moe.config import ConfigError, load_yaml, save_yaml, to_dict
from deepfake_moe.data.balance import STAT_COLUMNS, VIEW_COLUMN, balance_weights, strata
from deepfake_moe.data.dataset import (
    ManifestDataset,
    PooledLoader,
    TrainBatchSampler,
    collate_skipping_errors,
    eval_batches,
    expert_rows,
)
from deepfake_moe.data.manifest import WEIGHT_COLUMN, ManifestError, check_files, read_manifest
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.io import atomic_path, atomic_write
from deepfake_moe.model.expert import Expert
from deepfake_moe.runtime import autocast, resolve_device, set_threads
from deepfake_moe.train.config import DataConfig, ExpertConfig, LossConfig, OptimConfig, TrainConfig
from deepfake_moe.train.ema import ExpertEma
from deepfake_moe.train.losses import (
    ce_loss,
    consistency_loss,
    frozen_batchnorm_stats,
    real_contrastive_loss,
)

METRIC_COLUMNS = (
    "expert", "epoch", "step", "lr", "loss", "loss_ce", "loss_nce", "loss_kl",
    "images_per_s", "val_auc", "val_images", "skipped_images",
)


class RunExistsError(ConfigError):
    """The output folder already holds this expert's training; pass --resume or another --out."""


# ----------------------------------------------------------------------------- processes
@dataclass
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_processes(device_pref: str = "auto") -> Processes:
    """One process, or this process's place under torchrun (WORLD_SIZE/RANK/LOCAL_RANK set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank if world_size > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size, device)


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------- model + loss
class ExpertTrainStep(nn.Module):
    """An expert and its training loss in one forward, so DDP sees every pass (clean and perturbed).

    Returns (total loss, detached [L_ce, L_nce, L_kl]); total = w_ce*L_ce + w_nce*L_nce + w_kl*L_kl.
    """

    def __init__(self, expert: Expert, loss: LossConfig):
        super().__init__()
        self.expert = expert
        self.loss = loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.loss
        logits, feats = self.expert.forward_with_features(images)
        l_ce = ce_loss(logits, labels, teacher, cfg.distill_weight)
        zero = logits.sum().float() * 0.0
        l_nce = real_contrastive_loss(feats, labels, cfg.nce_temperature) if cfg.nce_weight else zero
        if cfg.kl_weight:
            with frozen_batchnorm_stats(self.expert):
                l_kl = consistency_loss(
                    self.expert, images, logits, cfg.noise, cfg.noise_std, cfg.vat_steps, cfg.vat_xi
                )
        else:
            l_kl = zero
        total = cfg.ce_weight * l_ce + cfg.nce_weight * l_nce + cfg.kl_weight * l_kl
        return total, torch.stack([l_ce, l_nce, l_kl]).detach()


def init_pretrained(expert: Expert, spec: ExpertConfig, position: int) -> dict[str, Any]:
    """Pretrained initialisation of the backbone ("none" keeps timm's random init), or a trained detector's
    expert (`init_from`; `position`: this expert's place in the list, the default `init_expert`)."""
    if spec.init_from:
        return init_from_detector(expert, spec, position)
    if spec.pretrained == "none":
        return {}
    from deepfake_moe.model.pretrained import init_backbone

    report = init_backbone(expert, spec.backbone, spec.pretrained)
    # timm initialises a 2-class head with weights up to 1/sqrt(2): on pretrained features that gives
    # logits in the tens and a first loss near 5. A small head starts the fine-tuning near chance.
    head = expert.backbone.get_classifier()
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return report


def init_from_detector(expert: Expert, spec: ExpertConfig, position: int) -> dict[str, Any]:
    """Load expert `init_expert` of the model `init_from`; returns its input normalisation."""
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(None if spec.init_from == "default" else spec.init_from)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"init_from {spec.init_from}: fine-tuning needs PyTorch weights, not an ONNX file")
    index = position if spec.init_expert is None else spec.init_expert
    if not 0 <= index < len(config.experts):
        raise ConfigError(f"init_from {spec.init_from} has {len(config.experts)} expert(s); there is no expert {index}")
    source = config.experts[index]
    if source.backbone != spec.backbone:
        raise ConfigError(f"init_from {spec.init_from}: its expert {index} is a {source.backbone}, not a {spec.backbone}")
    expert.load_state_dict(model.experts[index].state_dict())
    view = source.preprocess or config.preprocess
    return {"source": f"{spec.init_from}#{index}", "mean": view.mean, "std": view.std, "view": view}


def freeze_parameters(expert: Expert, prefixes: list[str]) -> int:
    """Stop gradients for backbone parameters whose name starts with one of `prefixes`; returns how many."""
    if not prefixes:
        return 0
    names = [n for n, _ in expert.backbone.named_parameters()]
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise ConfigError(f"freeze: no parameter of {expert.backbone_name} starts with {unmatched}")
    frozen = 0
    for name, param in expert.backbone.named_parameters():
        if name.startswith(tuple(prefixes)):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def normalisation_of(report: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The input mean/std the pretrained weights expect (ImageNet's for a random init)."""
    from deepfake_moe.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean, std = report.get("mean", IMAGENET_MEAN), report.get("std", IMAGENET_STD)
    return [float(v) for v in mean], [float(v) for v in std]


# ----------------------------------------------------------------------------- state on disk
@dataclass
class TrainState:
    """Where an expert's training stands; with the weights and RNG states, enough to resume exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best_auc: float = -1.0
    best_step: int = -1
    evals_since_best: int = 0
    last_eval_step: int = -1
    skipped_images: int = 0


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(procs: Processes) -> list[dict[str, Any]]:
    mine = {k: v.cpu() for k, v in rng_state(procs.device).items()}
    if not procs.distributed:
        return [mine]
    states: list[Any] = [None] * procs.world_size
    dist.all_gather_object(states, mine)
    return states


def save_training_state(path: Path, parts: dict[str, Any]) -> None:
    """torch.save of plain types and tensors only (loadable with weights_only=True), atomically."""
    with atomic_path(path) as tmp:
        torch.save(parts, tmp)


def load_training_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"


class MetricsLog:
    """OUT/metrics.csv (one row per optimizer step and per evaluation) and TensorBoard if installed."""

    def __init__(self, out: Path, enabled: bool):
        self.path = out / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                self.writer = None

    def rewind(self, expert: int, step: int) -> None:
        """On resume, drop this expert's rows logged after the checkpoint (they will be redone)."""
        if not self.enabled or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if not (int(r["expert"]) == expert and int(r["step"]) > step)]
        with atomic_write(self.path, newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def log(self, **row: Any) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
        if self.writer is not None:
            for k in ("lr", "loss", "loss_ce", "loss_nce", "loss_kl", "images_per_s", "val_auc"):
                if row.get(k) is not None:
                    self.writer.add_scalar(f"expert_{row['expert']}/{k}", row[k], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def held_out_auc(
    model: nn.Module, dataset: ManifestDataset, procs: Processes, batch_size: int,
    num_workers: int, precision: str, channels_last: bool,
) -> tuple[float, int, int]:
    """(ROC AUC, images scored, unreadable images) over the held-out rows, shared across processes."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    loader = PooledLoader(
        dataset, eval_batches(len(dataset), batch_size, procs.rank, procs.world_size), collate_skipping_errors,
        num_workers,
    )
    indices, probs, errors = [], [], 0
    for batch in loader:
        errors += len(batch["errors"])
        if batch["images"].numel() == 0:
            continue
        x = batch["images"].to(procs.device, non_blocking=True)
        if channels_last and x.dim() == 4:  # (B, T, 3, S, S): T crops of each image
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, procs.device):
            probs.append(model.fake_probability(x).cpu().numpy())
        indices.append(batch["indices"].numpy())
    mine = (np.concatenate(indices) if indices else np.empty(0, np.int64),
            np.concatenate(probs) if probs else np.empty(0, np.float32), errors)
    parts: list[Any] = [mine]
    if procs.distributed:
        parts = [None] * procs.world_size
        dist.all_gather_object(parts, mine)
    idx = np.concatenate([p[0] for p in parts])
    prob = np.concatenate([p[1] for p in parts])
    errors = sum(p[2] for p in parts)
    labels = dataset.labels[idx]
    if len(np.unique(labels)) < 2:
        return float("nan"), len(idx), errors
    return float(roc_auc_score(labels, prob)), len(idx), errors


# ----------------------------------------------------------------------------- one expert
# Training one expert, as torchvision's reference scripts read: build, resume, the step loop
# (evaluation and checkpoints inside it), the result. `ExpertRun` holds what the steps share.
@dataclass
class ExpertData:
    """Expert i's rows: it trains on those outside its held-out cluster and is scored on that cluster."""

    train_set: ManifestDataset
    val_set: ManifestDataset
    sampler: TrainBatchSampler
    loader: PooledLoader
    teacher: torch.Tensor | None = None  # the training rows' teacher probabilities (loss.distill_weight > 0)


@dataclass
class ExpertRun:
    """One expert's training: its model, optimiser, data and where it stands (`state`)."""

    config: TrainConfig
    index: int
    split: int
    work: Path  # OUT/experts/expert_<i>
    procs: Processes
    log: MetricsLog
    expert: Expert
    step_model: nn.Module  # ExpertTrainStep, DDP-wrapped under torchrun
    eval_model: Expert  # the weights evaluated: a copy of the EMA (or the raw) weights
    ema: ExpertEma | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    data: ExpertData
    steps_per_epoch: int
    total_steps: int
    optim: OptimConfig  # this expert's schedule (the run's optim with its own fields over it)
    loss: LossConfig  # this expert's loss settings
    epochs: int
    view: PreprocessConfig  # how the expert reads images (its normalisation included)
    frozen: int
    state: TrainState = dataclasses.field(default_factory=TrainState)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.optim.channels_last else torch.contiguous_format

    def should_stop(self) -> bool:
        patience = self.config.eval.patience
        return patience > 0 and self.state.evals_since_best >= patience

    def evaluate(self) -> float:
        """Held-out AUC of the EMA weights; the best ones so far go to best.safetensors."""
        from safetensors.torch import save_file

        state, procs, opt = self.state, self.procs, self.config.optim
        broadcast_buffers(self.expert, procs)
        self.eval_model.load_state_dict(self.ema.state_for(self.expert) if self.ema is not None else self.expert.state_dict())
        auc, n_scored, n_errors = held_out_auc(
            self.eval_model, self.data.val_set, procs, self.config.eval.batch_size, self.config.data.num_workers,
            opt.precision, opt.channels_last,
        )
        state.last_eval_step = state.step
        better = auc > state.best_auc  # nan (one class readable) never counts as better
        if better:
            state.best_auc, state.best_step, state.evals_since_best = auc, state.step, 0
            if procs.is_main:
                weights = {k: v.detach().contiguous().cpu() for k, v in self.eval_model.state_dict().items()}
                with atomic_path(self.work / "best.safetensors") as tmp:
                    save_file(weights, str(tmp), metadata={"auc": repr(auc), "step": str(state.step)})
        else:
            state.evals_since_best += 1
        self.log.log(expert=self.index, epoch=state.epoch, step=state.step, val_auc=auc, val_images=n_scored,
                     skipped_images=state.skipped_images + n_errors)
        if procs.is_main:
            tqdm.write(f"expert {self.index} step {state.step}: held-out AUC {auc:.4f} on {n_scored} images"
                       + (" (best)" if better else ""), file=sys.stderr)
        return auc

    def checkpoint(self) -> None:
        """OUT/experts/expert_<i>/last.pt: everything `resume_expert` needs to continue exactly."""
        rngs = gather_rng_states(self.procs)
        if self.procs.is_main:
            save_training_state(self.work / "last.pt", {
                "model": self.expert.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else {},
                "state": dataclasses.asdict(self.state),
                "rng": rngs,
            })


def train_expert(
    config: TrainConfig, out: Path, index: int, manifest, procs: Processes, resume: bool, log: MetricsLog,
) -> dict[str, Any]:
    """Train expert `index` on its split; returns its result (also written to result.yaml)."""
    work = out / "experts" / f"expert_{index}"
    if (work / "result.yaml").is_file():
        if not resume:
            raise RunExistsError(f"{work} already holds a finished expert; resume the run (train --resume) or choose another output folder")
        return _read_result(work)
    if (work / "last.pt").is_file() and not resume:
        raise RunExistsError(f"{work} holds a training state; resume it (train --resume) or choose another output folder")
    run = build_expert_run(config, work, index, manifest, procs, log)
    if resume and (work / "last.pt").is_file():
        resume_expert(run)
    start_training(run)
    while run.state.step < run.total_steps and run.state.epoch < run.epochs and not run.should_stop():
        train_one_epoch(run)
    if run.state.last_eval_step != run.state.step:  # e.g. resumed after the final checkpoint's evaluation
        run.evaluate()
    return finish_expert(run)


def expert_masks(manifest, config: TrainConfig, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of expert `index`; each must hold reals and fakes."""
    split, data = config.split_of(index), config.data
    try:
        train_mask, val_mask = expert_rows(manifest, split, data.val_fraction, data.random_split_seed)
    except ValueError as e:
        raise ManifestError(str(e)) from None
    labels = manifest["label"].to_numpy()
    fake_sources = config.experts[index].fake_sources
    if fake_sources:
        unknown = sorted(set(fake_sources) - set(manifest.loc[manifest["label"] == 1, "source"]))
        if unknown:
            raise ManifestError(f"expert {index}: fake_sources {unknown} are not fake sources of the manifest")
        kept = (labels == 0) | manifest["source"].isin(fake_sources).to_numpy()
        train_mask, val_mask = train_mask & kept, val_mask & kept
    if config.experts[index].paired_reals:
        made_from = manifest.loc[train_mask & (labels == 1), "origin"].unique()
        train_mask = train_mask & ((labels == 1) | manifest["origin"].isin(made_from).to_numpy())
    for name, mask in (("training", train_mask), ("held-out", val_mask)):
        counts = np.bincount(labels[mask], minlength=2)
        if min(counts) == 0:
            raise ManifestError(
                f"expert {index} (split {split}): the {name} rows need reals and fakes, got {counts[0]} real / {counts[1]} fake"
            )
    return train_mask, val_mask


def build_expert(spec: ExpertConfig, data: DataConfig, seed: int, position: int
                 ) -> tuple[Expert, PreprocessConfig, int]:
    """The expert initialised (same seed on every process): (model, its view of the images, frozen params).

    The model comes first: its pretrained weights fix the input normalisation. An expert fine-tuned from
    a detector (`init_from`) without a `preprocess` of its own must read images as that detector did.
    """
    torch.manual_seed(seed)
    expert = Expert(spec.backbone)
    report = init_pretrained(expert, spec, position)
    view = spec.view(data, *normalisation_of(report))
    source = report.get("view")
    # view took the source's normalisation; anything else that differs (size, mode, tiles) is refused
    if source is not None and spec.preprocess is None and view != dataclasses.replace(source, mean=view.mean, std=view.std):
        raise ConfigError(
            f"init_from {report['source']} reads {source.input_size} px images ({source.mode}, tiles {source.tiles}); "
            f"this run's data gives {view.input_size} px ({view.mode}, tiles {view.tiles}): set data.input_size / "
            "data.preprocess_mode to match, or give the expert its own `preprocess` to fine-tune it on another view")
    return expert, view, freeze_parameters(expert, spec.freeze)


def sampling_weights(rows, balance_bins: int) -> np.ndarray | None:
    """How often each training row is drawn: balanced strata (`data.balance_bins`), the `weight` column, or evenly."""
    if balance_bins:
        return balance_weights(rows["label"].to_numpy(), strata(rows, balance_bins))
    if WEIGHT_COLUMN not in rows.columns:
        return None
    return pd.to_numeric(rows[WEIGHT_COLUMN], errors="coerce").to_numpy(float)


def check_sampling(manifest, config: TrainConfig, indices: Sequence[int]) -> None:
    """Before any run folder exists: every expert's training rows can be drawn as the config asks."""
    what, bins = str(config.data.manifest), config.data.balance_bins
    if bins:
        missing = [c for c in (*STAT_COLUMNS, VIEW_COLUMN) if c not in manifest.columns]
        if missing:
            raise ManifestError(f"{what}: data.balance_bins is set but the manifest lacks {missing}; measure the "
                                f"images with `deepfake-moe balance MANIFEST -o OUT --input-size "
                                f"{config.data.input_size}` and train on OUT")
        views = sorted({int(v) for v in manifest[VIEW_COLUMN].dropna()})
        if views != [config.data.input_size]:
            raise ManifestError(f"{what}: its detail was measured at {views} px, but this run's images are "
                                f"{config.data.input_size} px: run `deepfake-moe balance` with --input-size "
                                f"{config.data.input_size}")
    elif WEIGHT_COLUMN not in manifest.columns:
        return
    for i in indices:
        rows = manifest[expert_masks(manifest, config, i)[0]]
        try:
            weights = sampling_weights(rows, bins)
        except ValueError as e:
            raise ManifestError(f"{what}: expert {i}'s training rows: {e}") from None
        bad = rows["path"][~(np.isfinite(weights) & (weights >= 0))]
        if len(bad):
            raise ManifestError(f"{what}: {len(bad)} of expert {i}'s training rows have a {WEIGHT_COLUMN!r} that "
                                f"is not a number >= 0, e.g. {bad.iloc[0]}")
        for label, name in ((0, "real"), (1, "fake")):
            if not weights[rows["label"].to_numpy() == label].sum() > 0:
                raise ManifestError(f"{what}: every {name} row of expert {i}'s training rows has {WEIGHT_COLUMN} 0, "
                                    "so none could be drawn")


def check_teacher(manifest, column: str, what: str) -> None:
    """Distillation reads every row's teacher fake probability, in [0, 1], from `column`."""
    if column not in manifest.columns:
        raise ManifestError(f"{what}: loss.distill_weight is set but the manifest has no {column!r} column "
                            "(the teacher's fake probabilities; see loss.distill_column)")
    values = pd.to_numeric(manifest[column], errors="coerce")
    bad = manifest["path"][~values.between(0.0, 1.0)]
    if len(bad):
        raise ManifestError(f"{what}: {len(bad)} row(s) lack a teacher probability in [0, 1] in column {column!r}, "
                            f"e.g. {bad.iloc[0]} (score them again or drop them)")


def expert_data(
    config: TrainConfig, index: int, manifest, masks: tuple[np.ndarray, np.ndarray], preprocess: PreprocessConfig,
    procs: Processes,
) -> ExpertData:
    """Expert `index`'s training and held-out datasets, its batch sampler (this process's shard) and loader."""
    opt, data = config.optim, config.data
    train_mask, val_mask = masks
    train_set = ManifestDataset(
        manifest["path"][train_mask], manifest["label"][train_mask], preprocess,
        data.augment, data.image_backend, seed=opt.seed,
    )
    val_set = ManifestDataset(manifest["path"][val_mask], manifest["label"][val_mask], preprocess, None, data.image_backend)
    weights = sampling_weights(manifest[train_mask], data.balance_bins)  # checked by check_sampling
    sampler = TrainBatchSampler(
        train_set.labels, opt.batch_size, opt.seed + index, data.balanced_sampling, procs.rank, procs.world_size, weights
    )
    loader = PooledLoader(
        train_set, sampler, collate_skipping_errors, data.num_workers, pin_memory=procs.device.type == "cuda"
    )
    teacher = None
    loss = config.loss_of(index)
    if loss.distill_weight:
        teacher = torch.tensor(manifest[loss.distill_column][train_mask].to_numpy(), dtype=torch.float32)
    return ExpertData(train_set, val_set, sampler, loader, teacher)


def build_expert_run(
    config: TrainConfig, work: Path, index: int, manifest, procs: Processes, log: MetricsLog,
) -> ExpertRun:
    """Model, data, optimiser, LR schedule, EMA and DDP wrapper of expert `index`, before its first step."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    spec, opt, data, loss = config.experts[index], config.optim_of(index), config.data, config.loss_of(index)
    masks = expert_masks(manifest, config, index)
    expert, preprocess, frozen = build_expert(spec, data, opt.seed + index, index)
    loaders = expert_data(config, index, manifest, masks, preprocess, procs)
    steps_per_epoch = loaders.sampler.batches_per_epoch // opt.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"expert {index}: {loaders.sampler.batches_per_epoch} batch(es) per epoch cannot fill one step of "
            f"grad_accum={opt.grad_accum}"
        )
    total_steps = opt.max_steps if opt.max_steps > 0 else opt.epochs * steps_per_epoch

    expert.to(procs.device, memory_format=torch.channels_last if opt.channels_last else torch.contiguous_format)
    ema = ExpertEma(expert, config.ema.decay, config.ema.warmup) if config.ema.enabled else None
    eval_model = copy.deepcopy(expert)
    optimizer = create_optimizer_v2(expert, "adamw", lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_steps, lr_min=opt.min_lr, warmup_t=opt.warmup_steps,
        warmup_lr_init=opt.warmup_lr, t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(procs.device.type, enabled=opt.precision == "fp16")
    # Per-process noise/dropout streams; replaced by the saved ones on resume.
    torch.manual_seed(opt.seed * 1_000_003 + index * 1_009 + procs.rank)
    return ExpertRun(
        config=config, index=index, split=config.split_of(index), work=work, procs=procs, log=log,
        expert=expert, step_model=ExpertTrainStep(expert, loss), eval_model=eval_model, ema=ema,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, data=loaders, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, optim=opt, loss=loss, epochs=math.ceil(total_steps / steps_per_epoch),
        view=preprocess, frozen=frozen,
    )


def resume_expert(run: ExpertRun) -> None:
    """Weights, optimiser, scaler, EMA, position and RNG streams from last.pt."""
    path = run.work / "last.pt"
    saved = load_training_state(path)
    if len(saved["rng"]) != run.procs.world_size:
        raise ConfigError(f"{path} was saved by {len(saved['rng'])} process(es); resume it with as many")
    run.expert.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scaler.load_state_dict(saved["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    run.state = TrainState(**saved["state"])
    set_rng_state(saved["rng"][run.procs.rank], run.procs.device)
    run.log.rewind(run.index, run.state.step)


def start_training(run: ExpertRun) -> None:
    """Position the LR schedule, wrap the training step for DDP, announce the expert."""
    from torch.nn.parallel import DistributedDataParallel

    procs = run.procs
    run.scheduler.step_update(run.state.step)
    if procs.distributed:
        run.step_model = DistributedDataParallel(
            run.step_model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None
        )
    if procs.is_main:
        run.work.mkdir(parents=True, exist_ok=True)
        train_set, val_set = run.data.train_set, run.data.val_set
        print(f"expert {run.index}: {run.config.experts[run.index].backbone}, split {run.split}: "
              f"{len(train_set)} training / {len(val_set)} held-out images, {run.total_steps} steps "
              f"({run.steps_per_epoch} per epoch)", file=sys.stderr)


class StepLosses:
    """The loss components and image count of the micro-batches of one optimizer step."""

    def __init__(self) -> None:
        self.parts, self.n_parts, self.seen, self.tic = torch.zeros(3), 0, 0, time.perf_counter()

    def add(self, components: torch.Tensor, n_images: int) -> None:
        self.parts += components.float().cpu()
        self.n_parts += 1
        self.seen += n_images

    def mean(self) -> list[float]:
        return (self.parts / max(self.n_parts, 1)).tolist()


def train_one_epoch(run: ExpertRun) -> None:
    """The rest of the current epoch: optimizer steps, with evaluations and checkpoints when due."""
    state, accum = run.state, run.config.optim.grad_accum
    every_eval, every_checkpoint = run.config.eval.every_steps, run.config.checkpoint.every_steps
    run.step_model.train()
    run.data.sampler.set_epoch(
        state.epoch, start_batch=state.step_in_epoch * accum, stop_batch=run.steps_per_epoch * accum
    )
    bar = tqdm(total=run.steps_per_epoch, initial=state.step_in_epoch, disable=not run.procs.is_main,
               desc=f"expert {run.index} epoch {state.epoch + 1}/{run.epochs}", file=sys.stderr, leave=False)
    losses = StepLosses()
    for micro, batch in enumerate(run.data.loader, start=1):
        last_micro = micro % accum == 0
        forward_backward(run, batch, losses, last_micro)
        if not last_micro:
            continue
        optimizer_step(run)
        log_step(run, losses, bar)
        losses = StepLosses()
        if every_eval and state.step % every_eval == 0:
            run.evaluate()
            run.step_model.train()
        if run.should_stop() or state.step >= run.total_steps:
            break
        if every_checkpoint and state.step % every_checkpoint == 0:
            run.checkpoint()
    bar.close()
    if state.step_in_epoch >= run.steps_per_epoch:
        state.epoch += 1
        state.step_in_epoch = 0
    finished = state.step >= run.total_steps or state.epoch >= run.epochs or run.should_stop()
    if state.last_eval_step != state.step and (run.config.eval.at_epoch_end or finished):
        run.evaluate()
    run.checkpoint()


def forward_backward(run: ExpertRun, batch: dict[str, Any], losses: StepLosses, last_micro: bool) -> None:
    """One micro-batch's loss and gradients; gradients are synchronised across processes on the last one."""
    procs, opt = run.procs, run.config.optim
    run.state.skipped_images += len(batch["errors"])
    for err in batch["errors"]:
        tqdm.write(f"skipped unreadable image: {err}", file=sys.stderr)
    # A micro-batch with < 2 readable images is skipped by every process together.
    n_readable = batch["images"].shape[0] if batch["images"].numel() else 0
    usable = torch.tensor(float(n_readable >= 2), device=procs.device)
    if procs.distributed:
        dist.all_reduce(usable, op=dist.ReduceOp.MIN)
    if usable.item():
        images = batch["images"].to(procs.device, non_blocking=True, memory_format=run.memory_format)
        labels = batch["labels"].to(procs.device, non_blocking=True)
        teacher = None if run.data.teacher is None else run.data.teacher[batch["indices"]].to(procs.device)
        no_sync = procs.distributed and not last_micro
        with run.step_model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(opt.precision, procs.device):
                loss, components = run.step_model(images, labels, teacher)
            run.scaler.scale(loss / opt.grad_accum).backward()
        losses.add(components, images.shape[0])
    elif last_micro and procs.distributed:
        _all_reduce_grads(run.expert, procs.world_size)  # the earlier micro-batches ran under no_sync


def optimizer_step(run: ExpertRun) -> None:
    """Clip, step (through the fp16 scaler), advance the LR schedule and the EMA."""
    opt, state = run.optim, run.state
    if opt.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.expert.parameters(), opt.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.step_in_epoch += 1
    run.scheduler.step_update(state.step)
    if run.ema is not None:
        run.ema.update(run.expert)


def log_step(run: ExpertRun, losses: StepLosses, bar: tqdm) -> None:
    """One metrics row per optimizer step (mean loss components, LR, throughput) and the progress bar."""
    state, weights = run.state, run.loss
    lr = run.optimizer.param_groups[0]["lr"]
    avg = losses.mean()
    total = weights.ce_weight * avg[0] + weights.nce_weight * avg[1] + weights.kl_weight * avg[2]
    rate = losses.seen * run.procs.world_size / max(time.perf_counter() - losses.tic, 1e-9)
    run.log.log(expert=run.index, epoch=state.epoch, step=state.step, lr=lr, loss=total, loss_ce=avg[0],
                loss_nce=avg[1], loss_kl=avg[2], images_per_s=rate, skipped_images=state.skipped_images)
    bar.set_postfix(loss=f"{total:.4f}", ce=f"{avg[0]:.3f}", lr=f"{lr:.2e}", refresh=False)
    bar.update(1)


def finish_expert(run: ExpertRun) -> dict[str, Any]:
    """The expert's result (result.yaml, written last: it marks the expert finished)."""
    spec, state, procs = run.config.experts[run.index], run.state, run.procs
    result = {
        "expert": run.index, "backbone": spec.backbone, "pretrained": spec.pretrained, "split": run.split,
        "init_from": spec.init_from, "best_auc": state.best_auc, "best_step": state.best_step, "steps": state.step,
        "stopped_early": run.should_stop(), "skipped_images": state.skipped_images,
        "train_images": len(run.data.train_set), "held_out_images": len(run.data.val_set),
        "mean": list(run.view.mean), "std": list(run.view.std), "frozen_parameters": run.frozen,
    }
    if procs.distributed:
        broadcast_buffers(run.expert, procs)
        digests = replica_digests(run.expert, procs)
        result["replicas_identical"] = len(set(digests)) == 1
        if not result["replicas_identical"]:
            tqdm.write(f"WARNING: expert {run.index}: the {procs.world_size} processes ended with different weights",
                       file=sys.stderr)
    if state.best_step < 0:
        raise ManifestError(f"expert {run.index}: no held-out AUC could be computed (are its images readable?)")
    if procs.is_main:
        with atomic_write(run.work / "result.yaml") as f:
            import yaml

            yaml.safe_dump(result, f, sort_keys=False)
    barrier(procs)
    return result


def broadcast_buffers(model: nn.Module, procs: Processes) -> None:
    """Rank 0's batch-norm statistics to every process (DDP syncs them only at each forward)."""
    if procs.distributed:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def replica_digests(model: nn.Module, procs: Processes) -> list[str]:
    """SHA-256 of every process's weights and buffers: DDP replicas must be bit-identical."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digests: list[Any] = [None] * procs.world_size
    dist.all_gather_object(digests, h.hexdigest())
    return digests


def _all_reduce_grads(model: nn.Module, world_size: int) -> None:
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


def _read_result(work: Path) -> dict[str, Any]:
    import yaml

    with open(work / "result.yaml") as f:
        return yaml.safe_load(f)


# ----------------------------------------------------------------------------- the run
def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    experts: Sequence[int] | None = None,
) -> Path | None:
    """Train the experts of `config` (all, or the indices in `experts`) into `out_dir`.

    Returns OUT/model (the mixture checkpoint) once every expert of the config is finished,
    else None (other experts still to train, e.g. one per machine with `experts=[i]`; then
    call `merge_experts(out_dir)`). Works alone or under torchrun (all processes call it).
    """
    out = Path(out_dir)
    indices = list(range(len(config.experts))) if experts is None else list(experts)
    bad = [i for i in indices if not 0 <= i < len(config.experts)]
    if bad:
        raise ConfigError(f"expert index {bad} out of range: the config lists {len(config.experts)} expert(s)")
    from deepfake_moe.model.backbones import BACKBONES, is_backbone

    unknown = [e.backbone for e in config.experts if not is_backbone(e.backbone)]
    if unknown:
        raise ConfigError(f"unknown backbone(s) {unknown}; see timm.list_models() and {sorted(BACKBONES)}")
    # every file is checked before anything is written: a wrong path fails here, not after an epoch
    manifest = read_manifest(config.data.manifest, root=config.data.root)
    check_files(manifest, what=str(config.data.manifest))
    losses = [config.loss_of(i) for i in indices]
    for column in sorted({loss.distill_column for loss in losses if loss.distill_weight}):
        check_teacher(manifest, column, str(config.data.manifest))
    check_sampling(manifest, config, indices)
    procs = setup_processes(config.optim.device)
    set_threads(config.optim.threads or None, processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if procs.is_main:
        claim_run_folder(out, config, resume)
    barrier(procs)
    log = MetricsLog(out, enabled=procs.is_main)
    try:
        for i in indices:
            train_expert(config, out, i, manifest, procs, resume, log)
    finally:
        log.close()
    barrier(procs)
    finished = all((out / "experts" / f"expert_{i}" / "result.yaml").is_file() for i in range(len(config.experts)))
    if not finished:
        return None
    if procs.is_main:
        merge_experts(out)
    barrier(procs)
    return out / "model"


def claim_run_folder(out: Path, config: TrainConfig, resume: bool) -> None:
    """Save the run's config; a folder holding another config is refused only once it holds
    checkpoints, so a run that failed before its first checkpoint can be retried with a fixed config."""
    out.mkdir(parents=True, exist_ok=True)
    saved_config = out / "config.yaml"
    if saved_config.is_file() and to_dict(load_yaml(TrainConfig, saved_config)) != to_dict(config):
        if any((out / "experts").glob("expert_*/*")):
            if resume:
                raise ConfigError(f"{saved_config} differs from the given config; resume needs the same one")
            raise RunExistsError(f"{out} holds a run with another config; choose another output folder")
        print(f"note: {out} holds no checkpoint yet; replacing its config with the given one", file=sys.stderr)
    if not any((out / "experts").glob("expert_*/*")):
        (out / "metrics.csv").unlink(missing_ok=True)  # rows of an attempt that never reached a checkpoint
    save_yaml(config, saved_config)
    with atomic_write(out / "git_revision.txt") as f:
        f.write(git_revision() + "\n")


def merge_experts(out_dir: str | os.PathLike) -> Path:
    """Fold every expert's best EMA weights (by held-out AUC) into one mixture checkpoint, OUT/model."""
    import yaml
    from safetensors.torch import load_file

    from deepfake_moe.model.checkpoint import ModelConfig, save_checkpoint
    from deepfake_moe.model.mixture import Mixture

    out = Path(out_dir)
    config = load_yaml(TrainConfig, out / "config.yaml")
    results, missing = [], []
    for i in range(len(config.experts)):
        work = out / "experts" / f"expert_{i}"
        if not (work / "result.yaml").is_file() or not (work / "best.safetensors").is_file():
            missing.append(i)
            continue
        with open(work / "result.yaml") as f:
            results.append(yaml.safe_load(f))
    if missing:
        raise ConfigError(f"{out}: expert(s) {missing} are not finished; train them (train --expert i) before merging")
    # Each expert keeps its own view; the first one's is the model's, the others differ from it or say nothing.
    views = [spec.view(config.data, r["mean"], r["std"]) for spec, r in zip(config.experts, results)]
    experts = []
    for i, spec in enumerate(config.experts):
        expert = Expert(spec.backbone)
        expert.load_state_dict(load_file(str(out / "experts" / f"expert_{i}" / "best.safetensors")))
        experts.append(expert)
    model_config = ModelConfig(
        experts=[
            spec.model_spec(
                preprocess=None if view == views[0] else view,
                note=f"split {r['split']}, held-out AUC {r['best_auc']:.4f} at step {r['best_step']}",
            )
            for spec, r, view in zip(config.experts, results, views)
        ],
        preprocess=views[0],
        name=config.name,
        image_backend=config.data.image_backend,
        face_crops=config.data.face_crops,
        info={
            "held_out_auc": [float(r["best_auc"]) for r in results],
            "splits": [int(r["split"]) for r in results],
            "git_revision": (out / "git_revision.txt").read_text().strip() if (out / "git_revision.txt").is_file() else "",
        },
    )
    return save_checkpoint(Mixture(experts, view_index=model_config.views()[1]), model_config, out / "model")
