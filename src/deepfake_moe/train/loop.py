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
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from deepfake_moe.config import ConfigError, load_yaml, save_yaml, to_dict
from deepfake_moe.data.dataset import (
    ManifestDataset,
    TrainBatchSampler,
    collate_skipping_errors,
    eval_batches,
    expert_rows,
)
from deepfake_moe.data.manifest import ManifestError, read_manifest
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.io import atomic_path, atomic_write
from deepfake_moe.model.expert import Expert
from deepfake_moe.runtime import autocast, resolve_device
from deepfake_moe.train.config import ExpertConfig, LossConfig, TrainConfig
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

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.loss
        logits, feats = self.expert.forward_with_features(images)
        l_ce = ce_loss(logits, labels)
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


def init_pretrained(expert: Expert, spec: ExpertConfig) -> dict[str, Any]:
    """Pretrained initialisation of the backbone ("none" keeps timm's random init)."""
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
    loader = DataLoader(
        dataset, batch_sampler=eval_batches(len(dataset), batch_size, procs.rank, procs.world_size),
        num_workers=num_workers, collate_fn=collate_skipping_errors,
    )
    indices, probs, errors = [], [], 0
    for batch in loader:
        errors += len(batch["errors"])
        if batch["images"].numel() == 0:
            continue
        x = batch["images"].to(procs.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, procs.device):
            logits = model(x)
        probs.append(logits.float().softmax(dim=1)[:, 1].cpu().numpy())
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
def train_expert(
    config: TrainConfig, out: Path, index: int, manifest, procs: Processes, resume: bool, log: MetricsLog,
) -> dict[str, Any]:
    """Train expert `index` on its split; returns its result (also written to result.yaml)."""
    from safetensors.torch import save_file
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from torch.nn.parallel import DistributedDataParallel

    spec, opt, data = config.experts[index], config.optim, config.data
    split = config.split_of(index)
    work = out / "experts" / f"expert_{index}"
    if (work / "result.yaml").is_file():
        if not resume:
            raise RunExistsError(f"{work} already holds a finished expert; resume the run (train --resume) or choose another output folder")
        return _read_result(work)
    if (work / "last.pt").is_file() and not resume:
        raise RunExistsError(f"{work} holds a training state; resume it (train --resume) or choose another output folder")

    # Data: expert i trains on rows outside its held-out cluster and is scored on that cluster.
    try:
        train_mask, val_mask = expert_rows(manifest, split, data.val_fraction, data.random_split_seed)
    except ValueError as e:
        raise ManifestError(str(e)) from None
    for name, mask in (("training", train_mask), ("held-out", val_mask)):
        counts = np.bincount(manifest["label"].to_numpy()[mask], minlength=2)
        if min(counts) == 0:
            raise ManifestError(
                f"expert {index} (split {split}): the {name} rows need reals and fakes, got {counts[0]} real / {counts[1]} fake"
            )
    # The model first: its pretrained weights fix the input normalisation. Same seed on every process.
    torch.manual_seed(opt.seed + index)
    expert = Expert(spec.backbone)
    mean, std = normalisation_of(init_pretrained(expert, spec))
    frozen = freeze_parameters(expert, spec.freeze)
    preprocess_cfg = PreprocessConfig(input_size=data.input_size, mean=mean, std=std, mode=data.preprocess_mode)
    train_set = ManifestDataset(
        manifest["path"][train_mask], manifest["label"][train_mask], preprocess_cfg,
        data.augment, data.image_backend, seed=opt.seed,
    )
    val_set = ManifestDataset(manifest["path"][val_mask], manifest["label"][val_mask], preprocess_cfg, None, data.image_backend)
    sampler = TrainBatchSampler(
        train_set.labels, opt.batch_size, opt.seed + index, data.balanced_sampling, procs.rank, procs.world_size
    )
    steps_per_epoch = sampler.batches_per_epoch // opt.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"expert {index}: {sampler.batches_per_epoch} batch(es) per epoch cannot fill one step of "
            f"grad_accum={opt.grad_accum}"
        )
    total_steps = opt.max_steps if opt.max_steps > 0 else opt.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    loader = DataLoader(
        train_set, batch_sampler=sampler, num_workers=data.num_workers, collate_fn=collate_skipping_errors,
        pin_memory=procs.device.type == "cuda", generator=torch.Generator().manual_seed(opt.seed),
    )

    memory_format = torch.channels_last if opt.channels_last else torch.contiguous_format
    expert.to(procs.device, memory_format=memory_format)
    ema = ExpertEma(expert, config.ema.decay, config.ema.warmup) if config.ema.enabled else None
    eval_model = copy.deepcopy(expert)
    optimizer = create_optimizer_v2(expert, "adamw", lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_steps, lr_min=opt.min_lr, warmup_t=opt.warmup_steps,
        warmup_lr_init=opt.warmup_lr, t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(procs.device.type, enabled=opt.precision == "fp16")
    state = TrainState()
    # Per-process noise/dropout streams; replaced by the saved ones on resume.
    torch.manual_seed(opt.seed * 1_000_003 + index * 1_009 + procs.rank)
    if resume and (work / "last.pt").is_file():
        saved = load_training_state(work / "last.pt")
        if len(saved["rng"]) != procs.world_size:
            raise ConfigError(
                f"{work / 'last.pt'} was saved by {len(saved['rng'])} process(es); resume it with as many"
            )
        expert.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        state = TrainState(**saved["state"])
        set_rng_state(saved["rng"][procs.rank], procs.device)
        log.rewind(index, state.step)
    scheduler.step_update(state.step)
    step_model: nn.Module = ExpertTrainStep(expert, config.loss)
    if procs.distributed:
        step_model = DistributedDataParallel(
            step_model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None
        )

    def evaluate() -> float:
        broadcast_buffers(expert, procs)
        eval_model.load_state_dict(ema.state_for(expert) if ema is not None else expert.state_dict())
        auc, n_scored, n_errors = held_out_auc(
            eval_model, val_set, procs, config.eval.batch_size, data.num_workers, opt.precision, opt.channels_last
        )
        state.last_eval_step = state.step
        better = auc > state.best_auc  # nan (one class readable) never counts as better
        if better:
            state.best_auc, state.best_step, state.evals_since_best = auc, state.step, 0
            if procs.is_main:
                weights = {k: v.detach().contiguous().cpu() for k, v in eval_model.state_dict().items()}
                with atomic_path(work / "best.safetensors") as tmp:
                    save_file(weights, str(tmp), metadata={"auc": repr(auc), "step": str(state.step)})
        else:
            state.evals_since_best += 1
        log.log(expert=index, epoch=state.epoch, step=state.step, val_auc=auc, val_images=n_scored,
                skipped_images=state.skipped_images + n_errors)
        if procs.is_main:
            tqdm.write(f"expert {index} step {state.step}: held-out AUC {auc:.4f} on {n_scored} images"
                       + (" (best)" if better else ""), file=sys.stderr)
        return auc

    def checkpoint() -> None:
        rngs = gather_rng_states(procs)
        if procs.is_main:
            save_training_state(work / "last.pt", {
                "model": expert.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else {},
                "state": dataclasses.asdict(state),
                "rng": rngs,
            })

    def should_stop() -> bool:
        return config.eval.patience > 0 and state.evals_since_best >= config.eval.patience

    if procs.is_main:
        work.mkdir(parents=True, exist_ok=True)
        print(f"expert {index}: {spec.backbone}, split {split}: {int(train_mask.sum())} training / "
              f"{int(val_mask.sum())} held-out images, {total_steps} steps ({steps_per_epoch} per epoch)",
              file=sys.stderr)
    stopped_early = should_stop()
    accum = opt.grad_accum
    while state.step < total_steps and state.epoch < epochs and not stopped_early:
        step_model.train()
        sampler.set_epoch(state.epoch, start_batch=state.step_in_epoch * accum, stop_batch=steps_per_epoch * accum)
        bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, disable=not procs.is_main,
                   desc=f"expert {index} epoch {state.epoch + 1}/{epochs}", file=sys.stderr, leave=False)
        micro, parts, n_parts, seen, tic = 0, torch.zeros(3), 0, 0, time.perf_counter()
        for batch in loader:
            micro += 1
            state.skipped_images += len(batch["errors"])
            for err in batch["errors"]:
                tqdm.write(f"skipped unreadable image: {err}", file=sys.stderr)
            # A micro-batch with < 2 readable images is skipped by every process together.
            n_readable = batch["images"].shape[0] if batch["images"].numel() else 0
            usable = torch.tensor(float(n_readable >= 2), device=procs.device)
            if procs.distributed:
                dist.all_reduce(usable, op=dist.ReduceOp.MIN)
            last_micro = micro % accum == 0
            if usable.item():
                images = batch["images"].to(procs.device, non_blocking=True, memory_format=memory_format)
                labels = batch["labels"].to(procs.device, non_blocking=True)
                no_sync = procs.distributed and not last_micro
                with step_model.no_sync() if no_sync else contextlib.nullcontext():
                    with autocast(opt.precision, procs.device):
                        loss, components = step_model(images, labels)
                    scaler.scale(loss / accum).backward()
                parts += components.float().cpu()
                n_parts += 1
                seen += images.shape[0]
            elif last_micro and procs.distributed:
                _all_reduce_grads(expert, procs.world_size)  # the earlier micro-batches ran under no_sync
            if not last_micro:
                continue

            if opt.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(expert.parameters(), opt.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            scheduler.step_update(state.step)
            if ema is not None:
                ema.update(expert)
            lr = optimizer.param_groups[0]["lr"]
            avg = (parts / max(n_parts, 1)).tolist()
            total = config.loss.ce_weight * avg[0] + config.loss.nce_weight * avg[1] + config.loss.kl_weight * avg[2]
            rate = seen * procs.world_size / max(time.perf_counter() - tic, 1e-9)
            log.log(expert=index, epoch=state.epoch, step=state.step, lr=lr, loss=total, loss_ce=avg[0],
                    loss_nce=avg[1], loss_kl=avg[2], images_per_s=rate, skipped_images=state.skipped_images)
            bar.set_postfix(loss=f"{total:.4f}", ce=f"{avg[0]:.3f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            parts, n_parts, seen, tic = torch.zeros(3), 0, 0, time.perf_counter()

            if config.eval.every_steps and state.step % config.eval.every_steps == 0:
                evaluate()
                step_model.train()
                stopped_early = should_stop()
            if stopped_early or state.step >= total_steps:
                break
            if config.checkpoint.every_steps and state.step % config.checkpoint.every_steps == 0:
                checkpoint()
        bar.close()
        if state.step_in_epoch >= steps_per_epoch:
            state.epoch += 1
            state.step_in_epoch = 0
        if state.last_eval_step != state.step:
            evaluate()
            stopped_early = should_stop()
        checkpoint()

    if state.last_eval_step != state.step:  # e.g. resumed after the final checkpoint's evaluation
        evaluate()
    result = {
        "expert": index, "backbone": spec.backbone, "pretrained": spec.pretrained, "split": split,
        "best_auc": state.best_auc, "best_step": state.best_step, "steps": state.step,
        "stopped_early": bool(stopped_early), "skipped_images": state.skipped_images,
        "train_images": int(train_mask.sum()), "held_out_images": int(val_mask.sum()),
        "mean": mean, "std": std, "frozen_parameters": frozen,
    }
    if procs.distributed:
        broadcast_buffers(expert, procs)
        digests = replica_digests(expert, procs)
        result["replicas_identical"] = len(set(digests)) == 1
        if not result["replicas_identical"]:
            tqdm.write(f"WARNING: expert {index}: the {procs.world_size} processes ended with different weights",
                       file=sys.stderr)
    if state.best_step < 0:
        raise ManifestError(f"expert {index}: no held-out AUC could be computed (are its images readable?)")
    if procs.is_main:
        with atomic_write(work / "result.yaml") as f:
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
    import timm

    unknown = [e.backbone for e in config.experts if not timm.is_model(e.backbone)]
    if unknown:
        raise ConfigError(f"unknown timm backbone(s) {unknown}; see timm.list_models()")
    procs = setup_processes(config.optim.device)
    if procs.is_main:
        out.mkdir(parents=True, exist_ok=True)
        saved_config = out / "config.yaml"
        if saved_config.is_file() and to_dict(load_yaml(TrainConfig, saved_config)) != to_dict(config):
            if resume:
                raise ConfigError(f"{saved_config} differs from the given config; resume needs the same one")
            raise RunExistsError(f"{out} holds a run with another config; choose another output folder")
        save_yaml(config, saved_config)
        with atomic_write(out / "git_revision.txt") as f:
            f.write(git_revision() + "\n")
    barrier(procs)
    manifest = read_manifest(config.data.manifest, root=config.data.root)
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
    norms = {(tuple(r["mean"]), tuple(r["std"])) for r in results}
    if len(norms) > 1:
        raise ConfigError(
            f"{out}: the experts expect different input normalisations {sorted(norms)} (their pretrained "
            "weights differ), but a mixture shares one preprocessing; pretrain them alike"
        )
    mean, std = (list(v) for v in norms.pop())
    experts = []
    for i, spec in enumerate(config.experts):
        expert = Expert(spec.backbone)
        expert.load_state_dict(load_file(str(out / "experts" / f"expert_{i}" / "best.safetensors")))
        experts.append(expert)
    model_config = ModelConfig(
        experts=[
            spec.model_spec(note=f"split {r['split']}, held-out AUC {r['best_auc']:.4f} at step {r['best_step']}")
            for spec, r in zip(config.experts, results)
        ],
        preprocess=PreprocessConfig(input_size=config.data.input_size, mean=mean, std=std, mode=config.data.preprocess_mode),
        name=config.name,
        image_backend=config.data.image_backend,
        info={
            "held_out_auc": [float(r["best_auc"]) for r in results],
            "splits": [int(r["split"]) for r in results],
            "git_revision": (out / "git_revision.txt").read_text().strip() if (out / "git_revision.txt").is_file() else "",
        },
    )
    return save_checkpoint(Mixture(experts), model_config, out / "model")
