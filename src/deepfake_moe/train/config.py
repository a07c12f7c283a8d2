"""The training configuration: one YAML file per run, mapped onto these dataclasses.

Every choice docs/method.md leaves open is a field here with a documented default. Steps count
optimizer updates (one update = `grad_accum` micro-batches of `batch_size` images per process).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from deepfake_moe.config import ConfigError
from deepfake_moe.data.dataset import TrainAugmentConfig
from deepfake_moe.data.transforms import PREPROCESS_MODES, PreprocessConfig
from deepfake_moe.model.spec import ExpertSpec
from deepfake_moe.runtime import PRECISIONS


@dataclass
class DataConfig:
    manifest: str = ""
    """Split manifest (Parquet or CSV); relative paths inside it resolve against `root`."""
    root: str | None = None
    input_size: int = 512
    preprocess_mode: str = "fast"
    image_backend: str = "pil"
    face_crops: bool = False
    """The images are face crops (`manifest`/`prepare`/`corpus --faces`): the model's YAML says so, and
    `predict` then crops faces the same way by default."""
    augment: TrainAugmentConfig = field(default_factory=TrainAugmentConfig)
    balanced_sampling: bool = False
    """Draw real and fake images equally often (with replacement) instead of a plain shuffle."""
    balance_bins: int = 0
    """> 0: draw each expert's training reals and fakes alike from every stratum (size class x this many
    fine-detail quantiles), so that neither tells the label (data/balance.py). Needs the `detail` and
    `short_side` columns that `deepfake-moe balance` writes; replaces a manifest `weight` column. 0: off."""
    num_workers: int = 4
    val_fraction: float = 0.2
    """Manifests without `split_<i>` columns: this fraction of origins (so a real image and the
    fakes derived from it stay together) is held out, drawn with `random_split_seed + split`."""
    random_split_seed: int = 0

    def __post_init__(self):
        if self.preprocess_mode not in PREPROCESS_MODES:
            raise ConfigError(f"data.preprocess_mode {self.preprocess_mode!r} is not one of {PREPROCESS_MODES}")
        if self.balance_bins < 0:
            raise ConfigError(f"data.balance_bins must be >= 0 (0: off), got {self.balance_bins}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


# The schedule fields an expert may set for itself; batch size, precision and the rest are the run's.
EXPERT_OPTIM_KEYS = ("epochs", "max_steps", "lr", "min_lr", "weight_decay", "warmup_steps", "warmup_lr", "grad_clip")


@dataclass
class ExpertConfig(ExpertSpec):
    """An expert to train: the model-facing `ExpertSpec` (backbone, ...) plus how to train it."""

    pretrained: str = "none"
    """"none" | "offline" | "timm" | path to a weight file (see model.pretrained.init_backbone)."""
    optim: dict = field(default_factory=dict)
    """This expert's own schedule, over the run's `optim` (keys in EXPERT_OPTIM_KEYS): an expert trained
    from scratch (NPR) wants more steps and a higher learning rate than a pretrained one."""
    loss: dict = field(default_factory=dict)
    """This expert's own loss settings, over the run's `loss`: L_kl's input noise must stay below the
    signal the expert reads (NPR reads pixel-scale residuals that noise of std 0.1 drowns)."""
    split: int | None = None
    """Which split F_i trains this expert; default: the expert's position in the list."""
    fake_sources: list[str] = field(default_factory=list)
    """Train and select this expert on these fake sources only (and every real); empty: every fake. An
    artefact expert reading small crops learns from fakes whose every pixel a generator made: a crop
    of a local edit mostly shows untouched pixels under the label fake."""
    paired_reals: bool = False
    """Train only on the reals that share an `origin` with this expert's training fakes (the reals they
    were made from; for unconditional generators, the reals whose tasks seeded them). A real with no
    fake of its own can only teach that its content is real: in benchmarks/probe_edit_corpus.py a like
    filter gained an edits-trained expert 0.05 AUC on unseen face swaps (0.08 among faces) and
    0.01-0.05 on every edit family. Held-out rows (model selection) keep every real."""
    freeze: list[str] = field(default_factory=list)
    """Parameter-name prefixes (timm names: `conv_stem`, `bn1`, `blocks.0`, ...) kept at their
    pretrained values: fine-tuning only the later layers costs a fraction of the backward pass."""
    init_from: str = ""
    """Fine-tune a trained detector instead: a model folder (ours or the winners' published one), or
    `default` for the built-in model. The expert starts from its expert `init_expert`, head included,
    and reads images with that expert's input normalisation."""
    init_expert: int | None = None
    """Which expert of `init_from`; default: the one at this expert's position in the list."""

    def __post_init__(self):
        if self.init_from and self.pretrained != "none":
            raise ConfigError("experts: give init_from (a trained detector) or pretrained (backbone weights), not both")
        if self.init_expert is not None and not self.init_from:
            raise ConfigError("experts: init_expert needs init_from (the model whose expert it names)")
        unknown = sorted(set(self.optim) - set(EXPERT_OPTIM_KEYS))
        if unknown:
            raise ConfigError(f"experts: optim key(s) {unknown} cannot differ per expert; known: {list(EXPERT_OPTIM_KEYS)}")
        unknown = sorted(set(self.loss) - {f.name for f in fields(LossConfig)})
        if unknown:
            raise ConfigError(f"experts: unknown loss key(s) {unknown}; known: {[f.name for f in fields(LossConfig)]}")

    def view(self, data: DataConfig, mean: list[float], std: list[float]) -> PreprocessConfig:
        """How this expert reads images in training and in the checkpoint.

        Its own `preprocess` if given, else data.input_size in data.preprocess_mode, or native crops of
        that size for a backbone that needs the image's own pixels (NPR). Pretrained weights fix the
        normalisation (`mean`, `std`), as does the detector of `init_from`; a backbone trained from
        scratch keeps the view's.
        """
        from deepfake_moe.model.backbones import needs_native_resolution

        view = self.preprocess
        if view is None:
            mode = "native" if needs_native_resolution(self.backbone) else data.preprocess_mode
            view = PreprocessConfig(input_size=data.input_size, mode=mode)
        if self.pretrained == "none" and not self.init_from:
            return view
        return replace(view, mean=list(mean), std=list(std))


@dataclass
class OptimConfig:
    epochs: int = 10
    max_steps: int = 0
    """If > 0, stop after this many optimizer steps (the schedule spans them) instead of `epochs`."""
    batch_size: int = 32
    """Images per process per micro-batch."""
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 0
    warmup_lr: float = 1e-6
    grad_accum: int = 1
    grad_clip: float = 0.0
    """Clip the global gradient norm to this; 0 = off."""
    precision: str = "fp32"
    channels_last: bool = False
    seed: int = 0
    device: str = "auto"
    """"auto" = CUDA when available (under torchrun: cuda:LOCAL_RANK), else Apple MPS, else CPU (see runtime.py)."""
    threads: int = 0
    """PyTorch intra-op CPU threads per process; 0 = this process's share of the usable cores (all of them
    for one process; runtime.set_threads). Tiny models want 1: their operations are too small to split,
    and threads waiting on each other on a busy machine cost more CPU than the work (configs/tiny.yaml)."""

    def __post_init__(self):
        if self.threads < 0:
            raise ConfigError(f"optim.threads must be >= 0 (0: all usable cores), got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"optim.precision {self.precision!r} is not one of {tuple(PRECISIONS)}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("set optim.epochs or optim.max_steps to at least 1")


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    nce_weight: float = 0.1
    nce_temperature: float = 0.1
    kl_weight: float = 1.0
    noise: str = "gaussian"
    """"gaussian" or "uniform" noise, in the normalised input space."""
    noise_std: float = 0.1
    vat_steps: int = 0
    """0 = random noise only; 1 = one virtual-adversarial power iteration from that noise."""
    vat_xi: float = 1e-6
    distill_weight: float = 0.0
    """Knowledge distillation: L_ce = (1 - w) * CE(label) + w * CE(teacher's fake probability), the
    teacher's being the manifest column `distill_column` (e.g. a slower mixture's scores, so that a
    smaller model learns what it knows). 0 = labels only."""
    distill_column: str = "teacher"

    def __post_init__(self):
        from deepfake_moe.train.losses import NOISE_KINDS

        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError(f"loss.distill_weight must be in [0, 1]; got {self.distill_weight}")
        if self.noise not in NOISE_KINDS:
            raise ConfigError(f"loss.noise {self.noise!r} is not one of {NOISE_KINDS}")
        if self.nce_temperature <= 0:
            raise ConfigError("loss.nce_temperature must be > 0")
        if self.vat_steps < 0 or self.noise_std < 0:
            raise ConfigError("loss.vat_steps and loss.noise_std must be >= 0")


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = 0.995
    warmup: bool = True
    """decay_n = min(decay, (1+n)/(10+n)) at update n (docs/method.md)."""


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Also save the training state every N optimizer steps (always at each epoch end); 0 = epochs only."""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """Score the held-out cluster every N steps as well as at each epoch end; 0 = epoch ends only."""
    at_epoch_end: bool = True
    """False: no evaluation at epoch ends, only every `every_steps` and once training ends (many short
    epochs, on a GPU, would otherwise decode the held-out cluster as often as the training images)."""
    batch_size: int = 64
    patience: int = 0
    """Stop an expert after this many evaluations without a better held-out AUC; 0 = never."""


@dataclass
class TrainConfig:
    data: DataConfig
    experts: list[ExpertConfig]
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "deepfake-moe"
    out_dir: str = ""
    """Where the run writes; `--out` overrides it."""

    def __post_init__(self):
        if not self.experts:
            raise ConfigError("experts: list at least one expert")

    def optim_of(self, expert_index: int) -> OptimConfig:
        """The run's `optim` with expert `expert_index`'s own schedule fields over it."""
        return replace(self.optim, **self.experts[expert_index].optim)

    def loss_of(self, expert_index: int) -> LossConfig:
        """The run's `loss` with expert `expert_index`'s own settings over it."""
        return replace(self.loss, **self.experts[expert_index].loss)

    def split_of(self, expert_index: int) -> int:
        split = self.experts[expert_index].split
        return expert_index if split is None else split
