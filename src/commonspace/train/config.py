"""Training settings as one plain dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig"]

_OPTIMIZERS = ("adam", "sgd")
_MONITORS = ("val_loss", "val_metric", "train_loss")
#: fields that change where or how a run is reported or run, not what it computes; resume ignores them
RUNTIME_FIELDS = frozenset({"out_dir", "progress", "tensorboard", "device", "checkpoint_every", "compile"})


@dataclass
class TrainConfig:
    """How the :class:`~commonspace.train.Trainer` optimises a model.

    ``monitor=None`` means ``"val_metric"`` when the trainer has a ``val_metric`` callable, else
    ``"val_loss"``; ``mode=None`` means ``"max"`` for ``val_metric`` and ``"min"`` for losses.
    """

    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    seed: int = 0
    patience: int | None = None
    monitor: str | None = None
    mode: str | None = None
    restore_best: bool = True
    out_dir: Path | None = None
    checkpoint_every: int = 1
    progress: bool = True
    tensorboard: bool = False
    device: str = "cpu"
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = None
    #: the training loss through torch.compile, eager where it cannot compile (commonspace.train.compile)
    compile: bool = False
    #: DDP must be told when a stage's loss leaves some trainable parameters without gradient
    ddp_find_unused_parameters: bool = True

    def __post_init__(self) -> None:
        if self.out_dir is not None and not isinstance(self.out_dir, Path):
            self.out_dir = Path(self.out_dir)
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(_OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'epochs' else 1}, got {v!r}")
        for name in ("patience", "max_steps_per_epoch"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.optimizer == "sgd" and self.nesterov and not self.momentum > 0:
            raise ValueError("Nesterov SGD needs momentum > 0; set momentum or nesterov=False")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.monitor is not None and self.monitor not in _MONITORS:
            raise ValueError(f"monitor must be one of {list(_MONITORS)} or None (automatic), got {self.monitor!r}")
        if self.mode is not None and self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or None (automatic), got {self.mode!r}")

    # ------------------------------------------------------------- monitor
    def resolved_monitor(self, has_val_metric: bool) -> tuple[str, str]:
        """(monitor, mode) with the automatic choices filled in."""
        monitor = self.monitor or ("val_metric" if has_val_metric else "val_loss")
        mode = self.mode or ("max" if monitor == "val_metric" else "min")
        return monitor, mode

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (paths as strings)."""
        d = dataclasses.asdict(self)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)

    @classmethod
    def for_model(cls, model: Any, **overrides: Any) -> TrainConfig:
        """The model's ``train_defaults`` (its paper's settings), then ``overrides`` on top."""
        defaults = dict(getattr(model, "train_defaults", {}) or {})
        names = {f.name for f in fields(cls)}
        bad = sorted(set(defaults) - names)
        if bad:
            name = getattr(model, "name", type(model).__name__)
            raise ValueError(f"model {name!r} has train_defaults with unknown TrainConfig fields {bad}")
        return cls.from_dict({**defaults, **overrides})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
