"""The composed configuration of a run: every component's config, the checks that span
components, and how a stage's YAML, a model preset and command-line overrides become one.

Order of precedence, lowest first: dataclass defaults < model / vision preset < YAML < `--set
key=value` and Megatron-style flags. Unknown keys, values of the wrong type and values outside a
`Literal`'s choices fail with one line naming the key (aria_train.config.loader); `validate` then
checks that the sizes can work together.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from aria_train.checkpoint.config import CheckpointConfig
from aria_train.checkpoint.parts import RunDescription
from aria_train.config import ConfigError, load_yaml, resolve, to_dict
from aria_train.config.loader import from_dict
from aria_train.config.presets import DEFAULT_VISION_PRESET, MODEL_PRESETS, VISION_PRESETS
from aria_train.data.config import DataConfig
from aria_train.errors import UserError
from aria_train.model.audio import AudioConfig
from aria_train.model.config import ModelConfig
from aria_train.model.vision_config import ProjectorConfig, VisionConfig
from aria_train.moe.layout import ExpertLayout
from aria_train.optim.config import OptimizerConfig
from aria_train.parallel.config import ParallelConfig, check_ep_divides_world
from aria_train.train.budget import apply_token_budget
from aria_train.train.config import LoggingConfig, RunDirConfig, ScheduleConfig, TrainConfig
from aria_train.train.encoder_config import EncoderConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_DIRS = {0: "stage0_encoder", 1: "stage1_lang", 2: "stage2_mm", 3: "stage3_longctx", 4: "stage4_post"}


@dataclass
class RunConfig:
    stage: int = 1
    recipe: str = ""  # the YAML the run was built from (set by build_config)
    multimodal: bool = False  # stage 2 on: ViT + projector + decoder
    model: ModelConfig = field(default_factory=ModelConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)  # IMP's audio inputs (off by default)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunDirConfig = field(default_factory=RunDirConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # stage 0 only

    @property
    def has_vision(self) -> bool:
        """The run trains the ViT: stage 0 (encoder pretraining) and the multimodal stages."""
        return self.multimodal or self.stage == 0

    def validate(self, world_size: Optional[int] = None) -> "RunConfig":
        """Checks that the sizes fit together; raises ConfigError naming the key."""
        self.model.validate()
        self.data.validate()
        if self.has_vision:
            self.vision.validate()
            self.projector.validate(self.vision)
            self.audio.validate(self.projector)
            if self.vision.moe.enabled and self.vision.moe.num_experts % self.parallel.ep_size:
                raise ConfigError(f"parallel.ep_size={self.parallel.ep_size} does not divide "
                                  f"vision.moe.num_experts={self.vision.moe.num_experts}")
        self.train.validate()
        ExpertLayout(self.model.moe.num_experts, self.parallel.ep_size)  # ep_size must divide the experts
        if self.stage == 0:
            self._validate_encoder_stage(world_size)
        if world_size is not None:
            check_ep_divides_world(self.parallel.ep_size, world_size)
            if self.stage != 0:
                self.train.check_batch_fits(world_size)
        return self

    def _validate_encoder_stage(self, world_size: Optional[int]) -> None:
        """Stage 0: each pair has its own global batch (train.*_batch_size are not used), and the
        model is the dual encoder, which has no decoder to freeze or to load a decoder checkpoint into."""
        self.encoder.validate(world_size)
        if self.multimodal:
            raise ConfigError("stage 0 trains the encoder alone: multimodal must be false")
        if self.checkpoint.init_from_hf:
            raise ConfigError("checkpoint.init_from_hf (--init-from-hf) loads an Aria decoder, which stage 0 does not "
                              "have: start its ViT with vision.init_from")
        other = [group for group in self.train.freeze if group != "vision"]
        if other:
            raise ConfigError(f"train.freeze={other} names parts stage 0 does not have: it can freeze only "
                              f"'vision' (the ViT, so the text tower aligns to it)")


def describe_run(cfg: RunConfig) -> RunDescription:
    """What the run's checkpoints record about it."""
    return RunDescription(config=to_dict(cfg), stage=cfg.stage, model_preset=cfg.model.preset,
                          rope_base=cfg.model.rope_base, num_experts=cfg.model.moe.num_experts)


def stage_dir(stage: int) -> Path:
    if stage not in STAGE_DIRS:
        raise ConfigError(f"--stage {stage} is not one of {sorted(STAGE_DIRS)}")
    return REPO_ROOT / "pipelines" / STAGE_DIRS[stage]


def stage_recipes(stage: int) -> list[str]:
    """The named recipes of a stage: pipelines/stageN_*/NAME.yaml beside config.yaml."""
    return sorted(p.stem for p in stage_dir(stage).glob("*.yaml") if p.name != "config.yaml")


def stage_config_path(stage: int, model: Optional[str] = None) -> Path:
    """The stage's recipe `model` (pipelines/stageN_*/MODEL.yaml) if there is one, else its
    config.yaml (the tiny CPU preset's run, which `--model PRESET` resizes)."""
    if model and (stage_dir(stage) / f"{model}.yaml").is_file():
        return stage_dir(stage) / f"{model}.yaml"
    return stage_dir(stage) / "config.yaml"


def build_config(
    stage: int,
    config_file: Optional[Path] = None,
    preset: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    world_size: Optional[int] = None,
) -> RunConfig:
    """The resolved config of a run: defaults, then presets, then YAML, then overrides.

    `preset` is `--model`: a recipe of the stage (pipelines/stageN_*/NAME.yaml, which names its
    own model preset) or a model preset applied to the stage's config.yaml. `overrides` maps
    dotted keys (`model.moe.top_k`) to values, already parsed or as strings."""
    path = Path(config_file) if config_file else stage_config_path(stage, preset)
    raw = load_yaml(path)
    raw.setdefault("stage", stage)
    overrides = dict(overrides or {})
    if preset and path.parent == stage_dir(stage) and path.stem == preset:  # a recipe names its preset
        preset = None
    elif preset and preset not in MODEL_PRESETS:
        raise ConfigError(f"--model {preset!r} is neither a model preset ({', '.join(MODEL_PRESETS)}) nor a "
                          f"recipe of stage {stage} ({', '.join(stage_recipes(stage)) or 'none'})")
    preset = preset or overrides.pop("model.preset", None) or raw.get("model", {}).get("preset", "tiny")
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"model.preset={preset!r} is not one of {', '.join(MODEL_PRESETS)}")
    vision_name = overrides.pop("vision.preset", None) or raw.get("vision", {}).get("preset")
    vision_name = vision_name or DEFAULT_VISION_PRESET[preset]
    if vision_name not in VISION_PRESETS:
        raise ConfigError(f"vision.preset={vision_name!r} is not one of {', '.join(VISION_PRESETS)}")
    presets = {"model": MODEL_PRESETS[preset], **VISION_PRESETS[vision_name]}
    names = {"model": {"preset": preset}, "vision": {"preset": vision_name}, "recipe": _relative(path)}
    config = resolve(RunConfig, [presets, raw, names], overrides)
    apply_token_budget(config, raw, overrides)
    return config.validate(world_size)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_saved_run_config(path: Path) -> RunConfig:
    """A config.yaml saved with a checkpoint. Keys this version no longer knows are dropped with
    a note, so an older checkpoint still loads."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path.parent} has no {path.name}")
    raw = yaml.safe_load(path.read_text()) or {}
    model_raw = raw.get("model", {})
    if isinstance(model_raw.get("activation_checkpointing"), bool):  # saved before the modes existed
        model_raw["activation_checkpointing"] = "full" if model_raw["activation_checkpointing"] else "none"
    vision_raw = raw.get("vision", {})
    if isinstance(vision_raw.get("activation_checkpointing"), bool):  # saved before the vision modes existed
        vision_raw["activation_checkpointing"] = "layer" if vision_raw["activation_checkpointing"] else "none"
    while True:
        try:
            return from_dict(RunConfig, raw, "")
        except ConfigError as error:
            match = re.match(r"unknown config key (\S+)", str(error))
            if not match:
                raise
            *parents, leaf = match.group(1).split(".")
            node = raw
            for name in parents:
                node = node[name]
            del node[leaf]
            print(f"note: {path}: ignoring {match.group(1)}, unknown to this version", file=sys.stderr)
