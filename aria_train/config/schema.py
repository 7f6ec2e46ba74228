"""Typed configuration for a training run.

Every knob a run has lives in one of these dataclasses. YAML files under pipelines/ and command
line overrides are both turned into a `RunConfig` by `aria_train.config.loader`, which checks
names and types; `validate()` here checks that the sizes can work together.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Optional


from aria_train.config.errors import ConfigError
from aria_train.config.vision import ProjectorConfig, VisionConfig


@dataclass
class MoEConfig:
    num_experts: int = 8  # routed experts per layer
    top_k: int = 2  # routed experts per token
    num_shared_experts: int = 2  # the shared MLP is num_shared_experts * expert_ffn_size wide
    expert_ffn_size: int = 32  # width of one routed expert's SwiGLU
    balance_group_size: int = 8  # load-balancing loss counts groups of this many experts
    aux_loss_coeff: float = 1e-2
    z_loss_coeff: float = 1e-3
    capacity_factor: Optional[float] = None  # None = dropless


ACTIVATION_CHECKPOINTING_MODES = ("none", "full", "selective")


@dataclass
class ModelConfig:
    preset: str = "tiny"
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_base: float = 100_000.0
    init_std: float = 0.02
    # none | full (recompute each decoder block) | selective (recompute the attention-input norm
    # and the MoE sub-block, keep the attention activations); see aria_train.model.decoder
    activation_checkpointing: str = "none"
    moe: MoEConfig = field(default_factory=MoEConfig)


MM_FORMATS = ("aria", "caption", "llava", "messages", "obelics")  # aria_train.data.multimodal.layouts
TOKENIZER_TYPES = {"sentencepiece": "sentencepiece", "SentencePieceTokenizer": "sentencepiece",
                   "GPTSentencePieceTokenizer": "sentencepiece", "huggingface": "huggingface",
                   "HuggingFaceTokenizer": "huggingface"}


@dataclass
class DataConfig:
    # Megatron blend: ["0.7", "path/prefix_a", "0.3", "path/prefix_b"] or a single prefix.
    # Empty = the demo corpus, generated offline on first use under cache_dir.
    data_path: list = field(default_factory=list)
    split: str = "969,30,1"  # train,valid,test weights as Megatron-LM writes them
    tokenizer_model: str = ""  # empty = the demo sentencepiece model shipped in the repo
    seq_length: int = 128
    cache_dir: str = "data_cache"
    # Stages 2-4: multimodal shards, "weight dir weight dir ..." (empty = the synthetic demo
    # shards, generated offline under cache_dir), mixed with the language data above.
    mm_data_path: list = field(default_factory=list)
    language_weight: float = 0.3  # share of draws that take a language document
    image_mode: str = "medium"  # medium | high | ultra-high
    on_bad_sample: str = "skip"  # skip (and count) | error
    synthetic_samples: int = 4000  # size of the generated demo shards
    synthetic_kind: str = ""  # "" = the stage-2 mix of kinds; "chat" = conversations (stage 4)
    # ---- issue 11: real-world data in (README "Your own data"); checked by _check_data_inputs ----
    # sentencepiece (tokenizer_model = a .model file) | huggingface (tokenizer_model = a local
    # transformers tokenizer directory); Megatron's names SentencePieceTokenizer /
    # HuggingFaceTokenizer are accepted too.
    tokenizer_type: str = "sentencepiece"
    # The sample layouts mm_data_path may hold: aria (our KEY.json kinds), caption (WebDataset /
    # img2dataset image + txt), llava, messages, obelics. A layout left out counts as a bad sample.
    mm_formats: list = field(default_factory=lambda: list(MM_FORMATS))
    mm_image_root: str = ""  # image folder of JSON / JSONL sources ("" = each file's own folder)
    # Bad-data guard: stop when more than this fraction of a source's last bad_sample_window
    # samples are bad, or when its first 100 are all bad.
    max_bad_fraction: float = 0.05
    bad_sample_window: int = 1000


@dataclass
class OptimizerConfig:
    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    zero1: bool = True  # shard optimizer state over data-parallel ranks


@dataclass
class ScheduleConfig:
    style: str = "cosine"  # cosine | wsd | constant
    warmup_iters: int = 5
    decay_iters: Optional[int] = None  # None = train_iters
    wsd_decay_fraction: float = 0.2  # fraction of the run spent decaying, for style=wsd


@dataclass
class TrainConfig:
    train_iters: int = 40
    micro_batch_size: int = 4
    global_batch_size: int = 8
    seed: int = 1234
    eval_interval: int = 20
    eval_iters: int = 2
    exit_interval: Optional[int] = None  # stop (with a checkpoint) after this step
    exit_duration_mins: Optional[float] = None  # stop (with a checkpoint) after this much wall time
    exit_signals: list = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # save, then exit 0
    max_nonfinite_steps: int = 5  # consecutive NaN/Inf steps (skipped) before the run stops
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16


@dataclass
class ParallelConfig:
    ep_size: int = 1
    backend: str = "auto"  # auto = nccl on CUDA, gloo on CPU
    bucket_size_mb: float = 4.0  # gradient reduce-scatter bucket size
    timeout_minutes: float = 10.0


@dataclass
class LoggingConfig:
    log_interval: int = 5
    log_dir: str = "runs/default"
    wandb: bool = False
    wandb_project: str = "aria-train"
    wandb_mode: str = "offline"


@dataclass
class CheckpointConfig:
    save: str = ""
    load: str = ""  # resume a run (weights, optimizer, step, data position) from DIR/latest
    # Start a new stage from another run's final checkpoint: weights only, fresh optimizer,
    # step 0. Used when `load` has no checkpoint yet (a resumed stage continues its own run).
    init_from: str = ""
    save_interval: Optional[int] = None
    keep_last: int = 3
    async_save: bool = False
    load_optim: bool = True


@dataclass
class RunConfig:
    stage: int = 1
    multimodal: bool = False  # stage 2 on: ViT + projector + decoder
    model: ModelConfig = field(default_factory=ModelConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self, world_size: Optional[int] = None) -> "RunConfig":
        """Checks that the sizes fit together; raises ConfigError naming the key."""
        m, moe = self.model, self.model.moe
        _positive(m, "model", "vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim")
        _positive(moe, "model.moe", "num_experts", "top_k", "expert_ffn_size", "balance_group_size")
        if m.hidden_size % m.num_heads != 0:
            raise ConfigError(f"model.num_heads={m.num_heads} does not divide model.hidden_size={m.hidden_size}")
        if m.head_dim % 2 != 0:
            raise ConfigError(f"model.head_dim={m.head_dim} must be even for rotary embeddings")
        if m.activation_checkpointing not in ACTIVATION_CHECKPOINTING_MODES:
            raise ConfigError(
                f"model.activation_checkpointing={m.activation_checkpointing!r} is not one of "
                f"{', '.join(ACTIVATION_CHECKPOINTING_MODES)}"
            )
        if moe.top_k > moe.num_experts:
            raise ConfigError(f"model.moe.top_k={moe.top_k} exceeds model.moe.num_experts={moe.num_experts}")
        if moe.num_experts % moe.balance_group_size != 0:
            raise ConfigError(
                f"model.moe.balance_group_size={moe.balance_group_size} does not divide "
                f"model.moe.num_experts={moe.num_experts}"
            )
        if moe.capacity_factor is not None and moe.capacity_factor <= 0:
            raise ConfigError(f"model.moe.capacity_factor={moe.capacity_factor} must be positive or null")
        if self.data.image_mode not in ("medium", "high", "ultra-high"):
            raise ConfigError(f"data.image_mode={self.data.image_mode!r} is not one of medium, high, ultra-high")
        if self.data.on_bad_sample not in ("skip", "error"):
            raise ConfigError(f"data.on_bad_sample={self.data.on_bad_sample!r} is not one of skip, error")
        if not 0.0 <= self.data.language_weight <= 1.0:
            raise ConfigError(f"data.language_weight={self.data.language_weight} must be within [0, 1]")
        _check_data_inputs(self.data)
        if self.multimodal:
            self.vision.validate()
            self.projector.validate(self.vision)
        if self.schedule.style not in ("cosine", "wsd", "constant"):
            raise ConfigError(f"schedule.style={self.schedule.style!r} is not one of cosine, wsd, constant")
        if self.train.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision={self.train.precision!r} is not one of auto, fp32, bf16")
        _positive(self.train, "train", "train_iters", "micro_batch_size", "global_batch_size")
        _positive(self.data, "data", "seq_length")
        for name in self.train.exit_signals:
            if not hasattr(signal, name) or not name.startswith("SIG"):
                raise ConfigError(f"train.exit_signals has {name!r}, which is not a signal name")
        if self.parallel.ep_size < 1:
            raise ConfigError(f"parallel.ep_size={self.parallel.ep_size} must be >= 1")
        if moe.num_experts % self.parallel.ep_size != 0:
            raise ConfigError(
                f"parallel.ep_size={self.parallel.ep_size} does not divide model.moe.num_experts={moe.num_experts}"
            )
        if world_size is not None:
            if world_size % self.parallel.ep_size != 0:
                raise ConfigError(
                    f"parallel.ep_size={self.parallel.ep_size} does not divide the world size {world_size}"
                )
            per_step = self.train.micro_batch_size * world_size
            if self.train.global_batch_size % per_step != 0:
                raise ConfigError(
                    f"train.global_batch_size={self.train.global_batch_size} is not a multiple of "
                    f"train.micro_batch_size x world size = {per_step}"
                )
        return self


def _check_data_inputs(data: DataConfig) -> None:
    """mm_data_path pairs, and the issue-11 data keys: tokenizer type, layouts, bad-data guard."""
    if len(data.mm_data_path) % 2 != 0:
        raise ConfigError("data.mm_data_path must alternate weight and shard directory")
    if data.tokenizer_type not in TOKENIZER_TYPES:
        raise ConfigError(f"data.tokenizer_type={data.tokenizer_type!r} is not one of sentencepiece, huggingface")
    if TOKENIZER_TYPES[data.tokenizer_type] == "huggingface" and not data.tokenizer_model:
        raise ConfigError("data.tokenizer_type=huggingface needs data.tokenizer_model (a tokenizer directory)")
    unknown = [f for f in data.mm_formats if f not in MM_FORMATS]
    if unknown or not data.mm_formats:
        raise ConfigError(f"data.mm_formats={data.mm_formats!r}: expected a non-empty list of {', '.join(MM_FORMATS)}")
    if not 0.0 <= data.max_bad_fraction <= 1.0:
        raise ConfigError(f"data.max_bad_fraction={data.max_bad_fraction} must be within [0, 1]")
    if data.bad_sample_window < 1:
        raise ConfigError(f"data.bad_sample_window={data.bad_sample_window} must be positive")


def _positive(section, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            raise ConfigError(f"{prefix}.{name}={value} must be positive")
