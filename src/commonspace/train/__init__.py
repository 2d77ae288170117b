"""Training: the Trainer, its config, checkpoints (safetensors + JSON), DDP helpers and seeding."""

from commonspace.train.checkpoint import (
    CheckpointError,
    LoadedModel,
    load_model,
    load_weights,
    read_training_checkpoint,
    save_model,
)
from commonspace.train.config import TrainConfig
from commonspace.train.distributed import (
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from commonspace.train.seed import seed_everything
from commonspace.train.trainer import Callback, Trainer, ValMetric

__all__ = [
    "Callback",
    "CheckpointError",
    "LoadedModel",
    "TrainConfig",
    "Trainer",
    "ValMetric",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "load_model",
    "load_weights",
    "read_training_checkpoint",
    "save_model",
    "seed_everything",
]
