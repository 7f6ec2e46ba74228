from aria_train.config.loader import build_config, from_dict, stage_config_path, to_dict
from aria_train.config.vision import ProjectorConfig, VisionConfig
from aria_train.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    MoEConfig,
    OptimizerConfig,
    ParallelConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
