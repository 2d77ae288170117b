"""The trainer: stages, optimiser, early stopping, DDP, checkpoints, logs and progress."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from commonspace.data.dataset import DataError, DataWarning, LazyArray, MultimodalDataset, Standardizer
from commonspace.data.labels import single_class
from commonspace.models.base import MultimodalModel, Stage, check_fits
from commonspace.train.checkpoint import (
    FIX_RESUME,
    CheckpointError,
    apply_state,
    check_compatible,
    read_training_checkpoint,
    save_model,
    save_training_checkpoint,
    state_for_saving,
)
from commonspace.train.compile import CompiledLoss
from commonspace.train.config import RUNTIME_FIELDS, TrainConfig
from commonspace.train.distributed import DistInfo, barrier, init_distributed, shard
from commonspace.train.lock import RunLock
from commonspace.train.logging import Progress, RunLogger, log, require_tensorboard
from commonspace.train.optim import make_adam, make_sgd
from commonspace.train.seed import get_rng_state, seed_everything, set_rng_state, shuffle_generator

__all__ = ["Trainer", "ValMetric", "Callback"]

#: ``val_metric(model, data, val_indices) -> float``; called on rank 0 with the model in eval mode
ValMetric = Callable[[MultimodalModel, MultimodalDataset, Tensor], float]
#: ``callback(trainer, record)`` after every epoch, once that epoch's checkpoint (if any) is on disk
Callback = Callable[["Trainer", dict[str, Any]], None]

_STATE_VERSION = 1
_TIMING_KEYS = frozenset({"seconds", "samples_per_s"})
#: an in-memory array up to this size is hashed whole for the run fingerprint; larger ones and arrays on disk
#: by a fixed sample of rows (plus column sums for in-memory ones), so a fingerprint never reads a whole dataset
_HASH_WHOLE_BYTES = 64 << 20
_HASH_ROWS = 1024


def _hash_array(h: Any, tag: str, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{tag}:{t.dtype}:{tuple(t.shape)};".encode())
    if t.numel():
        h.update(memoryview(t.numpy().reshape(-1).view(np.uint8)))


def _manifest(data: MultimodalDataset) -> list[list[str]] | None:
    """The sha256 that a dataset folder's meta.json records for the feature files in use (None: not a folder)."""
    folder = data.meta.get("folder") if isinstance(data.meta, dict) else None
    if not folder:
        return None
    try:
        files = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8")).get("files", {})
        return [[f"x_{m}.npy", str(files[f"x_{m}.npy"]["sha256"])] for m in data.modalities]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # unreadable: the sampled rows still count
        return None


def content_digest(data: MultimodalDataset, indices: Sequence[Tensor | None] = ()) -> str:
    """A cheap SHA-256 of the data's content: features, mask, labels and ``indices`` (the split rows used).

    In-memory arrays up to 64 MiB are hashed whole; larger ones, and modalities read from disk, by the same
    1024 seeded rows (first and last included) plus, in memory, their column sums. A dataset folder adds the
    sha256 of its feature files from meta.json. Changing any sampled value changes the digest, so a resume on
    replaced data of the same shape is refused.
    """
    h = hashlib.sha256()
    n = data.n
    g = torch.Generator().manual_seed(0)
    rows = torch.unique(torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (_HASH_ROWS,), generator=g)]))
    batch = None

    def put(tag: str, t: Tensor) -> None:
        if t.numel() * t.element_size() <= _HASH_WHOLE_BYTES or t.shape[0] != n:
            _hash_array(h, tag, t)
        else:
            _hash_array(h, f"{tag}[rows]", t.index_select(0, rows))
            _hash_array(h, f"{tag}.sum", t.reshape(n, -1).sum(0, dtype=torch.float64))

    for m, x in data._store().items():
        if isinstance(x, LazyArray):
            batch = batch if batch is not None else data.batch(rows)
            _hash_array(h, f"x_{m}[rows]", batch.features[m])
        else:
            put(f"x_{m}", x)
    put("mask", data.mask)
    if data.labels is not None:
        put("labels", data.labels)
    for i, idx in enumerate(indices):
        # larger index sets are in the fingerprint as count and sum
        if idx is not None and idx.numel() * 8 <= _HASH_WHOLE_BYTES:
            _hash_array(h, f"idx{i}", idx.to(torch.int64))
    manifest = _manifest(data)
    if manifest is not None:
        h.update(json.dumps(manifest).encode())
    return h.hexdigest()


def _normalise(obj: Any) -> Any:
    """JSON round trip, so a fingerprint compares equal to one read back from disk."""
    return json.loads(json.dumps(obj))


def _unique(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class Trainer:
    """Optimise a :class:`MultimodalModel` on a :class:`MultimodalDataset`.

    ``Trainer(model, TrainConfig(epochs=50, out_dir="runs/x")).fit(data)`` returns one record per epoch.
    Runs under ``torchrun`` become data-parallel without code changes (see docs/training.md).
    """

    def __init__(self, model: MultimodalModel, config: TrainConfig | None = None,
                 val_metric: ValMetric | None = None, *, standardizer: Standardizer | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        if not isinstance(model, MultimodalModel):
            raise TypeError(f"Trainer needs a MultimodalModel, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else TrainConfig.for_model(model)
        if not isinstance(self.config, TrainConfig):
            raise TypeError("config must be a TrainConfig (use TrainConfig.from_dict for a dict)")
        self.val_metric = val_metric
        self.standardizer = standardizer
        self.callbacks = list(callbacks)
        self.monitor, self.mode = self.config.resolved_monitor(val_metric is not None)
        if self.monitor == "val_metric" and val_metric is None:
            raise ValueError("monitor='val_metric' needs a val_metric callable: Trainer(model, config, val_metric=f)")
        self.history: list[dict[str, Any]] = []
        self.dist = DistInfo()
        self.device = torch.device("cpu")
        #: one optimizer per substep name of the current stage (``{"total": opt}`` without substeps), so each
        #: of Algorithm 1's steps keeps its own momentum / Adam moments; all share the stage's hyper-parameters
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.global_step = 0
        #: a callback may set this to end the current stage after the epoch (like early stopping)
        self.stop_stage = False
        #: what fit() decided before training (e.g. ``"resumed at epoch 2 of 5 ..."``), also logged at INFO;
        #: filled before ``on_ready`` is called, so the CLI prints them there
        self.notes: list[str] = []
        self._wrote_checkpoint = False  # by the current fit: what a diverged fresh run removes

    # ================================================================== public
    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The first of ``optimizers`` (the only one without substeps; its learning rate is the one logged)."""
        return next(iter(self.optimizers.values()), None)

    def fit(self, data: MultimodalDataset, train: str = "train", val: str | None = "val",
            resume: bool = True, on_ready: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Train through every stage; returns the per-epoch history (also ``self.history``).

        ``val`` names the validation split; when it is None or absent from ``data`` validation is skipped.
        With ``resume`` and an ``out_dir`` holding a checkpoint of the same run, training continues there.
        ``on_ready()`` is called once every check of the data, the settings and a checkpoint to resume has
        passed, right before training starts (the CLI prints its notes there, so a refusal stays one line).
        Rank 0, the only writer, holds ``out_dir``'s :class:`RunLock` for the whole fit, so a second run on the
        same folder fails at once with a DataError naming the holder, before anything is read or written.
        """
        self.dist = init_distributed(device=self.config.device)
        out_dir = self.config.out_dir
        with RunLock(out_dir) if self.dist.main and out_dir is not None else nullcontext():
            return self._fit(data, train, val, resume, on_ready or (lambda: None))

    def _fit(self, data: MultimodalDataset, train: str, val: str | None, resume: bool,
             on_ready: Callable[[], None]) -> list[dict[str, Any]]:
        cfg, model = self.config, self.model
        self.notes = []
        # ---- everything that can fail on bad input fails here, before any training
        if not isinstance(data, MultimodalDataset):
            raise DataError(f"fit needs a MultimodalDataset, got {type(data).__name__}")
        model.check_data(data)
        one_class = single_class(data.labels) if self.dist.main else None
        if one_class is not None:
            warnings.warn(one_class, DataWarning, stacklevel=3)
        if cfg.tensorboard:
            if cfg.out_dir is None:
                raise ValueError("tensorboard=True needs out_dir (event files go to out_dir/tensorboard)")
            require_tensorboard()
        if tuple(data.modalities) != model.modalities:
            data = data.select(list(model.modalities))
        train_idx = self._train_indices(data, train)
        val_loss_idx, val_metric_idx = self._val_indices(data, val)
        if self.val_metric is not None and val_metric_idx is None:
            raise DataError(f"a val_metric was given but the data has no split {val!r} (splits: "
                            f"{sorted(data.splits)}); add a validation split or pass val=<split name>")
        available = {"val_loss": val_loss_idx is not None and model.trainable, "val_metric": val_metric_idx is not None,
                     "train_loss": model.trainable}
        track = available[self.monitor]
        if cfg.patience is not None and not track:
            raise DataError(f"early stopping (patience={cfg.patience}) monitors {self.monitor!r}, which needs a "
                            f"validation split {val!r}; the data has splits {sorted(data.splits)}. Add one, pass "
                            "val=<split>, or set patience=None")
        self.device = self._resolve_device()
        if model.trainable:
            self._check_memory()
        model.to(self.device)
        if not model.trainable:
            on_ready()
            return self._fit_closed_form(data, train, val_metric_idx)

        stages = self._check_stages(model.stages())
        # only a checkpoint records or checks it; without out_dir the data's sampled rows are not read for it
        run = self._fingerprint(data, train, val, train_idx, val_loss_idx, stages) if cfg.out_dir is not None else {}
        out_dir = cfg.out_dir
        main = self.dist.main

        # ---- fresh start or resume
        state: dict[str, Any] = {"version": _STATE_VERSION, "run": run, "stage_index": 0, "epoch": 0,
                                 "global_step": 0, "best": None, "best_epoch": None, "bad_epochs": 0,
                                 "history": [], "optimizer_stage": None}
        best_weights: dict[str, Tensor] | None = None
        # saved optimizer states by substep name; the key None is a single unnamed state (see _restore_optimizers)
        opt_state: dict[str | None, dict[str, Any]] | None = None
        ckpt = read_training_checkpoint(out_dir / "checkpoint") if (resume and out_dir is not None) else None
        if ckpt is not None:
            self._check_resumable(ckpt.header, ckpt.state, run, out_dir)
            ckpt.state["run"] = run  # a checkpoint from before content hashes records one from now on
            apply_state(model, {k: v.to(self.device) for k, v in ckpt.weights.items()},
                        source=f"checkpoint {ckpt.path}")
            state = ckpt.state
            best_weights = ckpt.best
            if ckpt.optimizers is not None:
                opt_state = dict(ckpt.optimizers)
            elif ckpt.optimizer is not None:
                opt_state = {None: ckpt.optimizer}
            if main and ckpt.rng[0]:
                set_rng_state(*ckpt.rng)
            else:  # only rank 0's RNG is saved; other ranks continue from a stream fixed by the step
                seed_everything(cfg.seed + self.dist.rank + 1_000_003 * int(state["global_step"]))
            self._note(self._resumed_at(state, stages, ckpt.path))
        else:
            seed_everything(cfg.seed + self.dist.rank)  # per-rank dropout masks; shuffling is shared
        on_ready()
        self.history = list(state["history"])
        self.global_step = int(state["global_step"])

        fresh = ckpt is None
        self._wrote_checkpoint = False
        had_tensorboard = out_dir is not None and (out_dir / "tensorboard").exists()
        logger = RunLogger(out_dir if main else None, cfg.tensorboard and main, self.history)
        flags = {id(p): p.requires_grad for p in model.parameters()}
        was_training = model.training
        try:
            try:
                with Progress(cfg.progress and main) as bar:
                    for si in range(int(state["stage_index"]), len(stages)):
                        self._run_stage(si, stages[si], state, data, train_idx, val_loss_idx, val_metric_idx,
                                        track, best_weights, opt_state, logger, bar)
                        best_weights, opt_state = None, None  # a resumed stage's leftovers never reach the next
            finally:
                logger.close()
                for p in model.parameters():
                    p.requires_grad_(flags.get(id(p), True))
                model.train(was_training)
                self.optimizers = {}
        except FloatingPointError as exc:
            if out_dir is None:
                raise
            if fresh:  # nothing of it is worth keeping: the same settings would diverge again
                if main:
                    self._discard_run(out_dir, keep_tensorboard=had_tensorboard or not cfg.tensorboard)
                then = f"removed this run's files from {out_dir}"
            else:  # written before this fit: a complete checkpoint of the last good epoch, left as it was
                then = (f"{out_dir / 'checkpoint'} keeps the last checkpointed epoch; with a lower --lr "
                        f"{FIX_RESUME}")
            raise FloatingPointError(f"{exc}; {then}") from None
        model.set_stage(None)
        if main and out_dir is not None:
            save_model(out_dir / "model", model, self.standardizer, self._final_meta())
        barrier()
        return self.history

    @torch.no_grad()
    def evaluate(self, data: MultimodalDataset, index: Tensor | str) -> dict[str, float]:
        """Mean of every loss term over ``index`` (a split name or indices) in eval mode."""
        model = self.model
        if isinstance(index, str):
            index = data.split(index)
        was = model.training
        model.eval()
        sums: dict[str, Tensor] = {}
        n = 0
        try:
            for s in range(0, index.numel(), self.config.batch_size):
                part = index[s:s + self.config.batch_size]
                out = self._loss(model, data.batch(part).to(self.device))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float().mean() * part.numel()
                n += part.numel()
        finally:
            model.train(was)
        return {k: float(v) / n for k, v in sums.items()}

    # ============================================================ preparation
    def _resolve_device(self) -> torch.device:
        dev = torch.device(self.config.device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device={self.config.device!r} but CUDA is not available; use device='cpu'")
            if self.dist.distributed:
                return torch.device("cuda", self.dist.local_rank)  # one GPU per rank, whatever the index asked
        return dev

    def _train_indices(self, data: MultimodalDataset, train: str) -> Tensor:
        idx = data.split(train)  # DataError naming the available splits
        empty = ~data.mask.index_select(0, idx).any(1)
        if bool(empty.any()):  # no modality present: nothing to learn from (counted at load by the CLI)
            log.warning("left %d rows of split %r out of training: no modality is present in them",
                        int(empty.sum()), train)
            idx = idx[~empty]
        if self.model.requires_complete:
            complete = data.mask.index_select(0, idx).all(1)
            if not bool(complete.any()):
                raise DataError(
                    f"model {self.model.name!r} trains only on samples with every modality present, but none of "
                    f"the {idx.numel()} samples of split {train!r} is complete; add paired samples to {train!r} "
                    "or use a model that handles missing modalities")
            idx = idx[complete]
        if idx.numel() < 2:
            raise DataError(f"split {train!r} has {idx.numel()} usable sample(s); training needs at least 2 "
                            "(a mean and a spread, a pair to compare); give the split more samples")
        if idx.numel() < self.dist.world_size:
            raise DataError(f"split {train!r} has {idx.numel()} usable samples, fewer than the "
                            f"{self.dist.world_size} data-parallel processes; use fewer processes or more data")
        return idx

    def _val_indices(self, data: MultimodalDataset, val: str | None) -> tuple[Tensor | None, Tensor | None]:
        if val is None or val not in data.splits:
            if val is not None and val != "val":
                log.warning("no split %r in the data (splits: %s); training without validation", val,
                            sorted(data.splits))
            return None, None
        idx = data.split(val)
        loss_idx = idx
        if self.model.requires_complete:
            loss_idx = idx[data.mask.index_select(0, idx).all(1)]
            if loss_idx.numel() == 0:
                log.warning("no complete sample in split %r; val_loss is skipped", val)
                loss_idx = None
        return loss_idx, idx

    def _check_memory(self) -> None:
        """Refuse a model whose gradients and optimizer moments cannot fit, before any of them is allocated."""
        cfg = self.config
        params = _unique([p for p in self.model.parameters() if p.requires_grad])
        nbytes = sum(p.numel() * p.element_size() for p in params)
        moments = 2 if cfg.optimizer == "adam" else int(cfg.momentum > 0)
        parts = ["gradients"] + {2: ["Adam's two moments"], 1: ["SGD's momentum"], 0: []}[moments]
        copies = 1 + moments
        if self.device.type != "cpu":  # the weights move there too (on the CPU they are already allocated)
            copies += 1
            parts.append("the weights")
        check_fits(nbytes * copies, f"training model {self.model.name!r} ({' and '.join(parts)} of "
                   f"{sum(p.numel() for p in params)} parameters)",
                   "make the model smaller with --set (API: smaller hyper-parameters), or use --optimizer sgd",
                   self.device)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.info("%s", text)

    def _resumed_at(self, state: dict[str, Any], stages: list[Stage], path: Path) -> str:
        """``resumed at epoch N of M``: N epochs of the current stage are done, M is its planned length."""
        si = int(state["stage_index"])
        if si >= len(stages):
            done = sum(1 for r in state.get("history", []) if r.get("stage") == stages[-1].name)
            return (f"resumed at epoch {done} of {done} from {path}: the run had finished, nothing left to train; "
                    "saved the model again")
        stage = stages[si]
        planned = stage.epochs if stage.epochs is not None else self.config.epochs
        where = f" of stage {stage.name!r} ({si + 1} of {len(stages)})" if len(stages) > 1 else ""
        return f"resumed at epoch {int(state['epoch'])} of {planned}{where} from {path}"

    def _discard_run(self, out_dir: Path, keep_tensorboard: bool) -> None:
        """After a diverged fresh run: remove what it wrote (log, its checkpoints, its event files)."""
        (out_dir / "log.jsonl").unlink(missing_ok=True)
        if self._wrote_checkpoint:
            for name in ("checkpoint", "checkpoint.old"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
        if not keep_tensorboard:
            shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)

    def _check_stages(self, stages: Sequence[Stage]) -> list[Stage]:
        if not stages:
            raise ValueError(f"model {self.model.name!r} returned no training stages from stages()")
        own = {id(p) for p in self.model.parameters()}
        names = set()
        for s in stages:
            if not isinstance(s, Stage):
                raise TypeError(f"stages() must return Stage objects, got {type(s).__name__}")
            if s.name in names:
                raise ValueError(f"two training stages are called {s.name!r}; stage names must be unique")
            names.add(s.name)
            if not s.parameters:
                raise ValueError(f"stage {s.name!r} of model {self.model.name!r} has no parameters to train")
            if any(id(p) not in own for p in s.parameters):
                raise ValueError(f"stage {s.name!r} lists parameters that do not belong to the model")
            if s.epochs is not None and s.epochs < 0:
                raise ValueError(f"stage {s.name!r} has negative epochs")
        return list(stages)

    def _fingerprint(self, data: MultimodalDataset, train: str, val: str | None, train_idx: Tensor,
                     val_idx: Tensor | None, stages: list[Stage]) -> dict[str, Any]:
        """What must match for a checkpoint to be continued (not device, progress or logging choices)."""
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in RUNTIME_FIELDS}
        return _normalise({
            "model": self.model.name,
            "model_config": self.model.config,
            "train_config": cfg,
            "monitor": [self.monitor, self.mode],
            "stages": [[s.name, len(_unique(s.parameters)), s.epochs, s.lr] for s in stages],
            "data": {"samples": data.n, "dims": {m: list(d) for m, d in data.dims.items()},
                     "train": [train, int(train_idx.numel()), int(train_idx.sum())],
                     "val": None if val_idx is None else [val, int(val_idx.numel()), int(val_idx.sum())],
                     "content": content_digest(data, (train_idx, val_idx))},
        })

    def _check_resumable(self, header: dict[str, Any], state: dict[str, Any], run: dict[str, Any],
                         out_dir: Path) -> None:
        """Refuse a checkpoint of another model, settings or data, naming what changed and how to start over."""
        fix, where = FIX_RESUME, out_dir / "checkpoint"
        check_compatible(header["model"], header["config"], self.model, fix=fix)
        old = state.get("run", {})
        old_data = old.get("data")
        legacy = isinstance(old_data, dict) and "content" not in old_data
        if legacy:  # written before content hashes: everything else must match, the data itself cannot be checked
            old = {**old, "data": {**old_data, "content": run["data"]["content"]}}
        diffs = []
        for key in sorted(set(old) | set(run)):
            a, b = old.get(key), run.get(key)
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                diffs += [f"{key}.{k}" + ("" if k == "content" else f": {a.get(k)!r} -> {b.get(k)!r}")
                          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            else:
                diffs.append(f"{key}: {a!r} -> {b!r}")
        if diffs == ["data.content"]:
            raise CheckpointError(f"{where} was trained on other data: this data has the same sizes and splits but "
                                  f"other content (feature values, mask or labels differ); {fix}")
        if diffs:
            shown = [d for d in diffs if d != "data.content"] + (["the data's content"] if "data.content" in diffs
                                                                 else [])
            raise CheckpointError(f"{where} belongs to a different run (changed: {'; '.join(shown[:6])}); {fix}")
        if legacy:
            warnings.warn(f"{where} predates data content hashes, so whether the data changed since cannot be "
                          f"checked; resuming on it (if the data changed, {fix})", DataWarning, stacklevel=4)

    # ================================================================ training
    def _make_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return make_sgd(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                            weight_decay=cfg.weight_decay)
        return make_adam(params, lr=lr, weight_decay=cfg.weight_decay)

    def _wrap(self) -> nn.Module:
        if not self.dist.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        # built per stage: DDP registers gradient hooks only for parameters that require grad at wrap time
        ids = [self.dist.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids,
                                       find_unused_parameters=self.config.ddp_find_unused_parameters)

    @staticmethod
    def _loss(module: nn.Module | CompiledLoss, batch: Any) -> dict[str, Tensor]:
        out = module(batch)  # forward == loss, so DDP sees the call
        if not isinstance(out, dict) or "total" not in out:
            raise TypeError("model.loss(batch) must return a dict of tensors with a 'total' entry")
        return out

    def _better(self, value: float | None, best: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    def _run_stage(self, si: int, stage: Stage, state: dict[str, Any], data: MultimodalDataset, train_idx: Tensor,
                   val_loss_idx: Tensor | None, val_metric_idx: Tensor | None, track: bool,
                   best_weights: dict[str, Tensor] | None, opt_state: dict[str | None, dict[str, Any]] | None,
                   logger: RunLogger, bar: Progress) -> None:
        cfg, model = self.config, self.model
        epochs = stage.epochs if stage.epochs is not None else cfg.epochs
        model.set_stage(stage.name)
        params = _unique(stage.parameters)
        keep = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)  # frozen outside the stage: no grads, no DDP reduction
        lr = stage.lr if stage.lr is not None else cfg.lr
        # read once per stage, after set_stage: the substeps may depend on the stage (not on the epoch)
        substeps = tuple(model.substeps() or ("total",))
        # one optimizer per distinct name: a step's momentum must not carry into another objective's step
        self.optimizers = {name: self._make_optimizer(params, lr) for name in dict.fromkeys(substeps)}
        if opt_state is not None and state.get("optimizer_stage") == si and int(state["epoch"]) > 0:
            self._restore_optimizers(opt_state)
        wrapped = self._wrap()
        if cfg.compile:
            wrapped = CompiledLoss(wrapped)
        steps = math.ceil(train_idx.numel() / cfg.batch_size)
        if cfg.max_steps_per_epoch is not None:
            steps = min(steps, cfg.max_steps_per_epoch)
        bar.start_stage(f"{stage.name}", total=max(epochs - int(state["epoch"]), 0) * steps)
        self.stop_stage = False
        for ep in range(int(state["epoch"]), epochs):
            t0 = time.perf_counter()
            train_means, n_samples, train_s = self._train_epoch(wrapped, params, substeps, data, train_idx, si,
                                                                ep, bar)
            val_loss, val_metric = self._validate(data, val_loss_idx, val_metric_idx)
            value = {"val_loss": val_loss, "val_metric": val_metric, "train_loss": train_means["total"]}[self.monitor]
            improved = track and self._better(value, state["best"])
            if improved:
                state["best"], state["best_epoch"], state["bad_epochs"] = value, ep + 1, 0
                if cfg.restore_best:
                    best_weights = {k: v.clone() for k, v in state_for_saving(model)[0].items()}
            elif track:
                state["bad_epochs"] = int(state["bad_epochs"]) + 1
            record = {"epoch": ep + 1, "stage": stage.name, "stage_index": si, "step": self.global_step,
                      "train": train_means, "val_loss": val_loss, "val_metric": val_metric,
                      "lr": self.optimizer.param_groups[0]["lr"], "improved": bool(improved),
                      "seconds": time.perf_counter() - t0,
                      "samples_per_s": n_samples / train_s if train_s > 0 else None}
            self.history.append(record)
            logger.log(record, step=len(self.history))
            bar.describe(f"{stage.name} {ep + 1}/{epochs} loss {train_means['total']:.4g}")
            stop = cfg.patience is not None and int(state["bad_epochs"]) >= cfg.patience
            done = stop or self.stop_stage or ep + 1 == epochs
            state.update(epoch=ep + 1, global_step=self.global_step, history=self.history, optimizer_stage=si)
            if done:
                self._end_stage(si, state, best_weights)
                best_weights = None
            if done or (ep + 1) % cfg.checkpoint_every == 0:
                self._checkpoint(state, stage, None if done else best_weights)
            for cb in self.callbacks:
                cb(self, record)
            if not done and self.stop_stage:  # a callback ended the stage after this epoch's checkpoint
                self._end_stage(si, state, best_weights)
                self._checkpoint(state, stage, None)
                done = True
            if done:
                return
        # zero epochs (or resumed exactly at the end): nothing trained in this stage
        self._end_stage(si, state, best_weights)

    def _restore_optimizers(self, saved: dict[str | None, dict[str, Any]]) -> None:
        """Load saved optimizer states into ``self.optimizers``, by substep name.

        A single unnamed state (key None: a checkpoint from before per-substep optimizers, or of a run with one
        optimizer) belongs to the first optimizer. An optimizer without a saved state starts fresh and a saved
        state without an optimizer is dropped, each with a warning, so nothing is lost silently.
        """
        names = list(self.optimizers)
        if set(saved) == {None}:
            self.optimizers[names[0]].load_state_dict(saved[None])
            if len(names) > 1:
                log.warning("the checkpoint holds one optimizer state for the substeps %s (written when they "
                            "shared one optimizer); restored it for %r, the optimizers of %s start fresh",
                            names, names[0], names[1:])
            return
        for name, opt in self.optimizers.items():
            if name in saved:
                opt.load_state_dict(saved[name])
        fresh = [n for n in names if n not in saved]
        dropped = [n for n in saved if n not in self.optimizers]
        if fresh or dropped:
            log.warning("the checkpoint holds optimizer states for the substeps %s but this model steps on %s; "
                        "restored %s, %s start fresh, %s dropped", list(saved), names,
                        [n for n in names if n in saved], fresh, dropped)

    def _checkpoint(self, state: dict[str, Any], stage: Stage, best_weights: dict[str, Tensor] | None) -> None:
        """Rank 0 writes the checkpoint; optimizer states only mid-stage (a new stage builds new optimizers)."""
        out_dir = self.config.out_dir
        if not self.dist.main or out_dir is None:
            return
        mid = state["optimizer_stage"] is not None
        self._wrote_checkpoint = True  # set first: a write that fails halfway is this run's to remove too
        save_training_checkpoint(out_dir / "checkpoint", model=self.model, state=state,
                                 optimizer=self.optimizers if mid else None, best=best_weights if mid else None,
                                 rng=get_rng_state(), meta={"stage": stage.name})

    def _end_stage(self, si: int, state: dict[str, Any], best_weights: dict[str, Tensor] | None) -> None:
        """Restore the stage's best weights and point the state at the next stage."""
        if self.config.restore_best and best_weights is not None:
            apply_state(self.model, {k: v.to(self.device) for k, v in best_weights.items()}, "best weights")
            log.info("restored the best weights of stage %d (epoch %s, %s=%.4g)", si, state["best_epoch"],
                     self.monitor, state["best"])
        state.update(stage_index=si + 1, epoch=0, best=None, best_epoch=None, bad_epochs=0, optimizer_stage=None)

    def _train_epoch(self, wrapped: nn.Module | CompiledLoss, params: list[nn.Parameter], substeps: tuple[str, ...],
                     data: MultimodalDataset, train_idx: Tensor, si: int, ep: int,
                     bar: Progress) -> tuple[dict[str, float], int, float]:
        cfg, model = self.config, self.model
        rank, world = self.dist.rank, self.dist.world_size
        model.train()
        order = train_idx[torch.randperm(train_idx.numel(), generator=shuffle_generator(cfg.seed, si, ep))]
        starts = range(0, order.numel(), cfg.batch_size)
        if cfg.max_steps_per_epoch is not None:
            starts = starts[:cfg.max_steps_per_epoch]
        sums: dict[str, Tensor] = {}
        count, samples = 0, 0
        optimizers = [self.optimizers[term] for term in substeps]
        t0 = time.perf_counter()
        for s in starts:
            glob = order[s:s + cfg.batch_size]
            if glob.numel() < world:  # a rank would get no sample; every rank skips it alike
                continue
            part, weight = shard(glob, rank, world)
            batch = data.batch(part).to(self.device)
            out: dict[str, Tensor] = {}
            # one optimizer step per named term (alternating schedules, e.g. SSL's Algorithm 1), each
            # on a fresh forward so a step sees the parameters the previous one produced, and each with
            # its term's own optimizer state
            for i, (term, opt) in enumerate(zip(substeps, optimizers, strict=True)):
                step_out = self._loss(wrapped, batch)
                if term not in step_out:
                    raise KeyError(f"model {model.name!r} lists substep {term!r} but loss() returned "
                                   f"{sorted(step_out)}")
                if i == 0:
                    out = step_out
                opt.zero_grad(set_to_none=True)
                (step_out[term] * weight if weight != 1.0 else step_out[term]).backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            self.global_step += 1
            # summed as tensors: a .item() per step would synchronise a GPU every step
            for k, v in out.items():
                if isinstance(v, Tensor):
                    sums[k] = sums.get(k, 0.0) + v.detach().float().mean() * part.numel()
            count += part.numel()
            samples += glob.numel()
            bar.advance()
        seconds = time.perf_counter() - t0
        keys = list(sums)
        if not keys:
            raise DataError("no training step ran in this epoch (too few samples for the processes?)")
        packed = torch.stack([sums[k].to(torch.float64) for k in keys] +
                             [torch.tensor(float(count), dtype=torch.float64, device=sums[keys[0]].device)])
        if self.dist.distributed:
            dist.all_reduce(packed)
        means = {k: float(packed[i] / packed[-1]) for i, k in enumerate(keys)}
        if not math.isfinite(means["total"]):
            stage = f" of stage {model.stage!r}" if model.stage not in (None, "main") else ""
            raise FloatingPointError(
                f"the training loss diverged (became {means['total']}) in epoch {ep + 1}{stage}; lower the learning "
                f"rate (--lr, now {optimizers[0].param_groups[0]['lr']:g}; API: TrainConfig(lr=...)), clip "
                "gradients (API: grad_clip) or standardise the features")
        return means, samples, seconds

    def _validate(self, data: MultimodalDataset, loss_idx: Tensor | None,
                  metric_idx: Tensor | None) -> tuple[float | None, float | None]:
        """Computed on rank 0 and broadcast, so every rank takes the same early-stopping decision."""
        if loss_idx is None and metric_idx is None:
            return None, None
        vals = [math.nan, math.nan]
        if self.dist.main:
            if loss_idx is not None:
                vals[0] = self.evaluate(data, loss_idx)["total"]
            if metric_idx is not None and self.val_metric is not None:
                was = self.model.training
                self.model.eval()
                try:
                    vals[1] = float(self.val_metric(self.model, data, metric_idx))
                finally:
                    self.model.train(was)
        if self.dist.distributed:
            t = torch.tensor(vals, dtype=torch.float64, device=self.device)
            dist.broadcast(t, src=0)
            vals = t.tolist()
        val_loss = vals[0] if loss_idx is not None else None
        val_metric = vals[1] if (metric_idx is not None and self.val_metric is not None) else None
        return val_loss, val_metric

    # ============================================================ closed form
    def _fit_closed_form(self, data: MultimodalDataset, train: str,
                         val_idx: Tensor | None) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        self.model.fit_closed_form(data, train)
        record: dict[str, Any] = {"epoch": 0, "stage": "closed_form", "stage_index": 0, "step": 0}
        if self.val_metric is not None and val_idx is not None:
            _, record["val_metric"] = self._validate(data, None, val_idx)
        record["seconds"] = time.perf_counter() - t0
        record["samples_per_s"] = data.split(train).numel() / record["seconds"] if record["seconds"] > 0 else None
        self.history = [record]
        if self.dist.main and self.config.out_dir is not None:
            logger = RunLogger(self.config.out_dir, False, [record])
            logger.close()
            save_model(self.config.out_dir / "model", self.model, self.standardizer, self._final_meta())
        barrier()
        return self.history

    def _final_meta(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        if last is not None:  # timings live in log.jsonl: config.json depends only on seed, data and settings
            last = {k: v for k, v in last.items() if k not in _TIMING_KEYS}
        return {"train_config": self.config.to_dict(), "epochs_run": len(self.history), "final": last}
